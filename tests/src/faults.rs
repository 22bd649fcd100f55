//! Faults from outside the guest: signals sent to worker processes at
//! random moments, and a compile cache that is unwritable, damaged or on a
//! full disk. Each scenario returns report rows; the integration tests
//! assert every row is ok, `make reliability` prints them.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use isola::{CacheDir, Isolation, Limit, Outcome, Runner, RunnerConfig};

use crate::matrix::{Row, target_name};
use crate::procs::send_signal;
use crate::{GuestKind, Target, isola_bin, targets};

/// What the hello guest prints.
pub const HELLO: &str = "Hello from Isola!\n";

/// The digest the sha256 guest prints for `mib` MiB of its pattern.
pub fn sha256_of_pattern(mib: usize) -> String {
    use sha2::Digest;
    let data: Vec<u8> = (0..mib * 1024 * 1024)
        .map(|i| (i as u32).wrapping_mul(31).wrapping_add(7) as u8)
        .collect();
    hex::encode(sha2::Sha256::digest(&data))
}

/// A signal sent to a victim, and the outcome it must cause.
#[derive(Debug, Clone, Copy)]
enum Fault {
    Kill,
    Segv,
    Stop,
}

impl Fault {
    fn signal(self) -> i32 {
        match self {
            Fault::Kill => libc::SIGKILL,
            Fault::Segv => libc::SIGSEGV,
            Fault::Stop => libc::SIGSTOP,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Fault::Kill => "SIGKILL",
            Fault::Segv => "SIGSEGV",
            Fault::Stop => "SIGSTOP",
        }
    }
}

/// A victim's timeout: what ends a stopped worker (its backstop is this
/// plus the kill grace).
const VICTIM_TIMEOUT: Duration = Duration::from_secs(4);

fn expected_for(fault: Fault) -> Outcome {
    match fault {
        Fault::Kill => Outcome::Crashed {
            signal: Some(libc::SIGKILL),
            status: None,
            reason: None,
        },
        Fault::Segv => Outcome::Crashed {
            signal: Some(libc::SIGSEGV),
            status: None,
            reason: None,
        },
        Fault::Stop => Outcome::LimitExceeded {
            limit: Limit::Timeout {
                after: VICTIM_TIMEOUT,
            },
        },
    }
}

/// A task of the storm that must end normally, and what it must print.
struct Bystander {
    name: String,
    target: Target,
    stdout: String,
}

/// Starts `victims` process tasks that would sleep for a minute and sends
/// each SIGKILL, SIGSEGV or SIGSTOP at a random moment in its first 1.5 s
/// (loading, waiting for its run frame, or running), among `bystanders`
/// tasks of both isolation levels and kinds that must end normally. Each
/// victim must end precisely: crashed by its signal, or (stopped) by its
/// timeout; every bystander with exit 0 and its exact output.
pub async fn signal_storm(
    runner: &Runner,
    seed: u64,
    victims: usize,
    bystanders: usize,
) -> Vec<Row> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let started = Instant::now();
    let mut victim_handles = Vec::new();
    for i in 0..victims {
        let target = Target {
            kind: if rng.bool() {
                GuestKind::Module
            } else {
                GuestKind::Component
            },
            isolation: Isolation::Process,
        };
        let mut spec = target.spec("hostile");
        spec.args = vec!["sleep".into(), "60000".into()];
        spec.limits.timeout = Some(VICTIM_TIMEOUT);
        let fault = [Fault::Kill, Fault::Segv, Fault::Stop][i % 3];
        let delay = Duration::from_millis(rng.u64(0..1500));
        let handle = runner.spawn(spec).await.expect("spawn a victim");
        let pid = handle.process_id().expect("a process task has a pid");
        victim_handles.push((target, fault, delay, pid, ended_at(handle)));
    }
    let mut bystander_handles = Vec::new();
    let digest = sha256_of_pattern(1);
    for i in 0..bystanders {
        let target = targets()[i % 4];
        let (spec, stdout, name) = match i % 3 {
            0 => {
                let mut spec = target.spec("hostile");
                spec.args = vec!["sleep".into(), "1500".into()];
                (spec, "woke\n".to_string(), "sleep 1.5 s")
            }
            1 => {
                let mut spec = target.spec("sha256");
                spec.args = vec!["1".into()];
                (spec, format!("{digest}\n"), "sha256 1 MiB")
            }
            _ => {
                let mut spec = target.spec("echo_cli");
                spec.args = vec!["args".into(), format!("bystander {i}")];
                (spec, format!("bystander {i}\n"), "echo")
            }
        };
        let spawned = Instant::now();
        let handle = runner.spawn(spec).await.expect("spawn a bystander");
        bystander_handles.push((
            Bystander {
                name: name.into(),
                target,
                stdout,
            },
            spawned,
            ended_at(handle),
        ));
    }

    // Fire each signal at its moment, in order of delay.
    let mut order: Vec<usize> = (0..victim_handles.len()).collect();
    order.sort_by_key(|&i| victim_handles[i].2);
    let mut sent_at = vec![started; victim_handles.len()];
    for i in order {
        let (_, fault, delay, pid, _) = &victim_handles[i];
        tokio::time::sleep_until((started + *delay).into()).await;
        // The victims sleep for a minute: they are alive, and their pid is
        // not reused, when the signal is sent.
        send_signal(*pid, fault.signal()).expect("signal a victim");
        sent_at[i] = Instant::now();
    }

    let mut rows = Vec::new();
    for (i, (target, fault, delay, _, ended)) in victim_handles.into_iter().enumerate() {
        let (report, ended) = ended.await.expect("waiter");
        let expected = expected_for(fault);
        // From the signal to the report.
        let time = ended.saturating_duration_since(sent_at[i]);
        rows.push(Row {
            case: format!("{} after {} ms", fault.name(), delay.as_millis()),
            target: target_name(target),
            expected: expected.to_string(),
            got: report.outcome.to_string(),
            time_to_stop: Some(time),
            ok: report.outcome == expected && time < VICTIM_TIMEOUT + Duration::from_secs(15),
        });
    }
    for (bystander, spawned, ended) in bystander_handles {
        let (report, ended) = ended.await.expect("waiter");
        let ok = report.outcome == (Outcome::Exited { code: 0 })
            && report.stdout.text() == bystander.stdout;
        rows.push(Row {
            case: format!("bystander: {}", bystander.name),
            target: target_name(bystander.target),
            expected: "exited with code 0, exact output".into(),
            got: if ok {
                "exited with code 0, exact output".into()
            } else {
                format!("{} / {:?}", report.outcome, report.stdout.text())
            },
            time_to_stop: Some(ended - spawned),
            ok,
        });
    }
    rows
}

/// Waits for the task in a runtime task of its own, so the moment it ended
/// is known however late it is looked at.
fn ended_at(handle: isola::TaskHandle) -> tokio::task::JoinHandle<(isola::TaskReport, Instant)> {
    tokio::spawn(async move {
        let report = handle.wait().await;
        (report, Instant::now())
    })
}

/// A runner whose disk cache is at `root`.
pub fn runner_at(root: &Path) -> Runner {
    runner_with(root, 1)
}

/// As [`runner_at`], with `prestarted_workers` workers kept started.
fn runner_with(root: &Path, prestarted_workers: usize) -> Runner {
    Runner::with_config(RunnerConfig {
        max_live_tasks: 16,
        cache_dir: CacheDir::Path(root.to_owned()),
        worker_program: Some(isola_bin()),
        prestarted_workers,
        ..RunnerConfig::default()
    })
    .expect("runner")
}

/// A core module that prints [`HELLO`]: compiles in milliseconds where the
/// Rust-built hello takes seconds in a debug build, and the cache tests
/// compile a lot.
pub const WAT_HELLO: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "Hello from Isola!\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 18))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#;

/// A program that prints [`HELLO`] on `target`: the WAT module for
/// modules, the hello guest for components.
pub fn hello_spec(target: Target) -> isola::TaskSpec {
    match target.kind {
        GuestKind::Module => {
            let mut spec = isola::TaskSpec::new(crate::matrix::wat_module(WAT_HELLO));
            spec.isolation = target.isolation;
            spec
        }
        GuestKind::Component => target.spec("hello"),
    }
}

/// Runs hello on `target` and says whether it printed its greeting.
async fn hello_runs(runner: &Runner, target: Target) -> Result<(), String> {
    match runner.run(hello_spec(target)).await {
        Ok(report) if report.outcome.is_success() && report.stdout.text() == HELLO => Ok(()),
        Ok(report) => Err(format!("{} / {:?}", report.outcome, report.stdout.text())),
        Err(err) => Err(format!("did not start: {err}")),
    }
}

fn cache_row(case: &str, target: Target, expected: &str, result: Result<String, String>) -> Row {
    Row {
        case: case.into(),
        target: target_name(target),
        expected: expected.into(),
        ok: result.is_ok(),
        got: result.unwrap_or_else(|e| e),
        time_to_stop: None,
    }
}

/// A tmpfs mounted for one test, unmounted on drop. Needs root (or
/// CAP_SYS_ADMIN); `None` where mounting is not allowed.
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs with `options` (e.g. `size=64k`, `ro`).
    pub fn mount(options: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().ok()?;
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "isola-test"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .ok()?;
        status.success().then_some(Tmpfs { dir })
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return files;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// The cache is a regular file, a read-only file system, or a file system
/// that fills up while the artifact is written: every task still runs,
/// compiled in memory, and a full disk is left without partial files.
///
/// Runs each fault on `on(i)` for the i-th fault (0..3), so a caller can
/// spread the faults over the targets instead of running all of them.
pub async fn unwritable_cache(on: impl Fn(usize) -> Vec<Target>) -> Vec<Row> {
    let mut rows = Vec::new();

    let file = tempfile::NamedTempFile::new().expect("temp file");
    for target in on(0) {
        let runner = runner_at(file.path());
        let result = hello_runs(&runner, target)
            .await
            .map(|()| "ran".to_string());
        rows.push(cache_row(
            "cache dir is a regular file",
            target,
            "ran",
            result,
        ));
    }

    // Root ignores permission bits, so "read-only" needs a read-only mount.
    match Tmpfs::mount("ro,size=64k") {
        Some(mount) => {
            for target in targets() {
                let runner = runner_at(mount.path());
                let result = hello_runs(&runner, target)
                    .await
                    .map(|()| "ran".to_string());
                rows.push(cache_row("cache on a read-only fs", target, "ran", result));
            }
        }
        None => rows.push(skipped("cache on a read-only fs", "needs root to mount")),
    }

    // A 64 KiB tmpfs filled to the last byte: the artifact's temp file can
    // be created, but writing it fails with ENOSPC.
    for target in on(2) {
        let Some(mount) = Tmpfs::mount("size=64k") else {
            rows.push(skipped(
                "disk full while writing the cache",
                "needs root to mount",
            ));
            break;
        };
        let filler = mount.path().join("filler");
        fill(&filler);
        let runner = runner_at(mount.path());
        let result = match hello_runs(&runner, target).await {
            Err(e) => Err(e),
            Ok(()) => {
                let left = files_under(mount.path());
                if left == [filler] {
                    Ok("ran, no partial file left".to_string())
                } else {
                    Err(format!("ran, but left {left:?}"))
                }
            }
        };
        rows.push(cache_row(
            "disk full while writing the cache",
            target,
            "ran, no partial file left",
            result,
        ));
    }
    rows
}

/// Writes `path` until the file system is full.
fn fill(path: &Path) {
    use std::io::Write;
    let mut file = std::fs::File::create(path).expect("create the filler");
    let block = [0u8; 4096];
    while file.write_all(&block).is_ok() {}
    while file.write_all(&block[..1]).is_ok() {}
}

fn skipped(case: &str, why: &str) -> Row {
    Row {
        case: case.into(),
        target: "-".into(),
        expected: "-".into(),
        got: format!("skipped: {why}"),
        time_to_stop: None,
        ok: true,
    }
}

/// Ways to damage an artifact on disk.
#[derive(Debug, Clone, Copy)]
pub enum Damage {
    /// One byte in the middle flipped.
    FlipByte,
    /// Cut to a third.
    Truncate,
    /// Emptied.
    Empty,
    /// The trailer (the integrity hash) cut off.
    NoTrailer,
}

impl Damage {
    /// All of them.
    pub const ALL: [Damage; 4] = [
        Damage::FlipByte,
        Damage::Truncate,
        Damage::Empty,
        Damage::NoTrailer,
    ];

    fn apply(self, path: &Path) {
        let mut bytes = std::fs::read(path).expect("read the artifact");
        match self {
            Damage::FlipByte => {
                let middle = bytes.len() / 2;
                bytes[middle] ^= 0x55;
            }
            Damage::Truncate => bytes.truncate(bytes.len() / 3),
            Damage::Empty => bytes.clear(),
            Damage::NoTrailer => bytes.truncate(bytes.len().saturating_sub(40)),
        }
        std::fs::write(path, bytes).expect("damage the artifact");
    }
}

/// Damages the cached artifact of hello in every way, for every target,
/// and checks it is detected and recompiled, never loaded: a thread task
/// in a new runner recompiles (the parent's check); a process task of a
/// runner that already has the program in memory makes its worker load the
/// damaged file (the worker's check), and the worker's recompiled artifact
/// repairs the cache.
///
/// `cases` picks the (target, damage) pairs; [`all_damage`] is every one.
pub async fn damaged_cache(cases: &[(Target, Damage)]) -> Vec<Row> {
    let mut rows = Vec::new();
    for &(target, damage) in cases {
        {
            let cache = tempfile::tempdir().expect("tempdir");
            let result = damaged_once(cache.path(), target, damage).await;
            rows.push(cache_row(
                &format!("cache artifact damaged: {damage:?}"),
                target,
                "recompiled, ran",
                result,
            ));
        }
    }
    rows
}

/// Every damage on every target.
pub fn all_damage() -> Vec<(Target, Damage)> {
    targets()
        .into_iter()
        .flat_map(|t| Damage::ALL.map(|d| (t, d)))
        .collect()
}

async fn damaged_once(root: &Path, target: Target, damage: Damage) -> Result<String, String> {
    // No pre-started worker for a process task: one started during the
    // first task would map the artifact before the damage below, then
    // fault on the truncated mapping (SIGBUS) instead of meeting the
    // damage when it loads.
    let first = match target.isolation {
        Isolation::Process => runner_with(root, 0),
        Isolation::Thread => runner_at(root),
    };
    hello_runs(&first, target).await?;
    let artifacts: Vec<PathBuf> = files_under(root)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    let [artifact] = artifacts.as_slice() else {
        return Err(format!("expected one artifact, found {artifacts:?}"));
    };
    damage.apply(artifact);
    match target.isolation {
        Isolation::Thread => {
            let second = runner_at(root);
            hello_runs(&second, target).await?;
            let stats = second.cache_stats();
            if (stats.compiled, stats.disk_hits) == (1, 0) {
                Ok("recompiled, ran".into())
            } else {
                Err(format!("ran, but {stats:?}"))
            }
        }
        Isolation::Process => {
            // The program is in `first`'s memory: the parent neither reads
            // nor rewrites the artifact, so the worker meets the damage.
            hello_runs(&first, target).await?;
            let third = runner_at(root);
            let mut spec = hello_spec(target);
            spec.isolation = Isolation::Thread;
            third.run(spec).await.map_err(|e| e.to_string())?;
            if third.cache_stats().disk_hits == 1 {
                Ok("recompiled, ran".into())
            } else {
                Err(format!(
                    "ran, but the worker did not repair the cache: {:?}",
                    third.cache_stats()
                ))
            }
        }
    }
}

/// Loads a `tasks.toml` over and over while another thread rewrites it in
/// place between two valid versions (so reads can see a torn file, or
/// none). Every load must be a set of one of the versions' task names, or
/// errors; nothing may panic.
pub fn config_rewritten_while_read(duration: Duration) -> Row {
    use isola::config::TaskSet;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tasks.toml");
    let wasm = crate::guest("hello", GuestKind::Module);
    let wasm = wasm.to_str().expect("utf-8 path");
    let version = |names: &[&str]| {
        names
            .iter()
            .map(|n| {
                format!(
                    "[[task]]\nname = \"{n}\"\nwasm = \"{wasm}\"\nlimits = {{ timeout = \"1s\" }}\n\n"
                )
            })
            .collect::<String>()
    };
    let a = version(&["alpha", "beta", "gamma"]);
    let b = version(&["delta", "epsilon"]);
    std::fs::write(&path, &a).expect("write");

    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = Arc::clone(&stop);
        let path = path.clone();
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let text = if n.is_multiple_of(2) { &b } else { &a };
                match n % 3 {
                    // Truncate, then write in two halves: readers can see
                    // an empty or half-written file.
                    0 => {
                        use std::io::Write;
                        if let Ok(mut file) = std::fs::File::create(&path) {
                            let (head, tail) = text.split_at(text.len() / 2);
                            let _ = file.write_all(head.as_bytes());
                            std::thread::yield_now();
                            let _ = file.write_all(tail.as_bytes());
                        }
                    }
                    // Gone for a moment.
                    1 => {
                        let _ = std::fs::remove_file(&path);
                        std::thread::yield_now();
                        let _ = std::fs::write(&path, text);
                    }
                    _ => {
                        let _ = std::fs::write(&path, text);
                    }
                }
                n += 1;
            }
        })
    };

    let names = ["alpha", "beta", "gamma", "delta", "epsilon"];
    let deadline = Instant::now() + duration;
    let (mut loads, mut sets, mut errors, mut bad) = (0u64, 0u64, 0u64, Vec::new());
    while Instant::now() < deadline {
        let result = std::panic::catch_unwind(|| TaskSet::load(&path));
        loads += 1;
        match result {
            Ok(Ok(set)) => {
                sets += 1;
                if set.is_empty()
                    || set.len() > 3
                    || set
                        .tasks()
                        .iter()
                        .any(|t| !names.contains(&t.name.as_str()))
                {
                    bad.push(format!(
                        "odd set: {:?}",
                        set.tasks().iter().map(|t| &t.name).collect::<Vec<_>>()
                    ));
                }
            }
            Ok(Err(errs)) => {
                errors += 1;
                if errs.is_empty() {
                    bad.push("an error list with no error".into());
                }
            }
            Err(_) => bad.push("TaskSet::load panicked".into()),
        }
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer thread");
    let got = format!(
        "{loads} loads: {sets} sets, {errors} errors{}",
        if bad.is_empty() {
            String::new()
        } else {
            format!(", {}", bad[0])
        }
    );
    Row {
        case: "tasks.toml rewritten while read".into(),
        target: "-".into(),
        expected: "a set or errors, never a panic".into(),
        ok: bad.is_empty() && sets > 0,
        got,
        time_to_stop: None,
    }
}

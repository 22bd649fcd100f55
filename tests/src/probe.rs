//! The faults a hostile probe found (issue 18), as report rows: each
//! scenario runs what the probe ran (through the library or the `isola`
//! binary, at both isolation levels where that applies) and says how it
//! ended. The integration tests (`tests/all/hostile_probe.rs`,
//! `guest_faults.rs`, `probe_more.rs`) assert the same behaviours; `make
//! reliability` prints these rows.
//!
//! Cases that fit the hostile matrix (a bad WASI call, tables too large)
//! are in [`crate::matrix`]; here are those that need a fixture of their
//! own: FIFOs, paths that are not UTF-8, worker processes, `isola up`.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use isola::{CacheDir, DirGrant, Isolation, Limit, Outcome, Runner, RunnerConfig, TaskSpec};

use crate::faults::{HELLO, WAT_HELLO, files_under};
use crate::matrix::{Row, target_name, wat_module};
use crate::procs::processes_named;
use crate::{GuestKind, ISOLATIONS, KINDS, Target, guest, isola_bin, isola_within, shared_cache};

/// Text of an output stream.
fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The first line of `s`, cut to `max` characters: enough of a message for
/// a table cell.
fn cell(s: &str, max: usize) -> String {
    s.lines().next().unwrap_or("").chars().take(max).collect()
}

/// `isolation` as the CLI spells it.
fn flag(isolation: Isolation) -> &'static str {
    match isolation {
        Isolation::Thread => "thread",
        Isolation::Process => "process",
    }
}

/// `thread` or `process`, for rows of CLI runs that are not per kind.
fn isolation_name(isolation: Isolation) -> String {
    flag(isolation).to_owned()
}

// ---------------------------------------------------------------------
// FIFOs
// ---------------------------------------------------------------------

/// Makes a FIFO (named pipe) at `path`, readable and writable by us.
///
/// # Errors
///
/// What `mkfifo(3)` says: the path exists, its directory does not, ...
pub fn make_fifo(path: &Path) -> std::io::Result<()> {
    let name = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("a path with a NUL byte"))?;
    // SAFETY: `name` is a NUL-terminated string that outlives the call;
    // `mkfifo` reads it and touches no other memory of ours.
    if unsafe { libc::mkfifo(name.as_ptr(), 0o600) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Releases whatever is blocked opening the FIFO at `path`, on drop: a
/// thread of this process stuck in `open(2)` on it (before the fix of
/// issue 18, item 6, a guest's open did that on the runtime's blocking
/// pool), which would otherwise keep the test's runtime from shutting
/// down, so that a regression fails its test instead of hanging it.
pub struct FifoReleaser {
    path: PathBuf,
}

impl FifoReleaser {
    /// Releases the openers of the FIFO at `path` when dropped.
    pub fn new(path: &Path) -> FifoReleaser {
        FifoReleaser {
            path: path.to_owned(),
        }
    }

    /// Opens each end once without blocking, so that every open waiting
    /// for the other end goes on (and, once we close ours, meets end of
    /// file or a broken pipe). Returns whether a reader was still there.
    fn release_once(&self) -> bool {
        use std::os::unix::fs::OpenOptionsExt;
        // A writer waiting for a reader: our read end lets it go.
        let _ = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&self.path);
        // A reader waiting for a writer: our write end lets it go. With no
        // reader at all this fails (ENXIO): nobody is left waiting to read.
        std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&self.path)
            .is_ok()
    }
}

impl Drop for FifoReleaser {
    fn drop(&mut self) {
        // Openers may still be on their way into `open`: go on for a while
        // after the last reader is gone.
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut quiet = 0;
        while Instant::now() < deadline && quiet < 5 {
            if self.release_once() {
                quiet = 0;
            } else {
                quiet += 1;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A directory to grant, holding `note.txt` ("a note\n") and a FIFO named
/// `fifo`; the FIFO's path.
fn fifo_fixture() -> (tempfile::TempDir, PathBuf) {
    let root = tempfile::tempdir().expect("tempdir");
    std::fs::write(root.path().join("note.txt"), "a note\n").expect("write note.txt");
    let fifo = root.path().join("fifo");
    make_fifo(&fifo).expect("mkfifo");
    (root, fifo)
}

/// A spec of `echo_cli` of `kind` at `isolation` with `args`, `dir`
/// granted as `/data`.
fn echo_in(
    kind: GuestKind,
    isolation: Isolation,
    dir: &Path,
    writable: bool,
    args: &[&str],
) -> TaskSpec {
    let mut spec = Target { kind, isolation }.spec("echo_cli");
    spec.args = args.iter().map(|a| (*a).to_owned()).collect();
    spec.dirs = vec![DirGrant {
        host: dir.to_owned(),
        guest: Some("/data".into()),
        writable,
    }];
    spec
}

/// How a guest's attempt to open a special file ended: refused at once
/// ("not supported": `ENOTSUP` in WASI preview1, `unsupported` in
/// preview2, which the guest's libc reports as the same errno).
fn refused_as_unsupported(report: &isola::TaskReport) -> bool {
    report.outcome == (Outcome::Exited { code: 1 })
        && report
            .stderr
            .text()
            .to_lowercase()
            .contains("not supported")
}

/// Issue 18, item 6, one task at a time: a guest that opens a FIFO (no
/// writer) to read, or (granted it read-write) to write, in a granted
/// directory is refused at once, at both isolation levels and for both
/// guest kinds, where it used to block in `open(2)` until its timeout
/// (keeping, at thread isolation, a thread of the shared blocking pool
/// for good). A regular file beside it still reads.
pub async fn fifo_in_a_granted_directory(runner: &Runner) -> Vec<Row> {
    let (dir, fifo) = fifo_fixture();
    let _release = FifoReleaser::new(&fifo);
    let timeout = Duration::from_secs(5);
    const READ: &[&str] = &["cat", "/data/fifo"];
    const WRITE: &[&str] = &["write", "/data/fifo", "x"];
    let mut rows = Vec::new();
    for target in crate::targets() {
        for (what, writable, args) in [("read", false, READ), ("write", true, WRITE)] {
            let mut spec = echo_in(target.kind, target.isolation, dir.path(), writable, args);
            spec.limits.timeout = Some(timeout);
            let started = Instant::now();
            let (got, ok) = match runner.run(spec).await {
                Ok(report) => {
                    let ok = refused_as_unsupported(&report) && started.elapsed() < timeout;
                    let got = format!("{}: {}", report.outcome, cell(&report.stderr.text(), 60));
                    (got, ok)
                }
                Err(err) => (format!("did not start: {err}"), false),
            };
            rows.push(Row {
                case: format!("open a FIFO in a granted dir to {what}"),
                target: target_name(target),
                expected: "refused at once: not supported (exit 1)".into(),
                got,
                time_to_stop: Some(started.elapsed()),
                ok,
            });
        }
        let spec = echo_in(
            target.kind,
            target.isolation,
            dir.path(),
            false,
            &["cat", "/data/note.txt"],
        );
        let started = Instant::now();
        let (got, ok) = match runner.run(spec).await {
            Ok(report) => (
                format!("{} / {:?}", report.outcome, report.stdout.text()),
                report.outcome == (Outcome::Exited { code: 0 })
                    && report.stdout.text() == "a note\n",
            ),
            Err(err) => (format!("did not start: {err}"), false),
        };
        rows.push(Row {
            case: "a regular file beside the FIFO".into(),
            target: target_name(target),
            expected: "read: exit 0, its text".into(),
            got,
            time_to_stop: Some(started.elapsed()),
            ok,
        });
    }
    rows
}

/// Issue 18, item 6, under load: `fifo_tasks` thread tasks, each opening a
/// FIFO (no writer) in a granted directory with a 500 ms timeout, on a
/// runtime whose blocking pool has `pool_threads` threads (Tokio's default
/// is 512; fewer make the same point with fewer tasks). Every one must end
/// within its timeout, and afterwards an unrelated task reading a regular
/// file (module and component) must still finish promptly: before the fix
/// each blocked `open` kept its pool thread after its task timed out,
/// until the pool was full and every file access waited forever.
///
/// Runs on a runtime of its own: call it from a thread that is not a
/// runtime worker (a `#[test]`, or `spawn_blocking`).
pub fn fifo_tasks_leave_the_blocking_pool_free(fifo_tasks: usize, pool_threads: usize) -> Vec<Row> {
    let (dir, fifo) = fifo_fixture();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(pool_threads)
        .enable_all()
        .build()
        .expect("runtime");
    let runner = Runner::with_config(RunnerConfig {
        max_live_tasks: 64,
        cache_dir: CacheDir::Path(shared_cache()),
        worker_program: Some(isola_bin()),
        prestarted_workers: 0,
        ..RunnerConfig::default()
    })
    .expect("runner");
    let fifo_timeout = Duration::from_millis(500);
    let rows = runtime.block_on(async {
        // Released before the runtime shuts down, whatever happens here.
        let _release = FifoReleaser::new(&fifo);
        let mut programs = Vec::new();
        for kind in KINDS {
            let program = runner
                .load(guest("echo_cli", kind))
                .await
                .expect("load echo_cli");
            programs.push((kind, program));
        }

        let started = Instant::now();
        let mut running: tokio::task::JoinSet<Result<(isola::TaskReport, Duration), String>> =
            tokio::task::JoinSet::new();
        for i in 0..fifo_tasks {
            let (kind, program) = &programs[i % programs.len()];
            let mut spec = echo_in(
                *kind,
                Isolation::Thread,
                dir.path(),
                false,
                &["cat", "/data/fifo"],
            );
            spec.limits.timeout = Some(fifo_timeout);
            let handle = match runner.spawn_program(program, spec).await {
                Ok(handle) => handle,
                Err(err) => {
                    let message = format!("did not start: {err}");
                    running.spawn(async move { Err(message) });
                    continue;
                }
            };
            running.spawn(async move {
                let spawned = Instant::now();
                let report = handle.wait().await;
                Ok((report, spawned.elapsed()))
            });
        }
        let (mut refused, mut timed_out, mut late, mut other) = (0, 0, 0, Vec::new());
        let all_ended = tokio::time::timeout(Duration::from_secs(120), async {
            while let Some(done) = running.join_next().await {
                match done {
                    Ok(Ok((report, took))) => {
                        if took > fifo_timeout + Duration::from_secs(5) {
                            late += 1;
                        }
                        if refused_as_unsupported(&report) {
                            refused += 1;
                        } else if report.outcome
                            == (Outcome::LimitExceeded {
                                limit: Limit::Timeout {
                                    after: fifo_timeout,
                                },
                            })
                        {
                            timed_out += 1;
                        } else {
                            other.push(format!("{}", report.outcome));
                        }
                    }
                    Ok(Err(err)) => other.push(err),
                    Err(err) => other.push(format!("join: {err}")),
                }
            }
        })
        .await
        .is_ok();
        let fifo_row = Row {
            case: format!(
                "{fifo_tasks} tasks open a FIFO in a granted dir (blocking pool of {pool_threads})"
            ),
            target: "thread/mixed".into(),
            expected: "each refused within its 500ms timeout".into(),
            got: format!(
                "{refused} refused, {timed_out} timed out, {late} late, {} other{}{}",
                other.len(),
                other.first().map_or(String::new(), |o| format!(" ({o})")),
                if all_ended {
                    ""
                } else {
                    ", not all ended in 120 s"
                }
            ),
            time_to_stop: Some(started.elapsed()),
            ok: all_ended && refused == fifo_tasks && late == 0,
        };

        // The pool must still serve everyone else.
        let mut rows = vec![fifo_row];
        for (kind, program) in &programs {
            let mut spec = echo_in(
                *kind,
                Isolation::Thread,
                dir.path(),
                false,
                &["cat", "/data/note.txt"],
            );
            spec.limits.timeout = Some(Duration::from_secs(10));
            let started = Instant::now();
            let run = async {
                match runner.spawn_program(program, spec).await {
                    Ok(handle) => Ok(handle.wait().await),
                    Err(err) => Err(err.to_string()),
                }
            };
            let (got, ok) = match tokio::time::timeout(Duration::from_secs(15), run).await {
                Ok(Ok(report)) => (
                    format!("{} / {:?}", report.outcome, report.stdout.text()),
                    report.outcome == (Outcome::Exited { code: 0 })
                        && report.stdout.text() == "a note\n"
                        && started.elapsed() < Duration::from_secs(5),
                ),
                Ok(Err(err)) => (format!("did not start: {err}"), false),
                Err(_) => ("no report in 15 s".into(), false),
            };
            rows.push(Row {
                case: format!(
                    "then an unrelated task reads a file (after {fifo_tasks} FIFO opens)"
                ),
                target: target_name(Target {
                    kind: *kind,
                    isolation: Isolation::Thread,
                }),
                expected: "exit 0, its text, within 5 s".into(),
                got,
                time_to_stop: Some(started.elapsed()),
                ok,
            });
        }
        rows
    });
    drop(runner);
    // A blocked thread the releaser could not free must not hang the test.
    runtime.shutdown_timeout(Duration::from_secs(5));
    rows
}

/// Issue 18, item 7: an artifact in the compile cache that is a FIFO is a
/// cache miss, at both isolation levels and for both guest kinds: `isola
/// run` compiles and runs instead of hanging on the open.
pub fn fifo_in_the_cache() -> Vec<Row> {
    let mut rows = Vec::new();
    for target in crate::targets() {
        let started = Instant::now();
        let result = fifo_in_the_cache_on(target);
        rows.push(Row {
            case: "a FIFO in the cache directory (isola run)".into(),
            target: target_name(target),
            expected: "ran".into(),
            ok: result.is_ok(),
            got: result.unwrap_or_else(|e| e),
            time_to_stop: Some(started.elapsed()),
        });
    }
    rows
}

/// [`fifo_in_the_cache`] on one target: `Ok` with what happened if it ran,
/// `Err` saying what went wrong.
fn fifo_in_the_cache_on(target: Target) -> Result<String, String> {
    let cache = tempfile::tempdir().map_err(|e| e.to_string())?;
    let wasm = match target.kind {
        GuestKind::Module => wat_module(WAT_HELLO),
        GuestKind::Component => guest("hello", GuestKind::Component),
    };
    let run = || {
        let args = [
            OsStr::new("run"),
            OsStr::new("--isolation"),
            OsStr::new(flag(target.isolation)),
            OsStr::new("--cache-dir"),
            cache.path().as_os_str(),
            wasm.as_os_str(),
        ];
        isola_within(&args, &[], Duration::from_secs(60))
    };
    let first = run().ok_or("the first run hung")?;
    if first.status.code() != Some(0) {
        return Err(format!(
            "the first run failed: {}",
            cell(&text(&first.stderr), 80)
        ));
    }
    let artifacts: Vec<PathBuf> = files_under(cache.path())
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    if artifacts.is_empty() {
        return Err("the first run cached no artifact".into());
    }
    for artifact in &artifacts {
        std::fs::remove_file(artifact).map_err(|e| e.to_string())?;
        make_fifo(artifact).map_err(|e| e.to_string())?;
    }
    let second = run().ok_or("the run hung on the FIFO (killed after 60 s)")?;
    if second.status.code() == Some(0) && text(&second.stdout) == HELLO {
        Ok("ran".to_owned())
    } else {
        Err(format!(
            "exit {:?}: {}",
            second.status.code(),
            cell(&text(&second.stderr), 80)
        ))
    }
}

// ---------------------------------------------------------------------
// Timeouts over long host calls
// ---------------------------------------------------------------------

/// A core module that calls `random_get` on 64 MiB in a loop, forever.
pub const RANDOMIZER: &str = r#"(module
  (import "wasi_snapshot_preview1" "random_get"
    (func $random (param i32 i32) (result i32)))
  (memory (export "memory") 1025)
  (func (export "_start")
    (loop $again
      (drop (call $random (i32.const 0) (i32.const 67108864)))
      (br $again))))"#;

/// Issue 18, item 3: `isola run --timeout 500ms` of [`RANDOMIZER`] ends by
/// its timeout (exit 124) within `bound`, at both isolation levels. At
/// thread isolation it took 11-13 s: the one-shot CLI's current-thread
/// runtime checked its timers only every few dozen polls, and each poll
/// was a 64 MiB host call.
pub fn timeout_over_long_host_calls(bound: Duration) -> Vec<Row> {
    let wasm = wat_module(RANDOMIZER);
    let mut rows = Vec::new();
    for isolation in ISOLATIONS {
        let args = [
            OsStr::new("run"),
            OsStr::new("--isolation"),
            OsStr::new(flag(isolation)),
            OsStr::new("--timeout"),
            OsStr::new("500ms"),
            wasm.as_os_str(),
        ];
        let started = Instant::now();
        let out = isola_within(&args, &[], Duration::from_secs(60));
        let took = started.elapsed();
        let (got, ok) = match out {
            None => ("still running after 60 s".to_owned(), false),
            Some(out) => (
                format!(
                    "exit {:?}: {}",
                    out.status.code(),
                    cell(&text(&out.stderr), 60)
                ),
                out.status.code() == Some(124) && took < bound,
            ),
        };
        rows.push(Row {
            case: "64 MiB random_get in a loop, --timeout 500ms (isola run)".into(),
            target: format!("{}/module", isolation_name(isolation)),
            expected: format!("timeout (exit 124) within {bound:?}"),
            got,
            time_to_stop: Some(took),
            ok,
        });
    }
    rows
}

// ---------------------------------------------------------------------
// Paths that are not UTF-8
// ---------------------------------------------------------------------

/// A path in `dir` whose last part is `name` followed by bytes that are
/// not UTF-8.
pub fn not_utf8(dir: &Path, name: &str) -> PathBuf {
    let mut bytes = name.as_bytes().to_vec();
    bytes.extend_from_slice(b"-\xff\xfe");
    dir.join(OsStr::from_bytes(&bytes))
}

/// Issue 18, item 4: a program path and a compile cache whose names are
/// not UTF-8 work at both isolation levels, for both kinds, from the
/// library and from `isola run`. At process isolation the run frame failed
/// to serialize and went out empty ("worker exited with status 70").
pub async fn paths_that_are_not_utf8() -> Vec<Row> {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = not_utf8(root.path(), "dir");
    std::fs::create_dir(&dir).expect("a directory whose name is not UTF-8");
    let program = |kind: GuestKind| -> PathBuf {
        let source = match kind {
            GuestKind::Module => wat_module(WAT_HELLO),
            GuestKind::Component => guest("hello", GuestKind::Component),
        };
        let copy = not_utf8(&dir, &format!("hello-{kind:?}.wasm"));
        if !copy.exists() {
            std::fs::copy(&source, &copy).expect("copy hello");
        }
        copy
    };
    let cache = not_utf8(root.path(), "cache");
    let runner = Runner::with_config(RunnerConfig {
        max_live_tasks: 8,
        cache_dir: CacheDir::Path(cache.clone()),
        worker_program: Some(isola_bin()),
        prestarted_workers: 1,
        ..RunnerConfig::default()
    })
    .expect("runner");

    let mut rows = Vec::new();
    for target in crate::targets() {
        let mut spec = TaskSpec::new(program(target.kind));
        spec.isolation = target.isolation;
        let started = Instant::now();
        let (got, ok) = match runner.run(spec).await {
            Ok(report) => (
                format!("{} / {:?}", report.outcome, report.stdout.text()),
                report.outcome.is_success() && report.stdout.text() == HELLO,
            ),
            Err(err) => (format!("did not start: {err}"), false),
        };
        rows.push(Row {
            case: "program and cache paths not UTF-8 (library)".into(),
            target: target_name(target),
            expected: "ran: exit 0, hello".into(),
            got,
            time_to_stop: Some(started.elapsed()),
            ok,
        });
    }
    drop(runner);

    for kind in KINDS {
        let wasm = program(kind);
        let started = Instant::now();
        let result = tokio::task::spawn_blocking({
            let cache = cache.clone();
            move || {
                let args: [&OsStr; 6] = [
                    OsStr::new("run"),
                    OsStr::new("--isolation"),
                    OsStr::new("process"),
                    OsStr::new("--cache-dir"),
                    cache.as_os_str(),
                    wasm.as_os_str(),
                ];
                isola_within(&args, &[], Duration::from_secs(60))
            }
        })
        .await
        .ok()
        .flatten();
        let (got, ok) = match result {
            None => ("hung, or could not be waited for".to_owned(), false),
            Some(out) => (
                format!("exit {:?}: {:?}", out.status.code(), text(&out.stdout)),
                out.status.code() == Some(0) && text(&out.stdout) == HELLO,
            ),
        };
        rows.push(Row {
            case: "program and cache paths not UTF-8 (isola run)".into(),
            target: target_name(Target {
                kind,
                isolation: Isolation::Process,
            }),
            expected: "ran: exit 0, hello".into(),
            got,
            time_to_stop: Some(started.elapsed()),
            ok,
        });
    }
    rows
}

// ---------------------------------------------------------------------
// Worker processes
// ---------------------------------------------------------------------

/// A symlink to `isola` named `name` in `dir`, so the workers started
/// through it can be told from every other process by their name.
fn named_worker(dir: &Path, name: &str) -> PathBuf {
    let link = dir.join(name);
    std::os::unix::fs::symlink(isola_bin(), &link).expect("symlink the worker");
    link
}

/// A process-isolated spec of the hostile module with `args`.
fn hostile_process(args: &[&str]) -> TaskSpec {
    let mut spec = Target {
        kind: GuestKind::Module,
        isolation: Isolation::Process,
    }
    .spec("hostile");
    spec.args = args.iter().map(|a| (*a).to_owned()).collect();
    spec.limits.timeout = Some(Duration::from_secs(60));
    spec
}

/// Issue 18, item 5: dropping a runner kills and reaps every worker it
/// holds (kept for reuse, or pre-started and idle) before the drop
/// returns, so none is left running or a zombie (they were left for a
/// `SIGCHLD` nobody handled once the runtime was gone). Each part runs on
/// a runtime of its own, dropped with the runner as a program's would be.
///
/// Call it from a thread that is not a runtime worker (a `#[test]`, or
/// `spawn_blocking`).
pub fn no_zombies_after_a_runner_is_dropped() -> Vec<Row> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rows = Vec::new();
    let started = Instant::now();
    let result = kept_workers_are_reaped(dir.path());
    rows.push(Row {
        case: "kept workers after the runner is dropped".into(),
        target: "process/module".into(),
        expected: "none left, no zombie".into(),
        ok: result.is_ok(),
        got: result.unwrap_or_else(|e| e),
        time_to_stop: Some(started.elapsed()),
    });
    let started = Instant::now();
    let result = idle_workers_are_reaped(dir.path());
    rows.push(Row {
        case: "pre-started workers after the runner is dropped".into(),
        target: "process/module".into(),
        expected: "none left, no zombie".into(),
        ok: result.is_ok(),
        got: result.unwrap_or_else(|e| e),
        time_to_stop: Some(started.elapsed()),
    });
    rows
}

/// Kept workers: two reusable tasks at once leave two workers in the
/// runner (no refill runs, so the runner holds the last reference); its
/// drop must reap them before it returns.
fn kept_workers_are_reaped(dir: &Path) -> Result<String, String> {
    // Under the 15 bytes of a process's `comm`.
    let name = "isola-rz-kept";
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let runner = Runner::with_config(RunnerConfig {
        max_live_tasks: 4,
        prestarted_workers: 0,
        reused_workers_kept: 4,
        worker_program: Some(named_worker(dir, name)),
        cache_dir: CacheDir::Path(shared_cache()),
        ..RunnerConfig::default()
    })
    .map_err(|e| e.to_string())?;
    let ran: Result<(), String> = runtime.block_on(async {
        let mut handles = Vec::new();
        for _ in 0..2 {
            let mut spec = hostile_process(&["sleep", "500"]);
            spec.reuse_worker = true;
            match runner.spawn(spec).await {
                Ok(handle) => handles.push(handle),
                Err(err) => return Err(err.to_string()),
            }
        }
        for handle in handles {
            let outcome = handle.wait().await.outcome;
            if outcome != (Outcome::Exited { code: 0 }) {
                return Err(format!("a reusable task ended {outcome}"));
            }
        }
        Ok(())
    });
    ran?;
    let me = Some(std::process::id());
    let kept = processes_named(name, me);
    if kept.len() != 2 {
        return Err(format!("expected two kept workers, found {kept:?}"));
    }
    drop(runner);
    // At once: the drop itself reaped them.
    let left = processes_named(name, me);
    drop(runtime);
    if left.is_empty() {
        Ok("2 kept workers, none left".to_owned())
    } else {
        Err(format!("left after the drop: {left:?}"))
    }
}

/// Pre-started workers, and the refill that starts them: dropped with the
/// runner and its runtime, none may be left.
fn idle_workers_are_reaped(dir: &Path) -> Result<String, String> {
    let name = "isola-rz-idle";
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let runner = Runner::with_config(RunnerConfig {
        max_live_tasks: 4,
        prestarted_workers: 2,
        worker_program: Some(named_worker(dir, name)),
        cache_dir: CacheDir::Path(shared_cache()),
        ..RunnerConfig::default()
    })
    .map_err(|e| e.to_string())?;
    let ran: Result<(), String> = runtime.block_on(async {
        let report = match runner.run(hostile_process(&["exit", "0"])).await {
            Ok(report) => report,
            Err(err) => return Err(err.to_string()),
        };
        if report.outcome != (Outcome::Exited { code: 0 }) {
            return Err(format!("the task ended {}", report.outcome));
        }
        // Let the pool refill, so there are idle workers to drop.
        tokio::time::sleep(Duration::from_millis(500)).await;
        Ok(())
    });
    ran?;
    let me = Some(std::process::id());
    let before = processes_named(name, me).len();
    drop(runner);
    drop(runtime);
    let left = processes_named(name, me);
    if left.is_empty() {
        Ok(format!("{before} idle workers, none left"))
    } else {
        Err(format!("left after the drop: {left:?}"))
    }
}

// ---------------------------------------------------------------------
// `isola up`
// ---------------------------------------------------------------------

/// Issue 18, items 5 and 10, from the command line: under `isola up`, a
/// task the set gives no messages hears "closed" at once when it waits in
/// `recv` (it waited until its timeout, or forever), at both isolation
/// levels and for both kinds; and once `isola up` has exited none of its
/// workers is left, not even as a zombie re-parented to PID 1.
pub fn recv_sees_closed_under_up() -> Vec<Row> {
    let dir = tempfile::tempdir().expect("tempdir");
    let worker_name = "isola-rz-up";
    let worker = named_worker(dir.path(), worker_name);
    let mut toml = String::new();
    let names: Vec<(String, Target)> = crate::targets()
        .into_iter()
        .map(|t| (target_name(t).replace('/', "-"), t))
        .collect();
    for (name, target) in &names {
        toml.push_str(&format!(
            "[[task]]\nname = \"{name}\"\nwasm = '{}'\nisolation = \"{}\"\n\
             limits = {{ timeout = \"120s\" }}\n\n",
            guest("echo", target.kind).display(),
            flag(target.isolation)
        ));
    }
    let path = dir.path().join("tasks.toml");
    std::fs::write(&path, toml).expect("write tasks.toml");
    let started = Instant::now();
    let worker_env: OsString = worker.into_os_string();
    let out = isola_within(
        &[OsStr::new("up"), path.as_os_str()],
        &[("ISOLA_WORKER_PROGRAM", worker_env.as_os_str())],
        Duration::from_secs(60),
    );
    let took = started.elapsed();
    let mut rows = Vec::new();
    let stdout = out.as_ref().map(|o| text(&o.stdout)).unwrap_or_default();
    for (name, target) in &names {
        let answered = stdout
            .lines()
            .any(|l| l.starts_with(name.as_str()) && l.ends_with("| answered 0"));
        rows.push(Row {
            case: "a guest waiting in recv under isola up".into(),
            target: target_name(*target),
            expected: "sees closed at once: answered 0".into(),
            got: match &out {
                None => "isola up still running after 60 s".into(),
                Some(_) if answered => "answered 0".into(),
                Some(o) => format!("exit {:?}, no `answered 0` line", o.status.code()),
            },
            time_to_stop: Some(took),
            ok: answered && out.as_ref().is_some_and(|o| o.status.code() == Some(0)),
        });
    }
    // Any parent: a worker `isola up` did not reap is PID 1's by now.
    let left = processes_named(worker_name, None);
    rows.push(Row {
        case: "workers after isola up exits".into(),
        target: "process/mixed".into(),
        expected: "none left, no zombie".into(),
        got: if left.is_empty() {
            "none left".into()
        } else {
            format!("left: {left:?}")
        },
        time_to_stop: None,
        ok: left.is_empty() && out.is_some(),
    });
    rows
}

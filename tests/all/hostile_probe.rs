//! Faults a hostile probe found (issue 18), each kept as a test: paths that
//! are not UTF-8 at process isolation, workers left as zombies, a FIFO in
//! the compile cache, `isola check` passing what `isola up` refuses,
//! misleading messages and metrics, and message channels nobody closes.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use isola::{CacheDir, DirGrant, Isolation, Outcome, Runner, RunnerConfig, Stdin, TaskSpec};
use isola_tests::faults::files_under;
use isola_tests::procs::processes_named;
use isola_tests::{
    GuestKind, ISOLATIONS, guest, isola_bin, isola_within, runner_with_cache, shared_cache,
};

/// As [`isola_within`] with text arguments and no extra environment.
fn isola_text(args: &[&str], limit: Duration) -> Option<Output> {
    let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    isola_within(&args, &[], limit)
}

/// Text of an output stream.
fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A path in `dir` whose last part is `name` followed by bytes that are
/// not UTF-8.
fn not_utf8(dir: &Path, name: &str) -> PathBuf {
    let mut bytes = name.as_bytes().to_vec();
    bytes.extend_from_slice(b"-\xff\xfe");
    dir.join(OsStr::from_bytes(&bytes))
}

// ---------------------------------------------------------------------
// Item 4: paths that are not UTF-8
// ---------------------------------------------------------------------

/// A program, a granted directory, a stdin file and the cache directory,
/// all under names that are not UTF-8, work at both isolations. Process
/// tasks were refused by a rule (and before the rule, their run frame went
/// out empty and the worker exited with status 70).
#[tokio::test(flavor = "multi_thread")]
async fn paths_that_are_not_utf8_work_at_both_isolations() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = not_utf8(root.path(), "dir");
    std::fs::create_dir(&dir).expect("a directory whose name is not UTF-8");
    let hello = dir.join("hello.wasm");
    std::fs::copy(guest("hello", GuestKind::Module), &hello).expect("copy hello");
    let hello2 = dir.join("hello2.wasm");
    std::fs::copy(guest("hello", GuestKind::Component), &hello2).expect("copy hello");
    let echo = dir.join("echo_cli.wasm");
    std::fs::copy(guest("echo_cli", GuestKind::Module), &echo).expect("copy echo_cli");
    let data = not_utf8(&dir, "data");
    std::fs::create_dir(&data).expect("data dir");
    std::fs::write(data.join("note.txt"), "a note\n").expect("write note");
    let input = not_utf8(&dir, "in");
    std::fs::write(&input, "from a file\n").expect("write stdin file");
    // The runner's compile cache too, which process tasks' workers load
    // from (and pre-started workers preload with the last program's path).
    let cache = not_utf8(root.path(), "cache");
    let runner = runner_with_cache(&cache);

    for isolation in ISOLATIONS {
        for wasm in [&hello, &hello2] {
            let mut spec = TaskSpec::new(wasm);
            spec.isolation = isolation;
            let report = runner.run(spec).await.expect("hello starts");
            assert_eq!(
                (report.outcome, report.stdout.text().into_owned()),
                (
                    Outcome::Exited { code: 0 },
                    "Hello from Isola!\n".to_owned()
                ),
                "{isolation}: {}",
                wasm.display()
            );
        }

        let mut spec = TaskSpec::new(&echo);
        spec.isolation = isolation;
        spec.args = vec!["cat".into(), "/data/note.txt".into()];
        spec.dirs = vec![DirGrant {
            host: data.clone(),
            guest: Some("/data".into()),
            writable: false,
        }];
        let report = runner.run(spec).await.expect("cat starts");
        assert_eq!(
            (report.outcome, report.stdout.text().into_owned()),
            (Outcome::Exited { code: 0 }, "a note\n".to_owned()),
            "{isolation}: {}",
            report.stderr.text()
        );

        let mut spec = TaskSpec::new(&echo);
        spec.isolation = isolation;
        spec.args = vec!["stdin".into()];
        spec.stdin = Stdin::File(input.clone());
        let report = runner.run(spec).await.expect("stdin starts");
        assert_eq!(
            (report.outcome, report.stdout.text().into_owned()),
            (Outcome::Exited { code: 0 }, "from a file\n".to_owned()),
            "{isolation}: {}",
            report.stderr.text()
        );
    }
}

/// The same from the command line: `isola run` of a program, with a cache
/// directory and a `--dir` grant whose names are not UTF-8, at both
/// isolations.
#[test]
fn isola_run_takes_paths_that_are_not_utf8_at_both_isolations() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = not_utf8(root.path(), "dir");
    std::fs::create_dir(&dir).expect("mkdir");
    let hello = dir.join("hello.wasm");
    std::fs::copy(guest("hello", GuestKind::Module), &hello).expect("copy hello");
    let echo = dir.join("echo_cli.wasm");
    std::fs::copy(guest("echo_cli", GuestKind::Module), &echo).expect("copy echo_cli");
    let data = not_utf8(&dir, "data");
    std::fs::create_dir(&data).expect("mkdir data");
    std::fs::write(data.join("note.txt"), "a note\n").expect("write note");
    let mut grant = data.as_os_str().to_owned();
    grant.push("::/data");
    let cache = not_utf8(root.path(), "cache");
    for isolation in ["thread", "process"] {
        let args = [
            OsStr::new("run"),
            OsStr::new("--isolation"),
            OsStr::new(isolation),
            OsStr::new("--cache-dir"),
            cache.as_os_str(),
            hello.as_os_str(),
        ];
        let out = isola_within(&args, &[], Duration::from_secs(60)).expect("isola run ends");
        assert_eq!(
            (out.status.code(), text(&out.stdout)),
            (Some(0), "Hello from Isola!\n".to_owned()),
            "{isolation}: {}",
            text(&out.stderr)
        );

        let args = [
            OsStr::new("run"),
            OsStr::new("--isolation"),
            OsStr::new(isolation),
            OsStr::new("--cache-dir"),
            cache.as_os_str(),
            OsStr::new("--dir-ro"),
            grant.as_os_str(),
            echo.as_os_str(),
            OsStr::new("--"),
            OsStr::new("cat"),
            OsStr::new("/data/note.txt"),
        ];
        let out = isola_within(&args, &[], Duration::from_secs(60)).expect("isola run ends");
        assert_eq!(
            (out.status.code(), text(&out.stdout)),
            (Some(0), "a note\n".to_owned()),
            "{isolation}: {}",
            text(&out.stderr)
        );
    }
}

// ---------------------------------------------------------------------
// Item 5: no zombie workers
// ---------------------------------------------------------------------

/// Our children named `name`, zombies included.
fn workers_named(name: &str) -> Vec<(u32, String)> {
    processes_named(name, Some(std::process::id()))
}

/// A worker program of its own name (a symlink to `isola`), so that this
/// test's workers can be told from those of the tests running beside it.
fn named_worker(dir: &Path, name: &str) -> PathBuf {
    let link = dir.join(name);
    std::os::unix::fs::symlink(isola_bin(), &link).expect("symlink the worker");
    link
}

/// A process-isolated spec of guest `name`.
fn process(name: &str, args: &[&str]) -> TaskSpec {
    let mut spec = TaskSpec::new(guest(name, GuestKind::Module));
    spec.isolation = Isolation::Process;
    spec.args = args.iter().map(|a| (*a).to_owned()).collect();
    spec
}

/// Dropping a runner kills and reaps the workers it keeps, before `drop`
/// returns: none is left running or a zombie. (They were killed by Tokio's
/// `kill_on_drop` and left for a `SIGCHLD` that, once the runtime is
/// gone, nobody handles.)
#[test]
fn dropping_a_runner_reaps_its_kept_and_prestarted_workers() {
    let dir = tempfile::tempdir().expect("tempdir");

    // Kept workers: two `reuse_worker` tasks at once leave two workers in
    // the runner; no pool refill runs, so the runner holds the last
    // reference and its drop is the backend's.
    let kept_name = "isola-reap-kept";
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let runner = Runner::with_config(RunnerConfig {
        max_live_tasks: 4,
        prestarted_workers: 0,
        reused_workers_kept: 4,
        worker_program: Some(named_worker(dir.path(), kept_name)),
        cache_dir: CacheDir::Path(shared_cache()),
        ..RunnerConfig::default()
    })
    .expect("runner");
    runtime.block_on(async {
        let mut handles = Vec::new();
        for _ in 0..2 {
            let mut spec = process("hostile", &["sleep", "500"]);
            spec.reuse_worker = true;
            handles.push(runner.spawn(spec).await.expect("spawn"));
        }
        for handle in handles {
            assert_eq!(handle.wait().await.outcome, Outcome::Exited { code: 0 });
        }
    });
    let kept = workers_named(kept_name);
    assert_eq!(kept.len(), 2, "two kept workers: {kept:?}");
    drop(runner);
    // At once: the drop itself reaped them.
    assert_eq!(
        workers_named(kept_name),
        Vec::<(u32, String)>::new(),
        "kept workers left after the drop"
    );
    drop(runtime);

    // Pre-started workers, and the refill that starts them: dropped with
    // the runtime, whatever still holds them is reaped too.
    let idle_name = "isola-reap-idle";
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let runner = Runner::with_config(RunnerConfig {
        max_live_tasks: 4,
        prestarted_workers: 2,
        worker_program: Some(named_worker(dir.path(), idle_name)),
        cache_dir: CacheDir::Path(shared_cache()),
        ..RunnerConfig::default()
    })
    .expect("runner");
    runtime.block_on(async {
        let report = runner.run(process("hello", &[])).await.expect("run");
        assert_eq!(report.outcome, Outcome::Exited { code: 0 });
    });
    let started = isola_tests::procs::wait_until(Duration::from_secs(30), || {
        workers_named(idle_name).len() >= 2
    });
    assert!(started, "the pool refilled: {:?}", workers_named(idle_name));
    drop(runner);
    runtime.shutdown_timeout(Duration::from_secs(10));
    assert_eq!(
        workers_named(idle_name),
        Vec::<(u32, String)>::new(),
        "pre-started workers left after the runner and its runtime"
    );
}

/// `isola up` reaps every worker it started before it exits: none is left
/// to PID 1, whose reaping a container may not do.
#[test]
fn isola_up_leaves_no_worker_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let name = "isola-reap-up";
    let worker = named_worker(dir.path(), name);
    let hello = guest("hello", GuestKind::Module);
    let mut toml = String::new();
    for i in 0..4 {
        toml.push_str(&format!(
            "[[task]]\nname = \"p{i}\"\nwasm = '{}'\nisolation = \"process\"\n\n",
            hello.display()
        ));
    }
    let set = dir.path().join("tasks.toml");
    std::fs::write(&set, toml).expect("write tasks.toml");
    for run in 0..3 {
        let out = isola_within(
            &[
                OsStr::new("up"),
                set.as_os_str(),
                OsStr::new("--jobs"),
                OsStr::new("2"),
            ],
            &[("ISOLA_WORKER_PROGRAM", worker.as_os_str())],
            Duration::from_secs(60),
        )
        .expect("isola up ends");
        assert_eq!(
            out.status.code(),
            Some(0),
            "run {run}: {}",
            text(&out.stderr)
        );
        // Any parent: a worker isola did not reap is PID 1's by now.
        let left = processes_named(name, None);
        assert_eq!(
            left,
            Vec::<(u32, String)>::new(),
            "run {run}: workers outlived `isola up`"
        );
    }
}

// ---------------------------------------------------------------------
// Item 7: a FIFO in the cache directory
// ---------------------------------------------------------------------

/// An artifact path that is a FIFO (opened to read, it waits for a writer
/// forever) is a cache miss: `isola run` compiles and runs, at both
/// isolations and for both guest kinds, instead of hanging.
#[test]
fn a_fifo_in_the_cache_directory_does_not_hang_a_run() {
    for kind in [GuestKind::Module, GuestKind::Component] {
        for isolation in ["thread", "process"] {
            let cache = tempfile::tempdir().expect("tempdir");
            let wasm = guest("hello", kind);
            let run = || {
                let args = [
                    OsStr::new("run"),
                    OsStr::new("--isolation"),
                    OsStr::new(isolation),
                    OsStr::new("--cache-dir"),
                    cache.path().as_os_str(),
                    wasm.as_os_str(),
                ];
                isola_within(&args, &[], Duration::from_secs(60))
            };
            let out = run().expect("the first run ends");
            assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
            let artifacts: Vec<PathBuf> = files_under(cache.path())
                .into_iter()
                .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
                .collect();
            assert!(!artifacts.is_empty(), "the first run cached its artifact");
            for artifact in &artifacts {
                std::fs::remove_file(artifact).expect("remove the artifact");
                let made = Command::new("mkfifo")
                    .arg(artifact)
                    .status()
                    .expect("run mkfifo");
                assert!(made.success(), "mkfifo {}", artifact.display());
            }
            let out = run().unwrap_or_else(|| {
                panic!("{kind:?} at {isolation} isolation hung on a FIFO in the cache")
            });
            assert_eq!(
                (out.status.code(), text(&out.stdout)),
                (Some(0), "Hello from Isola!\n".to_owned()),
                "{kind:?} at {isolation}: {}",
                text(&out.stderr)
            );
        }
    }
}

// ---------------------------------------------------------------------
// Item 8: `isola check` applies every rule `isola up` applies
// ---------------------------------------------------------------------

/// Line and column (from 1) of the first `needle` in `source`.
fn position(source: &str, needle: &str) -> (usize, usize) {
    let offset = source
        .find(needle)
        .unwrap_or_else(|| panic!("`{needle}` is not in the source"));
    let before = &source[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before[before.rfind('\n').map_or(0, |i| i + 1)..]
        .chars()
        .count()
        + 1;
    (line, column)
}

/// A set that `isola up` refused at start: a memory limit over the
/// runner's per-task ceiling, and NUL characters in an argument, a
/// variable's name and `argv0`. `isola check` now reports each at its
/// file, line, column and field, and exits 2; a limit at the ceiling is
/// fine.
#[test]
fn check_refuses_what_up_would_refuse_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hello = guest("hello", GuestKind::Module);
    let source = format!(
        r#"[[task]]
name = "huge"
wasm = '{hello}'
limits = {{ max_memory = "1PiB" }}

[[task]]
name = "huge-process"
wasm = '{hello}'
isolation = "process"
limits = {{ max_memory = "5GiB" }}

[[task]]
name = "nul-arg"
wasm = '{hello}'
args = ["ok", "a\u0000b"]

[[task]]
name = "nul-env"
wasm = '{hello}'
env = {{ "A\u0000B" = "v" }}

[[task]]
name = "nul-argv0"
wasm = '{hello}'
argv0 = "x\u0000"

[[task]]
name = "at-the-ceiling"
wasm = '{hello}'
limits = {{ max_memory = "4GiB" }}
"#,
        hello = hello.display()
    );
    let path = dir.path().join("tasks.toml");
    std::fs::write(&path, &source).expect("write tasks.toml");
    let file = path.display().to_string();
    let at = |needle: &str| {
        let (line, column) = position(&source, needle);
        format!("{file}:{line}:{column}: ")
    };
    let expected = [
        format!(
            "{}task `huge`: field `limits.max_memory`: 1.0 PiB is more than the runner allows \
             per task (4.0 GiB, its `max_memory_per_task`)",
            at("\"1PiB\"")
        ),
        format!(
            "{}task `huge-process`: field `limits.max_memory`: 5.0 GiB is more than the runner \
             allows per task (4.0 GiB, its `max_memory_per_task`)",
            at("\"5GiB\"")
        ),
        format!(
            "{}task `nul-arg`: field `args[1]`: contains a NUL character",
            at("\"a\\u0000b\"")
        ),
        format!(
            "{}task `nul-env`: field `env.A\\u{{0}}B`: contains a NUL character",
            at("\"A\\u0000B\"")
        ),
        format!(
            "{}task `nul-argv0`: field `argv0`: contains a NUL character",
            at("\"x\\u0000\"")
        ),
    ];
    let p = path.to_str().expect("a UTF-8 temp path");

    let out = isola_text(&["check", p], Duration::from_secs(60)).expect("check ends");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    let lines: Vec<&str> = err.lines().collect();
    for line in &expected {
        assert!(lines.contains(&line.as_str()), "`{line}` in:\n{err}");
    }
    assert_eq!(
        lines.last().copied(),
        Some(format!("error: 5 problems found in {file}").as_str()),
        "{err}"
    );
    assert!(!err.contains("at-the-ceiling"), "4 GiB is allowed: {err}");

    // `isola up` refuses the same set the same way, before running a task.
    let out = isola_text(&["up", p], Duration::from_secs(60)).expect("up ends");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    for line in &expected {
        assert!(text(&out.stderr).contains(line.as_str()), "`{line}`");
    }
    assert_eq!(text(&out.stdout), "", "no task ran");

    // Without the faults, `check` and `up` agree that it runs.
    let fixed = dir.path().join("fixed.toml");
    std::fs::write(
        &fixed,
        format!(
            "[[task]]\nname = \"at-the-ceiling\"\nwasm = '{}'\nlimits = {{ max_memory = \"4GiB\" }}\n",
            hello.display()
        ),
    )
    .expect("write fixed.toml");
    let f = fixed.to_str().expect("UTF-8");
    let out = isola_text(&["check", f], Duration::from_secs(60)).expect("check ends");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = isola_text(&["up", f], Duration::from_secs(60)).expect("up ends");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

/// Shared memory groups: the default runner's budget (4 GiB for all
/// groups together) and `initial` within `maximum` are checked by `isola
/// check` as `isola up` would when it creates them.
#[test]
fn check_applies_the_runner_s_shared_memory_budget() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hello = guest("hello", GuestKind::Module);
    let source = format!(
        r#"[[shared_memory]]
name = "a"
wasm = '{hello}'
maximum = "3GiB"

[[shared_memory]]
name = "b"
wasm = '{hello}'
maximum = "2GiB"

[[shared_memory]]
name = "c"
wasm = '{hello}'
initial = "2MiB"
maximum = "1MiB"

[[task]]
name = "t"
wasm = '{hello}'
"#,
        hello = hello.display()
    );
    let path = dir.path().join("tasks.toml");
    std::fs::write(&path, &source).expect("write tasks.toml");
    let file = path.display().to_string();
    let p = path.to_str().expect("UTF-8");
    let out = isola_text(&["check", p], Duration::from_secs(60)).expect("check ends");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    let (line, column) = position(&source, "\"2GiB\"");
    assert!(
        err.contains(&format!(
            "{file}:{line}:{column}: shared_memory `b`: field `maximum`: 2.0 GiB would exceed \
             the runner's shared memory budget (3.0 GiB of 4.0 GiB taken by the groups before \
             this one)"
        )),
        "{err}"
    );
    let (line, column) = position(&source, "\"2MiB\"");
    assert!(
        err.contains(&format!(
            "{file}:{line}:{column}: shared_memory `c`: field `initial`: 2.0 MiB is more than \
             the group's `maximum` (1.0 MiB)"
        )),
        "{err}"
    );
}

// ---------------------------------------------------------------------
// Item 9: messages that mislead
// ---------------------------------------------------------------------

/// A size too large for 64 bits is called too large, on the command line
/// and in `tasks.toml` (it was "couldn't parse "" into a known SI unit",
/// and "is not a size").
#[test]
fn sizes_too_large_are_called_too_large() {
    let hello = guest("hello", GuestKind::Module);
    let h = hello.to_str().expect("UTF-8");
    for flag in ["--max-memory", "--max-output"] {
        let out = isola_text(
            &["run", flag, "99999999999999999999999", h],
            Duration::from_secs(60),
        )
        .expect("isola run ends");
        assert_eq!(out.status.code(), Some(2), "{flag}");
        let err = text(&out.stderr);
        assert!(
            err.contains("too large: a size is at most 18446744073709551615 bytes"),
            "{flag}: {err}"
        );
        assert!(!err.contains("SI unit"), "{flag}: {err}");
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tasks.toml");
    std::fs::write(
        &path,
        format!(
            "[[task]]\nname = \"t\"\nwasm = '{h}'\nlimits = {{ max_memory = \"99999999999999999999999\" }}\n"
        ),
    )
    .expect("write tasks.toml");
    let p = path.to_str().expect("UTF-8");
    let out = isola_text(&["check", p], Duration::from_secs(60)).expect("check ends");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains(
            "task `t`: field `limits.max_memory`: \"99999999999999999999999\" is too large: a \
             size is at most 18446744073709551615 bytes (just under 16 EiB)"
        ),
        "{}",
        text(&out.stderr)
    );
}

/// A process task whose worker died before it reported measured nothing:
/// the summary says `unknown` rather than `0 B` and `0` as if measured.
#[test]
fn unmeasured_process_metrics_show_as_unknown() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hello = guest("hello", GuestKind::Module);
    let path = dir.path().join("tasks.toml");
    // So little memory that the worker cannot run the guest: it dies or
    // reports that it could not start, either way without measuring it.
    std::fs::write(
        &path,
        format!(
            "[[task]]\nname = \"starved\"\nwasm = '{}'\nisolation = \"process\"\n\
             limits = {{ process_memory = \"64KiB\" }}\n\n\
             [[task]]\nname = \"measured\"\nwasm = '{}'\n",
            hello.display(),
            hello.display()
        ),
    )
    .expect("write tasks.toml");
    let p = path.to_str().expect("UTF-8");
    let out = isola_text(&["up", p], Duration::from_secs(60)).expect("up ends");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    // The summary table comes last: a task's last line starting with its
    // name is its row (earlier ones say it started and how it ended).
    let row = |task: &str| {
        stdout
            .lines()
            .rev()
            .find(|l| l.starts_with(&format!("{task} ")))
            .unwrap_or_else(|| panic!("a summary row for `{task}` in:\n{stdout}"))
            .to_owned()
    };
    let starved = row("starved");
    let cells: Vec<&str> = starved.split_whitespace().collect();
    assert_eq!(
        cells[cells.len().saturating_sub(2)..],
        ["unknown", "unknown"],
        "PEAK MEM and FUEL of a worker that never reported:\n{stdout}"
    );
    let measured = row("measured");
    assert!(!measured.contains("unknown"), "{measured}\n{stdout}");
}

// ---------------------------------------------------------------------
// Item 10: a channel nobody sends on is closed
// ---------------------------------------------------------------------

/// Under `isola up`, a task the set gives no messages hears "closed" at
/// once when it waits in `recv`, at both isolations and for both guest
/// kinds (it waited until its timeout, or forever).
#[test]
fn up_closes_the_channel_of_a_task_given_no_messages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut toml = String::new();
    for (name, kind, isolation) in [
        ("thread-module", GuestKind::Module, "thread"),
        ("thread-component", GuestKind::Component, "thread"),
        ("process-module", GuestKind::Module, "process"),
        ("process-component", GuestKind::Component, "process"),
    ] {
        toml.push_str(&format!(
            "[[task]]\nname = \"{name}\"\nwasm = '{}'\nisolation = \"{isolation}\"\n\
             limits = {{ timeout = \"120s\" }}\n\n",
            guest("echo", kind).display()
        ));
    }
    let path = dir.path().join("tasks.toml");
    std::fs::write(&path, toml).expect("write tasks.toml");
    let p = path.to_str().expect("UTF-8");
    let out = isola_text(&["up", p], Duration::from_secs(60))
        .expect("`isola up` ends long before the tasks' timeouts");
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    for name in [
        "thread-module",
        "thread-component",
        "process-module",
        "process-component",
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(name) && l.ends_with("| answered 0")),
            "`{name}` answered no message and ended:\n{stdout}"
        );
    }
}

/// `isola run` without `--messages` closes the channel too.
#[test]
fn run_without_messages_closes_the_channel() {
    for kind in [GuestKind::Module, GuestKind::Component] {
        for isolation in ["thread", "process"] {
            let echo = guest("echo", kind);
            let out = isola_text(
                &[
                    "run",
                    "--isolation",
                    isolation,
                    echo.to_str().expect("UTF-8"),
                ],
                Duration::from_secs(60),
            )
            .unwrap_or_else(|| panic!("{kind:?} at {isolation}: the guest waited forever"));
            assert_eq!(
                (out.status.code(), text(&out.stdout)),
                (Some(0), "answered 0\n".to_owned()),
                "{kind:?} at {isolation}: {}",
                text(&out.stderr)
            );
        }
    }
}

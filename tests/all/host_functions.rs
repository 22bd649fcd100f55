//! Host functions (issue 14): services the embedding program owns, which
//! tasks call by name the same way at both isolation levels and from both
//! guest kinds, only as their spec grants.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use isola::{
    CacheDir, CallError, Error, HostFunctions, Isolation, Limit, Outcome, Output, Runner,
    RunnerConfig, TaskSpec,
};
use isola_tests::{GuestKind, Target, isola_bin, shared_cache, targets};

/// Set when dropped: tells whether a host function's future was dropped.
struct Dropped(Arc<AtomicBool>);

impl Drop for Dropped {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// What the test host offers: `echo` (its arguments back, with the caller's
/// program name), `fail` (an error value), `panic`, `sleep` (never
/// answers; marks `dropped` when its future goes), `count` (counts calls)
/// and `big` (a result of as many bytes as its argument says).
fn functions(dropped: Arc<AtomicBool>, counted: Arc<AtomicU64>) -> HostFunctions {
    HostFunctions::new()
        .with("echo", |call| async move {
            let mut reply = format!("{}:", call.program).into_bytes();
            reply.extend_from_slice(&call.args);
            Ok(reply)
        })
        .with("fail", |_| async { Err("the service refused".to_owned()) })
        .with("panic", |_| async { panic!("the host function broke") })
        .with("sleep", {
            // Calls of `sleep` count too: a test ends a task only once its
            // call is in flight (a fixed wait was not enough on a loaded
            // machine, and a call never made is never dropped).
            let started = Arc::clone(&counted);
            move |_| {
                started.fetch_add(1, Ordering::SeqCst);
                let guard = Dropped(Arc::clone(&dropped));
                async move {
                    let _guard = guard;
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    Ok(Vec::new())
                }
            }
        })
        .with("count", move |_| {
            let n = counted.fetch_add(1, Ordering::SeqCst) + 1;
            async move { Ok(n.to_string().into_bytes()) }
        })
        .with("big", |call| async move {
            let n: usize = String::from_utf8_lossy(&call.args).parse().unwrap_or(0);
            Ok(vec![b'x'; n])
        })
}

fn runner_with(functions: HostFunctions) -> Runner {
    Runner::with_config(RunnerConfig {
        cache_dir: CacheDir::Path(shared_cache()),
        worker_program: Some(isola_bin()),
        prestarted_workers: 0,
        host_functions: functions,
        ..RunnerConfig::default()
    })
    .expect("runner")
}

/// A `host_call` task of `target` with `args`, granted `granted`, its
/// stdout captured.
fn spec(target: Target, args: &[&str], granted: &[&str]) -> TaskSpec {
    let mut spec = target.spec("host_call");
    spec.args = args.iter().map(|a| (*a).to_owned()).collect();
    spec.host_functions = granted.iter().map(|g| (*g).to_owned()).collect();
    spec.stdout = Output::Capture;
    spec
}

#[tokio::test(flavor = "multi_thread")]
async fn guests_call_granted_host_functions_at_both_levels() {
    let counted = Arc::new(AtomicU64::new(0));
    let runner = runner_with(functions(Arc::default(), Arc::clone(&counted)));
    for target in targets() {
        // A result, with the calling task's identity.
        let report = runner
            .run(spec(target, &["call", "echo", "hi"], &["echo"]))
            .await
            .expect("spawn");
        assert_eq!(report.outcome, Outcome::Exited { code: 0 }, "{target:?}");
        assert_eq!(
            report.stdout.text(),
            "ok: host_call.wasm:hi\n",
            "{target:?}"
        );

        // The function's error is the guest's error value, not a trap.
        let report = runner
            .run(spec(target, &["call", "fail", ""], &["fail"]))
            .await
            .expect("spawn");
        assert_eq!(
            report.stdout.text(),
            "err: the service refused\n",
            "{target:?}"
        );
        assert_eq!(
            report.outcome,
            Outcome::Exited {
                code: isola_tests::expected_exit(target.kind, 3)
            }
        );

        // A function not granted: an error value naming the grant, and
        // the function never runs.
        let before = counted.load(Ordering::SeqCst);
        let report = runner
            .run(spec(target, &["call", "count", ""], &["echo"]))
            .await
            .expect("spawn");
        assert!(
            report
                .stdout
                .text()
                .starts_with("err: host function `count` is not granted"),
            "{target:?}: {}",
            report.stdout.text()
        );
        assert_eq!(counted.load(Ordering::SeqCst), before, "{target:?}");

        // Many calls in one task, each counted once.
        let report = runner
            .run(spec(target, &["calls", "50", "count", ""], &["count"]))
            .await
            .expect("spawn");
        assert_eq!(report.outcome, Outcome::Exited { code: 0 }, "{target:?}");
        assert_eq!(counted.load(Ordering::SeqCst), before + 50, "{target:?}");
    }
}

/// Deny by default: a guest that imports the host call and is granted
/// nothing is refused before it starts, naming the field; a grant of a
/// function the runner lacks is refused naming its index.
#[tokio::test(flavor = "multi_thread")]
async fn ungranted_or_unknown_host_functions_are_refused_by_field() {
    let runner = runner_with(functions(Arc::default(), Arc::default()));
    for target in targets() {
        let err = runner
            .spawn(spec(target, &["call", "echo", "x"], &[]))
            .await
            .expect_err("no grant");
        match err {
            Error::InvalidSpec { field, message } => {
                assert_eq!(field, "host_functions", "{target:?}");
                assert!(
                    message.contains("imports the host function call"),
                    "{message}"
                );
            }
            other => panic!("{target:?}: {other:?}"),
        }
        let err = runner
            .spawn(spec(target, &["call", "echo", "x"], &["echo", "missing"]))
            .await
            .expect_err("unknown function");
        match err {
            Error::InvalidSpec { field, message } => {
                assert_eq!(field, "host_functions[1]", "{target:?}");
                assert!(message.contains("no host function `missing`"), "{message}");
            }
            other => panic!("{target:?}: {other:?}"),
        }
    }
    // A program that does not import the call runs without grants.
    let mut hello = TaskSpec::new(isola_tests::guest("hello", GuestKind::Module));
    hello.isolation = Isolation::Process;
    let report = runner.run(hello).await.expect("spawn");
    assert_eq!(report.outcome, Outcome::Exited { code: 0 });
}

/// A host function that panics ends its task `Failed` naming it; the host
/// and the next task go on.
#[tokio::test(flavor = "multi_thread")]
async fn a_panicking_host_function_ends_only_its_task() {
    let runner = runner_with(functions(Arc::default(), Arc::default()));
    for target in targets() {
        let report = runner
            .run(spec(target, &["call", "panic", ""], &["panic"]))
            .await
            .expect("spawn");
        match &report.outcome {
            Outcome::Failed { message } => assert!(
                message.contains("host function `panic` panicked: the host function broke"),
                "{target:?}: {message}"
            ),
            other => panic!("{target:?}: {other:?}"),
        }
        let report = runner
            .run(spec(target, &["call", "echo", "after"], &["echo"]))
            .await
            .expect("spawn");
        assert_eq!(report.outcome, Outcome::Exited { code: 0 }, "{target:?}");
    }
}

/// How a task with a host call in flight is ended.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Ending {
    Cancel,
    Timeout,
    /// Its worker killed (process tasks).
    Kill,
}

/// A call in flight ends with its task: by a cancel, by the timeout, or by
/// its worker's death. The function's future is dropped at both levels,
/// and no call is left dangling in the parent.
#[tokio::test(flavor = "multi_thread")]
async fn a_call_in_flight_ends_with_its_task() {
    for target in targets() {
        for ending in [Ending::Cancel, Ending::Timeout, Ending::Kill] {
            if ending == Ending::Kill && target.isolation == Isolation::Thread {
                continue;
            }
            let dropped = Arc::new(AtomicBool::new(false));
            let started = Arc::new(AtomicU64::new(0));
            let runner = runner_with(functions(Arc::clone(&dropped), Arc::clone(&started)));
            let mut spec = spec(target, &["call", "sleep", ""], &["sleep"]);
            if ending == Ending::Timeout {
                spec.limits.timeout = Some(Duration::from_millis(300));
            }
            let handle = runner.spawn(spec).await.expect("spawn");
            if ending != Ending::Timeout {
                in_flight(&started).await;
            }
            match ending {
                Ending::Timeout => {}
                Ending::Cancel => {
                    handle.cancel();
                }
                Ending::Kill => {
                    let pid = handle.process_id().expect("a worker");
                    // SAFETY: signals the task's own worker process.
                    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                }
            }
            let report = tokio::time::timeout(Duration::from_secs(10), handle.wait())
                .await
                .expect("the task ends");
            match ending {
                Ending::Timeout => assert_eq!(
                    report.outcome,
                    Outcome::LimitExceeded {
                        limit: Limit::Timeout {
                            after: Duration::from_millis(300),
                        },
                    },
                    "{target:?}"
                ),
                Ending::Cancel => assert_eq!(report.outcome, Outcome::Cancelled, "{target:?}"),
                Ending::Kill => assert!(
                    matches!(report.outcome, Outcome::Crashed { .. }),
                    "{target:?}: {}",
                    report.outcome
                ),
            }
            // The parent drops it when the task's end reaches it (a call
            // the timeout beat to the parent was never made: nothing to
            // drop).
            if started.load(Ordering::SeqCst) == 0 {
                assert_eq!(ending, Ending::Timeout, "{target:?}");
                continue;
            }
            for _ in 0..100 {
                if dropped.load(Ordering::SeqCst) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert!(
                dropped.load(Ordering::SeqCst),
                "{target:?} ({ending:?}): the call's future outlived its task"
            );
        }
    }
}

/// Arguments past the message size limit end the task with that limit; a
/// result past it is an error value.
#[tokio::test(flavor = "multi_thread")]
async fn oversized_arguments_and_results_are_bounded() {
    let runner = runner_with(functions(Arc::default(), Arc::default()));
    let long = "y".repeat(4096);
    for target in targets() {
        let mut over = spec(target, &["call", "echo", &long], &["echo"]);
        over.limits.max_message_size = isola::ByteSize::kib(1);
        let report = runner.run(over).await.expect("spawn");
        assert_eq!(
            report.outcome,
            Outcome::LimitExceeded {
                limit: Limit::MessageSize {
                    max: isola::ByteSize::kib(1)
                }
            },
            "{target:?}"
        );

        let mut big = spec(target, &["call", "big", "4096"], &["big"]);
        big.limits.max_message_size = isola::ByteSize::kib(1);
        let report = runner.run(big).await.expect("spawn");
        assert!(
            report
                .stdout
                .text()
                .starts_with("err: the host function's result (4096 bytes) is larger"),
            "{target:?}: {}",
            report.stdout.text()
        );
    }
    // A result larger than any frame between a worker and its parent, under
    // the default limit: refused by the parent as an error value, not sent
    // (a frame that size would break the pipe and the worker with it).
    let target = Target {
        kind: GuestKind::Module,
        isolation: Isolation::Process,
    };
    let huge = (70usize << 20).to_string();
    let report = runner
        .run(spec(target, &["call", "big", &huge], &["big"]))
        .await
        .expect("spawn");
    assert!(
        report.stdout.text().starts_with(&format!(
            "err: the host function's result ({huge} bytes) is larger"
        )),
        "{}: {}",
        report.outcome,
        report.stdout.text()
    );
}

/// A kept plugin in a worker whose worker dies while its host call runs:
/// the call ends at once (the worker's end is noticed while the function
/// runs), and the function's future is dropped.
#[tokio::test(flavor = "multi_thread")]
async fn a_kept_plugins_host_call_ends_when_its_worker_dies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wasm = isola_tests::wat_file(
        dir.path(),
        "sleeping.wasm",
        &COUNTING_PLUGIN.replace("\"count\")", "\"sleep\")"),
    );
    let dropped = Arc::new(AtomicBool::new(false));
    let started = Arc::new(AtomicU64::new(0));
    let runner = runner_with(functions(Arc::clone(&dropped), Arc::clone(&started)));
    let mut spec = TaskSpec::new(&wasm);
    spec.isolation = Isolation::Process;
    spec.host_functions = vec!["sleep".into()];
    let mut plugin = runner.plugin(spec).await.expect("a kept plugin");
    let pid = plugin.process_id().expect("a worker");
    let killer = tokio::spawn(async move {
        in_flight(&started).await;
        // SAFETY: signals the plugin's own worker process.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    });
    let ended = tokio::time::timeout(Duration::from_secs(5), plugin.call(Vec::new()))
        .await
        .expect("the call ends when its worker dies");
    killer.await.expect("killer");
    match ended {
        Err(isola::CallError::Ended(report)) => {
            assert!(
                matches!(report.outcome, Outcome::Crashed { .. }),
                "{}",
                report.outcome
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(
        dropped.load(Ordering::SeqCst),
        "the function's future outlived the call"
    );
}

/// Waits (up to 30 s) until a call of `sleep` is in flight.
async fn in_flight(started: &AtomicU64) {
    for _ in 0..1500 {
        if started.load(Ordering::SeqCst) > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the guest never called `sleep`");
}

/// A core plugin (WAT, written to the raw `isola:task` imports of
/// `wit/core-abi.md`) that calls `count` and returns its result.
const COUNTING_PLUGIN: &str = r#"(module
  (import "isola:task" "call" (func $call (param i32 i32 i32 i32) (result i64)))
  (import "isola:task" "call-read" (func $read (param i32)))
  (import "isola:task" "set-output" (func $out (param i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "count")
  (func (export "isola_run") (result i32)
    (local $len i64)
    (local.set $len (call $call (i32.const 0) (i32.const 5) (i32.const 0) (i32.const 0)))
    (if (i64.lt_s (local.get $len) (i64.const 0)) (then (return (i32.const 1))))
    (call $read (i32.const 64))
    (call $out (i32.const 64) (i32.wrap_i64 (local.get $len)))
    (i32.const 0)))"#;

/// A kept plugin instance (`Runner::plugin`) and a one-shot plugin call
/// (`Runner::call`) reach host functions at both levels, call after call.
#[tokio::test(flavor = "multi_thread")]
async fn plugins_call_host_functions_at_both_levels() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wasm = isola_tests::wat_file(dir.path(), "counting.wasm", COUNTING_PLUGIN);
    let counted = Arc::new(AtomicU64::new(0));
    let runner = runner_with(functions(Arc::default(), Arc::clone(&counted)));
    let mut expected = 0;
    for isolation in [Isolation::Thread, Isolation::Process] {
        let mut spec = TaskSpec::new(&wasm);
        spec.isolation = isolation;
        spec.host_functions = vec!["count".into()];
        let mut plugin = runner.plugin(spec.clone()).await.expect("a kept plugin");
        for _ in 0..3 {
            expected += 1;
            let out = plugin.call(Vec::new()).await.expect("a call");
            assert_eq!(out, expected.to_string().into_bytes(), "{isolation}");
        }
        expected += 1;
        let out = runner
            .call(spec, Vec::new())
            .await
            .expect("a one-shot call");
        assert_eq!(out, expected.to_string().into_bytes(), "{isolation}");
    }
    assert_eq!(counted.load(Ordering::SeqCst), expected);
}

/// The `host_call` guest's `kv-inc` lines: each value it saw.
fn values_seen(stdout: &str) -> Vec<i64> {
    stdout
        .lines()
        .filter_map(|line| line.strip_prefix("ok: "))
        .filter_map(|value| value.parse().ok())
        .collect()
}

/// `isola:kv` shared by 200 tasks, 100 thread and 100 process, each
/// incrementing one key 100 times while 10 of them are cancelled or have
/// their worker killed mid-run: no increment is lost or applied twice (the
/// values the guests saw are distinct, and the final value counts them,
/// plus at most one unreported increment per task cut short), and SQLite
/// finds the database whole.
#[tokio::test(flavor = "multi_thread")]
async fn kv_is_one_serial_history_for_tasks_at_both_levels_through_crashes() {
    const TASKS: usize = 200;
    const EACH: u64 = 100;
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("state.db");
    let runner = Runner::with_config(RunnerConfig {
        cache_dir: CacheDir::Path(shared_cache()),
        worker_program: Some(isola_bin()),
        max_live_tasks: 24,
        ..RunnerConfig::default()
    })
    .expect("runner");
    let limit = Arc::new(tokio::sync::Semaphore::new(24));
    let mut runs = Vec::new();
    for i in 0..TASKS {
        let isolation = if i % 2 == 0 {
            Isolation::Thread
        } else {
            Isolation::Process
        };
        let mut spec = TaskSpec::new(isola_tests::guest("host_call", GuestKind::Module));
        spec.isolation = isolation;
        spec.args = vec!["kv-inc".into(), EACH.to_string(), "counter".into()];
        spec.kv = Some(db.clone());
        spec.stdout = Output::Capture;
        // Every 20th task is cut short: a cancel, or its worker killed.
        let cut = i % 20 == 3 || i % 20 == 4;
        let runner = runner.clone();
        let limit = Arc::clone(&limit);
        runs.push(tokio::spawn(async move {
            let _permit = limit.acquire_owned().await.expect("permit");
            let handle = runner.spawn(spec).await.expect("spawn");
            if cut {
                tokio::time::sleep(Duration::from_millis(5 + (i as u64 % 7) * 3)).await;
                match handle.process_id() {
                    // SAFETY: signals the task's own worker process.
                    Some(pid) => unsafe {
                        libc::kill(pid as libc::pid_t, libc::SIGKILL);
                    },
                    None => handle.cancel(),
                }
            }
            (cut, handle.wait().await)
        }));
    }
    let mut seen = Vec::new();
    let mut cut_short = 0;
    for run in runs {
        let (cut, report) = run.await.expect("joined");
        let values = values_seen(&report.stdout.text());
        if cut && values.len() < EACH as usize {
            cut_short += 1;
        } else {
            assert_eq!(report.outcome, Outcome::Exited { code: 0 }, "{report:?}");
            assert_eq!(values.len(), EACH as usize);
        }
        seen.extend(values);
    }
    assert!(
        cut_short > 0,
        "no task was cut short: the test proves nothing"
    );
    let store = isola::KvStore::open(&db).expect("open");
    store.check_integrity().expect("integrity_check");
    let value: i64 = String::from_utf8(store.get(b"counter").expect("get").expect("a value"))
        .expect("utf-8")
        .parse()
        .expect("an integer");
    let reported = seen.len();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(
        seen.len(),
        reported,
        "a value was seen twice: an increment applied twice"
    );
    assert!(
        value as usize >= reported && value as usize <= reported + cut_short,
        "final {value}, {reported} increments reported, {cut_short} tasks cut short"
    );
    assert!(seen.iter().all(|v| (1..=value).contains(v)));
}

/// `kv` in `tasks.toml` (on `[defaults]`) reaches thread and process tasks,
/// and a second `isola up` of the same set continues from the stored value;
/// `isola run --kv` grants it to one task.
#[test]
fn kv_in_a_task_set_persists_between_runs_and_isola_run_takes_it_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wasm = isola_tests::guest("host_call", GuestKind::Module);
    let toml = format!(
        "[defaults]\nwasm = '{}'\nkv = \"state.db\"\nargs = [\"kv-inc\", \"10\", \"hits\"]\n\n\
         [[task]]\nname = \"t1\"\n\n[[task]]\nname = \"t2\"\n\n\
         [[task]]\nname = \"p1\"\nisolation = \"process\"\n\n\
         [[task]]\nname = \"p2\"\nisolation = \"process\"\n",
        wasm.display()
    );
    let set = dir.path().join("tasks.toml");
    std::fs::write(&set, toml).expect("write");
    let set = set.to_str().expect("utf-8");
    for round in 1..=2 {
        let out = isola_tests::isola(&["up", set]);
        assert_eq!(out.status.code(), Some(0), "round {round}: {out:?}");
        let store = isola::KvStore::open(dir.path().join("state.db")).expect("open");
        assert_eq!(
            store.get(b"hits").expect("get"),
            Some((40 * round).to_string().into_bytes()),
            "round {round}"
        );
    }

    let db = dir.path().join("run.db");
    let db = db.to_str().expect("utf-8");
    let wasm = wasm.to_str().expect("utf-8");
    for isolation in ["thread", "process"] {
        let out =
            isola_tests::isola(&["run", "--isolation", isolation, "--kv", db, wasm, "kv", "k"]);
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        assert_eq!(
            isola_tests::stdout(&out),
            "value: none\nswapped: true\nkeys: k\ndeleted: true\n",
            "{isolation}"
        );
    }
    // Without the grant the program is refused before it starts, naming
    // what would grant it.
    let out = isola_tests::isola(&["run", wasm, "kv", "k"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(isola_tests::stderr(&out).contains("--kv"), "{out:?}");
}

/// A component importing the embedder's own WIT interface `my:app/math`:
///
/// ```wit
/// interface math {
///   scale: func(x: s64) -> s64;
///   check: func(x: s64) -> result<s64, string>;
/// }
/// ```
///
/// and exporting `run-scale` and `run-check`, which call them.
const TYPED_GUEST: &str = r#"
(component
  (import "my:app/math" (instance $math
    (export "scale" (func (param "x" s64) (result s64)))
    (export "check" (func (param "x" s64) (result (result s64 (error string)))))
  ))
  (core module $Mem
    (memory (export "memory") 1)
    (global $bump (mut i32) (i32.const 1024))
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      (local $p i32)
      (local.set $p (global.get $bump))
      (global.set $bump (i32.add (global.get $bump) (local.get 3)))
      (local.get $p)))
  (core instance $mem (instantiate $Mem))
  (alias core export $mem "memory" (core memory $memory))
  (alias core export $mem "realloc" (core func $realloc))
  (alias export $math "scale" (func $scale))
  (alias export $math "check" (func $check))
  (core func $scale_lowered (canon lower (func $scale)))
  (core func $check_lowered (canon lower (func $check) (memory $memory) (realloc $realloc)))
  (core module $Main
    (import "host" "scale" (func $scale (param i64) (result i64)))
    (import "host" "check" (func $check (param i64 i32)))
    (func (export "run-scale") (param i64) (result i64) (call $scale (local.get 0)))
    (func (export "run-check") (param i64) (result i32)
      (call $check (local.get 0) (i32.const 64))
      (i32.const 64)))
  (core instance $main (instantiate $Main
    (with "host" (instance
      (export "scale" (func $scale_lowered))
      (export "check" (func $check_lowered))))))
  (func (export "run-scale") (param "x" s64) (result s64)
    (canon lift (core func $main "run-scale")))
  (func (export "run-check") (param "x" s64) (result (result s64 (error string)))
    (canon lift (core func $main "run-check") (memory $memory) (realloc $realloc)))
)
"#;

fn typed_functions() -> HostFunctions {
    use isola::wasmtime::component::Val;
    HostFunctions::new()
        .with_typed("my:app/math", "scale", |call, args| async move {
            assert_eq!(call.function, "my:app/math#scale");
            match args.as_slice() {
                [Val::S64(x)] if *x == 666 => panic!("the host function broke"),
                [Val::S64(x)] => Ok(vec![Val::S64(x * 10)]),
                other => Err(format!("unexpected arguments {other:?}")),
            }
        })
        .with_typed("my:app/math", "check", |_call, args| async move {
            match args.as_slice() {
                [Val::S64(x)] if *x < 0 => Err(format!("{x} is negative")),
                [Val::S64(x)] => Ok(vec![Val::Result(Ok(Some(Box::new(Val::S64(*x)))))]),
                other => Err(format!("unexpected arguments {other:?}")),
            }
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_calls_the_embedder_s_own_wit_interface_at_both_levels() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wasm = isola_tests::wat_file(dir.path(), "typed.wasm", TYPED_GUEST);
    let runner = runner_with(typed_functions());
    for isolation in [Isolation::Thread, Isolation::Process] {
        let mut spec = TaskSpec::new(&wasm);
        spec.isolation = isolation;
        spec.host_functions = vec!["my:app/math".into()];
        let call = |text: &'static str| runner.invoke(spec.clone(), text);
        assert_eq!(
            call("run-scale(5)").await.expect("scale"),
            ["50"],
            "{isolation}"
        );
        assert_eq!(call("run-scale(-7)").await.expect("scale"), ["-70"]);
        assert_eq!(call("run-check(3)").await.expect("check"), ["ok(3)"]);
        // The function's error is the guest's error value: the WIT says
        // `result<s64, string>`.
        assert_eq!(
            call("run-check(-1)").await.expect("check"),
            [r#"err("-1 is negative")"#]
        );
        // A panic ends the task, naming the function; the host goes on.
        let err = call("run-scale(666)").await.expect_err("panicked");
        let CallError::Ended(report) = err else {
            panic!("{err}")
        };
        assert!(
            matches!(&report.outcome, Outcome::Failed { message } if message.contains("my:app/math#scale")),
            "{}",
            report.outcome
        );
        assert_eq!(call("run-scale(1)").await.expect("still serving"), ["10"]);

        // One function granted: the other is an error the guest sees.
        let mut one = spec.clone();
        one.host_functions = vec!["my:app/math#check".into()];
        assert_eq!(
            runner.invoke(one, "run-check(4)").await.expect("granted"),
            ["ok(4)"]
        );

        // Not granted at all: refused before it starts, naming the import
        // and the field.
        let mut none = spec.clone();
        none.host_functions.clear();
        let err = runner
            .invoke(none, "run-scale(1)")
            .await
            .expect_err("refused");
        let CallError::Start(isola::Error::InvalidSpec { field, message }) = &err else {
            panic!("{err}")
        };
        assert_eq!(field, "host_functions");
        assert!(message.contains("`my:app/math`"), "{message}");
    }
    // A runner that registered no such interface refuses the component at
    // load, naming the import.
    let err = runner_with(HostFunctions::new())
        .invoke(TaskSpec::new(&wasm), "run-scale(1)")
        .await
        .expect_err("unknown import");
    assert!(err.to_string().contains("my:app/math"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_imports_with_versions_and_refusals_at_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The same guest, importing the interface with a version: functions
    // are registered, granted and called without it.
    let versioned = TYPED_GUEST.replace("\"my:app/math\"", "\"my:app/math@1.2.0\"");
    let wasm = isola_tests::wat_file(dir.path(), "versioned.wasm", &versioned);
    let runner = runner_with(typed_functions());
    for isolation in [Isolation::Thread, Isolation::Process] {
        let mut spec = TaskSpec::new(&wasm);
        spec.isolation = isolation;
        spec.host_functions = vec!["my:app/math#scale".into()];
        assert_eq!(
            runner
                .invoke(spec, "run-scale(2)")
                .await
                .expect("versioned"),
            ["20"],
            "{isolation}"
        );
    }
    // An interface with a function the embedder did not register is
    // refused at load, naming it.
    let only_scale =
        HostFunctions::new().with_typed("my:app/math", "scale", |_c, a| async move { Ok(a) });
    let err = runner_with(only_scale)
        .invoke(TaskSpec::new(&wasm), "run-scale(1)")
        .await
        .expect_err("check is not registered");
    assert!(err.to_string().contains("check"), "{err}");
}

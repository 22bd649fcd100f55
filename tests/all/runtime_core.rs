//! The runtime core: behaviour that used to differ between the copies of
//! the store recipe, the classifier and the group registry (issue 12), now
//! one of each. Every case holds for every kind of store: task, kept
//! plugin (both isolations) and shared memory group member.

use std::time::Duration;

use isola::{
    ByteSize, CallError, Error, GroupSpec, Limit, Outcome, RunnerConfig, TaskSpec, TrapKind,
};
use isola_tests::{ISOLATIONS, runner, shared_cache, targets, wat_file};

/// Fuel is written back at least this often (`fuel_async_yield_interval`):
/// a guest stopped from outside after running this long has at least this
/// much counted.
const FUEL_WRITE_BACK: u64 = 10_000_000;

#[tokio::test(flavor = "multi_thread")]
async fn fuel_is_counted_in_kept_plugins_stopped_by_their_timeout() {
    let runner = runner();
    for t in targets() {
        let mut spec = t.spec("plugin");
        spec.limits.timeout = Some(Duration::from_millis(300));
        let mut plugin = runner.plugin(spec).await.expect("instantiate");
        match plugin.call("spin").await {
            Err(CallError::Ended(report)) => {
                assert!(
                    matches!(
                        report.outcome,
                        Outcome::LimitExceeded {
                            limit: Limit::Timeout { .. }
                        }
                    ),
                    "{t:?}: {:?}",
                    report.outcome
                );
                assert!(
                    report.metrics.fuel_used >= FUEL_WRITE_BACK,
                    "{t:?}: 300 ms of a busy loop counted only {} fuel",
                    report.metrics.fuel_used
                );
            }
            other => panic!("{t:?}: {other:?}"),
        }
    }
}

fn probe() -> std::path::PathBuf {
    isola_tests::target_dir().join("wasm32-wasip1-threads/guest/group_probe.wasm")
}

fn group_spec(name: &str, maximum: ByteSize) -> GroupSpec {
    GroupSpec {
        name: name.into(),
        wasm: probe(),
        initial: None,
        maximum,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn fuel_is_counted_in_group_members_stopped_by_their_timeout() {
    let runner = runner();
    let _group = runner
        .create_group(group_spec("fuel", ByteSize::mib(8)))
        .await
        .expect("create group");
    let mut spec = TaskSpec::new(probe());
    spec.shared_group = Some("fuel".into());
    spec.input = Some(b"spin".to_vec());
    spec.limits.timeout = Some(Duration::from_millis(300));
    let report = runner.run(spec).await.expect("run");
    assert!(
        matches!(
            report.outcome,
            Outcome::LimitExceeded {
                limit: Limit::Timeout { .. }
            }
        ),
        "{:?}",
        report.outcome
    );
    assert!(
        report.metrics.fuel_used >= FUEL_WRITE_BACK,
        "300 ms of a busy loop counted only {} fuel",
        report.metrics.fuel_used
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trap_in_a_kept_plugins_start_function_is_a_trap_at_both_levels() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plugin = wat_file(
        dir.path(),
        "trap-at-start.wasm",
        r#"(module
            (memory (export "memory") 1)
            (func $boom unreachable)
            (start $boom)
            (func (export "isola_run") (result i32) i32.const 0))"#,
    );
    let runner = runner();
    for isolation in ISOLATIONS {
        let mut spec = TaskSpec::new(&plugin);
        spec.isolation = isolation;
        match runner.plugin(spec).await {
            Err(CallError::Ended(report)) => match &report.outcome {
                Outcome::Trapped(trap) => {
                    assert_eq!(trap.kind, TrapKind::Unreachable, "{isolation:?}")
                }
                other => panic!("{isolation:?}: {other:?}"),
            },
            other => panic!("{isolation:?}: a trap at start must be a trap: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reactors_initialize_runs_before_its_plugin_entry() {
    // WASI reactors (wasi-sdk, TinyGo, language runtimes) set up their libc
    // and globals in `_initialize`; calling the entry without it would run
    // them uninitialised. The global is 1 only if `_initialize` ran.
    let dir = tempfile::tempdir().expect("tempdir");
    let reactor = wat_file(
        dir.path(),
        "reactor.wasm",
        r#"(module
            (import "isola:task" "set-output" (func $out (param i32 i32)))
            (memory (export "memory") 1)
            (global $ready (mut i32) (i32.const 0))
            (data (i32.const 0) "cold" "warm")
            (func (export "_initialize") (global.set $ready (i32.const 1)))
            (func (export "isola_run") (result i32)
                (call $out (i32.mul (global.get $ready) (i32.const 4)) (i32.const 4))
                (i32.const 0)))"#,
    );
    let runner = runner();
    for isolation in ISOLATIONS {
        let mut spec = TaskSpec::new(&reactor);
        spec.isolation = isolation;
        let output = runner.call(spec.clone(), "").await;
        assert_eq!(
            output.as_deref().ok(),
            Some(&b"warm"[..]),
            "{isolation:?}: {output:?}"
        );
        let mut kept = runner.plugin(spec).await.expect("instantiate");
        let output = kept.call("").await;
        assert_eq!(
            output.as_deref().ok(),
            Some(&b"warm"[..]),
            "{isolation:?}: kept: {output:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_concurrent_create_group_calls_with_one_name_cannot_both_succeed() {
    let maximum = ByteSize::mib(8);
    let runner = isola::Runner::with_config(RunnerConfig {
        max_live_tasks: 8,
        cache_dir: isola::CacheDir::Path(shared_cache()),
        // Room for exactly one group of this size: a leaked reservation
        // would refuse the group created after closing.
        shared_memory_budget: maximum.as_u64(),
        ..RunnerConfig::default()
    })
    .expect("runner");
    for round in 0..3 {
        let (a, b) = tokio::join!(
            runner.create_group(group_spec("twin", maximum)),
            runner.create_group(group_spec("twin", maximum)),
        );
        let refused = match (&a, &b) {
            (Ok(_), Err(err)) | (Err(err), Ok(_)) => err,
            _ => panic!("round {round}: exactly one may succeed: {a:?} / {b:?}"),
        };
        assert!(
            matches!(refused, Error::InvalidSpec { field, .. } if field == "group `twin`.name"),
            "round {round}: {refused}"
        );
        drop((a, b));
        runner.close_group("twin");
    }
}

/// `TaskMetrics::startup` runs from the call to the guest's first
/// instruction, loading and compiling included, as its docs say: it used to
/// start after the program was loaded, so a task set's timeline showed a
/// cold task's compile as neither start-up nor run.
#[tokio::test(flavor = "multi_thread")]
async fn start_up_includes_loading_and_compiling_the_program() {
    for t in targets() {
        // A cache of its own, empty: the first spawn compiles.
        let cache = tempfile::tempdir().expect("tempdir");
        let runner = isola_tests::runner_with_cache(cache.path());
        let asked = std::time::Instant::now();
        let handle = runner.spawn(t.spec("hello")).await.expect("spawn");
        let spawn_took = asked.elapsed();
        let report = handle.wait().await;
        assert!(report.outcome.is_success(), "{t:?}: {:?}", report.outcome);
        // The guest's first instruction may run a moment before `spawn`
        // returns (another runtime thread), hence the slack: a tenth of the
        // compile, which a loaded machine stretches, far less than the
        // compile itself that the start-up used to leave out.
        let slack = Duration::from_millis(2).max(spawn_took / 10);
        assert!(
            report.metrics.startup + slack >= spawn_took,
            "{t:?}: start-up {:?}, but spawn alone (load and compile) took {spawn_took:?}",
            report.metrics.startup
        );
    }
}

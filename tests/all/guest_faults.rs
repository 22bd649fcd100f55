//! What a guest causes is the guest's: a bad host call is a trap (exit
//! 134), a program whose exports Isola cannot call is refused at load
//! (exit 2), never "Isola failed" (exit 125).

use isola::{Error, Outcome, TaskSpec, TrapKind};
use isola_tests::{ISOLATIONS, isola, runner, stderr, wat_file};

#[tokio::test(flavor = "multi_thread")]
async fn a_wasi_call_with_an_invalid_argument_is_a_trap_naming_the_call() {
    let dir = tempfile::tempdir().expect("tempdir");
    // `clock_time_get` with clock id 99, which WASI does not define.
    let bad_clock = wat_file(
        dir.path(),
        "bad-clock.wasm",
        r#"(module
            (import "wasi_snapshot_preview1" "clock_time_get"
                (func $clock (param i32 i64 i32) (result i32)))
            (memory (export "memory") 1)
            (func (export "_start") (drop (call $clock (i32.const 99) (i64.const 0) (i32.const 8)))))"#,
    );
    let runner = runner();
    for isolation in ISOLATIONS {
        let mut spec = TaskSpec::new(&bad_clock);
        spec.isolation = isolation;
        let report = runner.run(spec).await.expect("spawn");
        match &report.outcome {
            Outcome::Trapped(trap) => {
                assert_eq!(trap.kind, TrapKind::HostCall, "{isolation:?}");
                assert!(
                    trap.message.contains("clock"),
                    "{isolation:?}: {}",
                    trap.message
                );
            }
            other => panic!("{isolation:?}: {other:?}"),
        }
        let path = bad_clock.to_str().expect("utf-8 path");
        let out = isola(&["run", "--isolation", &isolation.to_string(), path]);
        assert_eq!(
            out.status.code(),
            Some(134),
            "{isolation:?}: {}",
            stderr(&out)
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_isola_task_call_is_a_trap() {
    let dir = tempfile::tempdir().expect("tempdir");
    // `read` with no message pending.
    let bad_read = wat_file(
        dir.path(),
        "bad-read.wasm",
        r#"(module
            (import "isola:task" "read" (func $read (param i32)))
            (memory (export "memory") 1)
            (func (export "_start") (call $read (i32.const 0))))"#,
    );
    let runner = runner();
    for isolation in ISOLATIONS {
        let mut spec = TaskSpec::new(&bad_read);
        spec.isolation = isolation;
        let report = runner.run(spec).await.expect("spawn");
        assert!(
            matches!(&report.outcome, Outcome::Trapped(t) if t.kind == TrapKind::HostCall
                && t.message.contains("isola:task.read")),
            "{isolation:?}: {:?}",
            report.outcome
        );
    }
}

#[tokio::test]
async fn exports_of_the_wrong_type_are_refused_at_load_naming_the_export() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        (
            "run-i64",
            r#"(module (memory (export "memory") 1)
                (func (export "isola_run") (result i64) i64.const 0))"#,
            "isola_run",
        ),
        (
            "start-i32",
            r#"(module (memory (export "memory") 1)
                (func (export "_start") (param i32)))"#,
            "_start",
        ),
        (
            "init-result",
            r#"(module (memory (export "memory") 1)
                (func (export "_initialize") (result i32) i32.const 0)
                (func (export "isola_run") (result i32) i32.const 0))"#,
            "_initialize",
        ),
        (
            "no-memory",
            r#"(module
                (import "isola:task" "set-output" (func (param i32 i32)))
                (func (export "isola_run") (result i32) i32.const 0))"#,
            "memory",
        ),
        (
            "no-memory-wasi",
            r#"(module
                (import "wasi_snapshot_preview1" "fd_write"
                    (func (param i32 i32 i32 i32) (result i32)))
                (func (export "_start")))"#,
            "memory",
        ),
    ];
    let runner = runner();
    for (name, wat, export) in cases {
        let path = wat_file(dir.path(), &format!("{name}.wasm"), wat);
        match runner.load(&path).await {
            Err(Error::UnsupportedWorld { detail, .. }) => {
                assert!(detail.contains(export), "{name}: {detail}")
            }
            other => panic!("{name}: must be refused at load: {other:?}"),
        }
        let out = isola(&["run", path.to_str().expect("utf-8 path")]);
        assert_eq!(out.status.code(), Some(2), "{name}: {}", stderr(&out));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tables_get_the_same_verdict_from_every_entry_point() {
    let dir = tempfile::tempdir().expect("tempdir");
    let many = (0..100)
        .map(|_| "(table 1000000 funcref)")
        .collect::<Vec<_>>()
        .join(" ");
    let huge_tables = wat_file(
        dir.path(),
        "huge-tables.wasm",
        &format!(
            r#"(module {many} (memory (export "memory") 1)
                (func (export "_start"))
                (func (export "isola_run") (result i32) i32.const 0))"#
        ),
    );
    let one_huge_table = wat_file(
        dir.path(),
        "one-huge-table.wasm",
        r#"(module (table 1000000 funcref) (memory (export "memory") 1)
            (func (export "_start")))"#,
    );
    let runner = runner();
    for path in [&huge_tables, &one_huge_table] {
        assert!(
            matches!(runner.load(path).await, Err(Error::Invalid { .. })),
            "{}",
            path.display()
        );
        for isolation in ISOLATIONS {
            let mut spec = TaskSpec::new(path);
            spec.isolation = isolation;
            assert!(
                matches!(runner.spawn(spec.clone()).await, Err(Error::Invalid { .. })),
                "{isolation:?}"
            );
            if path == &huge_tables {
                assert!(
                    matches!(
                        runner.call(spec, "").await,
                        Err(isola::CallError::Start(Error::Invalid { .. }))
                    ),
                    "{isolation:?}"
                );
            }
            let path = path.to_str().expect("utf-8 path");
            let out = isola(&["run", "--isolation", &isolation.to_string(), path]);
            assert_eq!(
                out.status.code(),
                Some(2),
                "{isolation:?}: {}",
                stderr(&out)
            );
        }
    }

    // Growth past the limit fails the same way at both levels: -1.
    let grower = wat_file(
        dir.path(),
        "table-grower.wasm",
        r#"(module
            (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
            (table 10 funcref) (memory (export "memory") 1)
            (func (export "_start")
                (call $exit (i32.eq (table.grow (ref.null func) (i32.const 1000000))
                                    (i32.const -1)))))"#,
    );
    for isolation in ISOLATIONS {
        let mut spec = TaskSpec::new(&grower);
        spec.isolation = isolation;
        let report = runner.run(spec).await.expect("spawn");
        assert_eq!(
            report.outcome,
            Outcome::Exited { code: 1 },
            "{isolation:?}: table.grow past the limit returns -1"
        );
    }
}

/// `isola run --timeout 500ms` of a loop of 64 MiB `random_get` calls
/// ends by its timeout (exit 124) well within 5 s at both isolation
/// levels. Before chunked host calls and per-poll timer checks this took
/// 11-13 s at thread isolation.
#[test]
fn a_timeout_wins_over_a_loop_of_long_host_calls() {
    let rows = isola_tests::probe::timeout_over_long_host_calls(std::time::Duration::from_secs(5));
    assert_eq!(rows.len(), 2, "one row per isolation level");
    for row in rows {
        assert!(row.ok, "{row:?}");
    }
}

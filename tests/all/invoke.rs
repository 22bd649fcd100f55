//! Calls of exports by name (issue 14, part 3): `Runner::invoke`,
//! `Runner::call_export`, `Runner::call_core_export` and
//! `isola call --invoke`, for core modules and components, at both
//! isolation levels.

use std::path::{Path, PathBuf};
use std::time::Duration;

use isola::wasmtime;
use isola::wasmtime::component::Val;
use isola::{CallError, Isolation, Limit, Outcome, TaskSpec, TrapKind};
use isola_tests::{isola, runner, stderr, stdout, wat_file};

/// A reactor module: `_initialize` sets what `answer` returns, so a call
/// that skipped it would say 0.
const MODULE: &str = r#"
(module
  (global $answer (mut i32) (i32.const 0))
  (func (export "_initialize") (global.set $answer (i32.const 42)))
  (func (export "answer") (result i32) global.get $answer)
  (func (export "add") (param i32 i32) (result i32) local.get 0 local.get 1 i32.add)
  (func (export "mul64") (param i64 i64) (result i64) local.get 0 local.get 1 i64.mul)
  (func (export "half") (param f64) (result f64) local.get 0 f64.const 2 f64.div)
  (func (export "divmod") (param i32 i32) (result i32 i32)
    (i32.div_u (local.get 0) (local.get 1))
    (i32.rem_u (local.get 0) (local.get 1)))
  (func (export "boom") unreachable)
  (func (export "spin") (loop br 0))
)
"#;

/// A component with plain, string and nested-instance exports, and no
/// imports: a library, neither a command nor a plugin.
const COMPONENT: &str = r#"
(component
  (core module $m
    (memory (export "memory") 1)
    (global $bump (mut i32) (i32.const 4096))
    (data (i32.const 0) "hello, ")
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      (local $p i32)
      (local.set $p (global.get $bump))
      (global.set $bump (i32.add (global.get $bump) (local.get 3)))
      (local.get $p))
    (func (export "add") (param i32 i32) (result i32) local.get 0 local.get 1 i32.add)
    (func (export "greet") (param $p i32) (param $n i32) (result i32)
      (memory.copy (i32.const 512) (i32.const 0) (i32.const 7))
      (memory.copy (i32.const 519) (local.get $p) (local.get $n))
      (i32.store (i32.const 256) (i32.const 512))
      (i32.store (i32.const 260) (i32.add (local.get $n) (i32.const 7)))
      (i32.const 256))
    (func (export "double") (param i32) (result i32) local.get 0 i32.const 2 i32.mul)
    (func (export "boom") unreachable)
  )
  (core instance $i (instantiate $m))
  (alias core export $i "memory" (core memory $mem))
  (alias core export $i "realloc" (core func $realloc))
  (func (export "add") (param "a" u32) (param "b" u32) (result u32)
    (canon lift (core func $i "add")))
  (func (export "greet") (param "name" string) (result string)
    (canon lift (core func $i "greet") (memory $mem) (realloc $realloc)))
  (func (export "boom") (canon lift (core func $i "boom")))
  (func $double (param "x" s32) (result s32) (canon lift (core func $i "double")))
  (instance $math (export "double" (func $double)))
  (export "math" (instance $math))
)
"#;

fn guests(dir: &Path) -> (PathBuf, PathBuf) {
    (
        wat_file(dir, "lib-module.wasm", MODULE),
        wat_file(dir, "lib-component.wasm", COMPONENT),
    )
}

fn spec(wasm: &Path, isolation: Isolation) -> TaskSpec {
    let mut spec = TaskSpec::new(wasm);
    spec.isolation = isolation;
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_are_called_by_name_with_wave_values_at_both_levels() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (module, component) = guests(dir.path());
    let runner = runner();
    for isolation in [Isolation::Thread, Isolation::Process] {
        let call = |wasm: &Path, text: &'static str| runner.invoke(spec(wasm, isolation), text);
        // Core modules: numbers in, numbers out; the reactor was
        // initialised first; several results are several lines.
        assert_eq!(call(&module, "add(40, 2)").await.expect("add"), ["42"]);
        assert_eq!(call(&module, "answer()").await.expect("answer"), ["42"]);
        assert_eq!(
            call(&module, "mul64(4294967296, 3)").await.expect("mul64"),
            ["12884901888"]
        );
        assert_eq!(call(&module, "half(5)").await.expect("half"), ["2.5"]);
        assert_eq!(
            call(&module, "divmod(17, 5)").await.expect("divmod"),
            ["3", "2"]
        );
        // Components: strings, and a function of an exported instance.
        assert_eq!(call(&component, "add(1, 2)").await.expect("add"), ["3"]);
        assert_eq!(
            call(&component, r#"greet("wave \"quoted\"")"#)
                .await
                .expect("greet"),
            [r#""hello, wave \"quoted\"""#]
        );
        assert_eq!(
            call(&component, "math#double(-21)").await.expect("double"),
            ["-42"]
        );

        // Typed values, through WAVE to the worker and back.
        let results = runner
            .call_export(
                spec(&component, isolation),
                "greet",
                &[Val::String("typed".into())],
            )
            .await
            .expect("call_export");
        assert_eq!(results, [Val::String("hello, typed".into())]);
        let results = runner
            .call_core_export(
                spec(&module, isolation),
                "divmod",
                &[wasmtime::Val::I32(7), wasmtime::Val::I32(2)],
            )
            .await
            .expect("call_core_export");
        assert_eq!(
            results
                .iter()
                .map(wasmtime::Val::unwrap_i32)
                .collect::<Vec<_>>(),
            [3, 1]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_call_is_refused_before_the_task_starts_naming_what_is_wrong() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (module, component) = guests(dir.path());
    let runner = runner();
    for isolation in [Isolation::Thread, Isolation::Process] {
        for (wasm, call, says) in [
            (
                &module,
                "nope(1)",
                "exports no function `nope`; it exports: _initialize, add, answer, boom",
            ),
            (
                &component,
                "nope()",
                "it exports: add, boom, greet, math#double",
            ),
            (&module, "add(1)", "do not fit"),
            (&component, "add(-1, 2)", "do not fit"),
            (&component, "greet(3)", "do not fit"),
            (&module, "add", "is not a call"),
            (&module, "add(1, ", "cannot parse"),
        ] {
            let err = runner
                .invoke(spec(wasm, isolation), call)
                .await
                .expect_err(call);
            let CallError::Start(isola::Error::InvalidSpec { field, message }) = &err else {
                panic!("{call}: {err}");
            };
            assert_eq!(field, "invoke");
            assert!(message.contains(says), "{call}: {message}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_called_export_is_held_to_the_task_s_limits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (module, component) = guests(dir.path());
    let runner = runner();
    for isolation in [Isolation::Thread, Isolation::Process] {
        let err = runner
            .invoke(spec(&component, isolation), "boom()")
            .await
            .expect_err("trap");
        let CallError::Ended(report) = err else {
            panic!("{err}")
        };
        assert!(
            matches!(&report.outcome, Outcome::Trapped(trap) if trap.kind == TrapKind::Unreachable),
            "{}",
            report.outcome
        );
        let mut timed = spec(&module, isolation);
        timed.limits.timeout = Some(Duration::from_millis(200));
        let err = runner.invoke(timed, "spin()").await.expect_err("spins");
        let CallError::Ended(report) = err else {
            panic!("{err}")
        };
        assert!(
            matches!(
                report.outcome,
                Outcome::LimitExceeded {
                    limit: Limit::Timeout { .. }
                }
            ),
            "{}",
            report.outcome
        );
    }
}

#[test]
fn isola_call_invoke_prints_results_and_exits_as_documented() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (module, component) = guests(dir.path());
    let component = component.to_str().expect("utf-8");
    let module = module.to_str().expect("utf-8");
    for isolation in ["thread", "process"] {
        let out = isola(&[
            "call",
            "--isolation",
            isolation,
            "--invoke",
            r#"greet("cli")"#,
            component,
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert_eq!(stdout(&out), "\"hello, cli\"\n");
        let out = isola(&[
            "call",
            "--isolation",
            isolation,
            "--invoke",
            "divmod(9, 4)",
            module,
        ]);
        assert_eq!(stdout(&out), "2\n1\n");

        let out = isola(&[
            "call",
            "--isolation",
            isolation,
            "--invoke",
            "missing()",
            component,
        ]);
        assert_eq!(out.status.code(), Some(2));
        assert!(
            stderr(&out).contains("exports no function `missing`"),
            "{}",
            stderr(&out)
        );
        let out = isola(&[
            "call",
            "--isolation",
            isolation,
            "--invoke",
            "boom()",
            component,
        ]);
        assert_eq!(out.status.code(), Some(134), "{}", stderr(&out));
    }
    // A library has no `main` and no plugin `run`: `isola run` and
    // `isola call` say how to call it instead, for either kind.
    for library in [component, module] {
        for command in ["run", "call"] {
            let out = isola(&[command, library]);
            assert_eq!(out.status.code(), Some(2), "{command}");
            assert!(
                stderr(&out).contains("--invoke"),
                "{command}: {}",
                stderr(&out)
            );
        }
    }
}

/// A stateful library: `bump` adds to a counter that `_initialize` starts
/// at 100, so calls on one kept instance see each other.
const COUNTER: &str = r#"
(module
  (global $n (mut i64) (i64.const 0))
  (func (export "_initialize") (global.set $n (i64.const 100)))
  (func (export "bump") (param i64) (result i64)
    (global.set $n (i64.add (global.get $n) (local.get 0)))
    (global.get $n))
  (func (export "boom") unreachable)
)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_instance_is_called_by_name_again_and_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let counter = wat_file(dir.path(), "counter.wasm", COUNTER);
    let (_, component) = guests(dir.path());
    let runner = runner();
    for isolation in [Isolation::Thread, Isolation::Process] {
        let mut kept = runner
            .plugin(spec(&counter, isolation))
            .await
            .expect("a library can be kept");
        assert_eq!(kept.invoke("bump(1)").await.expect("bump"), ["101"]);
        assert_eq!(kept.invoke("bump(10)").await.expect("bump"), ["111"]);
        // A wrong call is refused before it runs and leaves the instance
        // as it was.
        let err = kept.invoke("bump(\"x\")").await.expect_err("wrong type");
        assert!(
            matches!(err, CallError::Start(isola::Error::InvalidSpec { .. })),
            "{err}"
        );
        assert_eq!(kept.invoke("bump(0)").await.expect("still there"), ["111"]);
        // It has no plugin `run`.
        let err = kept.call("input").await.expect_err("no run");
        assert!(err.to_string().contains("isola_run"), "{err}");
        // A trap ends the instance, as for `run`.
        assert!(matches!(
            kept.invoke("boom()").await,
            Err(CallError::Ended(_))
        ));
        assert!(kept.invoke("bump(1)").await.is_err());

        let mut kept = runner
            .plugin(spec(&component, isolation))
            .await
            .expect("a component library");
        assert_eq!(
            kept.invoke(r#"greet("a")"#).await.expect("greet"),
            [r#""hello, a""#]
        );
        assert_eq!(kept.invoke("math#double(4)").await.expect("double"), ["8"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_whose_values_wave_cannot_carry_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let refs = wat_file(
        dir.path(),
        "refs.wasm",
        r#"(module (func (export "nothing") (result externref) ref.null extern))"#,
    );
    let err = runner()
        .invoke(TaskSpec::new(&refs), "nothing()")
        .await
        .expect_err("an externref result");
    let CallError::Start(isola::Error::InvalidSpec { field, message }) = &err else {
        panic!("{err}")
    };
    assert_eq!(field, "invoke");
    assert!(message.contains("cannot be written as WAVE"), "{message}");
}

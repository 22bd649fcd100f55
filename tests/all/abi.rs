//! Guests written without Isola's SDK, only from the documented ABI
//! (`wit/core-abi.md`): a C plugin built by Debian's clang and wasi-libc as
//! a WASI reactor, and a shared memory group guest in WAT. Both are built
//! by `make guests`.

use std::path::PathBuf;
use std::time::Duration;

use isola::{ByteSize, CallError, GroupSpec, Isolation, Outcome, Runner, TaskSpec};
use isola_tests::{ISOLATIONS, runner};

/// `guests/c/plugin.c`, built by `make c-guests`.
fn c_plugin() -> PathBuf {
    let path = isola_tests::target_dir().join("wasm32-wasi-c/plugin.wasm");
    assert!(
        path.exists(),
        "`{}` is missing: run `make guests` (or `make c-guests`) first",
        path.display()
    );
    path
}

/// `guests/wat/group.wat`, built by `make wat-guests`.
fn wat_group() -> PathBuf {
    let path = isola_tests::target_dir().join("wasm32-wat/group.wasm");
    assert!(
        path.exists(),
        "`{}` is missing: run `make guests` (or `make wat-guests`) first",
        path.display()
    );
    path
}

fn c_spec(isolation: Isolation) -> TaskSpec {
    let mut spec = TaskSpec::new(c_plugin());
    spec.isolation = isolation;
    spec.limits.timeout = Some(Duration::from_secs(20));
    spec
}

fn rejected(result: Result<Vec<u8>, CallError>) -> String {
    match result {
        Err(CallError::Rejected(message)) => message,
        other => panic!("expected a rejected call, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_c_reactor_plugin_answers_fresh_calls() {
    let runner = runner();
    for isolation in ISOLATIONS {
        // Upper-cased: the table the answer comes from is built by a C
        // constructor, which only `_initialize` runs.
        let output = runner
            .call(c_spec(isolation), "hello, wasm")
            .await
            .unwrap_or_else(|err| panic!("{isolation:?}: {err}"));
        assert_eq!(output, b"HELLO, WASM", "{isolation:?}");
        // A fresh instance per call: the call counter starts over.
        for _ in 0..2 {
            let output = runner.call(c_spec(isolation), "calls").await.expect("call");
            assert_eq!(output, b"1", "{isolation:?}");
        }
        // `set-error` and a non-zero status: the call's error.
        assert_eq!(
            rejected(runner.call(c_spec(isolation), "").await),
            "empty input: nothing to upper-case",
            "{isolation:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kept_c_plugin_is_initialised_once_and_keeps_its_state() {
    let runner = runner();
    for isolation in ISOLATIONS {
        let mut plugin = runner
            .plugin(c_spec(isolation))
            .await
            .unwrap_or_else(|err| panic!("{isolation:?}: {err}"));
        assert_eq!(
            plugin.process_id().is_some(),
            isolation == Isolation::Process,
            "{isolation:?}"
        );
        assert_eq!(
            plugin.call("abc").await.expect("call"),
            b"ABC",
            "{isolation:?}"
        );
        // The same instance: the counter goes on.
        assert_eq!(
            plugin.call("calls").await.expect("call"),
            b"2",
            "{isolation:?}"
        );
        // A rejected call leaves the instance usable.
        assert_eq!(
            rejected(plugin.call("").await),
            "empty input: nothing to upper-case",
            "{isolation:?}"
        );
        assert_eq!(
            plugin.call("Mixed Case 123").await.expect("still usable"),
            b"MIXED CASE 123",
            "{isolation:?}"
        );
        assert_eq!(
            plugin.call("calls").await.expect("call"),
            b"5",
            "{isolation:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_c_plugin_spawned_as_a_task_returns_or_rejects() {
    let runner = runner();
    for isolation in ISOLATIONS {
        let mut spec = c_spec(isolation);
        spec.input = Some(b"task input".to_vec());
        let report = runner.run(spec).await.expect("run");
        assert_eq!(
            report.outcome,
            Outcome::Returned {
                output: b"TASK INPUT".to_vec()
            },
            "{isolation:?}"
        );
        // Started without an input, `input-len` is -1.
        let report = runner.run(c_spec(isolation)).await.expect("run");
        assert_eq!(
            report.outcome,
            Outcome::Rejected {
                error: "no input".into()
            },
            "{isolation:?}"
        );
    }
}

async fn create_wat_group(runner: &Runner, name: &str) -> isola::SharedGroup {
    runner
        .create_group(GroupSpec {
            name: name.into(),
            wasm: wat_group(),
            initial: None,
            maximum: ByteSize::kib(64),
        })
        .await
        .expect("create the WAT group")
}

fn group_task(group: &str, input: Option<&str>) -> TaskSpec {
    let mut spec = TaskSpec::new(wat_group());
    spec.shared_group = Some(group.into());
    spec.input = input.map(|i| i.as_bytes().to_vec());
    spec.limits.timeout = Some(Duration::from_secs(20));
    spec
}

/// Runs a task of the group and returns the message it posted and its
/// outcome.
async fn echo(runner: &Runner, group: &str, input: Option<&str>) -> (Option<String>, Outcome) {
    let mut handle = runner.spawn(group_task(group, input)).await.expect("spawn");
    let message = handle
        .recv()
        .await
        .map(|m| String::from_utf8_lossy(&m).into_owned());
    (message, handle.wait().await.outcome)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wat_group_serves_tasks_in_one_memory() {
    let runner = runner();
    let group = create_wat_group(&runner, "wat").await;
    assert_eq!(group.region_names(), ["started"]);
    let started = group.region("started").expect("published by `_start`");
    assert_eq!(started.len(), 4);
    assert_eq!(started.load_u32(0).expect("in bounds"), 0, "no task yet");

    // Two tasks one after the other, each echoing its input.
    for (n, input) in [(1, "first"), (2, "second")] {
        let (message, outcome) = echo(&runner, "wat", Some(input)).await;
        assert_eq!(message.as_deref(), Some(input));
        assert_eq!(outcome, Outcome::Exited { code: 0 });
        // Each task is a new instance: only the memory is shared, so the
        // count lives there, where the host sees it too.
        assert_eq!(started.load_u32(0).expect("in bounds"), n);
    }

    // Two at once.
    let mut a = runner
        .spawn(group_task("wat", Some("left")))
        .await
        .expect("spawn");
    let mut b = runner
        .spawn(group_task("wat", Some("right")))
        .await
        .expect("spawn");
    assert_eq!(a.recv().await.as_deref(), Some(&b"left"[..]));
    assert_eq!(b.recv().await.as_deref(), Some(&b"right"[..]));
    assert_eq!(a.wait().await.outcome, Outcome::Exited { code: 0 });
    assert_eq!(b.wait().await.outcome, Outcome::Exited { code: 0 });
    assert_eq!(started.load_u32(0).expect("in bounds"), 4);

    // `proc_exit` in a task ends that task only, with its code (66: no
    // input); the group goes on serving.
    let (message, outcome) = echo(&runner, "wat", None).await;
    assert_eq!(message, None);
    assert_eq!(outcome, Outcome::Exited { code: 66 });
    let (message, outcome) = echo(&runner, "wat", Some("still here")).await;
    assert_eq!(message.as_deref(), Some("still here"));
    assert_eq!(outcome, Outcome::Exited { code: 0 });
    assert_eq!(started.load_u32(0).expect("in bounds"), 6);
}

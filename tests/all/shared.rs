//! Shared memory groups: tasks of one module sharing one memory with each
//! other and with the host.

use std::time::Duration;

use isola::{ByteSize, Error, GroupSpec, Isolation, Limit, Outcome, Runner, TaskSpec};
use isola_tests::{GuestKind, guest, runner, wat_file};

fn probe() -> std::path::PathBuf {
    let path = isola_tests::target_dir().join("wasm32-wasip1-threads/guest/group_probe.wasm");
    assert!(path.exists(), "run `make guests` first");
    path
}

async fn group(runner: &Runner, name: &str, maximum: ByteSize) -> isola::SharedGroup {
    runner
        .create_group(GroupSpec {
            name: name.into(),
            wasm: probe(),
            initial: None,
            maximum,
        })
        .await
        .expect("create group")
}

fn task(group: &str, input: &str) -> TaskSpec {
    let mut spec = TaskSpec::new(probe());
    spec.shared_group = Some(group.into());
    spec.input = Some(input.as_bytes().to_vec());
    spec
}

/// Runs `input` in the group and returns the one message it posts.
async fn ask(runner: &Runner, group: &str, input: &str) -> (String, Outcome) {
    let mut handle = runner.spawn(task(group, input)).await.expect("spawn");
    let reply = handle
        .recv()
        .await
        .map(|m| String::from_utf8_lossy(&m).into_owned());
    let report = handle.wait().await;
    (reply.unwrap_or_default(), report.outcome)
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_std_tasks_do_not_corrupt_each_other() {
    let runner = runner();
    group(&runner, "work", ByteSize::mib(64)).await;
    // Alone first: the checksum depends only on the number of rounds.
    let (alone, outcome) = ask(&runner, "work", "work 200").await;
    assert_eq!(outcome, Outcome::Exited { code: 0 });
    // Then several at once, each allocating, formatting and recursing.
    let mut handles = Vec::new();
    for _ in 0..4 {
        handles.push(runner.spawn(task("work", "work 200")).await.expect("spawn"));
    }
    for mut handle in handles {
        let reply = handle.recv().await.expect("a reply");
        assert_eq!(
            String::from_utf8_lossy(&reply),
            alone,
            "same result as alone"
        );
        let report = handle.wait().await;
        assert_eq!(report.outcome, Outcome::Exited { code: 0 });
        assert_eq!(
            report.stdout.text(),
            "worked 200 rounds\n",
            "each task has its own stdout"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_are_seen_by_other_tasks_and_the_host() {
    let runner = runner();
    let group = group(&runner, "rw", ByteSize::mib(8)).await;
    let data = group.region("data").expect("published region");
    assert_eq!(data.len(), 64 * 1024);
    assert_eq!(group.region_names(), ["data", "flags"]);

    // Host before any task: write, then a task reads it.
    data.write(200, &[7]).expect("in bounds");
    assert_eq!(ask(&runner, "rw", "read 200").await.0, "7");
    // A task writes; the host and another task see it.
    assert_eq!(ask(&runner, "rw", "write 100 42").await.0, "ok");
    let mut byte = [0u8];
    data.read(100, &mut byte).expect("in bounds");
    assert_eq!(byte, [42]);
    assert_eq!(ask(&runner, "rw", "read 100").await.0, "42");
    // Bounds are checked.
    assert!(data.read(64 * 1024 - 1, &mut [0u8; 2]).is_err());
    assert!(data.write(usize::MAX, &[1]).is_err());
    assert!(data.load_u32(2).is_err(), "misaligned");
}

#[tokio::test(flavor = "multi_thread")]
async fn tasks_wait_for_and_wake_each_other() {
    let runner = runner();
    group(&runner, "sync", ByteSize::mib(8)).await;
    let mut waiter = runner.spawn(task("sync", "wait 3")).await.expect("spawn");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(ask(&runner, "sync", "set 3 9").await.0, "ok");
    let reply = tokio::time::timeout(Duration::from_secs(10), waiter.recv())
        .await
        .expect("the waiter woke")
        .expect("a reply");
    assert_eq!(&reply[..], b"9");
    assert_eq!(waiter.wait().await.outcome, Outcome::Exited { code: 0 });
}

/// A hand-written group module whose tasks wait on word 0 of the region
/// `flags`, so the host knows the address to notify.
const WAITER_WAT: &str = r#"(module
  (import "env" "memory" (memory 1 1 shared))
  (import "isola:task" "group-ready" (func $ready))
  (import "isola:task" "group-next-task" (func $next (result i32)))
  (import "isola:task" "publish-region" (func $publish (param i32 i32 i32 i32)))
  (import "wasi" "thread-spawn" (func $spawn (param i32) (result i32)))
  (data (i32.const 16) "flags")
  (func (export "_start")
    (call $publish (i32.const 16) (i32.const 5) (i32.const 0) (i32.const 16))
    (call $ready)
    (block $done
      (loop $serve
        (br_if $done (i32.eqz (call $next)))
        (drop (call $spawn (i32.const 0)))
        (br $serve))))
  (func (export "wasi_thread_start") (param i32 i32)
    (drop (memory.atomic.wait32 (i32.const 0) (i32.const 0) (i64.const -1)))))"#;

#[tokio::test(flavor = "multi_thread")]
async fn the_host_wakes_waiters_and_stops_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wasm = wat_file(dir.path(), "waiter.wasm", WAITER_WAT);
    let runner = runner();
    let group = runner
        .create_group(GroupSpec {
            name: "waiters".into(),
            wasm: wasm.clone(),
            initial: None,
            maximum: ByteSize::kib(64),
        })
        .await
        .expect("group");
    let flags = group.region("flags").expect("region");
    let mut spec = TaskSpec::new(&wasm);
    spec.shared_group = Some("waiters".into());

    // Woken by the host.
    let handle = runner.spawn(spec.clone()).await.expect("spawn");
    let mut woke = 0;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        woke = flags.notify(0, 1).expect("in bounds");
        if woke == 1 {
            break;
        }
    }
    assert_eq!(woke, 1, "one waiter woke");
    assert_eq!(handle.wait().await.outcome, Outcome::Exited { code: 0 });

    // Blocked in the wait, a task still obeys cancel and timeout.
    let handle = runner.spawn(spec.clone()).await.expect("spawn");
    tokio::time::sleep(Duration::from_millis(100)).await;
    handle.cancel();
    let report = tokio::time::timeout(Duration::from_secs(20), handle.wait())
        .await
        .expect("cancel reaches a waiting task");
    assert_eq!(report.outcome, Outcome::Cancelled);

    spec.limits.timeout = Some(Duration::from_millis(200));
    let report = tokio::time::timeout(Duration::from_secs(20), runner.run(spec))
        .await
        .expect("the timeout reaches a waiting task")
        .expect("run");
    assert_eq!(
        report.outcome,
        Outcome::LimitExceeded {
            limit: Limit::Timeout {
                after: Duration::from_millis(200)
            }
        }
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_group_bound_holds() {
    let runner = runner();
    let group = group(&runner, "bounded", ByteSize::mib(4)).await;
    let (pages, outcome) = ask(&runner, "bounded", "grow").await;
    assert_eq!(outcome, Outcome::Exited { code: 0 }, "growth fails cleanly");
    let pages: u64 = pages.parse().expect("a page count");
    assert!(pages > 0, "it grew up to the bound");
    assert_eq!(group.size(), ByteSize::mib(4).as_u64(), "and not past it");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_task_leaves_the_group_running_and_its_memory_intact() {
    let runner = runner();
    let group = group(&runner, "sturdy", ByteSize::mib(8)).await;
    assert_eq!(ask(&runner, "sturdy", "write 5 99").await.0, "ok");

    let (_, trapped) = ask(&runner, "sturdy", "trap").await;
    assert!(matches!(trapped, Outcome::Trapped(_)), "{trapped:?}");

    let spinner = runner.spawn(task("sturdy", "spin")).await.expect("spawn");
    tokio::time::sleep(Duration::from_millis(50)).await;
    spinner.cancel();
    assert_eq!(spinner.wait().await.outcome, Outcome::Cancelled);

    let mut waiter = task("sturdy", "wait 7");
    waiter.limits.timeout = Some(Duration::from_millis(200));
    let report = runner.run(waiter).await.expect("run");
    assert!(
        matches!(report.outcome, Outcome::LimitExceeded { .. }),
        "{:?}",
        report.outcome
    );

    // The others go on, and the data is still there.
    assert_eq!(ask(&runner, "sturdy", "read 5").await.0, "99");
    let (checksum, outcome) = ask(&runner, "sturdy", "work 5").await;
    assert_eq!(outcome, Outcome::Exited { code: 0 });
    assert!(!checksum.is_empty());
    let mut byte = [0u8];
    group
        .region("data")
        .expect("region")
        .read(5, &mut byte)
        .expect("read");
    assert_eq!(byte, [99]);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_groups_and_members_are_refused_clearly() {
    let runner = runner();
    let err = runner
        .create_group(GroupSpec {
            name: "plain".into(),
            wasm: guest("hello", GuestKind::Module),
            initial: None,
            maximum: ByteSize::mib(8),
        })
        .await
        .expect_err("hello has no shared memory");
    assert!(
        err.to_string().contains("does not import a shared memory"),
        "{err}"
    );
    assert!(err.to_string().contains("group `plain`.wasm"), "{err}");

    group(&runner, "g", ByteSize::mib(8)).await;
    let err = runner
        .create_group(GroupSpec {
            name: "g".into(),
            wasm: probe(),
            initial: None,
            maximum: ByteSize::mib(8),
        })
        .await
        .expect_err("duplicate");
    assert!(err.to_string().contains("already exists"), "{err}");

    let err = runner
        .create_group(GroupSpec {
            name: "huge".into(),
            wasm: probe(),
            initial: None,
            maximum: ByteSize::gib(8),
        })
        .await
        .expect_err("past the module's declared maximum and the budget");
    assert!(matches!(err, Error::InvalidSpec { .. }), "{err}");

    // A different module than the group's.
    let mut spec = TaskSpec::new(guest("hello", GuestKind::Module));
    spec.shared_group = Some("g".into());
    let err = runner.spawn(spec).await.expect_err("wrong module");
    let text = err.to_string();
    assert!(
        text.contains("is not the module of shared memory group `g`"),
        "{text}"
    );
    assert!(
        text.contains("group_probe.wasm"),
        "names what was expected: {text}"
    );

    // The group's module without a group, and a group in process isolation.
    let err = runner
        .spawn(TaskSpec::new(probe()))
        .await
        .expect_err("no group");
    assert!(err.to_string().contains("shared memory group"), "{err}");
    let mut spec = task("g", "read 0");
    spec.isolation = Isolation::Process;
    let err = runner.spawn(spec).await.expect_err("process isolation");
    assert!(err.to_string().contains("isolation"), "{err}");

    let err = runner
        .spawn(task("nope", "read 0"))
        .await
        .expect_err("unknown group");
    assert!(
        err.to_string().contains("no shared memory group `nope`"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn task_sets_declare_groups_and_their_tasks() {
    use isola::config::TaskSet;
    let dir = tempfile::tempdir().expect("tempdir");
    let probe = probe();
    let hello = guest("hello", GuestKind::Module);
    let config = format!(
        r#"
[[shared_memory]]
name = "g"
wasm = "{probe}"
maximum = "8MiB"

[[task]]
name = "writer"
shared_memory = "g"
input = "write 9 77"

[[task]]
name = "reader"
shared_memory = "g"
input = "read 9"
depends_on = ["writer"]
"#,
        probe = probe.display()
    );
    let set = TaskSet::parse(&config, dir.path().join("tasks.toml")).expect("valid");
    assert_eq!(set.groups().len(), 1);
    assert_eq!(set.tasks()[0].spec.shared_group.as_deref(), Some("g"));
    assert_eq!(
        set.tasks()[0].spec.wasm,
        probe,
        "the group's module by default"
    );
    let runner = runner();
    let report = isola::taskset::Scheduler::new(runner.clone())
        .run(&set)
        .await;
    assert!(
        report
            .tasks
            .iter()
            .all(|t| t.outcome.as_ref().is_some_and(|o| o.is_success()))
    );
    let byte = runner
        .group("g")
        .expect("created")
        .region("data")
        .expect("region");
    let mut b = [0u8];
    byte.read(9, &mut b).expect("read");
    assert_eq!(b, [77]);

    let bad = format!(
        r#"
[[shared_memory]]
name = "g"
wasm = "{probe}"
maximum = "8MiB"

[[task]]
name = "typo"
shared_memory = "gg"

[[task]]
name = "process"
shared_memory = "g"
isolation = "process"

[[task]]
name = "other-module"
shared_memory = "g"
wasm = "{hello}"
"#,
        probe = probe.display(),
        hello = hello.display()
    );
    let errors = TaskSet::parse(&bad, dir.path().join("bad.toml"))
        .expect_err("three errors")
        .to_string();
    assert!(errors.contains("task `typo`: field `shared_memory`: no [[shared_memory]] group is named `gg` (did you mean `g`?)"), "{errors}");
    assert!(
        errors.contains("task `process`: field `isolation`"),
        "{errors}"
    );
    assert!(
        errors.contains("task `other-module`: field `wasm`"),
        "{errors}"
    );
    assert!(
        errors.contains("is not the module of shared memory group `g`"),
        "{errors}"
    );
    assert!(
        errors.contains("bad.toml:9:17"),
        "points at line and column: {errors}"
    );
}

/// A group module written from the group ABI alone: its coordinator tells
/// the host it is ready, then runs `after_ready` (WAT instructions).
fn coordinator(dir: &std::path::Path, name: &str, after_ready: &str) -> std::path::PathBuf {
    wat_file(
        dir,
        &format!("{name}.wasm"),
        &format!(
            r#"(module
                (import "env" "memory" (memory 1 1 shared))
                (import "isola:task" "group-ready" (func $ready))
                (import "isola:task" "group-next-task" (func $next (result i32)))
                (func (export "_start") call $ready {after_ready})
                (func (export "wasi_thread_start") (param i32 i32)))"#
        ),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_group_whose_coordinator_ends_is_closed_and_says_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Takes one task, then `main` returns without starting it.
    let quitter = coordinator(dir.path(), "quitter", "(drop (call $next))");
    let runner = runner();
    runner
        .create_group(GroupSpec {
            name: "quitter".into(),
            wasm: quitter.clone(),
            initial: None,
            maximum: ByteSize::kib(64),
        })
        .await
        .expect("create group");
    let mut spec = TaskSpec::new(&quitter);
    spec.shared_group = Some("quitter".into());
    spec.limits.timeout = Some(Duration::from_secs(30));
    let handed_over = tokio::time::timeout(Duration::from_secs(10), runner.run(spec.clone()))
        .await
        .expect("the task the coordinator took ends at once")
        .expect("spawn");
    match &handed_over.outcome {
        Outcome::Trapped(trap) => {
            assert_eq!(trap.kind, isola::TrapKind::GroupClosed);
            assert!(trap.message.contains("main returned"), "{}", trap.message);
        }
        other => panic!("{other:?}"),
    }
    // Later tasks are refused at once, saying why.
    match runner.spawn(spec).await {
        Err(Error::InvalidSpec { field, message }) => {
            assert_eq!(field, "shared_group");
            assert!(message.contains("coordinator ended"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn queued_group_tasks_time_out_and_cancel_without_their_coordinator() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Ready, then asleep (10 s) without ever taking a task.
    let sleeper = coordinator(
        dir.path(),
        "sleeper",
        "(drop (memory.atomic.wait32 (i32.const 0) (i32.const 0) (i64.const 10000000000)))",
    );
    let runner = runner();
    runner
        .create_group(GroupSpec {
            name: "sleeper".into(),
            wasm: sleeper.clone(),
            initial: None,
            maximum: ByteSize::kib(64),
        })
        .await
        .expect("create group");
    let mut spec = TaskSpec::new(&sleeper);
    spec.shared_group = Some("sleeper".into());
    spec.limits.timeout = Some(Duration::from_millis(300));
    let started = std::time::Instant::now();
    let report = runner.run(spec.clone()).await.expect("spawn");
    assert_eq!(
        report.outcome,
        Outcome::LimitExceeded {
            limit: Limit::Timeout {
                after: Duration::from_millis(300)
            }
        }
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    spec.limits.timeout = None;
    let queued = runner.spawn(spec).await.expect("spawn");
    queued.cancel();
    let report = tokio::time::timeout(Duration::from_secs(5), queued.wait())
        .await
        .expect("a cancelled queued task ends at once");
    assert_eq!(report.outcome, Outcome::Cancelled);
}

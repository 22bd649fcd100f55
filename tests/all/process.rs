//! Process isolation proven from outside: crashes end only their own task,
//! workers die with their parent, and nothing leaks.

use std::time::{Duration, Instant};

use isola::{ByteSize, Isolation, Limit, Outcome, Output, TaskSpec};
use isola_tests::{GuestKind, Target, isola_bin, runner, shared_cache};

fn process(name: &str) -> TaskSpec {
    Target {
        kind: GuestKind::Module,
        isolation: Isolation::Process,
    }
    .spec(name)
}

fn signal(pid: u32, signal: i32) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid}");
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_workers_crash_alone() {
    let runner = runner();
    let mut sleepers = Vec::new();
    for _ in 0..4 {
        let mut spec = process("hostile");
        spec.args = vec!["sleep".into(), "1500".into()];
        sleepers.push(runner.spawn(spec).await.expect("spawn"));
    }
    // Let them start, then kill two of them from outside.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pids: Vec<u32> = sleepers
        .iter()
        .map(|h| h.process_id().expect("a process task has a pid"))
        .collect();
    signal(pids[0], 9);
    signal(pids[1], 11);

    // Thread tasks run meanwhile, unaffected.
    let report = runner
        .run(TaskSpec::new(isola_tests::guest(
            "hello",
            GuestKind::Module,
        )))
        .await
        .expect("run");
    assert!(report.outcome.is_success());

    let mut outcomes = Vec::new();
    for handle in sleepers {
        let report = handle.wait().await;
        outcomes.push((report.outcome, report.stdout.text().into_owned()));
    }
    assert_eq!(
        outcomes[0].0,
        Outcome::Crashed {
            signal: Some(9),
            status: None,
            reason: None,
        }
    );
    assert_eq!(
        outcomes[1].0,
        Outcome::Crashed {
            signal: Some(11),
            status: None,
            reason: None,
        }
    );
    for (outcome, stdout) in &outcomes[2..] {
        assert_eq!(*outcome, Outcome::Exited { code: 0 });
        assert_eq!(stdout, "woke\n");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_worker_ends_by_its_timeout() {
    let mut spec = process("hostile");
    spec.args = vec!["sleep".into(), "60000".into()];
    spec.limits.timeout = Some(Duration::from_millis(500));
    let handle = runner().spawn(spec).await.expect("spawn");
    tokio::time::sleep(Duration::from_millis(100)).await;
    signal(handle.process_id().expect("pid"), 19); // SIGSTOP
    let report = tokio::time::timeout(Duration::from_secs(10), handle.wait())
        .await
        .expect("a stopped worker cannot hang its task");
    assert_eq!(
        report.outcome,
        Outcome::LimitExceeded {
            limit: Limit::Timeout {
                after: Duration::from_millis(500)
            }
        }
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_os_memory_limit_is_reported_precisely() {
    let mut spec = process("hostile");
    spec.args = vec!["alloc-bomb".into()];
    spec.limits.max_memory = ByteSize::gib(2);
    spec.limits.process_memory = Some(ByteSize::mib(256));
    spec.stderr = Output::Discard;
    let report = runner().run(spec).await.expect("run");
    match report.outcome {
        Outcome::LimitExceeded {
            limit: Limit::ProcessMemory { max },
        } => assert_eq!(max, ByteSize::mib(256)),
        other => panic!("unexpected outcome {other:?}"),
    }
}

/// The children of `pid`, from /proc.
fn children_of(pid: u32) -> Vec<u32> {
    let mut children = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return children;
    };
    for task in tasks.flatten() {
        let list = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        children.extend(
            list.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
    children
}

fn is_alive(pid: u32) -> bool {
    // A zombie is dead for our purpose: it runs nothing.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

#[test]
fn killing_the_parent_leaves_no_worker_running() {
    let guest = isola_tests::guest("hostile", GuestKind::Module);
    let mut parent = std::process::Command::new(isola_bin())
        .args(["run", "--isolation", "process"])
        .arg(&guest)
        .args(["--", "sleep", "60000"])
        .env("ISOLA_CACHE_DIR", shared_cache())
        .spawn()
        .expect("spawn isola");
    let deadline = Instant::now() + Duration::from_secs(10);
    let workers = loop {
        let workers = children_of(parent.id());
        if !workers.is_empty() || Instant::now() > deadline {
            break workers;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!workers.is_empty(), "the worker started");
    parent.kill().expect("SIGKILL the parent");
    parent.wait().expect("reap the parent");
    let deadline = Instant::now() + Duration::from_secs(5);
    while workers.iter().any(|&w| is_alive(w)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    for worker in workers {
        assert!(!is_alive(worker), "worker {worker} outlived its parent");
    }
}

/// A process task that opts into worker reuse.
fn reusable(name: &str, args: &[&str]) -> TaskSpec {
    let mut spec = process(name);
    spec.args = args.iter().map(|a| a.to_string()).collect();
    spec.reuse_worker = true;
    spec
}

/// Sends `message` to an echo task, closes its channel and returns the
/// answer, the report and the worker's pid.
async fn echo_once(
    runner: &isola::Runner,
    spec: TaskSpec,
    message: &[u8],
) -> (Vec<u8>, String, u32) {
    let mut handle = runner.spawn(spec).await.expect("spawn");
    let pid = handle.process_id().expect("a process task has a pid");
    let sender = handle.sender().expect("sender");
    sender.send(message.to_vec()).await.expect("send");
    drop(sender);
    handle.close_channel();
    let mut messages = handle.take_messages().expect("messages");
    let answer = messages.recv().await.expect("an answer");
    let report = handle.wait().await;
    assert_eq!(report.outcome, Outcome::Exited { code: 0 });
    (answer.to_vec(), report.stdout.text().into_owned(), pid)
}

#[tokio::test(flavor = "multi_thread")]
async fn tasks_that_opt_in_reuse_one_worker_and_others_do_not() {
    let runner = runner();
    let mut pids = Vec::new();
    for i in 0..4 {
        let message = format!("job {i}");
        let (answer, stdout, pid) =
            echo_once(&runner, reusable("echo", &[]), message.as_bytes()).await;
        assert_eq!(answer, message.as_bytes());
        assert_eq!(
            stdout, "answered 1\n",
            "task {i} starts with a fresh instance"
        );
        pids.push(pid);
    }
    assert!(
        pids.iter().all(|&p| p == pids[0]),
        "one worker ran every reusable task: {pids:?}"
    );
    // A task that does not opt in never gets a used worker, and does not
    // leave its own worker behind.
    let (_, _, fresh) = echo_once(&runner, process("echo"), b"x").await;
    assert_ne!(fresh, pids[0]);
    let (_, _, again) = echo_once(&runner, reusable("echo", &[]), b"y").await;
    assert_eq!(again, pids[0]);
    assert_ne!(again, fresh);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_is_kept_after_a_trap_but_not_after_a_timeout() {
    let runner = runner();
    let run = |spec: TaskSpec| {
        let runner = &runner;
        async move {
            let handle = runner.spawn(spec).await.expect("spawn");
            let pid = handle.process_id().expect("pid");
            (handle.wait().await.outcome, pid)
        }
    };
    let (first, pid) = run(reusable("hostile", &["exit", "0"])).await;
    assert_eq!(first, Outcome::Exited { code: 0 });

    let (trapped, after_trap) = run(reusable("hostile", &["unreachable"])).await;
    assert!(matches!(trapped, Outcome::Trapped(_)), "{trapped:?}");
    assert_eq!(after_trap, pid, "a trap leaves the worker clean");

    let mut sleeper = reusable("hostile", &["sleep", "60000"]);
    sleeper.limits.timeout = Some(Duration::from_millis(200));
    let (timed_out, slept_in) = run(sleeper).await;
    assert!(
        matches!(
            timed_out,
            Outcome::LimitExceeded {
                limit: Limit::Timeout { .. }
            }
        ),
        "{timed_out:?}"
    );
    assert_eq!(slept_in, pid);

    let (next, next_pid) = run(reusable("hostile", &["exit", "3"])).await;
    assert_eq!(next, Outcome::Exited { code: 3 });
    assert_ne!(next_pid, pid, "a worker stopped by a timeout is not reused");
    assert!(!is_alive(pid), "the timed-out worker is gone");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reused_worker_takes_each_tasks_own_os_limits() {
    let runner = runner();
    // The first task lowers the worker's memory limit below what the
    // second needs; the second must get its own, higher one.
    let mut small = reusable("hostile", &["exit", "0"]);
    small.limits.process_memory = Some(ByteSize::mib(200));
    let handle = runner.spawn(small).await.expect("spawn");
    let pid = handle.process_id().expect("pid");
    assert_eq!(handle.wait().await.outcome, Outcome::Exited { code: 0 });

    let mut grower = reusable("hostile", &["grow-bomb"]);
    grower.limits.max_memory = ByteSize::mib(512);
    grower.stderr = Output::Discard;
    let handle = runner.spawn(grower).await.expect("spawn");
    assert_eq!(handle.process_id(), Some(pid), "the same worker");
    assert_eq!(
        handle.wait().await.outcome,
        Outcome::LimitExceeded {
            limit: Limit::Memory {
                max: ByteSize::mib(512)
            }
        }
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn reuse_worker_on_a_thread_task_is_refused_by_name() {
    let mut spec = process("hello");
    spec.isolation = Isolation::Thread;
    spec.reuse_worker = true;
    match runner().spawn(spec).await {
        Err(isola::Error::InvalidSpec { field, .. }) => assert_eq!(field, "reuse_worker"),
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("a thread task cannot reuse a worker"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_preloaded_program_cannot_hold_up_a_pre_started_worker() {
    // Pre-started workers load (and instantiate, running nothing) the last
    // program a process task ran. One whose `start` function never returns
    // must not wedge them: the next task of it still starts and ends by its
    // timeout, and other programs still run.
    let dir = tempfile::tempdir().expect("tempdir");
    let spinner = isola_tests::wat_file(
        dir.path(),
        "spin-at-start",
        r#"(module
            (memory (export "memory") 1)
            (func $spin (loop $l (br $l)))
            (start $spin)
            (func (export "_start")))"#,
    );
    let runner = runner();
    for round in 0..3 {
        let mut spec = TaskSpec::new(&spinner);
        spec.isolation = Isolation::Process;
        spec.limits.timeout = Some(Duration::from_millis(200));
        let report = tokio::time::timeout(Duration::from_secs(10), runner.run(spec))
            .await
            .expect("the task ends")
            .expect("run");
        assert!(
            matches!(
                report.outcome,
                Outcome::LimitExceeded {
                    limit: Limit::Timeout { .. }
                }
            ),
            "round {round}: {:?}",
            report.outcome
        );
        // Give the pool time to start a worker that preloads the spinner.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let report = tokio::time::timeout(Duration::from_secs(10), runner.run(process("hello")))
        .await
        .expect("a task after the spinner starts")
        .expect("run");
    assert_eq!(report.outcome, Outcome::Exited { code: 0 });
    assert_eq!(report.stdout.text(), "Hello from Isola!\n");
}

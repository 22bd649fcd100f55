//! The message channel and plugin calls: ordering, no loss, large messages,
//! backpressure, close semantics and limits, identical for both guest kinds
//! and both isolation levels.

use std::time::Duration;

use isola::{ByteSize, CallError, Error, Isolation, Limit, Outcome, SendError};
use isola_tests::{GuestKind, ISOLATIONS, Target, guest, isola, runner, stderr, stdout, targets};

/// Sends `count` numbered messages while reading the echoes, concurrently.
async fn echo_round_trip(t: Target, count: u64, size: usize) {
    let mut handle = runner().spawn(t.spec("echo")).await.expect("spawn");
    let sender = handle.sender().expect("sender");
    handle.close_channel();
    let mut messages = handle.take_messages().expect("messages");
    let producer = tokio::spawn(async move {
        let mut message = vec![0u8; size.max(8)];
        for seq in 0..count {
            message[..8].copy_from_slice(&seq.to_le_bytes());
            sender.send(message.clone()).await.expect("send");
        }
        // Dropping the last sender closes the guest's channel.
    });
    let mut expected = 0u64;
    while let Some(message) = messages.recv().await {
        assert_eq!(message.len(), size.max(8), "{t:?}");
        let seq = u64::from_le_bytes(message[..8].try_into().expect("8 bytes"));
        assert_eq!(seq, expected, "{t:?}: messages arrive in order, none lost");
        expected += 1;
    }
    producer.await.expect("producer");
    assert_eq!(expected, count, "{t:?}: every message came back");
    let report = handle.wait().await;
    assert_eq!(report.outcome, Outcome::Exited { code: 0 }, "{t:?}");
    assert_eq!(report.stdout.text(), format!("answered {count}\n"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hundred_thousand_messages_in_order_and_none_lost() {
    for t in targets() {
        echo_round_trip(t, 100_000, 16).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn messages_of_several_mebibytes() {
    for t in targets() {
        echo_round_trip(t, 4, 6 << 20).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn start_input_is_seen_and_nothing_posted_before_the_end_is_lost() {
    for t in targets() {
        let mut spec = t.spec("echo");
        spec.input = Some(b"worker data".to_vec());
        let mut handle = runner().spawn(spec).await.expect("spawn");
        for i in 0..10 {
            handle.post(format!("m{i}")).await.expect("post");
        }
        handle.close_channel();
        let mut received = Vec::new();
        while let Some(message) = handle.recv().await {
            received.push(String::from_utf8(message.to_vec()).expect("utf-8"));
        }
        let mut expected = vec!["worker data".to_string()];
        expected.extend((0..10).map(|i| format!("m{i}")));
        assert_eq!(received, expected, "{t:?}");
        let report = handle.wait().await;
        assert_eq!(
            report.stdout.text(),
            "answered 10\n",
            "{t:?}: recv saw the close"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn json_messages_round_trip() {
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Job {
        id: u32,
        name: String,
    }
    for t in targets() {
        let mut handle = runner().spawn(t.spec("echo")).await.expect("spawn");
        let job = Job {
            id: 7,
            name: "resize".into(),
        };
        handle.post_json(&job).await.expect("post");
        handle.close_channel();
        let mut messages = handle.take_messages().expect("messages");
        let back: Job = messages
            .recv_json()
            .await
            .expect("a message")
            .expect("json");
        assert_eq!(back, job, "{t:?}");
        assert!(messages.recv().await.is_none());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn jobs_worker_answers_every_job() {
    for t in targets() {
        let mut handle = runner().spawn(t.spec("jobs")).await.expect("spawn");
        for (id, n) in [(1, 10), (2, 20), (3, 50)] {
            handle.post(format!("{id} {n}")).await.expect("post");
        }
        handle.post("bad").await.expect("post");
        handle.close_channel();
        let mut answers = Vec::new();
        while let Some(answer) = handle.recv().await {
            answers.push(String::from_utf8(answer.to_vec()).expect("utf-8"));
        }
        assert_eq!(
            answers,
            [
                "1 55",
                "2 6765",
                "3 12586269025",
                "bad error: expected `ID N`, got `bad`"
            ],
            "{t:?}"
        );
        assert!(handle.wait().await.outcome.is_success());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fast_poster_is_held_back_by_a_slow_host() {
    for isolation in ISOLATIONS {
        let mut spec = Target {
            kind: GuestKind::Module,
            isolation,
        }
        .spec("hostile");
        spec.args = vec!["post-flood".into(), (64 * 1024).to_string()];
        spec.limits.message_queue = 4;
        let mut handle = runner().spawn(spec).await.expect("spawn");
        let mut messages = handle.take_messages().expect("messages");
        // The host does not read for a while: the guest must be blocked.
        // Waited for until the queue fills (a loaded machine may take more
        // than a moment), then a while more, for it to overfill if it could.
        for _ in 0..500 {
            if messages.len() >= 4 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Counted before any is taken: taking one lets the guest post
        // another, which a count while draining would see too.
        let queued = messages.len();
        // The host's queue is full and no fuller (a process task's worker
        // holds what does not fit, in its own queue and the pipe).
        assert_eq!(queued, 4, "{isolation}: the queue filled to its limit");
        // Reading lets the guest go on, in order.
        let mut next = None;
        for _ in 0..200 {
            let message = messages.recv().await.expect("more messages");
            let seq = u64::from_le_bytes(message[..8].try_into().expect("8 bytes"));
            if let Some(next) = next {
                assert_eq!(seq, next, "{isolation}: in order");
            }
            next = Some(seq + 1);
        }
        handle.cancel();
        assert_eq!(handle.wait().await.outcome, Outcome::Cancelled);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_host_sending_to_a_full_task_waits_or_errors_by_choice() {
    for isolation in ISOLATIONS {
        let mut spec = Target {
            kind: GuestKind::Module,
            isolation,
        }
        .spec("hostile");
        spec.args = vec!["sleep".into(), "60000".into()];
        spec.limits.message_queue = 2;
        let handle = runner().spawn(spec).await.expect("spawn");
        let sender = handle.sender().expect("sender");
        // The task never reads: a few messages fit, then try_send reports
        // the inbox full. Process tasks buffer a few more on the way to the
        // worker, which drains the first queue meanwhile: full means still
        // full after a pause.
        let mut sent = 0;
        loop {
            match sender.try_send(vec![0u8; 128 * 1024]) {
                Ok(()) => sent += 1,
                Err(err) => {
                    assert_eq!(err, SendError::Full, "{isolation}");
                    // Long enough for every queue on the way to a worker
                    // to fill, even on a loaded machine.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    if sender.try_send(vec![0u8; 128 * 1024]) == Err(SendError::Full) {
                        break;
                    }
                    sent += 1;
                }
            }
            assert!(sent < 100, "{isolation}: the inbox never filled");
        }
        let bound = match isolation {
            Isolation::Thread => 2,
            Isolation::Process => 2 + 16 + 2 + 4,
        };
        assert!(sent <= bound, "{isolation}: {sent} messages were accepted");
        // A waiting send does not complete while the task is not reading.
        let waiting = tokio::time::timeout(Duration::from_millis(200), sender.send(vec![1u8]));
        assert!(waiting.await.is_err(), "{isolation}: send waits");
        handle.cancel();
        handle.wait().await;
        // After the end, sends fail instead of waiting forever.
        let late = tokio::time::timeout(Duration::from_secs(5), sender.send(vec![2u8]))
            .await
            .expect("no hang");
        assert_eq!(late, Err(SendError::Closed), "{isolation}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn message_floods_and_huge_messages_are_stopped_by_their_limits() {
    for t in targets() {
        let mut spec = t.spec("hostile");
        spec.args = vec!["post-flood".into(), "32".into()];
        spec.limits.max_messages = Some(1000);
        let report = runner().run(spec).await.expect("run");
        assert_eq!(
            report.outcome,
            Outcome::LimitExceeded {
                limit: Limit::Messages { max: 1000 }
            },
            "{t:?}"
        );

        let mut spec = t.spec("hostile");
        spec.args = vec!["huge-post".into(), "8".into()];
        spec.limits.max_message_size = ByteSize::mib(1);
        let report = runner().run(spec).await.expect("run");
        assert_eq!(
            report.outcome,
            Outcome::LimitExceeded {
                limit: Limit::MessageSize {
                    max: ByteSize::mib(1)
                }
            },
            "{t:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn call_runs_a_plugin() {
    for t in targets() {
        let runner = runner();
        let output = runner.call(t.spec("plugin"), "41").await.expect("call");
        assert_eq!(output, b"42", "{t:?}");
        // A fresh instance per call: the call counter starts over.
        for _ in 0..3 {
            let output = runner.call(t.spec("plugin"), "count").await.expect("call");
            assert_eq!(output, b"1", "{t:?}");
        }
        match runner.call(t.spec("plugin"), "nope").await {
            Err(CallError::Rejected(message)) => assert_eq!(message, "not an integer: `nope`"),
            other => panic!("{t:?}: {other:?}"),
        }
        match runner.call(t.spec("hello"), "x").await {
            Err(CallError::Start(Error::UnsupportedWorld { .. })) => {}
            other => panic!("{t:?}: a program without `run`: {other:?}"),
        }
        // A loaded program is called without reading its file again.
        let program = runner
            .load(isola_tests::guest("plugin", t.kind))
            .await
            .expect("load");
        let output = runner
            .call_program(&program, t.spec("plugin"), "1")
            .await
            .expect("call");
        assert_eq!(output, b"2", "{t:?}");
        // Spawned as a task, a plugin runs `run` with the spec's input.
        let mut spec = t.spec("plugin");
        spec.input = Some(b"9".to_vec());
        let report = runner.run(spec).await.expect("run");
        assert_eq!(
            report.outcome,
            Outcome::Returned {
                output: b"10".to_vec()
            },
            "{t:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_that_ends_badly_reports_how() {
    for t in targets() {
        let mut spec = t.spec("plugin");
        spec.limits.fuel = Some(10);
        match runner().call(spec, "1").await {
            Err(CallError::Ended(report)) => assert_eq!(
                report.outcome,
                Outcome::LimitExceeded {
                    limit: Limit::Fuel { budget: 10 }
                },
                "{t:?}"
            ),
            other => panic!("{t:?}: {other:?}"),
        }
    }
}

#[test]
fn cli_call_and_message_mode() {
    for t in targets() {
        let plugin = guest("plugin", t.kind);
        let plugin = plugin.to_str().expect("utf-8");
        let iso = t.isolation_flag();

        let out = isola(&["call", "--isolation", iso, plugin, "--input", "41"]);
        assert_eq!(out.status.code(), Some(0), "{t:?}: {}", stderr(&out));
        assert_eq!(stdout(&out), "42", "{t:?}");

        let out = isola(&["call", "--isolation", iso, "--json", plugin, "--input", "1"]);
        assert_eq!(stdout(&out), "2\n", "{t:?}: a JSON number");

        let input = tempfile::NamedTempFile::new().expect("tempfile");
        std::fs::write(input.path(), "99").expect("write");
        let at = format!("@{}", input.path().display());
        let out = isola(&["call", "--isolation", iso, plugin, "--input", &at]);
        assert_eq!(stdout(&out), "100", "{t:?}");

        let out = isola(&["call", "--isolation", iso, plugin, "--input", "nope"]);
        assert_eq!(out.status.code(), Some(1), "{t:?}");
        assert_eq!(
            stderr(&out),
            "error: the plugin returned an error: not an integer: `nope`\n"
        );

        let jobs = guest("jobs", t.kind);
        let out = isola_tests::isola_with_stdin(
            &[
                "run",
                "--isolation",
                iso,
                "--messages",
                jobs.to_str().expect("utf-8"),
            ],
            b"1 10\n2 12\n",
        );
        assert_eq!(out.status.code(), Some(0), "{t:?}: {}", stderr(&out));
        assert_eq!(stdout(&out), "1 55\n2 144\n", "{t:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kept_plugin_instance_keeps_its_state() {
    for t in targets() {
        let runner = runner();
        let mut plugin = runner.plugin(t.spec("plugin")).await.expect("instantiate");
        assert_eq!(
            plugin.process_id().is_some(),
            t.isolation == Isolation::Process,
            "{t:?}"
        );
        assert_eq!(plugin.call("count").await.expect("call"), b"1", "{t:?}");
        assert_eq!(plugin.call("5").await.expect("call"), b"6", "{t:?}");
        // The same instance: the counter went on.
        assert_eq!(plugin.call("count").await.expect("call"), b"3", "{t:?}");
        match plugin.call("nope").await {
            Err(CallError::Rejected(_)) => {}
            other => panic!("{t:?}: {other:?}"),
        }
        assert_eq!(plugin.call("count").await.expect("still usable"), b"5");

        // A call past its fuel leaves the instance unusable, and says so.
        let mut spec = t.spec("plugin");
        spec.limits.fuel = Some(10);
        let mut starved = runner.plugin(spec).await.expect("instantiate");
        match starved.call("1").await {
            Err(CallError::Ended(report)) => assert!(
                matches!(
                    report.outcome,
                    Outcome::LimitExceeded {
                        limit: Limit::Fuel { budget: 10 }
                    }
                ),
                "{t:?}: {:?}",
                report.outcome
            ),
            other => panic!("{t:?}: {other:?}"),
        }
        match starved.call("1").await {
            Err(CallError::Ended(report)) => {
                assert!(
                    matches!(report.outcome, Outcome::Failed { .. }),
                    "{:?}",
                    report.outcome
                )
            }
            other => panic!("{t:?}: {other:?}"),
        }

        // Each call has the spec's timeout.
        let mut spec = t.spec("plugin");
        spec.limits.timeout = Some(Duration::from_millis(300));
        let mut slow = runner.plugin(spec).await.expect("instantiate");
        match slow.call("spin").await {
            Err(CallError::Ended(report)) => assert_eq!(
                report.outcome,
                Outcome::LimitExceeded {
                    limit: Limit::Timeout {
                        after: Duration::from_millis(300)
                    }
                },
                "{t:?}"
            ),
            other => panic!("{t:?}: {other:?}"),
        }

        // A call its caller gave up on leaves the instance unusable.
        let mut abandoned = runner.plugin(t.spec("plugin")).await.expect("instantiate");
        let gave_up =
            tokio::time::timeout(Duration::from_millis(200), abandoned.call("spin")).await;
        assert!(gave_up.is_err(), "{t:?}: spin returned");
        match abandoned.call("count").await {
            Err(CallError::Ended(report)) => assert!(
                matches!(&report.outcome, Outcome::Failed { message } if message.contains("abandoned")),
                "{t:?}: {:?}",
                report.outcome
            ),
            other => panic!("{t:?}: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kept_plugin_whose_worker_dies_ends_as_crashed() {
    for kind in isola_tests::KINDS {
        let t = Target {
            kind,
            isolation: Isolation::Process,
        };
        let runner = runner();
        let mut plugin = runner.plugin(t.spec("plugin")).await.expect("instantiate");
        assert_eq!(plugin.call("count").await.expect("call"), b"1", "{t:?}");
        let pid = plugin.process_id().expect("a worker");
        isola_tests::procs::send_signal(pid, 9).expect("kill");
        match plugin.call("count").await {
            Err(CallError::Ended(report)) => assert_eq!(
                report.outcome,
                Outcome::Crashed {
                    signal: Some(9),
                    status: None,
                    reason: None,
                },
                "{t:?}"
            ),
            other => panic!("{t:?}: {other:?}"),
        }
        // Unusable from then on; other plugins are not affected.
        assert!(matches!(
            plugin.call("count").await,
            Err(CallError::Ended(_))
        ));
        assert!(
            !isola_tests::procs::is_alive(pid),
            "the killed worker is reaped"
        );
        let mut other = runner.plugin(t.spec("plugin")).await.expect("instantiate");
        assert_eq!(other.call("count").await.expect("call"), b"1", "{t:?}");
        let other_pid = other.process_id().expect("a worker");
        drop(other);
        // A dropped instance's worker exits and is reaped.
        assert!(
            isola_tests::procs::wait_until(Duration::from_secs(5), || {
                !isola_tests::procs::is_alive(other_pid)
            }),
            "the dropped instance's worker is gone"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_that_waited_for_a_message_is_still_stopped_by_its_timeout() {
    // While a guest waits for a message the runner's epoch ticker may stop
    // (it runs no Wasm); once a message wakes it, ticking must resume, or a
    // guest spinning after that could never be interrupted.
    for t in targets() {
        let mut spec = t.spec("hostile");
        spec.args = vec!["wait-then-loop".into()];
        spec.limits.timeout = Some(Duration::from_millis(400));
        let runner = runner();
        let handle = runner.spawn(spec).await.expect("spawn");
        // Long enough for the guest to be waiting, alone, with the ticker idle.
        tokio::time::sleep(Duration::from_millis(150)).await;
        let sender = handle.sender().expect("sender");
        sender.send(&b"go"[..]).await.expect("send");
        let report = tokio::time::timeout(Duration::from_secs(20), handle.wait())
            .await
            .unwrap_or_else(|_| panic!("{t:?}: the spinning guest was never interrupted"));
        assert_eq!(
            report.outcome,
            Outcome::LimitExceeded {
                limit: Limit::Timeout {
                    after: Duration::from_millis(400)
                }
            },
            "{t:?}"
        );
    }
}

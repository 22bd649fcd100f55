//! Process tasks leave nothing behind: no zombie, no file descriptor. A
//! test binary of its own, because it counts the process's file
//! descriptors, which tests running beside it in another binary would
//! open and close at any moment.

use std::time::{Duration, Instant};

use isola::{Isolation, RunnerConfig, TaskSpec};
use isola_tests::procs::{open_fds, zombie_children};
use isola_tests::{GuestKind, Target, isola_bin, runner, shared_cache};

fn process(name: &str) -> TaskSpec {
    Target {
        kind: GuestKind::Module,
        isolation: Isolation::Process,
    }
    .spec(name)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_process_tasks_leave_no_zombies_or_fds() {
    // Warm up the runtime's own fds (signal pipes, epoll) before counting.
    let _ = runner().run(process("hello")).await.expect("warm-up");
    let fds_before = open_fds();
    {
        let runner = isola::Runner::with_config(RunnerConfig {
            max_live_tasks: 8,
            cache_dir: isola::CacheDir::Path(shared_cache()),
            worker_program: Some(isola_bin()),
            prestarted_workers: 2,
            ..RunnerConfig::default()
        })
        .expect("runner");
        let mut handles = std::collections::VecDeque::new();
        for i in 0..1000 {
            let mut spec = process("echo_cli");
            spec.args = vec!["args".into(), i.to_string()];
            handles.push_back(runner.spawn(spec).await.expect("spawn"));
            if handles.len() >= 8 {
                let handle = handles.pop_front().expect("queued");
                assert!(handle.wait().await.outcome.is_success());
            }
        }
        for handle in handles {
            assert!(handle.wait().await.outcome.is_success());
        }
    }
    // Idle pre-started workers see their pipes close and exit; give the
    // runtime a moment to reap them.
    let deadline = Instant::now() + Duration::from_secs(10);
    while (open_fds() > fds_before || !zombie_children().is_empty()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(zombie_children(), Vec::<u32>::new(), "no zombies");
    assert!(
        open_fds() <= fds_before,
        "fds: {} before, {} after",
        fds_before,
        open_fds()
    );
}

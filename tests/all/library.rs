//! The capabilities a spec grants, and nothing more, through the library.

use std::time::Duration;

use isola::{DirGrant, Outcome, Output, Stdin, TaskReport, TaskSpec};
use isola_tests::{GuestKind, KINDS, expected_exit, guest, runner};

async fn run(spec: TaskSpec) -> TaskReport {
    runner().run(spec).await.expect("task starts")
}

fn echo(kind: GuestKind, args: &[&str]) -> TaskSpec {
    let mut spec = TaskSpec::new(guest("echo_cli", kind));
    spec.args = args.iter().map(|s| s.to_string()).collect();
    spec
}

fn assert_exit(report: &TaskReport, code: i32) {
    assert_eq!(
        report.outcome,
        Outcome::Exited { code },
        "stderr: {}",
        report.stderr.text()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn hello_runs_as_module_and_component() {
    for kind in KINDS {
        let report = run(TaskSpec::new(guest("hello", kind))).await;
        assert_exit(&report, 0);
        assert_eq!(report.stdout.text(), "Hello from Isola!\n", "{kind:?}");
        assert!(report.stderr.bytes.is_empty());
        assert!(
            report.metrics.peak_memory > 0,
            "{kind:?}: memory was counted"
        );
        assert!(report.metrics.fuel_used > 0, "{kind:?}: fuel was counted");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn args_reach_the_guest_unchanged() {
    for kind in KINDS {
        let report = run(echo(kind, &["args", "a", "b c", "", "ünï"])).await;
        assert_exit(&report, 0);
        assert_eq!(report.stdout.text(), "a\nb c\n\nünï\n", "{kind:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn guest_sees_only_the_env_it_was_given() {
    let home = std::env::var("PATH").expect("PATH is set for tests");
    for kind in KINDS {
        let mut spec = echo(kind, &["env"]);
        spec.env.insert("GREETING".into(), "hi there".into());
        spec.env.insert("EMPTY".into(), String::new());
        spec.inherit_env = vec!["PATH".into(), "ISOLA_SURELY_UNSET_VAR".into()];
        let report = run(spec).await;
        assert_exit(&report, 0);
        assert_eq!(
            report.stdout.text(),
            format!("EMPTY=\nGREETING=hi there\nPATH={home}\n"),
            "{kind:?}: exactly the granted variables; unset inherited ones are skipped"
        );

        let report = run(echo(kind, &["env"])).await;
        assert_exit(&report, 0);
        assert_eq!(report.stdout.text(), "", "{kind:?}: no env by default");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn preopened_dirs_honour_their_permissions() {
    // root/secret.txt sits right next to the granted root/granted/.
    let root = tempfile::tempdir().expect("tempdir");
    std::fs::write(root.path().join("secret.txt"), "secret").expect("write");
    let dir = root.path().join("granted");
    std::fs::create_dir(&dir).expect("mkdir");
    std::fs::write(dir.join("data.txt"), "file contents\n").expect("write");
    std::os::unix::fs::symlink("../secret.txt", dir.join("escape")).expect("symlink");
    for kind in KINDS {
        let ro = || DirGrant {
            host: dir.clone(),
            guest: Some("/data".into()),
            writable: false,
        };
        let mut spec = echo(kind, &["cat", "/data/data.txt"]);
        spec.dirs = vec![ro()];
        let report = run(spec).await;
        assert_exit(&report, 0);
        assert_eq!(report.stdout.text(), "file contents\n");

        let mut spec = echo(kind, &["write", "/data/new.txt", "nope"]);
        spec.dirs = vec![ro()];
        let report = run(spec).await;
        assert_exit(&report, 1);
        assert!(report.stderr.text().starts_with("error:"), "{kind:?}");
        assert!(
            !dir.join("new.txt").exists(),
            "{kind:?}: read-only dir refused the write"
        );

        let mut spec = echo(kind, &["write", "/data/new.txt", "written"]);
        spec.dirs = vec![DirGrant {
            writable: true,
            ..ro()
        }];
        let report = run(spec).await;
        assert_exit(&report, 0);
        assert_eq!(
            std::fs::read_to_string(dir.join("new.txt")).expect("file written"),
            "written"
        );
        std::fs::remove_file(dir.join("new.txt")).expect("cleanup");

        // Nothing outside the grant: not by `..`, not by absolute host path,
        // and no directory at all without a grant.
        for path in [
            "/data/../secret.txt".to_string(),
            "/data/escape".to_string(),
            root.path().join("secret.txt").display().to_string(),
            "/etc/passwd".to_string(),
        ] {
            let mut spec = echo(kind, &["cat", &path]);
            spec.dirs = vec![ro()];
            let report = run(spec).await;
            assert_exit(&report, 1);
            assert_eq!(
                report.stdout.text(),
                "",
                "{kind:?}: {path} must not be readable"
            );
        }
        let report = run(echo(kind, &["ls", "/"])).await;
        assert_exit(&report, 1);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn stdin_is_closed_unless_given() {
    for kind in KINDS {
        let mut spec = echo(kind, &["stdin"]);
        spec.stdin = Stdin::Bytes(b"line one\nline two\n".to_vec());
        let report = run(spec).await;
        assert_exit(&report, 0);
        assert_eq!(report.stdout.text(), "line one\nline two\n");

        let report = run(echo(kind, &["stdin"])).await;
        assert_exit(&report, 0);
        assert_eq!(report.stdout.text(), "", "closed stdin reads as empty");

        let file = tempfile::NamedTempFile::new().expect("tempfile");
        std::fs::write(file.path(), "from a file").expect("write");
        let mut spec = echo(kind, &["stdin"]);
        spec.stdin = Stdin::File(file.path().to_owned());
        let report = run(spec).await;
        assert_eq!(report.stdout.text(), "from a file");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn exit_codes_pass_through() {
    for kind in KINDS {
        for code in [0, 1, 2, 42, 124, 126, 134, 255] {
            let report = run(echo(kind, &["exit", &code.to_string()])).await;
            assert_exit(&report, expected_exit(kind, code));
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn piped_output_arrives_while_the_task_runs() {
    for kind in KINDS {
        let mut spec = TaskSpec::new(guest("hello", kind));
        spec.stdout = Output::Pipe;
        let mut handle = runner().spawn(spec).await.expect("spawn");
        let mut stdout = handle.take_stdout().expect("piped stdout");
        assert!(handle.take_stdout().is_none(), "taken once");
        let mut received = Vec::new();
        while let Some(chunk) = stdout.recv().await {
            received.extend_from_slice(&chunk);
        }
        let report = handle.wait().await;
        assert_exit(&report, 0);
        assert_eq!(received, b"Hello from Isola!\n");
        assert!(
            report.stdout.bytes.is_empty(),
            "piped output is not captured too"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_pipe_reader_slows_the_guest_instead_of_buffering() {
    let mut spec = TaskSpec::new(guest("hostile", GuestKind::Module));
    spec.args = vec!["flood".into()];
    spec.stdout = Output::Pipe;
    spec.limits.max_output = Some(isola::ByteSize::mib(4));
    let mut handle = runner().spawn(spec).await.expect("spawn");
    let mut stdout = handle.take_stdout().expect("piped");
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The guest can only be as far ahead as the pipe's few chunks.
    let mut queued = 0;
    while let Ok(chunk) = stdout.try_recv() {
        queued += chunk.len();
    }
    assert!(queued <= 16 * 64 * 1024, "{queued} bytes were buffered");
    assert!(queued > 0, "output flowed");
    let mut total = queued;
    while let Some(chunk) = stdout.recv().await {
        total += chunk.len();
    }
    let report = handle.wait().await;
    assert!(matches!(report.outcome, Outcome::LimitExceeded { .. }));
    assert_eq!(total, 4 << 20, "exactly the output up to the limit arrived");
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_stops_busy_and_waiting_tasks() {
    for kind in KINDS {
        for mode in [&["loop"][..], &["sleep", "60000"][..], &["tiny-writes"][..]] {
            let mut spec = TaskSpec::new(guest("hostile", kind));
            spec.args = mode.iter().map(|s| s.to_string()).collect();
            spec.stdout = Output::Discard;
            let handle = runner().spawn(spec).await.expect("spawn");
            let canceller = handle.cancel_handle();
            tokio::time::sleep(Duration::from_millis(50)).await;
            canceller.cancel();
            let report = tokio::time::timeout(Duration::from_secs(10), handle.wait())
                .await
                .expect("cancel takes effect");
            assert_eq!(report.outcome, Outcome::Cancelled, "{kind:?} {mode:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn many_tasks_run_concurrently_from_one_program() {
    let runner = runner();
    let program = runner
        .load(guest("echo_cli", GuestKind::Module))
        .await
        .expect("load");
    let mut handles = Vec::new();
    for i in 0..100 {
        let mut spec = TaskSpec::new("ignored.wasm");
        spec.args = vec!["args".into(), i.to_string()];
        handles.push(runner.spawn_program(&program, spec).await.expect("spawn"));
    }
    for (i, handle) in handles.into_iter().enumerate() {
        let report = handle.wait().await;
        assert_exit(&report, 0);
        assert_eq!(report.stdout.text(), format!("{i}\n"));
    }
}

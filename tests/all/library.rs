//! The capabilities a spec grants, and nothing more, through the library.

use std::time::Duration;

use isola::{DirGrant, Outcome, Output, Stdin, TaskReport, TaskSpec};
use isola_tests::{GuestKind, ISOLATIONS, Target, expected_exit, guest, runner, targets};

async fn run(spec: TaskSpec) -> TaskReport {
    runner().run(spec).await.expect("task starts")
}

fn echo(t: Target, args: &[&str]) -> TaskSpec {
    let mut spec = t.spec("echo_cli");
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
    for t in targets() {
        let report = run(t.spec("hello")).await;
        assert_exit(&report, 0);
        assert_eq!(report.stdout.text(), "Hello from Isola!\n", "{t:?}");
        assert!(report.stderr.bytes.is_empty());
        assert!(report.metrics.peak_memory > 0, "{t:?}: memory was counted");
        assert!(report.metrics.fuel_used > 0, "{t:?}: fuel was counted");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn args_reach_the_guest_unchanged() {
    for t in targets() {
        let report = run(echo(t, &["args", "a", "b c", "", "ünï"])).await;
        assert_exit(&report, 0);
        assert_eq!(report.stdout.text(), "a\nb c\n\nünï\n", "{t:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn guest_sees_only_the_env_it_was_given() {
    let home = std::env::var("PATH").expect("PATH is set for tests");
    for t in targets() {
        let mut spec = echo(t, &["env"]);
        spec.env.insert("GREETING".into(), "hi there".into());
        spec.env.insert("EMPTY".into(), String::new());
        spec.inherit_env = vec!["PATH".into(), "ISOLA_SURELY_UNSET_VAR".into()];
        let report = run(spec).await;
        assert_exit(&report, 0);
        assert_eq!(
            report.stdout.text(),
            format!("EMPTY=\nGREETING=hi there\nPATH={home}\n"),
            "{t:?}: exactly the granted variables; unset inherited ones are skipped"
        );

        let report = run(echo(t, &["env"])).await;
        assert_exit(&report, 0);
        assert_eq!(report.stdout.text(), "", "{t:?}: no env by default");
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
    for t in targets() {
        let ro = || DirGrant {
            host: dir.clone(),
            guest: Some("/data".into()),
            writable: false,
        };
        let mut spec = echo(t, &["cat", "/data/data.txt"]);
        spec.dirs = vec![ro()];
        let report = run(spec).await;
        assert_exit(&report, 0);
        assert_eq!(report.stdout.text(), "file contents\n");

        let mut spec = echo(t, &["write", "/data/new.txt", "nope"]);
        spec.dirs = vec![ro()];
        let report = run(spec).await;
        assert_exit(&report, 1);
        assert!(report.stderr.text().starts_with("error:"), "{t:?}");
        assert!(
            !dir.join("new.txt").exists(),
            "{t:?}: read-only dir refused the write"
        );

        let mut spec = echo(t, &["write", "/data/new.txt", "written"]);
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
            let mut spec = echo(t, &["cat", &path]);
            spec.dirs = vec![ro()];
            let report = run(spec).await;
            assert_exit(&report, 1);
            assert_eq!(
                report.stdout.text(),
                "",
                "{t:?}: {path} must not be readable"
            );
        }
        let report = run(echo(t, &["ls", "/"])).await;
        assert_exit(&report, 1);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn stdin_is_closed_unless_given() {
    for t in targets() {
        let mut spec = echo(t, &["stdin"]);
        spec.stdin = Stdin::Bytes(b"line one\nline two\n".to_vec());
        let report = run(spec).await;
        assert_exit(&report, 0);
        assert_eq!(report.stdout.text(), "line one\nline two\n");

        let report = run(echo(t, &["stdin"])).await;
        assert_exit(&report, 0);
        assert_eq!(report.stdout.text(), "", "closed stdin reads as empty");

        let file = tempfile::NamedTempFile::new().expect("tempfile");
        std::fs::write(file.path(), "from a file").expect("write");
        let mut spec = echo(t, &["stdin"]);
        spec.stdin = Stdin::File(file.path().to_owned());
        let report = run(spec).await;
        assert_eq!(report.stdout.text(), "from a file");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn exit_codes_pass_through() {
    for t in targets() {
        for code in [0, 1, 2, 42, 124, 126, 134, 255] {
            let report = run(echo(t, &["exit", &code.to_string()])).await;
            assert_exit(&report, expected_exit(t.kind, code));
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn piped_output_arrives_while_the_task_runs() {
    for t in targets() {
        let mut spec = t.spec("hello");
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
    for isolation in ISOLATIONS {
        slow_pipe_reader(isolation).await;
    }
}

async fn slow_pipe_reader(isolation: isola::Isolation) {
    let mut spec = Target {
        kind: GuestKind::Module,
        isolation,
    }
    .spec("hostile");
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
    // Thread tasks buffer only the pipe's chunks; process tasks add what
    // the OS pipe and the worker's own pipe hold.
    assert!(
        queued <= 32 * 64 * 1024,
        "{isolation}: {queued} bytes were buffered"
    );
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
    for t in targets() {
        for mode in [&["loop"][..], &["sleep", "60000"][..], &["tiny-writes"][..]] {
            let mut spec = t.spec("hostile");
            spec.args = mode.iter().map(|s| s.to_string()).collect();
            spec.stdout = Output::Discard;
            let handle = runner().spawn(spec).await.expect("spawn");
            let canceller = handle.cancel_handle();
            tokio::time::sleep(Duration::from_millis(50)).await;
            canceller.cancel();
            let report = tokio::time::timeout(Duration::from_secs(10), handle.wait())
                .await
                .expect("cancel takes effect");
            assert_eq!(report.outcome, Outcome::Cancelled, "{t:?} {mode:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn many_tasks_run_concurrently_from_one_program() {
    for isolation in ISOLATIONS {
        many_tasks(isolation).await;
    }
}

async fn many_tasks(isolation: isola::Isolation) {
    let runner = runner();
    let program = runner
        .load(guest("echo_cli", GuestKind::Module))
        .await
        .expect("load");
    let mut handles = Vec::new();
    for i in 0..100 {
        let mut spec = TaskSpec::new("ignored.wasm");
        spec.args = vec!["args".into(), i.to_string()];
        spec.isolation = isolation;
        handles.push(runner.spawn_program(&program, spec).await.expect("spawn"));
    }
    for (i, handle) in handles.into_iter().enumerate() {
        let report = handle.wait().await;
        assert_exit(&report, 0);
        assert_eq!(report.stdout.text(), format!("{i}\n"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_runner_for_many_small_tasks_caps_their_memory_at_its_reservation() {
    let runner = isola::Runner::with_config(isola::RunnerConfig {
        max_live_tasks: 8,
        memory_reservation: Some(64 << 20),
        memories_per_task: 1,
        cache_dir: isola::CacheDir::Path(isola_tests::shared_cache()),
        ..isola::RunnerConfig::default()
    })
    .expect("runner");
    let hello = guest("hello", GuestKind::Module);

    let mut small = TaskSpec::new(&hello);
    small.limits.max_memory = isola::ByteSize::mib(64);
    let report = runner.run(small).await.expect("run");
    assert_exit(&report, 0);
    assert_eq!(report.stdout.text(), "Hello from Isola!\n");

    // The default 1 GiB cannot fit in a 64 MiB reservation: said, by field.
    match runner.spawn(TaskSpec::new(&hello)).await {
        Err(isola::Error::InvalidSpec { field, message }) => {
            assert_eq!(field, "limits.max_memory");
            assert!(message.contains("64.0 MiB"), "{message}");
        }
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("a 1 GiB task in a 64 MiB reservation"),
    }

    // A guest growing past the reservation is stopped by its limit.
    let mut grower = TaskSpec::new(guest("hostile", GuestKind::Module));
    grower.args = vec!["grow-bomb".into()];
    grower.limits.max_memory = isola::ByteSize::mib(64);
    grower.stderr = Output::Discard;
    let report = runner.run(grower).await.expect("run");
    assert_eq!(
        report.outcome,
        Outcome::LimitExceeded {
            limit: isola::Limit::Memory {
                max: isola::ByteSize::mib(64)
            }
        }
    );

    for (field, config) in [
        (
            "memories_per_task",
            isola::RunnerConfig {
                memories_per_task: 0,
                ..isola::RunnerConfig::default()
            },
        ),
        (
            "memory_reservation",
            isola::RunnerConfig {
                memory_reservation: Some(4096),
                ..isola::RunnerConfig::default()
            },
        ),
    ] {
        match isola::Runner::with_config(config) {
            Err(isola::Error::InvalidSpec { field: f, .. }) => assert_eq!(f, field),
            Err(other) => panic!("{field}: wrong error: {other}"),
            Ok(_) => panic!("{field}: an impossible runner was made"),
        }
    }
}

/// `Runner::load_bytes`: a program held in memory, as WAT or Wasm, runs at
/// both isolation levels (a worker loads the artifact its parent stored,
/// there being no file), is compiled once per content, and bad bytes are
/// refused naming the program.
#[tokio::test(flavor = "multi_thread")]
async fn programs_from_bytes_run_at_both_isolation_levels() {
    const EXIT_7: &str = r#"(module
        (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
        (memory (export "memory") 1)
        (func (export "_start") (call $exit (i32.const 7))))"#;
    let runner = isola_tests::runner();
    let from_text = runner.load_bytes("exit-7.wat", EXIT_7).await.expect("WAT");
    let binary = wat::parse_str(EXIT_7).expect("valid WAT");
    let from_binary = runner
        .load_bytes("exit-7.wasm", binary)
        .await
        .expect("Wasm");
    assert_eq!(from_text.content_hash(), from_binary.content_hash());
    for isolation in isola_tests::ISOLATIONS {
        let mut spec = isola::TaskSpec::new("unused");
        spec.isolation = isolation;
        let report = runner
            .spawn_program(&from_binary, spec)
            .await
            .expect("spawn")
            .wait()
            .await;
        assert_eq!(
            report.outcome,
            isola::Outcome::Exited { code: 7 },
            "{isolation}"
        );
    }
    match runner.load_bytes("junk", b"not wasm at all".to_vec()).await {
        Err(isola::Error::NotWasm { path }) => assert_eq!(path, std::path::Path::new("junk")),
        other => panic!("{other:?}"),
    }
    match runner
        .load_bytes("broken.wat", "(module (func (i32.add)))")
        .await
    {
        Err(isola::Error::Invalid { path, .. }) => {
            assert_eq!(path, std::path::Path::new("broken.wat"));
        }
        other => panic!("{other:?}"),
    }
}

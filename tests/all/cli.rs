//! `isola run` as users call it: the real binary, its streams and exit codes.

use isola_tests::{
    GuestKind, Target, expected_exit, guest, isola, isola_bin, isola_with_stdin, stderr, stdout,
    targets,
};

/// `args` with `--isolation` set for `t`, after the subcommand.
fn with_isolation<'a>(t: Target, args: &[&'a str]) -> Vec<&'a str> {
    let mut full = args.to_vec();
    full.splice(1..1, ["--isolation", t.isolation_flag()]);
    full
}

fn path(name: &str, kind: GuestKind) -> String {
    guest(name, kind).to_str().expect("utf-8 path").to_owned()
}

#[test]
fn runs_both_kinds_with_args_env_dirs_and_stdin() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("in.txt"), "from the host").expect("write");
    let host = dir.path().to_str().expect("utf-8");
    for t in targets() {
        let kind = t.kind;
        let echo = path("echo_cli", kind);
        let isola = |args: &[&str]| isola(&with_isolation(t, args));
        let isola_with_stdin =
            |args: &[&str], stdin: &[u8]| isola_with_stdin(&with_isolation(t, args), stdin);

        let out = isola(&["run", &echo, "--", "args", "one", "two words"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert_eq!(stdout(&out), "one\ntwo words\n");

        let out = isola(&["run", "--env", "A=1", "--env", "PATH", &echo, "--", "env"]);
        let path_var = std::env::var("PATH").expect("PATH");
        assert_eq!(stdout(&out), format!("A=1\nPATH={path_var}\n"), "{kind:?}");

        let ro = format!("{host}::/in");
        let out = isola(&["run", "--dir-ro", &ro, &echo, "--", "cat", "/in/in.txt"]);
        assert_eq!(stdout(&out), "from the host", "{kind:?}: {}", stderr(&out));
        let out = isola(&["run", "--dir-ro", &ro, &echo, "--", "write", "/in/x", "y"]);
        assert_eq!(out.status.code(), Some(1), "{kind:?}: read-only");
        assert!(!dir.path().join("x").exists());

        let rw = format!("{host}::/out");
        let out = isola(&["run", "--dir", &rw, &echo, "--", "write", "/out/x", "y"]);
        assert_eq!(out.status.code(), Some(0), "{kind:?}: {}", stderr(&out));
        assert_eq!(
            std::fs::read_to_string(dir.path().join("x")).expect("written"),
            "y"
        );
        std::fs::remove_file(dir.path().join("x")).expect("cleanup");

        let out = isola_with_stdin(&["run", &echo, "--", "stdin"], b"piped in\n");
        assert_eq!(stdout(&out), "piped in\n", "{kind:?}");

        let out = isola(&["run", &echo, "--", "exit", "42"]);
        assert_eq!(out.status.code(), Some(expected_exit(kind, 42)), "{kind:?}");
    }
}

#[test]
fn traps_print_one_line_and_a_named_backtrace() {
    for t in targets() {
        let kind = t.kind;
        let isola = |args: &[&str]| isola(&with_isolation(t, args));
        let out = isola(&["run", &path("hostile", kind), "--", "unreachable"]);
        assert_eq!(out.status.code(), Some(134), "{kind:?}");
        let err = stderr(&out);
        let mut lines = err.lines();
        assert_eq!(
            lines.next(),
            Some("error: the guest trapped: wasm `unreachable` instruction executed")
        );
        assert_eq!(lines.next(), Some("wasm backtrace:"));
        assert!(err.contains("hostile::main"), "demangled names: {err}");
        assert!(
            !err.contains("stack backtrace") && !err.contains("RUST_BACKTRACE"),
            "{err}"
        );

        let out = isola(&["run", &path("hostile", kind), "--", "recurse"]);
        assert_eq!(out.status.code(), Some(134));
        let err = stderr(&out);
        assert!(
            err.starts_with("error: the guest trapped: call stack exhausted"),
            "{err}"
        );
        assert!(
            err.contains("hostile::recurse") && err.contains("more times"),
            "{err}"
        );
    }
}

#[test]
fn limits_name_themselves_and_exit_124() {
    for isolation in ["thread", "process"] {
        limits_at(isolation);
    }
}

fn limits_at(isolation: &str) {
    let hostile = path("hostile", GuestKind::Module);
    let cases: &[(&[&str], &str)] = &[
        (
            &["--timeout", "200ms", &hostile, "--", "loop"],
            "timeout of 200ms (--timeout)",
        ),
        (
            &["--fuel", "1000", &hostile, "--", "loop"],
            "fuel budget of 1000 (--fuel)",
        ),
        (
            &["--max-memory", "32MiB", &hostile, "--", "alloc-bomb"],
            "memory limit of 32.0 MiB (--max-memory)",
        ),
        (
            &["--max-output", "1KiB", &hostile, "--", "flood"],
            "output limit of 1.0 KiB on stdout (--max-output)",
        ),
    ];
    for (args, needle) in cases {
        let mut full = vec!["run", "--isolation", isolation];
        full.extend_from_slice(args);
        let out = isola(&full);
        assert_eq!(out.status.code(), Some(124), "{args:?}");
        let err = stderr(&out);
        assert_eq!(
            err,
            format!("error: the task exceeded its {needle}\n"),
            "{args:?}"
        );
    }
    // Output up to the limit is delivered, then the task stops.
    let out = isola(&[
        "run",
        "--isolation",
        isolation,
        "--max-output",
        "1KiB",
        &hostile,
        "--",
        "flood",
    ]);
    assert_eq!(out.stdout.len(), 1024);
}

#[test]
fn help_states_every_default_and_exit_code() {
    let out = std::process::Command::new(isola_bin())
        .args(["run", "--help"])
        .output()
        .expect("help");
    assert_eq!(out.status.code(), Some(0));
    let help = stdout(&out);
    for needle in [
        "--max-memory <SIZE>",
        "Default: 1GiB",
        "Default: unlimited",
        "Default: none",
        "--dir-ro",
        "124",
        "134",
    ] {
        assert!(
            help.contains(needle),
            "`{needle}` missing from help:\n{help}"
        );
    }
}

#[test]
fn second_run_uses_the_disk_cache() {
    let cache = tempfile::tempdir().expect("tempdir");
    let hello = path("hello", GuestKind::Module);
    let run = || {
        std::process::Command::new(isola_bin())
            .args([
                "run",
                "--cache-dir",
                cache.path().to_str().expect("utf-8"),
                &hello,
            ])
            .env("ISOLA_LOG", "isola=debug")
            .env("NO_COLOR", "1")
            .output()
            .expect("run")
    };
    let first = run();
    assert_eq!(stdout(&first), "Hello from Isola!\n");
    assert!(stderr(&first).contains("compiled"), "{}", stderr(&first));
    let second = run();
    assert_eq!(stdout(&second), "Hello from Isola!\n");
    let log = stderr(&second);
    assert!(log.contains("loaded precompiled"), "{log}");
    assert!(!log.contains("compiled from wasm"), "{log}");
}

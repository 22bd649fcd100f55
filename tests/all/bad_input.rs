//! Input that cannot run gets one clear error naming the file and the
//! problem, from the library and from the CLI, never a panic.

use isola::{Error, TaskSpec};
use isola_tests::{GuestKind, guest, isola, runner, stderr, wat_file};

/// Spawns `path` through the library and returns the error.
async fn spawn_error(spec: TaskSpec) -> Error {
    match runner().spawn(spec).await {
        Ok(_) => panic!("expected an error"),
        Err(err) => err,
    }
}

/// Runs `path` through the CLI: must fail with the usage code and a single
/// `error:` line containing each of `needles`.
fn cli_error(args: &[&str], needles: &[&str]) {
    let out = isola(args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    assert!(err.starts_with("error: "), "{args:?}: {err}");
    for needle in needles {
        assert!(
            err.contains(needle),
            "{args:?}: `{needle}` missing from: {err}"
        );
    }
    assert!(
        !err.contains("panicked") && !err.contains("stack backtrace"),
        "{err}"
    );
}

#[tokio::test]
async fn missing_file() {
    let err = spawn_error(TaskSpec::new("/no/such/file.wasm")).await;
    assert!(matches!(err, Error::Read { .. }), "{err:?}");
    assert!(err.to_string().contains("/no/such/file.wasm"));
    cli_error(
        &["run", "/no/such/file.wasm"],
        &["/no/such/file.wasm", "No such file"],
    );
}

#[tokio::test]
async fn not_wasm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("script.wasm");
    std::fs::write(&path, "#!/bin/sh\necho hi\n").expect("write");
    let err = spawn_error(TaskSpec::new(&path)).await;
    assert!(matches!(err, Error::NotWasm { .. }), "{err:?}");
    let p = path.to_str().expect("utf-8 path");
    cli_error(&["run", p], &[p, "not a WebAssembly file"]);
}

#[tokio::test]
async fn invalid_wasm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("truncated.wasm");
    let mut bytes = std::fs::read(guest("hello", GuestKind::Module)).expect("read");
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&path, bytes).expect("write");
    let err = spawn_error(TaskSpec::new(&path)).await;
    assert!(matches!(err, Error::Invalid { .. }), "{err:?}");
    let p = path.to_str().expect("utf-8 path");
    cli_error(&["run", p], &[p, "not valid WebAssembly"]);

    // Well-formed but failing validation: `i32.add` of an `i64`. (The `wat`
    // crate assembles without type-checking.)
    let path = wat_file(
        dir.path(),
        "type-error.wasm",
        r#"(module (func (export "_start") i32.const 1 i64.const 2 i32.add drop))"#,
    );
    let err = spawn_error(TaskSpec::new(&path)).await;
    assert!(matches!(err, Error::Invalid { .. }), "{err:?}");
    let p = path.to_str().expect("utf-8 path");
    cli_error(&["run", p], &[p, "not valid WebAssembly", "type mismatch"]);
}

#[tokio::test]
async fn unknown_import_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = wat_file(
        dir.path(),
        "needs-env.wasm",
        r#"(module
             (import "env" "frobnicate" (func))
             (func (export "_start")))"#,
    );
    let err = spawn_error(TaskSpec::new(&path)).await;
    match &err {
        Error::UnknownImport { module, name, .. } => {
            assert_eq!((module.as_str(), name.as_str()), ("env", "frobnicate"));
        }
        other => panic!("{other:?}"),
    }
    let p = path.to_str().expect("utf-8 path");
    cli_error(&["run", p], &[p, "`env::frobnicate`"]);
}

#[tokio::test]
async fn module_without_start_is_not_a_command() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = wat_file(
        dir.path(),
        "reactor.wasm",
        r#"(module (func (export "work")))"#,
    );
    let err = spawn_error(TaskSpec::new(&path)).await;
    assert!(matches!(err, Error::UnsupportedWorld { .. }), "{err:?}");
    let p = path.to_str().expect("utf-8 path");
    cli_error(&["run", p], &[p, "_start"]);
    // A module is not called a component.
    assert!(!err.to_string().contains("component"), "{err}");
}

#[tokio::test]
async fn component_of_an_unsupported_world() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Imports an interface Isola does not provide.
    let path = wat_file(
        dir.path(),
        "http.wasm",
        r#"(component (import "wasi:http/outgoing-handler@0.2.0" (instance (export "handle" (func)))))"#,
    );
    let err = spawn_error(TaskSpec::new(&path)).await;
    assert!(matches!(err, Error::UnsupportedWorld { .. }), "{err:?}");
    let p = path.to_str().expect("utf-8 path");
    cli_error(
        &["run", p],
        &[p, "unsupported world", "wasi:http/outgoing-handler"],
    );

    // Exports no `wasi:cli/run`.
    let path = wat_file(dir.path(), "empty.wasm", "(component)");
    let err = spawn_error(TaskSpec::new(&path)).await;
    assert!(matches!(err, Error::UnsupportedWorld { .. }), "{err:?}");
    let p = path.to_str().expect("utf-8 path");
    cli_error(&["run", p], &[p, "wasi:cli/run"]);
}

#[tokio::test]
async fn bad_grants_name_the_field() {
    let mut spec = TaskSpec::new(guest("hello", GuestKind::Module));
    spec.dirs = vec![isola::DirGrant {
        host: "/no/such/dir".into(),
        guest: None,
        writable: false,
    }];
    let err = spawn_error(spec).await;
    assert!(err.to_string().contains("dirs[0].host"), "{err}");
    assert!(err.to_string().contains("/no/such/dir"), "{err}");

    let hello = guest("hello", GuestKind::Module);
    let hello = hello.to_str().expect("utf-8 path");
    cli_error(&["run", "--dir", "/no/such/dir", hello], &["/no/such/dir"]);
}

/// The field an `InvalidSpec` error names.
fn invalid_field(err: Error) -> String {
    match err {
        Error::InvalidSpec { field, .. } => field,
        other => panic!("expected an invalid spec, got {other:?}"),
    }
}

#[tokio::test]
async fn spec_rules_are_checked_before_a_task_starts() {
    // The rules `tasks.toml` and `TaskSet::new` apply, from the library:
    // each spec breaks one, and the error names its field.
    let hello = guest("hello", GuestKind::Module);
    let dir = tempfile::tempdir().expect("tempdir");
    /// A field and a change that breaks its rule.
    type Case = (&'static str, fn(&mut TaskSpec));
    let cases: &[Case] = &[
        ("limits.message_queue", |s| s.limits.message_queue = 0),
        ("limits.fuel", |s| s.limits.fuel = Some(0)),
        ("limits.timeout", |s| {
            s.limits.timeout = Some(std::time::Duration::ZERO);
        }),
        ("inherit_env[0]", |s| s.inherit_env = vec!["A=B".into()]),
        ("inherit_env[0]", |s| {
            s.env.insert("HOME".into(), "/x".into());
            s.inherit_env = vec!["HOME".into()];
        }),
        ("args[1]", |s| s.args = vec!["a".into(), "b\0".into()]),
        ("env.", |s| {
            s.env.insert(String::new(), "x".into());
        }),
        ("dirs[0].guest", |s| {
            s.dirs = vec![isola::DirGrant {
                host: std::env::temp_dir(),
                guest: Some(String::new()),
                writable: false,
            }];
        }),
        ("reuse_worker", |s| s.reuse_worker = true),
        ("sandbox", |s| s.sandbox = Some(isola::Sandbox::Required)),
        ("limits.max_message_size", |s| {
            s.isolation = isola::Isolation::Process;
            s.limits.max_message_size = isola::ByteSize::mib(64);
        }),
        ("isolation", |s| {
            s.isolation = isola::Isolation::Process;
            s.shared_group = Some("g".into());
        }),
    ];
    for (field, break_it) in cases {
        let mut spec = TaskSpec::new(&hello);
        break_it(&mut spec);
        let described = format!("{spec:?}");
        assert_eq!(
            invalid_field(spawn_error(spec).await),
            *field,
            "{described}"
        );
    }
    // The rules come before the host's file system: a zero queue is named
    // even with a stdin file that does not exist.
    let mut spec = TaskSpec::new(&hello);
    spec.stdin = isola::Stdin::File(dir.path().join("missing"));
    spec.limits.message_queue = 0;
    assert_eq!(
        invalid_field(spawn_error(spec).await),
        "limits.message_queue"
    );
    let mut spec = TaskSpec::new(&hello);
    spec.stdin = isola::Stdin::File(dir.path().to_owned());
    assert_eq!(
        invalid_field(spawn_error(spec).await),
        "stdin",
        "a directory is no stdin"
    );

    // A call checks the same rules.
    let mut spec = TaskSpec::new(guest("plugin", GuestKind::Module));
    spec.limits.message_queue = 0;
    match runner().call(spec, "41").await {
        Err(isola::CallError::Start(err)) => {
            assert_eq!(invalid_field(err), "limits.message_queue");
        }
        other => panic!("expected a start error, got {other:?}"),
    }

    // And the CLI, which reports it as a usage error naming its flag.
    let hello = hello.to_str().expect("utf-8 path");
    cli_error(
        &["run", "--fuel", "0", hello],
        &["--fuel", "must be at least 1"],
    );
}

#[test]
fn bad_flag_values() {
    let hello = guest("hello", GuestKind::Module);
    let hello = hello.to_str().expect("utf-8 path");
    cli_error(
        &["run", "--max-memory", "lots", hello],
        &["--max-memory", "lots"],
    );
    cli_error(
        &["run", "--timeout", "5", hello],
        &["--timeout", "time unit needed"],
    );
    cli_error(&["run", "--fuel=-3", hello], &["--fuel"]);
    cli_error(&["run", "--env", "=x", hello], &["--env", "name is empty"]);
    cli_error(
        &["run", "--dir", "::guest", hello],
        &["--dir", "HOST::GUEST"],
    );
    cli_error(&["run", "--isolation", "vm", hello], &["--isolation", "vm"]);
    cli_error(&["run"], &["<WASM>"]);
}

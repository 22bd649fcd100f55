//! The hostile-guest matrix beyond `hostile.rs`, `library.rs` and
//! `messages.rs`: WAT guests that attack tables and memory directly, a
//! message flood nobody reads, every exit code, escapes from a preopened
//! directory by `..`, absolute paths and symlinks, and variables and
//! directories that were never granted. Every case ends with its exact
//! outcome, within a bounded time, on every guest kind and isolation level
//! it applies to, while well-behaved tasks run unaffected beside it.

use std::path::Path;

use isola::{DirGrant, Outcome, TaskSpec};
use isola_tests::matrix::{self, Case};
use isola_tests::{GuestKind, Target, expected_exit, runner, targets};

#[tokio::test(flavor = "multi_thread")]
async fn new_hostile_cases_end_exactly_and_in_bounded_time() {
    let rows = matrix::run_all(&runner(), |c| c.asserted_in.is_none()).await;
    assert!(!rows.is_empty());
    let failures: Vec<_> = rows.iter().filter(|r| !r.ok).collect();
    assert!(failures.is_empty(), "{failures:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn new_hostile_cases_at_once_leave_other_tasks_unaffected() {
    let runner = runner();
    let cases: Vec<Case> = matrix::cases()
        .into_iter()
        .filter(|c| c.asserted_in.is_none())
        .collect();
    let mut hostile = Vec::new();
    for case in &cases {
        for t in targets() {
            if case.runs_on(t) {
                hostile.push((case, t, runner.spawn(case.spec(t)).await.expect("spawn")));
            }
        }
    }
    // Well-behaved tasks of every kind and isolation, while they run.
    for t in targets() {
        for i in 0..3 {
            let mut spec = t.spec("echo_cli");
            spec.args = vec!["args".into(), format!("still fine {i}")];
            let report = runner.run(spec).await.expect("starts");
            assert_eq!(report.outcome, Outcome::Exited { code: 0 }, "{t:?}");
            assert_eq!(report.stdout.text(), format!("still fine {i}\n"), "{t:?}");
        }
    }
    for (case, t, handle) in hostile {
        let report = tokio::time::timeout(case.deadline(), handle.wait())
            .await
            .unwrap_or_else(|_| panic!("{t:?} {}: did not stop in time", case.name));
        assert!(
            (case.expect)(&report.outcome, t.kind),
            "{t:?} {}: {:?}",
            case.name,
            report.outcome
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_exit_code_from_0_to_255_passes_through() {
    let runner = runner();
    for t in targets() {
        let row = matrix::exit_codes(&runner, t).await;
        assert!(row.ok, "{row:#?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn modules_asking_for_many_memories_or_tables_are_refused_at_load() {
    let rows = matrix::many_memories_and_tables(&runner()).await;
    let failures: Vec<_> = rows.iter().filter(|r| !r.ok).collect();
    assert!(failures.is_empty(), "{failures:#?}");
}

/// A sandbox layout with ways out of the granted directory:
///
/// ```text
/// root/secret.txt                 must stay unreadable and unchanged
/// root/granted/                   granted as /data
///   data.txt, inner_link -> data.txt       (a symlink that stays inside)
///   abs_link -> root/secret.txt            (absolute target)
///   etc_link -> /etc/passwd
///   dir_link -> ..                         (a directory outside)
///   abs_dir_link -> root                   (the same, absolute)
///   sub/deep_link -> ../../secret.txt
/// ```
fn sandbox() -> tempfile::TempDir {
    use std::os::unix::fs::symlink;
    let root = tempfile::tempdir().expect("tempdir");
    let r = root.path();
    std::fs::write(r.join("secret.txt"), "secret").expect("write");
    let g = r.join("granted");
    std::fs::create_dir_all(g.join("sub")).expect("mkdir");
    std::fs::write(g.join("data.txt"), "inside\n").expect("write");
    symlink("data.txt", g.join("inner_link")).expect("symlink");
    symlink(r.join("secret.txt"), g.join("abs_link")).expect("symlink");
    symlink("/etc/passwd", g.join("etc_link")).expect("symlink");
    symlink("..", g.join("dir_link")).expect("symlink");
    symlink(r, g.join("abs_dir_link")).expect("symlink");
    symlink("../../secret.txt", g.join("sub/deep_link")).expect("symlink");
    root
}

fn echo_in(t: Target, root: &Path, writable: bool, args: &[&str]) -> TaskSpec {
    let mut spec = t.spec("echo_cli");
    spec.args = args.iter().map(|s| s.to_string()).collect();
    spec.dirs = vec![DirGrant {
        host: root.join("granted"),
        guest: Some("/data".into()),
        writable,
    }];
    spec
}

#[tokio::test(flavor = "multi_thread")]
async fn no_way_out_of_a_preopened_dir() {
    let root = sandbox();
    let r = root.path();
    let runner = runner();
    for t in targets() {
        // What is inside stays usable, symlinks that stay inside included.
        for path in [
            "/data/data.txt",
            "/data/inner_link",
            "/data/sub/../data.txt",
        ] {
            let report = runner
                .run(echo_in(t, r, false, &["cat", path]))
                .await
                .expect("run");
            assert_eq!(report.outcome, Outcome::Exited { code: 0 }, "{t:?} {path}");
            assert_eq!(report.stdout.text(), "inside\n", "{t:?} {path}");
        }

        let escapes = [
            "/data/abs_link",
            "/data/etc_link",
            "/data/dir_link/secret.txt",
            "/data/abs_dir_link/secret.txt",
            "/data/sub/deep_link",
            "/data/sub/../../secret.txt",
            "/data/./sub/../../secret.txt",
            "/data/../../../../../../etc/passwd",
            "../secret.txt",
            "secret.txt",
            "/proc/self/environ",
        ];
        for path in escapes {
            let report = runner
                .run(echo_in(t, r, false, &["cat", path]))
                .await
                .expect("run");
            assert_eq!(
                report.outcome,
                Outcome::Exited { code: 1 },
                "{t:?} cat {path}"
            );
            assert_eq!(
                report.stdout.text(),
                "",
                "{t:?}: {path} must not be readable"
            );
        }
        for path in [
            "/data/dir_link",
            "/data/abs_dir_link",
            "/data/..",
            "/tmp",
            ".",
            "/",
        ] {
            let report = runner
                .run(echo_in(t, r, false, &["ls", path]))
                .await
                .expect("run");
            assert_eq!(
                report.outcome,
                Outcome::Exited { code: 1 },
                "{t:?} ls {path}"
            );
            assert_eq!(
                report.stdout.text(),
                "",
                "{t:?}: {path} must not be listable"
            );
        }

        // Writable grant: no write lands outside, through any route.
        for path in [
            "/data/../pwned.txt",
            "/data/dir_link/pwned.txt",
            "/data/abs_dir_link/pwned.txt",
            "/data/abs_link",
            "/data/sub/deep_link",
            "/pwned.txt",
        ] {
            let report = runner
                .run(echo_in(t, r, true, &["write", path, "pwned"]))
                .await
                .expect("run");
            assert_eq!(
                report.outcome,
                Outcome::Exited { code: 1 },
                "{t:?} write {path}"
            );
        }
        assert!(
            !r.join("pwned.txt").exists(),
            "{t:?}: nothing written outside"
        );
        assert_eq!(
            std::fs::read_to_string(r.join("secret.txt")).expect("read"),
            "secret",
            "{t:?}: the symlink target is unchanged"
        );
        // The writable grant itself works.
        let report = runner
            .run(echo_in(t, r, true, &["write", "/data/sub/ok.txt", "fine"]))
            .await
            .expect("run");
        assert_eq!(report.outcome, Outcome::Exited { code: 0 }, "{t:?}");
        assert_eq!(
            std::fs::read_to_string(r.join("granted/sub/ok.txt")).expect("written"),
            "fine"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn variables_that_were_not_granted_are_absent() {
    let runner = runner();
    // Variables the test process certainly has.
    assert!(std::env::var_os("PATH").is_some());
    for t in targets() {
        for (granted, inherit, probe, present) in [
            (None, vec![], "PATH", false),
            (Some(("OTHER", "x")), vec![], "PATH", false),
            (None, vec!["PATH"], "CARGO_MANIFEST_DIR", false),
            (None, vec!["PATH"], "PATH", true),
            (Some(("GIVEN", "yes")), vec![], "GIVEN", true),
        ] {
            let mut spec = t.spec("echo_cli");
            spec.args = vec!["env-get".into(), probe.into()];
            if let Some((k, v)) = granted {
                spec.env.insert(k.into(), v.into());
            }
            spec.inherit_env = inherit.iter().map(|s| s.to_string()).collect();
            let report = runner.run(spec).await.expect("run");
            let code = if present { 0 } else { 3 };
            assert_eq!(
                report.outcome,
                Outcome::Exited {
                    code: expected_exit(t.kind, code)
                },
                "{t:?}: {probe} present={present}: {}",
                report.stderr.text()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn fuel_use_is_exact_when_it_runs_out_and_deterministic() {
    let runner = runner();
    for t in targets() {
        // Out of fuel: every unit was spent.
        let mut spec = t.spec("hostile");
        spec.args = vec!["loop".into()];
        spec.limits.fuel = Some(3_000_000);
        let report = runner.run(spec).await.expect("run");
        assert_eq!(report.metrics.fuel_used, 3_000_000, "{t:?}");

        // The same program and input cost the same, in both isolations.
        let mut fuel = Vec::new();
        for isolation in isola_tests::ISOLATIONS {
            let mut spec = Target { isolation, ..t }.spec("sha256");
            spec.args = vec!["1".into()];
            let report = runner.run(spec).await.expect("run");
            assert!(report.outcome.is_success());
            fuel.push(report.metrics.fuel_used);
        }
        assert!(
            fuel[0] > 1_000_000,
            "{t:?}: hashing 1 MiB costs fuel: {fuel:?}"
        );
        assert_eq!(fuel[0], fuel[1], "{t:?}: deterministic");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn nul_characters_in_args_and_variables_are_refused() {
    // WASI preview1 passes these as C strings: a NUL would cut them short
    // and the guest would see something other than what was granted.
    let runner = runner();
    for t in targets() {
        let mut cases = Vec::new();
        let mut spec = t.spec("echo_cli");
        spec.args = vec!["args".into(), "a\0b".into()];
        cases.push((spec, "args[1]"));
        let mut spec = t.spec("echo_cli");
        spec.env.insert("K".into(), "v\0w".into());
        cases.push((spec, "env.K"));
        let mut spec = t.spec("echo_cli");
        spec.env.insert("A\0B".into(), "x".into());
        cases.push((spec, "env.A\\u{0}B"));
        let mut spec = t.spec("echo_cli");
        spec.argv0 = Some("name\0".into());
        cases.push((spec, "argv0"));
        for (spec, field) in cases {
            match runner.spawn(spec).await {
                Err(isola::Error::InvalidSpec { field: f, .. }) => assert_eq!(f, field, "{t:?}"),
                other => panic!("{t:?} {field}: {other:?}"),
            }
        }
    }
}

/// Byte limits that are not a round number of units must reach a worker
/// unchanged: the IPC frames carry the spec as JSON, where `ByteSize` on its
/// own would be rounded text ("1.0 MiB" for 1,100,000 bytes).
#[tokio::test(flavor = "multi_thread")]
async fn process_tasks_keep_their_exact_byte_limits() {
    let runner = runner();
    for t in targets() {
        let mut spec = t.spec("hostile");
        spec.args = vec!["flood".into()];
        spec.limits.max_output = Some(isola::ByteSize(1_100_000));
        let report = runner.run(spec).await.expect("run");
        assert_eq!(
            report.outcome,
            Outcome::LimitExceeded {
                limit: isola::Limit::Output {
                    stream: isola::Stream::Stdout,
                    max: isola::ByteSize(1_100_000)
                }
            },
            "{t:?}"
        );
        assert_eq!(report.stdout.bytes.len(), 1_100_000, "{t:?}");
    }
}

/// The WAT cases only apply to core modules; make sure the matrix does not
/// silently skip everything for components.
#[test]
fn the_matrix_covers_components_too() {
    let t = Target {
        kind: GuestKind::Component,
        isolation: isola::Isolation::Thread,
    };
    let n = matrix::cases().iter().filter(|c| c.runs_on(t)).count();
    assert!(n >= 15, "{n} cases run on components");
}

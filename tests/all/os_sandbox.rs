//! The OS sandbox around process tasks' workers (issue 15): Landlock file
//! rules and a seccomp allowlist, on by default. A debug-build-only hook
//! (`ISOLA_TEST_ESCAPE_ATTEMPT` in the task's environment) makes the worker
//! itself try what an escaped guest would, after its sandbox is up; the
//! tests that use it exist in debug builds only, as the hook does.

use std::path::Path;

use isola::{CacheDir, DirGrant, Isolation, Outcome, Runner, RunnerConfig, Sandbox, TaskSpec};
use isola_tests::{GuestKind, guest, isola_bin, shared_cache};

#[cfg(debug_assertions)]
const ESCAPE: &str = "ISOLA_TEST_ESCAPE_ATTEMPT";

fn runner(sandbox: Sandbox) -> Runner {
    Runner::with_config(RunnerConfig {
        cache_dir: CacheDir::Path(shared_cache()),
        worker_program: Some(isola_bin()),
        prestarted_workers: 0,
        sandbox,
        ..RunnerConfig::default()
    })
    .expect("runner")
}

#[cfg(debug_assertions)]
/// A process task of the `hello` guest whose worker makes `attempt`.
fn attempt(attempt: &str) -> TaskSpec {
    let mut spec = TaskSpec::new(guest("hello", GuestKind::Module));
    spec.isolation = Isolation::Process;
    spec.env.insert(ESCAPE.into(), attempt.into());
    spec
}

/// `Required`, unless this machine cannot give Isola cgroups (a user who
/// is not root, without a delegated cgroup), where `required` refuses
/// every task: then `On`, which has every other layer.
fn strictest() -> Sandbox {
    if isola::worker::cgroup_limits().is_ok() {
        Sandbox::Required
    } else {
        Sandbox::On
    }
}

fn grant(host: &Path, guest: &str, writable: bool) -> DirGrant {
    DirGrant {
        host: host.to_owned(),
        guest: Some(guest.into()),
        writable,
    }
}

#[cfg(debug_assertions)]
/// What a case expects of an attempt's verdict.
type Expected = fn(&Verdict) -> bool;

#[cfg(debug_assertions)]
/// How an attempt went, from the task's outcome.
#[derive(Debug, PartialEq)]
enum Verdict {
    Allowed,
    /// Refused with an error, the message's tail.
    Denied(String),
    /// The worker was stopped making this system call.
    Stopped(String),
}

#[cfg(debug_assertions)]
fn verdict(outcome: &Outcome) -> Verdict {
    match outcome {
        Outcome::Failed { message } if message.ends_with(": allowed") => Verdict::Allowed,
        Outcome::Failed { message } if message.contains(": denied: ") => Verdict::Denied(
            message
                .split_once(": denied: ")
                .map(|(_, why)| why.to_owned())
                .unwrap_or_default(),
        ),
        Outcome::Crashed {
            status: Some(87),
            reason: Some(reason),
            ..
        }
        | Outcome::Crashed {
            signal: Some(31),
            reason: Some(reason),
            ..
        } => Verdict::Stopped(reason.clone()),
        other => panic!("not an escape attempt's outcome: {other:?}"),
    }
}

#[cfg(debug_assertions)]
#[tokio::test(flavor = "multi_thread")]
async fn escape_attempts_from_a_worker_are_denied_or_stop_it_and_say_which() {
    let outside = tempfile::tempdir().expect("tempdir");
    let secret = outside.path().join("secret");
    std::fs::write(&secret, "not for guests").expect("write");
    let granted = tempfile::tempdir().expect("tempdir");
    std::fs::write(granted.path().join("mine"), "the guest's").expect("write");
    let runner = runner(Sandbox::On);

    let secret_path = secret.display().to_string();
    let outside_new = outside.path().join("new").display().to_string();
    let cases: Vec<(String, Expected, &str)> = vec![
        (
            format!("open-read:{secret_path}"),
            |v| matches!(v, Verdict::Denied(why) if why.contains("Permission denied")),
            "Landlock refuses a file outside the grants",
        ),
        (
            format!("open-write:{outside_new}"),
            |v| matches!(v, Verdict::Denied(why) if why.contains("Permission denied")),
            "Landlock refuses creating a file outside the grants",
        ),
        (
            "socket".into(),
            |v| matches!(v, Verdict::Stopped(r) if r.contains("(socket)")),
            "seccomp stops socket()",
        ),
        (
            "connect:127.0.0.1:9".into(),
            |v| matches!(v, Verdict::Stopped(r) if r.contains("(socket)")),
            "no socket, so no connection",
        ),
        (
            "exec:/bin/sh".into(),
            |v| matches!(v, Verdict::Stopped(r) if r.contains("forbidden system call")),
            // glibc's posix_spawn clones with every signal blocked, so the
            // kernel kills the worker itself and the call is not named.
            "no new process to exec in",
        ),
        (
            "ptrace".into(),
            |v| matches!(v, Verdict::Stopped(r) if r.contains("(ptrace)")),
            "seccomp stops ptrace()",
        ),
        (
            "fork".into(),
            |v| matches!(v, Verdict::Stopped(r) if r.contains("(clone)") || r.contains("(fork)")),
            "a fork is a clone without CLONE_THREAD",
        ),
    ];
    for (what, expected, why) in cases {
        let report = runner.run(attempt(&what)).await.expect("spawn");
        let got = verdict(&report.outcome);
        assert!(
            expected(&got),
            "{what}: {why}; got {got:?} ({})",
            report.outcome
        );
        if let Verdict::Stopped(_) = got {
            assert!(
                report.outcome.to_string().contains("forbidden system call"),
                "{}",
                report.outcome
            );
        }
    }
    assert!(secret.exists() && !outside.path().join("new").exists());

    // Inside its grants the worker reads and writes as before.
    let mut spec = attempt(&format!(
        "open-read:{}",
        granted.path().join("mine").display()
    ));
    spec.dirs = vec![grant(granted.path(), "/data", false)];
    let report = runner.run(spec).await.expect("spawn");
    assert_eq!(verdict(&report.outcome), Verdict::Allowed);
    let written = granted.path().join("written");
    let mut spec = attempt(&format!("open-write:{}", written.display()));
    spec.dirs = vec![grant(granted.path(), "/data", true)];
    let report = runner.run(spec).await.expect("spawn");
    assert_eq!(verdict(&report.outcome), Verdict::Allowed);
    assert!(written.exists());
    // A read-only grant is not writable.
    let mut spec = attempt(&format!(
        "open-write:{}",
        granted.path().join("nope").display()
    ));
    spec.dirs = vec![grant(granted.path(), "/data", false)];
    let report = runner.run(spec).await.expect("spawn");
    assert!(
        matches!(verdict(&report.outcome), Verdict::Denied(_)),
        "{}",
        report.outcome
    );

    // The runner and its other tasks go on.
    let mut ok = TaskSpec::new(guest("hello", GuestKind::Module));
    ok.isolation = Isolation::Process;
    let report = runner.run(ok).await.expect("spawn");
    assert_eq!(report.outcome, Outcome::Exited { code: 0 });
}

/// The same attempts succeed with the sandbox off: the test above sees the
/// sandbox, not a worker that cannot do these things anyway.
#[cfg(debug_assertions)]
#[tokio::test(flavor = "multi_thread")]
async fn without_the_sandbox_the_same_attempts_succeed() {
    let outside = tempfile::tempdir().expect("tempdir");
    let secret = outside.path().join("secret");
    std::fs::write(&secret, "readable").expect("write");
    let runner = runner(Sandbox::Off);
    for what in [
        format!("open-read:{}", secret.display()),
        "socket".into(),
        "fork".into(),
    ] {
        let report = runner.run(attempt(&what)).await.expect("spawn");
        assert_eq!(verdict(&report.outcome), Verdict::Allowed, "{what}");
    }
}

/// Every kind of guest still runs in a sandboxed worker: both guest kinds,
/// files in a writable grant, a trap, a kept plugin, and a reused worker
/// whose second task has other grants (it gets another worker).
#[tokio::test(flavor = "multi_thread")]
async fn sandboxed_workers_run_every_kind_of_task() {
    let runner = runner(strictest());
    for kind in [GuestKind::Module, GuestKind::Component] {
        let mut spec = TaskSpec::new(guest("hello", kind));
        spec.isolation = Isolation::Process;
        let report = runner.run(spec).await.expect("spawn");
        assert_eq!(report.outcome, Outcome::Exited { code: 0 }, "{kind:?}");

        let mut spec = TaskSpec::new(guest("hostile", kind));
        spec.isolation = Isolation::Process;
        spec.args = vec!["unreachable".into()];
        let report = runner.run(spec).await.expect("spawn");
        assert!(
            matches!(report.outcome, Outcome::Trapped(_)),
            "{kind:?}: {}",
            report.outcome
        );

        let mut spec = TaskSpec::new(guest("plugin", kind));
        spec.isolation = Isolation::Process;
        let out = runner
            .call(spec, b"41".to_vec())
            .await
            .expect("a plugin call");
        assert!(!out.is_empty(), "{kind:?}");
    }

    // Files in grants, through a reused worker: two tasks with one grant
    // share a worker, a third with another grant gets a new one.
    let dir = tempfile::tempdir().expect("tempdir");
    let other = tempfile::tempdir().expect("tempdir");
    let mut pids = Vec::new();
    for host in [dir.path(), dir.path(), other.path()] {
        let mut spec = TaskSpec::new(guest("echo_cli", GuestKind::Module));
        spec.isolation = Isolation::Process;
        spec.reuse_worker = true;
        spec.args = vec!["write".into(), "/data/out.txt".into(), "hi".into()];
        spec.dirs = vec![grant(host, "/data", true)];
        spec.stdout = isola::Output::Capture;
        let handle = runner.spawn(spec).await.expect("spawn");
        pids.push(handle.process_id());
        let report = handle.wait().await;
        assert_eq!(
            report.outcome,
            Outcome::Exited { code: 0 },
            "{}",
            report.stderr.text()
        );
        assert_eq!(
            std::fs::read_to_string(host.join("out.txt"))
                .ok()
                .as_deref(),
            Some("hi")
        );
    }
    assert_eq!(pids[0], pids[1], "one grant, one reused worker");
    assert_ne!(pids[1], pids[2], "another grant, another worker");
}

/// `isola check --sandbox` says which layers this machine provides, by
/// running a task that requires them: exit 0 and "enforced" exactly when
/// the library's own probe of Landlock finds it (seccomp filters are in
/// every kernel Isola runs on).
#[test]
fn check_sandbox_reports_the_layers_of_this_machine() {
    let out = isola_tests::isola(&["check", "--sandbox"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let cgroups = isola::worker::cgroup_limits();
    match isola::worker::landlock_abi() {
        Some(abi) if cgroups.is_ok() => {
            assert_eq!(out.status.code(), Some(0), "{out:?}");
            assert!(
                stdout.contains(&format!("landlock: available, ABI {abi}")),
                "{stdout}"
            );
            assert!(stdout.contains("enforced"), "{stdout}");
        }
        Some(_) => {
            assert_eq!(out.status.code(), Some(1), "{out:?}");
            assert!(
                stdout.contains("cgroup layer is unavailable"),
                "the failed probe names the layer: {stdout}"
            );
        }
        None => {
            assert_eq!(out.status.code(), Some(1), "{out:?}");
            assert!(stdout.contains("landlock: not available"), "{stdout}");
            assert!(
                stdout.contains("Landlock"),
                "the failed probe names the layer: {stdout}"
            );
        }
    }
    assert!(stdout.contains("not provided by Isola yet"), "{stdout}");
    // The cgroup layer says what it found, as the library does.
    match cgroups {
        Ok(found) => assert!(
            stdout.contains(&format!("cgroup limits: {found}")),
            "{stdout}"
        ),
        Err(_) => assert!(stdout.contains("cgroup limits: not available"), "{stdout}"),
    }
}

/// The worker's network namespace, as its escape hook reads it.
#[cfg(debug_assertions)]
async fn network_namespace_of(runner: &Runner, spec: TaskSpec) -> String {
    let report = runner.run(spec).await.expect("spawn");
    match report.outcome {
        Outcome::Failed { message } => message
            .strip_prefix("network namespace ")
            .unwrap_or_else(|| panic!("not the hook's answer: {message}"))
            .to_owned(),
        other => panic!("not the hook's answer: {other:?}"),
    }
}

/// Sandboxed workers run in a network namespace that is not the host's,
/// one for all the workers of a runner (made once); without the sandbox
/// they are in the host's.
#[cfg(debug_assertions)]
#[tokio::test(flavor = "multi_thread")]
async fn sandboxed_workers_share_a_network_namespace_that_is_not_the_hosts() {
    let host = std::fs::read_link("/proc/self/ns/net")
        .expect("readlink")
        .display()
        .to_string();
    let sandboxed = runner(strictest());
    let first = network_namespace_of(&sandboxed, attempt("netns")).await;
    let second = network_namespace_of(&sandboxed, attempt("netns")).await;
    assert!(first.starts_with("net:["), "{first}");
    assert_ne!(
        first, host,
        "a sandboxed worker is not in the host's namespace"
    );
    assert_eq!(
        first, second,
        "the workers of one runner share one namespace"
    );
    // Another runner has its own (and keeps it for its own workers).
    let other = runner(Sandbox::On);
    let others = network_namespace_of(&other, attempt("netns")).await;
    assert!(others != first && others != host, "{others}");
    assert_eq!(network_namespace_of(&other, attempt("netns")).await, others);

    let open = runner(Sandbox::Off);
    assert_eq!(network_namespace_of(&open, attempt("netns")).await, host);
}

/// A task's own `sandbox` wins over its runner's, whichever way, also where
/// the runner keeps pre-started workers (started under the runner's
/// policy, so an unsandboxed task cannot take one, nor the reverse).
#[cfg(debug_assertions)]
#[tokio::test(flavor = "multi_thread")]
async fn a_tasks_own_sandbox_policy_wins_over_the_runners() {
    for prestarted_workers in [0, 1] {
        let config = |sandbox| RunnerConfig {
            cache_dir: CacheDir::Path(shared_cache()),
            worker_program: Some(isola_bin()),
            prestarted_workers,
            sandbox,
            ..RunnerConfig::default()
        };
        let sandboxed = Runner::with_config(config(Sandbox::On)).expect("runner");
        let open = Runner::with_config(config(Sandbox::Off)).expect("runner");
        for _ in 0..2 {
            let mut spec = attempt("socket");
            spec.sandbox = Some(Sandbox::Off);
            let report = sandboxed.run(spec).await.expect("spawn");
            assert_eq!(
                verdict(&report.outcome),
                Verdict::Allowed,
                "an unsandboxed task of a sandboxed runner ({prestarted_workers} pre-started)"
            );

            let mut spec = attempt("socket");
            spec.sandbox = Some(strictest());
            let report = open.run(spec).await.expect("spawn");
            assert!(
                matches!(verdict(&report.outcome), Verdict::Stopped(ref why) if why.contains("socket")),
                "a sandboxed task of an unsandboxed runner ({prestarted_workers} pre-started): {}",
                report.outcome
            );
        }
    }
}

/// A runner that keeps one sandboxed worker pre-started, at the strictest
/// policy this machine allows.
#[cfg(debug_assertions)]
fn pre_starting_runner() -> Runner {
    Runner::with_config(RunnerConfig {
        cache_dir: CacheDir::Path(shared_cache()),
        worker_program: Some(isola_bin()),
        prestarted_workers: 1,
        sandbox: strictest(),
        ..RunnerConfig::default()
    })
    .expect("runner")
}

/// A pre-started, sandboxed worker runs its task with two threads: its
/// own and the epoch ticker's (which gave up its files as it started). A
/// compile thread pool that outlived the warm-up once added two more, each
/// of which Landlock then had to reach by a signal on the task's path.
#[cfg(debug_assertions)]
#[tokio::test(flavor = "multi_thread")]
async fn a_pre_started_worker_has_no_thread_beyond_its_own_and_the_tickers() {
    let runner = pre_starting_runner();
    // The first task fills the pool; the second takes a pre-started worker.
    for _ in 0..2 {
        let report = runner.run(attempt("threads")).await.expect("spawn");
        match report.outcome {
            Outcome::Failed { message } => assert_eq!(message, "threads 2"),
            other => panic!("not the hook's answer: {other:?}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
}

/// A pre-started worker makes its Landlock rules while it waits, the
/// preloaded program's file among them; a task of that program takes them,
/// but a task of another program gets rules of its own, which do not name
/// the preloaded file. (Taking the prepared rules for any task would let
/// the second one read it.) Each task says which rules it got, so the test
/// cannot pass on a worker that had prepared none.
#[cfg(debug_assertions)]
#[tokio::test(flavor = "multi_thread")]
async fn a_pre_started_workers_prepared_rules_serve_only_its_preloaded_program() {
    let runner = pre_starting_runner();
    let preloaded = guest("hello", GuestKind::Module);
    let read_preloaded = format!("prepared-open-read:{}", preloaded.display());
    let try_as = |wasm: &Path| {
        let mut spec = TaskSpec::new(wasm);
        spec.isolation = Isolation::Process;
        spec.env.insert(ESCAPE.into(), read_preloaded.clone());
        spec
    };
    let message = |outcome: Outcome| match outcome {
        Outcome::Failed { message } => message,
        other => panic!("not the hook's answer: {other:?}"),
    };
    // The first task makes `hello` the program pre-started workers
    // preload; later ones wait for the pool to have preloaded it.
    let first = runner.run(try_as(&preloaded)).await.expect("spawn");
    assert_eq!(verdict(&first.outcome), Verdict::Allowed);
    let mut same = String::new();
    for _ in 0..20 {
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        same = message(runner.run(try_as(&preloaded)).await.expect("spawn").outcome);
        if same.starts_with("with the prepared rules; ") {
            break;
        }
    }
    assert!(
        same.starts_with("with the prepared rules; ") && same.ends_with(": allowed"),
        "its own program, with the rules its worker prepared: {same}"
    );
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let other = message(
        runner
            .run(try_as(&guest("echo", GuestKind::Module)))
            .await
            .expect("spawn")
            .outcome,
    );
    assert!(
        other.starts_with("with rules of its own, the prepared ones being another program's; ")
            && other.contains("Permission denied"),
        "another program's task, on a worker prepared for `hello`: {other}"
    );
}

/// A cold worker's ticker thread makes its Landlock ruleset while the
/// worker loads its task's program; the task takes it (the worker says
/// so), and it grants nothing beyond the task's own files.
#[cfg(debug_assertions)]
#[tokio::test(flavor = "multi_thread")]
async fn a_cold_workers_rules_come_from_its_ticker_and_grant_no_more() {
    let runner = Runner::with_config(RunnerConfig {
        cache_dir: CacheDir::Path(shared_cache()),
        worker_program: Some(isola_bin()),
        prestarted_workers: 0,
        sandbox: strictest(),
        ..RunnerConfig::default()
    })
    .expect("runner");
    let outside = tempfile::NamedTempFile::new().expect("tempfile");
    let mut spec = TaskSpec::new(guest("hello", GuestKind::Module));
    spec.isolation = Isolation::Process;
    spec.env.insert(
        ESCAPE.into(),
        format!("prepared-open-read:{}", outside.path().display()),
    );
    let ended = runner.run(spec).await.expect("spawn");
    let Outcome::Failed { message } = ended.outcome else {
        panic!("not the hook's answer: {:?}", ended.outcome);
    };
    if message.starts_with("the OS sandbox is required") {
        eprintln!("skipped: {message}");
        return;
    }
    assert!(
        message.starts_with("with the prepared rules; ") && message.contains("Permission denied"),
        "a cold worker's task, reading outside its grants: {message}"
    );
}

/// Whether this machine lets Isola make workers' cgroups; the cgroup tests
/// need it. As root (CI) it must: there, a machine without it fails them.
fn cgroups_here() -> bool {
    match isola::worker::cgroup_limits() {
        Ok(_) => true,
        // SAFETY: geteuid only reads the calling process's credentials.
        Err(why) if unsafe { libc::geteuid() } != 0 => {
            eprintln!("skipped: no cgroups for a user who is not root here ({why})");
            false
        }
        Err(why) => panic!("root, yet no cgroup limits: {why}"),
    }
}

/// The cgroup directories of process `pid`, by controller (`memory`,
/// `pids`, `cpu`), as `/proc/<pid>/cgroup` and this process's mount table
/// say.
fn cgroup_dirs(pid: u32) -> std::collections::BTreeMap<String, std::path::PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let membership = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
    let mut dirs = std::collections::BTreeMap::new();
    for line in membership.lines() {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (
            fields.next().expect("id"),
            fields.next().expect("controllers"),
            fields.next().expect("path"),
        );
        for mount in mountinfo.lines() {
            let Some((head, tail)) = mount.split_once(" - ") else {
                continue;
            };
            let point = head.split(' ').nth(4).expect("mount point");
            let (kind, options) = {
                let mut t = tail.split(' ');
                (t.next().expect("type"), t.nth(1).unwrap_or(""))
            };
            let names: Vec<&str> = if controllers.is_empty() && kind == "cgroup2" {
                std::fs::read_to_string(format!("{point}{path}/cgroup.controllers"))
                    .unwrap_or_default()
                    .split_whitespace()
                    .map(|n| -> &'static str {
                        match n {
                            "memory" => "memory",
                            "pids" => "pids",
                            "cpu" => "cpu",
                            _ => "",
                        }
                    })
                    .collect()
            } else if kind == "cgroup"
                && controllers
                    .split(',')
                    .all(|c| options.split(',').any(|o| o == c))
            {
                controllers.split(',').collect()
            } else {
                continue;
            };
            for name in names
                .into_iter()
                .filter(|n| ["memory", "pids", "cpu"].contains(n))
            {
                dirs.insert(
                    name.to_owned(),
                    Path::new(&format!("{point}{path}")).to_owned(),
                );
            }
        }
    }
    dirs
}

fn read_trimmed(path: std::path::PathBuf) -> String {
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_owned()
}

/// A sandboxed worker runs in a cgroup of its own, under its task's process
/// memory limit and 64 threads, and, only with a `worker_cpu_quota`, that
/// much CPU (without one it stays in its parent's `cpu` group); the
/// groups are gone once the task is. An unsandboxed worker stays in its
/// parent's groups.
#[tokio::test(flavor = "multi_thread")]
async fn a_sandboxed_worker_has_a_cgroup_of_its_own_with_its_tasks_limits() {
    if !cgroups_here() {
        return;
    }
    let ours = cgroup_dirs(std::process::id());
    for (sandbox, cpu_quota) in [
        (Sandbox::On, None),
        (Sandbox::On, Some(0.5)),
        (Sandbox::Off, None),
    ] {
        let runner = Runner::with_config(RunnerConfig {
            cache_dir: CacheDir::Path(shared_cache()),
            worker_program: Some(isola_bin()),
            prestarted_workers: 0,
            sandbox,
            worker_cpu_quota: cpu_quota,
            ..RunnerConfig::default()
        })
        .expect("runner");
        let mut spec = TaskSpec::new(guest("hostile", GuestKind::Module));
        spec.isolation = Isolation::Process;
        spec.args = vec!["sleep".into(), "3000".into()];
        spec.limits.process_memory = Some(isola::ByteSize::mib(200));
        let handle = runner.spawn(spec).await.expect("spawn");
        let pid = handle.process_id().expect("a worker");
        // The worker is placed while it starts; it has started once its
        // guest runs, which a short wait covers.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let dirs = cgroup_dirs(pid);
        let cancel = handle.cancel_handle();
        if sandbox == Sandbox::Off {
            assert_eq!(
                dirs, ours,
                "an unsandboxed worker stays in its parent's groups"
            );
            cancel.cancel();
            handle.wait().await;
            continue;
        }
        assert!(!dirs.is_empty(), "some controller limits the worker");
        let mut own = Vec::new();
        for (controller, dir) in &dirs {
            if controller == "cpu" && cpu_quota.is_none() {
                assert_eq!(Some(dir), ours.get(controller), "no cpu group of its own");
                continue;
            }
            assert_ne!(
                Some(dir),
                ours.get(controller),
                "{controller}: a group of its own"
            );
            own.push(dir.clone());
            let name = dir
                .file_name()
                .expect("a name")
                .to_string_lossy()
                .into_owned();
            assert!(
                name.starts_with(&format!("isola-{}-", std::process::id())),
                "{name}"
            );
            match controller.as_str() {
                "memory" => {
                    let limit = if dir.join("memory.max").exists() {
                        read_trimmed(dir.join("memory.max"))
                    } else {
                        read_trimmed(dir.join("memory.limit_in_bytes"))
                    };
                    assert_eq!(limit, (200u64 << 20).to_string());
                }
                "pids" => assert_eq!(read_trimmed(dir.join("pids.max")), "64"),
                "cpu" => {
                    let quota = if dir.join("cpu.max").exists() {
                        read_trimmed(dir.join("cpu.max"))
                    } else {
                        read_trimmed(dir.join("cpu.cfs_quota_us"))
                    };
                    assert!(quota.starts_with("50000"), "{quota}");
                }
                _ => {}
            }
        }
        if cpu_quota.is_some() {
            assert!(
                dirs.get("cpu")
                    .is_some_and(|dir| Some(dir) != ours.get("cpu")),
                "a cpu group of its own: {dirs:?}"
            );
        }
        cancel.cancel();
        assert_eq!(handle.wait().await.outcome, Outcome::Cancelled);
        for dir in &own {
            assert!(!dir.exists(), "{} removed with its worker", dir.display());
        }
    }
}

/// With `worker_cpu_quota`, a worker that spins is throttled by the
/// kernel: its `cpu` group counts throttled periods, and the worker gets
/// about its quota of CPU time, far below the wall time it spun for.
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_cpu_quota_throttles_a_busy_worker() {
    if !cgroups_here() {
        return;
    }
    let runner = Runner::with_config(RunnerConfig {
        cache_dir: CacheDir::Path(shared_cache()),
        worker_program: Some(isola_bin()),
        prestarted_workers: 0,
        sandbox: Sandbox::On,
        worker_cpu_quota: Some(0.05),
        ..RunnerConfig::default()
    })
    .expect("runner");
    let mut spec = TaskSpec::new(guest("hostile", GuestKind::Module));
    spec.isolation = Isolation::Process;
    spec.args = vec!["loop".into()];
    let handle = runner.spawn(spec).await.expect("spawn");
    let pid = handle.process_id().expect("a worker");
    let ours = cgroup_dirs(std::process::id());
    // Long enough for several 100 ms periods of a 5 ms quota.
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    let dirs = cgroup_dirs(pid);
    let stat = |pid: u32| std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let cpu_ticks = {
        // utime and stime are fields 14 and 15; the text after `(comm)`
        // starts at field 3 (the state).
        let stat = stat(pid);
        let after = stat.rsplit_once(')').expect("comm").1;
        let fields: Vec<&str> = after.split_whitespace().collect();
        let field = |n: usize| {
            fields
                .get(n - 3)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("field {n} of /proc/{pid}/stat: {stat}"))
        };
        field(14) + field(15)
    };
    let cpu_stat = dirs
        .get("cpu")
        .filter(|dir| Some(*dir) != ours.get("cpu"))
        .map(|dir| std::fs::read_to_string(dir.join("cpu.stat")).expect("cpu.stat"));
    handle.cancel_handle().cancel();
    assert_eq!(handle.wait().await.outcome, Outcome::Cancelled);
    // SAFETY: geteuid only reads the calling process's credentials.
    let root = unsafe { libc::geteuid() } == 0;
    let Some(cpu_stat) = cpu_stat else {
        // As root (CI) the cpu controller must be there, as on this
        // development machine; elsewhere it may be left out.
        assert!(!root, "no cpu group of its own for the worker: {dirs:?}");
        eprintln!("skipped: no cpu group of its own for the worker: {dirs:?}");
        return;
    };
    let throttled = cpu_stat
        .lines()
        .find_map(|line| line.strip_prefix("nr_throttled "))
        .and_then(|n| n.trim().parse::<u64>().ok())
        .expect("nr_throttled in cpu.stat");
    assert!(
        throttled >= 1,
        "the spinning worker was throttled: {cpu_stat}"
    );
    // SAFETY: sysconf only reads a configuration value.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let cpu_ms = cpu_ticks * 1000 / ticks_per_second;
    // Unthrottled it would have had about 800 ms; its quota gives it
    // about 40 ms (plus its start-up, before the task's spin).
    eprintln!("throttled {throttled} times; {cpu_ms} ms of CPU in 800 ms");
    assert!(cpu_ms < 400, "CPU time {cpu_ms} ms under a 0.05-core quota");
}

/// A worker that never learns its cgroups (a wrapper between Isola and the
/// worker cleared the variable naming them) joins none, and its hello
/// says so: under `required` the task is refused, naming the cgroup
/// layer; under `on` it runs, outside any group of its own.
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_that_joins_none_of_its_cgroups_is_caught() {
    if !cgroups_here() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let wrapper = dir.path().join("worker.sh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nunset ISOLA_WORKER_CGROUP\nexec '{}' \"$@\"\n",
            isola_bin().display()
        ),
    )
    .expect("write the wrapper");
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let runner = |sandbox| {
        Runner::with_config(RunnerConfig {
            cache_dir: CacheDir::Path(shared_cache()),
            worker_program: Some(wrapper.clone()),
            prestarted_workers: 0,
            sandbox,
            ..RunnerConfig::default()
        })
        .expect("runner")
    };
    let sleeping = || {
        let mut spec = TaskSpec::new(guest("hostile", GuestKind::Module));
        spec.isolation = Isolation::Process;
        spec.args = vec!["sleep".into(), "300".into()];
        spec
    };
    match runner(Sandbox::Required).run(sleeping()).await {
        Err(err) => {
            let message = err.to_string();
            assert!(
                message.contains("cgroup") && message.contains("joined 0 of the"),
                "{message}"
            );
        }
        Ok(report) => panic!("ran outside its cgroups: {:?}", report.outcome),
    }
    let open = runner(Sandbox::On);
    let handle = open.spawn(sleeping()).await.expect("spawn");
    let pid = handle.process_id().expect("a worker");
    let dirs = cgroup_dirs(pid);
    let ours = cgroup_dirs(std::process::id());
    assert_eq!(
        dirs.get("memory"),
        ours.get("memory"),
        "the worker stayed where it started"
    );
    assert_eq!(handle.wait().await.outcome, Outcome::Exited { code: 0 });
}

/// A worker CPU quota that is not a positive number of cores is refused
/// when the runner is made, naming the field.
#[test]
fn a_worker_cpu_quota_must_be_a_positive_number_of_cores() {
    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 2000.0] {
        let refused = Runner::with_config(RunnerConfig {
            worker_cpu_quota: Some(bad),
            ..RunnerConfig::default()
        });
        match refused {
            Err(err) => assert!(err.to_string().contains("worker_cpu_quota"), "{err}"),
            Ok(_) => panic!("{bad} cores accepted"),
        }
    }
}

/// What `RLIMIT_DATA` does not count, the worker's cgroup does: shared
/// memory ends the task at its process memory limit, and a burst of threads
/// stops at the group's 64. Without the sandbox both go through.
#[cfg(debug_assertions)]
#[tokio::test(flavor = "multi_thread")]
async fn cgroup_limits_stop_what_rlimits_do_not_count() {
    if !cgroups_here() {
        return;
    }
    let limited = |what: &str| {
        let mut spec = attempt(what);
        spec.limits.max_memory = isola::ByteSize::mib(16);
        spec.limits.process_memory = Some(isola::ByteSize::mib(192));
        spec
    };
    let shared = "shared-memory:536870912";
    let on = runner(Sandbox::On);
    let report = on.run(limited(shared)).await.expect("spawn");
    assert_eq!(
        report.outcome,
        Outcome::LimitExceeded {
            limit: isola::Limit::ProcessMemory {
                max: isola::ByteSize::mib(192)
            }
        }
    );
    let report = on.run(limited("threads:300")).await.expect("spawn");
    let started = match &report.outcome {
        Outcome::Failed { message } => message
            .split_once("denied after ")
            .and_then(|(_, rest)| rest.split(' ').next())
            .and_then(|n| n.parse::<u32>().ok())
            .unwrap_or_else(|| panic!("{message}")),
        other => panic!("{other:?}"),
    };
    assert!(started < 64, "{started}");
    // The host and other tasks go on.
    let mut ok = TaskSpec::new(guest("hello", GuestKind::Module));
    ok.isolation = Isolation::Process;
    assert_eq!(
        on.run(ok).await.expect("spawn").outcome,
        Outcome::Exited { code: 0 }
    );

    let off = runner(Sandbox::Off);
    let report = off.run(limited(shared)).await.expect("spawn");
    assert_eq!(verdict(&report.outcome), Verdict::Allowed);
    let report = off.run(limited("threads:300")).await.expect("spawn");
    assert_eq!(
        report.outcome,
        Outcome::Failed {
            message: "escape attempt `threads:300`: allowed: 300 threads".into()
        }
    );
}

/// A worker runs in `/`, not in its parent's working directory; the paths
/// a task names relative to the parent's still reach it (made absolute on
/// the way): relative `--dir` and Wasm paths work.
#[test]
fn a_worker_runs_in_a_neutral_directory_and_relative_paths_still_work() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(
        guest("echo_cli", GuestKind::Module),
        dir.path().join("echo.wasm"),
    )
    .expect("copy");
    std::fs::create_dir(dir.path().join("data")).expect("mkdir");
    for sandbox in ["on", "off"] {
        let out = std::process::Command::new(isola_bin())
            .current_dir(dir.path())
            .env("ISOLA_CACHE_DIR", shared_cache())
            .args(["run", "--isolation", "process", "--sandbox", sandbox])
            .args([
                "--dir",
                "data::/data",
                "echo.wasm",
                "write",
                "/data/out.txt",
                "made",
            ])
            .output()
            .expect("run isola");
        assert!(out.status.success(), "{sandbox}: {out:?}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("data/out.txt")).expect("read"),
            "made"
        );
        std::fs::remove_file(dir.path().join("data/out.txt")).expect("rm");
    }
    #[cfg(debug_assertions)]
    {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        for sandbox in [Sandbox::On, Sandbox::Off] {
            let report = rt
                .block_on(runner(sandbox).run(attempt("cwd")))
                .expect("spawn");
            assert_eq!(
                report.outcome,
                Outcome::Failed {
                    message: "working directory /".into()
                },
                "{sandbox:?}"
            );
        }
    }
}

//! Scale-out on NATS JetStream (issue 16): `isola worker` and
//! `isola up --nats` against a real `nats-server` that each test starts on
//! a free loopback port with its own store directory, and stops.

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use isola::{Isolation, Outcome, Output, TaskSpec};
use isola_tests::{GuestKind, guest, isola_bin, shared_cache};

/// A `nats-server` with JetStream on a free loopback port.
struct Server {
    child: Option<Child>,
    port: u16,
    store: tempfile::TempDir,
    extra: Vec<String>,
}

fn nats_server_bin() -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/bin", "/usr/local/sbin"] {
        let path = Path::new(dir).join("nats-server");
        if path.exists() {
            return path;
        }
    }
    panic!(
        "nats-server is missing: `make test` installs it as root \
         (apt-get install nats-server)"
    );
}

impl Server {
    fn start() -> Server {
        Server::start_with(&[])
    }

    fn start_with(extra: &[&str]) -> Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut server = Server {
            child: None,
            port,
            store: tempfile::tempdir().expect("tempdir"),
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let child = Command::new(nats_server_bin())
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.store.path())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Stops the server (SIGTERM, as a service manager would) and waits.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, libc::SIGTERM);
            let _ = child.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn signal(child: &Child, signal: i32) {
    let pid = i32::try_from(child.id()).expect("pid");
    // SAFETY: sending a signal to our own child, which we have not reaped.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// An `isola worker` process.
struct WorkerProc {
    child: Child,
    /// Its stderr, for a failing test's message.
    log: Option<tempfile::NamedTempFile>,
}

impl WorkerProc {
    fn start(url: &str, name: &str, extra: &[&str]) -> WorkerProc {
        let log = tempfile::NamedTempFile::new().expect("log file");
        let child = Command::new(isola_bin())
            .args(["worker", "--nats", url, "--name", name, "--ack-wait", "2s"])
            .args(extra)
            .env("ISOLA_CACHE_DIR", shared_cache())
            .env("RUST_BACKTRACE", "0")
            .stdout(Stdio::null())
            .stderr(log.reopen().expect("log file"))
            .spawn()
            .expect("start isola worker");
        WorkerProc {
            child,
            log: Some(log),
        }
    }

    /// What it wrote to stderr so far.
    fn said(&self) -> String {
        self.log
            .as_ref()
            .and_then(|log| std::fs::read_to_string(log.path()).ok())
            .unwrap_or_default()
    }
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wasm(name: &str) -> String {
    guest(name, GuestKind::Module)
        .to_str()
        .expect("utf-8")
        .to_owned()
}

fn component(name: &str) -> String {
    guest(name, GuestKind::Component)
        .to_str()
        .expect("utf-8")
        .to_owned()
}

/// Runs `isola up` on `set` (locally, or on the cluster at `nats`) and
/// returns its exit code and JSON report.
fn up(set: &Path, nats: Option<&str>, extra: &[&str]) -> (i32, serde_json::Value) {
    let (code, report, _) = up_with_output(set, nats, extra);
    (code, report)
}

/// As [`up`], also returning the `name | line` lines it printed, sorted
/// (tasks interleave differently from run to run).
fn up_with_output(
    set: &Path,
    nats: Option<&str>,
    extra: &[&str],
) -> (i32, serde_json::Value, Vec<String>) {
    let json = set.with_extension("json");
    let mut command = Command::new(isola_bin());
    command
        .arg("up")
        .arg(set)
        .arg("--json")
        .arg(&json)
        .args(extra)
        .env("ISOLA_CACHE_DIR", shared_cache())
        .env("RUST_BACKTRACE", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(url) = nats {
        command.args(["--nats", url]);
    }
    let out = command.output().expect("run isola up");
    let text = std::fs::read_to_string(&json).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e}); stderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let report = serde_json::from_str(&text).expect("JSON report");
    let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|line| line.contains(" | "))
        .map(str::to_owned)
        .collect();
    lines.sort();
    (out.status.code().unwrap_or(-1), report, lines)
}

/// The records of a report by task name.
fn records(report: &serde_json::Value) -> BTreeMap<String, serde_json::Value> {
    report["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .map(|r| (r["name"].as_str().expect("name").to_owned(), r.clone()))
        .collect()
}

/// What must be the same however a task ran: status, exit code, outcome
/// and start error.
fn ending(record: &serde_json::Value) -> String {
    format!(
        "{} {} {} {}",
        record["status"], record["exit_code"], record["outcome"], record["start_error"]
    )
}

/// A mixed set of `count` tasks plus a synth → place → pack chain through
/// a writable directory, written into `dir`.
fn mixed_set(dir: &Path, count: usize) -> PathBuf {
    std::fs::create_dir_all(dir.join("work")).expect("mkdir");
    std::fs::write(dir.join("work/design.txt"), "the design").expect("write");
    let (echo, echo2, hostile) = (wasm("echo_cli"), component("echo_cli"), wasm("hostile"));
    let mut toml =
        String::from("[defaults]\nlimits = { max_memory = \"64MiB\", timeout = \"20s\" }\n");
    for i in 0..count {
        let task = match i % 10 {
            // Half of them ask for the OS sandbox themselves: a policy
            // the worker applies (tightening its own), not a refusal.
            0 => format!(
                "wasm = \"{echo}\"\nargs = [\"args\", \"process {i}\"]\nisolation = \"process\"{}",
                if i % 20 == 0 {
                    "\nsandbox = \"on\""
                } else {
                    ""
                }
            ),
            1 | 3 | 5 => format!("wasm = \"{echo}\"\nargs = [\"args\", \"thread {i}\"]"),
            2 | 4 => format!("wasm = \"{echo2}\"\nargs = [\"args\", \"component {i}\"]"),
            6 => format!(
                "wasm = \"{hostile}\"\nargs = [\"loop\"]\nlimits = {{ timeout = \"200ms\" }}"
            ),
            7 => format!("wasm = \"{echo}\"\nargs = [\"exit\", \"3\"]"),
            8 => format!(
                "wasm = \"{hostile}\"\nargs = [\"alloc-bomb\"]\nisolation = \"{}\"\nlimits = {{ max_memory = \"16MiB\" }}",
                if i % 20 == 8 { "process" } else { "thread" }
            ),
            _ => format!(
                "wasm = \"{echo}\"\nargs = [\"env\"]\nenv = {{ N = \"{i}\" }}\ndepends_on = [\"t{}\"]",
                // Half depend on a task that succeeds, half on one that
                // fails (and so are skipped).
                if i % 20 == 9 { i - 4 } else { i - 2 }
            ),
        };
        toml.push_str(&format!("\n[[task]]\nname = \"t{i}\"\n{task}\n"));
    }
    toml.push_str(&format!(
        r#"
[[task]]
name = "synth"
wasm = "{echo}"
args = ["write", "/work/netlist.txt", "cells from synth"]
dirs = [{{ host = "work", guest = "/work", writable = true }}]

[[task]]
name = "place"
wasm = "{echo2}"
args = ["write", "/work/placed.txt", "placed by place"]
dirs = [{{ host = "work", guest = "/work", writable = true }}]
depends_on = ["synth"]
isolation = "process"

[[task]]
name = "pack"
wasm = "{echo}"
args = ["cat", "/work/netlist.txt"]
dirs = [{{ host = "work", guest = "/work" }}]
depends_on = ["place"]

[[task]]
name = "pack-check"
wasm = "{echo}"
args = ["cat", "/work/placed.txt"]
dirs = [{{ host = "work", guest = "/work" }}]
depends_on = ["pack"]
"#
    ));
    let path = dir.join("tasks.toml");
    std::fs::write(&path, toml).expect("write the set");
    path
}

fn dir_contents(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let entry = entry.expect("entry");
        files.insert(
            entry.file_name().to_string_lossy().into_owned(),
            std::fs::read(entry.path()).expect("read"),
        );
    }
    files
}

#[test]
fn a_mixed_set_on_three_workers_ends_as_it_does_locally() {
    let server = Server::start();
    let _workers: Vec<WorkerProc> = (1..=3)
        .map(|n| WorkerProc::start(&server.url(), &format!("w{n}"), &["-j", "2"]))
        .collect();
    let root = tempfile::tempdir().expect("tempdir");
    let local = mixed_set(&root.path().join("local"), 500);
    let remote = mixed_set(&root.path().join("remote"), 500);

    let (local_code, local_report, local_lines) = up_with_output(&local, None, &["--jobs", "6"]);
    let (remote_code, remote_report, remote_lines) =
        up_with_output(&remote, Some(&server.url()), &["--jobs", "6"]);
    assert_eq!(local_code, 1, "the set has failing tasks on purpose");
    assert_eq!(remote_code, local_code);
    // The same `name | line` output, every line of every task.
    assert!(local_lines.len() >= 300, "{}", local_lines.len());
    assert_eq!(remote_lines, local_lines);

    let (local, remote) = (records(&local_report), records(&remote_report));
    assert_eq!(local.len(), 504);
    assert_eq!(remote.len(), local.len(), "one record per task");
    for (name, record) in &local {
        assert_eq!(ending(&remote[name]), ending(record), "task {name}");
    }
    // Every task that ran says where, after one delivery; all three
    // workers took part.
    let mut by_worker = BTreeMap::new();
    for record in remote.values().filter(|r| !r["outcome"].is_null()) {
        let worker = record["worker"]
            .as_str()
            .expect("a worker for a task that ran");
        *by_worker.entry(worker.to_owned()).or_insert(0) += 1;
        assert_eq!(record["deliveries"], 1, "{record}");
    }
    assert_eq!(by_worker.len(), 3, "{by_worker:?}");
    // The chain gives the same files here as locally: synth's and place's
    // writes came back from their workers, and pack read them on another.
    assert_eq!(
        dir_contents(&root.path().join("remote/work")),
        dir_contents(&root.path().join("local/work"))
    );
    assert_eq!(remote["pack"]["status"], "succeeded", "{}", remote["pack"]);
    assert_eq!(remote["pack-check"]["status"], "succeeded");
}

/// A set of `count` tasks that each sleep `ms` and print "woke".
fn sleepers(dir: &Path, count: usize, ms: u64) -> PathBuf {
    let hostile = wasm("hostile");
    let mut toml = String::new();
    for i in 0..count {
        toml.push_str(&format!(
            "[[task]]\nname = \"s{i}\"\nwasm = \"{hostile}\"\nargs = [\"sleep\", \"{ms}\"]\n{}\n",
            if i % 4 == 0 {
                "isolation = \"process\""
            } else {
                ""
            }
        ));
    }
    let path = dir.join("tasks.toml");
    std::fs::write(&path, toml).expect("write");
    path
}

#[test]
fn a_killed_worker_s_tasks_are_redelivered_and_recorded_once() {
    let server = Server::start();
    let mut doomed = WorkerProc::start(&server.url(), "doomed", &["-j", "2"]);
    let _survivor = WorkerProc::start(&server.url(), "survivor", &["-j", "2"]);
    let root = tempfile::tempdir().expect("tempdir");
    let set = sleepers(root.path(), 16, 1500);
    let url = server.url();
    let run = std::thread::spawn(move || up(&set, Some(&url), &["--jobs", "4"]));
    // Both workers hold tasks a second in; then one dies mid-task.
    std::thread::sleep(Duration::from_millis(1000));
    let _ = doomed.child.kill();
    let _ = doomed.child.wait();
    let (code, report) = run.join().expect("up");
    assert_eq!(code, 0, "{report}");
    let records = records(&report);
    assert_eq!(records.len(), 16);
    let mut redelivered = 0;
    for record in records.values() {
        assert_eq!(record["status"], "succeeded", "{record}");
        match (record["worker"].as_str(), record["deliveries"].as_u64()) {
            (Some("survivor"), Some(2)) => redelivered += 1,
            (Some(_), Some(1)) => {}
            other => panic!("unexpected placement {other:?}: {record}"),
        }
    }
    assert!(
        redelivered >= 1,
        "the killed worker's tasks moved: {report}"
    );
}

#[test]
fn a_run_survives_a_server_restart() {
    let mut server = Server::start();
    let _workers: Vec<WorkerProc> = (1..=2)
        .map(|n| WorkerProc::start(&server.url(), &format!("w{n}"), &["-j", "2"]))
        .collect();
    let root = tempfile::tempdir().expect("tempdir");
    let set = sleepers(root.path(), 24, 400);
    let url = server.url();
    let run = std::thread::spawn(move || up(&set, Some(&url), &["--jobs", "4"]));
    std::thread::sleep(Duration::from_millis(1200));
    server.stop();
    std::thread::sleep(Duration::from_millis(700));
    server.spawn();
    let (code, report) = run.join().expect("up");
    let records = records(&report);
    assert_eq!(records.len(), 24);
    for record in records.values() {
        assert_eq!(record["status"], "succeeded", "{record}");
    }
    assert_eq!(code, 0);
}

#[test]
fn a_killed_submitter_leaves_no_work_behind() {
    let server = Server::start();
    let _workers: Vec<WorkerProc> = (1..=2)
        .map(|n| WorkerProc::start(&server.url(), &format!("w{n}"), &["-j", "1"]))
        .collect();
    let root = tempfile::tempdir().expect("tempdir");
    let hostile = wasm("hostile");
    let orphans = root.path().join("orphans.toml");
    let mut toml = String::new();
    for i in 0..4 {
        toml.push_str(&format!(
            "[[task]]\nname = \"spin{i}\"\nwasm = \"{hostile}\"\nargs = [\"loop\"]\nlimits = {{ timeout = \"120s\" }}\n"
        ));
    }
    std::fs::write(&orphans, toml).expect("write");
    let mut submitter = Command::new(isola_bin())
        .arg("up")
        .arg(&orphans)
        .args(["--jobs", "4", "--nats", &server.url()])
        .env("ISOLA_CACHE_DIR", shared_cache())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("isola up");
    // Both workers' one slot each is taken by a spinner; two more wait in
    // the queue. Then the submitter dies without a word.
    std::thread::sleep(Duration::from_secs(2));
    let _ = submitter.kill();
    let _ = submitter.wait();

    // A new run gets the workers once the old run's heartbeat is gone
    // (10 s), long before the spinners' 120 s timeouts, and the old
    // run's queued tasks are dropped, not run.
    let started = Instant::now();
    let fresh = root.path().join("fresh");
    std::fs::create_dir_all(&fresh).expect("mkdir");
    let set = sleepers(&fresh, 4, 10);
    let (code, report) = up(&set, Some(&server.url()), &["--jobs", "2"]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(records(&report).len(), 4);
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(60),
        "the old run's tasks kept the workers for {took:?}"
    );
}

#[test]
fn a_spec_beyond_a_worker_s_ceilings_is_refused_with_why() {
    let server = Server::start();
    let _worker = WorkerProc::start(
        &server.url(),
        "strict",
        &[
            "--max-timeout",
            "10s",
            "--isolation",
            "thread",
            "--max-memory",
            "64MiB",
        ],
    );
    let root = tempfile::tempdir().expect("tempdir");
    let echo = wasm("echo_cli");
    let set = root.path().join("tasks.toml");
    std::fs::write(
        &set,
        format!(
            r#"
[defaults]
limits = {{ max_memory = "32MiB" }}

[[task]]
name = "fits"
wasm = "{echo}"
args = ["args", "ok"]

[[task]]
name = "too-long"
wasm = "{echo}"
limits = {{ timeout = "1h" }}

[[task]]
name = "in-a-process"
wasm = "{echo}"
isolation = "process"

[[task]]
name = "too-big"
wasm = "{echo}"
limits = {{ max_memory = "2GiB" }}

[[task]]
name = "default-memory"
wasm = "{echo}"
args = ["args", "fits under the ceiling"]
limits = {{ max_memory = "1GiB" }}
"#
        ),
    )
    .expect("write");
    let (code, report) = up(&set, Some(&server.url()), &[]);
    assert_eq!(code, 1);
    let records = records(&report);
    assert_eq!(records["fits"]["status"], "succeeded");
    // A limit at the default value (1 GiB; [defaults] sets another here,
    // so the task writes it) reads as no request: it is closed at the
    // ceiling, not refused. A spec cannot tell "left" from "written".
    assert_eq!(
        records["default-memory"]["status"], "succeeded",
        "{}",
        records["default-memory"]
    );
    for (task, field) in [
        ("too-long", "limits.timeout"),
        ("in-a-process", "isolation"),
        ("too-big", "limits.max_memory"),
    ] {
        let error = records[task]["start_error"].as_str().unwrap_or_default();
        assert!(
            error.contains(field) && error.contains("worker `strict` refused"),
            "{task}: {error}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_library_submits_specs_and_gets_reports_back() {
    let server = Server::start();
    let _worker = WorkerProc::start(&server.url(), "lib", &["-j", "2"]);
    let cluster =
        isola_cluster::Cluster::connect(&isola_cluster::ConnectOptions::new(server.url()))
            .await
            .expect("connect");

    // Captured output and an exit code, as from a local runner; the
    // submitter's variable passes through `inherit_env`.
    // SAFETY: set before any thread of this test reads the environment.
    unsafe { std::env::set_var("ISOLA_CLUSTER_TEST_VAR", "from the submitter") };
    let mut spec = TaskSpec::new(guest("echo_cli", GuestKind::Module));
    spec.args = vec!["env-get".into(), "ISOLA_CLUSTER_TEST_VAR".into()];
    spec.inherit_env = vec!["ISOLA_CLUSTER_TEST_VAR".into()];
    spec.isolation = Isolation::Process;
    let report = cluster
        .spawn("env", spec)
        .await
        .expect("spawn")
        .wait()
        .await;
    assert_eq!(report.outcome, Outcome::Exited { code: 0 });
    assert_eq!(report.stdout.text(), "from the submitter\n");

    // A cancel reaches the task on its worker.
    let mut spec = TaskSpec::new(guest("hostile", GuestKind::Module));
    spec.args = vec!["loop".into()];
    spec.stdout = Output::Discard;
    let handle = cluster.spawn("spin", spec).await.expect("spawn");
    tokio::time::sleep(Duration::from_millis(300)).await;
    handle.cancel();
    let report = tokio::time::timeout(Duration::from_secs(20), handle.wait())
        .await
        .expect("the cancelled task ends");
    assert_eq!(report.outcome, Outcome::Cancelled);

    // A task whose piped output nobody reads holds up only itself: another
    // task's result still arrives.
    let mut spec = TaskSpec::new(guest("hostile", GuestKind::Module));
    spec.args = vec!["tiny-writes".into()];
    spec.stdout = Output::Pipe;
    spec.limits.max_output = Some(isola::ByteSize::kib(16));
    let unread = cluster.spawn("unread", spec).await.expect("spawn");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut spec = TaskSpec::new(guest("echo_cli", GuestKind::Module));
    spec.args = vec!["args".into(), "still here".into()];
    let report = tokio::time::timeout(
        Duration::from_secs(20),
        cluster.spawn("other", spec).await.expect("spawn").wait(),
    )
    .await
    .expect("another task's result is not held up by an unread pipe");
    assert_eq!(report.stdout.text(), "still here\n");
    unread.cancel();
    drop(unread);

    // What a task cannot have on another machine is refused before it is
    // sent.
    let mut spec = TaskSpec::new(guest("echo_cli", GuestKind::Module));
    spec.stdin = isola::Stdin::Inherit;
    let err = cluster.spawn("stdin", spec).await.expect_err("refused");
    assert!(err.to_string().contains("stdin"), "{err}");
    cluster.close().await;
}

#[test]
fn sigterm_lets_a_worker_finish_its_tasks_and_exit() {
    let server = Server::start();
    let mut worker = WorkerProc::start(&server.url(), "graceful", &["-j", "2"]);
    let root = tempfile::tempdir().expect("tempdir");
    let set = sleepers(root.path(), 2, 1500);
    let url = server.url();
    let run = std::thread::spawn(move || up(&set, Some(&url), &["--jobs", "2"]));
    std::thread::sleep(Duration::from_millis(700));
    signal(&worker.child, libc::SIGTERM);
    let status = worker.child.wait().expect("wait");
    assert_eq!(
        status.code(),
        Some(0),
        "a drained worker exits 0: {}",
        worker.said()
    );
    let (code, report) = run.join().expect("up");
    assert_eq!(code, 0, "{report}");
    for record in records(&report).values() {
        assert_eq!(record["worker"], "graceful", "{record}");
        assert_eq!(
            record["deliveries"], 1,
            "finished, not handed back: {record}"
        );
    }
}

#[test]
fn credentials_pass_through_and_a_wrong_one_is_a_clear_error() {
    let server = Server::start_with(&["--auth", "s3cret-token"]);
    let _worker = WorkerProc::start(&server.url(), "authed", &["--nats-token", "s3cret-token"]);
    let root = tempfile::tempdir().expect("tempdir");
    let set = sleepers(root.path(), 2, 10);
    let (code, report) = up(&set, Some(&server.url()), &["--nats-token", "s3cret-token"]);
    assert_eq!(code, 0, "{report}");

    let out = Command::new(isola_bin())
        .arg("up")
        .arg(&set)
        .args(["--nats", &server.url(), "--nats-token", "wrong"])
        .output()
        .expect("isola up");
    assert_eq!(out.status.code(), Some(125));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--nats") && stderr.contains("cannot connect to NATS"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("wrong"),
        "the token is not echoed: {stderr}"
    );

    // TLS asked of a server without it: said so.
    let out = Command::new(isola_bin())
        .arg("up")
        .arg(&set)
        .args([
            "--nats",
            &server.url(),
            "--nats-token",
            "s3cret-token",
            "--nats-require-tls",
        ])
        .output()
        .expect("isola up");
    assert_eq!(out.status.code(), Some(125));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("does not seem to speak TLS"), "{stderr}");
}

#[test]
fn a_fresh_worker_fetches_one_module_for_many_tasks_at_once() {
    // Sixteen tasks of one module reach a worker with an empty module
    // cache at once: each fetch must leave the others' alone.
    let server = Server::start();
    let _worker = WorkerProc::start(&server.url(), "fresh", &["-j", "16"]);
    let root = tempfile::tempdir().expect("tempdir");
    let hello = wasm("hello");
    let mut toml = String::new();
    for i in 0..16 {
        toml.push_str(&format!("[[task]]\nname = \"h{i}\"\nwasm = \"{hello}\"\n"));
    }
    let set = root.path().join("tasks.toml");
    std::fs::write(&set, toml).expect("write");
    let (code, report) = up(&set, Some(&server.url()), &["--jobs", "16"]);
    let errors: Vec<_> = records(&report)
        .values()
        .filter_map(|r| r["start_error"].as_str().map(str::to_owned))
        .collect();
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(code, 0);
}

#[test]
fn a_task_longer_than_the_ack_wait_is_not_redelivered() {
    // The worker sends progress while the task runs, so a task four times
    // the ack wait stays with it and is recorded after one delivery.
    let server = Server::start();
    let _worker = WorkerProc {
        log: None,
        child: Command::new(isola_bin())
            .args([
                "worker",
                "--nats",
                &server.url(),
                "--name",
                "slow",
                "--ack-wait",
                "1s",
            ])
            .env("ISOLA_CACHE_DIR", shared_cache())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("isola worker"),
    };
    // The first worker makes the shared consumer, with its ack wait.
    std::thread::sleep(Duration::from_millis(500));
    let _other = WorkerProc::start(&server.url(), "idle", &[]);
    let root = tempfile::tempdir().expect("tempdir");
    let set = sleepers(root.path(), 1, 4000);
    let (code, report) = up(&set, Some(&server.url()), &[]);
    assert_eq!(code, 0, "{report}");
    let record = &records(&report)["s0"];
    assert_eq!(record["deliveries"], 1, "{record}");
}

#[test]
fn a_second_sigterm_hands_a_worker_s_tasks_to_another_at_once() {
    let server = Server::start();
    let mut leaving = WorkerProc::start(&server.url(), "leaving", &["-j", "1"]);
    let root = tempfile::tempdir().expect("tempdir");
    let set = sleepers(root.path(), 1, 3000);
    let url = server.url();
    let run = std::thread::spawn(move || up(&set, Some(&url), &[]));
    std::thread::sleep(Duration::from_millis(800));
    // The other worker arrives only now, so the task is with `leaving`.
    let _staying = WorkerProc::start(&server.url(), "staying", &["-j", "1"]);
    signal(&leaving.child, libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(200));
    signal(&leaving.child, libc::SIGTERM);
    let status = leaving.child.wait().expect("wait");
    assert_eq!(status.code(), Some(0), "{}", leaving.said());
    let (code, report) = run.join().expect("up");
    assert_eq!(code, 0, "{report}");
    let record = &records(&report)["s0"];
    // Handed back once and run by the other: not taken up again by the
    // worker that was stopping.
    assert_eq!(record["worker"], "staying", "{record}");
    assert_eq!(record["deliveries"], 2, "{record}");
}

#[test]
fn flags_a_worker_cannot_use_are_refused_naming_them() {
    // A bad flag is named before the set is read (it does not exist here).
    for (args, says) in [
        (
            &["worker", "--nats", "http://127.0.0.1:1"][..],
            "is not a NATS address",
        ),
        (
            &["up", "/no/such/tasks.toml", "--nats", "ftp://x"][..],
            "is not a NATS address",
        ),
        (
            &[
                "worker",
                "--nats",
                "nats://127.0.0.1:1",
                "--max-timeout",
                "0s",
            ][..],
            "--max-timeout",
        ),
        (
            &[
                "worker",
                "--nats",
                "nats://127.0.0.1:1",
                "--max-memory",
                "0",
            ][..],
            "--max-memory",
        ),
    ] {
        let out = isola_tests::isola(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = isola_tests::stderr(&out);
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

//! Scale-out on NATS JetStream (issue 16): `isola worker` and
//! `isola up --nats` against a real `nats-server` that each test starts on
//! a free loopback port with its own store directory, and stops.

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use isola::{Isolation, Outcome, Output, TaskSpec};
use isola_tests::{GuestKind, guest, isola_bin, isola_within, shared_cache};

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
        // Listening is not serving JetStream yet: a loaded machine showed
        // the gap. Waited for on a thread of its own, as a test may call
        // this from inside its runtime; not for a server with options of
        // its own (credentials the probe does not have), whose tests start
        // with a client that retries.
        if !self.extra.is_empty() {
            return;
        }
        let url = self.url();
        let ready = std::thread::spawn(move || {
            runtime().block_on(async {
                while Instant::now() < deadline {
                    // JetStream answers "not found" for a stream that is
                    // not there once it serves (no answer before).
                    if let Ok(client) = async_nats::connect(url.as_str()).await
                        && let Err(err) = async_nats::jetstream::new(client)
                            .get_stream("ISOLA_READINESS_PROBE")
                            .await
                        && err.to_string().contains("not found")
                    {
                        return true;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                false
            })
        });
        assert!(
            ready.join().expect("the readiness check"),
            "nats-server did not serve JetStream within 10 s"
        );
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
        WorkerProc::start_env(url, name, extra, &[])
    }

    /// As [`WorkerProc::start`], with variables added to its environment.
    fn start_env(url: &str, name: &str, extra: &[&str], env: &[(&str, &str)]) -> WorkerProc {
        let log = tempfile::NamedTempFile::new().expect("log file");
        let child = Command::new(isola_bin())
            .args(["worker", "--nats", url, "--name", name, "--ack-wait", "2s"])
            .args(extra)
            .env("ISOLA_CACHE_DIR", shared_cache())
            .env("RUST_BACKTRACE", "0")
            .envs(env.iter().copied())
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

/// The longest any `isola up` in these tests may take.
const UP_LIMIT: Duration = Duration::from_secs(300);

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
    use std::ffi::OsStr;
    let mut args: Vec<&OsStr> = vec![OsStr::new("up"), set.as_os_str()];
    args.extend([OsStr::new("--json"), json.as_os_str()]);
    args.extend(extra.iter().map(OsStr::new));
    if let Some(url) = nats {
        args.extend([OsStr::new("--nats"), OsStr::new(url)]);
    }
    // Bounded, so a stuck cluster fails its test instead of hanging the
    // suite.
    let out = isola_within(&args, &[("RUST_BACKTRACE", OsStr::new("0"))], UP_LIMIT)
        .unwrap_or_else(|| panic!("isola up did not finish in {UP_LIMIT:?}"));
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

/// A runtime for the tests' own look at the server.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// A JetStream client of the test's own.
async fn jetstream(server: &Server) -> async_nats::jetstream::Context {
    let client = async_nats::connect(server.url())
        .await
        .expect("connect to nats-server");
    async_nats::jetstream::new(client)
}

/// A stream's state: messages it holds, and the sequence of the last one
/// it ever stored (which no purge, rollup or work-queue ack takes back).
async fn stream_state(js: &async_nats::jetstream::Context, name: &str) -> (u64, u64) {
    let mut stream = js.get_stream(name).await.expect("the stream");
    let state = &stream.info().await.expect("stream info").state;
    (state.messages, state.last_sequence)
}

/// The objects in the blob store, by name, with their chunk counts, and
/// the sequence of the last message its stream ever stored.
async fn blobs(server: &Server) -> (BTreeMap<String, u64>, u64) {
    use futures::StreamExt;
    let js = jetstream(server).await;
    let store = js
        .get_object_store("isola_blobs")
        .await
        .expect("the blob store");
    let mut list = store.list().await.expect("list blobs");
    let mut objects = BTreeMap::new();
    while let Some(info) = list.next().await {
        let info = info.expect("an object");
        objects.insert(info.name, info.chunks as u64);
    }
    let (_, last) = stream_state(&js, "OBJ_isola_blobs").await;
    (objects, last)
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[test]
fn blobs_are_uploaded_once_and_checked_on_arrival() {
    let server = Server::start();
    let _workers: Vec<WorkerProc> = (1..=2)
        .map(|n| WorkerProc::start(&server.url(), &format!("w{n}"), &["-j", "2"]))
        .collect();
    let root = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(root.path().join("data/sub")).expect("mkdir");
    std::fs::write(root.path().join("data/in.txt"), "input").expect("write");
    std::fs::write(root.path().join("data/sub/more.txt"), "more").expect("write");
    let (echo, echo2) = (wasm("echo_cli"), component("echo_cli"));
    let mut toml = String::new();
    for i in 0..12 {
        let (module, args) = if i % 2 == 0 {
            (&echo, r#"["cat", "/data/in.txt"]"#)
        } else {
            (&echo2, r#"["ls", "/data"]"#)
        };
        toml.push_str(&format!(
            "[[task]]\nname = \"t{i}\"\nwasm = \"{module}\"\nargs = {args}\n\
             dirs = [{{ host = \"data\", guest = \"/data\" }}]\n"
        ));
    }
    let set = root.path().join("tasks.toml");
    std::fs::write(&set, toml).expect("write the set");

    let (code, report) = up(&set, Some(&server.url()), &["--jobs", "4"]);
    assert_eq!(code, 0, "{report}");
    let rt = runtime();
    let (objects, last) = rt.block_on(blobs(&server));
    // Two modules and one archive of `data`, for twelve tasks.
    assert_eq!(objects.len(), 3, "{objects:?}");
    for module in [&echo, &echo2] {
        let name = sha256_hex(&std::fs::read(module).expect("read the module"));
        assert!(objects.contains_key(&name), "{module} stored as {name}");
    }
    // Each was stored once: every message the store's stream ever held is
    // a chunk of one of them or its description.
    let stored: u64 = objects.values().map(|chunks| chunks + 1).sum();
    assert_eq!(last, stored, "{objects:?}");
    // A second run, from a new submitter, finds them and stores nothing.
    let (code, report) = up(&set, Some(&server.url()), &["--jobs", "4"]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(rt.block_on(blobs(&server)).1, last);

    // Verified on arrival: other bytes stored under a module's name (of
    // its length, so the submitter takes the module for uploaded) are
    // refused by the worker, whatever the store says.
    let mut module = std::fs::read(&echo).expect("read the module");
    // A custom section `test` holding "X": a module of its own, unseen.
    module.extend_from_slice(&[0, 6, 4, b't', b'e', b's', b't', b'X']);
    let marked = root.path().join("marked.wasm");
    std::fs::write(&marked, &module).expect("write");
    let mut forged = module.clone();
    *forged.last_mut().expect("a byte") = b'Y';
    rt.block_on(async {
        let store = jetstream(&server)
            .await
            .get_object_store("isola_blobs")
            .await
            .expect("the blob store");
        store
            .put(sha256_hex(&module).as_str(), &mut forged.as_slice())
            .await
            .expect("store the forged object");
    });
    let forged_set = root.path().join("forged.toml");
    std::fs::write(
        &forged_set,
        format!(
            "[[task]]\nname = \"forged\"\nwasm = \"{}\"\nargs = [\"args\", \"ran\"]\n",
            marked.display()
        ),
    )
    .expect("write");
    let (code, report) = up(&forged_set, Some(&server.url()), &[]);
    let record = &records(&report)["forged"];
    assert_ne!(code, 0, "{report}");
    assert_ne!(record["status"], "succeeded", "{record}");
    assert!(
        record.to_string().contains("do not match its hash"),
        "{record}"
    );
}

/// Waits up to `limit` for `child` to exit; its exit code.
fn exit_within(child: &mut Child, limit: Duration) -> Option<i32> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().expect("wait") {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Waits up to `limit` for `worker` to write `text` to its log.
fn said_within(worker: &WorkerProc, text: &str, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if worker.said().contains(text) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn a_result_stored_before_its_worker_died_is_recorded_once_and_not_run_again() {
    let server = Server::start();
    // Stores t0's result, then exits before acking its message (a test
    // fault of debug builds).
    let mut dying = WorkerProc::start_env(
        &server.url(),
        "dying",
        &["-j", "1"],
        &[("ISOLA_TEST_WORKER_FAULT", "exit-after-result")],
    );
    let root = tempfile::tempdir().expect("tempdir");
    let set = root.path().join("tasks.toml");
    std::fs::write(
        &set,
        format!(
            "[[task]]\nname = \"t0\"\nwasm = \"{echo}\"\nargs = [\"args\", \"once\"]\n\n\
             [[task]]\nname = \"t1\"\nwasm = \"{hostile}\"\nargs = [\"sleep\", \"5000\"]\n\
             depends_on = [\"t0\"]\n",
            echo = wasm("echo_cli"),
            hostile = wasm("hostile"),
        ),
    )
    .expect("write the set");
    let url = server.url();
    let run = std::thread::spawn(move || up(&set, Some(&url), &[]));
    assert_eq!(
        exit_within(&mut dying.child, Duration::from_secs(60)),
        Some(70),
        "{}",
        dying.said()
    );
    // t0's message comes back after the ack wait, to this one.
    let survivor = WorkerProc::start_env(
        &server.url(),
        "survivor",
        &["-j", "2"],
        &[("ISOLA_LOG", "info")],
    );
    let (code, report) = run.join().expect("up");
    assert_eq!(code, 0, "{report}");
    let records = records(&report);
    assert_eq!(records["t0"]["worker"], "dying", "{report}");
    assert_eq!(records["t0"]["deliveries"], 1, "{report}");
    assert_eq!(records["t1"]["worker"], "survivor", "{report}");
    assert!(
        said_within(&survivor, "acked, not run again", Duration::from_secs(30)),
        "the survivor found t0's result stored: {}",
        survivor.said()
    );
    let rt = runtime();
    rt.block_on(async {
        let js = jetstream(&server).await;
        // One result per task, and none was ever stored twice.
        assert_eq!(stream_state(&js, "ISOLA_RESULTS").await, (2, 2));
        // The redelivered message was acked: the queue is empty.
        assert_eq!(stream_state(&js, "ISOLA_TASKS").await.0, 0);
    });
}

#[test]
fn a_task_whose_workers_keep_dying_is_given_up_after_five_deliveries() {
    let server = Server::start();
    let root = tempfile::tempdir().expect("tempdir");
    let set = root.path().join("tasks.toml");
    std::fs::write(
        &set,
        format!(
            "[[task]]\nname = \"doomed\"\nwasm = \"{}\"\nargs = [\"args\", \"never\"]\n",
            wasm("echo_cli")
        ),
    )
    .expect("write the set");
    let url = server.url();
    let run = std::thread::spawn(move || up(&set, Some(&url), &[]));
    // Five workers in turn each take the task and die with it running.
    for n in 1..=5 {
        let mut worker = WorkerProc::start_env(
            &server.url(),
            &format!("dies{n}"),
            &["-j", "1"],
            &[("ISOLA_TEST_WORKER_FAULT", "exit-while-running")],
        );
        assert_eq!(
            exit_within(&mut worker.child, Duration::from_secs(60)),
            Some(70),
            "delivery {n}: {}",
            worker.said()
        );
    }
    // The sixth delivery is not run: it ends the task.
    let _last = WorkerProc::start(&server.url(), "last", &["-j", "1"]);
    let (code, report) = run.join().expect("up");
    assert_eq!(code, 1, "{report}");
    let record = &records(&report)["doomed"];
    assert_eq!(record["status"], "failed", "{record}");
    assert_eq!(record["deliveries"], 6, "{record}");
    assert!(
        record.to_string().contains("delivered to workers 5 times"),
        "{record}"
    );
}

/// Every file and directory under `dir`, by relative path: a file's bytes,
/// or `None` for a directory.
fn tree(dir: &Path) -> BTreeMap<String, Option<Vec<u8>>> {
    fn walk(root: &Path, here: &Path, into: &mut BTreeMap<String, Option<Vec<u8>>>) {
        for entry in std::fs::read_dir(here).expect("read dir") {
            let path = entry.expect("entry").path();
            let rel = path
                .strip_prefix(root)
                .expect("under the root")
                .to_string_lossy()
                .into_owned();
            if path.is_dir() {
                into.insert(rel, None);
                walk(root, &path, into);
            } else {
                into.insert(rel, Some(std::fs::read(&path).expect("read")));
            }
        }
    }
    let mut files = BTreeMap::new();
    walk(dir, dir, &mut files);
    files
}

/// A chain of tasks that overwrite, delete and add files and delete a
/// directory in one writable grant, then list it; and one that reads a
/// stdin file.
fn file_changes_set(dir: &Path) -> PathBuf {
    let work = dir.join("work");
    for sub in ["sub", "gone/deep"] {
        std::fs::create_dir_all(work.join(sub)).expect("mkdir");
    }
    for (rel, text) in [
        ("keep.txt", "keep"),
        ("change.txt", "old"),
        ("remove.txt", "x"),
        ("sub/inner.txt", "in"),
        ("gone/b.txt", "b"),
        ("gone/deep/a.txt", "a"),
    ] {
        std::fs::write(work.join(rel), text).expect("write");
    }
    let (echo, echo2) = (wasm("echo_cli"), component("echo_cli"));
    let grant = r#"dirs = [{ host = "work", guest = "/work", writable = true }]"#;
    let toml = format!(
        r#"
[[task]]
name = "overwrite"
wasm = "{echo}"
args = ["write", "/work/change.txt", "new"]
isolation = "process"
{grant}

[[task]]
name = "remove"
wasm = "{echo}"
args = ["rm", "/work/remove.txt"]
depends_on = ["overwrite"]
{grant}

[[task]]
name = "remove-dir"
wasm = "{echo2}"
args = ["rm", "/work/gone"]
depends_on = ["remove"]
{grant}

[[task]]
name = "add"
wasm = "{echo}"
args = ["write", "/work/sub/added.txt", "added"]
depends_on = ["remove-dir"]
{grant}

[[task]]
name = "list"
wasm = "{echo}"
args = ["ls", "/work"]
depends_on = ["add"]
dirs = [{{ host = "work", guest = "/work" }}]

[[task]]
name = "read-stdin"
wasm = "{echo2}"
args = ["stdin"]
stdin = {{ file = "input.txt" }}
"#
    );
    std::fs::write(dir.join("input.txt"), "from a stdin file\n").expect("write");
    let path = dir.join("tasks.toml");
    std::fs::write(&path, toml).expect("write the set");
    path
}

#[test]
fn changed_and_deleted_files_come_back_as_they_are_locally() {
    let server = Server::start();
    let _workers: Vec<WorkerProc> = (1..=2)
        .map(|n| WorkerProc::start(&server.url(), &format!("w{n}"), &["-j", "2"]))
        .collect();
    let root = tempfile::tempdir().expect("tempdir");
    let local = file_changes_set(&root.path().join("local"));
    let remote = file_changes_set(&root.path().join("remote"));
    let (local_code, local_report, local_lines) = up_with_output(&local, None, &[]);
    let (remote_code, remote_report, remote_lines) =
        up_with_output(&remote, Some(&server.url()), &[]);
    assert_eq!(local_code, 0, "{local_report}");
    assert_eq!(remote_code, 0, "{remote_report}");
    for record in records(&remote_report).values() {
        assert!(record["worker"].is_string(), "ran on a worker: {record}");
    }
    let remote_tree = tree(&root.path().join("remote/work"));
    assert_eq!(remote_tree, tree(&root.path().join("local/work")));
    // What the chain did, spelled out.
    let expected: BTreeMap<String, Option<Vec<u8>>> = [
        ("change.txt", Some("new")),
        ("keep.txt", Some("keep")),
        ("sub", None),
        ("sub/added.txt", Some("added")),
        ("sub/inner.txt", Some("in")),
    ]
    .into_iter()
    .map(|(rel, text)| (rel.to_owned(), text.map(|t| t.as_bytes().to_vec())))
    .collect();
    assert_eq!(remote_tree, expected);
    // `list` ran on a worker after the deletions came back here.
    assert_eq!(remote_lines, local_lines);
    assert!(
        remote_lines.iter().any(|line| line.ends_with("| sub")),
        "{remote_lines:?}"
    );
    // The stdin file went to the worker through the blob store.
    assert!(
        remote_lines
            .iter()
            .any(|line| line.ends_with("| from a stdin file")),
        "{remote_lines:?}"
    );
}

/// A cancel published while no worker listened (here: a spawn given up
/// before any worker took its task) is stored, and the worker that takes
/// the task later drops it instead of running it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_no_worker_heard_still_stops_the_task() {
    let server = Server::start();
    let cluster =
        isola_cluster::Cluster::connect(&isola_cluster::ConnectOptions::new(server.url()))
            .await
            .expect("connect");
    let mut spec = TaskSpec::new(guest("echo_cli", GuestKind::Module));
    spec.args = vec!["args".into(), "ran".into()];
    // No worker yet: the spawn waits for one to start the task; giving up
    // on it, once the task is queued, cancels the task.
    let cluster = std::sync::Arc::new(cluster);
    let spawning = {
        let cluster = cluster.clone();
        tokio::spawn(async move { cluster.spawn("late", spec).await.is_ok() })
    };
    let js = jetstream(&server).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while stream_state(&js, "ISOLA_TASKS").await.0 == 0 {
        assert!(Instant::now() < deadline, "the task was never queued");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    spawning.abort();
    assert!(spawning.await.is_err(), "no worker could have started it");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _worker = WorkerProc::start(&server.url(), "late", &["-j", "1"]);
    // The worker's word on the task: it was not run.
    while stream_state(&js, "ISOLA_RESULTS").await.0 == 0 {
        assert!(Instant::now() < deadline, "the worker never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stream = js.get_stream("ISOLA_RESULTS").await.expect("results");
    let result = stream.get_raw_message(1).await.expect("the result");
    let text = String::from_utf8_lossy(&result.payload).to_lowercase();
    assert!(text.contains("cancelled"), "{text}");
    assert!(!text.contains("exited"), "{text}");
    drop(cluster);
}

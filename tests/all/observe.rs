//! Seeing what ran: `isola up --timeline` (Chrome trace-event JSON),
//! `--report` (a self-contained HTML page, checked in headless Chromium)
//! and `--metrics-addr` (a Prometheus endpoint scraped while a set runs).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use isola_tests::{GuestKind, guest, isola_bin, shared_cache, wat_file};
use serde_json::Value;

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// A guest that writes markup to stderr and exits 1: its stderr tail ends
/// up in the HTML report, which must show it as text.
const MARKUP_ON_STDERR: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "<img src=x onerror=\"document.title='pwned'\"><script>document.title='pwned'</script>\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 84))
    (drop (call $fd_write (i32.const 2) (i32.const 0) (i32.const 1) (i32.const 8)))
    (call $exit (i32.const 1))))"#;

/// A set of every kind of ending, on two slots: successes at both
/// isolation levels, a failure with markup on stderr, a timeout, a process
/// task that exits non-zero, and a task skipped because its dependency
/// failed.
fn mixed_set(dir: &Path) -> PathBuf {
    let hello = guest("hello", GuestKind::Module);
    let hostile = guest("hostile", GuestKind::Module);
    let markup = wat_file(dir, "markup", MARKUP_ON_STDERR);
    let toml = format!(
        r#"
[[task]]
name = "hello-thread"
wasm = '{hello}'

[[task]]
name = "hello-process"
wasm = '{hello}'
isolation = "process"

[[task]]
name = "markup"
wasm = '{markup}'

[[task]]
name = "spinner"
wasm = '{hostile}'
args = ["loop"]
limits = {{ timeout = "200ms" }}

[[task]]
name = "exits-3"
wasm = '{hostile}'
args = ["exit", "3"]
isolation = "process"

[[task]]
name = "after-markup"
wasm = '{hello}'
depends_on = ["markup"]

[[task]]
name = "sleeper"
wasm = '{hostile}'
args = ["sleep", "150"]
depends_on = ["hello-thread"]
"#,
        hello = path_str(&hello),
        hostile = path_str(&hostile),
        markup = path_str(&markup),
    );
    let path = dir.join("tasks.toml");
    std::fs::write(&path, toml).expect("write tasks.toml");
    path
}

const MIXED_TASKS: [&str; 7] = [
    "hello-thread",
    "hello-process",
    "markup",
    "spinner",
    "exits-3",
    "after-markup",
    "sleeper",
];

/// `isola up` with `extra` flags before the set, waited for.
fn up(set: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(isola_bin())
        .arg("up")
        .args(extra)
        .arg(set)
        .env("ISOLA_CACHE_DIR", shared_cache())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .expect("isola up runs")
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{} was written: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is JSON: {e}", path.display()))
}

fn records(report: &Value) -> BTreeMap<String, Value> {
    report["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .map(|t| (t["name"].as_str().expect("name").to_owned(), t.clone()))
        .collect()
}

#[test]
fn the_timeline_puts_each_task_on_its_slot_with_its_phases_and_endings() {
    let dir = tempfile::tempdir().expect("tempdir");
    let set = mixed_set(dir.path());
    let timeline = dir.path().join("timeline.json");
    let json = dir.path().join("report.json");
    let out = up(
        &set,
        &[
            "--jobs",
            "2",
            "--timeline",
            path_str(&timeline),
            "--json",
            path_str(&json),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "a task failed: {out:?}");
    let report = read_json(&json);
    let records = records(&report);
    let trace = read_json(&timeline);
    let events = trace["traceEvents"].as_array().expect("traceEvents");

    // Slots are named tracks of one process.
    let names: BTreeSet<(u64, u64, String)> = events
        .iter()
        .filter(|e| e["ph"] == "M" && e["name"] == "thread_name")
        .map(|e| {
            (
                e["pid"].as_u64().expect("pid"),
                e["tid"].as_u64().expect("tid"),
                e["args"]["name"].as_str().expect("name").to_owned(),
            )
        })
        .collect();
    assert!(names.contains(&(1, 1, "slot 1".into())), "{names:?}");
    assert!(names.contains(&(1, 2, "slot 2".into())), "{names:?}");

    // Every task that ran has one span on the slot its record names, with
    // the record's times (µs) and outcome.
    let spans: Vec<&Value> = events
        .iter()
        .filter(|e| e["ph"] == "X" && e["pid"] == 1 && e["cat"] == "task")
        .collect();
    let mut by_slot: BTreeMap<u64, Vec<(f64, f64)>> = BTreeMap::new();
    for (name, record) in &records {
        if record["status"] == "skipped" {
            assert!(
                spans.iter().all(|s| s["name"] != name.as_str()),
                "{name} never ran"
            );
            continue;
        }
        let matching: Vec<&&Value> = spans
            .iter()
            .filter(|s| s["name"] == name.as_str())
            .collect();
        assert_eq!(matching.len(), 1, "one span for {name}: {matching:?}");
        let span = matching[0];
        let slot = record["slot"].as_u64().expect("a task that ran has a slot");
        assert!(slot < 2, "{name}: slot {slot} of 2");
        assert_eq!(span["tid"].as_u64(), Some(slot + 1), "{name}");
        let ts = span["ts"].as_f64().expect("ts");
        let dur = span["dur"].as_f64().expect("dur");
        let started_us = record["started_at_ms"].as_f64().expect("started") * 1000.0;
        let wall_us = record["wall_ms"].as_f64().expect("wall") * 1000.0;
        assert!(
            (ts - started_us).abs() < 2.0,
            "{name}: ts {ts} vs {started_us}"
        );
        assert!(
            (dur - wall_us).abs() < 2.0,
            "{name}: dur {dur} vs {wall_us}"
        );
        assert_eq!(span["args"]["isolation"], record["isolation"], "{name}");
        by_slot.entry(slot).or_default().push((ts, ts + dur));

        // Its phases lie inside it.
        for phase in ["startup", "run"] {
            let inner: Vec<&Value> = events
                .iter()
                .filter(|e| {
                    e["ph"] == "X" && e["cat"] == phase && e["pid"] == 1 && e["tid"] == span["tid"]
                })
                .filter(|e| {
                    let t = e["ts"].as_f64().unwrap_or(-1.0);
                    t >= ts - 1.0 && t <= ts + dur + 1.0
                })
                .collect();
            assert!(!inner.is_empty(), "{name} has a {phase} span");
            for e in inner {
                let end = e["ts"].as_f64().unwrap_or(0.0) + e["dur"].as_f64().unwrap_or(0.0);
                assert!(end <= ts + dur + 1.0, "{name}: {phase} ends inside: {e}");
            }
        }
    }
    // A slot runs one task at a time.
    for (slot, mut spans) in by_slot {
        spans.sort_by(|a, b| a.0.total_cmp(&b.0));
        for pair in spans.windows(2) {
            assert!(
                pair[0].1 <= pair[1].0 + 1.0,
                "slot {slot}: {pair:?} overlap"
            );
        }
    }
    // Waits are drawn on a track of their own, and the process tasks on
    // their workers' tracks.
    assert!(
        events
            .iter()
            .any(|e| e["ph"] == "X" && e["pid"] == 2 && e["name"] == "wait"),
        "wait spans"
    );
    for name in ["hello-process", "exits-3"] {
        let pid = records[name]["worker_pid"]
            .as_u64()
            .unwrap_or_else(|| panic!("{name} names its worker"));
        assert!(
            events
                .iter()
                .any(|e| e["ph"] == "X" && e["pid"] == 3 && e["tid"].as_u64() == Some(pid)),
            "{name} on worker {pid}'s track"
        );
    }
    // The timeout is an instant event.
    assert!(
        events.iter().any(|e| e["ph"] == "i"
            && e["name"]
                .as_str()
                .is_some_and(|n| n.contains("limit") || n.contains("timed out"))),
        "an instant for the spinner's timeout: {events:#?}"
    );
}

#[test]
fn files_that_cannot_be_written_are_refused_before_anything_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let set = mixed_set(dir.path());
    for flag in ["--timeline", "--report"] {
        let out = up(&set, &[flag, "/nonexistent-dir/out"]);
        assert_eq!(out.status.code(), Some(2), "{flag}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(flag) && stderr.contains("/nonexistent-dir/out"),
            "{flag}: {stderr}"
        );
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("started"),
            "{flag}: nothing ran"
        );
    }
}

/// Where Chromium is, if it is installed.
fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|dir| dir.join(name))
                    .find(|p| p.is_file())
            })
        })
}

/// Headless Chromium with `args` on `page`: (stdout, stderr). Its console
/// messages are logged to stderr.
fn headless(chromium: &Path, profile: &Path, args: &[&str], page: &Path) -> (String, String) {
    let url = format!("file://{}", page.display());
    let out = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(&url)
        .stdin(Stdio::null())
        .output()
        .expect("chromium runs");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Console errors in Chromium's log: uncaught exceptions and
/// `console.error`.
fn console_errors(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("CONSOLE") && (l.contains("Uncaught") || l.contains("Error")))
        .collect()
}

#[test]
fn the_html_report_renders_every_task_in_chromium_without_errors() {
    let Some(chromium) = chromium() else {
        eprintln!(
            "SKIPPED: chromium is not installed (`make test` installs it as root: apt-get install chromium)"
        );
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let set = mixed_set(dir.path());
    let page = dir.path().join("report.html");
    let out = up(&set, &["--jobs", "2", "--report", path_str(&page)]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let html = std::fs::read_to_string(&page).expect("report written");
    // Self-contained: nothing is fetched.
    for reference in [
        "src=\"http",
        "href=\"http",
        "src='http",
        "@import",
        "url(http",
    ] {
        assert!(!html.contains(reference), "{reference} in the page");
    }

    let profile = tempfile::tempdir().expect("profile");
    let (dom, log) = headless(&chromium, profile.path(), &["--dump-dom"], &page);
    assert!(
        dom.contains("data-rendered=\"yes\""),
        "the page's script ran to its end: {}\n{log}",
        &dom[..dom.len().min(2000)]
    );
    assert!(console_errors(&log).is_empty(), "console errors: {log}");
    for name in MIXED_TASKS {
        assert!(
            dom.contains(&format!("data-task=\"{name}\"")) || dom.contains(name),
            "{name} in the page"
        );
    }
    // The failing task's stderr is shown as text, not run as markup.
    assert!(dom.contains("&lt;img src=x"), "the markup is text");
    assert!(!dom.contains("<title>pwned</title>"), "no guest script ran");

    // The console check itself sees an error when there is one.
    let broken = dir.path().join("broken.html");
    std::fs::write(
        &broken,
        "<!doctype html><body><script>undefinedFunction()</script></body>",
    )
    .expect("write");
    let (_, log) = headless(&chromium, profile.path(), &["--dump-dom"], &broken);
    assert!(
        !console_errors(&log).is_empty(),
        "a broken page is caught: {log}"
    );

    // A screenshot a person can look at (kept in target/ after the run).
    let shot = isola_tests::target_dir().join("report-screenshot.png");
    let _ = std::fs::remove_file(&shot);
    let screenshot = format!("--screenshot={}", shot.display());
    headless(
        &chromium,
        profile.path(),
        &[&screenshot, "--window-size=1280,1600", "--hide-scrollbars"],
        &page,
    );
    let png = std::fs::read(&shot).expect("a screenshot was taken");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
    let width = u32::from_be_bytes(png[16..20].try_into().expect("IHDR width"));
    let height = u32::from_be_bytes(png[20..24].try_into().expect("IHDR height"));
    assert_eq!((width, height), (1280, 1600));
    // A blank page compresses to a few KiB; the chart and table do not.
    assert!(
        png.len() > 20_000,
        "the screenshot has content: {} bytes",
        png.len()
    );
}

/// A free loopback port (free when this returns; a test server binds it
/// right after).
fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

/// The body of `GET /metrics` at `addr`, if it answers.
fn scrape(addr: SocketAddr) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
}

/// Sum of the samples of `name` whose labels include every `k="v"` in
/// `labels`.
fn sample(body: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = match series.split_once('{') {
                Some((m, rest)) => (m, rest),
                None => (series, ""),
            };
            (metric == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse::<f64>().ok())
            .flatten()
        })
        .sum()
}

#[test]
fn metrics_scraped_while_a_set_runs_agree_with_its_report() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hello = guest("hello", GuestKind::Module);
    let hostile = guest("hostile", GuestKind::Module);
    // Three quick tasks, then one that sleeps long enough to be scraped
    // while it runs.
    let toml = format!(
        r#"
[[task]]
name = "a"
wasm = '{hello}'

[[task]]
name = "b"
wasm = '{hello}'
isolation = "process"

[[task]]
name = "c"
wasm = '{hostile}'
args = ["exit", "4"]

[[task]]
name = "last"
wasm = '{hostile}'
args = ["sleep", "4000"]
depends_on = ["a", "b"]
"#,
        hello = path_str(&hello),
        hostile = path_str(&hostile)
    );
    let set = dir.path().join("tasks.toml");
    std::fs::write(&set, toml).expect("write");
    let json = dir.path().join("report.json");
    let addr = free_port();
    let child = Command::new(isola_bin())
        .args([
            "up",
            "--jobs",
            "2",
            "--metrics-addr",
            &addr.to_string(),
            "--json",
        ])
        .arg(&json)
        .arg(&set)
        .env("ISOLA_CACHE_DIR", shared_cache())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("isola up");

    // Wait until the three quick tasks have ended, then read once more
    // while `last` still runs.
    let deadline = Instant::now() + Duration::from_secs(30);
    let body = loop {
        assert!(Instant::now() < deadline, "the quick tasks ended in time");
        if let Some(body) = scrape(addr)
            && sample(&body, "isola_tasks_ended_total", &[]) >= 3.0
            && sample(&body, "isola_tasks_running", &[]) >= 1.0
        {
            break body;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().expect("isola up ends");
    assert_eq!(out.status.code(), Some(1), "c failed: {out:?}");
    let report = read_json(&json);
    let records = records(&report);

    // What the endpoint said while `last` ran matches the records of the
    // tasks that had ended by then.
    let ended = ["a", "b", "c"];
    let count =
        |pred: &dyn Fn(&Value) -> bool| ended.iter().filter(|n| pred(&records[**n])).count() as f64;
    assert_eq!(sample(&body, "isola_tasks_ended_total", &[]), 3.0, "{body}");
    assert_eq!(
        sample(
            &body,
            "isola_tasks_ended_total",
            &[("outcome", "exited_ok")]
        ),
        count(&|r| r["exit_code"] == 0),
        "{body}"
    );
    assert_eq!(
        sample(
            &body,
            "isola_tasks_ended_total",
            &[("outcome", "exited_error")]
        ),
        count(&|r| r["exit_code"] == 4),
        "{body}"
    );
    assert_eq!(
        sample(
            &body,
            "isola_tasks_ended_total",
            &[("isolation", "process")]
        ),
        count(&|r| r["isolation"] == "process"),
        "{body}"
    );
    assert_eq!(
        sample(
            &body,
            "isola_tasks_started_total",
            &[("isolation", "thread")]
        ),
        3.0,
        "a, c and last: {body}"
    );
    assert_eq!(
        sample(&body, "isola_tasks_running", &[("isolation", "thread")]),
        1.0
    );
    assert_eq!(
        sample(&body, "isola_taskset_slots", &[("state", "busy")]),
        1.0
    );
    assert_eq!(
        sample(&body, "isola_taskset_slots", &[("state", "free")]),
        1.0
    );
    assert_eq!(
        sample(&body, "isola_task_wall_seconds_count", &[]),
        3.0,
        "one wall time per ended task: {body}"
    );
    assert!(
        sample(&body, "isola_worker_processes_started_total", &[]) >= 1.0,
        "b's worker: {body}"
    );
    assert!(
        sample(&body, "isola_compile_cache_hits_total", &[])
            + sample(&body, "isola_compiles_total", &[])
            >= 2.0,
        "hello and hostile were loaded: {body}"
    );
    assert!(body.contains("# HELP isola_tasks_ended_total"), "{body}");
    assert!(
        body.contains("isola_task_run_seconds_bucket{"),
        "histograms: {body}"
    );
}

#[test]
fn a_metrics_address_that_cannot_be_bound_is_refused_by_name() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let dir = tempfile::tempdir().expect("tempdir");
    let set = mixed_set(dir.path());
    let out = up(&set, &["--metrics-addr", &addr.to_string()]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--metrics-addr") && stderr.contains(&addr.to_string()),
        "{stderr}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("started"));
}

/// What a `tracing` layer saw of the spans Isola made: name, fields and
/// the parent's name.
#[derive(Default)]
struct SeenSpans(std::sync::Mutex<Vec<Seen>>);

type Seen = (u64, String, BTreeMap<String, String>, Option<String>);

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.0.insert(field.name().to_owned(), value.to_string());
    }
}

struct Recorder(std::sync::Arc<SeenSpans>);

impl<S> tracing_subscriber::Layer<S> for Recorder
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let mut fields = BTreeMap::new();
        attrs.record(&mut Fields(&mut fields));
        let parent = ctx
            .span(id)
            .and_then(|span| span.parent().map(|p| p.name().to_owned()));
        let mut seen = self.0.0.lock().unwrap_or_else(|e| e.into_inner());
        seen.push((
            id.into_u64(),
            attrs.metadata().name().to_owned(),
            fields,
            parent,
        ));
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let _ = ctx;
        let mut seen = self.0.0.lock().unwrap_or_else(|e| e.into_inner());
        // Ids are reused once a span closes: the latest span with this id.
        if let Some(entry) = seen.iter_mut().rev().find(|e| e.0 == id.into_u64()) {
            values.record(&mut Fields(&mut entry.2));
        }
    }
}

/// Each task of a set runs in an `isola.task` span (id, program,
/// isolation, and the worker's pid for a process task) inside the set's
/// `isola.taskset.task` span for it (name, isolation, slot), so an
/// embedder's subscriber, OpenTelemetry's included, sees one span per task.
#[test]
fn every_task_runs_in_a_tracing_span_with_its_identity() {
    use isola::config::{TaskConfig, TaskSet};
    use isola::taskset::Scheduler;
    use tracing_subscriber::layer::SubscriberExt;

    let seen = std::sync::Arc::new(SeenSpans::default());
    let subscriber = tracing_subscriber::registry().with(Recorder(std::sync::Arc::clone(&seen)));
    let mut thread = isola::TaskSpec::new(guest("hello", GuestKind::Module));
    thread.isolation = isola::Isolation::Thread;
    let mut process = thread.clone();
    process.isolation = isola::Isolation::Process;
    let set = TaskSet::new(vec![
        TaskConfig::new("in-a-thread", thread),
        TaskConfig::new("in-a-process", process),
    ])
    .expect("valid set");
    let report = tracing::subscriber::with_default(subscriber, || {
        // One thread: the subscriber set here is this thread's default.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let scheduler = Scheduler::new(isola_tests::runner()).jobs(2);
            scheduler.run(&set).await
        })
    });
    assert!(report.succeeded(), "{:#?}", report.tasks);

    let seen = seen.0.lock().unwrap_or_else(|e| e.into_inner());
    for (name, isolation) in [("in-a-thread", "thread"), ("in-a-process", "process")] {
        let set_span = seen
            .iter()
            .find(|(_, span, fields, _)| {
                span == "isola.taskset.task" && fields.get("name").map(String::as_str) == Some(name)
            })
            .unwrap_or_else(|| panic!("a set span for {name}: {seen:#?}"));
        assert_eq!(
            set_span.2.get("isolation").map(String::as_str),
            Some(isolation)
        );
        assert!(set_span.2.contains_key("slot"), "{set_span:?}");
    }
    let tasks: Vec<_> = seen
        .iter()
        .filter(|(_, span, _, _)| span == "isola.task")
        .collect();
    assert_eq!(tasks.len(), 2, "{seen:#?}");
    for (_, _, fields, parent) in &tasks {
        assert_eq!(parent.as_deref(), Some("isola.taskset.task"), "{fields:?}");
        assert!(
            fields.get("id").is_some_and(|id| id.starts_with("task-")),
            "{fields:?}"
        );
        assert_eq!(
            fields.get("program").map(String::as_str),
            Some("hello.wasm")
        );
    }
    let process_task = tasks
        .iter()
        .find(|(_, _, fields, _)| fields.get("isolation").map(String::as_str) == Some("process"))
        .expect("the process task's span");
    let pid = report
        .get("in-a-process")
        .and_then(|r| r.worker_pid)
        .expect("its worker pid");
    assert_eq!(process_task.2.get("pid"), Some(&pid.to_string()));
}

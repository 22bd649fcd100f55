//! A task set's report as a Chrome trace: the JSON object form of the
//! Trace Event Format, which Perfetto (<https://ui.perfetto.dev>) and
//! `chrome://tracing` open.
//!
//! The trace has three processes: the pool's slots (what ran where, with
//! each task's start-up, run and crashed attempts, and markers for limits,
//! crashes, restarts and cancels), the tasks' waits for a slot, and the
//! worker processes of process tasks.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Map, Value, json};

use super::{SetReport, TaskRecord, TaskStatus};
use crate::outcome::{Limit, Outcome};

/// The process holding one thread (track) per slot of the pool.
const SLOTS_PID: u32 = 1;
/// The process holding one thread per task that waited for a slot.
const WAITING_PID: u32 = 2;
/// The process holding one thread per worker process.
const WORKERS_PID: u32 = 3;

/// The report as a Chrome trace (Trace Event Format, JSON object form),
/// ready to be written with `serde_json` and opened in Perfetto or
/// `chrome://tracing`. Timestamps are microseconds from the start of the
/// set.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let set = isola::config::TaskSet::new(Vec::new())?;
/// # let report = isola::taskset::Scheduler::new(isola::Runner::new()?).run(&set).await;
/// # let dir = tempfile::tempdir()?;
/// # std::env::set_current_dir(dir.path())?;
/// let trace = isola::taskset::timeline::chrome_trace(&report);
/// std::fs::write("trace.json", serde_json::to_string(&trace)?)?;
/// # Ok(()) }
/// ```
pub fn chrome_trace(report: &SetReport) -> Value {
    let mut events = Vec::new();
    let mut waiting_threads = BTreeSet::new();
    let mut workers = BTreeSet::new();

    // Every slot gets its track, used or not, so the pool's width shows.
    let slots: BTreeSet<usize> = (0..report.pool.jobs)
        .chain(report.tasks.iter().filter_map(|t| t.slot))
        .collect();
    events.extend(process_metadata(SLOTS_PID, "slots"));
    for &slot in &slots {
        events.extend(thread_metadata(
            SLOTS_PID,
            tid_of(slot),
            &format!("slot {}", slot.saturating_add(1)),
            slot,
        ));
    }

    for (index, record) in report.tasks.iter().enumerate() {
        let args = task_args(record);
        let spans = Spans::of(record);
        if let (Some(slot), Some(spans)) = (record.slot, &spans) {
            slot_events(&mut events, record, tid_of(slot), spans, &args);
        }
        if let (Some(pid), Some(spans)) = (record.worker_pid, &spans) {
            workers.insert(pid);
            events.push(complete(
                &record.name,
                "worker",
                WORKERS_PID,
                u64::from(pid),
                spans.last_attempt,
                spans.end,
                args.clone(),
            ));
        }
        if wait_events(&mut events, record, tid_of(index)) {
            waiting_threads.insert(index);
        }
    }

    if !waiting_threads.is_empty() {
        events.extend(process_metadata(WAITING_PID, "waiting"));
        for &index in &waiting_threads {
            if let Some(record) = report.tasks.get(index) {
                events.extend(thread_metadata(
                    WAITING_PID,
                    tid_of(index),
                    &record.name,
                    index,
                ));
            }
        }
    }
    if !workers.is_empty() {
        events.extend(process_metadata(WORKERS_PID, "worker processes"));
        for (order, &pid) in workers.iter().enumerate() {
            events.extend(thread_metadata(
                WORKERS_PID,
                u64::from(pid),
                &format!("worker {pid}"),
                order,
            ));
        }
    }

    json!({
        "traceEvents": events,
        "displayTimeUnit": "ms",
        "otherData": {
            "report_version": report.version,
            "jobs": report.pool.jobs,
            "max_running": report.pool.max_running,
            "utilization": report.pool.utilization,
            "wall_ms": ms(report.pool.wall_time),
            "busy_ms": ms(report.pool.busy_time),
            "tasks": report.tasks.len(),
            "counts": serde_json::to_value(report.counts()).unwrap_or(Value::Null),
            "stopped": serde_json::to_value(&report.stopped).unwrap_or(Value::Null),
        },
    })
}

/// Where a task's slot time went, every point clamped into it: a report
/// read from JSON, or clocks read at slightly different moments, must not
/// draw a child span outside its parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Spans {
    /// When the task got its slot.
    pub(super) start: Duration,
    /// When it gave the slot back (never before `start`).
    pub(super) end: Duration,
    /// When each crashed attempt ended, in order.
    pub(super) restarts: Vec<Duration>,
    /// When the last attempt began: the last restart, or `start`.
    pub(super) last_attempt: Duration,
    /// When the last attempt's start-up ended (`last_attempt` if it never
    /// started up).
    pub(super) startup_end: Duration,
    /// When the last attempt's guest ended (`startup_end` if it never ran).
    pub(super) run_end: Duration,
}

impl Spans {
    /// The spans of a task that got a slot; `None` for one that did not.
    pub(super) fn of(record: &TaskRecord) -> Option<Spans> {
        let start = record.started_at?;
        let end = record.finished_at?.max(start);
        let mut restarts = Vec::with_capacity(record.restarted_at.len());
        let mut previous = start;
        for &at in &record.restarted_at {
            let at = at.max(previous).min(end);
            restarts.push(at);
            previous = at;
        }
        let last_attempt = previous;
        // The durations of an attempt that never started up (a start error,
        // a cancel while starting) are zeros that mean nothing.
        let ran = record.outcome.is_some() && record.start_error.is_none();
        let (startup_end, run_end) = if ran {
            let startup_end = last_attempt.saturating_add(record.startup).min(end);
            let run_end = startup_end.saturating_add(record.run_time).min(end);
            (startup_end, run_end)
        } else {
            (last_attempt, last_attempt)
        };
        Some(Spans {
            start,
            end,
            restarts,
            last_attempt,
            startup_end,
            run_end,
        })
    }
}

/// The events of a task on its slot's track: its whole slot time, its
/// crashed attempts, the last attempt's start-up and run, and markers.
fn slot_events(
    events: &mut Vec<Value>,
    record: &TaskRecord,
    tid: u64,
    spans: &Spans,
    args: &Value,
) {
    events.push(complete(
        &record.name,
        "task",
        SLOTS_PID,
        tid,
        spans.start,
        spans.end,
        args.clone(),
    ));
    let mut attempt_start = spans.start;
    for (k, &at) in spans.restarts.iter().enumerate() {
        let crash = record.crashes.get(k);
        let crash_text = crash.map_or_else(|| "crashed".to_owned(), Outcome::to_string);
        events.push(complete(
            &format!("attempt {} (crashed)", k + 1),
            "attempt",
            SLOTS_PID,
            tid,
            attempt_start,
            at,
            json!({ "task": record.name, "outcome": crash_text }),
        ));
        // An outcome's text already begins with "crashed" and says how.
        let name = match crash {
            Some(Outcome::Crashed { .. }) => crash_text.clone(),
            _ => "crashed".to_owned(),
        };
        events.push(instant(
            &name,
            SLOTS_PID,
            tid,
            at,
            json!({ "task": record.name, "outcome": crash_text }),
        ));
        events.push(instant(
            "restarted",
            SLOTS_PID,
            tid,
            at,
            json!({ "task": record.name, "attempt": k + 2 }),
        ));
        attempt_start = at;
    }
    // Zero-length slices draw nothing yet crowd Perfetto's slice list.
    if spans.startup_end > spans.last_attempt {
        events.push(complete(
            "start-up",
            "startup",
            SLOTS_PID,
            tid,
            spans.last_attempt,
            spans.startup_end,
            json!({ "task": record.name, "startup_ms": ms(record.startup) }),
        ));
    }
    if spans.run_end > spans.startup_end {
        events.push(complete(
            "run",
            "run",
            SLOTS_PID,
            tid,
            spans.startup_end,
            spans.run_end,
            json!({ "task": record.name, "run_ms": ms(record.run_time) }),
        ));
    }
    let marker = match &record.outcome {
        _ if record.start_error.is_some() => Some("failed to start".to_owned()),
        Some(Outcome::LimitExceeded {
            limit: Limit::Timeout { .. },
        }) => Some("timed out".to_owned()),
        Some(Outcome::LimitExceeded { limit }) => Some(format!("limit exceeded: {limit}")),
        Some(outcome @ Outcome::Crashed { .. }) => Some(outcome.to_string()),
        Some(Outcome::Cancelled) => Some("cancelled".to_owned()),
        _ => None,
    };
    if let Some(name) = marker {
        events.push(instant(
            &name,
            SLOTS_PID,
            tid,
            spans.end,
            json!({ "task": record.name, "outcome": record.describe() }),
        ));
    }
}

/// The events of a task on its own track of the "waiting" process: its
/// wait for a slot, or where it was skipped. Returns whether there were
/// any.
fn wait_events(events: &mut Vec<Value>, record: &TaskRecord, tid: u64) -> bool {
    let mut any = false;
    // A task skipped while queued waited until it was skipped.
    let wait_end = match record.started_at {
        Some(started) => Some(started),
        None if record.status == TaskStatus::Skipped => record.finished_at,
        None => None,
    };
    if let (Some(queued), Some(end)) = (record.queued_at, wait_end)
        && end > queued
    {
        events.push(complete(
            "wait",
            "wait",
            WAITING_PID,
            tid,
            queued,
            end,
            json!({
                "task": record.name,
                "status": record.status.to_string(),
                "wait_ms": ms(end - queued),
            }),
        ));
        any = true;
    }
    if record.status == TaskStatus::Skipped && record.started_at.is_none() {
        let name = match &record.skip_reason {
            Some(reason) => format!("skipped: {reason}"),
            None => "skipped".to_owned(),
        };
        events.push(instant(
            &name,
            WAITING_PID,
            tid,
            record.queued_at.unwrap_or(Duration::ZERO),
            json!({ "task": record.name, "outcome": record.describe() }),
        ));
        any = true;
    }
    any
}

/// What Perfetto shows when a task's slices are selected.
fn task_args(record: &TaskRecord) -> Value {
    let mut args = Map::new();
    args.insert("status".into(), json!(record.status.to_string()));
    args.insert("outcome".into(), json!(record.describe()));
    args.insert("isolation".into(), json!(record.isolation.to_string()));
    args.insert("attempts".into(), json!(record.attempts));
    if let Some(code) = record.exit_code {
        args.insert("exit_code".into(), json!(code));
    }
    // Unmeasured metrics read 0, which would pass for a measurement.
    if record.metrics_known {
        args.insert("peak_memory_bytes".into(), json!(record.peak_memory));
        args.insert("fuel_used".into(), json!(record.fuel_used));
    }
    args.insert("startup_ms".into(), json!(ms(record.startup)));
    args.insert("run_ms".into(), json!(ms(record.run_time)));
    if let Some(wait) = record.wait_time {
        args.insert("wait_ms".into(), json!(ms(wait)));
    }
    if let Some(pid) = record.worker_pid {
        args.insert("worker_pid".into(), json!(pid));
    }
    Value::Object(args)
}

/// A complete (`X`) event from `start` to `end`.
fn complete(
    name: &str,
    cat: &str,
    pid: u32,
    tid: u64,
    start: Duration,
    end: Duration,
    args: Value,
) -> Value {
    json!({
        "name": name,
        "cat": cat,
        "ph": "X",
        "pid": pid,
        "tid": tid,
        "ts": micros(start),
        "dur": micros(end.saturating_sub(start)),
        "args": args,
    })
}

/// A thread-scoped instant (`i`) event at `at`.
fn instant(name: &str, pid: u32, tid: u64, at: Duration, args: Value) -> Value {
    json!({
        "name": name,
        "cat": "marker",
        "ph": "i",
        "s": "t",
        "pid": pid,
        "tid": tid,
        "ts": micros(at),
        "args": args,
    })
}

/// A process's name, and its place among processes (the pid order).
fn process_metadata(pid: u32, name: &str) -> [Value; 2] {
    [
        json!({
            "name": "process_name", "ph": "M", "pid": pid, "tid": 0, "ts": 0,
            "args": { "name": name },
        }),
        json!({
            "name": "process_sort_index", "ph": "M", "pid": pid, "tid": 0, "ts": 0,
            "args": { "sort_index": pid },
        }),
    ]
}

/// A thread's name and its place in its process.
fn thread_metadata(pid: u32, tid: u64, name: &str, order: usize) -> [Value; 2] {
    [
        json!({
            "name": "thread_name", "ph": "M", "pid": pid, "tid": tid, "ts": 0,
            "args": { "name": name },
        }),
        json!({
            "name": "thread_sort_index", "ph": "M", "pid": pid, "tid": tid, "ts": 0,
            "args": { "sort_index": order },
        }),
    ]
}

/// The thread id of a 0-based slot or task index: tid 0 is avoided, as
/// some viewers treat it as "no thread".
fn tid_of(index: usize) -> u64 {
    u64::try_from(index).map_or(u64::MAX, |i| i.saturating_add(1))
}

/// A time in the trace's unit, microseconds.
fn micros(d: Duration) -> f64 {
    d.as_nanos() as f64 / 1000.0
}

/// Milliseconds to the microsecond, as the report's JSON writes them.
fn ms(d: Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Isolation;
    use crate::taskset::{REPORT_VERSION, SkipReason};

    fn millis(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    fn ran(name: &str, slot: usize, queued: u64, started: u64, finished: u64) -> TaskRecord {
        let mut r = TaskRecord::new(name, Isolation::Thread, TaskStatus::Succeeded);
        r.slot = Some(slot);
        r.queued_at = Some(millis(queued));
        r.started_at = Some(millis(started));
        r.finished_at = Some(millis(finished));
        r.wait_time = Some(millis(started - queued));
        r.wall_time = Some(millis(finished - started));
        r.attempts = 1;
        r.outcome = Some(Outcome::Exited { code: 0 });
        r.exit_code = Some(0);
        r.metrics_known = true;
        r
    }

    /// build (slot 1) then slow (slot 1, after waiting); flaky (slot 2)
    /// crashes once in a worker; after is skipped.
    fn sample() -> SetReport {
        let mut build = ran("build", 0, 0, 0, 50);
        build.startup = millis(10);
        build.run_time = millis(35);
        build.peak_memory = 65536;
        build.fuel_used = 1000;

        let mut flaky = ran("flaky", 1, 0, 0, 60);
        flaky.isolation = Isolation::Process;
        flaky.attempts = 2;
        flaky.crashes = vec![Outcome::Crashed {
            signal: Some(9),
            status: None,
            reason: None,
        }];
        flaky.restarted_at = vec![millis(20)];
        flaky.startup = millis(5);
        flaky.run_time = millis(30);
        flaky.worker_pid = Some(4242);
        flaky.metrics_known = false;

        let mut slow = ran("slow", 0, 5, 50, 150);
        slow.status = TaskStatus::Failed;
        slow.outcome = Some(Outcome::LimitExceeded {
            limit: Limit::Fuel { budget: 1000 },
        });
        slow.exit_code = None;
        slow.startup = millis(2);
        slow.run_time = millis(97);

        let mut after = TaskRecord::new("after", Isolation::Thread, TaskStatus::Skipped);
        after.skip_reason = Some(SkipReason::DependencyFailed {
            dependency: "slow".into(),
        });

        SetReport::of_tasks(vec![build, flaky, slow, after], 2)
    }

    fn events(trace: &Value) -> &Vec<Value> {
        trace["traceEvents"]
            .as_array()
            .expect("traceEvents is an array")
    }

    fn find<'a>(trace: &'a Value, ph: &str, name: &str) -> Vec<&'a Value> {
        events(trace)
            .iter()
            .filter(|e| e["ph"] == ph && e["name"] == name)
            .collect()
    }

    fn one<'a>(trace: &'a Value, ph: &str, name: &str) -> &'a Value {
        let found = find(trace, ph, name);
        assert_eq!(found.len(), 1, "one {ph} event named {name}: {found:?}");
        found[0]
    }

    /// The span of a task on its slot (a process task has another on its
    /// worker's track).
    fn task_span<'a>(trace: &'a Value, name: &str) -> &'a Value {
        let found: Vec<&Value> = find(trace, "X", name)
            .into_iter()
            .filter(|e| e["cat"] == "task")
            .collect();
        assert_eq!(found.len(), 1, "one task span named {name}: {found:?}");
        found[0]
    }

    fn num(v: &Value) -> f64 {
        v.as_f64().expect("a number")
    }

    #[test]
    fn every_task_that_ran_has_one_span_on_its_slot_in_microseconds() {
        let trace = chrome_trace(&sample());
        assert_eq!(trace["displayTimeUnit"], "ms");
        let tasks: Vec<&Value> = events(&trace)
            .iter()
            .filter(|e| e["ph"] == "X" && e["cat"] == "task")
            .collect();
        assert_eq!(tasks.len(), 3);
        for (name, tid, ts, dur) in [
            ("build", 1, 0.0, 50_000.0),
            ("flaky", 2, 0.0, 60_000.0),
            ("slow", 1, 50_000.0, 100_000.0),
        ] {
            let span = task_span(&trace, name);
            assert_eq!(span["pid"], SLOTS_PID, "{name}");
            assert_eq!(span["tid"], tid, "{name}");
            assert_eq!(num(&span["ts"]), ts, "{name}");
            assert_eq!(num(&span["dur"]), dur, "{name}");
        }
        assert!(find(&trace, "X", "after").is_empty());
    }

    #[test]
    fn child_spans_nest_inside_their_task() {
        let trace = chrome_trace(&sample());
        let all = events(&trace);
        let children: Vec<&Value> = all
            .iter()
            .filter(|e| e["ph"] == "X" && e["pid"] == SLOTS_PID && e["cat"] != "task")
            .collect();
        // build: start-up, run; flaky: attempt 1, start-up, run; slow: both.
        assert_eq!(children.len(), 7);
        for child in children {
            let task = &child["args"]["task"];
            let parent = all
                .iter()
                .find(|e| e["ph"] == "X" && e["cat"] == "task" && e["name"] == *task)
                .expect("the child's task has a span");
            assert_eq!(parent["tid"], child["tid"]);
            let (start, end) = (num(&child["ts"]), num(&child["ts"]) + num(&child["dur"]));
            let (p_start, p_end) = (num(&parent["ts"]), num(&parent["ts"]) + num(&parent["dur"]));
            assert!(
                p_start <= start && end <= p_end + 1e-6,
                "{child} in {parent}"
            );
        }
        // The last attempt of flaky begins at its restart.
        let attempt = one(&trace, "X", "attempt 1 (crashed)");
        assert_eq!(num(&attempt["dur"]), 20_000.0);
        let startups = find(&trace, "X", "start-up");
        let flaky_startup = startups
            .iter()
            .find(|e| e["args"]["task"] == "flaky")
            .expect("flaky's start-up");
        assert_eq!(num(&flaky_startup["ts"]), 20_000.0);
        assert_eq!(num(&flaky_startup["dur"]), 5_000.0);
    }

    #[test]
    fn spans_are_clamped_to_the_slot_time() {
        let mut task = ran("t", 0, 0, 10, 20);
        task.startup = millis(8);
        task.run_time = millis(50);
        task.restarted_at = vec![millis(5), millis(99)];
        let spans = Spans::of(&task).expect("it ran");
        assert_eq!(spans.restarts, vec![millis(10), millis(20)]);
        assert_eq!(spans.last_attempt, millis(20));
        assert_eq!(spans.run_end, millis(20));
        let mut short = ran("s", 0, 0, 10, 20);
        short.startup = millis(8);
        short.run_time = millis(50);
        let spans = Spans::of(&short).expect("it ran");
        assert_eq!((spans.startup_end, spans.run_end), (millis(18), millis(20)));
    }

    #[test]
    fn waits_and_skips_are_on_the_waiting_process() {
        let trace = chrome_trace(&sample());
        let waits = find(&trace, "X", "wait");
        // Only slow waited; build and flaky got a slot at once.
        assert_eq!(waits.len(), 1);
        let wait = waits[0];
        assert_eq!(wait["pid"], WAITING_PID);
        assert_eq!(wait["tid"], 3);
        assert_eq!(num(&wait["ts"]), 5_000.0);
        assert_eq!(num(&wait["dur"]), 45_000.0);

        let skipped = one(&trace, "i", "skipped: dependency `slow` did not succeed");
        assert_eq!(skipped["pid"], WAITING_PID);
        assert_eq!(skipped["tid"], 4);
        assert_eq!(num(&skipped["ts"]), 0.0);
    }

    #[test]
    fn restarts_and_limits_are_marked() {
        let trace = chrome_trace(&sample());
        let restarted = one(&trace, "i", "restarted");
        assert_eq!(restarted["s"], "t");
        assert_eq!(restarted["tid"], 2);
        assert_eq!(num(&restarted["ts"]), 20_000.0);
        let crashed = one(&trace, "i", "crashed: killed by signal 9");
        assert_eq!(num(&crashed["ts"]), 20_000.0);
        let limit = one(&trace, "i", "limit exceeded: fuel budget of 1000");
        assert_eq!(limit["pid"], SLOTS_PID);
        assert_eq!(limit["tid"], 1);
        assert_eq!(num(&limit["ts"]), 150_000.0);

        let mut timed_out = ran("late", 0, 0, 0, 10);
        timed_out.outcome = Some(Outcome::LimitExceeded {
            limit: Limit::Timeout { after: millis(10) },
        });
        let mut cancelled = ran("stopped", 1, 0, 0, 10);
        cancelled.outcome = Some(Outcome::Cancelled);
        let trace = chrome_trace(&SetReport::of_tasks(vec![timed_out, cancelled], 2));
        assert_eq!(one(&trace, "i", "timed out")["tid"], 1);
        assert_eq!(one(&trace, "i", "cancelled")["tid"], 2);
    }

    #[test]
    fn processes_and_threads_are_named() {
        let trace = chrome_trace(&sample());
        let names: Vec<(u64, u64, String)> = events(&trace)
            .iter()
            .filter(|e| e["ph"] == "M")
            .filter(|e| e["name"] == "process_name" || e["name"] == "thread_name")
            .map(|e| {
                (
                    e["pid"].as_u64().expect("pid"),
                    e["tid"].as_u64().expect("tid"),
                    e["args"]["name"].as_str().expect("a name").to_owned(),
                )
            })
            .collect();
        for expected in [
            (1, 0, "slots"),
            (1, 1, "slot 1"),
            (1, 2, "slot 2"),
            (2, 0, "waiting"),
            (2, 3, "slow"),
            (2, 4, "after"),
            (3, 0, "worker processes"),
            (3, 4242, "worker 4242"),
        ] {
            let (pid, tid, name) = expected;
            assert!(
                names
                    .iter()
                    .any(|n| n.0 == pid && n.1 == tid && n.2 == name),
                "{expected:?} in {names:?}"
            );
        }
    }

    #[test]
    fn workers_show_the_last_attempt_and_args_hide_unknown_metrics() {
        let trace = chrome_trace(&sample());
        let on_worker: Vec<&Value> = find(&trace, "X", "flaky")
            .into_iter()
            .filter(|e| e["pid"] == WORKERS_PID)
            .collect();
        assert_eq!(on_worker.len(), 1);
        assert_eq!(on_worker[0]["tid"], 4242);
        assert_eq!(num(&on_worker[0]["ts"]), 20_000.0);
        assert_eq!(num(&on_worker[0]["dur"]), 40_000.0);

        let build = &task_span(&trace, "build")["args"];
        assert_eq!(build["peak_memory_bytes"], 65536);
        assert_eq!(build["fuel_used"], 1000);
        assert_eq!(build["exit_code"], 0);
        assert_eq!(build["startup_ms"], 10.0);
        assert_eq!(build["status"], "succeeded");
        assert_eq!(build["isolation"], "thread");
        let flaky = &task_span(&trace, "flaky")["args"];
        assert!(flaky.get("peak_memory_bytes").is_none());
        assert!(flaky.get("fuel_used").is_none());
        assert_eq!(flaky["attempts"], 2);
        assert_eq!(flaky["worker_pid"], 4242);

        assert_eq!(trace["otherData"]["jobs"], 2);
        assert_eq!(trace["otherData"]["report_version"], REPORT_VERSION);
        assert_eq!(trace["otherData"]["wall_ms"], 150.0);
    }

    #[test]
    fn an_empty_set_is_a_valid_trace() {
        let trace = chrome_trace(&SetReport::of_tasks(Vec::new(), 1));
        let text = serde_json::to_string(&trace).expect("serializes");
        let back: Value = serde_json::from_str(&text).expect("parses");
        assert_eq!(find(&back, "M", "thread_name")[0]["args"]["name"], "slot 1");
        assert!(events(&back).iter().all(|e| e["ph"] == "M"));
    }
}

//! What running a task set leaves behind: one record per task and the
//! pool's metrics, serializable to JSON for machines.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::outcome::{Outcome, TaskMetrics};
use crate::spec::Isolation;

/// Version of the JSON layout of [`SetReport`]; raised on any change that
/// is not purely additive.
pub const REPORT_VERSION: u32 = 1;

/// How one task of a set ended, in one word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// Exited with code 0.
    Succeeded,
    /// Ran and ended otherwise (non-zero exit, trap, limit, crash), or could
    /// not start.
    Failed,
    /// Was running when the set was stopped (shutdown or fail-fast).
    Cancelled,
    /// Never started: see [`TaskRecord::skip_reason`].
    Skipped,
}

impl TaskStatus {
    /// Whether the task counts against the set: everything but success.
    pub fn is_failure(self) -> bool {
        self != TaskStatus::Succeeded
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TaskStatus::Succeeded => "succeeded",
            TaskStatus::Failed => "failed",
            TaskStatus::Cancelled => "cancelled",
            TaskStatus::Skipped => "skipped",
        })
    }
}

/// Why a task never started.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum SkipReason {
    /// A task it depends on (directly or not) did not succeed.
    DependencyFailed {
        /// The direct dependency that did not succeed.
        dependency: String,
    },
    /// Another task failed and the set runs with fail-fast.
    FailFast {
        /// The task whose failure stopped the set.
        failed: String,
    },
    /// The set was shut down (Ctrl-C, or the caller's shutdown signal).
    Shutdown,
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::DependencyFailed { dependency } => {
                write!(f, "dependency `{dependency}` did not succeed")
            }
            SkipReason::FailFast { failed } => write!(f, "fail-fast: `{failed}` failed"),
            SkipReason::Shutdown => f.write_str("cancelled before it started"),
        }
    }
}

/// Why a set stopped before running every task it could.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum StopReason {
    /// The shutdown signal fired.
    Shutdown,
    /// A task failed with fail-fast on.
    FailFast {
        /// The task that failed.
        failed: String,
    },
}

/// Everything recorded about one task of a set.
///
/// Times are offsets from the start of the set (`*_at`) or spans, all in
/// milliseconds in JSON. Metrics are those of the last attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// The task's name.
    pub name: String,
    /// Where it ran (or would have).
    pub isolation: Isolation,
    /// How it ended, in one word.
    pub status: TaskStatus,
    /// How the last attempt ended; `None` if the task never ran.
    pub outcome: Option<Outcome>,
    /// The exit code, when the task exited.
    pub exit_code: Option<i32>,
    /// What a plugin task's `run` returned, as text: the bytes themselves
    /// when they are UTF-8, else their hex digits. `None` for a task that
    /// returned nothing. The exact bytes are in `outcome`.
    #[serde(default)]
    pub returned: Option<String>,
    /// Why the task could not start (a missing or invalid Wasm file, an
    /// unsupported isolation...), when it could not.
    pub start_error: Option<String>,
    /// Why the task never started, when it was skipped.
    pub skip_reason: Option<SkipReason>,
    /// Attempts made: 0 if skipped, more than 1 after restarts.
    pub attempts: u32,
    /// The outcomes of the attempts that crashed and were restarted.
    pub crashes: Vec<Outcome>,
    /// When its dependencies had all succeeded and it began to wait for a
    /// slot.
    #[serde(rename = "queued_at_ms", with = "opt_ms")]
    pub queued_at: Option<Duration>,
    /// When it got a slot.
    #[serde(rename = "started_at_ms", with = "opt_ms")]
    pub started_at: Option<Duration>,
    /// When it gave the slot back.
    #[serde(rename = "finished_at_ms", with = "opt_ms")]
    pub finished_at: Option<Duration>,
    /// From queued to started: time spent waiting for a slot.
    #[serde(rename = "wait_ms", with = "opt_ms")]
    pub wait_time: Option<Duration>,
    /// From started to finished: the slot time, all attempts included.
    #[serde(rename = "wall_ms", with = "opt_ms")]
    pub wall_time: Option<Duration>,
    /// Loading, compiling (unless cached) and instantiating.
    #[serde(rename = "startup_ms", with = "ms")]
    pub startup: Duration,
    /// From the guest's first instruction to its end.
    #[serde(rename = "run_ms", with = "ms")]
    pub run_time: Duration,
    /// Largest linear memory reached, in bytes. Zero and meaningless when
    /// [`TaskRecord::metrics_known`] is false.
    pub peak_memory: u64,
    /// Fuel consumed (about one unit per Wasm instruction). Zero and
    /// meaningless when [`TaskRecord::metrics_known`] is false.
    pub fuel_used: u64,
    /// Whether `peak_memory` and `fuel_used` were measured. They are not
    /// for a process task whose worker never reported them: it crashed, or
    /// was killed after a cancel or timeout it did not answer, or broke
    /// the protocol. Then they read 0, which is no measurement: show them
    /// as unknown. False for a task that never ran.
    #[serde(default = "measured")]
    pub metrics_known: bool,
    /// The last lines (at most 20) a failed task wrote to stderr, for a
    /// record read without the console output; empty for any other task.
    #[serde(default)]
    pub stderr_tail: Vec<String>,
    /// Which of the set's slots it ran in, from 0 to `jobs - 1`: the lowest
    /// slot free when it started. `None` if it never got one.
    #[serde(default)]
    pub slot: Option<usize>,
    /// The worker process of its last attempt, for a process task that
    /// started one.
    #[serde(default)]
    pub worker_pid: Option<u32>,
    /// When each attempt that crashed and was restarted ended (offsets from
    /// the start of the set, as `*_at`), in the order of
    /// [`TaskRecord::crashes`].
    #[serde(default, rename = "restarted_at_ms", with = "vec_ms")]
    pub restarted_at: Vec<Duration>,
    /// The worker (its `--name`) that ran the last attempt, for a task run
    /// on a cluster (`isola up --nats`); `None` for a local one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// How many times the cluster delivered the last attempt to a worker
    /// before its result was recorded: 1 unless a worker died or stalled
    /// with it. `None` for a local task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deliveries: Option<u32>,
}

/// `metrics_known` of a record written before the field existed: its
/// metrics were taken as measured.
fn measured() -> bool {
    true
}

/// Whether a task's memory and fuel metrics were measured, from where it
/// ran and how it ended.
///
/// A thread task's are read from its store whatever the ending. A process
/// task's come from its worker's `finished` report; a worker that sent none
/// (it crashed, was killed after a cancel or timeout it did not answer, or
/// broke the protocol) measured nothing, and the parent fills in zeros. So
/// a crash is never measured, and a process task stopped from outside or
/// failed is measured only if its report came back, which shows as a
/// non-zero peak memory or fuel count: a worker that ran any guest code
/// counts fuel, and one that instantiated it counts memory.
pub(crate) fn metrics_known(
    isolation: Isolation,
    outcome: &Outcome,
    metrics: &TaskMetrics,
) -> bool {
    match isolation {
        Isolation::Thread => true,
        Isolation::Process => match outcome {
            Outcome::Crashed { .. } => false,
            _ => metrics.peak_memory != 0 || metrics.fuel_used != 0,
        },
    }
}

impl TaskRecord {
    pub(crate) fn new(name: &str, isolation: Isolation, status: TaskStatus) -> TaskRecord {
        TaskRecord {
            name: name.to_owned(),
            isolation,
            status,
            outcome: None,
            exit_code: None,
            returned: None,
            start_error: None,
            skip_reason: None,
            attempts: 0,
            crashes: Vec::new(),
            queued_at: None,
            started_at: None,
            finished_at: None,
            wait_time: None,
            wall_time: None,
            startup: Duration::ZERO,
            run_time: Duration::ZERO,
            peak_memory: 0,
            fuel_used: 0,
            metrics_known: false,
            stderr_tail: Vec::new(),
            slot: None,
            worker_pid: None,
            restarted_at: Vec::new(),
            worker: None,
            deliveries: None,
        }
    }

    /// One line on how the task ended: the outcome, the start error or the
    /// skip reason.
    pub fn describe(&self) -> String {
        if let Some(error) = &self.start_error {
            return format!("failed to start: {error}");
        }
        if let Some(reason) = &self.skip_reason {
            return format!("skipped: {reason}");
        }
        match &self.outcome {
            Some(outcome) => outcome.to_string(),
            None => self.status.to_string(),
        }
    }
}

/// A distribution of durations, like Piscina's `runTime` and `waitTime`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Histogram {
    /// Number of samples.
    pub count: usize,
    /// Smallest sample.
    #[serde(rename = "min_ms", with = "ms")]
    pub min: Duration,
    /// Arithmetic mean.
    #[serde(rename = "mean_ms", with = "ms")]
    pub mean: Duration,
    /// Median.
    #[serde(rename = "p50_ms", with = "ms")]
    pub p50: Duration,
    /// 90th percentile.
    #[serde(rename = "p90_ms", with = "ms")]
    pub p90: Duration,
    /// 99th percentile.
    #[serde(rename = "p99_ms", with = "ms")]
    pub p99: Duration,
    /// Largest sample.
    #[serde(rename = "max_ms", with = "ms")]
    pub max: Duration,
}

impl Histogram {
    /// The distribution of `samples` (nearest-rank percentiles). All zero
    /// when there are none.
    pub fn from_samples(mut samples: Vec<Duration>) -> Histogram {
        if samples.is_empty() {
            return Histogram::default();
        }
        samples.sort_unstable();
        let n = samples.len();
        // Nearest rank: the smallest sample with at least p% at or below it.
        let rank = |p: usize| samples[(n * p).div_ceil(100).clamp(1, n) - 1];
        let total: Duration = samples.iter().sum();
        Histogram {
            count: n,
            min: samples[0],
            mean: total / u32::try_from(n).unwrap_or(u32::MAX),
            p50: rank(50),
            p90: rank(90),
            p99: rank(99),
            max: samples[n - 1],
        }
    }
}

/// How the pool of slots was used over the whole set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolMetrics {
    /// Slots: the most tasks allowed to run at once.
    pub jobs: usize,
    /// The most tasks that did run at once.
    pub max_running: usize,
    /// From the start of the set to its end.
    #[serde(rename = "wall_ms", with = "ms")]
    pub wall_time: Duration,
    /// Slot time used by all tasks together.
    #[serde(rename = "busy_ms", with = "ms")]
    pub busy_time: Duration,
    /// `busy_time / (jobs × wall_time)`, from 0 to 1.
    pub utilization: f64,
    /// Time tasks waited for a slot once their dependencies were done.
    pub wait_time: Histogram,
    /// Time guests ran (from their first instruction to their end).
    pub run_time: Histogram,
}

/// Everything a task set's run leaves behind.
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
/// if !report.succeeded() {
///     for task in report.failures() {
///         eprintln!("{}: {}", task.name, task.describe());
///     }
/// }
/// std::fs::write("results.json", report.to_json()?)?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SetReport {
    /// [`REPORT_VERSION`].
    pub version: u32,
    /// One record per task, in the order of the set.
    pub tasks: Vec<TaskRecord>,
    /// How the pool was used.
    pub pool: PoolMetrics,
    /// Why the set stopped early, if it did.
    pub stopped: Option<StopReason>,
}

/// How many tasks ended each way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusCounts {
    /// Tasks that exited with code 0.
    pub succeeded: usize,
    /// Tasks that ran and failed, or could not start.
    pub failed: usize,
    /// Tasks that were running when the set stopped.
    pub cancelled: usize,
    /// Tasks that never started.
    pub skipped: usize,
}

impl SetReport {
    /// Whether every task succeeded.
    pub fn succeeded(&self) -> bool {
        self.tasks.iter().all(|t| t.status == TaskStatus::Succeeded)
    }

    /// The tasks that did not succeed, in the order of the set.
    pub fn failures(&self) -> impl Iterator<Item = &TaskRecord> {
        self.tasks.iter().filter(|t| t.status.is_failure())
    }

    /// The record of the task named `name`.
    pub fn get(&self, name: &str) -> Option<&TaskRecord> {
        self.tasks.iter().find(|t| t.name == name)
    }

    /// How many tasks ended each way.
    pub fn counts(&self) -> StatusCounts {
        let mut counts = StatusCounts::default();
        for task in &self.tasks {
            match task.status {
                TaskStatus::Succeeded => counts.succeeded += 1,
                TaskStatus::Failed => counts.failed += 1,
                TaskStatus::Cancelled => counts.cancelled += 1,
                TaskStatus::Skipped => counts.skipped += 1,
            }
        }
        counts
    }

    /// The report as pretty-printed JSON.
    ///
    /// # Errors
    ///
    /// Only if serialization fails, which the report's types do not do.
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string_pretty(self)
    }
}

impl PoolMetrics {
    /// The pool's metrics from its tasks' records: `jobs` slots, at most
    /// `max_running` busy at once, over `wall_time`. Busy time is the sum of
    /// the records' slot times; the histograms are of the waits and of the
    /// run times of the tasks that ran.
    pub fn of_records(
        tasks: &[TaskRecord],
        jobs: usize,
        max_running: usize,
        wall_time: Duration,
    ) -> PoolMetrics {
        let busy_time: Duration = tasks.iter().filter_map(|t| t.wall_time).sum();
        let capacity = wall_time.as_secs_f64() * jobs as f64;
        let utilization = if capacity > 0.0 {
            (busy_time.as_secs_f64() / capacity).clamp(0.0, 1.0)
        } else {
            0.0
        };
        PoolMetrics {
            jobs,
            max_running,
            wall_time,
            busy_time,
            utilization,
            wait_time: Histogram::from_samples(tasks.iter().filter_map(|t| t.wait_time).collect()),
            run_time: Histogram::from_samples(
                tasks
                    .iter()
                    .filter(|t| t.outcome.is_some())
                    .map(|t| t.run_time)
                    .collect(),
            ),
        }
    }
}

#[cfg(test)]
impl SetReport {
    /// A report of `tasks` run on `jobs` slots, lasting until the last one
    /// finished: for the tests of what is drawn from reports.
    pub(crate) fn of_tasks(tasks: Vec<TaskRecord>, jobs: usize) -> SetReport {
        let wall_time = tasks
            .iter()
            .filter_map(|t| t.finished_at)
            .max()
            .unwrap_or_default();
        SetReport {
            version: REPORT_VERSION,
            pool: PoolMetrics::of_records(&tasks, jobs, jobs, wall_time),
            tasks,
            stopped: None,
        }
    }
}

/// Durations as fractional milliseconds: precise enough for machines and
/// readable by people.
mod ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        // Whole microseconds, so the JSON shows `37.801`, not
        // `37.801075000000004`.
        s.serialize_f64(d.as_micros() as f64 / 1000.0)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let ms = f64::deserialize(d)?;
        Duration::try_from_secs_f64(ms / 1000.0).map_err(serde::de::Error::custom)
    }
}

/// As [`ms`], for optional durations (`null` when absent).
mod opt_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::ms::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<f64>::deserialize(d)?
            .map(|ms| Duration::try_from_secs_f64(ms / 1000.0).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// A list of durations as milliseconds.
mod vec_ms {
    use std::time::Duration;

    use serde::ser::SerializeSeq;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(list: &[Duration], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(list.len()))?;
        for d in list {
            seq.serialize_element(&(d.as_micros() as f64 / 1000.0))?;
        }
        seq.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        Vec::<f64>::deserialize(d)?
            .into_iter()
            .map(|ms| Duration::try_from_secs_f64(ms / 1000.0).map_err(serde::de::Error::custom))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreported_process_metrics_are_unknown() {
        let zero = TaskMetrics::default();
        let ran = TaskMetrics {
            peak_memory: 65536,
            fuel_used: 12,
            ..TaskMetrics::default()
        };
        let crashed = Outcome::Crashed {
            signal: Some(9),
            status: None,
            reason: None,
        };
        let timed_out = Outcome::LimitExceeded {
            limit: crate::outcome::Limit::Timeout {
                after: Duration::from_millis(100),
            },
        };
        // Killed before reporting: nothing was measured.
        assert!(!metrics_known(Isolation::Process, &crashed, &zero));
        assert!(!metrics_known(Isolation::Process, &timed_out, &zero));
        assert!(!metrics_known(
            Isolation::Process,
            &Outcome::Cancelled,
            &zero
        ));
        // The worker reported: measured.
        assert!(metrics_known(Isolation::Process, &timed_out, &ran));
        assert!(metrics_known(
            Isolation::Process,
            &Outcome::Exited { code: 0 },
            &ran
        ));
        // A thread task is always measured, zeros included.
        assert!(metrics_known(Isolation::Thread, &timed_out, &zero));
        // A crash's numbers are never a measurement.
        assert!(!metrics_known(Isolation::Process, &crashed, &ran));
    }

    #[test]
    fn old_reports_read_their_metrics_as_measured() {
        let mut record = TaskRecord::new("t", Isolation::Process, TaskStatus::Failed);
        record.metrics_known = true;
        let mut json = serde_json::to_value(&record).expect("to JSON");
        json.as_object_mut()
            .expect("an object")
            .remove("metrics_known");
        let read: TaskRecord = serde_json::from_value(json).expect("from JSON");
        assert_eq!(read, record);
    }

    #[test]
    fn histogram_uses_nearest_rank() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let h = Histogram::from_samples(samples);
        assert_eq!(h.count, 100);
        assert_eq!(h.min, Duration::from_millis(1));
        assert_eq!(h.p50, Duration::from_millis(50));
        assert_eq!(h.p90, Duration::from_millis(90));
        assert_eq!(h.p99, Duration::from_millis(99));
        assert_eq!(h.max, Duration::from_millis(100));
        assert_eq!(h.mean, Duration::from_micros(50_500));

        let one = Histogram::from_samples(vec![Duration::from_millis(7)]);
        let seven = Duration::from_millis(7);
        assert_eq!(
            (one.min, one.p50, one.p99, one.max),
            (seven, seven, seven, seven)
        );
        assert_eq!(Histogram::from_samples(Vec::new()), Histogram::default());
    }
}

//! What Isola counts while it runs, for monitoring: tasks by isolation and
//! outcome, their times, worker processes, the compile cache and messages.
//!
//! With the crate's `metrics` feature, and once [`enable`] is called, each
//! record goes to the [`metrics`](https://docs.rs/metrics) facade, so an
//! embedder sees them in whatever recorder it installs (the `isola` binary
//! installs the Prometheus exporter for `--metrics-addr`, then calls
//! `enable`). Until then a record costs one relaxed atomic load, so a
//! program that never asks for metrics pays nothing measurable on its hot
//! paths (a message, a task start). Without the feature every function
//! here is empty: nothing is linked.
//!
//! ```
//! // With a recorder of the embedder's choice installed first, e.g.
//! // metrics_exporter_prometheus::PrometheusBuilder::new().install()?;
//! isola::telemetry::enable();
//! ```
//!
//! The names follow Prometheus's conventions: a `isola_` prefix, counters
//! end in `_total`, times are in seconds (`_seconds`), and labels have a
//! small fixed set of values (never a task's name, which would make one
//! series per task).
//!
//! | name | kind | labels | what |
//! |---|---|---|---|
//! | `isola_tasks_started_total` | counter | `isolation` | tasks started (every backend) |
//! | `isola_tasks_ended_total` | counter | `isolation`, `outcome` | tasks ended, by [`Outcome`] kind |
//! | `isola_tasks_running` | gauge | `isolation` | tasks started and not yet ended |
//! | `isola_task_startup_seconds` | histogram | `isolation` | spawn to the guest's first instruction |
//! | `isola_task_run_seconds` | histogram | `isolation` | the guest's first instruction to its end |
//! | `isola_task_wall_seconds` | histogram | `isolation` | spawn to the report |
//! | `isola_worker_processes_started_total` | counter | `reason` (`prestart`, `on_demand`) | worker processes started |
//! | `isola_worker_processes_reused_total` | counter | | tasks given a kept `reuse_worker` worker |
//! | `isola_worker_processes_crashed_total` | counter | | process tasks that ended [`Outcome::Crashed`] |
//! | `isola_compile_cache_hits_total` | counter | `tier` (`memory`, `disk`) | programs found compiled |
//! | `isola_compiles_total` | counter | | programs compiled |
//! | `isola_messages_total` | counter | `direction` (`to_task`, `from_task`) | messages delivered |
//! | `isola_taskset_slots` | gauge | `state` (`busy`, `free`) | a running task set's slots |
//! | `isola_taskset_tasks_queued` | gauge | | tasks ready and waiting for a slot |
//! | `isola_taskset_task_wait_seconds` | histogram | | queued to started, per task |

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::outcome::Outcome;
use crate::spec::Isolation;

/// The label value of an isolation level.
#[cfg_attr(
    not(feature = "metrics"),
    allow(dead_code, reason = "used by the metrics feature")
)]
fn isolation_label(isolation: Isolation) -> &'static str {
    match isolation {
        Isolation::Thread => "thread",
        Isolation::Process => "process",
    }
}

/// The `outcome` label of an ending: its kind, in snake case (the same
/// words as the `outcome` field of its JSON form).
pub fn outcome_label(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Exited { code: 0 } => "exited_ok",
        Outcome::Exited { .. } => "exited_error",
        Outcome::Returned { .. } => "returned",
        Outcome::Rejected { .. } => "rejected",
        Outcome::Trapped(_) => "trapped",
        Outcome::LimitExceeded { .. } => "limit_exceeded",
        Outcome::Cancelled => "cancelled",
        Outcome::Crashed { .. } => "crashed",
        Outcome::Failed { .. } => "failed",
    }
}

/// Whether records go to the facade: off until [`enable`].
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether to record: `enable` was called (and the feature is on).
#[inline]
#[cfg_attr(
    not(feature = "metrics"),
    allow(dead_code, reason = "used by the metrics feature")
)]
fn on() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Starts recording Isola's metrics into the `metrics` facade's recorder,
/// and gives every metric its help text (`# HELP` lines). Call it once,
/// after installing a recorder and before starting tasks (a gauge such as
/// `isola_tasks_running` counts the tasks started after it); calling it
/// again does nothing more. Does nothing without the crate's `metrics`
/// feature.
pub fn enable() {
    #[cfg(feature = "metrics")]
    if !ENABLED.swap(true, Ordering::Relaxed) {
        use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
        describe_counter!("isola_tasks_started_total", "Tasks started.");
        describe_counter!(
            "isola_tasks_ended_total",
            "Tasks ended, by isolation and outcome."
        );
        describe_gauge!("isola_tasks_running", "Tasks started and not yet ended.");
        describe_histogram!(
            "isola_task_startup_seconds",
            Unit::Seconds,
            "From spawn to the guest's first instruction."
        );
        describe_histogram!(
            "isola_task_run_seconds",
            Unit::Seconds,
            "From the guest's first instruction to its end."
        );
        describe_histogram!(
            "isola_task_wall_seconds",
            Unit::Seconds,
            "From spawn to the task's report."
        );
        describe_counter!(
            "isola_worker_processes_started_total",
            "Worker processes started, pre-started or on demand."
        );
        describe_counter!(
            "isola_worker_processes_reused_total",
            "Process tasks given a kept worker."
        );
        describe_counter!(
            "isola_worker_processes_crashed_total",
            "Process tasks whose worker crashed."
        );
        describe_counter!(
            "isola_compile_cache_hits_total",
            "Programs found already compiled, in memory or on disk."
        );
        describe_counter!("isola_compiles_total", "Programs compiled.");
        describe_counter!(
            "isola_messages_total",
            "Messages delivered between the host and tasks."
        );
        describe_gauge!(
            "isola_taskset_slots",
            "A running task set's slots, busy or free."
        );
        describe_gauge!(
            "isola_taskset_tasks_queued",
            "Tasks of a running set that wait for a slot."
        );
        describe_histogram!(
            "isola_taskset_task_wait_seconds",
            Unit::Seconds,
            "From a task being ready to it getting a slot."
        );
    }
}

/// A task started.
#[inline]
pub(crate) fn task_started(isolation: Isolation) {
    #[cfg(feature = "metrics")]
    if on() {
        let label = isolation_label(isolation);
        metrics::counter!("isola_tasks_started_total", "isolation" => label).increment(1);
        metrics::gauge!("isola_tasks_running", "isolation" => label).increment(1.0);
    }
    #[cfg(not(feature = "metrics"))]
    let _ = isolation;
}

/// A task ended with `outcome` after `wall` since its spawn; `startup` and
/// `run` are its report's.
#[inline]
pub(crate) fn task_ended(
    isolation: Isolation,
    outcome: &Outcome,
    wall: Duration,
    startup: Duration,
    run: Duration,
) {
    #[cfg(feature = "metrics")]
    if on() {
        let label = isolation_label(isolation);
        metrics::counter!(
            "isola_tasks_ended_total",
            "isolation" => label,
            "outcome" => outcome_label(outcome)
        )
        .increment(1);
        metrics::gauge!("isola_tasks_running", "isolation" => label).decrement(1.0);
        metrics::histogram!("isola_task_wall_seconds", "isolation" => label)
            .record(wall.as_secs_f64());
        metrics::histogram!("isola_task_startup_seconds", "isolation" => label)
            .record(startup.as_secs_f64());
        metrics::histogram!("isola_task_run_seconds", "isolation" => label)
            .record(run.as_secs_f64());
        if matches!(outcome, Outcome::Crashed { .. }) {
            metrics::counter!("isola_worker_processes_crashed_total").increment(1);
        }
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (isolation, outcome, wall, startup, run);
}

/// Why a worker process was started.
#[derive(Debug, Clone, Copy)]
pub(crate) enum WorkerStart {
    /// Ahead of need, to keep the pool's idle workers topped up.
    Prestart,
    /// For a task that found no idle worker.
    OnDemand,
}

/// A worker process started (its handshake done).
#[inline]
pub(crate) fn worker_started(why: WorkerStart) {
    #[cfg(feature = "metrics")]
    if on() {
        let reason = match why {
            WorkerStart::Prestart => "prestart",
            WorkerStart::OnDemand => "on_demand",
        };
        metrics::counter!("isola_worker_processes_started_total", "reason" => reason).increment(1);
    }
    #[cfg(not(feature = "metrics"))]
    let _ = why;
}

/// A task was given a kept worker.
#[inline]
pub(crate) fn worker_reused() {
    #[cfg(feature = "metrics")]
    if on() {
        metrics::counter!("isola_worker_processes_reused_total").increment(1);
    }
}

/// Where a compiled program was found.
#[derive(Debug, Clone, Copy)]
pub(crate) enum CacheTier {
    /// The loader's in-memory program cache.
    Memory,
    /// The on-disk compile cache.
    Disk,
}

/// A program was found compiled.
#[inline]
pub(crate) fn cache_hit(tier: CacheTier) {
    #[cfg(feature = "metrics")]
    if on() {
        let tier = match tier {
            CacheTier::Memory => "memory",
            CacheTier::Disk => "disk",
        };
        metrics::counter!("isola_compile_cache_hits_total", "tier" => tier).increment(1);
    }
    #[cfg(not(feature = "metrics"))]
    let _ = tier;
}

/// A program was compiled.
#[inline]
pub(crate) fn compiled() {
    #[cfg(feature = "metrics")]
    if on() {
        metrics::counter!("isola_compiles_total").increment(1);
    }
}

/// Which way a message went.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Direction {
    /// From the host to a task.
    ToTask,
    /// From a task to the host.
    FromTask,
}

/// A message was delivered.
#[inline]
pub(crate) fn message(direction: Direction) {
    #[cfg(feature = "metrics")]
    if on() {
        let direction = match direction {
            Direction::ToTask => "to_task",
            Direction::FromTask => "from_task",
        };
        metrics::counter!("isola_messages_total", "direction" => direction).increment(1);
    }
    #[cfg(not(feature = "metrics"))]
    let _ = direction;
}

/// A task set's slots changed: `busy` of `jobs` are taken, `queued` tasks
/// wait for one.
#[inline]
pub(crate) fn taskset_slots(busy: usize, jobs: usize, queued: usize) {
    #[cfg(feature = "metrics")]
    if on() {
        metrics::gauge!("isola_taskset_slots", "state" => "busy").set(busy as f64);
        metrics::gauge!("isola_taskset_slots", "state" => "free")
            .set(jobs.saturating_sub(busy) as f64);
        metrics::gauge!("isola_taskset_tasks_queued").set(queued as f64);
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (busy, jobs, queued);
}

/// A task of a set waited `wait` for its slot.
#[inline]
pub(crate) fn taskset_waited(wait: Duration) {
    #[cfg(feature = "metrics")]
    if on() {
        metrics::histogram!("isola_taskset_task_wait_seconds").record(wait.as_secs_f64());
    }
    #[cfg(not(feature = "metrics"))]
    let _ = wait;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_labels_are_snake_case_words() {
        let outcomes = [
            Outcome::Exited { code: 0 },
            Outcome::Exited { code: 3 },
            Outcome::Cancelled,
            Outcome::Crashed {
                signal: Some(9),
                status: None,
                reason: None,
            },
        ];
        let labels: Vec<&str> = outcomes.iter().map(outcome_label).collect();
        assert_eq!(
            labels,
            ["exited_ok", "exited_error", "cancelled", "crashed"]
        );
        for label in labels {
            assert!(label.chars().all(|c| c.is_ascii_lowercase() || c == '_'));
        }
    }
}

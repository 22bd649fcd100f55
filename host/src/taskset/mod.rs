//! Running a [`TaskSet`]: a bounded pool of slots, dependencies, restarts,
//! fail-fast and shutdown, with a record of every task.
//!
//! The scheduler starts a task when every task it depends on has succeeded
//! and a slot is free (at most [`Scheduler::jobs`] tasks run at once). A task
//! that does not succeed makes its dependents *skipped*; the others go on,
//! unless [`Scheduler::fail_fast`] is on. Each task runs at its own
//! isolation level; a process task that crashes is restarted as its
//! [`RestartPolicy`] says. Tasks' stdout and stderr are piped and delivered
//! line by line, with the task's name, to an [`EventSink`], together with
//! the lifecycle of each task.
//!
//! Every task ends with exactly one [`TaskRecord`], including those that
//! could not start or never started, and the run as a whole with a
//! [`SetReport`] holding the records and the pool's [`PoolMetrics`].
//!
//! # Examples
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use isola::Runner;
//! use isola::config::TaskSet;
//! use isola::taskset::{Event, Scheduler};
//! use tokio_util::sync::CancellationToken;
//! # let dir = tempfile::tempdir()?;
//! # std::fs::write(dir.path().join("hello.wasm"), wat::parse_str(r#"(module
//! #   (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
//! #   (memory (export "memory") 1)
//! #   (data (i32.const 16) "hi\n")
//! #   (func (export "_start")
//! #     (i32.store (i32.const 0) (i32.const 16)) (i32.store (i32.const 4) (i32.const 3))
//! #     (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#)?)?;
//! # let tasks_toml = dir.path().join("tasks.toml");
//! # std::fs::write(&tasks_toml, "[[task]]\nname = \"a\"\nwasm = \"hello.wasm\"\n\n[[task]]\nname = \"b\"\nwasm = \"hello.wasm\"\ndepends_on = [\"a\"]\n")?;
//!
//! let set = TaskSet::load(&tasks_toml)?; // two tasks printing "hi", b after a
//! let shutdown = CancellationToken::new(); // cancel it to stop the set
//! let scheduler = Scheduler::new(Runner::new()?)
//!     .jobs(4)
//!     .sink(|event: &Event<'_>| {
//!         if let Event::Output { task, line, .. } = event {
//!             println!("{task} | {line}");
//!         }
//!     });
//! let report = scheduler.run_until(&set, shutdown.cancelled()).await;
//! assert!(report.succeeded());
//! println!("utilization {:.0}%", report.pool.utilization * 100.0);
//! # Ok(()) }
//! ```
//!
//! [`RestartPolicy`]: crate::config::RestartPolicy

/// The report as one self-contained HTML page, for people.
pub mod html;
mod lines;
mod report;
/// The report as a Chrome trace, for Perfetto or `chrome://tracing`.
pub mod timeline;

use std::collections::VecDeque;
use std::future::Future;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio_util::sync::CancellationToken;

use report::metrics_known;
pub use report::{
    Histogram, PoolMetrics, REPORT_VERSION, SetReport, SkipReason, StatusCounts, StopReason,
    TaskRecord, TaskStatus,
};

use crate::OutputReceiver;
use crate::config::{RestartPolicy, TaskConfig, TaskSet};
use crate::handle::{CancelHandle, Placed, TaskHandle};
use crate::outcome::{Outcome, Stream, TaskReport};
use crate::runner::Runner;
use crate::spec::{Isolation, Output, TaskSpec};
use crate::telemetry;

/// Something that happened while a set runs, in the order it happened for
/// each task.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum Event<'a> {
    /// The task's dependencies have all succeeded (or it has none): it
    /// waits for a slot.
    Queued {
        /// The task.
        task: &'a str,
    },
    /// The task got a slot and is starting (again, after a crash, when
    /// `attempt` is more than 1).
    Started {
        /// The task.
        task: &'a str,
        /// Where it runs.
        isolation: Isolation,
        /// 1 for the first attempt.
        attempt: u32,
        /// The slot it holds, from 0 to `jobs - 1` (the lowest free one).
        slot: usize,
    },
    /// A line the task wrote, without its line ending. Invalid UTF-8 is
    /// replaced; very long lines arrive in pieces, and so does a partial
    /// line left waiting (a prompt), after a short delay.
    Output {
        /// The task.
        task: &'a str,
        /// Which of its streams.
        stream: Stream,
        /// The line.
        line: &'a str,
    },
    /// The task crashed and will be started again.
    Restarting {
        /// The task.
        task: &'a str,
        /// The attempt that is about to start.
        attempt: u32,
        /// How the previous attempt ended.
        crash: &'a Outcome,
    },
    /// The task ended: succeeded, failed, was cancelled or was skipped.
    /// Exactly once per task.
    Finished {
        /// Everything recorded about it.
        record: &'a TaskRecord,
    },
}

/// Receives a running set's [`Event`]s. Called from the task that runs the
/// set, so it should not block for long: a slow sink slows the guests'
/// output down (they wait on their pipes), which is the intended
/// backpressure.
///
/// Any `Fn(&Event<'_>) + Send + Sync` is a sink.
pub trait EventSink: Send + Sync {
    /// Handles one event.
    fn event(&self, event: &Event<'_>);
}

impl<F> EventSink for F
where
    F: Fn(&Event<'_>) + Send + Sync,
{
    fn event(&self, event: &Event<'_>) {
        self(event);
    }
}

/// Starts a set's tasks for a [`Scheduler`]: by default its [`Runner`];
/// [`Scheduler::launcher`] swaps in one that runs them elsewhere (the
/// `isola-cluster` crate's, on NATS JetStream workers).
///
/// A launcher gets each attempt's spec with stdout and stderr set to
/// [`Output::Pipe`] and returns the same [`TaskHandle`] a runner does
/// (see [`TaskHandle::from_remote`]); the scheduler does the rest
/// (dependencies, slots, restarts, records) the same way.
pub trait Launch: Send + Sync {
    /// Starts `spec`, the task called `task` in the set.
    ///
    /// # Errors
    ///
    /// Why the task could not start; the scheduler records it as the
    /// task's start error.
    fn launch<'a>(
        &'a self,
        task: &'a str,
        spec: TaskSpec,
    ) -> futures::future::BoxFuture<'a, crate::Result<TaskHandle>>;

    /// Whether `spec` needs what only this process has (a shared memory
    /// group's memory, an `isola:kv` database, host functions, this
    /// process's stdin), so the scheduler runs it on its own runner
    /// instead. False by default.
    fn runs_here(&self, spec: &TaskSpec) -> bool {
        let _ = spec;
        false
    }
}

impl Launch for Runner {
    fn launch<'a>(
        &'a self,
        _task: &'a str,
        spec: TaskSpec,
    ) -> futures::future::BoxFuture<'a, crate::Result<TaskHandle>> {
        Box::pin(self.spawn(spec))
    }
}

/// Runs [`TaskSet`]s on a [`Runner`].
pub struct Scheduler {
    runner: Runner,
    launcher: Option<Box<dyn Launch>>,
    jobs: usize,
    fail_fast: bool,
    sink: Box<dyn EventSink>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("jobs", &self.jobs)
            .field("fail_fast", &self.fail_fast)
            .finish_non_exhaustive()
    }
}

impl Scheduler {
    /// A scheduler with one slot per CPU core, fail-fast off, and a sink that
    /// drops every event.
    pub fn new(runner: Runner) -> Scheduler {
        Scheduler {
            runner,
            launcher: None,
            jobs: default_jobs(),
            fail_fast: false,
            sink: Box::new(|_: &Event<'_>| {}),
        }
    }

    /// Runs at most `jobs` tasks at once (at least 1).
    pub fn jobs(mut self, jobs: usize) -> Scheduler {
        self.jobs = jobs.max(1);
        self
    }

    /// On the first failure, cancels the running tasks and skips the ones
    /// not started.
    pub fn fail_fast(mut self, on: bool) -> Scheduler {
        self.fail_fast = on;
        self
    }

    /// Starts the tasks with `launcher` instead of the runner, except
    /// those the launcher says must run here ([`Launch::runs_here`]),
    /// which the runner starts as usual.
    pub fn launcher(mut self, launcher: impl Launch + 'static) -> Scheduler {
        self.launcher = Some(Box::new(launcher));
        self
    }

    /// Where events go.
    pub fn sink(mut self, sink: impl EventSink + 'static) -> Scheduler {
        self.sink = Box::new(sink);
        self
    }

    /// How many tasks may run at once.
    pub fn job_count(&self) -> usize {
        self.jobs
    }

    /// Runs every task of `set` and reports how each ended.
    pub async fn run(&self, set: &TaskSet) -> SetReport {
        self.run_until(set, std::future::pending()).await
    }

    /// As [`Scheduler::run`], but when `shutdown` completes the running
    /// tasks are cancelled and the others skipped; the report still has a
    /// record for every task.
    ///
    /// Dropping the returned future cancels the tasks it started.
    pub async fn run_until(&self, set: &TaskSet, shutdown: impl Future<Output = ()>) -> SetReport {
        // The set's shared memory groups exist before any of their tasks
        // starts; a group that cannot be created fails its tasks with why.
        let mut broken_groups = std::collections::HashMap::new();
        for group in set.groups() {
            if self.runner.group(&group.name).is_some() {
                continue;
            }
            if let Err(err) = self.runner.create_group(group.clone()).await {
                broken_groups.insert(group.name.clone(), err.to_string());
            }
        }
        let broken_groups = &broken_groups;
        let mut run = Run::new(self, set);
        let mut running = FuturesUnordered::new();
        let mut shutdown = std::pin::pin!(shutdown);
        let mut shutdown_seen = false;
        loop {
            while run.stopped.is_none() && running.len() < self.jobs {
                let Some(i) = run.ready.pop_front() else {
                    break;
                };
                let token = CancellationToken::new();
                let slot = run.start(i, token.clone());
                let task = &set.tasks()[i];
                // The runner's `isola.task` span of each attempt is a child
                // of this one, which carries the set's name for the task.
                let span = tracing::info_span!(
                    "isola.taskset.task",
                    name = %task.name,
                    isolation = %task.spec.isolation,
                    slot,
                );
                let started = self.run_task(i, slot, task, token, broken_groups);
                running.push(tracing::Instrument::instrument(started, span));
                run.max_running = run.max_running.max(running.len());
            }
            if running.is_empty() {
                break;
            }
            tokio::select! {
                Some((i, ended)) = running.next() => run.finish(i, ended),
                () = &mut shutdown, if !shutdown_seen => {
                    shutdown_seen = true;
                    run.stop(StopReason::Shutdown);
                }
            }
        }
        run.report()
    }

    /// One task, from getting its slot to giving it back: every attempt,
    /// with its output forwarded to the sink.
    async fn run_task(
        &self,
        i: usize,
        slot: usize,
        task: &TaskConfig,
        token: CancellationToken,
        broken_groups: &std::collections::HashMap<String, String>,
    ) -> (usize, Ended) {
        let mut crashes = Vec::new();
        let mut restarted_at = Vec::new();
        let mut attempt = 0;
        if let Some(why) = task
            .spec
            .shared_group
            .as_ref()
            .and_then(|g| broken_groups.get(g))
        {
            let how = How::StartFailed(format!("its shared memory group failed to start: {why}"));
            return (
                i,
                Ended {
                    attempts: 1,
                    crashes,
                    restarted_at,
                    worker_pid: None,
                    placed: None,
                    how,
                },
            );
        }
        loop {
            attempt += 1;
            self.sink.event(&Event::Started {
                task: &task.name,
                isolation: task.spec.isolation,
                attempt,
                slot,
            });
            let mut spec = task.spec.clone();
            spec.stdout = Output::Pipe;
            spec.stderr = Output::Pipe;
            let spawned = tokio::select! {
                spawned = self.launch(&task.name, spec) => spawned,
                () = token.cancelled() => {
                    return (i, Ended {
                        attempts: attempt,
                        crashes,
                        restarted_at,
                        worker_pid: None,
                        placed: None,
                        how: How::CancelledBeforeStart,
                    });
                }
            };
            let mut handle = match spawned {
                Ok(handle) => handle,
                Err(err) => {
                    let how = How::StartFailed(err.to_string());
                    return (
                        i,
                        Ended {
                            attempts: attempt,
                            crashes,
                            restarted_at,
                            worker_pid: None,
                            placed: None,
                            how,
                        },
                    );
                }
            };
            // A task set gives its tasks no messages: the host's side of
            // the channel closes at once, so a guest that waits in `recv`
            // hears "closed" instead of waiting until its timeout (or
            // forever without one).
            handle.close_channel();
            let worker_pid = handle.process_id();
            let placement = handle.placement();
            let canceller = handle.cancel_handle();
            // If this future is dropped (the caller gave up on the set), the
            // task must not go on running detached.
            let mut guard = CancelOnDrop(Some(canceller.clone()));
            let stdout = self.forward(&task.name, Stream::Stdout, handle.take_stdout());
            let stderr = self.forward(&task.name, Stream::Stderr, handle.take_stderr());
            let wait = async {
                let mut waiting = std::pin::pin!(handle.wait());
                tokio::select! {
                    report = &mut waiting => report,
                    () = token.cancelled() => {
                        canceller.cancel();
                        waiting.await
                    }
                }
            };
            // All output is delivered before the task counts as finished.
            let (report, _, stderr_tail) = tokio::join!(wait, stdout, stderr);
            guard.0 = None;

            let restart = match task.restart {
                RestartPolicy::OnCrash { max_restarts } => {
                    matches!(report.outcome, Outcome::Crashed { .. })
                        && attempt <= max_restarts
                        && !token.is_cancelled()
                }
                RestartPolicy::Never => false,
            };
            if !restart {
                return (
                    i,
                    Ended {
                        attempts: attempt,
                        crashes,
                        restarted_at,
                        worker_pid,
                        placed: placement.and_then(|p| p.get().cloned()),
                        how: How::Ran(Box::new(report), stderr_tail.into()),
                    },
                );
            }
            self.sink.event(&Event::Restarting {
                task: &task.name,
                attempt: attempt + 1,
                crash: &report.outcome,
            });
            crashes.push(report.outcome);
            restarted_at.push(Instant::now());
        }
    }

    /// Starts one attempt with the launcher, or else the runner.
    async fn launch(&self, task: &str, spec: TaskSpec) -> crate::Result<TaskHandle> {
        match &self.launcher {
            Some(launcher) if !launcher.runs_here(&spec) => launcher.launch(task, spec).await,
            _ => self.runner.spawn(spec).await,
        }
    }

    /// Delivers a piped stream to the sink, line by line, until it ends.
    /// A partial line (a prompt waiting for an answer) is not held until
    /// its newline or the end: after [`PARTIAL_LINE_DELAY`] without more
    /// output it is shown as it is, and the rest of its line follows as a
    /// line of its own. Returns the stream's last [`TAIL_LINES`] lines.
    async fn forward(
        &self,
        task: &str,
        stream: Stream,
        rx: Option<OutputReceiver>,
    ) -> VecDeque<String> {
        let mut tail = VecDeque::new();
        let Some(mut rx) = rx else { return tail };
        let mut splitter = lines::LineSplitter::default();
        let mut emit = |line: &str| {
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(line.to_owned());
            self.sink.event(&Event::Output { task, stream, line });
        };
        loop {
            let chunk = if splitter.has_partial() {
                match tokio::time::timeout(PARTIAL_LINE_DELAY, rx.recv()).await {
                    Ok(chunk) => chunk,
                    Err(_) => {
                        splitter.finish(&mut emit);
                        continue;
                    }
                }
            } else {
                rx.recv().await
            };
            match chunk {
                Some(chunk) => splitter.push(&chunk, &mut emit),
                None => break,
            }
        }
        splitter.finish(&mut emit);
        tail
    }
}

/// How long a partial line waits for the rest before it is shown.
const PARTIAL_LINE_DELAY: Duration = Duration::from_millis(200);

/// Lines of a failed task's stderr kept in its record
/// ([`TaskRecord::stderr_tail`]).
const TAIL_LINES: usize = 20;

/// Slots by default: one per core.
fn default_jobs() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

/// Cancels a task when dropped while armed.
struct CancelOnDrop(Option<CancelHandle>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(handle) = self.0.take() {
            handle.cancel();
        }
    }
}

/// How a task's slot time ended.
struct Ended {
    attempts: u32,
    /// Outcomes of the attempts that crashed and were restarted.
    crashes: Vec<Outcome>,
    /// When each of those attempts ended.
    restarted_at: Vec<Instant>,
    /// The last attempt's worker process, if it started one.
    worker_pid: Option<u32>,
    /// Where a launcher ran the last attempt, if it says.
    placed: Option<Placed>,
    how: How,
}

enum How {
    /// The last attempt ran and ended with this report, and these last
    /// lines of its stderr.
    Ran(Box<TaskReport>, Vec<String>),
    /// The last attempt could not start.
    StartFailed(String),
    /// The set was stopped while the last attempt was starting.
    CancelledBeforeStart,
}

/// Where a task is.
enum Slot {
    /// Waiting for dependencies.
    Waiting,
    /// Ready, waiting for a slot, since this instant.
    Queued(Instant),
    /// Holding a slot since this instant; the token cancels it.
    Running {
        queued: Instant,
        started: Instant,
        token: CancellationToken,
        /// Which of the pool's slots.
        slot: usize,
    },
    /// Has its record.
    Done,
}

/// The state of one run of a set.
struct Run<'a> {
    scheduler: &'a Scheduler,
    set: &'a TaskSet,
    origin: Instant,
    dependents: Vec<Vec<usize>>,
    /// Dependencies of each task that have not succeeded yet.
    pending_deps: Vec<usize>,
    slots: Vec<Slot>,
    records: Vec<Option<TaskRecord>>,
    /// Tasks ready to start, in the order they became ready.
    ready: VecDeque<usize>,
    stopped: Option<StopReason>,
    max_running: usize,
    /// Which of the `jobs` slots are taken.
    taken: Vec<bool>,
}

impl<'a> Run<'a> {
    fn new(scheduler: &'a Scheduler, set: &'a TaskSet) -> Run<'a> {
        let deps = set.dependency_indices();
        let mut dependents = vec![Vec::new(); deps.len()];
        for (task, list) in deps.iter().enumerate() {
            for &dep in list {
                dependents[dep].push(task);
            }
        }
        let mut run = Run {
            scheduler,
            set,
            origin: Instant::now(),
            dependents,
            pending_deps: deps.iter().map(Vec::len).collect(),
            slots: deps.iter().map(|_| Slot::Waiting).collect(),
            records: vec![None; deps.len()],
            ready: VecDeque::new(),
            stopped: None,
            max_running: 0,
            taken: vec![false; scheduler.jobs],
        };
        for i in 0..deps.len() {
            if run.pending_deps[i] == 0 {
                run.queue(i);
            }
        }
        run
    }

    fn since_origin(&self, at: Instant) -> Duration {
        at.saturating_duration_since(self.origin)
    }

    fn queue(&mut self, i: usize) {
        self.slots[i] = Slot::Queued(Instant::now());
        self.ready.push_back(i);
        self.slots_changed();
        let task = &self.set.tasks()[i].name;
        self.scheduler.sink.event(&Event::Queued { task });
    }

    /// Gives task `i` the lowest free slot and returns it.
    fn start(&mut self, i: usize, token: CancellationToken) -> usize {
        // The caller starts a task only while fewer than `jobs` run, so a
        // slot is free; the fallback keeps a bug from panicking.
        let slot = self.taken.iter().position(|t| !t).unwrap_or(0);
        if let Some(taken) = self.taken.get_mut(slot) {
            *taken = true;
        }
        let queued = match self.slots[i] {
            Slot::Queued(queued) => queued,
            _ => Instant::now(),
        };
        let started = Instant::now();
        self.slots[i] = Slot::Running {
            queued,
            started,
            token,
            slot,
        };
        telemetry::taskset_waited(started.saturating_duration_since(queued));
        self.slots_changed();
        slot
    }

    /// Tells the metrics how many slots are busy and tasks wait.
    fn slots_changed(&self) {
        let busy = self.taken.iter().filter(|&&t| t).count();
        telemetry::taskset_slots(busy, self.taken.len(), self.ready.len());
    }

    /// Records a task that gave its slot back, and queues or skips what
    /// depends on it.
    fn finish(&mut self, i: usize, ended: Ended) {
        let finished = Instant::now();
        let task = &self.set.tasks()[i];
        let mut record = TaskRecord::new(&task.name, task.spec.isolation, TaskStatus::Failed);
        if let Slot::Running {
            queued,
            started,
            slot,
            ..
        } = self.slots[i]
        {
            if let Some(taken) = self.taken.get_mut(slot) {
                *taken = false;
            }
            self.slots_changed();
            record.slot = Some(slot);
            record.queued_at = Some(self.since_origin(queued));
            record.started_at = Some(self.since_origin(started));
            record.wait_time = Some(started.saturating_duration_since(queued));
            record.wall_time = Some(finished.saturating_duration_since(started));
        }
        record.finished_at = Some(self.since_origin(finished));
        record.attempts = ended.attempts;
        record.crashes = ended.crashes;
        record.worker_pid = ended.worker_pid;
        if let Some(placed) = ended.placed {
            record.worker = Some(placed.worker);
            record.deliveries = Some(placed.deliveries);
        }
        record.restarted_at = ended
            .restarted_at
            .iter()
            .map(|&at| self.since_origin(at))
            .collect();
        match ended.how {
            How::Ran(report, stderr_tail) => {
                // A plugin that returned a value succeeded, as a command
                // that exited 0 did (`Outcome::is_success`).
                record.status = match &report.outcome {
                    outcome if outcome.is_success() => TaskStatus::Succeeded,
                    Outcome::Cancelled => TaskStatus::Cancelled,
                    _ => TaskStatus::Failed,
                };
                if let Outcome::Exited { code } = report.outcome {
                    record.exit_code = Some(code);
                }
                if let Outcome::Returned { output } = &report.outcome {
                    let text = returned_text(output);
                    // The returned value is the task's output: shown as its
                    // lines, like what a command prints.
                    for line in text.lines() {
                        self.scheduler.sink.event(&Event::Output {
                            task: &task.name,
                            stream: Stream::Stdout,
                            line,
                        });
                    }
                    record.returned = Some(text);
                }
                record.startup = report.metrics.startup;
                record.run_time = report.metrics.run_time;
                record.peak_memory = report.metrics.peak_memory;
                record.fuel_used = report.metrics.fuel_used;
                record.metrics_known =
                    metrics_known(task.spec.isolation, &report.outcome, &report.metrics);
                record.outcome = Some(report.outcome);
                if record.status == TaskStatus::Failed {
                    record.stderr_tail = stderr_tail;
                }
            }
            How::StartFailed(error) => record.start_error = Some(error),
            How::CancelledBeforeStart => {
                record.status = TaskStatus::Cancelled;
                record.outcome = Some(Outcome::Cancelled);
            }
        }
        let status = record.status;
        self.record(i, record);

        if status == TaskStatus::Succeeded {
            for d in self.dependents[i].clone() {
                self.pending_deps[d] -= 1;
                if self.pending_deps[d] == 0 && matches!(self.slots[d], Slot::Waiting) {
                    if self.stopped.is_some() {
                        // Cannot happen (stopping skips every waiting task),
                        // but a task must never be left without a record.
                        self.skip(d, SkipReason::Shutdown);
                    } else {
                        self.queue(d);
                    }
                }
            }
            return;
        }
        self.skip_dependents(i);
        if status == TaskStatus::Failed && self.scheduler.fail_fast && self.stopped.is_none() {
            let failed = self.set.tasks()[i].name.clone();
            self.stop(StopReason::FailFast { failed });
        }
    }

    /// Skips every task that depends, directly or not, on `failed`.
    fn skip_dependents(&mut self, failed: usize) {
        let mut work = vec![failed];
        while let Some(done) = work.pop() {
            for d in self.dependents[done].clone() {
                if matches!(self.slots[d], Slot::Waiting) {
                    let dependency = self.set.tasks()[done].name.clone();
                    self.skip(d, SkipReason::DependencyFailed { dependency });
                    work.push(d);
                }
            }
        }
    }

    /// Stops the set: cancels what runs, skips what has not started.
    fn stop(&mut self, reason: StopReason) {
        let skip_reason = match &reason {
            StopReason::Shutdown => SkipReason::Shutdown,
            StopReason::FailFast { failed } => SkipReason::FailFast {
                failed: failed.clone(),
            },
        };
        // A shutdown after fail-fast still says the user stopped the set.
        if self.stopped.is_none() || reason == StopReason::Shutdown {
            self.stopped = Some(reason);
        }
        self.ready.clear();
        self.slots_changed();
        for i in 0..self.slots.len() {
            match &self.slots[i] {
                Slot::Running { token, .. } => token.cancel(),
                Slot::Waiting | Slot::Queued(_) => self.skip(i, skip_reason.clone()),
                Slot::Done => {}
            }
        }
    }

    fn skip(&mut self, i: usize, reason: SkipReason) {
        let task = &self.set.tasks()[i];
        let mut record = TaskRecord::new(&task.name, task.spec.isolation, TaskStatus::Skipped);
        if let Slot::Queued(queued) = self.slots[i] {
            record.queued_at = Some(self.since_origin(queued));
        }
        record.skip_reason = Some(reason);
        record.finished_at = Some(self.since_origin(Instant::now()));
        self.record(i, record);
    }

    fn record(&mut self, i: usize, record: TaskRecord) {
        self.slots[i] = Slot::Done;
        self.scheduler
            .sink
            .event(&Event::Finished { record: &record });
        self.records[i] = Some(record);
    }

    fn report(self) -> SetReport {
        let wall_time = self.origin.elapsed();
        let tasks: Vec<TaskRecord> = self
            .records
            .into_iter()
            .zip(self.set.tasks())
            .map(|(record, task)| {
                record.unwrap_or_else(|| {
                    // Unreachable by construction; kept so a scheduling bug
                    // shows as a failed task instead of a missing one.
                    let mut r =
                        TaskRecord::new(&task.name, task.spec.isolation, TaskStatus::Failed);
                    r.start_error = Some("internal error: the task was never scheduled".into());
                    r
                })
            })
            .collect();
        let pool =
            PoolMetrics::of_records(&tasks, self.scheduler.jobs, self.max_running, wall_time);
        SetReport {
            version: REPORT_VERSION,
            tasks,
            pool,
            stopped: self.stopped,
        }
    }
}

/// A plugin's returned bytes as text: themselves when they are UTF-8,
/// else their hex digits (so binary output neither garbles a terminal nor
/// reads as a list of numbers).
fn returned_text(output: &[u8]) -> String {
    match std::str::from_utf8(output) {
        Ok(text) => text.to_owned(),
        Err(_) => format!("0x{}", hex::encode(output)),
    }
}

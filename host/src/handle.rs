//! The handles every backend returns for a started task: [`TaskHandle`]
//! (wait, message, read output, cancel), [`CancelHandle`] and [`TaskId`].
//!
//! A thread task, a process task and a task of a shared memory group all
//! end in a Tokio task that yields one [`TaskReport`]; the handle is the
//! same whichever backend runs it.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio_util::sync::CancellationToken;

use crate::channel::{MessageReceiver, MessageSender, SendError};
use crate::outcome::{Outcome, TaskMetrics, TaskReport};
use crate::output::OutputReceiver;
use crate::spec::TaskSpec;
use crate::telemetry;

/// Identifies a task within its runner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId(u64);

impl std::fmt::Display for TaskId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "task-{}", self.0)
    }
}

static NEXT_TASK_ID: AtomicU64 = AtomicU64::new(1);

impl TaskId {
    pub(crate) fn next() -> TaskId {
        TaskId(NEXT_TASK_ID.fetch_add(1, Ordering::Relaxed))
    }
}

/// A running task: wait for its report, cancel it, read its piped output.
///
/// Dropping the handle does not stop the task (as with a detached thread);
/// call [`TaskHandle::cancel`] first to stop it.
#[derive(Debug)]
pub struct TaskHandle {
    id: TaskId,
    cancel: CancelHandle,
    join: tokio::task::JoinHandle<TaskReport>,
    stdout: Option<OutputReceiver>,
    stderr: Option<OutputReceiver>,
    pid: Option<u32>,
    sender: Option<MessageSender>,
    messages: Option<MessageReceiver>,
    placement: Option<Placement>,
}

/// Cancels a task from anywhere. Cheap to clone.
#[derive(Debug, Clone)]
pub struct CancelHandle(CancellationToken);

impl CancelHandle {
    /// Stops the task: a running guest is interrupted within one epoch tick
    /// and the task ends with [`Outcome::Cancelled`]. Does nothing if the
    /// task already ended.
    pub fn cancel(&self) {
        self.0.cancel();
    }
}

impl TaskHandle {
    /// Runs `task` (which yields the task's one report) on the
    /// runtime, holding the task's instance `slot` until it ends, and
    /// returns its handle. Every backend starts its tasks here, so this is
    /// where each task gets its `tracing` span and its start and end are
    /// counted ([`crate::telemetry`]).
    #[expect(
        clippy::too_many_arguments,
        reason = "one call per backend, each naming every part"
    )]
    pub(crate) fn start(
        id: TaskId,
        about: About,
        cancel: CancellationToken,
        task: impl std::future::Future<Output = TaskReport> + Send + 'static,
        slot: tokio::sync::OwnedSemaphorePermit,
        outputs: (Option<OutputReceiver>, Option<OutputReceiver>),
        channel: (MessageSender, MessageReceiver),
        pid: Option<u32>,
    ) -> TaskHandle {
        let About { isolation, span } = about;
        if !span.is_disabled() {
            span.record("id", tracing::field::display(id));
            if let Some(pid) = pid {
                span.record("pid", pid);
            }
        }
        telemetry::task_started(isolation);
        let spawned = std::time::Instant::now();
        // `map`, not an `async` block awaiting `task`: that would keep the
        // (large) task future twice in the spawned allocation.
        let task = tracing::Instrument::instrument(task, span);
        let join = tokio::spawn(futures::FutureExt::map(task, move |report| {
            // The slot goes back only once the report is made.
            drop(slot);
            telemetry::task_ended(
                isolation,
                &report.outcome,
                spawned.elapsed(),
                report.metrics.startup,
                report.metrics.run_time,
            );
            report
        }));
        TaskHandle {
            id,
            cancel: CancelHandle(cancel),
            join,
            stdout: outputs.0,
            stderr: outputs.1,
            pid,
            sender: Some(channel.0),
            messages: Some(channel.1),
            placement: None,
        }
    }

    /// A handle for a task that runs somewhere other than a [`crate::Runner`]
    /// of this process (on another machine, say): `report` yields its one
    /// report, `cancel` is cancelled when [`TaskHandle::cancel`] is called,
    /// and `stdout`/`stderr` deliver what the spec piped. Such a task has
    /// no message channel ([`TaskHandle::post`] reports it closed) and no
    /// process id; `placement` is where the launcher records which worker
    /// ran it.
    ///
    /// This is how a launcher outside this crate (the `isola-cluster`
    /// crate's, for one) gives a task set's `Scheduler` the same
    /// handle a local runner does.
    pub fn from_remote(
        cancel: CancellationToken,
        report: impl std::future::Future<Output = TaskReport> + Send + 'static,
        outputs: (Option<OutputReceiver>, Option<OutputReceiver>),
        placement: Placement,
    ) -> TaskHandle {
        TaskHandle {
            id: TaskId::next(),
            cancel: CancelHandle(cancel),
            join: tokio::spawn(report),
            stdout: outputs.0,
            stderr: outputs.1,
            pid: None,
            sender: None,
            messages: None,
            placement: Some(placement),
        }
    }

    /// Where the task ran, for a task made by [`TaskHandle::from_remote`];
    /// `None` for a task of a local runner. Filled in once the task's
    /// result arrives.
    pub fn placement(&self) -> Option<Placement> {
        self.placement.clone()
    }

    /// Sends a message to the task (`worker.postMessage`), waiting while its
    /// inbox is full.
    ///
    /// # Errors
    ///
    /// [`SendError::Closed`] if the task ended or the channel was closed.
    pub async fn post(&self, message: impl Into<bytes::Bytes>) -> Result<(), SendError> {
        match &self.sender {
            Some(sender) => sender.send(message).await,
            None => Err(SendError::Closed),
        }
    }

    /// Sends `value` as a JSON message.
    ///
    /// # Errors
    ///
    /// As [`TaskHandle::post`], or [`SendError::Json`].
    pub async fn post_json(&self, value: &impl serde::Serialize) -> Result<(), SendError> {
        match &self.sender {
            Some(sender) => sender.send_json(value).await,
            None => Err(SendError::Closed),
        }
    }

    /// A sender for this task's messages that can outlive the handle
    /// (for example, moved into another task). `None` after
    /// [`TaskHandle::close_channel`].
    pub fn sender(&self) -> Option<MessageSender> {
        self.sender.clone()
    }

    /// Closes the host's side of the channel: once every [`MessageSender`]
    /// is dropped and the task has received what was sent, its `recv`
    /// reports closed.
    pub fn close_channel(&mut self) {
        self.sender = None;
    }

    /// The next message the task posted; `None` once the task ended and
    /// every message was received (or the receiver was taken).
    pub async fn recv(&mut self) -> Option<bytes::Bytes> {
        self.messages.as_mut()?.recv().await
    }

    /// The task's posted messages as a receiver (and stream) of their own.
    /// Take it before [`TaskHandle::wait`] to read messages while waiting:
    /// `wait` drops an untaken receiver, after which the task's posts are
    /// discarded instead of blocking it.
    pub fn take_messages(&mut self) -> Option<MessageReceiver> {
        self.messages.take()
    }

    /// The worker process's id, for a process task (like `child.pid` in
    /// Node); `None` for a thread task.
    pub fn process_id(&self) -> Option<u32> {
        self.pid
    }

    /// This task's id.
    pub fn id(&self) -> TaskId {
        self.id
    }

    /// See [`CancelHandle::cancel`].
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// A handle that can cancel this task after the `TaskHandle` has been
    /// moved into [`TaskHandle::wait`].
    pub fn cancel_handle(&self) -> CancelHandle {
        self.cancel.clone()
    }

    /// The guest's stdout as it is written, when the spec asked for
    /// [`crate::Output::Pipe`]. `None` otherwise, or if already taken.
    pub fn take_stdout(&mut self) -> Option<OutputReceiver> {
        self.stdout.take()
    }

    /// As [`TaskHandle::take_stdout`], for stderr.
    pub fn take_stderr(&mut self) -> Option<OutputReceiver> {
        self.stderr.take()
    }

    /// Waits for the task to end. Every task ends with exactly one report.
    pub async fn wait(mut self) -> TaskReport {
        // Nobody can read messages any more: let the guest post freely.
        self.messages = None;
        match self.join.await {
            Ok(report) => report,
            Err(err) => TaskReport {
                outcome: Outcome::Failed {
                    message: format!("the task's runtime task ended abnormally: {err}"),
                },
                metrics: TaskMetrics::default(),
                stdout: Default::default(),
                stderr: Default::default(),
            },
        }
    }
}

/// Where a remote task ran: set once, by its launcher, when the result
/// arrives; read by whoever holds a clone (a task set's record, for one).
/// Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Placement(std::sync::Arc<std::sync::OnceLock<Placed>>);

/// What a [`Placement`] records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    /// The name of the worker whose result was recorded.
    pub worker: String,
    /// How many times the task was delivered to a worker before that
    /// result: 1 unless a worker died or stalled with it.
    pub deliveries: u32,
}

impl Placement {
    /// Records where the task ran. Only the first call counts.
    pub fn set(&self, placed: Placed) {
        let _ = self.0.set(placed);
    }

    /// Where the task ran, once known.
    pub fn get(&self) -> Option<&Placed> {
        self.0.get()
    }
}

/// What a task's span and metrics say about it, taken from its spec
/// before the backend consumes the spec.
#[derive(Debug)]
pub(crate) struct About {
    isolation: crate::spec::Isolation,
    /// The task's `tracing` span: disabled (and free to make: no field is
    /// formatted) unless a subscriber wants it.
    span: tracing::Span,
}

impl About {
    pub(crate) fn of(spec: &TaskSpec) -> About {
        let program = spec.program_name();
        About {
            isolation: spec.isolation,
            // The span an embedder's subscriber (an OpenTelemetry layer,
            // say) sees around everything the task does; its parent is
            // whatever span was current at spawn (a task set's per-task
            // span, for one).
            span: tracing::info_span!(
                "isola.task",
                id = tracing::field::Empty,
                program = %program,
                isolation = %spec.isolation,
                pid = tracing::field::Empty,
            ),
        }
    }
}

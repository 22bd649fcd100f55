//! The supervisor of one process task: readies its spec for a worker,
//! hands it a worker from the pool, carries frames both ways, enforces the
//! backstop, and turns what the worker reported (or how it died) into the
//! task's report.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use tokio::io::AsyncReadExt;
use tokio::process::ChildStdout;
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::{FramedRead, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;

use super::pool::{
    ChildGuard, GRACE, ProcessBackend, Worker, WorkerSaid, Writer, reap, sandbox_key, sleep_until,
};
use crate::channel::{MessageReceiver, MessageSender};
use crate::error::{Error, Result};
use crate::handle::{About, TaskHandle, TaskId};
use crate::ipc::cgroup::WorkerGroup;
use crate::ipc::protocol::{
    self, FollowingData, FromWorker, HostReply, OsLimits, RunRequest, ToWorker,
};
use crate::ipc::sys;
use crate::outcome::{Limit, Outcome, Stop, Stream, TaskReport, WorkerEnding};
use crate::output::OutputPipe;
use crate::parts::Parts;
use crate::program::Program;
use crate::spec::{Entry, Sandbox, Stdin, TaskSpec};

/// Open files a worker may have: preopened dirs, files the guest opens, pipes.
const WORKER_OPEN_FILES: u64 = 256;

/// The OS limits for a task's worker.
pub(crate) fn os_limits(spec: &TaskSpec) -> OsLimits {
    let data_bytes = spec.limits.process_memory_or_default();
    OsLimits {
        data_bytes,
        // Each linear memory reserves its full 4 GiB range plus guards up
        // front; the cap only stops an address-space explosion.
        address_space_bytes: data_bytes.saturating_add(64 << 30),
        // Saturating: an absurd timeout (say `Duration::MAX`) must mean "no
        // practical limit", not an overflow.
        cpu_seconds: spec.limits.timeout.map(|t| t.as_secs().saturating_add(2)),
        open_files: WORKER_OPEN_FILES,
    }
}

/// Sets a worker's cgroup memory limit for its task (its process memory
/// limit, `data_bytes`), if it has a cgroup.
///
/// # Errors
///
/// Under [`Sandbox::Required`], a limit the kernel refused
/// ([`Error::SandboxUnavailable`]); otherwise that is a warning, and the worker
/// runs under its rlimits alone.
pub(crate) fn limit_cgroup_memory(
    cgroup: Option<&mut WorkerGroup>,
    data_bytes: u64,
    sandbox: Sandbox,
) -> Result<()> {
    let Some(group) = cgroup else { return Ok(()) };
    match group.limit_memory(data_bytes) {
        Ok(()) => Ok(()),
        Err(err) if sandbox == Sandbox::Required => Err(Error::SandboxUnavailable(format!(
            "its cgroup memory limit cannot be set: {err}"
        ))),
        Err(err) => {
            tracing::warn!("sandbox: a worker's cgroup memory limit cannot be set: {err}");
            Ok(())
        }
    }
}

/// Readies a spec for a worker and returns the cache directory it loads
/// from: the artifact is put there (compiled once, here), inherited
/// variables are resolved (the worker's environment is empty), the program
/// is named by its path. Every path it names is made absolute here, since a
/// worker runs in `/`, not in its parent's working directory. The caller
/// has checked the spec.
pub(crate) fn prepare_for_worker(
    parts: &Parts,
    backend: &ProcessBackend,
    program: &Program,
    spec: &mut TaskSpec,
) -> Result<PathBuf> {
    let cache_dir = absolute(&backend.cache_root(parts)?)?;
    parts.loader.ensure_artifact(program, &cache_dir)?;
    for key in std::mem::take(&mut spec.inherit_env) {
        if let Ok(value) = std::env::var(&key) {
            spec.env.insert(key, value);
        }
    }
    spec.wasm = absolute(program.path())?;
    for dir in &mut spec.dirs {
        dir.host = absolute(&dir.host)?;
    }
    if let Stdin::File(path) = &mut spec.stdin {
        *path = absolute(path)?;
    }
    Ok(cache_dir)
}

/// `path` made absolute against this process's working directory, as a
/// worker (which runs in `/`) must be given it. Lexical: links stay links,
/// for Landlock and the grants' own checks to see.
fn absolute(path: &std::path::Path) -> Result<PathBuf> {
    std::path::absolute(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })
}

/// Starts a process-isolated task.
///
/// # Errors
///
/// As [`crate::Runner::spawn`]; [`Error::Unsupported`] if no worker
/// binary is found, [`Error::Internal`] if a worker cannot start.
pub(crate) async fn spawn(
    parts: &Parts,
    backend: &Arc<ProcessBackend>,
    program: &Program,
    mut spec: TaskSpec,
    entry: Entry,
    spawned_at: Instant,
) -> Result<TaskHandle> {
    let about = About::of(&spec);
    parts.check(&spec)?;
    crate::invoke::resolve(program, entry.clone())?;
    program.host_call_problem(&spec)?;
    let id = TaskId::next();
    let host = parts.host_link(&spec, id, program)?;
    let backend = Arc::clone(backend);
    let cache_dir = prepare_for_worker(parts, &backend, program, &mut spec)?;

    let limits = spec.limits.clone();
    // The worker enforces the output limit; the parent only delivers.
    let (stdout, stdout_rx) = OutputPipe::new(Stream::Stdout, spec.stdout, None, limits.capture);
    let (stderr, stderr_rx) = OutputPipe::new(Stream::Stderr, spec.stderr, None, limits.capture);
    let forward_stdin = spec.stdin == Stdin::Inherit;
    // Input and stdin bytes follow the run frame as raw data frames.
    let (data, data_frames) = FollowingData::take(&mut spec);

    let slot = parts.slot().await?;
    let reuse = spec.reuse_worker;
    let sandbox = spec.sandbox.unwrap_or(backend.sandbox);
    let sandbox_key = (sandbox != Sandbox::Off).then(|| sandbox_key(&spec, &cache_dir));
    let worker = backend.take_worker(reuse, sandbox, sandbox_key).await?;
    let queue = crate::channel::queue_capacity(limits.message_queue);
    let (to_guest_tx, to_guest_rx) = mpsc::channel(queue);
    let (from_guest_tx, from_guest_rx) = mpsc::channel(queue);
    let program_id = protocol::ProgramId::of(program);
    *backend
        .last_program
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = Some(protocol::Preload {
        wasm: spec.wasm.clone(),
        cache_dir: cache_dir.clone(),
        program: program_id.clone(),
    });
    let data_limit = os_limits(&spec).data_bytes;
    let request = RunRequest {
        os_limits: os_limits(&spec),
        spec,
        cache_dir,
        program: program_id,
        entry,
        data,
        sandbox,
    };
    let cancel = CancellationToken::new();
    let Worker {
        child,
        pid,
        reader,
        writer,
        said,
        sandboxed: _,
        filtered: _,
        mut cgroup,
    } = worker;
    // Declared after the cgroup, so dropped (killed and reaped) before it
    // on an early return: a group goes once its worker is gone.
    // From here the worker is reaped whatever happens, even if this
    // future or the supervisor's is dropped half-way.
    let child = ChildGuard::new(child, pid);
    limit_cgroup_memory(cgroup.as_mut(), data_limit, sandbox)?;
    // One task owns the pipe to the worker; everything else queues frames
    // for it, so the supervisor never blocks on a full pipe while the
    // worker waits for it to read (which would deadlock both).
    let (frames_tx, frames_rx) = mpsc::channel(FRAME_QUEUE);
    // The run frame goes first: the forwarders below may queue frames at
    // once, and the worker expects its task before anything else.
    frames_tx
        .try_send(ToWorker::Run(Box::new(request)))
        .map_err(|_| Error::Internal("the worker queue is full".into()))?;
    // A frame that cannot be encoded (none should: paths travel as bytes)
    // ends the task `Failed` with the reason, through this channel.
    let (unsent_tx, unsent_rx) = oneshot::channel();
    // Frames that must not wait behind queued data (a stdin that keeps
    // the queue full): written before anything queued after them.
    let (urgent_tx, urgent_rx) = mpsc::unbounded_channel();
    let writer_task = tokio::spawn(write_frames(writer, frames_rx, urgent_rx, unsent_tx));
    let feeder = tokio::spawn(feed(
        frames_tx.clone(),
        data_frames,
        to_guest_rx,
        forward_stdin,
    ));
    let supervisor = Supervisor {
        host,
        max_message_size: limits.max_message_size.as_u64(),
        child,
        pid,
        reader,
        writer_task,
        feeder,
        reuse: reuse.then(|| Arc::clone(&backend)),
        refill: Some(backend),
        frames: frames_tx,
        urgent: urgent_tx,
        unsent: Some(unsent_rx),
        messages: from_guest_tx,
        cancel: cancel.clone(),
        timeout: limits.timeout,
        stdout,
        stderr,
        spawned_at,
        data_limit,
        said,
        sandbox_key,
        cgroup,
    };
    Ok(TaskHandle::start(
        id,
        about,
        cancel,
        supervisor.run(),
        slot,
        (stdout_rx, stderr_rx),
        (
            MessageSender { tx: to_guest_tx },
            MessageReceiver { rx: from_guest_rx },
        ),
        Some(pid),
    ))
}

/// The reply of the host call in flight (called only while there is one).
async fn poll_host_call(
    call: &mut Option<std::pin::Pin<Box<dyn std::future::Future<Output = HostReply> + Send>>>,
) -> HostReply {
    match call {
        Some(call) => call.await,
        None => std::future::pending().await,
    }
}

/// Frames queued for the worker's pipe.
const FRAME_QUEUE: usize = 16;

/// Writes queued frames to the worker, an `urgent` one before any queued
/// one (only frames that may come after the run frame go there). Hands the
/// pipe back after writing [`ToWorker::EndTask`], so a reused worker can
/// take another task. A frame that cannot be encoded is not replaced by
/// anything: its error goes to `unsent`, and the supervisor ends the task
/// `Failed` with it.
async fn write_frames(
    mut writer: Writer,
    mut frames: mpsc::Receiver<ToWorker>,
    mut urgent: mpsc::UnboundedReceiver<ToWorker>,
    unsent: oneshot::Sender<String>,
) -> Option<Writer> {
    loop {
        let frame = tokio::select! {
            biased;
            Some(frame) = urgent.recv() => frame,
            frame = frames.recv() => match frame {
                Some(frame) => frame,
                None => return None,
            },
        };
        let bytes = match frame.encode() {
            Ok(bytes) => bytes,
            Err(err) => {
                let _ = unsent.send(format!("cannot send the worker its task: {err}"));
                return None;
            }
        };
        if writer.send(bytes).await.is_err() {
            // The worker is gone; the supervisor reports how it ended.
            return None;
        }
        if frame == ToWorker::EndTask {
            return Some(writer);
        }
    }
}

/// Everything the parent sends the worker besides the run frame and
/// control frames, in order: the task's data frames first (the worker
/// reads them before anything else), then the host's messages and, for a
/// task that inherits it, the host's stdin.
async fn feed(
    frames: mpsc::Sender<ToWorker>,
    data: Vec<ToWorker>,
    messages: mpsc::Receiver<bytes::Bytes>,
    forward_stdin: bool,
) {
    for frame in data {
        if frames.send(frame).await.is_err() {
            return;
        }
    }
    let messages = forward_messages(messages, frames.clone());
    if forward_stdin {
        tokio::join!(messages, forward_stdin_frames(frames));
    } else {
        messages.await;
    }
}

/// Carries the host's messages to the worker, then tells it the channel
/// closed once every sender is dropped.
async fn forward_messages(
    mut messages: mpsc::Receiver<bytes::Bytes>,
    frames: mpsc::Sender<ToWorker>,
) {
    while let Some(message) = messages.recv().await {
        if frames.send(ToWorker::Message(message)).await.is_err() {
            return;
        }
    }
    let _ = frames.send(ToWorker::CloseChannel).await;
}

/// Carries the host process's stdin to the worker ([`Stdin::Inherit`]).
async fn forward_stdin_frames(frames: mpsc::Sender<ToWorker>) {
    let mut stdin = tokio::io::stdin();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let frame = match stdin.read(&mut buf).await {
            Ok(0) | Err(_) => ToWorker::StdinEnd,
            Ok(n) => ToWorker::Stdin(bytes::Bytes::copy_from_slice(&buf[..n])),
        };
        let end = frame == ToWorker::StdinEnd;
        if frames.send(frame).await.is_err() || end {
            return;
        }
    }
}

/// One running process task, from the parent's side.
struct Supervisor {
    /// The host functions the task may call, run here for its worker.
    host: crate::host_fn::HostLink,
    /// The task's message size limit, which bounds a host call's arguments
    /// (the worker checks it too, but is not trusted).
    max_message_size: u64,
    /// The worker process, reaped by the guard if this is dropped early.
    child: ChildGuard,
    /// What the worker said on its stderr that the outcome needs.
    said: Arc<WorkerSaid>,
    /// The grants the worker's sandbox is entered for, unless it is off.
    sandbox_key: Option<u64>,
    /// The worker's cgroup, if it has one: read if the worker dies without
    /// a report, removed after it is reaped (or kept with it for reuse).
    cgroup: Option<WorkerGroup>,
    /// Its pid and process group.
    pid: u32,
    /// Frames from the worker.
    reader: FramedRead<ChildStdout, LengthDelimitedCodec>,
    /// The task that owns the pipe to the worker.
    writer_task: tokio::task::JoinHandle<Option<Writer>>,
    /// Sends the task's data, then the host's messages and stdin
    /// ([`feed`]); stopped once the task is over.
    feeder: tokio::task::JoinHandle<()>,
    /// Where the worker goes back if the task opted into reuse.
    reuse: Option<Arc<ProcessBackend>>,
    /// The pool to top up once the guest has started.
    refill: Option<Arc<ProcessBackend>>,
    /// Frames queued for the worker.
    frames: mpsc::Sender<ToWorker>,
    /// Frames for the worker that go before anything queued.
    urgent: mpsc::UnboundedSender<ToWorker>,
    /// Why a frame could not be sent, if one could not be encoded; `None`
    /// once the writer has answered (or ended without a word).
    unsent: Option<oneshot::Receiver<String>>,
    /// The guest's messages, to the task's handle.
    messages: mpsc::Sender<bytes::Bytes>,
    /// Cancels the task.
    cancel: CancellationToken,
    /// The task's timeout, which the worker enforces; the parent's backstop
    /// is this plus [`GRACE`].
    timeout: Option<Duration>,
    /// The guest's stdout, delivered.
    stdout: OutputPipe,
    /// The guest's stderr, delivered.
    stderr: OutputPipe,
    /// When the task was spawned, for its start-up time.
    spawned_at: Instant,
    /// The worker's kernel memory limit, in bytes: a worker that exits
    /// with the out-of-memory status hit it.
    data_limit: u64,
}

impl Supervisor {
    /// Completes when the task should stop (cancelled or past its
    /// backstop), or at once if it is stopping already.
    fn stop_signal(
        &self,
        running: bool,
        backstop: Option<tokio::time::Instant>,
    ) -> impl std::future::Future<Output = ()> + use<> {
        let cancel = self.cancel.clone();
        async move {
            if !running {
                // Already stopping: do not wait at all.
                return;
            }
            tokio::select! {
                () = cancel.cancelled() => {}
                () = sleep_until(backstop) => {}
            }
        }
    }

    /// Carries frames until the worker reports or ends, then reaps (or
    /// keeps) it and builds the task's report.
    async fn run(mut self) -> TaskReport {
        let pid = self.pid;
        let mut finished = None;
        let mut protocol_error: Option<String> = None;
        let mut started_at = None;
        let mut stop: Option<Stop> = None;
        let mut kill_at: Option<tokio::time::Instant> = None;
        // Whether the worker was told that a stream's reader went away.
        let (mut stdout_told, mut stderr_told) = (false, false);
        // The worker enforces the timeout itself; this backstop covers a
        // worker that cannot (stopped, wedged).
        let backstop = self
            .timeout
            // A timeout too far away to represent has no backstop: checked,
            // because `Instant + Duration` panics on overflow.
            .and_then(|t| t.checked_add(GRACE))
            .and_then(|t| tokio::time::Instant::now().checked_add(t));

        // The worker's host call in flight (one at a time), dropped when
        // the task stops or ends: a function's future never outlives it.
        let mut host_call: Option<
            std::pin::Pin<Box<dyn std::future::Future<Output = HostReply> + Send>>,
        > = None;

        while protocol_error.is_none() {
            tokio::select! {
                biased;
                () = self.cancel.cancelled(), if stop.is_none() => {
                    host_call = None;
                    stop = Some(Stop::Cancelled);
                    // Polite first; if the queue to the worker is full, the
                    // kill below does it.
                    let _ = self.frames.try_send(ToWorker::Cancel);
                    kill_at = Some(tokio::time::Instant::now() + GRACE);
                }
                () = sleep_until(backstop), if stop.is_none() && backstop.is_some() => {
                    host_call = None;
                    stop = self.timeout.map(Stop::TimedOut);
                    let _ = self.frames.try_send(ToWorker::Cancel);
                    kill_at = Some(tokio::time::Instant::now() + GRACE);
                }
                () = sleep_until(kill_at), if kill_at.is_some() => {
                    kill_at = None;
                    let _ = sys::signal_group(pid, libc::SIGKILL);
                }
                reply = poll_host_call(&mut host_call), if host_call.is_some() => {
                    host_call = None;
                    // Ahead of queued messages and stdin: the guest waits.
                    let _ = self.urgent.send(ToWorker::HostReply(reply));
                }
                unsent = unsent_frame(&mut self.unsent) => {
                    self.unsent = None;
                    if let Some(why) = unsent {
                        protocol_error = Some(why);
                    }
                }
                frame = self.reader.next() => match frame {
                    None => break,
                    Some(Err(err)) => protocol_error = Some(format!("bad frame from worker: {err}")),
                    Some(Ok(frame)) => match FromWorker::decode(&frame) {
                        Ok(FromWorker::Started) => {
                            started_at = Some(Instant::now());
                            if let Some(pool) = self.refill.take() {
                                pool.refill_soon();
                            }
                        }
                        // Delivery waits for a slow reader (backpressure reaches
                        // the guest through the pipe) but never past a cancel
                        // or the timeout, which the next turn handles. Once the
                        // task is stopping, what cannot be delivered at once is
                        // dropped.
                        Ok(FromWorker::Stdout(bytes)) => {
                            let stop_now = self.stop_signal(stop.is_none(), backstop);
                            tokio::select! {
                                () = self.stdout.forward(bytes) => {}
                                () = stop_now => {}
                            }
                            // The reader went away (our stdout closed, a
                            // dropped receiver): the guest's writes must
                            // now fail, as in a thread task.
                            if !stdout_told && self.stdout.is_closed() {
                                stdout_told = true;
                                let _ = self.urgent.send(ToWorker::OutputClosed(Stream::Stdout));
                            }
                        }
                        Ok(FromWorker::Stderr(bytes)) => {
                            let stop_now = self.stop_signal(stop.is_none(), backstop);
                            tokio::select! {
                                () = self.stderr.forward(bytes) => {}
                                () = stop_now => {}
                            }
                            if !stderr_told && self.stderr.is_closed() {
                                stderr_told = true;
                                let _ = self.urgent.send(ToWorker::OutputClosed(Stream::Stderr));
                            }
                        }
                        Ok(FromWorker::Message(bytes)) => {
                            let stop_now = self.stop_signal(stop.is_none(), backstop);
                            tokio::select! {
                                // A reader that left drops the message.
                                _ = self.messages.send(bytes) => {}
                                () = stop_now => {}
                            }
                        }
                        Ok(FromWorker::Finished(report)) => {
                            finished = Some(*report);
                            break;
                        }
                        Ok(FromWorker::HostCall { function, args }) => {
                            if host_call.is_some() {
                                protocol_error = Some(
                                    "a host call from the worker while another is in flight".into(),
                                );
                            } else if !crate::host_fn::call_fits(
                                &function,
                                args.len(),
                                self.max_message_size,
                            ) {
                                protocol_error = Some(format!(
                                    "a host call's arguments ({} bytes) past the task's message \
                                     size limit, which the worker enforces",
                                    args.len()
                                ));
                            } else if stop.is_none() {
                                // The grants are checked here again.
                                let link = self.host.clone();
                                let max = self.max_message_size;
                                host_call = Some(Box::pin(async move {
                                    HostReply::of(link.call(function, args.to_vec(), max).await)
                                }));
                            }
                        }
                        Ok(FromWorker::Hello(_)) => {
                            protocol_error = Some("unexpected hello frame from worker".into());
                        }
                        Ok(FromWorker::CallOutput(_) | FromWorker::CallFailed(_)) => {
                            protocol_error = Some("unexpected plugin frame from worker".into());
                        }
                        Err(err) => protocol_error = Some(format!("bad frame from worker: {err}")),
                    },
                },
            }
        }
        // Whatever the function holds goes now, not after the reaping.
        drop(host_call);
        if protocol_error.is_some() {
            let _ = sys::signal_group(pid, libc::SIGKILL);
        }
        self.feeder.abort();
        if let Some(pool) = self.refill.take() {
            pool.refill_soon();
        }
        let reusable = protocol_error.is_none()
            && stop.is_none()
            && finished
                .as_ref()
                .is_some_and(|f| leaves_worker_clean(&f.outcome));
        let mut child = self.child;
        if let (Some(backend), true) = (&self.reuse, reusable)
            && let Some(writer) = end_task(&self.frames, &mut self.writer_task).await
            && let Some(kept) = child.take()
        {
            backend.keep(Worker {
                child: kept,
                pid,
                reader: self.reader,
                writer,
                said: Arc::clone(&self.said),
                sandboxed: self.sandbox_key,
                // Taken for this task's policy: filtered as it says.
                filtered: self.sandbox_key.is_some(),
                // The counts so far were this task's.
                cgroup: self.cgroup.take().map(|mut group| {
                    group.settle();
                    group
                }),
            });
        }
        let status = match child.get_mut() {
            Some(child) => {
                // Closing the pipe ends a worker that waits for another task.
                self.writer_task.abort();
                reap(child, pid, finished.is_none()).await
            }
            None => None,
        };
        let forbidden_syscall = self.said.forbidden_syscall(status).await;
        let outcome = WorkerEnding {
            reported: finished.as_ref().map(|f| f.outcome.clone()),
            protocol_error,
            stop,
            status,
            data_limit: Some(self.data_limit),
            forbidden_syscall,
            // Only a worker that died without a word needs its cause.
            cgroup: match (&finished, &self.cgroup) {
                (None, Some(group)) => Some(group.events()),
                _ => None,
            },
        }
        .into_outcome();
        let ended_at = Instant::now();
        let mut metrics = finished.map(|f| f.metrics).unwrap_or_default();
        let started = started_at.unwrap_or(ended_at);
        metrics.startup = started - self.spawned_at;
        if metrics.run_time.is_zero() {
            metrics.run_time = ended_at - started;
        }
        TaskReport {
            outcome,
            metrics,
            stdout: self.stdout.finish(),
            stderr: self.stderr.finish(),
        }
    }
}

/// Completes with the writer's word on a frame it could not encode
/// (`Some`), or `None` once it ended without one; never while it writes,
/// nor again after it answered (`unsent` is then `None`).
async fn unsent_frame(unsent: &mut Option<oneshot::Receiver<String>>) -> Option<String> {
    match unsent {
        Some(rx) => rx.await.ok(),
        None => std::future::pending().await,
    }
}

/// Whether a worker is fit for another task after this outcome: it reported
/// in full and nothing stopped it from outside or at an OS limit.
fn leaves_worker_clean(outcome: &Outcome) -> bool {
    match outcome {
        Outcome::Exited { .. }
        | Outcome::Returned { .. }
        | Outcome::Rejected { .. }
        | Outcome::Trapped(_) => true,
        Outcome::LimitExceeded { limit } => matches!(
            limit,
            Limit::Memory { .. }
                | Limit::Fuel { .. }
                | Limit::Output { .. }
                | Limit::MessageSize { .. }
                | Limit::Messages { .. }
        ),
        _ => false,
    }
}

/// Ends a finished task on a worker that stays: queues
/// [`ToWorker::EndTask`] and takes the pipe back once it is written.
async fn end_task(
    frames: &mpsc::Sender<ToWorker>,
    writer_task: &mut tokio::task::JoinHandle<Option<Writer>>,
) -> Option<Writer> {
    let ended = async {
        frames.send(ToWorker::EndTask).await.ok()?;
        writer_task.await.ok().flatten()
    };
    tokio::time::timeout(GRACE, ended).await.ok().flatten()
}

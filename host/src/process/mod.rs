//! Process isolation: each task in a child process that hosts its own
//! engine, behind the same [`TaskHandle`] and [`Outcome`] as thread tasks.
//!
//! The child (a *worker*) is the `isola` binary started with
//! [`worker::WORKER_ARG`]. It has an empty environment, its own process
//! group, dies with its parent (`PR_SET_PDEATHSIG`, plus end-of-file on its
//! stdin), and applies OS limits to itself once it knows its task. It loads
//! the parent's precompiled artifact from the disk cache instead of
//! compiling. Parent and child speak the framed protocol in [`protocol`].
//!
//! The runner keeps a few workers pre-started (handshake done, engine
//! created), so a task does not wait for a process to start.

pub(crate) mod protocol;
mod sys;
pub mod worker;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use tokio::io::AsyncReadExt;
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec, LinesCodec};
use tokio_util::sync::CancellationToken;

use self::protocol::{FromWorker, Hello, OsLimits, RunRequest, ToWorker};
use crate::channel::{MessageReceiver, MessageSender};
use crate::error::{Error, Result};
use crate::outcome::{Limit, Outcome, Stream, TaskReport};
use crate::output::OutputPipe;
use crate::program::Program;
use crate::runner::RunnerInner;
use crate::spec::{Stdin, TaskSpec};
use crate::task::{CancelHandle, Entry, TaskHandle, TaskId};

/// How long a worker gets to act on a polite cancel before SIGKILL.
const GRACE: Duration = Duration::from_millis(250);

/// How long a new worker gets to answer the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Memory a worker may use beyond its task's linear memory: the engine,
/// compiled code, fiber stack and WASI host state.
const DEFAULT_OS_MEMORY_HEADROOM: u64 = 512 << 20;

/// Open files a worker may have: preopened dirs, files the guest opens, pipes.
const WORKER_OPEN_FILES: u64 = 256;

/// A started worker that has completed the handshake.
struct Worker {
    child: Child,
    pid: u32,
    reader: FramedRead<ChildStdout, LengthDelimitedCodec>,
    writer: FramedWrite<ChildStdin, LengthDelimitedCodec>,
}

type Writer = FramedWrite<ChildStdin, LengthDelimitedCodec>;

/// The process backend of a runner: the worker binary and idle workers.
pub(crate) struct ProcessBackend {
    /// Configured, or looked up on first use (most runners never start a
    /// worker, and the lookup costs a few system calls).
    configured_program: Option<PathBuf>,
    program: std::sync::OnceLock<std::result::Result<PathBuf, String>>,
    prestart: usize,
    /// Fresh workers: handshake done, no task run yet.
    idle: Mutex<Vec<Worker>>,
    /// Workers that ran a `reuse_worker` task and wait for another.
    reusable: Mutex<Vec<Worker>>,
    keep_reusable: usize,
    /// The program of the last process task, which pre-started workers
    /// load while they wait: the next task most likely runs it too.
    last_program: Mutex<Option<protocol::Preload>>,
    /// Whether a refill is under way (one at a time, so a burst of tasks
    /// does not start a burst of surplus processes).
    refilling: AtomicBool,
    /// Artifacts for workers when the runner has no disk cache.
    private_cache: Mutex<Option<tempfile::TempDir>>,
}

impl ProcessBackend {
    pub(crate) fn new(
        program: Option<PathBuf>,
        prestart: usize,
        keep_reusable: usize,
    ) -> ProcessBackend {
        ProcessBackend {
            configured_program: program,
            program: std::sync::OnceLock::new(),
            prestart,
            idle: Mutex::new(Vec::new()),
            reusable: Mutex::new(Vec::new()),
            keep_reusable,
            last_program: Mutex::new(None),
            refilling: AtomicBool::new(false),
            private_cache: Mutex::new(None),
        }
    }

    fn program(&self) -> Result<&Path> {
        self.program
            .get_or_init(|| match &self.configured_program {
                Some(path) => Ok(path.clone()),
                None => find_worker_program(),
            })
            .as_deref()
            .map_err(|why| Error::Unsupported(format!("process isolation here ({why})")))
    }

    /// For a task that opts into reuse, a worker a previous such task left
    /// (if one is still alive); else an idle fresh worker if one is ready,
    /// else a new one. The caller tops the pool up with
    /// [`ProcessBackend::refill_soon`] once its task is under way.
    async fn take_worker(self: &Arc<Self>, reuse: bool) -> Result<Worker> {
        let program = self.program()?.to_owned();
        if reuse && let Some(worker) = self.take_reusable() {
            return Ok(worker);
        }
        let ready = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let worker = match ready {
            Some(worker) => worker,
            None => start_worker(&program).await.map_err(Error::Internal)?,
        };
        Ok(worker)
    }

    /// A kept worker that is still alive, if any. One that died while idle
    /// is reaped by `try_wait` and dropped.
    fn take_reusable(&self) -> Option<Worker> {
        let mut kept = self.reusable.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(mut worker) = kept.pop() {
            if matches!(worker.child.try_wait(), Ok(None)) {
                return Some(worker);
            }
        }
        None
    }

    /// Starts workers in the background until `prestart` are idle. Called
    /// once a task's worker has started its guest: a new process starting
    /// at the same time would compete with it for the CPU.
    fn refill_soon(self: &Arc<Self>) {
        let Ok(program) = self.program() else { return };
        if self.prestart == 0 || self.refilling.swap(true, Ordering::AcqRel) {
            return;
        }
        let program = program.to_owned();
        let backend = Arc::clone(self);
        tokio::spawn(async move {
            backend.refill(&program).await;
            backend.refilling.store(false, Ordering::Release);
        });
    }

    async fn refill(&self, program: &Path) {
        while self.idle.lock().unwrap_or_else(|e| e.into_inner()).len() < self.prestart {
            match start_worker(program).await {
                Ok(mut worker) => {
                    if worker.writer.send(ToWorker::WarmUp.encode()).await.is_err() {
                        continue;
                    }
                    let preload = self
                        .last_program
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .clone();
                    if let Some(preload) = preload
                        && worker
                            .writer
                            .send(ToWorker::Preload(Box::new(preload)).encode())
                            .await
                            .is_err()
                    {
                        continue;
                    }
                    let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
                    if idle.len() < self.prestart {
                        idle.push(worker);
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, "cannot pre-start a worker");
                    return;
                }
            }
        }
    }

    /// Keeps a worker that finished a `reuse_worker` task, or lets it go if
    /// enough are kept already.
    fn keep(&self, worker: Worker) {
        let mut kept = self.reusable.lock().unwrap_or_else(|e| e.into_inner());
        if kept.len() < self.keep_reusable {
            kept.push(worker);
            return;
        }
        drop(kept);
        let Worker {
            mut child,
            pid,
            writer,
            ..
        } = worker;
        tokio::spawn(async move {
            // End of input is the worker's cue to exit.
            drop(writer);
            reap(&mut child, pid, false).await;
        });
    }

    /// Where workers find precompiled artifacts.
    fn cache_root(&self, runner: &RunnerInner) -> Result<PathBuf> {
        if let Some(root) = runner.disk_cache_root() {
            return Ok(root.to_owned());
        }
        let mut private = self.private_cache.lock().unwrap_or_else(|e| e.into_inner());
        if private.is_none() {
            *private = Some(tempfile::tempdir().map_err(Error::internal)?);
        }
        private
            .as_ref()
            .map(|dir| dir.path().to_owned())
            .ok_or_else(|| Error::Internal("no private cache".into()))
    }
}

/// The worker binary: `$ISOLA_WORKER_PROGRAM`, this executable if it is
/// `isola`, or an `isola` next to it (or one level up, where Cargo puts
/// binaries relative to test executables).
fn find_worker_program() -> std::result::Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("ISOLA_WORKER_PROGRAM") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    if exe.file_stem().is_some_and(|s| s == "isola") {
        return Ok(exe);
    }
    let beside = exe.parent().map(|d| d.join("isola"));
    let above = exe.parent().and_then(Path::parent).map(|d| d.join("isola"));
    [beside, above]
        .into_iter()
        .flatten()
        .find(|p| p.is_file())
        .ok_or_else(|| {
            "no `isola` worker binary found: set `RunnerConfig::worker_program` \
             or `ISOLA_WORKER_PROGRAM`"
                .to_owned()
        })
}

async fn start_worker(program: &Path) -> std::result::Result<Worker, String> {
    let mut command = tokio::process::Command::new(program);
    command
        .arg(worker::WORKER_ARG)
        // Nothing ambient: the guest's variables travel in the spec.
        .env_clear()
        .env(worker::PARENT_ENV, std::process::id().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(log) = std::env::var_os("ISOLA_LOG") {
        command.env("ISOLA_LOG", log);
    }
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot start worker `{}`: {e}", program.display()))?;
    let pid = child.id().ok_or("worker exited at once")?;
    let (Some(stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err("worker pipes missing".into());
    };
    // A worker's own diagnostics (never the guest's output, which travels
    // in frames) go to the log, a bounded line at a time.
    tokio::spawn(async move {
        let mut lines = FramedRead::new(stderr, LinesCodec::new_with_max_length(8 * 1024));
        while let Some(Ok(line)) = lines.next().await {
            tracing::warn!(worker = pid, "{line}");
        }
    });
    let mut worker = Worker {
        child,
        pid,
        reader: FramedRead::new(stdout, protocol::codec()),
        writer: FramedWrite::new(stdin, protocol::codec()),
    };
    let handshake = async {
        worker
            .writer
            .send(ToWorker::Hello(Hello::current()).encode())
            .await
            .map_err(|e| e.to_string())?;
        match worker.reader.next().await {
            Some(Ok(frame)) => match FromWorker::decode(&frame).map_err(|e| e.to_string())? {
                FromWorker::Hello(hello) => {
                    protocol::check_hello(&hello).map_err(|e| e.to_string())
                }
                _ => Err("expected a hello frame".to_owned()),
            },
            Some(Err(e)) => Err(e.to_string()),
            None => Err("worker exited during the handshake".to_owned()),
        }
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(())) => Ok(worker),
        Ok(Err(err)) => Err(format!("worker handshake failed: {err}")),
        Err(_) => Err("worker did not answer the handshake".into()),
    }
}

/// The OS limits for a task's worker.
fn os_limits(spec: &TaskSpec) -> OsLimits {
    let data_bytes = spec
        .limits
        .process_memory
        .map(|m| m.as_u64())
        .unwrap_or_else(|| spec.limits.max_memory.as_u64() + DEFAULT_OS_MEMORY_HEADROOM);
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

/// Readies a spec for a worker and returns the cache directory it loads
/// from: the artifact is put there (compiled once, here), inherited
/// variables are resolved (the worker's environment is empty), the program
/// is named by its path, and the grants are checked.
fn prepare_for_worker(
    runner: &RunnerInner,
    backend: &ProcessBackend,
    program: &Program,
    spec: &mut TaskSpec,
) -> Result<PathBuf> {
    let cache_dir = backend.cache_root(runner)?;
    runner.ensure_artifact(program, &cache_dir)?;
    for key in std::mem::take(&mut spec.inherit_env) {
        if let Ok(value) = std::env::var(&key) {
            spec.env.insert(key, value);
        }
    }
    spec.wasm = program.path().to_owned();
    crate::task::check_grants(spec)?;
    Ok(cache_dir)
}

/// Starts a process-isolated task.
pub(crate) async fn spawn(
    runner: &Arc<RunnerInner>,
    program: &Program,
    mut spec: TaskSpec,
    entry: Entry,
) -> Result<TaskHandle> {
    let spawned_at = Instant::now();
    crate::task::check_limits(runner, &spec)?;
    crate::task::resolve_entry(program, entry)?;
    if spec.limits.max_message_size.as_u64() >= protocol::MAX_FRAME as u64 {
        return Err(Error::InvalidSpec {
            field: "limits.max_message_size".into(),
            message: format!(
                "process tasks carry messages in IPC frames of at most {}",
                bytesize::ByteSize(protocol::MAX_FRAME as u64)
            ),
        });
    }
    let backend = Arc::clone(&runner.process);
    let cache_dir = prepare_for_worker(runner, &backend, program, &mut spec)?;

    let limits = spec.limits.clone();
    // The worker enforces the output limit; the parent only delivers.
    let (stdout, stdout_rx) = OutputPipe::new(Stream::Stdout, spec.stdout, None, limits.capture);
    let (stderr, stderr_rx) = OutputPipe::new(Stream::Stderr, spec.stderr, None, limits.capture);
    let forward_stdin = spec.stdin == Stdin::Inherit;

    let slot = Arc::clone(&runner.slots)
        .acquire_owned()
        .await
        .map_err(|_| Error::ShutDown)?;
    let reuse = spec.reuse_worker;
    let worker = backend.take_worker(reuse).await?;
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
    let request = RunRequest {
        os_limits: os_limits(&spec),
        spec,
        cache_dir,
        program: program_id,
        entry,
    };
    let cancel = CancellationToken::new();
    let Worker {
        child,
        pid,
        reader,
        writer,
    } = worker;
    // One task owns the pipe to the worker; everything else queues frames
    // for it, so the supervisor never blocks on a full pipe while the
    // worker waits for it to read (which would deadlock both).
    let (frames_tx, frames_rx) = mpsc::channel(FRAME_QUEUE);
    // The run frame goes first: the forwarders below may queue frames at
    // once, and the worker expects its task before anything else.
    frames_tx
        .try_send(ToWorker::Run(Box::new(request)))
        .map_err(|_| Error::Internal("the worker queue is full".into()))?;
    let writer_task = tokio::spawn(write_frames(writer, frames_rx));
    tokio::spawn(forward_messages(to_guest_rx, frames_tx.clone()));
    let stdin_task = forward_stdin.then(|| tokio::spawn(forward_stdin_frames(frames_tx.clone())));
    let supervisor = Supervisor {
        child,
        pid,
        reader,
        writer_task,
        stdin_task,
        reuse: reuse.then(|| Arc::clone(&backend)),
        refill: Some(backend),
        frames: frames_tx,
        messages: from_guest_tx,
        cancel: cancel.clone(),
        timeout: limits.timeout,
        stdout,
        stderr,
        spawned_at,
    };
    let join = tokio::spawn(async move {
        let report = supervisor.run().await;
        drop(slot);
        report
    });
    Ok(TaskHandle::new(
        TaskId::next(),
        CancelHandle::new(cancel),
        join,
        (stdout_rx, stderr_rx),
        (
            MessageSender { tx: to_guest_tx },
            MessageReceiver { rx: from_guest_rx },
        ),
        Some(pid),
    ))
}

/// Frames queued for the worker's pipe.
const FRAME_QUEUE: usize = 16;

/// Writes queued frames to the worker. Hands the pipe back after writing
/// [`ToWorker::EndTask`], so a reused worker can take another task.
async fn write_frames(mut writer: Writer, mut frames: mpsc::Receiver<ToWorker>) -> Option<Writer> {
    while let Some(frame) = frames.recv().await {
        if writer.send(frame.encode()).await.is_err() {
            // The worker is gone; the supervisor reports how it ended.
            return None;
        }
        if frame == ToWorker::EndTask {
            return Some(writer);
        }
    }
    None
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

/// Why the parent is ending a worker early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopReason {
    Cancelled,
    TimedOut(Duration),
}

struct Supervisor {
    child: Child,
    pid: u32,
    reader: FramedRead<ChildStdout, LengthDelimitedCodec>,
    writer_task: tokio::task::JoinHandle<Option<Writer>>,
    stdin_task: Option<tokio::task::JoinHandle<()>>,
    /// Where the worker goes back if the task opted into reuse.
    reuse: Option<Arc<ProcessBackend>>,
    /// The pool to top up once the guest has started.
    refill: Option<Arc<ProcessBackend>>,
    frames: mpsc::Sender<ToWorker>,
    messages: mpsc::Sender<bytes::Bytes>,
    cancel: CancellationToken,
    timeout: Option<Duration>,
    stdout: OutputPipe,
    stderr: OutputPipe,
    spawned_at: Instant,
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

    async fn run(mut self) -> TaskReport {
        let pid = self.pid;
        let mut finished = None;
        let mut protocol_error: Option<String> = None;
        let mut started_at = None;
        let mut stop: Option<StopReason> = None;
        let mut kill_at: Option<tokio::time::Instant> = None;
        // The worker enforces the timeout itself; this backstop covers a
        // worker that cannot (stopped, wedged).
        let backstop = self
            .timeout
            // A timeout too far away to represent has no backstop: checked,
            // because `Instant + Duration` panics on overflow.
            .and_then(|t| t.checked_add(GRACE))
            .and_then(|t| tokio::time::Instant::now().checked_add(t));

        while protocol_error.is_none() {
            tokio::select! {
                biased;
                () = self.cancel.cancelled(), if stop.is_none() => {
                    stop = Some(StopReason::Cancelled);
                    // Polite first; if the queue to the worker is full, the
                    // kill below does it.
                    let _ = self.frames.try_send(ToWorker::Cancel);
                    kill_at = Some(tokio::time::Instant::now() + GRACE);
                }
                () = sleep_until(backstop), if stop.is_none() && backstop.is_some() => {
                    stop = self.timeout.map(StopReason::TimedOut);
                    let _ = self.frames.try_send(ToWorker::Cancel);
                    kill_at = Some(tokio::time::Instant::now() + GRACE);
                }
                () = sleep_until(kill_at), if kill_at.is_some() => {
                    kill_at = None;
                    let _ = sys::signal_group(pid, libc::SIGKILL);
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
                        }
                        Ok(FromWorker::Stderr(bytes)) => {
                            let stop_now = self.stop_signal(stop.is_none(), backstop);
                            tokio::select! {
                                () = self.stderr.forward(bytes) => {}
                                () = stop_now => {}
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
        if protocol_error.is_some() {
            let _ = sys::signal_group(pid, libc::SIGKILL);
        }
        if let Some(stdin) = &self.stdin_task {
            stdin.abort();
        }
        if let Some(pool) = self.refill.take() {
            pool.refill_soon();
        }
        let reusable = protocol_error.is_none()
            && stop.is_none()
            && finished
                .as_ref()
                .is_some_and(|f| leaves_worker_clean(&f.outcome));
        let mut child = Some(self.child);
        if let (Some(backend), true) = (&self.reuse, reusable)
            && let Some(writer) = end_task(&self.frames, &mut self.writer_task).await
            && let Some(child) = child.take()
        {
            backend.keep(Worker {
                child,
                pid,
                reader: self.reader,
                writer,
            });
        }
        let status = match child.as_mut() {
            Some(child) => {
                // Closing the pipe ends a worker that waits for another task.
                self.writer_task.abort();
                reap(child, pid, finished.is_none()).await
            }
            None => None,
        };
        let outcome = match (finished.as_ref(), protocol_error, stop) {
            // A worker told to stop for a timeout reports "cancelled"; the
            // reason the parent stopped it is the truth.
            (Some(f), _, Some(StopReason::TimedOut(after))) if f.outcome == Outcome::Cancelled => {
                Outcome::LimitExceeded {
                    limit: Limit::Timeout { after },
                }
            }
            (Some(f), _, _) => f.outcome.clone(),
            (None, Some(message), _) => Outcome::Failed { message },
            (None, None, Some(StopReason::Cancelled)) => Outcome::Cancelled,
            (None, None, Some(StopReason::TimedOut(after))) => Outcome::LimitExceeded {
                limit: Limit::Timeout { after },
            },
            (None, None, None) => Outcome::Crashed {
                signal: status.and_then(|s| s.signal()),
                status: status.and_then(|s| s.code()),
            },
        };
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

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Waits for the worker to exit, killing its group if it lingers, so no
/// worker outlives its task and none is left a zombie.
async fn reap(child: &mut Child, pid: u32, abnormal: bool) -> Option<std::process::ExitStatus> {
    let wait = if abnormal { GRACE } else { GRACE * 4 };
    match tokio::time::timeout(wait, child.wait()).await {
        // Once reaped, the group id may be reused: never signal it after.
        Ok(Ok(status)) => Some(status),
        _ => {
            let _ = sys::signal_group(pid, libc::SIGKILL);
            child.wait().await.ok()
        }
    }
}

/// A kept plugin instance in a worker process of its own: the worker
/// instantiates it once and answers calls until the pipe closes.
pub(crate) struct PluginWorker {
    /// `None` once reaped (after a crash or a kill).
    child: Option<Child>,
    pid: u32,
    reader: FramedRead<ChildStdout, LengthDelimitedCodec>,
    writer: Writer,
    timeout: Option<Duration>,
    /// Why the instance is unusable, once it is.
    broken: Option<Outcome>,
    /// A call was sent and its answer not read: a caller gave up on it, and
    /// the next answer on the pipe would be that one's.
    in_call: bool,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

/// Starts a worker that keeps a plugin instance (see
/// [`crate::Runner::plugin`]).
pub(crate) async fn start_plugin(
    runner: &Arc<RunnerInner>,
    program: &Program,
    mut spec: TaskSpec,
) -> Result<PluginWorker> {
    crate::task::check_limits(runner, &spec)?;
    crate::task::resolve_entry(program, Entry::Run)?;
    if spec.stdin == Stdin::Inherit {
        return Err(Error::InvalidSpec {
            field: "stdin".into(),
            message: "a kept plugin instance in a worker process cannot read the host's stdin"
                .into(),
        });
    }
    let backend = Arc::clone(&runner.process);
    let cache_dir = prepare_for_worker(runner, &backend, program, &mut spec)?;
    let slot = Arc::clone(&runner.slots)
        .acquire_owned()
        .await
        .map_err(|_| Error::ShutDown)?;
    let Worker {
        child,
        pid,
        reader,
        mut writer,
    } = backend.take_worker(false).await?;
    backend.refill_soon();
    let timeout = spec.limits.timeout;
    let request = RunRequest {
        os_limits: os_limits(&spec),
        program: protocol::ProgramId::of(program),
        spec,
        cache_dir,
        entry: Entry::Run,
    };
    let mut worker = PluginWorker {
        child: Some(child),
        pid,
        reader,
        writer: {
            let sent = writer
                .send(ToWorker::Plugin(Box::new(request)).encode())
                .await;
            sent.map_err(|e| Error::Internal(format!("cannot reach the plugin's worker: {e}")))?;
            writer
        },
        timeout,
        broken: None,
        in_call: false,
        _slot: slot,
    };
    let ready = async {
        loop {
            let frame = match worker.reader.next().await {
                Some(Ok(frame)) => frame,
                Some(Err(err)) => return Err(format!("bad frame from the worker: {err}")),
                None => return Err(format!("the worker ended: {}", worker.died().await)),
            };
            match FromWorker::decode(&frame).map_err(|e| e.to_string())? {
                FromWorker::Started => return Ok(()),
                FromWorker::Finished(finished) => return Err(finished.outcome.to_string()),
                FromWorker::Stdout(_) | FromWorker::Stderr(_) => {}
                _ => return Err("unexpected frame from the worker".into()),
            }
        }
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, ready).await {
        Ok(Ok(())) => Ok(worker),
        Ok(Err(why)) => Err(Error::Internal(format!(
            "cannot instantiate the plugin: {why}"
        ))),
        Err(_) => Err(Error::Internal(
            "the plugin's worker did not get ready in time".into(),
        )),
    }
}

impl PluginWorker {
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    pub(crate) async fn call(
        &mut self,
        input: Vec<u8>,
    ) -> std::result::Result<Vec<u8>, crate::runner::CallError> {
        use crate::plugin::{ended, unusable};
        if self.in_call && self.broken.is_none() {
            // The caller dropped the last call while it ran: its answer
            // would come next, and the instance stopped mid-`run`.
            self.broken = Some(crate::plugin::abandoned());
            self.kill().await;
        }
        if let Some(outcome) = &self.broken {
            return Err(unusable(outcome));
        }
        self.in_call = true;
        let started = Instant::now();
        let metrics = |started: Instant| crate::outcome::TaskMetrics {
            run_time: started.elapsed(),
            ..Default::default()
        };
        if self
            .writer
            .send(ToWorker::Call(input.into()).encode())
            .await
            .is_err()
        {
            let outcome = self.died().await;
            return Err(ended(outcome, metrics(started)));
        }
        // The worker enforces the timeout; this backstop covers one that
        // cannot (stopped, wedged).
        let backstop = self
            .timeout
            .and_then(|t| t.checked_add(GRACE))
            .and_then(|t| tokio::time::Instant::now().checked_add(t));
        loop {
            let frame = tokio::select! {
                frame = self.reader.next() => frame,
                () = sleep_until(backstop) => {
                    self.kill().await;
                    let outcome = Outcome::LimitExceeded {
                        limit: Limit::Timeout {
                            after: self.timeout.unwrap_or_default(),
                        },
                    };
                    self.broken = Some(outcome.clone());
                    return Err(ended(outcome, metrics(started)));
                }
            };
            let decoded = match frame {
                Some(Ok(frame)) => FromWorker::decode(&frame).map_err(|e| e.to_string()),
                Some(Err(err)) => Err(err.to_string()),
                None => {
                    let outcome = self.died().await;
                    return Err(ended(outcome, metrics(started)));
                }
            };
            match decoded {
                Ok(FromWorker::CallOutput(output)) => {
                    self.in_call = false;
                    return Ok(output.to_vec());
                }
                Ok(FromWorker::CallFailed(failure)) => {
                    self.in_call = false;
                    return Err(match *failure {
                        protocol::CallFailure::Rejected { error } => {
                            crate::runner::CallError::Rejected(error)
                        }
                        protocol::CallFailure::Ended { outcome, metrics } => {
                            self.broken = Some(outcome.clone());
                            ended(outcome, metrics)
                        }
                    });
                }
                Ok(FromWorker::Stdout(_) | FromWorker::Stderr(_)) => {}
                Ok(_) | Err(_) => {
                    self.kill().await;
                    let outcome = Outcome::Failed {
                        message: "bad frame from the plugin's worker".into(),
                    };
                    self.broken = Some(outcome.clone());
                    return Err(ended(outcome, metrics(started)));
                }
            }
        }
    }

    /// The worker's pipe closed: reaps it and says how it ended.
    async fn died(&mut self) -> Outcome {
        let status = match self.child.as_mut() {
            Some(child) => reap(child, self.pid, true).await,
            None => None,
        };
        self.child = None;
        let outcome = Outcome::Crashed {
            signal: status.and_then(|s| s.signal()),
            status: status.and_then(|s| s.code()),
        };
        self.broken = Some(outcome.clone());
        outcome
    }

    async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = sys::signal_group(self.pid, libc::SIGKILL);
            let _ = child.wait().await;
        }
    }
}

impl Drop for PluginWorker {
    fn drop(&mut self) {
        // The writer closes after this returns: end of input is the
        // worker's cue to exit; it is reaped in the background.
        if let (Some(mut child), Ok(runtime)) =
            (self.child.take(), tokio::runtime::Handle::try_current())
        {
            let pid = self.pid;
            runtime.spawn(async move {
                reap(&mut child, pid, false).await;
            });
        }
    }
}

//! The worker pool: finding the worker binary, starting workers (handshake
//! included), keeping some pre-started and some reusable, reaping them.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec, LinesCodec};

use crate::error::{Error, Result};
use crate::ipc::protocol::{self, FromWorker, Hello, ToWorker};
use crate::ipc::sys;
use crate::parts::Parts;

/// How long a worker gets to act on a polite cancel before SIGKILL.
pub(crate) const GRACE: Duration = Duration::from_millis(250);

/// How long a new worker gets to answer the handshake.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A started worker that has completed the handshake.
pub(crate) struct Worker {
    pub(crate) child: Child,
    pub(crate) pid: u32,
    pub(crate) reader: FramedRead<ChildStdout, LengthDelimitedCodec>,
    pub(crate) writer: Writer,
}

/// The parent's end of the pipe to a worker, framed.
pub(crate) type Writer = FramedWrite<ChildStdin, LengthDelimitedCodec>;

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
    pub(crate) last_program: Mutex<Option<protocol::Preload>>,
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
    pub(crate) async fn take_worker(self: &Arc<Self>, reuse: bool) -> Result<Worker> {
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
    pub(crate) fn refill_soon(self: &Arc<Self>) {
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
    pub(crate) fn keep(&self, worker: Worker) {
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
    pub(crate) fn cache_root(&self, parts: &Parts) -> Result<PathBuf> {
        if let Some(root) = parts.loader.disk_cache_root() {
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
        .arg(protocol::WORKER_ARG)
        // Nothing ambient: the guest's variables travel in the spec.
        .env_clear()
        .env(protocol::PARENT_ENV, std::process::id().to_string())
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

/// Sleeps until `deadline`, or forever without one.
pub(crate) async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Waits for the worker to exit, killing its group if it lingers, so no
/// worker outlives its task and none is left a zombie.
pub(crate) async fn reap(
    child: &mut Child,
    pid: u32,
    abnormal: bool,
) -> Option<std::process::ExitStatus> {
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

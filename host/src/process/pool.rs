//! The worker pool: finding the worker binary, starting workers (handshake
//! included), keeping some pre-started and some reusable, reaping them.
//!
//! Every worker process is reaped by Isola, never left to chance: a task's
//! supervisor waits for its worker; a worker dropped anywhere else (idle or
//! kept when the runner goes, mid-handshake, dropped with its task's future
//! when the runtime shuts down) is in a [`ChildGuard`] or in the
//! [`ProcessBackend`], whose `Drop` kills it and waits for it, synchronously
//! and within [`REAP_BOUND`], because the runtime that would otherwise reap
//! it may be gone. Tokio's own `kill_on_drop` only sends SIGKILL and leaves
//! the zombie to a later `SIGCHLD`, which never comes once Isola exits: the
//! worker is then re-parented to PID 1, and a container whose PID 1 does
//! not reap collects zombies.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec, LinesCodec};

use crate::error::{Error, Result};
use crate::ipc::cgroup::{Cgroups, WorkerGroup};
use crate::ipc::protocol::{self, FromWorker, Hello, ToWorker};
use crate::ipc::sys;
use crate::outcome::{ForbiddenSyscall, WORKER_FORBIDDEN_SYSCALL};
use crate::parts::Parts;
use crate::spec::Sandbox;
use crate::telemetry;

/// How long a worker gets to act on a polite cancel before SIGKILL.
pub(crate) const GRACE: Duration = Duration::from_millis(250);

/// How long a new worker gets to answer the handshake.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long dropping workers waits for them to die after SIGKILL. The
/// kernel ends a killed process at once, but tearing down its address space
/// takes a moment; a process stuck in the kernel (uninterruptible sleep)
/// could take longer, and is then left to Tokio's reaper rather than
/// holding up a drop forever.
pub(crate) const REAP_BOUND: Duration = Duration::from_secs(1);

/// A started worker that has completed the handshake.
pub(crate) struct Worker {
    /// The worker process, not yet reaped.
    pub(crate) child: Child,
    /// Its process id, which is also its process group's.
    pub(crate) pid: u32,
    /// Frames from the worker.
    pub(crate) reader: FramedRead<ChildStdout, LengthDelimitedCodec>,
    /// Frames to the worker.
    pub(crate) writer: Writer,
    /// What the worker said on its stderr that its parent acts on.
    pub(crate) said: Arc<WorkerSaid>,
    /// The grants (a [`sandbox_key`]) whose sandbox the worker entered for
    /// a task it ran, if it did: it can serve only tasks with the same
    /// grants, as a Landlock ruleset can be narrowed but never widened.
    pub(crate) sandboxed: Option<u64>,
    /// Whether it was started with a sandbox policy other than `off`, so
    /// its seccomp filter went up as it started: it serves only tasks whose
    /// policy is the same way.
    pub(crate) filtered: bool,
    /// The cgroup it runs in, when it is sandboxed and the machine lets
    /// Isola make one (perhaps only in part: [`Worker::is_caged`]). Dropped
    /// after the worker is reaped.
    pub(crate) cgroup: Option<WorkerGroup>,
}

impl Worker {
    /// Whether it is in every one of its cgroups, as a task that requires
    /// the sandbox needs.
    pub(crate) fn is_caged(&self) -> bool {
        self.cgroup.as_ref().is_some_and(WorkerGroup::is_complete)
    }
}

/// What a worker wrote on its stderr that its parent acts on. The
/// worker's other diagnostics go to the log.
#[derive(Debug, Default)]
pub(crate) struct WorkerSaid {
    /// The system call its sandbox refused, from the `SIGSYS` reporter's
    /// line.
    forbidden_syscall: std::sync::OnceLock<i64>,
    /// Set when its stderr reached its end (the worker exited).
    closed: AtomicBool,
}

impl WorkerSaid {
    /// The system call the worker's sandbox refused, when its exit
    /// `status` says it was stopped for one. Waits for its stderr to be
    /// read to the end, at most [`SAID_BOUND`]: the worker wrote the line
    /// before it exited, but the reader may lag behind the reap.
    pub(crate) async fn forbidden_syscall(
        &self,
        status: Option<std::process::ExitStatus>,
    ) -> Option<ForbiddenSyscall> {
        if status.and_then(|s| s.code()) != Some(WORKER_FORBIDDEN_SYSCALL) {
            return None;
        }
        let deadline = tokio::time::Instant::now() + SAID_BOUND;
        while !self.closed.load(Ordering::Acquire) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let number = *self.forbidden_syscall.get()?;
        Some(ForbiddenSyscall {
            number,
            name: crate::ipc::sandbox::syscall_name(number),
        })
    }
}

/// How long an outcome waits for a dead worker's last stderr line.
const SAID_BOUND: Duration = Duration::from_millis(200);

/// A key for what a task's sandbox lets its worker reach: the host
/// directories granted (with their access), the stdin file, the cache.
pub(crate) fn sandbox_key(spec: &crate::spec::TaskSpec, cache_dir: &Path) -> u64 {
    use std::hash::{Hash, Hasher};
    // Only compared within this process's life: any stable-for-the-run
    // hash will do.
    // The file behind each path too: Landlock's rule holds the inode that
    // was there when the worker entered its sandbox, so a directory made
    // anew at the same path needs a new worker.
    let hash_path = |path: &Path, hasher: &mut std::collections::hash_map::DefaultHasher| {
        use std::os::unix::fs::MetadataExt;
        path.hash(hasher);
        if let Ok(meta) = std::fs::metadata(path) {
            (meta.dev(), meta.ino()).hash(hasher);
        }
    };
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for dir in &spec.dirs {
        hash_path(&dir.host, &mut hasher);
        dir.writable.hash(&mut hasher);
    }
    if let crate::spec::Stdin::File(path) = &spec.stdin {
        hash_path(path, &mut hasher);
    }
    hash_path(cache_dir, &mut hasher);
    spec.wasm.hash(&mut hasher);
    hasher.finish()
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
    /// The OS sandbox its workers enter before running a task.
    pub(crate) sandbox: Sandbox,
    /// Each sandboxed worker's cgroup CPU quota, in microseconds per
    /// [`crate::ipc::cgroup::CPU_PERIOD`] (`RunnerConfig::worker_cpu_quota`);
    /// `None`: no `cpu` group.
    pub(crate) cpu_quota: Option<u64>,
    /// The network namespace its sandboxed workers share.
    network: super::netns::SharedNamespace,
    /// Where its sandboxed workers' cgroups go, found on first use, or
    /// why there are none.
    cgroups: std::sync::OnceLock<std::result::Result<Cgroups, String>>,
    /// A worker's cgroup made ahead, for the next sandboxed worker to start
    /// (making one takes about 0.3 ms, which a cold start would otherwise
    /// wait for): made after each start's handshake went out, while the
    /// worker is busy with its own start-up.
    spare_cgroup: Mutex<Option<WorkerGroup>>,
}

impl Drop for ProcessBackend {
    /// Kills and reaps every idle and kept worker before the backend goes.
    ///
    /// Synchronous on purpose: the last reference may go while the runtime
    /// shuts down (a refill task dropped with it), when nothing async can
    /// run any more. Without this the workers were killed by Tokio's
    /// `kill_on_drop` and never waited for: zombies until Isola exited,
    /// then zombies of PID 1.
    fn drop(&mut self) {
        let mut workers = std::mem::take(self.idle.get_mut().unwrap_or_else(|e| e.into_inner()));
        workers.append(self.reusable.get_mut().unwrap_or_else(|e| e.into_inner()));
        // Their cgroups go once they are reaped, not before.
        let mut groups = Vec::new();
        let children = workers
            .into_iter()
            .map(|w| {
                groups.push(w.cgroup);
                (w.child, w.pid)
            })
            .collect();
        kill_and_reap(children, REAP_BOUND);
        drop(groups);
        crate::ipc::cgroup::sweep();
    }
}

impl ProcessBackend {
    /// A backend that starts `program` as its worker (or finds one, if
    /// `None`), keeps `prestart` workers started and idle, and keeps up to
    /// `keep_reusable` workers of `reuse_worker` tasks.
    pub(crate) fn new(
        program: Option<PathBuf>,
        prestart: usize,
        keep_reusable: usize,
        sandbox: Sandbox,
        cpu_quota: Option<u64>,
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
            sandbox,
            cpu_quota,
            network: super::netns::SharedNamespace::default(),
            cgroups: std::sync::OnceLock::new(),
            spare_cgroup: Mutex::new(None),
        }
    }

    /// Whether every cgroup controller can limit workers here, as
    /// [`Sandbox::Required`] demands.
    ///
    /// # Errors
    ///
    /// [`Error::SandboxUnavailable`], naming what is missing and why.
    fn cgroups_required(&self) -> Result<()> {
        let missing = match self.cgroups() {
            Ok(cgroups) => match cgroups.missing().first() {
                Some((controller, why)) => format!("no {controller} controller: {why}"),
                None => return Ok(()),
            },
            Err(why) => why.to_owned(),
        };
        Err(Error::SandboxUnavailable(format!(
            "its cgroup layer is unavailable: {missing}"
        )))
    }

    /// Where sandboxed workers' cgroups go, found once; a layer missing
    /// here is said once, in the log (`ISOLA_LOG`).
    pub(crate) fn cgroups(&self) -> std::result::Result<&Cgroups, &str> {
        self.cgroups
            .get_or_init(|| {
                let found = Cgroups::find(self.cpu_quota.is_some());
                match &found {
                    Ok(cgroups) => {
                        for (controller, why) in cgroups.missing() {
                            tracing::warn!(
                                "sandbox: workers have no cgroup {controller} limit: {why}"
                            );
                        }
                    }
                    Err(why) => tracing::warn!(
                        "sandbox: cgroup limits are unavailable ({why}); workers run under \
                         their rlimits alone"
                    ),
                }
                found
            })
            .as_ref()
            .map_err(String::as_str)
    }

    /// The worker binary, looked up once.
    fn program(&self) -> Result<&Path> {
        self.program
            .get_or_init(|| {
                let path = match &self.configured_program {
                    Some(path) => path.clone(),
                    None => find_worker_program()?,
                };
                // Workers start in `/`, where a relative path would
                // name another file.
                std::path::absolute(&path)
                    .map_err(|e| format!("cannot resolve `{}`: {e}", path.display()))
            })
            .as_deref()
            .map_err(|why| Error::Unsupported(format!("process isolation here ({why})")))
    }

    /// For a task that opts into reuse, a worker a previous such task left
    /// (if one is still alive); else an idle fresh worker if one is ready,
    /// else a new one. The caller tops the pool up with
    /// [`ProcessBackend::refill_soon`] once its task is under way.
    ///
    /// `sandbox` is the task's policy (its own or the runner's): pre-started
    /// workers went up under the runner's, so a task whose policy differs
    /// in whether there is a sandbox at all gets a worker of its own.
    pub(crate) async fn take_worker(
        self: &Arc<Self>,
        reuse: bool,
        sandbox: Sandbox,
        sandbox_key: Option<u64>,
    ) -> Result<Worker> {
        let program = self.program()?.to_owned();
        let filtered = sandbox != Sandbox::Off;
        if sandbox == Sandbox::Required {
            self.cgroups_required()?;
        }
        // A worker that got no cgroup (its placement failed under `on`)
        // serves no task that requires one.
        let caged = sandbox == Sandbox::Required;
        if reuse && let Some(worker) = self.take_reusable(filtered, caged, sandbox_key) {
            telemetry::worker_reused();
            return Ok(worker);
        }
        let ready = if filtered == (self.sandbox != Sandbox::Off) {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            let at = idle.iter().rposition(|w| !caged || w.is_caged());
            at.map(|at| idle.swap_remove(at))
        } else {
            None
        };
        let worker = match ready {
            Some(worker) => worker,
            None => {
                let worker = start_worker(&program, sandbox, self).await?;
                telemetry::worker_started(telemetry::WorkerStart::OnDemand);
                worker
            }
        };
        Ok(worker)
    }

    /// A kept worker that is still alive and can serve a task whose
    /// sandbox is `sandbox_key` (never sandboxed, or for the same grants),
    /// whose policy is `filtered` the same way and, if `caged`, that has a
    /// cgroup, if any. One that died while idle is reaped by `try_wait` and
    /// dropped.
    fn take_reusable(
        &self,
        filtered: bool,
        caged: bool,
        sandbox_key: Option<u64>,
    ) -> Option<Worker> {
        let mut kept = self.reusable.lock().unwrap_or_else(|e| e.into_inner());
        let mut i = kept.len();
        while i > 0 {
            i -= 1;
            let fits = kept[i].filtered == filtered
                && (!caged || kept[i].is_caged())
                && (kept[i].sandboxed.is_none() || kept[i].sandboxed == sandbox_key);
            if !fits {
                continue;
            }
            let mut worker = kept.swap_remove(i);
            match worker.child.try_wait() {
                Ok(None) => return Some(worker),
                // Died while idle, and reaped just now.
                Ok(Some(_)) => {}
                // Cannot tell: make sure it is gone.
                Err(_) => {
                    let Worker {
                        child, pid, cgroup, ..
                    } = worker;
                    drop(ChildGuard::new(child, pid));
                    drop(cgroup);
                }
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

    /// Starts, warms up and parks workers until `prestart` are idle.
    async fn refill(&self, program: &Path) {
        while self.idle.lock().unwrap_or_else(|e| e.into_inner()).len() < self.prestart {
            let worker = match start_worker(program, self.sandbox, self).await {
                Ok(worker) => {
                    telemetry::worker_started(telemetry::WorkerStart::Prestart);
                    worker
                }
                Err(err) => {
                    tracing::warn!(error = %err, "cannot pre-start a worker");
                    return;
                }
            };
            // Until it is parked, a worker dropped with this future (at
            // runtime shutdown) is killed and reaped by its guard.
            let Worker {
                child,
                pid,
                reader,
                mut writer,
                said,
                sandboxed,
                filtered,
                cgroup,
            } = worker;
            let mut guard = ChildGuard::new(child, pid);
            match warm_up(&mut writer, &self.last_program).await {
                Ok(()) => {}
                // The worker died: start another, as before.
                Err(WarmUpError::Io) => continue,
                // A frame that cannot be encoded would fail for every
                // worker: stop here rather than start them in a loop.
                Err(WarmUpError::Encode(err)) => {
                    tracing::warn!(error = %err, "cannot warm up a pre-started worker");
                    return;
                }
            }
            let Some(child) = guard.take() else {
                continue;
            };
            let worker = Worker {
                child,
                pid,
                reader,
                writer,
                said,
                sandboxed,
                filtered,
                cgroup,
            };
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            if idle.len() < self.prestart {
                idle.push(worker);
            } else {
                drop(idle);
                // Not needed after all: killed and reaped here, not left.
                let Worker {
                    child, pid, cgroup, ..
                } = worker;
                drop(ChildGuard::new(child, pid));
                drop(cgroup);
            }
        }
    }

    /// Keeps a worker that finished a `reuse_worker` task. When enough are
    /// kept already, the oldest goes instead: a kept worker serves only
    /// tasks with its own grants, so old ones for grants never seen again
    /// must not hold the places for good.
    pub(crate) fn keep(&self, worker: Worker) {
        let mut kept = self.reusable.lock().unwrap_or_else(|e| e.into_inner());
        if self.keep_reusable == 0 {
            drop(kept);
            return Self::let_go(worker);
        }
        let oldest = (kept.len() >= self.keep_reusable).then(|| kept.remove(0));
        kept.push(worker);
        drop(kept);
        if let Some(oldest) = oldest {
            Self::let_go(oldest);
        }
    }

    /// Ends a worker no one will use: closes its pipe and reaps it.
    fn let_go(worker: Worker) {
        let Worker {
            child,
            pid,
            writer,
            cgroup,
            ..
        } = worker;
        // Dropped unreaped (the runtime shutting down before this task
        // ends), the guard kills and reaps the worker itself.
        let mut guard = ChildGuard::new(child, pid);
        tokio::spawn(async move {
            // End of input is the worker's cue to exit.
            drop(writer);
            if let Some(child) = guard.get_mut() {
                reap(child, pid, false).await;
            }
            drop(guard);
            drop(cgroup);
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

/// Why a pre-started worker could not be warmed up.
enum WarmUpError {
    /// The pipe broke: the worker is gone.
    Io,
    /// A frame could not be encoded.
    Encode(protocol::ProtocolError),
}

/// Sends a fresh worker `warm-up`, then `preload` of the last program a
/// process task ran, if any.
async fn warm_up(
    writer: &mut Writer,
    last_program: &Mutex<Option<protocol::Preload>>,
) -> std::result::Result<(), WarmUpError> {
    let frame = ToWorker::WarmUp.encode().map_err(WarmUpError::Encode)?;
    writer.send(frame).await.map_err(|_| WarmUpError::Io)?;
    let preload = last_program
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    if let Some(preload) = preload {
        match ToWorker::Preload(Box::new(preload)).encode() {
            Ok(frame) => writer.send(frame).await.map_err(|_| WarmUpError::Io)?,
            // Preloading only saves time later; the worker is fine without.
            Err(err) => {
                tracing::warn!(error = %err, "cannot preload a program into a pre-started worker");
            }
        }
    }
    Ok(())
}

/// Starts a worker and completes the handshake. A worker that fails it
/// (or whose start is dropped half-way) is killed and reaped by its guard.
async fn start_worker(
    program: &Path,
    sandbox: Sandbox,
    backend: &ProcessBackend,
) -> Result<Worker> {
    let network = &backend.network;
    let mut command = tokio::process::Command::new(program);
    command
        .arg(protocol::WORKER_ARG)
        // Nothing ambient: the guest's variables travel in the spec.
        .env_clear()
        .env(protocol::PARENT_ENV, std::process::id().to_string())
        // Its seccomp filter goes up before its task arrives.
        .env(protocol::SANDBOX_ENV, sandbox.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A neutral working directory: nothing of the parent's is at hand
        // by a relative path (the spec's paths arrive absolute).
        .current_dir("/")
        .process_group(0)
        .kill_on_drop(true);
    if let Some(log) = std::env::var_os("ISOLA_LOG") {
        command.env("ISOLA_LOG", log);
    }
    // Made (or taken ready-made) before the worker exists: it joins its
    // groups itself as it starts (see `ipc::cgroup::join`).
    let cgroup = if sandbox == Sandbox::Off {
        None
    } else {
        network.name_to(&mut command);
        worker_cgroup(backend, sandbox)?
    };
    if let Some(dirs) = cgroup.as_ref().and_then(WorkerGroup::worker_joins) {
        command.env(protocol::CGROUP_ENV, dirs);
    }
    let mut child = command.spawn().map_err(|e| {
        Error::Internal(format!("cannot start worker `{}`: {e}", program.display()))
    })?;
    let pid = child
        .id()
        .ok_or_else(|| Error::Internal("worker exited at once".into()))?;
    let (Some(stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(Error::Internal("worker pipes missing".into()));
    };
    // A worker's own diagnostics (never the guest's output, which travels
    // in frames) go to the log, a bounded line at a time; the sandbox's
    // report of a forbidden system call is also kept for the outcome.
    let said = Arc::new(WorkerSaid::default());
    let heard = Arc::clone(&said);
    tokio::spawn(async move {
        let mut lines = FramedRead::new(stderr, LinesCodec::new_with_max_length(8 * 1024));
        while let Some(line) = lines.next().await {
            // An over-long line is dropped, not the end of the stream.
            let Ok(line) = line else { continue };
            if let Some(number) = crate::ipc::sandbox::parse_forbidden_syscall(&line) {
                let _ = heard.forbidden_syscall.set(number);
            }
            tracing::warn!(worker = pid, "{line}");
        }
        heard.closed.store(true, Ordering::Release);
    });
    let mut guard = ChildGuard::new(child, pid);
    // Groups the worker cannot join itself (cgroup v2): before it runs
    // anything of a task, which waits for the handshake.
    let mut cgroup = match cgroup {
        // A write to `cgroup.procs` may wait out an RCU grace period
        // (milliseconds): on the blocking pool, not on a runtime thread.
        Some(group) if group.parent_moves() => {
            let adopted = tokio::task::spawn_blocking(move || {
                let adopted = group.adopt(pid);
                (group, adopted)
            })
            .await;
            let Ok((mut group, adopted)) = adopted else {
                return Err(Error::Internal(
                    "a worker's cgroup placement did not finish".into(),
                ));
            };
            if let Err(err) = adopted {
                // The guard kills and reaps the worker on the way out.
                placement_failed(sandbox, pid, &mut group, &err.to_string())?;
            }
            Some(group)
        }
        other => other,
    };
    let mut reader = FramedRead::new(stdout, protocol::codec());
    let mut writer = FramedWrite::new(stdin, protocol::codec());
    let handshake = async {
        let hello = ToWorker::Hello(Hello::current())
            .encode()
            .map_err(|e| e.to_string())?;
        writer.send(hello).await.map_err(|e| e.to_string())?;
        // The next worker's group, while this one starts. On this thread:
        // made on the blocking pool instead, the sandbox's share of a cold
        // start grew from 1.08-1.10x to 1.12x (workload 1, three runs),
        // the pool's thread waking beside the starting worker.
        if cgroup.is_some() {
            make_spare_cgroup(backend);
        }
        match reader.next().await {
            Some(Ok(frame)) => match FromWorker::decode(&frame).map_err(|e| e.to_string())? {
                FromWorker::Hello(hello) => protocol::check_hello(&hello)
                    .map(|()| hello)
                    .map_err(|e| e.to_string()),
                _ => Err("expected a hello frame".to_owned()),
            },
            Some(Err(e)) => Err(e.to_string()),
            None => Err("worker exited during the handshake".to_owned()),
        }
    };
    let failed = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(hello)) => match guard.take() {
            Some(child) => {
                if let Some(group) = cgroup.as_mut()
                    && let Some(why) = not_joined(group, &hello)
                    && let Err(err) = placement_failed(sandbox, pid, group, &why)
                {
                    drop(ChildGuard::new(child, pid));
                    return Err(err);
                }
                if sandbox != Sandbox::Off {
                    network.adopt(pid);
                }
                return Ok(Worker {
                    child,
                    pid,
                    reader,
                    writer,
                    said,
                    sandboxed: None,
                    filtered: sandbox != Sandbox::Off,
                    cgroup,
                });
            }
            None => "the worker vanished during the handshake".to_owned(),
        },
        Ok(Err(err)) => format!("worker handshake failed: {err}"),
        Err(_) => "worker did not answer the handshake".to_owned(),
    };
    // The guard kills and reaps the worker; its cgroup can go after that.
    drop(guard);
    drop(cgroup);
    Err(Error::Internal(failed))
}

/// A cgroup for a sandboxed worker about to start (the ready-made spare,
/// if there is one), or none where the machine has no cgroup Isola can use
/// (an error under [`Sandbox::Required`], which names the missing layer).
fn worker_cgroup(backend: &ProcessBackend, sandbox: Sandbox) -> Result<Option<WorkerGroup>> {
    if sandbox == Sandbox::Required {
        backend.cgroups_required()?;
    }
    let spare = backend
        .spare_cgroup
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    if let Some(group) = spare {
        return Ok(Some(group));
    }
    let Some(made) = new_cgroup(backend) else {
        return Ok(None);
    };
    match made {
        Ok(group) => Ok(Some(group)),
        Err(err) if sandbox == Sandbox::Required => Err(Error::SandboxUnavailable(format!(
            "the worker's cgroup cannot be made: {err}"
        ))),
        Err(err) => {
            tracing::warn!("sandbox: no cgroup for a worker: it cannot be made: {err}");
            Ok(None)
        }
    }
}

/// A new worker cgroup with the backend's CPU quota and the default task's
/// memory limit (a task with the default then costs no write on its way);
/// `None` where the machine has no cgroup Isola can use.
fn new_cgroup(backend: &ProcessBackend) -> Option<std::io::Result<WorkerGroup>> {
    let cgroups = backend.cgroups().ok()?;
    let default = crate::spec::Limits::default().process_memory_or_default();
    Some(cgroups.make(backend.cpu_quota, default))
}

/// Makes the backend's spare worker cgroup, if it has none (see
/// [`ProcessBackend::spare_cgroup`]). A failure is left for the next
/// worker's own attempt to report.
fn make_spare_cgroup(backend: &ProcessBackend) {
    let has_one = |backend: &ProcessBackend| {
        backend
            .spare_cgroup
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    };
    if has_one(backend) {
        return;
    }
    // Made without the lock held: a worker starting meanwhile makes its
    // own rather than wait for this one.
    let Some(Ok(group)) = new_cgroup(backend) else {
        return;
    };
    let mut spare = backend
        .spare_cgroup
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if spare.is_none() {
        *spare = Some(group);
    }
}

/// Why the worker whose hello is `hello` is not in every group of `group`
/// it was to join itself, if it is not.
fn not_joined(group: &WorkerGroup, hello: &Hello) -> Option<String> {
    let named = group.worker_join_count();
    if hello.cgroups_joined == named {
        return None;
    }
    Some(hello.cgroup.clone().unwrap_or_else(|| {
        format!(
            "it joined {} of the {named} its parent named (did something between Isola and \
             the worker clear its environment?)",
            hello.cgroups_joined
        )
    }))
}

/// The worker `pid` is not in every one of its cgroups (`group`), for the
/// reason `why`: refused under [`Sandbox::Required`], which names the
/// layer; under `on`, a warning, and the worker, whose group is marked
/// incomplete ([`WorkerGroup::set_incomplete`]), serves no task that
/// requires the sandbox.
fn placement_failed(sandbox: Sandbox, pid: u32, group: &mut WorkerGroup, why: &str) -> Result<()> {
    group.set_incomplete();
    if sandbox == Sandbox::Required {
        return Err(Error::SandboxUnavailable(format!(
            "the worker's cgroup: {why}"
        )));
    }
    tracing::warn!(
        worker = pid,
        "sandbox: the worker is not in its cgroup: {why}"
    );
    Ok(())
}

/// Sleeps until `deadline`, or forever without one.
pub(crate) async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Owns a worker process until it is reaped, and reaps it if dropped
/// before: a worker held only by a future (a refill, a handshake, a task's
/// supervisor, a background reap) is killed and reaped even if that future
/// is dropped unfinished, as every task is when the runtime shuts down.
pub(crate) struct ChildGuard {
    /// `None` once handed back with [`ChildGuard::take`].
    child: Option<Child>,
    /// The worker's pid and process group.
    pid: u32,
}

impl ChildGuard {
    /// Guards the worker `child` whose pid (and process group) is `pid`.
    pub(crate) fn new(child: Child, pid: u32) -> ChildGuard {
        ChildGuard {
            child: Some(child),
            pid,
        }
    }

    /// The guarded process, to wait for it; `None` once taken.
    pub(crate) fn get_mut(&mut self) -> Option<&mut Child> {
        self.child.as_mut()
    }

    /// Hands the process back (it lives on, as a kept or pooled worker):
    /// the guard no longer ends it.
    pub(crate) fn take(&mut self) -> Option<Child> {
        self.child.take()
    }
}

impl Drop for ChildGuard {
    /// Kills and reaps the process unless it was reaped or taken already.
    /// Blocks for as long as the kill takes (usually well under a
    /// millisecond, at most [`REAP_BOUND`]), since it may run where nothing
    /// async can: in a task being dropped by a runtime that shuts down.
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            kill_and_reap(vec![(child, self.pid)], REAP_BOUND);
        }
    }
}

/// Kills each `(child, pid)` (its process group, then the child itself) and
/// reaps it, synchronously, waiting in short sleeps until all are reaped or
/// `bound` has passed. A child already reaped is never signalled: its pid
/// and group id may belong to another process by now. One still alive at
/// the bound (stuck in the kernel) is dropped to Tokio's reaper, with a
/// warning. Needs no runtime.
pub(crate) fn kill_and_reap(children: Vec<(Child, u32)>, bound: Duration) {
    let deadline = std::time::Instant::now() + bound;
    let mut dying = Vec::with_capacity(children.len());
    for (mut child, pid) in children {
        match child.try_wait() {
            // Reaped (now or before): nothing to kill.
            Ok(Some(_)) => {}
            Ok(None) => {
                // Unreaped, so `pid` is still this worker and leads its
                // group: safe to signal. The group covers anything it
                // started; `start_kill` the worker itself, should it have
                // left the group.
                let _ = sys::signal_group(pid, libc::SIGKILL);
                let _ = child.start_kill();
                dying.push((child, pid));
            }
            // Not our child to wait for (reaped elsewhere): nothing to do.
            Err(err) => tracing::debug!(worker = pid, error = %err, "cannot wait for a worker"),
        }
    }
    let mut pause = Duration::from_micros(50);
    loop {
        dying.retain_mut(|(child, _)| matches!(child.try_wait(), Ok(None)));
        if dying.is_empty() || std::time::Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(10));
    }
    for (_, pid) in &dying {
        tracing::warn!(
            worker = pid,
            "a killed worker did not end within {bound:?}; leaving it to the runtime to reap"
        );
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

//! One running task (thread isolation): its WASI context, its store, the
//! race between the guest, its timeout and its cancellation, and the
//! classification of how it ended.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use wasmtime::{Store, Trap, UpdateDeadline, WasmBacktrace};
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtxBuilder};

use crate::channel::{ChannelState, MessageReceiver, MessageSender, SendError};
use crate::error::{Error, Result};
use crate::outcome::{Frame, Limit, Outcome, Stream, TaskMetrics, TaskReport, TrapInfo, TrapKind};
use crate::output::{OutputPipe, OutputReceiver};
use crate::program::{CORE_PLUGIN_EXPORT, Program, ProgramKind};
use crate::runner::RunnerInner;
use crate::spec::{Limits, Stdin, TaskSpec};
use crate::state::{MemoryLimiter, TaskState};

/// Identifies a task within its runner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId(u64);

impl std::fmt::Display for TaskId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "task-{}", self.0)
    }
}

static NEXT_TASK_ID: AtomicU64 = AtomicU64::new(1);

/// Fuel between write-backs of the fuel count (about 10 ms of Wasm): the
/// precision of `fuel_used` for a task stopped from outside.
const FUEL_WRITE_BACK: u64 = 10_000_000;

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
}

/// Cancels a task from anywhere. Cheap to clone.
#[derive(Debug, Clone)]
pub struct CancelHandle(CancellationToken);

impl CancelHandle {
    pub(crate) fn new(token: CancellationToken) -> CancelHandle {
        CancelHandle(token)
    }

    /// Stops the task: a running guest is interrupted within one epoch tick
    /// and the task ends with [`Outcome::Cancelled`]. Does nothing if the
    /// task already ended.
    pub fn cancel(&self) {
        self.0.cancel();
    }
}

impl TaskHandle {
    pub(crate) fn new(
        id: TaskId,
        cancel: CancelHandle,
        join: tokio::task::JoinHandle<TaskReport>,
        outputs: (Option<OutputReceiver>, Option<OutputReceiver>),
        channel: (MessageSender, MessageReceiver),
        pid: Option<u32>,
    ) -> TaskHandle {
        TaskHandle {
            id,
            cancel,
            join,
            stdout: outputs.0,
            stderr: outputs.1,
            pid,
            sender: Some(channel.0),
            messages: Some(channel.1),
        }
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

/// Everything a task needs that is built (and checked) before it starts.
struct Prepared {
    wasi: WasiCtxBuilder,
    stdout: OutputPipe,
    stderr: OutputPipe,
    stdout_rx: Option<OutputReceiver>,
    stderr_rx: Option<OutputReceiver>,
}

/// What a worker process adds when it runs a task for its parent.
#[derive(Default)]
pub(crate) struct SpawnExtras {
    /// Stdin fed by the parent, replacing [`Stdin::Inherit`].
    pub(crate) stdin: Option<wasmtime_wasi::cli::AsyncStdinStream>,
    /// Told when the guest's first instruction is about to run.
    pub(crate) on_start: Option<tokio::sync::oneshot::Sender<()>>,
    /// The kernel memory limit this (worker) process runs under: a linear
    /// memory growth the OS refuses is then reported as that limit.
    pub(crate) os_memory_limit: Option<u64>,
    /// Which export to enter.
    pub(crate) entry: Entry,
}

/// Where a task starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Entry {
    /// `main` if the program has one, else the plugin `run` with the spec's
    /// input.
    #[default]
    Auto,
    /// The plugin `run` with the spec's input ([`crate::Runner::call`]).
    Run,
}

/// Checks the spec's limits against what the runner allows.
pub(crate) fn check_limits(runner: &RunnerInner, spec: &TaskSpec) -> Result<()> {
    if spec.reuse_worker && spec.isolation == crate::Isolation::Thread {
        return Err(Error::InvalidSpec {
            field: "reuse_worker".into(),
            message: "only process tasks have a worker to reuse; set `isolation = \"process\"` \
                      or leave `reuse_worker` out"
                .into(),
        });
    }
    if spec.limits.max_memory.as_u64() > runner.config.max_memory_per_task {
        return Err(Error::InvalidSpec {
            field: "limits.max_memory".into(),
            message: format!(
                "{} is more than this runner allows per task ({})",
                spec.limits.max_memory,
                bytesize::ByteSize(runner.config.max_memory_per_task)
            ),
        });
    }
    Ok(())
}

/// Checks the grants that refer to the host: env names, directories, the
/// stdin file. Errors name the spec field.
pub(crate) fn check_grants(spec: &TaskSpec) -> Result<()> {
    for key in spec.env.keys() {
        if key.is_empty() || key.contains('=') {
            return Err(Error::InvalidSpec {
                field: format!("env.{key}"),
                message: "a variable name must be non-empty and contain no `=`".into(),
            });
        }
    }
    // WASI preview1 hands args and variables to the guest as C strings: a
    // NUL would silently cut the string short (the guest would see less
    // than, or other than, what was granted). Refuse it instead.
    let nul = |field: String| Error::InvalidSpec {
        field,
        message: "contains a NUL character".into(),
    };
    for (key, value) in &spec.env {
        if key.contains('\0') || value.contains('\0') {
            return Err(nul(format!("env.{}", key.escape_default())));
        }
    }
    if spec.argv0.as_deref().is_some_and(|a| a.contains('\0')) {
        return Err(nul("argv0".into()));
    }
    if let Some(i) = spec.args.iter().position(|a| a.contains('\0')) {
        return Err(nul(format!("args[{i}]")));
    }
    for (i, dir) in spec.dirs.iter().enumerate() {
        if !dir.host.is_dir() {
            return Err(Error::InvalidSpec {
                field: format!("dirs[{i}].host"),
                message: format!("`{}` is not a directory", dir.host.display()),
            });
        }
    }
    if let Stdin::File(path) = &spec.stdin {
        std::fs::File::open(path).map_err(|err| Error::InvalidSpec {
            field: "stdin".into(),
            message: format!("cannot open `{}`: {err}", path.display()),
        })?;
    }
    Ok(())
}

/// Turns the spec's grants into a WASI context. Errors name the spec field.
fn prepare(
    program: &Program,
    spec: &TaskSpec,
    stdin_override: Option<wasmtime_wasi::cli::AsyncStdinStream>,
) -> Result<Prepared> {
    check_grants(spec)?;
    let mut wasi = WasiCtxBuilder::new();
    // Deny the network outright; `WasiCtxBuilder` allows the socket APIs
    // (with every address refused) by default.
    wasi.allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);

    let argv0 = spec.argv0.clone().unwrap_or_else(|| {
        program
            .path()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "main.wasm".into())
    });
    wasi.arg(argv0).args(&spec.args);

    for (key, value) in &spec.env {
        wasi.env(key, value);
    }
    for key in &spec.inherit_env {
        if let Ok(value) = std::env::var(key) {
            wasi.env(key, value);
        }
    }

    for (i, dir) in spec.dirs.iter().enumerate() {
        let perms = if dir.writable {
            FsPerms::ReadWrite
        } else {
            FsPerms::ReadOnly
        };
        wasi.preopened_dir(&dir.host, dir.guest_path(), perms)
            .map_err(|err| Error::InvalidSpec {
                field: format!("dirs[{i}].host"),
                message: format!("cannot open `{}`: {err}", dir.host.display()),
            })?;
    }

    match (&spec.stdin, stdin_override) {
        (_, Some(stream)) => {
            wasi.stdin(stream);
        }
        (Stdin::Closed, None) => {}
        (Stdin::Bytes(bytes), None) => {
            wasi.stdin(wasmtime_wasi::p2::pipe::MemoryInputPipe::new(bytes.clone()));
        }
        (Stdin::File(path), None) => {
            let file = std::fs::File::open(path).map_err(|err| Error::InvalidSpec {
                field: "stdin".into(),
                message: format!("cannot open `{}`: {err}", path.display()),
            })?;
            wasi.stdin(wasmtime_wasi::cli::InputFile::new(file));
        }
        (Stdin::Inherit, None) => {
            wasi.inherit_stdin();
        }
    }

    let limits = &spec.limits;
    let (stdout, stdout_rx) = OutputPipe::new(
        Stream::Stdout,
        spec.stdout,
        limits.max_output,
        limits.capture,
    );
    let (stderr, stderr_rx) = OutputPipe::new(
        Stream::Stderr,
        spec.stderr,
        limits.max_output,
        limits.capture,
    );
    wasi.stdout(stdout.clone()).stderr(stderr.clone());

    Ok(Prepared {
        wasi,
        stdout,
        stderr,
        stdout_rx,
        stderr_rx,
    })
}

/// Starts a thread-isolated task.
pub(crate) async fn spawn(
    runner: &Arc<RunnerInner>,
    program: &Program,
    spec: TaskSpec,
    extras: SpawnExtras,
) -> Result<TaskHandle> {
    let spawned_at = Instant::now();
    check_limits(runner, &spec)?;
    let entry = resolve_entry(program, extras.entry)?;
    let mut prepared = prepare(program, &spec, extras.stdin)?;
    let slot = Arc::clone(&runner.slots)
        .acquire_owned()
        .await
        .map_err(|_| Error::ShutDown)?;
    let cancel = CancellationToken::new();
    let id = TaskId::next();
    let stdout_rx = prepared.stdout_rx.take();
    let stderr_rx = prepared.stderr_rx.take();
    let (channel, host_ends) = ChannelState::for_spec(&spec);
    let job = Job {
        runner: Arc::clone(runner),
        program: program.clone(),
        limits: spec.limits,
        prepared,
        cancel: cancel.clone(),
        spawned_at,
        on_start: extras.on_start,
        os_memory_limit: extras.os_memory_limit,
        entry,
        channel: Some(channel),
    };
    let join = tokio::spawn(async move {
        let report = job.run().await;
        drop(slot);
        report
    });
    tracing::debug!(task = %id, wasm = %program.path().display(), "task started");
    Ok(TaskHandle::new(
        id,
        CancelHandle(cancel),
        join,
        (stdout_rx, stderr_rx),
        host_ends,
        None,
    ))
}

/// The WASI context of a kept plugin instance. Its output is not captured
/// (there is no per-call report to carry it); piped and inherited output
/// work as for tasks.
pub(crate) fn plugin_wasi(
    program: &Program,
    spec: &TaskSpec,
) -> Result<wasmtime_wasi::p1::WasiP1Ctx> {
    let mut spec = spec.clone();
    for output in [&mut spec.stdout, &mut spec.stderr] {
        if *output == crate::Output::Capture {
            *output = crate::Output::Discard;
        }
    }
    Ok(prepare(program, &spec, None)?.wasi.build_p1())
}

/// Starts a task in the shared memory group `name`: it is handed to the
/// group's coordinator, which gives it a thread (see [`crate::group`]).
pub(crate) async fn spawn_in_group(
    runner: &Arc<RunnerInner>,
    program: &Program,
    name: &str,
    spec: TaskSpec,
) -> Result<TaskHandle> {
    let spawned_at = Instant::now();
    let group = runner.group(name).ok_or_else(|| Error::InvalidSpec {
        field: "shared_group".into(),
        message: format!("no shared memory group `{name}` exists"),
    })?;
    if spec.isolation != crate::Isolation::Thread {
        return Err(Error::InvalidSpec {
            field: "isolation".into(),
            message: format!(
                "shared memory group `{name}` needs `isolation = \"thread\"`: a memory \
                 shared with the host cannot be shared with another process"
            ),
        });
    }
    if !crate::group::same_module(&group.inner, program) {
        return Err(Error::InvalidSpec {
            field: "wasm".into(),
            message: format!(
                "`{}` is not the module of shared memory group `{name}`, which is `{}`",
                program.path().display(),
                crate::group::group_path(&group.inner).display()
            ),
        });
    }
    let prepared = prepare(program, &spec, None)?;
    let (channel, host_ends) = ChannelState::for_spec(&spec);
    let Prepared {
        mut wasi,
        stdout,
        stderr,
        stdout_rx,
        stderr_rx,
    } = prepared;
    let state = TaskState {
        wasi: wasi.build_p1(),
        // The memory is the group's; its bound is the group's maximum.
        limiter: MemoryLimiter::new(u64::MAX),
        channel,
        group: None,
    };
    // Group tasks count against the runner's live tasks like any other.
    let slot = Arc::clone(&runner.slots)
        .acquire_owned()
        .await
        .map_err(|_| Error::ShutDown)?;
    let stop = Arc::new(crate::group::StopFlag::default());
    let (report_tx, report_rx) = tokio::sync::oneshot::channel();
    let pending = crate::group::PendingTask {
        state,
        fuel: spec.limits.fuel.unwrap_or(u64::MAX),
        stop: Arc::clone(&stop),
        report: report_tx,
        spawned_at,
    };
    if !group.inner.enqueue(pending) {
        return Err(Error::InvalidSpec {
            field: "shared_group".into(),
            message: format!("shared memory group `{name}` is closed"),
        });
    }
    let cancel = CancellationToken::new();
    let supervised = crate::group::supervise(
        Arc::clone(&group.inner),
        stop,
        cancel.clone(),
        spec.limits.timeout,
        report_rx,
        (stdout, stderr),
    );
    let join = tokio::spawn(async move {
        let report = supervised.await;
        drop(slot);
        report
    });
    Ok(TaskHandle::new(
        TaskId::next(),
        CancelHandle(cancel),
        join,
        (stdout_rx, stderr_rx),
        host_ends,
        None,
    ))
}

/// The entry a task of `program` starts at, or why it cannot.
pub(crate) fn resolve_entry(program: &Program, entry: Entry) -> Result<Resolved> {
    let no_run = || Error::UnsupportedWorld {
        path: program.path().to_owned(),
        detail: "it has no plugin `run` export (a core module exports `isola_run`; a \
                 component exports `run` of `isola:task/plugin`)"
            .into(),
    };
    match entry {
        Entry::Run if program.is_plugin() => Ok(Resolved::Run),
        Entry::Run => Err(no_run()),
        Entry::Auto if program.is_command() => Ok(Resolved::Main),
        Entry::Auto => Ok(Resolved::Run),
    }
}

/// The entry a task actually starts at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resolved {
    Main,
    Run,
}

struct Job {
    runner: Arc<RunnerInner>,
    program: Program,
    limits: Limits,
    prepared: Prepared,
    cancel: CancellationToken,
    spawned_at: Instant,
    on_start: Option<tokio::sync::oneshot::Sender<()>>,
    os_memory_limit: Option<u64>,
    entry: Resolved,
    channel: Option<ChannelState>,
}

/// How the race between the guest, the clock and the canceller ended.
enum End {
    Finished(wasmtime::Result<Ended>),
    TimedOut(Duration),
    Cancelled,
}

impl Job {
    async fn run(mut self) -> TaskReport {
        let ticker = self.runner.ticker.handle();
        let _ticking = ticker.clone().map(|t| t.activate());
        // A `Job` is built with its channel and runs once.
        let mut channel = self.channel.take().unwrap_or_else(ChannelState::closed);
        channel.ticker = ticker;
        let mut store = Store::new(
            &self.runner.engine,
            TaskState {
                wasi: self.prepared.wasi.build_p1(),
                limiter: MemoryLimiter::new(self.limits.max_memory.as_u64())
                    .with_os_limit(self.os_memory_limit),
                channel,
                group: None,
            },
        );
        store.limiter(|state| &mut state.limiter);
        let fuel_budget = self.limits.fuel.unwrap_or(u64::MAX);
        // Only fails when fuel is disabled in the engine, which it never is.
        let _ = store.set_fuel(fuel_budget);
        // Compiled code keeps the fuel count in a register and writes it
        // back at calls and at this interval's checks; without the interval
        // a busy loop stopped by a timeout would report almost no fuel.
        let _ = store.fuel_async_yield_interval(Some(FUEL_WRITE_BACK));
        // Yield to the runtime on every tick: busy guests share the worker
        // threads fairly, and the timeout/cancel race below gets to run.
        store.epoch_deadline_callback(|_| Ok(UpdateDeadline::Yield(1)));
        store.set_epoch_deadline(1);

        let mut started_at = None;
        let end = {
            let guest = execute(
                &mut store,
                &self.program,
                self.entry,
                &mut started_at,
                self.on_start.take(),
            );
            let timeout = async {
                match self.limits.timeout {
                    Some(after) => {
                        tokio::time::sleep(after).await;
                        after
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                () = self.cancel.cancelled() => End::Cancelled,
                after = timeout => End::TimedOut(after),
                result = guest => End::Finished(result),
            }
        };
        let ended_at = Instant::now();

        let outcome = match end {
            End::Finished(Ok(Ended::Exited(code))) => Outcome::Exited { code },
            End::Finished(Ok(Ended::Returned(Ok(output)))) => Outcome::Returned { output },
            End::Finished(Ok(Ended::Returned(Err(error)))) => Outcome::Rejected { error },
            End::Finished(Err(err)) => classify(&err, fuel_budget),
            End::TimedOut(after) => Outcome::LimitExceeded {
                limit: Limit::Timeout { after },
            },
            End::Cancelled => Outcome::Cancelled,
        };
        let started_at = started_at.unwrap_or(ended_at);
        let metrics = TaskMetrics {
            startup: started_at - self.spawned_at,
            run_time: ended_at - started_at,
            peak_memory: store.data().limiter.peak(),
            fuel_used: fuel_budget - store.get_fuel().unwrap_or(fuel_budget),
        };
        drop(store);
        TaskReport {
            outcome,
            metrics,
            stdout: self.prepared.stdout.finish(),
            stderr: self.prepared.stderr.finish(),
        }
    }
}

/// Instantiates a module program once and drops the instance. The first
/// instantiation of a module builds lazy state (its copy-on-write memory
/// image); a pre-started worker pays for it before its task arrives. With
/// no fuel, no guest code can run, not even a `start` function.
pub(crate) async fn instantiate_only(runner: &RunnerInner, program: &Program) {
    let ProgramKind::Module { pre, .. } = &program.inner.kind else {
        return;
    };
    let mut store = Store::new(&runner.engine, TaskState::inert());
    let _ = store.set_fuel(0);
    // Far away, but not so far that the deadline (epoch + delta) overflows.
    store.set_epoch_deadline(1 << 40);
    let _ = pre.instantiate_async(&mut store).await;
}

/// How a guest that did not trap or hit a limit ended.
enum Ended {
    Exited(i32),
    Returned(std::result::Result<Vec<u8>, String>),
}

/// Instantiates the program and runs its entry point.
async fn execute(
    store: &mut Store<TaskState>,
    program: &Program,
    entry: Resolved,
    started_at: &mut Option<Instant>,
    mut on_start: Option<tokio::sync::oneshot::Sender<()>>,
) -> wasmtime::Result<Ended> {
    let mut mark_start = move || {
        *started_at = Some(Instant::now());
        if let Some(tx) = on_start.take() {
            let _ = tx.send(());
        }
    };
    match (&program.inner.kind, entry) {
        (ProgramKind::Module { pre, .. }, Resolved::Main) => {
            let instance = pre.instantiate_async(&mut *store).await?;
            let start = instance.get_typed_func::<(), ()>(&mut *store, "_start")?;
            mark_start();
            start.call_async(&mut *store, ()).await?;
            Ok(Ended::Exited(0))
        }
        (ProgramKind::Module { pre, .. }, Resolved::Run) => {
            let instance = pre.instantiate_async(&mut *store).await?;
            let run = instance.get_typed_func::<(), i32>(&mut *store, CORE_PLUGIN_EXPORT)?;
            mark_start();
            let status = run.call_async(&mut *store, ()).await?;
            Ok(Ended::Returned(
                store.data_mut().channel.take_result(status),
            ))
        }
        (
            ProgramKind::Component {
                command: Some(pre), ..
            },
            Resolved::Main,
        ) => {
            let command = pre.instantiate_async(&mut *store).await?;
            mark_start();
            match command.wasi_cli_run().call_run(&mut *store).await? {
                Ok(()) => Ok(Ended::Exited(0)),
                Err(()) => Ok(Ended::Exited(1)),
            }
        }
        (
            ProgramKind::Component {
                plugin: Some(pre), ..
            },
            Resolved::Run,
        ) => {
            let plugin = pre.instantiate_async(&mut *store).await?;
            mark_start();
            let input = store.data().channel.input().unwrap_or_default();
            Ok(Ended::Returned(plugin.call_run(&mut *store, &input).await?))
        }
        // `resolve_entry` only picks entries the program has.
        (ProgramKind::Component { .. } | ProgramKind::Shared { .. }, _) => {
            wasmtime::bail!("the program has no such entry")
        }
    }
}

/// Decides the outcome from the error's typed contents.
pub(crate) fn classify(err: &wasmtime::Error, fuel_budget: u64) -> Outcome {
    if let Some(exit) = err.downcast_ref::<I32Exit>() {
        return Outcome::Exited { code: exit.0 };
    }
    if let Some(limit) = err.downcast_ref::<Limit>() {
        return Outcome::LimitExceeded {
            limit: limit.clone(),
        };
    }
    let Some(trap) = err.downcast_ref::<Trap>() else {
        return Outcome::Failed {
            message: format!("{err:#}"),
        };
    };
    if *trap == Trap::OutOfFuel {
        return Outcome::LimitExceeded {
            limit: Limit::Fuel {
                budget: fuel_budget,
            },
        };
    }
    let kind = TrapKind::from_wasmtime(*trap);
    let message = trap_message(*trap);
    let backtrace = err
        .downcast_ref::<WasmBacktrace>()
        .map(|bt| {
            bt.frames()
                .iter()
                .map(|frame| Frame {
                    module: frame.module().name().map(str::to_owned),
                    function: frame.func_name().map(demangle),
                    func_index: frame.func_index(),
                    offset: frame.module_offset(),
                })
                .collect()
        })
        .unwrap_or_default();
    Outcome::Trapped(TrapInfo {
        kind,
        message,
        backtrace,
    })
}

/// The trap's description without wasmtime's `wasm trap: ` prefix.
fn trap_message(trap: Trap) -> String {
    let text = trap.to_string();
    match text.strip_prefix("wasm trap: ") {
        Some(rest) => rest.to_owned(),
        None => text,
    }
}

/// A readable function name: Rust symbols demangled, without their hash.
fn demangle(name: &str) -> String {
    match rustc_demangle::try_demangle(name) {
        Ok(symbol) => format!("{symbol:#}"),
        Err(_) => name.to_owned(),
    }
}

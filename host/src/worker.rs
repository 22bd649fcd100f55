//! The worker side of process isolation: what runs in the child.
//!
//! A worker is the `isola` binary (or an embedder's binary that calls
//! [`run_worker`]) started with [`WORKER_ARG`]. It talks to its parent over
//! its stdin/stdout pipes, creates its own engine before it is given a task
//! (so a pre-started worker pays that cost off the critical path), runs one
//! task, reports, and exits -- or, for tasks that opt into
//! [`crate::TaskSpec::reuse_worker`], waits for the next one.

use std::alloc::{GlobalAlloc, Layout, System};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;
use tokio::sync::oneshot;
use tokio_util::codec::{FramedRead, FramedWrite};

use crate::handle::CancelHandle;
use crate::host_fn::{HostLink, RemoteCall, ReplyTo};
use crate::ipc::protocol::{self, CallFailure, Finished, FromWorker, Hello, RunRequest, ToWorker};
use crate::ipc::{sandbox, sys};
use crate::loader::{EngineSettings, Loader};
use crate::outcome::{CallError, Limit, Outcome, Stream, TaskMetrics, refused};
use crate::parts::Parts;
use crate::spec::{Isolation, Output, Sandbox, Stdin, TaskSpec};
use crate::thread::{self, SpawnExtras};
use crate::ticker::EpochTicker;

use crate::ipc::protocol::PARENT_ENV;
pub use crate::ipc::protocol::WORKER_ARG;

/// Whether this process is a worker running a task under its process
/// memory limit: set once the limit is applied, never cleared (a reused
/// worker's next task has a limit too).
static UNDER_MEMORY_LIMIT: AtomicBool = AtomicBool::new(false);

/// The system allocator, for binaries that host Isola workers.
///
/// In a worker running a task under its `process_memory` limit, an
/// allocation the kernel refuses ends the worker at once with a status its
/// parent reports as that limit (`Outcome::LimitExceeded` of
/// `Limit::ProcessMemory`). Rust's own handling of a failed allocation
/// aborts, which would read as a crash (`SIGABRT`). Anywhere else,
/// including every process that is not a worker, it is exactly
/// [`System`].
///
/// # Examples
///
/// ```no_run
/// #[global_allocator]
/// static ALLOCATOR: isola::worker::Allocator = isola::worker::Allocator;
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Allocator;

// SAFETY: every method forwards to `System` with the caller's arguments,
// so `System`'s guarantees hold; the only addition runs after a failed
// allocation (a null pointer) and ends the process without returning.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `alloc`'s contract for `layout`.
        let ptr = unsafe { System.alloc(layout) };
        if ptr.is_null() {
            out_of_memory();
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if ptr.is_null() {
            out_of_memory();
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller upholds `dealloc`'s contract; `ptr` came from
        // `System` through this allocator.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller upholds `realloc`'s contract; `ptr` came from
        // `System` through this allocator.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if new.is_null() {
            out_of_memory();
        }
        new
    }
}

/// After a failed allocation: in a worker under its memory limit, ends the
/// process with [`crate::outcome::WORKER_OUT_OF_MEMORY`]; elsewhere returns,
/// and the caller gets its null pointer as usual.
fn out_of_memory() {
    if UNDER_MEMORY_LIMIT.load(Ordering::Relaxed) {
        // SAFETY: `_exit` ends the process at once: it runs no destructor
        // or handler of ours and allocates nothing.
        unsafe { libc::_exit(crate::outcome::WORKER_OUT_OF_MEMORY) }
    }
}

/// Runs this process as an Isola worker if it was started as one.
///
/// Call it first thing in `main` of a binary that embeds Isola and uses
/// process isolation with [`crate::RunnerConfig::worker_program`] pointing at
/// itself. Returns `None` when the process is not a worker.
///
/// # Examples
///
/// ```
/// fn main() -> std::process::ExitCode {
///     if let Some(code) = isola::worker::run_if_worker() {
///         return code;
///     }
///     // ... the program's own main ...
///     std::process::ExitCode::SUCCESS
/// }
/// ```
pub fn run_if_worker() -> Option<ExitCode> {
    (std::env::args_os().nth(1).as_deref() == Some(WORKER_ARG.as_ref())).then(run_worker)
}

/// What this worker's network namespace turned out to be, set at its start
/// when its parent asked for the sandbox (see `process::netns`).
static NETWORK_NAMESPACE: std::sync::OnceLock<sandbox::LayerState> = std::sync::OnceLock::new();

/// Makes or joins the network namespace as the parent said in
/// [`protocol::NETNS_ENV`], if it said anything (only sandboxed workers are
/// told). Call while the worker is a single thread.
fn enter_network_namespace() {
    let Some(value) = std::env::var_os(protocol::NETNS_ENV) else {
        return;
    };
    let value = value.to_string_lossy();
    let state = match value.strip_prefix("join:") {
        Some(fds) => match parse_join(fds) {
            // A parent's descriptors that cannot be reached (a parent that
            // is not dumpable, say): a namespace of its own, as the first
            // worker made.
            Some((pid, user, net)) => match sandbox::join_network_namespace(pid, user, net) {
                sandbox::LayerState::Enforced => sandbox::LayerState::Enforced,
                sandbox::LayerState::Partial(why) | sandbox::LayerState::Unavailable(why) => {
                    tracing::debug!("cannot join the workers' network namespace: {why}");
                    sandbox::enter_network_namespace()
                }
            },
            None => {
                sandbox::LayerState::Unavailable(format!("the parent named no namespace: {value}"))
            }
        },
        None => sandbox::enter_network_namespace(),
    };
    let _ = NETWORK_NAMESPACE.set(state);
}

/// How many of the cgroups its parent named in [`protocol::CGROUP_ENV`]
/// this worker joined, or why it joined none; told to the parent in its
/// hello.
static CGROUPS_JOINED: std::sync::OnceLock<Result<usize, String>> = std::sync::OnceLock::new();

/// Joins the cgroups the parent made for this worker, if it named any.
/// Call while the worker is one thread.
fn join_cgroups() {
    let Some(dirs) = std::env::var_os(protocol::CGROUP_ENV) else {
        return;
    };
    let _ = CGROUPS_JOINED.set(crate::ipc::cgroup::join(&dirs.to_string_lossy()));
}

/// `PID:USER:NET` of [`protocol::NETNS_ENV`]'s `join:` form.
fn parse_join(fds: &str) -> Option<(u32, Option<i32>, i32)> {
    let mut parts = fds.split(':');
    let pid = parts.next()?.parse().ok()?;
    let user = match parts.next()? {
        "" => None,
        fd => Some(fd.parse().ok()?),
    };
    let net = parts.next()?.parse().ok()?;
    parts.next().is_none().then_some((pid, user, net))
}

/// Serves one task over stdin/stdout, then exits. See [`run_if_worker`].
pub fn run_worker() -> ExitCode {
    // SAFETY: first thing in the worker: nothing has opened a descriptor
    // yet but std's 0, 1 and 2 (the pipes to the parent), which are kept.
    if let Err(err) = unsafe { sandbox::close_other_fds(&[0, 1, 2]) } {
        eprintln!("isola worker: cannot close inherited descriptors: {err}");
        return ExitCode::from(70);
    }
    // While the worker is one thread (see `cgroup::join`), and before it
    // may join a user namespace.
    join_cgroups();
    // While the worker is one thread, and before its parent-death signal
    // (which joining a user namespace would clear).
    enter_network_namespace();
    let parent = std::env::var(PARENT_ENV)
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        .unwrap_or_else(sys::parent_pid);
    if let Err(err) = sys::die_with_parent(parent).and_then(|()| sys::die_on_foreign_faults()) {
        eprintln!("isola worker: {err}");
        return ExitCode::from(70);
    }
    // One thread: a worker runs one task, and guests yield on every epoch
    // tick, so the IPC tasks still get their turn.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        // Counted, so a task's Landlock rules know whether a thread came
        // since the worker last listed them (`FileRules::note_quiet_threads`).
        // Tokio names a blocking-pool thread on the thread that spawns it,
        // before the thread exists: counted here, a thread not yet running
        // is counted all the same (`on_thread_start` runs on the new thread,
        // possibly too late).
        .thread_name_fn(|| {
            sandbox::THREADS_STARTED.fetch_add(1, Ordering::SeqCst);
            "isola-worker-blocking".to_owned()
        })
        // And again once it runs: a note taken on another thread (the
        // ticker's) between the two cannot trust its listing.
        .on_thread_start(|| {
            sandbox::THREADS_RUNNING.fetch_add(1, Ordering::SeqCst);
        })
        // Check timers and I/O at every poll: a guest yields once per epoch
        // tick, and with the default (every 61 polls) a cancel frame or the
        // timeout would wait out 61 ticks of long host calls.
        .event_interval(1)
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("isola worker: cannot start the runtime: {err}");
            return ExitCode::from(70);
        }
    };
    match runtime.block_on(serve()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("isola worker: {err}");
            ExitCode::from(70)
        }
    }
}

type Reader = FramedRead<pipe::Receiver, tokio_util::codec::LengthDelimitedCodec>;
type Writer = FramedWrite<pipe::Sender, tokio_util::codec::LengthDelimitedCodec>;

async fn next_frame(reader: &mut Reader) -> Result<Option<ToWorker>, String> {
    match reader.next().await {
        None => Ok(None),
        Some(Err(err)) => Err(format!("reading from the parent: {err}")),
        Some(Ok(frame)) => ToWorker::decode(&frame)
            .map(Some)
            .map_err(|err| err.to_string()),
    }
}

async fn send(writer: &mut Writer, msg: FromWorker) -> Result<(), String> {
    // A report that cannot be encoded goes out as a `Failed` one naming
    // why, so the parent never sees a worker end without a word.
    let frame = msg
        .encode_reporting()
        .map_err(|err| format!("cannot encode a frame for the parent: {err}"))?;
    writer
        .send(frame)
        .await
        .map_err(|err| format!("writing to the parent: {err}"))
}

async fn serve() -> Result<(), String> {
    let stdin = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .and_then(|fd| pipe::Receiver::from_file(std::fs::File::from(fd)))
        .map_err(|e| format!("stdin is not a usable pipe: {e}"))?;
    let stdout = std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .and_then(|fd| pipe::Sender::from_file(std::fs::File::from(fd)))
        .map_err(|e| format!("stdout is not a usable pipe: {e}"))?;
    let mut reader = FramedRead::new(stdin, protocol::codec());
    let mut writer = FramedWrite::new(stdout, protocol::codec());

    match next_frame(&mut reader).await? {
        Some(ToWorker::Hello(hello)) => {
            protocol::check_hello(&hello).map_err(|e| e.to_string())?;
        }
        Some(_) => return Err("expected a hello frame first".into()),
        None => return Ok(()),
    }
    let (cgroups_joined, cgroup) = match CGROUPS_JOINED.get() {
        Some(Ok(joined)) => (*joined, None),
        Some(Err(why)) => (0, Some(why.clone())),
        None => (0, None),
    };
    let hello = Hello {
        cgroups_joined,
        cgroup,
        ..Hello::current()
    };
    send(&mut writer, FromWorker::Hello(hello)).await?;

    let sandboxed = std::env::var(protocol::SANDBOX_ENV).is_ok_and(|policy| policy != "off");
    // The engine is ready before the task arrives: this is the work a
    // pre-started worker saves. No instance pool (one task at a time) and
    // no disk cache until the parent names its own.
    let loader = Loader::new(
        &EngineSettings {
            slots: 1,
            max_memory_per_task: crate::RunnerConfig::default().max_memory_per_task,
            instance_pool: false,
            memory_reservation: None,
            memories_per_task: crate::RunnerConfig::default().memories_per_task,
            parallel_compilation: false,
        },
        None,
        crate::group::add_to_module_linker,
    )
    .map_err(|e| e.to_string())?
    .with_typed(crate::loader::TypedLinking::Any);
    let tick = crate::RunnerConfig::default().epoch_tick;
    // The ticker never opens a file: sandboxed, it gives them all up as it
    // starts, so a task's Landlock rules need not reach its thread.
    let ticker = if sandboxed {
        // It also makes the worker's Landlock ruleset, while this thread
        // loads the seccomp filter and the task's program: in parallel
        // when the second core is awake. (On the development VM a new
        // thread often waits for the starting thread's core after an idle
        // spell; then the work is the same, on that core.)
        let (made, rules) = std::sync::mpsc::sync_channel(1);
        *RULES_ON_THE_WAY
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(rules);
        EpochTicker::start_with(loader.engine(), tick, move || {
            let mut rules = sandbox::FileRules::new().ok();
            let denied = sandbox::deny_files_on_this_thread();
            if let Some(rules) = rules.as_mut() {
                rules.allow(Path::new(STATUS_FILE), false);
                // After it denied itself: it is then none of the threads
                // the rules must reach.
                rules.note_quiet_threads();
            }
            let _ = made.send(rules);
            denied
        })
    } else {
        EpochTicker::start(loader.engine(), tick)
    };
    // The seccomp filter does not depend on the task, so it goes up before
    // the task arrives (a pre-started worker waits for one), on every
    // thread at once (the ticker's too). The kernel loads it in about
    // 0.06 ms, less than a thread of its own would cost to start. Its
    // verdict is taken again, per task, in `enter_sandbox`.
    if sandboxed {
        drop(sandbox::install_seccomp());
    }
    let parts = Parts {
        loader: std::sync::Arc::new(loader),
        slots: std::sync::Arc::new(tokio::sync::Semaphore::new(1)),
        ticker: ticker.handle(),
        max_memory_per_task: crate::RunnerConfig::default().max_memory_per_task,
        // The parent checked the grants against its functions; calls go
        // to it (see `host_link`).
        host_functions: None,
        kv_stores: Default::default(),
    };

    // A worker whose tasks opt into reuse goes back to waiting for the next
    // `run` after each; any other runs one task.
    loop {
        let mut request = match next_frame(&mut reader).await? {
            Some(ToWorker::Run(request)) => request,
            Some(ToWorker::Preload(preload)) => {
                // Only a head start: if it fails, the task's own load
                // reports why.
                parts.loader.use_disk_cache(&preload.cache_dir);
                let id = preload.program;
                if let Ok(program) = parts.loader.load_known(&preload.wasm, id.hash, id.kind) {
                    thread::instantiate_only(&parts, &program).await;
                }
                // After the preload's own work, so the threads the rules
                // note are those the task will meet.
                if sandboxed {
                    prepare_file_rules(Some((&preload.cache_dir, &preload.wasm)));
                }
                continue;
            }
            Some(ToWorker::WarmUp) => {
                warm_up(&parts).await;
                if sandboxed {
                    prepare_file_rules(None);
                }
                continue;
            }
            // A kept plugin instance: this worker serves it until the end.
            Some(ToWorker::Plugin(mut request)) => {
                if !read_data(&mut reader, &mut request).await? {
                    return Ok(());
                }
                return serve_plugin(&parts, *request, reader, &mut writer).await;
            }
            // The parent let us go (unused, or done reusing us).
            None => return Ok(()),
            Some(_) => return Err("expected a run frame".into()),
        };
        let reuse = request.spec.reuse_worker;
        if !read_data(&mut reader, &mut request).await? {
            // Cancelled before it could start.
            match finish_failed(&mut writer, reader, reuse, Outcome::Cancelled).await? {
                Some(rest) => {
                    reader = rest;
                    continue;
                }
                None => return Ok(()),
            }
        }
        let rest = run_one(&parts, *request, reader, &mut writer).await?;
        match rest {
            Some(rest) if reuse => reader = rest,
            _ => return Ok(()),
        }
    }
}

/// Reads the data frames that follow a run or plugin frame (its spec's
/// input and stdin bytes, see [`protocol::FollowingData`]) back into the
/// spec, before anything runs or any OS limit applies. `Ok(false)` if the
/// parent cancelled the task meanwhile.
async fn read_data(reader: &mut Reader, request: &mut RunRequest) -> Result<bool, String> {
    let wanted = request.data;
    if !wanted.input && !wanted.stdin {
        return Ok(true);
    }
    let (mut input, mut stdin) = (Vec::new(), Vec::new());
    loop {
        match next_frame(reader).await? {
            Some(ToWorker::Input(bytes)) if wanted.input => input.extend_from_slice(&bytes),
            Some(ToWorker::Stdin(bytes)) if wanted.stdin => stdin.extend_from_slice(&bytes),
            Some(ToWorker::DataEnd) => break,
            Some(ToWorker::Cancel) => return Ok(false),
            None => return Err("the parent left before the task's data arrived".into()),
            Some(_) => return Err("expected the task's data frames".into()),
        }
    }
    if wanted.input {
        request.spec.input = Some(input);
    }
    if wanted.stdin {
        request.spec.stdin = Stdin::Bytes(stdin);
    }
    Ok(true)
}

/// Instantiates a plugin once and answers [`ToWorker::Call`]s on it until
/// the parent closes the pipe (it dropped the instance).
async fn serve_plugin(
    parts: &Parts,
    request: RunRequest,
    mut reader: Reader,
    writer: &mut Writer,
) -> Result<(), String> {
    let not_started =
        |outcome, metrics| FromWorker::Finished(Box::new(Finished { outcome, metrics }));
    if let Some(outcome) = limit_below_worker(request.os_limits.data_bytes) {
        return send(writer, not_started(outcome, TaskMetrics::default())).await;
    }
    if let Err(err) = sys::apply_limits(&request.os_limits) {
        let message = format!("cannot apply OS limits: {err}");
        let outcome = Outcome::Failed { message };
        return send(writer, not_started(outcome, TaskMetrics::default())).await;
    }
    UNDER_MEMORY_LIMIT.store(true, Ordering::Relaxed);
    let data_bytes = request.os_limits.data_bytes;
    parts.loader.use_disk_cache(&request.cache_dir);
    let mut spec = request.spec;
    spec.isolation = Isolation::Thread;
    spec.reuse_worker = false;
    // This process's stdout is the pipe to the parent: never the guest's.
    spec.stdout = Output::Discard;
    spec.stderr = Output::Discard;
    let id = &request.program;
    let mut host_calls = None;
    let instance = match parts.loader.load_known(&spec.wasm, id.hash, id.kind) {
        Ok(program) => {
            if let Err(outcome) = enter_sandbox(request.sandbox, &spec, &request.cache_dir) {
                return send(writer, not_started(outcome, TaskMetrics::default())).await;
            }
            let host = remote_host(&spec);
            host_calls = host.1;
            thread::plugin::instantiate(parts, program, spec, Some(data_bytes), host.0).await
        }
        Err(err) => Err(CallError::Start(err)),
    };
    let mut instance = match instance {
        Ok(instance) => instance,
        Err(CallError::Ended(report)) => {
            return send(writer, not_started(report.outcome, report.metrics)).await;
        }
        Err(CallError::Start(err)) => {
            let outcome = refused(&err, data_bytes);
            return send(writer, not_started(outcome, TaskMetrics::default())).await;
        }
        Err(CallError::Rejected(error)) => {
            let outcome = Outcome::Failed { message: error };
            return send(writer, not_started(outcome, TaskMetrics::default())).await;
        }
    };
    send(writer, FromWorker::Started).await?;
    loop {
        let request = match next_frame(&mut reader).await? {
            Some(request @ (ToWorker::Call(_) | ToWorker::Invoke(_))) => request,
            None => return Ok(()),
            Some(_) => return Err("expected a call frame".into()),
        };
        // While the call runs, its host calls go to the parent and their
        // replies come back on the same pipe as the next call would.
        let result = {
            let instance = &mut instance;
            let call = async move {
                match request {
                    ToWorker::Invoke(call) => instance.invoke(&call).await,
                    ToWorker::Call(input) => instance.call(input.to_vec()).await,
                    _ => Err(CallError::Start(crate::Error::Internal(
                        "not a call".into(),
                    ))),
                }
            };
            let mut call = std::pin::pin!(call);
            let replies = HostReplies::default();
            loop {
                tokio::select! {
                    result = &mut call => break result,
                    Some(request) = next_host_call(&mut host_calls) => {
                        forward_host_call(writer, &replies, request).await?;
                    }
                    frame = next_frame(&mut reader) => match frame? {
                        Some(ToWorker::HostReply(reply)) => replies.answer(reply),
                        None => return Ok(()),
                        Some(_) => return Err("expected a host reply frame".into()),
                    },
                }
            }
        };
        let reply = match result {
            Ok(output) => FromWorker::CallOutput(output.into()),
            Err(CallError::Rejected(error)) => {
                FromWorker::CallFailed(Box::new(CallFailure::Rejected { error }))
            }
            Err(CallError::Ended(report)) => FromWorker::CallFailed(Box::new(CallFailure::Ended {
                outcome: report.outcome,
                metrics: report.metrics,
            })),
            Err(CallError::Start(err)) => FromWorker::CallFailed(Box::new(CallFailure::Ended {
                outcome: refused(&err, data_bytes),
                metrics: TaskMetrics::default(),
            })),
        };
        send(writer, reply).await?;
    }
}

/// The smallest WASI command: one page of memory and an empty `_start`.
/// (`(module (memory (export "memory") 1) (func (export "_start")))`)
const WARM_UP_MODULE: &[u8] = &[
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version 1
    0x01, 0x04, 0x01, 0x60, 0x00, 0x00, // types: () -> ()
    0x03, 0x02, 0x01, 0x00, // functions: one of type 0
    0x05, 0x03, 0x01, 0x00, 0x01, // memories: min 1 page
    0x07, 0x13, 0x02, // exports: two
    0x06, b'm', b'e', b'm', b'o', b'r', b'y', 0x02, 0x00, // memory 0
    0x06, b'_', b's', b't', b'a', b'r', b't', 0x00, 0x00, // func 0
    0x0a, 0x04, 0x01, 0x02, 0x00, 0x0b, // code: empty body
];

/// Runs a trivial task through the whole task path (instance, WASI
/// context, channel, output, fiber, epoch ticker), so a pre-started
/// worker's real task does not pay for first use: code paged in from the
/// binary, lazily built runtime state. Failures only cost the head start.
async fn warm_up(parts: &Parts) {
    let Ok(program) = parts.loader.load_builtin("isola-warm-up", WARM_UP_MODULE) else {
        return;
    };
    let mut spec = crate::TaskSpec::new("isola-warm-up");
    spec.stdout = Output::Discard;
    spec.stderr = Output::Discard;
    if let Ok(handle) = thread::spawn(parts, &program, spec, SpawnExtras::default()).await {
        handle.wait().await;
    }
}

/// Limits above this many bytes are never below a worker's own footprint
/// (a few MiB, more for a reused worker with programs loaded).
const FOOTPRINT_CHECK_BELOW: u64 = 256 << 20;

/// The outcome of a task whose process memory limit (`data_bytes`) is at or
/// below what this worker already holds, before the limit is applied: it
/// cannot hold the task. Its first allocation under it would fail wherever
/// it happened to fall (in Rust's allocator, an abort that reads as a
/// crash; in a typed call, the limit), so the verdict is given here, the
/// same every time, and names the limit. `None` if the limit leaves room,
/// or if the worker's use cannot be read.
fn limit_below_worker(data_bytes: u64) -> Option<Outcome> {
    // A worker holds a few MiB before its task (about 6-7 MiB here): only a
    // limit near that can be below it, and reading /proc costs tens of
    // microseconds of every task's start, so larger limits skip it.
    if data_bytes > FOOTPRINT_CHECK_BELOW {
        return None;
    }
    let in_use = sys::data_in_use()?;
    (data_bytes <= in_use).then_some(Outcome::LimitExceeded {
        limit: Limit::ProcessMemory {
            max: bytesize::ByteSize(data_bytes),
        },
    })
}

/// Runs one task and reports it. For a reusable worker, returns the reader
/// once the parent has ended the task with [`ToWorker::EndTask`].
async fn run_one(
    parts: &Parts,
    request: RunRequest,
    reader: Reader,
    writer: &mut Writer,
) -> Result<Option<Reader>, String> {
    let reuse = request.spec.reuse_worker;
    if let Some(outcome) = limit_below_worker(request.os_limits.data_bytes) {
        return finish_failed(writer, reader, reuse, outcome).await;
    }
    let limits = if reuse {
        sys::apply_soft_limits(&request.os_limits)
    } else {
        sys::apply_limits(&request.os_limits)
    };
    if let Err(err) = limits {
        let outcome = Outcome::Failed {
            message: format!("cannot apply OS limits: {err}"),
        };
        return finish_failed(writer, reader, reuse, outcome).await;
    }
    UNDER_MEMORY_LIMIT.store(true, Ordering::Relaxed);
    let data_bytes = request.os_limits.data_bytes;
    parts.loader.use_disk_cache(&request.cache_dir);
    let mut spec = request.spec;
    spec.stdout = Output::Pipe;
    spec.stderr = Output::Pipe;

    // Stdin the parent forwards frame by frame arrives through a pipe.
    let (stdin_writer, stdin_override) = if spec.stdin == Stdin::Inherit {
        let (reader_half, writer_half) = tokio::io::simplex(64 * 1024);
        (
            Some(writer_half),
            Some(wasmtime_wasi::cli::AsyncStdinStream::new(reader_half)),
        )
    } else {
        (None, None)
    };

    // On this thread: the worker has nothing else to do meanwhile, and a
    // first blocking-pool thread would cost more than the load.
    let id = &request.program;
    let program = match parts.loader.load_known(&spec.wasm, id.hash, id.kind) {
        Ok(program) => program,
        Err(err) => {
            let outcome = refused(&err, data_bytes);
            return finish_failed(writer, reader, reuse, outcome).await;
        }
    };
    // The program is loaded (its artifact mapped) and its grants are not
    // yet open: the sandbox goes up between the two, so the grants open
    // under its rules and the guest never runs outside it.
    if let Err(outcome) = enter_sandbox(request.sandbox, &spec, &request.cache_dir) {
        return finish_failed(writer, reader, reuse, outcome).await;
    }
    let (started_tx, mut started_rx) = oneshot::channel();
    // The guest's host calls go to the parent, one at a time.
    let (host, mut host_calls) = remote_host(&spec);
    let replies = HostReplies::default();
    let extras = SpawnExtras {
        stdin: stdin_override,
        on_start: Some(started_tx),
        os_memory_limit: Some(request.os_limits.data_bytes),
        entry: request.entry,
        spawned_at: None,
        host,
    };
    let mut handle = match thread::spawn(parts, &program, spec, extras).await {
        Ok(handle) => handle,
        Err(err) => {
            let outcome = refused(&err, data_bytes);
            return finish_failed(writer, reader, reuse, outcome).await;
        }
    };
    let (Some(mut stdout), Some(mut stderr), Some(mut messages), Some(sender)) = (
        handle.take_stdout(),
        handle.take_stderr(),
        handle.take_messages(),
        handle.sender(),
    ) else {
        let outcome = Outcome::Failed {
            message: "task pipes missing".into(),
        };
        return finish_failed(writer, reader, reuse, outcome).await;
    };
    handle.close_channel();
    let canceller = handle.cancel_handle();

    // Frames from the parent are read by a task of their own, so that a
    // guest slow to take its messages never stops this loop from sending
    // the guest's output (which could deadlock both processes on full
    // pipes).
    let task_over = tokio_util::sync::CancellationToken::new();
    // Streams whose reader went away in the parent: their receivers here
    // are closed, so the guest's writes fail (EPIPE) as in a thread task.
    let (closed_tx, mut closed_rx) = tokio::sync::mpsc::unbounded_channel();
    let inbound = tokio::spawn(read_parent(
        reader,
        sender,
        stdin_writer,
        canceller,
        task_over.clone(),
        closed_tx,
        replies.clone(),
    ));

    let mut wait = std::pin::pin!(handle.wait());
    let mut report = None;
    let (mut stdout_open, mut stderr_open, mut messages_open, mut started_pending) =
        (true, true, true, true);
    while report.is_none() || stdout_open || stderr_open || messages_open {
        tokio::select! {
            started = &mut started_rx, if started_pending => {
                started_pending = false;
                if started.is_ok() {
                    send(writer, FromWorker::Started).await?;
                }
            }
            chunk = stdout.recv(), if stdout_open => match chunk {
                Some(bytes) => send(writer, FromWorker::Stdout(bytes)).await?,
                None => stdout_open = false,
            },
            chunk = stderr.recv(), if stderr_open => match chunk {
                Some(bytes) => send(writer, FromWorker::Stderr(bytes)).await?,
                None => stderr_open = false,
            },
            message = messages.recv(), if messages_open => match message {
                Some(bytes) => send(writer, FromWorker::Message(bytes)).await?,
                None => messages_open = false,
            },
            Some(stream) = closed_rx.recv() => match stream {
                // What the guest wrote before still drains (the parent
                // drops it); its next write finds the stream closed.
                Stream::Stdout => stdout.close(),
                Stream::Stderr => stderr.close(),
            },
            // Not once the task is over: a call it queued as it ended
            // must not run in the parent after its end.
            Some(call) = next_host_call(&mut host_calls), if report.is_none() => {
                if !call.reply.is_closed() {
                    forward_host_call(writer, &replies, call).await?;
                }
            }
            done = &mut wait, if report.is_none() => report = Some(done),
        }
    }
    let report = report.ok_or("no report")?;
    task_over.cancel();
    if !reuse {
        inbound.abort();
    }
    send(
        writer,
        FromWorker::Finished(Box::new(Finished {
            outcome: report.outcome,
            metrics: report.metrics,
        })),
    )
    .await?;
    if !reuse {
        return Ok(None);
    }
    // The parent decides whether this worker goes on: `EndTask` or EOF.
    Ok(inbound.await.ok().flatten())
}

/// Handles the parent's frames while a task runs: messages and stdin for
/// the guest, cancellation. Returns the reader at [`ToWorker::EndTask`] (a
/// reused worker); exits the process when the parent is gone.
async fn read_parent(
    mut reader: Reader,
    sender: crate::channel::MessageSender,
    mut stdin: Option<tokio::io::WriteHalf<tokio::io::SimplexStream>>,
    canceller: CancelHandle,
    task_over: tokio_util::sync::CancellationToken,
    closed: tokio::sync::mpsc::UnboundedSender<Stream>,
    replies: HostReplies,
) -> Option<Reader> {
    let mut sender = Some(sender);
    loop {
        match next_frame(&mut reader).await {
            // A reply to a call the guest gave up (it was cancelled or
            // timed out meanwhile) has nobody to go to: dropped.
            Ok(Some(ToWorker::HostReply(reply))) => replies.answer(reply),
            Ok(Some(ToWorker::Message(bytes))) => {
                if let Some(s) = &sender {
                    // Waits while the guest's inbox is full; the parent's
                    // sender waits in turn. Once the task is over, its
                    // late messages are dropped.
                    tokio::select! {
                        _ = s.send(bytes) => {}
                        () = task_over.cancelled() => sender = None,
                    }
                }
            }
            Ok(Some(ToWorker::EndTask)) => return Some(reader),
            Ok(Some(ToWorker::CloseChannel)) => sender = None,
            Ok(Some(ToWorker::Stdin(bytes))) => {
                if let Some(w) = &mut stdin
                    && w.write_all(&bytes).await.is_err()
                {
                    // The guest stopped reading; that is fine.
                    stdin = None;
                }
            }
            Ok(Some(ToWorker::StdinEnd)) => {
                if let Some(mut w) = stdin.take() {
                    // Shutting the pipe down is what the guest reads as EOF.
                    let _ = w.shutdown().await;
                }
            }
            Ok(Some(ToWorker::Cancel)) => canceller.cancel(),
            // Once the task is over nobody listens; that is fine.
            Ok(Some(ToWorker::OutputClosed(stream))) => {
                let _ = closed.send(stream);
            }
            Ok(Some(
                ToWorker::Hello(_)
                | ToWorker::Run(_)
                | ToWorker::Preload(_)
                | ToWorker::WarmUp
                | ToWorker::Plugin(_)
                | ToWorker::Call(_)
                | ToWorker::Invoke(_)
                | ToWorker::Input(_)
                | ToWorker::DataEnd,
            ))
            | Err(_) => {
                // A confused parent: stop the task; the report still goes out.
                canceller.cancel();
                return None;
            }
            // The parent let a finished task's worker go.
            Ok(None) if task_over.is_cancelled() => return None,
            // The parent is gone: nobody to report to.
            Ok(None) => std::process::exit(1),
        }
    }
}

/// The link of a task's host calls to the parent, and the calls it makes,
/// if its spec grants any host function.
fn remote_host(
    spec: &TaskSpec,
) -> (
    Option<HostLink>,
    Option<tokio::sync::mpsc::Receiver<RemoteCall>>,
) {
    if !spec.grants_host_calls() {
        return (None, None);
    }
    let (calls, requests) = tokio::sync::mpsc::channel(1);
    (Some(HostLink::Remote(calls)), Some(requests))
}

/// The guest's next host call, if it can make any.
async fn next_host_call(
    calls: &mut Option<tokio::sync::mpsc::Receiver<RemoteCall>>,
) -> Option<RemoteCall> {
    match calls {
        Some(calls) => calls.recv().await,
        None => std::future::pending().await,
    }
}

/// Sends the guest's host call to the parent, its reply expected in
/// `replies`.
async fn forward_host_call(
    writer: &mut Writer,
    replies: &HostReplies,
    call: RemoteCall,
) -> Result<(), String> {
    replies.expect(call.reply);
    send(
        writer,
        FromWorker::HostCall {
            function: call.function,
            args: bytes::Bytes::from(call.args),
        },
    )
    .await
}

/// Where the parent's answer to the guest's host call goes (one call at a
/// time): set when the call frame goes out, taken when the reply comes in.
#[derive(Clone, Default)]
struct HostReplies(std::sync::Arc<std::sync::Mutex<Option<ReplyTo>>>);

impl HostReplies {
    fn expect(&self, reply: ReplyTo) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(reply);
    }

    fn answer(&self, reply: crate::ipc::protocol::HostReply) {
        if let Some(waiting) = self.0.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = waiting.send(reply.into_result());
        }
    }
}

/// Reports a task that could not start. A reusable worker then waits for
/// the parent to end the task, dropping whatever it sent for it meanwhile.
async fn finish_failed(
    writer: &mut Writer,
    mut reader: Reader,
    reuse: bool,
    outcome: Outcome,
) -> Result<Option<Reader>, String> {
    send(
        writer,
        FromWorker::Finished(Box::new(Finished {
            outcome,
            metrics: TaskMetrics::default(),
        })),
    )
    .await?;
    if !reuse {
        return Ok(None);
    }
    loop {
        match next_frame(&mut reader).await? {
            Some(ToWorker::EndTask) => return Ok(Some(reader)),
            None => return Ok(None),
            Some(_) => {}
        }
    }
}

/// Whether this worker entered its OS sandbox (it does once: a reused
/// worker's parent hands it only tasks with the grants it entered it for).
static SANDBOXED: AtomicBool = AtomicBool::new(false);

/// Enters the worker's OS sandbox for a task, as `policy` asks: the
/// seccomp allowlist (for every thread of the worker; usually already up
/// since the worker started), then Landlock rules that let it read only the
/// cache, its read-only grants and its stdin file and write only its
/// writable grants. A layer the kernel lacks is
/// reported on stderr, which the parent logs as a warning; under
/// [`Sandbox::Required`] it fails the task instead.
fn enter_sandbox(policy: Sandbox, spec: &TaskSpec, cache_dir: &Path) -> Result<(), Outcome> {
    if policy != Sandbox::Off && !SANDBOXED.load(Ordering::Relaxed) {
        enter_layers(policy, spec, cache_dir)?;
    }
    #[cfg(debug_assertions)]
    if let Some(attempt) = spec.env.get(ESCAPE_ENV) {
        return Err(escape_attempt(attempt));
    }
    Ok(())
}

/// The Landlock ruleset a sandboxed worker made while it waited for its
/// task (see [`prepare_file_rules`]), and the program it was made for, if
/// one was named; taken, and completed with the task's own grants, by
/// [`enter_layers`].
static FILE_RULES: std::sync::Mutex<Option<(sandbox::FileRules, Option<Preloaded>)>> =
    std::sync::Mutex::new(None);

/// The ruleset a sandboxed worker's ticker thread makes as it starts (see
/// `serve`), on its way into [`FILE_RULES`] ([`rules_from_the_ticker`]).
static RULES_ON_THE_WAY: std::sync::Mutex<
    Option<std::sync::mpsc::Receiver<Option<sandbox::FileRules>>>,
> = std::sync::Mutex::new(None);

/// Bounds the wait for the ticker's ruleset: past it the worker makes its
/// own (the ticker takes well under a millisecond; a machine so loaded
/// that it has not run yet gains nothing from waiting).
const TICKER_RULES_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

/// Takes the ruleset the ticker made into [`FILE_RULES`], once, waiting
/// for it if the ticker is still at it (the ruleset is there by the time a
/// task needs it, on all but a loaded machine).
fn rules_from_the_ticker(prepared: &mut Option<(sandbox::FileRules, Option<Preloaded>)>) {
    let Some(on_the_way) = RULES_ON_THE_WAY
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take()
    else {
        return;
    };
    if let Ok(Some(rules)) = on_the_way.recv_timeout(TICKER_RULES_WAIT)
        && prepared.is_none()
    {
        *prepared = Some((rules, None));
    }
}

/// What a prepared ruleset was made for: the compile cache and the Wasm
/// file a `preload` named.
#[derive(PartialEq)]
struct Preloaded {
    cache_dir: PathBuf,
    wasm: PathBuf,
}

/// Makes the worker's Landlock ruleset ahead of its task, while it waits:
/// the ruleset itself and `/proc/self/status` at warm-up, then, once the
/// parent names the program it expects (`preload`: the compile cache and
/// the Wasm file), those two. Every task's grants hold them (see
/// [`enter_layers`]), so a task then adds only its directories before the
/// rules go into force: a pre-started worker's Landlock step took 0.14 ms
/// of its task's start before, 0.09 ms since (workload 1, median). A task
/// of another program gets a ruleset of its own instead (the preloaded
/// program's file is none of its business). Nothing is enforced here: a kernel that
/// refuses the ruleset is reported by the task's own attempt.
fn prepare_file_rules(preload: Option<(&Path, &Path)>) {
    let mut prepared = FILE_RULES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    rules_from_the_ticker(&mut prepared);
    // Made for another program (a second preload): start over.
    let stale = matches!(
        (&*prepared, preload),
        (Some((_, Some(named))), Some((cache_dir, wasm)))
            if named.wasm != wasm || named.cache_dir != cache_dir
    );
    if prepared.is_none() || stale {
        *prepared = sandbox::FileRules::new().ok().map(|rules| (rules, None));
    }
    let Some((rules, program)) = prepared.as_mut() else {
        return;
    };
    rules.allow(Path::new(STATUS_FILE), false);
    if let Some((cache_dir, wasm)) = preload {
        rules.allow(cache_dir, false);
        rules.allow(wasm, false);
        *program = Some(Preloaded {
            cache_dir: cache_dir.to_owned(),
            wasm: wasm.to_owned(),
        });
    }
    // Last: the warm-up and preload before it may have started threads.
    rules.note_quiet_threads();
}

/// The prepared ruleset, if it suits a task of program `wasm` whose
/// compile cache is `cache_dir`: made for that program and cache, or for
/// none yet.
fn take_file_rules(wasm: &Path, cache_dir: &Path) -> Option<sandbox::FileRules> {
    let prepared = {
        let mut prepared = FILE_RULES
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        rules_from_the_ticker(&mut prepared);
        prepared.take()
    };
    let suits = |named: &Preloaded| named.wasm == wasm && named.cache_dir == cache_dir;
    let (taken, what_became) = match prepared {
        Some((rules, program)) if program.as_ref().is_none_or(suits) => (Some(rules), 1),
        Some(_) => (None, 2),
        None => (None, 0),
    };
    #[cfg(debug_assertions)]
    PREPARED_RULES.store(what_became, Ordering::Relaxed);
    #[cfg(not(debug_assertions))]
    let _ = what_became;
    taken
}

/// Debug builds only (tests): what became of the worker's prepared
/// Landlock rules at its last task ([`take_file_rules`]): 0 none were
/// prepared, 1 taken, 2 made for another program and dropped. For the
/// escape attempts named `prepared-…`.
#[cfg(debug_assertions)]
static PREPARED_RULES: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Read by the memory-limit check before each task
/// ([`limit_below_worker`]), so in every task's Landlock grants.
const STATUS_FILE: &str = "/proc/self/status";

/// [`enter_sandbox`]'s layers, in order.
fn enter_layers(policy: Sandbox, spec: &TaskSpec, cache_dir: &Path) -> Result<(), Outcome> {
    // Components reopen their verified artifact through /proc/self/fd,
    // which Landlock checks against the artifact's own path: the cache.
    let mut grants = sandbox::Grants {
        read: vec![cache_dir.to_owned()],
        write: Vec::new(),
    };
    for dir in &spec.dirs {
        if dir.writable {
            grants.write.push(dir.host.clone());
        } else {
            grants.read.push(dir.host.clone());
        }
    }
    if let Stdin::File(path) = &spec.stdin {
        grants.read.push(path.clone());
    }
    // A reused worker's later tasks: their program, if its artifact must be
    // compiled again, and the worker's own footprint (`limit_below_worker`).
    grants.read.push(spec.wasm.clone());
    grants.read.push(STATUS_FILE.into());
    let landlock =
        match take_file_rules(&spec.wasm, cache_dir).map_or_else(sandbox::FileRules::new, Ok) {
            Ok(mut rules) => {
                rules.allow_grants(&grants);
                rules.enforce()
            }
            Err(state) => state,
        };
    let applied = sandbox::Applied {
        landlock,
        seccomp: sandbox::install_seccomp(),
        network_namespace: NETWORK_NAMESPACE.get().cloned().unwrap_or_else(|| {
            sandbox::LayerState::Unavailable("the parent named no network namespace".to_owned())
        }),
    };
    // Only a whole sandbox counts: a task after one whose layer failed
    // tries again (and fails under `Required`), never skips the check.
    if applied.is_complete() {
        SANDBOXED.store(true, Ordering::Relaxed);
    }
    for (layer, state) in [
        ("Landlock", &applied.landlock),
        ("seccomp", &applied.seccomp),
        ("network namespace", &applied.network_namespace),
    ] {
        if state.is_enforced() {
            continue;
        }
        if policy == Sandbox::Required {
            return Err(Outcome::Failed {
                message: format!(
                    "the OS sandbox is required (sandbox = \"required\"), but its {layer} layer is {state}"
                ),
            });
        }
        eprintln!("isola worker: sandbox: {layer} is {state}");
    }
    Ok(())
}

/// Debug builds only (tests): a task whose spec sets this variable does not
/// run its guest; the worker itself makes the attempt the value names, as
/// an escaped guest would, once its sandbox is up. Release builds do not
/// have it.
#[cfg(debug_assertions)]
#[doc(hidden)]
pub const ESCAPE_ENV: &str = "ISOLA_TEST_ESCAPE_ATTEMPT";

/// Makes the attempt `what` names from inside the sandbox and says how it
/// went, as a `Failed` outcome (the test reads it): `open-read:PATH`,
/// `open-write:PATH`, `socket`, `connect:ADDR`, `exec:PATH`, `ptrace`,
/// `fork`, `shared-memory:BYTES`, `threads:COUNT`; `prepared-open-read:PATH`
/// is `open-read` with the message saying first whether the task's
/// Landlock rules were the ones its worker prepared. An attempt the
/// sandbox kills never returns: the worker ends with
/// [`crate::outcome::WORKER_FORBIDDEN_SYSCALL`].
#[cfg(debug_assertions)]
fn escape_attempt(what: &str) -> Outcome {
    // Not an attempt: which network namespace the worker is in, as
    // `readlink /proc/self/ns/net` says (Landlock leaves links readable).
    // Nor this: how many threads the worker has (each one another that
    // Landlock must reach), as /proc/self/status says.
    if what == "threads" {
        let threads = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|status| {
                status
                    .lines()
                    .find_map(|line| line.strip_prefix("Threads:"))
                    .map(|n| n.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".to_owned());
        return Outcome::Failed {
            message: format!("threads {threads}"),
        };
    }
    if what == "cwd" {
        // Not `getcwd`, which the filter does not allow: the link.
        let message = match std::fs::read_link("/proc/self/cwd") {
            Ok(dir) => format!("working directory {}", dir.display()),
            Err(err) => format!("working directory unknown: {err}"),
        };
        return Outcome::Failed { message };
    }
    if what == "netns" {
        let message = match std::fs::read_link("/proc/self/ns/net") {
            Ok(link) => format!("network namespace {}", link.display()),
            Err(err) => format!("network namespace unknown: {err}"),
        };
        return Outcome::Failed { message };
    }
    let result: std::io::Result<()> = match what.split_once(':') {
        Some(("open-read" | "prepared-open-read", path)) => std::fs::read(path).map(drop),
        Some(("open-write", path)) => std::fs::write(path, b"escaped").map(drop),
        Some(("connect", addr)) => std::net::TcpStream::connect(addr).map(drop),
        Some(("exec", path)) => std::process::Command::new(path).status().map(drop),
        Some(("shared-memory", bytes)) => shared_memory(bytes.parse().unwrap_or(0)),
        Some(("threads", count)) => {
            return Outcome::Failed {
                message: format!(
                    "escape attempt `{what}`: {}",
                    thread_burst(count.parse().unwrap_or(0))
                ),
            };
        }
        None if what == "socket" => std::net::UdpSocket::bind("127.0.0.1:0").map(drop),
        None if what == "ptrace" => {
            // SAFETY: PTRACE_TRACEME takes no pointers; it only asks to be
            // traced by the parent.
            let rc = unsafe { libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) };
            if rc == -1 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(())
            }
        }
        None if what == "fork" => {
            // SAFETY: the child only calls the async-signal-safe `_exit`.
            match unsafe { libc::fork() } {
                -1 => Err(std::io::Error::last_os_error()),
                // SAFETY: see above.
                0 => unsafe { libc::_exit(0) },
                _ => Ok(()),
            }
        }
        _ => Err(std::io::Error::other("unknown escape attempt")),
    };
    let rules = match (
        what.starts_with("prepared-"),
        PREPARED_RULES.load(Ordering::Relaxed),
    ) {
        (false, _) => "",
        (true, 1) => "with the prepared rules; ",
        (true, 2) => "with rules of its own, the prepared ones being another program's; ",
        (true, _) => "with rules of its own, none prepared; ",
    };
    let message = match result {
        Ok(()) => format!("{rules}escape attempt `{what}`: allowed"),
        Err(err) => format!("{rules}escape attempt `{what}`: denied: {err}"),
    };
    Outcome::Failed { message }
}

/// Maps `bytes` of shared anonymous memory and touches every page: memory
/// `RLIMIT_DATA` does not count (it counts private writable mappings), which
/// only the worker's cgroup stops. Left mapped: the worker ends with the
/// task.
#[cfg(debug_assertions)]
fn shared_memory(bytes: usize) -> std::io::Result<()> {
    // SAFETY: a fresh anonymous mapping at an address the kernel picks; no
    // existing memory is touched.
    let at = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if at == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    for offset in (0..bytes).step_by(4096) {
        // SAFETY: within the mapping just made, readable and writable.
        unsafe { at.cast::<u8>().add(offset).write_volatile(1) };
    }
    Ok(())
}

/// Starts up to `count` threads that wait forever; says how many started
/// and, if one could not, why.
#[cfg(debug_assertions)]
fn thread_burst(count: usize) -> String {
    let mut started = 0;
    for _ in 0..count {
        let spawned = std::thread::Builder::new().stack_size(64 << 10).spawn(|| {
            loop {
                std::thread::park();
            }
        });
        match spawned {
            Ok(_) => started += 1,
            Err(err) => return format!("denied after {started} threads: {err}"),
        }
    }
    format!("allowed: {started} threads")
}

/// Where sandboxed process workers' cgroups go here, when both controllers
/// a runner always uses (memory, pids) can limit them, as a runner would
/// find them: e.g. `memory, pids (cgroup v2 under
/// /sys/fs/cgroup/user.slice)`. Exactly then does `sandbox = "required"`
/// have its cgroup layer. The cpu controller, used only with
/// [`crate::RunnerConfig::worker_cpu_quota`], is not looked for. Finding
/// them may enable controllers for the groups below this process's own
/// cgroup (v2), as a runner's first sandboxed worker would.
///
/// # Errors
///
/// What is missing and why (not root and no delegated cgroup, no cgroup
/// file system, a controller that is not offered), with what is there.
pub fn cgroup_limits() -> Result<String, String> {
    let found = crate::ipc::cgroup::Cgroups::find(false)?;
    if found.missing().is_empty() {
        Ok(found.to_string())
    } else {
        Err(format!("not every controller: {found}"))
    }
}

/// The Landlock ABI version this kernel offers, or `None` without Landlock
/// (a kernel before 5.13, or Landlock not in its LSM list). Process
/// workers use it for their file rules ([`crate::Sandbox`]).
pub fn landlock_abi() -> Option<i32> {
    sandbox::landlock_abi_version()
}

//! The thread backend: a task as a Wasm instance in its own `Store` on the
//! host's Tokio threads. [`plugin`] keeps one instance for many calls.
//!
//! A task is the store recipe ([`crate::store::new_store`]), the program
//! entered by kind ([`crate::store::instantiate`]), raced against its
//! timeout and cancellation ([`crate::store::race`]), and its ending
//! classified ([`crate::outcome::Ending`]).

pub(crate) mod plugin;

use std::time::Instant;

use tokio_util::sync::CancellationToken;
use wasmtime::Store;

use crate::channel::ChannelState;
use crate::error::Result;
use crate::handle::{About, TaskHandle, TaskId};
use crate::host_fn::HostLink;
use crate::outcome::{Budget, TaskMetrics, TaskReport};
use crate::parts::Parts;
use crate::program::{Program, ProgramKind, Resolved};
use crate::spec::{Entry, Limits, TaskSpec};
use crate::state::{MemoryLimiter, Prepared, TaskState, prepare};
use crate::store;

/// What a worker process adds when it runs a task for its parent.
#[derive(Default)]
pub(crate) struct SpawnExtras {
    /// Stdin fed by the parent, replacing [`crate::Stdin::Inherit`].
    pub(crate) stdin: Option<wasmtime_wasi::cli::AsyncStdinStream>,
    /// Told when the guest's first instruction is about to run.
    pub(crate) on_start: Option<tokio::sync::oneshot::Sender<()>>,
    /// The kernel memory limit this (worker) process runs under: a linear
    /// memory growth or allocation the OS refuses is then reported as that
    /// limit.
    pub(crate) os_memory_limit: Option<u64>,
    /// Which export to enter.
    pub(crate) entry: Entry,
    /// When the caller asked for the task (before loading its program):
    /// start-up is measured from here. Default: when `spawn` is called.
    pub(crate) spawned_at: Option<Instant>,
    /// Where its host function calls go (a worker's: to its parent).
    /// Default: the runner's functions, as the spec grants them.
    pub(crate) host: Option<HostLink>,
}

/// Starts a thread-isolated task.
///
/// # Errors
///
/// [`crate::Error::InvalidSpec`] for a spec the rulebook refuses or a
/// grant that cannot be opened; [`crate::Error::UnsupportedWorld`] for an
/// entry the program lacks; [`crate::Error::ShutDown`].
pub(crate) async fn spawn(
    parts: &Parts,
    program: &Program,
    spec: TaskSpec,
    extras: SpawnExtras,
) -> Result<TaskHandle> {
    let spawned_at = extras.spawned_at.unwrap_or_else(Instant::now);
    let about = About::of(&spec);
    parts.check(&spec)?;
    let entry = crate::invoke::resolve(program, extras.entry)?;
    program.host_call_problem(&spec)?;
    let mut prepared = prepare(program.path(), &spec, extras.stdin)?;
    let slot = parts.slot().await?;
    let cancel = CancellationToken::new();
    let id = TaskId::next();
    let stdout_rx = prepared.stdout_rx.take();
    let stderr_rx = prepared.stderr_rx.take();
    let (channel, host_ends) = ChannelState::for_spec(&spec);
    let host = match extras.host {
        Some(link) => link,
        None => parts.host_link(&spec, id, program)?,
    };
    let job = Job {
        host,
        parts: parts.clone(),
        program: program.clone(),
        limits: spec.limits,
        prepared,
        cancel: cancel.clone(),
        spawned_at,
        on_start: extras.on_start,
        os_memory_limit: extras.os_memory_limit,
        entry,
        channel,
    };
    tracing::debug!(task = %id, wasm = %program.path().display(), "task started");
    Ok(TaskHandle::start(
        id,
        about,
        cancel,
        job.run(),
        slot,
        (stdout_rx, stderr_rx),
        host_ends,
        None,
    ))
}

struct Job {
    host: HostLink,
    parts: Parts,
    program: Program,
    limits: Limits,
    prepared: Prepared,
    cancel: CancellationToken,
    spawned_at: Instant,
    on_start: Option<tokio::sync::oneshot::Sender<()>>,
    os_memory_limit: Option<u64>,
    entry: Resolved,
    channel: ChannelState,
}

impl Job {
    /// The task's future. A plain function returning an `async move` block,
    /// not an `async fn`: an `async fn` keeps its argument (the whole `Job`)
    /// in its state beside the parts taken out of it, and this future is
    /// what every live thread task costs (issue 12's memory measure). The
    /// WASI context is built here for the same reason: the spent builder
    /// (about 300 bytes) is not carried.
    fn run(self) -> impl Future<Output = TaskReport> + Send + 'static {
        let Job {
            host,
            parts,
            program,
            limits,
            prepared,
            cancel,
            spawned_at,
            mut on_start,
            os_memory_limit,
            entry,
            mut channel,
        } = self;
        let Prepared {
            mut wasi,
            stdout,
            stderr,
            ..
        } = prepared;
        let wasi = wasi.build_p1();
        let (timeout, fuel, max_memory) = (limits.timeout, limits.fuel, limits.max_memory);
        async move {
            let _ticking = parts.ticker.clone().map(|t| t.activate());
            channel.ticker = parts.ticker.clone();
            let budget = Budget {
                fuel: fuel.unwrap_or(u64::MAX),
                os_memory_limit,
            };
            let state = TaskState {
                wasi,
                limiter: MemoryLimiter::new(max_memory.as_u64()).with_os_limit(os_memory_limit),
                channel,
                host,
                call_result: None,
                extension: None,
            };
            let mut store = store::new_store(parts.engine(), state, budget.fuel, None);
            drop(parts);

            let mut started_at = None;
            let ending = {
                let guest = async {
                    let entered = store::instantiate(&mut store, &program, entry).await?;
                    started_at = Some(Instant::now());
                    if let Some(tx) = on_start.take() {
                        let _ = tx.send(());
                    }
                    let input = match entered {
                        store::Entered::ComponentRun(_) => {
                            store.data().channel.input().unwrap_or_default()
                        }
                        _ => Vec::new(),
                    };
                    entered.call(&mut store, &input).await
                };
                let guest = std::pin::pin!(guest);
                store::run_to_end(guest, timeout, Some(&cancel)).await
            };
            let ended_at = Instant::now();
            let outcome = ending.into_outcome(&budget);
            let started_at = started_at.unwrap_or(ended_at);
            let metrics = TaskMetrics {
                startup: started_at - spawned_at,
                run_time: ended_at - started_at,
                peak_memory: store.data().limiter.peak(),
                fuel_used: store::fuel_used(&store, budget.fuel),
            };
            drop(store);
            TaskReport {
                outcome,
                metrics,
                stdout: stdout.finish(),
                stderr: stderr.finish(),
            }
        }
    }
}

/// Instantiates a module program once and drops the instance. The first
/// instantiation of a module builds lazy state (its copy-on-write memory
/// image); a pre-started worker pays for it before its task arrives. With
/// no fuel, no guest code can run, not even a `start` function.
pub(crate) async fn instantiate_only(parts: &Parts, program: &Program) {
    let ProgramKind::Module { pre, .. } = &program.inner.kind else {
        return;
    };
    let mut state = TaskState::inert();
    // Unbounded here: building the memory image must not fail on a limit
    // that belongs to the task that will run later.
    state.limiter = MemoryLimiter::new(u64::MAX);
    let mut store: Store<TaskState> = store::new_store(parts.engine(), state, 0, None);
    let _ = pre.instantiate_async(&mut store).await;
}

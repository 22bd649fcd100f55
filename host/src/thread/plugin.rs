//! A plugin instance kept in this process's own store, called many times
//! (the thread side of [`crate::PluginInstance`]).
//!
//! Each call gets its own fuel budget and timeout; linear memory and its
//! limit persist. A call that traps, hits a limit or times out leaves the
//! instance in an unknown state, so the instance refuses further calls.

use std::time::Instant;

use bytes::Bytes;
use wasmtime::Store;

use crate::outcome::{Budget, CallError, Ending, Outcome, TaskMetrics, abandoned, ended, unusable};
use crate::parts::Parts;
use crate::program::Program;
use crate::spec::{Entry, Limits, Output, TaskSpec};
use crate::state::{MemoryLimiter, TaskState, prepare};
use crate::store::{self, Entered, KeptHandle};
use crate::ticker::TickerHandle;

/// A plugin instance in this process's own store.
pub(crate) struct KeptInstance {
    store: Store<TaskState>,
    /// The plugin `run`, if the program has one.
    entry: Option<Entered>,
    /// The instance, for its exports called by name.
    handle: KeptHandle,
    limits: Limits,
    program: Program,
    broken: Option<Outcome>,
    /// A call is under way (or its caller dropped it half-way).
    in_call: bool,
    ticker: Option<TickerHandle>,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl std::fmt::Debug for KeptInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeptInstance")
            .field("program", &self.program)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

/// Instantiates `program` once for calls to its plugin `run`. Its output
/// is not captured (there is no per-call report to carry it); piped and
/// inherited output work as for tasks.
///
/// # Errors
///
/// [`CallError::Start`] as [`crate::Runner::spawn`]; [`CallError::Ended`]
/// if guest code run by instantiation (a `start` function, `_initialize`)
/// trapped, hit a limit or exited.
pub(crate) async fn instantiate(
    parts: &Parts,
    program: Program,
    mut spec: TaskSpec,
    os_memory_limit: Option<u64>,
    host: Option<crate::host_fn::HostLink>,
) -> std::result::Result<KeptInstance, CallError> {
    let refused = CallError::Start;
    // A plugin's `run`, or a library's functions called by name; a plain
    // command is neither.
    if program.is_plugin() || program.is_command() {
        program.resolve_entry(Entry::Run).map_err(refused)?;
    }
    parts.check(&spec).map_err(refused)?;
    program.host_call_problem(&spec).map_err(refused)?;
    for output in [&mut spec.stdout, &mut spec.stderr] {
        if *output == Output::Capture {
            *output = Output::Discard;
        }
    }
    let prepared = prepare(program.path(), &spec, None).map_err(refused)?;
    let slot = parts.slot().await.map_err(refused)?;
    let mut wasi = prepared.wasi;
    let mut state = TaskState::inert();
    state.wasi = wasi.build_p1();
    // Calls, like messages, need a limit: the spec's, not the inert state's.
    state.channel = crate::channel::ChannelState::for_spec(&spec).0;
    state.host = match host {
        Some(link) => link,
        None => parts
            .host_link(&spec, crate::TaskId::next(), &program)
            .map_err(refused)?,
    };
    state.limiter =
        MemoryLimiter::new(spec.limits.max_memory.as_u64()).with_os_limit(os_memory_limit);
    let budget = Budget {
        fuel: spec.limits.fuel.unwrap_or(u64::MAX),
        os_memory_limit,
    };
    let ticker = parts.ticker.clone();
    // Instantiation may run a `start` function or `_initialize`, with a
    // budget and timeout of the size each call gets: tick while it does.
    let ticking = ticker.clone().map(|t| t.activate());
    let mut store = store::new_store(parts.engine(), state, budget.fuel, None);
    let started = Instant::now();
    let entered = {
        let instantiating = std::pin::pin!(store::instantiate_kept(&mut store, &program));
        store::race(instantiating, spec.limits.timeout, None).await
    };
    drop(ticking);
    let ending = match entered {
        Ok(Ok((entered, handle))) => {
            return Ok(KeptInstance {
                store,
                entry: entered,
                handle,
                limits: spec.limits,
                program,
                broken: None,
                in_call: false,
                ticker,
                _slot: slot,
            });
        }
        Ok(Err(err)) => Ending::Error(err),
        Err(stop) => Ending::Stopped(stop),
    };
    let metrics = metrics(&store, started, budget.fuel);
    Err(match ending.into_outcome(&budget) {
        // Not the guest's doing (say, no room left in the instance pool):
        // the instance could not be set up, as in a worker process.
        Outcome::Failed { message } => CallError::Start(crate::Error::Internal(format!(
            "cannot instantiate the plugin: {message}"
        ))),
        outcome => ended(outcome, metrics),
    })
}

fn metrics(store: &Store<TaskState>, started: Instant, budget: u64) -> TaskMetrics {
    TaskMetrics {
        startup: Default::default(),
        run_time: started.elapsed(),
        peak_memory: store.data().limiter.peak(),
        fuel_used: store::fuel_used(store, budget),
    }
}

impl KeptInstance {
    /// Calls `run` with `input`.
    ///
    /// # Errors
    ///
    /// [`CallError::Rejected`] if `run` returned an error (the instance
    /// stays usable); [`CallError::Ended`] if the call trapped, hit a limit or
    /// timed out, or an earlier call ended so (the instance is then
    /// unusable); [`CallError::Start`] if the program has no `run`.
    pub(crate) async fn call(&mut self, input: Vec<u8>) -> std::result::Result<Vec<u8>, CallError> {
        if self.entry.is_none() {
            return Err(CallError::Start(
                self.program
                    .resolve_entry(Entry::Run)
                    .err()
                    .unwrap_or_else(|| crate::Error::Internal("no `run` entered".into())),
            ));
        }
        self.run_call(Call::Run(input)).await
    }

    /// Calls the export named in `call` (`name(arg, …)`, WAVE), on the
    /// same instance: its results in WAVE, one per line.
    ///
    /// # Errors
    ///
    /// [`CallError::Start`] for a call that does not fit the program
    /// ([`crate::Error::InvalidSpec`], field `invoke`); otherwise as
    /// [`KeptInstance::call`].
    pub(crate) async fn invoke(&mut self, call: &str) -> std::result::Result<Vec<u8>, CallError> {
        crate::invoke::check(&self.program, call).map_err(CallError::Start)?;
        self.run_call(Call::Invoke(call.to_owned())).await
    }

    async fn run_call(&mut self, what: Call) -> std::result::Result<Vec<u8>, CallError> {
        if self.in_call && self.broken.is_none() {
            // The caller dropped the last call while it ran: the instance
            // stopped somewhere in the middle of it.
            self.broken = Some(abandoned());
        }
        if let Some(outcome) = &self.broken {
            return Err(unusable(outcome));
        }
        self.in_call = true;
        let budget = Budget {
            fuel: self.limits.fuel.unwrap_or(u64::MAX),
            os_memory_limit: self.store.data().limiter.os_limit(),
        };
        let _ = self.store.set_fuel(budget.fuel);
        // Each call starts its input and message count afresh.
        let input = match &what {
            Call::Run(input) => Some(Bytes::from(input.clone())),
            Call::Invoke(_) => None,
        };
        self.store.data_mut().channel.set_input(input);
        let started = Instant::now();
        // Epochs tick only while a call runs: an instance between calls
        // costs nothing.
        let _ticking = self.ticker.clone().map(|t| t.activate());
        let ending = {
            let (store, entry, handle) = (&mut self.store, &self.entry, &self.handle);
            let call = async move {
                match what {
                    Call::Run(input) => match entry {
                        Some(entry) => entry.call(store, &input).await,
                        None => wasmtime::bail!("the program has no plugin `run`"),
                    },
                    Call::Invoke(call) => {
                        let invocation = match handle {
                            KeptHandle::Core(instance) => {
                                crate::invoke::Invocation::core(store, instance, &call)?
                            }
                            KeptHandle::Component(instance) => {
                                crate::invoke::Invocation::component(store, instance, &call)?
                            }
                        };
                        Ok(Ending::Returned(Ok(invocation.call(store).await?)))
                    }
                }
            };
            let call = std::pin::pin!(call);
            store::run_to_end(call, self.limits.timeout, None).await
        };
        let metrics = metrics(&self.store, started, budget.fuel);
        self.in_call = false;
        match ending.into_outcome(&budget) {
            Outcome::Returned { output } => Ok(output),
            Outcome::Rejected { error } => Err(CallError::Rejected(error)),
            outcome => {
                self.broken = Some(outcome.clone());
                Err(ended(outcome, metrics))
            }
        }
    }
}

/// What a call of a kept instance runs.
enum Call {
    /// The plugin `run`, with this input.
    Run(Vec<u8>),
    /// An export by name.
    Invoke(String),
}

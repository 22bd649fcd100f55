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
use crate::store::{self, Entered};
use crate::ticker::TickerHandle;

/// A plugin instance in this process's own store.
pub(crate) struct KeptInstance {
    store: Store<TaskState>,
    entry: Entered,
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
    let entry = program.resolve_entry(Entry::Run).map_err(refused)?;
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
            .host_link(&spec, crate::TaskId::next())
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
        let instantiating = std::pin::pin!(store::instantiate(&mut store, &program, entry));
        store::race(instantiating, spec.limits.timeout, None).await
    };
    drop(ticking);
    let ending = match entered {
        Ok(Ok(entered)) => {
            return Ok(KeptInstance {
                store,
                entry: entered,
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
    /// unusable).
    pub(crate) async fn call(&mut self, input: Vec<u8>) -> std::result::Result<Vec<u8>, CallError> {
        if self.in_call && self.broken.is_none() {
            // The caller dropped the last call while it ran: the instance
            // stopped somewhere in the middle of `run`.
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
        self.store
            .data_mut()
            .channel
            .set_input(Some(Bytes::from(input.clone())));
        let started = Instant::now();
        // Epochs tick only while a call runs: an instance between calls
        // costs nothing.
        let _ticking = self.ticker.clone().map(|t| t.activate());
        let ending = {
            let call = std::pin::pin!(self.entry.call(&mut self.store, &input));
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

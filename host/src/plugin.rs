//! A plugin instance kept across calls: opt-in state between `run`s.
//!
//! [`crate::Runner::call`] gives every call a fresh instance, so nothing a
//! call leaves behind can leak into the next. Some plugins are worth
//! keeping warm (a parsed dictionary, a compiled regex, a cache); for them
//! [`crate::Runner::plugin`] instantiates once and [`PluginInstance::call`]
//! calls `run` again on the same instance. Each call gets its own fuel
//! budget and timeout; linear memory and its limit persist. A call that
//! traps, hits a limit or times out leaves the instance in an unknown
//! state, so the instance refuses further calls.
//!
//! With process isolation the instance lives in a worker process of its
//! own (see [`crate::process`]), which serves calls until the instance is
//! dropped; a crash of that process ends the instance as `Crashed`.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use wasmtime::{Store, TypedFunc, UpdateDeadline};

use crate::channel::bindings::Plugin;
use crate::error::{Error, Result};
use crate::outcome::{Limit, Outcome, TaskMetrics, TaskReport};
use crate::program::{CORE_PLUGIN_EXPORT, Program, ProgramKind};
use crate::runner::{CallError, RunnerInner, TickerHandle};
use crate::spec::{Limits, TaskSpec};
use crate::state::{MemoryLimiter, TaskState};

enum Entry {
    Core(TypedFunc<(), i32>),
    Component(Plugin),
}

/// One instance of a plugin, called many times, in the host process or in
/// a worker process of its own, as its spec's isolation says.
///
/// # Examples
///
/// ```no_run
/// # async fn demo(runner: &isola::Runner) -> Result<(), Box<dyn std::error::Error>> {
/// let mut spec = isola::TaskSpec::new("plugin.wasm");
/// spec.isolation = isola::Isolation::Process;
/// let mut plugin = runner.plugin(spec).await?;
/// let first = plugin.call("count").await?;
/// let second = plugin.call("count").await?; // same instance, state kept
/// # let _ = (first, second);
/// # Ok(()) }
/// ```
pub struct PluginInstance {
    kind: Kind,
}

enum Kind {
    Thread(Box<InProcess>),
    Process(Box<crate::process::PluginWorker>),
}

/// A plugin instance in this process's own store.
struct InProcess {
    store: Store<TaskState>,
    entry: Entry,
    limits: Limits,
    program: Program,
    broken: Option<Outcome>,
    /// A call is under way (or its caller dropped it half-way).
    in_call: bool,
    ticker: Option<TickerHandle>,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl std::fmt::Debug for PluginInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            Kind::Thread(instance) => f
                .debug_struct("PluginInstance")
                .field("program", &instance.program)
                .field("broken", &instance.broken)
                .finish_non_exhaustive(),
            Kind::Process(worker) => f
                .debug_struct("PluginInstance")
                .field("pid", &worker.pid())
                .finish_non_exhaustive(),
        }
    }
}

pub(crate) async fn instantiate(
    runner: &Arc<RunnerInner>,
    program: Program,
    spec: TaskSpec,
) -> Result<PluginInstance> {
    if spec.isolation == crate::Isolation::Process {
        let worker = crate::process::start_plugin(runner, &program, spec).await?;
        return Ok(PluginInstance {
            kind: Kind::Process(Box::new(worker)),
        });
    }
    if !program.is_plugin() {
        crate::task::resolve_entry(&program, crate::task::Entry::Run)?;
    }
    crate::task::check_limits(runner, &spec)?;
    let wasi = crate::task::plugin_wasi(&program, &spec)?;
    let slot = Arc::clone(&runner.slots)
        .acquire_owned()
        .await
        .map_err(|_| Error::ShutDown)?;
    let mut state = TaskState::inert();
    state.wasi = wasi;
    state.limiter = MemoryLimiter::new(spec.limits.max_memory.as_u64());
    let ticker = runner.ticker.handle();
    // Instantiation may run a `start` function: tick while it does.
    let ticking = ticker.clone().map(|t| t.activate());
    let mut store = Store::new(&runner.engine, state);
    store.limiter(|s| &mut s.limiter);
    let _ = store.set_fuel(u64::MAX);
    store.epoch_deadline_callback(|_| Ok(UpdateDeadline::Yield(1)));
    store.set_epoch_deadline(1);
    let failed = |err: wasmtime::Error| Error::Internal(format!("cannot instantiate: {err:#}"));
    let entry = match &program.inner.kind {
        ProgramKind::Module { pre, .. } => {
            let instance = pre.instantiate_async(&mut store).await.map_err(failed)?;
            Entry::Core(
                instance
                    .get_typed_func::<(), i32>(&mut store, CORE_PLUGIN_EXPORT)
                    .map_err(failed)?,
            )
        }
        ProgramKind::Component {
            plugin: Some(pre), ..
        } => Entry::Component(pre.instantiate_async(&mut store).await.map_err(failed)?),
        _ => return Err(Error::Internal("not a plugin".into())),
    };
    drop(ticking);
    Ok(PluginInstance {
        kind: Kind::Thread(Box::new(InProcess {
            store,
            entry,
            limits: spec.limits,
            program,
            broken: None,
            in_call: false,
            ticker,
            _slot: slot,
        })),
    })
}

impl PluginInstance {
    /// Calls `run` with `input` on this instance.
    ///
    /// # Errors
    ///
    /// [`CallError::Rejected`] if `run` returned an error (the instance
    /// stays usable); [`CallError::Ended`] if the call trapped, hit a limit
    /// or timed out, its worker process crashed, or an earlier call ended
    /// so (the instance is then unusable).
    pub async fn call(
        &mut self,
        input: impl Into<Vec<u8>>,
    ) -> std::result::Result<Vec<u8>, CallError> {
        match &mut self.kind {
            Kind::Thread(instance) => instance.call(input.into()).await,
            Kind::Process(worker) => worker.call(input.into()).await,
        }
    }

    /// The pid of the worker process holding the instance (process
    /// isolation); `None` for an instance in this process.
    pub fn process_id(&self) -> Option<u32> {
        match &self.kind {
            Kind::Thread(_) => None,
            Kind::Process(worker) => Some(worker.pid()),
        }
    }
}

/// Why an instance whose caller dropped a call half-way is unusable.
pub(crate) fn abandoned() -> Outcome {
    Outcome::Failed {
        message: "an earlier call was abandoned before it answered".into(),
    }
}

/// The answer to a call on an instance an earlier call left unusable.
pub(crate) fn unusable(outcome: &Outcome) -> CallError {
    ended(
        Outcome::Failed {
            message: format!("the instance is unusable after an earlier call ended: {outcome}"),
        },
        TaskMetrics::default(),
    )
}

impl InProcess {
    async fn call(&mut self, input: Vec<u8>) -> std::result::Result<Vec<u8>, CallError> {
        if self.in_call && self.broken.is_none() {
            // The caller dropped the last call while it ran: the instance
            // stopped somewhere in the middle of `run`.
            self.broken = Some(abandoned());
        }
        if let Some(outcome) = &self.broken {
            return Err(unusable(outcome));
        }
        self.in_call = true;
        let budget = self.limits.fuel.unwrap_or(u64::MAX);
        let _ = self.store.set_fuel(budget);
        self.store
            .data_mut()
            .channel
            .set_input(Some(Bytes::from(input.clone())));
        let started = Instant::now();
        // Epochs tick only while a call runs: an instance between calls
        // costs nothing.
        let _ticking = self.ticker.clone().map(|t| t.activate());
        let call = async {
            match &self.entry {
                Entry::Core(run) => {
                    let status = run.call_async(&mut self.store, ()).await?;
                    Ok(self.store.data_mut().channel.take_result(status))
                }
                Entry::Component(plugin) => plugin.call_run(&mut self.store, &input).await,
            }
        };
        let result: wasmtime::Result<std::result::Result<Vec<u8>, String>> =
            match self.limits.timeout {
                Some(after) => match tokio::time::timeout(after, call).await {
                    Ok(result) => result,
                    Err(_) => {
                        let outcome = Outcome::LimitExceeded {
                            limit: Limit::Timeout { after },
                        };
                        self.broken = Some(outcome.clone());
                        return Err(ended(outcome, self.metrics(started, budget)));
                    }
                },
                None => call.await,
            };
        let metrics = self.metrics(started, budget);
        self.in_call = false;
        match result {
            Ok(Ok(output)) => Ok(output),
            Ok(Err(error)) => Err(CallError::Rejected(error)),
            Err(err) => {
                let outcome = crate::task::classify(&err, budget);
                self.broken = Some(outcome.clone());
                Err(ended(outcome, metrics))
            }
        }
    }

    fn metrics(&self, started: Instant, budget: u64) -> TaskMetrics {
        TaskMetrics {
            startup: Default::default(),
            run_time: started.elapsed(),
            peak_memory: self.store.data().limiter.peak(),
            fuel_used: budget - self.store.get_fuel().unwrap_or(budget),
        }
    }
}

pub(crate) fn ended(outcome: Outcome, metrics: TaskMetrics) -> CallError {
    CallError::Ended(Box::new(TaskReport {
        outcome,
        metrics,
        stdout: Default::default(),
        stderr: Default::default(),
    }))
}

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

/// One instance of a plugin, called many times. Thread isolation only.
pub struct PluginInstance {
    store: Store<TaskState>,
    entry: Entry,
    limits: Limits,
    program: Program,
    broken: Option<Outcome>,
    ticker: Option<TickerHandle>,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl std::fmt::Debug for PluginInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginInstance")
            .field("program", &self.program)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

pub(crate) async fn instantiate(
    runner: &Arc<RunnerInner>,
    program: Program,
    spec: TaskSpec,
) -> Result<PluginInstance> {
    if spec.isolation != crate::Isolation::Thread {
        return Err(Error::Unsupported(
            "keeping a plugin instance across calls in process isolation".into(),
        ));
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
        store,
        entry,
        limits: spec.limits,
        program,
        broken: None,
        ticker,
        _slot: slot,
    })
}

impl PluginInstance {
    /// Calls `run` with `input` on this instance.
    ///
    /// # Errors
    ///
    /// [`CallError::Rejected`] if `run` returned an error (the instance
    /// stays usable); [`CallError::Ended`] if the call trapped, hit a limit
    /// or timed out, or an earlier call did (the instance is then unusable).
    pub async fn call(
        &mut self,
        input: impl Into<Vec<u8>>,
    ) -> std::result::Result<Vec<u8>, CallError> {
        if let Some(outcome) = &self.broken {
            return Err(ended(
                Outcome::Failed {
                    message: format!(
                        "the instance is unusable after an earlier call ended: {outcome}"
                    ),
                },
                TaskMetrics::default(),
            ));
        }
        let budget = self.limits.fuel.unwrap_or(u64::MAX);
        let _ = self.store.set_fuel(budget);
        let input: Vec<u8> = input.into();
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

fn ended(outcome: Outcome, metrics: TaskMetrics) -> CallError {
    CallError::Ended(Box::new(TaskReport {
        outcome,
        metrics,
        stdout: Default::default(),
        stderr: Default::default(),
    }))
}

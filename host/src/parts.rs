//! The parts of a runner that its backends borrow: the loader (engine,
//! linkers, caches), the instance slots, the epoch ticker and the
//! per-task memory ceiling. Backends get them as an argument; none reaches
//! into the runner.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime::Engine;

use crate::error::{Error, Result};
use crate::loader::Loader;
use crate::spec::TaskSpec;
use crate::ticker::TickerHandle;

/// What every backend needs from its runner. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Parts {
    /// Loads programs; owns the engine.
    pub(crate) loader: Arc<Loader>,
    /// One permit per live task ([`crate::RunnerConfig::max_live_tasks`]).
    pub(crate) slots: Arc<Semaphore>,
    /// The runner's epoch ticker; `None` if its thread could not start.
    pub(crate) ticker: Option<TickerHandle>,
    /// The most linear memory one task may be given, in bytes
    /// ([`crate::RunnerConfig::max_memory_per_task`]).
    pub(crate) max_memory_per_task: u64,
}

impl Parts {
    /// The engine programs run on.
    pub(crate) fn engine(&self) -> &Engine {
        self.loader.engine()
    }

    /// Waits for a free instance slot; held for the task's life.
    ///
    /// # Errors
    ///
    /// [`Error::ShutDown`] once the runner is gone.
    pub(crate) async fn slot(&self) -> Result<OwnedSemaphorePermit> {
        Arc::clone(&self.slots)
            .acquire_owned()
            .await
            .map_err(|_| Error::ShutDown)
    }

    /// Checks `spec` by the rulebook ([`crate::rules`]) and against this
    /// runner's ceiling; the first problem, naming its field.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidSpec`].
    pub(crate) fn check(&self, spec: &TaskSpec) -> Result<()> {
        if let Some(problem) = crate::rules::ceiling_problem(spec, self.max_memory_per_task) {
            return Err(problem.into_error());
        }
        crate::rules::check(spec)
    }
}

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
    /// The functions tasks may call ([`crate::RunnerConfig::host_functions`]);
    /// `None` in a worker, whose tasks call through their parent.
    pub(crate) host_functions: Option<crate::host_fn::HostFunctions>,
    /// The `isola:kv` databases the runner's tasks opened, by file.
    pub(crate) kv_stores: Arc<KvStores>,
}

/// The `isola:kv` stores of a runner, one per database file, opened on the
/// first task that names the file and kept for the runner's life.
#[derive(Default)]
pub(crate) struct KvStores {
    open: std::sync::Mutex<std::collections::HashMap<std::path::PathBuf, Arc<crate::kv::KvStore>>>,
}

impl KvStores {
    /// The store of the database at `path`, opened (and the file created)
    /// if it is not yet.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidSpec`] naming `kv` if the file's directory does not
    /// exist or the file is not a SQLite database.
    pub(crate) fn get(&self, path: &std::path::Path) -> Result<Arc<crate::kv::KvStore>> {
        let invalid = |message: String| Error::InvalidSpec {
            field: "kv".into(),
            message,
        };
        // One store per file, however it is named: the key is the path
        // with its directory resolved.
        let name = path
            .file_name()
            .ok_or_else(|| invalid(format!("`{}` names no file", path.display())))?;
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => std::path::Path::new("."),
        };
        let dir =
            std::fs::canonicalize(dir).map_err(|e| invalid(format!("`{}`: {e}", dir.display())))?;
        let key = dir.join(name);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(store) = open.get(&key) {
            return Ok(Arc::clone(store));
        }
        let store = Arc::new(crate::kv::KvStore::open(&key).map_err(|e| invalid(e.to_string()))?);
        open.insert(key, Arc::clone(&store));
        Ok(store)
    }
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

    /// The link of task `id` to the host functions and the `isola:kv`
    /// store `spec` grants it.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidSpec`] naming `kv` if its store cannot be opened.
    pub(crate) fn host_link(
        &self,
        spec: &TaskSpec,
        id: crate::TaskId,
        program: &crate::program::Program,
    ) -> Result<crate::host_fn::HostLink> {
        let Some(functions) = &self.host_functions else {
            return Ok(crate::host_fn::HostLink::None);
        };
        let kv = match &spec.kv {
            Some(path) => Some(self.kv_stores.get(path)?),
            None => None,
        };
        Ok(crate::host_fn::HostLink::local(
            functions,
            &spec.host_functions,
            kv,
            id,
            &spec.program_name(),
            program.inner.typed_imports.clone(),
        ))
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
        crate::rules::check(spec)?;
        let Some(functions) = &self.host_functions else {
            return Ok(());
        };
        match crate::rules::host_function_problem(spec, functions) {
            Some(problem) => Err(problem.into_error()),
            None => Ok(()),
        }
    }
}

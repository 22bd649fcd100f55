//! The [`Runner`]: owns the engine, the linkers, the compile caches and the
//! pool of instance slots, and starts tasks.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};

use crate::cache::{ContentHash, DiskCache};
use crate::error::{Error, Result};
use crate::group::{GroupSpec, SharedGroup};
use crate::plugin::PluginInstance;
use crate::process::{self, ProcessBackend};
use crate::program::{self, FileStamp, Program, WasmKind};
use crate::spec::TaskSpec;
use crate::state::TaskState;
use crate::task::{self, TaskHandle};
use crate::{Isolation, Outcome, TaskReport};

/// Where compiled artifacts are kept between runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum CacheDir {
    /// `$ISOLA_CACHE_DIR`, else the user's cache directory
    /// (`~/.cache/isola` on Linux). The default.
    #[default]
    Default,
    /// This directory.
    Path(PathBuf),
    /// No disk cache: every new runner compiles again.
    Disabled,
}

/// How a [`Runner`] is set up. Every field has a default suited to a
/// workstation; see each field.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Most tasks alive at once. [`Runner::spawn`] waits for a free slot
    /// when all are taken. Each slot reserves address space (not memory) for
    /// its instance. By default 1,000.
    pub max_live_tasks: usize,
    /// Largest linear memory a single task may be given, whatever its
    /// [`crate::Limits::max_memory`]. By default 4 GiB, the most a 32-bit
    /// memory can address.
    pub max_memory_per_task: u64,
    /// The on-disk compile cache. By default [`CacheDir::Default`].
    pub cache_dir: CacheDir,
    /// How often running guests are interrupted to check timeouts and
    /// cancellation and to let other tasks run. By default 1 ms.
    pub epoch_tick: Duration,
    /// Whether instances come from a pre-reserved pool (fast to start, but
    /// reserves address space for `max_live_tasks` instances up front). By
    /// default true; worker processes, which run one task, turn it off.
    pub instance_pool: bool,
    /// The executable that hosts process tasks, started with
    /// [`crate::worker::WORKER_ARG`]. By default `$ISOLA_WORKER_PROGRAM`,
    /// this executable if it is `isola`, or an `isola` beside it.
    pub worker_program: Option<PathBuf>,
    /// Worker processes kept started and idle, so a process task does not
    /// wait for one to start. Started on the first process task. By
    /// default 2.
    pub prestarted_workers: usize,
    /// Most idle workers kept after running a task with
    /// [`crate::TaskSpec::reuse_worker`], ready for the next such task.
    /// By default 4.
    pub reused_workers_kept: usize,
    /// Address space reserved for each linear memory, and so the most one
    /// can grow to ([`RunnerConfig::max_memory_per_task`] is capped at it).
    /// By default (`None`) wasmtime's 4 GiB plus guard, which lets compiled
    /// code skip bounds checks. A smaller reservation (say 64 MiB) lets a
    /// runner hold far more live tasks before the address space runs out,
    /// at the price of explicit bounds checks (roughly 10-20% on
    /// memory-heavy guests).
    pub memory_reservation: Option<u64>,
    /// Linear memories each task slot has room for. By default 2 (a
    /// component can have more than one); 1 halves the address space and
    /// memory mappings a slot needs, for runners of many small modules.
    pub memories_per_task: u32,
    /// Most memory all shared memory groups together may grow to (the sum
    /// of their maximums). Shared memories are outside the per-task memory
    /// limit, so they get a budget of their own. By default 4 GiB.
    pub shared_memory_budget: u64,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        RunnerConfig {
            max_live_tasks: 1_000,
            max_memory_per_task: 4 << 30,
            cache_dir: CacheDir::Default,
            epoch_tick: Duration::from_millis(1),
            instance_pool: true,
            worker_program: None,
            prestarted_workers: 2,
            reused_workers_kept: 4,
            memory_reservation: None,
            memories_per_task: 2,
            shared_memory_budget: 4 << 30,
        }
    }
}

/// Why [`Runner::call`] returned no output.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The task could not start.
    #[error(transparent)]
    Start(#[from] Error),
    /// The plugin's `run` returned this error.
    #[error("the plugin returned an error: {0}")]
    Rejected(String),
    /// The task ended without returning: trapped, hit a limit, crashed or
    /// was cancelled. The report says how, with the guest's output.
    #[error("the plugin did not return: {}", .0.outcome)]
    Ended(Box<TaskReport>),
}

/// Counters of the compile caches, for tests and diagnostics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Programs compiled from Wasm.
    pub compiled: u64,
    /// Programs loaded from the on-disk cache.
    pub disk_hits: u64,
    /// Programs found already loaded in this runner.
    pub memory_hits: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Stats {
    compiled: AtomicU64,
    disk_hits: AtomicU64,
    memory_hits: AtomicU64,
}

impl Stats {
    pub(crate) fn record_compile(&self) {
        self.compiled.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn record_memory_hit(&self) {
        self.memory_hits.fetch_add(1, Ordering::Relaxed);
    }
}

/// Runs sandboxed Wasm tasks.
///
/// A runner compiles each distinct program once (by content hash, with
/// precompiled artifacts kept on disk for the next process), and starts
/// each task in a fresh `Store` with only the capabilities its [`TaskSpec`]
/// grants. Cheap to clone: clones share everything.
///
/// Its methods are async and run tasks on the caller's Tokio runtime; a
/// multi-threaded runtime lets tasks run in parallel.
///
/// # Examples
///
/// ```no_run
/// # async fn demo() -> Result<(), isola::Error> {
/// use isola::{Runner, TaskSpec};
///
/// let runner = Runner::new()?;
/// let report = runner.run(TaskSpec::new("hello.wasm")).await?;
/// println!("{} / {}", report.outcome, report.stdout.text());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Runner {
    pub(crate) inner: Arc<RunnerInner>,
}

pub(crate) struct RunnerInner {
    pub(crate) engine: Engine,
    pub(crate) config: RunnerConfig,
    pub(crate) module_linker: wasmtime::Linker<TaskState>,
    /// Built on first use: a runner of modules never needs it.
    component_linker: OnceLock<std::result::Result<wasmtime::component::Linker<TaskState>, String>>,
    /// Every `(module, name)` the core-module linker defines.
    /// What the module linker defines, listed on first need (an error
    /// naming a missing import).
    provided_imports: OnceLock<HashSet<(String, String)>>,
    pub(crate) disk_cache: Option<DiskCache>,
    programs: Mutex<HashMap<ContentHash, Program>>,
    /// Content hashes of files already read, by path and stamp.
    files: Mutex<HashMap<PathBuf, (FileStamp, ContentHash)>>,
    pub(crate) slots: Arc<tokio::sync::Semaphore>,
    pub(crate) ticker: EpochTicker,
    pub(crate) stats: Stats,
    pub(crate) process: Arc<ProcessBackend>,
    groups: Mutex<HashMap<String, SharedGroup>>,
    /// Sum of the maximums of the live groups' memories.
    shared_memory_reserved: Mutex<u64>,
}

/// Shared memory groups a runner can hold at once: each group's
/// coordinator keeps an instance running beside the task slots.
const MAX_GROUPS: u32 = 16;

/// Bytes of a freed linear memory zeroed in place rather than given back to
/// the kernel (see `engine_config`): what a small guest touches (its stack
/// top, data and a little heap). Each slot that has run a task keeps at
/// most this much resident; more would show as RSS growth in the soak.
const KEEP_RESIDENT_PER_MEMORY: usize = 512 << 10;

/// As [`KEEP_RESIDENT_PER_MEMORY`], for tables.
const KEEP_RESIDENT_PER_TABLE: usize = 64 << 10;

/// Most programs a runner keeps loaded; past it the cache starts over. A
/// runner rarely sees this many distinct programs; the bound keeps a
/// long-lived one from growing without limit.
const MAX_CACHED_PROGRAMS: usize = 256;

impl Runner {
    /// A runner with the default [`RunnerConfig`].
    ///
    /// # Errors
    ///
    /// Fails if the engine cannot be created (for example, not enough
    /// address space for the instance pool).
    pub fn new() -> Result<Runner> {
        Runner::with_config(RunnerConfig::default())
    }

    /// A runner set up by `config`.
    ///
    /// # Errors
    ///
    /// Fails on a config that cannot work (zero slots, zero tick) or if the
    /// engine cannot be created.
    pub fn with_config(mut config: RunnerConfig) -> Result<Runner> {
        if config.max_live_tasks == 0 {
            return Err(Error::InvalidSpec {
                field: "max_live_tasks".into(),
                message: "must be at least 1".into(),
            });
        }
        if config.memories_per_task == 0 {
            return Err(Error::InvalidSpec {
                field: "memories_per_task".into(),
                message: "must be at least 1".into(),
            });
        }
        if config.memory_reservation.is_some_and(|r| r < 64 << 10) {
            return Err(Error::InvalidSpec {
                field: "memory_reservation".into(),
                message: "must be at least one Wasm page (64 KiB)".into(),
            });
        }
        if let Some(reservation) = config.memory_reservation {
            config.max_memory_per_task = config.max_memory_per_task.min(reservation);
        }
        if config.epoch_tick.is_zero() {
            return Err(Error::InvalidSpec {
                field: "epoch_tick".into(),
                message: "must be longer than zero".into(),
            });
        }
        let engine = Engine::new(&engine_config(&config)).map_err(Error::internal)?;

        let mut module_linker = wasmtime::Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut module_linker, |s: &mut TaskState| &mut s.wasi)
            .map_err(Error::internal)?;
        // wasmtime-wasi refuses exit codes of 126 and above (reserved by
        // WASI); a POSIX program may use the whole 0..=255 range, and its
        // user expects the code it chose.
        module_linker.allow_shadowing(true);
        module_linker
            .func_wrap(
                "wasi_snapshot_preview1",
                "proc_exit",
                |code: i32| -> wasmtime::Result<()> { Err(wasmtime_wasi::I32Exit(code).into()) },
            )
            .map_err(Error::internal)?;
        module_linker.allow_shadowing(false);
        crate::channel::add_to_module_linker(&mut module_linker).map_err(Error::internal)?;
        crate::group::add_to_module_linker(&mut module_linker).map_err(Error::internal)?;
        let disk_cache = match &config.cache_dir {
            CacheDir::Default => {
                DiskCache::default_root().map(|root| DiskCache::new(&root, &engine))
            }
            CacheDir::Path(root) => Some(DiskCache::new(root, &engine)),
            CacheDir::Disabled => None,
        };

        let ticker = EpochTicker::start(&engine, config.epoch_tick);
        let process = Arc::new(ProcessBackend::new(
            config.worker_program.clone(),
            config.prestarted_workers,
            config.reused_workers_kept,
        ));
        Ok(Runner {
            inner: Arc::new(RunnerInner {
                slots: Arc::new(tokio::sync::Semaphore::new(config.max_live_tasks)),
                engine,
                config,
                module_linker,
                component_linker: OnceLock::new(),
                provided_imports: OnceLock::new(),
                disk_cache,
                programs: Mutex::new(HashMap::new()),
                files: Mutex::new(HashMap::new()),
                ticker,
                stats: Stats::default(),
                process,
                groups: Mutex::new(HashMap::new()),
                shared_memory_reserved: Mutex::new(0),
            }),
        })
    }

    /// Loads (and compiles, unless cached) the program at `path`.
    ///
    /// # Errors
    ///
    /// [`Error::Read`], [`Error::NotWasm`], [`Error::Invalid`],
    /// [`Error::UnknownImport`] or [`Error::UnsupportedWorld`], each naming
    /// the file.
    pub async fn load(&self, path: impl AsRef<Path>) -> Result<Program> {
        program::load(&self.inner, path.as_ref()).await
    }

    /// Starts a task. Waits for a free slot when
    /// [`RunnerConfig::max_live_tasks`] tasks are alive.
    ///
    /// # Errors
    ///
    /// Everything [`Runner::load`] reports, plus [`Error::InvalidSpec`] for
    /// grants that cannot be honoured (a directory that does not exist, an
    /// unreadable stdin file), naming the field.
    pub async fn spawn(&self, spec: TaskSpec) -> Result<TaskHandle> {
        let program = self.load(&spec.wasm).await?;
        self.spawn_program(&program, spec).await
    }

    /// Starts a task of an already loaded program; `spec.wasm` is ignored.
    ///
    /// # Errors
    ///
    /// As [`Runner::spawn`], except for loading.
    pub async fn spawn_program(&self, program: &Program, spec: TaskSpec) -> Result<TaskHandle> {
        if let Some(name) = &spec.shared_group {
            return task::spawn_in_group(&self.inner, program, name, spec.clone()).await;
        }
        if matches!(
            program.inner.kind,
            crate::program::ProgramKind::Shared { .. }
        ) {
            return Err(Error::InvalidSpec {
                field: "shared_group".into(),
                message: format!(
                    "`{}` imports a shared memory (`env.memory`): it runs only in a shared \
                     memory group; name one",
                    program.path().display()
                ),
            });
        }
        match spec.isolation {
            Isolation::Thread => {
                task::spawn(&self.inner, program, spec, task::SpawnExtras::default()).await
            }
            Isolation::Process => {
                process::spawn(&self.inner, program, spec, task::Entry::Auto).await
            }
        }
    }

    /// Calls the plugin entry `run` of `spec.wasm` with `input`, in a fresh
    /// instance, and returns its output: the plugin use case.
    ///
    /// The guest also sees `input` as its start input. Limits, grants and
    /// isolation come from `spec` as for any task.
    ///
    /// # Errors
    ///
    /// [`CallError::Start`] if the task cannot start (including a program
    /// without a `run` export), [`CallError::Rejected`] if `run` returned an
    /// error, [`CallError::Ended`] if the task ended any other way (trap,
    /// limit, crash, cancel).
    pub async fn call(
        &self,
        spec: TaskSpec,
        input: impl Into<Vec<u8>>,
    ) -> std::result::Result<Vec<u8>, CallError> {
        let program = self.load(&spec.wasm).await.map_err(CallError::Start)?;
        self.call_program(&program, spec, input).await
    }

    /// As [`Runner::call`], for an already loaded program (`spec.wasm` is
    /// ignored): the hot path of a plugin host, with no file read per call.
    ///
    /// # Errors
    ///
    /// As [`Runner::call`].
    pub async fn call_program(
        &self,
        program: &Program,
        mut spec: TaskSpec,
        input: impl Into<Vec<u8>>,
    ) -> std::result::Result<Vec<u8>, CallError> {
        spec.input = Some(input.into());
        let handle = match spec.isolation {
            Isolation::Thread => {
                let extras = task::SpawnExtras {
                    entry: task::Entry::Run,
                    ..Default::default()
                };
                task::spawn(&self.inner, program, spec, extras).await
            }
            Isolation::Process => {
                process::spawn(&self.inner, program, spec, task::Entry::Run).await
            }
        }
        .map_err(CallError::Start)?;
        let report = handle.wait().await;
        match report.outcome {
            Outcome::Returned { output } => Ok(output),
            Outcome::Rejected { error } => Err(CallError::Rejected(error)),
            _ => Err(CallError::Ended(Box::new(report))),
        }
    }

    /// Instantiates the plugin `spec.wasm` once, to call its `run` many
    /// times with state kept between calls (see [`PluginInstance`]).
    /// [`Runner::call`] is the default: a fresh instance per call.
    ///
    /// # Errors
    ///
    /// As [`Runner::spawn`]. With process isolation the instance gets a
    /// worker process of its own; its output is discarded and it cannot read
    /// the host's stdin ([`Error::InvalidSpec`] for `stdin = inherit`).
    pub async fn plugin(&self, spec: TaskSpec) -> Result<PluginInstance> {
        let program = self.load(&spec.wasm).await?;
        crate::plugin::instantiate(&self.inner, program, spec).await
    }

    /// Starts a task and waits for its report.
    ///
    /// # Errors
    ///
    /// As [`Runner::spawn`]. Once started, every ending is a report.
    pub async fn run(&self, spec: TaskSpec) -> Result<TaskReport> {
        Ok(self.spawn(spec).await?.wait().await)
    }

    /// Creates a shared memory group and registers it under its name, for
    /// tasks that name it in [`TaskSpec::shared_group`].
    ///
    /// # Errors
    ///
    /// [`Error::InvalidSpec`] naming the group and field: a module that does
    /// not import a shared memory or lacks the wasi-threads entry points, a
    /// size outside what the module declares, a name already in use, a
    /// maximum past [`RunnerConfig::shared_memory_budget`], or a `main` that
    /// ends without serving.
    pub async fn create_group(&self, spec: GroupSpec) -> Result<SharedGroup> {
        if self.group(&spec.name).is_some() {
            return Err(Error::InvalidSpec {
                field: format!("group `{}`.name", spec.name),
                message: "a group of this name already exists".into(),
            });
        }
        if self
            .inner
            .groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
            >= MAX_GROUPS as usize
        {
            return Err(Error::InvalidSpec {
                field: format!("group `{}`", spec.name),
                message: format!("a runner holds at most {MAX_GROUPS} shared memory groups"),
            });
        }
        let group = crate::group::create(&self.inner, spec).await?;
        self.inner
            .groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(group.name().to_owned(), group.clone());
        Ok(group)
    }

    /// The group registered under `name`.
    pub fn group(&self, name: &str) -> Option<SharedGroup> {
        self.inner
            .groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// Stops the group `name` from taking tasks and forgets it; its memory
    /// is freed (and its budget returned) once its running tasks end and
    /// every [`SharedGroup`] handle is dropped.
    pub fn close_group(&self, name: &str) {
        let group = self
            .inner
            .groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        if let Some(group) = group {
            group.inner.close();
            self.inner.release_shared_memory(name, group.maximum());
        }
    }

    /// How the compile caches have been used so far.
    pub fn cache_stats(&self) -> CacheStats {
        let stats = &self.inner.stats;
        CacheStats {
            compiled: stats.compiled.load(Ordering::Relaxed),
            disk_hits: stats.disk_hits.load(Ordering::Relaxed),
            memory_hits: stats.memory_hits.load(Ordering::Relaxed),
        }
    }

    /// The wasmtime engine, for embedders that compile or inspect Wasm
    /// themselves.
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }
}

impl Drop for RunnerInner {
    fn drop(&mut self) {
        // A group's coordinator holds its group, not the runner: without
        // this it would wait for tasks forever, with its thread and memory.
        let groups = self.groups.get_mut().unwrap_or_else(|e| e.into_inner());
        for group in groups.values() {
            group.inner.close();
        }
    }
}

impl RunnerInner {
    pub(crate) fn cached_program(&self, hash: &ContentHash) -> Option<Program> {
        self.programs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(hash)
            .cloned()
    }

    /// The content hash of `path` if it was read before and is unchanged.
    pub(crate) fn known_file(&self, path: &Path, stamp: &FileStamp) -> Option<ContentHash> {
        let files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        match files.get(path) {
            Some((known, hash)) if known == stamp => Some(*hash),
            _ => None,
        }
    }

    pub(crate) fn remember_file(&self, path: &Path, stamp: FileStamp, hash: ContentHash) {
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        if files.len() >= MAX_CACHED_PROGRAMS {
            files.clear();
        }
        files.insert(path.to_owned(), (stamp, hash));
    }

    pub(crate) fn remember_program(&self, hash: ContentHash, program: Program) {
        let mut programs = self.programs.lock().unwrap_or_else(|e| e.into_inner());
        if programs.len() >= MAX_CACHED_PROGRAMS {
            programs.clear();
        }
        programs.insert(hash, program);
    }

    /// Deserializes the disk artifact for `hash`, if there is a sound one.
    /// An artifact wasmtime rejects is treated as a miss.
    /// The linker for components, built on first use.
    pub(crate) fn component_linker(&self) -> Result<&wasmtime::component::Linker<TaskState>> {
        self.component_linker
            .get_or_init(|| {
                let mut linker = wasmtime::component::Linker::new(&self.engine);
                wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|e| e.to_string())?;
                crate::channel::add_to_component_linker(&mut linker).map_err(|e| e.to_string())?;
                Ok(linker)
            })
            .as_ref()
            .map_err(|e| Error::Internal(format!("cannot set up the component linker: {e}")))
    }

    /// The `(module, name)` pairs the module linker defines.
    pub(crate) fn provided_imports(&self) -> &HashSet<(String, String)> {
        self.provided_imports.get_or_init(|| {
            // Listing a linker's definitions needs a store; this one is never
            // used to run anything.
            let mut store = Store::new(&self.engine, TaskState::inert());
            self.module_linker
                .iter(&mut store)
                .map(|(module, name, _)| (module.to_owned(), name.to_owned()))
                .collect()
        })
    }

    pub(crate) fn cached_artifact<T>(
        &self,
        cache: Option<&DiskCache>,
        hash: &ContentHash,
        kind: WasmKind,
        deserialize: impl FnOnce(crate::cache::Artifact) -> wasmtime::Result<T>,
    ) -> Option<T> {
        let file = cache?.open_verified(hash, kind.as_str())?;
        match deserialize(file) {
            Ok(value) => {
                self.stats.disk_hits.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    kind = kind.as_str(),
                    "loaded precompiled artifact from the disk cache"
                );
                Some(value)
            }
            Err(err) => {
                tracing::warn!(error = %err, "ignoring incompatible cache artifact");
                None
            }
        }
    }

    pub(crate) fn store_artifact(
        &self,
        cache: Option<&DiskCache>,
        hash: &ContentHash,
        kind: WasmKind,
        artifact: &[u8],
    ) {
        if let Some(cache) = cache {
            cache.store(hash, kind.as_str(), artifact);
        }
    }

    pub(crate) fn reserve_shared_memory(&self, name: &str, bytes: u64) -> Result<()> {
        let mut reserved = self
            .shared_memory_reserved
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let budget = self.config.shared_memory_budget;
        if reserved.saturating_add(bytes) > budget {
            return Err(Error::InvalidSpec {
                field: format!("group `{name}`.maximum"),
                message: format!(
                    "{} would exceed the runner's shared memory budget ({} of {} in use)",
                    bytesize::ByteSize(bytes),
                    bytesize::ByteSize(*reserved),
                    bytesize::ByteSize(budget)
                ),
            });
        }
        *reserved += bytes;
        Ok(())
    }

    pub(crate) fn release_shared_memory(&self, _name: &str, bytes: u64) {
        let mut reserved = self
            .shared_memory_reserved
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *reserved = reserved.saturating_sub(bytes);
    }

    pub(crate) fn group(&self, name: &str) -> Option<SharedGroup> {
        self.groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// The root of the disk cache, when there is one.
    pub(crate) fn disk_cache_root(&self) -> Option<&Path> {
        self.disk_cache.as_ref().map(DiskCache::root)
    }

    /// Makes sure the precompiled artifact of `program` is in the cache at
    /// `root`, so a worker can load it instead of compiling.
    pub(crate) fn ensure_artifact(&self, program: &Program, root: &Path) -> Result<()> {
        let cache = DiskCache::new(root, &self.engine);
        let kind = program.wasm_kind();
        if cache.contains(&program.inner.hash, kind.as_str()) {
            return Ok(());
        }
        let artifact = program.serialize().map_err(Error::internal)?;
        cache.store(&program.inner.hash, kind.as_str(), &artifact);
        Ok(())
    }
}

/// The engine settings every task relies on.
fn engine_config(config: &RunnerConfig) -> Config {
    let mut c = Config::new();
    // Guests run as fibers on the Tokio runtime (wasmtime's `*_async` entry
    // points): a task that waits holds no OS thread.
    // Epochs give timeouts, cancellation and fair time-slicing between
    // CPU-bound guests (each yields to the runtime on every tick).
    c.epoch_interruption(true);
    // Fuel is the deterministic CPU budget; its cost on straight-line code
    // is close to zero.
    c.consume_fuel(true);
    // Shared memory groups (the threads proposal). Tier 2 in wasmtime.
    c.wasm_threads(true);
    c.shared_memory(true);
    if let Some(reservation) = config.memory_reservation {
        c.memory_reservation(reservation);
        // Small reservations are for many small tasks: keep the guard in
        // proportion (it is address space, never memory).
        c.memory_guard_size(reservation.min(32 << 20));
        c.memory_reservation_for_growth(0);
    }

    let slots = u32::try_from(config.max_live_tasks).unwrap_or(u32::MAX);
    let mut pool = PoolingAllocationConfig::new();
    // A component made by `wasm32-wasip2` holds a handful of core instances
    // (the program, the WASI adapter and small shims); budget for that.
    pool.total_component_instances(slots)
        .total_core_instances(slots.saturating_mul(4))
        .total_memories(slots.saturating_mul(config.memories_per_task))
        .total_tables(slots.saturating_mul(4))
        // Each group's coordinator holds a fiber stack outside the task slots.
        .total_stacks(slots.saturating_add(MAX_GROUPS))
        .max_memory_size(usize::try_from(config.max_memory_per_task).unwrap_or(usize::MAX))
        // A freed slot is reset to zero for the next instance. By default
        // that is an `madvise` of the whole memory, and the next instance
        // faults every page back in: about 40% of a short task's cost. With
        // PAGEMAP_SCAN (Linux 6.7+) the pages it actually touched, up to
        // this much, are zeroed in place and stay resident instead.
        .pagemap_scan(wasmtime::Enabled::Auto)
        .linear_memory_keep_resident(KEEP_RESIDENT_PER_MEMORY)
        .table_keep_resident(KEEP_RESIDENT_PER_TABLE);
    if config.instance_pool {
        c.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    c
}

/// Advances the engine's epoch every tick while any task is running, and
/// sleeps otherwise so an idle runner costs no CPU.
pub(crate) struct EpochTicker {
    shared: Arc<TickerShared>,
    thread: Option<JoinHandle<()>>,
}

struct TickerShared {
    running: AtomicUsize,
    stop: AtomicBool,
    /// Epochs advanced so far.
    ticks: AtomicU64,
}

/// Keeps the ticker going while alive: one per running task.
pub(crate) struct TickerGuard {
    ticker: TickerHandle,
}

/// Lets the ticker stop while alive: a task waiting in a host call (for a
/// message) runs no Wasm, so it needs no epoch to interrupt it.
pub(crate) struct TickerPause {
    ticker: TickerHandle,
}

/// A task's link to its runner's ticker.
#[derive(Clone)]
pub(crate) struct TickerHandle {
    shared: Arc<TickerShared>,
    thread: std::thread::Thread,
}

impl EpochTicker {
    fn start(engine: &Engine, tick: Duration) -> EpochTicker {
        let engine = engine.weak();
        let shared = Arc::new(TickerShared {
            running: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            ticks: AtomicU64::new(0),
        });
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("isola-epoch".into())
            .spawn(move || {
                while !thread_shared.stop.load(Ordering::Acquire) {
                    if thread_shared.running.load(Ordering::Acquire) == 0 {
                        std::thread::park();
                        continue;
                    }
                    std::thread::sleep(tick);
                    // Weak: a dropped runner frees its engine (and the
                    // instance pool's address space) at once, not when this
                    // detached thread next wakes.
                    let Some(engine) = engine.upgrade() else {
                        break;
                    };
                    engine.increment_epoch();
                    thread_shared.ticks.fetch_add(1, Ordering::Relaxed);
                }
            })
            .ok();
        if thread.is_none() {
            tracing::error!(
                "cannot start the epoch thread: timeouts will not interrupt busy guests"
            );
        }
        EpochTicker { shared, thread }
    }

    /// Epochs advanced so far.
    #[cfg(test)]
    fn ticks(&self) -> u64 {
        self.shared.ticks.load(Ordering::Relaxed)
    }

    pub(crate) fn handle(&self) -> Option<TickerHandle> {
        Some(TickerHandle {
            shared: Arc::clone(&self.shared),
            thread: self.thread.as_ref()?.thread().clone(),
        })
    }

    pub(crate) fn activate(&self) -> Option<TickerGuard> {
        Some(self.handle()?.activate())
    }
}

impl TickerHandle {
    fn up(&self) {
        if self.shared.running.fetch_add(1, Ordering::AcqRel) == 0 {
            self.thread.unpark();
        }
    }

    fn down(&self) {
        // No unpark: the ticker notices on its next tick and parks.
        self.shared.running.fetch_sub(1, Ordering::AcqRel);
    }

    pub(crate) fn activate(self) -> TickerGuard {
        self.up();
        TickerGuard { ticker: self }
    }

    /// Only while the task holds a [`TickerGuard`].
    pub(crate) fn pause(&self) -> TickerPause {
        self.down();
        TickerPause {
            ticker: self.clone(),
        }
    }
}

impl Drop for TickerGuard {
    fn drop(&mut self) {
        self.ticker.down();
    }
}

impl Drop for TickerPause {
    fn drop(&mut self) {
        self.ticker.up();
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            // Not joined: the thread may be inside a tick's sleep, and a
            // short-lived runner (a one-shot CLI run) would wait that out.
            // It sees `stop` when it wakes and exits on its own.
            thread.thread().unpark();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Epochs `ticker` advanced within `wait`.
    fn ticks_during(ticker: &EpochTicker, wait: Duration) -> u64 {
        let before = ticker.ticks();
        std::thread::sleep(wait);
        ticker.ticks() - before
    }

    #[test]
    fn the_ticker_runs_only_while_a_task_runs_wasm() {
        let mut config = Config::new();
        config.epoch_interruption(true);
        let engine = Engine::new(&config).expect("engine");
        let ticker = EpochTicker::start(&engine, Duration::from_millis(1));
        let wait = Duration::from_millis(100);
        let handle = ticker.handle().expect("ticker thread");

        assert_eq!(ticks_during(&ticker, wait), 0, "idle: no ticks");
        let running = handle.clone().activate();
        assert!(
            ticks_during(&ticker, wait) > 10,
            "a running task gets ticks"
        );
        let waiting = handle.pause();
        // The ticker parks at its next tick.
        std::thread::sleep(Duration::from_millis(10));
        assert_eq!(
            ticks_during(&ticker, wait),
            0,
            "a waiting task costs no ticks"
        );
        drop(waiting);
        assert!(
            ticks_during(&ticker, wait) > 10,
            "ticks resume after the wait"
        );
        drop(running);
        std::thread::sleep(Duration::from_millis(10));
        assert_eq!(ticks_during(&ticker, wait), 0, "idle again");
    }
}

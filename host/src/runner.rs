//! The [`Runner`]: the façade embedders use. It owns a handful of parts —
//! the loader (engine, linkers, caches), the instance slots, the epoch
//! ticker, the worker pool and the shared memory groups — and hands them to
//! the backend a task's spec asks for.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::Engine;

use crate::cache::DiskCache;
use crate::error::{Error, Result};
use crate::group::{GroupSpec, Groups, SharedGroup};
use crate::handle::TaskHandle;
pub use crate::loader::CacheStats;
use crate::loader::{EngineSettings, Loader};
pub use crate::outcome::CallError;
use crate::outcome::{Outcome, TaskReport};
use crate::parts::Parts;
use crate::plugin::PluginInstance;
use crate::process::ProcessBackend;
use crate::program::Program;
use crate::spec::{Entry, Isolation, Sandbox, TaskSpec};
use crate::thread::SpawnExtras;
use crate::ticker::EpochTicker;

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
    ///
    /// A slot that has run a task keeps some memory resident, so that the
    /// next task in it starts without faulting pages back in: up to
    /// 512 KiB of each of its [`RunnerConfig::memories_per_task`] linear
    /// memories and 64 KiB of each of its 4 tables (the pages the last
    /// tasks touched, zeroed in place; Linux 6.7+), and its fiber stack
    /// down to the deepest any task reached on it (at most wasmtime's
    /// 2 MiB). So a runner's resident memory rises as its slots are first
    /// used and then levels off, by at most `max_live_tasks` x
    /// (`memories_per_task` x 512 KiB + 2.25 MiB): 52 MiB for 16 slots of
    /// 2 memories. Only slots that run tasks count, and a runner uses about
    /// as many as it has tasks alive at its peak (plus up to 100 memory
    /// slots the pool prefers to evicting warm ones), so the default 1,000
    /// reach their full 3.25 GiB only under 1,000 live tasks.
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
    /// `isola::worker::WORKER_ARG`. By default `$ISOLA_WORKER_PROGRAM`,
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
    /// The OS sandbox around process tasks' workers. By default
    /// [`Sandbox::On`].
    pub sandbox: Sandbox,
    /// CPU a sandboxed worker may use, in cores (`1.0`: one core's time
    /// per period; `0.5`: half of one), through a cgroup `cpu` quota of its
    /// own, where Isola can make one (see the README's sandbox section).
    /// `None` (the default): no quota; a worker's CPU use is bounded by its
    /// task's timeout and its 64 threads. Off by default because a cgroup
    /// `cpu` group per worker changes how the kernel schedules it against
    /// its parent: measured here, a process task's host call round trip
    /// went from 18 to 28 µs and a cold start gained about 0.1 ms.
    /// Must be above zero and at most 1024.
    pub worker_cpu_quota: Option<f64>,
    /// The host functions tasks may call (each task only those its spec
    /// grants, [`TaskSpec::host_functions`]); they run in this process at
    /// both isolation levels. None by default.
    pub host_functions: crate::HostFunctions,
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
            sandbox: Sandbox::default(),
            worker_cpu_quota: None,
            host_functions: crate::HostFunctions::default(),
        }
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
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use isola::{Outcome, Runner, TaskSpec};
/// # let dir = tempfile::tempdir()?;
/// # let wasm = dir.path().join("hello.wasm");
/// # std::fs::write(&wasm, wat::parse_str(HELLO)?)?;
///
/// // `wasm`: a WASI command that prints "hi".
/// let runner = Runner::new()?;
/// let report = runner.run(TaskSpec::new(&wasm)).await?;
/// assert_eq!(report.outcome, Outcome::Exited { code: 0 });
/// assert_eq!(report.stdout.text(), "hi\n"); // captured by default
/// # Ok(()) }
/// # const HELLO: &str = r#"(module
/// #   (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
/// #   (memory (export "memory") 1)
/// #   (data (i32.const 16) "hi\n")
/// #   (func (export "_start")
/// #     (i32.store (i32.const 0) (i32.const 16)) (i32.store (i32.const 4) (i32.const 3))
/// #     (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#;
/// ```
#[derive(Clone)]
pub struct Runner {
    inner: Arc<RunnerInner>,
}

/// The parts a runner hands its backends.
struct RunnerInner {
    config: RunnerConfig,
    parts: Parts,
    process: Arc<ProcessBackend>,
    groups: Groups,
    /// Owned here so the ticker thread stops with the runner; the parts
    /// hold handles to it.
    _ticker: EpochTicker,
}

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
        let cpu_quota = match config.worker_cpu_quota {
            None => None,
            Some(cores) if cores.is_finite() && cores > 0.0 && cores <= 1024.0 => {
                Some(crate::ipc::cgroup::quota_of(cores))
            }
            Some(cores) => {
                return Err(Error::InvalidSpec {
                    field: "worker_cpu_quota".into(),
                    message: format!("must be above 0 and at most 1024 cores, not {cores}"),
                });
            }
        };
        let cache_root = match &config.cache_dir {
            CacheDir::Default => DiskCache::default_root(),
            CacheDir::Path(root) => Some(root.clone()),
            CacheDir::Disabled => None,
        };
        let loader = Loader::new(
            &EngineSettings {
                slots: config.max_live_tasks,
                max_memory_per_task: config.max_memory_per_task,
                instance_pool: config.instance_pool,
                memory_reservation: config.memory_reservation,
                memories_per_task: config.memories_per_task,
                parallel_compilation: true,
            },
            cache_root.as_deref(),
            crate::group::add_to_module_linker,
        )?
        .with_typed(crate::loader::TypedLinking::Registered(
            config.host_functions.typed_names(),
        ));
        let ticker = EpochTicker::start(loader.engine(), config.epoch_tick);
        let parts = Parts {
            loader: Arc::new(loader),
            slots: Arc::new(tokio::sync::Semaphore::new(config.max_live_tasks)),
            ticker: ticker.handle(),
            max_memory_per_task: config.max_memory_per_task,
            host_functions: Some(config.host_functions.clone()),
            kv_stores: Default::default(),
        };
        let process = Arc::new(ProcessBackend::new(
            config.worker_program.clone(),
            config.prestarted_workers,
            config.reused_workers_kept,
            config.sandbox,
            cpu_quota,
        ));
        Ok(Runner {
            inner: Arc::new(RunnerInner {
                groups: Groups::new(config.shared_memory_budget),
                config,
                parts,
                process,
                _ticker: ticker,
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
        self.inner.parts.loader.load(path.as_ref()).await
    }

    /// Loads a program held in memory: Wasm (a module or a component) or
    /// WebAssembly text. `name` stands where a file's path would (in
    /// errors and [`Program::path`]); compiled once per content hash, and
    /// cached on disk like a file's. Run it with [`Runner::spawn_program`]
    /// or [`Runner::call_program`], at either isolation level.
    ///
    /// # Errors
    ///
    /// [`Error::NotWasm`], [`Error::Invalid`] (text that does not parse, a
    /// module that does not validate), [`Error::UnknownImport`] or
    /// [`Error::UnsupportedWorld`], each naming `name`.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> isola::Result<()> {
    /// let runner = isola::Runner::new()?;
    /// let program = runner
    ///     .load_bytes("exit-7", r#"(module
    ///         (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
    ///         (memory (export "memory") 1)
    ///         (func (export "_start") (call $exit (i32.const 7))))"#)
    ///     .await?;
    /// let report = runner
    ///     .spawn_program(&program, isola::TaskSpec::new("exit-7"))
    ///     .await?
    ///     .wait()
    ///     .await;
    /// assert_eq!(report.outcome, isola::Outcome::Exited { code: 7 });
    /// # Ok(())
    /// # }
    /// ```
    pub async fn load_bytes(
        &self,
        name: impl AsRef<Path>,
        bytes: impl Into<Vec<u8>>,
    ) -> Result<Program> {
        self.inner
            .parts
            .loader
            .load_bytes(name.as_ref(), bytes.into())
            .await
    }

    /// Starts a task. Waits for a free slot when
    /// [`RunnerConfig::max_live_tasks`] tasks are alive.
    ///
    /// # Errors
    ///
    /// Everything [`Runner::load`] reports, plus [`Error::InvalidSpec`] for
    /// a spec the rules refuse or grants that cannot be honoured (a
    /// directory that does not exist, an unreadable stdin file), naming the
    /// field.
    pub async fn spawn(&self, spec: TaskSpec) -> Result<TaskHandle> {
        // Start-up counts loading and compiling, as its docs say.
        let spawned_at = Instant::now();
        let program = self.load(&spec.wasm).await?;
        self.start(&program, spec, Entry::Auto, spawned_at).await
    }

    /// Starts a task of an already loaded program; `spec.wasm` is ignored.
    ///
    /// # Errors
    ///
    /// As [`Runner::spawn`], except for loading.
    pub async fn spawn_program(&self, program: &Program, spec: TaskSpec) -> Result<TaskHandle> {
        self.start(program, spec, Entry::Auto, Instant::now()).await
    }

    /// Hands `spec` to its backend; the task's start-up is measured from
    /// `spawned_at`.
    async fn start(
        &self,
        program: &Program,
        spec: TaskSpec,
        entry: Entry,
        spawned_at: Instant,
    ) -> Result<TaskHandle> {
        let inner = &self.inner;
        if let Some(name) = spec.shared_group.clone() {
            if matches!(entry, Entry::Run | Entry::Invoke(_)) {
                // Group tasks enter at `wasi_thread_start`; a plugin call
                // would silently run as a plain member instead.
                return Err(Error::InvalidSpec {
                    field: "shared_group".into(),
                    message: "a plugin call (`run`, or an export called by name) cannot run \
                              in a shared memory group; leave `shared_group` out"
                        .into(),
                });
            }
            return crate::group::spawn(
                &inner.parts,
                &inner.groups,
                program,
                &name,
                spec,
                spawned_at,
            )
            .await;
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
                let extras = SpawnExtras {
                    entry,
                    spawned_at: Some(spawned_at),
                    ..SpawnExtras::default()
                };
                crate::thread::spawn(&inner.parts, program, spec, extras).await
            }
            Isolation::Process => {
                crate::process::spawn(
                    &inner.parts,
                    &inner.process,
                    program,
                    spec,
                    entry,
                    spawned_at,
                )
                .await
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
        let spawned_at = Instant::now();
        let program = self.load(&spec.wasm).await.map_err(CallError::Start)?;
        self.call_from(&program, spec, input, spawned_at).await
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
        spec: TaskSpec,
        input: impl Into<Vec<u8>>,
    ) -> std::result::Result<Vec<u8>, CallError> {
        self.call_from(program, spec, input, Instant::now()).await
    }

    /// [`Runner::call_program`], its start-up measured from `spawned_at`.
    async fn call_from(
        &self,
        program: &Program,
        mut spec: TaskSpec,
        input: impl Into<Vec<u8>>,
        spawned_at: Instant,
    ) -> std::result::Result<Vec<u8>, CallError> {
        spec.input = Some(input.into());
        self.run_call(program, spec, Entry::Run, spawned_at).await
    }

    /// Calls the function export named in `call` in a fresh instance of
    /// `spec.wasm` and returns its results, each in WAVE (the WebAssembly
    /// Value Encoding), in order: `call` is `name(arg, …)` with the
    /// arguments in WAVE, as `wasmtime run --invoke` takes it, e.g.
    /// `add(1, 2)` or `greet("world")`. A component's function is `name`,
    /// or `instance#name` for one in an exported instance; a core module's
    /// is its export name (a reactor's `_initialize` runs first). Limits,
    /// grants and isolation come from `spec` as for any task, at either
    /// isolation level.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let runner = isola::Runner::new()?;
    /// let wat = br#"(module (func (export "add") (param i32 i32) (result i32)
    ///     local.get 0 local.get 1 i32.add))"#;
    /// let program = runner.load_bytes("adder", wat).await?;
    /// let spec = isola::TaskSpec::new("adder");
    /// assert_eq!(runner.invoke_program(&program, spec, "add(40, 2)").await?, ["42"]);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`CallError::Start`] if the task cannot start, including a call
    /// that does not parse, a function the program does not export (the
    /// error lists those it does) and arguments that do not fit
    /// ([`Error::InvalidSpec`] for field `invoke`); [`CallError::Ended`] if
    /// the call trapped, hit a limit or its worker crashed.
    pub async fn invoke(
        &self,
        spec: TaskSpec,
        call: &str,
    ) -> std::result::Result<Vec<String>, CallError> {
        let program = self.load(&spec.wasm).await.map_err(CallError::Start)?;
        self.invoke_program(&program, spec, call).await
    }

    /// As [`Runner::invoke`], for an already loaded program (`spec.wasm`
    /// is ignored).
    ///
    /// # Errors
    ///
    /// As [`Runner::invoke`].
    pub async fn invoke_program(
        &self,
        program: &Program,
        spec: TaskSpec,
        call: &str,
    ) -> std::result::Result<Vec<String>, CallError> {
        let output = self
            .run_call(
                program,
                spec,
                Entry::Invoke(call.to_owned()),
                Instant::now(),
            )
            .await?;
        Ok(String::from_utf8_lossy(&output)
            .lines()
            .map(str::to_owned)
            .collect())
    }

    /// As [`Runner::invoke`], for a component's function, with typed
    /// values: `args` in, the results out (wasmtime's
    /// [`wasmtime::component::Val`]). At process isolation they cross to
    /// the worker and back in WAVE.
    ///
    /// # Errors
    ///
    /// As [`Runner::invoke`].
    pub async fn call_export(
        &self,
        spec: TaskSpec,
        name: &str,
        args: &[wasmtime::component::Val],
    ) -> std::result::Result<Vec<wasmtime::component::Val>, CallError> {
        self.call_typed(spec, name, args, crate::invoke::component_results)
            .await
    }

    /// As [`Runner::call_export`], for a core module's function, with
    /// [`wasmtime::Val`]s (numbers: `i32`, `i64`, `f32`, `f64`).
    ///
    /// # Errors
    ///
    /// As [`Runner::invoke`].
    pub async fn call_core_export(
        &self,
        spec: TaskSpec,
        name: &str,
        args: &[wasmtime::Val],
    ) -> std::result::Result<Vec<wasmtime::Val>, CallError> {
        self.call_typed(spec, name, args, crate::invoke::core_results)
            .await
    }

    /// [`Runner::call_export`] and [`Runner::call_core_export`]: `args`
    /// written as a call, its results read back with `results`.
    async fn call_typed<V: wasmtime::component::wasm_wave::wasm::WasmValue + 'static>(
        &self,
        spec: TaskSpec,
        name: &str,
        args: &[V],
        results: ResultsOf<V>,
    ) -> std::result::Result<Vec<V>, CallError> {
        let program = self.load(&spec.wasm).await.map_err(CallError::Start)?;
        let call = crate::invoke::call_text(name, args).map_err(invoke_error)?;
        let output = self
            .run_call(&program, spec, Entry::Invoke(call), Instant::now())
            .await?;
        results(&program, name, &output)
            .map_err(|e| CallError::Start(Error::Internal(format!("the call's results: {e}"))))
    }

    /// Runs a call of `program` (the plugin `run`, or an export by name) as
    /// a task whose start-up is measured from `spawned_at`; what it
    /// returned, or how it ended otherwise.
    async fn run_call(
        &self,
        program: &Program,
        spec: TaskSpec,
        entry: Entry,
        spawned_at: Instant,
    ) -> std::result::Result<Vec<u8>, CallError> {
        let mut handle = self
            .start(program, spec, entry, spawned_at)
            .await
            .map_err(CallError::Start)?;
        // A call sends no messages: `recv` says closed at once.
        handle.close_channel();
        let report = handle.wait().await;
        match report.outcome {
            Outcome::Returned { output } => Ok(output),
            Outcome::Rejected { error } => Err(CallError::Rejected(error)),
            _ => Err(CallError::Ended(Box::new(report))),
        }
    }

    /// Instantiates the plugin `spec.wasm` once, to call its `run` many
    /// times with state kept between calls (see [`PluginInstance`]), and
    /// any of its other exports by name ([`PluginInstance::invoke`]; a
    /// library without `run` can be kept for that alone).
    /// [`Runner::call`] is the default: a fresh instance per call.
    ///
    /// # Errors
    ///
    /// [`CallError::Start`] as [`Runner::spawn`]. With process isolation
    /// the instance gets a worker process of its own; its output is
    /// discarded and it cannot read the host's stdin
    /// ([`Error::InvalidSpec`] for `stdin = inherit`).
    /// [`CallError::Ended`] if instantiating ran guest code (a `start`
    /// function, `_initialize`) that trapped, hit a limit or exited, or the
    /// worker process died: the report says how.
    pub async fn plugin(&self, spec: TaskSpec) -> std::result::Result<PluginInstance, CallError> {
        let program = self.load(&spec.wasm).await?;
        let inner = &self.inner;
        crate::plugin::instantiate(&inner.parts, &inner.process, program, spec).await
    }

    /// Starts a task and waits for its report.
    ///
    /// # Errors
    ///
    /// As [`Runner::spawn`]. Once started, every ending is a report.
    pub async fn run(&self, spec: TaskSpec) -> Result<TaskReport> {
        let mut handle = self.spawn(spec).await?;
        // Nobody can send it messages: its `recv` says closed at once
        // rather than waiting for ever.
        handle.close_channel();
        Ok(handle.wait().await)
    }

    /// Creates a shared memory group and registers it under its name, for
    /// tasks that name it in [`TaskSpec::shared_group`].
    ///
    /// # Errors
    ///
    /// [`Error::InvalidSpec`] naming the group and field: a module that does
    /// not import a shared memory or lacks the wasi-threads entry points, a
    /// size outside what the module declares, a name already in use (also
    /// by a concurrent `create_group`), a maximum past
    /// [`RunnerConfig::shared_memory_budget`], or a `main` that ends
    /// without serving.
    pub async fn create_group(&self, spec: GroupSpec) -> Result<SharedGroup> {
        self.inner.groups.create(&self.inner.parts, spec).await
    }

    /// The group registered under `name`.
    pub fn group(&self, name: &str) -> Option<SharedGroup> {
        self.inner.groups.get(name)
    }

    /// Stops the group `name` from taking tasks and forgets it; its memory
    /// is freed (and its budget returned) once its running tasks end and
    /// every [`SharedGroup`] handle is dropped.
    pub fn close_group(&self, name: &str) {
        self.inner.groups.close(name);
    }

    /// How the compile caches have been used so far.
    pub fn cache_stats(&self) -> CacheStats {
        self.inner.parts.loader.stats()
    }

    /// The wasmtime engine, for embedders that compile or inspect Wasm
    /// themselves.
    pub fn engine(&self) -> &Engine {
        self.inner.parts.engine()
    }

    /// The configuration this runner was created with (after its
    /// adjustments: `max_memory_per_task` is capped at
    /// `memory_reservation`).
    pub fn config(&self) -> &RunnerConfig {
        &self.inner.config
    }
}

/// A call whose values cannot be written as a call.
fn invoke_error(message: String) -> CallError {
    CallError::Start(Error::InvalidSpec {
        field: "invoke".into(),
        message,
    })
}

/// Reads a call's results (its output text) with the types of the
/// function `name` of a program.
type ResultsOf<V> = fn(&Program, &str, &[u8]) -> std::result::Result<Vec<V>, String>;

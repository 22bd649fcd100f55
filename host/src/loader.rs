//! The loader: the engine, the linkers, the in-memory program cache, the
//! file stamps, the optional disk cache of precompiled artifacts and their
//! counters. [`crate::Runner`], worker processes and plugins all load
//! programs through one [`Loader`].
//!
//! Loading is: read the file (skipped when its stamp is unchanged) →
//! recognise module or component → compile, or map the precompiled
//! artifact → check imports → pre-instantiate. Each distinct content (by
//! SHA-256) is compiled once per loader and once per disk cache.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use wasmtime::component::Component;
use wasmtime::{
    Config, Engine, ExternType, InstanceAllocationStrategy, Linker, Module,
    PoolingAllocationConfig, Store,
};
use wasmtime_wasi::p2::bindings::CommandPre;

use crate::cache::{Artifact, ContentHash, DiskCache, content_hash};
use crate::error::{Error, Result};
use crate::imports::bindings::PluginPre;
use crate::program::{CORE_PLUGIN_EXPORT, FileStamp, Program, ProgramInner, ProgramKind, WasmKind};
use crate::state::{MAX_MEMORIES_PER_MODULE, MAX_TABLE_ELEMENTS, MAX_TABLES_PER_MODULE, TaskState};
use crate::telemetry;

/// Shared memory groups a runner can hold at once: each group's
/// coordinator keeps a fiber stack outside the task slots, so the engine's
/// pool reserves this many more.
pub(crate) const MAX_GROUPS: u32 = 16;

/// Bytes of a freed linear memory zeroed in place rather than given back to
/// the kernel (see [`engine_config`]): what a small guest touches (its stack
/// top, data and a little heap). Each slot that has run a task keeps at
/// most this much resident; more would show as RSS growth in the soak.
const KEEP_RESIDENT_PER_MEMORY: usize = 512 << 10;

/// As [`KEEP_RESIDENT_PER_MEMORY`], for tables.
const KEEP_RESIDENT_PER_TABLE: usize = 64 << 10;

/// Most programs a loader keeps loaded; past it the cache starts over. A
/// runner rarely sees this many distinct programs; the bound keeps a
/// long-lived one from growing without limit.
const MAX_CACHED_PROGRAMS: usize = 256;

/// Largest Wasm file loaded without the blocking pool (when its artifact
/// is cached): reading, hashing and mapping it take well under a
/// millisecond.
const INLINE_LOAD_MAX: u64 = 1 << 20;

/// How the engine is sized: the part of [`crate::RunnerConfig`] the
/// engine depends on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EngineSettings {
    /// Instance slots in the pool (`RunnerConfig::max_live_tasks`).
    pub(crate) slots: usize,
    /// Largest linear memory of one task, in bytes.
    pub(crate) max_memory_per_task: u64,
    /// Whether instances come from a pre-reserved pool.
    pub(crate) instance_pool: bool,
    /// Address space reserved per linear memory, in bytes; `None` for
    /// wasmtime's default (4 GiB plus guard).
    pub(crate) memory_reservation: Option<u64>,
    /// Linear memories each slot has room for.
    pub(crate) memories_per_task: u32,
    /// Whether compiling uses a pool of threads (wasmtime's parallel
    /// compilation, on rayon's global pool). Off in a worker: its programs
    /// come precompiled from the parent's cache, and threads that outlive
    /// a compile are more threads its sandbox must reach.
    pub(crate) parallel_compilation: bool,
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
struct Stats {
    compiled: AtomicU64,
    disk_hits: AtomicU64,
    memory_hits: AtomicU64,
}

/// Extra host functions a loader's module linker defines beyond WASI and
/// the task channel (the shared memory group imports): given by the layer
/// that owns them, so this module does not depend on it.
pub(crate) type LinkerExtension = fn(&mut Linker<TaskState>) -> wasmtime::Result<()>;

/// Which of a component's other imports a loader links as typed host
/// functions (see [`crate::HostFunctions::insert_typed`]).
#[derive(Debug, Clone, Default)]
pub(crate) enum TypedLinking {
    /// The interfaces the runner's embedder registered (a parent).
    #[default]
    None,
    Registered(std::collections::BTreeSet<String>),
    /// Any interface of functions only (a worker: its parent checked the
    /// program against its registry before sending the task, and every
    /// call goes back to the parent, which checks it again).
    Any,
}

/// Loads programs for one engine. Shared behind an `Arc`.
pub(crate) struct Loader {
    engine: Engine,
    /// Which component imports beyond WASI and `isola:task` are linked as
    /// typed host functions.
    typed: TypedLinking,
    module_linker: Linker<TaskState>,
    /// Built on first use: a runner of modules never needs it.
    component_linker: OnceLock<std::result::Result<wasmtime::component::Linker<TaskState>, String>>,
    /// What the module linker defines, listed on first need (an error
    /// naming a missing import).
    provided_imports: OnceLock<HashSet<(String, String)>>,
    /// Precompiled artifacts. A runner sets it at creation; a worker process
    /// takes its parent's on its first request.
    disk_cache: OnceLock<DiskCache>,
    programs: Mutex<HashMap<ContentHash, Program>>,
    /// Content hashes of files already read, by path and stamp.
    files: Mutex<HashMap<PathBuf, (FileStamp, ContentHash)>>,
    stats: Stats,
}

impl Loader {
    /// Sets which component imports are linked as typed host functions.
    pub(crate) fn with_typed(mut self, typed: TypedLinking) -> Loader {
        self.typed = typed;
        self
    }

    /// A loader with a new engine sized by `settings`, its module linker
    /// (WASI preview1, the task channel, and `extension`'s functions) and,
    /// if given, the disk cache under `cache_root`.
    ///
    /// # Errors
    ///
    /// [`Error::Internal`] if the engine or a linker cannot be created.
    pub(crate) fn new(
        settings: &EngineSettings,
        cache_root: Option<&Path>,
        extension: LinkerExtension,
    ) -> Result<Loader> {
        let engine = Engine::new(&engine_config(settings)).map_err(Error::internal)?;
        let mut module_linker = Linker::new(&engine);
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
        // wasmtime-wasi fills a `random_get` buffer in one go; a guest that
        // asks for 64 MiB in a loop would hold its thread (and its timeout)
        // for a long time per call. Isola's fills it in chunks and yields
        // between them, so a timeout or cancel wins within a chunk.
        module_linker
            .func_wrap_async("wasi_snapshot_preview1", "random_get", random_get)
            .map_err(Error::internal)?;
        module_linker.allow_shadowing(false);
        // A FIFO or device in a granted directory would block wasmtime-wasi's
        // `open` on the shared blocking pool past the task's end: refused.
        crate::special_files::add_to_module_linker(&mut module_linker).map_err(Error::internal)?;
        crate::imports::add_to_module_linker(&mut module_linker).map_err(Error::internal)?;
        extension(&mut module_linker).map_err(Error::internal)?;
        let disk_cache = OnceLock::new();
        if let Some(root) = cache_root {
            let _ = disk_cache.set(DiskCache::new(root, &engine));
        }
        Ok(Loader {
            typed: TypedLinking::None,
            engine,
            module_linker,
            component_linker: OnceLock::new(),
            provided_imports: OnceLock::new(),
            disk_cache,
            programs: Mutex::new(HashMap::new()),
            files: Mutex::new(HashMap::new()),
            stats: Stats::default(),
        })
    }

    /// The engine every program of this loader is compiled for.
    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The linker for core modules.
    pub(crate) fn module_linker(&self) -> &Linker<TaskState> {
        &self.module_linker
    }

    /// Uses the disk cache under `root` from now on, unless one is set
    /// already (a worker's parent always sends the same one).
    pub(crate) fn use_disk_cache(&self, root: &Path) {
        if self.disk_cache.get().is_none() {
            let _ = self.disk_cache.set(DiskCache::new(root, &self.engine));
        }
    }

    /// The root of the disk cache, when there is one.
    pub(crate) fn disk_cache_root(&self) -> Option<&Path> {
        self.disk_cache.get().map(DiskCache::root)
    }

    /// How the caches have been used so far.
    pub(crate) fn stats(&self) -> CacheStats {
        CacheStats {
            compiled: self.stats.compiled.load(Ordering::Relaxed),
            disk_hits: self.stats.disk_hits.load(Ordering::Relaxed),
            memory_hits: self.stats.memory_hits.load(Ordering::Relaxed),
        }
    }

    /// Loads the program at `path`: compiled once per content hash, from the
    /// in-memory cache, the disk cache, or by compiling.
    pub(crate) async fn load(self: &Arc<Self>, path: &Path) -> Result<Program> {
        let read_error = |source| Error::Read {
            path: path.to_owned(),
            source,
        };
        // A file unchanged since it was last loaded (same device, inode, size
        // and modification time) is not read and hashed again: spawning many
        // tasks of one file by path stays cheap.
        // A plain `stat` on this thread: tokio's would hand it to the blocking
        // pool, costing more than the call itself on this hot path.
        let stamp = FileStamp::of(&std::fs::metadata(path).map_err(read_error)?);
        if let Some(program) = self
            .known_file(path, &stamp)
            .and_then(|hash| self.cached_program(&hash))
        {
            self.stats.memory_hits.fetch_add(1, Ordering::Relaxed);
            telemetry::cache_hit(telemetry::CacheTier::Memory);
            return Ok(program);
        }
        // A small file is read, hashed and (if precompiled) mapped right here:
        // a trip to the blocking pool costs more than that work. Anything that
        // may take milliseconds (a big file, compiling) goes to the pool.
        let small = stamp.len() <= INLINE_LOAD_MAX;
        let bytes = if small {
            std::fs::read(path)
        } else {
            tokio::fs::read(path).await
        }
        .map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        let bytes = wasm_binary(path, bytes)?;
        let kind = WasmKind::detect(&bytes).ok_or_else(|| Error::NotWasm {
            path: path.to_owned(),
        })?;
        let hash = content_hash(&bytes);
        self.remember_file(path, stamp, hash);
        if let Some(program) = self.cached_program(&hash) {
            self.stats.memory_hits.fetch_add(1, Ordering::Relaxed);
            telemetry::cache_hit(telemetry::CacheTier::Memory);
            return Ok(program);
        }
        let cached = self
            .disk_cache
            .get()
            .is_some_and(|c| c.contains(&hash, kind.as_str()));
        if small && cached {
            let program = self.build(path, kind, hash, Some(&bytes))?;
            self.remember_program(hash, program.clone());
            return Ok(program);
        }
        self.build_in_pool(path, kind, hash, bytes).await
    }

    /// Loads a program from `bytes` (Wasm, or WebAssembly text), named
    /// `name` where a path would be (in errors, `Program::path`): compiled
    /// once per content hash like a file, from the in-memory cache, the disk
    /// cache, or by compiling. Process tasks of it load the artifact the
    /// parent stores for them, so no file is needed.
    pub(crate) async fn load_bytes(
        self: &Arc<Self>,
        name: &Path,
        bytes: Vec<u8>,
    ) -> Result<Program> {
        let bytes = wasm_binary(name, bytes)?;
        let kind = WasmKind::detect(&bytes).ok_or_else(|| Error::NotWasm {
            path: name.to_owned(),
        })?;
        let hash = content_hash(&bytes);
        if let Some(program) = self.cached_program(&hash) {
            self.stats.memory_hits.fetch_add(1, Ordering::Relaxed);
            telemetry::cache_hit(telemetry::CacheTier::Memory);
            return Ok(program);
        }
        self.build_in_pool(name, kind, hash, bytes).await
    }

    /// [`Loader::build`] on the blocking pool (compiling and even
    /// deserializing take milliseconds to seconds: not on the async
    /// workers), remembering the program.
    async fn build_in_pool(
        self: &Arc<Self>,
        path: &Path,
        kind: WasmKind,
        hash: ContentHash,
        bytes: Vec<u8>,
    ) -> Result<Program> {
        let loader = Arc::clone(self);
        let path = path.to_owned();
        let program =
            tokio::task::spawn_blocking(move || loader.build(&path, kind, hash, Some(&bytes)))
                .await
                .map_err(Error::internal)??;
        self.remember_program(hash, program.clone());
        Ok(program)
    }

    /// Loads a program whose content hash and kind are already known (a
    /// worker is told them by its parent), on the calling thread: from
    /// memory or the disk cache without reading the Wasm file at all, else
    /// by reading and compiling it (checked to still have that hash).
    pub(crate) fn load_known(
        &self,
        path: &Path,
        hash: ContentHash,
        kind: WasmKind,
    ) -> Result<Program> {
        if let Some(program) = self.cached_program(&hash) {
            self.stats.memory_hits.fetch_add(1, Ordering::Relaxed);
            telemetry::cache_hit(telemetry::CacheTier::Memory);
            return Ok(program);
        }
        let program = self.build(path, kind, hash, None)?;
        self.remember_program(hash, program.clone());
        Ok(program)
    }

    /// Compiles a program from bytes built into Isola (`name` stands in for
    /// its path), bypassing every cache.
    pub(crate) fn load_builtin(&self, name: &str, bytes: &[u8]) -> Result<Program> {
        let kind = WasmKind::detect(bytes).ok_or_else(|| Error::NotWasm { path: name.into() })?;
        self.compile(Path::new(name), kind, content_hash(bytes), bytes, None)
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

    fn cached_program(&self, hash: &ContentHash) -> Option<Program> {
        self.programs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(hash)
            .cloned()
    }

    /// The content hash of `path` if it was read before and is unchanged.
    fn known_file(&self, path: &Path, stamp: &FileStamp) -> Option<ContentHash> {
        let files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        match files.get(path) {
            Some((known, hash)) if known == stamp => Some(*hash),
            _ => None,
        }
    }

    fn remember_file(&self, path: &Path, stamp: FileStamp, hash: ContentHash) {
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        if files.len() >= MAX_CACHED_PROGRAMS {
            files.clear();
        }
        files.insert(path.to_owned(), (stamp, hash));
    }

    fn remember_program(&self, hash: ContentHash, program: Program) {
        let mut programs = self.programs.lock().unwrap_or_else(|e| e.into_inner());
        if programs.len() >= MAX_CACHED_PROGRAMS {
            programs.clear();
        }
        programs.insert(hash, program);
    }

    /// The linker for components, built on first use.
    fn component_linker(&self) -> Result<&wasmtime::component::Linker<TaskState>> {
        self.component_linker
            .get_or_init(|| {
                let mut linker = wasmtime::component::Linker::new(&self.engine);
                wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|e| e.to_string())?;
                crate::special_files::add_to_component_linker(&mut linker)
                    .map_err(|e| e.to_string())?;
                crate::imports::add_to_component_linker(&mut linker).map_err(|e| e.to_string())?;
                Ok(linker)
            })
            .as_ref()
            .map_err(|e| Error::Internal(format!("cannot set up the component linker: {e}")))
    }

    /// The `(module, name)` pairs the module linker defines.
    fn provided_imports(&self) -> &HashSet<(String, String)> {
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

    /// Deserializes the disk artifact for `hash`, if there is a sound one.
    /// An artifact wasmtime rejects is treated as a miss.
    fn cached_artifact<T>(
        &self,
        hash: &ContentHash,
        kind: WasmKind,
        deserialize: impl FnOnce(Artifact) -> wasmtime::Result<T>,
    ) -> Option<T> {
        let file = self.disk_cache.get()?.open_verified(hash, kind.as_str())?;
        match deserialize(file) {
            Ok(value) => {
                self.stats.disk_hits.fetch_add(1, Ordering::Relaxed);
                telemetry::cache_hit(telemetry::CacheTier::Disk);
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

    /// The program of `hash`: from its precompiled artifact if the disk
    /// cache has a sound one, else compiled from `bytes` (or the file's
    /// bytes, checked to still have that hash).
    fn build(
        &self,
        path: &Path,
        kind: WasmKind,
        hash: ContentHash,
        bytes: Option<&[u8]>,
    ) -> Result<Program> {
        let precompiled = match kind {
            WasmKind::Module => self
                .cached_artifact(&hash, kind, |artifact| {
                    // SAFETY: `artifact` passed the cache's integrity check,
                    // so it is exactly what `Module::serialize` wrote for an
                    // engine with the same compatibility hash (the cache
                    // directory is keyed by it), and artifacts are replaced
                    // only by rename, so the open file does not change.
                    unsafe { Module::deserialize_open_file(&self.engine, artifact.file) }
                })
                .map(Compiled::Module),
            WasmKind::Component => self
                .cached_artifact(&hash, kind, |artifact| {
                    // wasmtime 48 has no `Component::deserialize_open_file`;
                    // opening the verified descriptor through /proc maps the
                    // very file that was checked, even if the path has been
                    // replaced since.
                    let path = artifact.fd_path();
                    // SAFETY: as for modules: the open file was verified and
                    // holds what `Component::serialize` wrote for a
                    // compatible engine.
                    unsafe { Component::deserialize_file(&self.engine, &path) }
                })
                .map(Compiled::Component),
        };
        match precompiled {
            Some(compiled) => self.link(path, hash, compiled),
            None => {
                let bytes = wasm_bytes(path, &hash, bytes)?;
                self.compile(path, kind, hash, &bytes, self.disk_cache.get())
            }
        }
    }

    /// Compiles `bytes`, stores the artifact in `cache` if given, and links.
    fn compile(
        &self,
        path: &Path,
        kind: WasmKind,
        hash: ContentHash,
        bytes: &[u8],
        cache: Option<&DiskCache>,
    ) -> Result<Program> {
        let invalid = |err: wasmtime::Error| {
            if crate::outcome::is_out_of_memory(&err) {
                Error::OutOfMemory(format!("compiling `{}`: {err:#}", path.display()))
            } else {
                Error::Invalid {
                    path: path.to_owned(),
                    message: format!("{err:#}"),
                }
            }
        };
        let compiled = match kind {
            WasmKind::Module => {
                Compiled::Module(Module::new(&self.engine, bytes).map_err(invalid)?)
            }
            WasmKind::Component => {
                Compiled::Component(Component::new(&self.engine, bytes).map_err(invalid)?)
            }
        };
        self.stats.compiled.fetch_add(1, Ordering::Relaxed);
        telemetry::compiled();
        tracing::debug!(path = %path.display(), kind = kind.as_str(), "compiled from wasm");
        if let Some(cache) = cache {
            let artifact = match &compiled {
                Compiled::Module(module) => module.serialize(),
                Compiled::Component(component) => component.serialize(),
            };
            if let Ok(artifact) = artifact {
                cache.store(&hash, kind.as_str(), &artifact);
            }
        }
        self.link(path, hash, compiled)
    }

    /// Checks the imports and exports of a compiled program and
    /// pre-instantiates it.
    fn link(&self, path: &Path, hash: ContentHash, compiled: Compiled) -> Result<Program> {
        let invalid = |err: wasmtime::Error| Error::Invalid {
            path: path.to_owned(),
            message: format!("{err:#}"),
        };
        let tables = match &compiled {
            Compiled::Module(module) => Some(module.resources_required()),
            Compiled::Component(component) => component.resources_required(),
        };
        if let Some(tables) = tables {
            check_tables(path, &compiled, &tables)?;
        }
        let mut program_typed = crate::host_fn::ImportTypes::new();
        let kind = match compiled {
            Compiled::Module(module) => {
                if imports_shared_memory(&module) {
                    self.check_module_imports(path, &module)?;
                    check_core_exports(path, &module)?;
                    ProgramKind::Shared { module }
                } else {
                    // Linking succeeds for the modules that will run; only a
                    // failure needs the slower check that names the missing
                    // import.
                    let linked = self.module_linker.instantiate_pre(&module);
                    if linked.is_err() {
                        self.check_module_imports(path, &module)?;
                    }
                    check_core_exports(path, &module)?;
                    let command = module.get_export("_start").is_some();
                    let plugin = module.get_export(CORE_PLUGIN_EXPORT).is_some();
                    // A library of functions (no `main`, no plugin `run`) is
                    // a program too: its exports are called by name.
                    let functions = module
                        .exports()
                        .any(|e| matches!(e.ty(), wasmtime::ExternType::Func(_)));
                    if !command && !plugin && !functions {
                        return Err(Error::UnsupportedWorld {
                            path: path.to_owned(),
                            detail: format!(
                                "it exports neither `_start` (a WASI command) nor \
                                 `{CORE_PLUGIN_EXPORT}` (an Isola plugin), nor any function"
                            ),
                        });
                    }
                    ProgramKind::Module {
                        pre: linked.map_err(invalid)?,
                        command,
                        plugin,
                    }
                }
            }
            Compiled::Component(component) => {
                let unsupported = |err: wasmtime::Error| Error::UnsupportedWorld {
                    path: path.to_owned(),
                    detail: format!("it is a component of an unsupported world: {err:#}"),
                };
                let linker = self.component_linker()?;
                let pre = match linker.instantiate_pre(&component) {
                    Ok(pre) => pre,
                    Err(err) => {
                        // Imports of the embedder's typed host functions are
                        // linked for this program alone.
                        let typed = self.typed_imports(path, &component)?;
                        if typed.is_empty() {
                            return Err(unsupported(err));
                        }
                        let mut linker = linker.clone();
                        for (interface, functions) in typed {
                            link_typed(&mut linker, &interface, &functions).map_err(unsupported)?;
                            // Keyed without the version, as registered and
                            // granted.
                            let bare = crate::host_fn::bare_interface(&interface);
                            for (function, params) in functions {
                                program_typed.insert(format!("{bare}#{function}"), params);
                            }
                        }
                        linker.instantiate_pre(&component).map_err(unsupported)?
                    }
                };
                let command = CommandPre::new(pre.clone()).ok();
                let plugin = PluginPre::new(pre.clone()).ok();
                let functions =
                    component
                        .component_type()
                        .exports(component.engine())
                        .any(|(_, item)| {
                            matches!(
                                item.ty,
                                wasmtime::component::types::ComponentItem::ComponentFunc(_)
                                    | wasmtime::component::types::ComponentItem::ComponentInstance(
                                        _
                                    )
                            )
                        });
                if command.is_none() && plugin.is_none() && !functions {
                    return Err(Error::UnsupportedWorld {
                        path: path.to_owned(),
                        detail: "it exports neither `wasi:cli/run` (a command) nor `run` of \
                                 `isola:task/plugin`, nor any function"
                            .into(),
                    });
                }
                ProgramKind::Component {
                    pre,
                    command,
                    plugin,
                }
            }
        };
        Ok(Program {
            inner: Arc::new(ProgramInner {
                path: path.to_owned(),
                hash,
                imports_host_call: crate::program::imports_host_call(&kind),
                typed_imports: Arc::new(program_typed),
                kind,
            }),
        })
    }

    /// Names the first import the linker cannot satisfy, so the error says
    /// what is missing instead of failing somewhere inside instantiation.
    fn check_module_imports(&self, path: &Path, module: &Module) -> Result<()> {
        for import in module.imports() {
            if is_shared_memory_import(&import) {
                // Provided by the shared memory group the task runs in.
                continue;
            }
            let provided = self
                .provided_imports()
                .contains(&(import.module().to_owned(), import.name().to_owned()));
            if !provided {
                return Err(Error::UnknownImport {
                    path: path.to_owned(),
                    module: import.module().to_owned(),
                    name: import.name().to_owned(),
                });
            }
        }
        Ok(())
    }
}

/// Refuses, at load and whatever will run it, memories and tables a task
/// may not have ([`MAX_MEMORIES_PER_MODULE`], [`MAX_TABLES_PER_MODULE`],
/// [`MAX_TABLE_ELEMENTS`]): with an instance
/// pool they could not be instantiated, and without one they would hold
/// host memory outside the task's budget.
fn check_tables(
    path: &Path,
    compiled: &Compiled,
    required: &wasmtime::ResourcesRequired,
) -> Result<()> {
    let refuse = |message: String| Error::Invalid {
        path: path.to_owned(),
        message,
    };
    let module = matches!(compiled, Compiled::Module(_));
    if module && required.num_memories > MAX_MEMORIES_PER_MODULE {
        return Err(refuse(format!(
            "it defines {} memories; a task's module may have at most {MAX_MEMORIES_PER_MODULE}",
            required.num_memories
        )));
    }
    if module && required.num_tables > MAX_TABLES_PER_MODULE {
        return Err(refuse(format!(
            "it declares {} tables; a task's module may have at most {MAX_TABLES_PER_MODULE}",
            required.num_tables
        )));
    }
    if let Some(initial) = required.max_initial_table_size
        && initial > MAX_TABLE_ELEMENTS as u64
    {
        return Err(refuse(format!(
            "it declares a table of {initial} elements; a task's tables hold at most \
             {MAX_TABLE_ELEMENTS}"
        )));
    }
    Ok(())
}

/// A compiled program before linking.
enum Compiled {
    Module(Module),
    Component(Component),
}

/// Bytes of randomness `random_get` writes between yields: about a
/// millisecond of work.
const RANDOM_CHUNK: usize = 256 << 10;

/// WASI preview1 `random_get(buf, len) -> errno`, in chunks of
/// [`RANDOM_CHUNK`] with a yield to the runtime after each, from the task's
/// own WASI random source.
fn random_get(
    mut caller: wasmtime::Caller<'_, TaskState>,
    (ptr, len): (i32, i32),
) -> Box<dyn std::future::Future<Output = wasmtime::Result<i32>> + Send + '_> {
    Box::new(async move {
        use wasmtime_wasi::WasiView;
        use wasmtime_wasi::p2::bindings::random::random::Host;
        let (start, len) = (ptr as u32 as usize, len as u32 as usize);
        let memory = match caller.get_export("memory") {
            Some(wasmtime::Extern::Memory(memory)) => Target::Own(memory),
            // A shared memory (a group task): through its bounds-checked view.
            Some(wasmtime::Extern::SharedMemory(shared)) => {
                Target::Shared(crate::region::whole(&shared))
            }
            _ => {
                return Err(wasmtime::Error::new(crate::outcome::BadHostCall {
                    call: "wasi_snapshot_preview1.random_get",
                    message: "the module exports no `memory`".into(),
                }));
            }
        };
        // Out of bounds is checked up front: WASI says such a call traps,
        // and nothing should be written first.
        if start.saturating_add(len) > memory.size(&caller) {
            return Err(wasmtime::Error::new(wasmtime::Trap::MemoryOutOfBounds));
        }
        let mut written = 0;
        while written < len {
            let n = RANDOM_CHUNK.min(len - written);
            let bytes = caller
                .data_mut()
                .wasi
                .ctx()
                .ctx
                .random()
                .get_random_bytes(n as u64)?;
            memory.write(&mut caller, start + written, &bytes)?;
            written += n;
            if written < len {
                tokio::task::yield_now().await;
            }
        }
        Ok(0)
    })
}

/// The memory a host function writes into: the guest's own, or a shared
/// one (a group task).
enum Target {
    Own(wasmtime::Memory),
    Shared(crate::region::Region),
}

impl Target {
    fn size(&self, caller: &wasmtime::Caller<'_, TaskState>) -> usize {
        match self {
            Target::Own(memory) => memory.data_size(caller),
            Target::Shared(region) => region.len(),
        }
    }

    fn write(
        &self,
        caller: &mut wasmtime::Caller<'_, TaskState>,
        at: usize,
        bytes: &[u8],
    ) -> wasmtime::Result<()> {
        let out_of_bounds = || wasmtime::Error::new(wasmtime::Trap::MemoryOutOfBounds);
        match self {
            Target::Own(memory) => memory.write(caller, at, bytes).map_err(|_| out_of_bounds()),
            Target::Shared(region) => region.write(at, bytes).map_err(|_| out_of_bounds()),
        }
    }
}

/// The Wasm bytes to compile: those already read, or the file's, checked to
/// be the ones the program was identified by.
fn wasm_bytes<'a>(
    path: &Path,
    hash: &ContentHash,
    bytes: Option<&'a [u8]>,
) -> Result<std::borrow::Cow<'a, [u8]>> {
    if let Some(bytes) = bytes {
        return Ok(bytes.into());
    }
    let bytes = std::fs::read(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })?;
    let bytes = wasm_binary(path, bytes)?;
    if content_hash(&bytes) != *hash {
        return Err(Error::Read {
            path: path.to_owned(),
            source: std::io::Error::other("the file changed after it was loaded"),
        });
    }
    Ok(bytes.into())
}

/// The Wasm binary of a file's contents: the contents themselves, or, for
/// the WebAssembly text format (a `.wat` file, or text that starts with
/// `(` or a `;;` comment), the binary it describes, module or component.
/// Everything downstream (the content hash, the caches, a worker's own
/// read) sees the binary. Anything else is not Wasm.
fn wasm_binary(path: &Path, bytes: Vec<u8>) -> Result<Vec<u8>> {
    if WasmKind::detect(&bytes).is_some() {
        return Ok(bytes);
    }
    let start = bytes.iter().position(|b| !b.is_ascii_whitespace());
    let text_like = path.extension().is_some_and(|ext| ext == "wat")
        || start.is_some_and(|at| bytes[at..].starts_with(b"(") || bytes[at..].starts_with(b";;"));
    if !text_like {
        return Err(Error::NotWasm {
            path: path.to_owned(),
        });
    }
    wat::parse_bytes(&bytes)
        .map(std::borrow::Cow::into_owned)
        .map_err(|err| Error::Invalid {
            path: path.to_owned(),
            message: format!("as WebAssembly text: {err}"),
        })
}

fn is_shared_memory_import(import: &wasmtime::ImportType<'_>) -> bool {
    import.module() == "env"
        && import.name() == "memory"
        && matches!(import.ty(), ExternType::Memory(ty) if ty.is_shared())
}

/// Whether the module imports its memory shared (`wasm32-wasip1-threads`).
pub(crate) fn imports_shared_memory(module: &Module) -> bool {
    module
        .imports()
        .any(|import| is_shared_memory_import(&import))
}

/// The exports of a core module whose type Isola relies on, with the
/// type each must have: `(name, params, results)`.
const TYPED_EXPORTS: &[(&str, &[&str], &[&str])] = &[
    ("_start", &[], &[]),
    ("_initialize", &[], &[]),
    (CORE_PLUGIN_EXPORT, &[], &["i32"]),
    ("wasi_thread_start", &["i32", "i32"], &[]),
];

/// WASI preview1 functions that take no pointer, so need no `memory`
/// export (every other one reads or writes the guest's memory).
const WASI_WITHOUT_MEMORY: &[&str] = &["proc_exit", "proc_raise", "sched_yield"];

/// `isola:task` functions that read or write the guest's memory, through
/// its `memory` export.
const MEMORY_IMPORTS: &[&str] = &["post", "read", "input-read", "set-output", "set-error"];

/// Checks, at load, what would otherwise fail only when called (and be
/// blamed on Isola): the entry exports have their ABI types, and a module
/// whose imports read or write its memory exports that memory.
fn check_core_exports(path: &Path, module: &Module) -> Result<()> {
    let refuse = |detail: String| Error::UnsupportedWorld {
        path: path.to_owned(),
        detail,
    };
    let signature = |types: &mut dyn Iterator<Item = wasmtime::ValType>| {
        types.map(|t| t.to_string()).collect::<Vec<_>>()
    };
    for (name, params, results) in TYPED_EXPORTS {
        let Some(export) = module.get_export(name) else {
            continue;
        };
        let ExternType::Func(func) = export else {
            return Err(refuse(format!("its export `{name}` is not a function")));
        };
        let found = (
            signature(&mut func.params()),
            signature(&mut func.results()),
        );
        if found.0 != *params || found.1 != *results {
            return Err(refuse(format!(
                "its export `{name}` has type ({}) -> ({}); Isola calls it as ({}) -> ({})",
                found.0.join(", "),
                found.1.join(", "),
                params.join(", "),
                results.join(", ")
            )));
        }
    }
    let exports_memory = matches!(module.get_export("memory"), Some(ExternType::Memory(_)));
    if !exports_memory
        && let Some(import) = module.imports().find(|import| {
            matches!(import.ty(), ExternType::Func(_))
                && ((import.module() == "wasi_snapshot_preview1"
                    && !WASI_WITHOUT_MEMORY.contains(&import.name()))
                    || (import.module() == crate::channel::CORE_MODULE
                        && MEMORY_IMPORTS.contains(&import.name())))
        })
    {
        return Err(refuse(format!(
            "it imports `{}.{}` but exports no `memory`: host functions read and write a \
             guest's memory through its `memory` export",
            import.module(),
            import.name()
        )));
    }
    Ok(())
}

/// The engine settings every task relies on.
fn engine_config(settings: &EngineSettings) -> Config {
    let mut c = Config::new();
    c.parallel_compilation(settings.parallel_compilation);
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
    if let Some(reservation) = settings.memory_reservation {
        c.memory_reservation(reservation);
        // Small reservations are for many small tasks: keep the guard in
        // proportion (it is address space, never memory).
        c.memory_guard_size(reservation.min(32 << 20));
        c.memory_reservation_for_growth(0);
    }

    let slots = u32::try_from(settings.slots).unwrap_or(u32::MAX);
    let mut pool = PoolingAllocationConfig::new();
    // A component made by `wasm32-wasip2` holds a handful of core instances
    // (the program, the WASI adapter and small shims); budget for that.
    pool.total_component_instances(slots)
        .total_core_instances(slots.saturating_mul(4))
        .total_memories(slots.saturating_mul(settings.memories_per_task))
        .total_tables(slots.saturating_mul(4))
        .max_tables_per_module(MAX_TABLES_PER_MODULE)
        .max_memories_per_module(MAX_MEMORIES_PER_MODULE)
        .table_elements(MAX_TABLE_ELEMENTS)
        // Each group's coordinator holds a fiber stack outside the task slots.
        .total_stacks(slots.saturating_add(MAX_GROUPS))
        .max_memory_size(usize::try_from(settings.max_memory_per_task).unwrap_or(usize::MAX))
        // A freed slot is reset to zero for the next instance. By default
        // that is an `madvise` of the whole memory, and the next instance
        // faults every page back in: about 40% of a short task's cost. With
        // PAGEMAP_SCAN (Linux 6.7+) the pages it actually touched, up to
        // this much, are zeroed in place and stay resident instead.
        .pagemap_scan(wasmtime::Enabled::Auto)
        .linear_memory_keep_resident(KEEP_RESIDENT_PER_MEMORY)
        .table_keep_resident(KEEP_RESIDENT_PER_TABLE);
    if settings.instance_pool {
        c.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    c
}

#[cfg(test)]
#[allow(unused_imports, reason = "for the ABI document's test (abi_doc_test)")]
pub(crate) use tests::tests_support;

/// A typed import's functions and their param types.
type TypedFunctions = Vec<(String, Vec<wasmtime::component::Type>)>;

impl Loader {
    /// The component's imports this loader links as typed host functions:
    /// instances of functions only, named by the embedder's registry (or
    /// any, in a worker), with each function's param types.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownImport`] for a function of a registered interface
    /// that the embedder did not register, or whose values WAVE cannot
    /// carry (resources, streams, futures).
    fn typed_imports(
        &self,
        path: &Path,
        component: &wasmtime::component::Component,
    ) -> Result<Vec<(String, TypedFunctions)>> {
        use wasmtime::component::types::ComponentItem;
        let engine = component.engine();
        let mut found = Vec::new();
        for (name, item) in component.component_type().imports(engine) {
            let ComponentItem::ComponentInstance(instance) = item.ty else {
                continue;
            };
            // The registry names interfaces without a version.
            let bare = crate::host_fn::bare_interface(name);
            let registered = |function: &str| match &self.typed {
                TypedLinking::None => false,
                TypedLinking::Registered(names) => names.contains(&format!("{bare}#{function}")),
                TypedLinking::Any => true,
            };
            let wanted = match &self.typed {
                TypedLinking::None => false,
                TypedLinking::Registered(names) => names
                    .iter()
                    .any(|full| crate::host_fn::interface_of(full) == Some(bare)),
                TypedLinking::Any => !bare.starts_with("wasi:") && !bare.starts_with("isola:"),
            };
            if !wanted {
                continue;
            }
            let unknown = |function: &str| Error::UnknownImport {
                path: path.to_owned(),
                module: name.to_owned(),
                name: function.to_owned(),
            };
            let mut functions = Vec::new();
            for (function, export) in instance.exports(engine) {
                let ComponentItem::ComponentFunc(ty) = export.ty else {
                    return Err(unknown(function));
                };
                let params: Vec<_> = ty.params().map(|(_, t)| t).collect();
                let carried = params
                    .iter()
                    .chain(ty.results().collect::<Vec<_>>().iter())
                    .all(crate::host_fn::wave_writable_type);
                if !registered(function) || !carried {
                    return Err(unknown(function));
                }
                functions.push((function.to_owned(), params));
            }
            found.push((name.to_owned(), functions));
        }
        Ok(found)
    }
}

/// Defines each function of the imported `interface` as a call to the
/// task's typed host function `interface#function` (`interface` without
/// its version): arguments and results cross as WAVE lines through the
/// task's host link (to the parent, for a worker), results parsed with the
/// import's own result types.
fn link_typed(
    linker: &mut wasmtime::component::Linker<TaskState>,
    interface: &str,
    functions: &TypedFunctions,
) -> wasmtime::Result<()> {
    use wasmtime::component::{Type, Val};
    let bare = crate::host_fn::bare_interface(interface).to_owned();
    let mut instance = linker.instance(interface)?;
    for (function, _) in functions {
        let full = format!("{bare}#{function}");
        instance.func_new_async(function, move |mut store, ty, params, results| {
            let full = full.clone();
            Box::new(async move {
                let mut args = Vec::with_capacity(params.len());
                for value in params {
                    args.push(value.to_wave()?);
                }
                let reply = store
                    .data_mut()
                    .call_host(full.clone(), args.join("\n").into_bytes())
                    .await?;
                let types: Vec<Type> = ty.results().collect();
                match reply {
                    Ok(bytes) => {
                        let values = crate::host_fn::typed_lines(&bytes, &types, |ty, line| {
                            Val::from_wave(ty, line).map_err(|e| e.to_string())
                        })
                        .map_err(|e| {
                            wasmtime::format_err!(
                                "host function `{full}` returned bad results: {e}"
                            )
                        })?;
                        wasmtime::ensure!(
                            results.len() == values.len(),
                            "host function `{full}` returned {} results for {}",
                            values.len(),
                            results.len()
                        );
                        for (slot, value) in results.iter_mut().zip(values) {
                            *slot = value;
                        }
                        Ok(())
                    }
                    // An error the WIT lets the guest handle is its value.
                    Err(message) if string_error_result(&types) => {
                        if let Some(slot) = results.first_mut() {
                            *slot = Val::Result(Err(Some(Box::new(Val::String(message)))));
                        }
                        Ok(())
                    }
                    Err(message) => wasmtime::bail!("host function `{full}` failed: {message}"),
                }
            })
        })?;
    }
    Ok(())
}

/// Whether a function's results are one `result<_, string>`.
fn string_error_result(types: &[wasmtime::component::Type]) -> bool {
    match types {
        [wasmtime::component::Type::Result(result)] => {
            matches!(result.err(), Some(wasmtime::component::Type::String))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    /// What tests outside this module need to see of a loader.
    pub(crate) mod tests_support {
        use super::super::{EngineSettings, Loader};

        /// The functions a runner's module linker defines under `module`,
        /// as `(name, params, results)` with core types spelled as in WAT
        /// (`i32`, `i64`, ...), sorted by name.
        pub(crate) fn core_imports(module: &str) -> Vec<(String, Vec<String>, Vec<String>)> {
            let loader = Loader::new(
                &EngineSettings {
                    slots: 1,
                    max_memory_per_task: 1 << 30,
                    instance_pool: false,
                    memory_reservation: None,
                    memories_per_task: 1,
                    parallel_compilation: true,
                },
                None,
                crate::group::add_to_module_linker,
            )
            .expect("loader");
            let mut store = wasmtime::Store::new(loader.engine(), crate::state::TaskState::inert());
            let mut found: Vec<_> = loader
                .module_linker()
                .iter(&mut store)
                .filter(|(m, _, _)| *m == module)
                .map(|(_, name, item)| (name.to_owned(), item))
                .collect::<Vec<_>>()
                .into_iter()
                .filter_map(|(name, item)| match item.ty(&store) {
                    wasmtime::ExternType::Func(f) => Some((
                        name,
                        f.params().map(|t| t.to_string()).collect(),
                        f.results().map(|t| t.to_string()).collect(),
                    )),
                    _ => None,
                })
                .collect();
            found.sort();
            found
        }
    }

    #[test]
    fn the_task_imports_are_linked() {
        let imports = tests_support::core_imports(crate::channel::CORE_MODULE);
        let names: Vec<_> = imports.iter().map(|(name, _, _)| name.as_str()).collect();
        for name in ["post", "recv-next", "read", "set-output", "group-ready"] {
            assert!(names.contains(&name), "{name} in {names:?}");
        }
    }
}

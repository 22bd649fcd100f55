//! Loading Wasm into runnable programs: read, recognize, compile (or load
//! the precompiled artifact), check imports, pre-instantiate.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use wasmtime::component::Component;
use wasmtime::{ExternType, InstancePre, Module};
use wasmtime_wasi::p2::bindings::CommandPre;

use crate::cache::{ContentHash, DiskCache, content_hash};
use crate::channel::bindings::PluginPre;
use crate::error::{Error, Result};
use crate::runner::RunnerInner;
use crate::state::TaskState;

/// A compiled, linked, ready-to-instantiate Wasm program.
///
/// Cheap to clone. Obtain one with [`crate::Runner::load`] to start many tasks
/// of the same program without reading the file each time.
#[derive(Clone)]
pub struct Program {
    pub(crate) inner: Arc<ProgramInner>,
}

pub(crate) struct ProgramInner {
    pub(crate) path: PathBuf,
    pub(crate) hash: ContentHash,
    pub(crate) kind: ProgramKind,
}

pub(crate) enum ProgramKind {
    /// A WASI preview1 core module: a command (`_start`), a plugin
    /// (`isola_run`), or both.
    Module {
        pre: InstancePre<TaskState>,
        command: bool,
        plugin: bool,
    },
    /// A `wasm32-wasip1-threads` module importing a shared memory: it runs
    /// only as tasks of a shared memory group ([`crate::SharedGroup`]).
    Shared { module: Module },
    /// A WASI preview2 component: a command (`wasi:cli/run`), a plugin
    /// (`run` of the `isola:task/plugin` world), or both.
    Component {
        pre: wasmtime::component::InstancePre<TaskState>,
        command: Option<CommandPre<TaskState>>,
        plugin: Option<PluginPre<TaskState>>,
    },
}

/// Name of the export a core-module plugin provides: `isola_run() -> i32`,
/// which reads its input with `isola:task::input-*` and reports with
/// `set-output` / `set-error` (returning 0 / 1).
pub(crate) const CORE_PLUGIN_EXPORT: &str = "isola_run";

impl std::fmt::Debug for Program {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Program")
            .field("path", &self.inner.path)
            .field("kind", &self.kind_name())
            .field("hash", &hex::encode(self.inner.hash))
            .finish()
    }
}

impl Program {
    /// The file this program was loaded from.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// `"module"` for a core module, `"component"` for a component.
    pub fn kind_name(&self) -> &'static str {
        match self.inner.kind {
            ProgramKind::Module { .. } | ProgramKind::Shared { .. } => "module",
            ProgramKind::Component { .. } => "component",
        }
    }

    pub(crate) fn wasm_kind(&self) -> WasmKind {
        match self.inner.kind {
            ProgramKind::Module { .. } | ProgramKind::Shared { .. } => WasmKind::Module,
            ProgramKind::Component { .. } => WasmKind::Component,
        }
    }

    /// The precompiled form of this program, as the disk cache stores it.
    pub(crate) fn serialize(&self) -> wasmtime::Result<Vec<u8>> {
        match &self.inner.kind {
            ProgramKind::Module { pre, .. } => pre.module().serialize(),
            ProgramKind::Shared { module } => module.serialize(),
            ProgramKind::Component { pre, .. } => pre.component().serialize(),
        }
    }

    /// Whether the program has a `main` (a WASI command).
    pub fn is_command(&self) -> bool {
        match &self.inner.kind {
            ProgramKind::Module { command, .. } => *command,
            ProgramKind::Shared { .. } => false,
            ProgramKind::Component { command, .. } => command.is_some(),
        }
    }

    /// Whether the program exports the plugin entry `run`.
    pub fn is_plugin(&self) -> bool {
        match &self.inner.kind {
            ProgramKind::Module { plugin, .. } => *plugin,
            ProgramKind::Shared { .. } => false,
            ProgramKind::Component { plugin, .. } => plugin.is_some(),
        }
    }

    /// Hex SHA-256 of the Wasm bytes: the key of the compile caches.
    pub fn content_hash(&self) -> String {
        hex::encode(self.inner.hash)
    }
}

/// What identifies a file's contents without reading them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    modified: Option<std::time::SystemTime>,
}

impl FileStamp {
    fn of(meta: &std::fs::Metadata) -> FileStamp {
        use std::os::unix::fs::MetadataExt;
        FileStamp {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            modified: meta.modified().ok(),
        }
    }
}

/// The two binary formats Isola runs, told apart by the header's version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum WasmKind {
    Module,
    Component,
}

impl WasmKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            WasmKind::Module => "module",
            WasmKind::Component => "component",
        }
    }

    /// Recognizes the header. `None` for anything that is not Wasm.
    pub(crate) fn detect(bytes: &[u8]) -> Option<WasmKind> {
        let header = bytes.get(..8)?;
        if &header[..4] != b"\0asm" {
            return None;
        }
        // Bytes 4..8: version 1 for core modules; version 0xd with layer 1
        // for components (the component-model binary format).
        match header[4..8] {
            [1, 0, 0, 0] => Some(WasmKind::Module),
            [_, _, 1, 0] => Some(WasmKind::Component),
            _ => None,
        }
    }
}

/// Loads the program at `path`: compiled once per content hash, from the
/// in-memory cache, the disk cache, or by compiling.
pub(crate) async fn load(runner: &Arc<RunnerInner>, path: &Path) -> Result<Program> {
    load_with_cache(runner, path, runner.disk_cache.as_ref()).await
}

/// As [`load`], with the precompiled artifacts taken from `cache` (a worker
/// process uses its parent's cache this way).
pub(crate) async fn load_with_cache(
    runner: &Arc<RunnerInner>,
    path: &Path,
    cache: Option<&DiskCache>,
) -> Result<Program> {
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
    if let Some(program) = runner
        .known_file(path, &stamp)
        .and_then(|hash| runner.cached_program(&hash))
    {
        runner.stats.record_memory_hit();
        return Ok(program);
    }
    // A small file is read, hashed and (if precompiled) mapped right here:
    // a trip to the blocking pool costs more than that work. Anything that
    // may take milliseconds (a big file, compiling) goes to the pool.
    let small = stamp.len <= INLINE_LOAD_MAX;
    let bytes = if small {
        std::fs::read(path)
    } else {
        tokio::fs::read(path).await
    }
    .map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })?;
    let kind = WasmKind::detect(&bytes).ok_or_else(|| Error::NotWasm {
        path: path.to_owned(),
    })?;
    let hash = content_hash(&bytes);
    runner.remember_file(path, stamp, hash);
    if let Some(program) = runner.cached_program(&hash) {
        runner.stats.record_memory_hit();
        return Ok(program);
    }
    if small && cache.is_some_and(|c| c.contains(&hash, kind.as_str())) {
        let program = build(runner, cache, path, kind, hash, Some(&bytes))?;
        runner.remember_program(hash, program.clone());
        return Ok(program);
    }
    // Compiling and even deserializing take milliseconds to seconds: keep them
    // off the async workers.
    let runner2 = Arc::clone(runner);
    let path2 = path.to_owned();
    let cache = cache.cloned();
    let program = tokio::task::spawn_blocking(move || {
        build(&runner2, cache.as_ref(), &path2, kind, hash, Some(&bytes))
    })
    .await
    .map_err(Error::internal)??;
    runner.remember_program(hash, program.clone());
    Ok(program)
}

/// Largest Wasm file loaded without the blocking pool (when its artifact
/// is cached): reading, hashing and mapping it take well under a
/// millisecond.
const INLINE_LOAD_MAX: u64 = 1 << 20;

/// Loads a program whose content hash and kind are already known (a worker
/// is told them by its parent), on the calling thread: from memory or the
/// disk cache without reading the Wasm file at all, else by reading and
/// compiling it (checked to still have that hash).
pub(crate) fn load_known(
    runner: &RunnerInner,
    path: &Path,
    hash: ContentHash,
    kind: WasmKind,
    cache: Option<&DiskCache>,
) -> Result<Program> {
    if let Some(program) = runner.cached_program(&hash) {
        runner.stats.record_memory_hit();
        return Ok(program);
    }
    let program = build(runner, cache, path, kind, hash, None)?;
    runner.remember_program(hash, program.clone());
    Ok(program)
}

/// Compiles a program from bytes built into Isola (`name` stands in for
/// its path), bypassing every cache.
pub(crate) fn from_builtin_bytes(
    runner: &RunnerInner,
    name: &str,
    bytes: &[u8],
) -> Result<Program> {
    let kind = WasmKind::detect(bytes).ok_or_else(|| Error::NotWasm { path: name.into() })?;
    build(
        runner,
        None,
        Path::new(name),
        kind,
        content_hash(bytes),
        Some(bytes),
    )
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
    if content_hash(&bytes) != *hash {
        return Err(Error::Read {
            path: path.to_owned(),
            source: std::io::Error::other("the file changed after it was loaded"),
        });
    }
    Ok(bytes.into())
}

fn build(
    runner: &RunnerInner,
    cache: Option<&DiskCache>,
    path: &Path,
    kind: WasmKind,
    hash: ContentHash,
    bytes: Option<&[u8]>,
) -> Result<Program> {
    let invalid = |err: wasmtime::Error| Error::Invalid {
        path: path.to_owned(),
        message: format!("{err:#}"),
    };
    let kind = match kind {
        WasmKind::Module => {
            let module = match runner.cached_artifact(cache, &hash, kind, |artifact| {
                // SAFETY: `artifact` passed the cache's integrity check, so it
                // is exactly what `Module::serialize` wrote for an engine with
                // the same compatibility hash (the cache directory is keyed
                // by it), and artifacts are replaced only by rename, so the
                // mapped file does not change.
                unsafe { Module::deserialize_open_file(&runner.engine, artifact.file) }
            }) {
                Some(module) => module,
                None => {
                    let bytes = wasm_bytes(path, &hash, bytes)?;
                    let module = Module::new(&runner.engine, &bytes).map_err(invalid)?;
                    runner.stats.record_compile();
                    tracing::debug!(path = %path.display(), "module compiled from wasm");
                    if let Ok(artifact) = module.serialize() {
                        runner.store_artifact(cache, &hash, kind, &artifact);
                    }
                    module
                }
            };
            if imports_shared_memory(&module) {
                check_module_imports(runner, path, &module)?;
                return Ok(Program {
                    inner: Arc::new(ProgramInner {
                        path: path.to_owned(),
                        hash,
                        kind: ProgramKind::Shared { module },
                    }),
                });
            }
            // Linking succeeds for the modules that will run; only a failure
            // needs the slower check that names the missing import.
            let linked = runner.module_linker.instantiate_pre(&module);
            if linked.is_err() {
                check_module_imports(runner, path, &module)?;
            }
            let command = exports_func(&module, "_start", 0, 0);
            let plugin = exports_func(&module, CORE_PLUGIN_EXPORT, 0, 1);
            if !command && !plugin {
                return Err(Error::UnsupportedWorld {
                    path: path.to_owned(),
                    detail: format!(
                        "it exports neither `_start` (a WASI command) nor \
                         `{CORE_PLUGIN_EXPORT}` (an Isola plugin)"
                    ),
                });
            }
            let pre = linked.map_err(invalid)?;
            ProgramKind::Module {
                pre,
                command,
                plugin,
            }
        }
        WasmKind::Component => {
            let component = match runner.cached_artifact(cache, &hash, kind, |artifact| {
                // SAFETY: as for modules above: verified bytes written by
                // `Component::serialize` for a compatible engine.
                unsafe { Component::deserialize_file(&runner.engine, &artifact.path) }
            }) {
                Some(component) => component,
                None => {
                    let bytes = wasm_bytes(path, &hash, bytes)?;
                    let component = Component::new(&runner.engine, &bytes).map_err(invalid)?;
                    runner.stats.record_compile();
                    tracing::debug!(path = %path.display(), "component compiled from wasm");
                    if let Ok(artifact) = component.serialize() {
                        runner.store_artifact(cache, &hash, kind, &artifact);
                    }
                    component
                }
            };
            let unsupported = |err: wasmtime::Error| Error::UnsupportedWorld {
                path: path.to_owned(),
                detail: format!("{err:#}"),
            };
            let pre = runner
                .component_linker()?
                .instantiate_pre(&component)
                .map_err(unsupported)?;
            let command = CommandPre::new(pre.clone()).ok();
            let plugin = PluginPre::new(pre.clone()).ok();
            if command.is_none() && plugin.is_none() {
                return Err(Error::UnsupportedWorld {
                    path: path.to_owned(),
                    detail: "it exports neither `wasi:cli/run` (a command) nor `run` of \
                             `isola:task/plugin`"
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
            kind,
        }),
    })
}

/// Names the first import the linker cannot satisfy, so the error says what
/// is missing instead of failing somewhere inside instantiation.
fn check_module_imports(runner: &RunnerInner, path: &Path, module: &Module) -> Result<()> {
    for import in module.imports() {
        if is_shared_memory_import(&import) {
            // Provided by the shared memory group the task runs in.
            continue;
        }
        let provided = runner
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

/// Whether `module` exports a function `name` with this many params and
/// results.
fn exports_func(module: &Module, name: &str, params: usize, results: usize) -> bool {
    matches!(
        module.get_export(name),
        Some(ExternType::Func(f)) if f.params().len() == params && f.results().len() == results
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_formats() {
        assert_eq!(
            WasmKind::detect(b"\0asm\x01\0\0\0rest"),
            Some(WasmKind::Module)
        );
        assert_eq!(
            WasmKind::detect(b"\0asm\x0d\0\x01\0rest"),
            Some(WasmKind::Component)
        );
        assert_eq!(WasmKind::detect(b"\0asm"), None, "too short");
        assert_eq!(WasmKind::detect(b"#!/bin/sh\necho hi\n"), None);
        assert_eq!(
            WasmKind::detect(b"\0asm\x02\0\0\0"),
            None,
            "unknown version"
        );
    }
}

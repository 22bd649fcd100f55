//! A loaded program: compiled, linked, ready to instantiate. Made by the
//! loader (the `loader` module); this module holds the types and what can be
//! told of a program without loading anything (its kind, its entries).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use wasmtime::{InstancePre, Module};
use wasmtime_wasi::p2::bindings::CommandPre;

use crate::cache::ContentHash;
use crate::error::{Error, Result};
use crate::imports::bindings::PluginPre;
use crate::spec::Entry;
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
    /// Whether it imports the host function call ([`imports_host_call`]),
    /// found once at load: every spawn asks.
    pub(crate) imports_host_call: bool,
    /// Its imports linked as typed host functions: param types by
    /// `interface#function`.
    pub(crate) typed_imports: std::sync::Arc<crate::host_fn::ImportTypes>,
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

pub(crate) use crate::channel::CORE_PLUGIN_EXPORT;

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

    /// The problem of running this program under `spec`'s host function
    /// grants: it imports the host call and the spec grants none (deny by
    /// default, refused before it starts rather than at its first call).
    pub(crate) fn host_call_problem(&self, spec: &crate::TaskSpec) -> Result<()> {
        if !spec.grants_host_calls() && self.inner.imports_host_call {
            return Err(Error::InvalidSpec {
                field: "host_functions".into(),
                message: format!(
                    "`{}` imports the host function call (`isola:task/host`), and the task is \
                     granted neither a host function (`host_functions`) nor a key-value store \
                     (`kv`)",
                    self.path().display()
                ),
            });
        }
        // Each typed interface it imports must be granted (the interface,
        // or one of its functions).
        for full in self.inner.typed_imports.keys() {
            let interface = crate::host_fn::interface_of(full).unwrap_or(full);
            let granted = spec
                .host_functions
                .iter()
                .any(|g| g == interface || crate::host_fn::interface_of(g) == Some(interface));
            if !granted {
                return Err(Error::InvalidSpec {
                    field: "host_functions".into(),
                    message: format!(
                        "`{}` imports `{interface}`, which the task is not granted (name \
                         `{interface}`, or its functions as `{interface}#name`, in \
                         `host_functions`)",
                        self.path().display()
                    ),
                });
            }
        }
        Ok(())
    }

    /// Hex SHA-256 of the Wasm bytes: the key of the compile caches.
    pub fn content_hash(&self) -> String {
        hex::encode(self.inner.hash)
    }
}

impl Program {
    /// The entry a task of this program starts at, or why it cannot.
    pub(crate) fn resolve_entry(&self, entry: Entry) -> Result<Resolved> {
        let program = self;
        let no_run = || Error::UnsupportedWorld {
            path: program.path().to_owned(),
            detail: format!(
                "it is {}; {}",
                match program.inner.kind {
                    ProgramKind::Component { .. } =>
                        "a component without the plugin export `run` of `isola:task/plugin`",
                    _ => "a core module without the plugin export `isola_run`",
                },
                if program.is_command() {
                    "it is a WASI command: run it (`isola run`, `Runner::run`)"
                } else {
                    "call one of its functions by name instead (`isola call --invoke \
                     'name(args)'`, `Runner::invoke`)"
                }
            ),
        };
        match entry {
            Entry::Run if program.is_plugin() => Ok(Resolved::Run),
            Entry::Run => Err(no_run()),
            Entry::Auto if program.is_command() => Ok(Resolved::Main),
            Entry::Auto if program.is_plugin() => Ok(Resolved::Run),
            Entry::Auto => Err(Error::UnsupportedWorld {
                path: program.path().to_owned(),
                detail: format!(
                    "it exports neither {}; call one of its functions by name instead \
                     (`isola call --invoke 'name(args)'`, `Runner::invoke`)",
                    match program.inner.kind {
                        ProgramKind::Component { .. } =>
                            "`wasi:cli/run` (a command) nor `run` of `isola:task/plugin`",
                        _ => "`_start` (a WASI command) nor `isola_run` (an Isola plugin)",
                    }
                ),
            }),
            // Checked against the program's types by `invoke::resolve`,
            // which the backends call.
            Entry::Invoke(call) => Ok(Resolved::Invoke(call)),
        }
    }
}

/// Whether `kind` imports the host function call (`isola:task/host` for a
/// component, `isola:task` `call` or `call-read` for a core module).
pub(crate) fn imports_host_call(kind: &ProgramKind) -> bool {
    let core = |module: &Module| {
        module.imports().any(|import| {
            import.module() == crate::channel::CORE_MODULE
                && matches!(import.name(), "call" | "call-read")
        })
    };
    match kind {
        ProgramKind::Module { pre, .. } => core(pre.module()),
        ProgramKind::Shared { module } => core(module),
        ProgramKind::Component { pre, .. } => {
            let component = pre.component();
            component
                .component_type()
                .imports(component.engine())
                .any(|(name, _)| name.starts_with("isola:task/host@"))
        }
    }
}

/// The export a task of a program actually starts at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Resolved {
    /// The command's `main` (`_start`, or `wasi:cli/run`).
    Main,
    /// The plugin's `run` (`isola_run`, or `run` of `isola:task/plugin`).
    Run,
    /// A function export by name: the call, checked against its type.
    Invoke(String),
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
    /// The stamp of a file, from its metadata.
    pub(crate) fn of(meta: &std::fs::Metadata) -> FileStamp {
        use std::os::unix::fs::MetadataExt;
        FileStamp {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            modified: meta.modified().ok(),
        }
    }

    /// The file's size in bytes.
    pub(crate) fn len(&self) -> u64 {
        self.len
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

//! Errors at the library boundary.
//!
//! A task that starts always ends with an [`crate::Outcome`]; these errors are
//! for what stops a task from starting: bad input, which the caller can fix.

use std::path::PathBuf;

/// Why a task could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The Wasm file could not be read.
    #[error("cannot read `{}`: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not WebAssembly (no `\0asm` header).
    #[error("`{}` is not a WebAssembly file (it does not start with `\\0asm`)", path.display())]
    NotWasm {
        /// The file.
        path: PathBuf,
    },
    /// The file is WebAssembly but does not validate or compile.
    #[error("`{}` is not valid WebAssembly: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What the validator said.
        message: String,
    },
    /// The module imports something Isola does not provide.
    #[error("`{}` imports `{module}::{name}`, which Isola does not provide", path.display())]
    UnknownImport {
        /// The file.
        path: PathBuf,
        /// Import module name.
        module: String,
        /// Import field name.
        name: String,
    },
    /// The program cannot run as given: a module or component without an
    /// entry Isola calls (or with one of the wrong type), or a component of
    /// a world Isola does not support.
    #[error("`{}` cannot run: {detail}", path.display())]
    UnsupportedWorld {
        /// The file.
        path: PathBuf,
        /// What is missing or extra.
        detail: String,
    },
    /// A field of the spec has a value that cannot work.
    #[error("invalid `{field}`: {message}")]
    InvalidSpec {
        /// The field, e.g. `dirs[0].host`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// The spec asks for something this build of Isola does not do yet.
    #[error("{0} is not supported yet")]
    Unsupported(String),
    /// The task's sandbox policy is [`crate::Sandbox::Required`], but this
    /// machine cannot give a layer of the OS sandbox: the layer and why
    /// (e.g. no cgroup Isola may make, for a user who is not root without
    /// a delegated cgroup). The machine's failure, not the caller's.
    #[error("the OS sandbox is required (sandbox = \"required\"), but {0}")]
    SandboxUnavailable(String),
    /// The runner has shut down.
    #[error("the runner has shut down")]
    ShutDown,
    /// The kernel refused memory (`ENOMEM`) while loading or starting the
    /// task: the machine, or the OS memory limit of the process doing the
    /// work. Told apart from [`Error::Internal`] by the error's type, so a
    /// worker under `RLIMIT_DATA` can report it as that limit.
    #[error("out of memory: {0}")]
    OutOfMemory(String),
    /// Isola itself failed.
    #[error("internal error: {0}")]
    Internal(String),
    /// The cluster a task was submitted to could not take it or give its
    /// result back (a server that went away, a store that refused a
    /// module): the machine's failure, not the spec's.
    #[error("cluster: {0}")]
    Remote(String),
}

impl Error {
    pub(crate) fn internal(err: impl std::fmt::Display) -> Error {
        Error::Internal(err.to_string())
    }

    /// Whether the error is the caller's (bad input) rather than Isola's.
    pub fn is_user_error(&self) -> bool {
        !matches!(
            self,
            Error::Internal(_)
                | Error::ShutDown
                | Error::OutOfMemory(_)
                | Error::Remote(_)
                | Error::SandboxUnavailable(_)
        )
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

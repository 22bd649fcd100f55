//! Isola runs WebAssembly programs as sandboxed tasks.
//!
//! A task is a WASI program (a preview1 command module or a preview2
//! command component) started with only the capabilities its [`TaskSpec`]
//! grants, within its [`Limits`], and ending with exactly one typed
//! [`Outcome`]. Node.js users will recognise the model: a task with
//! [`Isolation::Thread`] is a worker thread (its own `Store` and linear
//! memory, cheap to start); [`Isolation::Process`] is a forked child.
//!
//! # Examples
//!
//! ```no_run
//! # async fn demo() -> Result<(), isola::Error> {
//! use std::time::Duration;
//! use isola::{Outcome, Runner, TaskSpec};
//!
//! let runner = Runner::new()?;
//! let mut spec = TaskSpec::new("guest.wasm");
//! spec.args = vec!["input.txt".into()];
//! spec.limits.timeout = Some(Duration::from_secs(2));
//! let report = runner.run(spec).await?;
//! match report.outcome {
//!     Outcome::Exited { code } => println!("exit {code}: {}", report.stdout.text()),
//!     other => eprintln!("task did not finish: {other}"),
//! }
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! From the bottom up (each layer imports only the layers below it):
//!
//! - Data: [`spec`] (what a task is, plus the rulebook in `rules`),
//!   [`outcome`] (how it ended, and the one classifier), `error`, `size`.
//! - Runtime core: `cache` (integrity-checked artifacts), `output`,
//!   `ticker` (epochs), `channel` (the message queues), `region` (shared
//!   memory access), `state` (a store's data and WASI context), `imports`
//!   (the `isola:task` host functions), `special_files` (no FIFOs or
//!   devices opened in granted directories), `program` (a loaded program),
//!   `loader` (engine, linkers, caches), `store` (the one store recipe,
//!   entry by kind, and the timeout/cancel race), `handle` (what every
//!   backend returns), `parts` (what backends borrow from a runner), `ipc`
//!   (the worker protocol).
//! - Backends, none importing another: `thread` (tasks and kept plugins in
//!   this process), `process` (worker pool, supervisor, kept-plugin
//!   session), [`group`] (shared memory groups).
//! - Façades: [`runner`] (the [`Runner`]), `plugin` ([`PluginInstance`]),
//!   [`worker`] (the child side of process isolation), [`config`] and
//!   [`taskset`] (task sets).

#![warn(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod config;
pub mod group;
pub mod kv;
pub mod outcome;
pub mod runner;
pub mod spec;
pub mod taskset;
pub mod telemetry;
pub mod worker;

#[cfg(test)]
mod abi_doc_test;
mod cache;
mod channel;
mod error;
mod handle;
mod host_fn;
mod imports;
mod ipc;
mod loader;
mod output;
mod parts;
mod plugin;
mod process;
mod program;
mod region;
mod rules;
mod size;
mod size_text;
mod special_files;
mod state;
mod store;
mod thread;
mod ticker;
mod wire;

pub use channel::{CORE_MODULE, MessageReceiver, MessageSender, SendError};
pub use error::{Error, Result};
pub use group::{GroupSpec, SharedGroup};
pub use handle::{CancelHandle, TaskHandle, TaskId};
pub use host_fn::{HostCall, HostFunctions, HostResult};
pub use kv::{KvError, KvStore};
pub use outcome::{
    Captured, Frame, Limit, Outcome, Stream, TaskMetrics, TaskReport, TrapInfo, TrapKind,
};
pub use output::OutputReceiver;
pub use plugin::PluginInstance;
pub use program::Program;
pub use region::{OutOfBounds, Region};
pub use runner::{CacheDir, CacheStats, CallError, Runner, RunnerConfig};
pub use spec::{DirGrant, Isolation, Limits, Output, Sandbox, Stdin, TaskSpec};

/// Re-exported so embedders can name sizes in [`Limits`] without adding the
/// dependency themselves.
pub use bytesize::ByteSize;

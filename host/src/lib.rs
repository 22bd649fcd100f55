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
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), isola::Error> {
//! use std::time::Duration;
//! use isola::{Outcome, Output, Runner, TaskSpec};
//!
//! // A WASI command that writes "hi\n" to stdout (usually a `.wasm` file:
//! // `runner.run(TaskSpec::new("guest.wasm"))`).
//! const HI: &str = r#"(module
//!     (import "wasi_snapshot_preview1" "fd_write"
//!         (func $fd_write (param i32 i32 i32 i32) (result i32)))
//!     (memory (export "memory") 1)
//!     (data (i32.const 8) "hi\n")
//!     (func (export "_start")
//!         (i32.store (i32.const 0) (i32.const 8))
//!         (i32.store (i32.const 4) (i32.const 3))
//!         (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 16)))))"#;
//!
//! let runner = Runner::new()?;
//! let program = runner.load_bytes("hi.wat", HI).await?;
//! let mut spec = TaskSpec::new("hi");
//! spec.stdout = Output::Capture;
//! spec.limits.timeout = Some(Duration::from_secs(2));
//! let report = runner.spawn_program(&program, spec).await?.wait().await;
//! match report.outcome {
//!     Outcome::Exited { code } => println!("exit {code}: {}", report.stdout.text()),
//!     other => eprintln!("task did not finish: {other}"),
//! }
//! assert_eq!(report.stdout.text(), "hi\n");
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
//!   (the `isola:task` imports), `host_fn` (the embedder's host functions
//!   and a task's link to them), `kv` (`isola:kv` on SQLite),
//!   `special_files` (no FIFOs or
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
mod invoke;
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
pub use handle::{CancelHandle, Placed, Placement, TaskHandle, TaskId};
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

/// Re-exported so embedders name the exact wasmtime values and types
/// Isola's API takes ([`Runner::call_export`]'s `component::Val`s,
/// [`Runner::engine`]) without matching its version themselves.
pub use wasmtime;

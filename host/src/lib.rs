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
//! - [`spec`]: what a task is (serde data: module, args, env, dirs, stdin,
//!   output, limits, isolation).
//! - [`runner`]: the [`Runner`], owner of the engine, the linkers, the compile
//!   caches and the instance pool.
//! - `program`: reading, recognising, compiling and pre-instantiating Wasm.
//! - `cache`: the integrity-checked on-disk cache of precompiled artifacts.
//! - `task`: one running task: WASI context, store, timeout and cancel race,
//!   and the classification of its ending.
//! - `state` and `output`: the store's data (WASI, memory limiter) and the
//!   guest's output streams.
//! - [`outcome`]: how a task ended and what it cost.

pub mod config;
pub mod outcome;
pub mod runner;
pub mod spec;
pub mod taskset;

pub mod group;
pub mod process;

mod cache;
mod channel;
mod error;
mod output;
mod plugin;
mod program;
mod size;
mod state;
mod task;

pub use channel::{CORE_MODULE, MessageReceiver, MessageSender, SendError};
pub use error::{Error, Result};
pub use group::{GroupSpec, OutOfBounds, Region, SharedGroup};
pub use outcome::{
    Captured, Frame, Limit, Outcome, Stream, TaskMetrics, TaskReport, TrapInfo, TrapKind,
};
pub use output::OutputReceiver;
pub use plugin::PluginInstance;
pub use process::worker;
pub use program::Program;
pub use runner::{CacheDir, CacheStats, CallError, Runner, RunnerConfig};
pub use spec::{DirGrant, Isolation, Limits, Output, Stdin, TaskSpec};
pub use task::{CancelHandle, TaskHandle, TaskId};

/// Re-exported so embedders can name sizes in [`Limits`] without adding the
/// dependency themselves.
pub use bytesize::ByteSize;

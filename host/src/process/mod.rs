//! The process backend (parent side): each task in a child process that
//! hosts its own engine, behind the same [`crate::TaskHandle`] and
//! [`crate::Outcome`] as thread tasks.
//!
//! The child (a *worker*, whose side is the `worker` module) is the `isola`
//! binary started with [`WORKER_ARG`](crate::ipc::protocol::WORKER_ARG). It has an empty environment, its own
//! process group, dies with its parent (`PR_SET_PDEATHSIG`, plus
//! end-of-file on its stdin), and applies OS limits to itself once it knows
//! its task. It loads the parent's precompiled artifact from the disk cache
//! instead of compiling. Parent and child speak the framed protocol in
//! [`crate::ipc::protocol`].
//!
//! - [`netns`]: the network namespace sandboxed workers share.
//! - [`pool`]: the worker binary, pre-started and reusable workers, reaping.
//! - [`supervisor`]: one process task, from spec to report.
//! - [`session`]: a kept plugin instance in a worker of its own.

pub(crate) mod netns;
pub(crate) mod pool;
pub(crate) mod session;
pub(crate) mod supervisor;

pub(crate) use pool::ProcessBackend;
pub(crate) use supervisor::spawn;

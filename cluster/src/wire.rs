//! What the submitter and the workers send each other, as JSON.

use isola::{Outcome, TaskMetrics, TaskSpec};
use serde::{Deserialize, Serialize};

/// Header of an output chunk: which stream (`stdout`/`stderr`).
pub(crate) const STREAM_HEADER: &str = "Isola-Stream";
/// Header of an output chunk: the delivery of the task that wrote it.
pub(crate) const DELIVERY_HEADER: &str = "Isola-Delivery";

/// One task attempt on the queue.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct TaskMessage {
    /// The submitting run.
    pub(crate) run: String,
    /// The attempt's number within the run.
    pub(crate) task: u64,
    /// The task's name in its set, for the worker's logs.
    pub(crate) name: String,
    /// The spec as the submitter has it, with host-side things resolved:
    /// `inherit_env` already folded into `env`. Its paths are the
    /// submitter's and mean nothing to a worker: `wasm`, the directories
    /// and a stdin file come as the blobs below.
    pub(crate) spec: TaskSpec,
    /// SHA-256 of the Wasm file, hex.
    pub(crate) module: String,
    /// One packed archive per directory grant, in `spec.dirs` order.
    pub(crate) dirs: Vec<String>,
    /// The stdin file's contents, when `spec.stdin` is a file.
    pub(crate) stdin: Option<String>,
}

/// How an attempt ended, from the worker.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ResultMessage {
    pub(crate) task: u64,
    /// The worker's name.
    pub(crate) worker: String,
    /// Which delivery of the message this result comes from.
    pub(crate) delivery: u32,
    pub(crate) ending: Ending,
    /// Output chunks published, per stream (stdout, stderr), by this
    /// delivery.
    pub(crate) chunks: [u64; 2],
    /// What changed in each writable directory, in `spec.dirs` order
    /// (read-only ones have none).
    pub(crate) changes: Vec<Option<Changes>>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Ending {
    /// The task ran.
    Ran {
        outcome: Outcome,
        metrics: TaskMetrics,
    },
    /// The worker refused the spec (beyond its ceilings, or asking for
    /// what a remote task cannot have): the field and why.
    Refused { field: String, message: String },
    /// The task could not start on the worker (its runner refused it, or
    /// its files could not be fetched).
    StartFailed { message: String },
}

/// Files a task created, changed or deleted in one writable directory.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Changes {
    /// An archive of the created and changed files (and new directories).
    pub(crate) archive: Option<String>,
    /// Paths, relative to the directory, of the files and directories
    /// that were deleted (a directory is named without what it held).
    pub(crate) deleted: Vec<String>,
}

/// What a remote task cannot have, because it belongs to the submitting
/// process: the spec field and why, or `None`. The submitter runs such a
/// task itself (`Launch::runs_here`); a worker refuses one it is sent
/// anyway (the message is untrusted).
pub(crate) fn local_only(spec: &TaskSpec) -> Option<(&'static str, &'static str)> {
    if spec.stdin == isola::Stdin::Inherit {
        Some(("stdin", "stdin inherited from the submitting process"))
    } else if spec.shared_group.is_some() {
        Some((
            "shared_group",
            "a shared memory group, which does not span machines",
        ))
    } else if !spec.host_functions.is_empty() {
        Some(("host_functions", "the submitting process's host functions"))
    } else if spec.kv.is_some() {
        Some(("kv", "the submitting process's `isola:kv` store"))
    } else {
        None
    }
}

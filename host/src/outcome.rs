//! How a task ended, as typed data.
//!
//! Every spawned task ends with exactly one [`Outcome`]. It is decided from
//! typed values (`I32Exit`, `wasmtime::Trap`, Isola's own [`Limit`] errors),
//! never from the text of an error message.

use std::fmt;
use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

/// How a task ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// The guest finished: returned from `main` (code 0) or called
    /// `proc_exit` / `exit` with this code. A preview2 command that returns
    /// an error from `run` exits with 1.
    Exited {
        /// The exit code.
        code: i32,
    },
    /// A plugin's `run` returned this output (see [`crate::Runner::call`]).
    Returned {
        /// The output bytes.
        output: Vec<u8>,
    },
    /// A plugin's `run` returned this error.
    Rejected {
        /// The error message.
        error: String,
    },
    /// The guest trapped: a bug in the guest, or an `abort`.
    Trapped(TrapInfo),
    /// The task hit one of its limits and was stopped.
    LimitExceeded {
        /// Which limit, with its configured value.
        limit: Limit,
    },
    /// The task was cancelled through its handle before it finished.
    Cancelled,
    /// A process task's child died without reporting an outcome: killed by
    /// a signal, or exited abnormally (for example an OS resource limit).
    Crashed {
        /// The signal that ended the child, if a signal did.
        signal: Option<i32>,
        /// The child's exit status, if it exited.
        status: Option<i32>,
    },
    /// Isola itself failed while running the task (not the guest's fault).
    Failed {
        /// What went wrong.
        message: String,
    },
}

impl Outcome {
    /// Whether the task ran to completion with exit code 0.
    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Exited { code: 0 } | Outcome::Returned { .. })
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Exited { code } => write!(f, "exited with code {code}"),
            Outcome::Returned { output } => write!(f, "returned {} bytes", output.len()),
            Outcome::Rejected { error } => write!(f, "returned an error: {error}"),
            Outcome::Trapped(trap) => write!(f, "trapped: {}", trap.message),
            Outcome::LimitExceeded { limit } => write!(f, "limit exceeded: {limit}"),
            Outcome::Cancelled => f.write_str("cancelled"),
            Outcome::Crashed {
                signal: Some(signal),
                ..
            } => write!(f, "crashed: killed by signal {signal}"),
            Outcome::Crashed { status, .. } => match status {
                Some(status) => write!(f, "crashed: worker exited with status {status}"),
                None => f.write_str("crashed"),
            },
            Outcome::Failed { message } => write!(f, "failed: {message}"),
        }
    }
}

/// A trap, with enough detail to find the bug.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrapInfo {
    /// What kind of trap it was.
    pub kind: TrapKind,
    /// One line saying what happened, e.g. `out of bounds memory access`.
    pub message: String,
    /// The Wasm call stack at the trap, innermost frame first.
    pub backtrace: Vec<Frame>,
}

/// The kinds of trap a guest can hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum TrapKind {
    /// The Wasm call stack overflowed (deep or unbounded recursion).
    StackOverflow,
    /// A load or store outside linear memory.
    MemoryOutOfBounds,
    /// An `unreachable` instruction: Rust panics and `abort()` end here.
    Unreachable,
    /// Integer division by zero.
    DivisionByZero,
    /// Integer overflow in a division or conversion.
    IntegerOverflow,
    /// A float that cannot be converted to the target integer.
    BadConversion,
    /// An indirect call through a bad table entry or with the wrong type.
    BadIndirectCall,
    /// A misaligned atomic access.
    UnalignedAtomic,
    /// Any other trap, described by the message.
    Other,
}

impl TrapKind {
    pub(crate) fn from_wasmtime(trap: wasmtime::Trap) -> TrapKind {
        use wasmtime::Trap as T;
        match trap {
            T::StackOverflow => TrapKind::StackOverflow,
            T::MemoryOutOfBounds => TrapKind::MemoryOutOfBounds,
            T::UnreachableCodeReached => TrapKind::Unreachable,
            T::IntegerDivisionByZero => TrapKind::DivisionByZero,
            T::IntegerOverflow => TrapKind::IntegerOverflow,
            T::BadConversionToInteger => TrapKind::BadConversion,
            T::TableOutOfBounds | T::IndirectCallToNull | T::BadSignature => {
                TrapKind::BadIndirectCall
            }
            T::HeapMisaligned => TrapKind::UnalignedAtomic,
            _ => TrapKind::Other,
        }
    }
}

/// One frame of a Wasm backtrace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame {
    /// Name of the module the function is in, when it has one.
    pub module: Option<String>,
    /// Function name from the name section (demangled), when present.
    pub function: Option<String>,
    /// Index of the function in its module.
    pub func_index: u32,
    /// Byte offset of the trapping instruction in the module, when known.
    pub offset: Option<usize>,
}

impl fmt::Display for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.function {
            Some(name) => write!(f, "{name}")?,
            None => write!(f, "<wasm function {}>", self.func_index)?,
        }
        if let Some(module) = &self.module {
            write!(f, " in {module}")?;
        }
        if let Some(offset) = self.offset {
            write!(f, " at offset {offset:#x}")?;
        }
        Ok(())
    }
}

/// A limit a task can hit, with the value it was set to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Limit {
    /// Linear memory grew past [`crate::Limits::max_memory`].
    #[error("memory limit of {max}")]
    Memory {
        /// The configured maximum.
        #[serde(with = "crate::size::exact")]
        max: ByteSize,
    },
    /// The fuel budget ran out.
    #[error("fuel budget of {budget}")]
    Fuel {
        /// The configured budget.
        budget: u64,
    },
    /// A process task's worker reached its kernel memory limit
    /// ([`crate::Limits::process_memory`]).
    #[error("process memory limit of {max}")]
    ProcessMemory {
        /// The limit.
        #[serde(with = "crate::size::exact")]
        max: ByteSize,
    },
    /// The guest posted a message larger than
    /// [`crate::Limits::max_message_size`].
    #[error("message size limit of {max}")]
    MessageSize {
        /// The configured maximum.
        #[serde(with = "crate::size::exact")]
        max: ByteSize,
    },
    /// The guest posted more than [`crate::Limits::max_messages`] messages.
    #[error("message count limit of {max}")]
    Messages {
        /// The configured maximum.
        max: u64,
    },
    /// The task ran longer than its timeout.
    #[error("timeout of {}", humantime::format_duration(*after))]
    Timeout {
        /// The configured timeout.
        #[serde(with = "humantime_serde")]
        after: Duration,
    },
    /// The guest wrote more than [`crate::Limits::max_output`] to a stream.
    #[error("output limit of {max} on {stream}")]
    Output {
        /// Which stream.
        stream: Stream,
        /// The configured maximum.
        #[serde(with = "crate::size::exact")]
        max: ByteSize,
    },
}

/// One of the guest's output streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl fmt::Display for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        })
    }
}

/// What a task cost.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskMetrics {
    /// From `spawn` to the guest's first instruction: loading, compiling
    /// (when not cached) and instantiating.
    #[serde(with = "humantime_serde")]
    pub startup: Duration,
    /// From the guest's first instruction to its end.
    #[serde(with = "humantime_serde")]
    pub run_time: Duration,
    /// Largest linear memory size reached, all memories together.
    pub peak_memory: u64,
    /// Fuel consumed (about one unit per Wasm instruction).
    pub fuel_used: u64,
}

/// Everything a finished task leaves behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskReport {
    /// How the task ended.
    pub outcome: Outcome,
    /// What it cost.
    pub metrics: TaskMetrics,
    /// Captured stdout ([`crate::Output::Capture`]); empty otherwise.
    pub stdout: Captured,
    /// Captured stderr ([`crate::Output::Capture`]); empty otherwise.
    pub stderr: Captured,
}

/// Bytes captured from an output stream, up to the capture cap.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Captured {
    /// The bytes kept.
    pub bytes: Vec<u8>,
    /// Whether the guest wrote more than was kept.
    pub truncated: bool,
}

impl Captured {
    /// The captured bytes as text, with invalid UTF-8 replaced.
    pub fn text(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.bytes)
    }
}

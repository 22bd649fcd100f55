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
        /// What the worker said of its end, when it could: for a worker
        /// its OS sandbox stopped, `forbidden system call 41 (socket)`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
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
                reason: Some(reason),
                ..
            } => write!(f, "crashed: {reason}"),
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
    /// A host call the guest made with arguments the host refused: a
    /// pointer outside its memory, an invalid enum value or handle, a
    /// missing `memory` export. The message names the call.
    HostCall,
    /// The task's shared memory group stopped serving before the task ran:
    /// the group's coordinator (its `main`) ended.
    GroupClosed,
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
    /// A process task's worker crashed at the OS sandbox's limit on its
    /// threads and processes (the cgroup's `pids.max`): a worker never
    /// comes near it on its own, so a guest that took it over made it.
    #[error("limit of {max} threads and processes")]
    Pids {
        /// The limit.
        max: u64,
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
        /// The configured timeout; in JSON `after_ms`, milliseconds, as
        /// every duration of a task set's report.
        #[serde(rename = "after_ms", with = "after_ms")]
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

/// A timeout as milliseconds in JSON: a whole number when it is whole
/// milliseconds (so it reads back exactly), else a fraction to the
/// microsecond, as the report's other `*_ms` fields.
mod after_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        match u64::try_from(d.as_millis()) {
            Ok(ms) if d.subsec_nanos().is_multiple_of(1_000_000) => s.serialize_u64(ms),
            _ => s.serialize_f64(d.as_micros() as f64 / 1000.0),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Ms {
            Whole(u64),
            Fraction(f64),
        }
        match Ms::deserialize(d)? {
            Ms::Whole(ms) => Ok(Duration::from_millis(ms)),
            Ms::Fraction(ms) => {
                Duration::try_from_secs_f64(ms / 1000.0).map_err(serde::de::Error::custom)
            }
        }
    }
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

/// Why [`crate::Runner::call`], [`crate::Runner::plugin`] or
/// [`crate::PluginInstance::call`] returned no output.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The task could not start (nothing of the guest ran).
    #[error(transparent)]
    Start(#[from] crate::Error),
    /// The plugin's `run` returned this error.
    #[error("the plugin returned an error: {0}")]
    Rejected(String),
    /// The task ended without returning: trapped (also in a kept
    /// instance's `start` function or `_initialize`), hit a limit, crashed
    /// or was cancelled. The report says how, with the guest's output.
    #[error("the plugin did not return: {}", .0.outcome)]
    Ended(Box<TaskReport>),
}

/// Why an instance whose caller dropped a call half-way is unusable.
pub(crate) fn abandoned() -> Outcome {
    Outcome::Failed {
        message: "an earlier call was abandoned before it answered".into(),
    }
}

/// The answer to a call on a kept instance an earlier call left unusable.
pub(crate) fn unusable(outcome: &Outcome) -> CallError {
    ended(
        Outcome::Failed {
            message: format!("the instance is unusable after an earlier call ended: {outcome}"),
        },
        TaskMetrics::default(),
    )
}

/// A call of a kept instance that ended without returning. Its output is
/// not in the report: a kept instance's output is not captured.
pub(crate) fn ended(outcome: Outcome, metrics: TaskMetrics) -> CallError {
    CallError::Ended(Box::new(TaskReport {
        outcome,
        metrics,
        stdout: Default::default(),
        stderr: Default::default(),
    }))
}

// ---------------------------------------------------------------------------
// Classification: the one place an ending becomes an `Outcome`.
// ---------------------------------------------------------------------------

/// How a guest's run ended, before it is classified. Every backend (thread
/// task, kept plugin, group member, worker process) reduces its ending to
/// this and calls [`Ending::into_outcome`].
#[derive(Debug)]
pub(crate) enum Ending {
    /// The command's `main` returned (0) or a component's `wasi:cli/run`
    /// returned an error (1).
    Exited(i32),
    /// A plugin's `run` returned its output or its error.
    Returned(Result<Vec<u8>, String>),
    /// The guest, or a host call it made, ended with this error.
    Error(wasmtime::Error),
    /// Stopped from outside.
    Stopped(Stop),
}

/// What classification needs to know about where the guest ran.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budget {
    /// The fuel the guest was given (`u64::MAX` when unlimited): the budget
    /// an out-of-fuel trap reports.
    pub(crate) fuel: u64,
    /// The kernel memory limit of the process the guest runs in (a worker
    /// under `RLIMIT_DATA`), if any: an `ENOMEM` is then that limit.
    pub(crate) os_memory_limit: Option<u64>,
}

impl Budget {
    /// A guest in the host's own process with `fuel`.
    pub(crate) fn fuel(fuel: u64) -> Budget {
        Budget {
            fuel,
            os_memory_limit: None,
        }
    }
}

impl Ending {
    /// The outcome of this ending.
    pub(crate) fn into_outcome(self, budget: &Budget) -> Outcome {
        match self {
            Ending::Exited(code) => Outcome::Exited { code },
            Ending::Returned(Ok(output)) => Outcome::Returned { output },
            Ending::Returned(Err(error)) => Outcome::Rejected { error },
            Ending::Error(err) => classify(&err, budget),
            Ending::Stopped(stop) => stop.outcome(),
        }
    }
}

/// Why a task was stopped from outside: also the typed error a stopped
/// guest traps with where the stop is raised inside the store (shared
/// memory group tasks), so [`classify`] recognises it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Stop {
    /// [`crate::CancelHandle::cancel`] or a dropped run.
    #[error("cancelled")]
    Cancelled,
    /// The wall-clock limit, after this long.
    #[error("timed out after {0:?}")]
    TimedOut(Duration),
}

impl Stop {
    fn outcome(self) -> Outcome {
        match self {
            Stop::Cancelled => Outcome::Cancelled,
            Stop::TimedOut(after) => Outcome::LimitExceeded {
                limit: Limit::Timeout { after },
            },
        }
    }
}

/// Exit status of a worker that ended because an allocation failed under
/// its task's process memory limit (the worker module's `Allocator`). A worker
/// ends with no other such status (0, or 70 when its protocol fails; a
/// panic is the binary's own), and a guest cannot choose it.
pub(crate) const WORKER_OUT_OF_MEMORY: i32 = 86;

/// Exit status of a worker that its OS sandbox stopped: it made a system
/// call outside the seccomp allowlist, which its `SIGSYS` handler reports
/// on its stderr (with the call's number) before exiting with this status.
pub(crate) const WORKER_FORBIDDEN_SYSCALL: i32 = 87;

/// How a worker process's task ended, as its parent saw it: the one input
/// of the process backend's classification.
#[derive(Debug)]
pub(crate) struct WorkerEnding {
    /// The outcome the worker reported (`finished`), if it did.
    pub(crate) reported: Option<Outcome>,
    /// A frame that broke the protocol, if one did.
    pub(crate) protocol_error: Option<String>,
    /// Why the parent stopped the worker, if it did.
    pub(crate) stop: Option<Stop>,
    /// The worker's exit status once reaped, if it was.
    pub(crate) status: Option<std::process::ExitStatus>,
    /// The `RLIMIT_DATA` the worker ran its task under (the `data_bytes`
    /// of the limits sent with the task), if it was given one.
    pub(crate) data_limit: Option<u64>,
    /// The system call the worker's sandbox refused, as the worker said on
    /// its stderr, if it did.
    pub(crate) forbidden_syscall: Option<ForbiddenSyscall>,
    /// What the worker's cgroup counted, read once it was reaped, if it had
    /// one and died without a report.
    pub(crate) cgroup: Option<CgroupEvents>,
}

/// What the kernel counted against a worker's cgroup limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CgroupEvents {
    /// Times the kernel's OOM killer killed in the group (`oom_kill`).
    pub(crate) oom_kills: u64,
    /// The group's memory limit in bytes, if it has the memory controller.
    pub(crate) memory_max: Option<u64>,
    /// Times a thread or process could not start at `pids.max`.
    pub(crate) pids_max_hits: u64,
    /// The group's `pids.max`.
    pub(crate) pids_max: u64,
}

/// A system call a worker's sandbox refused: its number on this
/// architecture and its name, when known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ForbiddenSyscall {
    /// The number (x86_64 numbering on x86_64).
    pub(crate) number: i64,
    /// Its name, e.g. `socket`.
    pub(crate) name: Option<&'static str>,
}

impl fmt::Display for ForbiddenSyscall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "forbidden system call {}", self.number)?;
        match self.name {
            Some(name) => write!(f, " ({name})"),
            None => Ok(()),
        }
    }
}

impl WorkerEnding {
    /// The task's outcome. What the worker reported wins, except that a
    /// worker told to stop for a timeout reports "cancelled": the reason
    /// the parent stopped it is the truth. A worker that reported nothing
    /// crashed, unless the parent stopped it or it broke the protocol.
    pub(crate) fn into_outcome(self) -> Outcome {
        use std::os::unix::process::ExitStatusExt;
        match (self.reported, self.protocol_error, self.stop) {
            (Some(Outcome::Cancelled), _, Some(stop)) => stop.outcome(),
            (Some(reported), _, _) => reported,
            (None, Some(message), _) => Outcome::Failed { message },
            (None, None, Some(stop)) => stop.outcome(),
            (None, None, None) => match (self.status.and_then(|s| s.code()), self.data_limit) {
                // An allocation failed under the limit: the limit, not a crash.
                (Some(WORKER_OUT_OF_MEMORY), Some(max)) => Outcome::LimitExceeded {
                    limit: Limit::ProcessMemory { max: ByteSize(max) },
                },
                // Stopped by its seccomp filter: that, whatever the cgroup
                // counted.
                (code, _)
                    if code == Some(WORKER_FORBIDDEN_SYSCALL)
                        || self.status.and_then(|s| s.signal()) == Some(libc::SIGSYS) =>
                {
                    crashed(self.status, self.forbidden_syscall)
                }
                // Killed by the kernel for its cgroup's memory: memory the
                // rlimit does not count (shared or kernel memory).
                (_, data_limit) if self.cgroup.is_some_and(|e| e.oom_kills > 0) => {
                    let max = self.cgroup.and_then(|e| e.memory_max).or(data_limit);
                    Outcome::LimitExceeded {
                        limit: Limit::ProcessMemory {
                            max: ByteSize(max.unwrap_or(0)),
                        },
                    }
                }
                _ if self.cgroup.is_some_and(|e| e.pids_max_hits > 0) => Outcome::LimitExceeded {
                    limit: Limit::Pids {
                        max: self.cgroup.map_or(0, |e| e.pids_max),
                    },
                },
                _ => crashed(self.status, self.forbidden_syscall),
            },
        }
    }
}

/// A worker that died without a report and without a limit to name: its
/// signal or exit `status`, and the OS sandbox's reason if its filter
/// stopped it (the `forbidden` call it named, if it could).
fn crashed(
    status: Option<std::process::ExitStatus>,
    forbidden: Option<ForbiddenSyscall>,
) -> Outcome {
    use std::os::unix::process::ExitStatusExt;
    let code = status.and_then(|s| s.code());
    let signal = status.and_then(|s| s.signal());
    Outcome::Crashed {
        signal,
        status: code,
        reason: match (code, forbidden) {
            (Some(WORKER_FORBIDDEN_SYSCALL), Some(call)) => {
                Some(format!("the OS sandbox stopped the worker: {call}"))
            }
            (Some(WORKER_FORBIDDEN_SYSCALL), None) => {
                Some("the OS sandbox stopped the worker: a forbidden system call".to_owned())
            }
            // The kernel kills with SIGSYS itself when the call was made
            // with SIGSYS blocked (glibc's `posix_spawn` blocks every
            // signal around its clone), so the worker's reporter never ran.
            _ if signal == Some(libc::SIGSYS) => Some(
                "the OS sandbox stopped the worker: a forbidden system call, made with signals \
                 blocked (so not named)"
                    .to_owned(),
            ),
            _ => None,
        },
    }
}

/// The outcome of a task a worker process could not start. Under the
/// worker's kernel memory limit (`data_bytes`), an allocation refused while
/// loading or starting is that limit, told by the error's type: the
/// kernel's `ENOMEM` ([`crate::Error::OutOfMemory`]), or a Wasm file that
/// could not be read into memory (a worker reads it to compile when the
/// parent's cache could not hold the artifact; `std::fs::read` reports the
/// buffer it could not reserve as `ErrorKind::OutOfMemory`, with no errno).
/// The machine itself rarely runs out.
pub(crate) fn refused(err: &crate::Error, data_bytes: u64) -> Outcome {
    let limit = || Outcome::LimitExceeded {
        limit: Limit::ProcessMemory {
            max: ByteSize(data_bytes),
        },
    };
    match err {
        crate::Error::OutOfMemory(_) => limit(),
        crate::Error::Read { source, .. } if is_io_out_of_memory(source) => limit(),
        other => Outcome::Failed {
            message: other.to_string(),
        },
    }
}

/// Whether an I/O error is memory refused: the kernel's `ENOMEM`, or std's
/// `ErrorKind::OutOfMemory` for a buffer it could not reserve.
pub(crate) fn is_io_out_of_memory(err: &std::io::Error) -> bool {
    err.raw_os_error() == Some(libc::ENOMEM) || err.kind() == std::io::ErrorKind::OutOfMemory
}

/// Whether the error, or an error it wraps, is the kernel refusing memory
/// (`ENOMEM`), as `std::io::Error` (or std's own `OutOfMemory`) or as the
/// `rustix` error wasmtime's own `mmap` calls return.
pub(crate) fn is_out_of_memory(err: &wasmtime::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(is_io_out_of_memory)
            || cause
                .downcast_ref::<rustix::io::Errno>()
                .is_some_and(|errno| *errno == rustix::io::Errno::NOMEM)
    })
}

/// Decides the outcome of a guest error from its typed contents, never
/// from its text: an `I32Exit` is an exit, Isola's [`Limit`] a limit, a
/// [`Stop`] a cancel or timeout, a [`wasmtime::Trap`] a trap (out of fuel
/// is the fuel limit), and an allocation the kernel refused (`ENOMEM`)
/// under a process's memory limit is that limit. Anything else is
/// [`Outcome::Failed`].
pub(crate) fn classify(err: &wasmtime::Error, budget: &Budget) -> Outcome {
    if let Some(exit) = err.downcast_ref::<wasmtime_wasi::I32Exit>() {
        return Outcome::Exited { code: exit.0 };
    }
    if let Some(limit) = err.downcast_ref::<Limit>() {
        return Outcome::LimitExceeded {
            limit: limit.clone(),
        };
    }
    if let Some(stop) = err.downcast_ref::<Stop>() {
        return stop.outcome();
    }
    if let Some(fault) = err.downcast_ref::<HostFault>() {
        return Outcome::Failed {
            message: fault.to_string(),
        };
    }
    if let Some(message) = host_call_fault(err) {
        return Outcome::Trapped(TrapInfo {
            kind: TrapKind::HostCall,
            message,
            backtrace: backtrace(err),
        });
    }
    let Some(trap) = err.downcast_ref::<wasmtime::Trap>() else {
        if let Some(max) = budget.os_memory_limit
            && is_out_of_memory(err)
        {
            return Outcome::LimitExceeded {
                limit: Limit::ProcessMemory { max: ByteSize(max) },
            };
        }
        return Outcome::Failed {
            message: format!("{err:#}"),
        };
    };
    if *trap == wasmtime::Trap::OutOfFuel {
        return Outcome::LimitExceeded {
            limit: Limit::Fuel {
                budget: budget.fuel,
            },
        };
    }
    let kind = TrapKind::from_wasmtime(*trap);
    let message = trap_message(*trap);
    let backtrace = backtrace(err);
    Outcome::Trapped(TrapInfo {
        kind,
        message,
        backtrace,
    })
}

/// The guest's Wasm backtrace, when wasmtime captured one.
fn backtrace(err: &wasmtime::Error) -> Vec<Frame> {
    err.downcast_ref::<wasmtime::WasmBacktrace>()
        .map(|bt| {
            bt.frames()
                .iter()
                .map(|frame| Frame {
                    module: frame.module().name().map(str::to_owned),
                    function: frame.func_name().map(demangle),
                    func_index: frame.func_index(),
                    offset: frame.module_offset(),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A host call refused the arguments a guest gave it (a bad pointer, enum
/// value, handle or region): the guest's fault, reported as a trap of kind
/// [`TrapKind::HostCall`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{call}` refused its arguments: {message}")]
pub(crate) struct BadHostCall {
    /// The host function, as the guest imports it (`isola:task.read`).
    pub(crate) call: &'static str,
    /// What was wrong.
    pub(crate) message: String,
}

/// Why a host function call gave the guest no result: the host's side
/// failed, not the guest. Ends the task as [`Outcome::Failed`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub(crate) enum HostFault {
    /// The function panicked; the message is the panic's.
    #[error("host function `{function}` panicked: {message}")]
    Panicked {
        /// The function, as registered.
        function: String,
        /// The panic's message.
        message: String,
    },
    /// A worker's call could not reach its parent, or got no answer.
    #[error("the host did not answer a host function call")]
    Unreachable,
}

/// The message of a guest-caused host call failure, if `err` is one: Isola's
/// own [`BadHostCall`], or a WASI preview1 call whose arguments wiggle
/// could not decode (`wiggle::GuestError`: an invalid enum or flag value, a
/// pointer out of bounds or misaligned, invalid UTF-8).
fn host_call_fault(err: &wasmtime::Error) -> Option<String> {
    err.chain().find_map(|cause| {
        if let Some(bad) = cause.downcast_ref::<BadHostCall>() {
            return Some(bad.to_string());
        }
        cause
            .downcast_ref::<wiggle::GuestError>()
            .map(|_| format!("a WASI call refused its arguments: {err:#}"))
    })
}

/// The trap's description without wasmtime's `wasm trap: ` prefix.
fn trap_message(trap: wasmtime::Trap) -> String {
    let text = trap.to_string();
    match text.strip_prefix("wasm trap: ") {
        Some(rest) => rest.to_owned(),
        None => text,
    }
}

/// A readable function name: Rust symbols demangled, without their hash.
fn demangle(name: &str) -> String {
    match rustc_demangle::try_demangle(name) {
        Ok(symbol) => format!("{symbol:#}"),
        Err(_) => name.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn in_worker(limit: u64) -> Budget {
        Budget {
            fuel: u64::MAX,
            os_memory_limit: Some(limit),
        }
    }

    #[test]
    fn enomem_is_told_by_its_type_wherever_it_sits_in_the_chain() {
        let limit = ProcessMemory(1 << 20);
        // As std reports it, under context.
        let io = wasmtime::Error::new(std::io::Error::from_raw_os_error(libc::ENOMEM))
            .context("failed to allocate a linear memory");
        // As wasmtime's own mmap reports it.
        let errno = wasmtime::Error::new(rustix::io::Errno::NOMEM).context("mmap failed");
        for err in [io, errno] {
            assert!(is_out_of_memory(&err), "{err:#}");
            assert_eq!(
                classify(&err, &in_worker(limit.0)),
                limit.outcome(),
                "{err:#}"
            );
            // Outside a worker there is no OS limit to blame.
            assert!(matches!(
                classify(&err, &Budget::fuel(u64::MAX)),
                Outcome::Failed { .. }
            ));
        }
    }

    #[test]
    fn text_that_looks_like_enomem_is_not_enomem() {
        // A guest-chosen or unrelated message must not become a limit.
        let err = wasmtime::format_err!("Cannot allocate memory (os error 12)");
        assert!(!is_out_of_memory(&err));
        assert!(matches!(
            classify(&err, &in_worker(1 << 20)),
            Outcome::Failed { .. }
        ));
        let other_errno = wasmtime::Error::new(std::io::Error::from_raw_os_error(libc::EACCES));
        assert!(!is_out_of_memory(&other_errno));
    }

    #[test]
    fn stops_traps_exits_and_limits_are_classified_by_type() {
        let budget = Budget::fuel(500);
        let stop = wasmtime::Error::new(Stop::TimedOut(Duration::from_secs(2)));
        assert_eq!(
            classify(&stop, &budget),
            Outcome::LimitExceeded {
                limit: Limit::Timeout {
                    after: Duration::from_secs(2)
                }
            }
        );
        let fuel = wasmtime::Error::new(wasmtime::Trap::OutOfFuel);
        assert_eq!(
            classify(&fuel, &budget),
            Outcome::LimitExceeded {
                limit: Limit::Fuel { budget: 500 }
            }
        );
        let exit = wasmtime::Error::new(wasmtime_wasi::I32Exit(3));
        assert_eq!(classify(&exit, &budget), Outcome::Exited { code: 3 });
        assert_eq!(
            Ending::Returned(Err("no".into())).into_outcome(&budget),
            Outcome::Rejected { error: "no".into() }
        );
    }

    #[test]
    fn a_worker_told_to_stop_for_a_timeout_reports_the_timeout() {
        let after = Duration::from_millis(100);
        let ending = WorkerEnding {
            reported: Some(Outcome::Cancelled),
            protocol_error: None,
            stop: Some(Stop::TimedOut(after)),
            status: None,
            data_limit: None,
            forbidden_syscall: None,
            cgroup: None,
        };
        assert_eq!(
            ending.into_outcome(),
            Outcome::LimitExceeded {
                limit: Limit::Timeout { after }
            }
        );
        let silent = WorkerEnding {
            reported: None,
            protocol_error: None,
            stop: None,
            status: None,
            data_limit: None,
            forbidden_syscall: None,
            cgroup: None,
        };
        assert!(matches!(silent.into_outcome(), Outcome::Crashed { .. }));
    }

    #[test]
    fn a_worker_out_of_memory_under_its_limit_is_that_limit() {
        use std::os::unix::process::ExitStatusExt;
        let ended = |code: i32, data_limit| WorkerEnding {
            reported: None,
            protocol_error: None,
            stop: None,
            status: Some(std::process::ExitStatus::from_raw(code << 8)),
            data_limit,
            forbidden_syscall: None,
            cgroup: None,
        };
        assert_eq!(
            ended(WORKER_OUT_OF_MEMORY, Some(1 << 20)).into_outcome(),
            ProcessMemory(1 << 20).outcome()
        );
        // Without a limit, or with another status, it is what it is.
        assert!(matches!(
            ended(WORKER_OUT_OF_MEMORY, None).into_outcome(),
            Outcome::Crashed {
                status: Some(WORKER_OUT_OF_MEMORY),
                ..
            }
        ));
        assert!(matches!(
            ended(70, Some(1 << 20)).into_outcome(),
            Outcome::Crashed {
                status: Some(70),
                ..
            }
        ));
    }

    #[test]
    fn a_worker_killed_at_its_cgroup_limits_is_that_limit() {
        use std::os::unix::process::ExitStatusExt;
        let killed = |events: Option<CgroupEvents>| WorkerEnding {
            reported: None,
            protocol_error: None,
            stop: None,
            status: Some(std::process::ExitStatus::from_raw(libc::SIGKILL)),
            data_limit: Some(1 << 30),
            forbidden_syscall: None,
            cgroup: events,
        };
        let events = CgroupEvents {
            oom_kills: 1,
            memory_max: Some(96 << 20),
            pids_max_hits: 0,
            pids_max: 64,
        };
        assert_eq!(
            killed(Some(events)).into_outcome(),
            ProcessMemory(96 << 20).outcome()
        );
        assert_eq!(
            killed(Some(CgroupEvents {
                oom_kills: 0,
                pids_max_hits: 2,
                ..events
            }))
            .into_outcome(),
            Outcome::LimitExceeded {
                limit: Limit::Pids { max: 64 }
            }
        );
        // Stopped by the seccomp filter: that, whatever the group counted.
        let filtered = WorkerEnding {
            status: Some(std::process::ExitStatus::from_raw(
                WORKER_FORBIDDEN_SYSCALL << 8,
            )),
            ..killed(Some(CgroupEvents {
                pids_max_hits: 1,
                ..events
            }))
        };
        assert!(matches!(
            filtered.into_outcome(),
            Outcome::Crashed {
                status: Some(WORKER_FORBIDDEN_SYSCALL),
                reason: Some(_),
                ..
            }
        ));
        // Nothing counted, or no cgroup: a crash, as before.
        for events in [
            Some(CgroupEvents {
                oom_kills: 0,
                ..events
            }),
            None,
        ] {
            assert!(matches!(
                killed(events).into_outcome(),
                Outcome::Crashed {
                    signal: Some(libc::SIGKILL),
                    ..
                }
            ));
        }
    }

    /// A process memory limit of this many bytes.
    struct ProcessMemory(u64);

    impl ProcessMemory {
        fn outcome(&self) -> Outcome {
            Outcome::LimitExceeded {
                limit: Limit::ProcessMemory {
                    max: ByteSize(self.0),
                },
            }
        }
    }
}

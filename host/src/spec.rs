//! What a task is: plain, serializable data, separate from the runtime
//! objects that run it.
//!
//! A [`TaskSpec`] grants capabilities explicitly. Everything left at its
//! default is denied: no environment variables, no directories, no stdin, no
//! network. Limits default to the values documented on [`Limits`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

/// Where a task runs.
///
/// Mirrors Node's choice between `worker_threads` and `child_process.fork`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// A Wasm instance in its own `Store` on the host's threads: cheap to
    /// start, isolated by Wasm's memory safety, but sharing the host's
    /// address space. The default.
    #[default]
    Thread,
    /// A child process that hosts its own engine: a host-side crash, leak or
    /// runaway allocation ends only the child.
    Process,
}

impl std::fmt::Display for Isolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Isolation::Thread => "thread",
            Isolation::Process => "process",
        })
    }
}

/// Everything needed to start one task.
///
/// # Examples
///
/// ```
/// use isola::{TaskSpec, Limits};
/// use std::time::Duration;
///
/// let mut spec = TaskSpec::new("guest.wasm");
/// spec.args = vec!["--verbose".into()];
/// spec.env.insert("MODE".into(), "fast".into());
/// spec.limits.timeout = Some(Duration::from_secs(5));
/// # let _ = spec;
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    /// The WebAssembly file: a WASI preview1 command module or a WASI
    /// preview2 command component (told apart from the bytes).
    pub wasm: PathBuf,
    /// Program name the guest sees as `argv[0]`. By default the file name of
    /// [`TaskSpec::wasm`].
    #[serde(default)]
    pub argv0: Option<String>,
    /// Arguments after `argv[0]`. Empty by default.
    #[serde(default)]
    pub args: Vec<String>,
    /// Environment variables with explicit values. Empty by default: a guest
    /// sees no variable it was not given.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Names of host environment variables passed through with their current
    /// value. A name that is unset on the host is skipped.
    #[serde(default)]
    pub inherit_env: Vec<String>,
    /// Host directories the guest may open. None by default.
    #[serde(default)]
    pub dirs: Vec<DirGrant>,
    /// What the guest reads on stdin. Closed by default.
    #[serde(default)]
    pub stdin: Stdin,
    /// Where the guest's stdout goes. Captured by default.
    #[serde(default)]
    pub stdout: Output,
    /// Where the guest's stderr goes. Captured by default.
    #[serde(default)]
    pub stderr: Output,
    /// Start data for the task, like Node's `workerData`: read by the guest
    /// through the task interface, and the argument of `run` for plugin
    /// tasks. None by default.
    #[serde(default)]
    pub input: Option<Vec<u8>>,
    /// Resource limits.
    #[serde(default)]
    pub limits: Limits,
    /// Thread or process isolation. Thread by default.
    #[serde(default)]
    pub isolation: Isolation,
    /// The shared memory group the task joins (see
    /// [`crate::Runner::create_group`]): the task then runs the group's
    /// module, in its memory. None by default. Thread isolation only.
    #[serde(default)]
    pub shared_group: Option<String>,
    /// Lets the task's worker process run further tasks that also opt in,
    /// instead of exiting after this one. Process isolation only; off by
    /// default.
    ///
    /// A reused worker skips process start-up and keeps the programs it has
    /// loaded, so a run of short tasks costs far less. The price: tasks that
    /// opt in share a process one after another (each still in its own
    /// `Store`, with its own limits), so a fault that corrupts the process
    /// could reach a later task. A worker is only reused after a task it
    /// reported in full; one that was cancelled, timed out, crashed, or hit
    /// an OS limit is ended as usual.
    #[serde(default)]
    pub reuse_worker: bool,
    /// The OS sandbox around this task's worker process, overriding the
    /// runner's [`crate::RunnerConfig::sandbox`] (the default, `None`).
    /// Process isolation only: a thread task runs in the host process,
    /// which no such layer surrounds, so the rulebook refuses the field on
    /// one.
    #[serde(default)]
    pub sandbox: Option<Sandbox>,
    /// The host functions ([`crate::RunnerConfig::host_functions`]) the
    /// task may call, by name. None by default: a guest that imports the
    /// host call (`isola:task/host`) with none granted is refused at start,
    /// and a call to a function not granted is an error value. Each must be
    /// registered on the runner that runs the task.
    #[serde(default)]
    pub host_functions: Vec<String>,
    /// The SQLite database the task's `isola:kv` calls use (created if
    /// absent), shared with every task of the runner that names the same
    /// file, at either isolation level. None by default: no `isola:kv`.
    #[serde(default)]
    pub kv: Option<PathBuf>,
}

impl TaskSpec {
    /// The program's name as the task reports it: its `argv0`, else its
    /// Wasm file's name.
    pub(crate) fn program_name(&self) -> std::borrow::Cow<'_, str> {
        match &self.argv0 {
            Some(name) => std::borrow::Cow::Borrowed(name.as_str()),
            None => self
                .wasm
                .file_name()
                .unwrap_or(self.wasm.as_os_str())
                .to_string_lossy(),
        }
    }

    /// Whether the task may make host calls at all: it is granted a host
    /// function or an `isola:kv` store.
    pub(crate) fn grants_host_calls(&self) -> bool {
        !self.host_functions.is_empty() || self.kv.is_some()
    }

    /// A spec that runs `wasm` with no arguments, no capabilities and the
    /// default limits.
    pub fn new(wasm: impl Into<PathBuf>) -> Self {
        TaskSpec {
            wasm: wasm.into(),
            argv0: None,
            args: Vec::new(),
            env: BTreeMap::new(),
            inherit_env: Vec::new(),
            dirs: Vec::new(),
            stdin: Stdin::default(),
            stdout: Output::default(),
            stderr: Output::default(),
            input: None,
            limits: Limits::default(),
            isolation: Isolation::default(),
            shared_group: None,
            reuse_worker: false,
            sandbox: None,
            host_functions: Vec::new(),
            kv: None,
        }
    }
}

/// A host directory made visible to the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirGrant {
    /// Directory on the host. Must exist when the task starts.
    pub host: PathBuf,
    /// Path the guest opens it by. By default the same as `host`.
    #[serde(default)]
    pub guest: Option<String>,
    /// Whether the guest may create, change or delete files under it.
    /// Read-only by default.
    #[serde(default)]
    pub writable: bool,
}

impl DirGrant {
    /// Path the guest sees this directory at.
    pub fn guest_path(&self) -> String {
        self.guest
            .clone()
            .unwrap_or_else(|| self.host.to_string_lossy().into_owned())
    }
}

/// The guest's standard input.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stdin {
    /// Closed: reads return end of file at once. The default.
    #[default]
    Closed,
    /// These bytes, then end of file.
    Bytes(Vec<u8>),
    /// The contents of this host file.
    File(PathBuf),
    /// The host process's own stdin (what `isola run` uses).
    Inherit,
}

/// Where one of the guest's output streams goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Output {
    /// Kept in memory and returned with the outcome, up to
    /// [`Limits::capture`] bytes (the rest is dropped and the report says
    /// the capture was truncated). The default.
    #[default]
    Capture,
    /// Delivered as it is written through [`crate::TaskHandle::take_stdout`] /
    /// [`crate::TaskHandle::take_stderr`]. A reader that falls behind slows the
    /// guest down instead of growing a buffer. A reader that goes away (the
    /// receiver is dropped) closes the stream: the guest's writes to it then
    /// fail with `EPIPE`, and a guest that writes on regardless is ended
    /// with exit status 141, as SIGPIPE ends a native writer.
    Pipe,
    /// Written straight to the host process's matching stream as the guest
    /// writes it (flushed, newline or not). If that stream's reader goes
    /// away (a closed pipe), the guest's writes fail as for [`Output::Pipe`].
    Inherit,
    /// Thrown away (still counted against [`Limits::max_output`]).
    Discard,
}

/// Resource limits of one task. Each has a default chosen so that a hostile
/// guest cannot take the host down, without getting in the way of ordinary
/// programs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Most linear memory (all memories together) the task may use.
    /// By default [`Limits::DEFAULT_MAX_MEMORY`] (1 GiB).
    #[serde(with = "crate::size::exact")]
    pub max_memory: ByteSize,
    /// Fuel budget (about one unit per Wasm instruction). Unlimited by
    /// default.
    pub fuel: Option<u64>,
    /// Wall-clock limit from the moment the guest starts running. None by
    /// default.
    #[serde(with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Most bytes the guest may write to each of stdout and stderr; past it
    /// the task is stopped with [`crate::Limit::Output`]. Unlimited by
    /// default.
    #[serde(with = "crate::size::exact_opt")]
    pub max_output: Option<ByteSize>,
    /// Most bytes kept per stream when the stream is captured. By default
    /// [`Limits::DEFAULT_CAPTURE`] (16 MiB).
    #[serde(with = "crate::size::exact")]
    pub capture: ByteSize,
    /// Process tasks only: the kernel's limit on the worker's writable
    /// memory (`RLIMIT_DATA`), which covers the guest's linear memory and
    /// everything the host side allocates for it. By default `max_memory`
    /// plus 512 MiB.
    #[serde(with = "crate::size::exact_opt")]
    pub process_memory: Option<ByteSize>,
    /// Messages each direction of the task's channel holds before the sender
    /// waits. By default 64.
    pub message_queue: usize,
    /// Largest message the guest may post. By default
    /// [`Limits::DEFAULT_MAX_MESSAGE_SIZE`] (16 MiB).
    #[serde(with = "crate::size::exact")]
    pub max_message_size: ByteSize,
    /// Most messages the guest may post in all. Unlimited by default.
    pub max_messages: Option<u64>,
}

impl Limits {
    /// Memory a worker process may use beyond its task's linear memory by
    /// default: the engine, compiled code, fiber stack and WASI host state.
    pub const DEFAULT_PROCESS_MEMORY_HEADROOM: ByteSize = ByteSize::mib(512);

    /// The kernel memory limit (`RLIMIT_DATA`) of a process task's worker,
    /// in bytes: [`Limits::process_memory`], else `max_memory` plus
    /// [`Limits::DEFAULT_PROCESS_MEMORY_HEADROOM`].
    pub fn process_memory_or_default(&self) -> u64 {
        match self.process_memory {
            Some(limit) => limit.as_u64(),
            None => self
                .max_memory
                .as_u64()
                .saturating_add(Self::DEFAULT_PROCESS_MEMORY_HEADROOM.as_u64()),
        }
    }

    /// Default linear memory cap: 1 GiB.
    pub const DEFAULT_MAX_MEMORY: ByteSize = ByteSize::gib(1);
    /// Default capture buffer per stream: 16 MiB.
    pub const DEFAULT_CAPTURE: ByteSize = ByteSize::mib(16);
    /// Default message queue length per direction: 64.
    pub const DEFAULT_MESSAGE_QUEUE: usize = 64;
    /// Default largest guest message: 16 MiB.
    pub const DEFAULT_MAX_MESSAGE_SIZE: ByteSize = ByteSize::mib(16);
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_memory: Self::DEFAULT_MAX_MEMORY,
            fuel: None,
            timeout: None,
            max_output: None,
            capture: Self::DEFAULT_CAPTURE,
            process_memory: None,
            message_queue: Self::DEFAULT_MESSAGE_QUEUE,
            max_message_size: Self::DEFAULT_MAX_MESSAGE_SIZE,
            max_messages: None,
        }
    }
}

/// Where a task starts: which export of its program is entered.
///
/// Travels to worker processes inside the `run` frame, hence serde.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Entry {
    /// `main` if the program has one (a command), else the plugin `run`
    /// with the spec's input.
    #[default]
    Auto,
    /// The plugin `run` with the spec's input ([`crate::Runner::call`]).
    Run,
    /// A function export called by name, `name(arg, …)` with WAVE
    /// arguments ([`crate::Runner::invoke`]); its results are the task's
    /// returned output, in WAVE, one per line.
    Invoke(String),
}

/// Whether a process task's worker runs inside an OS sandbox, around
/// wasmtime's own: a seccomp-BPF allowlist of system calls and Landlock
/// file-system rules (see the README's security model). Thread tasks run in
/// the host process, which has no such layer: this applies to process
/// isolation only.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sandbox {
    /// Every layer the kernel provides; a layer it lacks is skipped with a
    /// warning in the log (`ISOLA_LOG=warn`). The default.
    #[default]
    On,
    /// No OS sandbox: the worker can make any system call and open any
    /// file its user can.
    Off,
    /// Every layer, or the task does not run: a kernel without one of them
    /// fails the task ([`crate::Outcome::Failed`]) naming the layer and
    /// why.
    Required,
}

impl std::fmt::Display for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Sandbox::On => "on",
            Sandbox::Off => "off",
            Sandbox::Required => "required",
        })
    }
}

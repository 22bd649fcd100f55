//! The per-task store data: WASI context, memory accounting, the task
//! channel; and the building of a task's WASI context from its spec.

use std::any::Any;
use std::path::Path;

use wasmtime::ResourceLimiter;
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{FsPerms, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::channel::ChannelState;
use crate::error::{Error, Result};
use crate::host_fn::{HostLink, HostResult};
use crate::outcome::{Limit, Stream};
use crate::output::{OutputPipe, OutputReceiver};
use crate::spec::{Stdin, TaskSpec};

/// Largest table (in elements) a task may declare or grow to, whatever
/// runs it: the instance pool's per-table room, applied by the loader at
/// load and by the limiter on growth even where there is no pool (the
/// one-shot CLI, worker processes), so a module gets the same verdict from
/// every entry point. Tables live in host memory outside the linear-memory
/// budget; at this size (8 bytes an element) they cannot matter.
pub(crate) const MAX_TABLE_ELEMENTS: usize = 20_000;

/// Most tables a core module may declare: the instance pool's default,
/// applied everywhere for the same reason as [`MAX_TABLE_ELEMENTS`].
pub(crate) const MAX_TABLES_PER_MODULE: u32 = 1;

/// Most memories a core module may define: the instance pool's default,
/// applied everywhere for the same reason as [`MAX_TABLE_ELEMENTS`].
pub(crate) const MAX_MEMORIES_PER_MODULE: u32 = 1;

/// What each task's `Store` holds.
///
/// Both kinds of guest use one WASI context: `WasiP1Ctx` carries the full
/// preview2 context that components need, plus the preview1 adapter state
/// that core modules need.
pub(crate) struct TaskState {
    pub(crate) wasi: WasiP1Ctx,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) channel: ChannelState,
    /// Where the guest's host function calls go.
    pub(crate) host: HostLink,
    /// A core module's call result (or error message) between `call` and
    /// `call-read`.
    pub(crate) call_result: Option<Vec<u8>>,
    /// Data a backend keeps beside the task's own (the link of a shared
    /// memory group's coordinator to its group). Opaque here, so that the
    /// store's data does not depend on the backends that use it.
    pub(crate) extension: Option<Box<dyn Any + Send>>,
}

impl TaskState {
    /// A state with no grants, no channel and no memory budget, for stores
    /// that are not tasks (linker setup, group coordinators).
    pub(crate) fn inert() -> TaskState {
        TaskState {
            wasi: wasmtime_wasi::WasiCtxBuilder::new().build_p1(),
            limiter: MemoryLimiter::new(0),
            channel: ChannelState::closed(),
            host: HostLink::None,
            call_result: None,
            extension: None,
        }
    }

    /// Calls the host function `function` for the guest: its result or
    /// error value; arguments past the message size limit, or a fault of
    /// the host's side, end the task.
    pub(crate) async fn call_host(
        &mut self,
        function: String,
        args: Vec<u8>,
    ) -> wasmtime::Result<HostResult> {
        let max = self.channel.max_message_size();
        if !crate::host_fn::call_fits(&function, args.len(), max) {
            return Err(wasmtime::Error::new(Limit::MessageSize {
                max: bytesize::ByteSize(max),
            }));
        }
        // The guest runs no Wasm while it waits, as in `recv`.
        let _idle = self.channel.ticker.as_ref().map(|t| t.pause());
        self.host
            .call(function, args, max)
            .await
            .map_err(wasmtime::Error::new)
    }
}

impl WasiView for TaskState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        self.wasi.ctx()
    }
}

/// Everything a task needs that is built (and checked) before it starts.
pub(crate) struct Prepared {
    pub(crate) wasi: WasiCtxBuilder,
    pub(crate) stdout: OutputPipe,
    pub(crate) stderr: OutputPipe,
    pub(crate) stdout_rx: Option<OutputReceiver>,
    pub(crate) stderr_rx: Option<OutputReceiver>,
}

/// Turns the spec's grants into a WASI context. Errors name the spec field.
///
/// The grants themselves are checked by the caller ([`crate::rules`]);
/// this only fails if a granted directory or file cannot be opened now.
pub(crate) fn prepare(
    program_path: &Path,
    spec: &TaskSpec,
    stdin_override: Option<wasmtime_wasi::cli::AsyncStdinStream>,
) -> Result<Prepared> {
    let mut wasi = WasiCtxBuilder::new();
    // Deny the network outright; `WasiCtxBuilder` allows the socket APIs
    // (with every address refused) by default.
    wasi.allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);

    let argv0 = spec.argv0.clone().unwrap_or_else(|| {
        program_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "main.wasm".into())
    });
    wasi.arg(argv0).args(&spec.args);

    for (key, value) in &spec.env {
        wasi.env(key, value);
    }
    for key in &spec.inherit_env {
        if let Ok(value) = std::env::var(key) {
            wasi.env(key, value);
        }
    }

    for (i, dir) in spec.dirs.iter().enumerate() {
        let perms = if dir.writable {
            FsPerms::ReadWrite
        } else {
            FsPerms::ReadOnly
        };
        wasi.preopened_dir(&dir.host, dir.guest_path(), perms)
            .map_err(|err| Error::InvalidSpec {
                field: format!("dirs[{i}].host"),
                message: format!("cannot open `{}`: {err}", dir.host.display()),
            })?;
    }

    match (&spec.stdin, stdin_override) {
        (_, Some(stream)) => {
            wasi.stdin(stream);
        }
        (Stdin::Closed, None) => {}
        (Stdin::Bytes(bytes), None) => {
            wasi.stdin(wasmtime_wasi::p2::pipe::MemoryInputPipe::new(bytes.clone()));
        }
        (Stdin::File(path), None) => {
            let file = std::fs::File::open(path).map_err(|err| Error::InvalidSpec {
                field: "stdin".into(),
                message: format!("cannot open `{}`: {err}", path.display()),
            })?;
            wasi.stdin(wasmtime_wasi::cli::InputFile::new(file));
        }
        (Stdin::Inherit, None) => {
            wasi.inherit_stdin();
        }
    }

    let limits = &spec.limits;
    let (stdout, stdout_rx) = OutputPipe::new(
        Stream::Stdout,
        spec.stdout,
        limits.max_output,
        limits.capture,
    );
    let (stderr, stderr_rx) = OutputPipe::new(
        Stream::Stderr,
        spec.stderr,
        limits.max_output,
        limits.capture,
    );
    wasi.stdout(stdout.clone()).stderr(stderr.clone());

    Ok(Prepared {
        wasi,
        stdout,
        stderr,
        stdout_rx,
        stderr_rx,
    })
}

/// Enforces [`crate::Limits::max_memory`] over all of a task's memories
/// and records the peak.
///
/// Growth past the limit traps with a typed [`Limit::Memory`] error instead
/// of making `memory.grow` return -1: a Rust guest turns -1 into an `abort`,
/// which would be indistinguishable from a guest bug.
#[derive(Debug)]
pub(crate) struct MemoryLimiter {
    max: u64,
    current: u64,
    peak: u64,
    last_growth: u64,
    os_limit: Option<u64>,
}

impl MemoryLimiter {
    pub(crate) fn new(max: u64) -> Self {
        MemoryLimiter {
            max,
            current: 0,
            peak: 0,
            last_growth: 0,
            os_limit: None,
        }
    }

    /// In a worker process under a kernel memory limit: a growth the OS
    /// refuses is reported as [`Limit::ProcessMemory`].
    pub(crate) fn with_os_limit(mut self, os_limit: Option<u64>) -> Self {
        self.os_limit = os_limit;
        self
    }

    /// The kernel memory limit set by [`MemoryLimiter::with_os_limit`].
    pub(crate) fn os_limit(&self) -> Option<u64> {
        self.os_limit
    }

    /// Largest total linear memory reached so far.
    pub(crate) fn peak(&self) -> u64 {
        self.peak
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Past the memory's own declared maximum the engine refuses the
        // growth anyway: `memory.grow` returns -1, as the guest expects,
        // and nothing is counted.
        if maximum.is_some_and(|maximum| desired > maximum) {
            return Ok(false);
        }
        let growth = desired.saturating_sub(current) as u64;
        let total = self.current.saturating_add(growth);
        if total > self.max {
            return Err(wasmtime::Error::new(Limit::Memory {
                max: bytesize::ByteSize(self.max),
            }));
        }
        self.current = total;
        self.last_growth = growth;
        self.peak = self.peak.max(total);
        Ok(true)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        // The engine refused a growth we had already counted.
        self.current -= self.last_growth;
        self.last_growth = 0;
        match self.os_limit {
            // The kernel refused the memory (told by the error's type) under
            // the process's OS limit: that limit was reached. Trapping with
            // it beats letting the guest abort on -1.
            Some(max) if crate::outcome::is_out_of_memory(&error) => {
                Err(wasmtime::Error::new(Limit::ProcessMemory {
                    max: bytesize::ByteSize(max),
                }))
            }
            _ => Ok(()),
        }
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

//! The per-task store data: WASI context and resource accounting.

use wasmtime::ResourceLimiter;
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{WasiCtxView, WasiView};

use crate::channel::ChannelState;
use crate::group::GroupLink;
use crate::outcome::Limit;

/// Largest table a guest may grow to. Tables live in host memory outside the
/// linear-memory budget, so they get a fixed bound of their own.
const MAX_TABLE_ELEMENTS: usize = 1_000_000;

/// What each task's `Store` holds.
///
/// Both kinds of guest use one WASI context: `WasiP1Ctx` carries the full
/// preview2 context that components need, plus the preview1 adapter state
/// that core modules need.
pub(crate) struct TaskState {
    pub(crate) wasi: WasiP1Ctx,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) channel: ChannelState,
    /// Set for the coordinator of a shared memory group.
    pub(crate) group: Option<GroupLink>,
}

impl TaskState {
    /// A state with no grants, no channel and no memory budget, for stores
    /// that are not tasks (linker setup, group coordinators).
    pub(crate) fn inert() -> TaskState {
        TaskState {
            wasi: wasmtime_wasi::WasiCtxBuilder::new().build_p1(),
            limiter: MemoryLimiter::new(0),
            channel: ChannelState::closed(),
            group: None,
        }
    }
}

impl WasiView for TaskState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        self.wasi.ctx()
    }
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
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
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

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        // The engine refused a growth we had already counted.
        self.current -= self.last_growth;
        self.last_growth = 0;
        match self.os_limit {
            // Under an OS limit, the refusal is almost surely that limit;
            // trapping with it beats letting the guest abort on -1.
            Some(max) => Err(wasmtime::Error::new(Limit::ProcessMemory {
                max: bytesize::ByteSize(max),
            })),
            None => Ok(()),
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

//! Shared memory groups: tasks that share one Wasm linear memory with each
//! other and with the host, like workers sharing a `SharedArrayBuffer`.
//!
//! # How a group works
//!
//! A program built for `wasm32-wasip1-threads` keeps its stack, heap and
//! statics in the one memory it imports (`env.memory`, shared). Two
//! instances started the ordinary way (`_start`) in one memory would use the
//! same stack and run initialisation twice. So a group is a set of instances
//! of **one module** that start the way wasi-threads starts a thread:
//!
//! 1. Creating the group creates the `SharedMemory` (its maximum fixed
//!    then) and starts the *coordinator*: instance 0, running the module's
//!    `_start`. Its `main` calls the guest SDK's `group::serve`, which may
//!    first publish regions of memory, then tells the host it is ready and
//!    waits for tasks (`isola:task::group-next-task`).
//! 2. Spawning a task in the group queues it; the coordinator receives it
//!    and calls `std::thread::spawn`. wasi-libc's `pthread_create` allocates
//!    the new thread's stack and TLS with the guest's own allocator and calls
//!    the `wasi::thread-spawn` import, which Isola implements: it creates a
//!    new instance of the module in the task's own `Store` (its own WASI
//!    context, limits, channel and output) over the same memory, and enters
//!    it through the module's `wasi_thread_start` export on an OS thread of
//!    its own.
//!
//! wasmtime dropped its wasi-threads implementation in version 47; this is
//! the part of it Isola needs.
//!
//! # Waiting and stopping
//!
//! Group tasks may block in `memory.atomic.wait32`, which blocks the OS
//! thread outright and is not interrupted by epochs. That is why each group
//! task has an OS thread, and why cancel and timeout work by raising a stop
//! flag that the task's epoch callback turns into a trap, then waking every
//! possible waiter of the memory (a notify at each 4-byte address) until the
//! task has stopped. Woken waiters that should not have been re-check their
//! condition and wait again, as futex users must.
//!
//! # What is (not) isolated
//!
//! Tasks in a group can read and corrupt each other's data, by design; a
//! task that traps while holding a guest lock (its allocator's, say) can
//! block the others. Shared memory is tier 2 in wasmtime.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytesize::ByteSize;
use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;
use wasmtime::{Caller, ExternType, InstancePre, Linker, MemoryType, SharedMemory, Store};

use crate::channel::ChannelState;
use crate::error::{Error, Result};
use crate::handle::{About, TaskHandle, TaskId};
use crate::loader::MAX_GROUPS;
use crate::outcome::{
    BadHostCall, Budget, Ending, Outcome, Stop, TaskMetrics, TaskReport, TrapInfo, TrapKind,
};
use crate::parts::Parts;
use crate::program::{Program, ProgramKind};
use crate::region::{Region, whole};
use crate::spec::TaskSpec;
use crate::state::{MemoryLimiter, Prepared, TaskState, prepare};
use crate::store;
use crate::ticker::{TickerGuard, TickerHandle};

/// Wasm pages are 64 KiB.
const PAGE: u64 = 64 * 1024;

/// How a shared memory group is set up.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupSpec {
    /// The group's name, which tasks use to join it.
    pub name: String,
    /// The module every task of the group is an instance of: a
    /// `wasm32-wasip1-threads` program whose `main` calls the guest SDK's
    /// `group::serve`.
    pub wasm: PathBuf,
    /// Memory size when the group starts. By default the module's own
    /// minimum.
    #[serde(default, with = "crate::size::exact_opt")]
    pub initial: Option<ByteSize>,
    /// The most the memory may grow to, fixed for the group's life and
    /// counted against [`crate::RunnerConfig::shared_memory_budget`]. Must
    /// be within what the module declares.
    #[serde(with = "crate::size::exact")]
    pub maximum: ByteSize,
}

/// A running shared memory group. Cheap to clone.
///
/// Dropping every clone (and the runner's reference, see
/// [`crate::Runner::close_group`]) stops the coordinator.
#[derive(Clone)]
pub struct SharedGroup {
    pub(crate) inner: Arc<GroupInner>,
}

impl std::fmt::Debug for SharedGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedGroup")
            .field("name", &self.inner.name)
            .field("size", &self.size())
            .finish()
    }
}

pub(crate) struct GroupInner {
    pub(crate) name: String,
    program: Program,
    pre: InstancePre<TaskState>,
    pub(crate) memory: SharedMemory,
    pub(crate) maximum: u64,
    regions: Mutex<HashMap<String, (u32, u32)>>,
    queue: Mutex<VecDeque<PendingTask>>,
    queued: Notify,
    closed: AtomicBool,
    /// Why the group runs no more tasks, once its coordinator ended.
    ended: Mutex<Option<String>>,
    ready: Mutex<Option<oneshot::Sender<()>>>,
    next_tid: AtomicU32,
}

/// A task waiting for the coordinator to give it a thread.
pub(crate) struct PendingTask {
    pub(crate) state: TaskState,
    pub(crate) fuel: u64,
    pub(crate) stop: Arc<StopFlag>,
    pub(crate) report: oneshot::Sender<(Outcome, TaskMetrics)>,
    pub(crate) spawned_at: Instant,
}

/// Why a group task must stop, set from outside its thread.
#[derive(Debug, Default)]
pub(crate) struct StopFlag {
    /// 0 running, 1 cancelled, 2 timed out.
    state: AtomicU8,
    timeout: Mutex<Option<Duration>>,
    finished: AtomicBool,
}

impl StopFlag {
    fn request(&self) -> Option<Stop> {
        match self.state.load(Ordering::Acquire) {
            1 => Some(Stop::Cancelled),
            2 => Some(Stop::TimedOut(
                self.timeout
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .unwrap_or_default(),
            )),
            _ => None,
        }
    }

    pub(crate) fn cancel(&self) {
        let _ = self
            .state
            .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire);
    }

    pub(crate) fn time_out(&self, after: Duration) {
        *self.timeout.lock().unwrap_or_else(|e| e.into_inner()) = Some(after);
        let _ = self
            .state
            .compare_exchange(0, 2, Ordering::AcqRel, Ordering::Acquire);
    }

    pub(crate) fn is_finished(&self) -> bool {
        self.finished.load(Ordering::Acquire)
    }
}

/// The group side of a store: what the coordinator and members may ask.
pub(crate) struct GroupLink {
    pub(crate) group: Arc<GroupInner>,
    /// The coordinator's task between `group-next-task` and the
    /// `thread-spawn` its `std::thread::spawn` makes.
    pub(crate) handing_over: Option<Box<PendingTask>>,
    /// The engine, to run new members on; weak, so a coordinator does not
    /// keep a dropped runner's engine (and its instance pool) alive.
    pub(crate) engine: wasmtime::EngineWeak,
    /// The runner's epoch ticker, for new members.
    pub(crate) ticker: Option<TickerHandle>,
}

/// The group link of a coordinator's store, if it is one.
fn link(state: &TaskState) -> Option<&GroupLink> {
    state.extension.as_ref()?.downcast_ref()
}

/// As [`link`], mutable.
fn link_mut(state: &mut TaskState) -> Option<&mut GroupLink> {
    state.extension.as_mut()?.downcast_mut()
}

impl SharedGroup {
    /// The group's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Current size of the memory in bytes.
    pub fn size(&self) -> u64 {
        self.inner.memory.data_size() as u64
    }

    /// The fixed maximum size of the memory in bytes.
    pub fn maximum(&self) -> u64 {
        self.inner.maximum
    }

    /// The region a guest published under `name`.
    pub fn region(&self, name: &str) -> Option<Region> {
        let regions = self.inner.regions.lock().unwrap_or_else(|e| e.into_inner());
        let (offset, len) = *regions.get(name)?;
        Some(Region::new(
            self.inner.memory.clone(),
            offset as usize,
            len as usize,
        ))
    }

    /// Names of the published regions.
    pub fn region_names(&self) -> Vec<String> {
        let regions = self.inner.regions.lock().unwrap_or_else(|e| e.into_inner());
        let mut names: Vec<String> = regions.keys().cloned().collect();
        names.sort();
        names
    }

    /// The program every task of the group runs.
    pub fn program(&self) -> &Program {
        &self.inner.program
    }
}

impl GroupInner {
    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<PendingTask>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stops handing out tasks once the queued ones are taken; the
    /// coordinator's `serve` then returns.
    pub(crate) fn close(&self) {
        // Under the queue's lock, so no task is queued after the coordinator
        // saw the group closed and empty.
        let queue = self.queue();
        self.closed.store(true, Ordering::Release);
        drop(queue);
        self.queued.notify_waiters();
        self.queued.notify_one();
    }

    /// The coordinator ended (its `main` returned or trapped): nothing will
    /// take tasks any more. Closes the group and ends every task it holds
    /// (queued, or handed over but never started) with an outcome that
    /// says why, so none waits forever.
    fn coordinator_ended(&self, why: &str, handed_over: Option<PendingTask>) {
        let drained: Vec<PendingTask> = {
            let mut queue = self.queue();
            self.closed.store(true, Ordering::Release);
            *self.ended.lock().unwrap_or_else(|e| e.into_inner()) = Some(why.to_owned());
            queue.drain(..).collect()
        };
        self.queued.notify_waiters();
        let outcome = Outcome::Trapped(TrapInfo {
            kind: TrapKind::GroupClosed,
            message: format!(
                "shared memory group `{}` closed before the task ran: its coordinator ended \
                 ({why})",
                self.name
            ),
            backtrace: Vec::new(),
        });
        for task in handed_over.into_iter().chain(drained) {
            let _ = task.report.send((outcome.clone(), TaskMetrics::default()));
        }
    }

    /// Why the group takes no tasks, if it does not.
    fn closed_reason(&self) -> Option<String> {
        if !self.closed.load(Ordering::Acquire) {
            return None;
        }
        let ended = self.ended.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Some(match ended {
            Some(why) => format!("its coordinator ended ({why})"),
            None => "it was closed".to_owned(),
        })
    }

    /// Queues `task` for the coordinator; false (and the task dropped) if
    /// the group is closed.
    fn enqueue(&self, task: PendingTask) -> bool {
        let mut queue = self.queue();
        if self.closed.load(Ordering::Acquire) {
            return false;
        }
        queue.push_back(task);
        drop(queue);
        self.queued.notify_one();
        true
    }

    /// Takes back the task stopped by `stop` if the coordinator has not
    /// taken it yet, and ends it with `outcome`: a queued task's timeout or
    /// cancel needs no coordinator. Whether it was still queued.
    fn withdraw(&self, stop: &Arc<StopFlag>, outcome: Outcome) -> bool {
        let task = {
            let mut queue = self.queue();
            let at = queue.iter().position(|t| Arc::ptr_eq(&t.stop, stop));
            at.and_then(|at| queue.remove(at))
        };
        match task {
            Some(task) => {
                let _ = task.report.send((outcome, TaskMetrics::default()));
                true
            }
            None => false,
        }
    }

    async fn next_task(&self) -> Option<PendingTask> {
        loop {
            let notified = self.queued.notified();
            if let Some(task) = self
                .queue
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop_front()
            {
                return Some(task);
            }
            if self.closed.load(Ordering::Acquire) {
                return None;
            }
            notified.await;
        }
    }

    /// Wakes every waiter on the memory, so that a stopped task blocked in
    /// `memory.atomic.wait32` reaches its next epoch check.
    fn wake_all(&self) {
        let size = self.memory.data_size() as u64;
        let mut addr = 0;
        while addr < size {
            let _ = self.memory.atomic_notify(addr, u32::MAX);
            addr += 4;
        }
    }
}

/// The shared memory groups of a runner, by name, and the sum of their
/// maximums against the runner's budget.
pub(crate) struct Groups {
    budget: u64,
    registry: Mutex<Registry>,
}

#[derive(Default)]
struct Registry {
    live: HashMap<String, SharedGroup>,
    /// Names being created: taken, so that a second `create` of the same
    /// name fails at once rather than after the first one's `.await`.
    creating: HashMap<String, u64>,
    /// Sum of the maximums of the live and creating groups.
    reserved: u64,
}

impl Groups {
    /// No groups yet; at most `budget` bytes of shared memory in all.
    pub(crate) fn new(budget: u64) -> Groups {
        Groups {
            budget,
            registry: Mutex::new(Registry::default()),
        }
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The group registered under `name`.
    pub(crate) fn get(&self, name: &str) -> Option<SharedGroup> {
        self.registry().live.get(name).cloned()
    }

    /// Stops the group `name` from taking tasks, forgets it and returns its
    /// budget.
    pub(crate) fn close(&self, name: &str) {
        let mut registry = self.registry();
        if let Some(group) = registry.live.remove(name) {
            registry.reserved = registry.reserved.saturating_sub(group.maximum());
            drop(registry);
            group.inner.close();
        }
    }

    /// Claims `name` and `bytes` of the budget for a group being created,
    /// in one step under one lock.
    fn claim(&self, name: &str, bytes: u64) -> Result<()> {
        let mut registry = self.registry();
        if registry.live.contains_key(name) || registry.creating.contains_key(name) {
            return Err(Error::InvalidSpec {
                field: format!("group `{name}`.name"),
                message: "a group of this name already exists".into(),
            });
        }
        if registry.live.len() + registry.creating.len() >= MAX_GROUPS as usize {
            return Err(Error::InvalidSpec {
                field: format!("group `{name}`"),
                message: format!("a runner holds at most {MAX_GROUPS} shared memory groups"),
            });
        }
        if registry.reserved.saturating_add(bytes) > self.budget {
            return Err(Error::InvalidSpec {
                field: format!("group `{name}`.maximum"),
                message: format!(
                    "{} would exceed the runner's shared memory budget ({} of {} in use)",
                    ByteSize(bytes),
                    ByteSize(registry.reserved),
                    ByteSize(self.budget)
                ),
            });
        }
        registry.reserved += bytes;
        registry.creating.insert(name.to_owned(), bytes);
        Ok(())
    }

    /// Ends a claim: registers the created group, or returns the budget.
    fn settle(&self, name: &str, created: Option<SharedGroup>) {
        let mut registry = self.registry();
        let bytes = registry.creating.remove(name).unwrap_or(0);
        match created {
            Some(group) => {
                registry.live.insert(name.to_owned(), group);
            }
            None => registry.reserved = registry.reserved.saturating_sub(bytes),
        }
    }

    /// Checks the module can form a group and creates it.
    ///
    /// # Errors
    ///
    /// As [`crate::Runner::create_group`].
    pub(crate) async fn create(&self, parts: &Parts, spec: GroupSpec) -> Result<SharedGroup> {
        let (program, initial, maximum) = check(parts, &spec).await?;
        self.claim(&spec.name, maximum)?;
        // Settled on every path, including a caller that drops this future
        // half-way: the name and budget are never left claimed.
        let mut claim = Claim {
            groups: self,
            name: &spec.name,
            created: None,
        };
        let created = build(parts, spec.name.clone(), program, initial, maximum).await;
        claim.created = Some(created.as_ref().ok().cloned());
        drop(claim);
        created
    }
}

/// A name and budget claimed by a `create` under way.
struct Claim<'a> {
    groups: &'a Groups,
    name: &'a str,
    /// `None` until the creation ended; then the group, if it was made.
    created: Option<Option<SharedGroup>>,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let created = self.created.take().flatten();
        self.groups.settle(self.name, created);
    }
}

impl Drop for Groups {
    fn drop(&mut self) {
        // A group's coordinator holds its group, not the runner: without
        // this it would wait for tasks forever, with its thread and memory.
        let registry = self.registry.get_mut().unwrap_or_else(|e| e.into_inner());
        for group in registry.live.values() {
            group.inner.close();
        }
    }
}

/// Checks that `spec` can form a group: its program, initial size and
/// maximum (in bytes).
async fn check(parts: &Parts, spec: &GroupSpec) -> Result<(Program, u64, u64)> {
    let field = |name: &str| format!("group `{}`.{name}", spec.name);
    let program = parts.loader.load(&spec.wasm).await?;
    let ProgramKind::Shared { module } = &program.inner.kind else {
        return Err(Error::InvalidSpec {
            field: field("wasm"),
            message: format!(
                "`{}` does not import a shared memory (`env.memory`); build it for \
                 `wasm32-wasip1-threads`",
                spec.wasm.display()
            ),
        });
    };
    let declared = shared_memory_import(module).ok_or_else(|| Error::InvalidSpec {
        field: field("wasm"),
        message: format!(
            "`{}` does not import a shared memory (`env.memory`); build it for \
             `wasm32-wasip1-threads`",
            spec.wasm.display()
        ),
    })?;
    for export in ["_start", "wasi_thread_start"] {
        if module.get_export(export).is_none() {
            return Err(Error::InvalidSpec {
                field: field("wasm"),
                message: format!("`{}` does not export `{export}`", spec.wasm.display()),
            });
        }
    }
    let declared_max = declared.maximum().unwrap_or(65536) * PAGE;
    let maximum = spec.maximum.as_u64();
    let initial = spec
        .initial
        .map(|i| i.as_u64())
        .unwrap_or(declared.minimum() * PAGE);
    if maximum > declared_max {
        return Err(Error::InvalidSpec {
            field: field("maximum"),
            message: format!(
                "{} is more than the module declares ({})",
                spec.maximum,
                ByteSize(declared_max)
            ),
        });
    }
    if initial < declared.minimum() * PAGE || initial > maximum {
        return Err(Error::InvalidSpec {
            field: field("initial"),
            message: format!(
                "must be between the module's minimum ({}) and the maximum ({})",
                ByteSize(declared.minimum() * PAGE),
                spec.maximum
            ),
        });
    }
    Ok((program, initial, maximum))
}

fn shared_memory_import(module: &wasmtime::Module) -> Option<MemoryType> {
    module.imports().find_map(|import| match import.ty() {
        ExternType::Memory(ty)
            if ty.is_shared() && import.module() == "env" && import.name() == "memory" =>
        {
            Some(ty)
        }
        _ => None,
    })
}

async fn build(
    parts: &Parts,
    name: String,
    program: Program,
    initial: u64,
    maximum: u64,
) -> Result<SharedGroup> {
    let to_pages = |bytes: u64| u32::try_from(bytes.div_ceil(PAGE)).unwrap_or(u32::MAX);
    let memory = SharedMemory::new(
        parts.engine(),
        MemoryType::shared(to_pages(initial), to_pages(maximum)),
    )
    .map_err(Error::internal)?;
    let ProgramKind::Shared { module } = &program.inner.kind else {
        return Err(Error::Internal("not a shared-memory module".into()));
    };
    let mut linker: Linker<TaskState> = parts.loader.module_linker().clone();
    {
        // Defining an item needs a store of the engine; shared memories
        // belong to no store.
        let store = Store::new(parts.engine(), TaskState::inert());
        linker
            .define(&store, "env", "memory", memory.clone())
            .map_err(Error::internal)?;
    }
    let group_pre = linker.instantiate_pre(module).map_err(Error::internal)?;
    let (ready_tx, ready_rx) = oneshot::channel();
    let inner = Arc::new(GroupInner {
        name,
        program,
        pre: group_pre,
        memory,
        maximum,
        regions: Mutex::new(HashMap::new()),
        queue: Mutex::new(VecDeque::new()),
        queued: Notify::new(),
        closed: AtomicBool::new(false),
        ended: Mutex::new(None),
        ready: Mutex::new(Some(ready_tx)),
        next_tid: AtomicU32::new(1),
    });
    let (coordinator_done_tx, coordinator_done) = oneshot::channel();
    let coordinator = Coordinator {
        group: Arc::clone(&inner),
        engine: parts.engine().clone(),
        ticker: parts.ticker.clone(),
    };
    std::thread::Builder::new()
        .name(format!("isola-group-{}", inner.name))
        .spawn(move || {
            let ended = coordinator.run();
            let _ = coordinator_done_tx.send(ended);
        })
        .map_err(Error::internal)?;
    // Until the group is handed out, dropping this future (a caller that
    // gave up) closes it, so its coordinator does not serve nobody forever.
    let unclaimed = CloseOnDrop(Some(Arc::clone(&inner)));
    tokio::select! {
        ready = ready_rx => match ready {
            Ok(()) => {
                unclaimed.disarm();
                Ok(SharedGroup { inner })
            }
            Err(_) => Err(Error::Internal("the group coordinator went away".into())),
        },
        ended = coordinator_done => {
            let why = ended.unwrap_or_else(|_| "it stopped".into());
            Err(Error::InvalidSpec {
                field: format!("group `{}`.wasm", inner.name),
                message: format!(
                    "the group's `main` ended before calling `isola_guest::group::serve`: {why}"
                ),
            })
        }
    }
}

/// Closes a group being created unless it was handed out.
struct CloseOnDrop(Option<Arc<GroupInner>>);

impl CloseOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        if let Some(group) = self.0.take() {
            group.close();
        }
    }
}

/// Instance 0 of a group: runs the module's `main`, which serves tasks.
struct Coordinator {
    group: Arc<GroupInner>,
    engine: wasmtime::Engine,
    ticker: Option<TickerHandle>,
}

impl Coordinator {
    /// Runs `_start` to its end; returns how it ended.
    fn run(self) -> String {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            // Timers and wake-ups at every poll (see the worker's runtime).
            .event_interval(1)
            .build()
        {
            Ok(rt) => rt,
            Err(err) => return format!("cannot start a runtime: {err}"),
        };
        let _ticking = self.ticker.clone().map(TickerHandle::activate);
        runtime.block_on(async {
            let mut wasi = wasmtime_wasi::WasiCtxBuilder::new();
            wasi.inherit_stderr().arg(self.group.name.clone());
            let mut state = TaskState::inert();
            state.wasi = wasi.build_p1();
            // The memory is the group's, bounded by its maximum.
            state.limiter = MemoryLimiter::new(u64::MAX);
            state.extension = Some(Box::new(GroupLink {
                group: Arc::clone(&self.group),
                handing_over: None,
                engine: self.engine.weak(),
                ticker: self.ticker.clone(),
            }));
            let mut store = store::new_store(&self.engine, state, u64::MAX, None);
            let result = async {
                let instance = self.group.pre.instantiate_async(&mut store).await?;
                let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
                start.call_async(&mut store, ()).await
            }
            .await;
            let why = match result {
                Ok(()) => "main returned".to_owned(),
                Err(err) => format!("{err:#}"),
            };
            // A task the coordinator took but never gave a thread.
            let handed_over = link_mut(store.data_mut())
                .and_then(|link| link.handing_over.take())
                .map(|task| *task);
            self.group.coordinator_ended(&why, handed_over);
            why
        })
    }
}

/// Core imports for groups, added to every module linker: the coordinator's
/// side (`group-ready`, `group-next-task`, `publish-region`) under
/// `isola:task`, and `wasi::thread-spawn`.
pub(crate) fn add_to_module_linker(linker: &mut Linker<TaskState>) -> wasmtime::Result<()> {
    let not_in_group = || {
        wasmtime::Error::new(BadHostCall {
            call: "isola:task group function",
            message: "this task is not a shared memory group's coordinator".into(),
        })
    };
    linker.func_wrap(
        crate::channel::CORE_MODULE,
        "group-ready",
        move |caller: Caller<'_, TaskState>| -> wasmtime::Result<()> {
            let link = link(caller.data()).ok_or_else(not_in_group)?;
            if let Some(ready) = link
                .group
                .ready
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
            {
                let _ = ready.send(());
            }
            Ok(())
        },
    )?;
    linker.func_wrap_async(
        crate::channel::CORE_MODULE,
        "group-next-task",
        move |mut caller: Caller<'_, TaskState>, (): ()| {
            Box::new(async move {
                let link = link_mut(caller.data_mut()).ok_or_else(not_in_group)?;
                let group = Arc::clone(&link.group);
                // Waiting for a task runs no Wasm: an idle group costs no
                // epoch ticks, as an idle task waiting for a message.
                let idle = link.ticker.as_ref().map(TickerHandle::pause);
                let next = group.next_task().await;
                drop(idle);
                match next {
                    Some(task) => {
                        if let Some(link) = link_mut(caller.data_mut()) {
                            link.handing_over = Some(Box::new(task));
                        }
                        Ok(1i32)
                    }
                    None => Ok(0i32),
                }
            })
        },
    )?;
    linker.func_wrap(
        crate::channel::CORE_MODULE,
        "publish-region",
        move |caller: Caller<'_, TaskState>,
              name_ptr: i32,
              name_len: i32,
              offset: i32,
              len: i32|
              -> wasmtime::Result<()> {
            let link = link(caller.data()).ok_or_else(not_in_group)?;
            let group = Arc::clone(&link.group);
            let size = group.memory.data_size();
            let (offset, len) = (offset as u32, len as u32);
            if offset as usize + len as usize > size {
                return Err(wasmtime::Error::new(BadHostCall {
                    call: "isola:task.publish-region",
                    message: format!("region {offset}+{len} is outside the memory ({size} bytes)"),
                }));
            }
            let name_len = name_len as u32 as usize;
            // Checked before allocating: the length is the guest's choice.
            if (name_ptr as u32 as usize).saturating_add(name_len) > size {
                return Err(wasmtime::Error::new(wasmtime::Trap::MemoryOutOfBounds));
            }
            let mut name = vec![0u8; name_len];
            whole(&group.memory)
                .read(name_ptr as u32 as usize, &mut name)
                .map_err(wasmtime::Error::new)?;
            let name = String::from_utf8(name).map_err(|_| {
                wasmtime::Error::new(BadHostCall {
                    call: "isola:task.publish-region",
                    message: "the region name is not UTF-8".into(),
                })
            })?;
            group
                .regions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(name, (offset, len));
            Ok(())
        },
    )?;
    linker.func_wrap(
        "wasi",
        "thread-spawn",
        move |mut caller: Caller<'_, TaskState>, start_arg: i32| -> i32 {
            // Negative results are errors to wasi-libc (EAGAIN).
            let Some(link) = link_mut(caller.data_mut()) else {
                return -1;
            };
            let Some(task) = link.handing_over.take() else {
                // `std::thread::spawn` outside `serve`: Isola only runs
                // threads that are tasks.
                return -1;
            };
            let group = Arc::clone(&link.group);
            let Some(engine) = link.engine.upgrade() else {
                return -1;
            };
            let tid = group.next_tid.fetch_add(1, Ordering::Relaxed) & 0x1FFF_FFFF;
            let member = Member {
                group,
                engine,
                ticker: link.ticker.clone().map(TickerHandle::activate),
                tid: tid.max(1),
                start_arg,
            };
            match std::thread::Builder::new()
                .name(format!("isola-group-task-{tid}"))
                .spawn(move || member.run(*task))
            {
                Ok(_) => tid as i32,
                Err(_) => -1,
            }
        },
    )?;
    Ok(())
}

/// A task of a group, on its own OS thread.
struct Member {
    group: Arc<GroupInner>,
    engine: wasmtime::Engine,
    ticker: Option<TickerGuard>,
    tid: u32,
    start_arg: i32,
}

impl Member {
    fn run(self, task: PendingTask) {
        let PendingTask {
            mut state,
            fuel,
            stop,
            report,
            spawned_at,
        } = task;
        let _ticking = self.ticker;
        state.extension = None;
        let result = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            // Timers and wake-ups at every poll (see the worker's runtime).
            .event_interval(1)
            .build()
            .map_err(|e| e.to_string())
            .map(|runtime| {
                runtime.block_on(async {
                    let flag = Arc::clone(&stop);
                    let check: store::StopCheck = Arc::new(move || flag.request());
                    let mut store = store::new_store(&self.engine, state, fuel, Some(check));
                    let mut started_at = None;
                    let result = async {
                        let instance = self.group.pre.instantiate_async(&mut store).await?;
                        let entry = instance
                            .get_typed_func::<(i32, i32), ()>(&mut store, "wasi_thread_start")?;
                        started_at = Some(Instant::now());
                        entry
                            .call_async(&mut store, (self.tid as i32, self.start_arg))
                            .await
                    }
                    .await;
                    let ended_at = Instant::now();
                    let started = started_at.unwrap_or(ended_at);
                    let metrics = TaskMetrics {
                        startup: started - spawned_at,
                        run_time: ended_at - started,
                        peak_memory: self.group.memory.data_size() as u64,
                        fuel_used: store::fuel_used(&store, fuel),
                    };
                    // A stop request wins even if the guest got to return
                    // first: a woken waiter may leave without another epoch
                    // check.
                    let outcome = match (result, stop.request()) {
                        (Ok(()), Some(request)) => Ending::Stopped(request),
                        (Ok(()), None) => Ending::Exited(0),
                        (Err(err), _) => Ending::Error(err),
                    }
                    .into_outcome(&Budget::fuel(fuel));
                    (outcome, metrics)
                })
            });
        stop.finished.store(true, Ordering::Release);
        let ended =
            result.unwrap_or_else(|message| (Outcome::Failed { message }, TaskMetrics::default()));
        let _ = report.send(ended);
    }
}

/// Watches a group task: applies its timeout and cancellation (waking
/// waiters until it stops), then builds its report.
async fn supervise(
    group: Arc<GroupInner>,
    stop: Arc<StopFlag>,
    cancel: CancellationToken,
    timeout: Option<Duration>,
    report: oneshot::Receiver<(Outcome, TaskMetrics)>,
    outputs: (crate::output::OutputPipe, crate::output::OutputPipe),
) -> TaskReport {
    let mut report = std::pin::pin!(report);
    let mut withdrawn = false;
    let early = tokio::select! {
        biased;
        ended = &mut report => Some(ended),
        request = store::stopped(timeout, Some(&cancel)) => {
            match request {
                Stop::Cancelled => stop.cancel(),
                Stop::TimedOut(after) => stop.time_out(after),
            }
            // Still queued: no thread to stop, it ends here.
            let outcome = Ending::Stopped(request).into_outcome(&Budget::fuel(0));
            withdrawn = group.withdraw(&stop, outcome);
            None
        }
    };
    let ended = match early {
        Some(ended) => ended,
        None => loop {
            // The task may be parked in `memory.atomic.wait32`: wake it so
            // it reaches its epoch check.
            if !withdrawn && !stop.is_finished() {
                let group = Arc::clone(&group);
                let _ = tokio::task::spawn_blocking(move || group.wake_all()).await;
            }
            tokio::select! {
                ended = &mut report => break ended,
                () = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        },
    };
    let (outcome, metrics) = ended.unwrap_or_else(|_| {
        (
            Outcome::Failed {
                message: "the group task's thread ended without a report".into(),
            },
            TaskMetrics::default(),
        )
    });
    TaskReport {
        outcome,
        metrics,
        stdout: outputs.0.finish(),
        stderr: outputs.1.finish(),
    }
}

/// Whether `program` is the group's module (same bytes).
fn same_module(group: &GroupInner, program: &Program) -> bool {
    group.program.content_hash() == program.content_hash()
}

/// Starts a task in the shared memory group `name`: it is handed to the
/// group's coordinator, which gives it a thread (see [`crate::group`]).
///
/// # Errors
///
/// [`Error::InvalidSpec`] for a spec the rulebook refuses, a group that
/// does not exist or is closed, or a program that is not the group's.
pub(crate) async fn spawn(
    parts: &Parts,
    groups: &Groups,
    program: &Program,
    name: &str,
    spec: TaskSpec,
    spawned_at: Instant,
) -> Result<TaskHandle> {
    let about = About::of(&spec);
    parts.check(&spec)?;
    let group = groups.get(name).ok_or_else(|| Error::InvalidSpec {
        field: "shared_group".into(),
        message: format!("no shared memory group `{name}` exists"),
    })?;
    if !same_module(&group.inner, program) {
        return Err(Error::InvalidSpec {
            field: "wasm".into(),
            message: format!(
                "`{}` is not the module of shared memory group `{name}`, which is `{}`",
                program.path().display(),
                group.inner.program.path().display()
            ),
        });
    }
    program.host_call_problem(&spec)?;
    let id = TaskId::next();
    let host = parts.host_link(&spec, id, program)?;
    let prepared = prepare(program.path(), &spec, None)?;
    let (channel, host_ends) = ChannelState::for_spec(&spec);
    let Prepared {
        mut wasi,
        stdout,
        stderr,
        stdout_rx,
        stderr_rx,
    } = prepared;
    let state = TaskState {
        wasi: wasi.build_p1(),
        // The memory is the group's; its bound is the group's maximum.
        limiter: MemoryLimiter::new(u64::MAX),
        channel,
        host,
        call_result: None,
        extension: None,
    };
    // Group tasks count against the runner's live tasks like any other.
    let slot = parts.slot().await?;
    let stop = Arc::new(StopFlag::default());
    let (report_tx, report_rx) = tokio::sync::oneshot::channel();
    let pending = PendingTask {
        state,
        fuel: spec.limits.fuel.unwrap_or(u64::MAX),
        stop: Arc::clone(&stop),
        report: report_tx,
        spawned_at,
    };
    if !group.inner.enqueue(pending) {
        let why = group.inner.closed_reason().unwrap_or_default();
        return Err(Error::InvalidSpec {
            field: "shared_group".into(),
            message: format!("shared memory group `{name}` is closed: {why}"),
        });
    }
    let cancel = CancellationToken::new();
    let supervised = supervise(
        Arc::clone(&group.inner),
        stop,
        cancel.clone(),
        spec.limits.timeout,
        report_rx,
        (stdout, stderr),
    );
    Ok(TaskHandle::start(
        id,
        about,
        cancel,
        supervised,
        slot,
        (stdout_rx, stderr_rx),
        host_ends,
        None,
    ))
}

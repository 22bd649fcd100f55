//! The one recipe for a store, the one way to enter a program by kind, and
//! the one race between a guest and its timeout and cancellation.
//!
//! Every store that runs guest code — a task's, a kept plugin's, a shared
//! memory group's coordinator and members, a worker's preload — comes from
//! [`new_store`], so fuel, its write-back interval, the epoch behaviour and
//! the memory limiter are the same everywhere. (The only other stores are
//! inert ones that linkers need to list or define items.)

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use wasmtime::{Engine, Store, TypedFunc, UpdateDeadline};

use crate::imports::bindings::Plugin;
use crate::outcome::{Ending, Stop};
use crate::program::{CORE_PLUGIN_EXPORT, Program, ProgramKind, Resolved};
use crate::state::TaskState;

/// Fuel between write-backs of the fuel count (about 10 ms of Wasm): the
/// precision of `fuel_used` for a guest stopped from outside. Compiled code
/// keeps the count in a register and writes it back at calls and at this
/// interval's checks; without the interval a busy loop stopped by a
/// timeout would report almost no fuel.
pub(crate) const FUEL_WRITE_BACK: u64 = 10_000_000;

/// Says, at each epoch tick, whether a guest must stop: for guests that a
/// stop cannot reach by dropping their future (shared memory group tasks,
/// which run on threads of their own).
pub(crate) type StopCheck = Arc<dyn Fn() -> Option<Stop> + Send + Sync>;

/// A store with Isola's settings: `state`'s memory limiter governs every
/// memory and table; `fuel` units (`u64::MAX` for unlimited) written back
/// every [`FUEL_WRITE_BACK`]; and at every epoch tick the guest yields to
/// the async runtime (so busy guests share threads and a timeout or cancel
/// wins within a tick), or traps with the [`Stop`] that `stop` reports.
pub(crate) fn new_store(
    engine: &Engine,
    state: TaskState,
    fuel: u64,
    stop: Option<StopCheck>,
) -> Store<TaskState> {
    let mut store = Store::new(engine, state);
    store.limiter(|state| &mut state.limiter);
    // A guest may hand a host call all the bytes it has (one `fd_write`
    // of 128 MiB or more): what it hands over is in its own linear memory,
    // already bounded by its memory limit, and a preview1 write to stdout
    // or stderr borrows it without a copy. wasmtime's default of 128 MiB
    // per call failed such writes with `nomem` before writing anything.
    store.set_hostcall_fuel(usize::MAX);
    // Both only fail when fuel is disabled in the engine, which it never is.
    let _ = store.set_fuel(fuel);
    let _ = store.fuel_async_yield_interval(Some(FUEL_WRITE_BACK));
    match stop {
        None => store.epoch_deadline_callback(|_| Ok(UpdateDeadline::Yield(1))),
        Some(stop) => store.epoch_deadline_callback(move |_| match stop() {
            Some(stop) => Err(wasmtime::Error::new(stop)),
            None => Ok(UpdateDeadline::Yield(1)),
        }),
    }
    store.set_epoch_deadline(1);
    store
}

/// Fuel used so far out of `budget`.
pub(crate) fn fuel_used(store: &Store<TaskState>, budget: u64) -> u64 {
    budget - store.get_fuel().unwrap_or(budget).min(budget)
}

/// An instance of a program, entered at its resolved entry.
pub(crate) enum Entered {
    /// A core module's `_start`.
    CoreMain(TypedFunc<(), ()>),
    /// A core module's plugin `isola_run`.
    CoreRun(TypedFunc<(), i32>),
    /// A component's `wasi:cli/run`.
    ComponentMain(wasmtime_wasi::p2::bindings::Command),
    /// A component's `run` of `isola:task/plugin`.
    ComponentRun(Plugin),
    /// A function export called by name.
    Invoke(crate::invoke::Invocation),
}

/// Instantiates `program` in `store` for `entry`. A core module that
/// exports `_initialize` (a WASI reactor) has it called once here, before
/// its plugin entry, as the WASI reactor convention asks.
///
/// # Errors
///
/// Whatever instantiation (including a `start` function or
/// `_initialize`) ends with; classify it with [`crate::outcome::classify`].
pub(crate) async fn instantiate(
    store: &mut Store<TaskState>,
    program: &Program,
    entry: Resolved,
) -> wasmtime::Result<Entered> {
    match (&program.inner.kind, entry) {
        (ProgramKind::Module { pre, .. }, Resolved::Invoke(call)) => {
            let instance = pre.instantiate_async(&mut *store).await?;
            // A reactor is initialised before any of its exports is called.
            if let Some(init) = instance.get_func(&mut *store, "_initialize") {
                init.typed::<(), ()>(&*store)?
                    .call_async(&mut *store, ())
                    .await?;
            }
            Ok(Entered::Invoke(crate::invoke::Invocation::core(
                store, &instance, &call,
            )?))
        }
        (ProgramKind::Component { pre, .. }, Resolved::Invoke(call)) => {
            let instance = pre.instantiate_async(&mut *store).await?;
            Ok(Entered::Invoke(crate::invoke::Invocation::component(
                store, &instance, &call,
            )?))
        }
        (ProgramKind::Module { pre, .. }, Resolved::Main) => {
            let instance = pre.instantiate_async(&mut *store).await?;
            Ok(Entered::CoreMain(
                instance.get_typed_func::<(), ()>(&mut *store, "_start")?,
            ))
        }
        (ProgramKind::Module { pre, .. }, Resolved::Run) => {
            let instance = pre.instantiate_async(&mut *store).await?;
            if let Some(init) = instance.get_func(&mut *store, "_initialize") {
                init.typed::<(), ()>(&*store)?
                    .call_async(&mut *store, ())
                    .await?;
            }
            Ok(Entered::CoreRun(instance.get_typed_func::<(), i32>(
                &mut *store,
                CORE_PLUGIN_EXPORT,
            )?))
        }
        (
            ProgramKind::Component {
                command: Some(pre), ..
            },
            Resolved::Main,
        ) => Ok(Entered::ComponentMain(
            pre.instantiate_async(&mut *store).await?,
        )),
        (
            ProgramKind::Component {
                plugin: Some(pre), ..
            },
            Resolved::Run,
        ) => Ok(Entered::ComponentRun(
            pre.instantiate_async(&mut *store).await?,
        )),
        // `Program::resolve_entry` only picks entries the program has.
        (ProgramKind::Component { .. } | ProgramKind::Shared { .. }, _) => {
            wasmtime::bail!("the program has no such entry")
        }
    }
}

impl Entered {
    /// Runs the entry to its end. A plugin entry reads `input` (core
    /// modules through the task channel, which holds it already).
    ///
    /// # Errors
    ///
    /// The guest's trap, exit or limit; classify it with
    /// [`crate::outcome::classify`].
    pub(crate) async fn call(
        &self,
        store: &mut Store<TaskState>,
        input: &[u8],
    ) -> wasmtime::Result<Ending> {
        match self {
            Entered::CoreMain(start) => {
                start.call_async(&mut *store, ()).await?;
                Ok(Ending::Exited(0))
            }
            Entered::CoreRun(run) => {
                let status = run.call_async(&mut *store, ()).await?;
                Ok(Ending::Returned(
                    store.data_mut().channel.take_result(status),
                ))
            }
            Entered::ComponentMain(command) => {
                match command.wasi_cli_run().call_run(&mut *store).await? {
                    Ok(()) => Ok(Ending::Exited(0)),
                    Err(()) => Ok(Ending::Exited(1)),
                }
            }
            Entered::ComponentRun(plugin) => {
                Ok(Ending::Returned(plugin.call_run(&mut *store, input).await?))
            }
            Entered::Invoke(invocation) => Ok(Ending::Returned(Ok(invocation.call(store).await?))),
        }
    }
}

/// The instance a kept plugin holds, for calls of its exports by name.
pub(crate) enum KeptHandle {
    Core(wasmtime::Instance),
    Component(wasmtime::component::Instance),
}

/// Instantiates `program` to keep (see [`crate::Runner::plugin`]): its
/// plugin `run` entered if it has one, and the instance itself, whose
/// other exports are then called by name. A module's `_initialize` (a
/// WASI reactor) runs once, here.
pub(crate) async fn instantiate_kept(
    store: &mut Store<TaskState>,
    program: &Program,
) -> wasmtime::Result<(Option<Entered>, KeptHandle)> {
    match &program.inner.kind {
        ProgramKind::Module { pre, plugin, .. } => {
            let instance = pre.instantiate_async(&mut *store).await?;
            if let Some(init) = instance.get_func(&mut *store, "_initialize") {
                init.typed::<(), ()>(&*store)?
                    .call_async(&mut *store, ())
                    .await?;
            }
            let entered = if *plugin {
                Some(Entered::CoreRun(instance.get_typed_func::<(), i32>(
                    &mut *store,
                    CORE_PLUGIN_EXPORT,
                )?))
            } else {
                None
            };
            Ok((entered, KeptHandle::Core(instance)))
        }
        ProgramKind::Component { pre, plugin, .. } => {
            let instance = pre.instantiate_async(&mut *store).await?;
            let entered = match plugin {
                Some(_) => Some(Entered::ComponentRun(Plugin::new(&mut *store, &instance)?)),
                None => None,
            };
            Ok((entered, KeptHandle::Component(instance)))
        }
        ProgramKind::Shared { .. } => wasmtime::bail!("the program runs only in a group"),
    }
}

/// Completes with the reason a guest must stop: `cancel` cancelled, or
/// `timeout` elapsed (from now). Never completes if neither is given.
pub(crate) async fn stopped(timeout: Option<Duration>, cancel: Option<&CancellationToken>) -> Stop {
    let deadline = async {
        match timeout {
            Some(after) => {
                tokio::time::sleep(after).await;
                after
            }
            None => std::future::pending().await,
        }
    };
    let cancelled = async {
        match cancel {
            Some(token) => token.cancelled().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        biased;
        () = cancelled => Stop::Cancelled,
        after = deadline => Stop::TimedOut(after),
    }
}

/// Runs `guest` until it ends or must stop ([`stopped`]); a stop drops
/// the guest's future, which unwinds its fiber (a busy guest yields at
/// every epoch tick, so this happens within a tick).
///
/// The guest is borrowed pinned rather than moved in: its future is large
/// (it holds wasmtime's instantiation and call futures) and each async
/// layer it is moved through would keep a copy of its size in every live
/// task's allocation.
pub(crate) async fn race<T>(
    guest: std::pin::Pin<&mut impl Future<Output = T>>,
    timeout: Option<Duration>,
    cancel: Option<&CancellationToken>,
) -> Result<T, Stop> {
    tokio::select! {
        biased;
        stop = stopped(timeout, cancel) => Err(stop),
        ended = guest => Ok(ended),
    }
}

/// [`race`] for a guest that ends with an [`Ending`]: its error or the
/// stop that ended it is folded in, ready to classify.
pub(crate) async fn run_to_end(
    guest: std::pin::Pin<&mut impl Future<Output = wasmtime::Result<Ending>>>,
    timeout: Option<Duration>,
    cancel: Option<&CancellationToken>,
) -> Ending {
    match race(guest, timeout, cancel).await {
        Ok(Ok(ending)) => ending,
        Ok(Err(err)) => Ending::Error(err),
        Err(stop) => Ending::Stopped(stop),
    }
}

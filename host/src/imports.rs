//! The `isola:task` imports guests call (`wit/task.wit`): the channel and
//! start interfaces, implemented on [`TaskState`] over its
//! [`ChannelState`], and exposed twice: to components through
//! `wasmtime::component::bindgen!`, and to core modules as imports from the
//! module `isola:task`. Core modules cannot return a variable-sized list in
//! one call, so they receive in two steps: `recv-next` parks the next
//! message host-side and returns its length, and `read` copies it into
//! memory the guest allocated.

use bytes::Bytes;
use wasmtime::{Caller, Extern, Linker};

use crate::channel::{CORE_MODULE, ChannelState, TryRecv};
use crate::outcome::BadHostCall;
use crate::region::whole;
use crate::state::TaskState;

/// Host bindings generated from `wit/task.wit`.
pub(crate) mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "plugin",
        imports: { default: async | trappable },
        exports: { default: async },
    });
}

use bindings::isola::task::channel::TryRecvResult;

impl bindings::isola::task::channel::Host for TaskState {
    async fn post(&mut self, message: Vec<u8>) -> wasmtime::Result<()> {
        self.channel.post(Bytes::from(message)).await
    }

    async fn recv(&mut self) -> wasmtime::Result<Option<Vec<u8>>> {
        Ok(self.channel.recv().await.map(Vec::from))
    }

    async fn try_recv(&mut self) -> wasmtime::Result<TryRecvResult> {
        Ok(match self.channel.try_recv() {
            TryRecv::Message(m) => TryRecvResult::Message(m.into()),
            TryRecv::Empty => TryRecvResult::Empty,
            TryRecv::Closed => TryRecvResult::Closed,
        })
    }
}

impl bindings::isola::task::host::Host for TaskState {
    async fn call(
        &mut self,
        name: String,
        args: Vec<u8>,
    ) -> wasmtime::Result<Result<Vec<u8>, String>> {
        self.call_host(name, args).await
    }
}

impl bindings::isola::task::start::Host for TaskState {
    async fn input(&mut self) -> wasmtime::Result<Option<Vec<u8>>> {
        Ok(self.channel.input.as_ref().map(|b| b.to_vec()))
    }
}

/// Adds the task interface to a component linker.
pub(crate) fn add_to_component_linker(
    linker: &mut wasmtime::component::Linker<TaskState>,
) -> wasmtime::Result<()> {
    use wasmtime::component::HasSelf;
    bindings::isola::task::channel::add_to_linker::<TaskState, HasSelf<TaskState>>(linker, |s| s)?;
    bindings::isola::task::start::add_to_linker::<TaskState, HasSelf<TaskState>>(linker, |s| s)?;
    bindings::isola::task::host::add_to_linker::<TaskState, HasSelf<TaskState>>(linker, |s| s)?;
    Ok(())
}

/// Returned by the core `recv-next` / `try-recv-next` when the host closed
/// the channel.
const CORE_CLOSED: i64 = -1;
/// Returned by the core `try-recv-next` when no message is waiting.
const CORE_EMPTY: i64 = -2;

/// A core guest's memory: its own, or its group's shared one.
enum GuestMemory {
    Own(wasmtime::Memory),
    Shared(wasmtime::SharedMemory),
}

fn memory(caller: &mut Caller<'_, TaskState>) -> wasmtime::Result<GuestMemory> {
    match caller.get_export("memory") {
        Some(Extern::Memory(memory)) => Ok(GuestMemory::Own(memory)),
        Some(Extern::SharedMemory(memory)) => Ok(GuestMemory::Shared(memory)),
        _ => Err(wasmtime::Error::new(BadHostCall {
            call: "isola:task",
            message: "the module exports no `memory`".into(),
        })),
    }
}

fn out_of_bounds() -> wasmtime::Error {
    wasmtime::Error::new(wasmtime::Trap::MemoryOutOfBounds)
}

/// Copies `len` bytes at `ptr` out of the guest's memory.
pub(crate) fn read_guest(
    caller: &mut Caller<'_, TaskState>,
    ptr: i32,
    len: i32,
) -> wasmtime::Result<Vec<u8>> {
    let (start, len) = (ptr as u32 as usize, len as u32 as usize);
    match memory(caller)? {
        GuestMemory::Own(memory) => memory
            .data(&*caller)
            .get(start..start.saturating_add(len))
            .map(<[u8]>::to_vec)
            .ok_or_else(out_of_bounds),
        GuestMemory::Shared(memory) => {
            // Checked before allocating: the length is the guest's choice.
            if start.saturating_add(len) > memory.data_size() {
                return Err(out_of_bounds());
            }
            let mut buf = vec![0; len];
            whole(&memory)
                .read(start, &mut buf)
                .map_err(|_| out_of_bounds())?;
            Ok(buf)
        }
    }
}

/// Copies `bytes` into the guest's memory at `ptr`.
fn write_guest(caller: &mut Caller<'_, TaskState>, ptr: i32, bytes: &[u8]) -> wasmtime::Result<()> {
    let start = ptr as u32 as usize;
    match memory(caller)? {
        GuestMemory::Own(memory) => {
            memory
                .data_mut(&mut *caller)
                .get_mut(start..start.saturating_add(bytes.len()))
                .ok_or_else(out_of_bounds)?
                .copy_from_slice(bytes);
            Ok(())
        }
        GuestMemory::Shared(memory) => whole(&memory)
            .write(start, bytes)
            .map_err(|_| out_of_bounds()),
    }
}

/// Length of the message now pending, to return to a core guest.
fn park(state: &mut ChannelState, message: Option<Bytes>, none: i64) -> i64 {
    match message {
        Some(message) => {
            let len = message.len() as i64;
            state.pending = Some(message);
            len
        }
        None => none,
    }
}

/// Adds the task interface to a core-module linker, under [`CORE_MODULE`]:
///
/// | import | signature | meaning |
/// |---|---|---|
/// | `post` | `(ptr: i32, len: i32)` | post the bytes at `ptr` |
/// | `recv-next` | `() -> i64` | wait for a message; its length, or -1 when closed |
/// | `try-recv-next` | `() -> i64` | its length, -2 when none is waiting, -1 when closed |
/// | `read` | `(ptr: i32)` | copy the message from `recv-next` to `ptr` |
/// | `input-len` | `() -> i64` | length of the start input, -1 when there is none |
/// | `input-read` | `(ptr: i32)` | copy the start input to `ptr` |
/// | `set-output` | `(ptr: i32, len: i32)` | a plugin's `isola_run` result |
/// | `set-error` | `(ptr: i32, len: i32)` | a plugin's `isola_run` error (UTF-8) |
/// | `call` | `(name: i32, name_len: i32, args: i32, args_len: i32) -> i64` | call a host function: its result's length, or `-1 - len` of its error message (UTF-8) |
/// | `call-read` | `(ptr: i32)` | copy the result or error of the last `call` to `ptr` |
pub(crate) fn add_to_module_linker(linker: &mut Linker<TaskState>) -> wasmtime::Result<()> {
    linker.func_wrap_async(
        CORE_MODULE,
        "call",
        |mut caller: Caller<'_, TaskState>,
         (name_ptr, name_len, args_ptr, args_len): (i32, i32, i32, i32)| {
            Box::new(async move {
                let name = read_guest(&mut caller, name_ptr, name_len)?;
                let name = String::from_utf8(name).map_err(|_| {
                    wasmtime::Error::new(BadHostCall {
                        call: "isola:task.call",
                        message: "the function name is not UTF-8".into(),
                    })
                })?;
                let args = read_guest(&mut caller, args_ptr, args_len)?;
                let state = caller.data_mut();
                let (bytes, code) = match state.call_host(name, args).await? {
                    Ok(result) => {
                        let len = result.len() as i64;
                        (result, len)
                    }
                    Err(error) => {
                        let bytes = error.into_bytes();
                        let len = bytes.len() as i64;
                        (bytes, -1 - len)
                    }
                };
                state.call_result = Some(bytes);
                Ok(code)
            })
        },
    )?;
    linker.func_wrap(
        CORE_MODULE,
        "call-read",
        |mut caller: Caller<'_, TaskState>, ptr: i32| -> wasmtime::Result<()> {
            let Some(result) = caller.data_mut().call_result.take() else {
                return Err(wasmtime::Error::new(BadHostCall {
                    call: "isola:task.call-read",
                    message: "called with no call result pending (call `call` first)".into(),
                }));
            };
            write_guest(&mut caller, ptr, &result)
        },
    )?;
    linker.func_wrap_async(
        CORE_MODULE,
        "post",
        |mut caller: Caller<'_, TaskState>, (ptr, len): (i32, i32)| {
            Box::new(async move {
                let message = read_guest(&mut caller, ptr, len)?;
                caller.data_mut().channel.post(Bytes::from(message)).await
            })
        },
    )?;
    linker.func_wrap_async(
        CORE_MODULE,
        "recv-next",
        |mut caller: Caller<'_, TaskState>, (): ()| {
            Box::new(async move {
                let channel = &mut caller.data_mut().channel;
                let message = channel.recv().await;
                Ok(park(channel, message, CORE_CLOSED))
            })
        },
    )?;
    linker.func_wrap(
        CORE_MODULE,
        "try-recv-next",
        |mut caller: Caller<'_, TaskState>| -> i64 {
            let channel = &mut caller.data_mut().channel;
            match channel.try_recv() {
                TryRecv::Message(m) => park(channel, Some(m), CORE_CLOSED),
                TryRecv::Empty => CORE_EMPTY,
                TryRecv::Closed => CORE_CLOSED,
            }
        },
    )?;
    linker.func_wrap(
        CORE_MODULE,
        "read",
        |mut caller: Caller<'_, TaskState>, ptr: i32| -> wasmtime::Result<()> {
            let Some(message) = caller.data_mut().channel.pending.take() else {
                return Err(wasmtime::Error::new(BadHostCall {
                    call: "isola:task.read",
                    message: "called with no message pending (call `recv-next` first)".into(),
                }));
            };
            write_guest(&mut caller, ptr, &message)
        },
    )?;
    linker.func_wrap(
        CORE_MODULE,
        "input-len",
        |caller: Caller<'_, TaskState>| -> i64 {
            caller
                .data()
                .channel
                .input
                .as_ref()
                .map_or(-1, |input| input.len() as i64)
        },
    )?;
    linker.func_wrap(
        CORE_MODULE,
        "input-read",
        |mut caller: Caller<'_, TaskState>, ptr: i32| -> wasmtime::Result<()> {
            let input = caller.data().channel.input.clone().unwrap_or_default();
            write_guest(&mut caller, ptr, &input)
        },
    )?;
    linker.func_wrap(
        CORE_MODULE,
        "set-output",
        |mut caller: Caller<'_, TaskState>, ptr: i32, len: i32| -> wasmtime::Result<()> {
            let output = read_guest(&mut caller, ptr, len)?;
            caller.data_mut().channel.result = Some(Ok(output));
            Ok(())
        },
    )?;
    linker.func_wrap(
        CORE_MODULE,
        "set-error",
        |mut caller: Caller<'_, TaskState>, ptr: i32, len: i32| -> wasmtime::Result<()> {
            let error = read_guest(&mut caller, ptr, len)?;
            caller.data_mut().channel.result =
                Some(Err(String::from_utf8_lossy(&error).into_owned()));
            Ok(())
        },
    )?;
    Ok(())
}

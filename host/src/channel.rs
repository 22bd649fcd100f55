//! The task interface (`wit/task.wit`): the message channel between a task
//! and its host, the task's start input, and the plugin `run` entry.
//!
//! Each host function is implemented once, on [`ChannelState`], and exposed
//! twice: to components through `wasmtime::component::bindgen!`, and to core
//! modules as imports from the module `isola:task`. Core modules cannot
//! return a variable-sized list in one call, so they receive in two steps:
//! `recv-next` parks the next message host-side and returns its length, and
//! `read` copies it into memory the guest allocated.
//!
//! Both directions are bounded channels ([`crate::Limits::message_queue`]
//! messages each). A guest posting faster than its host reads blocks in
//! `post`; a host sending to a full task waits ([`MessageSender::send`]) or
//! gets an error ([`MessageSender::try_send`]), as it prefers.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use bytesize::ByteSize;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use wasmtime::{Caller, Extern, Linker};

use crate::outcome::Limit;
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

/// Name of the import module core modules use for the task interface.
pub const CORE_MODULE: &str = "isola:task";

/// The guest's ends of its channel, its input, and its plugin result.
pub(crate) struct ChannelState {
    /// Messages from the host. `None` after the guest saw the channel closed.
    inbox: Option<mpsc::Receiver<Bytes>>,
    /// Messages to the host. Sending fails once the host stopped listening;
    /// the message is then dropped, as nobody can read it.
    outbox: mpsc::Sender<Bytes>,
    /// A core module's message between `recv-next` and `read`.
    pending: Option<Bytes>,
    input: Option<Bytes>,
    /// A core module plugin's result, set by `set-output` / `set-error`.
    pub(crate) result: Option<Result<Vec<u8>, String>>,
    max_message_size: u64,
    max_messages: Option<u64>,
    posted: u64,
    /// Paused while the guest waits for a message, so an idle task costs
    /// no epoch ticks.
    pub(crate) ticker: Option<crate::ticker::TickerHandle>,
}

impl ChannelState {
    pub(crate) fn new(
        inbox: mpsc::Receiver<Bytes>,
        outbox: mpsc::Sender<Bytes>,
        input: Option<Bytes>,
        max_message_size: ByteSize,
        max_messages: Option<u64>,
    ) -> ChannelState {
        ChannelState {
            inbox: Some(inbox),
            outbox,
            pending: None,
            input,
            result: None,
            max_message_size: max_message_size.as_u64(),
            max_messages,
            posted: 0,
            ticker: None,
        }
    }

    /// A task's channel sized and limited by its spec, with the host's
    /// ends for its [`crate::TaskHandle`].
    pub(crate) fn for_spec(
        spec: &crate::TaskSpec,
    ) -> (ChannelState, (MessageSender, MessageReceiver)) {
        let queue = queue_capacity(spec.limits.message_queue);
        let (to_guest_tx, to_guest_rx) = mpsc::channel(queue);
        let (from_guest_tx, from_guest_rx) = mpsc::channel(queue);
        let state = ChannelState::new(
            to_guest_rx,
            from_guest_tx,
            spec.input.clone().map(Bytes::from),
            spec.limits.max_message_size,
            spec.limits.max_messages,
        );
        (
            state,
            (
                MessageSender { tx: to_guest_tx },
                MessageReceiver { rx: from_guest_rx },
            ),
        )
    }

    /// A core plugin's result after `isola_run` returned `status`.
    pub(crate) fn take_result(&mut self, status: i32) -> Result<Vec<u8>, String> {
        match (status, self.result.take()) {
            (0, Some(Ok(output))) => Ok(output),
            (0, _) => Ok(Vec::new()),
            (_, Some(Err(error))) => Err(error),
            (status, _) => Err(format!(
                "`{}` returned {status}",
                crate::program::CORE_PLUGIN_EXPORT
            )),
        }
    }

    /// A channel with no host behind it: receives report closed, posts are
    /// dropped.
    pub(crate) fn closed() -> ChannelState {
        let (_, inbox) = mpsc::channel(1);
        let (outbox, _) = mpsc::channel(1);
        ChannelState::new(inbox, outbox, None, ByteSize(0), Some(0))
    }

    /// Replaces the start input (a kept plugin instance, between calls).
    pub(crate) fn set_input(&mut self, input: Option<Bytes>) {
        self.input = input;
    }

    /// The start input, for a plugin's `run`.
    pub(crate) fn input(&self) -> Option<Vec<u8>> {
        self.input.as_ref().map(|b| b.to_vec())
    }

    /// Checks a guest message against the limits; a message past them ends
    /// the task with that limit.
    fn admit(&mut self, len: usize) -> wasmtime::Result<()> {
        if len as u64 > self.max_message_size {
            return Err(wasmtime::Error::new(Limit::MessageSize {
                max: ByteSize(self.max_message_size),
            }));
        }
        if let Some(max) = self.max_messages
            && self.posted >= max
        {
            return Err(wasmtime::Error::new(Limit::Messages { max }));
        }
        self.posted += 1;
        Ok(())
    }

    async fn post(&mut self, message: Bytes) -> wasmtime::Result<()> {
        self.admit(message.len())?;
        // Waits while the host's inbox is full: that is the backpressure.
        let _ = self.outbox.send(message).await;
        Ok(())
    }

    async fn recv(&mut self) -> Option<Bytes> {
        let inbox = self.inbox.as_mut()?;
        let message = match inbox.try_recv() {
            Ok(message) => Some(message),
            Err(mpsc::error::TryRecvError::Disconnected) => None,
            Err(mpsc::error::TryRecvError::Empty) => {
                let _idle = self.ticker.as_ref().map(|t| t.pause());
                inbox.recv().await
            }
        };
        if message.is_none() {
            self.inbox = None;
        }
        message
    }

    fn try_recv(&mut self) -> TryRecv {
        let Some(inbox) = self.inbox.as_mut() else {
            return TryRecv::Closed;
        };
        match inbox.try_recv() {
            Ok(message) => TryRecv::Message(message),
            Err(mpsc::error::TryRecvError::Empty) => TryRecv::Empty,
            Err(mpsc::error::TryRecvError::Disconnected) => {
                self.inbox = None;
                TryRecv::Closed
            }
        }
    }
}

enum TryRecv {
    Message(Bytes),
    Empty,
    Closed,
}

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
        _ => Err(wasmtime::format_err!(
            "the module uses `{CORE_MODULE}` but exports no `memory`"
        )),
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
            let mut buf = vec![0; len];
            crate::group::whole(&memory)
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
        GuestMemory::Shared(memory) => crate::group::whole(&memory)
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
pub(crate) fn add_to_module_linker(linker: &mut Linker<TaskState>) -> wasmtime::Result<()> {
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
                wasmtime::bail!("`{CORE_MODULE}::read` called with no message pending");
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

/// Why a message could not be sent to a task.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The task's inbox is full ([`MessageSender::try_send`] only).
    #[error("the task's inbox is full")]
    Full,
    /// The task has ended or stopped listening.
    #[error("the task is no longer receiving messages")]
    Closed,
    /// The value could not be encoded as JSON.
    #[error("cannot encode the message as JSON: {0}")]
    Json(String),
}

/// Sends messages to a task, like `worker.postMessage`. Cheap to clone; the
/// task sees its channel closed once every sender is dropped (see
/// [`crate::TaskHandle::close_channel`]).
#[derive(Debug, Clone)]
pub struct MessageSender {
    pub(crate) tx: mpsc::Sender<Bytes>,
}

impl MessageSender {
    /// Sends `message`, waiting while the task's inbox is full.
    ///
    /// # Errors
    ///
    /// [`SendError::Closed`] if the task no longer receives.
    pub async fn send(&self, message: impl Into<Bytes>) -> Result<(), SendError> {
        self.tx
            .send(message.into())
            .await
            .map_err(|_| SendError::Closed)
    }

    /// Sends `message` if the task's inbox has room, without waiting.
    ///
    /// # Errors
    ///
    /// [`SendError::Full`] or [`SendError::Closed`].
    pub fn try_send(&self, message: impl Into<Bytes>) -> Result<(), SendError> {
        self.tx.try_send(message.into()).map_err(|err| match err {
            mpsc::error::TrySendError::Full(_) => SendError::Full,
            mpsc::error::TrySendError::Closed(_) => SendError::Closed,
        })
    }

    /// Sends `value` encoded as JSON.
    ///
    /// # Errors
    ///
    /// As [`MessageSender::send`], or [`SendError::Json`].
    pub async fn send_json(&self, value: &impl Serialize) -> Result<(), SendError> {
        let bytes = serde_json::to_vec(value).map_err(|e| SendError::Json(e.to_string()))?;
        self.send(bytes).await
    }
}

/// Receives the messages a task posts, in order, like
/// `worker.on('message')`. Also a [`futures::Stream`]. The stream ends after
/// the last message once the task has ended.
#[derive(Debug)]
pub struct MessageReceiver {
    pub(crate) rx: mpsc::Receiver<Bytes>,
}

impl MessageReceiver {
    /// The next message, or `None` once the task has ended and every
    /// message it posted was received.
    pub async fn recv(&mut self) -> Option<Bytes> {
        self.rx.recv().await
    }

    /// The next message if one is waiting, without waiting; `None` if none
    /// is (or the stream has ended).
    pub fn try_recv(&mut self) -> Option<Bytes> {
        self.rx.try_recv().ok()
    }

    /// The next message decoded from JSON.
    pub async fn recv_json<T: DeserializeOwned>(&mut self) -> Option<serde_json::Result<T>> {
        let bytes = self.recv().await?;
        Some(serde_json::from_slice(&bytes))
    }
}

impl futures::Stream for MessageReceiver {
    type Item = Bytes;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        self.rx.poll_recv(cx)
    }
}

/// The capacity of a channel for `Limits::message_queue = requested`: at
/// least 1 (a zero-capacity channel cannot exist), at most what Tokio's
/// bounded channel accepts (it panics above `usize::MAX >> 3`). No queue
/// could hold that many messages anyway, so the cap changes nothing real.
pub(crate) fn queue_capacity(requested: usize) -> usize {
    requested.clamp(1, usize::MAX >> 3)
}

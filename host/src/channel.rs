//! The task interface (`wit/task.wit`): the message channel between a task
//! and its host, the task's start input, and the plugin `run` entry.
//!
//! Each host function is implemented once, on [`ChannelState`], and
//! exposed to guests by the task imports (the `imports` module).
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

use crate::outcome::Limit;
use crate::telemetry::{self, Direction};

/// Name of the import module core modules use for the task interface.
pub const CORE_MODULE: &str = "isola:task";

/// Name of the export a core-module plugin provides: `isola_run() -> i32`,
/// which reads its input with `isola:task::input-*` and reports with
/// `set-output` / `set-error` (returning 0 / 1).
pub(crate) const CORE_PLUGIN_EXPORT: &str = "isola_run";

/// The guest's ends of its channel, its input, and its plugin result.
pub(crate) struct ChannelState {
    /// Messages from the host. `None` after the guest saw the channel closed.
    inbox: Option<mpsc::Receiver<Bytes>>,
    /// Messages to the host. Sending fails once the host stopped listening;
    /// the message is then dropped, as nobody can read it.
    outbox: mpsc::Sender<Bytes>,
    /// A core module's message between `recv-next` and `read`.
    pub(crate) pending: Option<Bytes>,
    pub(crate) input: Option<Bytes>,
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
            (status, _) => Err(format!("`{}` returned {status}", CORE_PLUGIN_EXPORT)),
        }
    }

    /// A channel with no host behind it: receives report closed, posts are
    /// dropped.
    pub(crate) fn closed() -> ChannelState {
        let (_, inbox) = mpsc::channel(1);
        let (outbox, _) = mpsc::channel(1);
        ChannelState::new(inbox, outbox, None, ByteSize(0), Some(0))
    }

    /// Replaces the start input (a kept plugin instance, between calls);
    /// the call's message count starts over, as its fuel and time do.
    pub(crate) fn set_input(&mut self, input: Option<Bytes>) {
        self.input = input;
        self.posted = 0;
    }

    /// The start input, for a plugin's `run`.
    pub(crate) fn input(&self) -> Option<Vec<u8>> {
        self.input.as_ref().map(|b| b.to_vec())
    }

    /// Checks a guest message against the limits; a message past them ends
    /// the task with that limit.
    pub(crate) fn admit(&mut self, len: usize) -> wasmtime::Result<()> {
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

    pub(crate) async fn post(&mut self, message: Bytes) -> wasmtime::Result<()> {
        self.admit(message.len())?;
        // Waits while the host's inbox is full: that is the backpressure.
        let _ = self.outbox.send(message).await;
        Ok(())
    }

    /// The most bytes a message (or a host call's arguments or result) of
    /// this task may have.
    pub(crate) fn max_message_size(&self) -> u64 {
        self.max_message_size
    }

    pub(crate) async fn recv(&mut self) -> Option<Bytes> {
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

    pub(crate) fn try_recv(&mut self) -> TryRecv {
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

pub(crate) enum TryRecv {
    Message(Bytes),
    Empty,
    Closed,
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
            .map_err(|_| SendError::Closed)?;
        telemetry::message(Direction::ToTask);
        Ok(())
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
        })?;
        telemetry::message(Direction::ToTask);
        Ok(())
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
        let message = self.rx.recv().await;
        received(message)
    }

    /// The next message if one is waiting, without waiting; `None` if none
    /// is (or the stream has ended).
    pub fn try_recv(&mut self) -> Option<Bytes> {
        received(self.rx.try_recv().ok())
    }

    /// How many messages are waiting to be received now: at most the
    /// task's `Limits::message_queue` (a task that posts more waits).
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    /// Whether no message is waiting now.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
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
        self.rx.poll_recv(cx).map(received)
    }
}

/// The capacity of a channel for `Limits::message_queue = requested`: at
/// least 1 (a zero-capacity channel cannot exist), at most what Tokio's
/// bounded channel accepts (it panics above `usize::MAX >> 3`). No queue
/// could hold that many messages anyway, so the cap changes nothing real.
pub(crate) fn queue_capacity(requested: usize) -> usize {
    requested.clamp(1, usize::MAX >> 3)
}

/// Counts a message the host took from a task.
fn received(message: Option<Bytes>) -> Option<Bytes> {
    if message.is_some() {
        telemetry::message(Direction::FromTask);
    }
    message
}

//! The guest's stdout and stderr: captured, piped, inherited or discarded,
//! and counted against the output limit.
//!
//! WASI asks a stream for a fresh handle each time the guest opens it, so all
//! handles of one stream share an [`OutputShared`] behind a mutex. The limit is
//! enforced in `write`: the bytes up to the limit are delivered, then the write
//! fails with a [`Limit::Output`] trap that the runner reports as such.

use std::io::Write as _;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use bytesize::ByteSize;
use tokio::sync::mpsc;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

use crate::outcome::{Captured, Limit, Stream};
use crate::spec::Output;

/// Largest chunk the guest may write at once; bounds each host-side copy.
const MAX_CHUNK: usize = 64 * 1024;

/// Chunks a piped stream buffers before the guest has to wait for the reader.
pub(crate) const PIPE_CHUNKS: usize = 16;

/// Receives the chunks of a piped stream ([`Output::Pipe`]) as the guest
/// writes them. The stream ends when the task ends.
pub type OutputReceiver = mpsc::Receiver<Bytes>;

enum Sink {
    Capture(Captured, usize),
    Pipe(mpsc::Sender<Bytes>),
    Inherit,
    Discard,
}

struct OutputShared {
    stream: Stream,
    written: u64,
    max: Option<u64>,
    sink: Sink,
}

impl OutputShared {
    /// Counts `bytes` against the limit. Returns the part that fits and,
    /// when some did not, the limit that was hit.
    fn admit(&mut self, mut bytes: Bytes) -> (Bytes, Option<Limit>) {
        let mut exceeded = None;
        if let Some(max) = self.max {
            let room = max.saturating_sub(self.written);
            if bytes.len() as u64 > room {
                bytes.truncate(usize::try_from(room).unwrap_or(usize::MAX));
                exceeded = Some(Limit::Output {
                    stream: self.stream,
                    max: ByteSize(max),
                });
            }
        }
        self.written += bytes.len() as u64;
        (bytes, exceeded)
    }

    /// Counts `bytes` against the limit and hands what fits to the sink.
    /// For a pipe, `permit` should hold a slot reserved beforehand.
    fn deliver(
        &mut self,
        bytes: Bytes,
        permit: Option<mpsc::OwnedPermit<Bytes>>,
    ) -> Result<(), Limit> {
        let (bytes, exceeded) = self.admit(bytes);
        match &mut self.sink {
            Sink::Capture(captured, cap) => {
                let room = cap.saturating_sub(captured.bytes.len());
                if bytes.len() > room {
                    captured.truncated = true;
                }
                captured
                    .bytes
                    .extend_from_slice(&bytes[..bytes.len().min(room)]);
            }
            Sink::Pipe(sender) => {
                if !bytes.is_empty() {
                    match permit {
                        Some(permit) => {
                            permit.send(bytes);
                        }
                        // Without a reserved slot the reader is gone (or the
                        // caller skipped the readiness check): drop the bytes
                        // rather than block or buffer without bound.
                        None => {
                            let _ = sender.try_send(bytes);
                        }
                    }
                }
            }
            Sink::Inherit => {
                // A failed write to the host's own stream (closed pipe) drops
                // the output; the guest is not told, as with `wasmtime run`.
                let _ = match self.stream {
                    Stream::Stdout => std::io::stdout().lock().write_all(&bytes),
                    Stream::Stderr => std::io::stderr().lock().write_all(&bytes),
                };
            }
            Sink::Discard => {}
        }
        match exceeded {
            Some(limit) => Err(limit),
            None => Ok(()),
        }
    }
}

/// One guest output stream. Cheap to clone; all clones share state.
#[derive(Clone)]
pub(crate) struct OutputPipe {
    shared: Arc<Mutex<OutputShared>>,
    is_terminal: bool,
}

impl OutputPipe {
    /// A stream configured by `mode`, with its receiver when piped.
    pub(crate) fn new(
        stream: Stream,
        mode: Output,
        max: Option<ByteSize>,
        capture: ByteSize,
    ) -> (OutputPipe, Option<OutputReceiver>) {
        let mut receiver = None;
        let sink = match mode {
            Output::Capture => Sink::Capture(
                Captured::default(),
                usize::try_from(capture.as_u64()).unwrap_or(usize::MAX),
            ),
            Output::Pipe => {
                let (tx, rx) = mpsc::channel(PIPE_CHUNKS);
                receiver = Some(rx);
                Sink::Pipe(tx)
            }
            Output::Inherit => Sink::Inherit,
            Output::Discard => Sink::Discard,
        };
        let is_terminal = mode == Output::Inherit
            && match stream {
                Stream::Stdout => std::io::IsTerminal::is_terminal(&std::io::stdout()),
                Stream::Stderr => std::io::IsTerminal::is_terminal(&std::io::stderr()),
            };
        let shared = OutputShared {
            stream,
            written: 0,
            max: max.map(|m| m.as_u64()),
            sink,
        };
        (
            OutputPipe {
                shared: Arc::new(Mutex::new(shared)),
                is_terminal,
            },
            receiver,
        )
    }

    fn lock(&self) -> MutexGuard<'_, OutputShared> {
        // A poisoned lock only means another handle panicked mid-write; the
        // counters are still usable.
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ends the stream: takes what was captured and closes a pipe so its
    /// reader sees the end.
    pub(crate) fn finish(&self) -> Captured {
        let mut shared = self.lock();
        match std::mem::replace(&mut shared.sink, Sink::Discard) {
            Sink::Capture(captured, _) => captured,
            _ => Captured::default(),
        }
    }

    /// Delivers bytes that a worker process produced. A piped stream waits
    /// for its reader (and so, through the IPC pipe, slows the worker's
    /// guest); the limit was already enforced by the worker.
    pub(crate) async fn forward(&self, bytes: Bytes) {
        match self.pipe_sender() {
            Some(sender) => {
                // A reader that went away drops the output.
                let _ = sender.send(bytes).await;
            }
            None => {
                let _ = self.lock().deliver(bytes, None);
            }
        }
    }

    fn pipe_sender(&self) -> Option<mpsc::Sender<Bytes>> {
        match &self.lock().sink {
            Sink::Pipe(tx) => Some(tx.clone()),
            _ => None,
        }
    }
}

impl IsTerminal for OutputPipe {
    fn is_terminal(&self) -> bool {
        self.is_terminal
    }
}

impl StdoutStream for OutputPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(GuestOutput {
            pipe: self.clone(),
            permit: None,
        })
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(AsyncGuestOutput {
            pipe: self.clone(),
            sender: self.pipe_sender().map(tokio_util::sync::PollSender::new),
        })
    }
}

/// A WASI output-stream handle over an [`OutputPipe`].
struct GuestOutput {
    pipe: OutputPipe,
    /// A reserved slot in the pipe's channel: backpressure is applied in
    /// `check_write`/`ready`, so `write` never blocks.
    permit: Option<mpsc::OwnedPermit<Bytes>>,
}

impl GuestOutput {
    /// Reserves a pipe slot if one is free now. True when writing may
    /// proceed.
    fn try_reserve(&mut self) -> bool {
        if self.permit.is_some() {
            return true;
        }
        let Some(sender) = self.pipe.pipe_sender() else {
            return true;
        };
        match sender.try_reserve_owned() {
            Ok(permit) => {
                self.permit = Some(permit);
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => false,
            // The reader went away: output is discarded from now on.
            Err(mpsc::error::TrySendError::Closed(_)) => true,
        }
    }
}

#[async_trait::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {
        if self.permit.is_some() {
            return;
        }
        if let Some(sender) = self.pipe.pipe_sender() {
            // Err means the reader is gone; then the stream is ready and
            // the bytes are dropped.
            self.permit = sender.reserve_owned().await.ok();
        }
    }
}

impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        let permit = self.permit.take();
        self.pipe
            .lock()
            .deliver(bytes, permit)
            .map_err(|limit| StreamError::Trap(limit.into()))
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(if self.try_reserve() { MAX_CHUNK } else { 0 })
    }
}

/// The `AsyncWrite` form of a guest output stream, for the WASI versions
/// that use it.
struct AsyncGuestOutput {
    pipe: OutputPipe,
    sender: Option<tokio_util::sync::PollSender<Bytes>>,
}

impl tokio::io::AsyncWrite for AsyncGuestOutput {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let len = buf.len().min(MAX_CHUNK);
        let bytes = Bytes::copy_from_slice(&buf[..len]);
        let this = &mut *self;
        let result = match &mut this.sender {
            Some(sender) => match sender.poll_reserve(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(reserved) => {
                    let (bytes, exceeded) = this.pipe.lock().admit(bytes);
                    if reserved.is_ok() && !bytes.is_empty() {
                        // Only fails if the reader left meanwhile.
                        let _ = sender.send_item(bytes);
                    }
                    exceeded.map_or(Ok(()), Err)
                }
            },
            None => this.pipe.lock().deliver(bytes, None),
        };
        Poll::Ready(result.map(|()| len).map_err(std::io::Error::other))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

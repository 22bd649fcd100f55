//! The guest's stdout and stderr: captured, piped, inherited or discarded,
//! and counted against the output limit.
//!
//! WASI asks a stream for a fresh handle each time the guest opens it, so all
//! handles of one stream share an [`OutputShared`] behind a mutex. The limit is
//! enforced in `write`: the bytes up to the limit are delivered, then the write
//! fails with a [`Limit::Output`] trap that the runner reports as such.
//!
//! Inherited output is written through at once: each guest write reaches
//! the host's stdout or stderr before the write returns, newline or not (a
//! prompt shows while the guest waits, as it would natively).
//!
//! A reader that goes away stops the writer, as a closed pipe stops a native
//! program. Once the host's own stream fails with a broken pipe
//! ([`Output::Inherit`]), or the receiver of a piped stream is dropped
//! ([`Output::Pipe`], which is also how a process task's worker hears that
//! its parent's stream closed), the stream is *closed*: nothing more is
//! written to it, and every later write of the guest to it fails with the
//! error a closed pipe maps to (`EPIPE`: WASI preview1 `errno::pipe`, WASI
//! preview2 `stream-error::last-operation-failed` whose
//! `filesystem-error-code` is `pipe`). A program that checks its writes
//! stops there. One that ignores the error is ended after
//! [`FAILED_WRITES_BEFORE_END`] refused writes, the way SIGPIPE ends a
//! native writer: it exits with status [`BROKEN_PIPE_STATUS`] (141, 128 +
//! SIGPIPE, what a shell reports for a writer killed by SIGPIPE).

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

/// Writes to a closed stream that fail with `EPIPE` before the task is
/// ended: room for a program's own cleanup (a C program's `exit` flushes
/// its buffer once more), none for a program that writes on regardless.
pub(crate) const FAILED_WRITES_BEFORE_END: u32 = 16;

/// The exit status of a task ended for writing on to a closed stream: 128 +
/// SIGPIPE, what a shell reports for a native writer killed by SIGPIPE.
pub(crate) const BROKEN_PIPE_STATUS: i32 = 128 + libc::SIGPIPE;

/// Whether an error writing to the host's own stream means its reader is
/// gone for good (rather than a failure the guest may retry).
fn is_reader_gone(err: &std::io::Error) -> bool {
    matches!(
        err.kind(),
        std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
    )
}

/// The error a guest's write to a closed stream fails with: `EPIPE`, as the
/// OS's own, so WASI maps it to `pipe` for either guest kind.
fn broken_pipe() -> std::io::Error {
    std::io::Error::from_raw_os_error(libc::EPIPE)
}

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
    /// The reader went away: writes fail from now on.
    closed: bool,
    /// Writes refused since the stream closed.
    refused: u32,
}

/// Why a write did not go through.
enum WriteError {
    /// The output limit: the part that fit was delivered.
    Limit(Limit),
    /// The stream is closed: nothing was delivered (see the module docs).
    Closed,
    /// The host's stream failed otherwise: the guest is told, as it would
    /// be natively; the stream stays open.
    Io(std::io::Error),
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
    ) -> Result<(), WriteError> {
        if self.closed {
            return Err(WriteError::Closed);
        }
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
                        // Without a reserved slot (the caller skipped the
                        // readiness check): never block or buffer without
                        // bound. A full pipe drops the bytes; a pipe whose
                        // reader is gone closes the stream.
                        None => {
                            if let Err(mpsc::error::TrySendError::Closed(_)) =
                                sender.try_send(bytes)
                            {
                                self.closed = true;
                                return Err(WriteError::Closed);
                            }
                        }
                    }
                }
            }
            Sink::Inherit => {
                if let Err(err) = write_through(self.stream, &bytes) {
                    if is_reader_gone(&err) {
                        self.closed = true;
                        return Err(WriteError::Closed);
                    }
                    return Err(WriteError::Io(err));
                }
            }
            Sink::Discard => {}
        }
        match exceeded {
            Some(limit) => Err(WriteError::Limit(limit)),
            None => Ok(()),
        }
    }

    /// Marks the stream closed (its reader went away).
    fn close(&mut self) {
        self.closed = true;
    }

    /// What a guest's write that failed with `err` returns to it. A write
    /// to a closed stream fails with `EPIPE`, until the guest has had
    /// [`FAILED_WRITES_BEFORE_END`] of those: then the task ends with
    /// [`BROKEN_PIPE_STATUS`].
    fn stream_error(&mut self, err: WriteError) -> StreamError {
        match err {
            WriteError::Limit(limit) => StreamError::Trap(limit.into()),
            WriteError::Io(err) => StreamError::LastOperationFailed(err.into()),
            WriteError::Closed => {
                self.refused = self.refused.saturating_add(1);
                if self.refused > FAILED_WRITES_BEFORE_END {
                    StreamError::Trap(wasmtime_wasi::I32Exit(BROKEN_PIPE_STATUS).into())
                } else {
                    StreamError::LastOperationFailed(broken_pipe().into())
                }
            }
        }
    }

    /// As [`OutputShared::stream_error`], for the `AsyncWrite` form.
    fn io_error(&mut self, err: WriteError) -> std::io::Error {
        match err {
            WriteError::Limit(limit) => std::io::Error::other(limit),
            WriteError::Io(err) => err,
            WriteError::Closed => {
                self.refused = self.refused.saturating_add(1);
                if self.refused > FAILED_WRITES_BEFORE_END {
                    std::io::Error::other(wasmtime_wasi::I32Exit(BROKEN_PIPE_STATUS))
                } else {
                    broken_pipe()
                }
            }
        }
    }
}

/// Writes `bytes` to the host's own `stream` now: all of them, flushed, so
/// nothing waits in the standard library's line buffer for a newline.
/// Through the standard handles, so the host's own prints stay in order
/// with the guest's.
fn write_through(stream: Stream, bytes: &[u8]) -> std::io::Result<()> {
    match stream {
        Stream::Stdout => {
            let mut out = std::io::stdout().lock();
            out.write_all(bytes)?;
            out.flush()
        }
        Stream::Stderr => {
            let mut out = std::io::stderr().lock();
            out.write_all(bytes)?;
            out.flush()
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
            closed: false,
            refused: 0,
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
    /// guest); the limit was already enforced by the worker. A reader that
    /// went away closes the stream (see [`OutputPipe::is_closed`]); what
    /// arrives after that is dropped.
    pub(crate) async fn forward(&self, bytes: Bytes) {
        match self.pipe_sender() {
            Some(sender) => {
                if sender.send(bytes).await.is_err() {
                    self.lock().close();
                }
            }
            None => {
                // A closed stream, a limit (not enforced here) or a failed
                // write: the worker's guest hears of a closed stream through
                // its parent (`is_closed`), of nothing else.
                let _ = self.lock().deliver(bytes, None);
            }
        }
    }

    /// Whether the stream's reader went away: the host's own stream broke
    /// ([`Output::Inherit`]) or a piped stream's receiver was dropped. A
    /// process task's parent checks this after [`OutputPipe::forward`] to
    /// tell the worker, whose guest's writes then fail as here.
    pub(crate) fn is_closed(&self) -> bool {
        let mut shared = self.lock();
        let receiver_gone = matches!(&shared.sink, Sink::Pipe(sender) if sender.is_closed());
        if receiver_gone {
            shared.close();
        }
        shared.closed
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
    /// Reserves a pipe slot if one is free now. `Ok(true)` when writing may
    /// proceed, `Ok(false)` when the reader has not caught up; the error a
    /// write would fail with when the stream is closed.
    fn try_reserve(&mut self) -> StreamResult<bool> {
        if self.permit.is_some() {
            return Ok(true);
        }
        let mut shared = self.pipe.lock();
        if shared.closed {
            return Err(shared.stream_error(WriteError::Closed));
        }
        let Sink::Pipe(sender) = &shared.sink else {
            return Ok(true);
        };
        match sender.clone().try_reserve_owned() {
            Ok(permit) => {
                self.permit = Some(permit);
                Ok(true)
            }
            Err(mpsc::error::TrySendError::Full(_)) => Ok(false),
            // The reader went away: the stream is closed.
            Err(mpsc::error::TrySendError::Closed(_)) => {
                shared.close();
                Err(shared.stream_error(WriteError::Closed))
            }
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
            // Err means the reader is gone: the stream is ready, and the
            // next write or check fails (the stream is closed).
            match sender.reserve_owned().await {
                Ok(permit) => self.permit = Some(permit),
                Err(_) => self.pipe.lock().close(),
            }
        }
    }
}

impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        let permit = self.permit.take();
        let mut shared = self.pipe.lock();
        shared
            .deliver(bytes, permit)
            .map_err(|err| shared.stream_error(err))
    }

    /// Nothing to do: every write was delivered as it was made.
    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(if self.try_reserve()? { MAX_CHUNK } else { 0 })
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
        let mut shared = this.pipe.lock();
        if shared.closed {
            return Poll::Ready(Err(shared.io_error(WriteError::Closed)));
        }
        let result = match &mut this.sender {
            Some(sender) => match sender.poll_reserve(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(())) => {
                    let (bytes, exceeded) = shared.admit(bytes);
                    // Only fails if the reader left meanwhile; the next
                    // write then finds the stream closed.
                    if !bytes.is_empty() && sender.send_item(bytes).is_err() {
                        shared.close();
                    }
                    exceeded.map_or(Ok(()), |limit| Err(WriteError::Limit(limit)))
                }
                // The reader went away.
                Poll::Ready(Err(_)) => {
                    shared.close();
                    Err(WriteError::Closed)
                }
            },
            None => shared.deliver(bytes, None),
        };
        Poll::Ready(result.map(|()| len).map_err(|err| shared.io_error(err)))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The OS error a refused write carries, if it is one.
    fn errno(err: &StreamError) -> Option<i32> {
        match err {
            StreamError::LastOperationFailed(err) => err
                .downcast_ref::<std::io::Error>()
                .and_then(std::io::Error::raw_os_error),
            _ => None,
        }
    }

    /// The exit status a write ended the task with, if it did.
    fn exit_status(err: &StreamError) -> Option<i32> {
        match err {
            StreamError::Trap(err) => err
                .downcast_ref::<wasmtime_wasi::I32Exit>()
                .map(|exit| exit.0),
            _ => None,
        }
    }

    #[test]
    fn a_pipe_whose_reader_left_refuses_writes_then_ends_the_task() {
        let (pipe, rx) = OutputPipe::new(Stream::Stdout, Output::Pipe, None, ByteSize::mib(1));
        let mut rx = rx.expect("a piped stream has a receiver");
        let mut out = pipe.p2_stream();
        assert_eq!(out.check_write().expect("open"), MAX_CHUNK);
        out.write(Bytes::from_static(b"y\n")).expect("delivered");
        assert_eq!(rx.try_recv().expect("sent").as_ref(), b"y\n");
        assert!(!pipe.is_closed());

        drop(rx);
        assert!(pipe.is_closed(), "a dropped receiver closes the stream");
        for attempt in 1..=FAILED_WRITES_BEFORE_END {
            let err = out.check_write().expect_err("closed");
            assert_eq!(errno(&err), Some(libc::EPIPE), "write {attempt}: {err:?}");
        }
        let err = out.check_write().expect_err("closed");
        assert_eq!(exit_status(&err), Some(BROKEN_PIPE_STATUS), "{err:?}");
        assert_eq!(BROKEN_PIPE_STATUS, 141);
    }

    #[test]
    fn every_handle_of_a_closed_stream_is_refused() {
        let (pipe, rx) = OutputPipe::new(Stream::Stderr, Output::Pipe, None, ByteSize::mib(1));
        drop(rx);
        // A handle that reserved nothing yet finds the stream closed at
        // once, by check or by a plain write.
        let mut first = pipe.p2_stream();
        let err = first.check_write().expect_err("closed");
        assert_eq!(errno(&err), Some(libc::EPIPE), "{err:?}");
        let mut second = pipe.p2_stream();
        let err = second.write(Bytes::from_static(b"x")).expect_err("closed");
        assert_eq!(errno(&err), Some(libc::EPIPE), "{err:?}");
        // The count is the stream's, shared by its handles.
        assert_eq!(pipe.lock().refused, 2);
    }

    #[test]
    fn captured_and_discarded_streams_never_close() {
        for mode in [Output::Capture, Output::Discard] {
            let (pipe, _) = OutputPipe::new(Stream::Stdout, mode, None, ByteSize(4));
            let mut out = pipe.p2_stream();
            for _ in 0..=FAILED_WRITES_BEFORE_END {
                assert_eq!(out.check_write().expect("open"), MAX_CHUNK);
                out.write(Bytes::from_static(b"more than fits"))
                    .expect("taken");
            }
            assert!(!pipe.is_closed());
        }
    }

    #[test]
    fn the_output_limit_still_traps_as_the_limit() {
        let (pipe, _rx) = OutputPipe::new(
            Stream::Stdout,
            Output::Pipe,
            Some(ByteSize(3)),
            ByteSize::mib(1),
        );
        let mut out = pipe.p2_stream();
        assert_eq!(out.check_write().expect("open"), MAX_CHUNK);
        match out.write(Bytes::from_static(b"four")) {
            Err(StreamError::Trap(err)) => assert!(err.downcast_ref::<Limit>().is_some()),
            other => panic!("expected the output limit: {other:?}"),
        }
    }
}

//! The framed, versioned protocol between a parent and its worker process.
//!
//! Each frame on the pipe is a 4-byte big-endian length, then the body
//! (`tokio_util`'s `LengthDelimitedCodec`, with a maximum frame size). The
//! body's first byte is the frame kind. Data frames (stdout, stderr, stdin)
//! carry their bytes as they are, so a megabyte of output costs one copy;
//! control frames (hello, run, started, finished) carry JSON, which is
//! self-describing and rare enough that its cost does not matter.
//!
//! Bulk bytes of a spec (its start `input`, its `Stdin::Bytes`) do not
//! travel as JSON inside the run frame: they follow it as raw `input` and
//! `stdin` data frames of at most [`DATA_CHUNK`] bytes each, ended by
//! `data-end` ([`RunRequest::data`]), so an input of any size fits, within
//! the worker's memory limit, which the rulebook checks up front.
//!
//! A frame that is too large, too short, of an unknown kind or with a body
//! that does not parse is a [`ProtocolError`] for the task that received it;
//! the peer is then stopped. Nothing in the decoder panics on bad input.
//!
//! Paths are bytes on Unix, not text: every path in a frame (the program,
//! each granted directory, a stdin file, the cache directory) travels as a
//! JSON string when it is UTF-8 (nearly always, and readable in a log) and
//! as an array of its bytes when it is not ([`crate::wire`]). A frame that
//! still cannot be encoded is an error for its sender ([`ProtocolError::Unencodable`]),
//! never an empty or default frame.

use std::path::PathBuf;

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use tokio_util::codec::LengthDelimitedCodec;

use crate::outcome::{Outcome, Stream, TaskMetrics};
use crate::spec::TaskSpec;
use crate::wire::{path_bytes, spec_wire};

/// Bumped on any incompatible change; checked in the handshake.
pub(crate) const PROTOCOL_VERSION: u32 = 8;

/// Identifies Isola's protocol in the first frame, so a worker started by
/// something else fails fast instead of misreading its input.
pub(crate) const MAGIC: &str = "isola-ipc";

/// The first argument that turns a binary into an Isola worker. Long and
/// odd on purpose, so no ordinary command line collides with it.
pub const WORKER_ARG: &str = "__isola-worker-v1";

/// The environment variable that tells a worker its runner's sandbox
/// policy (`on`, `off`, `required`) at start, so it installs its seccomp
/// filter before a task arrives.
pub(crate) const SANDBOX_ENV: &str = "ISOLA_WORKER_SANDBOX";

/// Environment variable carrying the parent's pid, for the parent-death check.
pub(crate) const PARENT_ENV: &str = "ISOLA_WORKER_PARENT";

/// The environment variable that tells a sandboxed worker where its
/// network namespace comes from: `new` (it makes one) or
/// `join:PID:USER:NET`, descriptors of process `PID` (its parent) for the
/// user namespace (empty: none to join) and the network namespace an
/// earlier worker made (see `process::netns`).
pub(crate) const NETNS_ENV: &str = "ISOLA_WORKER_NETNS";

/// The environment variable that names a sandboxed worker's cgroup
/// directories, one per line, which it joins itself at its start (see
/// `ipc::cgroup::join`); its [`Hello`] says how many it joined.
pub(crate) const CGROUP_ENV: &str = "ISOLA_WORKER_CGROUP";

/// Largest frame either side accepts: bounds what a confused or hostile
/// peer can make the other allocate.
pub(crate) const MAX_FRAME: usize = crate::rules::MAX_PROCESS_MESSAGE as usize;

/// The codec both ends use.
pub(crate) fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(MAX_FRAME)
        .new_codec()
}

/// Parent → worker.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ToWorker {
    /// The parent's side of the handshake.
    Hello(Hello),
    /// The task to run.
    Run(Box<RunRequest>),
    /// Bytes of the host's stdin, for a task that inherits it.
    Stdin(Bytes),
    /// The host's stdin reached its end.
    StdinEnd,
    /// Stop the task (politely: the parent kills the worker after a grace).
    Cancel,
    /// A message from the host to the guest.
    Message(Bytes),
    /// The host closed its side of the channel.
    CloseChannel,
    /// The parent read the task's report and keeps the worker for another
    /// task: nothing more for the finished task follows.
    EndTask,
    /// A program the worker's task will probably run (the last one the
    /// parent ran in a process): an idle worker loads it ahead of time.
    Preload(Box<Preload>),
    /// Instantiate the plugin `run` of this request's program and keep it
    /// for [`ToWorker::Call`]s until the pipe closes.
    Plugin(Box<RunRequest>),
    /// Call the kept plugin instance with this input.
    Call(Bytes),
    /// Call this export of the kept instance by name (`name(arg, …)`,
    /// WAVE), checked by the parent against the program.
    Invoke(String),
    /// The worker was started ahead of need: it runs a trivial task
    /// through the whole task path while idle, so the real one finds code
    /// paged in and lazy state set up.
    WarmUp,
    /// A piece of the task's start input, right after its run or plugin
    /// frame (see [`RunRequest::data`]).
    Input(Bytes),
    /// The last of the data frames that follow a run or plugin frame.
    DataEnd,
    /// The reader of this stream of the task went away in the parent (its
    /// own stdout closed, a dropped receiver): the guest's writes to it
    /// now fail as a closed pipe's, as they would in a thread task.
    OutputClosed(Stream),
    /// The answer to the task's [`FromWorker::HostCall`].
    HostReply(HostReply),
}

/// What a host function call gave, for the worker's guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HostReply {
    /// The function's result.
    Ok(Bytes),
    /// The function's error value (or a refusal: not granted, unknown).
    Err(String),
    /// The host's side failed; the task ends `Failed`.
    Fault(crate::outcome::HostFault),
}

impl HostReply {
    /// The reply for a call's result.
    pub(crate) fn of(
        result: Result<crate::host_fn::HostResult, crate::outcome::HostFault>,
    ) -> Self {
        match result {
            Ok(Ok(bytes)) => HostReply::Ok(Bytes::from(bytes)),
            Ok(Err(error)) => HostReply::Err(error),
            Err(fault) => HostReply::Fault(fault),
        }
    }

    /// The call's result, as the guest's side takes it.
    pub(crate) fn into_result(
        self,
    ) -> Result<crate::host_fn::HostResult, crate::outcome::HostFault> {
        match self {
            HostReply::Ok(bytes) => Ok(Ok(bytes.to_vec())),
            HostReply::Err(error) => Ok(Err(error)),
            HostReply::Fault(fault) => Err(fault),
        }
    }
}

/// Worker → parent.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum FromWorker {
    /// The worker's side of the handshake.
    Hello(Hello),
    /// The guest's first instruction is about to run.
    Started,
    /// Bytes the guest wrote to stdout.
    Stdout(Bytes),
    /// Bytes the guest wrote to stderr.
    Stderr(Bytes),
    /// A message the guest posted.
    Message(Bytes),
    /// How the task ended, and what it cost.
    Finished(Box<Finished>),
    /// What a kept plugin's `run` returned.
    CallOutput(Bytes),
    /// A call to a kept plugin that returned no output.
    CallFailed(Box<CallFailure>),
    /// The guest calls a host function; one at a time, answered by
    /// [`ToWorker::HostReply`].
    HostCall {
        /// The function's name.
        function: String,
        /// The guest's arguments.
        args: Bytes,
    },
}

/// How a call to a kept plugin instance failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "failure", rename_all = "snake_case")]
pub(crate) enum CallFailure {
    /// `run` returned an error; the instance stays usable.
    Rejected { error: String },
    /// The call ended otherwise (trap, limit); the instance is unusable.
    Ended {
        outcome: Outcome,
        metrics: TaskMetrics,
    },
}

/// The handshake frame both sides send first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Hello {
    /// [`MAGIC`].
    pub(crate) magic: String,
    /// [`PROTOCOL_VERSION`].
    pub(crate) version: u32,
    /// The sender's process id.
    pub(crate) pid: u32,
    /// A worker's only: how many of the cgroups [`CGROUP_ENV`] named it
    /// joined (the parent checks it against how many it named: a worker
    /// that never saw the variable joined none).
    #[serde(default)]
    pub(crate) cgroups_joined: usize,
    /// A worker's only: why it joined none of them, if it failed to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) cgroup: Option<String>,
}

impl Hello {
    /// This process's hello.
    pub(crate) fn current() -> Hello {
        Hello {
            magic: MAGIC.to_owned(),
            version: PROTOCOL_VERSION,
            pid: std::process::id(),
            cgroups_joined: 0,
            cgroup: None,
        }
    }
}

/// Everything a worker needs to run one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct RunRequest {
    /// The spec, with inherited variables already resolved into `env` (the
    /// worker's own environment is empty) and output set to stream back.
    /// On the wire its paths are bytes ([`crate::wire`]): `TaskSpec`'s own
    /// serde form would refuse a path that is not UTF-8.
    #[serde(with = "spec_wire")]
    pub(crate) spec: TaskSpec,
    /// Where the parent keeps precompiled artifacts: the worker loads from
    /// here instead of compiling.
    #[serde(with = "path_bytes")]
    pub(crate) cache_dir: PathBuf,
    /// The program as the parent identified it, so the worker finds its
    /// artifact without reading and hashing the Wasm file.
    pub(crate) program: ProgramId,
    /// OS limits the worker applies to itself before loading the program.
    pub(crate) os_limits: OsLimits,
    /// The export to enter.
    pub(crate) entry: crate::spec::Entry,
    /// What follows this frame as data frames, to be put back into `spec`.
    #[serde(default)]
    pub(crate) data: FollowingData,
    /// The OS sandbox the worker enters before running the task.
    #[serde(default)]
    pub(crate) sandbox: crate::spec::Sandbox,
}

/// Largest piece of bulk data in one `input` or `stdin` frame.
pub(crate) const DATA_CHUNK: usize = 1 << 20;

/// The bulk bytes that follow a run or plugin frame as data frames: the
/// spec's `input` (as `input` frames), then its `Stdin::Bytes` (as `stdin`
/// frames, the spec's `stdin` being `Closed` in the frame), then
/// `data-end`. Nothing follows when neither is set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FollowingData {
    /// `spec.input` is `Some`, and follows.
    pub(crate) input: bool,
    /// `spec.stdin` is `Stdin::Bytes`, and follows.
    pub(crate) stdin: bool,
}

impl FollowingData {
    /// Takes the bulk bytes out of `spec` (its `input`, its stdin bytes,
    /// leaving `Stdin::Closed`), returning what to send after the frame.
    pub(crate) fn take(spec: &mut TaskSpec) -> (FollowingData, Vec<ToWorker>) {
        let input = spec.input.take();
        let stdin = match std::mem::replace(&mut spec.stdin, crate::spec::Stdin::Closed) {
            crate::spec::Stdin::Bytes(bytes) => Some(bytes),
            other => {
                spec.stdin = other;
                None
            }
        };
        let data = FollowingData {
            input: input.is_some(),
            stdin: stdin.is_some(),
        };
        // Pieces of one buffer each, not copies.
        let pieces = |bytes: Vec<u8>| {
            let bytes = Bytes::from(bytes);
            (0..bytes.len())
                .step_by(DATA_CHUNK)
                .map(|at| bytes.slice(at..bytes.len().min(at + DATA_CHUNK)))
                .collect::<Vec<Bytes>>()
        };
        let mut frames = Vec::new();
        if let Some(input) = input {
            frames.extend(pieces(input).into_iter().map(ToWorker::Input));
        }
        if let Some(stdin) = stdin {
            frames.extend(pieces(stdin).into_iter().map(ToWorker::Stdin));
        }
        if data.input || data.stdin {
            frames.push(ToWorker::DataEnd);
        }
        (data, frames)
    }
}

/// What a [`ToWorker::Preload`] names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Preload {
    /// The program's Wasm file (read only if its artifact is missing).
    #[serde(with = "path_bytes")]
    pub(crate) wasm: PathBuf,
    /// The parent's cache of precompiled artifacts.
    #[serde(with = "path_bytes")]
    pub(crate) cache_dir: PathBuf,
    /// The program by content.
    pub(crate) program: ProgramId,
}

/// A program by content: the SHA-256 of its Wasm bytes and its kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ProgramId {
    /// SHA-256 of the Wasm bytes, in hex on the wire.
    #[serde(with = "hex::serde")]
    pub(crate) hash: crate::cache::ContentHash,
    /// Module or component.
    pub(crate) kind: crate::program::WasmKind,
}

impl ProgramId {
    /// The id of a loaded program.
    pub(crate) fn of(program: &crate::program::Program) -> ProgramId {
        ProgramId {
            hash: program.inner.hash,
            kind: program.wasm_kind(),
        }
    }
}

/// Kernel-enforced limits of a worker process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct OsLimits {
    /// `RLIMIT_DATA`: writable private memory, which is what the guest's
    /// linear memory, the host's heap and fiber stacks use.
    pub(crate) data_bytes: u64,
    /// `RLIMIT_AS`: total address space, generous because the engine
    /// reserves (without using) several GiB for each linear memory.
    pub(crate) address_space_bytes: u64,
    /// `RLIMIT_CPU` in seconds, if the task has a timeout.
    pub(crate) cpu_seconds: Option<u64>,
    /// `RLIMIT_NOFILE`.
    pub(crate) open_files: u64,
}

/// The body of a `finished` frame: how the task ended, what it cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Finished {
    /// The task's outcome.
    pub(crate) outcome: Outcome,
    /// Its metrics, measured in the worker.
    pub(crate) metrics: TaskMetrics,
}

/// Why a frame could not be understood, or built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ProtocolError {
    /// A frame with no kind byte.
    #[error("empty frame")]
    Empty,
    /// A kind byte this version does not know.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// A body that does not parse as its kind says.
    #[error("malformed `{kind}` frame: {message}")]
    Malformed {
        /// The frame kind's name.
        kind: &'static str,
        /// What the parser said.
        message: String,
    },
    /// A peer of another protocol or version.
    #[error(
        "peer speaks `{magic}` version {version}, expected `{MAGIC}` version {PROTOCOL_VERSION}"
    )]
    Incompatible {
        /// The peer's magic.
        magic: String,
        /// The peer's version.
        version: u32,
    },
    /// A frame whose body could not be encoded. Nothing is sent in its
    /// place: the sender ends the task with this error instead.
    #[error("cannot encode the `{kind}` frame: {message}")]
    Unencodable {
        /// The frame kind's name.
        kind: &'static str,
        /// What the encoder said.
        message: String,
    },
}

/// The first byte of each frame.
mod kind {
    pub(super) const HELLO: u8 = 1;
    pub(super) const RUN: u8 = 2;
    pub(super) const STDIN: u8 = 3;
    pub(super) const STDIN_END: u8 = 4;
    pub(super) const CANCEL: u8 = 5;
    pub(super) const MESSAGE_IN: u8 = 6;
    pub(super) const CLOSE_CHANNEL: u8 = 7;
    pub(super) const END_TASK: u8 = 8;
    pub(super) const PRELOAD: u8 = 9;
    pub(super) const WARM_UP: u8 = 10;
    pub(super) const PLUGIN: u8 = 11;
    pub(super) const CALL: u8 = 12;
    pub(super) const OUTPUT_CLOSED: u8 = 13;
    pub(super) const INPUT: u8 = 14;
    pub(super) const DATA_END: u8 = 15;
    pub(super) const CALL_OUTPUT: u8 = 21;
    pub(super) const CALL_FAILED: u8 = 22;
    pub(super) const STARTED: u8 = 16;
    pub(super) const STDOUT: u8 = 17;
    pub(super) const STDERR: u8 = 18;
    pub(super) const FINISHED: u8 = 19;
    pub(super) const MESSAGE_OUT: u8 = 20;
    pub(super) const HOST_CALL: u8 = 23;
    pub(super) const HOST_REPLY: u8 = 24;
    pub(super) const INVOKE: u8 = 25;
}

/// A frame of `kind` whose body is `body` as it is.
fn frame_with(kind: u8, body: &[u8]) -> Bytes {
    let mut frame = BytesMut::with_capacity(1 + body.len());
    frame.put_u8(kind);
    frame.put_slice(body);
    frame.freeze()
}

/// A frame of `kind` (named `name` in errors) whose body is `value` as
/// JSON. Fallible on purpose: a value that cannot be encoded is the
/// sender's error to report, never an empty body the peer would then
/// misread (which is how a non-UTF-8 path once crashed every worker).
fn json_frame(
    kind: u8,
    name: &'static str,
    value: &impl Serialize,
) -> Result<Bytes, ProtocolError> {
    let mut frame = vec![kind];
    serde_json::to_writer(&mut frame, value).map_err(|err| ProtocolError::Unencodable {
        kind: name,
        message: err.to_string(),
    })?;
    Ok(Bytes::from(frame))
}

/// Parses the JSON body of a `kind` frame.
fn parse_json<T: for<'de> Deserialize<'de>>(
    kind: &'static str,
    body: &[u8],
) -> Result<T, ProtocolError> {
    serde_json::from_slice(body).map_err(|err| ProtocolError::Malformed {
        kind,
        message: err.to_string(),
    })
}

/// The kind byte and the body of a frame.
fn split(frame: &[u8]) -> Result<(u8, &[u8]), ProtocolError> {
    frame
        .split_first()
        .map(|(kind, body)| (*kind, body))
        .ok_or(ProtocolError::Empty)
}

/// Checks that a frame of a kind without a body has none.
fn expect_empty(kind: &'static str, body: &[u8]) -> Result<(), ProtocolError> {
    if body.is_empty() {
        Ok(())
    } else {
        Err(ProtocolError::Malformed {
            kind,
            message: format!("{} unexpected bytes", body.len()),
        })
    }
}

impl ToWorker {
    /// The frame's bytes.
    ///
    /// # Errors
    ///
    /// [`ProtocolError::Unencodable`] if a JSON body cannot be encoded;
    /// the caller then ends the task `Failed` with that reason.
    pub(crate) fn encode(&self) -> Result<Bytes, ProtocolError> {
        Ok(match self {
            ToWorker::Hello(hello) => json_frame(kind::HELLO, "hello", hello)?,
            ToWorker::Run(request) => json_frame(kind::RUN, "run", request)?,
            ToWorker::Stdin(bytes) => frame_with(kind::STDIN, bytes),
            ToWorker::StdinEnd => frame_with(kind::STDIN_END, &[]),
            ToWorker::Cancel => frame_with(kind::CANCEL, &[]),
            ToWorker::Message(bytes) => frame_with(kind::MESSAGE_IN, bytes),
            ToWorker::CloseChannel => frame_with(kind::CLOSE_CHANNEL, &[]),
            ToWorker::EndTask => frame_with(kind::END_TASK, &[]),
            ToWorker::Preload(preload) => json_frame(kind::PRELOAD, "preload", preload)?,
            ToWorker::WarmUp => frame_with(kind::WARM_UP, &[]),
            ToWorker::Plugin(request) => json_frame(kind::PLUGIN, "plugin", request)?,
            ToWorker::Call(input) => frame_with(kind::CALL, input),
            ToWorker::Invoke(call) => frame_with(kind::INVOKE, call.as_bytes()),
            ToWorker::Input(bytes) => frame_with(kind::INPUT, bytes),
            ToWorker::DataEnd => frame_with(kind::DATA_END, &[]),
            ToWorker::OutputClosed(stream) => frame_with(
                kind::OUTPUT_CLOSED,
                &[match stream {
                    Stream::Stdout => 1,
                    Stream::Stderr => 2,
                }],
            ),
            // A tag byte, then the bytes, the UTF-8 error or the fault as
            // JSON.
            ToWorker::HostReply(reply) => {
                let (tag, body) = match reply {
                    HostReply::Ok(bytes) => (0u8, bytes.to_vec()),
                    HostReply::Err(error) => (1, error.clone().into_bytes()),
                    HostReply::Fault(fault) => (
                        2,
                        serde_json::to_vec(fault).map_err(|err| ProtocolError::Unencodable {
                            kind: "host-reply",
                            message: err.to_string(),
                        })?,
                    ),
                };
                let mut frame = BytesMut::with_capacity(2 + body.len());
                frame.put_u8(kind::HOST_REPLY);
                frame.put_u8(tag);
                frame.put_slice(&body);
                frame.freeze()
            }
        })
    }

    /// Reads a frame.
    ///
    /// # Errors
    ///
    /// A [`ProtocolError`] for an empty, unknown or malformed frame.
    pub(crate) fn decode(frame: &[u8]) -> Result<ToWorker, ProtocolError> {
        let (kind, body) = split(frame)?;
        Ok(match kind {
            kind::HELLO => ToWorker::Hello(parse_json("hello", body)?),
            kind::RUN => ToWorker::Run(Box::new(parse_json("run", body)?)),
            kind::STDIN => ToWorker::Stdin(Bytes::copy_from_slice(body)),
            kind::STDIN_END => {
                expect_empty("stdin-end", body)?;
                ToWorker::StdinEnd
            }
            kind::CANCEL => {
                expect_empty("cancel", body)?;
                ToWorker::Cancel
            }
            kind::MESSAGE_IN => ToWorker::Message(Bytes::copy_from_slice(body)),
            kind::CLOSE_CHANNEL => {
                expect_empty("close-channel", body)?;
                ToWorker::CloseChannel
            }
            kind::END_TASK => {
                expect_empty("end-task", body)?;
                ToWorker::EndTask
            }
            kind::PRELOAD => ToWorker::Preload(Box::new(parse_json("preload", body)?)),
            kind::WARM_UP => {
                expect_empty("warm-up", body)?;
                ToWorker::WarmUp
            }
            kind::PLUGIN => ToWorker::Plugin(Box::new(parse_json("plugin", body)?)),
            kind::CALL => ToWorker::Call(Bytes::copy_from_slice(body)),
            kind::INVOKE => ToWorker::Invoke(String::from_utf8(body.to_vec()).map_err(|_| {
                ProtocolError::Malformed {
                    kind: "invoke",
                    message: "the call is not UTF-8".into(),
                }
            })?),
            kind::INPUT => ToWorker::Input(Bytes::copy_from_slice(body)),
            kind::DATA_END => {
                expect_empty("data-end", body)?;
                ToWorker::DataEnd
            }
            kind::HOST_REPLY => ToWorker::HostReply(match body.split_first() {
                Some((0, bytes)) => HostReply::Ok(Bytes::copy_from_slice(bytes)),
                Some((1, error)) => {
                    HostReply::Err(String::from_utf8(error.to_vec()).map_err(|_| {
                        ProtocolError::Malformed {
                            kind: "host-reply",
                            message: "the error is not UTF-8".into(),
                        }
                    })?)
                }
                Some((2, fault)) => HostReply::Fault(parse_json("host-reply", fault)?),
                _ => {
                    return Err(ProtocolError::Malformed {
                        kind: "host-reply",
                        message: "expected a tag byte 0, 1 or 2".into(),
                    });
                }
            }),
            kind::OUTPUT_CLOSED => ToWorker::OutputClosed(match body {
                [1] => Stream::Stdout,
                [2] => Stream::Stderr,
                _ => {
                    return Err(ProtocolError::Malformed {
                        kind: "output-closed",
                        message: "expected one byte, 1 (stdout) or 2 (stderr)".into(),
                    });
                }
            }),
            other => return Err(ProtocolError::UnknownKind(other)),
        })
    }
}

impl FromWorker {
    /// The frame's bytes.
    ///
    /// # Errors
    ///
    /// [`ProtocolError::Unencodable`] if a JSON body cannot be encoded.
    pub(crate) fn encode(&self) -> Result<Bytes, ProtocolError> {
        Ok(match self {
            FromWorker::Hello(hello) => json_frame(kind::HELLO, "hello", hello)?,
            FromWorker::Started => frame_with(kind::STARTED, &[]),
            FromWorker::Stdout(bytes) => frame_with(kind::STDOUT, bytes),
            FromWorker::Stderr(bytes) => frame_with(kind::STDERR, bytes),
            FromWorker::Finished(finished) => json_frame(kind::FINISHED, "finished", finished)?,
            FromWorker::Message(bytes) => frame_with(kind::MESSAGE_OUT, bytes),
            FromWorker::CallOutput(bytes) => frame_with(kind::CALL_OUTPUT, bytes),
            FromWorker::CallFailed(failure) => {
                json_frame(kind::CALL_FAILED, "call-failed", failure)?
            }
            // The name's length (4 bytes, big-endian), the name, the
            // arguments.
            FromWorker::HostCall { function, args } => {
                let name = function.as_bytes();
                let len = u32::try_from(name.len()).map_err(|_| ProtocolError::Unencodable {
                    kind: "host-call",
                    message: "the function name is too long".into(),
                })?;
                let mut frame = BytesMut::with_capacity(5 + name.len() + args.len());
                frame.put_u8(kind::HOST_CALL);
                frame.put_u32(len);
                frame.put_slice(name);
                frame.put_slice(args);
                frame.freeze()
            }
        })
    }

    /// As [`FromWorker::encode`], for the worker's side: a report
    /// (`finished`, or a `call-failed` that ended the instance) that cannot
    /// be encoded is replaced by one whose outcome is
    /// [`Outcome::Failed`] naming why, so the parent ends the task `Failed`
    /// with the reason instead of seeing a worker that died without a word.
    ///
    /// # Errors
    ///
    /// [`ProtocolError::Unencodable`] for any other frame, or if even the
    /// replacement cannot be encoded.
    pub(crate) fn encode_reporting(&self) -> Result<Bytes, ProtocolError> {
        let err = match self.encode() {
            Ok(frame) => return Ok(frame),
            Err(err) => err,
        };
        let failed = |metrics: &TaskMetrics| Finished {
            outcome: Outcome::Failed {
                message: format!("the worker cannot report how the task ended: {err}"),
            },
            metrics: metrics.clone(),
        };
        match self {
            FromWorker::Finished(finished) => {
                FromWorker::Finished(Box::new(failed(&finished.metrics))).encode()
            }
            FromWorker::CallFailed(failure) => {
                let metrics = match failure.as_ref() {
                    CallFailure::Ended { metrics, .. } => metrics.clone(),
                    CallFailure::Rejected { .. } => TaskMetrics::default(),
                };
                let Finished { outcome, metrics } = failed(&metrics);
                FromWorker::CallFailed(Box::new(CallFailure::Ended { outcome, metrics })).encode()
            }
            _ => Err(err),
        }
    }

    /// Reads a frame.
    ///
    /// # Errors
    ///
    /// A [`ProtocolError`] for an empty, unknown or malformed frame.
    pub(crate) fn decode(frame: &[u8]) -> Result<FromWorker, ProtocolError> {
        let (kind, body) = split(frame)?;
        Ok(match kind {
            kind::HELLO => FromWorker::Hello(parse_json("hello", body)?),
            kind::STARTED => {
                expect_empty("started", body)?;
                FromWorker::Started
            }
            kind::STDOUT => FromWorker::Stdout(Bytes::copy_from_slice(body)),
            kind::STDERR => FromWorker::Stderr(Bytes::copy_from_slice(body)),
            kind::FINISHED => FromWorker::Finished(Box::new(parse_json("finished", body)?)),
            kind::MESSAGE_OUT => FromWorker::Message(Bytes::copy_from_slice(body)),
            kind::CALL_OUTPUT => FromWorker::CallOutput(Bytes::copy_from_slice(body)),
            kind::CALL_FAILED => FromWorker::CallFailed(Box::new(parse_json("call-failed", body)?)),
            kind::HOST_CALL => {
                let malformed = |message: &str| ProtocolError::Malformed {
                    kind: "host-call",
                    message: message.to_owned(),
                };
                let (len, rest) = body
                    .split_first_chunk::<4>()
                    .ok_or_else(|| malformed("no name length"))?;
                let len = u32::from_be_bytes(*len) as usize;
                if rest.len() < len {
                    return Err(malformed("the name is cut short"));
                }
                let (name, args) = rest.split_at(len);
                FromWorker::HostCall {
                    function: String::from_utf8(name.to_vec())
                        .map_err(|_| malformed("the name is not UTF-8"))?,
                    args: Bytes::copy_from_slice(args),
                }
            }
            other => return Err(ProtocolError::UnknownKind(other)),
        })
    }
}

/// Checks the peer's hello.
pub(crate) fn check_hello(hello: &Hello) -> Result<(), ProtocolError> {
    if hello.magic == MAGIC && hello.version == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(ProtocolError::Incompatible {
            magic: hello.magic.clone(),
            version: hello.version,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::{Limit, TrapInfo, TrapKind};
    use crate::spec::{DirGrant, Isolation, Stdin};
    use crate::wire::{SpecOnWire, WireSpec};
    use tokio_util::codec::{Decoder, Encoder};

    /// Encodes `msg` and checks it decodes to itself.
    fn round_trip_to_worker(msg: ToWorker) {
        let frame = msg.encode().expect("encodes");
        assert_eq!(ToWorker::decode(&frame).as_ref(), Ok(&msg));
    }

    /// Encodes `msg` and checks it decodes to itself.
    fn round_trip_from_worker(msg: FromWorker) {
        let frame = msg.encode().expect("encodes");
        assert_eq!(FromWorker::decode(&frame).as_ref(), Ok(&msg));
    }

    #[test]
    fn bulk_data_follows_the_run_frame_in_pieces() {
        let mut spec = TaskSpec::new("x.wasm");
        spec.input = Some(vec![7; DATA_CHUNK * 2 + 1]);
        spec.stdin = Stdin::Bytes(vec![1, 2, 3]);
        let (data, frames) = FollowingData::take(&mut spec);
        assert_eq!(
            data,
            FollowingData {
                input: true,
                stdin: true
            }
        );
        assert_eq!((spec.input, spec.stdin), (None, Stdin::Closed));
        let lengths: Vec<(u8, usize)> = frames
            .iter()
            .map(|frame| match frame {
                ToWorker::Input(bytes) => (kind::INPUT, bytes.len()),
                ToWorker::Stdin(bytes) => (kind::STDIN, bytes.len()),
                ToWorker::DataEnd => (kind::DATA_END, 0),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(
            lengths,
            [
                (kind::INPUT, DATA_CHUNK),
                (kind::INPUT, DATA_CHUNK),
                (kind::INPUT, 1),
                (kind::STDIN, 3),
                (kind::DATA_END, 0)
            ]
        );
        // An empty input still follows (as no piece), and is put back as
        // empty; a spec without bulk bytes sends nothing more.
        let mut spec = TaskSpec::new("x.wasm");
        spec.input = Some(Vec::new());
        assert_eq!(FollowingData::take(&mut spec).1, [ToWorker::DataEnd]);
        let mut spec = TaskSpec::new("x.wasm");
        spec.stdin = Stdin::Inherit;
        let (data, frames) = FollowingData::take(&mut spec);
        assert_eq!(
            (data, frames.len(), spec.stdin),
            (FollowingData::default(), 0, Stdin::Inherit)
        );
    }

    #[test]
    fn every_frame_round_trips() {
        round_trip_to_worker(ToWorker::Hello(Hello::current()));
        let mut spec = TaskSpec::new("x.wasm");
        spec.args = vec!["a".into()];
        spec.limits.timeout = Some(std::time::Duration::from_millis(1500));
        round_trip_to_worker(ToWorker::Run(Box::new(RunRequest {
            spec,
            cache_dir: "/tmp/c".into(),
            program: ProgramId {
                hash: [7; 32],
                kind: crate::program::WasmKind::Component,
            },
            os_limits: OsLimits {
                data_bytes: 1,
                address_space_bytes: 2,
                cpu_seconds: Some(3),
                open_files: 4,
            },
            entry: crate::spec::Entry::Run,
            data: FollowingData {
                input: true,
                stdin: false,
            },
            sandbox: crate::spec::Sandbox::default(),
        })));
        round_trip_to_worker(ToWorker::Input(Bytes::from_static(b"\0\xffinput")));
        round_trip_to_worker(ToWorker::DataEnd);
        round_trip_to_worker(ToWorker::Stdin(Bytes::from_static(b"\0\xffbytes")));
        round_trip_to_worker(ToWorker::StdinEnd);
        round_trip_to_worker(ToWorker::Cancel);
        round_trip_to_worker(ToWorker::Message(Bytes::from_static(b"{\"job\":1}")));
        round_trip_to_worker(ToWorker::CloseChannel);
        round_trip_to_worker(ToWorker::EndTask);
        round_trip_to_worker(ToWorker::WarmUp);
        round_trip_to_worker(ToWorker::Call(Bytes::from_static(b"input")));
        round_trip_to_worker(ToWorker::Invoke("add(1, 2)".into()));
        round_trip_to_worker(ToWorker::OutputClosed(Stream::Stdout));
        round_trip_to_worker(ToWorker::OutputClosed(Stream::Stderr));
        assert!(
            ToWorker::decode(&[13]).is_err(),
            "output-closed without a stream"
        );
        assert!(
            ToWorker::decode(&[13, 3]).is_err(),
            "output-closed of no stream"
        );
        round_trip_from_worker(FromWorker::CallOutput(Bytes::from_static(b"\0out")));
        round_trip_from_worker(FromWorker::CallFailed(Box::new(CallFailure::Rejected {
            error: "no".into(),
        })));
        round_trip_from_worker(FromWorker::CallFailed(Box::new(CallFailure::Ended {
            outcome: Outcome::LimitExceeded {
                limit: Limit::Fuel { budget: 10 },
            },
            metrics: TaskMetrics::default(),
        })));
        round_trip_to_worker(ToWorker::Preload(Box::new(Preload {
            wasm: "/w/a.wasm".into(),
            cache_dir: "/c".into(),
            program: ProgramId {
                hash: [1; 32],
                kind: crate::program::WasmKind::Module,
            },
        })));
        round_trip_from_worker(FromWorker::Message(Bytes::from(vec![7u8; 1 << 20])));
        round_trip_from_worker(FromWorker::HostCall {
            function: "kv.get".into(),
            args: Bytes::from_static(b"\0key"),
        });
        round_trip_from_worker(FromWorker::HostCall {
            function: String::new(),
            args: Bytes::new(),
        });
        for reply in [
            HostReply::Ok(Bytes::from_static(b"\xffresult")),
            HostReply::Ok(Bytes::new()),
            HostReply::Err("no such key".into()),
            HostReply::Fault(crate::outcome::HostFault::Panicked {
                function: "f".into(),
                message: "boom".into(),
            }),
            HostReply::Fault(crate::outcome::HostFault::Unreachable),
        ] {
            round_trip_to_worker(ToWorker::HostReply(reply));
        }
        // Cut short or unknown: refused, never misread.
        for frame in [
            &[kind::HOST_CALL, 0, 0][..],
            &[kind::HOST_CALL, 0, 0, 0, 9, b'a'],
            &[kind::HOST_REPLY],
            &[kind::HOST_REPLY, 7],
            &[kind::HOST_REPLY, 1, 0xff],
        ] {
            let refused = if frame[0] == kind::HOST_CALL {
                FromWorker::decode(frame).is_err()
            } else {
                ToWorker::decode(frame).is_err()
            };
            assert!(refused, "{frame:?}");
        }
        round_trip_from_worker(FromWorker::Started);
        round_trip_from_worker(FromWorker::Stdout(Bytes::from_static(b"out")));
        round_trip_from_worker(FromWorker::Stderr(Bytes::new()));
        for outcome in [
            Outcome::Exited { code: 3 },
            Outcome::Trapped(TrapInfo {
                kind: TrapKind::StackOverflow,
                message: "call stack exhausted".into(),
                backtrace: Vec::new(),
            }),
            Outcome::LimitExceeded {
                limit: Limit::Timeout {
                    after: std::time::Duration::from_millis(20),
                },
            },
            Outcome::Cancelled,
            Outcome::Crashed {
                signal: Some(9),
                status: None,
                reason: None,
            },
        ] {
            round_trip_from_worker(FromWorker::Finished(Box::new(Finished {
                outcome,
                metrics: TaskMetrics::default(),
            })));
        }
    }

    #[test]
    fn garbage_frames_are_errors() {
        assert_eq!(FromWorker::decode(&[]), Err(ProtocolError::Empty));
        assert_eq!(
            FromWorker::decode(&[200]),
            Err(ProtocolError::UnknownKind(200))
        );
        assert!(matches!(
            FromWorker::decode(&[kind::FINISHED, b'{', b'x']),
            Err(ProtocolError::Malformed {
                kind: "finished",
                ..
            })
        ));
        assert!(matches!(
            ToWorker::decode(&[kind::RUN, 0xff, 0xfe]),
            Err(ProtocolError::Malformed { kind: "run", .. })
        ));
        assert!(matches!(
            ToWorker::decode(&[kind::CANCEL, 1]),
            Err(ProtocolError::Malformed { .. })
        ));
        // Random bytes never panic, whatever they decode to.
        let mut seed = 0x9e3779b97f4a7c15u64;
        for len in 0..512 {
            let frame: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            let _ = FromWorker::decode(&frame);
            let _ = ToWorker::decode(&frame);
        }
    }

    /// A path that is not UTF-8 (issue 18, item 4): once, the run frame of
    /// such a spec failed to serialize and went out empty.
    fn not_utf8(prefix: &str) -> std::path::PathBuf {
        use std::os::unix::ffi::OsStrExt;
        let mut bytes = prefix.as_bytes().to_vec();
        bytes.extend_from_slice(b"/dir-\xff\xfe/x");
        std::path::PathBuf::from(std::ffi::OsStr::from_bytes(&bytes))
    }

    /// A run request with every path of the frame not UTF-8.
    fn request_with_paths(wasm: std::path::PathBuf) -> RunRequest {
        let mut spec = TaskSpec::new(wasm);
        spec.dirs = vec![
            DirGrant {
                host: not_utf8("/data"),
                guest: Some("/data".into()),
                writable: true,
            },
            DirGrant {
                host: "/plain".into(),
                guest: None,
                writable: false,
            },
        ];
        spec.stdin = Stdin::File(not_utf8("/in"));
        spec.input = Some(vec![0, 255]);
        spec.isolation = Isolation::Process;
        RunRequest {
            spec,
            cache_dir: not_utf8("/cache"),
            program: ProgramId {
                hash: [3; 32],
                kind: crate::program::WasmKind::Module,
            },
            os_limits: OsLimits {
                data_bytes: 1,
                address_space_bytes: 2,
                cpu_seconds: None,
                open_files: 4,
            },
            entry: crate::spec::Entry::Auto,
            data: FollowingData::default(),
            sandbox: crate::spec::Sandbox::default(),
        }
    }

    #[test]
    fn paths_that_are_not_utf8_cross_the_pipe_as_bytes() {
        let request = request_with_paths(not_utf8("/w"));
        round_trip_to_worker(ToWorker::Run(Box::new(request.clone())));
        round_trip_to_worker(ToWorker::Plugin(Box::new(request)));
        round_trip_to_worker(ToWorker::Preload(Box::new(Preload {
            wasm: not_utf8("/w"),
            cache_dir: not_utf8("/c"),
            program: ProgramId {
                hash: [1; 32],
                kind: crate::program::WasmKind::Component,
            },
        })));
        // A frame is never empty: the old encoder sent `[kind]` alone.
        let frame = ToWorker::Run(Box::new(request_with_paths(not_utf8("/w"))))
            .encode()
            .expect("encodes");
        assert!(frame.len() > 100, "{frame:?}");
    }

    #[test]
    fn utf8_paths_keep_the_spec_s_own_json() {
        // A UTF-8 spec is written exactly as `TaskSpec`'s serde form writes
        // it, so older frames (and tools that build them) still parse, and
        // the run-frame size rule measures what is sent.
        let mut spec = TaskSpec::new("/w/é.wasm");
        spec.dirs = vec![DirGrant {
            host: "/data".into(),
            guest: Some("/d".into()),
            writable: true,
        }];
        spec.stdin = Stdin::File("/in.txt".into());
        spec.argv0 = Some("prog".into());
        spec.input = Some(vec![1, 2]);
        spec.shared_group = Some("g".into());
        let own = serde_json::to_string(&spec).expect("the spec's own JSON");
        let wire = serde_json::to_string(&SpecOnWire(&spec)).expect("the wire JSON");
        assert_eq!(wire, own);
        // And a spec in its own JSON reads back through the wire form.
        let read: WireSpec<'_> = serde_json::from_str(&own).expect("reads");
        assert_eq!(TaskSpec::from(read), spec);
        // Unknown fields are refused, as by the spec itself.
        let extra = own.replacen('{', "{\"surprise\":1,", 1);
        assert!(serde_json::from_str::<WireSpec<'_>>(&extra).is_err());
    }

    #[test]
    fn encoding_errors_name_their_frame_and_sound_reports_go_out_unchanged() {
        // No report the worker builds fails to encode any more (paths were
        // the one cause); the error and the worker's path are checked here.
        let err = ProtocolError::Unencodable {
            kind: "finished",
            message: "boom".into(),
        };
        assert_eq!(err.to_string(), "cannot encode the `finished` frame: boom");
        let finished = FromWorker::Finished(Box::new(Finished {
            outcome: Outcome::Exited { code: 0 },
            metrics: TaskMetrics::default(),
        }));
        // A report that encodes is sent as it is.
        assert_eq!(finished.encode_reporting(), finished.encode());
    }

    #[test]
    fn handshake_rejects_other_versions() {
        assert_eq!(check_hello(&Hello::current()), Ok(()));
        let mut old = Hello::current();
        old.version = PROTOCOL_VERSION + 1;
        assert!(matches!(
            check_hello(&old),
            Err(ProtocolError::Incompatible { .. })
        ));
        let mut other = Hello::current();
        other.magic = "something-else".into();
        assert!(check_hello(&other).is_err());
    }

    #[test]
    fn codec_rejects_oversized_and_waits_for_truncated_frames() {
        let mut codec = super::codec();
        // A length prefix announcing more than MAX_FRAME.
        let mut buf = BytesMut::new();
        buf.put_u32((MAX_FRAME + 1) as u32);
        buf.put_slice(&[kind::STDOUT; 16]);
        assert!(
            codec.decode(&mut buf).is_err(),
            "oversized frame is an error"
        );

        // A truncated frame is not yet a frame...
        let mut codec = super::codec();
        let mut buf = BytesMut::new();
        codec
            .encode(
                FromWorker::Stdout(Bytes::from_static(b"hello"))
                    .encode()
                    .expect("a data frame encodes"),
                &mut buf,
            )
            .expect("encode");
        let full = buf.clone();
        buf.truncate(full.len() - 2);
        assert_eq!(codec.decode(&mut buf).expect("no error yet"), None);
        // ...and at end of stream it is an error, not a hang or a panic.
        assert!(codec.decode_eof(&mut buf).is_err());

        // The whole frame decodes (with a fresh codec: the last one is
        // mid-frame).
        let mut codec = super::codec();
        let mut buf = full;
        let frame = codec.decode(&mut buf).expect("decode").expect("frame");
        assert_eq!(
            FromWorker::decode(&frame),
            Ok(FromWorker::Stdout(Bytes::from_static(b"hello")))
        );
    }
}

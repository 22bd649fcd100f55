//! The framed, versioned protocol between a parent and its worker process.
//!
//! Each frame on the pipe is a 4-byte big-endian length, then the body
//! (`tokio_util`'s `LengthDelimitedCodec`, with a maximum frame size). The
//! body's first byte is the frame kind. Data frames (stdout, stderr, stdin)
//! carry their bytes as they are, so a megabyte of output costs one copy;
//! control frames (hello, run, started, finished) carry JSON, which is
//! self-describing and rare enough that its cost does not matter.
//!
//! A frame that is too large, too short, of an unknown kind or with a body
//! that does not parse is a [`ProtocolError`] for the task that received it;
//! the peer is then stopped. Nothing in the decoder panics on bad input.

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use tokio_util::codec::LengthDelimitedCodec;

use crate::outcome::{Outcome, TaskMetrics};
use crate::spec::TaskSpec;

/// Bumped on any incompatible change; checked in the handshake.
pub(crate) const PROTOCOL_VERSION: u32 = 2;

/// Identifies Isola's protocol in the first frame, so a worker started by
/// something else fails fast instead of misreading its input.
pub(crate) const MAGIC: &str = "isola-ipc";

/// The first argument that turns a binary into an Isola worker. Long and
/// odd on purpose, so no ordinary command line collides with it.
pub const WORKER_ARG: &str = "__isola-worker-v1";

/// Environment variable carrying the parent's pid, for the parent-death check.
pub(crate) const PARENT_ENV: &str = "ISOLA_WORKER_PARENT";

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
    Hello(Hello),
    Run(Box<RunRequest>),
    Stdin(Bytes),
    StdinEnd,
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
    /// The worker was started ahead of need: it runs a trivial task
    /// through the whole task path while idle, so the real one finds code
    /// paged in and lazy state set up.
    WarmUp,
}

/// Worker → parent.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum FromWorker {
    Hello(Hello),
    /// The guest's first instruction is about to run.
    Started,
    Stdout(Bytes),
    Stderr(Bytes),
    /// A message the guest posted.
    Message(Bytes),
    Finished(Box<Finished>),
    /// What a kept plugin's `run` returned.
    CallOutput(Bytes),
    /// A call to a kept plugin that returned no output.
    CallFailed(Box<CallFailure>),
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Hello {
    pub(crate) magic: String,
    pub(crate) version: u32,
    pub(crate) pid: u32,
}

impl Hello {
    pub(crate) fn current() -> Hello {
        Hello {
            magic: MAGIC.to_owned(),
            version: PROTOCOL_VERSION,
            pid: std::process::id(),
        }
    }
}

/// Everything a worker needs to run one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct RunRequest {
    /// The spec, with inherited variables already resolved into `env` (the
    /// worker's own environment is empty) and output set to stream back.
    pub(crate) spec: TaskSpec,
    /// Where the parent keeps precompiled artifacts: the worker loads from
    /// here instead of compiling.
    pub(crate) cache_dir: std::path::PathBuf,
    /// The program as the parent identified it, so the worker finds its
    /// artifact without reading and hashing the Wasm file.
    pub(crate) program: ProgramId,
    /// OS limits the worker applies to itself before loading the program.
    pub(crate) os_limits: OsLimits,
    /// The export to enter.
    pub(crate) entry: crate::spec::Entry,
}

/// What a [`ToWorker::Preload`] names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Preload {
    pub(crate) wasm: std::path::PathBuf,
    pub(crate) cache_dir: std::path::PathBuf,
    pub(crate) program: ProgramId,
}

/// A program by content: the SHA-256 of its Wasm bytes and its kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ProgramId {
    #[serde(with = "hex::serde")]
    pub(crate) hash: crate::cache::ContentHash,
    pub(crate) kind: crate::program::WasmKind,
}

impl ProgramId {
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Finished {
    pub(crate) outcome: Outcome,
    pub(crate) metrics: TaskMetrics,
}

/// Why a frame could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ProtocolError {
    #[error("empty frame")]
    Empty,
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("malformed `{kind}` frame: {message}")]
    Malformed { kind: &'static str, message: String },
    #[error(
        "peer speaks `{magic}` version {version}, expected `{MAGIC}` version {PROTOCOL_VERSION}"
    )]
    Incompatible { magic: String, version: u32 },
}

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
    pub(super) const CALL_OUTPUT: u8 = 21;
    pub(super) const CALL_FAILED: u8 = 22;
    pub(super) const STARTED: u8 = 16;
    pub(super) const STDOUT: u8 = 17;
    pub(super) const STDERR: u8 = 18;
    pub(super) const FINISHED: u8 = 19;
    pub(super) const MESSAGE_OUT: u8 = 20;
}

fn frame_with(kind: u8, body: &[u8]) -> Bytes {
    let mut frame = BytesMut::with_capacity(1 + body.len());
    frame.put_u8(kind);
    frame.put_slice(body);
    frame.freeze()
}

fn json_frame(kind: u8, value: &impl Serialize) -> Bytes {
    // Serializing these plain structs to JSON cannot fail: no maps with
    // non-string keys, no foreign `Serialize` impls that error.
    let body = serde_json::to_vec(value).unwrap_or_default();
    frame_with(kind, &body)
}

fn parse_json<T: for<'de> Deserialize<'de>>(
    kind: &'static str,
    body: &[u8],
) -> Result<T, ProtocolError> {
    serde_json::from_slice(body).map_err(|err| ProtocolError::Malformed {
        kind,
        message: err.to_string(),
    })
}

fn split(frame: &[u8]) -> Result<(u8, &[u8]), ProtocolError> {
    frame
        .split_first()
        .map(|(kind, body)| (*kind, body))
        .ok_or(ProtocolError::Empty)
}

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
    pub(crate) fn encode(&self) -> Bytes {
        match self {
            ToWorker::Hello(hello) => json_frame(kind::HELLO, hello),
            ToWorker::Run(request) => json_frame(kind::RUN, request),
            ToWorker::Stdin(bytes) => frame_with(kind::STDIN, bytes),
            ToWorker::StdinEnd => frame_with(kind::STDIN_END, &[]),
            ToWorker::Cancel => frame_with(kind::CANCEL, &[]),
            ToWorker::Message(bytes) => frame_with(kind::MESSAGE_IN, bytes),
            ToWorker::CloseChannel => frame_with(kind::CLOSE_CHANNEL, &[]),
            ToWorker::EndTask => frame_with(kind::END_TASK, &[]),
            ToWorker::Preload(preload) => json_frame(kind::PRELOAD, preload),
            ToWorker::WarmUp => frame_with(kind::WARM_UP, &[]),
            ToWorker::Plugin(request) => json_frame(kind::PLUGIN, request),
            ToWorker::Call(input) => frame_with(kind::CALL, input),
        }
    }

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
            other => return Err(ProtocolError::UnknownKind(other)),
        })
    }
}

impl FromWorker {
    pub(crate) fn encode(&self) -> Bytes {
        match self {
            FromWorker::Hello(hello) => json_frame(kind::HELLO, hello),
            FromWorker::Started => frame_with(kind::STARTED, &[]),
            FromWorker::Stdout(bytes) => frame_with(kind::STDOUT, bytes),
            FromWorker::Stderr(bytes) => frame_with(kind::STDERR, bytes),
            FromWorker::Finished(finished) => json_frame(kind::FINISHED, finished),
            FromWorker::Message(bytes) => frame_with(kind::MESSAGE_OUT, bytes),
            FromWorker::CallOutput(bytes) => frame_with(kind::CALL_OUTPUT, bytes),
            FromWorker::CallFailed(failure) => json_frame(kind::CALL_FAILED, failure),
        }
    }

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
    use tokio_util::codec::{Decoder, Encoder};

    fn round_trip_to_worker(msg: ToWorker) {
        assert_eq!(ToWorker::decode(&msg.encode()).as_ref(), Ok(&msg));
    }

    fn round_trip_from_worker(msg: FromWorker) {
        assert_eq!(FromWorker::decode(&msg.encode()).as_ref(), Ok(&msg));
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
        })));
        round_trip_to_worker(ToWorker::Stdin(Bytes::from_static(b"\0\xffbytes")));
        round_trip_to_worker(ToWorker::StdinEnd);
        round_trip_to_worker(ToWorker::Cancel);
        round_trip_to_worker(ToWorker::Message(Bytes::from_static(b"{\"job\":1}")));
        round_trip_to_worker(ToWorker::CloseChannel);
        round_trip_to_worker(ToWorker::EndTask);
        round_trip_to_worker(ToWorker::WarmUp);
        round_trip_to_worker(ToWorker::Call(Bytes::from_static(b"input")));
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
                FromWorker::Stdout(Bytes::from_static(b"hello")).encode(),
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

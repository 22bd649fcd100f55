//! Isola task sets across machines, on NATS JetStream.
//!
//! A [`Cluster`] submits tasks; [`Worker`]s, anywhere that reaches the same
//! NATS server, pull them from a JetStream work queue, run each on a local
//! [`isola::Runner`] at the isolation its spec asks for, stream its output
//! back as it is written, and publish its result. A [`Cluster`] is an
//! [`isola::taskset::Launch`], so a [`isola::taskset::Scheduler`] runs a
//! whole `tasks.toml` on workers with the same dependencies, slots,
//! restarts and records as a local run (`isola up --nats URL`); an embedder
//! can also [`Cluster::spawn`] a single [`isola::TaskSpec`] and wait for the
//! same [`isola::TaskReport`] a local runner gives.
//!
//! # What travels where
//!
//! | JetStream entity | Kind | What |
//! |---|---|---|
//! | `ISOLA_TASKS` (`isola.task`) | stream, work-queue retention | one message per task attempt; workers share the durable pull consumer `isola-workers` |
//! | `ISOLA_RESULTS` (`isola.result.<run>.<task>`) | stream, kept an hour | one result per attempt, de-duplicated by message id `<run>.<task>` |
//! | `isola_blobs` | object store | modules, packed directories and stdin files, named by their SHA-256 |
//! | `ISOLA_RUNS` (`isola.run.<run>`) | stream, one message per subject, kept 10 s | each live submitter's heartbeat |
//! | `isola.output.<run>.<task>` | core subject | output chunks, in order, with the delivery that wrote them (the result counts them) |
//! | `ISOLA_CANCELS` (`isola.cancel.<run>`, `isola.cancel.<run>.<task>`) | core subjects, stored by a stream (one message per subject, kept an hour) | cancel a whole run, or one task: live to the workers that listen, and read by a worker once it listens (as it starts, and after each reconnection), so one that was away or joins later still sees it within the hour; a task's number as the payload on `isola.cancel.<run>` (the form before the per-task subject) is still honoured |
//!
//! # Guarantees
//!
//! Execution is *at least once*: a worker that dies (or stalls past the ack
//! wait) with a task has it redelivered to another; a task is acked only
//! after its result is stored. Recording is *exactly once*: results are
//! de-duplicated by message id in the stream, a worker that receives a
//! redelivered task whose result is already stored publishes nothing new,
//! and the submitter records the first result of each attempt and ignores
//! any other. A task redelivered [`MAX_DELIVERIES`] times without a result
//! ends `Failed` with a message that says so, rather than circling forever.
//!
//! Output is streamed over core NATS: it is live, not stored. A redelivered
//! task's output starts again from its beginning (the lines of the lost
//! attempt were already shown), and output published while the server was
//! unreachable is lost; the result and the files are not.
//!
//! # Trust
//!
//! A task from the queue is untrusted input to a worker: its [`Ceilings`]
//! bound the memory, timeout, fuel and isolation a spec may ask for, a spec
//! beyond them is refused with a record that says why, and a remote task
//! never gets the worker's own directories, environment, stdin, host
//! functions or key-value stores: only the files the submitter sent.
//! Files are sent as archives of regular files and directories (no links,
//! devices or paths that leave the directory), bounded by
//! [`Ceilings::max_archive`].

mod blobs;
mod connect;
mod files;
mod launcher;
mod wire;
mod worker;

pub use connect::{ConnectOptions, Credentials};
pub use launcher::Cluster;
pub use worker::{Ceilings, MAX_DIRS, Worker, WorkerOptions};

/// Times a task may be delivered to workers before it is given up as
/// `Failed`: a task that kills every worker it reaches must not circle the
/// cluster forever.
pub const MAX_DELIVERIES: u32 = 5;

/// Why the cluster could not do something.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The NATS server could not be reached, or refused the connection.
    #[error("cannot connect to NATS at {url}: {message}")]
    Connect {
        /// The server address given.
        url: String,
        /// What the client said.
        message: String,
    },
    /// A JetStream stream, consumer or bucket could not be created or
    /// reached (the server runs without JetStream, `-js`, say).
    #[error("JetStream: {0}")]
    JetStream(String),
    /// A file to send could not be read or packed, or one received could
    /// not be written.
    #[error("{0}")]
    Files(String),
}

impl From<Error> for isola::Error {
    fn from(err: Error) -> isola::Error {
        isola::Error::Remote(err.to_string())
    }
}

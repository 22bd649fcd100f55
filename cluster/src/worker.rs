//! The working side: [`Worker`] pulls task attempts from the queue, runs
//! them on its local runner within its [`Ceilings`], and sends back output,
//! results and changed files.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::AckKind;
use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
use async_nats::jetstream::message::PublishMessage;
use bytes::Bytes;
use futures::StreamExt;
use isola::{
    ByteSize, CancelHandle, DirGrant, Isolation, Limits, Outcome, Output, Runner, Sandbox, Stdin,
    TaskMetrics, TaskSpec,
};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::blobs::Blobs;
use crate::connect::{
    ConnectOptions, Entities, HEARTBEAT_TTL, output_subject, result_subject, run_subject,
};
use crate::files::{self, Snapshot};
use crate::launcher::{DEFAULT_MAX_ARCHIVE, STARTED_HEADER};
use crate::wire::{Changes, DELIVERY_HEADER, Ending, ResultMessage, STREAM_HEADER, TaskMessage};
use crate::{Error, MAX_DELIVERIES};

/// Most directory grants of a remote task: each is unpacked here, so
/// their number (with [`Ceilings::max_archive`]) bounds the disk a task
/// can fill.
pub const MAX_DIRS: usize = 32;

/// The most a remote spec may ask of this worker. A task from the queue is
/// untrusted input: a spec beyond a ceiling is refused, and a limit the
/// spec leaves open is closed at the ceiling.
#[derive(Debug, Clone)]
pub struct Ceilings {
    /// Most linear memory per task ([`Limits::max_memory`]); also bounds
    /// [`Limits::process_memory`] (plus the usual headroom). A task that
    /// leaves its limit at the default (1 GiB) gets the smaller of the
    /// two; one that asks for more than this is refused. 4 GiB by
    /// default.
    pub max_memory: ByteSize,
    /// Longest timeout; a spec without one gets this one. One hour by
    /// default.
    pub max_timeout: Duration,
    /// Most fuel; a spec without a fuel limit gets this one. `None` (no
    /// ceiling) by default.
    pub max_fuel: Option<u64>,
    /// The isolation levels this worker runs. Both by default.
    pub isolation: Vec<Isolation>,
    /// Most bytes of one module, archive or stdin file received, and of
    /// one directory's changes sent back. 256 MiB by default.
    pub max_archive: u64,
}

impl Default for Ceilings {
    fn default() -> Ceilings {
        Ceilings {
            max_memory: ByteSize::gib(4),
            max_timeout: Duration::from_secs(3600),
            max_fuel: None,
            isolation: vec![Isolation::Thread, Isolation::Process],
            max_archive: DEFAULT_MAX_ARCHIVE,
        }
    }
}

/// How a [`Worker`] runs.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// The name results and records carry. The host name and process id
    /// by default.
    pub name: String,
    /// Most tasks at once. One per core by default.
    pub jobs: usize,
    /// What a remote spec may ask for.
    pub ceilings: Ceilings,
    /// How long a task may go unacknowledged before the server redelivers
    /// it to another worker; a running task sends progress three times per
    /// period, so only a dead or stalled worker's tasks move. 30 s by
    /// default. It is set when the workers' consumer is first created (by
    /// the first worker); later workers use the existing one's.
    pub ack_wait: Duration,
}

impl Default for WorkerOptions {
    fn default() -> WorkerOptions {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "worker".into());
        WorkerOptions {
            name: format!("{host}-{}", std::process::id()),
            jobs: std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
            ceilings: Ceilings::default(),
            ack_wait: Duration::from_secs(30),
        }
    }
}

/// Pulls tasks from the cluster's queue and runs them on a local
/// [`Runner`].
///
/// # Examples
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use isola_cluster::{ConnectOptions, Worker, WorkerOptions};
/// use tokio_util::sync::CancellationToken;
///
/// let worker = Worker::connect(
///     isola::Runner::new()?,
///     &ConnectOptions::new("nats://127.0.0.1:4222"),
///     WorkerOptions::default(),
/// )
/// .await?;
/// let drain = CancellationToken::new(); // cancel to finish and stop
/// worker.run(drain, CancellationToken::new()).await?;
/// # Ok(()) }
/// ```
pub struct Worker {
    inner: Arc<Shared>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("name", &self.inner.options.name)
            .finish_non_exhaustive()
    }
}

struct Shared {
    runner: Runner,
    options: WorkerOptions,
    client: async_nats::Client,
    entities: Entities,
    blobs: Blobs,
    /// Modules and task directories live here.
    work: tempfile::TempDir,
    /// Running attempts by run, number and delivery (a long outage can
    /// bring one attempt to this worker twice).
    running: Mutex<HashMap<(String, u64, u32), CancelHandle>>,
    cancelled: Mutex<Cancelled>,
    /// Runs whose heartbeat was checked, and when, and what it said.
    alive: Mutex<HashMap<String, (Instant, bool)>>,
    /// When the connection to the server was last made: heartbeats that
    /// expired while the server was away say nothing until the submitters
    /// have had time to beat again.
    connected_at: Arc<Mutex<Instant>>,
}

#[derive(Default)]
struct Cancelled {
    runs: HashSet<String>,
    tasks: HashSet<(String, u64)>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Worker {
    /// Connects to the cluster and sets up what it needs.
    ///
    /// # Errors
    ///
    /// [`Error::Connect`] if the server cannot be reached;
    /// [`Error::JetStream`] if it has no JetStream; [`Error::Files`] if no
    /// working directory can be made.
    pub async fn connect(
        runner: Runner,
        connect: &ConnectOptions,
        options: WorkerOptions,
    ) -> Result<Worker, Error> {
        let connected_at = Arc::new(Mutex::new(Instant::now()));
        let client = connect.connect_watched(Some(connected_at.clone())).await?;
        let entities = Entities::ensure(client.clone()).await?;
        let blobs = Blobs::new(entities.blobs.clone());
        let work = tempfile::Builder::new()
            .prefix("isola-worker-")
            .tempdir()
            .map_err(|e| Error::Files(format!("cannot make a working directory: {e}")))?;
        Ok(Worker {
            inner: Arc::new(Shared {
                runner,
                options,
                client,
                entities,
                blobs,
                work,
                running: Mutex::new(HashMap::new()),
                cancelled: Mutex::new(Cancelled::default()),
                alive: Mutex::new(HashMap::new()),
                connected_at,
            }),
        })
    }

    /// This worker's name.
    pub fn name(&self) -> &str {
        &self.inner.options.name
    }

    /// Runs tasks until `drain` is cancelled, then stops taking new ones
    /// and returns once those running have ended and been reported. If
    /// `abort` is cancelled, the running tasks are stopped and handed back
    /// to the queue (for another worker) instead.
    ///
    /// # Errors
    ///
    /// [`Error::JetStream`] if the queue's consumer cannot be set up.
    pub async fn run(
        &self,
        drain: CancellationToken,
        abort: CancellationToken,
    ) -> Result<(), Error> {
        let shared = &self.inner;
        let consumer = shared
            .entities
            .workers_consumer(shared.options.ack_wait)
            .await?;
        let cancels = shared
            .client
            .subscribe("isola.cancel.>")
            .await
            .map_err(|e| Error::JetStream(format!("cannot subscribe to cancels: {e}")))?;
        let stop = CancellationToken::new();
        let _stop_guard = stop.clone().drop_guard();
        tokio::spawn(listen_for_cancels(shared.clone(), cancels, stop.clone()));
        // Listening now: what went by before is in the server's store
        // (tried again every few seconds until it could be read).
        let loaded = shared.load_cancels().await;
        tokio::spawn(watch_runs(shared.clone(), stop.clone(), loaded));
        {
            let abort = abort.clone();
            let shared = shared.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                tokio::select! {
                    () = abort.cancelled() => {
                        let running: Vec<CancelHandle> = lock(&shared.running).values().cloned().collect();
                        for handle in running {
                            handle.cancel();
                        }
                    }
                    () = stop.cancelled() => {}
                }
            });
        }
        let jobs = shared.options.jobs.max(1);
        let slots = Arc::new(Semaphore::new(jobs));
        let mut tasks = tokio::task::JoinSet::new();
        tracing::info!(worker = %shared.options.name, jobs, "worker started");
        'pull: loop {
            let permit = tokio::select! {
                permit = slots.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
                () = drain.cancelled() => break,
            };
            let free = 1 + slots.available_permits();
            let batch = consumer
                .batch()
                .max_messages(free)
                .expires(Duration::from_secs(1))
                .messages()
                .await;
            let mut batch = match batch {
                Ok(batch) => batch,
                Err(err) => {
                    tracing::warn!("cannot pull tasks (retrying): {err}");
                    drop(permit);
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        () = drain.cancelled() => break,
                    }
                }
            };
            let mut permit = Some(permit);
            loop {
                // A pull the server lost (it restarted) would otherwise be
                // waited on forever: past its expiry, pull again.
                let next = tokio::time::timeout(Duration::from_secs(3), batch.next()).await;
                let message = match next {
                    Ok(Some(Ok(message))) => message,
                    Ok(Some(Err(err))) => {
                        tracing::debug!("pull ended: {err}");
                        break;
                    }
                    Ok(None) | Err(_) => break,
                };
                if drain.is_cancelled() {
                    // Pulled as the worker began to stop (or a task it
                    // just handed back, delivered to this pull again):
                    // another worker runs it.
                    let _ = message.ack_with(AckKind::Nak(None)).await;
                    continue;
                }
                let slot = match permit.take() {
                    Some(slot) => slot,
                    None => match slots.clone().acquire_owned().await {
                        Ok(slot) => slot,
                        Err(_) => break 'pull,
                    },
                };
                let shared = shared.clone();
                let abort = abort.clone();
                tasks.spawn(async move {
                    handle(&shared, message, &abort).await;
                    drop(slot);
                });
                // Reap finished ones so the set does not grow.
                while tasks.try_join_next().is_some() {}
            }
        }
        while tasks.join_next().await.is_some() {}
        tracing::info!(worker = %shared.options.name, "worker stopped");
        Ok(())
    }
}

async fn listen_for_cancels(
    shared: Arc<Shared>,
    mut cancels: async_nats::Subscriber,
    stop: CancellationToken,
) {
    loop {
        let message = tokio::select! {
            message = cancels.next() => message,
            () = stop.cancelled() => return,
        };
        let Some(message) = message else { return };
        shared.note_cancel(&message.subject, &message.payload);
    }
}

/// Cancels the running tasks of runs whose submitter stopped beating, and,
/// after a reconnection (or a first read that failed), reads the stored
/// cancels that went by while it was away.
async fn watch_runs(shared: Arc<Shared>, stop: CancellationToken, loaded: bool) {
    // The connection whose stored cancels were read, if they were.
    let mut seen = loaded.then(|| *lock(&shared.connected_at));
    loop {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
            () = stop.cancelled() => return,
        }
        let connected = *lock(&shared.connected_at);
        if seen != Some(connected) && shared.load_cancels().await {
            seen = Some(connected);
        }
        let runs: HashSet<String> = lock(&shared.running)
            .keys()
            .map(|(r, _, _)| r.clone())
            .collect();
        for run in runs {
            if !shared.alive(&run).await {
                tracing::info!(run, "its submitter is gone: cancelling its tasks");
                for ((r, _, _), handle) in lock(&shared.running).iter() {
                    if *r == run {
                        handle.cancel();
                    }
                }
            }
        }
    }
}

impl Shared {
    /// Whether `run`'s submitter is alive (its heartbeat is there). A
    /// server that cannot answer counts as "alive": only a heartbeat known
    /// to be gone stops work.
    async fn alive(&self, run: &str) -> bool {
        if let Some((at, alive)) = lock(&self.alive).get(run)
            && at.elapsed() < Duration::from_secs(1)
        {
            return *alive;
        }
        let found = self
            .entities
            .runs
            .get_last_raw_message_by_subject(&run_subject(run))
            .await;
        let settled = lock(&self.connected_at).elapsed() >= HEARTBEAT_TTL;
        let alive = match found {
            Ok(_) => true,
            Err(err) => {
                !settled
                    || !matches!(
                        err.kind(),
                        async_nats::jetstream::stream::LastRawMessageErrorKind::NoMessageFound
                    )
            }
        };
        let mut known = lock(&self.alive);
        if known.len() > 10_000 {
            known.clear();
        }
        known.insert(run.to_owned(), (Instant::now(), alive));
        alive
    }

    /// Takes in a cancel, from its subject (`isola.cancel.<run>` with the
    /// payload `*`, or `isola.cancel.<run>.<task>`), and cancels what of it
    /// runs here.
    fn note_cancel(&self, subject: &str, payload: &[u8]) {
        let Some((run, task)) = parse_cancel(subject, payload) else {
            return;
        };
        let mut cancelled = lock(&self.cancelled);
        // Bounded: a long-lived worker forgets old cancels.
        if cancelled.tasks.len() > 100_000 || cancelled.runs.len() > 10_000 {
            *cancelled = Cancelled::default();
        }
        match task {
            None => cancelled.runs.insert(run.to_owned()),
            Some(task) => cancelled.tasks.insert((run.to_owned(), task)),
        };
        drop(cancelled);
        for ((r, t, _), handle) in lock(&self.running).iter() {
            if r == run && task.is_none_or(|task| *t == task) {
                handle.cancel();
            }
        }
    }

    /// Takes in the cancels the server keeps (the last of each subject),
    /// which went by while this worker was not listening: called once it
    /// listens, as it starts and after each reconnection. Later ones reach
    /// it live. Says whether it read them (to try again later if not).
    async fn load_cancels(&self) -> bool {
        let mut stream = self.entities.cancels.clone();
        let read = async {
            let last = match stream.info().await {
                Ok(info) if info.state.messages == 0 => return Ok(()),
                Ok(info) => info.state.last_sequence,
                Err(err) => return Err(err.to_string()),
            };
            let consumer = stream
                .create_consumer(OrderedConfig {
                    filter_subject: "isola.cancel.>".into(),
                    deliver_policy: DeliverPolicy::LastPerSubject,
                    ..Default::default()
                })
                .await
                .map_err(|e| e.to_string())?;
            let name = consumer.cached_info().name.clone();
            let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
            while let Some(message) = messages.next().await {
                let message = message.map_err(|e| e.to_string())?;
                self.note_cancel(&message.subject, &message.payload);
                // Up to what was stored when it started: later ones came
                // live (and new ones keep `pending` above zero).
                if message
                    .info()
                    .is_ok_and(|info| info.pending == 0 || info.stream_sequence >= last)
                {
                    break;
                }
            }
            drop(messages);
            // Not left on the server for its inactivity timeout.
            let _ = stream.delete_consumer(&name).await;
            Ok::<(), String>(())
        };
        match tokio::time::timeout(Duration::from_secs(10), read).await {
            Ok(Ok(())) => true,
            Ok(Err(err)) => {
                tracing::warn!("cannot read the stored cancels (will try again): {err}");
                false
            }
            Err(_) => {
                tracing::warn!(
                    "cannot read the stored cancels (will try again): no answer in 10 s"
                );
                false
            }
        }
    }

    fn is_cancelled(&self, run: &str, task: u64) -> bool {
        let cancelled = lock(&self.cancelled);
        cancelled.runs.contains(run) || cancelled.tasks.contains(&(run.to_owned(), task))
    }

    async fn publish_result(
        &self,
        run: &str,
        result: &ResultMessage,
        abort: &CancellationToken,
    ) -> bool {
        let Ok(payload) = serde_json::to_vec(result) else {
            return false;
        };
        let payload = Bytes::from(payload);
        let id = format!("{run}.{}", result.task);
        // Ride out a server restart: the result must be stored before the
        // task is acked.
        for attempt in 0..300 {
            if attempt > 0 {
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    () = abort.cancelled() => return false,
                }
            }
            let publish = PublishMessage::build()
                .payload(payload.clone())
                .message_id(&id);
            match self
                .entities
                .js
                .send_publish(result_subject(run, result.task), publish)
                .await
            {
                Ok(ack) => match ack.await {
                    Ok(_) => return true,
                    Err(err) => tracing::warn!("cannot store a result (retrying): {err}"),
                },
                Err(err) => tracing::warn!("cannot store a result (retrying): {err}"),
            }
        }
        false
    }

    /// Whether a result for this attempt is already stored (a redelivery
    /// of a task whose worker died after storing it, before acking).
    async fn has_result(&self, run: &str, task: u64) -> bool {
        self.entities
            .results
            .get_last_raw_message_by_subject(&result_subject(run, task))
            .await
            .is_ok()
    }
}

/// One message from the queue, from receipt to ack, with progress acks
/// all along (fetching, compiling, running, sending files back, storing
/// the result), so only a dead or stalled worker's tasks move.
async fn handle(
    shared: &Arc<Shared>,
    message: async_nats::jetstream::Message,
    abort: &CancellationToken,
) {
    let progress = async {
        let every = (shared.options.ack_wait / 3).max(Duration::from_millis(100));
        loop {
            tokio::time::sleep(every).await;
            let _ = message.ack_with(AckKind::Progress).await;
        }
    };
    tokio::select! {
        () = handle_message(shared, &message, abort) => {}
        () = progress => {}
    }
}

/// What a cancel message cancels: its run, and one task or (`None`) all.
/// `isola.cancel.<run>` with the payload `*` is a whole run,
/// `isola.cancel.<run>.<task>` one task, and a task's number as the payload
/// on the run's subject one task too (how submitters said it before the
/// per-task subject). Anything else, or a run that is not a run id (the
/// subject is anyone's who may publish), is nothing.
fn parse_cancel<'s>(subject: &'s str, payload: &[u8]) -> Option<(&'s str, Option<u64>)> {
    let rest = subject.strip_prefix("isola.cancel.")?;
    // Run ids have no dots.
    let (run, task) = match rest.split_once('.') {
        Some((run, task)) => (run, Some(task.parse::<u64>().ok()?)),
        None if payload == b"*" => (rest, None),
        None => (
            rest,
            Some(
                std::str::from_utf8(payload)
                    .ok()?
                    .trim()
                    .parse::<u64>()
                    .ok()?,
            ),
        ),
    };
    is_run_id(run).then_some((run, task))
}

/// Whether `run` is a run id a submitter makes: it becomes part of subjects
/// and of a directory name here, so anything else is refused.
fn is_run_id(run: &str) -> bool {
    (1..=64).contains(&run.len())
        && run
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

async fn handle_message(
    shared: &Arc<Shared>,
    message: &async_nats::jetstream::Message,
    abort: &CancellationToken,
) {
    let delivery = message
        .info()
        .map(|info| u32::try_from(info.delivered).unwrap_or(u32::MAX))
        .unwrap_or(1);
    let task: TaskMessage = match serde_json::from_slice(&message.payload) {
        Ok(task) => task,
        Err(err) => {
            tracing::warn!("dropped a malformed task message: {err}");
            let _ = message.ack_with(AckKind::Term).await;
            return;
        }
    };
    if !is_run_id(&task.run) {
        tracing::warn!("dropped a task message with a malformed run id");
        let _ = message.ack_with(AckKind::Term).await;
        return;
    }
    let run = task.run.clone();
    let number = task.task;
    let result = |ending: Ending, chunks: [u64; 2], changes: Vec<Option<Changes>>| ResultMessage {
        task: number,
        worker: shared.options.name.clone(),
        delivery,
        ending,
        chunks,
        changes,
    };
    let ran = |outcome: Outcome| Ending::Ran {
        outcome,
        metrics: TaskMetrics::default(),
    };

    if shared.is_cancelled(&run, number) || !shared.alive(&run).await {
        // A leftover of a run that ended or was killed: not run.
        tracing::debug!(run, task = number, "dropped: its run is over");
        let _ = shared
            .publish_result(
                &run,
                &result(ran(Outcome::Cancelled), [0, 0], Vec::new()),
                abort,
            )
            .await;
        settle(message).await;
        return;
    }
    if delivery > 1 && shared.has_result(&run, number).await {
        tracing::info!(
            run,
            task = number,
            delivery,
            "its result is stored already (a worker died before acking it): acked, not run again"
        );
        settle(message).await;
        return;
    }
    if delivery > MAX_DELIVERIES {
        let ending = ran(Outcome::Failed {
            message: format!(
                "delivered to workers {} times without a result (each worker died or stalled \
                 with it); given up",
                delivery - 1
            ),
        });
        if shared
            .publish_result(&run, &result(ending, [0, 0], Vec::new()), abort)
            .await
        {
            settle(message).await;
        }
        return;
    }
    let dir = shared
        .work
        .path()
        .join(format!("{run}-{number}-{delivery}"));
    let prepared = match check(&shared.options.ceilings, &task.spec) {
        Err((field, message)) => Err(Ending::Refused { field, message }),
        Ok(()) => prepare(shared, &task, &dir)
            .await
            .map_err(|message| Ending::StartFailed { message }),
    };
    let (spec, before) = match prepared {
        Ok(prepared) => prepared,
        Err(ending) => {
            let result = result(ending, [0, 0], Vec::new());
            return not_run(shared, message, &run, &result, abort, &dir).await;
        }
    };
    let spawned = shared.runner.spawn(spec.clone()).await;
    let mut handle = match spawned {
        Ok(handle) => handle,
        Err(err) => {
            let ending = match err {
                isola::Error::InvalidSpec { field, message } => Ending::Refused { field, message },
                err if err.is_user_error() => Ending::Refused {
                    field: "wasm".into(),
                    message: err.to_string(),
                },
                err => Ending::StartFailed {
                    message: err.to_string(),
                },
            };
            let result = result(ending, [0, 0], Vec::new());
            return not_run(shared, message, &run, &result, abort, &dir).await;
        }
    };
    handle.close_channel();
    #[cfg(debug_assertions)]
    fault("exit-while-running");
    let key = (run.clone(), number, delivery);
    lock(&shared.running).insert(key.clone(), handle.cancel_handle());
    if shared.is_cancelled(&run, number) {
        handle.cancel();
    }
    let mut started = HeaderMap::new();
    started.insert(STARTED_HEADER, shared.options.name.as_str());
    started.insert(DELIVERY_HEADER, delivery.to_string().as_str());
    let subject = output_subject(&run, number);
    let _ = shared
        .client
        .publish_with_headers(subject.clone(), started, Bytes::new())
        .await;

    let stdout = forward(shared, &subject, "stdout", delivery, handle.take_stdout());
    let stderr = forward(shared, &subject, "stderr", delivery, handle.take_stderr());
    let (report, out_chunks, err_chunks) = tokio::join!(handle.wait(), stdout, stderr);
    lock(&shared.running).remove(&key);

    if abort.is_cancelled() {
        // Stopped by the worker's own shutdown, not by the task: hand it
        // back for another worker.
        let _ = message.ack_with(AckKind::Nak(None)).await;
        let _ = tokio::fs::remove_dir_all(&dir).await;
        return;
    }
    let mut outcome = report.outcome;
    let changes = match changes(shared, &spec, before).await {
        Ok(changes) => changes,
        Err(err) => {
            outcome = Outcome::Failed {
                message: format!(
                    "the task ended ({outcome}), but its files could not be sent back: {err}"
                ),
            };
            Vec::new()
        }
    };
    let ending = Ending::Ran {
        outcome,
        metrics: report.metrics,
    };
    if shared
        .publish_result(
            &run,
            &result(ending, [out_chunks, err_chunks], changes),
            abort,
        )
        .await
    {
        #[cfg(debug_assertions)]
        fault("exit-after-result");
        settle(message).await;
    }
    let _ = tokio::fs::remove_dir_all(&dir).await;
}

/// Test-only faults, read in debug builds alone: the worker exits at the
/// point this variable names, as one killed there would.
/// `exit-while-running`: with a task started. `exit-after-result`: with a
/// result stored and its message not yet acked.
#[cfg(debug_assertions)]
const FAULT_ENV: &str = "ISOLA_TEST_WORKER_FAULT";

#[cfg(debug_assertions)]
fn fault(point: &str) {
    if std::env::var(FAULT_ENV).is_ok_and(|asked| asked == point) {
        tracing::warn!("{FAULT_ENV}={point}: exiting");
        std::process::exit(70);
    }
}

/// Stores the result of an attempt that did not run (refused, or could not
/// start), acks it, and removes what was fetched for it.
async fn not_run(
    shared: &Shared,
    message: &async_nats::jetstream::Message,
    run: &str,
    result: &ResultMessage,
    abort: &CancellationToken,
    dir: &Path,
) {
    if shared.publish_result(run, result, abort).await {
        settle(message).await;
    }
    let _ = tokio::fs::remove_dir_all(dir).await;
}

/// Acks a message whose result is stored (or that needs none). Not waited
/// for: once the result is stored, an ack that is lost only means a
/// redelivery, which finds the result and is acked without running.
async fn settle(message: &async_nats::jetstream::Message) {
    let _ = message.ack().await;
}

/// Publishes a piped stream's chunks as they come; returns how many.
async fn forward(
    shared: &Shared,
    subject: &str,
    stream: &str,
    delivery: u32,
    rx: Option<isola::OutputReceiver>,
) -> u64 {
    let Some(mut rx) = rx else { return 0 };
    let mut chunks = 0u64;
    // NATS's default largest message is 1 MiB; stay well under it.
    const PIECE: usize = 256 << 10;
    while let Some(chunk) = rx.recv().await {
        for piece in chunk.chunks(PIECE) {
            let mut headers = HeaderMap::new();
            headers.insert(STREAM_HEADER, stream);
            headers.insert(DELIVERY_HEADER, delivery.to_string().as_str());
            let _ = shared
                .client
                .publish_with_headers(subject.to_owned(), headers, chunk.slice_ref(piece))
                .await;
            chunks += 1;
        }
    }
    chunks
}

/// Whether `spec` is within the ceilings and asks only for what a remote
/// task may have; else the field and why not. A memory limit left at its
/// default ([`Limits::DEFAULT_MAX_MEMORY`]) is not a request: `prepare`
/// closes it at the ceiling instead.
fn check(ceilings: &Ceilings, spec: &TaskSpec) -> Result<(), (String, String)> {
    let refuse = |field: &str, message: String| Err((field.to_owned(), message));
    if !ceilings.isolation.contains(&spec.isolation) {
        return refuse(
            "isolation",
            format!("this worker does not run {} tasks", spec.isolation),
        );
    }
    if spec.limits.max_memory > ceilings.max_memory
        && spec.limits.max_memory != Limits::DEFAULT_MAX_MEMORY
    {
        return refuse(
            "limits.max_memory",
            format!(
                "{} is more than this worker's ceiling of {}",
                spec.limits.max_memory, ceilings.max_memory
            ),
        );
    }
    if let Some(process) = spec.limits.process_memory
        && process.as_u64()
            > ceilings
                .max_memory
                .as_u64()
                .saturating_add(Limits::DEFAULT_PROCESS_MEMORY_HEADROOM.as_u64())
    {
        return refuse(
            "limits.process_memory",
            format!(
                "{process} is more than this worker's ceiling of {} plus {} headroom",
                ceilings.max_memory,
                Limits::DEFAULT_PROCESS_MEMORY_HEADROOM
            ),
        );
    }
    if let Some(timeout) = spec.limits.timeout
        && timeout > ceilings.max_timeout
    {
        return refuse(
            "limits.timeout",
            format!(
                "{} is longer than this worker's ceiling of {}",
                humantime::format_duration(timeout),
                humantime::format_duration(ceilings.max_timeout)
            ),
        );
    }
    if let (Some(fuel), Some(most)) = (spec.limits.fuel, ceilings.max_fuel)
        && fuel > most
    {
        return refuse(
            "limits.fuel",
            format!("{fuel} is more than this worker's ceiling of {most}"),
        );
    }
    if spec.dirs.len() > MAX_DIRS {
        return refuse(
            "dirs",
            format!(
                "{} directory grants; a remote task may have at most {MAX_DIRS}",
                spec.dirs.len()
            ),
        );
    }
    if !spec.inherit_env.is_empty() {
        return refuse(
            "inherit_env",
            "a remote task cannot read a worker's environment".into(),
        );
    }
    if let Some((field, what)) = crate::wire::local_only(spec) {
        return refuse(field, format!("a remote task cannot have {what}"));
    }
    Ok(())
}

/// The spec as this worker runs it: the module, directories and stdin
/// fetched into `dir`, limits closed at the ceilings. Also the contents
/// of each writable directory before the task, to tell what it changed.
async fn prepare(
    shared: &Shared,
    task: &TaskMessage,
    dir: &Path,
) -> Result<(TaskSpec, Vec<Option<Snapshot>>), String> {
    let ceilings = &shared.options.ceilings;
    let mut spec = task.spec.clone();
    if task.dirs.len() != spec.dirs.len() {
        return Err("the message's directories do not match its spec".into());
    }
    spec.wasm = shared
        .blobs
        .get_cached(
            &task.module,
            &shared.work.path().join("modules"),
            ceilings.max_archive,
        )
        .await
        .map_err(|e| e.to_string())?;
    if !spec.dirs.is_empty() || matches!(spec.stdin, Stdin::File(_)) {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| format!("cannot make `{}`: {e}", dir.display()))?;
    }
    let mut before = Vec::with_capacity(spec.dirs.len());
    let mut grants = Vec::with_capacity(spec.dirs.len());
    for (i, (grant, archive)) in spec.dirs.iter().zip(&task.dirs).enumerate() {
        let bytes = shared
            .blobs
            .get(archive, ceilings.max_archive)
            .await
            .map_err(|e| e.to_string())?;
        let here = dir.join(format!("dir{i}"));
        let limit = ceilings.max_archive;
        let target = here.clone();
        let writable = grant.writable;
        let manifest = tokio::task::spawn_blocking(move || -> Result<_, String> {
            std::fs::create_dir_all(&target).map_err(|e| e.to_string())?;
            files::unpack(&bytes, &target, limit).map_err(|e| e.to_string())?;
            if writable {
                Snapshot::take(&target)
                    .map(|(_, snapshot)| Some(snapshot))
                    .map_err(|e| e.to_string())
            } else {
                Ok(None)
            }
        })
        .await
        .map_err(|e| e.to_string())??;
        before.push(manifest);
        // The guest sees the path it would see on the submitter.
        grants.push(DirGrant {
            host: here,
            guest: Some(grant.guest_path()),
            writable: grant.writable,
        });
    }
    spec.dirs = grants;
    if let Stdin::File(_) = spec.stdin {
        let Some(name) = &task.stdin else {
            return Err("the message names a stdin file but sends none".into());
        };
        let bytes = shared
            .blobs
            .get(name, ceilings.max_archive)
            .await
            .map_err(|e| e.to_string())?;
        let path = dir.join("stdin");
        tokio::fs::write(&path, bytes)
            .await
            .map_err(|e| format!("cannot write stdin: {e}"))?;
        spec.stdin = Stdin::File(path);
    }
    // Output always comes back through the pipe; the submitter captures,
    // shows or drops it as the spec says.
    for output in [&mut spec.stdout, &mut spec.stderr] {
        *output = match output {
            Output::Discard => Output::Discard,
            _ => Output::Pipe,
        };
    }
    if spec.limits.timeout.is_none() {
        spec.limits.timeout = Some(ceilings.max_timeout);
    }
    // A process task's own sandbox policy can only tighten the worker's
    // (a thread task has none: the rulebook refuses one).
    if spec.isolation == Isolation::Process {
        let own = shared.runner.config().sandbox;
        spec.sandbox = Some(stricter(spec.sandbox.unwrap_or(own), own));
    }
    spec.limits.max_memory = spec.limits.max_memory.min(ceilings.max_memory);
    if spec.limits.fuel.is_none() {
        spec.limits.fuel = ceilings.max_fuel;
    }
    Ok((spec, before))
}

/// The stricter of two sandbox policies: off, then on, then required.
fn stricter(a: Sandbox, b: Sandbox) -> Sandbox {
    let rank = |s: Sandbox| match s {
        Sandbox::Off => 0,
        Sandbox::On => 1,
        _ => 2,
    };
    if rank(a) >= rank(b) { a } else { b }
}

/// What the task changed in each writable directory, packed and stored.
async fn changes(
    shared: &Shared,
    spec: &TaskSpec,
    before: Vec<Option<Snapshot>>,
) -> Result<Vec<Option<Changes>>, Error> {
    let mut all = Vec::with_capacity(spec.dirs.len());
    for (grant, before) in spec.dirs.iter().zip(before) {
        let Some(before) = before else {
            all.push(None);
            continue;
        };
        let dir: PathBuf = grant.host.clone();
        let limit = shared.options.ceilings.max_archive;
        let packed = tokio::task::spawn_blocking(move || -> Result<_, Error> {
            let (tree, after) = Snapshot::take(&dir)?;
            let (changed, deleted) = files::diff(&before, &after, tree);
            if changed.files.is_empty() && changed.dirs.is_empty() {
                return Ok((None, deleted));
            }
            Ok((Some(files::pack(&dir, &changed, limit)?), deleted))
        })
        .await
        .map_err(|e| Error::Files(e.to_string()))??;
        let archive = match packed.0 {
            Some(bytes) => Some(shared.blobs.put(&bytes).await?),
            None => None,
        };
        all.push(Some(Changes {
            archive,
            deleted: packed.1,
        }));
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancel_names_a_run_or_one_of_its_tasks_and_nothing_else() {
        assert_eq!(parse_cancel("isola.cancel.r1", b"*"), Some(("r1", None)));
        assert_eq!(
            parse_cancel("isola.cancel.r1.7", b"7"),
            Some(("r1", Some(7)))
        );
        // The older form: the task's number on the run's subject.
        assert_eq!(
            parse_cancel("isola.cancel.r1", b" 7\n"),
            Some(("r1", Some(7)))
        );
        for (subject, payload) in [
            ("isola.cancel.r1", &b"x"[..]),
            ("isola.cancel.r1.x", b"*"),
            ("isola.other.r1", b"*"),
            ("isola.cancel.", b"*"),
            ("isola.cancel.a*b", b"*"),
        ] {
            assert_eq!(parse_cancel(subject, payload), None, "{subject}");
        }
        let long = format!("isola.cancel.{}", "r".repeat(4000));
        assert_eq!(parse_cancel(&long, b"*"), None);
    }

    #[test]
    fn a_run_id_cannot_name_a_path_or_a_subject_wildcard() {
        assert!(is_run_id("r1a2b3c4d5e6f7a8"));
        for bad in [
            "",
            "../../etc",
            "/abs",
            "a.b",
            "a*",
            "a>",
            "a b",
            &"x".repeat(65),
        ] {
            assert!(!is_run_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn ceilings_refuse_what_a_remote_spec_may_not_have_without_overflowing() {
        let mut ceilings = Ceilings {
            max_memory: ByteSize::b(u64::MAX),
            ..Ceilings::default()
        };
        let mut spec = TaskSpec::new("x.wasm");
        spec.limits.process_memory = Some(ByteSize::b(u64::MAX));
        assert_eq!(check(&ceilings, &spec), Ok(()));
        ceilings.max_memory = ByteSize::mib(64);
        spec.limits.process_memory = None;
        let refused = |spec: &TaskSpec| check(&ceilings, spec).err().map(|(field, _)| field);
        // The default limit is no request; more than the ceiling is.
        assert_eq!(refused(&spec), None);
        spec.limits.max_memory = ByteSize::gib(2);
        assert_eq!(refused(&spec).as_deref(), Some("limits.max_memory"));
        spec.limits.max_memory = ByteSize::mib(32);
        spec.dirs = vec![
            DirGrant {
                host: "/d".into(),
                guest: None,
                writable: false,
            };
            MAX_DIRS + 1
        ];
        assert_eq!(refused(&spec).as_deref(), Some("dirs"));
        spec.dirs.clear();
        spec.inherit_env = vec!["HOME".into()];
        assert_eq!(refused(&spec).as_deref(), Some("inherit_env"));
        spec.inherit_env.clear();
        spec.kv = Some("state.db".into());
        assert_eq!(refused(&spec).as_deref(), Some("kv"));
        // A sandbox policy is no refusal: it can only tighten the worker's.
        spec.kv = None;
        spec.sandbox = Some(Sandbox::Off);
        assert_eq!(refused(&spec), None);
        assert_eq!(stricter(Sandbox::Off, Sandbox::On), Sandbox::On);
        assert_eq!(stricter(Sandbox::Required, Sandbox::On), Sandbox::Required);
        assert_eq!(stricter(Sandbox::Off, Sandbox::Off), Sandbox::Off);
    }
}

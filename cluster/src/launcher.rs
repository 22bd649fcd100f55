//! The submitting side: [`Cluster`] puts task attempts on the queue and
//! turns what comes back (output chunks, results, changed files) into the
//! same [`TaskHandle`] a local runner gives.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
use async_nats::jetstream::message::PublishMessage;
use bytes::Bytes;
use futures::StreamExt;
use isola::{
    Captured, Outcome, Output, Placed, Placement, Stdin, Stream, TaskHandle, TaskMetrics,
    TaskReport, TaskSpec,
};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::Error;
use crate::blobs::Blobs;
use crate::connect::{
    ConnectOptions, Entities, HEARTBEAT_EVERY, TASK_SUBJECT, cancel_subject, run_subject,
    task_cancel_subject,
};
use crate::files::{self, FileMeta};
use crate::wire::{Changes, DELIVERY_HEADER, Ending, ResultMessage, STREAM_HEADER, TaskMessage};

/// Header of the message a worker sends when it starts a task: its name.
pub(crate) const STARTED_HEADER: &str = "Isola-Started";

/// Most bytes of a directory, module or stdin file sent for one task, and
/// of the changes that come back: 256 MiB (the object store splits them
/// into chunks; this bounds the memory each side holds).
pub(crate) const DEFAULT_MAX_ARCHIVE: u64 = 256 << 20;

/// How long a cancelled task's result is waited for before it is taken as
/// cancelled without one (its worker died or never got the message).
const CANCEL_GRACE: Duration = Duration::from_secs(10);
/// How long output chunks a result counts are waited for after it.
const OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// A connection to a cluster of [`crate::Worker`]s through one NATS
/// server: submits tasks and gives back their reports. Cheap to clone.
///
/// Each `Cluster` is one *run*: its tasks' subjects and result keys carry
/// the run's id, it keeps a heartbeat in the `ISOLA_RUNS` stream while it
/// lives (workers drop the tasks of a run whose heartbeat stopped, so a
/// killed submitter leaves no work behind), and [`Cluster::close`] cancels
/// whatever of it is still queued or running.
///
/// # Examples
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use isola_cluster::{Cluster, ConnectOptions};
///
/// let cluster = Cluster::connect(&ConnectOptions::new("nats://127.0.0.1:4222")).await?;
/// let report = cluster.spawn("render", isola::TaskSpec::new("render.wasm")).await?.wait().await;
/// println!("{}", report.outcome);
/// cluster.close().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("run", &self.inner.run)
            .finish_non_exhaustive()
    }
}

struct Inner {
    client: async_nats::Client,
    entities: Entities,
    blobs: Blobs,
    run: String,
    next: AtomicU64,
    waiting: Mutex<HashMap<u64, Arc<Waiting>>>,
    /// Modules by path: (length, mtime, hash).
    modules: Mutex<HashMap<PathBuf, (u64, i128, String)>>,
    /// Read-only directories by path: the tree packed and its hash.
    trees: Mutex<HashMap<PathBuf, (Files, String)>>,
    max_archive: u64,
    stop: CancellationToken,
}

/// A directory grant after its walk: as last packed (its blob), or packed
/// anew.
enum Packed {
    Unchanged(String),
    New(Files, Vec<u8>),
}

/// A directory's files as last packed (path, length, mode, mtime): what
/// tells whether to pack again.
type Files = std::collections::BTreeMap<String, FileMeta>;

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// One attempt waiting for its worker.
struct Waiting {
    state: Mutex<WaitState>,
    changed: Notify,
}

struct WaitState {
    sinks: [Sink; 2],
    /// The delivery whose output is being counted.
    delivery: u32,
    received: [u64; 2],
    /// The worker that said it started the attempt.
    started: Option<String>,
    result: Option<ResultMessage>,
}

enum Sink {
    /// To the task's reader, through a forwarder of its own, so a reader
    /// that is slow (or waits on another task first) holds up only its own
    /// task's output, never the dispatch of other tasks' results.
    Pipe(mpsc::UnboundedSender<Bytes>),
    Capture {
        bytes: Vec<u8>,
        limit: usize,
        truncated: bool,
    },
    Inherit(Stream),
    Discard,
}

impl Sink {
    fn new(output: Output, limit: u64, stream: Stream) -> (Sink, Option<mpsc::Receiver<Bytes>>) {
        match output {
            Output::Pipe => {
                let (tx, rx) = mpsc::channel(64);
                let (queue, mut queued) = mpsc::unbounded_channel::<Bytes>();
                tokio::spawn(async move {
                    while let Some(chunk) = queued.recv().await {
                        if tx.send(chunk).await.is_err() {
                            // The reader went away: the rest is dropped.
                            break;
                        }
                    }
                });
                (Sink::Pipe(queue), Some(rx))
            }
            Output::Capture => (
                Sink::Capture {
                    bytes: Vec::new(),
                    limit: usize::try_from(limit).unwrap_or(usize::MAX),
                    truncated: false,
                },
                None,
            ),
            Output::Inherit => (Sink::Inherit(stream), None),
            _ => (Sink::Discard, None),
        }
    }

    fn captured(&mut self) -> Captured {
        match self {
            Sink::Capture {
                bytes, truncated, ..
            } => Captured {
                bytes: std::mem::take(bytes),
                truncated: *truncated,
            },
            _ => Captured::default(),
        }
    }
}

impl WaitState {
    /// A redelivery starts its output over: count afresh, and keep only
    /// the new attempt's capture.
    fn start_over(&mut self, delivery: u32) {
        self.delivery = delivery;
        self.received = [0, 0];
        for sink in &mut self.sinks {
            if let Sink::Capture {
                bytes, truncated, ..
            } = sink
            {
                bytes.clear();
                *truncated = false;
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Cluster {
    /// Connects, creates the JetStream entities the cluster uses if they
    /// are missing, and starts a run.
    ///
    /// # Errors
    ///
    /// [`Error::Connect`] if the server cannot be reached;
    /// [`Error::JetStream`] if it has no JetStream.
    pub async fn connect(options: &ConnectOptions) -> Result<Cluster, Error> {
        let client = options.connect().await?;
        let entities = Entities::ensure(client.clone()).await?;
        let run = run_id();
        let blobs = Blobs::new(entities.blobs.clone());
        let inner = Arc::new(Inner {
            client,
            entities,
            blobs,
            run,
            next: AtomicU64::new(1),
            waiting: Mutex::new(HashMap::new()),
            modules: Mutex::new(HashMap::new()),
            trees: Mutex::new(HashMap::new()),
            max_archive: DEFAULT_MAX_ARCHIVE,
            stop: CancellationToken::new(),
        });
        beat(&inner).await?;
        let outputs = inner
            .client
            .subscribe(format!("isola.output.{}.>", inner.run))
            .await
            .map_err(|e| Error::JetStream(format!("cannot subscribe to output: {e}")))?;
        let results = inner
            .entities
            .results
            .create_consumer(OrderedConfig {
                filter_subject: format!("isola.result.{}.>", inner.run),
                deliver_policy: DeliverPolicy::All,
                // Short pulls, and so heartbeats every 2 s: after a server
                // restart the consumer notices within seconds, not the
                // default's half minute.
                max_expires: Duration::from_secs(4),
                ..Default::default()
            })
            .await
            .map_err(|e| Error::JetStream(format!("cannot follow results: {e}")))?
            .messages()
            .await
            .map_err(|e| Error::JetStream(format!("cannot follow results: {e}")))?;
        let weak = Arc::downgrade(&inner);
        let stop = inner.stop.clone();
        tokio::spawn(async move {
            dispatch(weak.clone(), outputs, results, stop).await;
            // Nothing more will arrive: no attempt may wait for ever.
            if let Some(inner) = weak.upgrade() {
                abandon(&inner);
            }
        });
        let weak = Arc::downgrade(&inner);
        let stop = inner.stop.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(HEARTBEAT_EVERY) => {}
                }
                let Some(inner) = weak.upgrade() else { break };
                if let Err(err) = beat(&inner).await {
                    tracing::warn!("cluster heartbeat: {err}");
                }
            }
        });
        Ok(Cluster { inner })
    }

    /// This run's id: the middle of its subjects and result keys.
    pub fn run_id(&self) -> &str {
        &self.inner.run
    }

    /// Submits `spec` (called `name` in logs and records) and returns its
    /// handle once a worker has started it.
    ///
    /// What a remote task can have differs from a local one: its Wasm
    /// file, directory grants and stdin file are sent (by content hash,
    /// once for many tasks); `inherit_env` takes this process's values;
    /// a writable directory's changes are applied here when the task
    /// ends. Piped output arrives as the task writes it.
    ///
    /// # Errors
    ///
    /// [`isola::Error::Unsupported`] for what a task cannot have on another
    /// machine (stdin inherited from this process, a shared memory group,
    /// host functions, an `isola:kv` store); [`isola::Error::Read`]-like
    /// errors for files that cannot be read or sent; the worker's refusal
    /// ([`isola::Error::InvalidSpec`]) for a spec beyond its ceilings;
    /// [`isola::Error::Remote`] when the server cannot take the task.
    pub async fn spawn(&self, name: &str, spec: TaskSpec) -> isola::Result<TaskHandle> {
        self.inner.launch(name, spec).await
    }

    /// Ends the run: cancels its tasks still queued or running (workers
    /// report them cancelled) and removes its heartbeat. Tasks spawned
    /// after this are dropped by the workers.
    pub async fn close(&self) {
        let inner = &self.inner;
        let _ = inner
            .client
            .publish(cancel_subject(&inner.run), Bytes::from_static(b"*"))
            .await;
        let _ = inner
            .entities
            .runs
            .purge()
            .filter(run_subject(&inner.run))
            .await;
        let _ = inner.client.flush().await;
        inner.stop.cancel();
    }
}

impl isola::taskset::Launch for Cluster {
    fn launch<'a>(
        &'a self,
        task: &'a str,
        spec: TaskSpec,
    ) -> futures::future::BoxFuture<'a, isola::Result<TaskHandle>> {
        Box::pin(self.inner.launch(task, spec))
    }

    /// A task that needs this machine (a shared memory group, an
    /// `isola:kv` store, host functions, this process's stdin) runs here:
    /// the set gives the same results as a local run.
    fn runs_here(&self, spec: &TaskSpec) -> bool {
        refuse_local_only(spec).is_err()
    }
}

async fn beat(inner: &Inner) -> Result<(), Error> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let err = |e: &dyn std::fmt::Display| {
        Error::JetStream(format!("cannot record the run's heartbeat: {e}"))
    };
    inner
        .entities
        .js
        .publish(run_subject(&inner.run), Bytes::from(now.to_string()))
        .await
        .map_err(|e| err(&e))?
        .await
        .map(|_| ())
        .map_err(|e| err(&e))
}

/// A run id: unique enough across machines and time, and a valid subject
/// token.
fn run_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(nanos);
    hasher.write_u32(std::process::id());
    format!("r{:x}", hasher.finish())
}

/// Ends every waiting attempt with a failure: the run's subscriptions
/// ended (the run was closed, or the connection was given up).
fn abandon(inner: &Inner) {
    let waiting: Vec<(u64, Arc<Waiting>)> = lock(&inner.waiting)
        .iter()
        .map(|(task, w)| (*task, w.clone()))
        .collect();
    for (task, waiting) in waiting {
        let mut state = lock(&waiting.state);
        if state.result.is_none() {
            state.result = Some(ResultMessage {
                task,
                worker: "(none)".into(),
                delivery: state.delivery,
                ending: Ending::Ran {
                    outcome: Outcome::Failed {
                        message: "the run's connection to the cluster ended before the task's \
                                  result arrived"
                            .into(),
                    },
                    metrics: TaskMetrics::default(),
                },
                chunks: [0, 0],
                changes: Vec::new(),
            });
        }
        drop(state);
        waiting.changed.notify_waiters();
    }
}

/// Routes output chunks and results to the attempts waiting for them,
/// until the run stops.
async fn dispatch(
    inner: std::sync::Weak<Inner>,
    mut outputs: async_nats::Subscriber,
    mut results: async_nats::jetstream::consumer::pull::Ordered,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            message = outputs.next() => {
                let Some(message) = message else { return };
                let Some(inner) = inner.upgrade() else { return };
                on_output(&inner, message);
            }
            message = results.next() => {
                let Some(message) = message else { return };
                let Ok(message) = message else {
                    // The ordered consumer recreates itself after errors
                    // (a server restart); nothing to do but wait.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let Some(inner) = inner.upgrade() else { return };
                match serde_json::from_slice::<ResultMessage>(&message.payload) {
                    Ok(result) => {
                        let waiting = lock(&inner.waiting).get(&result.task).cloned();
                        if let Some(waiting) = waiting {
                            let mut state = lock(&waiting.state);
                            // Exactly one result is recorded per attempt.
                            if state.result.is_none() {
                                state.result = Some(result);
                            }
                            drop(state);
                            waiting.changed.notify_waiters();
                        }
                    }
                    Err(err) => tracing::warn!("a malformed result: {err}"),
                }
            }
        }
    }
}

fn on_output(inner: &Inner, message: async_nats::Message) {
    let Some(task) = message
        .subject
        .rsplit('.')
        .next()
        .and_then(|t| t.parse::<u64>().ok())
    else {
        return;
    };
    let Some(waiting) = lock(&inner.waiting).get(&task).cloned() else {
        return;
    };
    let headers = message.headers.as_ref();
    let header = |name: &str| {
        headers
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_owned())
    };
    let delivery = header(DELIVERY_HEADER)
        .and_then(|d| d.parse::<u32>().ok())
        .unwrap_or(1);
    if let Some(worker) = header(STARTED_HEADER) {
        let mut state = lock(&waiting.state);
        state.started.get_or_insert(worker);
        drop(state);
        waiting.changed.notify_waiters();
        return;
    }
    let stream = match header(STREAM_HEADER).as_deref() {
        Some("stderr") => 1,
        _ => 0,
    };
    {
        let mut state = lock(&waiting.state);
        if delivery > state.delivery {
            state.start_over(delivery);
        } else if delivery < state.delivery {
            return;
        }
        match &mut state.sinks[stream] {
            Sink::Pipe(queue) => {
                let _ = queue.send(message.payload);
            }
            Sink::Capture {
                bytes,
                limit,
                truncated,
            } => {
                let room = limit.saturating_sub(bytes.len());
                let take = room.min(message.payload.len());
                bytes.extend_from_slice(&message.payload[..take]);
                *truncated |= take < message.payload.len();
            }
            Sink::Inherit(which) => {
                let _ = match which {
                    Stream::Stdout => std::io::stdout().write_all(&message.payload),
                    Stream::Stderr => std::io::stderr().write_all(&message.payload),
                };
            }
            Sink::Discard => {}
        }
        state.received[stream] += 1;
    }
    waiting.changed.notify_waiters();
}

impl Inner {
    async fn launch(self: &Arc<Self>, name: &str, mut spec: TaskSpec) -> isola::Result<TaskHandle> {
        refuse_local_only(&spec)?;
        // `inherit_env` means this machine's environment.
        for var in std::mem::take(&mut spec.inherit_env) {
            if let Ok(value) = std::env::var(&var) {
                spec.env.entry(var).or_insert(value);
            }
        }
        if spec.argv0.is_none() {
            // The guest sees the file's name, as it would here.
            spec.argv0 = spec
                .wasm
                .file_name()
                .map(|n| n.to_string_lossy().into_owned());
        }
        let module = self.module(&spec.wasm).await?;
        let mut dirs = Vec::with_capacity(spec.dirs.len());
        for grant in &spec.dirs {
            dirs.push(self.tree(&grant.host, grant.writable).await?);
        }
        let stdin = match &spec.stdin {
            Stdin::File(path) => {
                let bytes = tokio::fs::read(path)
                    .await
                    .map_err(|source| isola::Error::Read {
                        path: path.clone(),
                        source,
                    })?;
                Some(self.blobs.put(&bytes).await?)
            }
            _ => None,
        };

        let task = self.next.fetch_add(1, Ordering::Relaxed);
        let (out_sink, stdout) =
            Sink::new(spec.stdout, spec.limits.capture.as_u64(), Stream::Stdout);
        let (err_sink, stderr) =
            Sink::new(spec.stderr, spec.limits.capture.as_u64(), Stream::Stderr);
        let waiting = Arc::new(Waiting {
            state: Mutex::new(WaitState {
                sinks: [out_sink, err_sink],
                delivery: 1,
                received: [0, 0],
                started: None,
                result: None,
            }),
            changed: Notify::new(),
        });
        lock(&self.waiting).insert(task, waiting.clone());
        // From here on, leaving early (an error, or the caller dropping
        // this future) must take the attempt back off the cluster.
        let mut unlaunched = Unlaunched {
            inner: self.clone(),
            task,
            armed: true,
        };
        let message = TaskMessage {
            run: self.run.clone(),
            task,
            name: name.to_owned(),
            spec: spec.clone(),
            module,
            dirs,
            stdin,
        };
        let payload = serde_json::to_vec(&message)
            .map_err(|e| isola::Error::Remote(format!("cannot encode the task: {e}")))?;
        self.publish_task(task, payload.into()).await?;

        // Wait for a worker to start it, or to refuse it.
        loop {
            let notified = waiting.changed.notified();
            {
                let state = lock(&waiting.state);
                match &state.result {
                    Some(ResultMessage {
                        ending: Ending::Refused { field, message },
                        worker,
                        ..
                    }) => {
                        return Err(isola::Error::InvalidSpec {
                            field: field.clone(),
                            message: format!("worker `{worker}` refused the task: {message}"),
                        });
                    }
                    Some(ResultMessage {
                        ending: Ending::StartFailed { message },
                        worker,
                        ..
                    }) => {
                        return Err(isola::Error::Remote(format!(
                            "the task could not start on worker `{worker}`: {message}"
                        )));
                    }
                    Some(_) => break,
                    None if state.started.is_some() => break,
                    None => {}
                }
            }
            notified.await;
        }
        unlaunched.armed = false;

        let cancel = CancellationToken::new();
        let placement = Placement::default();
        let report = self
            .clone()
            .report(task, waiting, cancel.clone(), placement.clone(), spec);
        Ok(TaskHandle::from_remote(
            cancel,
            report,
            (stdout, stderr),
            placement,
        ))
    }

    /// Publishes a task to the queue, riding out a server that is away
    /// (restarting) for up to a minute.
    async fn publish_task(&self, task: u64, payload: Bytes) -> isola::Result<()> {
        let id = format!("{}.{task}", self.run);
        let mut last = String::new();
        for attempt in 0..60 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            let publish = PublishMessage::build()
                .payload(payload.clone())
                .message_id(&id);
            match self.entities.js.send_publish(TASK_SUBJECT, publish).await {
                Ok(ack) => match ack.await {
                    Ok(_) => return Ok(()),
                    Err(e) => last = e.to_string(),
                },
                Err(e) => last = e.to_string(),
            }
        }
        Err(isola::Error::Remote(format!(
            "cannot queue the task: {last}"
        )))
    }

    /// The task's one report: waits for its result (or cancels it), its
    /// output, and applies its file changes.
    async fn report(
        self: Arc<Self>,
        task: u64,
        waiting: Arc<Waiting>,
        cancel: CancellationToken,
        placement: Placement,
        spec: TaskSpec,
    ) -> TaskReport {
        let result = tokio::select! {
            result = wait_result(&waiting) => Some(result),
            () = cancel.cancelled() => {
                let _ = self
                    .client
                    .publish(task_cancel_subject(&self.run, task), Bytes::from(task.to_string()))
                    .await;
                tokio::time::timeout(CANCEL_GRACE, wait_result(&waiting)).await.ok()
            }
        };
        let Some(result) = result else {
            lock(&self.waiting).remove(&task);
            return TaskReport {
                outcome: Outcome::Cancelled,
                metrics: TaskMetrics::default(),
                stdout: Captured::default(),
                stderr: Captured::default(),
            };
        };
        // The output the result counts, then the report.
        let _ = tokio::time::timeout(OUTPUT_GRACE, async {
            loop {
                let notified = waiting.changed.notified();
                {
                    let state = lock(&waiting.state);
                    if state.delivery > result.delivery
                        || (state.delivery == result.delivery
                            && state.received[0] >= result.chunks[0]
                            && state.received[1] >= result.chunks[1])
                    {
                        break;
                    }
                }
                notified.await;
            }
        })
        .await;
        lock(&self.waiting).remove(&task);
        placement.set(Placed {
            worker: result.worker.clone(),
            deliveries: result.delivery,
        });
        let (stdout, stderr) = {
            let mut state = lock(&waiting.state);
            if state.delivery < result.delivery {
                // The delivery that made the result wrote nothing: what
                // was captured is a lost attempt's.
                state.start_over(result.delivery);
            }
            let stdout = state.sinks[0].captured();
            let stderr = state.sinks[1].captured();
            // Dropping the pipes ends the readers' streams.
            state.sinks = [Sink::Discard, Sink::Discard];
            (stdout, stderr)
        };
        let (mut outcome, metrics) = match result.ending {
            Ending::Ran { outcome, metrics } => (outcome, metrics),
            Ending::Refused { message, .. } | Ending::StartFailed { message } => (
                Outcome::Failed {
                    message: format!("worker `{}`: {message}", result.worker),
                },
                TaskMetrics::default(),
            ),
        };
        if let Err(err) = self.apply(&spec, &result.changes).await {
            outcome = Outcome::Failed {
                message: format!(
                    "the task ended ({outcome}), but its files could not be brought back: {err}"
                ),
            };
        }
        TaskReport {
            outcome,
            metrics,
            stdout,
            stderr,
        }
    }

    /// Applies a task's changes to its writable directories here.
    async fn apply(&self, spec: &TaskSpec, changes: &[Option<Changes>]) -> Result<(), Error> {
        for (grant, change) in spec.dirs.iter().zip(changes) {
            let (Some(change), true) = (change, grant.writable) else {
                continue;
            };
            // Deletions first: a path that changed between file and
            // directory is in both, and the archive brings the new one.
            for rel in &change.deleted {
                match files::inside(&grant.host, Path::new(rel)) {
                    Some(path) => {
                        // Already gone here is what was asked; `inside`
                        // refused a link, so a directory is a real one.
                        let _ = match std::fs::symlink_metadata(&path) {
                            Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(&path),
                            _ => std::fs::remove_file(&path),
                        };
                    }
                    None => {
                        return Err(Error::Files(format!(
                            "refused to delete `{rel}`: it leaves `{}`",
                            grant.host.display()
                        )));
                    }
                }
            }
            if let Some(archive) = &change.archive {
                let bytes = self.blobs.get(archive, self.max_archive).await?;
                let dir = grant.host.clone();
                tokio::task::spawn_blocking(move || files::unpack(&bytes, &dir, u64::MAX))
                    .await
                    .map_err(|e| Error::Files(e.to_string()))??;
            }
        }
        Ok(())
    }

    /// The module's hash, uploading it the first time (or when the file
    /// changed).
    async fn module(&self, path: &Path) -> isola::Result<String> {
        use std::os::unix::fs::MetadataExt;
        let read_err = |source| isola::Error::Read {
            path: path.to_path_buf(),
            source,
        };
        let meta = tokio::fs::metadata(path).await.map_err(read_err)?;
        let stamp = (
            meta.len(),
            i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        );
        if let Some((len, mtime, hash)) = lock(&self.modules).get(path)
            && (*len, *mtime) == stamp
        {
            return Ok(hash.clone());
        }
        if meta.len() > self.max_archive {
            return Err(isola::Error::InvalidSpec {
                field: "wasm".into(),
                message: format!(
                    "`{}` is {} bytes, more than the {} sent to a worker",
                    path.display(),
                    meta.len(),
                    self.max_archive
                ),
            });
        }
        let bytes = tokio::fs::read(path).await.map_err(read_err)?;
        if !bytes.starts_with(b"\0asm") {
            return Err(isola::Error::NotWasm {
                path: path.to_path_buf(),
            });
        }
        let hash = self.blobs.put(&bytes).await?;
        lock(&self.modules).insert(path.to_path_buf(), (stamp.0, stamp.1, hash.clone()));
        Ok(hash)
    }

    /// A directory grant packed and stored; a read-only one is packed
    /// again only when its files changed.
    async fn tree(&self, dir: &Path, writable: bool) -> isola::Result<String> {
        let seen = if writable {
            None
        } else {
            lock(&self.trees).get(dir).cloned()
        };
        let path = dir.to_path_buf();
        let limit = self.max_archive;
        // Walk and pack in one blocking step: the walk says whether the
        // last archive still holds.
        let packed = tokio::task::spawn_blocking(move || -> Result<_, Error> {
            let tree = files::walk(&path)?;
            if let Some((files, hash)) = seen
                && files == tree.files
            {
                return Ok(Packed::Unchanged(hash));
            }
            let archive = files::pack(&path, &tree, limit)?;
            Ok(Packed::New(tree.files, archive))
        })
        .await
        .map_err(|e| isola::Error::Remote(e.to_string()))?
        .map_err(|e| isola::Error::InvalidSpec {
            field: "dirs".into(),
            message: e.to_string(),
        })?;
        let (files, archive) = match packed {
            Packed::Unchanged(hash) => return Ok(hash),
            Packed::New(files, archive) => (files, archive),
        };
        let hash = self.blobs.put(&archive).await?;
        if !writable {
            lock(&self.trees).insert(dir.to_path_buf(), (files, hash.clone()));
        }
        Ok(hash)
    }
}

async fn wait_result(waiting: &Waiting) -> ResultMessage {
    loop {
        let notified = waiting.changed.notified();
        if let Some(result) = lock(&waiting.state).result.take() {
            return result;
        }
        notified.await;
    }
}

/// Takes an attempt back off the cluster when its launch is abandoned.
struct Unlaunched {
    inner: Arc<Inner>,
    task: u64,
    armed: bool,
}

impl Drop for Unlaunched {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        lock(&self.inner.waiting).remove(&self.task);
        let client = self.inner.client.clone();
        let task = self.task;
        let subject = task_cancel_subject(&self.inner.run, task);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = client.publish(subject, Bytes::from(task.to_string())).await;
            });
        }
    }
}

/// What a task on another machine cannot have.
fn refuse_local_only(spec: &TaskSpec) -> isola::Result<()> {
    match crate::wire::local_only(spec) {
        Some((field, what)) => Err(isola::Error::Unsupported(format!(
            "{what} (`{field}`) on a cluster"
        ))),
        None => Ok(()),
    }
}

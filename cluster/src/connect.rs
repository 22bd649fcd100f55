//! Connecting to NATS, and the JetStream entities the cluster uses (named
//! in the crate's docs), created on first use by whichever side gets there
//! first.

use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, object_store, stream};

use crate::Error;

pub(crate) const TASKS_STREAM: &str = "ISOLA_TASKS";
pub(crate) const TASK_SUBJECT: &str = "isola.task";
pub(crate) const RESULTS_STREAM: &str = "ISOLA_RESULTS";
pub(crate) const WORKERS_CONSUMER: &str = "isola-workers";
pub(crate) const BLOBS_BUCKET: &str = "isola_blobs";
pub(crate) const RUNS_STREAM: &str = "ISOLA_RUNS";
/// Cancels, kept so a worker that was away or joins later still sees them.
pub(crate) const CANCELS_STREAM: &str = "ISOLA_CANCELS";

/// How long a submitter's heartbeat lasts: a run whose submitter has not
/// beaten for this long is taken as gone, and workers drop its tasks.
pub(crate) const HEARTBEAT_TTL: Duration = Duration::from_secs(10);
/// How often a submitter beats.
pub(crate) const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);
/// Results are kept this long: a run longer than that could lose a
/// result stored for a submitter that was not listening.
const RESULTS_MAX_AGE: Duration = Duration::from_secs(3600);
/// JetStream's de-duplication window for both streams (the server's
/// default, stated so it is not a surprise).
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

pub(crate) fn result_subject(run: &str, task: u64) -> String {
    format!("isola.result.{run}.{task}")
}

pub(crate) fn output_subject(run: &str, task: u64) -> String {
    format!("isola.output.{run}.{task}")
}

pub(crate) fn run_subject(run: &str) -> String {
    format!("isola.run.{run}")
}

/// Where a whole run's cancel goes (payload `*`).
pub(crate) fn cancel_subject(run: &str) -> String {
    format!("isola.cancel.{run}")
}

/// Where one task's cancel goes (payload: the task's number).
pub(crate) fn task_cancel_subject(run: &str, task: u64) -> String {
    format!("isola.cancel.{run}.{task}")
}

/// How a client proves who it is to the NATS server: the schemes
/// `nats-server` accepts (see its "Authentication" documentation).
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub enum Credentials {
    /// None: a server without authorization.
    #[default]
    None,
    /// A user name and password.
    UserPassword {
        /// The user.
        user: String,
        /// The password.
        password: String,
    },
    /// A token.
    Token(String),
    /// An NKey seed (`SU…`).
    NKey(String),
    /// A `.creds` file (a user JWT and its NKey seed), as `nsc` writes.
    CredsFile(PathBuf),
}

/// Where the NATS server is and how to reach it.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Server address(es), comma-separated: `nats://host:4222`, or
    /// `tls://…` to require TLS.
    pub url: String,
    /// Who the client is. None by default.
    pub credentials: Credentials,
    /// Extra root certificates (PEM) to trust for the server's TLS.
    pub tls_roots: Vec<PathBuf>,
    /// A client certificate and its key (PEM), for servers that verify
    /// clients.
    pub tls_client: Option<(PathBuf, PathBuf)>,
    /// Refuse a server that does not speak TLS. Off by default (a `tls://`
    /// address requires it anyway).
    pub require_tls: bool,
    /// The connection's name as the server's monitoring shows it.
    pub name: Option<String>,
}

impl ConnectOptions {
    /// Options for the server at `url`, no credentials, no TLS settings.
    pub fn new(url: impl Into<String>) -> ConnectOptions {
        ConnectOptions {
            url: url.into(),
            credentials: Credentials::None,
            tls_roots: Vec::new(),
            tls_client: None,
            require_tls: false,
            name: None,
        }
    }

    /// Connects, retrying the first connection for a few seconds and
    /// reconnecting forever after that: a server restart is an outage to
    /// ride out, not an error.
    pub(crate) async fn connect(&self) -> Result<async_nats::Client, Error> {
        self.connect_watched(None).await
    }

    /// As `connect`, recording in `connected_at` when the connection was
    /// last (re)established.
    pub(crate) async fn connect_watched(
        &self,
        connected_at: Option<std::sync::Arc<std::sync::Mutex<std::time::Instant>>>,
    ) -> Result<async_nats::Client, Error> {
        let err = |message: String| Error::Connect {
            url: self.url.clone(),
            message,
        };
        let mut options = match &self.credentials {
            Credentials::None => async_nats::ConnectOptions::new(),
            Credentials::UserPassword { user, password } => {
                async_nats::ConnectOptions::with_user_and_password(user.clone(), password.clone())
            }
            Credentials::Token(token) => async_nats::ConnectOptions::with_token(token.clone()),
            Credentials::NKey(seed) => async_nats::ConnectOptions::with_nkey(seed.clone()),
            Credentials::CredsFile(path) => {
                async_nats::ConnectOptions::with_credentials_file(path.clone())
                    .await
                    .map_err(|e| err(format!("cannot read `{}`: {e}", path.display())))?
            }
        };
        for root in &self.tls_roots {
            options = options.add_root_certificates(root.clone());
        }
        if let Some((cert, key)) = &self.tls_client {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        if let Some(name) = &self.name {
            options = options.name(name);
        }
        if let Some(at) = connected_at {
            options = options.event_callback(move |event| {
                let at = at.clone();
                async move {
                    if matches!(event, async_nats::Event::Connected) {
                        *at.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
                            std::time::Instant::now();
                    }
                }
            });
        }
        options = options
            .require_tls(self.require_tls)
            .connection_timeout(Duration::from_secs(5))
            // A slow consumer of output (a busy submitter) should not lose
            // chunks to a small client buffer.
            .subscription_capacity(65_536);
        let url = self.url.clone();
        let connect = options.connect(url.as_str());
        match tokio::time::timeout(Duration::from_secs(10), connect).await {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(e)) => {
                let mut message = e.to_string();
                // What rustls says when the other side is not TLS.
                if message.contains("corrupt message") || message.contains("InvalidContentType") {
                    message.push_str(
                        " (the server does not seem to speak TLS: `tls://` and \
                         --nats-require-tls need a server with TLS configured)",
                    );
                }
                Err(err(message))
            }
            Err(_) => Err(err("no answer within 10 s".into())),
        }
    }
}

/// The JetStream entities, created if missing.
pub(crate) struct Entities {
    pub(crate) js: jetstream::Context,
    pub(crate) tasks: stream::Stream,
    pub(crate) results: stream::Stream,
    pub(crate) blobs: object_store::ObjectStore,
    /// Heartbeats: the last message on `isola.run.<run>`, kept for
    /// [`HEARTBEAT_TTL`]. A stream, not a key-value bucket: the client's
    /// bucket set-up asks the server for account details in a form a 2.9
    /// server does not give, and a stream with one message per subject is
    /// all a heartbeat needs.
    pub(crate) runs: stream::Stream,
    /// Cancels: the last message on `isola.cancel.<run>` (a whole run) and
    /// `isola.cancel.<run>.<task>`, kept as long as results are. Published
    /// on core NATS (live to the workers' subscription) and stored by the
    /// stream, so a worker that missed one finds it.
    pub(crate) cancels: stream::Stream,
}

impl Entities {
    /// The entities, created if missing. A JetStream API that does not
    /// answer in time (a busy or just-started server), or a create that
    /// lost a race with another process's, is tried again (up to half a
    /// minute); any other failure is final.
    pub(crate) async fn ensure(client: async_nats::Client) -> Result<Entities, Error> {
        let mut attempts = 0;
        loop {
            match Entities::ensure_once(client.clone()).await {
                Err(Error::JetStream(message)) if attempts < 15 => {
                    let lower = message.to_lowercase();
                    // Two processes that find an entity missing both create
                    // it; the loser's create fails ("subjects overlap",
                    // "already in use") and its next look finds it.
                    let raced = lower.contains("overlap") || lower.contains("already in use");
                    if !raced && !lower.contains("timed out") {
                        return Err(Error::JetStream(message));
                    }
                    attempts += 1;
                    tracing::debug!("JetStream set-up (retrying): {message}");
                    let pause = if raced { 100 } else { 2000 };
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
                other => return other,
            }
        }
    }

    async fn ensure_once(client: async_nats::Client) -> Result<Entities, Error> {
        let js = jetstream::new(client);
        let js_err = |what: &str, e: &dyn std::fmt::Display| {
            Error::JetStream(format!(
                "cannot set up {what} (is the server running with JetStream, `-js`?): {e}"
            ))
        };
        let tasks = js
            .get_or_create_stream(stream::Config {
                name: TASKS_STREAM.into(),
                subjects: vec![TASK_SUBJECT.into()],
                retention: stream::RetentionPolicy::WorkQueue,
                storage: stream::StorageType::File,
                duplicate_window: DUPLICATE_WINDOW,
                ..Default::default()
            })
            .await
            .map_err(|e| js_err("the task stream", &e))?;
        let results = js
            .get_or_create_stream(stream::Config {
                name: RESULTS_STREAM.into(),
                subjects: vec!["isola.result.>".into()],
                retention: stream::RetentionPolicy::Limits,
                storage: stream::StorageType::File,
                max_age: RESULTS_MAX_AGE,
                duplicate_window: DUPLICATE_WINDOW,
                ..Default::default()
            })
            .await
            .map_err(|e| js_err("the result stream", &e))?;
        let blobs = match js.get_object_store(BLOBS_BUCKET).await {
            Ok(store) => store,
            Err(_) => js
                .create_object_store(object_store::Config {
                    bucket: BLOBS_BUCKET.into(),
                    description: Some("Isola modules and files, by SHA-256".into()),
                    storage: stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(|e| js_err("the blob store", &e))?,
        };
        let runs = js
            .get_or_create_stream(stream::Config {
                name: RUNS_STREAM.into(),
                subjects: vec!["isola.run.*".into()],
                max_messages_per_subject: 1,
                max_age: HEARTBEAT_TTL,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| js_err("the heartbeat stream", &e))?;
        let cancels = js
            .get_or_create_stream(stream::Config {
                name: CANCELS_STREAM.into(),
                subjects: vec!["isola.cancel.>".into()],
                max_messages_per_subject: 1,
                max_age: RESULTS_MAX_AGE,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| js_err("the cancel stream", &e))?;
        Ok(Entities {
            js,
            tasks,
            results,
            blobs,
            runs,
            cancels,
        })
    }

    /// The workers' shared durable consumer of the task queue. `ack_wait`
    /// applies when this call creates it; an existing one keeps its own.
    pub(crate) async fn workers_consumer(
        &self,
        ack_wait: Duration,
    ) -> Result<consumer::Consumer<consumer::pull::Config>, Error> {
        let created = self
            .tasks
            .get_or_create_consumer(
                WORKERS_CONSUMER,
                consumer::pull::Config {
                    durable_name: Some(WORKERS_CONSUMER.into()),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait,
                    // The workers count deliveries themselves (MAX_DELIVERIES)
                    // so that a task given up still gets a result.
                    max_deliver: -1,
                    ..Default::default()
                },
            )
            .await;
        match created {
            Ok(consumer) => Ok(consumer),
            // Made meanwhile by another worker (perhaps with another ack
            // wait): use that one.
            Err(err) => self
                .tasks
                .get_consumer(WORKERS_CONSUMER)
                .await
                .map_err(|_| {
                    Error::JetStream(format!("cannot set up the workers' consumer: {err}"))
                }),
        }
    }
}

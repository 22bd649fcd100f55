//! `isola worker`: pulls tasks that `isola up --nats` (or an embedder's
//! `isola_cluster::Cluster`) submitted, and runs them here.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use isola::{ByteSize, CacheDir, Isolation, Runner, RunnerConfig};
use isola_cluster::{Ceilings, Worker, WorkerOptions};
use tokio_util::sync::CancellationToken;

use super::check::clean;
use super::common::{NatsArgs, SandboxArg};
use crate::exit;
use crate::signals::Signals;

const WORKER_HELP: &str = "\
Exit codes:
  0    stopped by a signal after finishing the running tasks
  2    bad flags
  125  the NATS server cannot be reached or has no JetStream, or Isola failed

The first SIGTERM, SIGINT or SIGHUP stops taking tasks and waits for the
running ones to finish and be reported; a second one stops them at once
and hands them back to the queue for another worker.";

/// Run tasks from a NATS JetStream work queue (see `isola up --nats`).
///
/// Pulls tasks, runs each here at the isolation its spec asks for, streams
/// its output back as it is written and publishes its result. A task from
/// the queue is untrusted input: the ceilings below bound what its spec may
/// ask for, and it gets no directory, environment variable or stdin of
/// this machine, only the files the submitter sent.
#[derive(Args)]
#[command(after_help = WORKER_HELP)]
pub struct WorkerCommand {
    /// The NATS server (nats://host:4222), running with JetStream.
    #[arg(long, value_name = "URL")]
    nats: String,

    #[command(flatten)]
    nats_args: NatsArgs,

    /// Most tasks running at once. Default: the number of CPU cores.
    #[arg(long, short = 'j', value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    jobs: Option<u16>,

    /// The name records give this worker. Default: host name and process id.
    #[arg(long, value_name = "NAME")]
    name: Option<String>,

    /// Ceiling on a task's linear memory (`limits.max_memory`).
    #[arg(long, value_name = "SIZE", default_value = "4GiB")]
    max_memory: ByteSize,

    /// Ceiling on a task's timeout; a task without one gets this one.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = humantime::parse_duration)]
    max_timeout: Duration,

    /// Ceiling on a task's fuel; a task without a fuel limit gets this one.
    /// None by default.
    #[arg(long, value_name = "N")]
    max_fuel: Option<u64>,

    /// The isolation levels this worker runs (comma-separated).
    #[arg(
        long,
        value_name = "LEVELS",
        value_delimiter = ',',
        default_value = "thread,process"
    )]
    isolation: Vec<IsolationArg>,

    /// Most bytes of one module, directory archive or stdin file received,
    /// and of a directory's changes sent back.
    #[arg(long, value_name = "SIZE", default_value = "256MiB")]
    max_archive: ByteSize,

    /// How long a task may go unacknowledged before the server hands it to
    /// another worker (running tasks send progress well within it). Takes
    /// effect when the first worker creates the shared consumer.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    ack_wait: Duration,

    /// The OS sandbox around process tasks' workers, as for `isola up`.
    #[arg(long, value_enum, value_name = "POLICY", default_value_t = SandboxArg::On)]
    sandbox: SandboxArg,

    /// Directory for precompiled artifacts. Default: $ISOLA_CACHE_DIR, else
    /// the user's cache directory (~/.cache/isola).
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum IsolationArg {
    Thread,
    Process,
}

impl WorkerCommand {
    pub async fn execute(self) -> u8 {
        let mut signals = match Signals::watch_for_command() {
            Ok(signals) => signals,
            Err(code) => return code,
        };
        for (flag, zero) in [
            ("--max-timeout", self.max_timeout.is_zero()),
            ("--ack-wait", self.ack_wait.is_zero()),
            ("--max-memory", self.max_memory.as_u64() == 0),
            ("--max-archive", self.max_archive.as_u64() == 0),
            ("--max-fuel", self.max_fuel == Some(0)),
        ] {
            if zero {
                say!(
                    "error: {flag}: must be more than zero (a worker with it would refuse every task)"
                );
                return exit::USAGE;
            }
        }
        let mut options = WorkerOptions::default();
        if let Some(name) = &self.name {
            if name.is_empty() || name.chars().any(char::is_control) {
                say!("error: --name: must be non-empty, without control characters");
                return exit::USAGE;
            }
            options.name = name.clone();
        }
        if let Some(jobs) = self.jobs {
            options.jobs = usize::from(jobs);
        }
        options.ack_wait = self.ack_wait;
        options.ceilings = Ceilings {
            max_memory: self.max_memory,
            max_timeout: self.max_timeout,
            max_fuel: self.max_fuel,
            isolation: self
                .isolation
                .iter()
                .map(|level| match level {
                    IsolationArg::Thread => Isolation::Thread,
                    IsolationArg::Process => Isolation::Process,
                })
                .collect(),
            max_archive: self.max_archive.as_u64(),
        };
        let connect = match self.nats_args.options(&self.nats, &options.name) {
            Ok(connect) => connect,
            Err(err) => {
                say!("error: {err}");
                return exit::USAGE;
            }
        };
        let runner = match Runner::with_config(RunnerConfig {
            max_live_tasks: options.jobs.min(RunnerConfig::default().max_live_tasks),
            cache_dir: match &self.cache_dir {
                Some(dir) => CacheDir::Path(dir.clone()),
                None => CacheDir::Default,
            },
            sandbox: self.sandbox.into(),
            ..RunnerConfig::default()
        }) {
            Ok(runner) => runner,
            Err(err) => {
                say!("error: {err}");
                return exit::for_error(&err);
            }
        };
        let worker = match Worker::connect(runner, &connect, options).await {
            Ok(worker) => worker,
            Err(err) => {
                say!("error: --nats {}: {err}", clean(&self.nats));
                return exit::INTERNAL;
            }
        };
        say!(
            "isola worker {}: waiting for tasks from {}",
            clean(worker.name()),
            clean(&self.nats)
        );
        let drain = CancellationToken::new();
        let abort = CancellationToken::new();
        {
            let (drain, abort) = (drain.clone(), abort.clone());
            tokio::spawn(async move {
                if let Some(first) = signals.next().await {
                    say!(
                        "isola worker: {}: finishing the running tasks (a second signal hands them back)",
                        first.name()
                    );
                    drain.cancel();
                }
                if signals.next().await.is_some() {
                    abort.cancel();
                }
            });
        }
        match worker.run(drain, abort).await {
            Ok(()) => exit::SUCCESS,
            Err(err) => {
                say!("error: {err}");
                exit::INTERNAL
            }
        }
    }
}

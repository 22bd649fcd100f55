//! Options shared by the subcommands that run one task (`run`, `call`):
//! grants, limits, isolation and the compile cache.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use isola::{
    ByteSize, CacheDir, DirGrant, Isolation, Limit, Limits, Outcome, RunnerConfig, TaskSpec,
};

/// What the guest is granted, within which limits, and where it runs.
#[derive(Args)]
pub struct TaskOptions {
    /// Give the guest an environment variable: KEY=VALUE, or KEY alone to
    /// pass the host's value through. Repeatable.
    #[arg(long = "env", value_name = "KEY[=VALUE]", value_parser = parse_env)]
    envs: Vec<EnvArg>,

    /// Grant a host directory, read-write: HOST or HOST::GUEST. Repeatable.
    #[arg(long = "dir", value_name = "HOST[::GUEST]", value_parser = parse_dir_rw)]
    dirs: Vec<DirGrant>,

    /// Grant a host directory, read-only: HOST or HOST::GUEST. Repeatable.
    #[arg(long = "dir-ro", value_name = "HOST[::GUEST]", value_parser = parse_dir_ro)]
    dirs_ro: Vec<DirGrant>,

    /// The guest's argv[0]. Default: the Wasm file's name.
    #[arg(long)]
    argv0: Option<String>,

    /// Most linear memory the guest may use (e.g. 64MiB, 1GiB).
    #[arg(long, value_name = "SIZE", default_value = "1GiB")]
    max_memory: ByteSize,

    /// Fuel budget, about one unit per Wasm instruction. Default: unlimited.
    #[arg(long, value_name = "N")]
    fuel: Option<u64>,

    /// Wall-clock limit (e.g. 500ms, 1.5s, 2m). Default: none.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,

    /// Most bytes the guest may write to each of stdout and stderr; past it
    /// the task is stopped. Default: unlimited.
    #[arg(long, value_name = "SIZE")]
    max_output: Option<ByteSize>,

    /// Where the task runs.
    #[arg(long, value_enum, default_value_t = IsolationArg::Thread)]
    isolation: IsolationArg,

    /// Directory for precompiled artifacts. Default: $ISOLA_CACHE_DIR, else
    /// the user's cache directory (~/.cache/isola).
    #[arg(long, value_name = "DIR", conflicts_with = "no_cache")]
    cache_dir: Option<PathBuf>,

    /// Do not read or write the on-disk compile cache.
    #[arg(long)]
    no_cache: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum IsolationArg {
    /// On a host thread, in its own store and linear memory.
    Thread,
    /// In a child process with its own engine.
    Process,
}

#[derive(Clone)]
struct EnvArg {
    key: String,
    value: Option<String>,
}

fn parse_env(s: &str) -> Result<EnvArg, String> {
    let (key, value) = match s.split_once('=') {
        Some((k, v)) => (k, Some(v.to_owned())),
        None => (s, None),
    };
    if key.is_empty() {
        return Err("the variable name is empty".into());
    }
    Ok(EnvArg {
        key: key.to_owned(),
        value,
    })
}

fn parse_dir(s: &str, writable: bool) -> Result<DirGrant, String> {
    let (host, guest) = match s.split_once("::") {
        Some((h, g)) => (h, Some(g.to_owned())),
        None => (s, None),
    };
    if host.is_empty() || guest.as_deref() == Some("") {
        return Err("expected HOST or HOST::GUEST".into());
    }
    Ok(DirGrant {
        host: host.into(),
        guest,
        writable,
    })
}

fn parse_dir_rw(s: &str) -> Result<DirGrant, String> {
    parse_dir(s, true)
}

fn parse_dir_ro(s: &str) -> Result<DirGrant, String> {
    parse_dir(s, false)
}

impl TaskOptions {
    /// A spec for `wasm` with these grants and limits.
    pub fn spec(&self, wasm: &std::path::Path) -> TaskSpec {
        let mut spec = TaskSpec::new(wasm);
        spec.argv0 = self.argv0.clone();
        for env in &self.envs {
            match &env.value {
                Some(value) => {
                    spec.env.insert(env.key.clone(), value.clone());
                }
                None => spec.inherit_env.push(env.key.clone()),
            }
        }
        spec.dirs = self.dirs.iter().chain(&self.dirs_ro).cloned().collect();
        spec.limits = Limits {
            max_memory: self.max_memory,
            fuel: self.fuel,
            timeout: self.timeout,
            max_output: self.max_output,
            ..Limits::default()
        };
        spec.isolation = match self.isolation {
            IsolationArg::Thread => Isolation::Thread,
            IsolationArg::Process => Isolation::Process,
        };
        spec
    }

    /// A runner for one task, or the exit code after saying why not.
    pub fn runner(&self) -> Result<isola::Runner, u8> {
        isola::Runner::with_config(self.runner_config()).map_err(|err| {
            eprintln!("error: {err}");
            crate::exit::for_error(&err)
        })
    }

    /// The runner settings for one task.
    pub fn runner_config(&self) -> RunnerConfig {
        RunnerConfig {
            // One task: a pool of one keeps start-up small.
            max_live_tasks: 1,
            // One task: a spare worker would only be started and killed.
            prestarted_workers: 0,
            // One task: setting up a pool would cost more than it saves.
            instance_pool: false,
            cache_dir: match (&self.cache_dir, self.no_cache) {
                (_, true) => CacheDir::Disabled,
                (Some(dir), false) => CacheDir::Path(dir.clone()),
                (None, false) => CacheDir::Default,
            },
            ..RunnerConfig::default()
        }
    }
}

/// Says on stderr why a task ended, unless it simply exited or returned.
pub fn explain(outcome: &Outcome) {
    match outcome {
        Outcome::Exited { .. } | Outcome::Returned { .. } => {}
        Outcome::Rejected { error } => eprintln!("error: the plugin returned an error: {error}"),
        Outcome::Trapped(trap) => {
            eprintln!("error: the guest trapped: {}", trap.message);
            if !trap.backtrace.is_empty() {
                eprintln!("wasm backtrace:");
                // Deep recursion repeats one frame many times: show it once.
                let mut frames = trap.backtrace.iter().enumerate().peekable();
                while let Some((i, frame)) = frames.next() {
                    eprintln!("  {i:>3}: {frame}");
                    let mut repeats = 0;
                    while frames.next_if(|(_, next)| *next == frame).is_some() {
                        repeats += 1;
                    }
                    if repeats > 0 {
                        eprintln!("       ... the same frame {repeats} more times");
                    }
                }
            }
        }
        Outcome::LimitExceeded { limit } => {
            let flag = match limit {
                Limit::Memory { .. } => "--max-memory",
                Limit::ProcessMemory { .. } => "the worker's OS memory limit",
                Limit::Fuel { .. } => "--fuel",
                Limit::Timeout { .. } => "--timeout",
                Limit::Output { .. } => "--max-output",
                Limit::MessageSize { .. } | Limit::Messages { .. } => "message limits",
            };
            eprintln!("error: the task exceeded its {limit} ({flag})");
        }
        Outcome::Cancelled => eprintln!("error: the task was cancelled"),
        Outcome::Crashed { .. } => eprintln!("error: the task's worker process {outcome}"),
        Outcome::Failed { message } => eprintln!("error: isola failed to run the task: {message}"),
    }
}

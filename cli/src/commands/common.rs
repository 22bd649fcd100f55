//! Options shared by the subcommands that run one task (`run`, `call`):
//! grants, limits, isolation and the compile cache.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use clap::builder::{OsStringValueParser, TypedValueParser};
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
    #[arg(
        long = "dir",
        value_name = "HOST[::GUEST]",
        value_parser = OsStringValueParser::new().try_map(parse_dir_rw)
    )]
    dirs: Vec<DirGrant>,

    /// Grant a host directory, read-only: HOST or HOST::GUEST. Repeatable.
    #[arg(
        long = "dir-ro",
        value_name = "HOST[::GUEST]",
        value_parser = OsStringValueParser::new().try_map(parse_dir_ro)
    )]
    dirs_ro: Vec<DirGrant>,

    /// The guest's argv[0]. Default: the Wasm file's name.
    #[arg(long)]
    argv0: Option<String>,

    /// Most linear memory the guest may use (e.g. 64MiB, 1GiB).
    #[arg(long, value_name = "SIZE", default_value = "1GiB", value_parser = parse_size)]
    max_memory: ByteSize,

    /// Fuel budget, about one unit per Wasm instruction. Default: unlimited.
    #[arg(long, value_name = "N")]
    fuel: Option<u64>,

    /// Wall-clock limit (e.g. 500ms, 1.5s, 2m). Default: none.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,

    /// Most bytes the guest may write to each of stdout and stderr; past it
    /// the task is stopped. Default: unlimited.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
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

/// A size flag, read as `tasks.toml` reads sizes: exactly, and a number
/// too large for 64 bits is called too large (`bytesize`'s own parser
/// says `couldn't parse "" into a known SI unit` for it).
fn parse_size(s: &str) -> Result<ByteSize, String> {
    isola::config::parse_size(s).map_err(|err| err.to_string())
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

/// A `--dir`/`--dir-ro` value: `HOST` or `HOST::GUEST`, split at the
/// first `::`. Read as bytes, not text: the host directory is a path, and
/// a path need not be UTF-8 (at either isolation). The guest path is what
/// the guest opens by name, so it is text.
fn parse_dir(s: &std::ffi::OsStr, writable: bool) -> Result<DirGrant, String> {
    let bytes = s.as_bytes();
    let (host, guest) = match bytes.windows(2).position(|w| w == b"::") {
        Some(at) => (&bytes[..at], Some(&bytes[at + 2..])),
        None => (bytes, None),
    };
    let guest = guest
        .map(|g| {
            std::str::from_utf8(g)
                .map(str::to_owned)
                .map_err(|_| "the guest path (after `::`) must be UTF-8".to_owned())
        })
        .transpose()?;
    if host.is_empty() || guest.as_deref() == Some("") {
        return Err("expected HOST or HOST::GUEST".into());
    }
    Ok(DirGrant {
        host: PathBuf::from(std::ffi::OsStr::from_bytes(host)),
        guest,
        writable,
    })
}

/// `--dir`: a read-write grant.
fn parse_dir_rw(s: OsString) -> Result<DirGrant, String> {
    parse_dir(&s, true)
}

/// `--dir-ro`: a read-only grant.
fn parse_dir_ro(s: OsString) -> Result<DirGrant, String> {
    parse_dir(&s, false)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_grants_take_host_paths_that_are_not_utf8() {
        let raw = std::ffi::OsStr::from_bytes(b"/data-\xff::/d");
        let grant = parse_dir_rw(raw.to_owned()).expect("a grant");
        assert_eq!(
            grant.host,
            PathBuf::from(std::ffi::OsStr::from_bytes(b"/data-\xff"))
        );
        assert_eq!(grant.guest.as_deref(), Some("/d"));
        assert!(grant.writable);
        let plain = parse_dir_ro("/tmp".into()).expect("a grant");
        assert_eq!(
            (plain.host, plain.guest, plain.writable),
            (PathBuf::from("/tmp"), None, false)
        );
        for bad in ["", "::/d", "/tmp::"] {
            assert!(parse_dir_rw(bad.into()).is_err(), "{bad:?}");
        }
        let bad_guest = std::ffi::OsStr::from_bytes(b"/tmp::/\xff");
        assert!(parse_dir_rw(bad_guest.to_owned()).is_err());
    }

    #[test]
    fn sizes_too_large_say_so() {
        let err = parse_size("99999999999999999999999").expect_err("too large");
        assert!(err.starts_with("too large"), "{err}");
        assert_eq!(parse_size("64MiB"), Ok(ByteSize::mib(64)));
        assert!(parse_size("lots").is_err());
    }
}

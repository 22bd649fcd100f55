//! Options shared by the subcommands that run one task (`run`, `call`):
//! grants, limits, isolation and the compile cache; and what their errors
//! say, in the flags' own words.

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

    /// Most linear memory the guest may use (e.g. 64MiB, 1GiB). Default:
    /// 1GiB.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_memory: Option<ByteSize>,

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

    /// The OS sandbox around process tasks' workers (seccomp allowlist,
    /// Landlock file rules, a network namespace): `on` uses every layer the
    /// kernel has, `off` none, `required` refuses to run a task where a
    /// layer is missing.
    #[arg(long, value_enum, value_name = "POLICY", default_value_t = SandboxArg::On)]
    sandbox: SandboxArg,

    /// Grants `isola:kv`: a key-value store on the SQLite database FILE
    /// (created if absent), which Isola keeps for the guest.
    #[arg(long, value_name = "FILE")]
    kv: Option<PathBuf>,

    /// wasmtime's spelling of a limit, for users of `wasmtime run`:
    /// max-memory-size=SIZE (--max-memory), fuel=N (--fuel),
    /// timeout=DURATION (--timeout). Comma-separated or repeated.
    #[arg(
        short = 'W',
        value_name = "OPT=VALUE[,...]",
        value_parser = parse_wasmtime_options
    )]
    wasmtime: Vec<WasmtimeOptions>,

    /// wasmtime's WASI options have no counterpart: Isola grants only what
    /// --env, --dir and --dir-ro name, and never the network. Refused with
    /// a note on what to use instead.
    #[arg(short = 'S', value_name = "OPT", value_parser = refuse_wasi_option)]
    wasi: Vec<String>,
}

/// The limit flags' defaults.
const DEFAULT_MAX_MEMORY: ByteSize = ByteSize::gib(1);

/// One `-W` value: wasmtime's names for the limits Isola has.
#[derive(Clone, Debug, PartialEq)]
pub struct WasmtimeOptions(Vec<WasmtimeOption>);

#[derive(Clone, Copy, Debug, PartialEq)]
enum WasmtimeOption {
    /// `-W max-memory-size=SIZE`: `--max-memory`.
    MaxMemory(ByteSize),
    /// `-W fuel=N`: `--fuel`.
    Fuel(u64),
    /// `-W timeout=DURATION`: `--timeout`.
    Timeout(Duration),
}

/// What `-W` accepts, for its errors.
const WASMTIME_OFFERED: &str = "Isola takes -W max-memory-size=SIZE (--max-memory), -W fuel=N \
     (--fuel) and -W timeout=DURATION (--timeout); Wasm features and engine settings are \
     Isola's own";

/// `-W OPT=VALUE[,OPT=VALUE...]`.
fn parse_wasmtime_options(s: &str) -> Result<WasmtimeOptions, String> {
    let mut options = Vec::new();
    for item in s.split(',').filter(|item| !item.is_empty()) {
        let (name, value) = item.split_once('=').unwrap_or((item, ""));
        let option = match name {
            "max-memory-size" => WasmtimeOption::MaxMemory(parse_size(value).map_err(|err| {
                format!("`max-memory-size={value}`: {err} (a size: bytes, or e.g. 64MiB)")
            })?),
            "fuel" => WasmtimeOption::Fuel(
                value
                    .parse()
                    .map_err(|_| format!("`fuel={value}`: expected a whole number"))?,
            ),
            "timeout" => WasmtimeOption::Timeout(parse_timeout(value).ok_or_else(|| {
                format!("`timeout={value}`: expected a duration (e.g. 500ms, 2s, or seconds)")
            })?),
            _ => {
                return Err(format!(
                    "isola has no -W option `{name}`: {WASMTIME_OFFERED}"
                ));
            }
        };
        options.push(option);
    }
    if options.is_empty() {
        return Err(format!("expected OPT=VALUE: {WASMTIME_OFFERED}"));
    }
    Ok(WasmtimeOptions(options))
}

/// A duration as wasmtime's `-W timeout=` reads it: with a unit, or a bare
/// number of seconds.
fn parse_timeout(s: &str) -> Option<Duration> {
    match s.parse::<u64>() {
        Ok(secs) => Some(Duration::from_secs(secs)),
        Err(_) => humantime::parse_duration(s).ok(),
    }
}

/// `-S OPT`: wasmtime's WASI options, each refused with what Isola has
/// instead.
fn refuse_wasi_option(s: &str) -> Result<String, String> {
    let name = s.split(['=', ',']).next().unwrap_or(s);
    let instead = match name {
        "inherit-env" => {
            "pass host variables by name with --env KEY, or give values with --env KEY=VALUE"
        }
        "inherit-network"
        | "network"
        | "tcp"
        | "udp"
        | "allow-ip-name-lookup"
        | "http"
        | "inherit-network-with-ip-name-lookup" => "Isola never gives a guest the network",
        "cli" | "preview2" | "common" => "WASI (preview1 and preview2) is always on",
        "threads" => {
            "a `wasm32-wasip1-threads` module runs in a shared memory group (see the README)"
        }
        _ => "Isola grants a guest only --env, --dir and --dir-ro, and stdin",
    };
    Err(format!("isola has no -S options (`{name}`): {instead}"))
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
    /// A spec for `wasm` with these grants and limits, or (for a usage
    /// error) what to say.
    pub fn spec(&self, wasm: &std::path::Path) -> Result<TaskSpec, String> {
        // Never reached: clap refuses every -S with its own message.
        if let Some(option) = self.wasi.first() {
            return Err(refuse_wasi_option(option).err().unwrap_or_default());
        }
        let mut max_memory = self.max_memory;
        let mut fuel = self.fuel;
        let mut timeout = self.timeout;
        for option in self.wasmtime.iter().flat_map(|o| &o.0) {
            let (flag, taken) = match option {
                WasmtimeOption::MaxMemory(size) => {
                    ("--max-memory", max_memory.replace(*size).is_some())
                }
                WasmtimeOption::Fuel(n) => ("--fuel", fuel.replace(*n).is_some()),
                WasmtimeOption::Timeout(t) => ("--timeout", timeout.replace(*t).is_some()),
            };
            if taken {
                return Err(format!(
                    "{flag} is given twice (once as a -W option): give it once"
                ));
            }
        }
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
            max_memory: max_memory.unwrap_or(DEFAULT_MAX_MEMORY),
            fuel,
            timeout,
            max_output: self.max_output,
            ..Limits::default()
        };
        spec.isolation = match self.isolation {
            IsolationArg::Thread => Isolation::Thread,
            IsolationArg::Process => Isolation::Process,
        };
        spec.kv = self.kv.clone();
        Ok(spec)
    }

    /// A runner for one task, or the exit code after saying why not.
    pub fn runner(&self) -> Result<isola::Runner, u8> {
        isola::Runner::with_config(self.runner_config()).map_err(|err| {
            say!("error: {err}");
            crate::exit::for_error(&err)
        })
    }

    /// What to say when a task of `spec` could not start: the library's
    /// error, with a field of the spec named by the flag that set it
    /// (`--dir /x: ...`, not "invalid `dirs[0].host`").
    pub fn start_error(&self, spec: &TaskSpec, err: &isola::Error) -> String {
        let isola::Error::InvalidSpec { field, message } = err else {
            return format!("error: {err}");
        };
        let indexed = |prefix: &str| -> Option<usize> {
            field.strip_prefix(prefix)?.split_once(']')?.0.parse().ok()
        };
        let flag = if let Some(i) = indexed("dirs[") {
            spec.dirs.get(i).map(|grant| {
                let flag = if grant.writable { "--dir" } else { "--dir-ro" };
                let mut value = grant.host.display().to_string();
                if let Some(guest) = &grant.guest {
                    value.push_str("::");
                    value.push_str(guest);
                }
                format!("{flag} {value}")
            })
        } else if let Some(i) = indexed("args[") {
            Some(format!("guest argument {}", i + 1))
        } else if let Some(i) = indexed("inherit_env[") {
            spec.inherit_env.get(i).map(|key| format!("--env {key}"))
        } else if let Some(name) = field.strip_prefix("env.") {
            Some(format!("--env {name}=..."))
        } else {
            match field.as_str() {
                "argv0" => Some("--argv0".to_owned()),
                "limits.max_memory" => {
                    let max = ByteSize(self.runner_config().max_memory_per_task);
                    return format!(
                        "error: --max-memory {}: a task may have at most {max} of linear memory",
                        spec.limits.max_memory
                    );
                }
                "limits.fuel" => Some("--fuel".to_owned()),
                "limits.timeout" => Some("--timeout".to_owned()),
                "limits.max_output" => Some("--max-output".to_owned()),
                "stdin" => Some("stdin".to_owned()),
                "input" => Some("--input".to_owned()),
                "kv" => spec.kv.as_ref().map(|kv| format!("--kv {}", kv.display())),
                "host_functions" => Some("--kv".to_owned()),
                _ => None,
            }
        };
        match flag {
            Some(flag) => format!("error: {flag}: {message}"),
            None => format!("error: {err}"),
        }
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
            sandbox: self.sandbox.into(),
            ..RunnerConfig::default()
        }
    }
}

/// Says on stderr why a task ended, unless it simply exited (with a
/// status that is an exit code) or returned.
pub fn explain(outcome: &Outcome) {
    match outcome {
        Outcome::Exited { code } => {
            if crate::exit::exit_status(*code).is_none() {
                say!(
                    "error: the guest exited with status {code}, which is not an exit code \
                     (0-255): isola exits with {}",
                    crate::exit::FAILURE
                );
            }
        }
        Outcome::Returned { .. } => {}
        Outcome::Rejected { error } => say!("error: the plugin returned an error: {error}"),
        Outcome::Trapped(trap) => {
            say!("error: the guest trapped: {}", trap.message);
            if !trap.backtrace.is_empty() {
                say!("wasm backtrace:");
                // Deep recursion repeats one frame many times: show it once.
                let mut frames = trap.backtrace.iter().enumerate().peekable();
                while let Some((i, frame)) = frames.next() {
                    say!("  {i:>3}: {frame}");
                    let mut repeats = 0;
                    while frames.next_if(|(_, next)| *next == frame).is_some() {
                        repeats += 1;
                    }
                    if repeats > 0 {
                        say!("       ... the same frame {repeats} more times");
                    }
                }
            }
        }
        Outcome::LimitExceeded { limit } => {
            let flag = match limit {
                Limit::Memory { .. } => "--max-memory",
                Limit::ProcessMemory { .. } => "the worker's OS memory limit",
                Limit::Pids { .. } => "the OS sandbox's limit on a worker's threads",
                Limit::Fuel { .. } => "--fuel",
                Limit::Timeout { .. } => "--timeout",
                Limit::Output { .. } => "--max-output",
                Limit::MessageSize { .. } | Limit::Messages { .. } => "message limits",
            };
            say!("error: the task exceeded its {limit} ({flag})");
        }
        Outcome::Cancelled => say!("error: the task was cancelled"),
        Outcome::Crashed { .. } => say!("error: the task's worker process {outcome}"),
        Outcome::Failed { message } => say!("error: isola failed to run the task: {message}"),
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
    fn wasmtime_spellings_of_the_limits() {
        let parsed = parse_wasmtime_options("max-memory-size=65536,fuel=10").expect("valid");
        assert_eq!(
            parsed.0,
            [
                WasmtimeOption::MaxMemory(ByteSize(65536)),
                WasmtimeOption::Fuel(10)
            ]
        );
        assert_eq!(
            parse_wasmtime_options("timeout=2").expect("seconds").0,
            [WasmtimeOption::Timeout(Duration::from_secs(2))]
        );
        assert_eq!(
            parse_wasmtime_options("timeout=500ms")
                .expect("with a unit")
                .0,
            [WasmtimeOption::Timeout(Duration::from_millis(500))]
        );
        let err = parse_wasmtime_options("memory64=y").expect_err("not Isola's");
        assert!(
            err.contains("memory64") && err.contains("max-memory-size"),
            "{err}"
        );
        assert!(parse_wasmtime_options("fuel=lots").is_err());
        let err = refuse_wasi_option("inherit-network").expect_err("never");
        assert!(err.contains("network"), "{err}");
    }

    #[test]
    fn sizes_too_large_say_so() {
        let err = parse_size("99999999999999999999999").expect_err("too large");
        assert!(err.starts_with("too large"), "{err}");
        assert_eq!(parse_size("64MiB"), Ok(ByteSize::mib(64)));
        assert!(parse_size("lots").is_err());
    }
}

/// `--sandbox`: [`isola::Sandbox`].
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SandboxArg {
    /// Every layer the kernel provides (the default).
    On,
    /// No OS sandbox.
    Off,
    /// Every layer, or the task fails naming the one missing.
    Required,
}

impl From<SandboxArg> for isola::Sandbox {
    fn from(arg: SandboxArg) -> isola::Sandbox {
        match arg {
            SandboxArg::On => isola::Sandbox::On,
            SandboxArg::Off => isola::Sandbox::Off,
            SandboxArg::Required => isola::Sandbox::Required,
        }
    }
}

/// How to reach a NATS server (`isola up --nats`, `isola worker`). The
/// secrets can come from the environment instead of the command line,
/// where other users of the machine could read them.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct NatsArgs {
    /// User name for the NATS server (with --nats-password).
    #[arg(long, value_name = "USER", requires = "nats_password")]
    pub nats_user: Option<String>,
    /// Password for --nats-user.
    #[arg(
        long,
        value_name = "PASSWORD",
        env = "ISOLA_NATS_PASSWORD",
        hide_env_values = true
    )]
    pub nats_password: Option<String>,
    /// Token for the NATS server.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "ISOLA_NATS_TOKEN",
        hide_env_values = true
    )]
    pub nats_token: Option<String>,
    /// A file holding an NKey seed (SU...) for the NATS server.
    #[arg(long, value_name = "FILE")]
    pub nats_nkey: Option<PathBuf>,
    /// A .creds file (user JWT and NKey seed) for the NATS server.
    #[arg(long, value_name = "FILE")]
    pub nats_creds: Option<PathBuf>,
    /// A PEM file of root certificates to trust for the server's TLS.
    #[arg(long, value_name = "FILE")]
    pub nats_tls_ca: Option<PathBuf>,
    /// A PEM client certificate for TLS (with --nats-tls-key).
    #[arg(long, value_name = "FILE", requires = "nats_tls_key")]
    pub nats_tls_cert: Option<PathBuf>,
    /// The key of --nats-tls-cert.
    #[arg(long, value_name = "FILE", requires = "nats_tls_cert")]
    pub nats_tls_key: Option<PathBuf>,
    /// Refuse a server that does not speak TLS.
    #[arg(long)]
    pub nats_require_tls: bool,
}

impl NatsArgs {
    /// The connection options for `url`; an error names the flag whose
    /// file cannot be read.
    pub fn options(&self, url: &str, name: &str) -> Result<isola_cluster::ConnectOptions, String> {
        use isola_cluster::Credentials;
        // Each comma-separated address is `host:port` or has a NATS scheme.
        for address in url.split(',') {
            if let Some((scheme, _)) = address.trim().split_once("://")
                && !matches!(scheme, "nats" | "tls" | "ws" | "wss")
            {
                return Err(format!(
                    "--nats {url}: `{scheme}://` is not a NATS address (use nats://host:4222, \
                     or tls:// for TLS)"
                ));
            }
        }
        let mut options = isola_cluster::ConnectOptions::new(url);
        let given = [
            self.nats_user.is_some(),
            self.nats_token.is_some(),
            self.nats_nkey.is_some(),
            self.nats_creds.is_some(),
        ];
        if given.iter().filter(|g| **g).count() > 1 {
            return Err(
                "give one of --nats-user, --nats-token, --nats-nkey and --nats-creds".into(),
            );
        }
        options.credentials =
            if let (Some(user), Some(password)) = (&self.nats_user, &self.nats_password) {
                Credentials::UserPassword {
                    user: user.clone(),
                    password: password.clone(),
                }
            } else if let Some(token) = &self.nats_token {
                Credentials::Token(token.clone())
            } else if let Some(path) = &self.nats_nkey {
                let seed = std::fs::read_to_string(path)
                    .map_err(|e| format!("--nats-nkey {}: cannot read it: {e}", path.display()))?;
                Credentials::NKey(seed.trim().to_owned())
            } else if let Some(path) = &self.nats_creds {
                Credentials::CredsFile(path.clone())
            } else {
                Credentials::None
            };
        options.tls_roots = self.nats_tls_ca.iter().cloned().collect();
        options.tls_client = self.nats_tls_cert.clone().zip(self.nats_tls_key.clone());
        options.require_tls = self.nats_require_tls;
        options.name = Some(name.to_owned());
        Ok(options)
    }
}

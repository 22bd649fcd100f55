//! Helpers shared by Isola's integration tests: where the guests and the
//! `isola` binary are, and runners that keep their cache out of `$HOME`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use isola::{CacheDir, Isolation, Runner, RunnerConfig, TaskSpec};

/// The two binary formats every guest is built in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GuestKind {
    /// `wasm32-wasip1`: a WASI preview1 core module.
    Module,
    /// `wasm32-wasip2`: a WASI preview2 component.
    Component,
}

/// Both guest kinds, for tests that must hold for each.
pub const KINDS: [GuestKind; 2] = [GuestKind::Module, GuestKind::Component];

impl GuestKind {
    fn triple(self) -> &'static str {
        match self {
            GuestKind::Module => "wasm32-wasip1",
            GuestKind::Component => "wasm32-wasip2",
        }
    }
}

/// The exit code a guest of `kind` ends with when it exits with `code`.
///
/// WASI preview2 (0.2) commands can only report success or failure
/// (`wasi:cli/exit.exit(result)`), so a component's non-zero code arrives
/// as 1, as with `wasmtime run`.
pub fn expected_exit(kind: GuestKind, code: i32) -> i32 {
    match kind {
        GuestKind::Module => code,
        GuestKind::Component => i32::from(code != 0),
    }
}

/// Both isolation levels, for tests that must hold for each.
pub const ISOLATIONS: [Isolation; 2] = [Isolation::Thread, Isolation::Process];

/// Where a test scenario runs: a guest kind and an isolation level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    /// Module or component build of the guest.
    pub kind: GuestKind,
    /// Thread or process isolation.
    pub isolation: Isolation,
}

impl Target {
    /// A spec running guest `name` of this kind at this isolation level.
    pub fn spec(self, name: &str) -> TaskSpec {
        let mut spec = TaskSpec::new(guest(name, self.kind));
        spec.isolation = self.isolation;
        spec
    }

    /// The `--isolation` value for the CLI.
    pub fn isolation_flag(self) -> &'static str {
        match self.isolation {
            Isolation::Thread => "thread",
            Isolation::Process => "process",
        }
    }
}

/// Every combination of guest kind and isolation level: each scenario of
/// the suite runs on all of them.
pub fn targets() -> Vec<Target> {
    let mut all = Vec::new();
    for isolation in ISOLATIONS {
        for kind in KINDS {
            all.push(Target { kind, isolation });
        }
    }
    all
}

/// The workspace's target directory.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
    }
}

/// Path of a guest program built by `make guests`.
///
/// # Panics
///
/// If the guest has not been built, with a message saying how to build it.
pub fn guest(name: &str, kind: GuestKind) -> PathBuf {
    let path = target_dir()
        .join(kind.triple())
        .join("guest")
        .join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "guest `{}` is missing: run `make guests` (or `make test`) first",
        path.display()
    );
    path
}

/// The `isola` binary Cargo built for the running test.
///
/// The test binaries are targets of the `isola-cli` package, which owns
/// the binary, so Cargo builds it for them and names it in
/// `CARGO_BIN_EXE_isola` when it runs them (`cargo test -p isola-cli`).
///
/// # Panics
///
/// If `CARGO_BIN_EXE_isola` is not set, that is, when not run by Cargo as a
/// test of `isola-cli`.
pub fn isola_bin() -> PathBuf {
    match std::env::var_os("CARGO_BIN_EXE_isola") {
        Some(path) => PathBuf::from(path),
        None => panic!(
            "CARGO_BIN_EXE_isola is not set: it names the `isola` binary Cargo builds \
             for the tests of `isola-cli`; run them with `cargo test -p isola-cli` \
             (or `make test`)"
        ),
    }
}

/// A runner whose disk cache lives in `cache` (shared by the tests that
/// want warm starts), with default settings otherwise.
pub fn runner_with_cache(cache: &Path) -> Runner {
    Runner::with_config(RunnerConfig {
        max_live_tasks: 64,
        cache_dir: CacheDir::Path(cache.to_owned()),
        worker_program: Some(isola_bin()),
        ..RunnerConfig::default()
    })
    .expect("runner")
}

/// The cache directory the test suite shares, so each guest is compiled
/// once per suite rather than once per test.
pub fn shared_cache() -> PathBuf {
    target_dir().join("isola-test-cache")
}

/// A runner on the shared test cache.
pub fn runner() -> Runner {
    runner_with_cache(&shared_cache())
}

/// Runs the `isola` binary with `args`, with its cache in the shared test
/// cache and `RUST_BACKTRACE=1` so that any Rust backtrace leak would show.
pub fn isola(args: &[&str]) -> Output {
    isola_with_stdin(args, &[])
}

/// As [`isola`], feeding `stdin`.
pub fn isola_with_stdin(args: &[&str], stdin: &[u8]) -> Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new(isola_bin())
        .args(args)
        .env("ISOLA_CACHE_DIR", shared_cache())
        .env("RUST_BACKTRACE", "1")
        .env("ISOLA_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn isola");
    if let Some(mut input) = child.stdin.take() {
        // The guest may exit without reading; a broken pipe is fine.
        let _ = input.write_all(stdin);
    }
    child.wait_with_output().expect("wait for isola")
}

/// Text of a process's stderr.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Text of a process's stdout.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs the `isola` binary with `args` (and `env` on top of the test
/// environment [`isola`] uses, stdin empty), killing it if it has not
/// ended within `limit`: `None` then. A regression that hangs fails the
/// test instead of hanging the suite.
pub fn isola_within(
    args: &[&std::ffi::OsStr],
    env: &[(&str, &std::ffi::OsStr)],
    limit: std::time::Duration,
) -> Option<Output> {
    use std::io::Read;
    use std::process::Stdio;
    let mut child = Command::new(isola_bin())
        .args(args)
        .env("ISOLA_CACHE_DIR", shared_cache())
        .env("RUST_BACKTRACE", "1")
        .env("ISOLA_LOG", "warn")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn isola");
    // Drained on threads of their own, so a chatty child never blocks on a
    // full pipe while we wait for it.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = std::time::Instant::now() + limit;
    let status = loop {
        match child.try_wait().expect("wait for isola") {
            Some(status) => break Some(status),
            None if std::time::Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            None => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    status.map(|status| Output {
        status,
        stdout,
        stderr,
    })
}

/// Writes the Wasm for `wat` to a file in `dir` and returns its path.
pub fn wat_file(dir: &Path, name: &str, wat: &str) -> PathBuf {
    let bytes = wat::parse_str(wat).expect("valid WAT");
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write wasm");
    path
}

pub mod faults;
pub mod fuzz;
pub mod matrix;
pub mod probe;
pub mod procs;
pub mod soak;

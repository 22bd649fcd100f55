//! `isola check`: validates a task set without running it.

use std::borrow::Cow;
use std::io::Write as _;
use std::path::PathBuf;

use clap::Args;
use isola::Isolation;
use isola::config::{ConfigErrors, TaskSet};

use crate::exit;

/// Check a task set (tasks.toml) without running anything.
///
/// Applies every rule `isola up` applies before a task starts, including
/// the limits of the runner it uses (at most 4 GiB of linear memory per
/// task; the shared memory budget), but does not compile the Wasm. Reports
/// every problem at once, each as `file:line:col: task `name`: field `x`:
/// message`. Exits with 0 when the set is valid, 2 otherwise.
///
/// `isola check --sandbox` instead says which layers of the OS sandbox
/// around process workers this machine provides, by running a process task
/// that requires all of them; it exits with 0 when that task ran.
#[derive(Args)]
pub struct CheckCommand {
    /// The task set: a tasks.toml file.
    #[arg(required_unless_present = "sandbox")]
    config: Option<PathBuf>,

    /// Report the OS sandbox's layers on this machine instead.
    #[arg(long, conflicts_with = "config")]
    sandbox: bool,
}

impl CheckCommand {
    pub async fn execute(self) -> u8 {
        let Some(config) = self.config.filter(|_| !self.sandbox) else {
            return check_sandbox().await;
        };
        match TaskSet::load(&config) {
            Ok(set) => {
                // Not `println!`: a closed stdout is no reason to panic.
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{}", summary(&set)).and_then(|()| out.flush());
                exit::SUCCESS
            }
            Err(errors) => {
                print_errors(&errors);
                exit::USAGE
            }
        }
    }
}

/// One line saying what a valid set holds.
fn summary(set: &TaskSet) -> String {
    let process = set
        .tasks()
        .iter()
        .filter(|t| t.spec.isolation == Isolation::Process)
        .count();
    let deps: usize = set.tasks().iter().map(|t| t.depends_on.len()).sum();
    let path = set
        .path()
        .map_or_else(|| "task set".into(), |p| p.display().to_string());
    let groups = match set.groups().len() {
        0 => String::new(),
        n => format!(", {}", plural(n, "shared memory group")),
    };
    format!(
        "{}: OK, {} ({} thread, {} process), {}{groups}",
        clean(&path),
        plural(set.len(), "task"),
        set.len() - process,
        process,
        plural(deps, "dependency"),
    )
}

/// Prints each error on its own line on stderr, then how many there were.
pub fn print_errors(errors: &ConfigErrors) {
    for error in errors {
        say!("{}", clean(&error.to_string()));
    }
    let file = errors
        .iter()
        .find_map(|e| e.file.as_ref())
        .map(|f| format!(" in {}", f.display()))
        .unwrap_or_default();
    say!(
        "error: {} found{}",
        plural(errors.len(), "problem"),
        clean(&file)
    );
}

/// `1 task`, `2 tasks`, `3 dependencies`.
pub fn plural(n: usize, noun: &str) -> String {
    match (n, noun.strip_suffix('y')) {
        (1, _) => format!("1 {noun}"),
        (_, Some(stem)) => format!("{n} {stem}ies"),
        (_, None) => format!("{n} {noun}s"),
    }
}

/// Text that came from outside (guest output, file names, config values)
/// with its control characters escaped, so it cannot move the cursor,
/// change colors or clear the user's terminal. Tabs are kept.
pub fn clean(text: &str) -> Cow<'_, str> {
    if !text.chars().any(|c| c.is_control() && c != '\t') {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() && c != '\t' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// `isola check --sandbox`: what the kernel offers, then a process task run
/// under `Sandbox::Required`, which fails naming a missing layer.
async fn check_sandbox() -> u8 {
    let mut lines = Vec::new();
    lines.push(match isola::worker::landlock_abi() {
        Some(abi) => format!("landlock: available, ABI {abi}"),
        None => "landlock: not available on this kernel".to_owned(),
    });
    lines.push(match isola::worker::cgroup_limits() {
        Ok(found) => format!("cgroup limits: {found}"),
        Err(why) => format!("cgroup limits: not available ({why}); workers run under rlimits"),
    });
    let probe = match tempfile_probe() {
        Ok(path) => {
            let outcome = probe_sandbox(&path).await;
            let _ = std::fs::remove_file(&path);
            outcome
        }
        Err(err) => Err(ProbeError::Other(err)),
    };
    let code = match probe {
        Ok(isola::Outcome::Exited { code: 0 }) => {
            lines.push(
                "seccomp, landlock, a network namespace and cgroup limits: enforced (a process \
                 task ran under --sandbox required)"
                    .to_owned(),
            );
            exit::SUCCESS
        }
        Ok(outcome) => {
            lines.push(format!(
                "a process task under --sandbox required: {outcome}"
            ));
            1
        }
        // A layer this machine cannot give (the cgroup layer is checked
        // before a worker starts).
        Err(ProbeError::Refused(why)) => {
            lines.push(format!("a process task under --sandbox required: {why}"));
            1
        }
        Err(ProbeError::Other(err)) => {
            lines.push(format!("cannot run a process task to check: {err}"));
            125
        }
    };
    lines.push("not provided by Isola yet: a mount namespace".to_owned());
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", lines.join("\n")).and_then(|()| out.flush());
    code
}

/// Why the probe did not run.
enum ProbeError {
    /// The runner refused it: a layer is missing.
    Refused(String),
    /// Anything else.
    Other(String),
}

/// Runs the program at `path` as a process task that requires the sandbox.
async fn probe_sandbox(path: &std::path::Path) -> Result<isola::Outcome, ProbeError> {
    let runner = isola::Runner::with_config(isola::RunnerConfig {
        prestarted_workers: 0,
        cache_dir: isola::CacheDir::Disabled,
        sandbox: isola::Sandbox::Required,
        ..isola::RunnerConfig::default()
    })
    .map_err(|e| ProbeError::Other(e.to_string()))?;
    let mut spec = isola::TaskSpec::new(path);
    spec.isolation = Isolation::Process;
    let report = runner.run(spec).await.map_err(|e| match e {
        refused @ isola::Error::SandboxUnavailable(_) => ProbeError::Refused(refused.to_string()),
        other => ProbeError::Other(other.to_string()),
    })?;
    Ok(report.outcome)
}

/// A WAT program that does nothing, in a new file of its own (never one
/// that was there: a symlink planted at the name is not followed).
fn tempfile_probe() -> Result<PathBuf, String> {
    use std::io::Write as _;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let name = format!("isola-sandbox-probe-{}-{nanos}.wat", std::process::id());
    let path = std::env::temp_dir().join(name);
    std::fs::File::create_new(&path)
        .and_then(|mut file| file.write_all(b"(module (func (export \"_start\")))"))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_escapes_control_characters() {
        assert_eq!(clean("plain\ttext"), "plain\ttext");
        assert_eq!(clean("\u{1b}[2Jgone"), "\\u{1b}[2Jgone");
        assert_eq!(clean("a\rb\u{9b}c"), "a\\rb\\u{9b}c");
    }

    #[test]
    fn plurals() {
        assert_eq!(plural(1, "task"), "1 task");
        assert_eq!(plural(0, "task"), "0 tasks");
        assert_eq!(plural(3, "dependency"), "3 dependencies");
    }
}

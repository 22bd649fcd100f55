//! The exit codes of `isola`, one place for all of them.

use isola::Outcome;

/// The exit codes, as `--help` shows them.
pub const HELP: &str = "\
Exit codes:
  0-255  the guest's own exit code, passed through
  2      usage or input error (bad flag, missing or invalid Wasm, ...)
  124    the task hit a limit (memory, fuel, timeout, output)
  125    Isola itself failed
  130    the task was cancelled (Ctrl-C)
  134    the guest trapped
  137    a process task's worker crashed

Set ISOLA_LOG (e.g. ISOLA_LOG=debug) for diagnostics on stderr.";

pub const SUCCESS: u8 = 0;
/// Bad flags, or input (a Wasm file, a spec) that cannot run.
pub const USAGE: u8 = 2;
/// The task was stopped by one of its limits (`timeout(1)` uses 124 too).
pub const LIMIT: u8 = 124;
/// Isola itself failed.
pub const INTERNAL: u8 = 125;
/// The task was cancelled (as by SIGINT: 128 + 2).
pub const CANCELLED: u8 = 130;
/// A process task's worker died (as a SIGKILL: 128 + 9).
pub const CRASHED: u8 = 137;
/// The guest trapped (as an abort: 128 + SIGABRT, like `wasmtime run`).
pub const TRAP: u8 = 134;

/// The exit code `isola` ends with for a task's outcome.
pub fn for_outcome(outcome: &Outcome) -> u8 {
    match outcome {
        // POSIX keeps the low 8 bits of an exit status; so does Isola.
        Outcome::Exited { code } => (*code & 0xff) as u8,
        Outcome::Returned { .. } => SUCCESS,
        Outcome::Rejected { .. } => 1,
        Outcome::Trapped(_) => TRAP,
        Outcome::LimitExceeded { .. } => LIMIT,
        Outcome::Cancelled => CANCELLED,
        Outcome::Crashed { .. } => CRASHED,
        Outcome::Failed { .. } => INTERNAL,
    }
}

/// The exit code for an error that kept a task from starting.
pub fn for_error(err: &isola::Error) -> u8 {
    if err.is_user_error() { USAGE } else { INTERNAL }
}

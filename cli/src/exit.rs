//! The exit codes of `isola`, one place for all of them.

use isola::Outcome;

/// The exit codes of `isola run`, as `--help` shows them.
pub const HELP: &str = "\
Exit codes:
  0-255  the guest's own exit code, passed through (a status outside 0-255
         exits 1 and stderr names the real one)
  2      usage or input error (bad flag, missing or invalid Wasm, ...)
  124    the task hit a limit (memory, fuel, timeout, output)
  125    Isola itself failed
  129    cancelled by SIGHUP (128 + 1)
  130    cancelled by SIGINT, Ctrl-C (128 + 2)
  134    the guest trapped
  137    a process task's worker crashed
  141    the guest wrote on to a closed stdout or stderr (128 + SIGPIPE)
  143    cancelled by SIGTERM (128 + 15)

A signal cancels the task; a second one exits at once. When the reader of
Isola's stdout or stderr goes away (`isola run prog.wasm | head`), the
guest's writes to that stream fail with EPIPE, as a native program's would;
a guest that writes on regardless is ended after 16 refused writes, with
141 as if SIGPIPE had killed it.

Set ISOLA_LOG (e.g. ISOLA_LOG=debug) for diagnostics on stderr.";

/// The exit codes of `isola call`, as its `--help` shows them.
pub const CALL_HELP: &str = "\
Exit codes:
  0      the plugin returned; its output is on stdout
  1      the plugin returned an error (on stderr)
  2      usage or input error (bad flag, missing or invalid Wasm, not a plugin, ...)
  124    the call hit a limit (memory, fuel, timeout, output)
  125    Isola itself failed
  129    interrupted by SIGHUP (128 + 1)
  130    interrupted by SIGINT, Ctrl-C (128 + 2)
  134    the plugin trapped
  137    a process plugin's worker crashed
  141    Isola's stdout was closed before the output was written (128 + SIGPIPE)
  143    interrupted by SIGTERM (128 + 15)

Set ISOLA_LOG (e.g. ISOLA_LOG=debug) for diagnostics on stderr.";

pub const SUCCESS: u8 = 0;
/// Failure: a plugin's error, or a guest exit status that does not fit an
/// exit code.
pub const FAILURE: u8 = 1;
/// Bad flags, or input (a Wasm file, a spec) that cannot run.
pub const USAGE: u8 = 2;
/// The task was stopped by one of its limits (`timeout(1)` uses 124 too).
pub const LIMIT: u8 = 124;
/// Isola itself failed.
pub const INTERNAL: u8 = 125;
/// The task was cancelled (as by SIGINT: 128 + 2). A cancel by another
/// signal exits with that signal's code ([`crate::signals::Termination`]).
pub const CANCELLED: u8 = 130;
/// A process task's worker died (as a SIGKILL: 128 + 9).
pub const CRASHED: u8 = 137;
/// The guest trapped (as an abort: 128 + SIGABRT, like `wasmtime run`).
pub const TRAP: u8 = 134;
/// A reader went away: Isola's own stdout was closed, or the guest wrote on
/// to a closed stream (128 + SIGPIPE, what a shell reports for a native
/// writer that SIGPIPE killed).
pub const BROKEN_PIPE: u8 = 141;

/// The exit code `isola` ends with for a task's outcome.
///
/// A guest's exit status is passed through when it fits 0-255. One that
/// does not (`proc_exit(256)`, a negative status) never becomes success by
/// truncation, as POSIX's low 8 bits would make 256 into 0: it exits 1,
/// and [`crate::commands::common::explain`] names the real status.
/// (`wasmtime run` refuses such statuses outright; a native process would
/// truncate them.) `isola up` and the library's `Outcome` keep the full
/// value, so `run` and `up` agree that such a task failed.
pub fn for_outcome(outcome: &Outcome) -> u8 {
    match outcome {
        Outcome::Exited { code } => exit_status(*code).unwrap_or(FAILURE),
        Outcome::Returned { .. } => SUCCESS,
        Outcome::Rejected { .. } => FAILURE,
        Outcome::Trapped(_) => TRAP,
        Outcome::LimitExceeded { .. } => LIMIT,
        Outcome::Cancelled => CANCELLED,
        Outcome::Crashed { .. } => CRASHED,
        Outcome::Failed { .. } => INTERNAL,
    }
}

/// The guest's exit status as a process exit code, if it fits one.
pub fn exit_status(code: i32) -> Option<u8> {
    u8::try_from(code).ok()
}

/// The exit code for an error that kept a task from starting.
pub fn for_error(err: &isola::Error) -> u8 {
    if err.is_user_error() { USAGE } else { INTERNAL }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_that_do_not_fit_never_become_success() {
        let exited = |code| for_outcome(&Outcome::Exited { code });
        assert_eq!(exited(0), 0);
        assert_eq!(exited(42), 42);
        assert_eq!(exited(255), 255);
        assert_eq!(exited(256), FAILURE);
        assert_eq!(exited(512), FAILURE);
        assert_eq!(exited(-1), FAILURE);
        assert_eq!(exited(i32::MIN), FAILURE);
    }
}

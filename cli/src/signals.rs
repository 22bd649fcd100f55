//! Termination signals, handled as a native program is expected to handle
//! them: SIGINT (Ctrl-C), SIGTERM (CI systems, `timeout`, systemd and
//! Kubernetes stop programs with it) and SIGHUP (the terminal went away)
//! all cancel what runs; Isola then exits with 128 + the signal's number,
//! as a shell reports a program that signal ended. A second signal exits
//! at once.

use tokio::signal::unix::{Signal, SignalKind, signal};

/// A signal that asks Isola to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Termination {
    /// SIGHUP: the controlling terminal closed.
    Hangup,
    /// SIGINT: Ctrl-C.
    Interrupt,
    /// SIGTERM: a polite request to stop (CI, `timeout`, `kill`).
    Terminate,
}

impl Termination {
    /// The signal's number (the same on every Unix).
    fn number(self) -> u8 {
        match self {
            Termination::Hangup => 1,
            Termination::Interrupt => 2,
            Termination::Terminate => 15,
        }
    }

    /// The exit code after this signal: 128 + its number (129, 130, 143).
    pub fn exit_code(self) -> u8 {
        128 + self.number()
    }

    /// Its name, as `kill -l` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Termination::Hangup => "SIGHUP",
            Termination::Interrupt => "SIGINT",
            Termination::Terminate => "SIGTERM",
        }
    }

    /// How a user would say it: `Ctrl-C` for SIGINT.
    pub fn describe(self) -> &'static str {
        match self {
            Termination::Interrupt => "Ctrl-C (SIGINT)",
            other => other.name(),
        }
    }
}

/// The termination signals, watched from creation on. Create it before
/// any task starts: from then on a signal is never lost to the default
/// action (which would end Isola without cancelling, summarizing or
/// reaping anything).
pub struct Signals {
    hangup: Signal,
    interrupt: Signal,
    terminate: Signal,
}

impl Signals {
    /// Starts watching SIGHUP, SIGINT and SIGTERM, for a command: a failure
    /// is said on stderr and becomes the exit code the command ends with.
    ///
    /// # Errors
    ///
    /// [`crate::exit::INTERNAL`] if a handler cannot be installed.
    pub fn watch_for_command() -> Result<Signals, u8> {
        Self::install().map_err(|err| {
            say!("error: cannot watch for signals: {err}");
            crate::exit::INTERNAL
        })
    }

    /// Installs the handlers.
    fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            hangup: signal(SignalKind::hangup())?,
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    /// The next termination signal. `None` only if the runtime is shutting
    /// down.
    pub async fn next(&mut self) -> Option<Termination> {
        tokio::select! {
            got = self.interrupt.recv() => got.map(|()| Termination::Interrupt),
            got = self.terminate.recv() => got.map(|()| Termination::Terminate),
            got = self.hangup.recv() => got.map(|()| Termination::Hangup),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_128_plus_the_signal() {
        assert_eq!(Termination::Hangup.exit_code(), 129);
        assert_eq!(Termination::Interrupt.exit_code(), 130);
        assert_eq!(Termination::Terminate.exit_code(), 143);
        assert_eq!(Termination::Interrupt.exit_code(), crate::exit::CANCELLED);
    }
}

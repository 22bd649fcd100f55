//! `isola run`: one WASI program as a sandboxed task, like `wasmtime run`.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use clap::Args;
use isola::{CancelHandle, Outcome, Output, Stdin, TaskHandle};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use super::common::{TaskOptions, explain};
use crate::exit;
use crate::signals::{Signals, Termination};

/// Run a WASI command module or component as a sandboxed task.
///
/// The guest sees only what is granted here: its arguments, the variables
/// given with --env, the directories given with --dir/--dir-ro, and stdin.
/// It has no network.
///
/// As with `wasmtime run`, options go before the Wasm file and everything
/// after it goes to the guest: `isola run prog.wasm a b -c`. A `--` right
/// after the Wasm file is optional and not passed on (`isola run prog.wasm
/// -- -- x` gives the guest `-- x`).
#[derive(Args)]
#[command(
    after_help = exit::HELP,
    override_usage = "isola run [OPTIONS] <WASM> [ARGS]..."
)]
pub struct RunCommand {
    /// The WebAssembly file (a WASI preview1 command module or a preview2
    /// command component), then the arguments passed to the guest.
    #[arg(
        value_name = "WASM",
        required = true,
        num_args = 1..,
        trailing_var_arg = true
    )]
    wasm_and_args: Vec<OsString>,

    #[command(flatten)]
    task: TaskOptions,

    /// Talk to the guest through its message channel instead of stdin: each
    /// line read on stdin is sent as a message (end of input closes the
    /// channel), and each message the guest posts is printed as a line.
    #[arg(long)]
    messages: bool,
}

impl RunCommand {
    /// The Wasm file and the guest's arguments, or what to say.
    fn wasm_and_args(&self) -> Result<(PathBuf, Vec<String>), String> {
        let mut items = self.wasm_and_args.iter();
        let wasm = items.next().map(PathBuf::from).unwrap_or_default();
        let mut rest = items.peekable();
        // `isola run prog.wasm -- args`, as before wasmtime's spelling.
        rest.next_if(|arg| arg.as_os_str() == "--");
        let args = rest
            .enumerate()
            .map(|(i, arg)| {
                arg.to_str().map(str::to_owned).ok_or_else(|| {
                    format!(
                        "guest argument {} ({}) is not UTF-8: WASI passes arguments as text",
                        i + 1,
                        arg.to_string_lossy()
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((wasm, args))
    }

    pub async fn execute(self) -> u8 {
        // Before the task starts, so no signal is lost to the default
        // action (which would end us without cancelling anything).
        let signals = match Signals::watch_for_command() {
            Ok(signals) => signals,
            Err(code) => return code,
        };
        let (wasm, args) = match self.wasm_and_args() {
            Ok(parts) => parts,
            Err(message) => {
                say!("error: {message}");
                return exit::USAGE;
            }
        };
        let mut spec = match self.task.spec(&wasm) {
            Ok(spec) => spec,
            Err(message) => {
                say!("error: {message}");
                return exit::USAGE;
            }
        };
        spec.args = args;
        spec.stdin = if self.messages {
            Stdin::Closed
        } else {
            Stdin::Inherit
        };
        spec.stdout = Output::Inherit;
        spec.stderr = Output::Inherit;
        let runner = match self.task.runner() {
            Ok(runner) => runner,
            Err(code) => return code,
        };
        let checked = spec.clone();
        let mut handle = match runner.spawn(spec).await {
            Ok(handle) => handle,
            Err(err) => {
                say!("{}", self.task.start_error(&checked, &err));
                return exit::for_error(&err);
            }
        };
        if !self.messages {
            // Nothing will ever be sent: close the host's side now, so a
            // guest that waits in `recv` hears "closed" instead of waiting
            // until its timeout (or forever).
            handle.close_channel();
        }
        let stopped = Stopped::default();
        let watcher = tokio::spawn(cancel_on_signal(
            signals,
            handle.cancel_handle(),
            stopped.clone(),
        ));
        let bridge = self
            .messages
            .then(|| bridge_messages(&mut handle, stopped.clone()));
        let report = handle.wait().await;
        if let Some(bridge) = bridge {
            // Every message the guest posted is printed before we exit.
            let _ = bridge.await;
        }
        watcher.abort();
        finish(&report.outcome, stopped.get())
    }
}

/// Why Isola stopped the task, if it did: a signal, or its own stdout
/// closing (for `--messages`, where Isola writes the guest's messages).
#[derive(Clone, Default)]
struct Stopped(Arc<Mutex<Option<Stop>>>);

#[derive(Clone, Copy)]
enum Stop {
    Signal(Termination),
    StdoutClosed,
}

impl Stopped {
    fn set(&self, stop: Stop) {
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(stop);
        }
    }

    fn get(&self) -> Option<Stop> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// First termination signal: cancel the task (the report still comes, and
/// a process task's worker is stopped and reaped). Second: exit at once.
async fn cancel_on_signal(mut signals: Signals, task: CancelHandle, stopped: Stopped) {
    let Some(first) = signals.next().await else {
        return;
    };
    stopped.set(Stop::Signal(first));
    task.cancel();
    if let Some(second) = signals.next().await {
        say!("isola: {}: exiting at once", second.describe());
        std::process::exit(i32::from(second.exit_code()));
    }
}

/// The exit code for how the task ended, said on stderr when it is not the
/// guest's own.
fn finish(outcome: &Outcome, stopped: Option<Stop>) -> u8 {
    match (outcome, stopped) {
        (Outcome::Cancelled, Some(Stop::Signal(signal))) => {
            say!("error: the task was cancelled by {}", signal.describe());
            signal.exit_code()
        }
        // Nobody reads what the guest posts any more: it was stopped, as
        // a native writer is by SIGPIPE. Nothing to say (nobody to hear
        // it on a pipeline's stdout, and stderr would only add noise).
        (Outcome::Cancelled, Some(Stop::StdoutClosed)) => exit::BROKEN_PIPE,
        _ => {
            explain(outcome);
            exit::for_outcome(outcome)
        }
    }
}

/// Feeds stdin lines to the task as messages and prints its messages as
/// lines, until both sides are done. If our stdout closes, the reader of
/// the guest's messages is gone: the task is cancelled.
fn bridge_messages(handle: &mut TaskHandle, stopped: Stopped) -> tokio::task::JoinHandle<()> {
    if let Some(sender) = handle.sender() {
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if sender.send(line.into_bytes()).await.is_err() {
                    break;
                }
            }
            // Dropping the sender closes the guest's channel.
        });
    }
    handle.close_channel();
    let messages = handle.take_messages();
    let task = handle.cancel_handle();
    tokio::spawn(async move {
        let Some(mut messages) = messages else {
            return;
        };
        let mut stdout = tokio::io::stdout();
        while let Some(message) = messages.recv().await {
            let mut line = message.to_vec();
            line.push(b'\n');
            // Each line as it comes: a reader waiting for an answer gets it.
            let written = match stdout.write_all(&line).await {
                Ok(()) => stdout.flush().await,
                Err(err) => Err(err),
            };
            if written.is_err() {
                stopped.set(Stop::StdoutClosed);
                task.cancel();
                break;
            }
        }
        let _ = stdout.flush().await;
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunCommand,
    }

    fn parse(args: &[&str]) -> (PathBuf, Vec<String>) {
        let cli = Cli::try_parse_from(std::iter::once("isola-run").chain(args.iter().copied()))
            .expect("parses");
        cli.run.wasm_and_args().expect("valid")
    }

    #[test]
    fn everything_after_the_wasm_file_is_the_guests() {
        let (wasm, args) = parse(&["--fuel", "9", "prog.wasm", "a", "b", "-c", "--fuel", "1"]);
        assert_eq!(wasm, PathBuf::from("prog.wasm"));
        assert_eq!(args, ["a", "b", "-c", "--fuel", "1"]);
        let (_, args) = parse(&["prog.wasm", "--", "a", "--help"]);
        assert_eq!(args, ["a", "--help"]);
        let (_, args) = parse(&["prog.wasm", "--", "--", "x"]);
        assert_eq!(args, ["--", "x"]);
        let (wasm, args) = parse(&["--", "prog.wasm", "a"]);
        assert_eq!(
            (wasm, args),
            (PathBuf::from("prog.wasm"), vec!["a".to_owned()])
        );
    }
}

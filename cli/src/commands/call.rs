//! `isola call`: call a plugin's `run` with an input and print the output.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use isola::{CallError, Output};

use super::common::{TaskOptions, explain};
use crate::exit;
use crate::signals::Signals;

/// Call a plugin's `run` export with an input and print what it returns.
///
/// A plugin is a core module exporting `isola_run` or a component of the
/// `isola:task/plugin` world (see guests/sdk). Isola's stdout carries only
/// the output: the guest's stderr goes to Isola's stderr, and its stdout is
/// shown (on stderr) only if the call fails.
#[derive(Args)]
#[command(after_help = exit::CALL_HELP)]
pub struct CallCommand {
    /// The plugin's WebAssembly file.
    wasm: PathBuf,

    /// The input: TEXT as it is, or @FILE for a file's bytes. Default: empty.
    #[arg(
        long,
        value_name = "TEXT|@FILE",
        default_value = "",
        conflicts_with = "invoke"
    )]
    input: String,

    /// Call this function instead of the plugin's `run`: `name(arg, ...)`
    /// with the arguments in WAVE, as `wasmtime run --invoke` takes them
    /// (for example 'add(1, 2)' or 'greet("world")'; `instance#name` for a
    /// function in a component's exported instance). Prints each result
    /// in WAVE on a line of its own.
    #[arg(long, value_name = "CALL")]
    invoke: Option<String>,

    /// Print the output as a JSON value: as it is when it is JSON, else as a
    /// JSON string.
    #[arg(long)]
    json: bool,

    #[command(flatten)]
    task: TaskOptions,
}

impl CallCommand {
    pub async fn execute(self) -> u8 {
        // Before the call starts, so no signal is lost to the default
        // action.
        let mut signals = match Signals::watch_for_command() {
            Ok(signals) => signals,
            Err(code) => return code,
        };
        let input = match self.input.strip_prefix('@') {
            Some(path) => match std::fs::read(path) {
                Ok(bytes) => bytes,
                Err(err) => {
                    say!("error: cannot read `--input @{path}`: {err}");
                    return exit::USAGE;
                }
            },
            None => self.input.clone().into_bytes(),
        };
        let mut spec = match self.task.spec(&self.wasm) {
            Ok(spec) => spec,
            Err(message) => {
                say!("error: {message}");
                return exit::USAGE;
            }
        };
        // The guest's own prints must not mix with the output on stdout.
        spec.stdout = Output::Capture;
        spec.stderr = Output::Inherit;
        let runner = match self.task.runner() {
            Ok(runner) => runner,
            Err(code) => return code,
        };
        let checked = spec.clone();
        // A signal drops the call: its worker (process isolation) is
        // killed and reaped as the call is dropped, its instance (thread
        // isolation) with the runtime. A second signal has nothing left
        // to wait for.
        let call = async {
            match &self.invoke {
                Some(call) => runner.invoke(spec, call).await.map(|results| {
                    let mut text = results.join("\n");
                    if !text.is_empty() {
                        text.push('\n');
                    }
                    text.into_bytes()
                }),
                None => runner.call(spec, input).await,
            }
        };
        let result = tokio::select! {
            result = call => result,
            Some(signal) = signals.next() => {
                say!("error: the call was interrupted by {}", signal.describe());
                return signal.exit_code();
            }
        };
        match result {
            Ok(output) => {
                let mut stdout = std::io::stdout().lock();
                let written = if self.json {
                    writeln!(stdout, "{}", as_json(&output))
                } else {
                    stdout.write_all(&output)
                }
                .and_then(|()| stdout.flush());
                match written {
                    Ok(()) => exit::SUCCESS,
                    // The reader went away: as a native writer that SIGPIPE
                    // ended, quietly.
                    Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => exit::BROKEN_PIPE,
                    Err(err) => {
                        say!("error: cannot write the output: {err}");
                        exit::INTERNAL
                    }
                }
            }
            Err(CallError::Start(err)) => {
                let message = self.task.start_error(&checked, &err);
                say!("{message}");
                exit::for_error(&err)
            }
            Err(CallError::Rejected(error)) => {
                say!("error: the plugin returned an error: {error}");
                exit::FAILURE
            }
            Err(CallError::Ended(report)) => {
                let _ = std::io::stderr().write_all(&report.stdout.bytes);
                explain(&report.outcome);
                exit::for_outcome(&report.outcome)
            }
        }
    }
}

/// `output` as a JSON value: itself when it parses as JSON, else a string.
fn as_json(output: &[u8]) -> serde_json::Value {
    serde_json::from_slice(output)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(output).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_becomes_json() {
        assert_eq!(as_json(b"42").to_string(), "42");
        assert_eq!(as_json(br#"{"a":[1,2]}"#).to_string(), r#"{"a":[1,2]}"#);
        assert_eq!(as_json(b"plain text").to_string(), r#""plain text""#);
        assert_eq!(as_json(b"").to_string(), r#""""#);
    }
}

//! `isola call`: call a plugin's `run` with an input and print the output.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use isola::{CallError, Output};

use super::common::{TaskOptions, explain};
use crate::exit;

/// Call a plugin's `run` export with an input and print what it returns.
///
/// A plugin is a core module exporting `isola_run` or a component of the
/// `isola:task/plugin` world (see guests/sdk). Isola's stdout carries only
/// the output: the guest's stderr goes to Isola's stderr, and its stdout is
/// shown (on stderr) only if the call fails.
#[derive(Args)]
#[command(after_help = exit::HELP)]
pub struct CallCommand {
    /// The plugin's WebAssembly file.
    wasm: PathBuf,

    /// The input: TEXT as it is, or @FILE for a file's bytes. Default: empty.
    #[arg(long, value_name = "TEXT|@FILE", default_value = "")]
    input: String,

    /// Print the output as a JSON value: as it is when it is JSON, else as a
    /// JSON string.
    #[arg(long)]
    json: bool,

    #[command(flatten)]
    task: TaskOptions,
}

impl CallCommand {
    pub async fn execute(self) -> u8 {
        let input = match self.input.strip_prefix('@') {
            Some(path) => match std::fs::read(path) {
                Ok(bytes) => bytes,
                Err(err) => {
                    eprintln!("error: cannot read `--input @{path}`: {err}");
                    return exit::USAGE;
                }
            },
            None => self.input.clone().into_bytes(),
        };
        let mut spec = self.task.spec(&self.wasm);
        // The guest's own prints must not mix with the output on stdout.
        spec.stdout = Output::Capture;
        spec.stderr = Output::Inherit;
        let runner = match self.task.runner() {
            Ok(runner) => runner,
            Err(code) => return code,
        };
        match runner.call(spec, input).await {
            Ok(output) => {
                let mut stdout = std::io::stdout().lock();
                let written = if self.json {
                    writeln!(stdout, "{}", as_json(&output))
                } else {
                    stdout.write_all(&output)
                };
                match written {
                    Ok(()) => exit::SUCCESS,
                    Err(_) => exit::INTERNAL,
                }
            }
            Err(CallError::Start(err)) => {
                eprintln!("error: {err}");
                exit::for_error(&err)
            }
            Err(CallError::Rejected(error)) => {
                eprintln!("error: the plugin returned an error: {error}");
                1
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

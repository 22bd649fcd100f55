//! `isola run`: one WASI program as a sandboxed task, like `wasmtime run`.

use std::path::PathBuf;

use clap::Args;
use isola::{Output, Stdin, TaskHandle};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use super::common::{TaskOptions, explain};
use crate::exit;

/// Run a WASI command module or component as a sandboxed task.
///
/// The guest sees only what is granted here: its arguments, the variables
/// given with --env, the directories given with --dir/--dir-ro, and stdin.
/// It has no network.
#[derive(Args)]
#[command(after_help = exit::HELP)]
pub struct RunCommand {
    /// The WebAssembly file: a WASI preview1 command module or a preview2
    /// command component.
    wasm: PathBuf,

    /// Arguments passed to the guest (after `--`).
    #[arg(last = true)]
    args: Vec<String>,

    #[command(flatten)]
    task: TaskOptions,

    /// Talk to the guest through its message channel instead of stdin: each
    /// line read on stdin is sent as a message (end of input closes the
    /// channel), and each message the guest posts is printed as a line.
    #[arg(long)]
    messages: bool,
}

impl RunCommand {
    pub async fn execute(self) -> u8 {
        let mut spec = self.task.spec(&self.wasm);
        spec.args = self.args.clone();
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
        let mut handle = match runner.spawn(spec).await {
            Ok(handle) => handle,
            Err(err) => {
                eprintln!("error: {err}");
                return exit::for_error(&err);
            }
        };
        if !self.messages {
            // Nothing will ever be sent: close the host's side now, so a
            // guest that waits in `recv` hears "closed" instead of waiting
            // until its timeout (or forever).
            handle.close_channel();
        }
        let canceller = handle.cancel_handle();
        let ctrl_c = tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                canceller.cancel();
            }
        });
        let bridge = self.messages.then(|| bridge_messages(&mut handle));
        let report = handle.wait().await;
        if let Some(bridge) = bridge {
            // Every message the guest posted is printed before we exit.
            let _ = bridge.await;
        }
        ctrl_c.abort();
        explain(&report.outcome);
        exit::for_outcome(&report.outcome)
    }
}

/// Feeds stdin lines to the task as messages and prints its messages as
/// lines, until both sides are done.
fn bridge_messages(handle: &mut TaskHandle) -> tokio::task::JoinHandle<()> {
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
    tokio::spawn(async move {
        let Some(mut messages) = messages else {
            return;
        };
        let mut stdout = tokio::io::stdout();
        while let Some(message) = messages.recv().await {
            let mut line = message.to_vec();
            line.push(b'\n');
            if stdout.write_all(&line).await.is_err() {
                break;
            }
        }
        let _ = stdout.flush().await;
    })
}

//! Embedding Isola: run several sandboxed tasks at once from Rust and look
//! at how each ended.
//!
//! ```text
//! cargo run --example embed -- target/wasm32-wasip1/guest
//! ```
//!
//! The argument is a directory holding the guests built by `make guests`.

use std::path::PathBuf;
use std::time::Duration;

use isola::{ByteSize, Outcome, Runner, TaskSpec};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "target/wasm32-wasip1/guest".into()),
    );
    let runner = Runner::new()?;

    let hello = TaskSpec::new(dir.join("hello.wasm"));

    let mut hash = TaskSpec::new(dir.join("sha256.wasm"));
    hash.args = vec!["16".into()];

    // A guest that never stops, stopped by its timeout.
    let mut spinner = TaskSpec::new(dir.join("hostile.wasm"));
    spinner.args = vec!["loop".into()];
    spinner.limits.timeout = Some(Duration::from_millis(250));

    // A guest that allocates without end, stopped by its memory limit.
    let mut hog = TaskSpec::new(dir.join("hostile.wasm"));
    hog.args = vec!["alloc-bomb".into()];
    hog.limits.max_memory = ByteSize::mib(32);

    // Start them all, then collect: they run concurrently.
    let names = ["hello", "sha256 16MiB", "infinite loop", "memory bomb"];
    let mut handles = Vec::new();
    for spec in [hello, hash, spinner, hog] {
        handles.push(runner.spawn(spec).await?);
    }
    println!(
        "{:<14} {:<44} {:>9} {:>9} {:>10} {:>12}",
        "task", "outcome", "startup", "run", "peak mem", "fuel"
    );
    for (name, handle) in names.iter().zip(handles) {
        let report = handle.wait().await;
        let outcome = match &report.outcome {
            Outcome::Exited { code } => {
                format!("exit {code}: {}", report.stdout.text().trim())
            }
            other => other.to_string(),
        };
        let m = &report.metrics;
        println!(
            "{:<14} {:<44.44} {:>9} {:>9} {:>10} {:>12}",
            name,
            outcome,
            format!("{:.2?}", m.startup),
            format!("{:.2?}", m.run_time),
            ByteSize(m.peak_memory).to_string(),
            m.fuel_used
        );
    }
    Ok(())
}

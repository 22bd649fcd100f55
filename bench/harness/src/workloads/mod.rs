//! The workloads of the issue, each interleaving Isola and its peers.

pub mod cache;
pub mod cli;
pub mod concurrency;
pub mod cpu;
pub mod distributed;
pub mod memory;
pub mod rtt;
pub mod shm;
pub mod start;
pub mod throughput;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use isola::{Isolation, Program, Runner, TaskHandle, TaskSpec};

use crate::figure::Figure;
use crate::{Ctx, collect};

/// Runs the selected workloads (all when `only` is empty), in the issue's
/// order, and gathers their figures and failures.
pub async fn run_all(ctx: &Ctx, only: &[u8]) -> (Vec<Figure>, Vec<String>) {
    let want = |n: u8| only.is_empty() || only.contains(&n);
    let mut figures = Vec::new();
    let mut failures = Vec::new();
    let (f, e) = (&mut figures, &mut failures);
    if want(1) {
        progress(1, "task start latency");
        collect(f, e, "1 task start", start::run(ctx).await);
    }
    if want(2) {
        progress(2, "trivial task throughput");
        collect(f, e, "2 throughput", throughput::run(ctx).await);
    }
    if want(3) {
        progress(3, "message round trip");
        collect(f, e, "3 message round trip", rtt::run(ctx).await);
    }
    if want(4) {
        progress(4, "CPU-bound sha256");
        collect(f, e, "4 CPU", cpu::run(ctx).await);
    }
    if want(5) {
        progress(5, "memory per idle task");
        collect(f, e, "5 memory", memory::run(ctx).await);
    }
    if want(6) {
        progress(6, "compile cache");
        collect(f, e, "6 compile cache", cache::run(ctx).await);
    }
    if want(7) {
        progress(7, "shared memory");
        collect(f, e, "7 shared memory", shm::run(ctx).await);
    }
    if want(8) {
        progress(8, "live task capacity");
        collect(f, e, "8 concurrency", concurrency::run(ctx).await);
    }
    if want(9) {
        progress(9, "one-shot CLI");
        collect(f, e, "9 one-shot CLI", cli::run(ctx).await);
    }
    if want(10) {
        progress(10, "distributed (NATS JetStream)");
        collect(f, e, "10 distributed", distributed::run(ctx).await);
    }
    (figures, failures)
}

fn progress(n: u8, what: &str) {
    eprintln!("[{n}/10] {what} ...");
}

/// A duration in microseconds.
pub fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// A spec of `program` with a start input (the echo guest posts it back
/// first: the "I am running" message of the start and memory workloads).
pub fn spec_with_input(program: &Program, isolation: Isolation, input: &[u8]) -> TaskSpec {
    let mut spec = TaskSpec::new(program.path());
    spec.isolation = isolation;
    spec.input = Some(input.to_vec());
    spec
}

/// Starts a task of the echo guest and waits for its first message: the
/// task is then running and (next) waiting for a message. Returns the time
/// from spawn to that message.
pub async fn start_echo(
    runner: &Runner,
    program: &Program,
    isolation: Isolation,
) -> Result<(Duration, TaskHandle)> {
    start_echo_spec(
        runner,
        program,
        spec_with_input(program, isolation, b"ready"),
    )
    .await
}

/// As [`start_echo`], with a spec made by [`spec_with_input`] (input
/// `ready`) and then adjusted.
pub async fn start_echo_spec(
    runner: &Runner,
    program: &Program,
    spec: isola::TaskSpec,
) -> Result<(Duration, TaskHandle)> {
    let t0 = Instant::now();
    let mut handle = runner.spawn_program(program, spec).await?;
    let first = handle.recv().await;
    let elapsed = t0.elapsed();
    ensure!(
        first.as_deref() == Some(&b"ready"[..]),
        "the echo task's first message was {first:?}"
    );
    Ok((elapsed, handle))
}

/// Closes an echo task's channel and checks that it then exits cleanly.
pub async fn finish_echo(mut handle: TaskHandle) -> Result<()> {
    handle.close_channel();
    let report = handle.wait().await;
    ensure!(
        report.outcome.is_success(),
        "the echo task ended with {}: {}",
        report.outcome,
        report.stderr.text()
    );
    Ok(())
}

/// Loads a guest, naming it in the error.
pub async fn load(runner: &Runner, path: &std::path::Path) -> Result<Program> {
    runner
        .load(path)
        .await
        .with_context(|| format!("loading {} (run `make guests`)", path.display()))
}

//! `isola-bench --profile SCENARIO`: one Isola scenario of the bench in a
//! loop, with no peers and no table, to run under a profiler:
//!
//! ```text
//! perf record -g target/release/isola-bench --profile throughput
//! valgrind --tool=callgrind target/release/isola-bench --profile start-thread --seconds 2
//! ```
//!
//! The loops are the same code the workloads time, so a profile explains
//! the figure in the table.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use isola::{Isolation, RunnerConfig};

use crate::Ctx;
use crate::procfs::cpu_ticks;
use crate::workloads::{finish_echo, load, start_echo, throughput};

/// The scenarios `--profile` knows.
pub const SCENARIOS: &[&str] = &[
    "start-thread",
    "start-process-cold",
    "start-process-prestarted",
    "throughput",
    "throughput-call",
    "rtt-thread",
    "idle-process",
    "idle-thread",
];

/// Runs `scenario` for about `seconds`, then prints how many iterations it
/// did and their mean time.
pub async fn run(ctx: &Ctx, scenario: &str, seconds: f64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let prestarted = usize::from(scenario == "start-process-prestarted");
    let runner = ctx.runner(RunnerConfig {
        prestarted_workers: prestarted,
        ..RunnerConfig::default()
    })?;
    let started = Instant::now();
    let mut iterations = 0u64;
    match scenario {
        "start-thread" | "start-process-cold" | "start-process-prestarted" => {
            let isolation = if scenario == "start-thread" {
                Isolation::Thread
            } else {
                Isolation::Process
            };
            let program = load(&runner, &ctx.guest_p1("echo")).await?;
            while Instant::now() < deadline {
                if prestarted > 0 {
                    tokio::time::sleep(Duration::from_millis(40)).await;
                }
                let (_, handle) = start_echo(&runner, &program, isolation).await?;
                finish_echo(handle).await?;
                iterations += 1;
            }
        }
        "throughput" | "throughput-call" => {
            let program = load(&runner, &ctx.guest_p1("plugin")).await?;
            while Instant::now() < deadline {
                let call = scenario == "throughput-call";
                throughput::isola_batch(&runner, &program, 20_000, call).await?;
                iterations += 20_000;
            }
        }
        "rtt-thread" => {
            let program = load(&runner, &ctx.guest_p1("echo")).await?;
            let (_, mut handle) = start_echo(&runner, &program, Isolation::Thread).await?;
            let message = bytes::Bytes::from_static(&[0xab; 16]);
            while Instant::now() < deadline {
                for _ in 0..1_000 {
                    handle.post(message.clone()).await?;
                    if handle.recv().await.is_none() {
                        bail!("the echo task ended");
                    }
                }
                iterations += 1_000;
            }
            finish_echo(handle).await?;
        }
        "idle-process" | "idle-thread" => {
            // 200 echo tasks blocked waiting for a message: how much CPU do
            // they cost while nothing happens?
            let isolation = if scenario == "idle-process" {
                Isolation::Process
            } else {
                Isolation::Thread
            };
            let program = load(&runner, &ctx.guest_p1("echo")).await?;
            let mut handles = Vec::new();
            for _ in 0..200 {
                handles.push(start_echo(&runner, &program, isolation).await?.1);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            let mut pids = vec!["self".to_owned()];
            pids.extend(
                handles
                    .iter()
                    .filter_map(|h| h.process_id())
                    .map(|p| p.to_string()),
            );
            let ticks = || pids.iter().map(|p| cpu_ticks(p)).sum::<u64>();
            let (before, since) = (ticks(), Instant::now());
            tokio::time::sleep(deadline.saturating_duration_since(Instant::now())).await;
            let used = (ticks() - before) as f64 / 100.0;
            eprintln!(
                "{} idle {scenario} tasks used {:.0}% of one core ({used:.2} s of CPU in {:.2} s)",
                handles.len(),
                100.0 * used / since.elapsed().as_secs_f64(),
                since.elapsed().as_secs_f64()
            );
            iterations = handles.len() as u64;
            for h in handles {
                finish_echo(h).await?;
            }
        }
        other => bail!(
            "unknown profile scenario `{other}`; one of: {}",
            SCENARIOS.join(", ")
        ),
    }
    let elapsed = started.elapsed();
    eprintln!(
        "{scenario}: {iterations} iterations in {:.2} s, {:.2} µs each",
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e6 / iterations.max(1) as f64
    );
    Ok(())
}

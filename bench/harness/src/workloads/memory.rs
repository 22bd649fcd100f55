//! Workload 5: memory of live idle tasks, 1,000 at once.
//!
//! Isola thread: 1,000 echo tasks started and waiting for a message; the
//! figure is this process's RSS (and PSS) growth divided by 1,000, and of
//! it, the resident linear memory (the guest's own) and the rest (the host's
//! overhead per task: store, WASI context, channels, fiber stack pages).
//! Isola process: 1,000 echo tasks in worker processes; each child's RSS and
//! PSS, and the parent's growth per task. Node: the RSS growth per idle
//! worker (100 at once), each idle forked child's RSS and PSS (50 at once).

use std::time::Duration;

use anyhow::{Context, Result};
use isola::{Isolation, RunnerConfig};

use super::{finish_echo, load, start_echo};
use crate::Ctx;
use crate::figure::{Class, Figure, Series, Unit, rotation};
use crate::peers::{node, numbers};
use crate::procfs::{cpu_ticks, mem_available, memory, resident_linear_memory};

const RSS: &str = "memory per live idle task: RSS";
const PSS: &str = "memory per live idle task: PSS";
const ANONYMOUS: &str = "memory per live idle task: anonymous";
const OVERHEAD: &str = "idle thread task: host memory beyond its linear memory";
const IDLE_CPU: &str = "CPU used per idle task, per second (µs)";
const SETTLE: Duration = Duration::from_millis(300);
/// Smallest reservation that marks a pooled linear memory slot.
const SLOT_RESERVE: u64 = 1 << 30;

/// Returns the allocator's free pages to the kernel, so the baseline RSS
/// holds no freed heap that the tasks would reuse without growing RSS (which
/// would make their cost look smaller than it is).
fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` only releases free memory of glibc's allocator,
    // which is the global allocator here.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// CPU the processes `pids` use per idle task while `tasks` tasks wait:
/// microseconds of CPU per second of wall time, per task, over 2 seconds.
async fn idle_cpu(pids: &[String], tasks: usize) -> f64 {
    const WINDOW: Duration = Duration::from_secs(2);
    let ticks = || pids.iter().map(|p| cpu_ticks(p)).sum::<u64>();
    let before = ticks();
    tokio::time::sleep(WINDOW).await;
    // Clock ticks are 10 ms (`getconf CLK_TCK` is 100 on Linux).
    let cpu_us = (ticks() - before) as f64 * 10_000.0;
    cpu_us / WINDOW.as_secs_f64() / tasks.max(1) as f64
}

#[derive(Clone, Copy, PartialEq)]
enum System {
    Thread,
    Process,
    NodeWorker,
    NodeFork,
}

pub async fn run(ctx: &Ctx) -> Result<Vec<Figure>> {
    let rounds = ctx.scale(2, 1);
    let thread_n = ctx.scale(1_000, 200);
    // An idle worker costs no CPU (its epoch ticker pauses while the guest
    // waits), so 1,000 of them fit; the cap keeps a smaller machine safe.
    let process_n = ctx
        .scale(1_000, 50)
        .min((mem_available() / 2 / (4 << 20)) as usize)
        .max(1);
    let worker_n = ctx.scale(100, 10);
    let fork_n = ctx.scale(50, 5);

    let runner = ctx.runner(RunnerConfig {
        max_live_tasks: thread_n.max(process_n) + 16,
        prestarted_workers: 0,
        ..RunnerConfig::default()
    })?;
    let program = load(&runner, &ctx.guest_p1("echo")).await?;
    // Warm-up: everything a first task allocates once for all.
    for isolation in [Isolation::Thread, Isolation::Process] {
        let (_, h) = start_echo(&runner, &program, isolation).await?;
        finish_echo(h).await?;
    }

    let systems = [
        System::Thread,
        System::NodeWorker,
        System::Process,
        System::NodeFork,
    ];
    let mut series = Series::default();
    let mut linear_size = 0;
    let mut process_notes: Vec<String> = Vec::new();
    let mut process_counts: Vec<usize> = Vec::new();
    for round in 0..rounds {
        for system in rotation(&systems, round) {
            match system {
                System::Thread => {
                    tokio::time::sleep(SETTLE).await;
                    release_free_heap();
                    let before = memory("self")?;
                    let linear_before = resident_linear_memory(SLOT_RESERVE)?;
                    let mut handles = Vec::with_capacity(thread_n);
                    for _ in 0..thread_n {
                        handles.push(start_echo(&runner, &program, Isolation::Thread).await?.1);
                    }
                    tokio::time::sleep(SETTLE).await;
                    let after = memory("self")?;
                    let linear_after = resident_linear_memory(SLOT_RESERVE)?;
                    series.add(
                        "thread cpu",
                        [idle_cpu(&["self".to_owned()], thread_n).await],
                    );
                    let per = |a: u64, b: u64| (a as f64 - b as f64) / thread_n as f64;
                    let rss = per(after.rss, before.rss);
                    let linear = per(linear_after, linear_before);
                    series.add("thread rss", [rss]);
                    series.add("thread pss", [per(after.pss, before.pss)]);
                    series.add("thread anonymous", [per(after.anonymous, before.anonymous)]);
                    series.add("thread linear", [linear]);
                    series.add("thread overhead", [rss - linear]);
                    for mut h in handles {
                        h.close_channel();
                        let report = h.wait().await;
                        linear_size = linear_size.max(report.metrics.peak_memory);
                    }
                }
                System::Process => {
                    tokio::time::sleep(SETTLE).await;
                    release_free_heap();
                    let before = memory("self")?;
                    let mut handles = Vec::with_capacity(process_n);
                    for _ in 0..process_n {
                        match start_echo(&runner, &program, Isolation::Process).await {
                            Ok((_, h)) => handles.push(h),
                            // Report what was reached rather than nothing.
                            Err(err) => {
                                process_notes.push(format!(
                                    "round {round}: start {} failed: {err:#}",
                                    handles.len() + 1
                                ));
                                break;
                            }
                        }
                    }
                    process_counts.push(handles.len());
                    tokio::time::sleep(SETTLE).await;
                    let after = memory("self")?;
                    let mut pids = vec!["self".to_owned()];
                    pids.extend(
                        handles
                            .iter()
                            .filter_map(|h| h.process_id())
                            .map(|p| p.to_string()),
                    );
                    series.add("process cpu", [idle_cpu(&pids, handles.len()).await]);
                    for h in &handles {
                        let pid = h.process_id().context("a process task without a pid")?;
                        let m = memory(&pid.to_string())?;
                        series.add("process rss", [m.rss as f64]);
                        series.add("process pss", [m.pss as f64]);
                        series.add("process anonymous", [m.anonymous as f64]);
                    }
                    series.add(
                        "process parent",
                        [(after.rss as f64 - before.rss as f64) / handles.len().max(1) as f64],
                    );
                    for h in handles {
                        finish_echo(h).await?;
                    }
                }
                System::NodeWorker => {
                    let n = worker_n.to_string();
                    let r = node(ctx, "memory.mjs", &["--mode", "worker", "--n", &n]).await?;
                    series.add("worker rss", numbers(&r, "rss")?);
                    series.add("worker pss", numbers(&r, "pss")?);
                }
                System::NodeFork => {
                    let n = fork_n.to_string();
                    let r = node(ctx, "memory.mjs", &["--mode", "fork", "--n", &n]).await?;
                    series.add("fork rss", numbers(&r, "rss")?);
                    series.add("fork pss", numbers(&r, "pss")?);
                }
            }
        }
    }

    let thread_runs = format!("{rounds} × {thread_n} tasks");
    let process_runs = process_counts
        .iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(" + ")
        + " children";
    let worker_runs = format!("{rounds} × {worker_n} workers");
    let fork_runs = format!("{rounds} × {fork_n} children");
    let linear_resident = crate::stats::summarize(&series.take("thread linear"), false).median;
    let mut figures = Vec::new();
    for (metric, kind) in [(RSS, "rss"), (PSS, "pss")] {
        let mut thread = Figure::new(5, metric, "Isola thread", Unit::Bytes)
            .samples(series.take(&format!("thread {kind}")))
            .class(Class::Thread)
            .runs(thread_runs.clone());
        if kind == "rss" {
            thread.note = Some(format!(
                "growth of the host's RSS per task; linear memory {} KiB, of it resident {:.0} KiB",
                linear_size / 1024,
                linear_resident / 1024.0
            ));
        }
        figures.push(thread);
        let mut process = Figure::new(5, metric, "Isola process (worker child)", Unit::Bytes)
            .samples(series.take(&format!("process {kind}")))
            .class(Class::Process)
            .runs(process_runs.clone());
        if kind == "rss" {
            let median = process.median().unwrap_or(f64::INFINITY);
            process.judge("child ≤ 12 MiB", median <= f64::from(12u32 << 20));
            if !process_notes.is_empty() {
                process.note = Some(process_notes.join("; "));
            }
        }
        figures.push(process);
        figures.push(
            Figure::new(5, metric, "Node worker_threads (per worker)", Unit::Bytes)
                .samples(series.take(&format!("worker {kind}")))
                .runs(worker_runs.clone())
                .class(Class::Thread)
                .note("growth of the parent's memory per worker"),
        );
        figures.push(
            Figure::new(5, metric, "Node fork (child)", Unit::Bytes)
                .samples(series.take(&format!("fork {kind}")))
                .runs(fork_runs.clone())
                .class(Class::Process),
        );
    }
    // Beside RSS and PSS, the anonymous part alone: a process child's RSS is
    // mostly the binary's file pages, shared by every worker and counted in
    // full by RSS however many share them.
    figures.push(
        Figure::new(5, ANONYMOUS, "Isola thread", Unit::Bytes)
            .samples(series.take("thread anonymous"))
            .class(Class::Thread)
            .runs(thread_runs.clone())
            .note("growth of the host's anonymous memory per task"),
    );
    figures.push(
        Figure::new(5, ANONYMOUS, "Isola process (worker child)", Unit::Bytes)
            .samples(series.take("process anonymous"))
            .class(Class::Process)
            .runs(process_runs.clone())
            .note("each child's anonymous memory: heap, stacks, linear memory"),
    );
    figures.push(
        Figure::new(5, IDLE_CPU, "Isola thread", Unit::Micros)
            .samples(series.take("thread cpu"))
            .runs(thread_runs.clone())
            .note("a task waiting for a message pauses the runner's epoch ticker"),
    );
    figures.push(
        Figure::new(5, IDLE_CPU, "Isola process", Unit::Micros)
            .samples(series.take("process cpu"))
            .runs(process_runs.clone())
            .note("likewise in the worker: nothing ticks while its guest waits"),
    );
    let mut overhead = Figure::new(5, OVERHEAD, "Isola thread", Unit::Bytes)
        .samples(series.take("thread overhead"))
        .runs(thread_runs)
        .note("RSS growth per task minus its resident linear memory");
    let median = overhead.median().unwrap_or(f64::INFINITY);
    overhead.judge("≤ 64 KiB", median <= 64.0 * 1024.0);
    figures.push(overhead);
    figures.push(
        Figure::new(5, OVERHEAD, "Isola process (parent side)", Unit::Bytes)
            .samples(series.take("process parent"))
            .runs(process_runs)
            .note("growth of the parent's RSS per process task"),
    );
    Ok(figures)
}

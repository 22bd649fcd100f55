//! Workload 8: the most live tasks one runner holds on this machine, each
//! an echo task blocked waiting for a message, and the RSS at that point.
//!
//! A runner reserves address space for `max_live_tasks` instance slots up
//! front, so the first limit is whether a runner of that size can be made at
//! all: the harness asks for the target (50,000) and, if that fails,
//! searches for the largest size that can be made. It then starts tasks
//! until the runner is full or a start fails, keeping a margin of the
//! machine's free memory.

use std::time::Instant;

use anyhow::Result;
use isola::{Isolation, Runner, RunnerConfig, TaskHandle};

use super::{finish_echo, load, start_echo};
use crate::Ctx;
use crate::figure::{Figure, Unit};
use crate::procfs::{map_count, mem_available, memory};

const TARGET: usize = 50_000;
const METRIC: &str = "live tasks waiting for a message (most held)";
const RSS: &str = "host RSS with that many live tasks";

/// The runner of `slots`, or why it cannot be made.
fn runner(ctx: &Ctx, slots: usize) -> Result<Runner> {
    ctx.runner(RunnerConfig {
        max_live_tasks: slots,
        prestarted_workers: 0,
        ..RunnerConfig::default()
    })
}

/// First line of an error chain, short enough for the table.
fn short(err: &anyhow::Error) -> String {
    let text = format!("{err:#}");
    let text = text.lines().next().unwrap_or_default();
    text.chars().take(160).collect()
}

pub async fn run(ctx: &Ctx) -> Result<Vec<Figure>> {
    let target = ctx.scale(TARGET, 5_000);
    let mut notes = Vec::new();
    let mut slots = target;
    let runner = match runner(ctx, target) {
        Ok(r) => r,
        Err(err) => {
            notes.push(format!("a runner of {target} slots fails: {}", short(&err)));
            // Largest size that can be made, to within 1%.
            let (mut lo, mut hi) = (0usize, target);
            while hi - lo > target / 100 {
                let mid = (lo + hi) / 2;
                if runner(ctx, mid).is_ok() {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            slots = lo;
            notes.push(format!(
                "largest runner that can be made: {lo} slots (each reserves 2 linear memories \
                 of 4 GiB plus guards)"
            ));
            runner(ctx, lo.max(1))?
        }
    };
    let program = load(&runner, &ctx.guest_p1("echo")).await?;
    let before = memory("self")?;
    let maps_idle = map_count();
    // Stop while half of what was free at the start is still free.
    let floor = mem_available() / 2;
    let started = Instant::now();
    let mut handles: Vec<TaskHandle> = Vec::with_capacity(slots);
    while handles.len() < slots {
        if handles.len().is_multiple_of(1_000) && mem_available() < floor {
            notes.push(format!("stopped at {} tasks: memory", handles.len()));
            break;
        }
        match start_echo(&runner, &program, Isolation::Thread).await {
            Ok((_, h)) => handles.push(h),
            Err(err) => {
                notes.push(format!(
                    "start {} failed: {}",
                    handles.len() + 1,
                    short(&err)
                ));
                break;
            }
        }
    }
    let fill_time = started.elapsed();
    let held = handles.len();
    let at_peak = memory("self")?;
    let maps = map_count();
    notes.push(format!(
        "started in {:.1} s; memory mappings: {maps_idle} with the runner idle, {maps} full \
         ({:.1} per task; vm.max_map_count {})",
        fill_time.as_secs_f64(),
        (maps as f64 - maps_idle as f64) / held.max(1) as f64,
        std::fs::read_to_string("/proc/sys/vm/max_map_count")
            .unwrap_or_default()
            .trim()
    ));
    for h in handles {
        finish_echo(h).await?;
    }
    let mut count = Figure::new(8, METRIC, "Isola thread", Unit::Count)
        .samples(vec![held as f64])
        .runs("1")
        .note(notes.join("; "));
    count.judge(format!("≥ {TARGET}"), held >= TARGET);
    let rss = Figure::new(8, RSS, "Isola thread", Unit::Bytes)
        .samples(vec![at_peak.rss as f64])
        .runs("1")
        .note(format!(
            "{:.1} KiB per task above the runner's idle RSS",
            (at_peak.rss as f64 - before.rss as f64) / held.max(1) as f64 / 1024.0
        ));
    Ok(vec![count, rss])
}

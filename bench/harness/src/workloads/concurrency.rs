//! Workload 8: the most live tasks one runner holds on this machine, each
//! an echo task blocked waiting for a message, and the RSS at that point.
//!
//! A runner reserves address space for `max_live_tasks` instance slots up
//! front. With the default 4 GiB reservation per linear memory (which lets
//! compiled code skip bounds checks) about 10,000 slots fit in the 128 TiB
//! of user address space; the runner here is configured for many small
//! tasks instead: 64 MiB reserved per memory, one memory per slot. Each live
//! task also needs a handful of memory mappings (its memory, its fiber stack
//! and their guard pages), more than Linux's default `vm.max_map_count`
//! (65,530) allows for 50,000 tasks, so the harness raises that limit when
//! it may (as root) and says so. It asks for the target (50,000) and, if
//! that fails, searches for the largest size that can be made; then starts
//! tasks until the runner is full or a start fails, keeping a margin of the
//! machine's free memory.

use std::time::Instant;

use anyhow::Result;
use isola::{Isolation, Runner, RunnerConfig, TaskHandle};

use super::{finish_echo, load, spec_with_input, start_echo_spec};
use crate::Ctx;
use crate::figure::{Figure, Unit};
use crate::procfs::{map_count, mem_available, memory};

const TARGET: usize = 50_000;
const METRIC: &str = "live tasks waiting for a message (most held)";
const RSS: &str = "host RSS with that many live tasks";

/// Address space per linear memory: room for the echo guest's 1 MiB and
/// plenty of growth.
const RESERVATION: u64 = 64 << 20;

/// The runner of `slots`, or why it cannot be made.
fn runner(ctx: &Ctx, slots: usize) -> Result<Runner> {
    ctx.runner(RunnerConfig {
        max_live_tasks: slots,
        prestarted_workers: 0,
        memory_reservation: Some(RESERVATION),
        memories_per_task: 1,
        ..RunnerConfig::default()
    })
}

const MAP_COUNT: &str = "/proc/sys/vm/max_map_count";

/// Mappings the target needs, with room to spare: about 2 per slot while
/// idle (each pooled fiber stack and its guard page) and 4 more per live
/// task (its memory and stack split their reservations).
const MAPS_NEEDED: u64 = (TARGET as u64) * 8;

/// Raises `vm.max_map_count` to [`MAPS_NEEDED`] if it is lower and this
/// process may; returns what to say about it, and the value to restore.
fn raise_map_count() -> (String, Option<u64>) {
    let current: u64 = std::fs::read_to_string(MAP_COUNT)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    if current >= MAPS_NEEDED {
        return (format!("vm.max_map_count {current}"), None);
    }
    match std::fs::write(MAP_COUNT, MAPS_NEEDED.to_string()) {
        Ok(()) => (
            format!("vm.max_map_count raised from {current} to {MAPS_NEEDED} for this run"),
            Some(current),
        ),
        Err(err) => (
            format!(
                "vm.max_map_count is {current} and could not be raised to {MAPS_NEEDED} \
                 ({err}): run as root for the full figure"
            ),
            None,
        ),
    }
}

/// First line of an error chain, short enough for the table.
fn short(err: &anyhow::Error) -> String {
    let text = format!("{err:#}");
    let text = text.lines().next().unwrap_or_default();
    text.chars().take(160).collect()
}

pub async fn run(ctx: &Ctx) -> Result<Vec<Figure>> {
    let target = ctx.scale(TARGET, 5_000);
    let (map_note, restore) = raise_map_count();
    let result = measure(ctx, target, map_note).await;
    if let Some(old) = restore {
        let _ = std::fs::write(MAP_COUNT, old.to_string());
    }
    result
}

async fn measure(ctx: &Ctx, target: usize, map_note: String) -> Result<Vec<Figure>> {
    let mut notes = vec![
        format!(
            "RunnerConfig: memory_reservation {} MiB, memories_per_task 1",
            RESERVATION >> 20
        ),
        map_note,
    ];
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
            notes.push(format!("largest runner that can be made: {lo} slots"));
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
        let mut spec = spec_with_input(&program, Isolation::Thread, b"ready");
        spec.limits.max_memory = isola::ByteSize(RESERVATION);
        match start_echo_spec(&runner, &program, spec).await {
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
         ({:.1} per task)",
        fill_time.as_secs_f64(),
        (maps as f64 - maps_idle as f64) / held.max(1) as f64,
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

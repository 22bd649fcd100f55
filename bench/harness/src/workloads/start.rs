//! Workload 1: task start latency, from spawn to the task's first message.
//!
//! Isola: the echo guest started with a start input posts it back at once;
//! the time is `spawn_program` to that message on the host. Thread tasks
//! from a warm runner (program loaded, instance pool warm); process tasks
//! cold (a new worker process each time: exec, handshake, engine, loading
//! the precompiled artifact from the disk cache) and from a pre-started
//! worker. Node: `new Worker(file)` / `fork(file)` to the first message.

use std::time::Duration;

use anyhow::Result;
use isola::{Isolation, RunnerConfig};

use super::{finish_echo, load, micros, spec_with_input, start_echo, start_echo_spec};
use crate::Ctx;
use crate::figure::{Class, Figure, Series, Unit, rotation};
use crate::peers::node_samples;

const METRIC: &str = "task start: spawn → first message";

#[derive(Clone, Copy, PartialEq)]
enum System {
    Thread,
    ThreadComponent,
    ProcessCold,
    ProcessWarm,
    ProcessReused,
    /// As `ProcessCold` and `ProcessWarm`, with the OS sandbox off: the
    /// sandbox's start-up cost, side by side (sampled in turn with them).
    ProcessColdNoSandbox,
    ProcessWarmNoSandbox,
    NodeWorker,
    ForkJson,
    ForkAdvanced,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Thread => "Isola thread",
            System::ThreadComponent => "Isola thread (p2 component)",
            System::ProcessCold => "Isola process, cold",
            System::ProcessWarm => "Isola process, pre-started",
            System::ProcessReused => "Isola process, reused worker",
            System::ProcessColdNoSandbox => "Isola process, cold, sandbox off",
            System::ProcessWarmNoSandbox => "Isola process, pre-started, sandbox off",
            System::NodeWorker => "Node worker_threads",
            System::ForkJson => "Node fork (json)",
            System::ForkAdvanced => "Node fork (advanced)",
        }
    }

    fn class(self) -> Class {
        match self {
            System::Thread | System::ThreadComponent | System::NodeWorker => Class::Thread,
            _ => Class::Process,
        }
    }
}

/// Time for the pool of pre-started workers to fill up before a series (a
/// worker starts, warms up and preloads in a few milliseconds). Samples
/// then run back to back, like every other row: a pause before each would
/// measure the machine waking from idle (about 0.5 ms on this VM, for a
/// reused worker too) rather than Isola.
const POOL_FILL_PAUSE: Duration = Duration::from_millis(500);

/// Between two process samples: time for the pool to replace the worker
/// the last one took (start, warm-up, preload), or for a cold worker to be
/// reaped, spent spinning so that the CPUs do not go idle.
const REFILL_WAIT: Duration = Duration::from_millis(30);

fn spin_for(time: Duration) {
    let start = std::time::Instant::now();
    while start.elapsed() < time {
        std::hint::spin_loop();
    }
}

pub async fn run(ctx: &Ctx) -> Result<Vec<Figure>> {
    let rounds = ctx.scale(6, 2);
    let thread_n = ctx.scale(300, 50);
    let process_n = ctx.scale(25, 5);
    let node_worker_n = ctx.scale(12, 3);
    let fork_n = ctx.scale(5, 2);

    let thread_runner = ctx.runner(RunnerConfig::default())?;
    let cold_runner = ctx.runner(RunnerConfig {
        prestarted_workers: 0,
        ..RunnerConfig::default()
    })?;
    let warm_runner = ctx.runner(RunnerConfig {
        prestarted_workers: process_n,
        ..RunnerConfig::default()
    })?;
    let cold_open_runner = ctx.runner(RunnerConfig {
        prestarted_workers: 0,
        sandbox: isola::Sandbox::Off,
        ..RunnerConfig::default()
    })?;
    let warm_open_runner = ctx.runner(RunnerConfig {
        prestarted_workers: process_n,
        sandbox: isola::Sandbox::Off,
        ..RunnerConfig::default()
    })?;
    let module = load(&thread_runner, &ctx.guest_p1("echo")).await?;
    let component = load(&thread_runner, &ctx.guest_p2("echo")).await?;
    let cold_module = load(&cold_runner, &ctx.guest_p1("echo")).await?;
    let warm_module = load(&warm_runner, &ctx.guest_p1("echo")).await?;
    let cold_open_module = load(&cold_open_runner, &ctx.guest_p1("echo")).await?;
    let warm_open_module = load(&warm_open_runner, &ctx.guest_p1("echo")).await?;

    // Warm-up: instance pool, code pages, the artifact on disk, the first
    // pre-started worker.
    for _ in 0..200 {
        let (_, h) = start_echo(&thread_runner, &module, Isolation::Thread).await?;
        finish_echo(h).await?;
        let (_, h) = start_echo(&thread_runner, &component, Isolation::Thread).await?;
        finish_echo(h).await?;
    }
    for runner_module in [
        (&cold_runner, &cold_module),
        (&warm_runner, &warm_module),
        (&cold_open_runner, &cold_open_module),
        (&warm_open_runner, &warm_open_module),
    ] {
        let (_, h) = start_echo(runner_module.0, runner_module.1, Isolation::Process).await?;
        finish_echo(h).await?;
    }
    let reused_spec = || {
        let mut spec = spec_with_input(&warm_module, Isolation::Process, b"ready");
        spec.reuse_worker = true;
        spec
    };
    for _ in 0..3 {
        let (_, h) = start_echo_spec(&warm_runner, &warm_module, reused_spec()).await?;
        finish_echo(h).await?;
    }

    let systems = [
        System::Thread,
        System::ThreadComponent,
        System::ProcessCold,
        System::ProcessWarm,
        System::ProcessReused,
        System::ProcessColdNoSandbox,
        System::ProcessWarmNoSandbox,
        System::NodeWorker,
        System::ForkJson,
        System::ForkAdvanced,
    ];
    let mut series = Series::default();
    for round in 0..rounds {
        for system in rotation(&systems, round) {
            let samples = match system {
                System::Thread | System::ThreadComponent => {
                    let program = if system == System::Thread {
                        &module
                    } else {
                        &component
                    };
                    let mut v = Vec::with_capacity(thread_n);
                    for _ in 0..thread_n {
                        let (t, h) = start_echo(&thread_runner, program, Isolation::Thread).await?;
                        v.push(micros(t));
                        finish_echo(h).await?;
                    }
                    v
                }
                // Measured with their sandboxed partner, below.
                System::ProcessColdNoSandbox | System::ProcessWarmNoSandbox => continue,
                System::ProcessCold | System::ProcessWarm => {
                    let warm = system == System::ProcessWarm;
                    let pair = if warm {
                        [
                            (system, &warm_runner, &warm_module),
                            (
                                System::ProcessWarmNoSandbox,
                                &warm_open_runner,
                                &warm_open_module,
                            ),
                        ]
                    } else {
                        [
                            (system, &cold_runner, &cold_module),
                            (
                                System::ProcessColdNoSandbox,
                                &cold_open_runner,
                                &cold_open_module,
                            ),
                        ]
                    };
                    // Sandbox on and off take turns, sample by sample (the
                    // first of each pair alternating too): this machine's
                    // speed drifts over seconds, and the ratio between the
                    // two is the figure judged, so both must see the same
                    // machine.
                    tokio::time::sleep(POOL_FILL_PAUSE).await;
                    for i in 0..process_n {
                        for k in 0..2 {
                            let (system, runner, program) = pair[(i + k) % 2];
                            // The last task's leftovers (a pool topping
                            // itself up, a worker reaped, its cgroup
                            // removed) finish first, without the machine
                            // going idle: taking turns, they would
                            // otherwise land on the other row's sample.
                            spin_for(REFILL_WAIT);
                            let (t, h) = start_echo(runner, program, Isolation::Process).await?;
                            series.add(system.name(), [micros(t)]);
                            finish_echo(h).await?;
                        }
                    }
                    continue;
                }
                System::ProcessReused => {
                    let mut v = Vec::with_capacity(thread_n);
                    for _ in 0..thread_n {
                        let spec = reused_spec();
                        let (t, h) = start_echo_spec(&warm_runner, &warm_module, spec).await?;
                        v.push(micros(t));
                        finish_echo(h).await?;
                    }
                    v
                }
                System::NodeWorker | System::ForkJson | System::ForkAdvanced => {
                    let (mode, n) = match system {
                        System::NodeWorker => ("worker", node_worker_n),
                        System::ForkJson => ("fork-json", fork_n),
                        _ => ("fork-advanced", fork_n),
                    };
                    let n = n.to_string();
                    node_samples(
                        ctx,
                        "start.mjs",
                        &["--mode", mode, "--n", &n, "--warmup", "1"],
                    )
                    .await?
                }
            };
            series.add(system.name(), samples);
        }
    }

    let mut figures: Vec<Figure> = systems
        .iter()
        .map(|s| {
            Figure::new(1, METRIC, s.name(), Unit::Micros)
                .samples(series.take(s.name()))
                .class(s.class())
        })
        .collect();
    // The sandbox's price: each sandboxed start against the same start
    // without it, measured in the same rounds.
    let median_of = |figures: &[Figure], system: System| {
        figures
            .iter()
            .find(|f| f.system == system.name())
            .and_then(Figure::median)
    };
    let sandbox_ratios = [
        (System::ProcessCold, System::ProcessColdNoSandbox),
        (System::ProcessWarm, System::ProcessWarmNoSandbox),
    ]
    .map(|(on, off)| {
        let ratio = median_of(&figures, on)
            .zip(median_of(&figures, off))
            .map(|(on, off)| on / off);
        (on, off, ratio)
    });
    // Judged on the rows without the sandbox: the sandboxed rows keep
    // their own start-up targets.
    for (on, off, ratio) in sandbox_ratios {
        if let (Some(f), Some(ratio)) = (figures.iter_mut().find(|f| f.system == off.name()), ratio)
        {
            f.note = Some(format!("`{}` with RunnerConfig::sandbox = Off", on.name()));
            f.judge(
                format!("sandbox on ≤ 1.10× this (is {ratio:.2}×)"),
                ratio <= 1.10,
            );
        }
    }
    for f in &mut figures {
        if f.system == System::Thread.name() {
            f.note = Some("p1 module, echo guest, warm runner".into());
            let p50 = f.median().unwrap_or(f64::INFINITY);
            f.judge("p50 ≤ 10 µs", p50 <= 10.0);
        } else if f.system == System::ProcessCold.name() {
            f.note = Some("new worker process per task".into());
            let p50 = f.median().unwrap_or(f64::INFINITY);
            f.judge("≤ 3 ms", p50 <= 3_000.0);
        } else if f.system == System::ProcessWarm.name() {
            f.note = Some("a fresh worker started ahead of the task".into());
            let p50 = f.median().unwrap_or(f64::INFINITY);
            f.judge("≤ 300 µs", p50 <= 300.0);
        } else if f.system == System::ProcessReused.name() {
            f.note = Some("`reuse_worker`: the worker of the previous task, program loaded".into());
            let p50 = f.median().unwrap_or(f64::INFINITY);
            f.judge("≤ 300 µs", p50 <= 300.0);
        }
    }
    Ok(figures)
}

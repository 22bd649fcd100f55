//! Workload 2: trivial task throughput. 20,000 tasks, each a fresh instance
//! of the plugin guest returning its input + 1, all submitted at once to a
//! pool of 2 (Isola: the 2 workers of the Tokio runtime; Piscina: 2
//! threads). The figure is tasks per second over the whole batch.

use std::time::Instant;

use anyhow::{Result, bail};
use isola::{Isolation, Outcome, Program, Runner, RunnerConfig, TaskSpec};
use tokio::task::JoinSet;

use super::{load, spec_with_input};
use crate::Ctx;
use crate::figure::{Figure, Series, Unit, rotation};
use crate::peers::node_samples;

const METRIC: &str = "throughput: 20,000 trivial tasks, pool of 2 (tasks/s)";

#[derive(Clone, Copy, PartialEq)]
enum System {
    /// `spawn_program` of a loaded `Program`, then `wait`.
    Spawn,
    /// `Runner::call` with the file path, the plugin API.
    Call,
    Piscina,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Spawn => "Isola thread (spawn_program)",
            System::Call => "Isola thread (Runner::call)",
            System::Piscina => "Piscina",
        }
    }
}

/// Runs `n` plugin tasks at once and returns tasks per second.
pub async fn isola_batch(runner: &Runner, program: &Program, n: usize, call: bool) -> Result<f64> {
    let start = Instant::now();
    let mut set = JoinSet::new();
    for i in 0..n {
        let runner = runner.clone();
        let program = program.clone();
        set.spawn(async move {
            let input = i.to_string();
            let expected = (i + 1).to_string();
            let output = if call {
                let spec = TaskSpec::new(program.path());
                runner.call(spec, input).await?
            } else {
                let spec = spec_with_input(&program, Isolation::Thread, input.as_bytes());
                let report = runner.spawn_program(&program, spec).await?.wait().await;
                match report.outcome {
                    Outcome::Returned { output } => output,
                    other => bail!("task {i} ended with {other}"),
                }
            };
            if output != expected.as_bytes() {
                bail!("task {i} returned {:?}", String::from_utf8_lossy(&output));
            }
            Ok(())
        });
    }
    while let Some(result) = set.join_next().await {
        result??;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

pub async fn run(ctx: &Ctx) -> Result<Vec<Figure>> {
    let rounds = ctx.scale(7, 2);
    let n = ctx.scale(20_000, 5_000);
    let runner = ctx.runner(RunnerConfig::default())?;
    let program = load(&runner, &ctx.guest_p1("plugin")).await?;
    // Warm-up: the instance pool's slots, the allocator, the code.
    isola_batch(&runner, &program, 2_000, false).await?;
    isola_batch(&runner, &program, 2_000, true).await?;

    let systems = [System::Spawn, System::Call, System::Piscina];
    let mut series = Series::default();
    let n_arg = n.to_string();
    for round in 0..rounds {
        for system in rotation(&systems, round) {
            let samples = match system {
                System::Spawn => vec![isola_batch(&runner, &program, n, false).await?],
                System::Call => vec![isola_batch(&runner, &program, n, true).await?],
                System::Piscina => {
                    node_samples(
                        ctx,
                        "throughput.mjs",
                        &["--n", &n_arg, "--threads", "2", "--warmup", "2000"],
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
            Figure::new(2, METRIC, s.name(), Unit::PerSec)
                .samples(series.take(s.name()))
                .runs(format!("{rounds} × {n} tasks"))
        })
        .collect();
    let piscina = figures
        .iter()
        .find(|f| f.system == System::Piscina.name())
        .and_then(Figure::median);
    for f in figures.iter_mut().filter(|f| f.isola) {
        let median = f.median().unwrap_or(0.0);
        let vs = piscina.is_some_and(|p| median >= 3.0 * p);
        f.judge("≥ 100k/s and ≥ 3× Piscina", median >= 100_000.0 && vs);
    }
    if let Some(f) = figures
        .iter_mut()
        .find(|f| f.system == System::Piscina.name())
    {
        f.note = Some("`run(x)` → x + 1 on a reused worker".into());
    }
    if let Some(f) = figures
        .iter_mut()
        .find(|f| f.system == System::Spawn.name())
    {
        f.note = Some("fresh instance per task, p1 plugin module".into());
    }
    Ok(figures)
}

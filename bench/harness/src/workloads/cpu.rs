//! Workload 4: CPU-bound work. The sha256 guest fills 64 MiB and hashes it
//! with the `sha2` crate's portable code (the only one on wasm32). Its peers:
//! the very same source file compiled natively, once with sha2's portable
//! code (`force-soft`: the like-for-like baseline the target is about) and
//! once with its default backend (SHA-NI on this CPU), and Node's `crypto`
//! (OpenSSL, SHA-NI too). Every run's digest is checked against the others.
//!
//! Times are whole jobs, fill included: Isola from spawn to the task's end
//! (fuel metering and epoch interruption on, as always), native from exec
//! to exit, Node inside the script after a warm-up run.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use isola::{Isolation, Program, Runner, RunnerConfig, TaskSpec};

use super::{load, micros};
use crate::Ctx;
use crate::figure::{Figure, Series, Unit, rotation};
use crate::peers::{node, numbers};
use crate::procfs::run_timed;

const METRIC: &str = "sha256 of 64 MiB (fill + hash)";
const MIB: &str = "64";

#[derive(Clone, Copy, PartialEq)]
enum System {
    Thread,
    Process,
    NativeSoft,
    NativeHw,
    Node,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Thread => "Isola thread",
            System::Process => "Isola process",
            System::NativeSoft => "native Rust, same code (portable sha2)",
            System::NativeHw => "native Rust, sha2 with SHA-NI",
            System::Node => "Node crypto (OpenSSL, SHA-NI)",
        }
    }
}

async fn isola_sha(
    runner: &Runner,
    program: &Program,
    isolation: Isolation,
) -> Result<(f64, String)> {
    let mut spec = TaskSpec::new(program.path());
    spec.args = vec![MIB.into()];
    spec.isolation = isolation;
    let start = Instant::now();
    let report = runner.spawn_program(program, spec).await?.wait().await;
    let elapsed = start.elapsed();
    ensure!(
        report.outcome.is_success(),
        "sha256 task: {} {}",
        report.outcome,
        report.stderr.text()
    );
    Ok((micros(elapsed), report.stdout.text().trim().to_owned()))
}

async fn native_sha(binary: &Path) -> Result<(f64, String)> {
    let binary = binary.to_owned();
    let timed = tokio::task::spawn_blocking(move || run_timed(Command::new(binary).arg(MIB)))
        .await
        .context("joining the native run")??;
    Ok((
        micros(timed.wall),
        String::from_utf8_lossy(&timed.stdout).trim().to_owned(),
    ))
}

pub async fn run(ctx: &Ctx) -> Result<Vec<Figure>> {
    let rounds = ctx.scale(9, 2);
    let runner = ctx.runner(RunnerConfig {
        prestarted_workers: 1,
        ..RunnerConfig::default()
    })?;
    let program = load(&runner, &ctx.guest_p1("sha256")).await?;
    // Warm-up (and the reference digest).
    let (_, digest) = isola_sha(&runner, &program, Isolation::Thread).await?;
    isola_sha(&runner, &program, Isolation::Process).await?;

    let mut systems = vec![System::Thread, System::Process, System::Node];
    let mut skipped = Vec::new();
    for (system, binary) in [
        (System::NativeSoft, &ctx.native_soft),
        (System::NativeHw, &ctx.native_hw),
    ] {
        if binary.is_some() {
            systems.push(system);
        } else {
            skipped.push(system);
        }
    }
    let mut series = Series::default();
    for round in 0..rounds {
        for system in rotation(&systems, round) {
            let (time, got) = match system {
                System::Thread => isola_sha(&runner, &program, Isolation::Thread).await?,
                System::Process => isola_sha(&runner, &program, Isolation::Process).await?,
                System::NativeSoft | System::NativeHw => {
                    let binary = if system == System::NativeSoft {
                        &ctx.native_soft
                    } else {
                        &ctx.native_hw
                    };
                    native_sha(binary.as_deref().context("no native binary")?).await?
                }
                System::Node => {
                    let result = node(
                        ctx,
                        "sha256.mjs",
                        &["--mib", MIB, "--n", "1", "--warmup", "1"],
                    )
                    .await?;
                    let samples = numbers(&result, "samples")?;
                    let got = result
                        .get("digest")
                        .and_then(|d| d.as_str())
                        .unwrap_or_default()
                        .to_owned();
                    (samples.first().copied().context("no Node sample")?, got)
                }
            };
            ensure!(
                got == digest,
                "{} computed {got}, the guest {digest}",
                system.name()
            );
            series.add(system.name(), [time]);
        }
    }

    let mut figures: Vec<Figure> = systems
        .iter()
        .map(|s| Figure::new(4, METRIC, s.name(), Unit::Micros).samples(series.take(s.name())))
        .collect();
    for s in skipped {
        figures.push(
            Figure::new(4, METRIC, s.name(), Unit::Micros)
                .note("skipped: not built (bench/run.sh builds bench/native)"),
        );
    }
    let soft = figures
        .iter()
        .find(|f| f.system == System::NativeSoft.name())
        .and_then(Figure::median);
    for f in figures.iter_mut().filter(|f| f.isola) {
        let median = f.median().unwrap_or(f64::INFINITY);
        match soft {
            Some(soft) => f.judge(
                format!("≤ 1.1× portable native ({:.2}×)", median / soft),
                median <= 1.1 * soft,
            ),
            None => f.note = Some("no native baseline to judge against".into()),
        }
    }
    if let Some(f) = figures
        .iter_mut()
        .find(|f| f.system == System::Thread.name())
    {
        f.note = Some("p1 module, fuel + epochs on; guest built with opt-level 2".into());
    }
    Ok(figures)
}

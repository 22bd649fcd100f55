//! Workload 6: the compile cache. A generated module of 56 MiB (nearly all
//! code) is run twice with an empty cache and then with a warm one, by
//! `isola run` and by `wasmtime run` (each with a cache directory of its
//! own), as whole processes: wall time from exec to exit, and peak RSS.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use super::micros;
use crate::Ctx;
use crate::figure::{Figure, Series, Unit, rotation};
use crate::procfs::{Timed, measure};
use crate::wasmgen::large_module;

/// Size of the generated module: the target is about 50 MiB and more.
const MODULE_BYTES: usize = 56 << 20;
const FIRST: &str = "56 MiB module, first run (compiles, empty cache)";
const SECOND: &str = "56 MiB module, second run (cache warm): wall";
const SECOND_RSS: &str = "56 MiB module, second run (cache warm): peak RSS";

#[derive(Clone, Copy, PartialEq)]
enum System {
    Isola,
    Wasmtime,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Isola => "Isola CLI (isola run)",
            System::Wasmtime => "wasmtime run",
        }
    }
}

/// The generated module, written once per scratch directory.
fn module(work: &Path) -> Result<PathBuf> {
    let path = work.join("large-56mib.wasm");
    let bytes = large_module(MODULE_BYTES);
    let fresh = std::fs::read(&path).is_ok_and(|old| old == bytes);
    if !fresh {
        std::fs::write(&path, &bytes).context("writing the large module")?;
    }
    Ok(path)
}

/// A wasmtime cache config that keeps its cache in `dir`.
pub fn wasmtime_cache_config(work: &Path, name: &str, dir: &Path) -> Result<PathBuf> {
    let config = work.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!("[cache]\ndirectory = {:?}\n", dir.display().to_string()),
    )
    .context("writing a wasmtime cache config")?;
    Ok(config)
}

async fn timed(command: Command) -> Result<Timed> {
    tokio::task::spawn_blocking(move || measure(&command))
        .await
        .context("joining a timed run")?
}

pub async fn run(ctx: &Ctx) -> Result<Vec<Figure>> {
    let first_rounds = ctx.scale(2, 1);
    let second_runs = ctx.scale(15, 3);
    let wasm = module(&ctx.work)?;
    let isola_cache = ctx.work.join("cache-large-isola");
    let wasmtime_cache = ctx.work.join("cache-large-wasmtime");
    let wasmtime_config =
        wasmtime_cache_config(&ctx.work, "cache-large-wasmtime", &wasmtime_cache)?;
    let mut systems = vec![System::Isola];
    if ctx.wasmtime.is_some() {
        systems.push(System::Wasmtime);
    }
    let command = |system: System| -> Result<Command> {
        Ok(match system {
            System::Isola => {
                let mut c = Command::new(&ctx.isola);
                c.arg("run").arg("--cache-dir").arg(&isola_cache).arg(&wasm);
                c
            }
            System::Wasmtime => {
                let mut c = Command::new(ctx.wasmtime.as_ref().context("no wasmtime")?);
                c.arg("run")
                    .arg("-C")
                    .arg(format!("cache-config={}", wasmtime_config.display()))
                    .arg(&wasm);
                c
            }
        })
    };

    let mut series = Series::default();
    for round in 0..first_rounds {
        for system in rotation(&systems, round) {
            let cache = if system == System::Isola {
                &isola_cache
            } else {
                &wasmtime_cache
            };
            let _ = std::fs::remove_dir_all(cache);
            let t = timed(command(system)?).await?;
            series.add(&format!("first {}", system.name()), [micros(t.wall)]);
        }
    }
    for run in 0..second_runs {
        for system in rotation(&systems, run) {
            let t = timed(command(system)?).await?;
            series.add(&format!("second {}", system.name()), [micros(t.wall)]);
            series.add(&format!("rss {}", system.name()), [t.max_rss as f64]);
        }
    }

    let mut figures = Vec::new();
    for (metric, key, unit) in [
        (FIRST, "first", Unit::Micros),
        (SECOND, "second", Unit::Micros),
        (SECOND_RSS, "rss", Unit::Bytes),
    ] {
        for system in [System::Isola, System::Wasmtime] {
            let mut f = Figure::new(6, metric, system.name(), unit)
                .samples(series.take(&format!("{key} {}", system.name())));
            if system == System::Wasmtime && ctx.wasmtime.is_none() {
                f.note = Some("skipped: no wasmtime CLI (bench/run.sh installs it)".into());
            }
            if system == System::Isola && key == "second" {
                let median = f.median().unwrap_or(f64::INFINITY);
                f.judge("< 200 ms", median < 200_000.0);
            }
            figures.push(f);
        }
    }
    Ok(figures)
}

//! Workload 9: the one-shot CLI. `isola run hello.wasm` as a whole process
//! (the module already in its compile cache) against `wasmtime run` of the
//! same file with its cache warm: wall time from exec to exit and peak RSS,
//! for the preview1 module and the preview2 component, runs alternating.
//! Peak RSS once more with each executable dropped from the page cache
//! before its run (see [`evict_from_page_cache`] for why the two differ).

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, ensure};

use super::cache::wasmtime_cache_config;
use super::micros;
use crate::Ctx;
use crate::figure::{Figure, Series, Unit, rotation};
use crate::procfs::{evict_from_page_cache, measure};

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

/// The two command lines, owned so they can run on a blocking thread.
#[derive(Clone)]
struct Commands {
    isola: PathBuf,
    isola_cache: PathBuf,
    wasmtime: Option<PathBuf>,
    wasmtime_config: PathBuf,
    wasm: PathBuf,
}

impl Commands {
    fn command(&self, system: System) -> Result<Command> {
        Ok(match system {
            System::Isola => {
                let mut c = Command::new(&self.isola);
                c.arg("run")
                    .arg("--cache-dir")
                    .arg(&self.isola_cache)
                    .arg(&self.wasm);
                c
            }
            System::Wasmtime => {
                let mut c = Command::new(self.wasmtime.as_ref().context("no wasmtime")?);
                c.arg("run")
                    .arg("-C")
                    .arg(format!("cache-config={}", self.wasmtime_config.display()))
                    .arg(&self.wasm);
                c
            }
        })
    }

    /// The executable `system` runs.
    fn program(&self, system: System) -> Result<&PathBuf> {
        match system {
            System::Isola => Ok(&self.isola),
            System::Wasmtime => self.wasmtime.as_ref().context("no wasmtime"),
        }
    }

    /// One run: wall time (µs) and peak RSS (bytes), output checked. With
    /// `evicted`, the executable's pages leave the page cache first.
    fn timed(&self, system: System, evicted: bool) -> Result<(f64, f64)> {
        if evicted {
            evict_from_page_cache(self.program(system)?)?;
        }
        let t = measure(&self.command(system)?)?;
        ensure!(
            t.stdout == b"Hello from Isola!\n",
            "{} printed {:?}",
            system.name(),
            String::from_utf8_lossy(&t.stdout)
        );
        Ok((micros(t.wall), t.max_rss as f64))
    }
}

pub async fn run(ctx: &Ctx) -> Result<Vec<Figure>> {
    let runs = ctx.scale(100, 10);
    let evicted_runs = ctx.scale(20, 3);
    let mut systems = vec![System::Isola];
    if ctx.wasmtime.is_some() {
        systems.push(System::Wasmtime);
    }
    let wasmtime_config = wasmtime_cache_config(
        &ctx.work,
        "cache-cli-wasmtime",
        &ctx.work.join("cache-cli-wasmtime"),
    )?;
    let mut figures = Vec::new();
    for (kind, wasm) in [
        ("p1 module", ctx.guest_p1("hello")),
        ("p2 component", ctx.guest_p2("hello")),
    ] {
        let commands = Commands {
            isola: ctx.isola.clone(),
            isola_cache: ctx.work.join("cache-cli-isola"),
            wasmtime: ctx.wasmtime.clone(),
            wasmtime_config: wasmtime_config.clone(),
            wasm,
        };
        let systems2 = systems.clone();
        let mut series = tokio::task::spawn_blocking(move || -> Result<Series> {
            // Fill both caches, then warm the page cache.
            for system in &systems2 {
                for _ in 0..3 {
                    commands.timed(*system, false)?;
                }
            }
            let mut series = Series::default();
            for run in 0..runs {
                for system in rotation(&systems2, run) {
                    let (wall, rss) = commands.timed(system, false)?;
                    series.add(&format!("wall {}", system.name()), [wall]);
                    series.add(&format!("rss {}", system.name()), [rss]);
                }
            }
            // Peak RSS again with each executable read in as it runs: the
            // warm figure above also counts every cached page near a touched
            // one, which depends on how the file came into the page cache.
            for run in 0..evicted_runs {
                for system in rotation(&systems2, run) {
                    let (_, rss) = commands.timed(system, true)?;
                    series.add(&format!("evicted {}", system.name()), [rss]);
                }
            }
            Ok(series)
        })
        .await
        .context("joining the CLI runs")??;

        let wall_metric = format!("one-shot CLI, hello ({kind}): wall");
        let rss_metric = format!("one-shot CLI, hello ({kind}): peak RSS");
        let evicted_metric =
            format!("one-shot CLI, hello ({kind}): peak RSS, executable not cached");
        let mut group = Vec::new();
        for (metric, key, unit) in [
            (&wall_metric, "wall", Unit::Micros),
            (&rss_metric, "rss", Unit::Bytes),
            (&evicted_metric, "evicted", Unit::Bytes),
        ] {
            for system in [System::Isola, System::Wasmtime] {
                let mut f = Figure::new(9, metric, system.name(), unit)
                    .samples(series.take(&format!("{key} {}", system.name())));
                if system == System::Wasmtime && ctx.wasmtime.is_none() {
                    f.note = Some("skipped: no wasmtime CLI (bench/run.sh installs it)".into());
                }
                group.push(f);
            }
        }
        let wasmtime = |metric: &str| {
            group
                .iter()
                .find(|f| f.metric == metric && f.system == System::Wasmtime.name())
                .and_then(Figure::median)
        };
        let (wt_wall, wt_rss) = (wasmtime(&wall_metric), wasmtime(&rss_metric));
        for f in group.iter_mut().filter(|f| f.isola) {
            let median = f.median().unwrap_or(f64::INFINITY);
            if f.metric == wall_metric {
                if let Some(w) = wt_wall {
                    f.judge("≤ 0.8× wasmtime run", median <= 0.8 * w);
                }
            } else if f.metric == evicted_metric {
                // Compared with the warm row of its own run, not judged.
            } else if let Some(w) = wt_rss {
                f.judge("≤ wasmtime run", median <= w);
            }
        }
        figures.extend(group);
    }
    Ok(figures)
}

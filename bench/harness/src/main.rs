//! `isola-bench`: the harness behind `make bench`.
//!
//! It runs the workloads of the performance issue on Isola (thread and
//! process isolation, through the library and the `isola` binary) and on
//! the peers users already have (Node.js `worker_threads`,
//! `child_process.fork` with both serializations, Piscina, the wasmtime
//! CLI, and natively compiled Rust), prints one markdown table and writes
//! every raw sample as JSON.
//!
//! Why it is built this way:
//!
//! - **Interleaved rounds.** Cross-CPU wake-ups dominate message latency on
//!   this 2-core VM and swing several-fold with machine load, so a figure
//!   is only compared with figures taken in the same run, in alternating
//!   rounds (the order rotates each round). No number is ever taken from
//!   another run.
//! - **Peers as child processes.** Each Node peer is a small script in
//!   `bench/node/` that the harness runs once per round; it times itself
//!   (so Node's own start-up is not charged to it, except where start-up is
//!   the point) and prints its samples as JSON.
//! - **The driver runs on a runtime worker** (inside `tokio::spawn`), as a
//!   request handler of an embedding server would, on a 2-worker Tokio
//!   runtime: the "pool of 2" of the throughput workload.
//! - **`RUST_BACKTRACE=0`** is forced for this process and every child: with
//!   it set to 1 (as in this environment) every trap captures a native
//!   backtrace and costs about 3× more.

mod chart;
mod figure;
mod peers;
mod procfs;
mod profile;
mod report;
mod stats;
mod wasmgen;
mod workloads;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use isola::{CacheDir, Runner, RunnerConfig};

use crate::figure::Figure;

/// Command line of the harness. `bench/run.sh` (and so `make bench`) passes
/// the paths of everything it built or installed.
#[derive(Parser, Debug, Clone)]
#[command(name = "isola-bench")]
struct Args {
    /// The repository root (guests are found under `target/` here).
    #[arg(long, default_value = ".")]
    root: PathBuf,
    /// The release `isola` binary: the CLI under test and the worker of
    /// process tasks.
    #[arg(long, default_value = "target/release/isola")]
    isola: PathBuf,
    /// The Node.js executable.
    #[arg(long, default_value = "node")]
    node: PathBuf,
    /// The wasmtime CLI; its workloads are skipped (with a note) without it.
    #[arg(long)]
    wasmtime: Option<PathBuf>,
    /// The sha256 guest compiled natively with sha2's portable code.
    #[arg(long)]
    native_soft: Option<PathBuf>,
    /// The sha256 guest compiled natively with sha2's default backend
    /// (SHA-NI where the CPU has it).
    #[arg(long)]
    native_hw: Option<PathBuf>,
    /// Where the raw JSON results go.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// Scratch space: compile caches, the generated large module.
    #[arg(long, default_value = "target/bench-work")]
    work: PathBuf,
    /// Few rounds, for trying the harness out; the figures are not stable.
    #[arg(long)]
    quick: bool,
    /// Run only these workloads (numbers of the issue, comma-separated).
    #[arg(long, value_delimiter = ',')]
    only: Vec<u8>,
    /// Instead of the bench, run one Isola scenario in a loop for a
    /// profiler (see `profile.rs`): start-thread, start-process-cold,
    /// start-process-prestarted, throughput, throughput-call, rtt-thread.
    #[arg(long)]
    profile: Option<String>,
    /// How long `--profile` runs, in seconds.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Instead of the bench, draw the SVG charts of a saved results file
    /// (such as `bench/results/latest.json`) into `--charts-dir` and exit.
    #[arg(long, value_name = "FILE.json")]
    charts_from: Option<PathBuf>,
    /// Where the SVG charts go. Default: `charts/` under `--out`, which a
    /// run empties of the previous run's charts first; a directory given
    /// here keeps the other SVG files it has.
    #[arg(long, value_name = "DIR")]
    charts_dir: Option<PathBuf>,
}

/// Everything a workload needs: paths, tools and the round counts.
pub struct Ctx {
    /// Absolute repository root.
    pub root: PathBuf,
    /// Absolute path of the release `isola` binary.
    pub isola: PathBuf,
    /// The Node.js executable.
    pub node: PathBuf,
    /// The wasmtime CLI, if installed.
    pub wasmtime: Option<PathBuf>,
    /// Native sha256 builds: portable and hardware-accelerated.
    pub native_soft: Option<PathBuf>,
    /// See [`Ctx::native_soft`].
    pub native_hw: Option<PathBuf>,
    /// Absolute scratch directory.
    pub work: PathBuf,
    /// Whether to run the short version.
    pub quick: bool,
}

impl Ctx {
    /// `full` in a real run, `quick` with `--quick`.
    pub fn scale(&self, full: usize, quick: usize) -> usize {
        if self.quick { quick } else { full }
    }

    /// A guest built for `wasm32-wasip1` (a core module).
    pub fn guest_p1(&self, name: &str) -> PathBuf {
        self.root
            .join("target/wasm32-wasip1/guest")
            .join(format!("{name}.wasm"))
    }

    /// A guest built for `wasm32-wasip2` (a component).
    pub fn guest_p2(&self, name: &str) -> PathBuf {
        self.root
            .join("target/wasm32-wasip2/guest")
            .join(format!("{name}.wasm"))
    }

    /// A node peer script in `bench/node/`.
    pub fn node_script(&self, name: &str) -> PathBuf {
        self.root.join("bench/node").join(name)
    }

    /// A runner with the bench's own disk cache and the release worker.
    pub fn runner(&self, config: RunnerConfig) -> Result<Runner> {
        Runner::with_config(RunnerConfig {
            cache_dir: CacheDir::Path(self.work.join("runner-cache")),
            worker_program: Some(self.isola.clone()),
            ..config
        })
        .context("creating a runner")
    }
}

fn absolute(root: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_owned()
    } else {
        root.join(path)
    }
}

/// A path given on the command line, made absolute, if it names a file.
fn existing(root: &Path, path: Option<&PathBuf>, what: &str) -> Option<PathBuf> {
    let path = absolute(root, path?);
    if path.is_file() {
        Some(path)
    } else {
        eprintln!(
            "note: {what} `{}` not found; its rows are skipped",
            path.display()
        );
        None
    }
}

fn main() -> ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if argv.get(1).is_some_and(|a| a == procfs::LAUNCHER_ARG) {
        return procfs::launcher_main(&argv[2..]);
    }
    // SAFETY: nothing else runs yet (no runtime, no threads), so nothing
    // reads the environment concurrently.
    unsafe {
        std::env::set_var("RUST_BACKTRACE", "0");
        std::env::remove_var("ISOLA_LOG");
    }
    let args = Args::parse();
    match run(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(err) => {
            eprintln!("isola-bench: {err:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs the selected workloads; `Ok(false)` if any of them failed (the
/// table is still printed, with the failure in it).
fn run(args: Args) -> Result<bool> {
    let root = std::fs::canonicalize(&args.root).context("the repository root")?;
    let out = absolute(&root, &args.out);
    let charts_dir = args
        .charts_dir
        .as_ref()
        .map_or_else(|| out.join("charts"), |dir| absolute(&root, dir));
    if let Some(saved) = &args.charts_from {
        return render_saved_charts(&absolute(&root, saved), &charts_dir);
    }
    let isola = absolute(&root, &args.isola);
    anyhow::ensure!(
        isola.is_file(),
        "`{}` not found: build it with `cargo build --release -p isola-cli`",
        isola.display()
    );
    let work = absolute(&root, &args.work);
    std::fs::create_dir_all(&work).context("creating the scratch directory")?;
    let ctx = Ctx {
        isola,
        node: args.node.clone(),
        wasmtime: existing(&root, args.wasmtime.as_ref(), "wasmtime CLI"),
        native_soft: existing(&root, args.native_soft.as_ref(), "native sha256 (soft)"),
        native_hw: existing(&root, args.native_hw.as_ref(), "native sha256 (hw)"),
        work,
        quick: args.quick,
        root: root.clone(),
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the Tokio runtime")?;
    let ctx = std::sync::Arc::new(ctx);
    if let Some(scenario) = args.profile.clone() {
        let ctx2 = std::sync::Arc::clone(&ctx);
        let seconds = args.seconds;
        runtime.block_on(async move {
            tokio::spawn(async move { profile::run(&ctx2, &scenario, seconds).await }).await
        })??;
        return Ok(true);
    }
    let started = Instant::now();
    let load_at_start = report::load_average();
    let only = args.only.clone();
    let ctx2 = std::sync::Arc::clone(&ctx);
    let (figures, failures) = runtime.block_on(async move {
        // The driver runs on a worker, like a server's request handler.
        tokio::spawn(async move { workloads::run_all(&ctx2, &only).await }).await
    })?;
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    let wall = started.elapsed();

    let machine = report::Machine::detect(&ctx, load_at_start);
    let table = report::table(&figures, &failures);
    println!();
    println!("{}", machine.heading());
    println!();
    println!("{table}");
    let missed = report::missed_targets(&figures);
    if missed.is_empty() {
        println!("All measured targets met.");
    } else {
        println!("Targets missed ({}):", missed.len());
        for line in &missed {
            println!("- {line}");
        }
    }
    for failure in &failures {
        println!("- FAILED: {failure}");
    }
    println!(
        "\nWall time of the measurements: {:.0} s{}.",
        wall.as_secs_f64(),
        if ctx.quick {
            " (--quick: few rounds, figures not stable)"
        } else {
            ""
        }
    );
    let partial = !args.only.is_empty();
    let path = report::write_json(&out, &machine, &figures, &failures, &table, wall, partial)?;
    println!("Raw samples: {}", path.display());
    write_run_charts(&charts_dir, &figures, args.charts_dir.is_none());
    Ok(failures.is_empty())
}

/// `--charts-from`: the charts of a saved run, without measuring anything.
fn render_saved_charts(saved: &Path, dir: &Path) -> Result<bool> {
    let headlines = chart::headlines_from_json(saved)?;
    let written = chart::write_charts(dir, &headlines, false)?;
    println!(
        "{} charts of {} in {}",
        written.len(),
        saved.display(),
        dir.display()
    );
    Ok(true)
}

/// The charts of the run that just ended. The measurements are already
/// saved by then, so a failure here, even a panic in the plotting library,
/// is only a warning: the JSON can be charted again with `--charts-from`.
fn write_run_charts(dir: &Path, figures: &[Figure], clear_stale: bool) {
    let headlines = chart::headlines(figures);
    match std::panic::catch_unwind(|| chart::write_charts(dir, &headlines, clear_stale)) {
        Ok(Ok(written)) => println!("Charts: {} SVG files in {}", written.len(), dir.display()),
        Ok(Err(err)) => eprintln!("warning: charts not written: {err:#}"),
        Err(_) => eprintln!("warning: charts not written: the plotting code panicked"),
    }
}

/// Collects a workload's figures, or records why it failed.
pub fn collect(
    figures: &mut Vec<Figure>,
    failures: &mut Vec<String>,
    name: &str,
    result: Result<Vec<Figure>>,
) {
    match result {
        Ok(mut f) => figures.append(&mut f),
        Err(err) => {
            eprintln!("workload {name} failed: {err:#}");
            failures.push(format!("{name}: {err:#}"));
        }
    }
}

//! Workload 10: scale-out on NATS JetStream. The same set of 2,000 trivial
//! thread tasks (`hello`) through `isola up`: locally, and with `--nats`
//! through one `nats-server` on loopback to one and to three `isola worker`
//! processes, runs alternating. Tasks/s from the whole `isola up` run with
//! 64 slots; and, from a run of 200 of them one at a time (`--jobs 1`, so
//! no task waits behind another), the p50/p90 of each task's slot time
//! from its record (for a remote task: from submitting it to having its
//! result and output), whose difference from the local run's is the cost
//! the cluster adds per task.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};

use crate::Ctx;
use crate::figure::{Figure, Series, Unit, rotation};

const RATE: &str = "distributed: 2,000 trivial tasks through isola up (tasks/s)";
const P50: &str = "distributed: per-task submit-to-result time, one at a time, p50 (µs)";
const P90: &str = "distributed: per-task submit-to-result time, one at a time, p90 (µs)";
/// Slots of `isola up` for the rate; the workers' own `-j` bounds how many
/// run at once.
const JOBS: &str = "64";
/// Tasks of the latency run, one at a time.
const LATENCY_TASKS: usize = 200;

#[derive(Clone, Copy, PartialEq)]
enum System {
    Local,
    OneWorker,
    ThreeWorkers,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Local => "isola up (local)",
            System::OneWorker => "isola up --nats, 1 worker",
            System::ThreeWorkers => "isola up --nats, 3 workers",
        }
    }

    fn workers(self) -> usize {
        match self {
            System::Local => 0,
            System::OneWorker => 1,
            System::ThreeWorkers => 3,
        }
    }
}

struct Killed(Vec<Child>);

impl Drop for Killed {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn nats_server() -> Option<PathBuf> {
    [
        "/usr/sbin/nats-server",
        "/usr/bin/nats-server",
        "/usr/local/bin/nats-server",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

/// One `isola up` of the set: tasks/s, and each task's slot time (µs).
fn one_run(
    ctx: &Ctx,
    set: &Path,
    url: Option<&str>,
    n: usize,
    jobs: &str,
) -> Result<(f64, Vec<f64>)> {
    let json = set.with_extension("json");
    let mut command = Command::new(&ctx.isola);
    command
        .arg("up")
        .arg(set)
        .args(["--jobs", jobs, "--cache-dir"])
        .arg(ctx.work.join("runner-cache"))
        .arg("--json")
        .arg(&json)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(url) = url {
        command.args(["--nats", url]);
    }
    let t0 = Instant::now();
    let status = command.status().context("running isola up")?;
    let wall = t0.elapsed();
    ensure!(status.success(), "isola up ended with {status}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json)?).context("the JSON report")?;
    let tasks = report["tasks"].as_array().context("tasks")?;
    ensure!(tasks.len() == n, "{} records for {n} tasks", tasks.len());
    let times = tasks
        .iter()
        .filter_map(|t| t["wall_ms"].as_f64())
        .map(|ms| ms * 1000.0)
        .collect();
    Ok((n as f64 / wall.as_secs_f64(), times))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn run_blocking(ctx: &Ctx) -> Result<Vec<Figure>> {
    let server_bin = nats_server().context(
        "nats-server is missing (apt-get install nats-server; `make test` installs it as root)",
    )?;
    let n = ctx.scale(2_000, 500);
    let rounds = ctx.scale(3, 1);
    let dir = ctx.work.join("distributed");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("store"))?;
    let hello = ctx.guest_p1("hello");
    let write_set = |name: &str, n: usize| -> Result<PathBuf> {
        let mut toml = String::new();
        for i in 0..n {
            toml.push_str(&format!(
                "[[task]]\nname = \"t{i}\"\nwasm = \"{}\"\n",
                hello.display()
            ));
        }
        let set = dir.join(name);
        std::fs::write(&set, toml)?;
        Ok(set)
    };
    let set = write_set("tasks.toml", n)?;
    let one_by_one = write_set("latency.toml", LATENCY_TASKS)?;

    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let server = Command::new(server_bin)
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(dir.join("store"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting nats-server")?;
    let _server = Killed(vec![server]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        ensure!(Instant::now() < deadline, "nats-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let url = format!("nats://127.0.0.1:{port}");

    // Warm the compile cache (and the blob store) once.
    one_run(ctx, &set, None, n, JOBS)?;

    let systems = [System::Local, System::OneWorker, System::ThreeWorkers];
    let (mut rate, mut p50, mut p90) = (Series::default(), Series::default(), Series::default());
    for round in 0..rounds {
        for system in rotation(&systems, round) {
            let workers = Killed(
                (0..system.workers())
                    .map(|i| {
                        Command::new(&ctx.isola)
                            .args(["worker", "--nats", &url, "--name", &format!("w{i}")])
                            // Two cores here: one worker gets both, three
                            // share them.
                            .args(["-j", if system.workers() == 1 { "4" } else { "2" }])
                            .arg("--cache-dir")
                            .arg(ctx.work.join("runner-cache"))
                            .stdout(Stdio::null())
                            .stderr(Stdio::null())
                            .spawn()
                            .context("starting isola worker")
                    })
                    .collect::<Result<Vec<_>>>()?,
            );
            if system.workers() > 0 {
                // Let them connect and subscribe before the clock starts.
                std::thread::sleep(Duration::from_millis(500));
            }
            let url = (system.workers() > 0).then_some(url.as_str());
            let (per_sec, _) = one_run(ctx, &set, url, n, JOBS)?;
            let (_, mut times) = one_run(ctx, &one_by_one, url, LATENCY_TASKS, "1")?;
            drop(workers);
            times.sort_by(f64::total_cmp);
            rate.add(system.name(), [per_sec]);
            p50.add(system.name(), [percentile(&times, 0.5)]);
            p90.add(system.name(), [percentile(&times, 0.9)]);
        }
    }

    let runs = format!("{rounds} × {n} tasks, --jobs {JOBS}");
    let latency_runs = format!("{rounds} × {LATENCY_TASKS} tasks, --jobs 1");
    let mut figures = Vec::new();
    let local_p50 = p50.take(System::Local.name());
    let local_median = median(&local_p50);
    for (metric, series, unit, runs) in [
        (RATE, &mut rate, Unit::PerSec, &runs),
        (P90, &mut p90, Unit::Micros, &latency_runs),
    ] {
        for system in systems {
            figures.push(
                Figure::new(10, metric, system.name(), unit)
                    .samples(series.take(system.name()))
                    .runs(runs.clone()),
            );
        }
    }
    figures.push(
        Figure::new(10, P50, System::Local.name(), Unit::Micros)
            .samples(local_p50)
            .runs(latency_runs.clone()),
    );
    for system in [System::OneWorker, System::ThreeWorkers] {
        let mut figure = Figure::new(10, P50, system.name(), Unit::Micros)
            .samples(p50.take(system.name()))
            .runs(latency_runs.clone());
        let added = figure.median().unwrap_or(f64::MAX) - local_median;
        figure.note = Some(format!("{:.0} µs more than local", added));
        if system == System::ThreeWorkers {
            figure.judge("p50 at most 2 ms more than local", added <= 2_000.0);
        }
        figures.push(figure);
    }
    for f in figures
        .iter_mut()
        .filter(|f| f.metric == RATE && f.system == System::ThreeWorkers.name())
    {
        let median = f.median().unwrap_or(0.0);
        f.judge("≥ 2,000 tasks/s", median >= 2_000.0);
    }
    Ok(figures)
}

fn median(samples: &[f64]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    percentile(&sorted, 0.5)
}

pub async fn run(ctx: &Ctx) -> Result<Vec<Figure>> {
    // Only processes are driven here; keep them off the async workers.
    tokio::task::block_in_place(|| run_blocking(ctx))
}

//! The soak run: many tasks of mixed isolation and kind, a share of them
//! hostile, with bounded concurrency; then checks that every task ended
//! exactly once with the right outcome and that the host got back what it
//! lent (memory, file descriptors, child processes).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use isola::{
    ByteSize, CacheDir, Isolation, Limit, Outcome, Output, Program, Runner, RunnerConfig, Stream,
    TaskSpec, TrapKind,
};

use crate::matrix::Row;
use crate::procs::{children_of, open_fds, rss_bytes, wait_until, zombie_children};
use crate::{GuestKind, KINDS, expected_exit, guest, isola_bin, shared_cache};

/// How a soak run is shaped.
#[derive(Debug, Clone, Copy)]
pub struct SoakConfig {
    /// Tasks in the measured run (warm-up comes on top).
    pub tasks: usize,
    /// Most tasks alive at once.
    pub concurrency: usize,
    /// Seed of the task mix.
    pub seed: u64,
    /// Share of process tasks, 0..=1.
    pub process_share: f64,
    /// Share of hostile tasks, 0..=1.
    pub hostile_share: f64,
}

impl SoakConfig {
    /// `tasks` tasks, 16 at once, 10% process, 10% hostile; the seed from
    /// `ISOLA_SOAK_SEED` or the clock.
    pub fn new(tasks: usize) -> SoakConfig {
        SoakConfig {
            tasks,
            concurrency: 16,
            seed: std::env::var("ISOLA_SOAK_SEED")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(crate::fuzz::clock_seed),
            process_share: 0.1,
            hostile_share: 0.1,
        }
    }
}

/// What one soak task does, and so how it must end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Job {
    Hello,
    Echo,
    Sha256Empty,
    FuelLoop,
    AllocBomb,
    Unreachable,
    Flood,
    SleepTimeout,
    Exit7,
}

const BENIGN: [Job; 3] = [Job::Hello, Job::Echo, Job::Sha256Empty];
const HOSTILE: [Job; 6] = [
    Job::FuelLoop,
    Job::AllocBomb,
    Job::Unreachable,
    Job::Flood,
    Job::SleepTimeout,
    Job::Exit7,
];

const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

impl Job {
    fn program(self) -> &'static str {
        match self {
            Job::Hello => "hello",
            Job::Echo => "echo_cli",
            Job::Sha256Empty => "sha256",
            _ => "hostile",
        }
    }

    fn spec(self, i: usize, isolation: Isolation) -> TaskSpec {
        let mut spec = TaskSpec::new("ignored.wasm");
        spec.isolation = isolation;
        let args: Vec<String> = match self {
            Job::Hello => vec![],
            Job::Echo => vec!["args".into(), i.to_string()],
            Job::Sha256Empty => vec!["0".into()],
            Job::FuelLoop => vec!["loop".into()],
            Job::AllocBomb => vec!["alloc-bomb".into()],
            Job::Unreachable => vec!["unreachable".into()],
            Job::Flood => vec!["flood".into()],
            Job::SleepTimeout => vec!["sleep".into(), "60000".into()],
            Job::Exit7 => vec!["exit".into(), "7".into()],
        };
        spec.args = args;
        spec.stderr = Output::Discard;
        match self {
            Job::FuelLoop => spec.limits.fuel = Some(2_000_000),
            Job::AllocBomb => spec.limits.max_memory = ByteSize::mib(16),
            Job::Flood => {
                spec.limits.max_output = Some(ByteSize::kib(64));
                spec.stdout = Output::Discard;
            }
            Job::SleepTimeout => spec.limits.timeout = Some(Duration::from_millis(20)),
            _ => {}
        }
        // Nothing in the mix may need this; it turns a hang into a failure.
        spec.limits.timeout.get_or_insert(Duration::from_secs(60));
        spec
    }

    /// Checks a task's ending: `None` if right, else what was wrong.
    fn check(self, i: usize, kind: GuestKind, outcome: &Outcome, stdout: &str) -> Option<String> {
        let ok = match self {
            Job::Hello => outcome.is_success() && stdout == crate::faults::HELLO,
            Job::Echo => outcome.is_success() && stdout == format!("{i}\n"),
            Job::Sha256Empty => outcome.is_success() && stdout == format!("{EMPTY_SHA256}\n"),
            Job::FuelLoop => {
                *outcome
                    == Outcome::LimitExceeded {
                        limit: Limit::Fuel { budget: 2_000_000 },
                    }
            }
            Job::AllocBomb => {
                *outcome
                    == Outcome::LimitExceeded {
                        limit: Limit::Memory {
                            max: ByteSize::mib(16),
                        },
                    }
            }
            Job::Unreachable => {
                matches!(outcome, Outcome::Trapped(t) if t.kind == TrapKind::Unreachable)
            }
            Job::Flood => {
                *outcome
                    == Outcome::LimitExceeded {
                        limit: Limit::Output {
                            stream: Stream::Stdout,
                            max: ByteSize::kib(64),
                        },
                    }
            }
            Job::SleepTimeout => {
                *outcome
                    == Outcome::LimitExceeded {
                        limit: Limit::Timeout {
                            after: Duration::from_millis(20),
                        },
                    }
            }
            Job::Exit7 => {
                *outcome
                    == Outcome::Exited {
                        code: expected_exit(kind, 7),
                    }
            }
        };
        (!ok).then(|| format!("task {i} {self:?} ({kind:?}): {outcome} / {stdout:?}"))
    }
}

/// What a soak run found.
#[derive(Debug, Clone)]
pub struct SoakReport {
    /// The configuration.
    pub config: SoakConfig,
    /// Wall time of the measured run.
    pub elapsed: Duration,
    /// Tasks by isolation and whether hostile: (thread, process, hostile).
    pub mix: (usize, usize, usize),
    /// Tasks that did not end exactly once.
    pub not_once: usize,
    /// Tasks that ended wrongly, the first few described.
    pub wrong: Vec<String>,
    /// How many ended wrongly.
    pub wrong_count: usize,
    /// RSS after warm-up and after the run.
    pub rss: (u64, u64),
    /// Open fds before the runner existed and after it was dropped.
    pub fds: (usize, usize),
    /// Child processes before and after.
    pub children: (usize, usize),
    /// Zombie children left at the end.
    pub zombies: Vec<u32>,
}

impl SoakReport {
    /// Whether RSS after the run is within 10% of its level after warm-up.
    pub fn rss_ok(&self) -> bool {
        let (warm, end) = self.rss;
        end as f64 <= warm as f64 * 1.10
    }

    /// Whether every check passed.
    pub fn ok(&self) -> bool {
        self.not_once == 0
            && self.wrong_count == 0
            && self.rss_ok()
            && self.fds.1 <= self.fds.0
            && self.children.1 <= self.children.0
            && self.zombies.is_empty()
    }

    /// The report's rows.
    pub fn rows(&self) -> Vec<Row> {
        let n = self.config.tasks;
        let (thread, process, hostile) = self.mix;
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        let row = |case: String, expected: String, got: String, ok: bool| Row {
            case,
            target: "mixed".into(),
            expected,
            got,
            time_to_stop: None,
            ok,
        };
        vec![
            Row {
                case: format!(
                    "soak: {n} tasks ({thread} thread, {process} process, {hostile} hostile), {} at once",
                    self.config.concurrency
                ),
                target: "mixed".into(),
                expected: "one right outcome each".into(),
                got: if self.wrong.is_empty() && self.not_once == 0 {
                    format!("{n} right outcomes")
                } else {
                    format!(
                        "{} wrong, {} not once; first: {}",
                        self.wrong_count,
                        self.not_once,
                        self.wrong.first().map_or("-", String::as_str)
                    )
                },
                time_to_stop: Some(self.elapsed),
                ok: self.not_once == 0 && self.wrong_count == 0,
            },
            row(
                "soak: host RSS".into(),
                "within 10% of warm-up".into(),
                format!("{:.1} -> {:.1} MiB", mib(self.rss.0), mib(self.rss.1)),
                self.rss_ok(),
            ),
            row(
                "soak: open fds".into(),
                "back to start".into(),
                format!("{} -> {}", self.fds.0, self.fds.1),
                self.fds.1 <= self.fds.0,
            ),
            row(
                "soak: child processes, zombies".into(),
                "back to start, none".into(),
                format!(
                    "{} -> {}, {} zombies",
                    self.children.0,
                    self.children.1,
                    self.zombies.len()
                ),
                self.children.1 <= self.children.0 && self.zombies.is_empty(),
            ),
        ]
    }
}

/// Runs a soak. Must be the only thing the test process does meanwhile:
/// it counts the process's fds and children.
pub async fn soak(config: SoakConfig) -> SoakReport {
    let me = std::process::id();
    let fds_start = open_fds();
    let children_start = children_of(me).len();
    let mut report = {
        let runner = Runner::with_config(RunnerConfig {
            max_live_tasks: config.concurrency,
            cache_dir: CacheDir::Path(shared_cache()),
            worker_program: Some(isola_bin()),
            ..RunnerConfig::default()
        })
        .expect("runner");
        let mut programs = HashMap::new();
        for name in ["hello", "echo_cli", "sha256", "hostile"] {
            for kind in KINDS {
                let program = runner.load(guest(name, kind)).await.expect("load");
                programs.insert((name, kind), program);
            }
        }
        // Warm-up: the same mix, so allocator pools, the instance pool's
        // slots and the runtime's threads reach their working size.
        let warmup = SoakConfig {
            tasks: (config.tasks / 20).clamp(200.min(config.tasks), 5_000),
            seed: config.seed ^ 0x5eed,
            ..config
        };
        run_mix(&runner, &programs, warmup).await;
        let rss_warm = rss_bytes();
        let started = Instant::now();
        let mut report = run_mix(&runner, &programs, config).await;
        report.elapsed = started.elapsed();
        report.rss = (rss_warm, rss_bytes());
        report
    };
    // The runner is gone: idle workers see their pipes close and exit, and
    // are reaped. Wait for that, with a generous bound.
    wait_until(Duration::from_secs(20), || {
        children_of(me).len() <= children_start && open_fds() <= fds_start
    });
    report.fds = (fds_start, open_fds());
    report.children = (children_start, children_of(me).len());
    report.zombies = zombie_children();
    report
}

async fn run_mix(
    runner: &Runner,
    programs: &HashMap<(&'static str, GuestKind), Program>,
    config: SoakConfig,
) -> SoakReport {
    let mut rng = fastrand::Rng::with_seed(config.seed);
    let mut ended = vec![0u8; config.tasks];
    let mut wrong = Vec::new();
    let mut wrong_count = 0;
    let (mut thread, mut process, mut hostile) = (0, 0, 0);
    let mut running = tokio::task::JoinSet::new();
    let mut record = |done: (usize, Option<String>), ended: &mut Vec<u8>| {
        ended[done.0] = ended[done.0].saturating_add(1);
        if let Some(why) = done.1 {
            wrong_count += 1;
            if wrong.len() < 10 {
                wrong.push(why);
            }
        }
    };
    for i in 0..config.tasks {
        let job = if rng.f64() < config.hostile_share {
            hostile += 1;
            HOSTILE[rng.usize(..HOSTILE.len())]
        } else {
            BENIGN[rng.usize(..BENIGN.len())]
        };
        let isolation = if rng.f64() < config.process_share {
            process += 1;
            Isolation::Process
        } else {
            thread += 1;
            Isolation::Thread
        };
        let kind = if rng.bool() {
            GuestKind::Module
        } else {
            GuestKind::Component
        };
        let program = programs[&(job.program(), kind)].clone();
        let runner = runner.clone();
        // Bounded concurrency: the runner's slots would also bound it, but
        // waiting here keeps the number of futures (and their reports)
        // bounded too.
        while running.len() >= config.concurrency {
            if let Some(done) = running.join_next().await {
                record(done.expect("soak task"), &mut ended);
            }
        }
        running.spawn(async move {
            let outcome = match runner.spawn_program(&program, job.spec(i, isolation)).await {
                Ok(handle) => {
                    let report = handle.wait().await;
                    job.check(i, kind, &report.outcome, &report.stdout.text())
                }
                Err(err) => Some(format!("task {i} {job:?}: did not start: {err}")),
            };
            (i, outcome)
        });
    }
    while let Some(done) = running.join_next().await {
        record(done.expect("soak task"), &mut ended);
    }
    SoakReport {
        config,
        elapsed: Duration::ZERO,
        mix: (thread, process, hostile),
        not_once: ended.iter().filter(|&&n| n != 1).count(),
        wrong,
        wrong_count,
        rss: (0, 0),
        fds: (0, 0),
        children: (0, 0),
        zombies: Vec::new(),
    }
}

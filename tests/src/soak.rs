//! The soak run: many tasks of mixed isolation and kind, a share of them
//! hostile, with bounded concurrency; then checks that every task ended
//! exactly once with the right outcome, that the host got back the file
//! descriptors and child processes it lent, and that its memory levelled
//! off.
//!
//! Memory does not come back to its level after warm-up, by design: the
//! instance pool keeps part of each used slot resident (the pages a task
//! touched, zeroed in place, so the next task does not fault them back
//! in), which fills up slot by slot as tasks use them. So the RSS check is
//! a plateau, RSS at the end within [`PLATEAU`] of its level halfway
//! through, and a bound, the rise since warm-up within the documented
//! residency of warm slots ([`warm_slot_residency`]). A leak fails the
//! first; residency larger than documented fails the second.

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
    /// RSS after warm-up, halfway through the run (every task before the
    /// halfway point ended) and after the run.
    pub rss: (u64, u64, u64),
    /// Most the host's RSS may rise after warm-up because of warm instance
    /// slots: [`warm_slot_residency`] for the soak's runner.
    pub rss_bound: u64,
    /// Open fds before the runner existed and after it was dropped.
    pub fds: (usize, usize),
    /// Child processes before and after.
    pub children: (usize, usize),
    /// Zombie children left at the end.
    pub zombies: Vec<u32>,
}

/// Bytes of each linear memory a freed instance slot keeps resident (the
/// pool's `linear_memory_keep_resident`, `KEEP_RESIDENT_PER_MEMORY` in
/// host/src/loader.rs), as documented on `RunnerConfig::max_live_tasks`.
pub const KEEP_RESIDENT_PER_MEMORY: u64 = 512 << 10;

/// Tables each instance slot has room for (`total_tables` is four per
/// slot in host/src/loader.rs).
pub const TABLES_PER_SLOT: u64 = 4;

/// Bytes of each table a freed slot keeps resident (`table_keep_resident`,
/// `KEEP_RESIDENT_PER_TABLE` in host/src/loader.rs).
pub const KEEP_RESIDENT_PER_TABLE: u64 = 64 << 10;

/// A task's fiber stack (wasmtime's default `async_stack_size`): the pool
/// does not give a used stack's pages back, so each stays resident up to
/// the deepest any task has reached on it.
pub const FIBER_STACK: u64 = 2 << 20;

/// Most memory a runner with `slots` instance slots of `memories_per_task`
/// memories keeps resident for warm slots once every slot has run tasks:
/// per slot, [`KEEP_RESIDENT_PER_MEMORY`] of each memory,
/// [`KEEP_RESIDENT_PER_TABLE`] of each of its tables and its fiber stack's
/// high-water mark. It is reached slot by slot as tasks use them (and as
/// the deepest stack and the most pages touched grow), then stays: bounded
/// residency, which a soak sees as RSS rising after warm-up and levelling
/// off, not as growth.
pub fn warm_slot_residency(slots: usize, memories_per_task: u32) -> u64 {
    let per_slot = u64::from(memories_per_task) * KEEP_RESIDENT_PER_MEMORY
        + TABLES_PER_SLOT * KEEP_RESIDENT_PER_TABLE
        + FIBER_STACK;
    per_slot.saturating_mul(slots as u64)
}

/// How much RSS may still rise over the second half of a soak: 5% of its
/// level halfway. Warm slots fill up early; growth that goes on is a leak.
pub const PLATEAU: f64 = 0.05;

impl SoakReport {
    /// Whether RSS levelled off: at the end within [`PLATEAU`] of its level
    /// halfway through the run.
    pub fn rss_plateau_ok(&self) -> bool {
        let (_, half, end) = self.rss;
        end as f64 <= half as f64 * (1.0 + PLATEAU)
    }

    /// Whether RSS rose after warm-up by no more than the documented
    /// residency of warm slots ([`SoakReport::rss_bound`]).
    pub fn rss_bound_ok(&self) -> bool {
        let (warm, _, end) = self.rss;
        end.saturating_sub(warm) <= self.rss_bound
    }

    /// Whether RSS passed both checks: a plateau and the documented bound.
    pub fn rss_ok(&self) -> bool {
        self.rss_plateau_ok() && self.rss_bound_ok()
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
                "soak: host RSS levels off".into(),
                format!("end within {:.0}% of halfway", PLATEAU * 100.0),
                format!(
                    "warm {:.1}, halfway {:.1}, end {:.1} MiB ({:+.1}%)",
                    mib(self.rss.0),
                    mib(self.rss.1),
                    mib(self.rss.2),
                    (self.rss.2 as f64 / (self.rss.1.max(1)) as f64 - 1.0) * 100.0
                ),
                self.rss_plateau_ok(),
            ),
            row(
                "soak: host RSS over warm-up".into(),
                format!(
                    "at most {:.1} MiB (warm slots, {} of them)",
                    mib(self.rss_bound),
                    self.config.concurrency
                ),
                format!(
                    "{:+.1} MiB",
                    (self.rss.2 as f64 - self.rss.0 as f64) / (1 << 20) as f64
                ),
                self.rss_bound_ok(),
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
        run_mix(&runner, &programs, warmup, None).await;
        let rss_warm = rss_bytes();
        let started = Instant::now();
        let mut rss_half = 0;
        let mut report = run_mix(&runner, &programs, config, Some(&mut rss_half)).await;
        report.elapsed = started.elapsed();
        let rss_end = rss_bytes();
        // A run too short to have a halfway point measured its end only.
        if rss_half == 0 {
            rss_half = rss_end;
        }
        report.rss = (rss_warm, rss_half, rss_end);
        report.rss_bound = warm_slot_residency(
            config.concurrency,
            RunnerConfig::default().memories_per_task,
        );
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

/// Runs `config.tasks` tasks of the mix. With `rss_half`, the tasks of the
/// first half all end before the second half starts, and the host's RSS at
/// that moment is written there: measured, like the RSS at the end, with
/// no task alive.
async fn run_mix(
    runner: &Runner,
    programs: &HashMap<(&'static str, GuestKind), Program>,
    config: SoakConfig,
    mut rss_half: Option<&mut u64>,
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
        if i == config.tasks / 2
            && let Some(rss) = rss_half.as_deref_mut()
        {
            while let Some(done) = running.join_next().await {
                record(done.expect("soak task"), &mut ended);
            }
            *rss = rss_bytes();
        }
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
        rss: (0, 0, 0),
        rss_bound: 0,
        fds: (0, 0),
        children: (0, 0),
        zombies: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(rss: (u64, u64, u64), rss_bound: u64) -> SoakReport {
        SoakReport {
            config: SoakConfig {
                tasks: 100,
                concurrency: 16,
                seed: 1,
                process_share: 0.1,
                hostile_share: 0.1,
            },
            elapsed: Duration::ZERO,
            mix: (0, 0, 0),
            not_once: 0,
            wrong: Vec::new(),
            wrong_count: 0,
            rss,
            rss_bound,
            fds: (0, 0),
            children: (0, 0),
            zombies: Vec::new(),
        }
    }

    #[test]
    fn the_warm_slot_bound_counts_memories_tables_and_stacks_per_slot() {
        // 16 slots of 2 memories: 512 KiB + 512 KiB + 4 x 64 KiB + 2 MiB.
        assert_eq!(
            warm_slot_residency(16, 2),
            16 * ((1 << 20) + (256 << 10) + (2 << 20))
        );
        assert_eq!(warm_slot_residency(0, 2), 0);
    }

    #[test]
    fn rss_that_levels_off_within_the_bound_passes() {
        const MIB: u64 = 1 << 20;
        // The 100,000-task soak of issue 18 (46.3 -> 55.9 MiB): bounded
        // residency if it had levelled off by halfway.
        let levelled = report((46 * MIB, 55 * MIB, 56 * MIB), 52 * MIB);
        assert!(levelled.rss_plateau_ok() && levelled.rss_bound_ok());
        // Still climbing over the second half: a leak, whatever the bound.
        let climbing = report((46 * MIB, 50 * MIB, 56 * MIB), 52 * MIB);
        assert!(!climbing.rss_plateau_ok());
        // Levelled off, but higher than warm slots explain.
        let too_high = report((46 * MIB, 120 * MIB, 120 * MIB), 52 * MIB);
        assert!(too_high.rss_plateau_ok() && !too_high.rss_bound_ok());
        assert!(!too_high.rss_ok());
    }
}

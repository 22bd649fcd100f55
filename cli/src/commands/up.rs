//! `isola up`: runs a task set, like `docker compose up`: task output with
//! the task's name in front, a live progress line on a terminal, and a
//! summary table at the end.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use clap::Args;
use isola::config::TaskSet;
use isola::taskset::{Event, EventSink, Histogram, Scheduler, SetReport, TaskRecord, TaskStatus};
use isola::{ByteSize, CacheDir, Runner, RunnerConfig, Stream};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::sync::CancellationToken;

use super::check::{clean, plural, print_errors};
use crate::exit;

const UP_HELP: &str = "\
Exit codes:
  0    every task succeeded
  1    a task failed, was cancelled or was skipped
  2    the task set is invalid (see `isola check`), or --json could not be written
  125  Isola itself failed
  130  interrupted (Ctrl-C); the summary still shows every task

Ctrl-C cancels the running tasks and prints the summary; a second Ctrl-C
exits at once.";

/// Run a task set (tasks.toml), at most --jobs tasks at once.
///
/// Every task runs in its own sandbox, at its own isolation level, after
/// the tasks it depends on succeeded. Task output is shown line by line with the task's name in front. On a
/// terminal a progress line shows how many tasks are queued, running, done
/// and failed; otherwise the output is plain text with no control codes. At
/// the end a summary table shows how each task ended.
#[derive(Args)]
#[command(after_help = UP_HELP)]
pub struct UpCommand {
    /// The task set: a tasks.toml file.
    config: PathBuf,

    /// Most tasks running at once. Default: the number of CPU cores.
    #[arg(long, short = 'j', value_name = "N", value_parser = parse_jobs)]
    jobs: Option<usize>,

    /// On the first failure, cancel the running tasks and skip the rest.
    #[arg(long)]
    fail_fast: bool,

    /// Also write the results (every task's record and the pool's metrics)
    /// as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,

    /// Also print each task's wait, start-up and run time, and the pool's
    /// wait and run time histograms and utilization.
    #[arg(long)]
    metrics: bool,

    /// Directory for precompiled artifacts. Default: $ISOLA_CACHE_DIR, else
    /// the user's cache directory (~/.cache/isola).
    #[arg(long, value_name = "DIR", conflicts_with = "no_cache")]
    cache_dir: Option<PathBuf>,

    /// Do not read or write the on-disk compile cache.
    #[arg(long)]
    no_cache: bool,
}

fn parse_jobs(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(err) => Err(err.to_string()),
    }
}

impl UpCommand {
    pub async fn execute(self) -> u8 {
        let set = match TaskSet::load(&self.config) {
            Ok(set) => set,
            Err(errors) => {
                print_errors(&errors);
                return exit::USAGE;
            }
        };
        let jobs = self.jobs.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
        });
        let runner = match Runner::with_config(RunnerConfig {
            // The scheduler never runs more than `jobs` tasks; a pool of
            // that size keeps the address space reserved small. Past the
            // default, spawns wait for a free instance instead.
            max_live_tasks: jobs.min(RunnerConfig::default().max_live_tasks),
            cache_dir: match (&self.cache_dir, self.no_cache) {
                (_, true) => CacheDir::Disabled,
                (Some(dir), false) => CacheDir::Path(dir.clone()),
                (None, false) => CacheDir::Default,
            },
            ..RunnerConfig::default()
        }) {
            Ok(runner) => runner,
            Err(err) => {
                eprintln!("error: {err}");
                return exit::for_error(&err);
            }
        };

        let console = Arc::new(Console::new(&set));
        let scheduler = Scheduler::new(runner)
            .jobs(jobs)
            .fail_fast(self.fail_fast)
            .sink(ConsoleSink(Arc::clone(&console)));

        // Registered before any task starts, so an early Ctrl-C is never
        // lost to the default handler (which would kill us without a
        // summary).
        let interrupts = match signal(SignalKind::interrupt()) {
            Ok(interrupts) => interrupts,
            Err(err) => {
                eprintln!("error: cannot watch for Ctrl-C: {err}");
                return exit::INTERNAL;
            }
        };
        let shutdown = CancellationToken::new();
        let signals = tokio::spawn(watch_ctrl_c(
            interrupts,
            shutdown.clone(),
            Arc::clone(&console),
        ));
        let ticker = console.tty.then(|| {
            let console = Arc::clone(&console);
            tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_millis(100));
                loop {
                    every.tick().await;
                    console.redraw();
                }
            })
        });

        let report = scheduler.run_until(&set, shutdown.cancelled()).await;

        if let Some(ticker) = ticker {
            ticker.abort();
        }
        signals.abort();
        console.finish();
        print_summary(&console, &report);
        if self.metrics {
            print_metrics(&console, &report);
        }

        let mut code = if shutdown.is_cancelled() {
            exit::CANCELLED
        } else if report.succeeded() {
            exit::SUCCESS
        } else {
            FAILED
        };
        if let Some(path) = &self.json {
            let written = report
                .to_json()
                .map_err(std::io::Error::other)
                .and_then(|json| std::fs::write(path, json + "\n"));
            if let Err(err) = written {
                eprintln!("error: cannot write `{}`: {err}", path.display());
                if code == exit::SUCCESS {
                    code = exit::USAGE;
                }
            }
        }
        code
    }
}

/// Exit code when a task did not succeed.
const FAILED: u8 = 1;

/// First Ctrl-C: stop the set (the summary is still printed). Second:
/// leave at once.
async fn watch_ctrl_c(mut interrupts: Signal, shutdown: CancellationToken, console: Arc<Console>) {
    if interrupts.recv().await.is_none() {
        return;
    }
    console.notice("stopping: cancelling running tasks (press Ctrl-C again to exit at once)");
    shutdown.cancel();
    if interrupts.recv().await.is_some() {
        console.finish();
        std::process::exit(i32::from(exit::CANCELLED));
    }
}

/// Name colors, one per task in turn. Red is kept for failures.
const PALETTE: &[&str] = &["36", "33", "32", "35", "34", "96", "93", "92", "95", "94"];

/// Everything `isola up` prints while the set runs, on stdout. On a
/// terminal the last line is a progress line, redrawn under each new line
/// of output.
struct Console {
    tty: bool,
    color: bool,
    /// Longest task name, so the `|` after the names line up.
    width: usize,
    colors: HashMap<String, &'static str>,
    start: Instant,
    state: Mutex<Progress>,
}

#[derive(Default)]
struct Progress {
    total: usize,
    running: usize,
    succeeded: usize,
    failed: usize,
    skipped: usize,
    /// Whether the progress line is on screen (and must be cleared first).
    shown: bool,
    /// No progress line any more: the summary is being printed.
    finished: bool,
}

impl Console {
    fn new(set: &TaskSet) -> Console {
        let tty = std::io::stdout().is_terminal();
        // https://no-color.org: any non-empty value turns colors off.
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Console {
            tty,
            color: tty && !no_color,
            width: set.tasks().iter().map(|t| t.name.len()).max().unwrap_or(0),
            colors: set
                .tasks()
                .iter()
                .enumerate()
                .map(|(i, t)| (t.name.clone(), PALETTE[i % PALETTE.len()]))
                .collect(),
            start: Instant::now(),
            state: Mutex::new(Progress {
                total: set.len(),
                ..Progress::default()
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Progress> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `text` in the SGR style `code`, when colors are on.
    fn paint(&self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }

    fn name(&self, task: &str) -> String {
        let padded = format!("{task:<width$}", width = self.width);
        let code = self.colors.get(task).copied().unwrap_or("0");
        self.paint(code, &padded)
    }

    /// Prints whole lines above the progress line.
    fn lines(&self, state: &mut Progress, text: &str) {
        let mut out = std::io::stdout().lock();
        if state.shown {
            let _ = out.write_all(b"\r\x1b[2K");
            state.shown = false;
        }
        let _ = writeln!(out, "{text}");
        if self.tty && !state.finished {
            let _ = out.write_all(self.progress(state).as_bytes());
            state.shown = true;
        }
        let _ = out.flush();
    }

    fn progress(&self, state: &Progress) -> String {
        let done = state.succeeded + state.failed + state.skipped;
        let queued = state.total.saturating_sub(done + state.running);
        let mut line = format!(
            "[{}] {queued} queued, {} running, {} done",
            fmt_duration(self.start.elapsed()),
            state.running,
            state.succeeded,
        );
        let failed = format!(", {} failed", state.failed);
        line.push_str(&if state.failed > 0 {
            self.paint("1;31", &failed)
        } else {
            failed
        });
        if state.skipped > 0 {
            line.push_str(&format!(", {} skipped", state.skipped));
        }
        self.paint("2", &line)
    }

    /// Redraws the progress line (for the elapsed time).
    fn redraw(&self) {
        let mut state = self.lock();
        if !self.tty || state.finished {
            return;
        }
        let mut out = std::io::stdout().lock();
        let _ = write!(out, "\r\x1b[2K{}", self.progress(&state));
        let _ = out.flush();
        state.shown = true;
    }

    /// A line from Isola itself.
    fn notice(&self, text: &str) {
        let mut state = self.lock();
        let text = self.paint("1", &format!("isola: {text}"));
        self.lines(&mut state, &text);
    }

    /// Takes the progress line away for good.
    fn finish(&self) {
        let mut state = self.lock();
        if state.shown {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(b"\r\x1b[2K");
            let _ = out.flush();
            state.shown = false;
        }
        state.finished = true;
    }

    fn event(&self, event: &Event<'_>) {
        let mut state = self.lock();
        let text = match event {
            Event::Output { task, stream, line } => {
                // Like `docker compose`, both streams share the `|`; on a
                // terminal stderr's is red so it still stands out.
                let bar = match stream {
                    Stream::Stdout => self.paint("2", "|"),
                    Stream::Stderr => self.paint("31", "|"),
                };
                format!("{} {bar} {}", self.name(task), clean(line))
            }
            Event::Started {
                task,
                isolation,
                attempt: 1,
            } => {
                state.running += 1;
                let what = format!("started ({isolation})");
                format!("{} {}", self.name(task), self.paint("2", &what))
            }
            Event::Restarting {
                task,
                attempt,
                crash,
            } => {
                let what = format!(
                    "{}; restarting (attempt {attempt})",
                    clean(&crash.to_string())
                );
                format!("{} {}", self.name(task), self.paint("33", &what))
            }
            Event::Finished { record } => {
                if record.attempts > 0 {
                    state.running = state.running.saturating_sub(1);
                }
                match record.status {
                    TaskStatus::Succeeded => state.succeeded += 1,
                    TaskStatus::Failed | TaskStatus::Cancelled => state.failed += 1,
                    TaskStatus::Skipped => state.skipped += 1,
                }
                self.finished_line(record)
            }
            _ => return,
        };
        self.lines(&mut state, &text);
    }

    fn finished_line(&self, record: &TaskRecord) -> String {
        let name = self.name(&record.name);
        let wall = record
            .wall_time
            .map(|d| format!(" in {}", fmt_duration(d)))
            .unwrap_or_default();
        let what = clean(&record.describe()).into_owned();
        match record.status {
            TaskStatus::Succeeded => {
                format!("{name} {}", self.paint("32", &format!("{what}{wall}")))
            }
            TaskStatus::Failed => format!(
                "{name} {}",
                self.paint("1;31", &format!("failed: {what}{wall}"))
            ),
            TaskStatus::Cancelled => {
                format!("{name} {}", self.paint("33", &format!("cancelled{wall}")))
            }
            // `describe` already says "skipped: ...".
            TaskStatus::Skipped => format!("{name} {}", self.paint("2", &what)),
        }
    }
}

struct ConsoleSink(Arc<Console>);

impl EventSink for ConsoleSink {
    fn event(&self, event: &Event<'_>) {
        self.0.event(event);
    }
}

/// The table at the end: one row per task, then the failures spelled out.
fn print_summary(console: &Console, report: &SetReport) {
    const OUTCOME_WIDTH: usize = 44;
    let header = [
        "TASK",
        "ISOLATION",
        "STATUS",
        "OUTCOME",
        "EXIT",
        "WALL",
        "PEAK MEM",
        "FUEL",
    ];
    let rows: Vec<[String; 8]> = report
        .tasks
        .iter()
        .map(|t| {
            let status = match t.status {
                TaskStatus::Succeeded => "ok",
                TaskStatus::Failed => "FAILED",
                TaskStatus::Cancelled => "CANCELLED",
                TaskStatus::Skipped => "SKIPPED",
            };
            let ran = t.attempts > 0 && t.start_error.is_none();
            // A process task whose worker never reported (a crash, a kill
            // after a timeout or cancel) has zeros that were not measured:
            // say so rather than print them as if they were.
            let metric = |measured: String| match (ran, t.metrics_known) {
                (false, _) => "-".to_owned(),
                (true, false) => "unknown".to_owned(),
                (true, true) => measured,
            };
            [
                t.name.clone(),
                t.isolation.to_string(),
                status.into(),
                // The status column already says "SKIPPED": give the reason.
                truncate(
                    &clean(
                        &t.skip_reason
                            .as_ref()
                            .map_or_else(|| t.describe(), ToString::to_string),
                    ),
                    OUTCOME_WIDTH,
                ),
                t.exit_code.map_or_else(|| "-".into(), |c| c.to_string()),
                t.wall_time.map_or_else(|| "-".into(), fmt_duration),
                metric(ByteSize(t.peak_memory).to_string()),
                metric(t.fuel_used.to_string()),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    // Numbers are right-aligned.
    let right = [false, false, false, false, true, true, true, true];
    let format_row = |cells: &[String]| {
        let mut line = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let pad = widths[i].saturating_sub(cell.chars().count());
            if i > 0 {
                line.push_str("  ");
            }
            if right[i] {
                line.push_str(&" ".repeat(pad));
                line.push_str(cell);
            } else {
                line.push_str(cell);
                if i + 1 < cells.len() {
                    line.push_str(&" ".repeat(pad));
                }
            }
        }
        line
    };

    let mut out = std::io::stdout().lock();
    let _ = writeln!(out);
    let head: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    let _ = writeln!(out, "{}", console.paint("1", &format_row(&head)));
    for (row, task) in rows.iter().zip(&report.tasks) {
        let line = format_row(row);
        let line = match task.status {
            TaskStatus::Succeeded => line,
            TaskStatus::Failed => console.paint("31", &line),
            TaskStatus::Cancelled => console.paint("33", &line),
            TaskStatus::Skipped => console.paint("2", &line),
        };
        let _ = writeln!(out, "{line}");
    }

    let counts = report.counts();
    let mut parts = vec![format!("{} succeeded", counts.succeeded)];
    if counts.failed > 0 {
        parts.push(format!("{} failed", counts.failed));
    }
    if counts.cancelled > 0 {
        parts.push(format!("{} cancelled", counts.cancelled));
    }
    if counts.skipped > 0 {
        parts.push(format!("{} skipped", counts.skipped));
    }
    let _ = writeln!(
        out,
        "\n{}: {} in {}",
        plural(report.tasks.len(), "task"),
        parts.join(", "),
        fmt_duration(report.pool.wall_time)
    );
    let failures: Vec<&TaskRecord> = report.failures().collect();
    if !failures.is_empty() {
        let _ = writeln!(out, "{}", console.paint("1;31", "not succeeded:"));
        for task in failures {
            let _ = writeln!(
                out,
                "  {}: {}",
                console.paint("1", &task.name),
                clean(&task.describe())
            );
        }
    }
    let _ = out.flush();
}

/// `--metrics`: per-task timings, then the pool.
fn print_metrics(console: &Console, report: &SetReport) {
    let mut out = std::io::stdout().lock();
    let width = report
        .tasks
        .iter()
        .map(|t| t.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{}",
        console.paint(
            "1",
            &format!(
                "{:<width$}  {:>9}  {:>9}  {:>9}  {:>9}  {:>8}",
                "TASK", "WAIT", "STARTUP", "RUN", "WALL", "ATTEMPTS"
            )
        )
    );
    let opt = |d: Option<Duration>| d.map_or_else(|| "-".into(), fmt_duration);
    for t in &report.tasks {
        let ran = t.outcome.is_some();
        let _ = writeln!(
            out,
            "{:<width$}  {:>9}  {:>9}  {:>9}  {:>9}  {:>8}",
            t.name,
            opt(t.wait_time),
            if ran {
                fmt_duration(t.startup)
            } else {
                "-".into()
            },
            if ran {
                fmt_duration(t.run_time)
            } else {
                "-".into()
            },
            opt(t.wall_time),
            t.attempts,
        );
    }
    let pool = &report.pool;
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "pool: {} jobs, at most {} running, wall {}, busy {}, utilization {:.0}%",
        pool.jobs,
        pool.max_running,
        fmt_duration(pool.wall_time),
        fmt_duration(pool.busy_time),
        pool.utilization * 100.0
    );
    let _ = writeln!(
        out,
        "{}",
        console.paint(
            "1",
            &format!(
                "{:<9}  {:>5}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}",
                "", "COUNT", "MIN", "MEAN", "P50", "P90", "P99", "MAX"
            )
        )
    );
    for (label, h) in [("wait time", &pool.wait_time), ("run time", &pool.run_time)] {
        let _ = writeln!(out, "{}", histogram_row(label, h));
    }
    let _ = out.flush();
}

fn histogram_row(label: &str, h: &Histogram) -> String {
    format!(
        "{label:<9}  {:>5}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}",
        h.count,
        fmt_duration(h.min),
        fmt_duration(h.mean),
        fmt_duration(h.p50),
        fmt_duration(h.p90),
        fmt_duration(h.p99),
        fmt_duration(h.max)
    )
}

/// `0.4ms`, `12.3ms`, `1.52s`, `2m05s`.
fn fmt_duration(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 1.0 {
        format!("{:.1}ms", secs * 1000.0)
    } else if secs < 60.0 {
        format!("{secs:.2}s")
    } else {
        let whole = d.as_secs();
        format!("{}m{:02}s", whole / 60, whole % 60)
    }
}

/// At most `max` characters, with `...` when cut.
fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let kept: String = text.chars().take(max.saturating_sub(3)).collect();
    format!("{kept}...")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(fmt_duration(Duration::from_micros(400)), "0.4ms");
        assert_eq!(fmt_duration(Duration::from_micros(12_340)), "12.3ms");
        assert_eq!(fmt_duration(Duration::from_millis(1520)), "1.52s");
        assert_eq!(fmt_duration(Duration::from_secs(125)), "2m05s");
    }

    #[test]
    fn truncation_marks_the_cut() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("abcdefghijkl", 8), "abcde...");
    }
}

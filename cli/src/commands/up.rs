//! `isola up`: runs a task set, like `docker compose up`: task output with
//! the task's name in front, a live progress line on a terminal, and a
//! summary table at the end.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anstyle::{AnsiColor, Style};
use clap::Args;
use isola::config::TaskSet;

use super::common::{NatsArgs, SandboxArg};
use isola::taskset::{
    Event, EventSink, Histogram, Scheduler, SetReport, TaskRecord, TaskStatus, html, timeline,
};
use isola::{ByteSize, CacheDir, Limit, Outcome, Runner, RunnerConfig, Stream};
use tokio_util::sync::CancellationToken;

use super::check::{clean, plural, print_errors};
use crate::exit;
use crate::signals::{Signals, Termination};

const UP_HELP: &str = "\
Exit codes:
  0    every task succeeded
  1    a task failed, was cancelled or was skipped
  2    the task set is invalid (see `isola check`), or --json cannot be written
  125  Isola itself failed
  129  stopped by SIGHUP (128 + 1)
  130  stopped by SIGINT, Ctrl-C (128 + 2)
  141  stopped because Isola's output was closed (128 + SIGPIPE)
  143  stopped by SIGTERM (128 + 15)

Ctrl-C, SIGTERM and SIGHUP cancel the running tasks, print the summary and
write --json; a second signal exits at once. When the reader of Isola's
output goes away (`isola up tasks.toml | head`), the set is cancelled the
same way, quietly.

Colors follow --color, else NO_COLOR, CLICOLOR_FORCE, CLICOLOR and TERM
(no colors when TERM=dumb).";

/// Run a task set (tasks.toml), at most --jobs tasks at once.
///
/// Every task runs in its own sandbox, at its own isolation level, after
/// the tasks it depends on succeeded. Task output is shown line by line
/// with the task's name in front. On a terminal a progress line shows how
/// many tasks are queued, running, done and failed; otherwise the output
/// is plain text with no control codes. At the end a summary table shows
/// how each task ended.
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
    /// as JSON to FILE; `-` writes them to stdout, and everything else
    /// `isola up` prints then goes to stderr. FILE must be writable before
    /// any task runs.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,

    /// Also print each task's wait, start-up and run time, and the pool's
    /// wait and run time histograms and utilization.
    #[arg(long)]
    metrics: bool,

    /// Also write the run as a timeline to FILE, in Chrome's trace-event
    /// JSON (open it in https://ui.perfetto.dev or chrome://tracing): one
    /// track per slot and per worker process, each task split into wait,
    /// start-up and run. FILE must be writable before any task runs.
    #[arg(long, value_name = "FILE")]
    timeline: Option<PathBuf>,

    /// Also write a self-contained HTML report to FILE: the run as a Gantt
    /// chart, the sortable summary table, each failure with the tail of
    /// its stderr, and the wait and run time distributions. FILE must be
    /// writable before any task runs.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,

    /// Serve Prometheus metrics over HTTP at ADDR (for example
    /// 127.0.0.1:9464; scrape http://ADDR/metrics) while the set runs:
    /// tasks started and ended by isolation and outcome, their times,
    /// slots, worker processes, the compile cache and messages.
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,

    /// When to color the output: `auto` on a terminal that supports it
    /// (NO_COLOR, CLICOLOR_FORCE, CLICOLOR and TERM=dumb are honoured).
    #[arg(long, value_enum, value_name = "WHEN", default_value_t = ColorWhen::Auto)]
    color: ColorWhen,

    /// Directory for precompiled artifacts. Default: $ISOLA_CACHE_DIR, else
    /// the user's cache directory (~/.cache/isola).
    #[arg(long, value_name = "DIR", conflicts_with = "no_cache")]
    cache_dir: Option<PathBuf>,

    /// Do not read or write the on-disk compile cache.
    #[arg(long)]
    no_cache: bool,

    /// The OS sandbox around process tasks' workers (seccomp allowlist,
    /// Landlock file rules, a network namespace): `on` uses every layer the
    /// kernel has, `off` none, `required` refuses to run a task where a
    /// layer is missing. For tasks that set no `sandbox` of their own (in
    /// the task or in [defaults]).
    #[arg(long, value_enum, value_name = "POLICY", default_value_t = SandboxArg::On)]
    sandbox: SandboxArg,

    /// Run the tasks on `isola worker`s instead of here, through the NATS
    /// JetStream server at URL (nats://host:4222). The set's order, --jobs
    /// bound, output, summary and --json are the same; each record also
    /// names the worker that ran the task. Modules, directories and stdin
    /// files are sent to the workers, and what a task changes in a
    /// writable directory comes back here. See README, "Running across
    /// machines".
    #[arg(long, value_name = "URL")]
    nats: Option<String>,

    #[command(flatten)]
    nats_args: NatsArgs,
}

/// `--color`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ColorWhen {
    /// On a terminal that supports colors, unless the environment says no.
    Auto,
    /// Always, even into a pipe or file.
    Always,
    /// Never.
    Never,
}

fn parse_jobs(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(err) => Err(err.to_string()),
    }
}

/// Where `--json` goes.
enum JsonTo {
    Stdout,
    File(PathBuf),
}

impl UpCommand {
    pub async fn execute(self) -> u8 {
        // Before any task starts, so an early signal is never lost to the
        // default action (which would end us without a summary).
        let mut signals = match Signals::watch_for_command() {
            Ok(signals) => signals,
            Err(code) => return code,
        };
        // Flags first: a bad one is named before the set is read.
        let nats = match &self.nats {
            None => None,
            Some(url) => match self.nats_args.options(url, "isola up") {
                Ok(options) => Some((url, options)),
                Err(err) => {
                    say!("error: {err}");
                    return exit::USAGE;
                }
            },
        };
        let set = match TaskSet::load(&self.config) {
            Ok(set) => set,
            Err(errors) => {
                print_errors(&errors);
                return exit::USAGE;
            }
        };
        // Refused before anything runs: a set's results are not lost to a
        // path that cannot take them.
        let json = match &self.json {
            None => None,
            Some(path) if path.as_os_str() == "-" => Some(JsonTo::Stdout),
            Some(path) => match check_writable(path) {
                Ok(()) => Some(JsonTo::File(path.clone())),
                Err(err) => {
                    let path = path.display().to_string();
                    say!("error: --json {}: cannot write it: {err}", clean(&path));
                    return exit::USAGE;
                }
            },
        };
        let mut files = Vec::new();
        for (flag, path, kind) in [
            ("--timeline", &self.timeline, FileKind::Timeline),
            ("--report", &self.report, FileKind::Report),
        ] {
            let Some(path) = path else { continue };
            if let Err(err) = check_writable(path) {
                let path = path.display().to_string();
                say!("error: {flag} {}: cannot write it: {err}", clean(&path));
                return exit::USAGE;
            }
            files.push((path.clone(), kind));
        }
        if let Some(addr) = self.metrics_addr
            && let Err(err) = serve_metrics(addr)
        {
            say!("error: --metrics-addr {addr}: {err}");
            return exit::USAGE;
        }
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
            sandbox: self.sandbox.into(),
            ..RunnerConfig::default()
        }) {
            Ok(runner) => runner,
            Err(err) => {
                say!("error: {err}");
                return exit::for_error(&err);
            }
        };

        let cluster = match nats {
            None => None,
            Some((url, options)) => match isola_cluster::Cluster::connect(&options).await {
                Ok(cluster) => Some(cluster),
                Err(err) => {
                    say!("error: --nats {}: {err}", clean(url));
                    return exit::INTERNAL;
                }
            },
        };

        let shutdown = CancellationToken::new();
        let to_stderr = matches!(json, Some(JsonTo::Stdout));
        let console = Arc::new(Console::new(&set, self.color, to_stderr, shutdown.clone()));
        let mut scheduler = Scheduler::new(runner)
            .jobs(jobs)
            .fail_fast(self.fail_fast)
            .sink(ConsoleSink(Arc::clone(&console)));
        if let Some(cluster) = &cluster {
            scheduler = scheduler.launcher(cluster.clone());
        }

        let stopped_by: Arc<Mutex<Option<Termination>>> = Arc::default();
        let watcher = {
            let (console, shutdown, stopped_by) = (
                Arc::clone(&console),
                shutdown.clone(),
                Arc::clone(&stopped_by),
            );
            tokio::spawn(async move {
                let Some(first) = signals.next().await else {
                    return;
                };
                *stopped_by.lock().unwrap_or_else(|e| e.into_inner()) = Some(first);
                let again = match first {
                    Termination::Interrupt => "press Ctrl-C again to exit at once".to_owned(),
                    other => format!("{}; a second signal exits at once", other.name()),
                };
                console.notice(&format!("stopping: cancelling running tasks ({again})"));
                shutdown.cancel();
                if let Some(second) = signals.next().await {
                    console.finish();
                    std::process::exit(i32::from(second.exit_code()));
                }
            })
        };
        let ticker = console.live.then(|| {
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
        if let Some(cluster) = &cluster {
            // Nothing of this run is left queued or running on the workers.
            cluster.close().await;
        }

        if let Some(ticker) = ticker {
            ticker.abort();
        }
        watcher.abort();
        console.finish();
        print_summary(&console, &report);
        if self.metrics {
            print_metrics(&console, &report);
        }

        let signal = *stopped_by.lock().unwrap_or_else(|e| e.into_inner());
        let mut code = if let Some(signal) = signal {
            signal.exit_code()
        } else if console.is_closed() {
            exit::BROKEN_PIPE
        } else if report.succeeded() {
            exit::SUCCESS
        } else {
            FAILED
        };
        for (path, kind) in files {
            let text = match kind {
                FileKind::Timeline => {
                    let mut text = timeline::chrome_trace(&report).to_string();
                    text.push('\n');
                    text
                }
                FileKind::Report => html::html_report(&report, &report_title(&self.config)),
            };
            if let Err(err) = std::fs::write(&path, text) {
                let path = path.display().to_string();
                say!("error: cannot write `{}`: {err}", clean(&path));
                if code == exit::SUCCESS {
                    code = exit::USAGE;
                }
            }
        }
        if let Some(json) = json {
            let written = json_report(&report).and_then(|text| match &json {
                JsonTo::File(path) => std::fs::write(path, text),
                JsonTo::Stdout => {
                    let mut out = std::io::stdout().lock();
                    out.write_all(text.as_bytes()).and_then(|()| out.flush())
                }
            });
            match (written, &json) {
                (Ok(()), _) => {}
                // Whoever wanted the JSON on stdout stopped reading it.
                (Err(err), JsonTo::Stdout) if err.kind() == std::io::ErrorKind::BrokenPipe => {
                    if code == exit::SUCCESS || code == FAILED {
                        code = exit::BROKEN_PIPE;
                    }
                }
                (Err(err), JsonTo::Stdout) => {
                    say!("error: cannot write the JSON report to stdout: {err}");
                    if code == exit::SUCCESS {
                        code = exit::USAGE;
                    }
                }
                (Err(err), JsonTo::File(path)) => {
                    let path = path.display().to_string();
                    say!("error: cannot write `{}`: {err}", clean(&path));
                    if code == exit::SUCCESS {
                        code = exit::USAGE;
                    }
                }
            }
        }
        code
    }
}

/// Exit code when a task did not succeed.
const FAILED: u8 = 1;

/// A file written after the run, besides `--json`.
#[derive(Clone, Copy)]
enum FileKind {
    /// `--timeline`.
    Timeline,
    /// `--report`.
    Report,
}

/// The HTML report's title: the set's file name.
fn report_title(config: &Path) -> String {
    let name = config.file_name().map_or_else(
        || config.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    format!("isola up {name}")
}

/// Histogram buckets of the `_seconds` metrics, in seconds: from 100 µs (a
/// warm thread task's start) to a minute.
const SECONDS_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

/// Installs the Prometheus exporter as the process's metrics recorder,
/// listening on `addr` from now until the process exits.
fn serve_metrics(addr: std::net::SocketAddr) -> Result<(), String> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(SECONDS_BUCKETS)
        .map_err(|err| err.to_string())?
        .with_http_listener(addr)
        .install()
        .map_err(|err| match err {
            metrics_exporter_prometheus::BuildError::FailedToCreateHTTPListener(why) => {
                format!("cannot listen there: {why}")
            }
            other => other.to_string(),
        })?;
    isola::telemetry::enable();
    Ok(())
}

/// Whether `path` can take the JSON report: an existing file must open for
/// writing (it is not changed now), a new one must be creatable (it is
/// created and removed again).
fn check_writable(path: &Path) -> std::io::Result<()> {
    match std::fs::OpenOptions::new().append(true).open(path) {
        Ok(_) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            std::fs::File::create_new(path)?;
            std::fs::remove_file(path)
        }
        Err(err) => Err(err),
    }
}

/// The report as JSON, ending with a newline.
fn json_report(report: &SetReport) -> std::io::Result<String> {
    let mut text = report.to_json().map_err(std::io::Error::other)?;
    text.push('\n');
    Ok(text)
}

/// Name colors, one per task in turn. Red is kept for failures.
const PALETTE: &[AnsiColor] = &[
    AnsiColor::Cyan,
    AnsiColor::Yellow,
    AnsiColor::Green,
    AnsiColor::Magenta,
    AnsiColor::Blue,
    AnsiColor::BrightCyan,
    AnsiColor::BrightYellow,
    AnsiColor::BrightGreen,
    AnsiColor::BrightMagenta,
    AnsiColor::BrightBlue,
];

const DIM: Style = Style::new().dimmed();
const BOLD: Style = Style::new().bold();
const RED: Style = Style::new().fg_color(Some(anstyle::Color::Ansi(AnsiColor::Red)));
const BOLD_RED: Style = RED.bold();
const GREEN: Style = Style::new().fg_color(Some(anstyle::Color::Ansi(AnsiColor::Green)));
const YELLOW: Style = Style::new().fg_color(Some(anstyle::Color::Ansi(AnsiColor::Yellow)));

/// Everything `isola up` prints while the set runs: on stdout, or on
/// stderr when stdout carries the JSON report (`--json -`). On a terminal
/// the last line is a progress line, redrawn under each new line of output
/// and cut to the terminal's width, so it never wraps.
///
/// When the reader of that stream goes away (`isola up ... | head`), the
/// console stops writing and cancels the set, once, quietly.
struct Console {
    /// Whether the live progress line is drawn: on a terminal that can
    /// move the cursor (not TERM=dumb).
    live: bool,
    color: bool,
    /// Print on stderr instead of stdout.
    to_stderr: bool,
    /// Longest task name, so the `|` after the names line up.
    width: usize,
    styles: HashMap<String, Style>,
    start: Instant,
    state: Mutex<Progress>,
    /// The stream's reader went away: nothing more is written.
    closed: AtomicBool,
    /// Stops the set (when the stream closes).
    shutdown: CancellationToken,
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

/// Clears the line the cursor is on (carriage return, erase line).
const CLEAR_LINE: &str = "\r\x1b[2K";

impl Console {
    fn new(
        set: &TaskSet,
        when: ColorWhen,
        to_stderr: bool,
        shutdown: CancellationToken,
    ) -> Console {
        let (tty, auto) = if to_stderr {
            (
                std::io::stderr().is_terminal(),
                anstream::AutoStream::choice(&std::io::stderr()),
            )
        } else {
            (
                std::io::stdout().is_terminal(),
                anstream::AutoStream::choice(&std::io::stdout()),
            )
        };
        let dumb = std::env::var_os("TERM").is_some_and(|term| term == "dumb");
        // anstream reads NO_COLOR, CLICOLOR_FORCE, CLICOLOR and TERM, but it
        // also turns colors on for any terminal when `CI` is set, even a
        // dumb one: TERM=dumb is a promise about the terminal, so only
        // CLICOLOR_FORCE overrides it.
        let forced = std::env::var_os("CLICOLOR_FORCE").is_some_and(|v| !v.is_empty() && v != "0");
        let color = match when {
            ColorWhen::Always => true,
            ColorWhen::Never => false,
            ColorWhen::Auto => auto != anstream::ColorChoice::Never && (!dumb || forced),
        };
        Console {
            live: tty && !dumb,
            color,
            to_stderr,
            width: set.tasks().iter().map(|t| t.name.len()).max().unwrap_or(0),
            styles: set
                .tasks()
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    let color = anstyle::Color::Ansi(PALETTE[i % PALETTE.len()]);
                    (t.name.clone(), Style::new().fg_color(Some(color)))
                })
                .collect(),
            start: Instant::now(),
            state: Mutex::new(Progress {
                total: set.len(),
                ..Progress::default()
            }),
            closed: AtomicBool::new(false),
            shutdown,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Progress> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the console's reader went away.
    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Writes `text` now (flushed, so a partial line shows too). A reader
    /// that went away closes the console and cancels the set; nothing is
    /// written after that, and nothing is said (there is nobody to read
    /// it).
    fn emit(&self, text: &str) {
        if self.is_closed() || text.is_empty() {
            return;
        }
        let written = if self.to_stderr {
            let mut out = std::io::stderr().lock();
            out.write_all(text.as_bytes()).and_then(|()| out.flush())
        } else {
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes()).and_then(|()| out.flush())
        };
        let reader_gone = written.is_err_and(|err| {
            matches!(
                err.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            )
        });
        if reader_gone && !self.closed.swap(true, Ordering::Relaxed) {
            self.shutdown.cancel();
        }
    }

    /// `text` in `style`, when colors are on.
    fn paint(&self, style: Style, text: &str) -> String {
        if self.color {
            format!("{}{text}{}", style.render(), style.render_reset())
        } else {
            text.to_owned()
        }
    }

    fn name(&self, task: &str) -> String {
        let padded = format!("{task:<width$}", width = self.width);
        let style = self.styles.get(task).copied().unwrap_or_default();
        self.paint(style, &padded)
    }

    /// Prints whole lines above the progress line.
    fn lines(&self, state: &mut Progress, text: &str) {
        let mut out = String::new();
        if state.shown {
            out.push_str(CLEAR_LINE);
            state.shown = false;
        }
        out.push_str(text);
        out.push('\n');
        if self.live && !state.finished {
            out.push_str(&self.progress(state));
            state.shown = true;
        }
        self.emit(&out);
    }

    /// The terminal's width in columns, if the console is on one.
    fn columns(&self) -> Option<usize> {
        let size = if self.to_stderr {
            terminal_size::terminal_size_of(std::io::stderr())
        } else {
            terminal_size::terminal_size_of(std::io::stdout())
        };
        size.map(|(terminal_size::Width(w), _)| usize::from(w))
    }

    /// The progress line, cut to one column less than the terminal's width
    /// (a line that reaches the last column wraps on some terminals).
    fn progress(&self, state: &Progress) -> String {
        let done = state.succeeded + state.failed + state.skipped;
        let queued = state.total.saturating_sub(done + state.running);
        let mut parts = vec![
            (
                format!(
                    "[{}] {queued} queued, {} running, {} done",
                    fmt_duration(self.start.elapsed()),
                    state.running,
                    state.succeeded,
                ),
                DIM,
            ),
            (
                format!(", {} failed", state.failed),
                if state.failed > 0 { BOLD_RED } else { DIM },
            ),
        ];
        if state.skipped > 0 {
            parts.push((format!(", {} skipped", state.skipped), DIM));
        }
        let mut room = self.columns().map_or(usize::MAX, |w| w.saturating_sub(1));
        let mut line = String::new();
        for (text, style) in parts {
            if room == 0 {
                break;
            }
            let kept: String = text.chars().take(room).collect();
            room -= kept.chars().count();
            line.push_str(&self.paint(style, &kept));
        }
        line
    }

    /// Redraws the progress line (for the elapsed time).
    fn redraw(&self) {
        let mut state = self.lock();
        if !self.live || state.finished {
            return;
        }
        self.emit(&format!("{CLEAR_LINE}{}", self.progress(&state)));
        state.shown = true;
    }

    /// A line from Isola itself.
    fn notice(&self, text: &str) {
        let mut state = self.lock();
        let text = self.paint(BOLD, &format!("isola: {text}"));
        self.lines(&mut state, &text);
    }

    /// Takes the progress line away for good.
    fn finish(&self) {
        let mut state = self.lock();
        if state.shown {
            self.emit(CLEAR_LINE);
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
                    Stream::Stdout => self.paint(DIM, "|"),
                    Stream::Stderr => self.paint(RED, "|"),
                };
                format!("{} {bar} {}", self.name(task), guest_text(line))
            }
            Event::Started {
                task,
                isolation,
                attempt: 1,
                ..
            } => {
                state.running += 1;
                let what = format!("started ({isolation})");
                format!("{} {}", self.name(task), self.paint(DIM, &what))
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
                format!("{} {}", self.name(task), self.paint(YELLOW, &what))
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
                format!("{name} {}", self.paint(GREEN, &format!("{what}{wall}")))
            }
            TaskStatus::Failed => format!(
                "{name} {}",
                self.paint(BOLD_RED, &format!("failed: {what}{wall}"))
            ),
            TaskStatus::Cancelled => {
                format!("{name} {}", self.paint(YELLOW, &format!("cancelled{wall}")))
            }
            // `describe` already says "skipped: ...".
            TaskStatus::Skipped => format!("{name} {}", self.paint(DIM, &what)),
        }
    }
}

/// A line of guest output as the console shows it: escape sequences (the
/// guest's own colors, cursor moves, screen clears) removed, other control
/// characters escaped, so a guest cannot draw on the user's terminal.
fn guest_text(line: &str) -> String {
    let stripped = anstream::adapter::strip_str(line).to_string();
    clean(&stripped).into_owned()
}

struct ConsoleSink(Arc<Console>);

impl EventSink for ConsoleSink {
    fn event(&self, event: &Event<'_>) {
        self.0.event(event);
    }
}

/// The timeout a task ended at, when its wall time (start-up included)
/// reads longer than that timeout.
fn timed_out_past_startup(task: &TaskRecord) -> Option<Duration> {
    let Some(Outcome::LimitExceeded {
        limit: Limit::Timeout { after },
    }) = &task.outcome
    else {
        return None;
    };
    task.wall_time
        .is_some_and(|wall| wall > *after)
        .then_some(*after)
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
                metric(grouped(t.fuel_used)),
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

    let mut out = String::from("\n");
    let head: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    out.push_str(&console.paint(BOLD, &format_row(&head)));
    out.push('\n');
    for (row, task) in rows.iter().zip(&report.tasks) {
        let line = format_row(row);
        let line = match task.status {
            TaskStatus::Succeeded => line,
            TaskStatus::Failed => console.paint(RED, &line),
            TaskStatus::Cancelled => console.paint(YELLOW, &line),
            TaskStatus::Skipped => console.paint(DIM, &line),
        };
        out.push_str(&line);
        out.push('\n');
    }
    // A timeout counts from the guest's first instruction; WALL is the
    // task's whole slot time, so it can read longer than the timeout.
    if let Some((task, after)) = report
        .tasks
        .iter()
        .find_map(|t| timed_out_past_startup(t).map(|after| (t, after)))
    {
        out.push_str(&console.paint(
            DIM,
            &format!(
                "note: WALL includes start-up (loading, compiling, instantiating), which a \
                 timeout does not count: `{}` ran for its {} after {} of start-up",
                task.name,
                fmt_duration(after),
                fmt_duration(task.startup),
            ),
        ));
        out.push('\n');
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
    out.push_str(&format!(
        "\n{}: {} in {}\n",
        plural(report.tasks.len(), "task"),
        parts.join(", "),
        fmt_duration(report.pool.wall_time)
    ));
    let failures: Vec<&TaskRecord> = report.failures().collect();
    if !failures.is_empty() {
        out.push_str(&console.paint(BOLD_RED, "not succeeded:"));
        out.push('\n');
        for task in failures {
            out.push_str(&format!(
                "  {}: {}\n",
                console.paint(BOLD, &task.name),
                clean(&task.describe())
            ));
        }
    }
    console.emit(&out);
}

/// `--metrics`: per-task timings, then the pool.
fn print_metrics(console: &Console, report: &SetReport) {
    use std::fmt::Write as _;
    let mut out = String::new();
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
            BOLD,
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
            BOLD,
            &format!(
                "{:<9}  {:>5}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}",
                "", "COUNT", "MIN", "MEAN", "P50", "P90", "P99", "MAX"
            )
        )
    );
    for (label, h) in [("wait time", &pool.wait_time), ("run time", &pool.run_time)] {
        let _ = writeln!(out, "{}", histogram_row(label, h));
    }
    console.emit(&out);
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

/// A count with its thousands grouped: `2,877,838,814`.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
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

    #[test]
    fn large_counts_are_grouped() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1000), "1,000");
        assert_eq!(grouped(2_877_838_814), "2,877,838,814");
        assert_eq!(grouped(u64::MAX), "18,446,744,073,709,551,615");
    }

    #[test]
    fn guest_escapes_are_stripped() {
        assert_eq!(guest_text("\u{1b}[31mred\u{1b}[0m text"), "red text");
        assert_eq!(guest_text("\u{1b}[2Jcleared?"), "cleared?");
        assert_eq!(guest_text("tab\there"), "tab\there");
        // What is not an escape sequence is still made harmless.
        assert!(!guest_text("a\u{7}b").contains('\u{7}'));
    }
}

//! The output: one markdown table, the list of missed targets, and the raw
//! samples as JSON under `bench/results/`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::Ctx;
use crate::figure::{Better, Figure, Unit};

/// What the table was measured on: a table is only meaningful with it.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// Logical CPUs.
    pub nproc: usize,
    /// `model name` from `/proc/cpuinfo`.
    pub cpu: String,
    /// Total memory in bytes.
    pub memory: u64,
    /// Kernel release.
    pub kernel: String,
    /// UTC date, `YYYY-MM-DD`.
    pub date: String,
    /// UTC time of the run (seconds since the epoch).
    pub unix_time: u64,
    /// `node --version`.
    pub node: String,
    /// `wasmtime --version`, if installed.
    pub wasmtime: Option<String>,
    /// `git describe` of the repository.
    pub commit: String,
    /// 1-minute load average when the run started and when it ended: other
    /// work on the machine shows here (and in the p90s).
    pub load: (f64, f64),
}

/// The 1-minute load average.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(f64::NAN)
}

fn first_line(command: &mut Command) -> Option<String> {
    let out = command.output().ok()?;
    out.status.success().then(|| {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned()
    })
}

/// Civil date of a day count since 1970-01-01 (Howard Hinnant's algorithm),
/// to avoid a date crate for one label.
fn civil_date(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

impl Machine {
    /// Reads the machine's description.
    pub fn detect(ctx: &Ctx, load_at_start: f64) -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_else(|| "unknown CPU".into());
        let memory = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.split_whitespace().next())
                    .and_then(|v| v.parse::<u64>().ok())
            })
            .unwrap_or(0)
            * 1024;
        let unix_time = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let (y, m, d) = civil_date((unix_time / 86_400) as i64);
        Machine {
            nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu,
            memory,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_owned(),
            date: format!("{y:04}-{m:02}-{d:02}"),
            unix_time,
            node: first_line(Command::new(&ctx.node).arg("--version")).unwrap_or_default(),
            wasmtime: ctx
                .wasmtime
                .as_ref()
                .and_then(|w| first_line(Command::new(w).arg("--version"))),
            commit: first_line(
                Command::new("git")
                    .arg("-C")
                    .arg(&ctx.root)
                    .args(["describe", "--always", "--dirty"]),
            )
            .unwrap_or_default(),
            load: (load_at_start, load_average()),
        }
    }

    /// The line that labels the table.
    pub fn heading(&self) -> String {
        format!(
            "Measured {} on {} × {} ({:.0} GiB), Linux {}, Node {}, {}, isola {}; \
             load average {:.1} at the start, {:.1} at the end.",
            self.date,
            self.nproc,
            self.cpu,
            self.memory as f64 / f64::from(1u32 << 30),
            self.kernel,
            self.node,
            self.wasmtime.as_deref().unwrap_or("no wasmtime CLI"),
            self.commit,
            self.load.0,
            self.load.1
        )
    }
}

/// A value in its unit, three significant figures or so.
pub fn format_value(value: f64, unit: Unit) -> String {
    if !value.is_finite() {
        return "—".into();
    }
    match unit {
        Unit::Micros if value < 1_000.0 => format!("{value:.1} µs"),
        Unit::Micros if value < 1_000_000.0 => format!("{:.2} ms", value / 1e3),
        Unit::Micros => format!("{:.2} s", value / 1e6),
        Unit::PerSec if value >= 1_000.0 => format!("{:.1}k/s", value / 1e3),
        Unit::PerSec => format!("{value:.0}/s"),
        Unit::Bytes if value.abs() < 1024.0 * 1024.0 => format!("{:.1} KiB", value / 1024.0),
        Unit::Bytes if value.abs() < 1024.0 * 1024.0 * 1024.0 => {
            format!("{:.1} MiB", value / 1024.0 / 1024.0)
        }
        Unit::Bytes => format!("{:.2} GiB", value / 1024.0 / 1024.0 / 1024.0),
        Unit::Count => thousands(value.round() as u64),
    }
}

/// `20000` → `20,000`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The best peer (non-Isola figure with samples) of `figure`'s metric, of
/// the same class when `figure` has one and some peer shares it.
fn best_peer<'a>(figures: &'a [Figure], figure: &Figure) -> Option<(&'a Figure, f64)> {
    let peers = || {
        figures
            .iter()
            .filter(|f| !f.isola && f.workload == figure.workload && f.metric == figure.metric)
    };
    let same_class = figure.class.is_some() && peers().any(|f| f.class == figure.class);
    peers()
        .filter(|f| !same_class || f.class == figure.class)
        .filter_map(|f| f.median().map(|m| (f, m)))
        .reduce(|a, b| {
            let b_better = match figure.better {
                Better::Lower => b.1 < a.1,
                Better::Higher => b.1 > a.1,
            };
            if b_better { b } else { a }
        })
}

/// Escapes a cell for a markdown table.
fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}

/// The one markdown table of the run.
pub fn table(figures: &[Figure], failures: &[String]) -> String {
    let mut out = String::new();
    out.push_str(
        "| # | metric | system | median | p90 | runs | Isola ÷ best peer | target | notes |\n",
    );
    out.push_str("|---|---|---|--:|--:|--:|---|---|---|\n");
    let mut last: Option<(u8, &str)> = None;
    for f in figures {
        let s = f.summary();
        let first = last != Some((f.workload, f.metric.as_str()));
        last = Some((f.workload, f.metric.as_str()));
        let (median, p90) = if s.n == 0 {
            ("—".to_owned(), "—".to_owned())
        } else {
            (format_value(s.median, f.unit), format_value(s.p90, f.unit))
        };
        let runs = match (&f.runs, s.n) {
            (_, 0) => "—".to_owned(),
            (Some(r), _) => r.clone(),
            (None, n) => thousands(n as u64),
        };
        let ratio = match (f.isola, f.median(), best_peer(figures, f)) {
            (true, Some(m), Some((peer, p))) if p != 0.0 => {
                format!("{} vs {}", format_ratio(m / p), peer.system)
            }
            _ => String::new(),
        };
        let target = f
            .target
            .as_ref()
            .map(|t| format!("{}: {}", t.goal, if t.met { "met" } else { "**MISSED**" }))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            if first {
                f.workload.to_string()
            } else {
                String::new()
            },
            if first {
                cell(&f.metric)
            } else {
                String::new()
            },
            cell(&f.system),
            median,
            p90,
            runs,
            cell(&ratio),
            cell(&target),
            cell(f.note.as_deref().unwrap_or_default()),
        );
    }
    for failure in failures {
        let _ = writeln!(
            out,
            "| ! | workload failed | | | | | | | {} |",
            cell(failure)
        );
    }
    out.push_str(
        "\nmedian and p90 over all runs of the row (p90: the worse side, so the 10th percentile \
         of a throughput); Isola ÷ best peer compares medians: below 1 is better for times and \
         sizes, above 1 for throughput.",
    );
    out
}

fn format_ratio(r: f64) -> String {
    if !(0.01..100.0).contains(&r) {
        format!("{r:.1e}×")
    } else if r >= 10.0 {
        format!("{r:.0}×")
    } else {
        format!("{r:.2}×")
    }
}

/// One line per missed target.
pub fn missed_targets(figures: &[Figure]) -> Vec<String> {
    figures
        .iter()
        .filter_map(|f| {
            let t = f.target.as_ref()?;
            (!t.met).then(|| {
                let value = f
                    .median()
                    .map(|m| format_value(m, f.unit))
                    .unwrap_or_else(|| "no figure".into());
                format!(
                    "workload {} · {} · {}: {} (median {value})",
                    f.workload, f.metric, f.system, t.goal
                )
            })
        })
        .collect()
}

#[derive(Serialize)]
struct JsonFigure<'a> {
    #[serde(flatten)]
    figure: &'a Figure,
    median: Option<f64>,
    p90: Option<f64>,
}

#[derive(Serialize)]
struct JsonReport<'a> {
    machine: &'a Machine,
    wall_seconds: f64,
    figures: Vec<JsonFigure<'a>>,
    failures: &'a [String],
    table: &'a str,
}

/// Writes `bench-<unix time>.json` and `latest.json` into `dir`.
pub fn write_json(
    dir: &Path,
    machine: &Machine,
    figures: &[Figure],
    failures: &[String],
    table: &str,
    wall: Duration,
    partial: bool,
) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let report = JsonReport {
        machine,
        wall_seconds: wall.as_secs_f64(),
        figures: figures
            .iter()
            .map(|f| {
                let s = f.summary();
                JsonFigure {
                    figure: f,
                    median: (s.n > 0).then_some(s.median),
                    p90: (s.n > 0).then_some(s.p90),
                }
            })
            .collect(),
        failures,
        table,
    };
    let json = serde_json::to_vec_pretty(&report).context("encoding the results")?;
    let path = dir.join(format!("bench-{}.json", machine.unix_time));
    std::fs::write(&path, &json).with_context(|| format!("writing {}", path.display()))?;
    // `latest.json` feeds the README's charts, which need every workload:
    // a run of some (`--only`) does not replace it.
    if !partial {
        std::fs::write(dir.join("latest.json"), &json).context("writing latest.json")?;
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::figure::Class;

    #[test]
    fn formats() {
        assert_eq!(format_value(12.34, Unit::Micros), "12.3 µs");
        assert_eq!(format_value(1_234.0, Unit::Micros), "1.23 ms");
        assert_eq!(format_value(2_500_000.0, Unit::Micros), "2.50 s");
        assert_eq!(format_value(123_456.0, Unit::PerSec), "123.5k/s");
        assert_eq!(format_value(64.0 * 1024.0, Unit::Bytes), "64.0 KiB");
        assert_eq!(
            format_value(12.5 * 1024.0 * 1024.0, Unit::Bytes),
            "12.5 MiB"
        );
        assert_eq!(format_value(50_000.0, Unit::Count), "50,000");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000_000), "1,000,000");
    }

    #[test]
    fn dates() {
        assert_eq!(civil_date(0), (1970, 1, 1));
        assert_eq!(civil_date(19_723), (2024, 1, 1));
        assert_eq!(civil_date(11_016), (2000, 2, 29));
    }

    #[test]
    fn ratio_against_best_peer() {
        let f = |sys: &str, v: f64| Figure::new(1, "m", sys, Unit::Micros).samples(vec![v]);
        let figures = vec![
            f("Isola thread", 10.0),
            f("Node a", 40.0),
            f("Node b", 20.0),
        ];
        let (peer, m) = best_peer(&figures, &figures[0]).expect("a peer");
        assert_eq!((peer.system.as_str(), m), ("Node b", 20.0));
        let t = table(&figures, &[]);
        assert!(t.contains("0.50× vs Node b"), "{t}");

        let figures = vec![
            f("Isola process", 10.0).class(Class::Process),
            f("Node worker", 5.0).class(Class::Thread),
            f("Node fork", 20.0).class(Class::Process),
        ];
        let (peer, _) = best_peer(&figures, &figures[0]).expect("a peer");
        assert_eq!(peer.system, "Node fork");
    }
}

//! SVG charts of a run: one horizontal bar chart per metric (the median of
//! every system measured on it) and an overview of Isola against the best
//! peer of each metric.
//!
//! They are drawn from [`Headline`]s, which come either from the figures of
//! the run that just finished or from a saved results file, so the README's
//! charts can be redrawn from `bench/results/latest.json` without measuring
//! again.
//!
//! plotters is built without a font feature: its SVG backend writes
//! `<text>` elements that the browser lays out, and plotters only needs a
//! rough estimate of their extent to place axis labels.

use std::collections::HashSet;
use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use plotters::coord::Shift;
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint, Ranged};
use plotters::prelude::{
    BLACK, ChartBuilder, Color, DrawingArea, IntoDrawingArea, IntoFont, PathElement, RGBColor,
    Rectangle, SVGBackend, WHITE,
};
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::Deserialize;

use crate::figure::{Better, Class, Figure, Unit};
use crate::report::format_value;

/// Isola's bars.
const ISOLA_COLOR: RGBColor = RGBColor(37, 99, 235);
/// The peers' bars.
const PEER_COLOR: RGBColor = RGBColor(230, 140, 50);
/// Half a bar's thickness, in rows.
const BAR_HALF: f64 = 0.32;
/// Pixels budgeted per character of a label. The browser lays the text
/// out, so this is an estimate: a sans-serif font at the label size
/// averages a little less (plotters' own estimate is 5.9).
const CHAR_PX: u32 = 6;
/// Room left of a label area's text, in pixels.
const LABEL_PAD: u32 = 24;
/// A linear axis ends this far beyond the largest bar, so its value label
/// fits to the right of it.
const LINEAR_HEADROOM: f64 = 1.3;
/// The same for a log axis of one metric (a factor, so at least a decade).
const LOG_HEADROOM: f64 = 10.0;
/// The overview's value labels also name the peer, so they need more room.
const OVERVIEW_HEADROOM: f64 = 100.0;
/// Above this ratio between the largest and smallest bar, small bars would
/// be invisible on a linear axis.
const LOG_SCALE_RATIO: f64 = 20.0;

/// A system's headline number on one metric: what one bar shows.
///
/// Deserializes from a figure of a saved results file (its other fields,
/// the samples among them, are ignored).
#[derive(Debug, Clone, Deserialize)]
pub struct Headline {
    /// Workload number in the issue.
    pub workload: u8,
    /// What is measured; the bars of one chart share it.
    pub metric: String,
    /// Who was measured.
    pub system: String,
    /// Whether `system` is Isola.
    pub isola: bool,
    /// Unit of the median.
    pub unit: Unit,
    /// Direction of "better".
    pub better: Better,
    /// Thread-like or process-like, when the workload has both (as the
    /// field `class` of [`Figure`]).
    #[serde(default)]
    pub class: Option<Class>,
    /// The median of the samples (for a throughput, the median rate);
    /// `None` when there were none.
    #[serde(default)]
    pub median: Option<f64>,
}

/// One SVG file to write.
#[derive(Debug, Clone)]
pub struct Chart {
    /// File name: `w<workload>-<metric>.svg` or `overview.svg`.
    pub file_name: String,
    /// The SVG document.
    pub svg: String,
}

/// The headlines of a run's figures.
pub fn headlines(figures: &[Figure]) -> Vec<Headline> {
    figures
        .iter()
        .map(|f| Headline {
            workload: f.workload,
            metric: f.metric.clone(),
            system: f.system.clone(),
            isola: f.isola,
            unit: f.unit,
            better: f.better,
            class: f.class,
            median: f.median(),
        })
        .collect()
}

/// The headlines of a results file written by a run (`bench/results/*.json`).
pub fn headlines_from_json(path: &Path) -> Result<Vec<Headline>> {
    let json = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    parse_saved(&json).with_context(|| format!("reading the figures of {}", path.display()))
}

/// The part of a results file the charts need.
#[derive(Deserialize)]
struct SavedRun {
    figures: Vec<Headline>,
}

fn parse_saved(json: &[u8]) -> Result<Vec<Headline>> {
    let run: SavedRun = serde_json::from_slice(json)?;
    Ok(run.figures)
}

/// Draws every chart and writes them into `dir` (created if missing).
/// With `clear_stale`, other `.svg` files in `dir` are removed, so the
/// directory only ever shows one run. Returns the paths written.
pub fn write_charts(dir: &Path, headlines: &[Headline], clear_stale: bool) -> Result<Vec<PathBuf>> {
    let charts = render_all(headlines)?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = Vec::with_capacity(charts.len());
    for chart in &charts {
        let path = dir.join(&chart.file_name);
        std::fs::write(&path, &chart.svg).with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    if clear_stale {
        remove_other_svgs(dir, &written)?;
    }
    Ok(written)
}

fn remove_other_svgs(dir: &Path, keep: &[PathBuf]) -> Result<()> {
    let listing = std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))?;
    for entry in listing {
        let path = entry
            .with_context(|| format!("listing {}", dir.display()))?
            .path();
        if path.extension().is_some_and(|ext| ext == "svg") && !keep.contains(&path) {
            std::fs::remove_file(&path)
                .with_context(|| format!("removing the stale {}", path.display()))?;
        }
    }
    Ok(())
}

/// One chart per metric, in the order of the table, then the overview
/// (when some Isola figure has a peer to compare with).
pub fn render_all(headlines: &[Headline]) -> Result<Vec<Chart>> {
    let groups = groups(headlines);
    let mut charts = Vec::with_capacity(groups.len() + 1);
    let mut names = HashSet::new();
    for group in &groups {
        let metric = slug(group.metric);
        let base = format!(
            "w{}-{}",
            group.workload,
            if metric.is_empty() {
                "metric"
            } else {
                metric.as_str()
            }
        );
        // Two metrics of a workload could read alike once slugged; a
        // suffix keeps both charts.
        let mut name = base.clone();
        let mut n = 2;
        while !names.insert(name.clone()) {
            name = format!("{base}-{n}");
            n += 1;
        }
        let file_name = format!("{name}.svg");
        let svg = render(&metric_chart(group)).with_context(|| format!("drawing {file_name}"))?;
        charts.push(Chart { file_name, svg });
    }
    if let Some(spec) = overview_chart(&groups) {
        charts.push(Chart {
            file_name: "overview.svg".into(),
            svg: render(&spec).context("drawing overview.svg")?,
        });
    }
    Ok(charts)
}

/// The headlines of one metric, in the order they came.
struct Group<'a> {
    workload: u8,
    metric: &'a str,
    unit: Unit,
    better: Better,
    entries: Vec<&'a Headline>,
}

fn groups(headlines: &[Headline]) -> Vec<Group<'_>> {
    let mut groups: Vec<Group<'_>> = Vec::new();
    for h in headlines {
        match groups
            .iter_mut()
            .find(|g| g.workload == h.workload && g.metric == h.metric.as_str())
        {
            Some(group) => group.entries.push(h),
            None => groups.push(Group {
                workload: h.workload,
                metric: &h.metric,
                unit: h.unit,
                better: h.better,
                entries: vec![h],
            }),
        }
    }
    groups
}

/// A value that can be drawn on a log axis and divided by.
fn positive(value: Option<f64>) -> Option<f64> {
    value.filter(|v| v.is_finite() && *v > 0.0)
}

fn is_better(better: Better, value: f64, than: f64) -> bool {
    match better {
        Better::Lower => value < than,
        Better::Higher => value > than,
    }
}

/// The best peer of `own`'s metric, as the table's ratio column picks it:
/// of `own`'s class when some peer shares it (a process task is compared
/// with forked children, not with worker threads).
fn best_peer<'a>(group: &Group<'a>, own: &Headline) -> Option<(&'a Headline, f64)> {
    let peers = || group.entries.iter().copied().filter(|e| !e.isola);
    let same_class = own.class.is_some() && peers().any(|e| e.class == own.class);
    peers()
        .filter(|e| !same_class || e.class == own.class)
        .filter_map(|e| positive(e.median).map(|m| (e, m)))
        .reduce(|a, b| {
            if is_better(own.better, b.1, a.1) {
                b
            } else {
                a
            }
        })
}

/// File-name form of a metric: lowercase ASCII words joined by `-`.
fn slug(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    // Cut at a word boundary. Only ASCII was pushed, so any byte length is
    // a character boundary; keeping one byte more tells whether the cut
    // falls right before a `-`.
    const MAX: usize = 48;
    if out.len() > MAX {
        out.truncate(MAX + 1);
        let cut = out.rfind('-').unwrap_or(MAX);
        out.truncate(cut);
    }
    while out.ends_with('-') {
        out.pop();
    }
    out
}

/// `text` cut to `max` characters, with an ellipsis when cut.
fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Axis units for a metric whose largest value is `max` (in the figure's
/// own unit): the divisor and the unit's name.
fn display_unit(unit: Unit, max: f64) -> (f64, &'static str) {
    const KIB: f64 = 1024.0;
    const MIB: f64 = KIB * 1024.0;
    const GIB: f64 = MIB * 1024.0;
    match unit {
        Unit::Micros if max < 1e3 => (1.0, "µs"),
        Unit::Micros if max < 1e6 => (1e3, "ms"),
        Unit::Micros => (1e6, "s"),
        Unit::PerSec if max >= 1e4 => (1e3, "thousand tasks/s"),
        Unit::PerSec => (1.0, "tasks/s"),
        Unit::Bytes if max < MIB => (KIB, "KiB"),
        Unit::Bytes if max < GIB => (MIB, "MiB"),
        Unit::Bytes => (GIB, "GiB"),
        Unit::Count if max >= 1e4 => (1e3, "thousand tasks"),
        Unit::Count => (1.0, "tasks"),
    }
}

/// Whether bars of these values need a log axis: their largest and
/// smallest positive values are more than [`LOG_SCALE_RATIO`] apart.
fn use_log_scale(values: &[f64]) -> bool {
    let mut positive = values.iter().copied().filter(|v| v.is_finite() && *v > 0.0);
    let Some(first) = positive.next() else {
        return false;
    };
    let (min, max) = positive.fold((first, first), |(lo, hi), v| (lo.min(v), hi.max(v)));
    max / min > LOG_SCALE_RATIO
}

/// The value axis of one metric's chart, in display units.
fn value_axis(values: &[f64]) -> ValueAxis {
    let positive: Vec<f64> = values
        .iter()
        .copied()
        .filter(|v| v.is_finite() && *v > 0.0)
        .collect();
    let max = positive.iter().copied().fold(0.0, f64::max);
    if use_log_scale(&positive) {
        let min = positive.iter().copied().fold(f64::INFINITY, f64::min);
        ValueAxis::log(min / 2.0, max * LOG_HEADROOM)
    } else {
        ValueAxis::linear(max * LINEAR_HEADROOM)
    }
}

/// A number for a tick label: three significant figures, no trailing
/// zeros.
fn tick_text(value: f64) -> String {
    if value == 0.0 || !value.is_finite() {
        return "0".into();
    }
    let decimals = (2 - value.abs().log10().floor() as i32).clamp(0, 9) as usize;
    let text = format!("{value:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        text
    }
}

/// A speed-up factor for a label.
fn ratio_text(ratio: f64) -> String {
    if ratio >= 100.0 {
        format!("{ratio:.0}×")
    } else if ratio >= 10.0 {
        format!("{ratio:.1}×")
    } else if ratio >= 0.01 {
        format!("{ratio:.2}×")
    } else {
        format!("{ratio:.1e}×")
    }
}

/// The horizontal axis: linear from 0, or logarithmic over whole decades.
/// A plotters coordinate of its own, so both kinds are one type and the
/// ticks of a log axis fall on powers of ten.
#[derive(Debug, Clone)]
struct ValueAxis {
    lo: f64,
    hi: f64,
    log: bool,
    /// Labelled ticks, with a bold grid line.
    major: Vec<f64>,
    /// Light grid lines between them.
    minor: Vec<f64>,
}

impl ValueAxis {
    /// From 0 to a round number at or above `top`.
    fn linear(top: f64) -> ValueAxis {
        let top = if top.is_finite() && top > 0.0 {
            top
        } else {
            1.0
        };
        let step = nice_step(top / 5.0);
        let steps = (top / step).ceil().max(1.0) as usize;
        ValueAxis {
            lo: 0.0,
            hi: steps as f64 * step,
            log: false,
            major: (0..=steps).map(|k| k as f64 * step).collect(),
            minor: (0..steps).map(|k| (k as f64 + 0.5) * step).collect(),
        }
    }

    /// From the power of ten at or below `low` to the one at or above
    /// `high` (both positive).
    fn log(low: f64, high: f64) -> ValueAxis {
        let exponent = |v: f64, round: fn(f64) -> f64| {
            if v.is_finite() && v > 0.0 {
                (round(v.log10()) as i32).clamp(-30, 30)
            } else {
                0
            }
        };
        let lo_exp = exponent(low, f64::floor);
        let hi_exp = exponent(high, f64::ceil).max(lo_exp + 1);
        let decade = |k: i32| 10f64.powi(k);
        ValueAxis {
            lo: decade(lo_exp),
            hi: decade(hi_exp),
            log: true,
            major: (lo_exp..=hi_exp).map(decade).collect(),
            minor: (lo_exp..hi_exp)
                .flat_map(|k| (2_i32..=9).map(move |m| f64::from(m) * decade(k)))
                .collect(),
        }
    }

    /// Whether a bar of `value` can be drawn (not at or below 0 on a log
    /// axis).
    fn shows(&self, value: f64) -> bool {
        value.is_finite() && (!self.log || value > 0.0)
    }

    /// Where `value` falls, from 0 (low end) to 1 (high end).
    fn fraction(&self, value: f64) -> f64 {
        let f = if self.log {
            (value.ln() - self.lo.ln()) / (self.hi.ln() - self.lo.ln())
        } else {
            (value - self.lo) / (self.hi - self.lo)
        };
        if f.is_finite() {
            f.clamp(0.0, 1.0)
        } else if f > 0.0 {
            1.0
        } else {
            0.0
        }
    }
}

/// 1, 2 or 5 times a power of ten, at or above `raw`.
fn nice_step(raw: f64) -> f64 {
    let magnitude = 10f64.powf(raw.log10().floor());
    let f = raw / magnitude;
    let nice = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * magnitude
}

/// `fraction` of the way along a plotters pixel range.
fn along(limit: (i32, i32), fraction: f64) -> i32 {
    limit.0 + (f64::from(limit.1 - limit.0) * fraction).round() as i32
}

impl Ranged for ValueAxis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        along(limit, self.fraction(*value))
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        let all = self.major.len() + self.minor.len();
        if hint.weight().allow_light_points() && all <= hint.max_num_points() {
            let mut points: Vec<f64> = self.major.iter().chain(&self.minor).copied().collect();
            points.sort_by(f64::total_cmp);
            points
        } else {
            self.major.clone()
        }
    }

    fn range(&self) -> Range<f64> {
        self.lo..self.hi
    }
}

/// The vertical axis: one unit per bar, the first bar at the top. Its key
/// points are the bars' centres, where the mesh writes their names.
#[derive(Debug, Clone)]
struct RowAxis {
    rows: usize,
}

impl Ranged for RowAxis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        // A NaN stays NaN through the clamp and lands on `limit.0`: `as`
        // turns it into 0.
        along(limit, (*value / self.rows.max(1) as f64).clamp(0.0, 1.0))
    }

    fn key_points<Hint: KeyPointHint>(&self, _hint: Hint) -> Vec<f64> {
        (0..self.rows).map(|i| i as f64 + 0.5).collect()
    }

    fn range(&self) -> Range<f64> {
        0.0..self.rows as f64
    }
}

/// The centre of row `index` (0 at the top) of `rows`.
fn row_center(rows: usize, index: usize) -> f64 {
    rows.saturating_sub(index) as f64 - 0.5
}

/// The name of the row whose centre is at `center`.
fn row_label(labels: &[String], center: f64) -> String {
    let index = (labels.len() as f64 - center - 0.5).round();
    if !(0.0..labels.len() as f64).contains(&index) {
        return String::new();
    }
    labels.get(index as usize).cloned().unwrap_or_default()
}

/// One bar.
struct Row {
    label: String,
    /// In the axis's units; `None` when there is no figure.
    value: Option<f64>,
    /// Printed at the bar's end.
    text: String,
    color: RGBColor,
}

/// A horizontal bar chart, ready to draw.
struct BarChart {
    caption: String,
    axis_desc: String,
    axis: ValueAxis,
    /// Where bars start: the axis's low end, or 1× on the overview.
    origin: f64,
    /// A vertical line to draw (1× on the overview).
    reference: Option<f64>,
    rows: Vec<Row>,
    legend: [(RGBColor, &'static str); 2],
    width: u32,
    row_height: u32,
    /// Widest the row names may take, in pixels.
    max_label_width: u32,
}

impl BarChart {
    fn height(&self) -> u32 {
        104 + self.rows.len() as u32 * self.row_height
    }

    fn label_area_width(&self) -> u32 {
        let longest = self
            .rows
            .iter()
            .map(|r| r.label.chars().count())
            .max()
            .unwrap_or(0);
        (longest as u32 * CHAR_PX + LABEL_PAD).clamp(140, self.max_label_width)
    }

    /// How many characters fit in a label area of `max_label_width`.
    fn label_chars(max_label_width: u32) -> usize {
        (max_label_width.saturating_sub(LABEL_PAD) / CHAR_PX) as usize
    }
}

/// The chart of one metric: every system's median.
fn metric_chart(group: &Group<'_>) -> BarChart {
    const WIDTH: u32 = 900;
    const MAX_LABEL_WIDTH: u32 = 340;
    let max = group
        .entries
        .iter()
        .filter_map(|e| e.median)
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    let (divisor, unit_name) = display_unit(group.unit, max);
    let label_chars = BarChart::label_chars(MAX_LABEL_WIDTH);
    let rows: Vec<Row> = group
        .entries
        .iter()
        .map(|e| {
            let median = e.median.filter(|v| v.is_finite());
            Row {
                label: shorten(&e.system, label_chars),
                value: median.map(|v| v / divisor),
                text: median.map_or_else(|| "no figure".to_owned(), |v| format_value(v, e.unit)),
                color: if e.isola { ISOLA_COLOR } else { PEER_COLOR },
            }
        })
        .collect();
    let values: Vec<f64> = rows.iter().filter_map(|r| r.value).collect();
    let axis = value_axis(&values);
    let what = match group.unit {
        Unit::PerSec => "median rate",
        Unit::Count => "median count",
        Unit::Micros | Unit::Bytes => "median",
    };
    let better = match group.better {
        Better::Lower => "lower is better",
        Better::Higher => "higher is better",
    };
    let scale = if axis.log { ", log scale" } else { "" };
    BarChart {
        caption: format!("#{} · {}", group.workload, group.metric),
        axis_desc: format!("{what}, {unit_name} ({better}{scale})"),
        origin: axis.lo,
        axis,
        reference: None,
        rows,
        legend: [(ISOLA_COLOR, "Isola"), (PEER_COLOR, "peers")],
        width: WIDTH,
        row_height: 30,
        max_label_width: MAX_LABEL_WIDTH,
    }
}

/// The overview: for every Isola figure with a peer to compare with, how
/// many times better it is than the best peer (the inverse of the table's
/// "Isola ÷ best peer" for times and sizes), on a log axis around 1×.
fn overview_chart(groups: &[Group<'_>]) -> Option<BarChart> {
    const WIDTH: u32 = 1400;
    const MAX_LABEL_WIDTH: u32 = 600;
    let label_chars = BarChart::label_chars(MAX_LABEL_WIDTH);
    let mut rows = Vec::new();
    for group in groups {
        for own in group.entries.iter().copied().filter(|e| e.isola) {
            let Some(mine) = positive(own.median) else {
                continue;
            };
            let Some((peer, theirs)) = best_peer(group, own) else {
                continue;
            };
            let advantage = match own.better {
                Better::Lower => theirs / mine,
                Better::Higher => mine / theirs,
            };
            let label = format!(
                "#{} {} · {}",
                group.workload,
                shorten(group.metric, 56),
                own.system
            );
            rows.push(Row {
                label: shorten(&label, label_chars),
                value: Some(advantage),
                text: format!("{} vs {}", ratio_text(advantage), peer.system),
                color: if advantage >= 1.0 {
                    ISOLA_COLOR
                } else {
                    PEER_COLOR
                },
            });
        }
    }
    if rows.is_empty() {
        return None;
    }
    let (low, high) = rows
        .iter()
        .filter_map(|r| r.value)
        .fold((1.0_f64, 1.0_f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    Some(BarChart {
        caption: "Isola against the best peer of each metric (medians)".into(),
        axis_desc: "times better than the best peer (log scale; right of 1×: Isola better)".into(),
        axis: ValueAxis::log(low / 2.0, high * OVERVIEW_HEADROOM),
        origin: 1.0,
        reference: Some(1.0),
        rows,
        legend: [(ISOLA_COLOR, "Isola better"), (PEER_COLOR, "peer better")],
        width: WIDTH,
        row_height: 26,
        max_label_width: MAX_LABEL_WIDTH,
    })
}

/// plotters' errors as ours.
fn plot_err<E: std::fmt::Display>(err: E) -> anyhow::Error {
    anyhow::anyhow!("{err}")
}

/// The SVG document of `spec`.
fn render(spec: &BarChart) -> Result<String> {
    let mut svg = String::new();
    {
        let root =
            SVGBackend::with_string(&mut svg, (spec.width, spec.height())).into_drawing_area();
        draw(&root, spec)?;
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}

fn draw(root: &DrawingArea<SVGBackend<'_>, Shift>, spec: &BarChart) -> Result<()> {
    root.fill(&WHITE).map_err(plot_err)?;
    let rows = spec.rows.len();
    let labels: Vec<String> = spec.rows.iter().map(|r| r.label.clone()).collect();
    let mut chart = ChartBuilder::on(root)
        .caption(spec.caption.as_str(), ("sans-serif", 18))
        .margin(12)
        .margin_right(24)
        .x_label_area_size(48)
        .y_label_area_size(spec.label_area_width())
        .build_cartesian_2d(spec.axis.clone(), RowAxis { rows })
        .map_err(plot_err)?;

    let x_format = |v: &f64| tick_text(*v);
    let y_format = |v: &f64| row_label(&labels, *v);
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(rows.max(1))
        .x_labels(32)
        .set_all_tick_mark_size(4)
        .x_label_formatter(&x_format)
        .y_label_formatter(&y_format)
        .x_desc(spec.axis_desc.as_str())
        .label_style(("sans-serif", 13))
        .axis_desc_style(("sans-serif", 14))
        .bold_line_style(BLACK.mix(0.15))
        .light_line_style(BLACK.mix(0.05))
        .draw()
        .map_err(plot_err)?;

    let plot = chart.plotting_area();
    if let Some(at) = spec.reference {
        let line = PathElement::new(vec![(at, 0.0), (at, rows as f64)], BLACK.stroke_width(1));
        plot.draw(&line).map_err(plot_err)?;
    }
    let text_style = ("sans-serif", 13)
        .into_font()
        .color(&BLACK)
        .pos(Pos::new(HPos::Left, VPos::Center));
    for (index, row) in spec.rows.iter().enumerate() {
        let center = row_center(rows, index);
        // A bar that ends left of the origin (the overview's "peer better")
        // gets its label right of the origin, clear of the row names.
        let mut text_at = spec.origin;
        if let Some(value) = row.value.filter(|v| spec.axis.shows(*v)) {
            let bar = Rectangle::new(
                [(spec.origin, center - BAR_HALF), (value, center + BAR_HALF)],
                row.color.filled(),
            );
            plot.draw(&bar).map_err(plot_err)?;
            text_at = text_at.max(value);
        }
        let (x, y) = chart.backend_coord(&(text_at, center));
        root.draw_text(&row.text, &text_style, (x + 6, y))
            .map_err(plot_err)?;
    }

    // The legend sits in the empty corner left of the axis description.
    let (_, height) = root.dim_in_pixel();
    let y = height as i32 - 26;
    let mut x = 14;
    for (color, name) in &spec.legend {
        let swatch = Rectangle::new([(x, y - 6), (x + 12, y + 6)], color.filled());
        root.draw(&swatch).map_err(plot_err)?;
        root.draw_text(name, &text_style, (x + 18, y))
            .map_err(plot_err)?;
        x += 36 + (name.chars().count() as u32 * CHAR_PX) as i32;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headline(workload: u8, metric: &str, system: &str, unit: Unit, median: f64) -> Headline {
        Headline {
            workload,
            metric: metric.to_owned(),
            system: system.to_owned(),
            isola: system.starts_with("Isola"),
            unit,
            better: if unit == Unit::PerSec {
                Better::Higher
            } else {
                Better::Lower
            },
            class: None,
            median: Some(median),
        }
    }

    fn sample() -> Vec<Headline> {
        vec![
            headline(1, "task start", "Isola thread", Unit::Micros, 6.0),
            headline(
                1,
                "task start",
                "Node worker_threads",
                Unit::Micros,
                20_000.0,
            ),
            headline(
                2,
                "throughput (tasks/s)",
                "Isola thread",
                Unit::PerSec,
                120_000.0,
            ),
            headline(2, "throughput (tasks/s)", "Piscina", Unit::PerSec, 30_000.0),
        ]
    }

    #[test]
    fn one_svg_per_metric_and_an_overview() {
        let charts = render_all(&sample()).expect("rendering");
        let names: Vec<&str> = charts.iter().map(|c| c.file_name.as_str()).collect();
        assert_eq!(
            names,
            [
                "w1-task-start.svg",
                "w2-throughput-tasks-s.svg",
                "overview.svg"
            ]
        );
        let systems: [&[&str]; 3] = [
            &["Isola thread", "Node worker_threads"],
            &["Isola thread", "Piscina"],
            &["Isola thread", "Node worker_threads", "Piscina"],
        ];
        for (chart, systems) in charts.iter().zip(systems) {
            assert!(chart.svg.contains("<svg"), "{}", chart.svg);
            assert!(chart.svg.trim_end().ends_with("</svg>"), "{}", chart.svg);
            for system in systems {
                assert!(
                    chart.svg.contains(system),
                    "{} lacks {system}:\n{}",
                    chart.file_name,
                    chart.svg
                );
            }
        }
        // Units in the axis descriptions, values at the bars' ends.
        assert!(charts[0].svg.contains("median, ms"), "{}", charts[0].svg);
        assert!(charts[0].svg.contains("6.0 µs"), "{}", charts[0].svg);
        assert!(
            charts[1].svg.contains("median rate, thousand tasks/s"),
            "{}",
            charts[1].svg
        );
        assert!(charts[2].svg.contains("4.00×"), "{}", charts[2].svg);
    }

    #[test]
    fn log_scale_beyond_a_ratio_of_20() {
        assert!(use_log_scale(&[6.0, 20_000.0]));
        assert!(use_log_scale(&[0.0, 1.0, 21.0]));
        assert!(!use_log_scale(&[100.0, 1_500.0]));
        assert!(!use_log_scale(&[0.0, 5.0]));
        assert!(!use_log_scale(&[42.0]));
        assert!(!use_log_scale(&[]));

        let axis = value_axis(&[0.006, 20.0]);
        assert!(axis.log);
        assert!(axis.lo <= 0.003 && axis.hi >= 200.0, "{axis:?}");
        assert_eq!(axis.major.len(), 7, "{axis:?}");
        assert!(!value_axis(&[30.0, 120.0]).log);

        let charts = render_all(&sample()).expect("rendering");
        assert!(charts[0].svg.contains("log scale"), "{}", charts[0].svg);
        assert!(!charts[1].svg.contains("log scale"), "{}", charts[1].svg);
    }

    #[test]
    fn axes_and_labels() {
        let axis = ValueAxis::linear(156.0);
        assert_eq!(axis.major.first().copied(), Some(0.0));
        assert!(axis.hi >= 156.0 && axis.hi <= 200.0, "{axis:?}");
        assert_eq!(axis.map(&axis.hi, (10, 110)), 110);
        assert_eq!(axis.map(&0.0, (10, 110)), 10);
        let log = ValueAxis::log(1.0, 999.0);
        assert_eq!(log.map(&10.0, (0, 300)), 100);
        assert_eq!(log.map(&0.0, (0, 300)), 0);

        assert_eq!(tick_text(10f64.powi(-3)), "0.001");
        assert_eq!(tick_text(2.5), "2.5");
        assert_eq!(tick_text(120_000.0), "120000");
        assert_eq!(tick_text(0.0), "0");

        assert_eq!(slug("message round trip, 16 B"), "message-round-trip-16-b");
        assert_eq!(
            slug("task start: spawn → first message"),
            "task-start-spawn-first-message"
        );
        assert_eq!(
            slug("throughput: 20,000 trivial tasks, pool of 2 (tasks/s)"),
            "throughput-20-000-trivial-tasks-pool-of-2-tasks"
        );
        assert_eq!(slug(&"x".repeat(60)), "x".repeat(48));
        assert_eq!(slug("→"), "");

        let labels = ["top".to_owned(), "middle".to_owned(), "bottom".to_owned()];
        for (index, label) in labels.iter().enumerate() {
            assert_eq!(&row_label(&labels, row_center(3, index)), label);
        }
        assert_eq!(row_label(&labels, 7.5), "");
        assert_eq!(shorten("abcdef", 4), "abc…");
        assert_eq!(shorten("abc", 4), "abc");
    }

    #[test]
    fn reads_the_figures_of_a_saved_run() {
        let json = br#"{"machine": {}, "wall_seconds": 1.0, "figures": [
            {"workload": 3, "metric": "rtt", "system": "Isola thread", "isola": true,
             "unit": "micros", "better": "lower", "samples": [1.0, null], "runs": null,
             "note": null, "target": null, "class": "thread", "median": 1.0, "p90": 1.0},
            {"workload": 3, "metric": "rtt", "system": "Node worker", "isola": false,
             "unit": "micros", "better": "lower", "samples": [], "class": null,
             "median": null}
        ], "failures": [], "table": ""}"#;
        let got = parse_saved(json).expect("parsing");
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].class, Some(Class::Thread));
        assert_eq!(got[0].median, Some(1.0));
        assert_eq!(got[1].median, None);
        // No peer figure: a chart with "no figure" on the peer's row, and
        // no overview.
        let charts = render_all(&got).expect("rendering");
        assert_eq!(charts.len(), 1);
        assert!(charts[0].svg.contains("no figure"), "{}", charts[0].svg);
    }

    #[test]
    fn the_overview_compares_within_a_class() {
        let mut figures = [
            headline(1, "start", "Isola process", Unit::Micros, 100.0),
            headline(1, "start", "Node worker", Unit::Micros, 50.0),
            headline(1, "start", "Node fork", Unit::Micros, 400.0),
        ];
        figures[0].class = Some(Class::Process);
        figures[1].class = Some(Class::Thread);
        figures[2].class = Some(Class::Process);
        let groups = groups(&figures);
        let (peer, median) = best_peer(&groups[0], &figures[0]).expect("a peer");
        assert_eq!((peer.system.as_str(), median), ("Node fork", 400.0));
        let overview = overview_chart(&groups).expect("an overview");
        assert_eq!(overview.rows.len(), 1);
        assert_eq!(overview.rows[0].value, Some(4.0));
    }

    #[test]
    fn renders_the_saved_results_if_any() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../results/latest.json");
        if !path.is_file() {
            return;
        }
        let headlines = headlines_from_json(&path).expect("reading latest.json");
        let charts = render_all(&headlines).expect("rendering latest.json");
        assert!(charts.iter().any(|c| c.file_name == "overview.svg"));
    }
}

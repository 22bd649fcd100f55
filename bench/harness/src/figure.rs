//! One figure of the table: a metric measured on one system, with every
//! raw sample kept for the JSON output.

use serde::{Deserialize, Serialize};

use crate::stats::{Summary, summarize};

/// What a sample counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    /// A duration in microseconds.
    Micros,
    /// A rate per second (tasks/s).
    PerSec,
    /// A size in bytes.
    Bytes,
    /// A plain count (tasks).
    Count,
}

/// Which direction is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Better {
    /// Times and sizes.
    Lower,
    /// Throughput and capacity.
    Higher,
}

/// A target of the issue, as judged on one Isola figure.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    /// The target, e.g. `p50 ≤ 10 µs`.
    pub goal: String,
    /// Whether this run met it.
    pub met: bool,
}

/// One metric on one system.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    /// Workload number in the issue (1–9).
    pub workload: u8,
    /// What is measured; figures with the same metric are compared.
    pub metric: String,
    /// Who was measured.
    pub system: String,
    /// Whether `system` is Isola (the ratio column compares these with the
    /// best figure of the others).
    pub isola: bool,
    /// Unit of the samples.
    pub unit: Unit,
    /// Direction of "better".
    pub better: Better,
    /// Every sample.
    pub samples: Vec<f64>,
    /// How the run count reads in the table when it is not just the number
    /// of samples (e.g. `3 × 1,000 tasks`).
    pub runs: Option<String>,
    /// Why a figure is missing, or what to know when reading it.
    pub note: Option<String>,
    /// The target for this figure, judged.
    pub target: Option<Target>,
    /// Which kind of task this is, when a workload has both: an Isola
    /// figure is then compared with the best peer of its own kind (a
    /// process task with forked children, not with worker threads).
    pub class: Option<Class>,
}

/// Thread-like or process-like tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    /// Isola thread tasks, Node workers.
    Thread,
    /// Isola process tasks, Node forked children.
    Process,
}

impl Figure {
    /// A lower-is-better figure of a peer with no samples yet.
    pub fn new(workload: u8, metric: &str, system: &str, unit: Unit) -> Figure {
        Figure {
            workload,
            metric: metric.to_owned(),
            system: system.to_owned(),
            isola: system.starts_with("Isola"),
            unit,
            better: if unit == Unit::PerSec || unit == Unit::Count {
                Better::Higher
            } else {
                Better::Lower
            },
            samples: Vec::new(),
            runs: None,
            note: None,
            target: None,
            class: None,
        }
    }

    /// Sets the samples.
    pub fn samples(mut self, samples: Vec<f64>) -> Figure {
        self.samples = samples;
        self
    }

    /// Sets the note.
    pub fn note(mut self, note: impl Into<String>) -> Figure {
        self.note = Some(note.into());
        self
    }

    /// Sets the class (see [`Figure::class`]).
    pub fn class(mut self, class: Class) -> Figure {
        self.class = Some(class);
        self
    }

    /// Sets how the run count reads.
    pub fn runs(mut self, runs: impl Into<String>) -> Figure {
        self.runs = Some(runs.into());
        self
    }

    /// Median and p90 of the samples.
    pub fn summary(&self) -> Summary {
        summarize(&self.samples, self.better == Better::Higher)
    }

    /// The median, if there are samples.
    pub fn median(&self) -> Option<f64> {
        let s = self.summary();
        (s.n > 0).then_some(s.median)
    }

    /// Judges `goal` with `met`, computed by the caller from this run's
    /// figures.
    pub fn judge(&mut self, goal: impl Into<String>, met: bool) {
        self.target = Some(Target {
            goal: goal.into(),
            met,
        });
    }
}

/// Samples gathered per system across interleaved rounds.
#[derive(Debug, Default)]
pub struct Series {
    entries: Vec<(String, Vec<f64>)>,
}

impl Series {
    /// Appends samples for `system`.
    pub fn add(&mut self, system: &str, samples: impl IntoIterator<Item = f64>) {
        match self.entries.iter_mut().find(|(s, _)| s == system) {
            Some((_, v)) => v.extend(samples),
            None => self
                .entries
                .push((system.to_owned(), samples.into_iter().collect())),
        }
    }

    /// Takes the samples of `system` (empty if none were added).
    pub fn take(&mut self, system: &str) -> Vec<f64> {
        self.entries
            .iter_mut()
            .find(|(s, _)| s == system)
            .map(|(_, v)| std::mem::take(v))
            .unwrap_or_default()
    }
}

/// The systems of a round in the order to run them: rotated by the round
/// number, so no system always runs right after the same other one.
pub fn rotation<T: Copy>(systems: &[T], round: usize) -> Vec<T> {
    let k = if systems.is_empty() {
        0
    } else {
        round % systems.len()
    };
    systems[k..].iter().chain(&systems[..k]).copied().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_visits_every_order_start() {
        assert_eq!(rotation(&[1, 2, 3], 0), vec![1, 2, 3]);
        assert_eq!(rotation(&[1, 2, 3], 1), vec![2, 3, 1]);
        assert_eq!(rotation(&[1, 2, 3], 4), vec![2, 3, 1]);
        assert!(rotation::<u8>(&[], 3).is_empty());
    }

    #[test]
    fn series_collects_per_system() {
        let mut s = Series::default();
        s.add("a", [1.0]);
        s.add("b", [2.0]);
        s.add("a", [3.0]);
        assert_eq!(s.take("a"), vec![1.0, 3.0]);
        assert!(s.take("a").is_empty());
        assert!(s.take("c").is_empty());
    }
}

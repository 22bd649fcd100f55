//! Order statistics of samples.

/// Median and 90th percentile of a set of samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// The 50th percentile.
    pub median: f64,
    /// The 90th percentile of the *worse* side: of the values for a
    /// lower-is-better figure, of the 10th percentile for a
    /// higher-is-better one (a throughput), so "p90" always reads as "9 in
    /// 10 runs were at least this good".
    pub p90: f64,
    /// How many samples.
    pub n: usize,
}

/// Nearest-rank percentile (`p` in 0..=100) of sorted samples: always one
/// of the samples, never an interpolation.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Summarises `samples`; `higher_is_better` flips which side p90 is on.
pub fn summarize(samples: &[f64], higher_is_better: bool) -> Summary {
    let mut sorted: Vec<f64> = samples.iter().copied().filter(|v| v.is_finite()).collect();
    sorted.sort_by(f64::total_cmp);
    Summary {
        median: percentile(&sorted, 50.0),
        p90: percentile(&sorted, if higher_is_better { 10.0 } else { 90.0 }),
        n: sorted.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 5.0);
        assert_eq!(percentile(&v, 90.0), 9.0);
        assert_eq!(percentile(&v, 100.0), 10.0);
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&[3.0], 90.0), 3.0);
        assert!(percentile(&[], 50.0).is_nan());
    }

    #[test]
    fn p90_is_on_the_worse_side() {
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(summarize(&v, false).p90, 9.0);
        assert_eq!(summarize(&v, true).p90, 1.0);
    }
}

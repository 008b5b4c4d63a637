//! Statistics over repeats and latency samples: min/median/max of a figure's
//! repeats, percentiles of per-request latencies, ratios between targets and
//! the points of a latency CDF for plotting.

use serde::{Deserialize, Serialize};

/// Min, median and max of a figure's repeats; `n` says how many there were,
/// so a reader can tell one sample from a stable figure.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub n: usize,
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

impl Summary {
    /// None when there are no finite samples (a figure that failed on every
    /// repeat has no summary rather than a made-up one).
    pub fn of(samples: &[f64]) -> Option<Summary> {
        let mut sorted: Vec<f64> = samples.iter().copied().filter(|v| v.is_finite()).collect();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        Some(Summary {
            n,
            min: sorted[0],
            median,
            max: sorted[n - 1],
        })
    }
}

/// The nearest-rank percentile `p` (0..=100) of ascending `sorted` values:
/// the smallest value with at least p% of the samples at or below it. It is
/// always a value that was observed (no interpolation between two requests).
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let p = p.clamp(0.0, 100.0);
    // The epsilon keeps 99.9% of 1000 at rank 999 despite rounding.
    let rank = ((p / 100.0) * sorted.len() as f64 - 1e-9).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Percentiles of per-request latencies, in microseconds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub count: usize,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

impl LatencySummary {
    pub fn of(latencies_us: &[f64]) -> Option<LatencySummary> {
        let mut sorted: Vec<f64> = latencies_us
            .iter()
            .copied()
            .filter(|v| v.is_finite())
            .collect();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_by(f64::total_cmp);
        let at = |p| percentile(&sorted, p).unwrap_or(f64::NAN);
        Some(LatencySummary {
            count: sorted.len(),
            mean_us: sorted.iter().sum::<f64>() / sorted.len() as f64,
            p50_us: at(50.0),
            p90_us: at(90.0),
            p99_us: at(99.0),
            p999_us: at(99.9),
            max_us: sorted[sorted.len() - 1],
        })
    }
}

/// `numerator / denominator`, or None when either is missing or the
/// denominator is zero (a ratio to nothing is not 0 or infinity).
pub fn ratio(numerator: Option<f64>, denominator: Option<f64>) -> Option<f64> {
    match (numerator, denominator) {
        (Some(a), Some(b)) if b != 0.0 && a.is_finite() && b.is_finite() => Some(a / b),
        _ => None,
    }
}

/// At most `points_max` (value, fraction at or below) points of the
/// empirical CDF of ascending `sorted`, always including both ends, so a
/// 100,000-sample CDF plots as a few hundred points.
pub fn cdf_points(sorted: &[f64], points_max: usize) -> Vec<(f64, f64)> {
    let n = sorted.len();
    if n == 0 || points_max == 0 {
        return Vec::new();
    }
    let points = points_max.clamp(2, n.max(2)).min(n);
    let mut out = Vec::with_capacity(points);
    for j in 0..points {
        // Spread the picked ranks evenly over 1..=n, last one exactly n.
        let rank = if points == 1 {
            n
        } else {
            1 + (j * (n - 1)) / (points - 1)
        };
        out.push((sorted[rank - 1], rank as f64 / n as f64));
    }
    out.dedup_by(|a, b| a == b);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_odd_even_and_empty() {
        let s = Summary::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.n, s.min, s.median, s.max), (3, 1.0, 2.0, 3.0));
        let s = Summary::of(&[4.0, 1.0, 2.0, 3.0]).unwrap();
        assert_eq!(s.median, 2.5);
        assert!(Summary::of(&[]).is_none());
        // A failed repeat (NaN) is left out, not averaged in.
        let s = Summary::of(&[f64::NAN, 5.0]).unwrap();
        assert_eq!((s.n, s.median), (1, 5.0));
        assert!(Summary::of(&[f64::NAN]).is_none());
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 99.9), Some(100.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
        // Two samples: the median is the lower one (observed, not averaged).
        assert_eq!(percentile(&[1.0, 9.0], 50.0), Some(1.0));
    }

    #[test]
    fn latency_summary_is_order_independent() {
        let mut v: Vec<f64> = (1..=1000).map(f64::from).collect();
        v.reverse();
        let s = LatencySummary::of(&v).unwrap();
        assert_eq!(s.count, 1000);
        assert_eq!(s.p50_us, 500.0);
        assert_eq!(s.p99_us, 990.0);
        assert_eq!(s.p999_us, 999.0);
        assert_eq!(s.max_us, 1000.0);
        assert!((s.mean_us - 500.5).abs() < 1e-9);
        assert!(LatencySummary::of(&[]).is_none());
    }

    #[test]
    fn ratios_refuse_missing_and_zero() {
        assert_eq!(ratio(Some(1.0), Some(4.0)), Some(0.25));
        assert_eq!(ratio(None, Some(4.0)), None);
        assert_eq!(ratio(Some(1.0), None), None);
        assert_eq!(ratio(Some(1.0), Some(0.0)), None);
        assert_eq!(ratio(Some(f64::NAN), Some(1.0)), None);
    }

    #[test]
    fn cdf_points_cover_both_ends_and_stay_bounded() {
        let v: Vec<f64> = (1..=10_000).map(f64::from).collect();
        let pts = cdf_points(&v, 200);
        assert!(pts.len() <= 200 && pts.len() >= 190);
        assert_eq!(pts[0], (1.0, 1.0 / 10_000.0));
        assert_eq!(*pts.last().unwrap(), (10_000.0, 1.0));
        assert!(pts.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 < w[1].1));
        let small = cdf_points(&[5.0, 6.0, 7.0], 200);
        assert_eq!(small, vec![(5.0, 1.0 / 3.0), (6.0, 2.0 / 3.0), (7.0, 1.0)]);
        assert_eq!(cdf_points(&[3.0], 10), vec![(3.0, 1.0)]);
        assert!(cdf_points(&[], 10).is_empty());
    }
}

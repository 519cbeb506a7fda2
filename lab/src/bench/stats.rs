//! Order statistics for benchmark samples (nearest-rank percentiles), pure.

use serde::Serialize;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Summary {
    pub n: usize,
    pub median: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
    pub min: f64,
}

/// Nearest-rank percentile `p` (0..=100) of sorted samples.
fn rank(sorted: &[f64], p: f64) -> f64 {
    let n = sorted.len();
    let k = ((p / 100.0) * n as f64).ceil() as usize;
    sorted[k.clamp(1, n) - 1]
}

pub fn summarize(samples: &[f64]) -> Option<Summary> {
    if samples.is_empty() {
        return None;
    }
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    let median = if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    };
    Some(Summary {
        n,
        median,
        p95: rank(&s, 95.0),
        p99: rank(&s, 99.0),
        max: s[n - 1],
        min: s[0],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = summarize(&v).expect("summary");
        assert_eq!(s.median, 50.5);
        assert_eq!(s.p95, 95.0);
        assert_eq!(s.p99, 99.0);
        assert_eq!(s.max, 100.0);
        let s = summarize(&[3.0, 1.0, 2.0]).expect("summary");
        assert_eq!((s.median, s.p99, s.min), (2.0, 3.0, 1.0));
        assert!(summarize(&[]).is_none());
    }
}

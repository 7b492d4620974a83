//! The robust score of an hour against its baseline.
//!
//! The baseline of hour `T` is the same hour of day on each of the 7 days
//! before (an hour with no usage counts 0), taken only from days since the
//! scope was first seen; with fewer than [`MIN_DAYS`] of them there is not
//! enough history to judge. Its centre is the median `m`; its spread is
//! `1.4826 × MAD` (the median absolute deviation scaled to a standard
//! deviation for normal data), but at least [`SPREAD_FLOOR`] of the larger
//! of `m` and the scope's mean hourly level over the baseline days, so that
//! a very steady series does not alarm on ordinary noise and an hour of day
//! that is usually idle still has a scale. The score is `(value - m) /
//! spread`; above the threshold the hour is an anomaly (only usage far
//! *above* its baseline is).

/// Days of baseline.
pub const BASELINE_DAYS: i64 = 7;
/// Fewer baseline days than this is "not enough history".
pub const MIN_DAYS: usize = 3;
/// The least spread, as a fraction of the baseline's level.
pub const SPREAD_FLOOR: f64 = 0.1;
/// Scales the MAD to a standard deviation (normal data).
const MAD_SCALE: f64 = 1.4826;

/// The judgement of one hour.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Judgement {
    /// Fewer than [`MIN_DAYS`] baseline days.
    NotEnoughHistory { days: usize },
    Scored {
        median: f64,
        spread: f64,
        score: f64,
        days: usize,
    },
}

pub fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// Scores `value` against `baseline` (one value per baseline day); `level`
/// is the scope's mean hourly value over the baseline days.
pub fn judge(value: f64, baseline: &[f64], level: f64) -> Judgement {
    let days = baseline.len();
    if days < MIN_DAYS {
        return Judgement::NotEnoughHistory { days };
    }
    let mut b = baseline.to_vec();
    let m = median(&mut b);
    let mut deviations: Vec<f64> = baseline.iter().map(|x| (x - m).abs()).collect();
    let mad = median(&mut deviations);
    let spread = (MAD_SCALE * mad).max(SPREAD_FLOOR * m.max(level));
    let score = if spread > 0.0 {
        (value - m) / spread
    } else {
        0.0
    };
    Judgement::Scored {
        median: m,
        spread,
        score,
        days,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn scores_against_the_median_and_mad() {
        // m = 10, deviations 0,1,1,2,2 → MAD 1 → spread 1.4826.
        let Judgement::Scored {
            median,
            spread,
            score,
            days,
        } = judge(20.0, &[10.0, 9.0, 11.0, 8.0, 12.0], 10.0)
        else {
            panic!("scored")
        };
        assert_eq!((median, days), (10.0, 5));
        assert!((spread - 1.4826).abs() < 1e-12);
        assert!((score - 10.0 / 1.4826).abs() < 1e-9);
    }

    #[test]
    fn a_flat_baseline_uses_the_floor_and_short_history_is_not_judged() {
        let Judgement::Scored { spread, score, .. } = judge(11.0, &[10.0; 7], 10.0) else {
            panic!("scored")
        };
        assert_eq!(spread, 1.0);
        assert_eq!(score, 1.0);
        assert_eq!(
            judge(100.0, &[1.0, 1.0], 1.0),
            Judgement::NotEnoughHistory { days: 2 }
        );
        // An idle hour of day in a busy scope: scaled by the scope's level.
        let Judgement::Scored { score, .. } = judge(50.0, &[0.0; 7], 10.0) else {
            panic!("scored")
        };
        assert_eq!(score, 50.0);
    }
}

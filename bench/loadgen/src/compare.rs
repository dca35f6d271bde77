//! Side-by-side comparison of two servers in one run.
//!
//! Owns: the round order and the statistics. Rounds alternate in the order A B B A A B B A …, so a slow drift of
//! the (shared, noisy) machine weighs on both sides equally; each figure is the median over a side's rounds, and
//! the ratio is `median(B) / median(A)` per figure. Limits: [`ROUNDS_MAX`] (100) rounds per side.

use crate::config::RunConfig;
use crate::engine::{run, ProgressSnapshot, RunError};
use crate::report::RunReport;
use serde::Serialize;
use std::fmt::Write as _;

/// Most rounds per side.
pub const ROUNDS_MAX: usize = 100;

/// Which server a round measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Side {
    A,
    B,
}

/// The figures compared, from one round or as medians.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Figures {
    pub requests_per_sec: f64,
    pub bytes_per_sec: f64,
    pub errors: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

/// Reads one figure.
pub type FigureGetter = fn(&Figures) -> f64;

/// Names and accessors of the figures, in print order.
pub const FIGURES: [(&str, FigureGetter); 8] = [
    ("requests_per_sec", |f| f.requests_per_sec),
    ("bytes_per_sec", |f| f.bytes_per_sec),
    ("errors", |f| f.errors),
    ("p50_ms", |f| f.p50_ms),
    ("p90_ms", |f| f.p90_ms),
    ("p99_ms", |f| f.p99_ms),
    ("p999_ms", |f| f.p999_ms),
    ("max_ms", |f| f.max_ms),
];

impl Figures {
    pub fn of(report: &RunReport) -> Figures {
        let total = &report.total;
        let latency = &total.latency_ms;
        Figures {
            requests_per_sec: total.requests_per_sec,
            bytes_per_sec: total.bytes_per_sec,
            errors: total.errors as f64,
            p50_ms: latency.p50,
            p90_ms: latency.p90,
            p99_ms: latency.p99,
            p999_ms: latency.p999,
            max_ms: latency.max,
        }
    }

    /// The per-figure median of `rounds` (mean of the middle two for an even count).
    pub fn median(rounds: &[Figures]) -> Figures {
        let pick =
            |get: fn(&Figures) -> f64| median(&mut rounds.iter().map(get).collect::<Vec<_>>());
        Figures {
            requests_per_sec: pick(FIGURES[0].1),
            bytes_per_sec: pick(FIGURES[1].1),
            errors: pick(FIGURES[2].1),
            p50_ms: pick(FIGURES[3].1),
            p90_ms: pick(FIGURES[4].1),
            p99_ms: pick(FIGURES[5].1),
            p999_ms: pick(FIGURES[6].1),
            max_ms: pick(FIGURES[7].1),
        }
    }
}

/// Median of `values` (sorted in place); 0 for none.
pub fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len() % 2 == 1 {
        values[middle]
    } else {
        (values[middle - 1] + values[middle]) / 2.0
    }
}

/// `b / a`, or NaN when `a` is zero (a ratio to nothing is not a number).
pub fn ratio(a: f64, b: f64) -> f64 {
    if a == 0.0 {
        f64::NAN
    } else {
        b / a
    }
}

/// The side measured in round `index` (0-based) of the A B B A pattern.
pub fn side_of_round(index: usize) -> Side {
    match index % 4 {
        0 | 3 => Side::A,
        _ => Side::B,
    }
}

/// The result of a comparison.
#[derive(Clone, Debug, Serialize)]
pub struct Comparison {
    pub a: Vec<Figures>,
    pub b: Vec<Figures>,
    pub median_a: Figures,
    pub median_b: Figures,
}

impl Comparison {
    pub fn to_text(&self, name_a: &str, name_b: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<18} {:>14} {:>14} {:>8}   ({} rounds each, medians)",
            "figure",
            name_a,
            name_b,
            "b/a",
            self.a.len()
        );
        for (name, get) in FIGURES {
            let (a, b) = (get(&self.median_a), get(&self.median_b));
            let _ = writeln!(out, "{name:<18} {a:>14.3} {b:>14.3} {:>8.3}", ratio(a, b));
        }
        out
    }

    pub fn to_json(&self) -> String {
        let ratios: serde_json::Map<String, serde_json::Value> = FIGURES
            .iter()
            .map(|(name, get)| {
                (
                    name.to_string(),
                    serde_json::json!(ratio(get(&self.median_a), get(&self.median_b))),
                )
            })
            .collect();
        let mut value = serde_json::to_value(self).expect("a comparison always serialises");
        value["ratio_b_over_a"] = serde_json::Value::Object(ratios);
        serde_json::to_string_pretty(&value).expect("a comparison always serialises")
    }
}

/// Runs `rounds` rounds of each side in A B B A order; `on_round` sees every report as it finishes.
pub fn compare(
    a: &RunConfig,
    b: &RunConfig,
    rounds: usize,
    mut on_progress: impl FnMut(ProgressSnapshot),
    mut on_round: impl FnMut(Side, usize, &RunReport),
) -> Result<Comparison, RunError> {
    let rounds = rounds.clamp(1, ROUNDS_MAX);
    let (mut figures_a, mut figures_b) = (Vec::with_capacity(rounds), Vec::with_capacity(rounds));
    for index in 0..2 * rounds {
        let side = side_of_round(index);
        let (config, figures) = match side {
            Side::A => (a, &mut figures_a),
            Side::B => (b, &mut figures_b),
        };
        let report = run(config, &mut on_progress)?;
        on_round(side, figures.len(), &report);
        figures.push(Figures::of(&report));
    }
    Ok(Comparison {
        median_a: Figures::median(&figures_a),
        median_b: Figures::median(&figures_b),
        a: figures_a,
        b: figures_b,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&mut []), 0.0);
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
    }

    #[test]
    fn rounds_alternate_abba_and_balance() {
        let sides: Vec<Side> = (0..8).map(side_of_round).collect();
        assert_eq!(
            sides,
            [
                Side::A,
                Side::B,
                Side::B,
                Side::A,
                Side::A,
                Side::B,
                Side::B,
                Side::A
            ]
        );
        for rounds in 1..10 {
            let a = (0..2 * rounds)
                .filter(|&i| side_of_round(i) == Side::A)
                .count();
            assert_eq!(a, rounds, "{rounds} rounds per side");
        }
    }

    #[test]
    fn ratio_of_zero_is_nan() {
        assert!(ratio(0.0, 1.0).is_nan());
        assert_eq!(ratio(2.0, 1.0), 0.5);
    }
}

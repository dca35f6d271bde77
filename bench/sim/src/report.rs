//! CSV output of a sweep.
//!
//! Columns: `policy,nodes,throughput_rps,hit_ratio`, then `cpu_util_mean,cpu_util_max,disk_util_mean,
//! disk_util_max`, then per-node `cpu_util_0..cpu_util_{M-1}` and `disk_util_0..disk_util_{M-1}` where M is the
//! largest node count of the sweep (cells of absent nodes are empty), then `outstanding,requests_measured`.
//! Utilisations are fractions in `[0, 1]`.

use std::fmt::Write;

use crate::SimResult;

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

fn max(values: &[f64]) -> f64 {
    values.iter().copied().fold(0.0, f64::max)
}

/// Renders results as CSV text (header + one line a result).
pub fn to_csv(results: &[SimResult]) -> String {
    let width = results.iter().map(|r| r.nodes as usize).max().unwrap_or(0);
    let mut out = String::from("policy,nodes,throughput_rps,hit_ratio,cpu_util_mean,cpu_util_max,disk_util_mean,disk_util_max");
    for kind in ["cpu", "disk"] {
        for node in 0..width {
            write!(out, ",{kind}_util_{node}").expect("writing to a String");
        }
    }
    out.push_str(",outstanding,requests_measured\n");
    for r in results {
        write!(
            out,
            "{},{},{:.1},{:.4},{:.4},{:.4},{:.4},{:.4}",
            r.policy,
            r.nodes,
            r.throughput_rps,
            r.hit_ratio,
            mean(&r.cpu_util),
            max(&r.cpu_util),
            mean(&r.disk_util),
            max(&r.disk_util)
        )
        .expect("writing to a String");
        for per_node in [&r.cpu_util, &r.disk_util] {
            for node in 0..width {
                match per_node.get(node) {
                    Some(u) => write!(out, ",{u:.4}"),
                    None => write!(out, ","),
                }
                .expect("writing to a String");
            }
        }
        writeln!(out, ",{},{}", r.outstanding, r.requests_measured).expect("writing to a String");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_per_node_columns_to_the_largest_run() {
        let result = |nodes: u32| SimResult {
            policy: "lard".into(),
            nodes,
            outstanding: 24,
            requests_measured: 10,
            window_us: 1,
            throughput_rps: 1000.0,
            hit_ratio: 0.5,
            cpu_util: vec![0.5; nodes as usize],
            disk_util: vec![0.25; nodes as usize],
        };
        let csv = to_csv(&[result(1), result(2)]);
        let lines: Vec<&str> = csv.lines().collect();
        assert!(lines[0].starts_with("policy,nodes,throughput_rps,hit_ratio,"));
        assert!(lines[0].contains(",cpu_util_1,disk_util_0,disk_util_1,"));
        let columns = lines[0].split(',').count();
        assert!(lines.iter().all(|l| l.split(',').count() == columns));
        assert_eq!(
            lines[1],
            "lard,1,1000.0,0.5000,0.5000,0.5000,0.2500,0.2500,0.5000,,0.2500,,24,10"
        );
    }
}

//! The paper's figure as SVG: throughput against number of nodes, one line per policy.

use std::path::Path;

use plotters::prelude::*;

use crate::SimResult;

#[derive(Debug, thiserror::Error)]
#[error("drawing {path}: {message}")]
pub struct ChartError {
    path: String,
    message: String,
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Writes the chart to `path`; `title` heads it. Policies appear in the order of their first result.
pub fn write_svg(path: &Path, title: &str, results: &[SimResult]) -> Result<(), ChartError> {
    let error = |e: &dyn std::fmt::Display| ChartError {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let mut policies: Vec<&str> = Vec::new();
    for r in results {
        if !policies.contains(&r.policy.as_str()) {
            policies.push(&r.policy);
        }
    }
    let nodes_max = results.iter().map(|r| r.nodes).max().unwrap_or(1);
    let rps_max = results.iter().map(|r| r.throughput_rps).fold(1.0, f64::max);
    let root = SVGBackend::new(path, (800, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| error(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0u32..nodes_max + 1, 0.0..rps_max * 1.1)
        .map_err(|e| error(&e))?;
    chart
        .configure_mesh()
        .x_desc("nodes")
        .y_desc("throughput (requests/s)")
        .draw()
        .map_err(|e| error(&e))?;
    for (index, policy) in policies.iter().enumerate() {
        let color = COLORS[index % COLORS.len()];
        let points: Vec<(u32, f64)> = results
            .iter()
            .filter(|r| r.policy == *policy)
            .map(|r| (r.nodes, r.throughput_rps))
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(|e| error(&e))?
            .label(*policy)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(PointSeries::of_element(points, 4, color, &|c, s, st| {
                Circle::new(c, s, st.filled())
            }))
            .map_err(|e| error(&e))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| error(&e))?;
    root.present().map_err(|e| error(&e))?;
    Ok(())
}

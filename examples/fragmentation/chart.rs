//! SVG charts of RSS over a run, one line per contender.

use std::path::Path;

use plotters::prelude::*;

use crate::workloads::Report;

/// Draws RSS (minus the baseline) over the run's progress for each
/// contender, and the live bytes of the first, into an SVG at `path`.
pub fn rss_chart(
    path: &Path,
    title: &str,
    runs: &[(String, Report)],
) -> Result<(), Box<dyn std::error::Error>> {
    const MIB: f64 = 1048576.0;
    let series: Vec<(String, Vec<(f64, f64)>)> = runs
        .iter()
        .map(|(name, r)| {
            let last = r.samples.last().map_or(1, |s| s.ops).max(1) as f64;
            let pts = r
                .samples
                .iter()
                .map(|s| {
                    (
                        100.0 * s.ops as f64 / last,
                        s.rss.saturating_sub(r.baseline_rss) as f64 / MIB,
                    )
                })
                .collect();
            (name.clone(), pts)
        })
        .collect();
    let live: Vec<(f64, f64)> = runs
        .first()
        .map(|(_, r)| {
            let last = r.samples.last().map_or(1, |s| s.ops).max(1) as f64;
            r.samples
                .iter()
                .map(|s| (100.0 * s.ops as f64 / last, s.live as f64 / MIB))
                .collect()
        })
        .unwrap_or_default();
    let top = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|&(_, y)| y))
        .chain(live.iter().map(|&(_, y)| y))
        .fold(1.0f64, f64::max)
        * 1.1;

    let root = SVGBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..100f64, 0f64..top)?;
    chart
        .configure_mesh()
        .x_desc("progress through the workload (%)")
        .y_desc("RSS above baseline (MiB)")
        .draw()?;
    chart
        .draw_series(LineSeries::new(live, BLACK.stroke_width(2)))?
        .label("live data")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.stroke_width(2)));
    for (i, (name, pts)) in series.into_iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

//! A picture of the dashboard's main panels from a real run: each panel's query asked of
//! Prometheus over the run, one line per series, drawn with the embedded font.

use std::path::Path;

use anyhow::anyhow;
use plotters::prelude::*;

/// One series of a panel: its legend and `(seconds since the start, value)` points.
pub type Series = (String, Vec<(f64, f64)>);

const FONT: &str = "sans-serif";
const COLORS: [RGBColor; 6] = [
    RGBColor(40, 90, 220),
    RGBColor(220, 40, 40),
    RGBColor(0, 150, 60),
    RGBColor(230, 150, 20),
    RGBColor(130, 60, 180),
    RGBColor(60, 60, 60),
];

/// Draws `panels` (title, series) two per row into `path`.
pub fn draw(path: &Path, panels: &[(String, Vec<Series>)]) -> anyhow::Result<()> {
    crate::bench_adaptive::plot::register_font();
    draw_grid(path, panels).map_err(|e| anyhow!("failed to draw {}: {e}", path.display()))
}

fn draw_grid(
    path: &Path,
    panels: &[(String, Vec<Series>)],
) -> Result<(), Box<dyn std::error::Error>> {
    let rows = panels.len().div_ceil(2) as u32;
    let root = BitMapBackend::new(path, (1400, 330 * rows)).into_drawing_area();
    root.fill(&WHITE)?;
    let areas = root.split_evenly((rows as usize, 2));
    for ((title, series), area) in panels.iter().zip(areas) {
        let points = series.iter().flat_map(|(_, p)| p.iter());
        let x_max = points.clone().map(|p| p.0).fold(1.0, f64::max);
        let y_max = points
            .map(|p| p.1)
            .filter(|v| v.is_finite())
            .fold(0.0, f64::max);
        let y_max = if y_max > 0.0 { y_max * 1.15 } else { 1.0 };
        let mut chart = ChartBuilder::on(&area)
            .caption(title, (FONT, 17))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..x_max, 0f64..y_max)?;
        chart
            .configure_mesh()
            .x_desc("time (s)")
            .label_style((FONT, 12))
            .x_label_formatter(&|v| format!("{v:.0}"))
            .draw()?;
        for (i, (label, pts)) in series.iter().enumerate() {
            let c = COLORS[i % COLORS.len()];
            let pts: Vec<(f64, f64)> = pts.iter().copied().filter(|p| p.1.is_finite()).collect();
            chart
                .draw_series(LineSeries::new(pts, c.stroke_width(2)))?
                .label(label.clone())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], c.stroke_width(3)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font((FONT, 12))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

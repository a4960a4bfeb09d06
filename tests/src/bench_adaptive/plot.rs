//! One PNG per scenario, so an operator sees what happened over time: p99 latency per second,
//! the share of requests failing, and the table share of the backend the scenario is about,
//! one line per policy. Text is drawn with DejaVu Sans compiled in, so no system fonts are
//! needed.

use std::path::Path;
use std::sync::Once;

use anyhow::anyhow;
use plotters::prelude::*;

use super::harness::RunResult;
use super::report::Report;
use super::scenario::{Change, Policy, REQUEST_TIMEOUT_MS, Scenario, WARMUP_S};
use crate::backend_name;

const FONT: &str = "sans-serif";
const SIZE: (u32, u32) = (1200, 1050);
/// Latency axis: 1 ms to the request timeout.
const LATENCY_MIN_MS: f64 = 1.0;

pub fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular()).is_err()
        {
            eprintln!("warning: the embedded font did not load; plots will lack text");
        }
    });
}

fn color(policy: Policy) -> RGBColor {
    match policy {
        Policy::StaticEqual => RGBColor(220, 40, 40),
        Policy::StaticEqualHttp => RGBColor(230, 150, 20),
        Policy::Oracle => RGBColor(40, 90, 220),
        Policy::Adaptive => RGBColor(0, 150, 60),
    }
}

/// Draws `scenario`'s figure to `path`.
pub fn scenario(report: &Report, scenario: &Scenario, path: &Path) -> anyhow::Result<()> {
    register_font();
    draw(report, scenario, path).map_err(|e| anyhow!("failed to draw {}: {e}", path.display()))
}

fn draw(
    report: &Report,
    scenario: &Scenario,
    path: &Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let runs: Vec<(Policy, &RunResult)> = Policy::ALL
        .into_iter()
        .filter_map(|p| Some((p, report.run(&scenario.name, p)?)))
        .filter(|(_, r)| r.series.is_some())
        .collect();
    let duration = scenario.duration_s;
    let max_ms = REQUEST_TIMEOUT_MS as f64;
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let (header, root) = root.split_vertically(64);
    header.draw_text(
        &scenario.headline(),
        &(FONT, 20).into_text_style(&header),
        (12, 8),
    )?;
    header.draw_text(
        &scenario.timeline(),
        &(FONT, 17).into_text_style(&header),
        (12, 36),
    )?;
    let panels = root.split_by_breakpoints([] as [u32; 0], [430, 680]);
    let events: Vec<f64> = scenario.events.iter().map(|e| e.at_s).collect();

    // 1. p99 latency per second.
    let mut chart = ChartBuilder::on(&panels[0])
        .caption(
            "p99 latency of the requests due in each second (ms, log scale; grey: warm-up, \
             dashed: events)",
            (FONT, 16),
        )
        .margin(12)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..duration, (LATENCY_MIN_MS..max_ms).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("time (s)")
        .y_desc("p99 ms")
        .label_style((FONT, 13))
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()?;
    chart.draw_series(std::iter::once(Rectangle::new(
        [(0.0, LATENCY_MIN_MS), (WARMUP_S.min(duration), max_ms)],
        BLACK.mix(0.06).filled(),
    )))?;
    for &at in &events {
        chart.draw_series(DashedLineSeries::new(
            [(at, LATENCY_MIN_MS), (at, max_ms)],
            6,
            4,
            BLACK.mix(0.5).stroke_width(1),
        ))?;
    }
    for (policy, run) in &runs {
        let series = run.series.as_ref().expect("filtered");
        let points = series
            .p99_ms
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.map(|v| (i as f64 + 0.5, v.clamp(LATENCY_MIN_MS, max_ms))));
        let c = color(*policy);
        chart
            .draw_series(LineSeries::new(points, c.stroke_width(2)))?
            .label(policy.name())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], c.stroke_width(3)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font((FONT, 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;

    // 2. Failed requests per second.
    let mut chart = ChartBuilder::on(&panels[1])
        .caption(
            "failed requests (timeouts, refusals, 503) as % of those due in each second",
            (FONT, 16),
        )
        .margin(12)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..duration, 0f64..100f64)?;
    chart
        .configure_mesh()
        .x_desc("time (s)")
        .y_desc("% failed")
        .label_style((FONT, 13))
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()?;
    for (policy, run) in &runs {
        let series = run.series.as_ref().expect("filtered");
        let points = series
            .requests
            .iter()
            .zip(&series.errors)
            .enumerate()
            .filter(|(_, (n, _))| **n > 0)
            .map(|(i, (n, e))| (i as f64 + 0.5, 100.0 * *e as f64 / *n as f64));
        chart.draw_series(LineSeries::new(points, color(*policy).stroke_width(2)))?;
    }

    // 3. The focus backend's share of the table.
    let focus = backend_name(scenario.focus);
    let mut chart = ChartBuilder::on(&panels[2])
        .caption(
            format!("{focus}'s share of the lbx table (%); black: its share of the true capacity"),
            (FONT, 16),
        )
        .margin(12)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..duration, 0f64..100f64)?;
    chart
        .configure_mesh()
        .x_desc("time (s)")
        .y_desc("% of slots")
        .label_style((FONT, 13))
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()?;
    chart.draw_series(LineSeries::new(
        capacity_share(scenario),
        BLACK.stroke_width(1),
    ))?;
    for (policy, run) in &runs {
        let points = run.samples.iter().filter_map(|s| {
            let total: u64 = s.backends.iter().map(|b| b.table_slots).sum();
            let mine = s.backends.iter().find(|b| b.name == focus)?.table_slots;
            (total > 0).then(|| (s.at_s, 100.0 * mine as f64 / total as f64))
        });
        chart.draw_series(LineSeries::new(points, color(*policy).stroke_width(2)))?;
    }
    root.present()?;
    Ok(())
}

/// The focus backend's share of the total capacity over time, as a step line.
fn capacity_share(scenario: &Scenario) -> Vec<(f64, f64)> {
    let mut caps: Vec<f64> = scenario.capacities.iter().map(|&c| f64::from(c)).collect();
    let share = |caps: &[f64]| {
        let total: f64 = caps.iter().sum();
        if total > 0.0 {
            100.0 * caps[scenario.focus - 1] / total
        } else {
            0.0
        }
    };
    let mut points = vec![(0.0, share(&caps))];
    for e in &scenario.events {
        points.push((e.at_s, share(&caps)));
        match e.change {
            Change::Capacity { backend, rps } => caps[backend - 1] = f64::from(rps),
            Change::Stop { backend } => caps[backend - 1] = 0.0,
            Change::Start { backend } => {
                caps[backend - 1] = f64::from(scenario.capacities[backend - 1]);
            }
        }
        points.push((e.at_s, share(&caps)));
    }
    points.push((scenario.duration_s, share(&caps)));
    points
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_share_steps_with_the_events() {
        let s = &Scenario::all()[2]; // failure of backend-3
        let points = capacity_share(s);
        assert!((points[0].1 - 100.0 / 3.0).abs() < 1e-9);
        assert!(points.contains(&(15.0, 0.0)), "{points:?}");
        assert_eq!(points.last().map(|p| p.0), Some(s.duration_s));
    }

    #[test]
    fn a_figure_renders_with_text() {
        let mut report = Report {
            scenarios: Scenario::all(),
            ..Default::default()
        };
        let s = report.scenarios[0].clone();
        let records: Vec<_> = (0..4000)
            .map(|i| super::super::records::Record {
                at_s: f64::from(i) / 100.0,
                lateness_ms: 0.0,
                latency_ms: 3.0 + f64::from(i % 50),
                backend: backend_name(1 + (i as usize % 3)),
                outcome: super::super::records::Outcome::Ok,
            })
            .collect();
        report.runs.push(RunResult {
            scenario: s.name.clone(),
            policy: Policy::Oracle.name().into(),
            series: Some(super::super::stats::Series::of(&records, s.duration_s)),
            ..Default::default()
        });
        let dir = std::env::temp_dir().join(format!("lbx-plot-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("figure.png");
        scenario(&report, &s, &path).expect("draws");
        let size = std::fs::metadata(&path).unwrap().len();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(size > 10_000, "a real picture, got {size} bytes");
    }
}

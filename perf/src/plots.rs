//! PNG plots from a [`Results`]: throughput and rate figures per target as
//! grouped bars (median, with a whisker from min to max), and latency CDFs.
//! Rendered with plotters' bitmap backend and ab_glyph using the font in
//! assets/ (a DejaVu Sans subset), so no system font or fontconfig is used.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Result};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::model::{LatencyFigure, Results};
use crate::probes;

const FONT: &[u8] = include_bytes!("../assets/DejaVuSans-subset.ttf");
const FAMILY: &str = "sans-serif";
/// Colour per target, in the order targets are listed in the results.
const PALETTE: [RGBColor; 6] = [
    RGBColor(0xd6, 0x27, 0x28), // torchfs: red
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x7f, 0x7f, 0x7f),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0xff, 0x7f, 0x0e),
];

fn register_font() -> Result<()> {
    plotters::style::register_font(FAMILY, FontStyle::Normal, FONT)
        .map_err(|_| anyhow!("the shipped font does not parse"))
}

/// One bar group: a figure and, per target, (median, min, max).
struct Row {
    label: String,
    bars: Vec<(usize, f64, f64, f64)>,
}

/// Writes every plot into `dir`; returns the files written.
pub fn render_all(results: &Results, dir: &Path) -> Result<Vec<PathBuf>> {
    register_font()?;
    std::fs::create_dir_all(dir)?;
    let targets = target_order(results);
    let mut written = Vec::new();
    type UnitFilter = fn(&str) -> bool;
    let groups: [(&str, &str, UnitFilter); 2] = [
        ("throughput.png", "Throughput (MB/s, log scale)", |u| {
            u == "MB/s"
        }),
        ("rates.png", "Rates (per second, log scale)", |u| {
            u.ends_with("/s") && u != "MB/s" && u != "GB/s"
        }),
    ];
    for (file, title, wanted) in groups {
        let rows = rows_for(results, &targets, wanted);
        if rows.is_empty() {
            continue;
        }
        let path = dir.join(file);
        bars(&path, title, &rows, &targets)?;
        written.push(path);
    }
    for l in results.latencies.iter().map(|l| (&l.workload, &l.phase)) {
        let file = format!("latency-{}-{}.png", l.0, l.1);
        let path = dir.join(&file);
        if written.contains(&path) {
            continue;
        }
        let series: Vec<&LatencyFigure> = results
            .latencies
            .iter()
            .filter(|x| &x.workload == l.0 && &x.phase == l.1 && !x.cdf_us.is_empty())
            .collect();
        if series.is_empty() {
            continue;
        }
        let title = format!("{} {}: per-request latency CDF", l.0, l.1);
        cdf(&path, &title, &series, &targets)?;
        written.push(path);
    }
    Ok(written)
}

/// Targets in results order, then any target only seen in figures (e.g.
/// "isa-l"); the probe pseudo-target is not plotted.
fn target_order(results: &Results) -> Vec<String> {
    let mut order: Vec<String> = results.targets.iter().map(|t| t.name.clone()).collect();
    for f in &results.figures {
        if f.target != probes::TARGET && !order.contains(&f.target) {
            order.push(f.target.clone());
        }
    }
    order
}

fn rows_for(results: &Results, targets: &[String], wanted: fn(&str) -> bool) -> Vec<Row> {
    let mut rows: Vec<Row> = Vec::new();
    for f in &results.figures {
        if f.target == probes::TARGET || !wanted(&f.unit) {
            continue;
        }
        let Some(s) = f.summary else { continue };
        let Some(t) = targets.iter().position(|t| t == &f.target) else {
            continue;
        };
        let label = if f.unit == "MB/s" {
            format!("{} {}", f.workload, f.metric.trim_end_matches(" MB/s"))
        } else {
            format!("{} {} ({})", f.workload, f.metric, f.unit)
        };
        match rows.iter_mut().find(|r| r.label == label) {
            Some(r) => r.bars.push((t, s.median, s.min, s.max)),
            None => rows.push(Row {
                label,
                bars: vec![(t, s.median, s.min, s.max)],
            }),
        }
    }
    // A bar with nothing beside it compares nothing (such figures, e.g. the
    // epoch cache's per-mode ones, are in the report's tables).
    rows.retain(|r| r.bars.len() > 1);
    rows
}

fn bars(path: &Path, title: &str, rows: &[Row], targets: &[String]) -> Result<()> {
    let used: Vec<usize> = (0..targets.len())
        .filter(|t| rows.iter().any(|r| r.bars.iter().any(|b| b.0 == *t)))
        .collect();
    let slots = used.len().max(1);
    let height = 110 + rows.len() as u32 * (slots as u32 * 12 + 14);
    // Room for the longest label (about 7 px a character at 13 px).
    let chars_max = rows
        .iter()
        .map(|r| r.label.chars().count())
        .max()
        .unwrap_or(0);
    let label_px = (chars_max as u32 * 7 + 24).clamp(120, 640);
    let root = BitMapBackend::new(path, (780 + label_px, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let values = rows
        .iter()
        .flat_map(|r| r.bars.iter().flat_map(|b| [b.1, b.2, b.3]));
    let (lo, hi) = values
        .filter(|v| *v > 0.0)
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        return Ok(());
    }
    // Room on the right for the legend.
    let (lo, hi) = (lo / 2.0, hi * 8.0);
    let n = rows.len() as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FAMILY, 20))
        .margin(12)
        .margin_right(48)
        .x_label_area_size(30)
        .y_label_area_size(label_px)
        .build_cartesian_2d((lo..hi).log_scale(), 0f64..n)
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(0)
        .x_labels(8)
        .max_light_lines(1)
        .x_label_style((FAMILY, 13))
        .x_label_formatter(&|v| crate::units::format_value(*v))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    let band = 0.8 / slots as f64;
    for (slot, &t) in used.iter().enumerate() {
        let color = PALETTE[t % PALETTE.len()];
        let mut rects = Vec::new();
        let mut whiskers = Vec::new();
        for (r, row) in rows.iter().enumerate() {
            for &(_, median, min, max) in row.bars.iter().filter(|b| b.0 == t) {
                let top = n - r as f64 - 0.1 - slot as f64 * band;
                let (y0, y1) = (top - band * 0.9, top);
                rects.push(Rectangle::new(
                    [(lo, y0), (median.max(lo), y1)],
                    color.filled(),
                ));
                let yc = (y0 + y1) / 2.0;
                whiskers.push(PathElement::new(
                    vec![(min.max(lo), yc), (max.max(lo), yc)],
                    BLACK.stroke_width(1),
                ));
            }
        }
        chart
            .draw_series(rects)
            .map_err(|e| anyhow!("{e}"))?
            .label(targets[t].as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
        chart.draw_series(whiskers).map_err(|e| anyhow!("{e}"))?;
    }
    let label_style =
        TextStyle::from((FAMILY, 13).into_font()).pos(Pos::new(HPos::Right, VPos::Center));
    for (r, row) in rows.iter().enumerate() {
        let (x, y) = chart.backend_coord(&(lo, n - r as f64 - 0.5));
        root.draw(&Text::new(
            row.label.clone(),
            (x - 6, y),
            label_style.clone(),
        ))
        .map_err(|e| anyhow!("{e}"))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font((FAMILY, 13))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

fn cdf(path: &Path, title: &str, series: &[&LatencyFigure], targets: &[String]) -> Result<()> {
    let root = BitMapBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let ms = series
        .iter()
        .flat_map(|s| s.cdf_us.iter().map(|p| p.0 / 1000.0))
        .filter(|v| *v > 0.0);
    let (lo, hi) = ms.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        return Ok(());
    }
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FAMILY, 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d((lo / 1.5..hi * 1.5).log_scale(), 0f64..1.0)
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_labels(8)
        .max_light_lines(1)
        .x_desc("latency (ms, log scale)")
        .y_desc("fraction of requests")
        .label_style((FAMILY, 13))
        .axis_desc_style((FAMILY, 14))
        .x_label_formatter(&|v| crate::units::format_value(*v))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    for s in series {
        let t = targets.iter().position(|t| t == &s.target).unwrap_or(0);
        let color = PALETTE[t % PALETTE.len()];
        let points: Vec<(f64, f64)> = s
            .cdf_us
            .iter()
            .map(|&(us, frac)| ((us / 1000.0).max(lo), frac))
            .collect();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|e| anyhow!("{e}"))?
            .label(s.target.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 14, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font((FAMILY, 13))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

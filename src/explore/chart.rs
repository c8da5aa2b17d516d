//! The two charts of `moe explore`, as SVG: efficiency against quality (one panel per batch
//! size, one colour per format, each point labelled with its experts per token), and decode
//! tokens/s against batch size (one panel per format, one line per experts per token).

use std::path::Path;

use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use super::compare::{Comparison, Entry};
use super::{Exploration, Run};
use crate::error::{Error, Result};

const PANEL: (u32, u32) = (460, 380);
const FONT: &str = "sans-serif";

/// Decode efficiency (tokens per joule or per core-second) against perplexity on the
/// held-out text: up and to the left is better.
pub fn efficiency_vs_quality(ex: &Exploration, path: &Path) -> Result<()> {
    let batches = distinct(ex.runs.iter().map(|r| r.batch));
    let formats = distinct(ex.runs.iter().map(|r| r.format));
    draw(path, batches.len(), |root| {
        let title = format!(
            "{}: decode {} against perplexity",
            short_name(&ex.model),
            ex.energy.efficiency_unit
        );
        let panels = titled(root, &title, path)?;
        for (panel, &batch) in panels.iter().zip(&batches) {
            let runs: Vec<&Run> = ex.runs.iter().filter(|r| r.batch == batch).collect();
            let x = padded(runs.iter().map(|r| r.perplexity));
            let y = padded_from_zero(runs.iter().map(|r| r.efficiency()));
            let mut chart = axes(panel, &format!("batch {batch}"), x, y, path)?;
            mesh(&mut chart)
                .x_desc("perplexity on held-out text (lower is better)")
                .y_desc(ex.energy.efficiency_unit.as_str())
                .x_label_formatter(&|x| significant(*x))
                .draw()
                .map_err(plot_error(path))?;
            for (i, &format) in formats.iter().enumerate() {
                let colour = Palette99::pick(i).to_rgba();
                let mut points: Vec<&Run> = runs
                    .iter()
                    .copied()
                    .filter(|r| r.format == format)
                    .collect();
                points.sort_by_key(|r| r.experts_per_token);
                // The format's trade-off curve, in order of experts per token.
                chart
                    .draw_series(LineSeries::new(
                        points.iter().map(|r| (r.perplexity, r.efficiency())),
                        colour.mix(0.5).stroke_width(1),
                    ))
                    .map_err(plot_error(path))?;
                chart
                    .draw_series(points.iter().map(|r| {
                        EmptyElement::at((r.perplexity, r.efficiency()))
                            + Circle::new((0, 0), 4, colour.filled())
                            + Text::new(
                                format!("k={}", r.experts_per_token),
                                (6, -12),
                                (FONT, 11).into_font(),
                            )
                    }))
                    .map_err(plot_error(path))?
                    .label(format)
                    .legend(move |(x, y)| Circle::new((x + 8, y), 4, colour.filled()));
            }
            legend(&mut chart, SeriesLabelPosition::LowerRight).map_err(plot_error(path))?;
        }
        Ok(())
    })
}

/// Decode tokens/s of the whole batch against batch size, on a log-2 axis.
pub fn throughput_vs_batch(ex: &Exploration, path: &Path) -> Result<()> {
    let formats = distinct(ex.runs.iter().map(|r| r.format));
    let experts = distinct(ex.runs.iter().map(|r| r.experts_per_token));
    let max_batch = ex.runs.iter().map(|r| r.batch).max().unwrap_or(1);
    draw(path, formats.len(), |root| {
        let title = format!(
            "{}: decode tokens/s against batch size",
            short_name(&ex.model)
        );
        let panels = titled(root, &title, path)?;
        for (panel, &format) in panels.iter().zip(&formats) {
            let runs: Vec<&Run> = ex.runs.iter().filter(|r| r.format == format).collect();
            let y = padded_from_zero(runs.iter().map(|r| r.decode_tokens_per_s));
            // Batch sizes on a log-2 axis: x is log2(batch), labelled with the batch itself.
            let top = (max_batch as f64).log2();
            let x = -0.3..top + 0.3;
            let mut chart = axes(panel, format, x, y, path)?;
            mesh(&mut chart)
                .x_desc("sequences decoded together")
                .y_desc("decode tokens/s (whole batch)")
                .x_labels(top.ceil() as usize + 2)
                .x_label_formatter(&|x| {
                    let n = x.round();
                    if (x - n).abs() < 1e-6 && n >= 0.0 {
                        (1u64 << n as u32).to_string()
                    } else {
                        String::new()
                    }
                })
                .draw()
                .map_err(plot_error(path))?;
            for (i, &k) in experts.iter().enumerate() {
                let colour = Palette99::pick(i).to_rgba();
                let points: Vec<(f64, f64)> = runs
                    .iter()
                    .filter(|r| r.experts_per_token == k)
                    .map(|r| ((r.batch as f64).log2(), r.decode_tokens_per_s))
                    .collect();
                chart
                    .draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))
                    .map_err(plot_error(path))?
                    .label(format!("k = {k}"))
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 16, y)], colour.stroke_width(2))
                    });
                chart
                    .draw_series(points.iter().map(|&p| Circle::new(p, 3, colour.filled())))
                    .map_err(plot_error(path))?;
            }
            legend(&mut chart, SeriesLabelPosition::LowerRight).map_err(plot_error(path))?;
        }
        Ok(())
    })
}

/// One figure of a compared model.
type Figure = fn(&Entry) -> f64;

/// `moe compare`'s chart: quality on the held-out text against three costs of a decoded
/// token (FLOPs, bytes read, and the measured cost: joules or core-seconds), one colour per
/// model, each point labelled with its format. Down and to the left is better.
pub fn quality_vs_cost(c: &Comparison, path: &Path) -> Result<()> {
    let models = distinct(c.entries.iter().map(|e| e.model.as_str()));
    // Perplexities of different tokenizers do not compare; bits per byte do.
    let (quality, quality_desc): (Figure, &str) = match c.one_tokenizer() {
        true => (|e| e.profile.perplexity, "perplexity on held-out text"),
        false => (
            |e| e.profile.bits_per_byte,
            "bits per byte of held-out text",
        ),
    };
    let measured = match c.energy.efficiency_unit.as_str() {
        "tokens per core-second" => "core-milliseconds per token",
        _ => "millijoules per token",
    };
    let costs: [(&str, Figure); 3] = [
        ("MFLOPs per token", |e| e.profile.flops_per_token / 1e6),
        ("MB read per token", |e| e.profile.bytes_per_token / 1e6),
        (measured, |e| 1e3 / e.efficiency()),
    ];
    draw(path, costs.len(), |root| {
        let panels = titled(root, "quality against the cost of a decoded token", path)?;
        for (panel, (cost_desc, cost)) in panels.iter().zip(costs) {
            let x = padded_from_zero(c.entries.iter().map(cost));
            let y = padded(c.entries.iter().map(quality));
            let mut chart = axes(panel, cost_desc, x, y, path)?;
            mesh(&mut chart)
                .x_desc(cost_desc)
                .y_desc(quality_desc)
                .x_label_formatter(&|x| significant(*x))
                .draw()
                .map_err(plot_error(path))?;
            for (i, &model) in models.iter().enumerate() {
                let colour = Palette99::pick(i).to_rgba();
                let points: Vec<&Entry> = c.entries.iter().filter(|e| e.model == model).collect();
                chart
                    .draw_series(points.iter().map(|e| {
                        EmptyElement::at((cost(e), quality(e)))
                            + Circle::new((0, 0), 4, colour.filled())
                            + Text::new(e.format, (6, -12), (FONT, 11).into_font())
                    }))
                    .map_err(plot_error(path))?
                    .label(short_name(model).to_string())
                    .legend(move |(x, y)| Circle::new((x + 8, y), 4, colour.filled()));
            }
            // Cheap and good is down and to the left; costly models sit low on the right.
            legend(&mut chart, SeriesLabelPosition::UpperRight).map_err(plot_error(path))?;
        }
        Ok(())
    })
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

/// An SVG of `panels` panels side by side, drawn by `body` and written to `path`.
fn draw(path: &Path, panels: usize, body: impl FnOnce(&Area<'_>) -> Result<()>) -> Result<()> {
    let size = (PANEL.0 * panels.max(1) as u32, PANEL.1 + 40);
    let root = SVGBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error(path))?;
    body(&root)?;
    root.present().map_err(plot_error(path))
}

/// The title across the top, and the panels under it.
fn titled<'a>(root: &Area<'a>, title: &str, path: &Path) -> Result<Vec<Area<'a>>> {
    let (top, body) = root.split_vertically(40);
    top.draw_text(title, &(FONT, 18).into_text_style(&top), (12, 12))
        .map_err(plot_error(path))?;
    let count = root.dim_in_pixel().0 / PANEL.0;
    Ok(body.split_evenly((1, count.max(1) as usize)))
}

type Chart<'a> = ChartContext<'a, SVGBackend<'a>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// One panel's chart over the ranges `x` and `y`, captioned.
fn axes<'a>(
    panel: &Area<'a>,
    caption: &str,
    x: std::ops::Range<f64>,
    y: std::ops::Range<f64>,
    path: &Path,
) -> Result<Chart<'a>> {
    ChartBuilder::on(panel)
        .caption(caption, (FONT, 15))
        .margin(12)
        .x_label_area_size(38)
        .y_label_area_size(60)
        .build_cartesian_2d(x, y)
        .map_err(plot_error(path))
}

/// Axes with grid lines at the labels only, of three significant digits.
fn mesh<'a, 'b>(
    chart: &'b mut Chart<'a>,
) -> plotters::chart::MeshStyle<'a, 'b, RangedCoordf64, RangedCoordf64, SVGBackend<'a>> {
    let mut mesh = chart.configure_mesh();
    mesh.light_line_style(TRANSPARENT)
        .y_label_formatter(&|y| significant(*y));
    mesh
}

fn legend(
    chart: &mut Chart<'_>,
    position: SeriesLabelPosition,
) -> std::result::Result<(), DrawingAreaErrorKind<std::io::Error>> {
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .label_font((FONT, 12))
        .draw()
}

/// Values in first-seen order, each once.
fn distinct<T: PartialEq>(values: impl Iterator<Item = T>) -> Vec<T> {
    let mut out = Vec::new();
    for v in values {
        if !out.contains(&v) {
            out.push(v);
        }
    }
    out
}

/// The data's range with a margin of a tenth on each side (and some width for a single value).
fn padded(values: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if lo > hi {
        return 0.0..1.0;
    }
    let pad = ((hi - lo) * 0.1).max(hi.abs() * 0.02).max(1e-9);
    lo - pad..hi + pad
}

/// Zero up to the largest value and a fifth more (room for the legend).
fn padded_from_zero(values: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
    let hi = values.filter(|v| v.is_finite()).fold(0f64, f64::max);
    0.0..(hi * 1.2).max(1e-9)
}

/// The last part of a model's path or hub id.
fn short_name(model: &str) -> &str {
    model
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(model)
}

fn plot_error<E: std::fmt::Debug>(path: &Path) -> impl Fn(E) -> Error + '_ {
    move |e| Error::Io {
        path: path.to_path_buf(),
        cause: std::io::Error::other(format!("drawing the chart: {e:?}")),
    }
}

/// Three significant digits, without scientific notation for everyday magnitudes.
pub(super) fn significant(x: f64) -> String {
    if x == 0.0 || !x.is_finite() {
        return format!("{x}");
    }
    let digits = (2 - x.abs().log10().floor() as i32).max(0) as usize;
    format!("{x:.digits$}")
}

//! Training-curve pictures.
//!
//! Holds [`render_svg`], which draws a run's evaluations as one SVG document (800×600): the top
//! panel shows the training loss per evaluation epoch, the bottom panel the validation Recall@k
//! and NDCG@k at the cutoff that selects the best epoch (20, or the first of `evaluate.ks` without
//! 20), with a vertical line at the best epoch. It is drawn with `plotters`' SVG backend
//! and needs no font library: SVG `<text>` elements are laid out by whatever displays the file,
//! and `plotters` only estimates text extents for its own layout.
//!
//! Also holds [`CurvePoint`] (one evaluation) and [`CurvesError`].

use std::ops::Range;

use plotters::coord::Shift;
use plotters::coord::types::{RangedCoordf64, RangedCoordusize};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// Picture size in pixels (width, height).
const SIZE: (u32, u32) = (800, 600);
const FONT: &str = "sans-serif";
const TITLE_SIZE: i32 = 24;
const CAPTION_SIZE: i32 = 18;
const LABEL_SIZE: i32 = 13;
const DESC_SIZE: i32 = 14;
const MESSAGE_SIZE: i32 = 18;

/// Series colours (distinct from the black/grey mesh, so each series can be told apart).
const LOSS_COLOR: RGBColor = RGBColor(31, 119, 180);
const RECALL_COLOR: RGBColor = RGBColor(214, 39, 40);
const NDCG_COLOR: RGBColor = RGBColor(44, 160, 44);
const BEST_COLOR: RGBColor = RGBColor(148, 103, 189);

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

/// One evaluation of a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CurvePoint {
    /// Epoch after which the evaluation ran.
    pub epoch: usize,
    /// Mean training loss of that epoch.
    pub loss: f64,
    /// Validation Recall@k, k the cutoff given to [`render_svg`].
    pub recall: f64,
    /// Validation NDCG@k.
    pub ndcg: f64,
}

/// Errors of drawing the training curves.
#[derive(Debug, thiserror::Error)]
pub enum CurvesError {
    /// `plotters` failed to draw (its error, as text).
    #[error("drawing the training curves failed: {0}")]
    Draw(String),
    /// The values span a range too large to plot (the axis bounds overflow `f64`).
    #[error("cannot plot the training curves: {0}")]
    Range(String),
}

fn draw_err<E: std::error::Error + Send + Sync>(e: DrawingAreaErrorKind<E>) -> CurvesError {
    CurvesError::Draw(e.to_string())
}

/// SVG text of the run's curves: top panel training loss per evaluation epoch; bottom panel
/// valid Recall@`k` and NDCG@`k`, with a vertical line at `best_epoch`. Title includes `title`.
///
/// - Empty `points`: a valid SVG with the title and "no evaluations yet".
/// - Non-finite values (NaN, ±inf) are skipped, per series; a panel without any finite value
///   says so instead of drawing a line.
/// - A single epoch or constant values get a padded (non-empty) axis range.
/// - The best-epoch line is drawn only when `best_epoch` is one of the evaluated epochs.
pub fn render_svg(
    title: &str,
    points: &[CurvePoint],
    k: usize,
    best_epoch: usize,
) -> Result<String, CurvesError> {
    let mut svg = String::new();
    // All drawing areas (and so the backend, which borrows `svg`) live inside `draw`; the
    // backend is presented there and dropped when it returns, which ends the borrow.
    draw(&mut svg, title, points, k, best_epoch)?;
    Ok(svg)
}

fn draw(
    buf: &mut String,
    title: &str,
    points: &[CurvePoint],
    k: usize,
    best_epoch: usize,
) -> Result<(), CurvesError> {
    let root = SVGBackend::with_string(buf, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(draw_err)?;

    let title = title.trim();
    let heading = if title.is_empty() {
        "training curves".to_owned()
    } else {
        format!("{title}: training curves")
    };
    let body = root
        .titled(&heading, (FONT, TITLE_SIZE))
        .map_err(draw_err)?;

    if points.is_empty() {
        draw_message(&body, "no evaluations yet")?;
    } else {
        let panels = body.split_evenly((2, 1));
        let x = epoch_range(points);
        draw_loss_panel(&panels[0], x.clone(), points)?;
        draw_metric_panel(&panels[1], x, points, k, best_epoch)?;
    }

    root.present().map_err(draw_err)?;
    Ok(())
}

type Chart<'a, 'b> =
    ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordusize, RangedCoordf64>>;

/// A captioned panel over `x` epochs and `y` values, its mesh and axis descriptions drawn.
fn panel<'a, 'b>(
    area: &'a Area<'b>,
    caption: &str,
    y_desc: &str,
    x: Range<usize>,
    y: Range<f64>,
) -> Result<Chart<'a, 'b>, CurvesError> {
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FONT, CAPTION_SIZE))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x, y)
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc(y_desc)
        .label_style((FONT, LABEL_SIZE))
        .axis_desc_style((FONT, DESC_SIZE))
        .max_light_lines(4)
        .draw()
        .map_err(draw_err)?;
    Ok(chart)
}

/// Draws `text` centred on `area`.
fn draw_message(area: &Area<'_>, text: &str) -> Result<(), CurvesError> {
    let (w, h) = area.dim_in_pixel();
    let style =
        TextStyle::from((FONT, MESSAGE_SIZE).into_font()).pos(Pos::new(HPos::Center, VPos::Center));
    area.draw_text(text, &style, (w as i32 / 2, h as i32 / 2))
        .map_err(draw_err)
}

/// The x axis: from the first to the last evaluated epoch, widened by one epoch on each side
/// (where possible) when there is only one epoch.
fn epoch_range(points: &[CurvePoint]) -> Range<usize> {
    let lo = points.iter().map(|p| p.epoch).min().unwrap_or(0);
    let hi = points.iter().map(|p| p.epoch).max().unwrap_or(0);
    if lo < hi {
        lo..hi
    } else if lo == usize::MAX {
        lo - 1..lo
    } else {
        lo.saturating_sub(1)..lo + 1
    }
}

/// `(epoch, value)` pairs of the finite values, sorted by epoch.
fn finite_series(points: &[CurvePoint], value: impl Fn(&CurvePoint) -> f64) -> Vec<(usize, f64)> {
    let mut series: Vec<(usize, f64)> = points
        .iter()
        .map(|p| (p.epoch, value(p)))
        .filter(|(_, v)| v.is_finite())
        .collect();
    series.sort_by_key(|&(epoch, _)| epoch);
    series
}

/// A y range covering all finite `values` with a margin; `0..1` (padded) when there are none.
fn value_range(values: impl Iterator<Item = f64>) -> Result<Range<f64>, CurvesError> {
    let mut bounds: Option<(f64, f64)> = None;
    for v in values.filter(|v| v.is_finite()) {
        bounds = Some(match bounds {
            None => (v, v),
            Some((lo, hi)) => (lo.min(v), hi.max(v)),
        });
    }
    let (lo, hi) = bounds.unwrap_or((0.0, 1.0));
    padded_range(lo, hi)
}

/// Widens `lo..=hi` by 5% of its span on each side, or, when the span is (nearly) zero, by 10% of
/// the magnitude (at least 0.1). A non-negative range is not padded below zero.
fn padded_range(lo: f64, hi: f64) -> Result<Range<f64>, CurvesError> {
    let magnitude = lo.abs().max(hi.abs());
    let span = hi - lo;
    let pad = if span > (magnitude * 1e-9).max(1e-12) {
        span * 0.05
    } else {
        (magnitude * 0.1).max(0.1)
    };
    let bottom = if lo >= 0.0 && lo - pad < 0.0 {
        0.0
    } else {
        lo - pad
    };
    let top = hi + pad;
    if bottom.is_finite() && top.is_finite() && (top - bottom).is_finite() && bottom < top {
        Ok(bottom..top)
    } else {
        Err(CurvesError::Range(format!(
            "values from {lo} to {hi} give no finite axis range"
        )))
    }
}

fn draw_loss_panel(
    area: &Area<'_>,
    x: Range<usize>,
    points: &[CurvePoint],
) -> Result<(), CurvesError> {
    let loss = finite_series(points, |p| p.loss);
    let y = value_range(loss.iter().map(|&(_, v)| v))?;

    let mut chart = panel(area, "training loss", "loss", x, y)?;

    if loss.is_empty() {
        draw_message(
            &chart.plotting_area().strip_coord_spec(),
            "no finite training loss",
        )?;
    } else {
        chart
            .draw_series(LineSeries::new(loss, LOSS_COLOR.filled().stroke_width(2)).point_size(3))
            .map_err(draw_err)?;
    }
    Ok(())
}

fn draw_metric_panel(
    area: &Area<'_>,
    x: Range<usize>,
    points: &[CurvePoint],
    k: usize,
    best_epoch: usize,
) -> Result<(), CurvesError> {
    let recall = finite_series(points, |p| p.recall);
    let ndcg = finite_series(points, |p| p.ndcg);
    let y = value_range(recall.iter().chain(ndcg.iter()).map(|&(_, v)| v))?;
    let (y_lo, y_hi) = (y.start, y.end);
    let best_evaluated = points.iter().any(|p| p.epoch == best_epoch);

    let mut chart = panel(area, "validation metrics", &format!("metric @{k}"), x, y)?;

    let mut labelled = false;
    for (series, color, name) in [
        (recall, RECALL_COLOR, format!("Recall@{k}")),
        (ndcg, NDCG_COLOR, format!("NDCG@{k}")),
    ] {
        if series.is_empty() {
            continue;
        }
        chart
            .draw_series(LineSeries::new(series, color.filled().stroke_width(2)).point_size(3))
            .map_err(draw_err)?
            .label(name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 20, y + 5)], color.filled()));
        labelled = true;
    }
    if best_evaluated {
        chart
            .draw_series(LineSeries::new(
                [(best_epoch, y_lo), (best_epoch, y_hi)],
                BEST_COLOR.stroke_width(2),
            ))
            .map_err(draw_err)?
            .label(format!("best epoch {best_epoch}"))
            .legend(|(x, y)| {
                Rectangle::new([(x + 9, y - 7), (x + 11, y + 7)], BEST_COLOR.filled())
            });
        labelled = true;
    }
    if !points
        .iter()
        .any(|p| p.recall.is_finite() || p.ndcg.is_finite())
    {
        draw_message(
            &chart.plotting_area().strip_coord_spec(),
            "no finite validation metrics",
        )?;
    }
    if labelled {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font((FONT, LABEL_SIZE))
            .draw()
            .map_err(draw_err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SVG colour text `plotters-svg` writes for `c` (`#RRGGBB`, upper case).
    fn hex(c: RGBColor) -> String {
        format!("#{:02X}{:02X}{:02X}", c.0, c.1, c.2)
    }

    /// Lines of `svg` that are `<tag …>` elements containing `attr`.
    fn elements<'s>(svg: &'s str, tag: &str, attr: &str) -> Vec<&'s str> {
        let open = format!("<{tag} ");
        svg.lines()
            .filter(|l| l.starts_with(&open) && l.contains(attr))
            .collect()
    }

    fn polylines<'s>(svg: &'s str, color: RGBColor) -> Vec<&'s str> {
        elements(svg, "polyline", &format!("stroke=\"{}\"", hex(color)))
    }

    fn circles(svg: &str, color: RGBColor) -> usize {
        elements(svg, "circle", &format!("fill=\"{}\"", hex(color))).len()
    }

    /// Number of `x,y` pairs in a polyline's `points` attribute.
    fn vertex_count(polyline: &str) -> usize {
        let start = polyline.find("points=\"").expect("points attribute") + "points=\"".len();
        let end = start + polyline[start..].find('"').expect("closing quote");
        polyline[start..end].split_whitespace().count()
    }

    /// A polyline's vertices as (x, y) in SVG coordinates (y grows downwards).
    fn vertices(polyline: &str) -> Vec<(f64, f64)> {
        let start = polyline.find("points=\"").expect("points attribute") + "points=\"".len();
        let end = start + polyline[start..].find('"').expect("closing quote");
        polyline[start..end]
            .split_whitespace()
            .map(|p| {
                let (x, y) = p.split_once(',').expect("x,y");
                (x.parse().unwrap(), y.parse().unwrap())
            })
            .collect()
    }

    fn assert_valid_svg(svg: &str) {
        assert!(
            svg.starts_with("<svg"),
            "starts with: {:?}",
            &svg[..svg.len().min(40)]
        );
        assert!(svg.trim_end().ends_with("</svg>"), "not closed");
        assert_eq!(svg.matches("<svg").count(), 1);
        assert_eq!(svg.matches("<text").count(), svg.matches("</text>").count());
        assert!(
            !svg.contains("NaN") && !svg.contains("inf"),
            "non-finite number in SVG"
        );
    }

    fn point(epoch: usize, loss: f64, recall20: f64, ndcg20: f64) -> CurvePoint {
        CurvePoint {
            epoch,
            loss,
            recall: recall20,
            ndcg: ndcg20,
        }
    }

    fn run() -> Vec<CurvePoint> {
        vec![
            point(1, 0.90, 0.10, 0.05),
            point(2, 0.70, 0.18, 0.09),
            point(3, 0.60, 0.16, 0.08),
        ]
    }

    #[test]
    fn renders_both_panels_with_one_line_per_series() {
        let svg = render_svg("ml-1m-diffrec", &run(), 20, 2).unwrap();
        assert_valid_svg(&svg);
        assert!(svg.contains("ml-1m-diffrec: training curves"));

        for color in [LOSS_COLOR, RECALL_COLOR, NDCG_COLOR] {
            let lines = polylines(&svg, color);
            assert_eq!(lines.len(), 1, "one line for {}", hex(color));
            assert_eq!(vertex_count(lines[0]), 3);
            assert_eq!(
                circles(&svg, color),
                3,
                "one marker per point for {}",
                hex(color)
            );
        }
        let best = polylines(&svg, BEST_COLOR);
        assert_eq!(best.len(), 1);
        assert_eq!(vertex_count(best[0]), 2);

        // Each series is drawn from its own values: loss 0.90 > 0.70 > 0.60 falls (its y
        // grows); Recall 0.10, 0.18, 0.16 and NDCG 0.05, 0.09, 0.08 peak at epoch 2; Recall,
        // above NDCG at every epoch on their shared axis, is drawn higher (smaller y).
        let ys = |color| -> Vec<f64> {
            vertices(polylines(&svg, color)[0])
                .into_iter()
                .map(|(_, y)| y)
                .collect()
        };
        let (loss, recall, ndcg) = (ys(LOSS_COLOR), ys(RECALL_COLOR), ys(NDCG_COLOR));
        assert!(loss[0] < loss[1] && loss[1] < loss[2], "loss {loss:?}");
        for (name, v) in [("recall", &recall), ("ndcg", &ndcg)] {
            assert!(v[1] < v[2] && v[2] < v[0], "{name} {v:?}");
        }
        assert!(
            recall.iter().zip(&ndcg).all(|(r, n)| r < n),
            "{recall:?} vs {ndcg:?}"
        );

        // Text is emitted as SVG <text> without any font feature.
        for text in [
            "training loss",
            "validation metrics",
            ">\nepoch\n<",
            "Recall@20",
            "NDCG@20",
            "best epoch 2",
        ] {
            assert!(svg.contains(text), "missing text {text:?}");
        }
        // Legend swatches are rectangles in the series' colours.
        assert_eq!(
            elements(&svg, "rect", &format!("fill=\"{}\"", hex(RECALL_COLOR))).len(),
            1
        );
        assert_eq!(
            elements(&svg, "rect", &format!("fill=\"{}\"", hex(NDCG_COLOR))).len(),
            1
        );
    }

    #[test]
    fn the_metrics_are_named_by_their_cutoff() {
        // A run selected on Recall@5 (`evaluate.ks: [5, 10]`) is plotted and labelled at 5.
        let svg = render_svg("r", &run(), 5, 2).unwrap();
        for text in ["metric @5", "Recall@5", "NDCG@5"] {
            assert!(svg.contains(text), "missing text {text:?}");
        }
        assert!(!svg.contains("@20"), "{svg}");
        assert_eq!(polylines(&svg, RECALL_COLOR).len(), 1);
    }

    #[test]
    fn the_best_epoch_line_is_vertical() {
        let svg = render_svg("r", &run(), 20, 3).unwrap();
        let best = polylines(&svg, BEST_COLOR);
        assert_eq!(best.len(), 1);
        let start = best[0].find("points=\"").unwrap() + "points=\"".len();
        let xs: Vec<&str> = best[0][start..]
            .split('"')
            .next()
            .unwrap()
            .split_whitespace()
            .map(|pair| pair.split(',').next().unwrap())
            .collect();
        assert_eq!(xs.len(), 2);
        assert_eq!(xs[0], xs[1]);
    }

    #[test]
    fn no_best_line_for_an_epoch_that_was_not_evaluated() {
        let svg = render_svg("r", &run(), 20, 99).unwrap();
        assert_valid_svg(&svg);
        assert!(polylines(&svg, BEST_COLOR).is_empty());
        assert!(!svg.contains("best epoch"));
        assert_eq!(polylines(&svg, RECALL_COLOR).len(), 1);
    }

    #[test]
    fn empty_input_yields_a_valid_svg() {
        let svg = render_svg("fresh-run", &[], 20, 0).unwrap();
        assert_valid_svg(&svg);
        assert!(svg.contains("fresh-run"));
        assert!(svg.contains("no evaluations yet"));
        assert_eq!(svg.matches("<polyline").count(), 0);
    }

    #[test]
    fn a_single_point_renders() {
        let svg = render_svg("one", &[point(0, 0.5, 0.2, 0.1)], 20, 0).unwrap();
        assert_valid_svg(&svg);
        for color in [LOSS_COLOR, RECALL_COLOR, NDCG_COLOR] {
            let lines = polylines(&svg, color);
            assert_eq!(lines.len(), 1);
            assert_eq!(vertex_count(lines[0]), 1);
            assert_eq!(circles(&svg, color), 1);
        }
        assert_eq!(polylines(&svg, BEST_COLOR).len(), 1);
    }

    #[test]
    fn constant_series_do_not_error() {
        let points: Vec<_> = (1..=4).map(|e| point(e, 0.25, 0.0, 0.0)).collect();
        let svg = render_svg("flat", &points, 20, 4).unwrap();
        assert_valid_svg(&svg);
        assert_eq!(polylines(&svg, LOSS_COLOR).len(), 1);
        assert_eq!(polylines(&svg, RECALL_COLOR).len(), 1);
        assert_eq!(polylines(&svg, NDCG_COLOR).len(), 1);
    }

    #[test]
    fn non_finite_values_are_skipped() {
        let points = vec![
            point(1, 0.9, 0.10, 0.05),
            point(2, f64::NAN, 0.12, f64::NAN),
            point(3, f64::INFINITY, 0.14, 0.07),
            point(4, 0.5, f64::NEG_INFINITY, 0.08),
        ];
        let svg = render_svg("nan", &points, 20, 3).unwrap();
        assert_valid_svg(&svg);
        let loss = polylines(&svg, LOSS_COLOR);
        assert_eq!(loss.len(), 1);
        assert_eq!(vertex_count(loss[0]), 2);
        assert_eq!(circles(&svg, LOSS_COLOR), 2);
        assert_eq!(vertex_count(polylines(&svg, RECALL_COLOR)[0]), 3);
        assert_eq!(vertex_count(polylines(&svg, NDCG_COLOR)[0]), 3);
    }

    #[test]
    fn a_panel_without_finite_values_says_so() {
        let points = vec![point(1, f64::NAN, 0.1, 0.05), point(2, f64::NAN, 0.2, 0.1)];
        let svg = render_svg("all-nan-loss", &points, 20, 2).unwrap();
        assert_valid_svg(&svg);
        assert!(svg.contains("no finite training loss"));
        assert!(polylines(&svg, LOSS_COLOR).is_empty());
        assert_eq!(polylines(&svg, RECALL_COLOR).len(), 1);
    }

    #[test]
    fn the_title_is_escaped() {
        let svg = render_svg("a <b> & \"c\"", &run(), 20, 2).unwrap();
        assert_valid_svg(&svg);
        assert!(svg.contains("a &lt;b&gt; &amp; &quot;c&quot;: training curves"));
    }

    #[test]
    fn unsorted_epochs_are_drawn_in_epoch_order() {
        let points = vec![
            point(3, 0.6, 0.3, 0.2),
            point(1, 0.9, 0.1, 0.05),
            point(2, 0.7, 0.2, 0.1),
        ];
        let svg = render_svg("r", &points, 20, 3).unwrap();
        let loss = polylines(&svg, LOSS_COLOR);
        let start = loss[0].find("points=\"").unwrap() + "points=\"".len();
        let xs: Vec<i32> = loss[0][start..]
            .split('"')
            .next()
            .unwrap()
            .split_whitespace()
            .map(|pair| pair.split(',').next().unwrap().parse().unwrap())
            .collect();
        assert!(
            xs.windows(2).all(|w| w[0] < w[1]),
            "x not increasing: {xs:?}"
        );
    }

    #[test]
    fn padded_ranges_are_never_empty() {
        for (lo, hi) in [
            (0.0, 0.0),
            (0.5, 0.5),
            (-3.0, -3.0),
            (1e-20, 1e-20),
            (0.1, 0.9),
        ] {
            let r = padded_range(lo, hi).unwrap();
            assert!(
                r.start < r.end && r.start <= lo && hi <= r.end,
                "{lo}..{hi} -> {r:?}"
            );
        }
        assert_eq!(padded_range(0.0, 0.0).unwrap().start, 0.0);
        assert!(padded_range(-f64::MAX, f64::MAX).is_err());
        assert_eq!(epoch_range(&[point(0, 1.0, 0.0, 0.0)]), 0..1);
        assert_eq!(epoch_range(&[point(5, 1.0, 0.0, 0.0)]), 4..6);
    }
}

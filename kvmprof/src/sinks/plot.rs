//! `kvmprof plot`: pictures of recordings, SVG or PNG by the output's extension, drawn with
//! plotters.
//!
//! - Percentile distribution: latency against percentile on the axis HdrHistogram's plotters
//!   use, 1/(1-percentile) on a log scale, so 90%, 99%, 99.9%, ... are equally spaced and the
//!   tail gets as much room as the body. Several curves (reasons, stages, files) overlaid.
//! - Time series: per interval, the rate of measured exits (top) and their p99 (bottom).
use std::io::Write as _;
use std::path::Path;
use std::sync::Once;

use anyhow::{anyhow, bail, Result};
use hdrhistogram::Histogram;
use image::ImageEncoder as _;
use plotters::chart::{ChartContext, MeshStyle};
use plotters::coord::{ranged1d::Ranged, CoordTranslate, Shift};
use plotters::prelude::*;

use crate::data::series::IntervalRow;
use crate::util::{output, units};

/// One curve of a percentile plot.
pub struct Curve {
    pub label: String,
    pub hist: Histogram<u64>,
}

/// One curve of a time series.
pub struct Timeline {
    pub label: String,
    pub rows: Vec<IntervalRow>,
}

const SIZE: (u32, u32) = (1200, 720);
const FONT: &str = "sans-serif";

/// Distinct colours that stay apart on white (Tableau 10).
const COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

fn color(i: usize) -> RGBColor {
    COLORS[i % COLORS.len()]
}

/// Text is laid out with an embedded font (DejaVu Sans), so PNGs look the same on any host.
fn register_font() -> Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular())
            .map_err(|_| anyhow!("the embedded font does not load"));
    });
    result
}

enum Kind {
    Svg,
    Png,
}

fn kind(out: &Path) -> Result<Kind> {
    match out.extension().and_then(|e| e.to_str()) {
        Some(e) if e.eq_ignore_ascii_case("svg") => Ok(Kind::Svg),
        Some(e) if e.eq_ignore_ascii_case("png") => Ok(Kind::Png),
        _ => bail!(
            "{}: the plot's file name must end in .svg or .png",
            out.display()
        ),
    }
}

/// Runs `draw` on a drawing area of the backend `out`'s extension asks for, in memory, then
/// writes the picture as every output is written (`util::output`: checked before drawing,
/// devices written through, errors one line).
fn render(
    out: &Path,
    draw: impl Fn(&DrawingArea<SVGBackend, Shift>) -> Result<()>,
    draw_png: impl Fn(&DrawingArea<BitMapBackend, Shift>) -> Result<()>,
) -> Result<()> {
    register_font()?;
    let kind = kind(out)?;
    let mut file = output::open(out)?;
    let fail = |e: &dyn std::fmt::Display| anyhow!("{}: cannot draw: {e}", out.display());
    let bytes = match kind {
        Kind::Svg => {
            let mut svg = String::new();
            {
                let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
                draw(&root)?;
                root.present().map_err(|e| fail(&e))?;
            }
            svg.into_bytes()
        }
        Kind::Png => {
            let (w, h) = SIZE;
            let mut rgb = vec![0u8; w as usize * h as usize * 3];
            {
                let root = BitMapBackend::with_buffer(&mut rgb, SIZE).into_drawing_area();
                draw_png(&root)?;
                root.present().map_err(|e| fail(&e))?;
            }
            let mut png = Vec::new();
            image::codecs::png::PngEncoder::new(&mut png)
                .write_image(&rgb, w, h, image::ColorType::Rgb8)
                .map_err(|e| fail(&e))?;
            png
        }
    };
    file.write_all(&bytes)
        .map_err(|e| anyhow!("{}: cannot write: {e}", out.display()))?;
    file.finish()
}

/// The grid and axis text of every chart, with the font sizes of the axis descriptions and
/// of the labels.
fn house_mesh<'m, 'a, 'b, X: Ranged, Y: Ranged, DB: DrawingBackend>(
    mesh: &'m mut MeshStyle<'a, 'b, X, Y, DB>,
    (desc, label): (u32, u32),
) -> &'m mut MeshStyle<'a, 'b, X, Y, DB> {
    mesh.axis_desc_style((FONT, desc))
        .label_style((FONT, label))
        .light_line_style(RGBColor(242, 242, 242))
}

/// A series' line in colour `c`.
fn series_line(c: RGBColor) -> ShapeStyle {
    c.stroke_width(3)
}

/// The legend's mark of a series drawn with `line`: the same line, short.
fn legend_mark(line: ShapeStyle) -> impl Fn((i32, i32)) -> PathElement<(i32, i32)> {
    move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], line)
}

/// The legend box at `position`, labels in font size `font`.
fn legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    position: SeriesLabelPosition,
    font: u32,
) -> Result<()> {
    chart
        .configure_series_labels()
        .position(position)
        .label_font((FONT, font))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| anyhow!("cannot draw: {e}"))
}

/// 1/(1-q): the x of percentile `q` (a quantile in 0..1).
fn x_of(q: f64) -> f64 {
    1.0 / (1.0 - q)
}

/// `99.9%` for x = 1000.
fn percentile_label(x: f64) -> String {
    let p = 100.0 * (1.0 - 1.0 / x);
    let digits = (x.log10().round() as usize).saturating_sub(2);
    format!("{p:.digits$}%")
}

/// Percentile distributions of `curves`, overlaid.
pub fn percentiles(out: &Path, title: &str, curves: &[Curve]) -> Result<()> {
    let curves: Vec<&Curve> = curves.iter().filter(|c| !c.hist.is_empty()).collect();
    if curves.is_empty() {
        bail!("nothing to plot: no samples in the chosen reasons and stages");
    }
    // Up to the percentile the largest curve resolves: 1 in `len` samples.
    let most = curves.iter().map(|c| c.hist.len()).max().unwrap_or(1);
    let decades = (most as f64).log10().ceil().clamp(1.0, 7.0) as i32;
    let x_max = 10f64.powi(decades);
    let lo = curves
        .iter()
        .map(|c| c.hist.min())
        .min()
        .unwrap_or(1)
        .max(1);
    let hi = curves
        .iter()
        .map(|c| c.hist.max())
        .max()
        .unwrap_or(1)
        .max(lo + 1);
    let points: Vec<Vec<(f64, f64)>> = curves
        .iter()
        .map(|c| {
            c.hist
                .iter_quantiles(5)
                .map(|v| (v.quantile_iterated_to(), v.value_iterated_to() as f64))
                .filter(|&(q, _)| q < 1.0 && x_of(q) <= x_max)
                // A 0 ns value sits at minus infinity on the log axis: its segment would run
                // off the plot area, over the title and legend.
                .map(|(q, v)| (x_of(q), v.max(lo as f64)))
                .chain([(x_max, c.hist.max() as f64)])
                .collect()
        })
        .collect();
    let labels: Vec<String> = curves.iter().map(|c| c.label.clone()).collect();
    let ticks: Vec<f64> = (0..=decades).map(|d| 10f64.powi(d)).collect();

    macro_rules! draw {
        ($root:expr) => {{
            let root = $root;
            let fail = |e: &dyn std::fmt::Display| anyhow!("cannot draw: {e}");
            root.fill(&WHITE).map_err(|e| fail(&e))?;
            let mut chart = ChartBuilder::on(root)
                .caption(title, (FONT, 28))
                .margin(20)
                .margin_right(60)
                .x_label_area_size(60)
                .y_label_area_size(100)
                .build_cartesian_2d(
                    // A hair past the last decade, whose key point would fall on the range's
                    // open end and go unlabelled.
                    (1f64..x_max * 1.001)
                        .log_scale()
                        .with_key_points(ticks.clone()),
                    (lo as f64 * 0.8..hi as f64 * 1.25).log_scale(),
                )
                .map_err(|e| fail(&e))?;
            house_mesh(&mut chart.configure_mesh(), (22, 18))
                .x_desc("percentile")
                .y_desc("latency")
                .x_label_formatter(&|x| percentile_label(*x))
                .y_label_formatter(&|y| units::ns(*y as u64))
                .y_labels(12)
                .draw()
                .map_err(|e| fail(&e))?;
            for (i, (pts, label)) in points.iter().zip(&labels).enumerate() {
                let line = series_line(color(i));
                chart
                    .draw_series(LineSeries::new(pts.iter().copied(), line))
                    .map_err(|e| fail(&e))?
                    .label(label.as_str())
                    .legend(legend_mark(line));
            }
            legend(&mut chart, SeriesLabelPosition::UpperLeft, 18)
        }};
    }
    render(out, |root| draw!(root), |root| draw!(root))
}

/// Rate and p99 per interval of each timeline, one above the other.
pub fn time_series(out: &Path, title: &str, lines: &[Timeline]) -> Result<()> {
    let lines: Vec<&Timeline> = lines.iter().filter(|l| !l.rows.is_empty()).collect();
    if lines.is_empty() {
        bail!("nothing to plot: no intervals with samples in the chosen reasons and stages");
    }
    let secs = |r: &IntervalRow| r.offset_ns as f64 / 1e9;
    let end = |r: &IntervalRow| (r.offset_ns + r.length_ns) as f64 / 1e9;
    let x_max = lines
        .iter()
        .flat_map(|l| l.rows.iter().map(end))
        .fold(0.0, f64::max);
    let rate_max = lines
        .iter()
        .flat_map(|l| l.rows.iter().map(|r| r.rate_per_s))
        .fold(0.0, f64::max)
        * 1.15;
    // Linear from 0: a p99 that moves by a few percent should look like it.
    let p99_max = lines
        .iter()
        .flat_map(|l| l.rows.iter().map(|r| r.p99_ns))
        .max()
        .unwrap_or(1)
        .max(1) as f64
        * 1.15;

    macro_rules! draw {
        ($root:expr) => {{
            let root = $root;
            let fail = |e: &dyn std::fmt::Display| anyhow!("cannot draw: {e}");
            root.fill(&WHITE).map_err(|e| fail(&e))?;
            let root = root.titled(title, (FONT, 28)).map_err(|e| fail(&e))?;
            let (top, bottom) = root.split_vertically(SIZE.1 / 2 - 20);
            let mut rate = ChartBuilder::on(&top)
                .margin(15)
                .margin_right(40)
                .x_label_area_size(55)
                .y_label_area_size(100)
                .build_cartesian_2d(0f64..x_max, 0f64..rate_max.max(1.0))
                .map_err(|e| fail(&e))?;
            house_mesh(&mut rate.configure_mesh(), (20, 17))
                .x_desc("seconds")
                .y_desc("exits/s")
                .y_label_formatter(&|y| units::si(*y))
                .draw()
                .map_err(|e| fail(&e))?;
            let mut p99 = ChartBuilder::on(&bottom)
                .margin(15)
                .margin_right(40)
                .x_label_area_size(55)
                .y_label_area_size(100)
                .build_cartesian_2d(0f64..x_max, 0f64..p99_max)
                .map_err(|e| fail(&e))?;
            house_mesh(&mut p99.configure_mesh(), (20, 17))
                .x_desc("seconds")
                .y_desc("p99 latency")
                .y_label_formatter(&|y| units::ns(*y as u64))
                .draw()
                .map_err(|e| fail(&e))?;
            for (i, l) in lines.iter().enumerate() {
                let c = color(i);
                let line = series_line(c);
                // A point at each interval's middle, so one-interval series still show.
                let mid = |r: &IntervalRow| (secs(r) + end(r)) / 2.0;
                let rates: Vec<(f64, f64)> =
                    l.rows.iter().map(|r| (mid(r), r.rate_per_s)).collect();
                let p99s: Vec<(f64, f64)> =
                    l.rows.iter().map(|r| (mid(r), r.p99_ns as f64)).collect();
                rate.draw_series(LineSeries::new(rates.clone(), line))
                    .map_err(|e| fail(&e))?
                    .label(l.label.as_str())
                    .legend(legend_mark(line));
                rate.draw_series(rates.iter().map(|&p| Circle::new(p, 4, c.filled())))
                    .map_err(|e| fail(&e))?;
                p99.draw_series(LineSeries::new(p99s.clone(), line))
                    .map_err(|e| fail(&e))?;
                p99.draw_series(p99s.iter().map(|&p| Circle::new(p, 4, c.filled())))
                    .map_err(|e| fail(&e))?;
            }
            legend(&mut rate, SeriesLabelPosition::UpperRight, 17)
        }};
    }
    render(out, |root| draw!(root), |root| draw!(root))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_percentile_axis_labels_nines() {
        assert_eq!(percentile_label(1.0), "0%");
        assert_eq!(percentile_label(10.0), "90%");
        assert_eq!(percentile_label(100.0), "99%");
        assert_eq!(percentile_label(1000.0), "99.9%");
        assert_eq!(percentile_label(1e5), "99.999%");
    }

    #[test]
    fn plots_are_svg_or_png_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut h = crate::data::aggregate::new_histogram();
        for v in 1..5000u64 {
            h.record(1000 + v * 3).expect("records");
        }
        let curve = || Curve {
            label: "io cycle".into(),
            hist: h.clone(),
        };
        for name in ["p.svg", "p.png"] {
            let out = dir.path().join(name);
            percentiles(&out, "t", &[curve()]).expect("draws");
            assert!(std::fs::metadata(&out).expect("written").len() > 1000);
        }
        let err = percentiles(&dir.path().join("p.jpg"), "t", &[curve()]).expect_err("jpg");
        assert!(err.to_string().contains(".svg or .png"), "{err}");
    }
}

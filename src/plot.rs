//! The loss-curve picture of a run: from a [`History`] and a title, an SVG document and a PNG
//! image with the same layout — axes with tick values (steps on x, loss on y), the training
//! loss as a line, the validation loss as points joined by a line in another colour, a dashed
//! vertical marker at each restart labelled `restart (gen N)`, and a legend.
//!
//! ```text
//! History ─▶ draw() on a plotters backend ─┬▶ SVGBackend     ─▶ svg()  text
//!                                          └▶ BitMapBackend  ─▶ png()  png crate (RGB)
//! ```
//!
//! The drawing is plotters'. Its text is laid out and rasterized by ab_glyph from a font
//! compiled into the binary (Noto Sans Regular, from the `ttf-noto-sans` crate), so nothing
//! depends on system fonts or libraries; the SVG names the family `sans-serif`.

use std::{
    io,
    ops::Range,
    path::{Path, PathBuf},
    sync::OnceLock,
};

use plotters::{
    coord::Shift,
    element::{DashedPathElement, MultiLineText},
    prelude::*,
    style::{FontStyle, register_font},
};

use crate::history::History;

/// Picture width in pixels.
pub const WIDTH: u32 = 960;
/// Picture height in pixels.
pub const HEIGHT: u32 = 540;
/// File names [`write_files`] uses.
pub const SVG_FILE: &str = "loss.svg";
pub const PNG_FILE: &str = "loss.png";

/// The training loss colour (blue).
pub const TRAIN_COLOR: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
/// The validation loss colour (orange).
pub const VAL_COLOR: RGBColor = RGBColor(0xff, 0x7f, 0x0e);
/// The restart marker colour (red).
pub const RESTART_COLOR: RGBColor = RGBColor(0xd6, 0x27, 0x28);
/// Text and axes.
const INK: RGBColor = RGBColor(0x22, 0x22, 0x22);
const GRID: RGBColor = RGBColor(0xe4, 0xe4, 0xe4);

/// The family every text uses; the embedded font is registered under it.
const FONT: &str = "sans-serif";
/// Losses beyond this magnitude are treated as absent (they would ruin the axis).
const MAX_LOSS: f64 = 1e30;
/// The legend's text size, inner margin and sample width, in pixels (plotters' layout).
const LEGEND_TEXT: f64 = 16.0;
const LEGEND_MARGIN: i32 = 10;
const LEGEND_SAMPLE: i32 = 36;

/// The loss curve as an SVG document.
pub fn svg(history: &History, title: &str) -> io::Result<String> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (WIDTH, HEIGHT)).into_drawing_area();
        draw(&root, history, title).map_err(drawing_error)?;
        root.present().map_err(drawing_error)?;
    }
    Ok(out)
}

/// The loss curve as a PNG image (8-bit RGB, [`WIDTH`]×[`HEIGHT`]).
pub fn png(history: &History, title: &str) -> io::Result<Vec<u8>> {
    let (rgb, _) = rgb(history, title)?;
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, WIDTH, HEIGHT);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(io::Error::other)?;
    writer.write_image_data(&rgb).map_err(io::Error::other)?;
    writer.finish().map_err(io::Error::other)?;
    Ok(out)
}

/// Writes `loss.svg` and `loss.png` into `dir` and returns their paths.
pub fn write_files(history: &History, title: &str, dir: &Path) -> io::Result<(PathBuf, PathBuf)> {
    let svg_path = dir.join(SVG_FILE);
    let png_path = dir.join(PNG_FILE);
    std::fs::write(&svg_path, svg(history, title)?)?;
    std::fs::write(&png_path, png(history, title)?)?;
    Ok((svg_path, png_path))
}

/// The picture as RGB bytes, row by row, and where its plot area is.
fn rgb(history: &History, title: &str) -> io::Result<(Vec<u8>, PlotArea)> {
    let mut rgb = vec![0; (WIDTH * HEIGHT * 3) as usize];
    let area = {
        let root = BitMapBackend::with_buffer(&mut rgb, (WIDTH, HEIGHT)).into_drawing_area();
        let area = draw(&root, history, title).map_err(drawing_error)?;
        root.present().map_err(drawing_error)?;
        area
    };
    Ok((rgb, area))
}

fn drawing_error(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("drawing the loss curve: {e}"))
}

/// Registers the embedded font under [`FONT`], once per process.
fn font_loaded() -> bool {
    static LOADED: OnceLock<bool> = OnceLock::new();
    *LOADED.get_or_init(|| register_font(FONT, FontStyle::Normal, ttf_noto_sans::REGULAR).is_ok())
}

/// What the picture shows, in data coordinates.
struct Curves {
    train: Vec<(u64, f64)>,
    val: Vec<(u64, f64)>,
    steps: Range<u64>,
    loss: Range<f64>,
}

impl Curves {
    fn of(history: &History) -> Curves {
        let usable = |v: f64| v.is_finite() && v.abs() < MAX_LOSS;
        let train: Vec<(u64, f64)> = history
            .points
            .iter()
            .filter(|p| usable(p.loss))
            .map(|p| (p.step, p.loss))
            .collect();
        let val: Vec<(u64, f64)> = history
            .points
            .iter()
            .filter_map(|p| p.val_loss.filter(|v| usable(*v)).map(|v| (p.step, v)))
            .collect();
        let last = train
            .iter()
            .chain(&val)
            .map(|p| p.0)
            .chain(history.restarts.iter().map(|r| r.step))
            .fold(1, u64::max);
        let (lo, hi) = train
            .iter()
            .chain(&val)
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
                (lo.min(p.1), hi.max(p.1))
            });
        let (lo, hi) = if lo <= hi { (lo, hi) } else { (0.0, 1.0) };
        // A little room above and below; a flat curve gets a band around it.
        let pad = if hi - lo > 1e-9 * hi.abs().max(1.0) {
            (hi - lo) * 0.05
        } else {
            lo.abs().max(1.0) * 0.1
        };
        Curves {
            train,
            val,
            steps: 0..last,
            loss: lo - pad..hi + pad,
        }
    }
}

/// `s` without the characters XML 1.0 forbids (the SVG must stay well formed).
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
}

/// The pixels of the plot area (inside the axes), as plotters laid it out; the tests find
/// the curves and markers in the picture by it.
#[derive(Clone, Debug)]
#[cfg_attr(not(test), allow(dead_code))]
struct PlotArea {
    x: Range<i32>,
    y: Range<i32>,
}

/// Draws the picture on any plotters backend.
fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    history: &History,
    title: &str,
) -> Result<PlotArea, DrawingAreaErrorKind<DB::ErrorType>> {
    if !font_loaded() {
        return Err(DrawingAreaErrorKind::LayoutError);
    }
    let curves = Curves::of(history);
    let text = |size: f64| (FONT, size).into_font().color(&INK);

    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(root)
        .caption(printable(title), text(26.0))
        .margin(14)
        .margin_right(30)
        .x_label_area_size(50)
        .y_label_area_size(68)
        .build_cartesian_2d(curves.steps.clone(), curves.loss.clone())?;
    chart
        .configure_mesh()
        .bold_line_style(GRID)
        .light_line_style(TRANSPARENT)
        .axis_style(INK)
        .x_labels(9)
        .y_labels(7)
        .label_style(text(16.0))
        .axis_desc_style(text(18.0))
        .x_desc("step")
        .y_desc("loss")
        .draw()?;

    chart
        .draw_series(LineSeries::new(
            curves.train.iter().copied(),
            TRAIN_COLOR.stroke_width(2),
        ))?
        .label("train loss")
        .legend(|(x, y)| {
            PathElement::new(
                [(x, y), (x + LEGEND_SAMPLE - 8, y)],
                TRAIN_COLOR.stroke_width(2),
            )
        });
    if let [point] = curves.train[..] {
        // A line through one point draws nothing.
        chart.draw_series([Circle::new(point, 3, TRAIN_COLOR.filled())])?;
    }
    if !curves.val.is_empty() {
        chart
            .draw_series(LineSeries::new(curves.val.iter().copied(), &VAL_COLOR))?
            .label("validation loss")
            .legend(|(x, y)| {
                let half = (LEGEND_SAMPLE - 8) / 2;
                EmptyElement::at((x + half, y))
                    + PathElement::new([(-half, 0), (half, 0)], VAL_COLOR)
                    + Circle::new((0, 0), 4, VAL_COLOR.filled())
            });
        chart.draw_series(
            curves
                .val
                .iter()
                .map(|&p| Circle::new(p, 4, VAL_COLOR.filled())),
        )?;
    }

    // Restart markers: a dashed line over the whole height at the step resumed from.
    let restart_style = RESTART_COLOR.stroke_width(2);
    let top = curves.loss.end;
    for (i, restart) in history.restarts.iter().enumerate() {
        let x = restart.step;
        let marker =
            DashedPathElement::new([(x, curves.loss.start), (x, top)], 6, 4, restart_style);
        let drawn = chart.draw_series([marker])?;
        if i == 0 {
            drawn.label("restart").legend(move |(x, y)| {
                let mid = x + (LEGEND_SAMPLE - 8) / 2;
                DashedPathElement::new([(mid, y - 8), (mid, y + 8)], 4, 3, restart_style)
            });
        }
    }

    // The legend goes top right inside the plot area; restart labels go by the top of their
    // marker, stacked three deep so neighbours do not overwrite each other, and below the
    // legend where they would cross it.
    let mut legend_lines = vec!["train loss"];
    if !curves.val.is_empty() {
        legend_lines.push("validation loss");
    }
    if !history.restarts.is_empty() {
        legend_lines.push("restart");
    }
    let legend_font = (FONT, LEGEND_TEXT).into_font().color(&INK);
    let mut lines = MultiLineText::<_, &str>::new((0, 0), &legend_font);
    for line in &legend_lines {
        lines.push_line(*line);
    }
    let (text_w, text_h) = lines
        .estimate_dimension()
        .map_err(|_| DrawingAreaErrorKind::LayoutError)?;
    let (legend_w, legend_h) = (
        text_w + LEGEND_SAMPLE + 2 * LEGEND_MARGIN,
        text_h + 2 * LEGEND_MARGIN,
    );
    let (area_x, area_y) = chart.plotting_area().get_pixel_range();
    let legend_x = area_x.end - 5 - legend_w..area_x.end - 5;
    let label_font = (FONT, 16).into_font().color(&RESTART_COLOR);
    let line_h = 20;
    for (i, restart) in history.restarts.iter().enumerate() {
        let label = format!("restart (gen {})", restart.generation);
        let (w, _) = root.estimate_text_size(&label, &label_font)?;
        let (mx, _) = chart.backend_coord(&(restart.step, top));
        let left = if mx + 5 + w as i32 <= area_x.end - 4 {
            mx + 5
        } else {
            mx - 5 - w as i32
        };
        let mut y = area_y.start + 6 + line_h * (i % 3) as i32;
        if left < legend_x.end && left + w as i32 > legend_x.start {
            y += 5 + legend_h + 6;
        }
        root.draw(&Text::new(label, (left, y), label_font.clone()))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .margin(LEGEND_MARGIN)
        .legend_area_size(LEGEND_SAMPLE)
        .label_font(legend_font.clone())
        .background_style(WHITE)
        .border_style(RGBColor(0xb0, 0xb0, 0xb0))
        .draw()?;
    Ok(PlotArea {
        x: area_x,
        y: area_y,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Point, Restart};

    fn history(steps: u64, restarts: &[(u64, u64)]) -> History {
        let points = (1..=steps)
            .map(|s| Point {
                step: s,
                loss: 5.0 / (1.0 + s as f64 * 0.05),
                val_loss: (s % 10 == 0).then_some(5.2 / (1.0 + s as f64 * 0.04)),
                generation: 1 + restarts.iter().filter(|r| r.0 < s).count() as u64,
            })
            .collect();
        History {
            points,
            restarts: restarts
                .iter()
                .map(|&(step, generation)| Restart { step, generation })
                .collect(),
            skipped_lines: 0,
        }
    }

    /// Decodes a PNG with the png crate: (width, height, RGB bytes).
    fn decode(bytes: &[u8]) -> (u32, u32, Vec<u8>) {
        let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut reader = decoder.read_info().expect("a PNG header");
        let mut buf = vec![0; reader.output_buffer_size().expect("a sane size")];
        let info = reader.next_frame(&mut buf).expect("a frame");
        assert_eq!(info.color_type, png::ColorType::Rgb);
        assert_eq!(info.bit_depth, png::BitDepth::Eight);
        buf.truncate(info.buffer_size());
        (info.width, info.height, buf)
    }

    fn is(pixel: &[u8], color: RGBColor) -> bool {
        pixel == [color.0, color.1, color.2]
    }

    fn count_color(rgb: &[u8], color: RGBColor) -> usize {
        rgb.chunks_exact(3).filter(|p| is(p, color)).count()
    }

    /// How many pixels of a colour each column holds.
    fn columns(rgb: &[u8], color: RGBColor) -> Vec<usize> {
        let mut count = vec![0; WIDTH as usize];
        for (i, p) in rgb.chunks_exact(3).enumerate() {
            if is(p, color) {
                count[i % WIDTH as usize] += 1;
            }
        }
        count
    }

    fn hex(color: RGBColor) -> String {
        format!("#{:02X}{:02X}{:02X}", color.0, color.1, color.2)
    }

    /// The points of every polyline stroked in a colour, in document order.
    fn polylines(svg: &str, color: RGBColor) -> Vec<Vec<(i32, i32)>> {
        let stroke = format!("stroke=\"{}\"", hex(color));
        svg.lines()
            .filter(|l| l.starts_with("<polyline") && l.contains(&stroke))
            .map(|l| {
                let start = l.find("points=\"").expect("points") + "points=\"".len();
                let end = start + l[start..].find('"').unwrap();
                l[start..end]
                    .split_whitespace()
                    .map(|pair| {
                        let (x, y) = pair.split_once(',').unwrap();
                        (x.parse().unwrap(), y.parse().unwrap())
                    })
                    .collect()
            })
            .collect()
    }

    /// The longest polyline of a colour: the curve (the legend's sample has two points).
    fn curve(svg: &str, color: RGBColor) -> Vec<(i32, i32)> {
        polylines(svg, color)
            .into_iter()
            .max_by_key(Vec::len)
            .unwrap_or_default()
    }

    /// A small well-formedness check: tags nest, attributes are quoted, no stray `<` or `&`,
    /// no character XML 1.0 forbids.
    fn assert_well_formed(svg: &str) {
        let mut stack: Vec<&str> = Vec::new();
        let mut rest = svg;
        while let Some(open) = rest.find('<') {
            let text = &rest[..open];
            assert!(!text.contains('>'), "stray > in {text:?}");
            for (i, _) in text.match_indices('&') {
                let entity = &text[i..];
                assert!(
                    ["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"]
                        .iter()
                        .any(|e| entity.starts_with(e)),
                    "bad entity in {text:?}"
                );
            }
            let close = open + rest[open..].find('>').expect("an unterminated tag");
            let tag = &rest[open + 1..close];
            assert_eq!(tag.matches('"').count() % 2, 0, "unbalanced quotes: {tag}");
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(stack.pop(), Some(name), "mismatched </{name}>");
            } else if !tag.ends_with('/') {
                stack.push(tag.split_whitespace().next().unwrap_or(""));
            }
            rest = &rest[close + 1..];
        }
        assert!(stack.is_empty(), "unclosed: {stack:?}");
        assert!(svg.starts_with("<svg "));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
        assert!(
            !svg.chars()
                .any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r')),
            "a control character"
        );
    }

    #[test]
    fn the_png_decodes_to_the_stated_size_and_shows_the_curves() {
        let h = history(300, &[(120, 2)]);
        let (w, hgt, rgb) = decode(&png(&h, "tiny: loss").unwrap());
        assert_eq!((w, hgt), (WIDTH, HEIGHT));
        assert_eq!(rgb.len(), (WIDTH * HEIGHT * 3) as usize);
        let (drawn, area) = super::rgb(&h, "tiny: loss").unwrap();
        assert!(drawn == rgb, "the PNG holds the drawn pixels");
        assert!(
            area.x.len() > WIDTH as usize * 3 / 4 && area.y.len() > HEIGHT as usize * 2 / 3,
            "{area:?}"
        );
        assert!(
            count_color(&rgb, TRAIN_COLOR) > 500,
            "the train line is drawn"
        );
        assert!(
            count_color(&rgb, VAL_COLOR) > 300,
            "the validation points are drawn"
        );
        assert!(
            count_color(&rgb, RESTART_COLOR) > 200,
            "the restart marker is drawn"
        );
        assert!(count_color(&rgb, INK) > 500, "text and axes are drawn");

        // The restart marker: a dashed vertical line 120/300 of the way along the step axis
        // (which runs from 0 to the last step, 300), over most of the plot's height.
        let restart = columns(&rgb, RESTART_COLOR);
        let (x, &tallest) = restart.iter().enumerate().max_by_key(|(_, n)| **n).unwrap();
        assert!(tallest > area.y.len() / 2, "a tall marker: {tallest}");
        let along = (x as i32 - area.x.start) as f64 / area.x.len() as f64;
        assert!((along - 0.4).abs() < 0.01, "marker at {x}, plot {area:?}");
        let column: Vec<bool> = (0..HEIGHT)
            .map(|y| {
                let i = ((y * WIDTH) as usize + x) * 3;
                is(&rgb[i..i + 3], RESTART_COLOR)
            })
            .collect();
        let first = column.iter().position(|&on| on).unwrap();
        let last = column.iter().rposition(|&on| on).unwrap();
        assert!(
            column[first..last].iter().any(|&on| !on),
            "the marker is dashed"
        );

        // A falling loss: the train curve's pixels sit lower (greater y) on the right.
        let mean_y = |cols: Range<i32>| {
            let ys: Vec<usize> = rgb
                .chunks_exact(3)
                .enumerate()
                .filter(|(i, p)| {
                    cols.contains(&((i % WIDTH as usize) as i32)) && is(p, TRAIN_COLOR)
                })
                .map(|(i, _)| i / WIDTH as usize)
                .collect();
            assert!(!ys.is_empty(), "train pixels in {cols:?}");
            ys.iter().sum::<usize>() as f64 / ys.len() as f64
        };
        let (l, r) = (area.x.start, area.x.end);
        assert!(mean_y(l + 5..l + 100) + 50.0 < mean_y(r - 400..r - 300));
    }

    #[test]
    fn the_svg_has_both_curves_a_marker_per_restart_and_the_texts() {
        let h = history(250, &[(100, 2), (200, 3)]);
        let svg = svg(&h, "run <tiny> & co").unwrap();
        assert_well_formed(&svg);
        let train = curve(&svg, TRAIN_COLOR);
        assert_eq!(train.len(), 250);
        assert!(
            train.windows(2).all(|w| w[0].0 < w[1].0),
            "x grows with the step"
        );
        assert!(
            train.first().unwrap().1 < train.last().unwrap().1,
            "a falling loss goes down the picture"
        );
        assert!(
            train
                .iter()
                .all(|p| (0..WIDTH as i32).contains(&p.0) && (0..HEIGHT as i32).contains(&p.1))
        );
        let val = curve(&svg, VAL_COLOR);
        assert_eq!(val.len(), 25);
        let val_circles = svg
            .lines()
            .filter(|l| l.starts_with("<circle") && l.contains(&hex(VAL_COLOR)))
            .count();
        assert_eq!(
            val_circles,
            25 + 1,
            "a point per evaluation, one in the legend"
        );
        // Two dashed markers, each many short vertical pieces at one x.
        let dashes = polylines(&svg, RESTART_COLOR);
        let mut xs: Vec<i32> = dashes
            .iter()
            .filter(|d| d.iter().all(|p| p.0 == d[0].0))
            .map(|d| d[0].0)
            .collect();
        xs.sort();
        xs.dedup_by_key(|x| *x);
        assert!(xs.len() >= 2, "{xs:?}");
        let markers: Vec<i32> = xs
            .iter()
            .copied()
            .filter(|&x| dashes.iter().filter(|d| d[0].0 == x).count() > 10)
            .collect();
        assert_eq!(markers.len(), 2, "{xs:?}");
        // At steps 100 and 200 of the train curve's 1..=250.
        let at = |step: usize| train[step - 1].0;
        assert!((markers[0] - at(100)).abs() <= 1, "{markers:?}");
        assert!((markers[1] - at(200)).abs() <= 1, "{markers:?}");
        for text in [
            "run &lt;tiny&gt; &amp; co",
            "restart (gen 2)",
            "restart (gen 3)",
            "train loss",
            "validation loss",
            "step",
            "loss",
        ] {
            assert!(svg.contains(&format!(">\n{text}\n</text>")), "{text}");
        }
    }

    #[test]
    fn empty_and_single_point_histories_give_valid_pictures() {
        let one = History {
            points: vec![Point {
                step: 1,
                loss: 4.2,
                val_loss: Some(4.3),
                generation: 1,
            }],
            ..History::default()
        };
        for h in [History::default(), one.clone()] {
            let svg = svg(&h, "").unwrap();
            assert_well_formed(&svg);
            assert_eq!(curve(&svg, TRAIN_COLOR).len(), h.points.len().max(2));
            let (w, hgt, rgb) = decode(&png(&h, "").unwrap());
            assert_eq!((w, hgt), (WIDTH, HEIGHT));
            assert!(count_color(&rgb, INK) > 100, "axes and labels are drawn");
        }
        let (_, _, rgb) = decode(&png(&one, "one").unwrap());
        // The legend's sample line is 56 pixels (28 × 2); the lone point adds its dot.
        assert!(
            count_color(&rgb, TRAIN_COLOR) > 56 + 20,
            "a lone point is visible"
        );
        assert!(!svg(&History::default(), "").unwrap().contains("restart"));
    }

    #[test]
    fn hostile_values_never_reach_the_picture() {
        let h = History {
            points: vec![
                Point {
                    step: 1,
                    loss: f64::NAN,
                    val_loss: Some(f64::INFINITY),
                    generation: 1,
                },
                Point {
                    step: 2,
                    loss: 1e300,
                    val_loss: None,
                    generation: 1,
                },
                Point {
                    step: u64::MAX,
                    loss: 2.0,
                    val_loss: Some(-3.0),
                    generation: 1,
                },
            ],
            restarts: vec![Restart {
                step: 0,
                generation: u64::MAX,
            }],
            skipped_lines: 0,
        };
        let svg = svg(&h, "\u{1}bad\u{0} title é").unwrap();
        assert_well_formed(&svg);
        assert!(svg.contains("bad\u{fffd} title é"));
        assert!(svg.contains(&format!("restart (gen {})", u64::MAX)));
        let (w, _, _) = decode(&png(&h, "\u{1}é").unwrap());
        assert_eq!(w, WIDTH);
    }

    #[test]
    fn write_files_writes_both_pictures() {
        let dir = tempfile::tempdir().unwrap();
        let (svg_path, png_path) = write_files(&history(20, &[]), "t", dir.path()).unwrap();
        assert_eq!(svg_path, dir.path().join("loss.svg"));
        assert_eq!(png_path, dir.path().join("loss.png"));
        assert!(
            std::fs::read_to_string(svg_path)
                .unwrap()
                .starts_with("<svg")
        );
        let bytes = std::fs::read(png_path).unwrap();
        assert_eq!(decode(&bytes).0, WIDTH);
        let missing = dir.path().join("no/such/dir");
        assert!(write_files(&History::default(), "t", &missing).is_err());
    }
}

//! The loss-curve picture of a run: from a [`History`] and a title, an SVG document and a PNG
//! image with the same layout — axes with round tick values (steps on x, loss on y), the
//! training loss as a line, the validation loss as points joined by a line in another colour,
//! a dashed vertical marker at each restart labelled `restart (gen N)`, and a legend.
//!
//! ```text
//! History ─▶ scene (shapes in pixel coordinates, laid out once) ─┬▶ svg()  text
//!                                                                └▶ png()  raster::render ─▶ png crate
//! ```
//!
//! The PNG is rasterized here ([`raster`]: Wu lines, a built-in 5×7 bitmap [`font`]) and
//! encoded with the `png` crate; nothing depends on system fonts or libraries.

pub mod font;
pub mod raster;

use std::{
    fmt::Write as _,
    io,
    path::{Path, PathBuf},
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
pub const TRAIN_COLOR: Rgb = Rgb(0x1f, 0x77, 0xb4);
/// The validation loss colour (orange).
pub const VAL_COLOR: Rgb = Rgb(0xff, 0x7f, 0x0e);
/// The restart marker colour (red).
pub const RESTART_COLOR: Rgb = Rgb(0xd6, 0x27, 0x28);
const BACKGROUND: Rgb = Rgb(0xff, 0xff, 0xff);
const INK: Rgb = Rgb(0x22, 0x22, 0x22);
const GRID: Rgb = Rgb(0xe4, 0xe4, 0xe4);

/// Text scale: every glyph cell is this many pixels square.
const TEXT_SCALE: u32 = 2;
/// Losses beyond this magnitude are treated as absent (they would ruin the axis).
const MAX_LOSS: f64 = 1e30;

/// The plot area.
const LEFT: f64 = 90.0;
const RIGHT: f64 = WIDTH as f64 - 30.0;
const TOP: f64 = 64.0;
const BOTTOM: f64 = HEIGHT as f64 - 62.0;

/// An sRGB colour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rgb(pub u8, pub u8, pub u8);

impl Rgb {
    fn hex(self) -> String {
        format!("#{:02x}{:02x}{:02x}", self.0, self.1, self.2)
    }
}

/// Where a text's `x` is: its start, middle or end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Anchor {
    Start,
    Middle,
    End,
}

/// A shape in pixel coordinates (SVG user units).
#[derive(Clone, Debug)]
pub enum Shape {
    Line {
        from: (f64, f64),
        to: (f64, f64),
        width: f64,
        /// (dash, gap) lengths.
        dash: Option<(f64, f64)>,
    },
    Polyline {
        points: Vec<(f64, f64)>,
        width: f64,
    },
    Circle {
        center: (f64, f64),
        radius: f64,
    },
    Rect {
        x: f64,
        y: f64,
        w: f64,
        h: f64,
        /// Filled with the item's colour.
        fill: bool,
        stroke: Option<Rgb>,
    },
    /// Bitmap-font text with its baseline at `at.1`.
    Text {
        at: (f64, f64),
        text: String,
        anchor: Anchor,
        scale: u32,
    },
}

/// A shape, its colour, and its role (the SVG `class`).
#[derive(Clone, Debug)]
pub struct Item {
    pub shape: Shape,
    pub color: Rgb,
    pub class: &'static str,
}

/// The laid-out picture both renderers draw.
#[derive(Clone, Debug)]
pub struct Scene {
    pub width: u32,
    pub height: u32,
    pub background: Rgb,
    pub items: Vec<Item>,
}

/// The loss curve as an SVG document.
pub fn svg(history: &History, title: &str) -> String {
    to_svg(&scene(history, title))
}

/// The loss curve as a PNG image (RGB, [`WIDTH`]×[`HEIGHT`]).
pub fn png(history: &History, title: &str) -> Result<Vec<u8>, png::EncodingError> {
    let canvas = raster::render(&scene(history, title));
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, canvas.width, canvas.height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(&canvas.pixels)?;
    writer.finish()?;
    Ok(out)
}

/// Writes `loss.svg` and `loss.png` into `dir` and returns their paths.
pub fn write_files(history: &History, title: &str, dir: &Path) -> io::Result<(PathBuf, PathBuf)> {
    let svg_path = dir.join(SVG_FILE);
    let png_path = dir.join(PNG_FILE);
    std::fs::write(&svg_path, svg(history, title))?;
    std::fs::write(&png_path, png(history, title).map_err(io::Error::other)?)?;
    Ok((svg_path, png_path))
}

/// An axis: its data range and tick values.
#[derive(Clone, Debug, PartialEq)]
struct Axis {
    lo: f64,
    hi: f64,
    ticks: Vec<f64>,
    /// Decimals the tick labels need.
    decimals: usize,
}

impl Axis {
    /// Round ticks (1, 2 or 5 × 10^k apart, about `target` of them) covering `[lo, hi]`;
    /// `min_step` bounds the spacing from below (1 for steps).
    fn nice(lo: f64, hi: f64, target: f64, min_step: f64) -> Axis {
        let (mut lo, mut hi) = if lo.is_finite() && hi.is_finite() && lo <= hi {
            (lo, hi)
        } else {
            (0.0, 1.0)
        };
        if hi - lo <= 1e-9 * hi.abs().max(lo.abs()).max(1.0) {
            let pad = (lo.abs() * 0.1).max(0.5);
            lo -= pad;
            hi += pad;
        }
        let raw = ((hi - lo) / target).max(min_step);
        let magnitude = 10f64.powf(raw.log10().floor());
        let step = [1.0, 2.0, 5.0, 10.0]
            .into_iter()
            .map(|m| m * magnitude)
            .find(|s| *s >= raw * (1.0 - 1e-9))
            .unwrap_or(10.0 * magnitude)
            .max(min_step);
        let first = (lo / step).floor();
        let last = (hi / step).ceil();
        let count = ((last - first) as usize).clamp(1, 60);
        let decimals = if step >= 1.0 {
            0
        } else {
            ((-step.log10().floor()) as usize).min(12)
        };
        // Snap to the label precision, so that 12 × 0.2 is 2.4 and not 2.4000000000000004.
        let scale = 10f64.powi(decimals as i32);
        let ticks: Vec<f64> = (0..=count)
            .map(|i| {
                let t = (first + i as f64) * step;
                let snapped = (t * scale).round() / scale;
                if snapped.is_finite() { snapped } else { t }
            })
            .collect();
        Axis {
            lo: ticks[0],
            hi: ticks[ticks.len() - 1],
            ticks,
            decimals,
        }
    }

    /// The position of `v` between `from` (at lo) and `to` (at hi).
    fn map(&self, v: f64, from: f64, to: f64) -> f64 {
        let t = (v - self.lo) / (self.hi - self.lo);
        let p = from + t * (to - from);
        if p.is_finite() { p } else { from }
    }

    fn label(&self, v: f64) -> String {
        let text = format!("{v:.*}", self.decimals);
        // "-0.0" reads badly on an axis.
        if text.starts_with('-') && text[1..].chars().all(|c| c == '0' || c == '.') {
            text[1..].to_string()
        } else {
            text
        }
    }
}

fn text(
    at: (f64, f64),
    s: impl Into<String>,
    anchor: Anchor,
    color: Rgb,
    class: &'static str,
) -> Item {
    Item {
        shape: Shape::Text {
            at,
            text: s.into(),
            anchor,
            scale: TEXT_SCALE,
        },
        color,
        class,
    }
}

fn line(from: (f64, f64), to: (f64, f64), width: f64, color: Rgb, class: &'static str) -> Item {
    Item {
        shape: Shape::Line {
            from,
            to,
            width,
            dash: None,
        },
        color,
        class,
    }
}

/// Height of a line of text, in pixels.
const LINE_HEIGHT: f64 = ((font::GLYPH_HEIGHT + 2) * TEXT_SCALE) as f64;

/// Lays the picture out.
pub fn scene(history: &History, title: &str) -> Scene {
    let usable = |v: f64| v.is_finite() && v.abs() < MAX_LOSS;
    let train: Vec<(f64, f64)> = history
        .points
        .iter()
        .filter(|p| usable(p.loss))
        .map(|p| (p.step as f64, p.loss))
        .collect();
    let val: Vec<(f64, f64)> = history
        .points
        .iter()
        .filter_map(|p| {
            p.val_loss
                .filter(|v| usable(*v))
                .map(|v| (p.step as f64, v))
        })
        .collect();

    let max_step = train
        .iter()
        .chain(&val)
        .map(|p| p.0)
        .chain(history.restarts.iter().map(|r| r.step as f64))
        .fold(1.0f64, f64::max);
    let x = Axis::nice(0.0, max_step, 8.0, 1.0);
    let (lo, hi) = train
        .iter()
        .chain(&val)
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
            (lo.min(p.1), hi.max(p.1))
        });
    let y = if lo <= hi {
        Axis::nice(lo, hi, 6.0, 0.0)
    } else {
        Axis::nice(0.0, 1.0, 6.0, 0.0)
    };
    let px = |step: f64| x.map(step, LEFT, RIGHT);
    let py = |loss: f64| y.map(loss, BOTTOM, TOP);

    let mut items = Vec::new();
    // Frame, grid and tick labels.
    items.push(Item {
        shape: Shape::Rect {
            x: LEFT,
            y: TOP,
            w: RIGHT - LEFT,
            h: BOTTOM - TOP,
            fill: true,
            stroke: None,
        },
        color: BACKGROUND,
        class: "frame",
    });
    let crisp = |v: f64| v.round() + 0.5;
    for &t in &x.ticks {
        let gx = crisp(px(t));
        items.push(line((gx, TOP), (gx, BOTTOM), 1.0, GRID, "grid"));
        items.push(line((gx, BOTTOM), (gx, BOTTOM + 5.0), 1.0, INK, "tick"));
        items.push(text(
            (gx, BOTTOM + 8.0 + LINE_HEIGHT - 4.0),
            x.label(t),
            Anchor::Middle,
            INK,
            "tick-label",
        ));
    }
    for &t in &y.ticks {
        let gy = crisp(py(t));
        items.push(line((LEFT, gy), (RIGHT, gy), 1.0, GRID, "grid"));
        items.push(line((LEFT - 5.0, gy), (LEFT, gy), 1.0, INK, "tick"));
        items.push(text(
            (
                LEFT - 9.0,
                gy + f64::from(font::GLYPH_HEIGHT * TEXT_SCALE) / 2.0,
            ),
            y.label(t),
            Anchor::End,
            INK,
            "tick-label",
        ));
    }
    let (l, r, t, b) = (crisp(LEFT), crisp(RIGHT), crisp(TOP), crisp(BOTTOM));
    items.push(line((l, b), (r, b), 1.0, INK, "axis"));
    items.push(line((l, t), (l, b), 1.0, INK, "axis"));
    items.push(line((r, t), (r, b), 1.0, GRID, "axis"));
    items.push(line((l, t), (r, t), 1.0, GRID, "axis"));

    // The curves.
    items.push(Item {
        shape: Shape::Polyline {
            points: train.iter().map(|&(s, v)| (px(s), py(v))).collect(),
            width: 2.0,
        },
        color: TRAIN_COLOR,
        class: "train",
    });
    if let [(s, v)] = train[..] {
        items.push(Item {
            shape: Shape::Circle {
                center: (px(s), py(v)),
                radius: 3.0,
            },
            color: TRAIN_COLOR,
            class: "train-point",
        });
    }
    if !val.is_empty() {
        items.push(Item {
            shape: Shape::Polyline {
                points: val.iter().map(|&(s, v)| (px(s), py(v))).collect(),
                width: 1.5,
            },
            color: VAL_COLOR,
            class: "val",
        });
        for &(s, v) in &val {
            items.push(Item {
                shape: Shape::Circle {
                    center: (px(s), py(v)),
                    radius: 4.0,
                },
                color: VAL_COLOR,
                class: "val-point",
            });
        }
    }

    // The legend, top right inside the plot area.
    let mut entries: Vec<(&str, Rgb, &str)> = vec![("train loss", TRAIN_COLOR, "train")];
    if !val.is_empty() {
        entries.push(("validation loss", VAL_COLOR, "val"));
    }
    if !history.restarts.is_empty() {
        entries.push(("restart", RESTART_COLOR, "restart"));
    }
    let widest = entries
        .iter()
        .map(|e| raster::text_width(e.0, TEXT_SCALE))
        .max()
        .unwrap_or(0);
    let legend_w = 12.0 + 28.0 + 8.0 + f64::from(widest) + 12.0;
    let legend_h = 8.0 + LINE_HEIGHT * entries.len() as f64 + 4.0;
    let legend = (RIGHT - 10.0 - legend_w, TOP + 10.0);
    items.push(Item {
        shape: Shape::Rect {
            x: legend.0,
            y: legend.1,
            w: legend_w,
            h: legend_h,
            fill: true,
            stroke: Some(Rgb(0xb0, 0xb0, 0xb0)),
        },
        color: BACKGROUND,
        class: "legend",
    });
    for (i, (label, color, kind)) in entries.iter().enumerate() {
        let baseline = legend.1 + 8.0 + LINE_HEIGHT * (i as f64 + 1.0) - 6.0;
        let mid = baseline - f64::from(font::GLYPH_HEIGHT * TEXT_SCALE) / 2.0;
        let (x0, x1) = (legend.0 + 12.0, legend.0 + 40.0);
        let sample = match *kind {
            "restart" => Shape::Line {
                from: ((x0 + x1) / 2.0, mid - 8.0),
                to: ((x0 + x1) / 2.0, mid + 8.0),
                width: 1.5,
                dash: Some((4.0, 3.0)),
            },
            _ => Shape::Line {
                from: (x0, mid),
                to: (x1, mid),
                width: 2.0,
                dash: None,
            },
        };
        items.push(Item {
            shape: sample,
            color: *color,
            class: "legend",
        });
        if *kind == "val" {
            items.push(Item {
                shape: Shape::Circle {
                    center: ((x0 + x1) / 2.0, mid),
                    radius: 4.0,
                },
                color: *color,
                class: "legend",
            });
        }
        items.push(text(
            (x1 + 8.0, baseline),
            *label,
            Anchor::Start,
            INK,
            "legend",
        ));
    }

    // Restart markers, labels stacked so that neighbours do not overwrite each other.
    for (i, restart) in history.restarts.iter().enumerate() {
        let mx = crisp(px(restart.step as f64));
        items.push(Item {
            shape: Shape::Line {
                from: (mx, TOP),
                to: (mx, BOTTOM),
                width: 1.5,
                dash: Some((6.0, 4.0)),
            },
            color: RESTART_COLOR,
            class: "restart",
        });
        let label = format!("restart (gen {})", restart.generation);
        let w = f64::from(raster::text_width(&label, TEXT_SCALE));
        let (x_at, anchor, x0, x1) = if mx + 4.0 + w <= RIGHT - 4.0 {
            (mx + 4.0, Anchor::Start, mx + 4.0, mx + 4.0 + w)
        } else {
            (mx - 4.0, Anchor::End, mx - 4.0 - w, mx - 4.0)
        };
        let mut baseline = TOP + LINE_HEIGHT + 2.0 + LINE_HEIGHT * (i % 3) as f64;
        let overlaps_legend = x1 > legend.0 && x0 < legend.0 + legend_w;
        if overlaps_legend {
            baseline += legend_h + 10.0;
        }
        items.push(text(
            (x_at, baseline),
            label,
            anchor,
            RESTART_COLOR,
            "restart-label",
        ));
    }

    // Title and axis names.
    items.push(text(
        (f64::from(WIDTH) / 2.0, 30.0),
        title,
        Anchor::Middle,
        INK,
        "title",
    ));
    items.push(text(
        ((LEFT + RIGHT) / 2.0, f64::from(HEIGHT) - 12.0),
        "step",
        Anchor::Middle,
        INK,
        "axis-label",
    ));
    items.push(text(
        (12.0, TOP - 12.0),
        "loss",
        Anchor::Start,
        INK,
        "axis-label",
    ));

    Scene {
        width: WIDTH,
        height: HEIGHT,
        background: BACKGROUND,
        items,
    }
}

/// A coordinate for SVG: one decimal, never NaN.
fn num(v: f64) -> String {
    let v = if v.is_finite() { v } else { 0.0 };
    let s = format!("{v:.1}");
    s.strip_suffix(".0").map_or(s.clone(), str::to_string)
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Characters XML 1.0 forbids.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// Writes a scene as SVG.
pub fn to_svg(scene: &Scene) -> String {
    let mut out = String::new();
    let (w, h) = (scene.width, scene.height);
    let _ = writeln!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" font-family=\"monospace\">"
    );
    let _ = writeln!(
        out,
        "<rect width=\"{w}\" height=\"{h}\" fill=\"{}\"/>",
        scene.background.hex()
    );
    for item in &scene.items {
        let color = item.color.hex();
        let class = item.class;
        let _ = match &item.shape {
            Shape::Line {
                from,
                to,
                width,
                dash,
            } => {
                let dash = dash.map_or(String::new(), |(d, g)| {
                    format!(" stroke-dasharray=\"{} {}\"", num(d), num(g))
                });
                writeln!(
                    out,
                    "<line class=\"{class}\" x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"{color}\" stroke-width=\"{}\"{dash}/>",
                    num(from.0),
                    num(from.1),
                    num(to.0),
                    num(to.1),
                    num(*width)
                )
            }
            Shape::Polyline { points, width } => {
                let points: Vec<String> = points
                    .iter()
                    .map(|p| format!("{},{}", num(p.0), num(p.1)))
                    .collect();
                writeln!(
                    out,
                    "<polyline class=\"{class}\" points=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"{}\" stroke-linejoin=\"round\"/>",
                    points.join(" "),
                    num(*width)
                )
            }
            Shape::Circle { center, radius } => writeln!(
                out,
                "<circle class=\"{class}\" cx=\"{}\" cy=\"{}\" r=\"{}\" fill=\"{color}\"/>",
                num(center.0),
                num(center.1),
                num(*radius)
            ),
            Shape::Rect {
                x,
                y,
                w,
                h,
                fill,
                stroke,
            } => {
                let fill = if *fill { color.clone() } else { "none".into() };
                let stroke = stroke.map_or(String::new(), |s| {
                    format!(" stroke=\"{}\" stroke-width=\"1\"", s.hex())
                });
                writeln!(
                    out,
                    "<rect class=\"{class}\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"{fill}\"{stroke}/>",
                    num(*x),
                    num(*y),
                    num(*w),
                    num(*h)
                )
            }
            Shape::Text {
                at,
                text,
                anchor,
                scale,
            } => {
                let anchor = match anchor {
                    Anchor::Start => "start",
                    Anchor::Middle => "middle",
                    Anchor::End => "end",
                };
                // The bitmap font's width, so that both pictures lay text out alike.
                let length = raster::text_width(text, *scale);
                let fit = if length > 0 {
                    format!(" textLength=\"{length}\" lengthAdjust=\"spacingAndGlyphs\"")
                } else {
                    String::new()
                };
                writeln!(
                    out,
                    "<text class=\"{class}\" x=\"{}\" y=\"{}\" font-size=\"{}\" text-anchor=\"{anchor}\" fill=\"{color}\"{fit}>{}</text>",
                    num(at.0),
                    num(at.1),
                    (font::GLYPH_HEIGHT + 1) * scale,
                    escape(text)
                )
            }
        };
    }
    out.push_str("</svg>\n");
    out
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

    fn count_color(rgb: &[u8], color: Rgb) -> usize {
        rgb.chunks_exact(3)
            .filter(|p| p[0] == color.0 && p[1] == color.1 && p[2] == color.2)
            .count()
    }

    /// The `points` attribute of the polyline of a class.
    fn polyline_points(svg: &str, class: &str) -> Vec<(f64, f64)> {
        let tag = format!("<polyline class=\"{class}\" points=\"");
        let start = svg.find(&tag).expect("the polyline") + tag.len();
        let end = start + svg[start..].find('"').unwrap();
        svg[start..end]
            .split_whitespace()
            .map(|pair| {
                let (x, y) = pair.split_once(',').unwrap();
                (x.parse().unwrap(), y.parse().unwrap())
            })
            .collect()
    }

    /// A small well-formedness check: tags nest, attributes are quoted, no stray `<` or `&`.
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
    }

    #[test]
    fn ticks_are_round_and_cover_the_data() {
        let a = Axis::nice(1.83, 5.61, 6.0, 0.0);
        assert_eq!(a.ticks, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(a.label(2.0), "2");
        let a = Axis::nice(1.62, 2.41, 6.0, 0.0);
        assert_eq!(a.ticks, [1.6, 1.8, 2.0, 2.2, 2.4, 2.6]);
        assert_eq!(a.decimals, 1);
        assert_eq!(a.label(2.0), "2.0");
        let steps = Axis::nice(0.0, 1200.0, 8.0, 1.0);
        assert_eq!(steps.ticks.first(), Some(&0.0));
        assert_eq!(steps.ticks.last(), Some(&1200.0));
        assert_eq!(steps.ticks[1], 200.0);
        assert_eq!(steps.label(400.0), "400");
        // A tiny step count never gives fractional steps.
        assert_eq!(Axis::nice(0.0, 3.0, 8.0, 1.0).ticks, [0.0, 1.0, 2.0, 3.0]);
        // Degenerate and hostile ranges still give a usable axis.
        for (lo, hi) in [
            (2.0, 2.0),
            (0.0, 0.0),
            (f64::NAN, 1.0),
            (3.0, 1.0),
            (-1e29, 1e29),
            (1.0, 1.0 + 1e-12),
        ] {
            let a = Axis::nice(lo, hi, 6.0, 0.0);
            assert!(a.lo < a.hi, "{lo} {hi}: {a:?}");
            assert!(a.ticks.len() >= 2 && a.ticks.len() <= 61, "{a:?}");
            assert!(a.ticks.iter().all(|t| t.is_finite()));
        }
        assert_eq!(Axis::nice(-0.2, 0.2, 4.0, 0.0).label(-0.0), "0.0");
    }

    #[test]
    fn the_png_decodes_to_the_stated_size_and_shows_the_curves() {
        let h = history(300, &[(120, 2)]);
        let bytes = png(&h, "tiny: loss").unwrap();
        let (w, hgt, rgb) = decode(&bytes);
        assert_eq!((w, hgt), (WIDTH, HEIGHT));
        assert_eq!(rgb.len(), (WIDTH * HEIGHT * 3) as usize);
        assert!(
            count_color(&rgb, TRAIN_COLOR) > 300,
            "the train line is drawn"
        );
        assert!(
            count_color(&rgb, VAL_COLOR) > 50,
            "the validation points are drawn"
        );
        assert!(
            count_color(&rgb, RESTART_COLOR) > 100,
            "the restart marker is drawn"
        );
        assert!(count_color(&rgb, INK) > 500, "text and axes are drawn");
        // The restart marker is a dashed vertical line at its step's x.
        let x = restart_column(&h);
        let column: Vec<bool> = (TOP as u32 + 60..BOTTOM as u32)
            .map(|y| {
                let i = ((y * WIDTH + x) * 3) as usize;
                rgb[i..i + 3] == [RESTART_COLOR.0, RESTART_COLOR.1, RESTART_COLOR.2]
            })
            .collect();
        assert!(column.iter().filter(|&&on| on).count() > 100);
        assert!(column.iter().any(|&on| !on), "the marker is dashed");
    }

    /// The pixel column of the first restart marker in the scene.
    fn restart_column(h: &History) -> u32 {
        scene(h, "")
            .items
            .iter()
            .find_map(|i| match (&i.shape, i.class) {
                (Shape::Line { from, .. }, "restart") => Some(from.0.floor() as u32),
                _ => None,
            })
            .expect("a restart line")
    }

    #[test]
    fn the_svg_has_a_point_per_step_and_a_marker_per_restart() {
        let h = history(250, &[(100, 2), (200, 3)]);
        let svg = svg(&h, "run <tiny> & co");
        assert_well_formed(&svg);
        let train = polyline_points(&svg, "train");
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
                .all(|p| (LEFT..=RIGHT).contains(&p.0) && (TOP..=BOTTOM).contains(&p.1))
        );
        assert_eq!(polyline_points(&svg, "val").len(), 25);
        assert_eq!(svg.matches("class=\"val-point\"").count(), 25);
        assert_eq!(svg.matches("<line class=\"restart\"").count(), 2);
        assert!(svg.contains(">restart (gen 2)</text>"));
        assert!(svg.contains(">restart (gen 3)</text>"));
        assert!(svg.contains(">run &lt;tiny&gt; &amp; co</text>"));
        assert!(svg.contains(">validation loss</text>"));
        assert!(svg.contains(">train loss</text>"));
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
            let svg = svg(&h, "");
            assert_well_formed(&svg);
            assert_eq!(polyline_points(&svg, "train").len(), h.points.len());
            let (w, hgt, rgb) = decode(&png(&h, "").unwrap());
            assert_eq!((w, hgt), (WIDTH, HEIGHT));
            assert!(count_color(&rgb, INK) > 100, "axes and labels are drawn");
        }
        let (_, _, rgb) = decode(&png(&one, "one").unwrap());
        assert!(
            count_color(&rgb, TRAIN_COLOR) > 10,
            "a lone point is visible"
        );
        assert!(!svg(&History::default(), "").contains("restart"));
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
        let svg = svg(&h, "\u{1}bad\u{0} title é");
        assert_well_formed(&svg);
        assert_eq!(polyline_points(&svg, "train").len(), 1);
        let (w, _, _) = decode(&png(&h, "\u{1}é").unwrap());
        assert_eq!(w, WIDTH);
    }

    #[test]
    fn write_files_writes_both_pictures() {
        let dir = tempfile::tempdir().unwrap();
        let (svg_path, png_path) = write_files(&history(20, &[]), "t", dir.path()).unwrap();
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

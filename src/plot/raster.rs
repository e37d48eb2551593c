//! Rasterizing a [`Scene`](super::Scene) into an RGB buffer: anti-aliased lines (Xiaolin Wu's
//! algorithm, thickened by parallel copies), dashes, discs, rectangles and bitmap text.
//!
//! Scene coordinates are SVG user units: pixel `(i, j)` covers `[i, i+1) × [j, j+1)`, so its
//! centre is at `(i + 0.5, j + 0.5)`. The line code works on pixel centres and subtracts the
//! half pixel once.

use super::{Anchor, Item, Rgb, Scene, Shape, font};

/// An RGB image, 8 bits per channel, rows top to bottom.
pub struct Canvas {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u8>,
}

impl Canvas {
    pub fn new(width: u32, height: u32, background: Rgb) -> Canvas {
        let mut pixels = Vec::with_capacity(width as usize * height as usize * 3);
        for _ in 0..(width as usize * height as usize) {
            pixels.extend([background.0, background.1, background.2]);
        }
        Canvas {
            width,
            height,
            pixels,
        }
    }

    /// The colour at a pixel, if it is inside the image.
    pub fn get(&self, x: u32, y: u32) -> Option<Rgb> {
        (x < self.width && y < self.height).then(|| {
            let i = (y as usize * self.width as usize + x as usize) * 3;
            Rgb(self.pixels[i], self.pixels[i + 1], self.pixels[i + 2])
        })
    }

    /// Blends `color` over pixel (x, y) with coverage `alpha` in [0, 1]; outside is ignored.
    fn blend(&mut self, x: i64, y: i64, color: Rgb, alpha: f64) {
        if x < 0 || y < 0 || x >= i64::from(self.width) || y >= i64::from(self.height) {
            return;
        }
        let alpha = if alpha.is_finite() {
            alpha.clamp(0.0, 1.0)
        } else {
            return;
        };
        if alpha == 0.0 {
            return;
        }
        let i = (y as usize * self.width as usize + x as usize) * 3;
        for (k, c) in [color.0, color.1, color.2].into_iter().enumerate() {
            let old = f64::from(self.pixels[i + k]);
            self.pixels[i + k] = (old + (f64::from(c) - old) * alpha).round() as u8;
        }
    }

    /// Fills the pixels whose centres lie in the rectangle.
    fn fill_rect(&mut self, x: f64, y: f64, w: f64, h: f64, color: Rgb) {
        for py in pixel_span(y, y + h, self.height) {
            for px in pixel_span(x, x + w, self.width) {
                self.blend(px, py, color, 1.0);
            }
        }
    }

    /// A line `width` pixels wide: a one-pixel Wu line, or for wider lines a round-capped
    /// brush whose coverage falls off over the last pixel of its half-width.
    fn line(&mut self, from: (f64, f64), to: (f64, f64), width: f64, color: Rgb) {
        if width.is_nan() || width <= 1.0 {
            let shift = |p: (f64, f64)| (p.0 - 0.5, p.1 - 0.5);
            self.wu_line(shift(from), shift(to), color);
            return;
        }
        let radius = (width / 2.0).min(64.0);
        let margin = radius + 1.0;
        let bounds = (
            -margin,
            -margin,
            f64::from(self.width) + margin,
            f64::from(self.height) + margin,
        );
        if ![from.0, from.1, to.0, to.1].iter().all(|v| v.is_finite()) {
            return;
        }
        let Some((a, b)) = clip(from, to, bounds) else {
            return;
        };
        let (dx, dy) = (b.0 - a.0, b.1 - a.1);
        let length2 = dx * dx + dy * dy;
        for py in pixel_span(a.1.min(b.1) - margin, a.1.max(b.1) + margin, self.height) {
            for px in pixel_span(a.0.min(b.0) - margin, a.0.max(b.0) + margin, self.width) {
                let (cx, cy) = (px as f64 + 0.5, py as f64 + 0.5);
                let t = if length2 > 0.0 {
                    (((cx - a.0) * dx + (cy - a.1) * dy) / length2).clamp(0.0, 1.0)
                } else {
                    0.0
                };
                let (ex, ey) = (cx - (a.0 + t * dx), cy - (a.1 + t * dy));
                let distance = (ex * ex + ey * ey).sqrt();
                self.blend(px, py, color, radius + 0.5 - distance);
            }
        }
    }

    /// A dashed line: `dash` on, `gap` off, from `from`.
    fn dashed_line(
        &mut self,
        from: (f64, f64),
        to: (f64, f64),
        width: f64,
        (dash, gap): (f64, f64),
        color: Rgb,
    ) {
        let (dx, dy) = (to.0 - from.0, to.1 - from.1);
        let length = (dx * dx + dy * dy).sqrt();
        let dashable = length > 0.0 && dash > 0.0 && gap >= 0.0;
        if !dashable {
            self.line(from, to, width, color);
            return;
        }
        let (ux, uy) = (dx / length, dy / length);
        let mut t = 0.0;
        while t < length {
            let end = (t + dash).min(length);
            self.line(
                (from.0 + ux * t, from.1 + uy * t),
                (from.0 + ux * end, from.1 + uy * end),
                width,
                color,
            );
            t += dash + gap;
        }
    }

    /// Xiaolin Wu's anti-aliased line between pixel centres.
    fn wu_line(&mut self, from: (f64, f64), to: (f64, f64), c: Rgb) {
        if ![from.0, from.1, to.0, to.1].iter().all(|v| v.is_finite()) {
            return;
        }
        // Clipped to the image (and a margin), so every coordinate below is small.
        let bounds = (
            -2.0,
            -2.0,
            f64::from(self.width) + 2.0,
            f64::from(self.height) + 2.0,
        );
        let Some(((mut x0, mut y0), (mut x1, mut y1))) = clip(from, to, bounds) else {
            return;
        };
        let steep = (y1 - y0).abs() > (x1 - x0).abs();
        if steep {
            std::mem::swap(&mut x0, &mut y0);
            std::mem::swap(&mut x1, &mut y1);
        }
        if x0 > x1 {
            std::mem::swap(&mut x0, &mut x1);
            std::mem::swap(&mut y0, &mut y1);
        }
        let gradient = if x1 - x0 > 0.0 {
            (y1 - y0) / (x1 - x0)
        } else {
            1.0
        };
        let plot = |canvas: &mut Canvas, major: i64, minor: i64, alpha: f64| {
            if steep {
                canvas.blend(minor, major, c, alpha);
            } else {
                canvas.blend(major, minor, c, alpha);
            }
        };
        let fpart = |v: f64| v - v.floor();

        // First endpoint.
        let xend = x0.round();
        let yend = y0 + gradient * (xend - x0);
        let xgap = 1.0 - fpart(x0 + 0.5);
        let xpxl1 = xend as i64;
        let ypxl1 = yend.floor() as i64;
        plot(self, xpxl1, ypxl1, (1.0 - fpart(yend)) * xgap);
        plot(self, xpxl1, ypxl1 + 1, fpart(yend) * xgap);
        let mut intery = yend + gradient;

        // Second endpoint.
        let xend = x1.round();
        let yend = y1 + gradient * (xend - x1);
        let xgap = fpart(x1 + 0.5);
        let xpxl2 = xend as i64;
        let ypxl2 = yend.floor() as i64;
        if xpxl2 != xpxl1 {
            plot(self, xpxl2, ypxl2, (1.0 - fpart(yend)) * xgap);
            plot(self, xpxl2, ypxl2 + 1, fpart(yend) * xgap);
        }

        // The span between.
        for x in xpxl1 + 1..xpxl2 {
            let y = intery.floor() as i64;
            plot(self, x, y, 1.0 - fpart(intery));
            plot(self, x, y + 1, fpart(intery));
            intery += gradient;
        }
    }

    /// A filled disc with an anti-aliased edge.
    fn disc(&mut self, (cx, cy): (f64, f64), radius: f64, color: Rgb) {
        let drawable = radius > 0.0 && cx.is_finite() && cy.is_finite();
        if !drawable {
            return;
        }
        let reach = radius + 1.0;
        for py in pixel_span(cy - reach, cy + reach, self.height) {
            for px in pixel_span(cx - reach, cx + reach, self.width) {
                let (dx, dy) = (px as f64 + 0.5 - cx, py as f64 + 0.5 - cy);
                let coverage = radius + 0.5 - (dx * dx + dy * dy).sqrt();
                self.blend(px, py, color, coverage);
            }
        }
    }

    /// Bitmap text: each glyph cell a `scale`×`scale` square, the baseline at `y`.
    fn text(&mut self, (x, y): (f64, f64), text: &str, anchor: Anchor, scale: u32, color: Rgb) {
        let s = i64::from(scale.max(1));
        let width = text_width(text, scale) as f64;
        let left = match anchor {
            Anchor::Start => x,
            Anchor::Middle => x - width / 2.0,
            Anchor::End => x - width,
        };
        if !left.is_finite() || !y.is_finite() {
            return;
        }
        let (left, baseline) = (
            left.round().clamp(-1e6, 1e6) as i64,
            y.round().clamp(-1e6, 1e6) as i64,
        );
        for (i, c) in text.chars().enumerate() {
            let glyph = font::glyph(c);
            let gx = left + i as i64 * i64::from(font::ADVANCE) * s;
            let top = baseline - i64::from(font::GLYPH_HEIGHT - glyph.drop) * s;
            for (row, cells) in glyph.rows.iter().enumerate() {
                for (col, cell) in cells.bytes().enumerate() {
                    if cell != b'#' {
                        continue;
                    }
                    for dy in 0..s {
                        for dx in 0..s {
                            self.blend(
                                gx + col as i64 * s + dx,
                                top + row as i64 * s + dy,
                                color,
                                1.0,
                            );
                        }
                    }
                }
            }
        }
    }

    /// Draws one scene item.
    fn draw(&mut self, item: &Item) {
        let color = item.color;
        match &item.shape {
            Shape::Line {
                from,
                to,
                width,
                dash,
            } => match dash {
                Some(pattern) => self.dashed_line(*from, *to, *width, *pattern, color),
                None => self.line(*from, *to, *width, color),
            },
            Shape::Polyline { points, width } => {
                for pair in points.windows(2) {
                    self.line(pair[0], pair[1], *width, color);
                }
            }
            Shape::Circle { center, radius } => self.disc(*center, *radius, color),
            Shape::Rect {
                x,
                y,
                w,
                h,
                fill,
                stroke,
            } => {
                if *fill {
                    self.fill_rect(*x, *y, *w, *h, color);
                }
                if let Some(stroke) = stroke {
                    let (x0, y0, x1, y1) = (*x, *y, x + w, y + h);
                    for (a, b) in [
                        ((x0, y0), (x1, y0)),
                        ((x1, y0), (x1, y1)),
                        ((x1, y1), (x0, y1)),
                        ((x0, y1), (x0, y0)),
                    ] {
                        self.line(a, b, 1.0, *stroke);
                    }
                }
            }
            Shape::Text {
                at,
                text,
                anchor,
                scale,
            } => self.text(*at, text, *anchor, *scale, color),
        }
    }
}

/// The width in pixels of `text` drawn at `scale` (no space after the last glyph).
pub fn text_width(text: &str, scale: u32) -> u32 {
    let n = text.chars().count() as u32;
    (n * font::ADVANCE).saturating_sub(font::ADVANCE - font::GLYPH_WIDTH) * scale.max(1)
}

/// The pixels, among `0..size`, whose centres lie in `[from, to)`.
fn pixel_span(from: f64, to: f64, size: u32) -> std::ops::Range<i64> {
    let first = |v: f64| (v - 0.5).ceil().clamp(0.0, f64::from(size)) as i64;
    if from.is_finite() && to.is_finite() {
        first(from)..first(to)
    } else {
        0..0
    }
}

/// Clips the segment to the rectangle (Liang–Barsky); `None` when it misses it.
fn clip(
    (x0, y0): (f64, f64),
    (x1, y1): (f64, f64),
    (xmin, ymin, xmax, ymax): (f64, f64, f64, f64),
) -> Option<((f64, f64), (f64, f64))> {
    let (dx, dy) = (x1 - x0, y1 - y0);
    let (mut t0, mut t1) = (0.0f64, 1.0f64);
    for (p, q) in [
        (-dx, x0 - xmin),
        (dx, xmax - x0),
        (-dy, y0 - ymin),
        (dy, ymax - y0),
    ] {
        if p == 0.0 {
            if q < 0.0 {
                return None;
            }
        } else {
            let r = q / p;
            if p < 0.0 {
                if r > t1 {
                    return None;
                }
                t0 = t0.max(r);
            } else {
                if r < t0 {
                    return None;
                }
                t1 = t1.min(r);
            }
        }
    }
    Some(((x0 + t0 * dx, y0 + t0 * dy), (x0 + t1 * dx, y0 + t1 * dy)))
}

/// Renders a whole scene.
pub fn render(scene: &Scene) -> Canvas {
    let mut canvas = Canvas::new(scene.width, scene.height, scene.background);
    for item in &scene.items {
        canvas.draw(item);
    }
    canvas
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLACK: Rgb = Rgb(0, 0, 0);
    const WHITE: Rgb = Rgb(255, 255, 255);

    fn dark(canvas: &Canvas) -> Vec<(u32, u32)> {
        let mut out = Vec::new();
        for y in 0..canvas.height {
            for x in 0..canvas.width {
                if canvas.get(x, y).is_some_and(|c| c.0 < 128) {
                    out.push((x, y));
                }
            }
        }
        out
    }

    #[test]
    fn a_horizontal_line_on_pixel_centres_is_one_crisp_row() {
        let mut c = Canvas::new(20, 10, WHITE);
        c.line((2.5, 4.5), (12.5, 4.5), 1.0, BLACK);
        // The ends cover half of their pixels, as the SVG line's butt caps do.
        let row: Vec<(u32, u32)> = (3..=11).map(|x| (x, 4)).collect();
        assert_eq!(dark(&c), row);
        assert_eq!(c.get(7, 4), Some(BLACK));
        assert_eq!(c.get(2, 4), Some(Rgb(128, 128, 128)));
        assert_eq!(c.get(7, 3), Some(WHITE));
        assert_eq!(c.get(7, 5), Some(WHITE));
    }

    #[test]
    fn a_wide_line_has_a_solid_core_and_soft_edges() {
        let mut c = Canvas::new(30, 20, WHITE);
        c.line((3.0, 4.0), (27.0, 15.0), 2.0, BLACK);
        for x in 5..25 {
            let column: Vec<u8> = (0..20).map(|y| c.get(x, y).unwrap().0).collect();
            assert!(
                column.contains(&0),
                "column {x} has no solid pixel: {column:?}"
            );
            assert!(
                column.iter().filter(|&&v| v < 255).count() <= 6,
                "column {x} too wide"
            );
        }
        assert_eq!(c.get(28, 2), Some(WHITE));
    }

    #[test]
    fn a_steep_diagonal_touches_every_row_it_spans() {
        let mut c = Canvas::new(20, 20, WHITE);
        c.line((3.5, 1.5), (8.5, 17.5), 1.0, BLACK);
        for y in 2..17 {
            assert!(
                (0..20).any(|x| c.get(x, y).unwrap().0 < 200),
                "row {y} untouched"
            );
        }
    }

    #[test]
    fn lines_far_outside_or_degenerate_do_not_panic() {
        let mut c = Canvas::new(8, 8, WHITE);
        c.line((-1e9, -1e9), (1e9, 1e9), 3.0, BLACK);
        c.line((4.0, 4.0), (4.0, 4.0), 1.0, BLACK);
        c.line((f64::NAN, 0.0), (1.0, 1.0), 1.0, BLACK);
        c.dashed_line((0.0, 0.0), (8.0, 8.0), 1.0, (0.0, 0.0), BLACK);
        c.disc((f64::INFINITY, 1.0), 3.0, BLACK);
        c.fill_rect(-5.0, -5.0, 1e12, 1e12, BLACK);
        assert_eq!(c.get(7, 7), Some(BLACK));
    }

    #[test]
    fn a_dashed_line_has_gaps() {
        let mut c = Canvas::new(40, 3, WHITE);
        c.dashed_line((0.5, 1.5), (39.5, 1.5), 1.0, (4.0, 4.0), BLACK);
        let on = (0..40).filter(|&x| c.get(x, 1).unwrap().0 < 128).count();
        assert!((15..=25).contains(&on), "{on} of 40 pixels drawn");
    }

    #[test]
    fn text_is_drawn_from_the_glyphs_at_the_anchor() {
        let mut c = Canvas::new(30, 20, WHITE);
        c.text((1.0, 10.0), "1", Anchor::Start, 1, BLACK);
        // '1': "..#.." in the top row, 7 rows above the baseline at y = 10.
        assert_eq!(c.get(3, 3), Some(BLACK));
        assert_eq!(c.get(1, 3), Some(WHITE));
        // ".###." in the bottom row.
        assert_eq!(c.get(2, 9), Some(BLACK));
        assert_eq!(text_width("12", 1), 11);
        assert_eq!(text_width("", 2), 0);
        let mut right = Canvas::new(30, 20, WHITE);
        right.text((29.0, 10.0), "1", Anchor::End, 1, BLACK);
        assert_eq!(right.get(26, 3), Some(BLACK));
    }

    #[test]
    fn a_disc_covers_its_centre_and_not_beyond_its_radius() {
        let mut c = Canvas::new(20, 20, WHITE);
        c.disc((10.0, 10.0), 3.0, BLACK);
        assert_eq!(c.get(10, 10), Some(BLACK));
        assert_eq!(c.get(10, 15), Some(WHITE));
    }
}

//! Shared style: fonts, palette, sizes.

use plotters::style::{FontStyle, RGBColor};
use std::sync::Once;

static FONTS: Once = Once::new();

/// The font family name every figure uses.
pub const FONT: &str = "sans-serif";

/// Registers DejaVu Sans (regular, bold, oblique) under [`FONT`].
///
/// Called by [`super::Figure::new`]; calling it again is free.
pub fn register_fonts() {
    FONTS.call_once(|| {
        // The fonts are valid TTF files shipped inside the `dejavu` crate; a
        // failure here would be a packaging bug, so it is ignored rather than
        // propagated (text would then be missing, which the tests catch).
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
        let _ = plotters::style::register_font(FONT, FontStyle::Bold, dejavu::sans::bold());
        let _ = plotters::style::register_font(FONT, FontStyle::Oblique, dejavu::sans::oblique());
        let _ = plotters::style::register_font(FONT, FontStyle::Italic, dejavu::sans::oblique());
    });
}

/// Ten well-separated colours (Tableau 10), used for series.
pub const TAB10: [RGBColor; 10] = [
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

/// Colour of series `i` (cycles through [`TAB10`]).
pub fn series_color(i: usize) -> RGBColor {
    TAB10[i % TAB10.len()]
}

/// `n` distinguishable colours for class-coloured plots (up to 100 classes and more):
/// hues spread by the golden angle, with three lightness/saturation bands so that
/// neighbouring class indices differ in both hue and brightness.
pub fn class_colors(n: usize) -> Vec<RGBColor> {
    (0..n)
        .map(|i| {
            let h = (i as f64 * 137.507_764_05) % 360.0;
            let (s, l) = match i % 3 {
                0 => (0.75, 0.45),
                1 => (0.55, 0.62),
                _ => (0.9, 0.32),
            };
            hsl_to_rgb(h, s, l)
        })
        .collect()
}

/// HSL (h in degrees, s and l in 0..1) to RGB.
pub fn hsl_to_rgb(h: f64, s: f64, l: f64) -> RGBColor {
    let c = (1.0 - (2.0 * l - 1.0).abs()) * s;
    let hp = (h.rem_euclid(360.0)) / 60.0;
    let x = c * (1.0 - (hp % 2.0 - 1.0).abs());
    let (r, g, b) = match hp as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    let m = l - c / 2.0;
    let to = |v: f64| ((v + m) * 255.0).round().clamp(0.0, 255.0) as u8;
    RGBColor(to(r), to(g), to(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hundred_class_colors_are_distinct() {
        let cs = class_colors(100);
        for i in 0..cs.len() {
            for j in (i + 1)..cs.len() {
                let d = (cs[i].0 as i32 - cs[j].0 as i32).abs()
                    + (cs[i].1 as i32 - cs[j].1 as i32).abs()
                    + (cs[i].2 as i32 - cs[j].2 as i32).abs();
                assert!(d > 6, "classes {i} and {j} look alike: {:?} {:?}", cs[i], cs[j]);
            }
        }
    }

    #[test]
    fn hsl_primaries() {
        assert_eq!(hsl_to_rgb(0.0, 1.0, 0.5), RGBColor(255, 0, 0));
        assert_eq!(hsl_to_rgb(120.0, 1.0, 0.5), RGBColor(0, 255, 0));
        assert_eq!(hsl_to_rgb(240.0, 1.0, 0.5), RGBColor(0, 0, 255));
    }
}

/// Tick label: integers without decimals, others with up to 4 significant
/// digits, scientific notation for very small or large magnitudes.
pub fn fmt_tick(v: &f64) -> String {
    let v = *v;
    if v == 0.0 {
        return "0".into();
    }
    let a = v.abs();
    if !(1e-3..1e5).contains(&a) {
        return format!("{v:.1e}");
    }
    if (v - v.round()).abs() < 1e-9 * a.max(1.0) {
        return format!("{}", v.round() as i64);
    }
    let digits = (3 - a.log10().floor() as i32).clamp(0, 6) as usize;
    let s = format!("{v:.digits$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

#[cfg(test)]
mod tick_tests {
    use super::fmt_tick;

    #[test]
    fn ticks_are_short() {
        assert_eq!(fmt_tick(&2.0), "2");
        assert_eq!(fmt_tick(&0.009000000000000001), "0.009");
        assert_eq!(fmt_tick(&0.25), "0.25");
        assert_eq!(fmt_tick(&12.5), "12.5");
        assert_eq!(fmt_tick(&1e-5), "1.0e-5");
        assert_eq!(fmt_tick(&0.0), "0");
    }
}

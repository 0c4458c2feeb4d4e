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
    let (r, g, b) = crate::util::hsl_to_rgb(h, s, l);
    RGBColor(r, g, b)
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

/// Ticks of a log axis over `[lo, hi]` (both > 0): labelled values and grid-only
/// values. Labels are 1-2-5 per decade, more (1-9) when that gives fewer than
/// three, fewer (powers of ten, then every other power) when it gives more than
/// eight; the grid has 1-9 per decade, or the labels alone over many decades.
/// (plotters' own log ticks label only powers of ten, which leaves a range like
/// 0.13-1.7 with a single label, and crowds 1-9 labels near each power.)
pub fn log_ticks(lo: f64, hi: f64) -> (Vec<f64>, Vec<f64>) {
    let (lo, hi) = if lo <= hi { (lo, hi) } else { (hi, lo) };
    if !(lo > 0.0 && hi.is_finite()) {
        return (Vec::new(), Vec::new());
    }
    let (k0, k1) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
    let within = |mults: &[f64], step: usize| -> Vec<f64> {
        (k0..=k1)
            .filter(|k| ((k - k0) as usize).is_multiple_of(step))
            .flat_map(|k| mults.iter().map(move |m| m * 10f64.powi(k)))
            // Tolerance for the rounding of m * 10^k at the ends.
            .filter(|v| *v >= lo * (1.0 - 1e-9) && *v <= hi * (1.0 + 1e-9))
            .collect()
    };
    let all: Vec<f64> = (1..=9).map(f64::from).collect();
    let mut bold = within(&[1.0, 2.0, 5.0], 1);
    if bold.len() < 3 {
        bold = within(&all, 1);
    } else if bold.len() > 8 {
        bold = within(&[1.0], 1);
        if bold.len() > 8 {
            bold = within(&[1.0], 2);
        }
    }
    let light = if k1 - k0 <= 4 { within(&all, 1) } else { bold.clone() };
    (bold, light)
}

#[cfg(test)]
mod tick_tests {
    use super::{fmt_tick, log_ticks};

    fn labels(lo: f64, hi: f64) -> Vec<String> {
        log_ticks(lo, hi).0.iter().map(fmt_tick).collect()
    }

    #[test]
    fn log_ticks_label_every_range_readably() {
        // A loss curve: less than one and a half decades.
        assert_eq!(labels(0.11, 1.8), ["0.2", "0.5", "1"]);
        // A cosine learning-rate schedule down to 8e-4.
        assert_eq!(labels(7.9e-4, 0.055), ["0.001", "0.002", "0.005", "0.01", "0.02", "0.05"]);
        // Within one decade: 1-9.
        assert_eq!(labels(2.5, 7.5), ["3", "4", "5", "6", "7"]);
        // Many decades: powers of ten, then every other one.
        assert_eq!(labels(1e-3, 1e4), ["0.001", "0.01", "0.1", "1", "10", "100", "1000", "10000"]);
        assert_eq!(log_ticks(1e-9, 1e9).0.len(), 10);
        let (bold, light) = log_ticks(0.11, 1.8);
        assert!(light.len() > bold.len() && bold.iter().all(|b| light.contains(b)));
        assert_eq!(log_ticks(0.0, 1.0), (vec![], vec![]));
    }

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

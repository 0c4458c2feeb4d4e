//! Line charts: several labelled series over a shared x axis.

use super::figure::{plot_err, Plot};
use super::style::{series_color, FONT};
use crate::error::{Error, Result};
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::coord::Shift;
use plotters::prelude::*;

/// One labelled line.
#[derive(Debug, Clone)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    /// Draw dashed (e.g. for a variant of another series).
    pub dashed: bool,
    /// Draw a marker at every point.
    pub markers: bool,
}

impl Series {
    /// A solid line with markers.
    pub fn new(label: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Series { label: label.into(), points, dashed: false, markers: true }
    }

    /// From parallel x and y slices.
    pub fn from_xy(label: impl Into<String>, x: &[f64], y: &[f64]) -> Result<Self> {
        if x.len() != y.len() {
            return Err(Error::shape("Series::from_xy", format!("{} x values but {} y values", x.len(), y.len())));
        }
        Ok(Series::new(label, x.iter().copied().zip(y.iter().copied()).collect()))
    }

    /// Dashed instead of solid.
    pub fn dashed(mut self) -> Self {
        self.dashed = true;
        self
    }

    /// Without markers.
    pub fn no_markers(mut self) -> Self {
        self.markers = false;
        self
    }
}

/// A line chart (one panel).
#[derive(Debug, Clone, Default)]
pub struct LinePlot {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// Logarithmic y axis (non-positive values are dropped from the plot).
    pub log_y: bool,
    /// Fixed y range; automatic (with a margin) when `None`.
    pub y_range: Option<(f64, f64)>,
    /// Shaded x intervals with a legend label (e.g. the terminal phase of training).
    pub shaded: Vec<(f64, f64, String)>,
    /// Horizontal reference lines (value, label).
    pub hlines: Vec<(f64, String)>,
    /// Where the legend goes (default upper right).
    pub legend_lower: bool,
}

impl LinePlot {
    /// An empty chart with a title and axis labels.
    pub fn new(title: impl Into<String>, x_label: impl Into<String>, y_label: impl Into<String>) -> Self {
        LinePlot { title: title.into(), x_label: x_label.into(), y_label: y_label.into(), ..Default::default() }
    }

    /// Adds a series.
    pub fn with(mut self, s: Series) -> Self {
        self.series.push(s);
        self
    }

    /// Uses a log y axis.
    pub fn log_y(mut self) -> Self {
        self.log_y = true;
        self
    }

    /// Fixes the y range.
    pub fn y_range(mut self, lo: f64, hi: f64) -> Self {
        self.y_range = Some((lo, hi));
        self
    }

    /// Shades `[x0, x1]` with a legend label.
    pub fn shade(mut self, x0: f64, x1: f64, label: impl Into<String>) -> Self {
        self.shaded.push((x0, x1, label.into()));
        self
    }

    /// Puts the legend in the lower right corner.
    pub fn legend_lower(mut self) -> Self {
        self.legend_lower = true;
        self
    }

    /// Adds a horizontal reference line.
    pub fn hline(mut self, y: f64, label: impl Into<String>) -> Self {
        self.hlines.push((y, label.into()));
        self
    }

    fn finite_points(&self) -> impl Iterator<Item = (f64, f64)> + '_ {
        let log = self.log_y;
        self.series.iter().flat_map(|s| s.points.iter().copied()).filter(move |(x, y)| x.is_finite() && y.is_finite() && (!log || *y > 0.0))
    }

    /// The x and y ranges the chart will use.
    pub fn ranges(&self) -> Result<((f64, f64), (f64, f64))> {
        let mut pts = self.finite_points().peekable();
        if pts.peek().is_none() {
            return Err(Error::data(format!("plot '{}'", self.title), "no finite points to draw"));
        }
        let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for (x, y) in pts {
            x0 = x0.min(x);
            x1 = x1.max(x);
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
        for (a, b, _) in &self.shaded {
            x0 = x0.min(*a);
            x1 = x1.max(*b);
        }
        if x1 <= x0 {
            x0 -= 0.5;
            x1 += 0.5;
        }
        let (y0, y1) = match self.y_range {
            Some(r) => r,
            None if self.log_y => {
                let (a, b) = (y0.log10(), y1.log10());
                let pad = ((b - a) * 0.05).max(0.05);
                (10f64.powf(a - pad), 10f64.powf(b + pad))
            }
            None => {
                let pad = if y1 > y0 { (y1 - y0) * 0.06 } else { y0.abs().max(1.0) * 0.1 };
                (y0 - pad, y1 + pad)
            }
        };
        Ok(((x0, x1), (y0, y1)))
    }
}

impl Plot for LinePlot {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let ((x0, x1), (y0, y1)) = self.ranges()?;
        if self.log_y {
            let (bold, light) = super::style::log_ticks(y0, y1);
            self.draw_with(root, x0..x1, (y0..y1).log_scale().with_key_points(bold).with_light_points(light))
        } else {
            self.draw_with(root, x0..x1, y0..y1)
        }
    }
}

impl LinePlot {
    fn draw_with<DB, YR>(&self, root: &DrawingArea<DB, Shift>, xr: std::ops::Range<f64>, yr: YR) -> Result<()>
    where
        DB: DrawingBackend,
        YR: AsRangedCoord<Value = f64>,
        YR::CoordDescType: ValueFormatter<f64>,
    {
        let (w, h) = root.dim_in_pixel();
        let base = (w.min(h) as f64 / 30.0).clamp(11.0, 22.0);
        let mut chart = ChartBuilder::on(root)
            .caption(&self.title, (FONT, base * 1.3).into_font())
            .margin((base * 0.7) as u32)
            .x_label_area_size((base * 2.6) as u32)
            .y_label_area_size((base * 4.2) as u32)
            .build_cartesian_2d(xr.clone(), yr)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc(&self.x_label)
            .y_desc(&self.y_label)
            .x_label_formatter(&super::style::fmt_tick)
            .y_label_formatter(&super::style::fmt_tick)
            .label_style((FONT, base * 0.85))
            .axis_desc_style((FONT, base))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(plot_err)?;

        let (ylo, yhi) = {
            let r = chart.plotting_area().get_y_range();
            (r.start, r.end)
        };
        for (i, (a, b, label)) in self.shaded.iter().enumerate() {
            let color = RGBColor(214, 39, 40).mix(0.12);
            let series = chart.draw_series(std::iter::once(Rectangle::new([(*a, ylo), (*b, yhi)], color.filled()))).map_err(plot_err)?;
            if i == 0 {
                series.label(label.clone()).legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], color.filled()));
            }
        }
        for (v, label) in &self.hlines {
            let style = ShapeStyle::from(&BLACK.mix(0.5)).stroke_width(1);
            chart
                .draw_series(DashedLineSeries::new(vec![(xr.start, *v), (xr.end, *v)], 4, 4, style))
                .map_err(plot_err)?
                .label(label.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], style));
        }

        let log = self.log_y;
        for (i, s) in self.series.iter().enumerate() {
            let color = series_color(i);
            let pts: Vec<(f64, f64)> =
                s.points.iter().copied().filter(|(x, y)| x.is_finite() && y.is_finite() && (!log || *y > 0.0)).collect();
            let style = ShapeStyle::from(&color).stroke_width(2);
            let anno = if s.dashed {
                chart.draw_series(DashedLineSeries::new(pts.clone(), 8, 5, style)).map_err(plot_err)?
            } else {
                chart.draw_series(LineSeries::new(pts.clone(), style)).map_err(plot_err)?
            };
            anno.label(s.label.clone()).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], style));
            if s.markers && pts.len() <= 400 {
                chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled()))).map_err(plot_err)?;
            }
        }
        if !self.series.is_empty() {
            chart
                .configure_series_labels()
                .label_font((FONT, base * 0.85))
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK.mix(0.3))
                .position(if self.legend_lower { SeriesLabelPosition::LowerRight } else { SeriesLabelPosition::UpperRight })
                .draw()
                .map_err(plot_err)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plot::Figure;

    fn sample() -> LinePlot {
        LinePlot::new("Loss", "epoch", "loss")
            .with(Series::new("train", vec![(1.0, 2.0), (2.0, 1.0), (3.0, 0.5)]))
            .with(Series::new("val", vec![(1.0, 2.2), (2.0, 1.5), (3.0, 1.2)]).dashed())
    }

    #[test]
    fn renders_non_blank_png_and_svg() {
        let fig = Figure::new(&sample(), 320, 240).unwrap();
        assert_eq!(fig.rgb().len(), 320 * 240 * 3);
        assert!(fig.pixel_variance() > 100.0);
        assert!(fig.svg().contains("<svg"));
        let png = fig.png_bytes().unwrap();
        assert_eq!(&png[1..4], b"PNG");
    }

    #[test]
    fn text_is_rendered() {
        let with = Figure::new(&sample(), 320, 240).unwrap();
        let mut bare = sample();
        bare.title = String::new();
        let without = Figure::new(&bare, 320, 240).unwrap();
        // The caption area differs when the title text is drawn.
        let rows = 30 * 320 * 3;
        assert_ne!(&with.rgb()[..rows], &without.rgb()[..rows]);
        let dark = with.rgb()[..rows].iter().filter(|&&v| v < 128).count();
        assert!(dark > 50, "title rendered too few dark pixels: {dark}");
    }

    #[test]
    fn log_axis_and_empty_errors() {
        let p = sample().log_y();
        assert!(Figure::new(&p, 200, 150).is_ok());
        let empty = LinePlot::new("t", "x", "y");
        assert!(matches!(Figure::new(&empty, 200, 150), Err(Error::InvalidData { .. })));
        let bad = LinePlot::new("t", "x", "y").with(Series::new("nan", vec![(0.0, f64::NAN)]));
        assert!(Figure::new(&bad, 200, 150).is_err());
        assert!(Figure::new(&sample(), 2, 2).is_err());
    }
}

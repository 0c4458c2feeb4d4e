//! Bar charts: groups (e.g. detectors or layers) x series (e.g. OOD sets), with
//! optional error bars (bootstrap intervals).

use super::figure::{plot_err, Plot};
use super::style::{series_color, FONT};
use crate::error::{Error, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

/// One series of bars, one value per group.
#[derive(Debug, Clone)]
pub struct BarSeries {
    pub label: String,
    pub values: Vec<f64>,
    /// (low, high) per group, drawn as error bars.
    pub intervals: Option<Vec<(f64, f64)>>,
}

/// Grouped bar chart.
#[derive(Debug, Clone, Default)]
pub struct BarChart {
    pub title: String,
    pub y_label: String,
    pub groups: Vec<String>,
    pub series: Vec<BarSeries>,
    pub log_y: bool,
    pub y_range: Option<(f64, f64)>,
}

impl BarChart {
    /// An empty chart over `groups`.
    pub fn new(title: impl Into<String>, y_label: impl Into<String>, groups: Vec<String>) -> Self {
        BarChart { title: title.into(), y_label: y_label.into(), groups, ..Default::default() }
    }

    /// Adds a series (one value per group).
    pub fn with(mut self, label: impl Into<String>, values: Vec<f64>, intervals: Option<Vec<(f64, f64)>>) -> Self {
        self.series.push(BarSeries { label: label.into(), values, intervals });
        self
    }

    fn check(&self) -> Result<()> {
        if self.groups.is_empty() || self.series.is_empty() {
            return Err(Error::data(format!("bar chart '{}'", self.title), "no bars"));
        }
        for s in &self.series {
            if s.values.len() != self.groups.len() || s.intervals.as_ref().is_some_and(|i| i.len() != self.groups.len()) {
                return Err(Error::shape(
                    format!("bar chart '{}'", self.title),
                    format!("series '{}' has {} values for {} groups", s.label, s.values.len(), self.groups.len()),
                ));
            }
        }
        Ok(())
    }
}

impl Plot for BarChart {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        self.check()?;
        let vals = self.series.iter().flat_map(|s| s.values.iter().copied().chain(s.intervals.iter().flatten().flat_map(|&(a, b)| [a, b])));
        let vals: Vec<f64> = vals.filter(|v| v.is_finite() && (!self.log_y || *v > 0.0)).collect();
        if vals.is_empty() {
            return Err(Error::data(format!("bar chart '{}'", self.title), "no finite values"));
        }
        let (lo, hi) = vals.iter().fold((f64::MAX, f64::MIN), |(a, b), &v| (a.min(v), b.max(v)));
        let (y0, y1) = match self.y_range {
            Some(r) => r,
            None if self.log_y => (lo / 1.5, hi * 1.5),
            None => (lo.min(0.0), if hi > 0.0 { hi * 1.08 } else { 0.0 } + if hi == lo.min(0.0) { 1.0 } else { 0.0 }),
        };
        let (w, h) = root.dim_in_pixel();
        let base = (w.min(h) as f64 / 30.0).clamp(11.0, 20.0);
        let ng = self.groups.len();
        let ns = self.series.len();
        let groups = self.groups.clone();
        macro_rules! body {
            ($chart:expr) => {{
                let mut chart = $chart;
                chart
                    .configure_mesh()
                    .disable_x_mesh()
                    .x_labels(ng)
                    .x_label_formatter(&|x: &f64| {
                        let i = x.round();
                        if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < ng {
                            groups[i as usize].clone()
                        } else {
                            String::new()
                        }
                    })
                    .y_desc(&self.y_label)
                    .y_label_formatter(&super::style::fmt_tick)
                    .label_style((FONT, base * 0.8))
                    .axis_desc_style((FONT, base))
                    .draw()
                    .map_err(plot_err)?;
                let width = 0.8 / ns as f64;
                for (k, s) in self.series.iter().enumerate() {
                    let color = series_color(k);
                    let bars = s.values.iter().enumerate().filter(|(_, v)| v.is_finite()).map(|(g, &v)| {
                        let x0 = g as f64 - 0.4 + k as f64 * width;
                        let base_y = if self.log_y { y0 } else { 0.0f64.max(y0) };
                        Rectangle::new([(x0, base_y), (x0 + width * 0.92, v)], color.filled())
                    });
                    chart
                        .draw_series(bars)
                        .map_err(plot_err)?
                        .label(s.label.clone())
                        .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
                    if let Some(iv) = &s.intervals {
                        let bars = iv.iter().enumerate().filter(|(_, (a, b))| a.is_finite() && b.is_finite()).map(|(g, &(a, b))| {
                            let xc = g as f64 - 0.4 + (k as f64 + 0.46) * width;
                            PathElement::new(vec![(xc, a), (xc, b)], BLACK.stroke_width(2))
                        });
                        chart.draw_series(bars).map_err(plot_err)?;
                    }
                }
                if ns > 1 {
                    chart
                        .configure_series_labels()
                        .label_font((FONT, base * 0.8))
                        .background_style(WHITE.mix(0.85))
                        .border_style(BLACK.mix(0.3))
                        .position(SeriesLabelPosition::UpperRight)
                        .draw()
                        .map_err(plot_err)?;
                }
            }};
        }
        let mut cb = ChartBuilder::on(root);
        cb.caption(&self.title, (FONT, base * 1.25))
            .margin((base * 0.7) as u32)
            .x_label_area_size((base * 2.8) as u32)
            .y_label_area_size((base * 4.2) as u32);
        let xr = -0.6..(ng as f64 - 0.4);
        if self.log_y {
            let (bold, light) = super::style::log_ticks(y0, y1);
            let yr = (y0..y1).log_scale().with_key_points(bold).with_light_points(light);
            body!(cb.build_cartesian_2d(xr, yr).map_err(plot_err)?);
        } else {
            body!(cb.build_cartesian_2d(xr, y0..y1).map_err(plot_err)?);
        }
        Ok(())
    }
}

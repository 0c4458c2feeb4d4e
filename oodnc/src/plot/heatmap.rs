//! Heatmaps: a matrix drawn with the viridis colour map and a colour bar.

use super::figure::{plot_err, Plot};
use super::style::FONT;
use crate::error::{Error, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::colors::colormaps::{ColorMap, ViridisRGB};

/// A heatmap of `values[row][col]`.
#[derive(Debug, Clone, Default)]
pub struct Heatmap {
    pub title: String,
    pub values: Vec<Vec<f64>>,
    pub row_labels: Vec<String>,
    pub col_labels: Vec<String>,
    pub x_label: String,
    pub y_label: String,
    /// Colour scale limits; automatic when `None`.
    pub range: Option<(f64, f64)>,
    /// Reverse the colour map (small = bright), like `viridis_r`.
    pub reversed: bool,
    /// Write the value in each cell (small matrices).
    pub annotate: bool,
}

impl Heatmap {
    /// A heatmap from rows of values.
    pub fn new(title: impl Into<String>, values: Vec<Vec<f64>>) -> Self {
        Heatmap { title: title.into(), values, ..Default::default() }
    }

    /// From a 2-D tensor.
    pub fn from_tensor(title: impl Into<String>, t: &tch::Tensor) -> Result<Self> {
        let s = t.size();
        if s.len() != 2 {
            return Err(Error::shape("Heatmap::from_tensor", format!("{s:?} is not a matrix")));
        }
        let v: Vec<f64> = Vec::<f64>::try_from(t.to_kind(tch::Kind::Double).to_device(tch::Device::Cpu).flatten(0, -1))?;
        Ok(Heatmap::new(title, v.chunks(s[1] as usize).map(|r| r.to_vec()).collect()))
    }

    /// Sets axis descriptions.
    pub fn axes(mut self, x: impl Into<String>, y: impl Into<String>) -> Self {
        self.x_label = x.into();
        self.y_label = y.into();
        self
    }

    /// Sets tick labels.
    pub fn labels(mut self, rows: Vec<String>, cols: Vec<String>) -> Self {
        self.row_labels = rows;
        self.col_labels = cols;
        self
    }
}

impl Plot for Heatmap {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let rows = self.values.len();
        let cols = self.values.first().map(|r| r.len()).unwrap_or(0);
        if rows == 0 || cols == 0 || self.values.iter().any(|r| r.len() != cols) {
            return Err(Error::shape(format!("heatmap '{}'", self.title), "empty or ragged matrix"));
        }
        let finite: Vec<f64> = self.values.iter().flatten().copied().filter(|v| v.is_finite()).collect();
        if finite.is_empty() {
            return Err(Error::data(format!("heatmap '{}'", self.title), "no finite values"));
        }
        let (mut lo, mut hi) = self.range.unwrap_or_else(|| finite.iter().fold((f64::MAX, f64::MIN), |(a, b), &v| (a.min(v), b.max(v))));
        if hi <= lo {
            hi = lo + 1.0;
            lo -= 0.0;
        }
        let (w, h) = root.dim_in_pixel();
        let base = (w.min(h) as f64 / 32.0).clamp(10.0, 18.0);
        let (main, bar) = root.split_horizontally(w.saturating_sub((base * 6.0) as u32));
        let mut chart = ChartBuilder::on(&main)
            .caption(&self.title, (FONT, base * 1.25))
            .margin((base * 0.6) as u32)
            .x_label_area_size((base * 3.0) as u32)
            .y_label_area_size((base * 5.0) as u32)
            .build_cartesian_2d(0f64..cols as f64, rows as f64..0f64)
            .map_err(plot_err)?;
        let (rl, cl) = (self.row_labels.clone(), self.col_labels.clone());
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc(&self.x_label)
            .y_desc(&self.y_label)
            .x_labels(cols.min(20))
            .y_labels(rows.min(20))
            .x_label_formatter(&|x: &f64| {
                let i = (x - 0.5).round();
                if i >= 0.0 && (i as usize) < cl.len() && (x - 0.5 - i).abs() < 1e-6 {
                    cl[i as usize].clone()
                } else if cl.is_empty() {
                    format!("{}", x.floor() as i64)
                } else {
                    String::new()
                }
            })
            .y_label_formatter(&|y: &f64| {
                let i = (y - 0.5).round();
                if i >= 0.0 && (i as usize) < rl.len() && (y - 0.5 - i).abs() < 1e-6 {
                    rl[i as usize].clone()
                } else if rl.is_empty() {
                    format!("{}", y.floor() as i64)
                } else {
                    String::new()
                }
            })
            .label_style((FONT, base * 0.8))
            .axis_desc_style((FONT, base))
            .draw()
            .map_err(plot_err)?;
        let color = |v: f64| -> RGBColor {
            let t = ((v - lo) / (hi - lo)).clamp(0.0, 1.0);
            let t = if self.reversed { 1.0 - t } else { t };
            ViridisRGB.get_color(t as f32)
        };
        chart
            .draw_series(self.values.iter().enumerate().flat_map(|(r, row)| {
                row.iter().enumerate().map(move |(c, &v)| {
                    let fill = if v.is_finite() { color(v).filled() } else { RGBColor(200, 200, 200).filled() };
                    Rectangle::new([(c as f64, r as f64), (c as f64 + 1.0, r as f64 + 1.0)], fill)
                })
            }))
            .map_err(plot_err)?;
        if self.annotate && rows * cols <= 400 {
            for (r, row) in self.values.iter().enumerate() {
                for (c, &v) in row.iter().enumerate() {
                    let t = ((v - lo) / (hi - lo)).clamp(0.0, 1.0);
                    let t = if self.reversed { 1.0 - t } else { t };
                    let fg = if t > 0.6 { &BLACK } else { &WHITE };
                    chart
                        .draw_series(std::iter::once(Text::new(
                            if v.abs() >= 100.0 { format!("{v:.0}") } else { format!("{v:.2}") },
                            (c as f64 + 0.2, r as f64 + 0.35),
                            (FONT, base * 0.7).into_font().color(fg),
                        )))
                        .map_err(plot_err)?;
                }
            }
        }
        // Colour bar.
        let mut cbar = ChartBuilder::on(&bar)
            .margin_top((base * 3.0) as u32)
            .margin_bottom((base * 3.5) as u32)
            .margin_right((base * 0.5) as u32)
            .y_label_area_size((base * 3.6) as u32)
            .build_cartesian_2d(0f64..1f64, lo..hi)
            .map_err(plot_err)?;
        cbar.configure_mesh()
            .disable_mesh()
            .disable_x_axis()
            .y_labels(5)
            .y_label_formatter(&super::style::fmt_tick)
            .label_style((FONT, base * 0.75))
            .draw()
            .map_err(plot_err)?;
        let steps = 64;
        cbar.draw_series((0..steps).map(|i| {
            let a = lo + (hi - lo) * i as f64 / steps as f64;
            let b = lo + (hi - lo) * (i + 1) as f64 / steps as f64;
            Rectangle::new([(0.0, a), (1.0, b)], color((a + b) / 2.0).filled())
        }))
        .map_err(plot_err)?;
        Ok(())
    }
}

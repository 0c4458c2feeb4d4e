//! Overlaid histograms (score distributions of ID vs OOD), normalised to densities.

use super::figure::{plot_err, Plot};
use super::style::{series_color, FONT};
use crate::error::{Error, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

/// Several samples binned on common edges.
#[derive(Debug, Clone, Default)]
pub struct Histogram {
    pub title: String,
    pub x_label: String,
    pub samples: Vec<(String, Vec<f64>)>,
    pub bins: usize,
    /// Clip the x range to these quantiles of the pooled data (robust to outliers).
    pub quantile_range: (f64, f64),
}

impl Histogram {
    /// An empty histogram with 60 bins over the 0.5 %-99.5 % range.
    pub fn new(title: impl Into<String>, x_label: impl Into<String>) -> Self {
        Histogram { title: title.into(), x_label: x_label.into(), samples: Vec::new(), bins: 60, quantile_range: (0.005, 0.995) }
    }

    /// Adds a sample.
    pub fn with(mut self, label: impl Into<String>, values: Vec<f64>) -> Self {
        self.samples.push((label.into(), values));
        self
    }

    /// The common bin edges and the densities of every sample.
    pub fn densities(&self) -> Result<(Vec<f64>, Vec<Vec<f64>>)> {
        let mut all: Vec<f64> = self.samples.iter().flat_map(|(_, v)| v.iter().copied()).filter(|v| v.is_finite()).collect();
        if all.is_empty() || self.bins == 0 {
            return Err(Error::data(format!("histogram '{}'", self.title), "no finite values"));
        }
        all.sort_by(|a, b| a.total_cmp(b));
        let q = |p: f64| all[((all.len() - 1) as f64 * p).round() as usize];
        let (mut lo, mut hi) = (q(self.quantile_range.0), q(self.quantile_range.1));
        if hi <= lo {
            lo -= 0.5;
            hi += 0.5;
        }
        let bw = (hi - lo) / self.bins as f64;
        let edges: Vec<f64> = (0..=self.bins).map(|i| lo + bw * i as f64).collect();
        let dens = self
            .samples
            .iter()
            .map(|(_, v)| {
                let mut c = vec![0.0; self.bins];
                let n = v.iter().filter(|x| x.is_finite()).count().max(1) as f64;
                for &x in v.iter().filter(|x| x.is_finite()) {
                    let k = (((x - lo) / bw).floor() as i64).clamp(0, self.bins as i64 - 1) as usize;
                    c[k] += 1.0;
                }
                c.into_iter().map(|k| k / n / bw).collect()
            })
            .collect();
        Ok((edges, dens))
    }
}

impl Plot for Histogram {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let (edges, dens) = self.densities()?;
        let ymax = dens.iter().flatten().fold(0.0f64, |a, &b| a.max(b)) * 1.1;
        let (w, h) = root.dim_in_pixel();
        let base = (w.min(h) as f64 / 30.0).clamp(11.0, 20.0);
        let mut chart = ChartBuilder::on(root)
            .caption(&self.title, (FONT, base * 1.25))
            .margin((base * 0.7) as u32)
            .x_label_area_size((base * 2.6) as u32)
            .y_label_area_size((base * 4.2) as u32)
            .build_cartesian_2d(edges[0]..edges[edges.len() - 1], 0.0..ymax.max(1e-12))
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc(&self.x_label)
            .y_desc("density")
            .x_label_formatter(&super::style::fmt_tick)
            .y_label_formatter(&super::style::fmt_tick)
            .label_style((FONT, base * 0.85))
            .axis_desc_style((FONT, base))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(plot_err)?;
        for (k, ((label, _), d)) in self.samples.iter().zip(&dens).enumerate() {
            let color = series_color(k);
            chart
                .draw_series(
                    d.iter().enumerate().map(|(i, &v)| Rectangle::new([(edges[i], 0.0), (edges[i + 1], v)], color.mix(0.35).filled())),
                )
                .map_err(plot_err)?
                .label(label.clone())
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.mix(0.5).filled()));
            let outline: Vec<(f64, f64)> = d.iter().enumerate().flat_map(|(i, &v)| [(edges[i], v), (edges[i + 1], v)]).collect();
            chart.draw_series(LineSeries::new(outline, color.stroke_width(2))).map_err(plot_err)?;
        }
        chart
            .configure_series_labels()
            .label_font((FONT, base * 0.85))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(plot_err)?;
        Ok(())
    }
}

//! 2-D scatter plots coloured by group (e.g. PCA of ID classes and OOD sets).

use super::figure::{plot_err, Plot};
use super::style::{class_colors, FONT};
use crate::error::{Error, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

/// One group of a [`ScatterPlot`]: (label, points, marker size, shown in the legend).
pub type Group = (String, Vec<(f64, f64)>, u32, bool);

/// Points in groups; each group gets its own colour (100+ distinguishable).
#[derive(Debug, Clone, Default)]
pub struct ScatterPlot {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// (label, points, marker size, shown in the legend).
    pub groups: Vec<Group>,
    /// Colour per group; defaults to [`class_colors`].
    pub colors: Option<Vec<RGBColor>>,
}

impl ScatterPlot {
    /// An empty scatter plot.
    pub fn new(title: impl Into<String>, x: impl Into<String>, y: impl Into<String>) -> Self {
        ScatterPlot { title: title.into(), x_label: x.into(), y_label: y.into(), ..Default::default() }
    }

    /// Adds a group.
    pub fn with(mut self, label: impl Into<String>, points: Vec<(f64, f64)>, size: u32, legend: bool) -> Self {
        self.groups.push((label.into(), points, size, legend));
        self
    }
}

impl Plot for ScatterPlot {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let pts: Vec<(f64, f64)> =
            self.groups.iter().flat_map(|g| g.1.iter().copied()).filter(|(x, y)| x.is_finite() && y.is_finite()).collect();
        if pts.is_empty() {
            return Err(Error::data(format!("scatter '{}'", self.title), "no finite points"));
        }
        let (x0, x1, y0, y1) =
            pts.iter().fold((f64::MAX, f64::MIN, f64::MAX, f64::MIN), |a, &(x, y)| (a.0.min(x), a.1.max(x), a.2.min(y), a.3.max(y)));
        let (px, py) = (((x1 - x0) * 0.05).max(1e-9), ((y1 - y0) * 0.05).max(1e-9));
        let (w, h) = root.dim_in_pixel();
        let base = (w.min(h) as f64 / 30.0).clamp(11.0, 20.0);
        let mut chart = ChartBuilder::on(root)
            .caption(&self.title, (FONT, base * 1.25))
            .margin((base * 0.7) as u32)
            .x_label_area_size((base * 2.6) as u32)
            .y_label_area_size((base * 4.2) as u32)
            .build_cartesian_2d((x0 - px)..(x1 + px), (y0 - py)..(y1 + py))
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
        let colors = self.colors.clone().unwrap_or_else(|| class_colors(self.groups.len()));
        let mut any_legend = false;
        for (k, (label, p, size, legend)) in self.groups.iter().enumerate() {
            let color = colors[k % colors.len().max(1)];
            let s = chart.draw_series(p.iter().map(|&q| Circle::new(q, *size, color.mix(0.7).filled()))).map_err(plot_err)?;
            if *legend {
                any_legend = true;
                s.label(label.clone()).legend(move |(x, y)| Circle::new((x + 6, y), 5, color.filled()));
            }
        }
        if any_legend {
            chart
                .configure_series_labels()
                .label_font((FONT, base * 0.8))
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK.mix(0.3))
                .position(SeriesLabelPosition::UpperRight)
                .draw()
                .map_err(plot_err)?;
        }
        Ok(())
    }
}

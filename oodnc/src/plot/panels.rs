//! Multi-panel figures: any plot kind in a grid, plus text boxes.

use super::bar::BarChart;
use super::figure::{plot_err, Plot};
use super::grid::ImageGrid;
use super::heatmap::Heatmap;
use super::hist::Histogram;
use super::line::LinePlot;
use super::scatter::ScatterPlot;
use super::style::FONT;
use crate::error::{Error, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

/// A panel of text lines (summaries, like the original's final-metrics box).
#[derive(Debug, Clone, Default)]
pub struct TextBox {
    pub title: String,
    pub lines: Vec<String>,
}

impl Plot for TextBox {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let (w, h) = root.dim_in_pixel();
        let base = (w.min(h) as f64 / 18.0).clamp(11.0, 18.0);
        root.draw(&Rectangle::new([(4, 4), (w as i32 - 4, h as i32 - 4)], RGBColor(120, 120, 120).stroke_width(1))).map_err(plot_err)?;
        root.draw(&Text::new(self.title.clone(), (14, 12), (FONT, base * 1.2).into_font().style(FontStyle::Bold))).map_err(plot_err)?;
        for (i, l) in self.lines.iter().enumerate() {
            root.draw(&Text::new(l.clone(), (14, 12 + ((i as f64 + 1.6) * base * 1.4) as i32), (FONT, base).into_font()))
                .map_err(plot_err)?;
        }
        Ok(())
    }
}

/// Any plot, for grids of mixed panels.
#[derive(Debug, Clone)]
pub enum AnyPlot {
    Line(LinePlot),
    Bar(BarChart),
    Heat(Heatmap),
    Hist(Histogram),
    Scatter(ScatterPlot),
    Images(ImageGrid),
    Text(TextBox),
}

impl Plot for AnyPlot {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        match self {
            AnyPlot::Line(p) => p.draw(root),
            AnyPlot::Bar(p) => p.draw(root),
            AnyPlot::Heat(p) => p.draw(root),
            AnyPlot::Hist(p) => p.draw(root),
            AnyPlot::Scatter(p) => p.draw(root),
            AnyPlot::Images(p) => p.draw(root),
            AnyPlot::Text(p) => p.draw(root),
        }
    }
}

macro_rules! from_plot {
    ($t:ty, $v:ident) => {
        impl From<$t> for AnyPlot {
            fn from(p: $t) -> Self {
                AnyPlot::$v(p)
            }
        }
    };
}
from_plot!(LinePlot, Line);
from_plot!(BarChart, Bar);
from_plot!(Heatmap, Heat);
from_plot!(Histogram, Hist);
from_plot!(ScatterPlot, Scatter);
from_plot!(ImageGrid, Images);
from_plot!(TextBox, Text);

/// A `rows x cols` grid of panels with an overall title.
#[derive(Debug, Clone)]
pub struct Panels {
    pub title: String,
    pub rows: usize,
    pub cols: usize,
    pub panels: Vec<AnyPlot>,
}

impl Panels {
    /// A grid; panels fill it row by row.
    pub fn new(title: impl Into<String>, rows: usize, cols: usize, panels: Vec<AnyPlot>) -> Self {
        Panels { title: title.into(), rows, cols, panels }
    }
}

impl Plot for Panels {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        if self.rows * self.cols < self.panels.len() || self.panels.is_empty() {
            return Err(Error::shape("panels", format!("{} panels in a {}x{} grid", self.panels.len(), self.rows, self.cols)));
        }
        let area = if self.title.is_empty() {
            root.clone()
        } else {
            root.titled(&self.title, (FONT, 24).into_font().style(FontStyle::Bold)).map_err(plot_err)?
        };
        for (p, a) in self.panels.iter().zip(area.split_evenly((self.rows, self.cols)).iter()) {
            p.draw(a)?;
        }
        Ok(())
    }
}

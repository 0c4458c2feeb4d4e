//! Figures: rendered with plotters to PNG and SVG, shown inline in notebooks.
//!
//! A figure is described by a value implementing [`Plot`] (the data and the
//! styling), and rendered by [`Figure::new`] into both a PNG and an SVG in
//! memory. `save(path)` picks the format from the extension; in a notebook
//! a `Figure` as the last expression of a cell shows up as an `image/png`
//! output (evcxr's display protocol).
//!
//! Text uses DejaVu Sans embedded in the binary (see [`style::register_fonts`]),
//! so figures look the same on every machine, with or without fontconfig.

pub mod bar;
pub mod figure;
pub mod figures;
pub mod grid;
pub mod heatmap;
pub mod hist;
pub mod line;
pub mod panels;
pub mod scatter;
pub mod style;

pub use bar::BarChart;
pub use figure::{Figure, Plot};
pub use grid::ImageGrid;
pub use heatmap::Heatmap;
pub use hist::Histogram;
pub use line::{LinePlot, Series};
pub use panels::{AnyPlot, Panels, TextBox};
pub use scatter::ScatterPlot;

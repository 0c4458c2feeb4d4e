//! The [`Figure`] type: one plot rendered to PNG and SVG.

use crate::error::{Error, IoContext, Result};
use base64::Engine;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;

/// Something that can draw itself on any plotters backend.
pub trait Plot {
    /// Draws onto `root`, which covers the whole figure.
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>;
}

/// A rendered figure: PNG pixels and SVG text, both in memory.
#[derive(Clone)]
pub struct Figure {
    width: u32,
    height: u32,
    rgb: Vec<u8>,
    svg: String,
}

impl std::fmt::Debug for Figure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Figure({}x{})", self.width, self.height)
    }
}

/// Converts any plotters drawing error into ours.
pub(crate) fn plot_err<E: std::error::Error + Send + Sync>(e: DrawingAreaErrorKind<E>) -> Error {
    Error::Plot(e.to_string())
}

impl Figure {
    /// Renders `plot` at `width` x `height` pixels.
    pub fn new(plot: &impl Plot, width: u32, height: u32) -> Result<Self> {
        if width < 16 || height < 16 || width > 16384 || height > 16384 {
            return Err(Error::param("figure size", format!("{width}x{height} is outside 16..=16384 pixels")));
        }
        super::style::register_fonts();
        let mut rgb = vec![255u8; (width * height * 3) as usize];
        {
            let root = BitMapBackend::with_buffer(&mut rgb, (width, height)).into_drawing_area();
            root.fill(&WHITE).map_err(plot_err)?;
            plot.draw(&root)?;
            root.present().map_err(plot_err)?;
        }
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, (width, height)).into_drawing_area();
            root.fill(&WHITE).map_err(plot_err)?;
            plot.draw(&root)?;
            root.present().map_err(plot_err)?;
        }
        Ok(Figure { width, height, rgb, svg })
    }

    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// The raw RGB pixels, row-major, 3 bytes per pixel.
    pub fn rgb(&self) -> &[u8] {
        &self.rgb
    }

    /// The SVG text.
    pub fn svg(&self) -> &str {
        &self.svg
    }

    /// PNG-encoded bytes.
    pub fn png_bytes(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        let enc = image::codecs::png::PngEncoder::new(&mut out);
        image::ImageEncoder::write_image(enc, &self.rgb, self.width, self.height, image::ExtendedColorType::Rgb8)
            .map_err(|e| Error::Plot(format!("PNG encoding: {e}")))?;
        Ok(out)
    }

    /// Writes the figure; `.png` or `.svg` is chosen from the extension.
    /// Parent folders are created. The write is atomic (temp file + rename).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let bytes = match path.extension().and_then(|e| e.to_str()) {
            Some("png") => self.png_bytes()?,
            Some("svg") => self.svg.as_bytes().to_vec(),
            _ => return Err(Error::param("figure path", format!("{}: extension must be .png or .svg", path.display()))),
        };
        crate::util::write_atomic(path, &bytes)
    }

    /// Writes `<stem>.png` and `<stem>.svg` into `dir`.
    pub fn save_both(&self, dir: impl AsRef<Path>, stem: &str) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).at(dir)?;
        self.save(dir.join(format!("{stem}.png")))?;
        self.save(dir.join(format!("{stem}.svg")))
    }

    /// Shows the figure inline in an evcxr notebook as `image/png`.
    pub fn evcxr_display(&self) {
        match self.png_bytes() {
            Ok(png) => {
                let b64 = base64::engine::general_purpose::STANDARD.encode(png);
                println!("EVCXR_BEGIN_CONTENT image/png\n{b64}\nEVCXR_END_CONTENT");
            }
            Err(e) => eprintln!("{e}"),
        }
    }

    /// Shows the figure inline as `image/svg+xml` (sharper, larger for dense plots).
    pub fn display_svg(&self) {
        println!("EVCXR_BEGIN_CONTENT image/svg+xml\n{}\nEVCXR_END_CONTENT", self.svg);
    }

    /// Pixel variance over all channels: 0 for a blank figure.
    pub fn pixel_variance(&self) -> f64 {
        let n = self.rgb.len() as f64;
        let mean = self.rgb.iter().map(|&v| v as f64).sum::<f64>() / n;
        self.rgb.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n
    }
}

//! Image grids: a sample batch with class names (notebook 01), OOD samples (notebook 04).

use super::figure::{plot_err, Plot};
use super::style::FONT;
use crate::error::{Error, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use tch::{Device, Kind, Tensor};

/// A grid of RGB images with a caption under each.
#[derive(Debug, Clone)]
pub struct ImageGrid {
    pub title: String,
    /// Images as HWC bytes, all `side x side`.
    pub images: Vec<Vec<u8>>,
    pub side: usize,
    pub captions: Vec<String>,
    pub cols: usize,
}

impl ImageGrid {
    /// From `[N,3,H,W]` images (u8 in 0..=255, or float in [0, 1]) and captions.
    pub fn from_tensor(title: impl Into<String>, images: &Tensor, captions: Vec<String>, cols: usize) -> Result<Self> {
        let size = images.size();
        if size.len() != 4 || size[1] != 3 || size[2] != size[3] {
            return Err(Error::shape("ImageGrid", format!("images {size:?}, expected [N,3,S,S]")));
        }
        if captions.len() != size[0] as usize {
            return Err(Error::shape("ImageGrid", format!("{} captions for {} images", captions.len(), size[0])));
        }
        if cols == 0 {
            return Err(Error::param("cols", "must be at least 1"));
        }
        let bytes = if images.kind() == Kind::Uint8 {
            images.to_device(Device::Cpu)
        } else {
            (images.to_device(Device::Cpu).clamp(0.0, 1.0) * 255.0).round().to_kind(Kind::Uint8)
        };
        let hwc = bytes.permute([0, 2, 3, 1]).contiguous();
        let flat = Vec::<u8>::try_from(hwc.flatten(0, -1)).map_err(crate::Error::Torch)?;
        let side = size[2] as usize;
        let per = side * side * 3;
        Ok(ImageGrid { title: title.into(), images: flat.chunks(per).map(|c| c.to_vec()).collect(), side, captions, cols })
    }

    /// Suggested figure size in pixels (cells of ~110 px).
    pub fn suggested_size(&self) -> (u32, u32) {
        let rows = self.images.len().div_ceil(self.cols).max(1);
        (self.cols as u32 * 110 + 20, rows as u32 * 130 + 50)
    }
}

impl Plot for ImageGrid {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        if self.images.is_empty() {
            return Err(Error::data("ImageGrid", "no images"));
        }
        let (w, h) = root.dim_in_pixel();
        let title_h = 40u32;
        root.draw(&Text::new(self.title.clone(), (10, 8), (FONT, 20).into_font().color(&BLACK))).map_err(plot_err)?;
        let body = root.margin(title_h, 5, 5, 5);
        let rows = self.images.len().div_ceil(self.cols);
        let cells = body.split_evenly((rows, self.cols));
        let (bw, bh) = body.dim_in_pixel();
        let cell_w = bw / self.cols as u32;
        let cell_h = bh / rows as u32;
        let caption_h = 22u32;
        let scale = ((cell_w.min(cell_h.saturating_sub(caption_h)) as f64 - 6.0) / self.side as f64).max(1.0);
        let _ = (w, h);
        for (i, cell) in cells.iter().enumerate().take(self.images.len()) {
            let img = &self.images[i];
            let off = ((cell_w as f64 - scale * self.side as f64) / 2.0).max(0.0) as i32;
            for y in 0..self.side {
                for x in 0..self.side {
                    let p = &img[(y * self.side + x) * 3..(y * self.side + x) * 3 + 3];
                    let (x0, y0) = (off + (x as f64 * scale) as i32, 2 + (y as f64 * scale) as i32);
                    let (x1, y1) = (off + ((x + 1) as f64 * scale) as i32, 2 + ((y + 1) as f64 * scale) as i32);
                    cell.draw(&Rectangle::new([(x0, y0), (x1, y1)], RGBColor(p[0], p[1], p[2]).filled())).map_err(plot_err)?;
                }
            }
            let mut cap = self.captions[i].clone();
            if cap.chars().count() > 16 {
                cap = cap.chars().take(15).collect::<String>() + "…";
            }
            let ty = 4 + (scale * self.side as f64) as i32;
            cell.draw(&Text::new(cap, (off, ty), (FONT, 13).into_font().color(&BLACK))).map_err(plot_err)?;
        }
        Ok(())
    }
}

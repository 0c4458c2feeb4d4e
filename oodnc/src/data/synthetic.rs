//! The embedded offline dataset: a seeded procedural generator of 32x32 RGB
//! images, written in the real on-disk formats so that the demo and the tests
//! go through the same loaders as CIFAR/SVHN/DTD.
//!
//! - **ID** (`cifar-100-binary/`, CIFAR-100 format, `classes` classes): each class is a
//!   shape (12 kinds: disk, square, triangle, ring, cross, bar, diamond, two disks,
//!   frame, X, crescent, star) with a class hue; every sample varies position,
//!   scale, rotation, hue (+-18 deg), lightness, a two-tone background gradient,
//!   a distractor blob and pixel noise.
//! - **Near OOD**, playing CIFAR-10 (`cifar-10-batches-bin/`, 10 classes): held-out
//!   classes of the same family, i.e. the same shapes with hues between the ID hues
//!   and a different aspect ratio. Close to ID, so hard to separate.
//! - **Far OOD**, playing SVHN (`svhn/*.mat`): seven-segment digit glyphs, one to
//!   three digits, on coloured backgrounds.
//! - **Far OOD**, playing Textures (`dtd/`, JPEGs of various sizes with 10 official-style
//!   partitions): gratings, checkerboards, dots, grids, zigzags, marble, cracks, waves.
//! - **OOD validation**, playing TinyImageNet val (`tiny-imagenet-200/val/`, its layout:
//!   64x64 JPEGs in `images/` and `val_annotations.txt`): eight shapes that are in
//!   no other family (heart, arrow, hexagon, L, T, hourglass, half-disk, pentagon ring),
//!   any hue, on the ID backgrounds. Disjoint from the three test families, so the
//!   `heldout` selection protocol never sees a test set. It is drawn from its own
//!   seed stream: adding it left every file of the other families byte-identical.
//!
//! Everything is a function of `seed`, so the files are byte-identical across runs.

use super::cifar::{self, Variant};
use super::{svhn, Part};
use crate::error::{Error, IoContext, Result};
use crate::util::{write_atomic, SplitMix64};
use std::collections::BTreeMap;
use std::f64::consts::PI;
use std::path::{Path, PathBuf};

/// Sizes of the generated sets.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SynthConfig {
    /// ID classes (10..=100).
    pub classes: usize,
    pub train_per_class: usize,
    pub test_per_class: usize,
    /// Near-OOD ("CIFAR-10") images per class (10 classes), test part.
    pub near_per_class: usize,
    /// Far-OOD digits ("SVHN") test images.
    pub digits_test: usize,
    /// Texture images per texture class (8 classes); partitions list a third each.
    pub textures_per_class: usize,
    /// Held-out OOD-validation ("TinyImageNet val") images per novel shape (8 shapes).
    #[serde(default = "default_heldout_per_class")]
    pub heldout_per_class: usize,
    pub seed: u64,
}

fn default_heldout_per_class() -> usize {
    40
}

impl Default for SynthConfig {
    /// The `demo` profile's sizes.
    fn default() -> Self {
        SynthConfig {
            classes: 10,
            train_per_class: 500,
            test_per_class: 100,
            near_per_class: 100,
            digits_test: 1000,
            textures_per_class: 60,
            heldout_per_class: default_heldout_per_class(),
            seed: 0,
        }
    }
}

impl SynthConfig {
    /// Checks the sizes.
    pub fn validate(&self) -> Result<()> {
        if !(10..=100).contains(&self.classes) {
            return Err(Error::param("classes", format!("{} is outside 10..=100", self.classes)));
        }
        for (name, v) in [
            ("train_per_class", self.train_per_class),
            ("test_per_class", self.test_per_class),
            ("near_per_class", self.near_per_class),
            ("digits_test", self.digits_test),
            ("heldout_per_class", self.heldout_per_class),
        ] {
            if v == 0 {
                return Err(Error::param(name, "must be at least 1"));
            }
        }
        let limits = [
            ("train_per_class", self.classes * self.train_per_class, 1_000_000),
            ("test_per_class", self.classes * self.test_per_class, 1_000_000),
            ("near_per_class", 10 * self.near_per_class, 1_000_000),
            ("digits_test", self.digits_test, 1_000_000),
            ("textures_per_class", TEXTURES.len() * self.textures_per_class, 100_000),
            ("heldout_per_class", NOVEL_SHAPES.len() * self.heldout_per_class, 100_000),
        ];
        for (name, total, max) in limits {
            if total > max {
                return Err(Error::param(name, format!("gives {total} images, above the limit of {max}")));
            }
        }
        if self.textures_per_class < 3 {
            return Err(Error::param("textures_per_class", "must be at least 3 (train/val/test thirds)"));
        }
        Ok(())
    }
}

/// An RGB float image, values in [0, 1], row-major HWC.
struct Canvas {
    w: usize,
    h: usize,
    px: Vec<[f64; 3]>,
}

impl Canvas {
    fn new(w: usize, h: usize) -> Self {
        Canvas { w, h, px: vec![[0.0; 3]; w * h] }
    }

    /// For each pixel, `f(u, v)` with u, v in [-1, 1] (x right, y down).
    fn paint(&mut self, mut f: impl FnMut(f64, f64, &mut [f64; 3])) {
        for y in 0..self.h {
            for x in 0..self.w {
                let u = (x as f64 + 0.5) / self.w as f64 * 2.0 - 1.0;
                let v = (y as f64 + 0.5) / self.h as f64 * 2.0 - 1.0;
                f(u, v, &mut self.px[y * self.w + x]);
            }
        }
    }

    fn add_noise(&mut self, rng: &mut SplitMix64, sigma: f64) {
        for p in &mut self.px {
            for c in p.iter_mut() {
                *c += sigma * rng.normal();
            }
        }
    }

    /// CHW bytes (32x32 canvases).
    fn chw(&self) -> Vec<u8> {
        let mut out = vec![0u8; 3 * self.w * self.h];
        for (i, p) in self.px.iter().enumerate() {
            for c in 0..3 {
                out[c * self.w * self.h + i] = (p[c].clamp(0.0, 1.0) * 255.0).round() as u8;
            }
        }
        out
    }

    fn rgb_image(&self) -> image::RgbImage {
        image::RgbImage::from_fn(self.w as u32, self.h as u32, |x, y| {
            let p = self.px[y as usize * self.w + x as usize];
            image::Rgb(p.map(|c| (c.clamp(0.0, 1.0) * 255.0).round() as u8))
        })
    }
}

/// HSL (h in degrees) to RGB in [0, 1].
fn hsl(h: f64, s: f64, l: f64) -> [f64; 3] {
    let c = crate::util::hsl_to_rgb(h, s.clamp(0.0, 1.0), l.clamp(0.0, 1.0));
    [c.0 as f64 / 255.0, c.1 as f64 / 255.0, c.2 as f64 / 255.0]
}

fn mix(a: [f64; 3], b: [f64; 3], t: f64) -> [f64; 3] {
    let t = t.clamp(0.0, 1.0);
    [a[0] * (1.0 - t) + b[0] * t, a[1] * (1.0 - t) + b[1] * t, a[2] * (1.0 - t) + b[2] * t]
}

/// Number of shape kinds.
pub const SHAPES: usize = 12;

/// Signed "inside-ness" of shape `kind` at (x, y) in shape coordinates: > 0 inside.
/// `aspect` stretches the shape horizontally.
fn shape_field(kind: usize, x: f64, y: f64, aspect: f64) -> f64 {
    let x = x / aspect;
    let r = (x * x + y * y).sqrt();
    let (ax, ay) = (x.abs(), y.abs());
    match kind % SHAPES {
        0 => 1.0 - r,                                               // disk
        1 => 0.8 - ax.max(ay),                                      // square
        2 => (0.5 * y + 0.4).min(0.87 - 0.5 * y - 0.87 * ax) * 1.5, // triangle
        3 => 0.25 - (r - 0.7).abs(),                                // ring
        4 => (0.3 - ax).max(0.3 - ay).min(0.9 - ax.max(ay)),        // cross
        5 => (0.3 - ay).min(1.0 - ax),                              // bar
        6 => 1.0 - (ax + ay),                                       // diamond
        7 => {
            let d1 = ((x - 0.45).powi(2) + y * y).sqrt();
            let d2 = ((x + 0.45).powi(2) + y * y).sqrt();
            0.45 - d1.min(d2)
        } // two disks
        8 => 0.2 - (ax.max(ay) - 0.7).abs(),                        // frame
        9 => (0.22 - (x - y).abs() / 2f64.sqrt()).max(0.22 - (x + y).abs() / 2f64.sqrt()).min(0.95 - r), // X
        10 => (1.0 - r).min(((x + 0.45).powi(2) + y * y).sqrt() - 0.8), // crescent
        _ => {
            let a = y.atan2(x);
            0.55 + 0.35 * (5.0 * a).cos() - r
        } // star
    }
}

/// Parameters of one shape class.
#[derive(Debug, Clone, Copy)]
struct ShapeClass {
    kind: usize,
    hue: f64,
    aspect: f64,
}

fn id_class(c: usize, _classes: usize) -> ShapeClass {
    // Shape cycles fastest; hues step by the golden angle, so classes that share a
    // shape (beyond 12 classes) differ in colour.
    ShapeClass { kind: c % SHAPES, hue: (c as f64 * 137.507_764) % 360.0, aspect: 1.0 }
}

fn near_class(j: usize, classes: usize) -> ShapeClass {
    // Same family: an ID shape with a hue half a golden step away and a stretched aspect.
    let base = id_class((j * 7 + 3) % classes, classes);
    ShapeClass { kind: base.kind, hue: (base.hue + 68.75) % 360.0, aspect: if j.is_multiple_of(2) { 1.35 } else { 0.7 } }
}

fn render_shape(rng: &mut SplitMix64, cls: ShapeClass) -> Vec<u8> {
    let mut cv = Canvas::new(32, 32);
    let bg_h = rng.uniform() * 360.0;
    let bg_a = hsl(bg_h, 0.25 + 0.2 * rng.uniform(), 0.25 + 0.5 * rng.uniform());
    let bg_b = hsl(bg_h + 40.0 * rng.normal(), 0.2, 0.2 + 0.6 * rng.uniform());
    let ga = rng.uniform() * 2.0 * PI;
    let fg = hsl(cls.hue + 18.0 * rng.normal().clamp(-2.0, 2.0), 0.65 + 0.3 * rng.uniform(), 0.4 + 0.25 * rng.uniform());
    let scale = 0.45 + 0.3 * rng.uniform();
    let rot = rng.uniform() * 2.0 * PI;
    let (cx, cy) = (0.25 * rng.normal().clamp(-1.5, 1.5), 0.25 * rng.normal().clamp(-1.5, 1.5));
    // A small distractor blob of random colour.
    let (bx, by, br) = (rng.uniform() * 2.0 - 1.0, rng.uniform() * 2.0 - 1.0, 0.1 + 0.15 * rng.uniform());
    let bc = hsl(rng.uniform() * 360.0, 0.5, 0.5);
    let (s, c) = rot.sin_cos();
    cv.paint(|u, v, p| {
        let t = 0.5 + 0.5 * (u * ga.cos() + v * ga.sin());
        *p = mix(bg_a, bg_b, t);
        if ((u - bx).powi(2) + (v - by).powi(2)).sqrt() < br {
            *p = mix(*p, bc, 0.7);
        }
        let (x, y) = ((u - cx) / scale, (v - cy) / scale);
        let (x, y) = (c * x + s * y, -s * x + c * y);
        let f = shape_field(cls.kind, x, y, cls.aspect);
        // Soft edge over about one pixel.
        *p = mix(*p, fg, (f * scale * 16.0 + 0.5).clamp(0.0, 1.0));
    });
    cv.add_noise(rng, 0.05);
    cv.chw()
}

/// Seven-segment patterns for digits 0..9 (a, b, c, d, e, f, g).
const SEGMENTS: [[bool; 7]; 10] = [
    [true, true, true, true, true, true, false],
    [false, true, true, false, false, false, false],
    [true, true, false, true, true, false, true],
    [true, true, true, true, false, false, true],
    [false, true, true, false, false, true, true],
    [true, false, true, true, false, true, true],
    [true, false, true, true, true, true, true],
    [true, true, true, false, false, false, false],
    [true, true, true, true, true, true, true],
    [true, true, true, true, false, true, true],
];

/// Distance-based coverage of a seven-segment digit at (x, y), glyph box [-0.5,0.5]x[-1,1].
fn digit_field(d: usize, x: f64, y: f64, thick: f64) -> f64 {
    let seg = |x0: f64, y0: f64, x1: f64, y1: f64| -> f64 {
        let (dx, dy) = (x1 - x0, y1 - y0);
        let t = (((x - x0) * dx + (y - y0) * dy) / (dx * dx + dy * dy)).clamp(0.0, 1.0);
        let (px, py) = (x0 + t * dx - x, y0 + t * dy - y);
        thick - (px * px + py * py).sqrt()
    };
    let s = SEGMENTS[d % 10];
    let segs = [
        (-0.4, -0.9, 0.4, -0.9),
        (0.45, -0.85, 0.45, -0.05),
        (0.45, 0.05, 0.45, 0.85),
        (-0.4, 0.9, 0.4, 0.9),
        (-0.45, 0.05, -0.45, 0.85),
        (-0.45, -0.85, -0.45, -0.05),
        (-0.4, 0.0, 0.4, 0.0),
    ];
    let mut best = f64::MIN;
    for (on, (a, b, c, e)) in s.iter().zip(segs) {
        if *on {
            best = best.max(seg(a, b, c, e));
        }
    }
    best
}

fn render_digits(rng: &mut SplitMix64) -> (Vec<u8>, i64) {
    let mut cv = Canvas::new(32, 32);
    let label = rng.below(10) as usize;
    let n_side = rng.below(3) as i64; // 0, 1 or 2 neighbouring digits
    let neighbours: Vec<(f64, usize)> = match n_side {
        0 => vec![],
        1 => vec![(if rng.below(2) == 0 { -1.0 } else { 1.0 }, rng.below(10) as usize)],
        _ => vec![(-1.0, rng.below(10) as usize), (1.0, rng.below(10) as usize)],
    };
    let bg = hsl(rng.uniform() * 360.0, 0.3 * rng.uniform(), 0.2 + 0.6 * rng.uniform());
    let lbg = (bg[0] + bg[1] + bg[2]) / 3.0;
    let fg_l = if lbg > 0.5 { 0.1 + 0.2 * rng.uniform() } else { 0.7 + 0.25 * rng.uniform() };
    let fg = hsl(rng.uniform() * 360.0, 0.4 * rng.uniform(), fg_l);
    let h = 0.55 + 0.2 * rng.uniform();
    let w = h * (0.5 + 0.15 * rng.uniform());
    let slant = 0.2 * rng.normal();
    let thick = 0.12 + 0.08 * rng.uniform();
    let (ox, oy) = (0.08 * rng.normal(), 0.08 * rng.normal());
    cv.paint(|u, v, p| {
        *p = bg;
        let mut f = f64::MIN;
        let x = (u - ox + slant * (v - oy)) / w;
        let y = (v - oy) / h;
        f = f.max(digit_field(label, x, y, thick));
        for (side, d) in &neighbours {
            f = f.max(digit_field(*d, x - side * 2.3, y, thick));
        }
        *p = mix(*p, fg, (f * h * 16.0 + 0.5).clamp(0.0, 1.0));
    });
    cv.add_noise(rng, 0.04);
    (cv.chw(), label as i64)
}

/// Texture classes (DTD-style names).
pub const TEXTURES: [&str; 8] = ["banded", "chequered", "cracked", "dotted", "grid", "marbled", "wavy", "zigzagged"];

fn render_texture(rng: &mut SplitMix64, class: usize, w: usize, h: usize) -> Canvas {
    let mut cv = Canvas::new(w, h);
    let a = hsl(rng.uniform() * 360.0, 0.2 + 0.5 * rng.uniform(), 0.15 + 0.3 * rng.uniform());
    let b = hsl(rng.uniform() * 360.0, 0.2 + 0.5 * rng.uniform(), 0.55 + 0.35 * rng.uniform());
    let theta = rng.uniform() * PI;
    let freq = 3.0 + 6.0 * rng.uniform();
    let (ct, st) = (theta.cos(), theta.sin());
    let phase = rng.uniform() * 2.0 * PI;
    // Random low-frequency components for marble / cracks.
    let comps: Vec<(f64, f64, f64, f64)> =
        (0..6).map(|_| (rng.normal() * 3.0, rng.normal() * 3.0, rng.uniform() * 2.0 * PI, 0.3 + rng.uniform())).collect();
    let noise = |x: f64, y: f64| -> f64 { comps.iter().map(|(fx, fy, ph, amp)| amp * (fx * x + fy * y + ph).sin()).sum::<f64>() };
    let aspect = w as f64 / h as f64;
    cv.paint(|u, v, p| {
        let x = u * aspect;
        let (r, s) = (ct * x + st * v, -st * x + ct * v);
        let t = match class % TEXTURES.len() {
            0 => 0.5 + 0.5 * (freq * PI * r + phase).sin(),
            1 => (((r * freq).floor() + (s * freq).floor()) as i64).rem_euclid(2) as f64,
            2 => {
                let n = noise(x, v);
                if (n.abs() * 4.0).fract() < 0.12 {
                    0.0
                } else {
                    1.0
                }
            }
            3 => {
                let (fx, fy) = ((r * freq).fract() - 0.5, (s * freq).fract() - 0.5);
                if (fx * fx + fy * fy).sqrt() < 0.25 {
                    1.0
                } else {
                    0.0
                }
            }
            4 => {
                let (fx, fy) = ((r * freq).fract(), (s * freq).fract());
                if fx < 0.15 || fy < 0.15 {
                    1.0
                } else {
                    0.0
                }
            }
            5 => 0.5 + 0.5 * (freq * r + 2.0 * noise(x, v)).sin(),
            6 => 0.5 + 0.5 * (freq * PI * r + 1.5 * (freq * s).sin()).sin(),
            _ => {
                let z = (s * freq).fract();
                let tri = if z < 0.5 { z } else { 1.0 - z };
                0.5 + 0.5 * (freq * PI * (r + 0.6 * tri)).sin()
            }
        };
        *p = mix(a, b, t);
    });
    cv.add_noise(rng, 0.03);
    cv
}

/// Class names of the generated ID set ("disk-0", "square-1", ...).
pub fn id_class_names(classes: usize) -> Vec<String> {
    const SHAPE_NAMES: [&str; SHAPES] =
        ["disk", "square", "triangle", "ring", "cross", "bar", "diamond", "twin-disks", "frame", "x-mark", "crescent", "star"];
    (0..classes).map(|c| format!("{}-{c}", SHAPE_NAMES[c % SHAPES])).collect()
}

/// Renders `n` images of `class_fn(label)` per label, in parallel, deterministic in `seed`/`stream`.
fn render_set(labels: &[i64], seed: u64, stream: u64, render: impl Fn(&mut SplitMix64, i64) -> Vec<u8> + Sync) -> Vec<u8> {
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(16);
    let chunk = labels.len().div_ceil(threads).max(1);
    let parts: Vec<Vec<u8>> = std::thread::scope(|s| {
        let render = &render;
        let handles: Vec<_> = labels
            .chunks(chunk)
            .enumerate()
            .map(|(k, ls)| {
                s.spawn(move || {
                    let mut out = Vec::with_capacity(ls.len() * 3072);
                    for (i, &l) in ls.iter().enumerate() {
                        let mut rng = SplitMix64::derive(seed, &[stream, (k * chunk + i) as u64]);
                        out.extend(render(&mut rng, l));
                    }
                    out
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_default()).collect()
    });
    parts.concat()
}

fn balanced_labels(classes: usize, per_class: usize, rng: &mut SplitMix64) -> Vec<i64> {
    let mut labels: Vec<i64> = (0..classes * per_class).map(|i| (i % classes) as i64).collect();
    let perm = rng.permutation(labels.len());
    labels = perm.iter().map(|&i| labels[i as usize]).collect();
    labels
}

/// What [`generate`] wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SynthSummary {
    pub root: PathBuf,
    pub id_train: usize,
    pub id_test: usize,
    pub near_ood: usize,
    pub digits_ood: usize,
    pub textures: usize,
    /// The OOD-validation family ("TinyImageNet val").
    pub heldout: usize,
}

/// File name of the manifest, written last: the generator's config, the counts
/// and the size and MD5 of every file. Its presence marks a complete dataset
/// written by oodnc.
pub const MANIFEST: &str = "synthetic.json";
/// Written first and removed last: a generation that did not finish (killed,
/// disk full). Its presence marks a folder oodnc may regenerate.
pub const PARTIAL: &str = ".oodnc-synthetic-partial.json";
/// Held (`flock`, blocking) while a generation runs, so two processes never
/// write the same folder at once; the second then finds the dataset complete.
pub const LOCK: &str = ".oodnc-synthetic.lock";

/// Size and MD5 of one generated file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileSum {
    pub bytes: u64,
    pub md5: String,
}

/// What [`MANIFEST`] holds.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    pub generator: String,
    pub config: SynthConfig,
    /// Images per set (as [`SynthSummary`], without the root).
    #[serde(default)]
    pub counts: BTreeMap<String, usize>,
    /// Relative path (with `/`) -> size and MD5. Empty in manifests written
    /// before checksums were recorded.
    #[serde(default)]
    pub files: BTreeMap<String, FileSum>,
}

/// What a data root holds, as far as the generator is concerned.
#[derive(Debug, Clone)]
pub enum RootState {
    /// Absent, or an empty folder.
    Fresh,
    /// A complete dataset written by oodnc.
    Complete(Box<Manifest>),
    /// A generation that did not finish, with the config it was for.
    Partial(Box<SynthConfig>),
    /// Files that oodnc's generator did not write (the first one found).
    Foreign(PathBuf),
}

/// The relative paths (with `/`) of every file [`generate`] writes for `cfg`
/// (the markers excluded).
pub fn planned_files(cfg: &SynthConfig) -> Vec<String> {
    let mut v: Vec<String> = vec![
        "cifar-100-binary/train.bin".into(),
        "cifar-100-binary/test.bin".into(),
        "cifar-100-binary/fine_label_names.txt".into(),
        "cifar-100-binary/coarse_label_names.txt".into(),
        "cifar-10-batches-bin/batches.meta.txt".into(),
        "cifar-10-batches-bin/test_batch.bin".into(),
        "svhn/train_32x32.mat".into(),
        "svhn/test_32x32.mat".into(),
    ];
    v.extend((1..=5).map(|i| format!("cifar-10-batches-bin/data_batch_{i}.bin")));
    for name in TEXTURES {
        v.extend((0..cfg.textures_per_class).map(|i| format!("dtd/images/{name}/{name}_{i:04}.jpg")));
    }
    for part in 1..=10 {
        v.extend(["train", "val", "test"].iter().map(|k| format!("dtd/labels/{k}{part}.txt")));
    }
    v.push(format!("{TIN_VAL}/val_annotations.txt"));
    v.push("tiny-imagenet-200/wnids.txt".into());
    v.extend((0..NOVEL_SHAPES.len() * cfg.heldout_per_class).map(|i| format!("{TIN_VAL}/images/val_{i}.JPEG")));
    v.sort();
    v
}

/// Where the OOD-validation family lives (TinyImageNet's val layout).
pub const TIN_VAL: &str = "tiny-imagenet-200/val";

/// The OOD-validation family's shapes (in no other family).
pub const NOVEL_SHAPES: [&str; 8] = ["heart", "arrow", "hexagon", "l-shape", "t-shape", "hourglass", "half-disk", "pentagon-ring"];

/// Signed inside-ness of novel shape `kind` at (x, y): > 0 inside.
fn novel_field(kind: usize, x: f64, y: f64) -> f64 {
    let (ax, ay) = (x.abs(), y.abs());
    let r = (x * x + y * y).sqrt();
    let poly = |n: f64, x: f64, y: f64| {
        // Regular n-gon of circumradius 0.9, flat side at the bottom.
        let a = y.atan2(x) + PI / 2.0;
        let sector = 2.0 * PI / n;
        let t = (a.rem_euclid(sector)) - sector / 2.0;
        0.9 * (sector / 2.0).cos() - (x * x + y * y).sqrt() * t.cos()
    };
    match kind % NOVEL_SHAPES.len() {
        0 => {
            // heart: two lobes above a point.
            let l = 0.42 - ((x - 0.38).powi(2) + (y + 0.25).powi(2)).sqrt();
            let rr = 0.42 - ((x + 0.38).powi(2) + (y + 0.25).powi(2)).sqrt();
            let tri = (0.9 - y - 1.1 * ax).min(y + 0.3);
            l.max(rr).max(tri)
        }
        1 => (0.22 - ay).min(0.5 - x).min(x + 0.9).max((0.45 - (x - 0.35)).min(0.8 - ay - (x - 0.35)).min(x - 0.05)), // arrow
        2 => poly(6.0, x, y),                                                                                         // hexagon
        3 => (0.25 - (x + 0.5).abs()).min(0.9 - ay).max((0.25 - (y - 0.65).abs()).min(0.75 - x.max(-x - 0.75))),      // L
        4 => (0.25 - (y + 0.6).abs()).min(0.9 - ax).max((0.25 - ax).min(0.9 - ay)),                                   // T
        5 => (0.9 - ay).min(ay * 0.9 + 0.12 - ax),                                                                    // hourglass
        6 => (0.9 - r).min(y),                                                                                        // half-disk
        _ => 0.12 - (poly(5.0, x, y) - 0.15).abs(),                                                                   // pentagon ring
    }
}

/// A 64x64 image of novel shape `kind` (any hue) on an ID-like background.
fn render_novel(rng: &mut SplitMix64, kind: usize) -> Canvas {
    let mut cv = Canvas::new(64, 64);
    let bg_h = rng.uniform() * 360.0;
    let bg_a = hsl(bg_h, 0.25 + 0.2 * rng.uniform(), 0.25 + 0.5 * rng.uniform());
    let bg_b = hsl(bg_h + 40.0 * rng.normal(), 0.2, 0.2 + 0.6 * rng.uniform());
    let ga = rng.uniform() * 2.0 * PI;
    let fg = hsl(rng.uniform() * 360.0, 0.65 + 0.3 * rng.uniform(), 0.4 + 0.25 * rng.uniform());
    let scale = 0.45 + 0.3 * rng.uniform();
    let rot = rng.uniform() * 2.0 * PI;
    let (cx, cy) = (0.25 * rng.normal().clamp(-1.5, 1.5), 0.25 * rng.normal().clamp(-1.5, 1.5));
    let (s, c) = rot.sin_cos();
    cv.paint(|u, v, p| {
        let t = 0.5 + 0.5 * (u * ga.cos() + v * ga.sin());
        *p = mix(bg_a, bg_b, t);
        let (x, y) = ((u - cx) / scale, (v - cy) / scale);
        let (x, y) = (c * x + s * y, -s * x + c * y);
        let f = novel_field(kind, x, y);
        *p = mix(*p, fg, (f * scale * 32.0 + 0.5).clamp(0.0, 1.0));
    });
    cv.add_noise(rng, 0.05);
    cv
}

/// Writes the OOD-validation family in TinyImageNet's val layout (its own
/// seed stream 50, so no other family's bytes depend on it).
fn write_tin_val(root: &Path, cfg: &SynthConfig) -> Result<usize> {
    let dir = root.join(TIN_VAL);
    let images = dir.join("images");
    std::fs::create_dir_all(&images).at(&images)?;
    let wnids: Vec<String> = (0..NOVEL_SHAPES.len()).map(|k| format!("n9000{k:04}")).collect();
    let mut ann = String::new();
    let n = NOVEL_SHAPES.len() * cfg.heldout_per_class;
    for i in 0..n {
        let kind = i % NOVEL_SHAPES.len();
        let mut rng = SplitMix64::derive(cfg.seed, &[50, i as u64]);
        let cv = render_novel(&mut rng, kind);
        let path = images.join(format!("val_{i}.JPEG"));
        let mut bytes = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 92)
            .encode_image(&cv.rgb_image())
            .map_err(|e| Error::format(&path, format!("JPEG encoding: {e}")))?;
        write_atomic(&path, &bytes)?;
        ann.push_str(&format!("val_{i}.JPEG\t{}\t0\t0\t63\t63\n", wnids[kind]));
    }
    write_atomic(dir.join("val_annotations.txt"), ann.as_bytes())?;
    write_atomic(root.join("tiny-imagenet-200/wnids.txt"), (wnids.join("\n") + "\n").as_bytes())?;
    Ok(n)
}

/// Every file under `root` (relative, with `/`), symbolic links included as
/// files (never followed).
fn files_under(root: &Path) -> Result<Vec<(String, PathBuf, bool)>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).at(&d)? {
            let e = e.at(&d)?;
            let p = e.path();
            let ft = e.file_type().at(&p)?;
            if ft.is_dir() {
                stack.push(p);
            } else {
                let rel =
                    p.strip_prefix(root).unwrap_or(&p).components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/");
                out.push((rel, p, ft.is_file()));
            }
        }
    }
    out.sort();
    Ok(out)
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).at(path)?;
    serde_json::from_str(&text).map_err(|e| Error::format(path, format!("not an oodnc generator file: {e}")))
}

/// Reads what `root` holds: fresh, complete (with its manifest), partial, or
/// foreign (files oodnc did not write). A root that is a file is an error.
pub fn inspect(root: &Path) -> Result<RootState> {
    if root.as_os_str().is_empty() {
        return Err(Error::param("data root", "is empty; name a folder, e.g. data/synthetic"));
    }
    let meta = std::fs::symlink_metadata(root);
    if meta.is_err() {
        return Ok(RootState::Fresh);
    }
    if !root.is_dir() {
        return Err(Error::data(
            "synthetic data root",
            format!("{} is not a folder (a file, or a link to nowhere); move it away or pick another --root", root.display()),
        ));
    }
    if root.join(PARTIAL).is_file() {
        let cfg: SynthConfig = read_json(&root.join(PARTIAL))?;
        return Ok(RootState::Partial(Box::new(cfg)));
    }
    if root.join(MANIFEST).is_file() {
        let m: Manifest = read_json(&root.join(MANIFEST))?;
        if !m.generator.starts_with("oodnc synthetic") {
            return Err(Error::format(root.join(MANIFEST), format!("generator '{}' is not oodnc's", m.generator)));
        }
        return Ok(RootState::Complete(Box::new(m)));
    }
    match files_under(root)?.into_iter().next() {
        None => Ok(RootState::Fresh),
        Some((_, p, _)) => Ok(RootState::Foreign(p)),
    }
}

/// Checks every file of `m` under `root` against its recorded size and MD5.
/// The first difference is an error naming the file.
pub fn verify(root: &Path, m: &Manifest) -> Result<()> {
    if m.files.is_empty() {
        return Err(Error::format(root.join(MANIFEST), "records no checksums (written by an older oodnc)"));
    }
    for (rel, sum) in &m.files {
        let p = root.join(rel);
        let md = std::fs::symlink_metadata(&p).map_err(|_| Error::Missing {
            what: "file of the embedded dataset".into(),
            path: p.clone(),
            hint: format!("; regenerate with `oodnc data synth --root {}`", root.display()),
        })?;
        if !md.is_file() || md.len() != sum.bytes {
            return Err(Error::format(&p, format!("{} bytes, the manifest records {} (truncated or replaced)", md.len(), sum.bytes)));
        }
        let actual = crate::util::md5_file(&p)?;
        if actual != sum.md5 {
            return Err(Error::Checksum { path: p, expected: sum.md5.clone(), actual });
        }
    }
    Ok(())
}

/// What [`ensure`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ensured {
    /// The dataset was there, with this config, and every file verified.
    Verified,
    /// It was generated now.
    Generated,
}

/// Makes sure `root` holds the embedded dataset of `cfg`: verifies a complete
/// one, (re)generates a missing, partial or changed one that oodnc wrote, and
/// refuses a root with files oodnc did not write, or one generated with
/// another config (a run would silently read other data).
pub fn ensure(root: &Path, cfg: &SynthConfig) -> Result<Ensured> {
    match inspect(root)? {
        RootState::Complete(m) if m.config == *cfg && planned_files(cfg).iter().any(|f| !m.files.contains_key(f)) => {
            // Written by an oodnc without a later family (the OOD-validation one): the
            // generator adds it; every other file comes out byte-identical.
            println!("adding the families this oodnc generates to the embedded dataset in {} ...", root.display())
        }
        RootState::Complete(m) if m.config == *cfg => match verify(root, &m) {
            Ok(()) => return Ok(Ensured::Verified),
            Err(e) => eprintln!("the embedded dataset in {} is not as generated ({e}); regenerating it", root.display()),
        },
        RootState::Complete(m) => {
            return Err(Error::data(
                format!("embedded dataset in {}", root.display()),
                format!(
                    "it was generated with {} but this run needs {}; point data.root at another folder, or regenerate it with `oodnc data synth --root {}` and matching sizes",
                    serde_json::to_string(&m.config).unwrap_or_default(),
                    serde_json::to_string(cfg).unwrap_or_default(),
                    root.display()
                ),
            ))
        }
        RootState::Partial(_) => eprintln!("the embedded dataset in {} is incomplete (an earlier generation stopped); regenerating it", root.display()),
        RootState::Fresh => println!("generating the embedded dataset in {} ...", root.display()),
        RootState::Foreign(_) => {}
    }
    generate(root, cfg)?;
    Ok(Ensured::Generated)
}

/// Generates the whole embedded dataset under `root`, which must be empty or
/// hold a dataset oodnc generated (complete or not); any other file there is
/// an error naming it, and nothing is deleted or overwritten. The partial
/// marker is written first and the manifest (with every file's checksum) last.
pub fn generate(root: impl AsRef<Path>, cfg: &SynthConfig) -> Result<SynthSummary> {
    cfg.validate()?;
    let root = root.as_ref();
    let previous = match inspect(root)? {
        RootState::Fresh => Vec::new(),
        RootState::Complete(m) if !m.files.is_empty() => m.files.keys().cloned().collect(),
        RootState::Complete(m) => planned_files(&m.config),
        RootState::Partial(c) => planned_files(&c),
        RootState::Foreign(p) => {
            return Err(Error::data(
                format!("synthetic data root {}", root.display()),
                format!(
                    "{} was not written by oodnc's generator, and the generator never overwrites or deletes such files; \
                     generate into an empty folder (e.g. --root data/synthetic) or move the file away",
                    p.display()
                ),
            ))
        }
    };
    let plan = planned_files(cfg);
    let ours: std::collections::BTreeSet<&str> =
        previous.iter().chain(plan.iter()).map(String::as_str).chain([MANIFEST, PARTIAL, LOCK]).collect();
    if root.is_dir() {
        for (rel, p, plain) in files_under(root)? {
            let stale_temp = plain
                && crate::run::temp_file_pid(p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default().as_str())
                    .is_some_and(|pid| !crate::run::pid_alive(pid));
            if stale_temp {
                std::fs::remove_file(&p).at(&p)?;
            } else if !plain || !ours.contains(rel.as_str()) {
                return Err(Error::data(
                    format!("synthetic data root {}", root.display()),
                    format!(
                        "{} is in the way: it is not a file of the embedded dataset, and the generator never overwrites or deletes such files; move it away or generate into another folder",
                        p.display()
                    ),
                ));
            }
        }
    }
    crate::run::ensure_dir(root, "synthetic data root")?;
    let lock_path = root.join(LOCK);
    let lock = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).at(&lock_path)?;
    {
        use std::os::unix::io::AsRawFd;
        // SAFETY: flock on a descriptor we own; released when `lock` is dropped.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(Error::io(&lock_path, std::io::Error::last_os_error()));
        }
    }
    // Another process may have generated it while we waited.
    if let RootState::Complete(m) = inspect(root)? {
        if m.config == *cfg && plan.iter().all(|f| m.files.contains_key(f)) && verify(root, &m).is_ok() {
            return Ok(summary_of(root, cfg));
        }
    }
    write_atomic(root.join(PARTIAL), serde_json::to_string_pretty(cfg).unwrap_or_default().as_bytes())?;
    let manifest = root.join(MANIFEST);
    if manifest.exists() {
        std::fs::remove_file(&manifest).at(&manifest)?;
    }
    let planned: std::collections::BTreeSet<&str> = plan.iter().map(String::as_str).collect();
    for rel in previous.iter().filter(|r| !planned.contains(r.as_str())) {
        let p = root.join(rel);
        match std::fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Error::io(&p, e)),
            _ => {}
        }
    }
    let summary = generate_files(root, cfg)?;
    let mut files = BTreeMap::new();
    for rel in &plan {
        let p = root.join(rel);
        let bytes = std::fs::metadata(&p).at(&p)?.len();
        files.insert(rel.clone(), FileSum { bytes, md5: crate::util::md5_file(&p)? });
    }
    let m = Manifest {
        generator: "oodnc synthetic v1".into(),
        config: cfg.clone(),
        counts: [
            ("id_train", summary.id_train),
            ("id_test", summary.id_test),
            ("near_ood", summary.near_ood),
            ("digits_ood", summary.digits_ood),
            ("textures", summary.textures),
            ("heldout_ood_val", summary.heldout),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect(),
        files,
    };
    write_atomic(&manifest, serde_json::to_string_pretty(&m).unwrap_or_default().as_bytes())?;
    let partial = root.join(PARTIAL);
    std::fs::remove_file(&partial).at(&partial)?;
    Ok(summary)
}

fn summary_of(root: &Path, cfg: &SynthConfig) -> SynthSummary {
    SynthSummary {
        root: root.to_path_buf(),
        id_train: cfg.classes * cfg.train_per_class,
        id_test: cfg.classes * cfg.test_per_class,
        near_ood: 10 * cfg.near_per_class,
        digits_ood: cfg.digits_test,
        textures: TEXTURES.len() * cfg.textures_per_class,
        heldout: NOVEL_SHAPES.len() * cfg.heldout_per_class,
    }
}

/// Writes every file of the dataset (no ownership checks; see [`generate`]).
fn generate_files(root: &Path, cfg: &SynthConfig) -> Result<SynthSummary> {
    std::fs::create_dir_all(root).at(root)?;
    let c = cfg.classes;
    let mut lrng = SplitMix64::derive(cfg.seed, &[1]);

    // ID: CIFAR-100 layout.
    let names = id_class_names(c);
    for (part, per, stream) in [(Part::Train, cfg.train_per_class, 10u64), (Part::Test, cfg.test_per_class, 11)] {
        let labels = balanced_labels(c, per, &mut lrng);
        let px = render_set(&labels, cfg.seed, stream, |rng, l| render_shape(rng, id_class(l as usize, c)));
        cifar::write(root, Variant::Cifar100, part, &px, &labels, &names)?;
    }

    // Near OOD: CIFAR-10 layout, 10 held-out classes.
    let near_names: Vec<String> = (0..10).map(|j| format!("held-out-{j}")).collect();
    for (part, per, stream) in [(Part::Train, cfg.near_per_class.div_ceil(5).max(1), 20u64), (Part::Test, cfg.near_per_class, 21)] {
        let labels = balanced_labels(10, per, &mut lrng);
        let px = render_set(&labels, cfg.seed, stream, |rng, l| render_shape(rng, near_class(l as usize, c)));
        cifar::write(root, Variant::Cifar10, part, &px, &labels, &near_names)?;
    }

    // Far OOD digits: SVHN .mat (compressed, like MATLAB's default save).
    let svhn_dir = root.join(svhn::SVHN_DIR);
    std::fs::create_dir_all(&svhn_dir).at(&svhn_dir)?;
    for (part, n, stream) in [(Part::Train, (cfg.digits_test / 4).max(10), 30u64), (Part::Test, cfg.digits_test, 31)] {
        let slots = vec![0i64; n];
        let mut labels = vec![0i64; n];
        let px = render_set(&slots, cfg.seed, stream, |rng, _| {
            let (img, l) = render_digits(rng);
            let mut v = img;
            v.push(l as u8); // label rides along; split off below
            v
        });
        let mut pixels = Vec::with_capacity(n * 3072);
        for (i, rec) in px.chunks_exact(3073).enumerate() {
            pixels.extend_from_slice(&rec[..3072]);
            labels[i] = rec[3072] as i64;
        }
        svhn::write_svhn(svhn::path(root, part), &pixels, &labels, true)?;
    }

    // Far OOD textures: DTD layout with JPEGs of various sizes and 10 partitions.
    let dtd = root.join(super::dtd::DTD_DIR);
    let mut n_tex = 0;
    let per = cfg.textures_per_class;
    for (ci, name) in TEXTURES.iter().enumerate() {
        let dir = dtd.join("images").join(name);
        std::fs::create_dir_all(&dir).at(&dir)?;
        for i in 0..per {
            let mut rng = SplitMix64::derive(cfg.seed, &[40, ci as u64, i as u64]);
            let (w, h) = (40 + rng.below(60) as usize, 40 + rng.below(60) as usize);
            let cv = render_texture(&mut rng, ci, w, h);
            let path = dir.join(format!("{name}_{i:04}.jpg"));
            let mut bytes = Vec::new();
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 92)
                .encode_image(&cv.rgb_image())
                .map_err(|e| Error::format(&path, format!("JPEG encoding: {e}")))?;
            write_atomic(&path, &bytes)?;
            n_tex += 1;
        }
    }
    let labels_dir = dtd.join("labels");
    std::fs::create_dir_all(&labels_dir).at(&labels_dir)?;
    let third = per / 3;
    for part in 1..=10u64 {
        let mut lists = [String::new(), String::new(), String::new()];
        for (ci, name) in TEXTURES.iter().enumerate() {
            let perm = SplitMix64::derive(cfg.seed, &[41, part, ci as u64]).permutation(per);
            for (k, list) in lists.iter_mut().enumerate() {
                let mut chosen: Vec<i64> = perm[k * third..(k + 1) * third].to_vec();
                chosen.sort_unstable();
                for i in chosen {
                    list.push_str(&format!("{name}/{name}_{i:04}.jpg\n"));
                }
            }
        }
        for (k, kind) in ["train", "val", "test"].iter().enumerate() {
            write_atomic(labels_dir.join(format!("{kind}{part}.txt")), lists[k].as_bytes())?;
        }
    }
    let heldout = write_tin_val(root, cfg)?;
    let summary = SynthSummary {
        root: root.to_path_buf(),
        id_train: c * cfg.train_per_class,
        id_test: c * cfg.test_per_class,
        near_ood: 10 * cfg.near_per_class,
        digits_ood: cfg.digits_test,
        textures: n_tex,
        heldout,
    };
    Ok(summary)
}

//! NC across layers: the stem, the 8 BasicBlocks and the penultimate feature.
//!
//! Each tap is global-average pooled (or 2x2 adaptive-average pooled, `+2x2`).
//! `layer4.1` global-average pooled is exactly the penultimate feature, so it is
//! reported once, as `penultimate`; its 2x2 form (`layer4.1+2x2`) is reported. W-based metrics (NC2-W, NC3) exist only for the penultimate
//! layer. Layers whose dimension is below C - 1 cannot form a simplex ETF; they
//! are flagged with `dim_below_classes = 1`.
//!
//! Separation fuzziness (He & Su 2023, "A law of data separation"):
//! D_l = Tr(SS_w SS_b^+) per layer l (`separation_fuzziness`; = `nc1_raw` for balanced
//! classes); the law says log D_l decays
//! linearly with depth, so we fit log D_l = a + b l by least squares and report
//! the slope b and the per-layer ratio exp(b).

use super::metrics::{nc5, nc_metrics, NcMetrics};
use crate::error::{Error, Result};
use crate::features::FeatureSet;
use crate::model::TAP_NAMES;
use tch::Tensor;

/// One layer's results.
pub struct LayerResult {
    pub layer: String,
    pub dim: i64,
    pub metrics: NcMetrics,
    /// (OOD set name, centred NC5, uncentred NC5).
    pub nc5: Vec<(String, f64, f64)>,
}

/// Ordered layer names present in `f`, then `penultimate`. With global average
/// pooling `layer4.1` is left out (its GAP is exactly the penultimate feature);
/// its 2x2 form is not, so `layer4.1+2x2` is kept.
///
/// With a bottleneck (`model.bottleneck`), GAP(`layer4.1`) is not the penultimate
/// feature, and it is kept (checked on the values, not assumed).
pub fn layer_names(f: &FeatureSet, pool2x2: bool) -> Vec<String> {
    let last_is_penultimate = f
        .taps
        .get("layer4.1")
        .map(|t| {
            t.size() == f.penultimate.size()
                && t.to_device(tch::Device::Cpu).allclose(&f.penultimate.to_device(tch::Device::Cpu).to_kind(t.kind()), 1e-5, 1e-6, false)
        })
        .unwrap_or(true);
    let taps = if pool2x2 || !last_is_penultimate { &TAP_NAMES[..9] } else { &TAP_NAMES[..8] };
    let mut v: Vec<String> =
        taps.iter().map(|n| if pool2x2 { format!("{n}+2x2") } else { n.to_string() }).filter(|n| f.taps.contains_key(n)).collect();
    v.push("penultimate".into());
    v
}

/// NC metrics of every layer of `train` (which must carry taps), NC5 against each
/// OOD set's features of the same layer.
pub fn layer_metrics(train: &FeatureSet, w: &Tensor, c: i64, ood: &[&FeatureSet], pool2x2: bool) -> Result<Vec<LayerResult>> {
    let names = layer_names(train, pool2x2);
    if names.len() == 1 {
        return Err(Error::data("layer-wise NC", "the features carry no taps; extract with taps (oodnc extract --taps)"));
    }
    let mut out = Vec::new();
    for name in names {
        let h = train.layer(&name)?;
        let is_pen = name == "penultimate";
        let (m, st) = nc_metrics(h, &train.labels, c, Some(&train.logits), if is_pen { Some(w) } else { None })?;
        let mut n5 = Vec::new();
        for o in ood {
            let (a, b) = nc5(&st, o.layer(&name)?)?;
            n5.push((o.name.clone(), a, b));
        }
        out.push(LayerResult { layer: name, dim: st.dim, metrics: m, nc5: n5 });
    }
    Ok(out)
}

/// Least-squares slope b of log D_l = a + b l over layers l = 0, 1, ...; returns (a, b).
pub fn separation_fuzziness_slope(d: &[f64]) -> Result<(f64, f64)> {
    if d.len() < 2 || d.iter().any(|&x| !(x > 0.0 && x.is_finite())) {
        return Err(Error::data("separation fuzziness fit", "needs at least 2 positive finite values"));
    }
    let n = d.len() as f64;
    let xs: Vec<f64> = (0..d.len()).map(|i| i as f64).collect();
    let ys: Vec<f64> = d.iter().map(|v| v.ln()).collect();
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let sxy: f64 = xs.iter().zip(&ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let sxx: f64 = xs.iter().map(|x| (x - mx).powi(2)).sum();
    let b = sxy / sxx;
    Ok((my - b * mx, b))
}

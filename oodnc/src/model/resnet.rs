//! ResNet-18, CIFAR variant (He et al., 2016; the original project's `resnet.py`).
//!
//! - Stem: 3x3 conv 3 -> 64, stride 1, padding 1, no bias; BN; ReLU; **no max-pool**.
//! - Four stages of two BasicBlocks, widths 64/128/256/512, strides 1/2/2/2.
//!   BasicBlock: conv3x3(s)-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU. The
//!   shortcut is the identity, or a 1x1 conv (stride s, no bias) + BN when the
//!   shape changes ("option B").
//! - Head: global average pool -> 512-d penultimate feature (post-ReLU, so >= 0) ->
//!   Linear(512, C) with bias.
//! - Init: convs Kaiming-normal, fan_out, ReLU gain (std = sqrt(2 / (k^2 C_out)));
//!   BN gamma 1, beta 0; Linear weight N(0, 0.01^2), bias 0.
//!   11,220,132 parameters for 100 classes.
//!
//! Parameter names follow PyTorch: `conv1.weight`, `bn1.running_mean`,
//! `layer2.0.conv1.weight`, `layer2.0.shortcut.0.weight` (conv) and
//! `layer2.0.shortcut.1.weight` (BN), `fc.weight`. The original project (and the
//! kuangliu CIFAR code it follows) calls the projection `shortcut`; torchvision
//! calls it `downsample`. We save `shortcut` and accept both on load.
//!
//! `width` scales every channel count (64 -> round(64 * width)); the `demo`
//! profile trains a narrow network on the CPU.
//!
//! `bottleneck = d` (not in the original) inserts a linear layer
//! `bottleneck: Linear(512, d)` (with bias, PyTorch's default initialisation)
//! between the pooled last block and `fc`; the penultimate feature is then its
//! output (d-dimensional and signed: no ReLU). With d < C - 1 the class means
//! cannot form a simplex ETF, which forces superposition (notebook 06,
//! `oodnc::interp`). `None` (the default) is the network above, unchanged.

use crate::error::{Error, Result};
use tch::nn::init::{FanInOut, NonLinearity, NormalOrUniform};
use tch::nn::{self, ConvConfig, Init};
use tch::{Kind, Tensor};

/// Shape of the network.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ResNetConfig {
    pub num_classes: i64,
    /// Channel multiplier (1.0 = the standard 64/128/256/512).
    pub width: f64,
    /// Width of an optional linear bottleneck before the classifier (see the module docs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bottleneck: Option<i64>,
}

impl Default for ResNetConfig {
    fn default() -> Self {
        ResNetConfig { num_classes: 100, width: 1.0, bottleneck: None }
    }
}

impl ResNetConfig {
    /// Channel counts of the stem and the four stages.
    pub fn widths(&self) -> [i64; 4] {
        [64, 128, 256, 512].map(|w| ((w as f64 * self.width).round() as i64).max(1))
    }

    /// Checks the values.
    pub fn validate(&self) -> Result<()> {
        if self.num_classes < 2 {
            return Err(Error::param("num_classes", format!("{} (need at least 2)", self.num_classes)));
        }
        if !(self.width > 0.0 && self.width <= 8.0) {
            return Err(Error::param("width", format!("{} is outside (0, 8]", self.width)));
        }
        if let Some(d) = self.bottleneck {
            if !(1..=4096).contains(&d) {
                return Err(Error::param("model.bottleneck", format!("{d} is outside 1..=4096 (or leave it out: no bottleneck)")));
            }
        }
        Ok(())
    }

    /// Penultimate feature dimension (the bottleneck's width when there is one).
    pub fn feature_dim(&self) -> i64 {
        self.bottleneck.unwrap_or(self.widths()[3])
    }
}

fn conv_init() -> Init {
    Init::Kaiming { dist: NormalOrUniform::Normal, fan: FanInOut::FanOut, non_linearity: NonLinearity::ReLU }
}

fn conv(p: nn::Path, cin: i64, cout: i64, k: i64, stride: i64) -> nn::Conv2D {
    nn::conv2d(p, cin, cout, k, ConvConfig { stride, padding: k / 2, bias: false, ws_init: conv_init(), ..Default::default() })
}

fn bn(p: nn::Path, c: i64) -> nn::BatchNorm {
    nn::batch_norm2d(
        p,
        c,
        nn::BatchNormConfig { eps: 1e-5, momentum: 0.1, ws_init: Init::Const(1.0), bs_init: Init::Const(0.0), ..Default::default() },
    )
}

/// One BasicBlock.
#[derive(Debug)]
pub struct BasicBlock {
    conv1: nn::Conv2D,
    bn1: nn::BatchNorm,
    conv2: nn::Conv2D,
    bn2: nn::BatchNorm,
    shortcut: Option<(nn::Conv2D, nn::BatchNorm)>,
}

impl BasicBlock {
    fn new(p: nn::Path, cin: i64, cout: i64, stride: i64) -> Self {
        let shortcut = (stride != 1 || cin != cout).then(|| {
            let s = &p / "shortcut";
            (conv(&s / "0", cin, cout, 1, stride), bn(&s / "1", cout))
        });
        BasicBlock {
            conv1: conv(&p / "conv1", cin, cout, 3, stride),
            bn1: bn(&p / "bn1", cout),
            conv2: conv(&p / "conv2", cout, cout, 3, 1),
            bn2: bn(&p / "bn2", cout),
            shortcut,
        }
    }
}

impl nn::ModuleT for BasicBlock {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let out = x.apply(&self.conv1).apply_t(&self.bn1, train).relu();
        let out = out.apply(&self.conv2).apply_t(&self.bn2, train);
        let sc = match &self.shortcut {
            Some((c, b)) => x.apply(c).apply_t(b, train),
            None => x.shallow_clone(),
        };
        (out + sc).relu()
    }
}

/// Names of the feature taps, in depth order: the stem, the 8 BasicBlocks,
/// the penultimate feature (GAP of the last block) and the logits.
pub const TAP_NAMES: [&str; 11] =
    ["stem", "layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer3.0", "layer3.1", "layer4.0", "layer4.1", "penultimate", "logits"];

/// Everything one forward pass exposes.
pub struct Taps {
    /// Stem output and the 8 block outputs, `[B, C_l, H_l, W_l]` (post-ReLU).
    pub maps: Vec<Tensor>,
    /// `[B, D]` global-average-pooled last block (the fc input).
    pub penultimate: Tensor,
    /// `[B, num_classes]`.
    pub logits: Tensor,
}

/// The CIFAR ResNet-18.
#[derive(Debug)]
pub struct ResNet18 {
    pub config: ResNetConfig,
    conv1: nn::Conv2D,
    bn1: nn::BatchNorm,
    blocks: Vec<BasicBlock>,
    bottleneck: Option<nn::Linear>,
    fc: nn::Linear,
}

impl ResNet18 {
    /// Creates the network's variables under `vs` (use `vs.root()`), initialised as documented.
    pub fn new(vs: &nn::Path, config: ResNetConfig) -> Result<Self> {
        config.validate()?;
        let w = config.widths();
        let conv1 = conv(vs / "conv1", 3, w[0], 3, 1);
        let bn1 = bn(vs / "bn1", w[0]);
        let mut blocks = Vec::with_capacity(8);
        let mut cin = w[0];
        for (stage, &cout) in w.iter().enumerate() {
            let stride = if stage == 0 { 1 } else { 2 };
            let lp = vs / format!("layer{}", stage + 1);
            blocks.push(BasicBlock::new(&lp / "0", cin, cout, stride));
            blocks.push(BasicBlock::new(&lp / "1", cout, cout, 1));
            cin = cout;
        }
        let bottleneck = config.bottleneck.map(|d| nn::linear(vs / "bottleneck", w[3], d, Default::default()));
        let fc = nn::linear(
            vs / "fc",
            config.feature_dim(),
            config.num_classes,
            nn::LinearConfig { ws_init: Init::Randn { mean: 0.0, stdev: 0.01 }, bs_init: Some(Init::Const(0.0)), bias: true },
        );
        Ok(ResNet18 { config, conv1, bn1, blocks, bottleneck, fc })
    }

    fn check_input(&self, x: &Tensor) -> Result<()> {
        let s = x.size();
        if s.len() != 4 || s[1] != 3 {
            return Err(Error::shape("ResNet18 input", format!("{s:?}, expected [B, 3, H, W]")));
        }
        if !matches!(x.kind(), Kind::Float | Kind::Half | Kind::BFloat16 | Kind::Double) {
            return Err(Error::shape("ResNet18 input", format!("kind {:?}, expected a float tensor", x.kind())));
        }
        // libtorch panics on a weight / input mismatch; autocast reconciles kinds itself.
        let w = &self.conv1.ws;
        if x.device() != w.device() {
            return Err(Error::shape(
                "ResNet18 input",
                format!("on {:?} while the network is on {:?}: move one (`x.to_device(..)`)", x.device(), w.device()),
            ));
        }
        if x.kind() != w.kind() && !crate::amp::is_enabled(x.device()).unwrap_or(false) {
            return Err(Error::shape(
                "ResNet18 input",
                format!(
                    "kind {:?} while the network's weights are {:?}: cast the input (`x.to_kind(..)`) or run under autocast",
                    x.kind(),
                    w.kind()
                ),
            ));
        }
        Ok(())
    }

    /// The stem and the 8 blocks: the last block's map, and every map when
    /// `maps` is given (stem first). The one trunk every forward uses.
    fn trunk(&self, x: &Tensor, train: bool, mut maps: Option<&mut Vec<Tensor>>) -> Tensor {
        use nn::ModuleT;
        let mut h = x.apply(&self.conv1).apply_t(&self.bn1, train).relu();
        if let Some(m) = maps.as_deref_mut() {
            m.push(h.shallow_clone());
        }
        for b in &self.blocks {
            h = b.forward_t(&h, train);
            if let Some(m) = maps.as_deref_mut() {
                m.push(h.shallow_clone());
            }
        }
        h
    }

    /// Penultimate features `[B, D]`: global average pool of the last block
    /// (then the bottleneck, when the config has one).
    fn pool(&self, h: &Tensor) -> Tensor {
        let p = h.adaptive_avg_pool2d([1, 1]).flatten(1, -1);
        match &self.bottleneck {
            Some(l) => p.apply(l),
            None => p,
        }
    }

    /// Logits `[B, C]` (train = true: BN uses batch statistics and updates its
    /// running ones). A bad input is a typed error (the [`nn::ModuleT`] impl panics instead).
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.check_input(x)?;
        Ok(self.pool(&self.trunk(x, train, None)).apply(&self.fc))
    }

    /// Penultimate features and logits (eval or train mode).
    pub fn features_t(&self, x: &Tensor, train: bool) -> Result<(Tensor, Tensor)> {
        self.check_input(x)?;
        let pen = self.pool(&self.trunk(x, train, None));
        let logits = pen.apply(&self.fc);
        Ok((pen, logits))
    }

    /// All taps from one forward pass.
    pub fn forward_taps(&self, x: &Tensor, train: bool) -> Result<Taps> {
        self.check_input(x)?;
        let mut maps = Vec::with_capacity(9);
        let penultimate = self.pool(&self.trunk(x, train, Some(&mut maps)));
        let logits = penultimate.apply(&self.fc);
        Ok(Taps { maps, penultimate, logits })
    }

    /// The output of stage `stage` (1..=4, i.e. `layer{stage}`, its second
    /// BasicBlock), `[B, C_s, H_s, W_s]` post-ReLU: where RankFeat cuts the network.
    pub fn stage_output_t(&self, x: &Tensor, stage: usize, train: bool) -> Result<Tensor> {
        Self::check_stage(stage)?;
        self.tap_output_t(x, 2 * stage, train)
    }

    /// The map of tap `tap` of [`TAP_NAMES`] (0 = the stem, `k` = the k-th
    /// BasicBlock, up to 8), running only the network up to it.
    pub fn tap_output_t(&self, x: &Tensor, tap: usize, train: bool) -> Result<Tensor> {
        use nn::ModuleT;
        self.check_input(x)?;
        if tap > self.blocks.len() {
            return Err(Error::param("tap", format!("{tap} is not a map tap (0 = stem .. {} = {})", self.blocks.len(), TAP_NAMES[8])));
        }
        let mut h = x.apply(&self.conv1).apply_t(&self.bn1, train).relu();
        for b in &self.blocks[..tap] {
            h = b.forward_t(&h, train);
        }
        Ok(h)
    }

    /// The stage-`to` map from a stage-`from` map `h` (`1 <= from <= to <= 4`):
    /// runs stages `from + 1 ..= to`.
    pub fn stage_output_t_from(&self, h: &Tensor, from: usize, to: usize, train: bool) -> Result<Tensor> {
        use nn::ModuleT;
        Self::check_stage(from)?;
        Self::check_stage(to)?;
        if from > to {
            return Err(Error::param("stage", format!("from stage {from} to stage {to}: the network runs forward only")));
        }
        let mut h = h.shallow_clone();
        for b in &self.blocks[2 * from..2 * to] {
            h = b.forward_t(&h, train);
        }
        Ok(h)
    }

    /// Logits from a stage-`stage` map `h` (as [`stage_output_t`](Self::stage_output_t)
    /// gives, possibly edited): the later stages, the pool and the classifier.
    pub fn forward_from_stage_t(&self, h: &Tensor, stage: usize, train: bool) -> Result<Tensor> {
        use nn::ModuleT;
        Self::check_stage(stage)?;
        let want = self.config.widths()[stage - 1];
        if h.dim() != 4 || h.size()[1] != want {
            return Err(Error::shape(format!("stage {stage} map"), format!("{:?}, expected [B, {want}, H, W]", h.size())));
        }
        let mut h = h.shallow_clone();
        for b in &self.blocks[2 * stage..] {
            h = b.forward_t(&h, train);
        }
        Ok(self.pool(&h).apply(&self.fc))
    }

    fn check_stage(stage: usize) -> Result<()> {
        if !(1..=4).contains(&stage) {
            return Err(Error::param("stage", format!("{stage} is not a stage of the ResNet-18 (1..=4)")));
        }
        Ok(())
    }

    /// The classifier weight `W` `[C, D]` and bias `[C]`.
    pub fn head(&self) -> (Tensor, Tensor) {
        let b = self
            .fc
            .bs
            .as_ref()
            .map(|b| b.shallow_clone())
            .unwrap_or_else(|| Tensor::zeros([self.config.num_classes], (Kind::Float, self.fc.ws.device())));
        (self.fc.ws.shallow_clone(), b)
    }
}

/// tch's module trait, so the network composes with tch code (`x.apply_t(&model, train)`).
/// Panics on a bad input, like tch's own modules; [`ResNet18::forward_t`] returns a typed error.
impl nn::ModuleT for ResNet18 {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.pool(&self.trunk(x, train, None)).apply(&self.fc)
    }
}

/// Number of trainable parameters in a VarStore.
pub fn parameter_count(vs: &nn::VarStore) -> i64 {
    vs.trainable_variables().iter().map(|t| t.numel() as i64).sum()
}

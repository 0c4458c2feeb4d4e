"""pytorch-ood (0.4.0) and OpenOOD's formulas for oodnc's model-based detectors, on the
same network (a PyTorch state dict, loaded by oodnc too) and the same images.

    python model_peer.py MODEL.safetensors IN.safetensors OUT.safetensors SPEC_JSON

SPEC_JSON: {"classes": K, "width": w, "poles": [P, ...], "mahalanobis_eps": [E, ...]}. IN holds
u8 images "fit", "heldout", "train" (both, in dataset order) and "test" ([N, 3, 32, 32]), int64
"fit_labels", "heldout_labels" and "train_labels", and the
per-channel "mean" and "std" of the normalisation. OUT holds, in oodnc's convention
(higher = more in-distribution, so pytorch-ood's scores negated):

- rankfeat_b4, rankfeat_b3: pytorch-ood's RankFeat with the network split after layer4
  (head: pool + fc) and after layer3 (head: layer4 + pool + fc);
- rankfeat_b34: OpenOOD's rankfeat postprocessor's fusion (logits of both averaged,
  then the energy), written here from its formula with a full SVD;
- mahalanobis_T_E for each tap T of (0, 2, 4, 6, 8) (the stem and each stage's end) and each
  E of "mahalanobis_eps": pytorch-ood's MahalanobisODIN (eps = E pixels, norm_std) with the
  encoder "global-average-pooled map of tap T", fitted on "train" / "train_labels"; in
  oodnc's per-layer form -2 N times its value (its covariance is the sum of the centred outer
  products plus a 1e-6 ridge, and its score carries -1/2). It computes in float32 (its
  class means and covariance are float32 whatever it is given), so this part runs the
  network in float32;
- gram_P for each P: pytorch-ood's Gram over the stem and the 8 BasicBlocks with poles
  1..P, its bounds fitted on "fit" (validation_fraction = 0, so nothing random) and
  its layer normalisers set to the mean deviation of "heldout" computed with its own
  _gram_vector / _deviation (the split oodnc uses is deterministic; pytorch-ood's draw
  is not).

The model runs in float64 here (oodnc in f32): the differences left are f32 rounding.
"""
import copy
import json
import os
import sys

import torch
from safetensors.torch import load_file, save_file
from torch import nn

import pytorch_ood.detector as pd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_resnet import ResNet18  # noqa: E402


def energy(z):
    return torch.logsumexp(z, dim=1)


def remove_rank1(x):
    b, c, h, w = x.shape
    m = x.reshape(b, c, h * w)
    u, s, v = torch.linalg.svd(m, full_matrices=False)
    return (m - s[:, 0:1].unsqueeze(2) * u[:, :, 0:1].bmm(v[:, 0:1, :])).reshape(b, c, h, w)


def main():
    model_path, in_path, out_path, spec = sys.argv[1:5]
    spec = json.loads(spec)
    torch.manual_seed(0)
    model = ResNet18(spec["classes"], spec["width"])
    model.load_state_dict(load_file(model_path), strict=True)
    model = model.double().eval()
    data = load_file(in_path)
    mean = data["mean"].double().view(1, 3, 1, 1)
    std = data["std"].double().view(1, 3, 1, 1)

    def norm(u8):
        return (u8.double() / 255.0 - mean) / std

    stem = nn.Sequential(model.conv1, model.bn1, nn.ReLU())
    blocks = [b for layer in (model.layer1, model.layer2, model.layer3, model.layer4) for b in layer]
    pool_fc = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), model.fc)

    def to_stage(x, s):
        h = stem(x)
        for b in blocks[: 2 * s]:
            h = b(h)
        return h

    out = {}
    test = norm(data["test"])
    with torch.no_grad():
        b4 = pd.RankFeat(backbone=lambda x: to_stage(x, 4), head=pool_fc)
        out["rankfeat_b4"] = -b4.predict(test)
        b3 = pd.RankFeat(backbone=lambda x: to_stage(x, 3), head=nn.Sequential(model.layer4, pool_fc))
        out["rankfeat_b3"] = -b3.predict(test)
        h3 = to_stage(test, 3)
        z3 = pool_fc(model.layer4(remove_rank1(h3)))
        z4 = pool_fc(remove_rank1(model.layer4(h3)))
        out["rankfeat_b34"] = energy((z3 + z4) / 2)

    fit = torch.utils.data.TensorDataset(norm(data["fit"]), data["fit_labels"])
    heldout, heldout_y = norm(data["heldout"]), data["heldout_labels"]
    for p in spec.get("poles", []):
        det = pd.Gram(head=pool_fc, feature_layers=[stem] + blocks, num_classes=spec["classes"], num_poles_list=list(range(1, p + 1)))
        det.validation_fraction = 0.0
        det.fit(torch.utils.data.DataLoader(fit, batch_size=16))
        with torch.no_grad():
            _, feats = det._create_feature_list(heldout)
            norms = []
            for layer, f in enumerate(feats):
                dev = torch.zeros(len(heldout_y), dtype=torch.float64)
                for k, pole in enumerate(det.num_poles_list):
                    g = det._gram_vector(f, pole)
                    dev += det._deviation(g, det.feature_min[layer][k][heldout_y], det.feature_max[layer][k][heldout_y])
                m = dev.mean()
                norms.append(m if m > 0 else torch.tensor(1.0, dtype=torch.float64))
            det.layer_norm = torch.stack(norms)
            out[f"gram_{p}"] = -det.predict(test)
    if spec.get("mahalanobis_eps"):
        m32 = copy.deepcopy(model).float().eval()
        stem32 = nn.Sequential(m32.conv1, m32.bn1, nn.ReLU())
        blocks32 = [b for layer in (m32.layer1, m32.layer2, m32.layer3, m32.layer4) for b in layer]
        train_x = norm(data["train"]).float()
        train_y = data["train_labels"]
        for tap in (0, 2, 4, 6, 8):
            def encoder(x, tap=tap):
                h = stem32(x)
                for b in blocks32[:tap]:
                    h = b(h)
                return h.mean(dim=(2, 3))

            with torch.no_grad():
                z = encoder(train_x)
            for e in spec["mahalanobis_eps"]:
                det = pd.MahalanobisODIN(encoder, eps=e, norm_std=data["std"].tolist())
                det.fit_features(z, train_y)
                s = det.predict(test.float().clone()).double()
                out[f"mahalanobis_{tap}_{e}"] = -2.0 * len(train_y) * s
    save_file({k: v.double().contiguous() for k, v in out.items()}, out_path)
    print(json.dumps({k: float(v.abs().max()) for k, v in out.items()}))


if __name__ == "__main__":
    main()

"""pytorch-ood (0.4.0) and OpenOOD's formulas for oodnc's model-based detectors, on the
same network (a PyTorch state dict, loaded by oodnc too) and the same images.

    python model_peer.py MODEL.safetensors IN.safetensors OUT.safetensors SPEC_JSON
    python model_peer.py bench --width 1.0 --classes 100 --n-fit 1000 --n-score 500 --reps 3 [--threads T] [--device cpu]

SPEC_JSON: {"classes": K, "width": w, "poles": [P, ...], "mahalanobis_eps": [E, ...]}. IN holds
u8 images "fit", "heldout", "train" (both, in dataset order) and "test" ([N, 3, 32, 32]), int64
"fit_labels", "heldout_labels" and "train_labels", and the
per-channel "mean" and "std" of the normalisation. OUT holds, in oodnc's convention
(higher = more in-distribution, so pytorch-ood's scores negated):

- odin_1000, odin_10: pytorch-ood's ODIN (T = 1000, eps = 0.0014; T = 10, eps = 0.004; norm_std), as log
  max softmax (oodnc's form of its -max softmax);
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
import argparse
import copy
import json
import os
import sys
import time

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


CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)


def bench(argv):
    """Fit + score time of each detector alone (median of --reps after a warm-up), batch 128, on a freshly
    initialised network: the work `oodnc bench ood-model` times on its side."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--n-fit", type=int, default=1000)
    ap.add_argument("--n-score", type=int, default=500)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    torch.manual_seed(0)
    model = ResNet18(a.classes, a.width).to(dev).eval()
    mean = torch.tensor(CIFAR100_MEAN, device=dev).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR100_STD, device=dev).view(1, 3, 1, 1)

    def batches(n):
        x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8)
        y = torch.arange(n) % a.classes
        for i in range(0, n, 128):
            yield (x[i : i + 128].to(dev).float() / 255.0 - mean) / std, y[i : i + 128].to(dev)

    train = list(batches(a.n_fit))
    test = [x for x, _ in batches(a.n_score)]
    stem = nn.Sequential(model.conv1, model.bn1, nn.ReLU())
    blocks = [b for layer in (model.layer1, model.layer2, model.layer3, model.layer4) for b in layer]
    pool_fc = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), model.fc)

    def to_stage4(x):
        h = stem(x)
        for b in blocks:
            h = b(h)
        return h

    def penultimate(x):
        return to_stage4(x).mean(dim=(2, 3))

    def score_all(det):
        for x in test:
            det.predict(x)

    def odin():
        score_all(pd.ODIN(model, eps=0.0014, temperature=1000.0, norm_std=list(CIFAR100_STD)))

    def rankfeat():
        with torch.no_grad():
            score_all(pd.RankFeat(backbone=to_stage4, head=pool_fc))

    def gram():
        det = pd.Gram(head=pool_fc, feature_layers=[stem] + blocks, num_classes=a.classes, num_poles_list=list(range(1, 11)))
        det.to(dev)
        det.fit(train)
        with torch.no_grad():
            score_all(det)

    def mahalanobis():
        det = pd.MahalanobisODIN(penultimate, eps=0.0014, norm_std=list(CIFAR100_STD))
        det.to(dev)
        det.fit(train)
        score_all(det)

    out = {}
    for key, f in [("odin", odin), ("rankfeat_b4", rankfeat), ("gram", gram), ("mahalanobis_odin", mahalanobis)]:
        f()
        ts = []
        for _ in range(a.reps):
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            f()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            ts.append(time.perf_counter() - t)
        out[key] = sorted(ts)[len(ts) // 2]
        print(f"pytorch-ood {key}: {out[key]:.3f} s", file=sys.stderr)
    print(json.dumps(out))


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "bench":
        return bench(sys.argv[2:])
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
    for t, e in [(1000.0, 0.0014), (10.0, 0.004)]:
        odin = pd.ODIN(model, eps=e, temperature=t, norm_std=data["std"].tolist())
        out[f"odin_{int(t)}"] = torch.log(-odin.predict(test.clone()))
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

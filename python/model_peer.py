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
- nac_K for each K-th parameter set of "nac" (a list of maps with oodnc's names pool_o, pool_m,
  pool_alpha, l3_o, ..., l1_alpha): NAC-UE as OpenOOD's nac postprocessor computes it (its kl_grad,
  its StatePooling sums over space, its 'sigmoid(o*g_kl)' state and its KMNC Estimator with its
  logspace thresholds, mean over the layers), written here from its code, fitted on "nac_fit";
  nac_prod_fit_L and nac_prod_test_L for L in (pool, l3, l2, l1): the products o * g it takes the
  sigmoid of, rounded to float32 (OpenOOD's precision), on which nac_K is computed, so that oodnc's
  coverage can be checked on exactly these;
- ada_A_K and ada_L_K for each K-th parameter set of "adascale" (maps with oodnc's names pmin, pmax, k1,
  k2, lambda, o): AdaSCALE-A and -L as OpenOOD's adascale postprocessor and AdaScaleANet / AdaScaleLNet
  compute them (its gradient of the predicted logit, its perturb, get_percentile with statsmodels' ECDF
  (fraction <=, written here with searchsorted), ada_scale, forward_threshold), the ECDF fitted on
  "ada_val"; ada_{h,ht}_{val,test} and ada_z_test: the features of the images and of their
  perturbations, and the logits, for a check of oodnc's scoring on exactly these;
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

import numpy as np
import torch
import torch.nn.functional as F
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


NAC_LAYERS = ("pool", "l3", "l2", "l1")


def nac_products(model, x):
    """OpenOOD's NAC state ingredients: per layer (avgpool, layer3, layer2, layer1) the spatial sums of the
    output and of the gradient of sum_c -(1/C) log_softmax(z)_c (its kl_grad), multiplied."""
    x = x.clone().requires_grad_(True)
    a1 = model.layer1(F.relu(model.bn1(model.conv1(x))))
    a2 = model.layer2(a1)
    a3 = model.layer3(a2)
    pool = F.adaptive_avg_pool2d(model.layer4(a3), 1)
    logits = model.fc(pool.flatten(1))
    targets = torch.ones_like(logits) / logits.shape[-1]
    loss = torch.sum(-targets * torch.log_softmax(logits, dim=-1), dim=-1)
    acts = [pool, a3, a2, a1]
    out = []
    for a in acts:
        g = torch.autograd.grad(loss.sum(), a, retain_graph=True)[0]
        out.append(a.detach().sum(dim=[2, 3]) * g.sum(dim=[2, 3]))
    return out


def openood_logspace(base=10, num=100):
    """OpenOOD nac/coverage.py's thresholds."""
    num = int(num / 2)
    x = np.linspace(1, np.sqrt(base), num=num)
    x_l = np.emath.logn(base, x)
    x_r = (1 - x_l)[::-1]
    x = np.concatenate([x_l[:-1], x_r])
    x[-1] += 1e-2
    return torch.from_numpy(np.append(x, 1.2))


def openood_kmnc(fit, test, params):
    """OpenOOD's KMNC: an Estimator per layer (update on the fit states, get_score, ood_test), the
    layers' scores averaged (its single_ood_test), on float32 states as there."""
    scores = torch.zeros(test[0].shape[0])
    for l, name in enumerate(NAC_LAYERS):
        m, o, alpha = int(params[f"{name}_m"]), params[f"{name}_o"], params[f"{name}_alpha"]
        k = fit[l].shape[1]
        thresh = openood_logspace(1e3, m).view(m, -1).repeat(1, k)

        def state(x):
            return 1 / (1 + torch.exp(-alpha * x))

        def active(s):
            return (s.unsqueeze(1) >= thresh[: m - 1].unsqueeze(0)) & (s.unsqueeze(1) < thresh[1:m].unsqueeze(0))

        t_act = torch.zeros(m - 1, k)
        t_act += active(state(fit[l])).sum(dim=0)
        n_coverage = torch.min(t_act / o, torch.ones_like(t_act))
        s = (active(state(test[l])) * n_coverage.unsqueeze(0)).sum(dim=1).mean(dim=1)
        scores += s / len(NAC_LAYERS)
    return scores


def openood_adascale_views(model, data, o):
    """OpenOOD's AdaScalePostprocessor.setup / postprocess up to the features: (feature, perturbed
    feature, logits)."""
    data = data.clone().requires_grad_(True)
    feature = F.adaptive_avg_pool2d(model.layer4(model.layer3(model.layer2(model.layer1(F.relu(model.bn1(model.conv1(data))))))), 1).flatten(1)
    output = model.fc(feature)
    labels = output.detach().argmax(dim=1)
    model.zero_grad()
    score = output[torch.arange(len(labels)), labels]
    score.backward(torch.ones_like(score))
    grad = data.grad.data.detach()
    data = data.detach()
    # its perturb
    batch_size, channels, height, width = data.shape
    n_pixels = int(channels * height * width * o)
    abs_grad = abs(grad).view(batch_size, channels * height * width)
    _, topk_indices = torch.topk(abs_grad, n_pixels, dim=1, largest=False)
    mask = torch.zeros_like(abs_grad, dtype=torch.uint8)
    mask.scatter_(1, topk_indices, 1)
    mask = mask.view(batch_size, channels, height, width)
    data_perturbed = data + grad.sign() * mask * 0.5
    with torch.no_grad():
        feature_perturbed = F.adaptive_avg_pool2d(
            model.layer4(model.layer3(model.layer2(model.layer1(F.relu(model.bn1(model.conv1(data_perturbed))))))), 1
        ).flatten(1)
    return feature.detach(), feature_perturbed, output.detach()


def openood_adascale(model, val_views, test_views, p, logit_scaling):
    """OpenOOD's set_hyperparam, get_percentile, ada_scale and forward_threshold, then logsumexp."""
    feature_log, perturbed_log, _ = val_views
    shift_log = abs(feature_log - perturbed_log)
    dim = feature_log.shape[1]
    k1_, k2_ = int(dim * p["k1"] / 100), int(dim * p["k2"] / 100)

    def q_prime(feature, perturbed, shift):
        idx = torch.topk(feature, dim=1, k=k1_)[1]
        a = torch.gather(torch.relu(perturbed), 1, idx)
        idx = torch.topk(feature, dim=1, k=k2_)[1]
        b = torch.gather(shift, 1, idx)
        return a.sum(dim=1) + p["lambda"] * b.sum(dim=1)

    sample = np.sort(q_prime(feature_log, perturbed_log, shift_log).numpy())
    feature, perturbed, _ = test_views
    q = q_prime(feature, perturbed, abs(feature - perturbed)).numpy()
    ecdf = np.searchsorted(sample, q, side="right") / len(sample)  # statsmodels' ECDF
    percent = 1 - ecdf
    percentiles = torch.from_numpy(p["pmin"] + percent * (p["pmax"] - p["pmin"]))
    # ada_scale
    x = torch.relu(feature)
    n = x.shape[1]
    ks = n - torch.round(n * percentiles / 100.0).to(torch.int)
    max_k = ks.max()
    values, _ = torch.topk(x, max_k, dim=1)
    mask = torch.arange(max_k)[None, :] < ks[:, None]
    scale = x.sum(dim=1, keepdim=True) / (values * mask).sum(dim=1, keepdim=True)
    # forward_threshold
    if logit_scaling:
        logits = model.fc(feature) * scale**2.0
    else:
        logits = model.fc(feature * torch.exp(scale))
    return torch.logsumexp(logits, dim=1)


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

    def nac():
        # Its hooks need modules: layer4's output stands for the pool (it averages maps over space).
        det = pd.NACUE(model, layers=[model.layer1, model.layer2, model.layer3, model.layer4])
        det.fit(train)
        score_all(det)

    out = {}
    for key, f in [("odin", odin), ("rankfeat_b4", rankfeat), ("gram", gram), ("mahalanobis_odin", mahalanobis), ("nac", nac)]:
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

    for p in spec.get("poles", []):
        fit = torch.utils.data.TensorDataset(norm(data["fit"]), data["fit_labels"])
        heldout, heldout_y = norm(data["heldout"]), data["heldout_labels"]
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
    if spec.get("nac"):
        fit_p = [p.float() for p in nac_products(model, norm(data["nac_fit"]))]
        test_p = [p.float() for p in nac_products(model, test)]
        for name, f, t in zip(NAC_LAYERS, fit_p, test_p):
            out[f"nac_prod_fit_{name}"] = f
            out[f"nac_prod_test_{name}"] = t
        for k, params in enumerate(spec["nac"]):
            out[f"nac_{k}"] = openood_kmnc(fit_p, test_p, params)
    if spec.get("adascale"):
        os_ = sorted({p["o"] for p in spec["adascale"]})
        if len(os_) != 1:
            raise SystemExit("one o per call")
        val_v = openood_adascale_views(model, norm(data["ada_val"]), os_[0])
        test_v = openood_adascale_views(model, test, os_[0])
        out["ada_h_val"], out["ada_ht_val"] = val_v[0], val_v[1]
        out["ada_h_test"], out["ada_ht_test"], out["ada_z_test"] = test_v
        for k, p in enumerate(spec["adascale"]):
            with torch.no_grad():
                out[f"ada_A_{k}"] = openood_adascale(model, val_v, test_v, p, False)
                out[f"ada_L_{k}"] = openood_adascale(model, val_v, test_v, p, True)
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

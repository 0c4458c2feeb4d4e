"""pytorch-ood (0.4.0) on oodnc's features: the peer of oodnc's detector tests and benchmarks.

pytorch-ood's convention is "higher = more OOD", oodnc's "higher = more in-distribution";
`peer_scores` returns every score in oodnc's form (negated, and for the two detectors whose
value oodnc reports through a monotone transform, transformed back: see PEER_FORM). The
deliberate differences that make a score differ beyond the sign are listed in DIFFERENCES
and in docs/detectors.md.

    python ood_peer.py score IN.safetensors OUT.safetensors SPEC_JSON [float32|float64]
    python ood_peer.py bench SPEC_JSON --n-train 45000 --dim 512 --classes 100 --n-test 36032 --reps 3
"""
import json
import sys
import time

import numpy as np
import torch
from torch import nn

import pytorch_ood.detector as pd

# How oodnc's value relates to the peer's -score (identity unless listed).
PEER_FORM = {
    # oodnc reports log max-softmax (no saturation at 1.0); pytorch-ood -max softmax.
    "msp": "log",
    # pytorch-ood's covariance is the sum of the centred outer products (not divided by N,
    # plus a 1e-6 ridge) and its score carries the Gaussian's -1/2: oodnc's distance is 2 N times
    # its value (RMD: N times, the difference of two such terms without the 1/2). Same ranking.
    "mahalanobis": "times_2n",
    "rmds": "times_n",
}

# pytorch-ood computes these in float32 whatever it is given (`.float()` inside): they get f32 inputs.
F32_ONLY = {"mahalanobis", "rmds", "fdbd", "nci", "nnguide", "she", "pnml"}

# Detectors compared only through a documented transformation or not at all (why).
DIFFERENCES = {
    "pnml": (
        "pytorch-ood applies the head to the L2-normalised features (the paper's code uses the network's logits, "
        "as oodnc) and clamps probabilities to [1e-12, 1 - 1e-12]; compared through a head that returns the logits"
    ),
    "tempscale": "pytorch-ood stops LBFGS after 50 steps of lr 0.01, short of the NLL minimum oodnc finds",
    "gen": "pytorch-ood clamps probabilities to [1e-8, 1 - 1e-8] and averages over M instead of summing",
    "vra": "pytorch-ood's VRA is per dimension on the training split (oodnc's per_dim = 1); oodnc's default is OpenOOD's",
    "entropy": "pytorch-ood clips probabilities to [1e-7, 1] before the log (an absolute difference below 1e-6)",
    "she": "pytorch-ood refuses a class without a correct prediction; oodnc falls back to all of that class's samples",
    "openmax": (
        "pytorch-ood fits its Weibull by Nelder-Mead (scipy's exponweib.fit) where oodnc solves the likelihood "
        "equation (shapes agree to ~1e-7); it measures the distance to a class only if that class is some "
        "sample's argmax in the batch (0 otherwise: batch-dependent); its class means use every sample (correct = 0)"
    ),
}


def linear(W, b):
    head = nn.Linear(W.shape[1], W.shape[0], bias=True).to(device=W.device, dtype=W.dtype)
    with torch.no_grad():
        head.weight.copy_(W)
        head.bias.copy_(b)
    return head


def maps(x):
    """Penultimate features as the B x D x 1 x 1 feature maps pytorch-ood's shaping detectors take."""
    return x[:, :, None, None]


def build(name, p, W, b):
    """(fit, predict) closures of pytorch-ood's detector for oodnc's `name` with params `p`, or None."""
    head = linear(W, b)
    flat_head = lambda m: head(m.flatten(1))  # noqa: E731
    ident = lambda m: m  # noqa: E731
    pct = lambda k: p[k] / 100.0  # noqa: E731
    none = lambda *a: None  # noqa: E731
    if name == "msp":
        return none, lambda h, z: pd.MaxSoftmax.score(z)
    if name == "maxlogit":
        return none, lambda h, z: pd.MaxLogit.score(z)
    if name == "energy":
        return none, lambda h, z: pd.EnergyBased.score(z, t=p["t"])
    if name == "entropy":
        return none, lambda h, z: pd.Entropy.score(z)
    if name == "klm":
        d = pd.KLMatching(None)
        return (lambda h, z, y: d.fit_logits(z, y)), (lambda h, z: d.predict_logits(z))
    if name in ("mahalanobis", "rmds"):
        d = (pd.Mahalanobis if name == "mahalanobis" else pd.RMD)(None)
        return (lambda h, z, y: d.fit_features(h, y)), (lambda h, z: d.predict_features(h))
    if name == "knn":
        d = pd.KNN(None, k=int(p["k"]))
        return (lambda h, z, y: d.fit_features(h, y)), (lambda h, z: d.predict_features(h))
    if name == "vim":
        d = pd.ViM(None, d=int(p["dim"]), w=W, b=b)
        return (lambda h, z, y: d.fit_features(h, y)), (lambda h, z: d.predict_features(h))
    if name == "react" and int(p.get("score", 0)) == 0:
        d = pd.ReAct(ident, flat_head, percentile=pct("p"))
        return (lambda h, z, y: d.fit_feature_maps(maps(h), y)), (lambda h, z: d.predict_feature_maps(maps(h)))
    if name in ("ash_p", "ash_b", "ash_s") and int(p.get("score", 0)) == 0:
        d = pd.ASH(ident, flat_head, variant=name.replace("_", "-"), percentile=pct("p"))
        return none, lambda h, z: d.predict_feature_maps(maps(h))
    if name == "dice":
        d = pd.DICE(None, w=W, b=b, p=pct("p"))
        return (lambda h, z, y: d.fit_features(h, y)), (lambda h, z: d.predict_features(h))
    if name == "she":
        d = pd.SHE(None, head)
        return (lambda h, z, y: d.fit_features(h, y)), (lambda h, z: d.predict_features(h))
    if name == "fdbd":
        d = pd.fDBD(None, head)
        return (lambda h, z, y: d.fit_features(h)), (lambda h, z: d.predict_features(h))
    if name == "nci":
        d = pd.NCI(None, head, alpha=p["alpha"])
        return (lambda h, z, y: d.fit_features(h)), (lambda h, z: d.predict_features(h))
    if name == "scale" and int(p.get("score", 0)) == 0:
        d = pd.SCALE(ident, flat_head, percentile=pct("p"))
        return none, lambda h, z: d.predict_feature_maps(maps(h))
    if name == "lts" and int(p.get("score", 0)) == 0:
        d = pd.LTS(None, head, p=pct("p"))
        return none, lambda h, z: d.predict_features(h)
    if name == "vra" and int(p.get("per_dim", 0)) == 1 and int(p.get("score", 0)) == 0:
        d = pd.VRA(ident, flat_head, lower_percentile=pct("lo"), upper_percentile=pct("hi"))
        return (lambda h, z, y: d.fit_feature_maps(maps(h), y)), (lambda h, z: d.predict_feature_maps(maps(h)))
    if name == "nnguide":
        d = pd.NNGuide(None, head, k=int(p["k"]))
        return (lambda h, z, y: d.fit_features(h, y)), (lambda h, z: d.predict_features(h))
    if name == "openmax" and int(p.get("correct", 1)) == 0:
        # pytorch-ood's class means and tails use every training sample of a class (oodnc's correct = 0).
        d = pd.OpenMax(None, tailsize=int(p["tail"]), alpha=int(p["alpha"]), euclid_weight=p["w"])
        return (lambda h, z, y: d.fit_logits(z, y)), (lambda h, z: d.predict_logits(z))
    if name == "pnml":
        # pytorch-ood feeds the L2-normalised features to its head; the paper's code (and oodnc) takes the
        # probabilities of the network's own logits. The head given here returns, for the normalised
        # features of the rows being scored, the logits of those rows: everything else is pytorch-ood's.
        rows = {}
        d = pd.PNML(None, lambda zn: rows["z"])

        def predict(h, z):
            rows["z"] = z
            return d.predict_features(h)

        return (lambda h, z, y: d.fit_features(h, y)), predict
    if name == "gmm":
        # Its scoring forms a [C, N, D] difference tensor: the rows go through in chunks.
        d = pd.GMM(None, reg=p["reg"])
        return (lambda h, z, y: d.fit_features(h, y)), (lambda h, z: torch.cat([d.predict_features(c) for c in h.split(256)]))
    if name == "graduncertainty":
        # The head's parameters only (as OpenOOD); its per-sample gradients are [N, C, D], so the
        # rows go through in chunks.
        d = pd.GradUncertainty(head)
        return none, lambda h, z: torch.cat([d.predict(c) for c in h.split(1024)])
    if name == "gradnorm":
        d = pd.GradNorm(head, param_filter=lambda n: n == "weight", temperature=p["t"], micro_batch_size=256)
        return none, lambda h, z: d.predict(h)
    return None


def peer_scores(name, p, t, dtype, device="cpu"):
    """oodnc-form scores of pytorch-ood's implementation on the test rows, or None."""
    if name in F32_ONLY:
        dtype = torch.float32
    cast = lambda k: torch.from_numpy(np.ascontiguousarray(t[k])).to(device=device, dtype=dtype)  # noqa: E731
    W, b = cast("W"), cast("b")
    built = build(name, p, W, b)
    if built is None:
        return None
    fit, predict = built
    tr_h, tr_z, tr_y = cast("train_h"), cast("train_z"), torch.from_numpy(t["train_y"].astype(np.int64)).to(device)
    te_h, te_z = cast("test_h"), cast("test_z")
    fit(tr_h, tr_z, tr_y)
    s = -predict(te_h, te_z).detach().to(torch.float64).cpu().numpy()
    form = PEER_FORM.get(name)
    if form == "log":
        s = np.log(s)
    elif form == "times_2n":
        s = s * 2 * len(t["train_h"])
    elif form == "times_n":
        s = s * len(t["train_h"])
    return s


def cmd_score(inp, out, spec_json, dtype):
    from safetensors.numpy import load_file, save_file

    torch.set_num_threads(1)
    t = load_file(inp)
    dt = {"float32": torch.float32, "float64": torch.float64}[dtype]
    res = {}
    for s in json.loads(spec_json):
        sc = peer_scores(s["name"], s["params"], t, dt)
        if sc is not None:
            res[s["label"]] = sc.astype(np.float64)
    save_file(res, out)


def cmd_bench(args):
    """Fit + score time of pytorch-ood's implementation of each detector (its own statistics,
    nothing shared), median of `reps` runs, on the same synthetic features as `oodnc bench ood`."""
    rng = np.random.default_rng(0)
    C, D = args.classes, args.dim
    mus = rng.normal(size=(C, D)) * 2
    tr_y = rng.integers(0, C, args.n_train)
    tr_h = np.maximum(mus[tr_y] + rng.normal(size=(args.n_train, D)), 0).astype(np.float32)
    W = (rng.normal(size=(C, D)) * 0.05).astype(np.float32)
    b = (rng.normal(size=C) * 0.1).astype(np.float32)
    te = np.maximum(rng.normal(size=(args.n_test, D)) + 1, 0).astype(np.float32)
    t = {"W": W, "b": b, "train_h": tr_h, "train_z": tr_h @ W.T + b, "train_y": tr_y, "test_h": te, "test_z": te @ W.T + b}
    out = {}
    for name, p, *rest in json.loads(args.specs):
        # Each entry may carry its repetitions (oodnc repeats millisecond detectors more).
        reps = int(rest[0]) if rest else args.reps
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            try:
                if peer_scores(name, p, t, torch.float32, args.device) is None:
                    break
            except (ValueError, RuntimeError) as e:  # e.g. SHE on a class with no correct prediction
                print(f"pytorch-ood {name}: {e}", file=sys.stderr)
                break
            times.append(time.perf_counter() - t0)
        if times:
            out[name] = float(np.median(times))
    print(json.dumps(out))


def main():
    if sys.argv[1] == "score":
        cmd_score(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5] if len(sys.argv) > 5 else "float64")
    elif sys.argv[1] == "bench":
        import argparse

        ap = argparse.ArgumentParser()
        ap.add_argument("cmd")
        ap.add_argument("specs")
        ap.add_argument("--n-train", type=int, default=45000)
        ap.add_argument("--dim", type=int, default=512)
        ap.add_argument("--classes", type=int, default=100)
        ap.add_argument("--n-test", type=int, default=36032)
        ap.add_argument("--reps", type=int, default=3)
        ap.add_argument("--device", default="cpu", help="cpu or cuda: where the features and pytorch-ood run (as oodnc's side)")
        cmd_bench(ap.parse_args())
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()

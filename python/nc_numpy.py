"""Plain numpy implementation of oodnc's NC metrics: the baseline of `oodnc bench nc`.

    python nc_numpy.py bench --n 45000 --classes 100 --dims 64,64,64,128,128,256,256,512,512,512 --checkpoints 13
"""
import argparse
import json
import time

import numpy as np


def nc_metrics(h, y, C, logits, W):
    n, d = h.shape
    counts = np.bincount(y, minlength=C).astype(np.float64)
    means = np.zeros((C, d))
    np.add.at(means, y, h)
    means /= counts[:, None]
    cen = h - means[y]
    sw = cen.T @ cen / n
    mg = means.mean(0)
    mt = means - mg
    sb = mt.T @ mt / C
    vals, vecs = np.linalg.eigh(sb)
    keep = vals > 1e-10 * vals.max()
    pinv = (vecs[:, keep] / vals[keep]) @ vecs[:, keep].T
    nc1 = np.sum(sw * pinv) / C
    cls_var = np.bincount(y, weights=(cen**2).sum(1), minlength=C) / counts
    d2 = ((means[:, None, :] - means[None, :, :]) ** 2).sum(-1)
    off = ~np.eye(C, dtype=bool)
    cdnv = ((cls_var[:, None] + cls_var[None, :]) / (2 * d2))[off].mean()
    norms = np.linalg.norm(mt, axis=1)
    equinorm = norms.std(ddof=1) / norms.mean()
    u = mt / norms[:, None]
    g = u @ u.T
    maxangle = np.abs(g[off] + 1 / (C - 1)).mean()
    hn = (h**2).sum(1, keepdims=True)
    dist = hn + (means**2).sum(1)[None, :] - 2 * h @ means.T
    ncc = dist.argmin(1)
    nc4 = (ncc != logits.argmax(1)).mean()
    out = {"nc1": nc1, "cdnv": cdnv, "equinorm": equinorm, "maxangle": maxangle, "nc4": nc4}
    if W is not None:
        a = W / np.linalg.norm(W)
        b = mt / np.linalg.norm(mt)
        out["nc3"] = ((a - b) ** 2).sum()
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["bench"])
    ap.add_argument("--n", type=int, default=45000)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--dims", default="64,64,64,128,128,256,256,512,512,512")
    ap.add_argument("--checkpoints", type=int, default=13)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    y = np.arange(a.n) % a.classes
    dims = [int(x) for x in a.dims.split(",")]
    feats = {d: np.abs(rng.normal(size=(a.classes, d))[y] + rng.normal(size=(a.n, d))) for d in set(dims)}
    W = rng.normal(size=(a.classes, dims[-1]))
    logits = feats[dims[-1]] @ W.T
    t0 = time.perf_counter()
    for _ in range(a.checkpoints):
        for i, d in enumerate(dims):
            nc_metrics(feats[d], y, a.classes, logits, W if i == len(dims) - 1 else None)
    print(json.dumps({"seconds": time.perf_counter() - t0}))


if __name__ == "__main__":
    main()

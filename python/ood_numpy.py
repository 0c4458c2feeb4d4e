"""Plain numpy / scikit-learn implementations of oodnc's OOD detectors.

Two uses:
- an independent formulation for oodnc's tests (`score`): same inputs, scores
  compared to the Rust ones;
- the baseline of `oodnc bench ood` (`bench`): fit + score time per detector.

All scores are higher = more in-distribution, as in oodnc.

    python ood_numpy.py score IN.safetensors OUT.safetensors SPEC_JSON
    python ood_numpy.py bench --n-train 45000 --dim 512 --classes 100 --n-test 10000 --n-ood 26032
"""
import json
import sys
import time

import numpy as np
from scipy.special import logsumexp, softmax
from sklearn.covariance import EmpiricalCovariance
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler


def energy(z, t=1.0):
    return t * logsumexp(z / t, axis=1)


def rnd(x):
    """numpy's round (half to even), as OpenOOD and pytorch-ood use for SCALE and LTS."""
    return int(np.round(x))


def splitmix_normal(seed, n):
    """oodnc's SplitMix64 standard normals (Box-Muller, two uniforms each), vectorised:
    output i of SplitMix64 is a function of seed + (i + 1) * golden gamma alone."""
    gamma = np.uint64(0x9E3779B97F4A7C15)
    z = np.uint64(seed) + np.arange(1, 2 * n + 1, dtype=np.uint64) * gamma
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    u = (z >> np.uint64(11)).astype(np.float64) * 2.0**-53
    u1, u2 = np.maximum(u[0::2], 1e-300), u[1::2]
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


def weiper(p, tr_h, W, b, te_h):
    """WeiPer+KLD as OpenOOD's `weiper_kldiv` postprocessor computes it (its
    `calculate_weiper_space`, `batch_histogram(..., probability=True)`, `UniformKernel`,
    `kldiv(symmetric=True)`), with one perturbation drawn from oodnc's generator."""
    C, D = W.shape
    r, bins = int(p["r"]), int(p["bins"])
    g = splitmix_normal(int(p["seed"]), r * C * D).reshape(r, C, D)
    pert = p["delta"] * g / np.linalg.norm(g, axis=2, keepdims=True) * np.linalg.norm(W, axis=1)[None, :, None]
    Wt = (W[None] + pert).reshape(r * C, D)
    bt = np.tile(b, r)

    def hist(v, lo, hi):
        # Per row: the fraction of its values in [e_i, e_i+1), edges linspace(lo, hi + 1e-8, bins + 1);
        # values outside count in the denominator only.
        edges = np.linspace(lo, hi + 1e-8, bins + 1)
        i = np.searchsorted(edges, v, side="right") - 1
        i = np.where((i >= 0) & (i < bins), i, bins)
        counts = np.stack([np.bincount(row, minlength=bins + 1) for row in i])
        return counts[:, :bins] / v.shape[1]

    def smooth(q, s):
        # Conv1d(kernel s, weights 1/s, padding="same", padding_mode="replicate"): (s - 1) // 2 before.
        left = (s - 1) // 2
        qp = np.pad(q, ((0, 0), (left, s - 1 - left)), mode="edge")
        c = np.cumsum(np.pad(qp, ((0, 0), (1, 0))), axis=1)
        return (c[:, s:] - c[:, :-s]) / s

    def kl(pm, q, s, eps):
        qs = smooth(q, s) + eps
        qs = qs / qs.sum(1, keepdims=True)
        ps = (pm + eps) / (pm + eps).sum()
        return -(ps * (np.log(qs) - np.log(ps))).sum(1) - (qs * (np.log(ps) - np.log(qs))).sum(1)

    step = 1024
    blocks = lambda: (tr_h[i : i + step] @ Wt.T + bt for i in range(0, len(tr_h), step))
    rh = (tr_h.min(), tr_h.max())
    zr = [(z.min(), z.max()) for z in blocks()]
    rz = (min(a for a, _ in zr), max(c for _, c in zr))
    mh = np.concatenate([hist(tr_h[i : i + step], *rh) for i in range(0, len(tr_h), step)]).mean(0)
    mz = np.concatenate([hist(z, *rz) for z in blocks()]).mean(0)
    out = []
    for i in range(0, len(te_h), step):
        x = te_h[i : i + step]
        z = x @ Wt.T + bt
        msp = softmax(z.reshape(len(x), r, C), axis=2).max(2).mean(1)
        kh = kl(mh, hist(x, *rh), int(p["s1"]), p["eps1"])
        kz = kl(mz, hist(z, *rz), int(p["s2"]), p["eps2"])
        out.append(-(kh + p["lambda1"] * kz - p["lambda2"] * msp))
    return np.concatenate(out)


def fit_score(name, p, tr_h, tr_y, tr_z, W, b, val_z, val_y, te_h, te_z, bench=False, val_h=None, taps=None):
    """Scores of detector `name` on the test rows, in f64 like oodnc.

    With `bench`, the timed baseline: the KNN similarity product in f32 (the
    precision oodnc uses for it) and KLM's divergences as one matrix product.
    Without, the tests' reference: KNN in f64 and KLM by its definition."""
    C, D = W.shape
    # The logit score of the shaping detectors (their `score` hyperparameter).
    score = {0: energy, 1: lambda z: np.log(softmax(z, axis=1).max(1)), 2: lambda z: z.max(1)}[int(p.get("score", 0))]
    if name == "msp":
        return np.log(softmax(te_z, axis=1).max(1))
    if name == "maxlogit":
        return te_z.max(1)
    if name == "energy":
        return energy(te_z, p["t"])
    if name == "entropy":
        q = softmax(te_z, axis=1)
        return (q * np.log(q)).sum(1)
    if name == "gen":
        q = np.sort(softmax(te_z, axis=1), axis=1)[:, ::-1][:, : int(min(p["m"], C))]
        return -(q ** p["gamma"] * (1 - q) ** p["gamma"]).sum(1)
    if name == "mahalanobis_layers":
        # Per stage tap: -min_c Mahalanobis (tied covariance, pseudo-inverse), standardised
        # by its ID training mean and std (ddof 1), summed over the taps.
        total = 0.0
        for tap in ("stem", "layer1.1", "layer2.1", "layer3.1", "layer4.1"):
            a_tr, a_te = taps[tap]
            m_tr = fit_score("mahalanobis", {}, a_tr, tr_y, tr_z, W, b, val_z, val_y, a_tr, tr_z)
            m_te = fit_score("mahalanobis", {}, a_tr, tr_y, tr_z, W, b, val_z, val_y, a_te, te_z)
            total = total + (m_te - m_tr.mean()) / m_tr.std(ddof=1)
        return total
    if name in ("mahalanobis", "rmds"):
        # Whitening with the pseudo-inverse square root of the tied covariance:
        # (h - mu)^T P (h - mu) = ||(h - mu) L||^2 with L L^T = P (eigh, like np.linalg.pinv).
        def pinv_sqrt(cov):
            vals, vecs = np.linalg.eigh(cov)
            keep = vals > 1e-10 * vals.max()
            return vecs[:, keep] / np.sqrt(vals[keep])

        mus = np.stack([tr_h[tr_y == c].mean(0) for c in range(C)])
        cen = tr_h - mus[tr_y]
        L = pinv_sqrt(cen.T @ cen / len(tr_h))
        a, m = te_h @ L, mus @ L
        md = (a**2).sum(1)[:, None] + (m**2).sum(1)[None, :] - 2 * a @ m.T
        if name == "rmds":
            mu0 = tr_h.mean(0)
            c0 = tr_h - mu0
            L0 = pinv_sqrt(c0.T @ c0 / len(tr_h))
            md = md - (((te_h - mu0) @ L0) ** 2).sum(1)[:, None]
        return -md.min(1)
    if name == "knn":
        norm = lambda x: x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        dt = np.float32 if bench else np.float64
        a, bank = norm(te_h).astype(dt), norm(tr_h).astype(dt)
        k = int(p["k"])
        out = []
        for i in range(0, len(a), 2048):
            d = np.sqrt(np.maximum(2 - 2 * a[i : i + 2048] @ bank.T, 0))
            out.append(-np.partition(d, k - 1, axis=1)[:, k - 1])
        return np.concatenate(out)
    if name in ("vim", "residual"):
        u = -np.linalg.pinv(W) @ b
        ec = EmpiricalCovariance(assume_centered=True).fit(tr_h - u)
        vals, vecs = np.linalg.eigh(ec.covariance_)
        ns = vecs[:, np.argsort(vals * -1)[int(p["dim"]):]]
        r = np.linalg.norm((te_h - u) @ ns, axis=-1)
        if name == "residual":
            return -r
        alpha = tr_z.max(1).mean() / np.linalg.norm((tr_h - u) @ ns, axis=-1).mean()
        return energy(te_z) - alpha * r
    if name == "neco":
        sc = StandardScaler().fit(tr_h)
        pca = PCA(n_components=D).fit(sc.transform(tr_h))
        x = sc.transform(te_h)
        proj = x @ pca.components_[: int(p["d"])].T
        r = np.linalg.norm(proj, axis=1) / np.linalg.norm(x, axis=1)
        return r * te_z.max(1) if p.get("maxlogit", 0) == 1 else r
    if name == "neco_seed":
        pca = PCA(n_components=min(int(p["d"]), D)).fit(tr_h)
        return np.linalg.norm(te_h @ pca.components_.T, axis=1) / (np.linalg.norm(te_h, axis=1) + 1e-8)
    if name == "react":
        clip = np.percentile(tr_h.flatten(), p["p"])
        return score(np.minimum(te_h, clip) @ W.T + b)
    if name in ("ash_p", "ash_b", "ash_s"):
        x = te_h.copy()
        k = max(1, int(round(D * (1 - p["p"] / 100))))
        thresh = np.sort(x, axis=1)[:, ::-1][:, k - 1 : k]
        keep = x >= thresh
        s1 = x.sum(1, keepdims=True)
        if name == "ash_p":
            x = x * keep
        elif name == "ash_b":
            # Exactly the k largest (ties to the lower index) at s1 / k, as the paper's code.
            top = np.argsort(-x, axis=1, kind="stable")[:, :k]
            exact = np.zeros_like(x)
            np.put_along_axis(exact, top, 1.0, axis=1)
            x = exact * (s1 / k)
        else:
            pr = x * keep
            x = pr * np.exp(s1 / np.maximum(pr.sum(1, keepdims=True), 1e-12))
        return score(x @ W.T + b)
    if name == "dice":
        contrib = W * tr_h.mean(0)[None, :]
        mask = contrib > np.percentile(contrib, p["p"])
        return energy(te_h @ (W * mask).T + b)
    if name == "she":
        pred = tr_z.argmax(1)
        ok = pred == tr_y
        pats = np.stack([tr_h[ok & (tr_y == c)].mean(0) if (ok & (tr_y == c)).any() else tr_h[tr_y == c].mean(0) for c in range(C)])
        return (te_h * pats[te_z.argmax(1)]).sum(1)
    if name == "klm":
        q = softmax(tr_z, axis=1)
        pred = q.argmax(1)
        temps = np.stack([q[pred == c].mean(0) for c in range(C) if (pred == c).any()])
        qt = softmax(te_z, axis=1)
        if bench:
            # KL(q || t_c) = sum q log q - q . log t_c: one matrix product for all c.
            kl = (qt * np.log(qt)).sum(1, keepdims=True) - qt @ np.log(np.maximum(temps, 1e-12)).T
        else:
            kl = (qt[:, None, :] * (np.log(qt[:, None, :]) - np.log(np.maximum(temps[None], 1e-12)))).sum(-1)
        return -kl.min(1)
    if name == "openmax":
        # Per the paper and libMR: class means and distance tails of the correctly classified
        # training samples, a Weibull fitted by scipy (location fixed at 0) to the translated tail.
        from scipy.stats import weibull_min

        tail, alpha, w, correct = int(p["tail"]), min(int(p["alpha"]), C), p["w"], int(p.get("correct", 1))

        def dist(x, mu):
            d = np.zeros(len(x))
            if w > 0:
                d += w * np.sqrt(((x - mu) ** 2).sum(1))
            if w < 1:
                d += (1 - w) * (1 - (x @ mu) / (np.linalg.norm(x, axis=1) * np.linalg.norm(mu)))
            return d

        ok = tr_z.argmax(1) == tr_y
        mus, models = [], []
        for c in range(C):
            rows = (tr_y == c) & ok if correct else tr_y == c
            if not rows.any():
                rows = tr_y == c
            mu = tr_z[rows].mean(0)
            t = np.sort(dist(tr_z[rows], mu))[-tail:]
            k, _, lam = weibull_min.fit(t + 10000 - t.min(), floc=0)
            mus.append(mu)
            models.append((t.min(), k, lam))
        if bench:
            # The timed baseline: every distance and every class's CDF as whole-array operations.
            dd = np.stack([dist(te_z, mus[c]) for c in range(C)], 1)
            ww = np.stack([weibull_min.cdf(dd[:, c] + 10000 - models[c][0], models[c][1], scale=models[c][2]) for c in range(C)], 1)
            top = np.argsort(-te_z, axis=1, kind="stable")[:, :alpha]
            s = np.zeros_like(te_z)
            rows = np.arange(len(te_z))[:, None]
            s[rows, top] = (alpha - np.arange(alpha))[None] / alpha * ww[rows, top]
            v = np.minimum(np.concatenate([(te_z * s).sum(1, keepdims=True), te_z * (1 - s)], 1), 709)
            return -softmax(v, axis=1)[:, 0]
        out = []
        for z in te_z:
            s = np.zeros(C)
            for i, c in enumerate(np.argsort(-z, kind="stable")[:alpha]):
                lo, k, lam = models[c]
                s[c] = (alpha - i) / alpha * weibull_min.cdf(dist(z[None], mus[c])[0] + 10000 - lo, k, scale=lam)
            v = np.minimum(np.concatenate([[np.sum(z * s)], z * (1 - s)]), 709)
            out.append(-softmax(v)[0])
        return np.array(out)
    if name == "fdbd":
        mu = tr_h.mean(0)
        z = te_h @ W.T + b
        pred = z.argmax(1)
        zc = z[np.arange(len(z)), pred][:, None]
        wn = (W**2).sum(1)
        dn = np.sqrt(np.maximum(wn[pred][:, None] + wn[None, :] - 2 * W[pred] @ W.T, 1e-12))
        num = np.abs(zc - z) / dn
        num[np.arange(len(z)), pred] = 0
        return num.sum(1) / (C - 1) / np.linalg.norm(te_h - mu, axis=1)
    if name == "tempscale":
        from scipy.optimize import minimize_scalar

        def nll(lt):
            lp = val_z / np.exp(lt) - logsumexp(val_z / np.exp(lt), axis=1, keepdims=True)
            return -lp[np.arange(len(val_y)), val_y].mean()

        t = np.exp(minimize_scalar(nll, bounds=(np.log(0.05), np.log(20)), method="bounded").x)
        return np.log(softmax(te_z / t, axis=1).max(1))
    if name == "nci":
        mu = tr_h.mean(0)
        pred = (te_h @ W.T + b).argmax(1)
        c = te_h - mu
        return (c * W[pred]).sum(1) / np.linalg.norm(c, axis=1) + p["alpha"] * np.abs(te_h).sum(1)
    if name == "scale":
        k = D - rnd(D * p["p"] / 100)
        s2 = -np.sort(-te_h, axis=1)[:, :k].sum(1, keepdims=True)
        return score((te_h * np.exp(te_h.sum(1, keepdims=True) / s2)) @ W.T + b)
    if name == "lts":
        r = np.maximum(te_h, 0)
        k = max(1, D - rnd(D * (100 - p["p"]) / 100))
        s = (r.sum(1) / -np.sort(-r, axis=1)[:, :k].sum(1)) ** 2
        return score((te_h @ W.T + b) * s[:, None])
    if name == "gmm":
        # One Gaussian per class with its own covariance (ddof 0, plus reg I), weighted by the
        # class frequencies: scipy's log-density, then the mixture's log-sum-exp.
        from scipy.special import logsumexp as mixture_lse
        from scipy.stats import multivariate_normal

        comps = []
        for c in range(C):
            rows = tr_y == c
            if not rows.any():
                continue
            x = tr_h[rows]
            mu = x.mean(0)
            cov = (x - mu).T @ (x - mu) / len(x) + p["reg"] * np.eye(D)
            comps.append(np.log(len(x) / len(tr_y)) + multivariate_normal(mu, cov).logpdf(te_h))
        return mixture_lse(np.stack(comps, 1), axis=1)
    if name == "graduncertainty":
        # By the definition: dL/dz through the softmax Jacobian of L = -sum_c log p_c
        # (dL/dp_c = -1/p_c), then the head's gradient, dL/dW = dL/dz h^T and dL/db = dL/dz.
        q = softmax(te_h @ W.T + b, axis=1)
        if bench:
            # The same value without the [N, C, C] Jacobian and the [N, C, D] gradient.
            return ((C * q - 1.0) ** 2).sum(1) * ((te_h**2).sum(1) + 1.0)
        jac = q[:, :, None] * np.eye(C)[None] - q[:, :, None] * q[:, None, :]
        dz = np.einsum("ncj,nc->nj", jac, -1.0 / q)
        g = dz[:, :, None] * te_h[:, None, :]
        return (g**2).sum((1, 2)) + (dz**2).sum(1)
    if name == "gradnorm":
        # By the definition: the gradient of -(1/C) sum_c log softmax(z/T)_c w.r.t. W, per sample.
        t = p["t"]
        q = softmax((te_h @ W.T + b) / t, axis=1)
        if bench:
            # The same value without the [N, C, D] gradient tensor (14 GB at CIFAR-100 sizes).
            return np.abs(te_h).sum(1) * np.abs(q - 1.0 / C).sum(1) / t
        g = (q - 1.0 / C)[:, :, None] * te_h[:, None, :] / t
        return np.abs(g).sum((1, 2))
    if name == "vra":
        if p.get("per_dim", 0) == 1:
            lo, hi = np.quantile(tr_h, p["lo"] / 100, axis=0), np.quantile(tr_h, p["hi"] / 100, axis=0)
        else:
            lo, hi = np.percentile(val_h.flatten(), p["lo"]), np.percentile(val_h.flatten(), p["hi"])
        return score(np.clip(te_h, lo, hi) @ W.T + b)
    if name == "nnguide":
        k = int(p["k"])
        unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        bank = unit(tr_h) * energy(tr_h @ W.T + b)[:, None]
        q = unit(te_h)
        guide = np.concatenate([-np.partition(-(q[i : i + 2048] @ bank.T), k - 1, axis=1)[:, :k].mean(1) for i in range(0, len(q), 2048)])
        return guide * energy(te_h @ W.T + b)
    if name in ("caref", "cadref"):
        pred_tr = (tr_h @ W.T + b).argmax(1)
        mus = np.stack([tr_h[pred_tr == c].mean(0) if (pred_tr == c).any() else tr_h.mean(0) for c in range(C)])
        z = te_h @ W.T + b
        pred = z.argmax(1)
        rel = te_h - mus[pred]
        n1 = np.abs(te_h).sum(1)
        if name == "caref":
            return -np.abs(rel).sum(1) / n1
        conf = {0: energy, 1: lambda z: softmax(z, axis=1).max(1), 2: lambda z: z.max(1)}[int(p["conf"])]
        a = rel * np.sign(W[pred])
        ep, en = np.maximum(a, 0).sum(1) / n1, np.maximum(-a, 0).sum(1) / n1
        return -(ep / conf(z) + en / conf(tr_h @ W.T + b).mean())
    if name == "relation":
        unit = lambda x: x / np.sqrt((x**2).sum(1, keepdims=True) + 1e-10)
        ft, pt = unit(tr_h), softmax(tr_h @ W.T + b, axis=1)
        fq, pq = unit(te_h), softmax(te_h @ W.T + b, axis=1)
        out = []
        for i in range(0, len(fq), 1024):
            rel = np.maximum(fq[i : i + 1024] @ ft.T, 0) * (pq[i : i + 1024] @ pt.T)
            out.append((np.where(rel > 0.03, rel, 0) ** int(p["pow"])).sum(1))
        return np.concatenate(out)
    if name == "pnml":
        # The regret of Bibas et al. (2021) as written: probabilities of the network's logits,
        # the projection the pseudo-inverse of the normalised training features' Gram matrix.
        unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        xt = unit(tr_h)
        proj = np.linalg.pinv(xt.T @ xt, rcond=1e-10, hermitian=True)
        x = unit(te_h)
        xpx = ((x @ proj) * x).sum(1)
        kappa = (xpx / (1 + xpx))[:, None]
        q = softmax(te_z, axis=1)
        return -np.log((q / (q + (1 - q) * q**kappa)).sum(1)) / np.log(C)
    if name == "weiper":
        return weiper(p, tr_h, W, b, te_h)
    raise SystemExit(f"unknown detector {name}")


def cmd_score(inp, out, spec_json):
    from safetensors.numpy import load_file, save_file

    t = {k: v.astype(np.float64) if v.dtype.kind == "f" else v for k, v in load_file(inp).items()}
    specs = json.loads(spec_json)
    res = {}
    for s in specs:
        res[s["label"]] = fit_score(
            s["name"], s["params"], t["train_h"], t["train_y"].astype(int), t["train_z"], t["W"], t["b"],
            t["val_z"], t["val_y"].astype(int), t["test_h"], t["test_z"], val_h=t.get("val_h"),
            taps={k[len("train_tap_"):]: (v, t["test_tap_" + k[len("train_tap_"):]]) for k, v in t.items() if k.startswith("train_tap_")},
        ).astype(np.float64)
    save_file(res, out)


def cmd_bench(args):
    rng = np.random.default_rng(0)
    C, D = args.classes, args.dim
    mus = rng.normal(size=(C, D)) * 2
    tr_y = rng.integers(0, C, args.n_train)
    tr_h = np.maximum(mus[tr_y] + rng.normal(size=(args.n_train, D)), 0)
    W = rng.normal(size=(C, D)) * 0.05
    b = rng.normal(size=C) * 0.1
    tr_z = tr_h @ W.T + b
    te = np.maximum(rng.normal(size=(args.n_test + args.n_ood, D)) + 1, 0)
    te_z = te @ W.T + b
    val_y = tr_y[:5000]
    out = {}
    for name, p, *_ in json.loads(args.specs):
        t0 = time.perf_counter()
        fit_score(name, p, tr_h, tr_y, tr_z, W, b, tr_z[:5000], val_y, te, te_z, bench=True, val_h=tr_h[:5000])
        out[name] = time.perf_counter() - t0
    print(json.dumps(out))


def main():
    if sys.argv[1] == "score":
        cmd_score(sys.argv[2], sys.argv[3], sys.argv[4])
    elif sys.argv[1] == "bench":
        import argparse

        ap = argparse.ArgumentParser()
        ap.add_argument("cmd")
        ap.add_argument("--n-train", type=int, default=45000)
        ap.add_argument("--dim", type=int, default=512)
        ap.add_argument("--classes", type=int, default=100)
        ap.add_argument("--n-test", type=int, default=10000)
        ap.add_argument("--n-ood", type=int, default=26032)
        ap.add_argument("--specs", required=True)
        cmd_bench(ap.parse_args())
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()

"""Metrics, aggregation rules and bootstrap intervals. The Rust `eval` command mirrors
aggregate_video/aggregate_patients and the point metrics here."""
from __future__ import annotations

import numpy as np

COVID_THRESHOLD = 0.5


def aggregate_video(class_probs: np.ndarray, sev_probs: np.ndarray, unc: np.ndarray) -> dict:
    """Frames -> video: mean of frame probabilities (robust to a few bad frames, keeps
    calibration), severity = argmax of the mean severity distribution. `unc` (per-frame
    entropy) is kept for reports; the video uncertainty is recomputed from the mean."""
    cp = class_probs.mean(axis=0)
    sp = sev_probs.mean(axis=0)
    return {
        "class_probs": cp,
        "severity_probs": sp,
        "severity": int(np.argmax(sp)),
        # normalised entropy of the mean distribution: includes the frames' disagreement
        "uncertainty": float(-(cp[cp > 0] * np.log(cp[cp > 0])).sum() / np.log(3)),
        "covid_spread": float(class_probs[:, 0].std()),
    }


def auc(y: np.ndarray, s: np.ndarray) -> float:
    """Mann-Whitney AUC with ties counted half."""
    pos, neg = s[y == 1], s[y == 0]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    gt = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(gt / (len(pos) * len(neg)))


def binary_at(y: np.ndarray, s: np.ndarray, t: float = COVID_THRESHOLD) -> dict:
    pred = s >= t
    tp = int(((pred == 1) & (y == 1)).sum())
    tn = int(((pred == 0) & (y == 0)).sum())
    sens = tp / max(int((y == 1).sum()), 1)
    spec = tn / max(int((y == 0).sum()), 1)
    return {"sensitivity": sens, "specificity": spec, "balanced_accuracy": (sens + spec) / 2}


def confusion(y: np.ndarray, p: np.ndarray, k: int) -> np.ndarray:
    m = np.zeros((k, k), dtype=np.int64)
    for a, b in zip(y, p):
        m[a, b] += 1
    return m


def qwk(y: np.ndarray, p: np.ndarray, k: int = 4) -> float:
    o = confusion(y, p, k).astype(np.float64)
    n = o.sum()
    if n == 0:
        return float("nan")
    w = np.array([[(i - j) ** 2 for j in range(k)] for i in range(k)]) / (k - 1) ** 2
    e = np.outer(o.sum(1), o.sum(0)) / n
    den = (w * e).sum()
    return float(1 - (w * o).sum() / den) if den > 0 else float("nan")


def macro_f1(y: np.ndarray, p: np.ndarray, k: int) -> float:
    """Mean F1 over the classes present in the labels."""
    f1s = []
    for c in range(k):
        if (y == c).sum() == 0:
            continue
        tp = ((p == c) & (y == c)).sum()
        prec = tp / max((p == c).sum(), 1)
        rec = tp / (y == c).sum()
        f1s.append(0.0 if tp == 0 else 2 * prec * rec / (prec + rec))
    return float(np.mean(f1s))


def balanced_accuracy(y: np.ndarray, p: np.ndarray, k: int) -> float:
    return float(np.mean([((p == c) & (y == c)).sum() / (y == c).sum() for c in range(k) if (y == c).sum()]))


def ece(y: np.ndarray, s: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error of a binary probability, equal-width bins."""
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        m = (s >= lo) & ((s < hi) if b < bins - 1 else (s <= hi))
        if m.any():
            total += m.sum() / len(s) * abs(s[m].mean() - y[m].mean())
    return float(total)


def bootstrap(fn, groups: np.ndarray, n: int = 2000, seed: int = 7) -> tuple[float, float]:
    """95% percentile interval, resampling whole groups (patients)."""
    rng = np.random.default_rng(seed)
    uniq = np.unique(groups)
    idx_of = {g: np.flatnonzero(groups == g) for g in uniq}
    vals = []
    for _ in range(n):
        pick = rng.choice(uniq, size=len(uniq), replace=True)
        idx = np.concatenate([idx_of[g] for g in pick])
        v = fn(idx)
        if not np.isnan(v):
            vals.append(v)
    return float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))

"""Frames -> video, the rule `inference/src/pooling.rs` implements (pinned by
fixtures/reference/pooling_cases.json): attention-weighted mean of the frames' raw head
outputs, then calibration (temperatures) and the ordinal severity read-out."""
from __future__ import annotations

import numpy as np

N_FINDINGS = 5


def softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def pool_raw(attention, class_logits, severity_latent, finding_logits) -> dict:
    """Attention pooling of one video's frames (arrays over frames)."""
    w = softmax(np.asarray(attention, dtype=np.float64))
    return {
        "class_logits": w @ np.asarray(class_logits, dtype=np.float64),
        "severity_latent": float(w @ np.asarray(severity_latent, dtype=np.float64)),
        "finding_logits": w @ np.asarray(finding_logits, dtype=np.float64),
    }


def severity_from_latent(s: float, cuts, temperature: float = 1.0) -> tuple[np.ndarray, int, float]:
    """(P(severity = 0..3), ordinal median, expected severity) of a cumulative-logit model."""
    q = sigmoid((s - np.asarray(cuts, dtype=np.float64)) / temperature)  # P(y >= k), k = 1..3
    q = np.minimum.accumulate(q)  # cuts are sorted; guards rounding
    probs = np.clip(np.array([1 - q[0], q[0] - q[1], q[1] - q[2], q[2]]), 0.0, 1.0)
    return probs, int((q >= 0.5).sum()), float(q.sum())


def calibrate(pooled: dict, cal: dict, cuts) -> dict:
    cp = softmax(pooled["class_logits"] / cal["class_temperature"])
    sp, sev, expected = severity_from_latent(pooled["severity_latent"], cuts, cal["severity_temperature"])
    f = sigmoid(pooled["finding_logits"] / np.asarray(cal["finding_temperature"], dtype=np.float64))
    return {"class_probs": cp, "severity_probs": sp, "severity": sev, "expected_severity": expected, "findings": f}


def video(attention, class_logits, severity_latent, finding_logits, cal: dict, cuts) -> dict:
    return calibrate(pool_raw(attention, class_logits, severity_latent, finding_logits), cal, cuts)

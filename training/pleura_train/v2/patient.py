"""Zones -> patient, the rule `inference/src/patient.rs` implements: repeated zones merged
(element-wise max), nine image features, optionally nine vitals, a standardised logistic model."""
from __future__ import annotations

import math

import numpy as np

from .labels import VITALS

IMAGE_FEATURES = ["covid_logit_mean", "covid_logit_max", "b_lines_share", "b_lines_mean", "severity_max",
                  "lung_score_share", "consolidation_max", "effusion_max", "bilateral"]
B, CONS, EFF = 1, 2, 3


def _logit(p: float) -> float:
    p = min(max(p, 1e-4), 1 - 1e-4)
    return math.log(p / (1 - p))


def image_features(zones: list[dict], b_threshold: float) -> list[float]:
    """`zones`: per video {"zone", "covid_prob", "findings"[5], "expected_severity"}."""
    merged: dict[str, list[float]] = {}
    for i, z in enumerate(zones):
        key = z["zone"].upper() or f"#{i}"  # an unknown zone is its own area
        row = [_logit(z["covid_prob"]), z["findings"][B], z["findings"][CONS], z["findings"][EFF], z["expected_severity"]]
        merged[key] = row if key not in merged else [max(a, b) for a, b in zip(merged[key], row)]
    if not merged:
        raise ValueError("a patient needs at least one video")
    rows = list(merged.values())
    n = len(rows)
    col = lambda j: [r[j] for r in rows]  # noqa: E731
    side = lambda s: [r[1] for k, r in merged.items() if k.upper().startswith(s)]  # noqa: E731
    left, right = side("L"), side("R")
    return [
        sum(col(0)) / n,
        max(col(0)),
        sum(1 for v in col(1) if v >= b_threshold) / n,
        sum(col(1)) / n,
        max(col(4)),
        sum(col(4)) / (3 * n),
        max(col(2)),
        max(col(3)),
        min(max(left), max(right)) if left and right else 0.0,
    ]


def vitals_features(v: dict | None) -> list[float | None]:
    v = v or {}
    return [v.get(k) for k in VITALS]


class Logistic:
    """Standardised L2 logistic regression (Newton steps; tiny data)."""

    def __init__(self, l2: float = 1.0):
        self.l2 = l2

    def fit(self, X: np.ndarray, y: np.ndarray) -> "Logistic":
        X = np.asarray(X, dtype=np.float64)
        self.mean = np.nanmean(X, axis=0)
        self.mean = np.where(np.isnan(self.mean), 0.0, self.mean)
        Z = self._std_fit(X)
        n, d = Z.shape
        A = np.hstack([Z, np.ones((n, 1))])
        w = np.zeros(d + 1)
        reg = np.full(d + 1, self.l2)
        reg[-1] = 0.0
        for _ in range(50):
            p = 1 / (1 + np.exp(-A @ w))
            g = A.T @ (p - y) + reg * w
            H = A.T @ (A * (p * (1 - p))[:, None]) + np.diag(reg + 1e-9)
            step = np.linalg.solve(H, g)
            w -= step
            if np.abs(step).max() < 1e-8:
                break
        self.weights, self.bias = w[:-1], float(w[-1])
        return self

    def _std_fit(self, X):
        Xf = np.where(np.isnan(X), self.mean, X)
        sd = Xf.std(axis=0)
        self.scale = np.where(sd > 1e-9, sd, 1.0)
        return (Xf - self.mean) / self.scale

    def predict(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        Z = (np.where(np.isnan(X), self.mean, X) - self.mean) / self.scale
        return 1 / (1 + np.exp(-(Z @ self.weights + self.bias)))

    def to_json(self, features: list[str]) -> dict:
        return {"features": features, "mean": [float(v) for v in self.mean], "scale": [float(v) for v in self.scale],
                "weights": [float(v) for v in self.weights], "bias": self.bias}


def as_matrix(rows: list[list[float | None]]) -> np.ndarray:
    return np.array([[np.nan if v is None else float(v) for v in r] for r in rows], dtype=np.float64)


def vitals_from_sidecar(v: dict) -> dict:
    """The clinic's `vitals.json` (README, "Clinic vitals") -> the combiner's vitals."""
    sym = set(v.get("symptoms") or [])
    sex = v.get("sex")
    has_sym = "symptoms" in v
    return {
        "age": v.get("age_years"),
        "sex_male": None if sex is None else (1.0 if sex == "m" else 0.0),
        "spo2": v.get("spo2"),
        "respiratory_rate": v.get("respiratory_rate"),
        "pulse": v.get("pulse"),
        "temperature": v.get("temperature_c"),
        "fever": (1.0 if "fever" in sym else 0.0) if has_sym else None,
        "cough": (1.0 if "cough" in sym else 0.0) if has_sym else None,
        "dyspnea": (1.0 if "dyspnea" in sym else 0.0) if has_sym else None,
    }

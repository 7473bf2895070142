"""Temperatures and operating points, always fitted on out-of-fold predictions of the
training patients only (never on the patients they are evaluated on)."""
from __future__ import annotations

import math

import numpy as np

from ..data import NOT_COVID
from .pooling import sigmoid, softmax

GRID = np.exp(np.linspace(math.log(0.25), math.log(40.0), 120))


def class_temperature(logits: np.ndarray, target: np.ndarray) -> float:
    def nll(t):
        logp = np.log(softmax(logits / t) + 1e-12)
        known = target >= 0
        v = -logp[known, target[known]].sum()
        part = target == NOT_COVID
        v -= np.log(np.exp(logp[part][:, 1:]).sum(1) + 1e-12).sum()
        return v
    return float(min(GRID, key=nll))


def severity_temperature(z: np.ndarray, target: np.ndarray) -> float:
    """`z`: latent minus the cut-points [N, 3]; target 0..3."""
    y = (target[:, None] >= np.arange(1, 4)[None]).astype(np.float64)

    def nll(t):
        p = np.clip(sigmoid(z / t), 1e-9, 1 - 1e-9)
        return -(y * np.log(p) + (1 - y) * np.log(1 - p)).sum()
    return float(min(GRID, key=nll))


def binary_temperature(logit: np.ndarray, y: np.ndarray) -> float:
    if len(y) == 0 or y.min() == y.max():
        return 1.0

    def nll(t):
        p = np.clip(sigmoid(logit / t), 1e-9, 1 - 1e-9)
        return -(y * np.log(p) + (1 - y) * np.log(1 - p)).sum()
    return float(min(GRID, key=nll))


def threshold_for_sensitivity(y: np.ndarray, s: np.ndarray, sensitivity: float) -> float:
    """The highest threshold whose sensitivity on (y, s) is at least `sensitivity`."""
    pos = np.sort(s[y == 1])[::-1]
    if len(pos) == 0:
        return 0.5
    k = int(math.ceil(sensitivity * len(pos)))
    return float(pos[min(k, len(pos)) - 1])

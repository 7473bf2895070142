"""Nested, patient-grouped cross-validation of the v2 recipe on cached backbone features.

For every outer fold: heads trained on the training patients; temperatures, the video and
patient operating points and the patient combiners fitted on *inner* out-of-fold predictions
of those same training patients; then applied, frozen, to the held-out patients."""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import calibrate as C
from . import heads as H
from . import patient as P
from .labels import DATASETS, FINDINGS, Video, covid_blues_patients, covid_blues_videos, pocus_videos
from .pooling import calibrate as calibrate_video
from .pooling import pool_raw

SENSITIVITY = 0.85
UNCERTAIN_SHARE = 0.9
B = FINDINGS.index("b_lines")


@dataclass
class Data:
    videos: list[Video]
    feats: list[np.ndarray]
    patients: dict  # COVID-BLUES pid -> labels.Patient


BANDS = 3


def band_means(maps: np.ndarray, bands: int = BANDS) -> np.ndarray:
    """[frames, C, H, W] -> [frames, bands * C]: the mean of each horizontal band (depth
    below the probe), so a head can weigh the pleural line and the deep field differently."""
    h = maps.shape[2]
    edges = [round(b * h / bands) for b in range(bands + 1)]
    return np.concatenate([maps[:, :, a:z].astype(np.float32).mean(axis=(2, 3)) for a, z in zip(edges, edges[1:])], axis=1)


def parse_tap(tap: str) -> list[tuple[int, int]]:
    """"bands11+bands12" -> [(11, BANDS), (12, BANDS)]; "gap12" -> [(12, 1)]."""
    out = []
    for t in tap.split("+"):
        if t.startswith("gap"):
            out.append((int(t[3:]), 1))
        elif t.startswith("bands"):
            out.append((int(t[5:]), BANDS))
        else:
            raise ValueError(f"unknown feature tap {t!r}")
    return out


def features_of(npz, tap: str) -> np.ndarray:
    """`tap`: "gap<depth>" (global mean) or "bands<depth>" (band means) of that block's
    output, or several joined by "+" (concatenated)."""
    if "+" in tap:
        return np.concatenate([features_of(npz, t) for t in tap.split("+")], axis=1)
    if tap.startswith("gap"):
        return npz[tap]
    if tap.startswith("bands"):
        return band_means(npz["map" + tap[5:]])
    raise ValueError(f"unknown feature tap {tap!r}")


def load(data_root: Path, cache: Path, tap: str) -> Data:
    vids = covid_blues_videos(data_root / "covid-blues") + pocus_videos(data_root / "pocus")
    keep, feats = [], []
    for v in vids:
        f = cache / f"{v.dataset}__{v.item_id}.npz"
        if f.exists():
            keep.append(v)
            with np.load(f) as z:
                feats.append(features_of(z, tap))
    return Data(keep, feats, covid_blues_patients(data_root / "covid-blues"))


def folds(videos: list[Video], k: int, seed: int) -> np.ndarray:
    """Stratified group k-fold: a patient (or POCUS source patient) lands in one fold."""
    groups: dict[str, list[int]] = {}
    for i, v in enumerate(videos):
        groups.setdefault(v.group, []).append(i)
    strata: dict[tuple, list[str]] = {}
    for g, ix in groups.items():
        v = videos[ix[0]]
        strata.setdefault((v.dataset, v.pcr if v.dataset == "covid-blues" else v.cls), []).append(g)
    rng, out, offset = random.Random(seed), np.zeros(len(videos), dtype=int), 0
    for key in sorted(strata):
        gs = sorted(strata[key])
        rng.shuffle(gs)
        for i, g in enumerate(gs):
            out[groups[g]] = (i + offset) % k
        offset += len(gs)
    return out


def _labels(d: Data, ix):
    vs = [d.videos[i] for i in ix]
    return ([d.feats[i] for i in ix], np.array([v.cls for v in vs]), np.array([v.severity for v in vs]),
            np.array([v.findings for v in vs]), np.array([DATASETS.index(v.dataset) for v in vs]))


def _predict(d: Data, m: H.Heads, ix) -> list[dict]:
    cuts = m.cuts().detach().numpy()
    out = []
    for i, raw in zip(ix, H.predict_raw(m, [d.feats[j] for j in ix])):
        pooled = pool_raw(raw["attention"], raw["class_logits"], raw["severity_latent"], raw["finding_logits"])
        pooled["cuts"] = cuts[DATASETS.index(d.videos[i].dataset)]
        pooled["raw"] = raw
        out.append(pooled)
    return out


def train_masks(d: Data, masks: np.ndarray, seed: int, hp: dict) -> list[H.Heads]:
    f, c, s, fi, ds = _labels(d, np.arange(len(d.videos)))
    return H.train_many(f, c, s, fi, ds, masks, seed, **hp)


@dataclass
class Fitted:
    cal: dict
    video_threshold: float
    image: P.Logistic
    image_threshold: float
    vitals: P.Logistic
    vitals_threshold: float
    finding_thresholds: list = field(default_factory=lambda: [0.5] * 5)
    uncertainty_flag: float = 0.9


def _calibrated(pooled: dict, cal: dict) -> dict:
    return calibrate_video(pooled, cal, pooled["cuts"])


def _patient_rows(d: Data, ix, outs, fitted_b: float):
    """COVID-BLUES patients among `ix`: (pids, image features, vitals features, PCR)."""
    zones: dict[str, list] = {}
    for i, o in zip(ix, outs):
        v = d.videos[i]
        if v.dataset == "covid-blues":
            zones.setdefault(v.group[3:], []).append(
                {"zone": v.zone, "covid_prob": float(o["class_probs"][0]), "findings": list(map(float, o["findings"])),
                 "expected_severity": o["expected_severity"]})
    pids = sorted(zones)
    img = [P.image_features(zones[p], fitted_b) for p in pids]
    vit = [img_row + P.vitals_features(d.patients[p].vitals) for p, img_row in zip(pids, img)]
    y = np.array([d.patients[p].pcr for p in pids])
    return pids, P.as_matrix(img), P.as_matrix(vit), y


def _loo(X, y, l2):
    return np.array([P.Logistic(l2).fit(np.delete(X, i, 0), np.delete(y, i)).predict(X[i:i + 1])[0]
                     for i in range(len(y))])


def fit_calibration(d: Data, ix, pooled: list[dict], hp_patient: dict) -> Fitted:
    vs = [d.videos[i] for i in ix]
    logits = np.array([p["class_logits"] for p in pooled])
    cal = {"class_temperature": C.class_temperature(logits, np.array([v.cls for v in vs]))}
    sev_ix = [k for k, v in enumerate(vs) if v.severity >= 0]
    z = np.array([pooled[k]["severity_latent"] - pooled[k]["cuts"] for k in sev_ix])
    cal["severity_temperature"] = C.severity_temperature(z, np.array([vs[k].severity for k in sev_ix]))
    ft = []
    for j in range(len(FINDINGS)):
        lab = [(pooled[k]["finding_logits"][j], vs[k].findings[j]) for k in range(len(vs)) if vs[k].findings[j] >= 0]
        ft.append(C.binary_temperature(np.array([a for a, _ in lab]), np.array([b for _, b in lab], dtype=float)))
    cal["finding_temperature"] = ft
    outs = [_calibrated(p, cal) for p in pooled]
    # video operating point: COVID-looking videos (refined target) found at >= SENSITIVITY
    cov = [(o["class_probs"][0], v.cls == 0) for o, v in zip(outs, vs) if v.dataset == "covid-blues" and v.cls != -1]
    vt = C.threshold_for_sensitivity(np.array([b for _, b in cov], dtype=int), np.array([a for a, _ in cov]), SENSITIVITY)
    # "model uncertain" flags the most uncertain tenth of videos
    cp = np.array([o["class_probs"] for o in outs])
    unc = -(cp * np.log(np.clip(cp, 1e-12, None))).sum(1) / np.log(3)
    uflag = float(np.quantile(unc, UNCERTAIN_SHARE))
    _, Xi, Xv, y = _patient_rows(d, ix, outs, 0.5)
    l2 = hp_patient["l2"]
    it = C.threshold_for_sensitivity(y, _loo(Xi, y, l2), SENSITIVITY)
    vt2 = C.threshold_for_sensitivity(y, _loo(Xv, y, l2), SENSITIVITY)
    return Fitted(cal, vt, P.Logistic(l2).fit(Xi, y), it, P.Logistic(l2).fit(Xv, y), vt2, uncertainty_flag=uflag)


def run_seed(d: Data, seed: int, hp: dict, hp_patient: dict, k: int = 5, inner_k: int = 4) -> dict:
    """Out-of-fold outputs for every video and patient of one seed's outer k-fold. The
    outer and inner models of every fold train together in one batched run."""
    fo = folds(d.videos, k, seed)
    n = len(d.videos)
    masks, plan = [], []
    for f in range(k):
        train_ix = np.flatnonzero(fo != f)
        inner = folds([d.videos[i] for i in train_ix], inner_k, seed + 1000 + f)
        for g in range(inner_k):
            m = np.zeros(n, dtype=bool)
            m[train_ix[inner != g]] = True
            masks.append(m)
            plan.append((f, g, train_ix[inner == g]))
        m = np.zeros(n, dtype=bool)
        m[train_ix] = True
        masks.append(m)
        plan.append((f, None, np.flatnonzero(fo == f)))
    models = train_masks(d, np.array(masks), seed, hp)
    video_out: dict[int, dict] = {}
    patient_out: dict[str, dict] = {}
    fold_models = []
    for f in range(k):
        train_ix = np.flatnonzero(fo != f)
        pos = {int(i): j for j, i in enumerate(train_ix)}
        pooled_inner: list = [None] * len(train_ix)
        for model, (ff, g, test) in zip(models, plan):
            if ff == f and g is not None:
                for i, o in zip(test, _predict(d, model, test)):
                    pooled_inner[pos[int(i)]] = o
        sub = Data([d.videos[i] for i in train_ix], [d.feats[i] for i in train_ix], d.patients)
        fitted = fit_calibration(sub, np.arange(len(train_ix)), pooled_inner, hp_patient)
        (model, (_, _, test_ix)), = [(m_, p) for m_, p in zip(models, plan) if p[0] == f and p[1] is None]
        cal_outs = [_calibrated(o, fitted.cal) for o in _predict(d, model, test_ix)]
        fold_models.append((model, fitted))
        for i, c in zip(test_ix, cal_outs):
            video_out[int(i)] = {**c, "covid_flag": bool(c["class_probs"][0] >= fitted.video_threshold), "fold": f}
        pids, Xi, Xv, y = _patient_rows(d, test_ix, cal_outs, 0.5)
        pi, pv = fitted.image.predict(Xi), fitted.vitals.predict(Xv)
        for p, a, b in zip(pids, pi, pv):
            patient_out[p] = {"image": float(a), "vitals": float(b), "image_flag": bool(a >= fitted.image_threshold),
                              "vitals_flag": bool(b >= fitted.vitals_threshold), "fold": f,
                              "image_threshold": fitted.image_threshold, "vitals_threshold": fitted.vitals_threshold}
    return {"videos": video_out, "patients": patient_out, "fold_models": fold_models, "folds": fo}

"""Metrics of the out-of-fold outputs, with 95 % patient-bootstrap intervals."""
from __future__ import annotations

import numpy as np

from .. import metrics as M
from .cv import Data
from .labels import FINDINGS


def _ci(fn, groups, n=1000):
    lo, hi = M.bootstrap(fn, groups, n=n)
    return [round(lo, 3), round(hi, 3)]


def _ranks(v: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank), as lab/src/metrics.rs does."""
    order = np.argsort(v, kind="stable")
    r = np.empty(len(v))
    i = 0
    while i < len(v):
        j = i
        while j + 1 < len(v) and v[order[j + 1]] == v[order[i]]:
            j += 1
        r[order[i:j + 1]] = (i + j) / 2
        i = j + 1
    return r


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = _ranks(np.asarray(a, float)), _ranks(np.asarray(b, float))
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def calibration_slope(y: np.ndarray, p: np.ndarray) -> float:
    from .patient import Logistic

    lg = np.log(np.clip(p, 1e-4, 1 - 1e-4) / (1 - np.clip(p, 1e-4, 1 - 1e-4)))
    m = Logistic(l2=0.0).fit(lg[:, None], y)
    return float(m.weights[0] / m.scale[0])


def covid_blues(d: Data, out: dict, ci: bool = True) -> dict:
    vids = [(i, v) for i, v in enumerate(d.videos) if v.dataset == "covid-blues" and i in out["videos"]]
    pats = out["patients"]
    pids = sorted(pats)
    y = np.array([d.patients[p].pcr for p in pids])
    g = np.array(pids)
    r: dict = {"patients": len(pids), "videos": len(vids)}
    for kind in ("image", "vitals"):
        s = np.array([pats[p][kind] for p in pids])
        f = np.array([pats[p][f"{kind}_flag"] for p in pids])
        sens = float(f[y == 1].mean())
        spec = float(1 - f[y == 0].mean())
        r[f"patient_auc_{kind}"] = M.auc(y, s)
        r[f"patient_sensitivity_{kind}"] = sens
        r[f"patient_specificity_{kind}"] = spec
        r[f"patient_balanced_accuracy_{kind}"] = (sens + spec) / 2
        r[f"patient_brier_{kind}"] = float(((s - y) ** 2).mean())
        r[f"patient_calibration_slope_{kind}"] = calibration_slope(y, s)
        if ci:
            r[f"patient_auc_{kind}_ci"] = _ci(lambda idx: M.auc(y[idx], s[idx]), g)
            r[f"patient_sensitivity_{kind}_ci"] = _ci(lambda idx: f[idx][y[idx] == 1].mean() if (y[idx] == 1).any() else np.nan, g)
            r[f"patient_specificity_{kind}_ci"] = _ci(lambda idx: 1 - f[idx][y[idx] == 0].mean() if (y[idx] == 0).any() else np.nan, g)
            r[f"patient_balanced_accuracy_{kind}_ci"] = _ci(
                lambda idx: (f[idx][y[idx] == 1].mean() + 1 - f[idx][y[idx] == 0].mean()) / 2
                if len(set(y[idx])) == 2 else np.nan, g)
    # B-lines per video
    bl = [(out["videos"][i]["findings"][1], v.findings[1], v.group) for i, v in vids if v.findings[1] >= 0]
    by, bs, bg = np.array([b for _, b, _ in bl]), np.array([a for a, _, _ in bl]), np.array([c for _, _, c in bl])
    r["video_b_lines_auc"] = M.auc(by, bs)
    al = [(out["videos"][i]["findings"][0], v.findings[0]) for i, v in vids if v.findings[0] >= 0]
    r["video_a_lines_auc"] = M.auc(np.array([b for _, b in al]), np.array([a for a, _ in al]))
    sv = [(out["videos"][i]["severity"], v.severity, out["videos"][i]["expected_severity"]) for i, v in vids if v.severity >= 0]
    sy, sp = np.array([b for _, b, _ in sv]), np.array([a for a, _, _ in sv])
    r["severity_qwk"] = M.qwk(sy, sp)
    r["severity_macro_f1"] = M.macro_f1(sy, sp, 4)
    r["severity_confusion"] = M.confusion(sy, sp, 4).tolist()
    # patient lung score: sum over zones of the worst severity in the zone
    true_ls, pred_ls = {}, {}
    for i, v in vids:
        if v.severity < 0:
            continue
        p = v.group[3:]
        tz, pz = true_ls.setdefault(p, {}), pred_ls.setdefault(p, {})
        tz[v.zone] = max(tz.get(v.zone, 0), v.severity)
        pz[v.zone] = max(pz.get(v.zone, 0.0), out["videos"][i]["expected_severity"])
    lp = sorted(true_ls)
    r["patient_lung_score_spearman"] = spearman(np.array([sum(true_ls[p].values()) for p in lp]),
                                                np.array([sum(pred_ls[p].values()) for p in lp]))
    # video COVID calibration against the refined per-video target where it is known
    cv_ = [(out["videos"][i]["class_probs"][0], 1 if v.cls == 0 else 0) for i, v in vids if v.cls != -1]
    r["video_covid_ece"] = M.ece(np.array([b for _, b in cv_]), np.array([a for a, _ in cv_]))
    pcr = np.array([v.pcr for _, v in vids])
    pv = np.array([out["videos"][i]["class_probs"][0] for i, _ in vids])
    r["video_covid_auc_vs_pcr"] = M.auc(pcr, pv)
    if ci:
        r["video_b_lines_auc_ci"] = _ci(lambda idx: M.auc(by[idx], bs[idx]), bg)
        svg = np.array([v.group for i, v in vids if v.severity >= 0])
        r["severity_qwk_ci"] = _ci(lambda idx: M.qwk(sy[idx], sp[idx]), svg)
        r["severity_macro_f1_ci"] = _ci(lambda idx: M.macro_f1(sy[idx], sp[idx], 4), svg)
    return r


def pocus(d: Data, out: dict, ci: bool = True) -> dict:
    vids = [(i, v) for i, v in enumerate(d.videos) if v.dataset == "pocus" and i in out["videos"]]
    y = np.array([v.cls for _, v in vids])
    p = np.array([int(np.argmax(out["videos"][i]["class_probs"])) for i, _ in vids])
    g = np.array([v.group for _, v in vids])
    r = {"videos": len(vids), "balanced_accuracy": M.balanced_accuracy(y, p, 3), "macro_f1": M.macro_f1(y, p, 3),
         "confusion": M.confusion(y, p, 3).tolist()}
    for j, name in enumerate(FINDINGS):
        lab = [(out["videos"][i]["findings"][j], v.findings[j]) for i, v in vids if v.findings[j] >= 0]
        if lab:
            r[f"{name}_auc"] = M.auc(np.array([b for _, b in lab]), np.array([a for a, _ in lab]))
    if ci:
        r["balanced_accuracy_ci"] = _ci(lambda idx: M.balanced_accuracy(y[idx], p[idx], 3), g)
    return r

"""Cross-validated metrics from out-of-fold predictions, with patient-level bootstrap CIs."""
from __future__ import annotations

import numpy as np

from . import data as D
from . import metrics as M


def _video_table(items, preds):
    rows = []
    for it in items:
        if it.item_id not in preds:
            continue
        v = M.aggregate_video(*preds[it.item_id])
        rows.append((it, v))
    return rows


def _ci(fn, groups):
    lo, hi = M.bootstrap(fn, groups)
    return [round(lo, 3), round(hi, 3)]


def covid_blues_report(rows) -> dict:
    rows = [(it, v) for it, v in rows if it.dataset == "covid-blues"]
    if not rows:
        return {}
    # patient level: mean of the videos' COVID probability
    pats: dict[str, list] = {}
    for it, v in rows:
        pats.setdefault(it.group, []).append((it, v))
    pids = sorted(pats)
    y = np.array([1 if pats[p][0][0].cls == 0 else 0 for p in pids])
    s = np.array([np.mean([v["class_probs"][0] for _, v in pats[p]]) for p in pids])
    g = np.array(pids)
    ix = np.arange(len(pids))
    b = M.binary_at(y, s)
    out = {
        "patients": len(pids),
        "patient_covid_auc": M.auc(y, s),
        "patient_covid_auc_ci": _ci(lambda i: M.auc(y[i], s[i]), g),
        **{f"patient_{k}": val for k, val in b.items()},
        "patient_balanced_accuracy_ci": _ci(lambda i: M.binary_at(y[i], s[i])["balanced_accuracy"], g),
        "patient_sensitivity_ci": _ci(lambda i: M.binary_at(y[i], s[i])["sensitivity"], g),
        "patient_specificity_ci": _ci(lambda i: M.binary_at(y[i], s[i])["specificity"], g),
        "patient_covid_ece": M.ece(y, s),
    }
    vy = np.array([1 if it.cls == 0 else 0 for it, _ in rows])
    vs = np.array([v["class_probs"][0] for _, v in rows])
    vg = np.array([it.group for it, _ in rows])
    out["video_covid_auc"] = M.auc(vy, vs)
    out["video_covid_ece"] = M.ece(vy, vs)
    out["video_covid_ece_ci"] = _ci(lambda i: M.ece(vy[i], vs[i]), vg)
    sv = [(it, v) for it, v in rows if it.severity >= 0]
    sy = np.array([it.severity for it, _ in sv])
    sp = np.array([v["severity"] for _, v in sv])
    sg = np.array([it.group for it, _ in sv])
    out.update(
        {
            "videos": len(rows),
            "severity_videos": len(sv),
            "severity_qwk": M.qwk(sy, sp),
            "severity_qwk_ci": _ci(lambda i: M.qwk(sy[i], sp[i]), sg),
            "severity_macro_f1": M.macro_f1(sy, sp, 4),
            "severity_macro_f1_ci": _ci(lambda i: M.macro_f1(sy[i], sp[i], 4), sg),
            "severity_accuracy": float((sy == sp).mean()),
            "severity_accuracy_ci": _ci(lambda i: float((sy[i] == sp[i]).mean()), sg),
            "severity_confusion": M.confusion(sy, sp, 4).tolist(),
        }
    )
    return out


def pocus_report(rows, subset=None) -> dict:
    rows = [(it, v) for it, v in rows if it.dataset == "pocus"]
    if subset is not None:
        rows = [(it, v) for it, v in rows if subset(it)]
    if not rows:
        return {}
    y = np.array([it.cls for it, _ in rows])
    p = np.array([int(np.argmax(v["class_probs"])) for _, v in rows])
    g = np.array([it.group for it, _ in rows])
    out = {
        "videos": len(rows),
        "balanced_accuracy": M.balanced_accuracy(y, p, 3),
        "balanced_accuracy_ci": _ci(lambda i: M.balanced_accuracy(y[i], p[i], 3), g),
        "macro_f1": M.macro_f1(y, p, 3),
        "accuracy": float((y == p).mean()),
        "confusion": M.confusion(y, p, 3).tolist(),
    }
    sv = [(it, v) for it, v in rows if it.severity >= 0]
    if sv:
        sy = np.array([it.severity for it, _ in sv])
        sp = np.array([v["severity"] for _, v in sv])
        out.update({"severity_videos": len(sv), "severity_qwk": M.qwk(sy, sp), "severity_macro_f1": M.macro_f1(sy, sp, 4)})
    return out


RUST_DECODABLE = (".mp4", ".mov", ".gif", ".png", ".jpg", ".jpeg", ".bmp")


def evaluate_fold_predictions(items, preds) -> dict:
    rows = _video_table(items, preds)
    cb = covid_blues_report(rows)
    po = pocus_report(rows)
    po_rust = pocus_report(rows, lambda it: it.path.lower().endswith(RUST_DECODABLE))
    per_item = [
        {
            "item": f"{it.dataset}/{it.item_id}",
            "fold": it.fold,
            "label": it.cls,
            "severity_label": it.severity,
            "class_probs": [round(float(x), 5) for x in v["class_probs"]],
            "severity": v["severity"],
        }
        for it, v in rows
    ]
    summary = {
        "covid_blues": {k: v for k, v in cb.items() if not k.endswith("confusion")},
        "pocus": {k: v for k, v in po.items() if k != "confusion"},
        "pocus_rust_formats": {k: v for k, v in po_rust.items() if k != "confusion"},
    }
    return {"summary": summary, "covid_blues": cb, "pocus": po, "pocus_rust_formats": po_rust, "items": per_item}


def write_report(report: dict, meta: dict, path) -> None:
    def f(x):
        return f"{x:.3f}" if isinstance(x, float) else str(x)

    lines = ["# Cross-validation report (generated by training/pleura_train/train.py)", ""]
    lines.append(f"Model {meta['name']} {meta['version']}, {meta['parameters']} parameters, "
                 f"{meta['macs_per_frame'] / 1e6:.1f} M MACs per frame.")
    for section in ("covid_blues", "pocus", "pocus_rust_formats"):
        lines += ["", f"## {section}", "", "| metric | value | 95% CI |", "|---|---|---|"]
        sec = report[section]
        for k, v in sec.items():
            if k.endswith("_ci") or isinstance(v, list):
                continue
            ci = sec.get(f"{k}_ci")
            lines.append(f"| {k} | {f(v)} | {ci if ci else ''} |")
        for k, v in sec.items():
            if k.endswith("confusion"):
                lines.append(f"\n{k} (rows = truth, cols = prediction): `{v}`")
    path.write_text("\n".join(lines) + "\n")

"""Model v2: compare recipes on identical folds, cross-validate the shipped recipe over
several seeds, fit the final model, export ONNX + sidecar + report.

    python -m pleura_train.v2.features --data ../shared/data --depths 9   # once (the shipped tap)
    python -m pleura_train.v2.train --data ../shared/data --out models
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from . import cv as CV
from . import report as R
from .labels import DATASETS

HP = {"epochs": 300, "frame_weight": 0.2, "wd": 1e-2}
RECIPES = {
    "gap11": {"tap": "gap11", "hp": HP},
    "gap12": {"tap": "gap12", "hp": HP},
    "bands9": {"tap": "bands9", "hp": HP},
    "bands10": {"tap": "bands10", "hp": HP},
    "bands11": {"tap": "bands11", "hp": HP},
    "bands12": {"tap": "bands12", "hp": HP},
    "bands11+12": {"tap": "bands11+bands12", "hp": HP},
    "bands11+12-wd": {"tap": "bands11+bands12", "hp": {**HP, "wd": 1e-1}},
}
SHIPPED = "bands9"
HP_PATIENT = {"l2": 4.0}
KEY = ["patient_auc_image", "patient_sensitivity_image", "patient_specificity_image",
       "patient_balanced_accuracy_image", "patient_auc_vitals", "video_b_lines_auc", "severity_qwk",
       "severity_macro_f1", "patient_lung_score_spearman", "video_covid_ece"]


def evaluate(d: CV.Data, hp: dict, seeds: list[int], ci_seed: int | None) -> list[dict]:
    rows = []
    for s in seeds:
        t = time.time()
        out = CV.run_seed(d, s, hp, HP_PATIENT)
        ci = s == ci_seed
        rows.append({"seed": s, "covid_blues": R.covid_blues(d, out, ci), "pocus": R.pocus(d, out, ci), "out": out})
        cb = rows[-1]["covid_blues"]
        print(f"  seed {s}: " + " ".join(f"{k}={cb[k]:.3f}" for k in KEY)
              + f" pocus_ba={rows[-1]['pocus']['balanced_accuracy']:.3f} ({time.time() - t:.0f}s)", flush=True)
    return rows


def pocus_loso(d: CV.Data, hp: dict, seed: int) -> dict:
    """POCUS leave-one-source-out: every source is held out once (COVID-BLUES always trains)."""
    from .. import metrics as M

    sources = sorted({v.source for v in d.videos if v.dataset == "pocus"})
    held = [np.array([v.dataset == "pocus" and v.source == src for v in d.videos]) for src in sources]
    models = CV.train_masks(d, np.array([~h for h in held]), seed, hp)
    y, p = [], []
    for m, h in zip(models, held):
        test = np.flatnonzero(h)
        for i, o in zip(test, CV._predict(d, m, test)):
            y.append(d.videos[i].cls)
            p.append(int(np.argmax(o["class_logits"])))
    y, p = np.array(y), np.array(p)
    return {"sources": len(sources), "videos": len(y), "balanced_accuracy": M.balanced_accuracy(y, p, 3),
            "confusion": M.confusion(y, p, 3).tolist()}


def summarise(rows: list[dict]) -> dict:
    out = {}
    for part in ("covid_blues", "pocus"):
        keys = [k for k, v in rows[0][part].items() if isinstance(v, float)]
        out[part] = {k: {"mean": float(np.nanmean([r[part][k] for r in rows])),
                         "sd": float(np.nanstd([r[part][k] for r in rows])),
                         "per_seed": [round(r[part][k], 4) for r in rows]} for k in keys}
        out[part]["ci_seed0"] = {k: v for k, v in rows[0][part].items() if k.endswith("_ci") or isinstance(v, list)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--cache", type=Path, default=Path("training/cache/v2"))
    ap.add_argument("--out", type=Path, default=Path("models"))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--compare", action="store_true", help="compare every recipe on identical folds")
    ap.add_argument("--compare-seeds", type=int, default=1)
    ap.add_argument("--shipped", default=SHIPPED, choices=sorted(RECIPES))
    ap.add_argument("--no-export", action="store_true")
    ap.add_argument("--recipes", nargs="+", choices=sorted(RECIPES), help="with --compare: only these (and the shipped one)")
    a = ap.parse_args()
    seeds = list(range(a.seeds))
    results = {}
    shipped = a.shipped
    names = (list(RECIPES) if not a.recipes else [r for r in RECIPES if r in a.recipes or r == shipped]) if a.compare else [shipped]
    for name in names:
        rc = RECIPES[name]
        d = CV.load(a.data, a.cache, rc["tap"])
        print(f"recipe {name}: {len(d.videos)} videos", flush=True)
        n = len(seeds) if name == shipped else a.compare_seeds
        results[name] = evaluate(d, rc["hp"], seeds[:n] if n <= len(seeds) else list(range(n)), 0 if name == shipped else None)
    comparison = {}
    if a.compare:
        base = results[shipped]
        for name in names:
            if name == shipped:
                continue
            for k in KEY:
                diff = [r["covid_blues"][k] - b["covid_blues"][k] for r, b in zip(results[name], base)]
                comparison[f"{name} - {shipped}: {k}"] = diff
                print(f"paired {name} - {shipped}: {k} {np.mean(diff):+.3f} (per seed {np.round(diff, 3).tolist()})")
    rc = RECIPES[shipped]
    d = CV.load(a.data, a.cache, rc["tap"])
    summary = summarise(results[shipped])
    summary["paired_comparison"] = comparison
    summary["pocus_leave_one_source_out"] = pocus_loso(d, rc["hp"], 0)
    print("LOSO", summary["pocus_leave_one_source_out"], flush=True)
    summary["recipe"] = {"name": shipped, **rc, "patient": HP_PATIENT, "seeds": seeds, "datasets": DATASETS}
    (a.out / "cv").mkdir(parents=True, exist_ok=True)
    (a.out / "cv" / "metrics.json").write_text(json.dumps(summary, indent=1))
    if not a.no_export:
        from .export import export_final

        export_final(d, rc, HP_PATIENT, a.out, results[shipped][0]["out"])


if __name__ == "__main__":
    main()

"""Train LUSNet-S with patient/video-grouped k-fold CV, export ONNX, report metrics.

    python -m pleura_train.train --data ../shared/data --out models
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import data as D
from .evaluate import evaluate_fold_predictions, write_report
from .model import LusNet, count_macs, count_params, export_onnx
from .preprocess import INPUT_SIZE, preprocess_scan


def _prep_one(path: str):
    try:
        frames, n = preprocess_scan(Path(path))
        return frames.astype(np.float16), n, None
    except Exception as e:  # noqa: BLE001 - reported per item below
        return None, 0, str(e)


def prepare(items: list[D.Item], cache: Path) -> dict[str, np.ndarray]:
    cache.mkdir(parents=True, exist_ok=True)
    out, todo = {}, []
    for it in items:
        f = cache / f"{it.dataset}__{it.item_id}.npy"
        if f.exists():
            out[it.item_id] = np.load(f)
        else:
            todo.append(it)
    t = time.time()
    with ProcessPoolExecutor(2) as ex:
        for it, (frames, n, err) in zip(todo, ex.map(_prep_one, [i.path for i in todo])):
            if err:
                print(f"skip {it.item_id}: {err}")
                continue
            np.save(cache / f"{it.dataset}__{it.item_id}.npy", frames)
            out[it.item_id] = frames
    print(f"prepared {len(todo)} new items in {time.time() - t:.0f}s; {len(out)} usable")
    return out


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    b = x.shape[0]
    r = lambda lo, hi: torch.rand(b, generator=g) * (hi - lo) + lo  # noqa: E731
    ang = r(-10, 10) * math.pi / 180
    sc = r(0.85, 1.15)
    flip = torch.where(torch.rand(b, generator=g) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = torch.cos(ang) / sc * flip
    theta[:, 0, 1] = -torch.sin(ang) / sc
    theta[:, 1, 0] = torch.sin(ang) / sc * flip
    theta[:, 1, 1] = torch.cos(ang) / sc
    theta[:, 0, 2] = r(-0.08, 0.08)
    theta[:, 1, 2] = r(-0.08, 0.08)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")
    gamma = r(0.7, 1.4).view(b, 1, 1, 1)
    x = 255.0 * (x.clamp(0, 255) / 255.0) ** gamma
    return x + torch.randn(x.shape, generator=g) * 3.0


def losses(model: LusNet, x, cls, sev, cls_w, sev_w):
    cl, sl, _ = model.forward_logits(x)
    logp = F.log_softmax(cl, dim=1)
    known = cls >= 0
    lc = torch.zeros(())
    if known.any():
        lc = F.nll_loss(logp[known], cls[known], weight=cls_w, reduction="sum")
    notcov = cls == D.NOT_COVID
    if notcov.any():
        # partial label: the frame is "other pneumonia or normal", either is fine
        lc = lc - cls_w[1:].mean() * torch.logsumexp(logp[notcov][:, 1:], dim=1).sum()
    lc = lc / max(int(known.sum() + notcov.sum()), 1)
    ks = sev >= 0
    ls = torch.zeros(())
    if ks.any():
        ls = F.cross_entropy(sl[ks], sev[ks], weight=sev_w, label_smoothing=0.05)
    return lc + ls


def train_model(items, frames, epochs, seed, per_item=4, batch=64, log=""):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = LusNet()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=5e-4)
    steps_per_epoch = math.ceil(len(items) * per_item / batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs * steps_per_epoch, pct_start=0.15)
    # class weights: covid vs not-covid balanced in COVID-BLUES, 3 classes balanced in POCUS
    cls_counts = np.bincount([max(i.cls, 0) if i.cls != D.NOT_COVID else 2 for i in items], minlength=3) + 1
    cls_w = torch.tensor((cls_counts.sum() / (3 * cls_counts)) ** 0.5, dtype=torch.float32)
    sev_counts = np.bincount([i.severity for i in items if i.severity >= 0], minlength=4) + 1
    sev_w = torch.tensor((sev_counts.sum() / (4 * sev_counts)) ** 0.5, dtype=torch.float32)
    for ep in range(epochs):
        model.train()
        xs, cs, ss = [], [], []
        for it in items:
            fr = frames[it.item_id]
            pick = rng.integers(0, len(fr), size=per_item)
            xs.append(fr[pick].astype(np.float32))
            cs += [it.cls] * per_item
            ss += [it.severity] * per_item
        x_all = torch.from_numpy(np.concatenate(xs))[:, None]
        c_all, s_all = torch.tensor(cs), torch.tensor(ss)
        perm = torch.randperm(len(x_all), generator=g)
        tot, t0 = 0.0, time.time()
        for s in range(0, len(perm), batch):
            idx = perm[s : s + batch]
            loss = losses(model, augment(x_all[idx], g), c_all[idx], s_all[idx], cls_w, sev_w)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            tot += float(loss.detach()) * len(idx)
        print(f"{log} epoch {ep + 1}/{epochs} loss {tot / len(perm):.3f} ({time.time() - t0:.0f}s)", flush=True)
    model.eval()
    return model


def predict_onnx(onnx_path: Path, items, frames) -> dict:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    out = {}
    for it in items:
        x = frames[it.item_id].astype(np.float32)[:, None]
        cp, sp, unc, _ = sess.run(None, {"frames": x})
        out[it.item_id] = (cp, sp, unc)
    return out


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--out", type=Path, default=Path("models"))
    ap.add_argument("--cache", type=Path, default=Path("training/cache"))
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=18)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--only-fold", type=int, default=None, help="train one fold (debugging)")
    args = ap.parse_args()
    torch.set_num_threads(2)

    items = D.covid_blues_items(args.data / "covid-blues") + D.pocus_items(args.data / "pocus")
    D.assign_folds(items, args.folds)
    frames = prepare(items, args.cache)
    items = [i for i in items if i.item_id in frames]
    cvdir = args.out / "cv"
    cvdir.mkdir(parents=True, exist_ok=True)
    folds = {"k": args.folds, "items": {f"{i.dataset}/{i.item_id}": i.fold for i in items}}
    (cvdir / "folds.json").write_text(json.dumps(folds, indent=1, sort_keys=True))

    preds = {}
    for k in range(args.folds):
        if args.only_fold is not None and k != args.only_fold:
            continue
        tr = [i for i in items if i.fold != k]
        te = [i for i in items if i.fold == k]
        model = train_model(tr, frames, args.epochs, args.seed + k, log=f"fold {k}")
        path = cvdir / f"fold{k}.onnx"
        export_onnx(model, str(path))
        preds.update(predict_onnx(path, te, frames))
    report = evaluate_fold_predictions(items, preds)
    (cvdir / "metrics.json").write_text(json.dumps(report, indent=1))
    if args.only_fold is not None:
        print(json.dumps(report["summary"], indent=1))
        return

    model = train_model(items, frames, args.epochs, args.seed + 100, log="final")
    final = args.out / "lusnet-s.onnx"
    export_onnx(model, str(final))
    meta = {
        "name": "lusnet-s",
        "version": time.strftime("%Y.%m.%d"),
        "sha256": sha256(final),
        "input": {"name": "frames", "size": INPUT_SIZE, "max_frames": 32},
        "classes": D.CLASSES,
        "covid_threshold": 0.5,
        "parameters": count_params(model),
        "macs_per_frame": count_macs(model),
        "cv_fold_sha256": {f"fold{k}": sha256(cvdir / f"fold{k}.onnx") for k in range(args.folds)},
    }
    (args.out / "lusnet-s.json").write_text(json.dumps(meta, indent=1))
    write_report(report, meta, args.out / "cv" / "REPORT.md")
    print(json.dumps(report["summary"], indent=1))


if __name__ == "__main__":
    main()

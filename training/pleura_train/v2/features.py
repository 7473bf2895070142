"""Backbone features extracted once per video (the recipe runs on 2 CPU cores: the frozen
backbone's pooled features are computed once; heads, pooling and calibration train on them).

    python -m pleura_train.v2.features --data ../shared/data --cache training/cache/v2 [--depths 9]

Without --depths every tap the recipe comparison uses is extracted (taps 9-12).
"""
from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from ..preprocess import MAX_FRAMES, load_frames, resize_area, sample_indices
from .backbone import SCALE, SHIFT, Backbone, load_imagenet
from .labels import covid_blues_videos, pocus_videos

INPUT = 192
DEPTHS = (9, 10, 11, 12)  # feature taps compared by the recipes; the shipped net ends at one of them

_net: Backbone | None = None


def _backbone(depth: int) -> Backbone:
    global _net
    if _net is None or len(_net.blocks) < depth:
        torch.set_num_threads(1)
        _net = Backbone(depth)
        load_imagenet(_net)
        _net.eval()
    return _net


def extract(path: str, depths: tuple[int, ...] = DEPTHS) -> tuple[dict[str, np.ndarray] | None, str | None]:
    try:
        frames = load_frames(Path(path))
        if not frames:
            return None, "no frames"
        idx = sample_indices(len(frames), MAX_FRAMES)
        x = np.stack([resize_area(frames[i], INPUT) for i in idx]).astype(np.float32)
        net = _backbone(max(depths))
        taps = {}
        with torch.no_grad():
            h = net.stem(torch.from_numpy(x)[:, None] * SCALE + SHIFT)
            for d, blk in enumerate(net.blocks[:max(depths)], start=1):
                h = blk(h)
                if d in depths:
                    taps[f"gap{d}"] = h.mean(dim=(2, 3)).numpy().astype(np.float32)
                    taps[f"map{d}"] = h.numpy().astype(np.float16)  # for pooling other than global
        taps["frames"] = np.clip(np.rint(x), 0, 255).astype(np.uint8)
        taps["n_total"] = np.array(len(frames))
        return taps, None
    except Exception as e:  # noqa: BLE001 - reported per item
        return None, f"{type(e).__name__}: {e}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--cache", type=Path, default=Path("training/cache/v2"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--depths", type=int, nargs="+", default=list(DEPTHS),
                    help="taps to extract (the shipped recipe needs only its own; a cached file gains missing taps)")
    a = ap.parse_args()
    depths = tuple(sorted(a.depths))
    a.cache.mkdir(parents=True, exist_ok=True)
    videos = covid_blues_videos(a.data / "covid-blues") + pocus_videos(a.data / "pocus")

    def missing(v) -> bool:
        f = a.cache / f"{v.dataset}__{v.item_id}.npz"
        if not f.exists():
            return True
        with np.load(f) as z:
            return any(f"map{d}" not in z.files for d in depths)

    todo = [v for v in videos if missing(v)]
    t0 = time.time()
    with ProcessPoolExecutor(a.workers) as ex:
        jobs = ex.map(extract, [v.path for v in todo], [depths] * len(todo))
        for i, (v, (taps, err)) in enumerate(zip(todo, jobs)):
            if err:
                print(f"skip {v.item_id}: {err}", flush=True)
                continue
            f = a.cache / f"{v.dataset}__{v.item_id}.npz"
            if f.exists():
                with np.load(f) as old:
                    taps = {**{k: old[k] for k in old.files}, **taps}
            np.savez(f, **taps)
            if i % 20 == 0:
                print(f"{i + 1}/{len(todo)} {time.time() - t0:.0f}s", flush=True)
    print(f"extracted {len(todo)} in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()

"""Reference decoding and preprocessing. The Rust crate `pleura-inference` implements
exactly this (see inference/src/preprocess.rs); `fixtures/reference/` pins the two together."""
from __future__ import annotations

from pathlib import Path

import numpy as np

INPUT_SIZE = 112
MAX_FRAMES = 32
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp"}
VIDEO_EXTS = {".mp4", ".mov", ".avi", ".mpeg", ".mpg", ".m4v"}


def sample_indices(n: int, max_frames: int = MAX_FRAMES) -> list[int]:
    """Uniformly spaced frame indices, at most `max_frames`, centred in their bins."""
    if n <= max_frames:
        return list(range(n))
    return [int((i + 0.5) * n / max_frames) for i in range(max_frames)]


def area_weights(n_in: int, n_out: int) -> np.ndarray:
    """Row i holds the fraction of input pixel j covered by output pixel i (box filter)."""
    scale = n_in / n_out
    w = np.zeros((n_out, n_in), dtype=np.float64)
    for i in range(n_out):
        lo, hi = i * scale, (i + 1) * scale
        j0, j1 = int(np.floor(lo)), min(int(np.ceil(hi)), n_in)
        for j in range(j0, j1):
            overlap = min(hi, j + 1) - max(lo, j)
            if overlap > 0:
                w[i, j] = overlap / scale
    return w


def resize_area(gray: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    h, w = gray.shape
    return (area_weights(h, size) @ gray.astype(np.float64) @ area_weights(w, size).T).astype(np.float32)


def rgb_to_gray(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma from 8-bit RGB, as float."""
    rgb = rgb.astype(np.float64)
    return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]


def _video_gray_frames(path: Path) -> list[np.ndarray]:
    import av

    frames = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            fmt = frame.format.name
            if fmt.startswith("yuv") or fmt.startswith("yuvj") or fmt in ("gray", "nv12"):
                # Luma plane as decoded, no range conversion: the Rust side reads openh264's Y plane.
                plane = frame.planes[0]
                buf = np.frombuffer(bytes(plane), dtype=np.uint8).reshape(plane.height, plane.line_size)
                frames.append(buf[: frame.height, : frame.width].astype(np.float64))
            else:
                frames.append(rgb_to_gray(frame.to_ndarray(format="rgb24")))
    return frames


def _gif_gray_frames(path: Path) -> list[np.ndarray]:
    from PIL import Image, ImageSequence

    with Image.open(path) as im:
        return [rgb_to_gray(np.asarray(f.convert("RGB"))) for f in ImageSequence.Iterator(im)]


def _image_gray(path: Path) -> list[np.ndarray]:
    from PIL import Image

    with Image.open(path) as im:
        return [rgb_to_gray(np.asarray(im.convert("RGB")))]


def _dicom_gray_frames(path: Path) -> list[np.ndarray]:
    import pydicom

    ds = pydicom.dcmread(str(path))
    arr = ds.pixel_array
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames == 1:
        arr = arr[None]
    pi = str(ds.PhotometricInterpretation)
    if ds.SamplesPerPixel == 3:
        return [rgb_to_gray(f) if pi == "RGB" else f[..., 0].astype(np.float64) for f in arr]
    if ds.BitsStored > 8:
        arr = arr.astype(np.float64) * 255.0 / (2 ** ds.BitsStored - 1)
    out = [f.astype(np.float64) for f in arr]
    return [255.0 - f for f in out] if pi == "MONOCHROME1" else out


def load_frames(path: Path) -> list[np.ndarray]:
    """All frames of a scan as float64 gray images (0..255)."""
    ext = path.suffix.lower()
    if ext in IMAGE_EXTS:
        return _image_gray(path)
    if ext == ".gif":
        return _gif_gray_frames(path)
    if ext in VIDEO_EXTS:
        return _video_gray_frames(path)
    if ext == ".dcm":
        return _dicom_gray_frames(path)
    raise ValueError(f"unsupported format {ext!r} for {path}")


def preprocess_scan(path: Path, max_frames: int = MAX_FRAMES, size: int = INPUT_SIZE) -> tuple[np.ndarray, int]:
    """Model input for a scan: (frames [k, size, size] float32 in 0..255, total frame count)."""
    frames = load_frames(path)
    if not frames:
        raise ValueError(f"{path}: no frames decoded")
    idx = sample_indices(len(frames), max_frames)
    return np.stack([resize_area(frames[i], size) for i in idx]), len(frames)

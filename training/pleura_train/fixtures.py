"""Builds the small test fixtures shipped in `fixtures/` and their Python reference
outputs, which the Rust tests compare against.

    python -m pleura_train.fixtures --data ../shared/data --out fixtures [--model models/lusnet-s.onnx]
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np

from .metrics import aggregate_video
from .preprocess import load_frames, preprocess_scan

REF_FRAMES = 8  # the reference keeps 8 sampled frames per scan, to stay small

# (source under data/, fixture name, attribution)
COPIES = [
    ("covid-blues/lus_videos/patient_29_L2.mp4", "cb_patient29_L2.mp4",
     "COVID-BLUES (Wiedemann et al. 2025), CC BY-NC-ND 4.0, unmodified"),
    ("covid-blues/lus_videos/patient_16_R1.mp4", "cb_patient16_R1.mp4",
     "COVID-BLUES (Wiedemann et al. 2025), CC BY-NC-ND 4.0, unmodified"),
    ("pocus/pocus_videos/convex/Reg_recommendations_alines_mov1.mov", "pocus_reg_alines.mov",
     "POCUS data set (Born et al. 2021), item Reg_recommendations_alines_mov1, CC BY 4.0"),
    ("pocus/pocus_videos/convex/Cov-Atlas+(45).gif", "pocus_cov_atlas45.gif",
     "POCUS data set (Born et al. 2021), The POCUS Atlas, CC BY-NC 4.0"),
    ("pocus/pocus_images/convex/Cov_Oliviera_2020_Fig4A.jpg", "pocus_cov_oliviera_fig4a.jpg",
     "POCUS data set (Born et al. 2021), Oliveira et al. 2020, CC BY 4.0"),
    ("pocus/pocus_images/convex/Pneu_emdocs_1.png", "pocus_pneu_emdocs1.png",
     "POCUS data set (Born et al. 2021), emDocs, CC BY 4.0"),
]


def write_derived(data: Path, out: Path) -> list[tuple[str, str]]:
    """A BMP and two DICOMs holding a few frames of a COVID-BLUES video (the licence allows
    reproducing a subset of frames for tests, with attribution)."""
    import av
    import pydicom
    from PIL import Image
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    src = data / "covid-blues/lus_videos/patient_11_L1.mp4"
    with av.open(str(src)) as c:
        rgb = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)][:40:5]
    attrib = "frames of COVID-BLUES patient_11_L1.mp4 (Wiedemann et al. 2025), CC BY-NC-ND 4.0"
    Image.fromarray(rgb[0]).convert("L").save(out / "cb_frame.bmp")

    def dicom(name: str, frames: list[np.ndarray], color: bool) -> None:
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.3.1"  # US multi-frame
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(out / name), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.Modality = "US"
        ds.Rows, ds.Columns = frames[0].shape[:2]
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
        ds.PixelRepresentation = 0
        if color:
            ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
            arr = np.stack(frames)
        else:
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            arr = np.stack([np.asarray(Image.fromarray(f).convert("L")) for f in frames])
        if len(frames) > 1:
            ds.NumberOfFrames = len(frames)
        ds.PixelData = arr.astype(np.uint8).tobytes()
        ds.save_as(str(out / name), enforce_file_format=True)

    dicom("cb_multiframe.dcm", rgb[:6], color=False)
    dicom("cb_single_rgb.dcm", rgb[6:7], color=True)
    return [("cb_frame.bmp", attrib), ("cb_multiframe.dcm", attrib), ("cb_single_rgb.dcm", attrib)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--out", type=Path, default=Path("fixtures"))
    ap.add_argument("--model", type=Path, default=None, help="also record the model's outputs")
    args = ap.parse_args()
    scans, ref = args.out / "scans", args.out / "reference"
    scans.mkdir(parents=True, exist_ok=True)
    ref.mkdir(parents=True, exist_ok=True)
    sources = []
    for src, name, attrib in COPIES:
        shutil.copyfile(args.data / src, scans / name)
        sources.append((name, attrib))
    sources += write_derived(args.data, scans)

    sess = None
    if args.model:
        import onnxruntime as ort

        sess = ort.InferenceSession(str(args.model), providers=["CPUExecutionProvider"])
    lines = ["# Test fixtures", "", "Small real scans for the tests, with their sources and licences.",
             "Research and non-commercial use only.", "", "| file | source |", "|---|---|"]
    for name, attrib in sources:
        frames, total = preprocess_scan(scans / name, REF_FRAMES)
        frames.astype("<f4").tofile(ref / f"{name}.f32")
        entry = {"file": name, "frames_total": total, "frames": int(frames.shape[0]), "size": int(frames.shape[1])}
        h, w = load_frames(scans / name)[0].shape
        entry["width"], entry["height"] = int(w), int(h)
        if sess is not None:
            full, _ = preprocess_scan(scans / name)
            cp, sp, unc, _ = sess.run(None, {"frames": full[:, None].astype(np.float32)})
            v = aggregate_video(cp, sp, unc)
            entry["model"] = {
                "class_probs": [float(x) for x in v["class_probs"]],
                "severity_probs": [float(x) for x in v["severity_probs"]],
                "severity": v["severity"],
                "uncertainty": v["uncertainty"],
            }
        (ref / f"{name}.json").write_text(json.dumps(entry, indent=1))
        lines.append(f"| scans/{name} | {attrib} |")
    lines += ["", "`reference/` holds the Python pipeline's preprocessed frames (`.f32`, little-endian,",
              f"{REF_FRAMES} sampled frames × 112 × 112) and, where generated with `--model`, its",
              "video-level outputs: `training/pleura_train/fixtures.py` regenerates them."]
    (args.out / "README.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

"""Builds the small test fixtures shipped in `fixtures/` and their Python reference
outputs, which the Rust tests compare against.

    python -m pleura_train.fixtures --data ../shared/data --out fixtures [--model models/pleura-lite.onnx]
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


def _video_outputs(outs: dict, meta: dict) -> dict:
    """The video-level reading the Rust side must reproduce (inference/tests/reference.rs)."""
    if "attention" in outs:
        from .v2 import pooling

        v = pooling.video(outs["attention"], outs["class_logits"], outs["severity_latent"], outs["finding_logits"],
                          meta["calibration"], meta["severity_cutpoints"])
        cp = v["class_probs"]
        unc = float(-(cp * np.log(np.clip(cp, 1e-12, None))).sum() / np.log(3))
        return {"class_probs": [float(x) for x in cp], "severity_probs": [float(x) for x in v["severity_probs"]],
                "severity": v["severity"], "uncertainty": unc, "findings": [float(x) for x in v["findings"]]}
    v = aggregate_video(outs["class_probs"], outs["severity_probs"], outs["uncertainty"])
    return {"class_probs": [float(x) for x in v["class_probs"]],
            "severity_probs": [float(x) for x in v["severity_probs"]],
            "severity": v["severity"], "uncertainty": v["uncertainty"]}


def write_pooling_cases(meta: dict, meta_path: Path, out: Path, seed: int = 5) -> None:
    """Random frames -> video and zones -> patient cases, with the Python rule's answers."""
    from .v2 import patient as P
    from .v2 import pooling

    rng = np.random.default_rng(seed)
    cases = []
    for n in (1, 2, 7, 32):
        att = rng.normal(0, 2, n)
        cl, sl, fl = rng.normal(0, 3, (n, 3)), rng.normal(0, 2, n), rng.normal(0, 3, (n, 5))
        v = pooling.video(att, cl, sl, fl, meta["calibration"], meta["severity_cutpoints"])
        cases.append({"attention": att.tolist(), "class_logits": cl.tolist(), "severity_latent": sl.tolist(),
                      "finding_logits": fl.tolist(),
                      "expect": {"class_probs": v["class_probs"].tolist(), "severity_probs": v["severity_probs"].tolist(),
                                 "severity": v["severity"], "findings": v["findings"].tolist()}})
    pm = meta["patient"]
    b_thr = meta["finding_thresholds"][1]
    patients = []
    zone_sets = [["L1"], ["L1", "l1", "R2"], ["L1", "L2", "L3", "R1", "R2", "R3"], ["R1", "R3"], ["", "", "L2"]]
    vit_sets = [None, {"age_years": 67, "sex": "m", "spo2": 91, "respiratory_rate": 24, "pulse": 104,
                       "temperature_c": 38.4, "symptoms": ["fever", "cough"]},
                {"age_years": 34, "sex": "f", "symptoms": ["dyspnea"]}, {"spo2": 97}, None]
    for zs, vit in zip(zone_sets, vit_sets):
        zones = []
        for z in zs:
            sp = rng.dirichlet(np.ones(4))
            zones.append({"zone": z, "covid_prob": float(rng.uniform(0.02, 0.98)),
                          "findings": rng.uniform(0, 1, 5).tolist(), "severity_probs": sp.tolist()})
        rows = [{"zone": z["zone"], "covid_prob": z["covid_prob"], "findings": z["findings"],
                 "expected_severity": float(sum(z["severity_probs"][k] * k for k in range(4)))} for z in zones]
        img = P.image_features(rows, b_thr)
        expect_image = float(_logistic(pm["image"], img))
        expect_vitals = None
        if vit is not None:
            expect_vitals = float(_logistic(pm["vitals"], img + P.vitals_features(P.vitals_from_sidecar(vit))))
        patients.append({"zones": zones, "vitals": vit, "expect_image": expect_image, "expect_vitals": expect_vitals})
    out.write_text(json.dumps({"model_json": f"models/{meta_path.name}", "cases": cases, "patients": patients}, indent=1))


def _logistic(m: dict, x: list) -> float:
    z = m["bias"]
    for v, mu, sc, w in zip(x, m["mean"], m["scale"], m["weights"]):
        z += w * (((mu if v is None else v) - mu) / sc)
    return 1 / (1 + np.exp(-z))


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

    sess, meta, size = None, None, 112
    if args.model:
        import onnxruntime as ort

        sess = ort.InferenceSession(str(args.model), providers=["CPUExecutionProvider"])
        meta = json.loads(args.model.with_suffix(".json").read_text())
        size = int(meta.get("input", {}).get("size", 112))
        write_pooling_cases(meta, args.model.with_suffix(".json"), ref / "pooling_cases.json")
    lines = ["# Test fixtures", "", "Small real scans for the tests, with their sources and licences.",
             "Research and non-commercial use only.", "", "| file | source |", "|---|---|"]
    for name, attrib in sources:
        frames, total = preprocess_scan(scans / name, REF_FRAMES, size)
        frames.astype("<f4").tofile(ref / f"{name}.f32")
        entry = {"file": name, "frames_total": total, "frames": int(frames.shape[0]), "size": int(frames.shape[1])}
        h, w = load_frames(scans / name)[0].shape
        entry["width"], entry["height"] = int(w), int(h)
        if sess is not None:
            full, _ = preprocess_scan(scans / name, size=size)
            names = [o.name for o in sess.get_outputs()]
            outs = dict(zip(names, sess.run(None, {"frames": full[:, None].astype(np.float32)})))
            entry["model"] = _video_outputs(outs, meta)
        (ref / f"{name}.json").write_text(json.dumps(entry, indent=1))
        lines.append(f"| scans/{name} | {attrib} |")
    lines += ["", "`reference/` holds the Python pipeline's preprocessed frames (`.f32`, little-endian,",
              f"{REF_FRAMES} sampled frames × {size} × {size}, the model's input) and, where generated with",
              "`--model`, its video-level outputs, plus `pooling_cases.json` (frames -> video and zones ->",
              "patient cases for the Rust pooling and combiner): `training/pleura_train/fixtures.py`",
              "regenerates them."]
    (args.out / "README.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

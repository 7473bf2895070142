"""Item lists and labels for the two data sets, and patient/video-grouped folds."""
from __future__ import annotations

import csv
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path

CLASSES = ["covid", "other_pneumonia", "normal"]
# COVID-BLUES negatives are PCR-negative patients, healthy or with another disease: the
# class target is the set {other_pneumonia, normal}, trained with a partial-label loss.
NOT_COVID = -2
UNKNOWN = -1
POCUS_LABELS = {
    "COVID-19": 0,
    "Bacterial pneumonia": 1,
    "Viral pneumonia": 1,
    "regular": 2,
    "Regular": 2,
}


@dataclass
class Item:
    dataset: str
    item_id: str  # video file stem
    path: str
    group: str  # patient (COVID-BLUES) or source+patient / video (POCUS)
    cls: int  # 0..2, NOT_COVID or UNKNOWN
    severity: int  # 0..3 or UNKNOWN
    zone: str = ""
    fold: int = -1

    def to_dict(self) -> dict:
        return asdict(self)


def covid_blues_items(root: Path) -> list[Item]:
    cov = {}
    with open(root / "clinical_variables.csv", newline="") as f:
        for row in csv.DictReader(f):
            cov[row["patient_id"]] = int(row["cov_test"])
    sev = {}
    with open(root / "severity.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["Severity Score"].strip():
                sev[row["video_file"]] = int(float(row["Severity Score"]))
    items = []
    for p in sorted((root / "lus_videos").glob("*.mp4")):
        parts = p.stem.split("_")  # patient_<ID>_<POINT>[_2]
        pid, zone = parts[1], parts[2]
        items.append(
            Item(
                "covid-blues",
                p.stem,
                str(p),
                f"cb:{pid}",
                0 if cov.get(pid) == 1 else NOT_COVID,
                sev.get(p.stem, UNKNOWN),
                zone,
            )
        )
    return items


def pocus_files(root: Path) -> dict[str, Path]:
    """POCUS items by file stem (the metadata's `Filename`), videos and images, both probes."""
    files = {}
    for sub in ("pocus_videos", "pocus_images"):
        for probe in ("convex", "linear"):
            d = root / sub / probe
            if d.is_dir():
                for p in sorted(d.iterdir()):
                    if p.is_file():
                        files[p.stem] = p
    return files


def pocus_rows(root: Path):
    """POCUS metadata rows with a file and a usable label: (row, path, group, source, class,
    severity). The group is the patient within a source (or the file alone)."""
    files = pocus_files(root)
    with open(root / "dataset_metadata.csv", newline="") as f:
        for row in csv.DictReader(f):
            name = row["Filename"]
            if name not in files or row["Label"] not in POCUS_LABELS:
                continue
            s = row["Lung Severity Score"].strip()
            patient, source = row["Patient ID / Name"].strip(), row["Source ID"].strip()
            group = f"pocus:{source}:{patient}" if patient and source else f"pocus:{name}"
            yield row, files[name], group, source, POCUS_LABELS[row["Label"]], int(s) if s.isdigit() else UNKNOWN


def pocus_items(root: Path) -> list[Item]:
    return [Item("pocus", row["Filename"], str(path), group, cls, sev)
            for row, path, group, _, cls, sev in pocus_rows(root)]


def assign_folds(items: list[Item], k: int, seed: int = 20261124) -> None:
    """Stratified group k-fold: every group (patient) lands in exactly one fold."""
    by_group: dict[str, list[Item]] = {}
    for it in items:
        by_group.setdefault(it.group, []).append(it)
    strata: dict[tuple, list[str]] = {}
    for g, its in by_group.items():
        strata.setdefault((its[0].dataset, its[0].cls), []).append(g)
    rng = random.Random(seed)
    offset = 0
    for key in sorted(strata):
        groups = sorted(strata[key])
        rng.shuffle(groups)
        for i, g in enumerate(groups):
            for it in by_group[g]:
                it.fold = (i + offset) % k
        offset += len(groups)


def rel_path(path: str, data_root: Path) -> str:
    return os.path.relpath(path, data_root)

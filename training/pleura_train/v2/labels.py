"""Every label the two data sets carry, per video, and the refined class targets.

Class targets are refined per video instead of stamping the patient's PCR on every frame:
- COVID-BLUES PCR-negative patients take their clinical diagnosis (healthy lung -> normal,
  bacterial / other viral pneumonia -> other pneumonia, other lung disease -> "not COVID",
  a partial label);
- PCR-positive patients' videos are "covid" when the expert saw pathology (severity >= 1),
  "normal" when the zone looks normal (severity 0, no B-lines), and unknown otherwise.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from ..data import NOT_COVID, UNKNOWN, pocus_rows

FINDINGS = ["a_lines", "b_lines", "consolidation", "effusion", "pleural_irregularity"]
VITALS = ["age", "sex_male", "spo2", "respiratory_rate", "pulse", "temperature", "fever", "cough", "dyspnea"]
DATASETS = ["covid-blues", "pocus"]


@dataclass
class Video:
    dataset: str
    item_id: str
    path: str
    group: str  # patient (COVID-BLUES) or source:patient / item (POCUS)
    source: str  # POCUS source id (leave-one-source-out); "" for COVID-BLUES
    zone: str
    cls: int  # refined target: 0..2, NOT_COVID or UNKNOWN
    severity: int  # 0..3 or UNKNOWN
    findings: list[int] = field(default_factory=lambda: [UNKNOWN] * len(FINDINGS))
    pcr: int = UNKNOWN  # COVID-BLUES patient's PCR (1/0)


@dataclass
class Patient:
    pid: str
    pcr: int
    diagnosis: str
    vitals: dict[str, float | None]


def _num(v: str) -> float | None:
    try:
        x = float(v)
    except ValueError:
        return None
    return None if x == -99.0 else x


def _yes(v: str) -> int:
    v = v.strip().lower()
    return 1 if v == "yes" else 0 if v == "no" else UNKNOWN


def covid_blues_patients(root: Path) -> dict[str, Patient]:
    out = {}
    with open(root / "clinical_variables.csv", newline="") as f:
        for row in csv.DictReader(f):
            dx = [k.split("#", 1)[1] for k in row if k.startswith("clin_diagn#") and row[k] == "1"]
            vit = {
                "age": _num(row["pat_age"]),
                "sex_male": _num(row["pat_sex"]),
                "spo2": _num(row["oxygen_saturation_without_ox"]),
                "respiratory_rate": _num(row["respiratory_rate"]),
                "pulse": _num(row["pulse"]),
                "temperature": _num(row["body_temperature"]),
                "fever": _num(row["patient_symp#Fever"]),
                "cough": _num(row["patient_symp#Coughing"]),
                "dyspnea": _num(row["patient_symp#Dyspnea"]),
            }
            out[row["patient_id"]] = Patient(row["patient_id"], int(row["cov_test"]), dx[0] if dx else "", vit)
    return out


def _refined_class(pcr: int, diagnosis: str, severity: int, b_lines: int) -> int:
    if pcr == 0:
        return {"healthy_lung": 2, "bacterial_pneumonia": 1, "other_viral_pneumonia": 1}.get(diagnosis, NOT_COVID)
    if severity >= 1:
        return 0
    if severity == 0 and b_lines == 0:
        return 2
    return UNKNOWN


def covid_blues_videos(root: Path) -> list[Video]:
    patients = covid_blues_patients(root)
    labels = {}
    with open(root / "severity.csv", newline="") as f:
        for row in csv.DictReader(f):
            s = row["Severity Score"].strip()
            labels[row["video_file"]] = (int(float(s)) if s else UNKNOWN, _yes(row["A-lines"]), _yes(row["B-lines"]))
    out = []
    for p in sorted((root / "lus_videos").glob("*.mp4")):
        parts = p.stem.split("_")  # patient_<ID>_<POINT>[_2]
        pid, zone = parts[1], parts[2]
        if pid not in patients:
            raise ValueError(f"{p.name}: patient {pid} is not in clinical_variables.csv")
        sev, a, b = labels.get(p.stem, (UNKNOWN, UNKNOWN, UNKNOWN))
        pat = patients[pid]
        findings = [a, b, UNKNOWN, UNKNOWN, UNKNOWN]
        out.append(Video("covid-blues", p.stem, str(p), f"cb:{pid}", "", zone,
                         _refined_class(pat.pcr, pat.diagnosis, sev, b), sev, findings, pat.pcr))
    with_videos = {v.group[3:] for v in out}
    missing = sorted(set(patients) - with_videos)
    if missing:
        raise ValueError(f"patients in clinical_variables.csv without videos: {missing}")
    return out


def _flag(v: str) -> int:
    v = v.strip()
    return 1 if v == "1" else 0 if v == "0" else UNKNOWN


def pocus_videos(root: Path) -> list[Video]:
    out = []
    for row, path, group, source, cls, sev in pocus_rows(root):
        name = row["Filename"]
        findings = [_flag(row["A-lines"]), _flag(row["B-lines"]), _flag(row["Consolidations"]),
                    _flag(row["Effusion"]), _flag(row["Pleural line irregularities"])]
        out.append(Video("pocus", name, str(path), group, source or name, "", cls, sev, findings))
    return out

#!/usr/bin/env python3
"""Validates a FHIR R4 Bundle of MeasureReports written by hub-server's FHIR export.

Structure and types come from fhir.resources 6.4.0, the typed FHIR R4 (4.0.1) model
(unknown elements, wrong types, missing required elements and bad dates are refused).
That model does not check required code bindings nor how an absent count is marked, so
those are checked here: MeasureReport.status / type codes, Bundle.type, each
population's code, and that a population has either a count (an integer >= 0) or, in
its `_count`, the data-absent-reason extension with a code.

Usage: fhir_validate.py BUNDLE.json  -> prints "ok N" (N reports) or the problems, exit 1.
"""
import json
import sys

import fhir.resources
from fhir.resources.bundle import Bundle
from fhir.resources.measurereport import MeasureReport

DAR = "http://hl7.org/fhir/StructureDefinition/data-absent-reason"
DAR_CODES = {"unknown", "asked-unknown", "temp-unknown", "not-asked", "asked-declined",
             "masked", "not-applicable", "unsupported", "as-text", "error",
             "not-a-number", "negative-infinity", "positive-infinity", "not-performed",
             "not-permitted"}
POPULATION = "http://terminology.hl7.org/CodeSystem/measure-population"


def problems(doc):
    out = []
    if fhir.resources.__fhir_version__ != "4.0.1":
        out.append(f"validator is FHIR {fhir.resources.__fhir_version__}, not R4 4.0.1")
    try:
        Bundle.parse_obj(doc)
    except Exception as e:  # pydantic's ValidationError, or anything it raises
        out.append(f"Bundle: {e}")
    if doc.get("type") not in {"document", "message", "transaction", "transaction-response",
                               "batch", "batch-response", "history", "searchset", "collection"}:
        out.append(f"Bundle.type {doc.get('type')!r}")
    for i, entry in enumerate(doc.get("entry", [])):
        mr = entry.get("resource", {})
        where = f"entry[{i}]"
        try:
            MeasureReport.parse_obj(mr)
        except Exception as e:
            out.append(f"{where}: {e}")
            continue
        if mr.get("status") not in {"complete", "pending", "error"}:
            out.append(f"{where}.status {mr.get('status')!r}")
        if mr.get("type") not in {"individual", "subject-list", "summary", "data-collection"}:
            out.append(f"{where}.type {mr.get('type')!r}")
        period = mr.get("period", {})
        if not (period.get("start") and period.get("end") and period["start"] <= period["end"]):
            out.append(f"{where}.period {period!r}")
        for g, group in enumerate(mr.get("group", [])):
            for p, pop in enumerate(group.get("population", [])):
                at = f"{where}.group[{g}].population[{p}]"
                codings = pop.get("code", {}).get("coding", [])
                if not any(c.get("system") == POPULATION and c.get("code") == "initial-population"
                           for c in codings):
                    out.append(f"{at}.code {codings!r}")
                if "count" in pop:
                    if not isinstance(pop["count"], int) or isinstance(pop["count"], bool) or pop["count"] < 0:
                        out.append(f"{at}.count {pop['count']!r}")
                else:
                    exts = pop.get("_count", {}).get("extension", [])
                    if not any(x.get("url") == DAR and x.get("valueCode") in DAR_CODES for x in exts):
                        out.append(f"{at}: no count and no data-absent-reason")
    return out


def main():
    with open(sys.argv[1], encoding="utf-8") as f:
        doc = json.load(f)
    found = problems(doc)
    if found:
        for p in found:
            print(p, file=sys.stderr)
        sys.exit(1)
    print(f"ok {len(doc.get('entry', []))}")


if __name__ == "__main__":
    main()

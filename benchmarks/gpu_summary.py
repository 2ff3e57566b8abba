"""The short table that ends ``scripts/gpu_check.sh``: one line a figure, read from the JSON
files the check's steps wrote (a missing file prints as "not run").

    python3 benchmarks/gpu_summary.py OUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _tests(out: Path) -> str:
    """Pass/fail counts from pytest's JUnit XML, or from the no-pytest runner's JSON."""
    tests = _load(out / "gpu_tests.json")
    if tests:
        return f"{tests['passed']} passed, {tests['failed']} failed"
    try:
        import xml.etree.ElementTree as ET
        suite = ET.parse(out / "gpu_tests.xml").getroot()
    except (OSError, ValueError, SyntaxError):
        return "not run"
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    if suite is None:
        return "not run"
    n, f, e, s = (int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped"))
    return f"{n - f - e - s} passed, {f + e} failed, {s} skipped"


def rows(out: Path) -> list[tuple[str, str]]:
    """(what, figure) pairs from the check's JSON outputs in ``out``."""
    lines: list[tuple[str, str]] = []
    lines.append(("CUDA tests", _tests(out)))
    train = _load(out / "gpu_train.json") or {}
    for key, name in (("default", "train, default recipe"), ("large_batch", "train, batch 1024")):
        r = train.get(key)
        if r:
            k = r["kept_model"]
            lines.append((name, f"{r['epochs']} ep {r['seconds']:.1f} s, test {100 * k['test_acc']:.2f}% "
                                f"(seed-protocol {100 * k['seed_acc']:.2f}%)"))
        else:
            lines.append((name, "not run"))
    for r in _load(out / "gpu_infer.json") or []:
        lines.append((f"inference {r['device']} batch {r['batch']}", f"{r['img_s']:,.0f} images/s"))
    if "field_time_ratio" in train:
        lines.append(("train, field vs no field", f"{train['field_time_ratio']:.2f}x the time"))
    for r in _load(out / "gpu_field_speed.json") or []:
        lines.append((f"field {r['what']} {r['device']}", f"{r['crops_s']:,.0f} crops/s"))
    fb = _load(out / "gpu_field.json")
    if fb:
        for name in ("clean", "mild", "harsh"):
            r = fb["levels"].get(name)
            if r:
                lines.append((f"field {name} (CUDA-trained)",
                              f"accuracy {100 * r['accuracy']:.2f}% coverage {100 * r['coverage']:.2f}% "
                              f"risk {100 * r['selective_risk']:.3f}%"))
        if fb.get("non_digits"):
            lines.append(("field non-digits accepted", f"{100 * fb['non_digits']['all']['coverage']:.2f}%"))
    gate = _load(out / "gpu_gate.json")
    for r in gate or []:
        lines.append((f"gate, {r['name']}", f"coverage {100 * r['coverage']:.2f}% risk {100 * r['risk']:.3f}% "
                                            f"letters {100 * r['letters']:.2f}% fashion {100 * r['fashion']:.2f}% "
                                            f"({r['seconds']:.0f} s)"))
    return lines


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp")
    table = rows(out)
    width = max(len(a) for a, _ in table)
    print("\n=== GPU check summary ===")
    for a, b in table:
        print(f"{a:<{width}}  {b}")


if __name__ == "__main__":
    main()

"""``lenet-tool verify``: every exported file against the PyTorch checkpoint, through ``runtime``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from runtime.fileio import load_json_file, sha256_file
from runtime.formats import FORMATS, format_for_path

from .augment import seed_protocol
from .data import Dataset
from .evaluate import SEED_PROTOCOL_SEED


def check_manifest(artifact: Path, files: list[Path]) -> list[str]:
    """Hash every listed file against ``manifest.json``; returns the problems found."""
    path = artifact / "manifest.json"
    if not path.is_file():
        return [f"{path}: no manifest: expected the one 'lenet-tool train/export' writes"]
    entries = load_json_file(path).get("files", {})
    problems = []
    for f in files:
        rel = f.relative_to(artifact).as_posix() if f.is_relative_to(artifact) else f.name
        entry = entries.get(rel)
        if entry is None:
            problems.append(f"{f}: not in {path.name}: it was not written by lenet-tool into this folder")
        elif sha256_file(f) != entry.get("sha256"):
            problems.append(f"{f}: SHA-256 differs from {path.name}: the file was changed after it was written")
    return problems


def seed_protocol_images(images: np.ndarray) -> np.ndarray:
    """The seed protocol's images as uint8 (nearest rotation and inversion keep pixels exact)."""
    x = torch.from_numpy(np.array(images, dtype=np.uint8)).reshape(-1, 1, 28, 28)
    return (seed_protocol(x, SEED_PROTOCOL_SEED) * 255.0).round().to(torch.uint8).numpy()


def verify(artifact: Path, test: Dataset, files: list[Path] | None = None, backend: str = "auto",
           tolerances: dict[str, Any] | None = None, field_images: int = 1000) -> dict[str, Any]:
    """Run the checkpoint and each exported file on the test set and the seed-protocol set,
    then ``model.onnx`` on ``field_images`` test digits rendered as 'mild' camera crops.

    Returns ``{"passed": bool, "manifest": [...problems], "files": [...]}``; each file has
    one comparison report per image set (see :func:`exporters.validate.compare`).
    """
    from exporters.graph import GatedModel
    from exporters.onnx_export import load_calibrated, torch_reference

    t0 = time.perf_counter()
    if files is None:
        files = [artifact / f.filename for f in FORMATS if (artifact / f.filename).is_file()]
    if not files:
        raise FileNotFoundError(f"{artifact}: no exported model files: run 'lenet-tool export {artifact} --target onnx'")
    ckpt_path = artifact / "checkpoint.pt"
    problems = check_manifest(artifact, [ckpt_path, *files])
    ckpt, _, pipeline = load_calibrated(artifact)
    graph = GatedModel(pipeline, ckpt["calibration"])
    sets = {"test": (test.images[:, None], test.labels), "seed_protocol": (seed_protocol_images(test.images),
                                                                           test.labels)}
    refs = {name: torch_reference(graph, imgs) for name, (imgs, _) in sets.items()}
    installed = _installed_backends() if backend == "all" else None
    results = []
    for f in files:
        fmt = format_for_path(f)
        for name in _backends_for(fmt.name, backend, installed):
            results.append(_check_file(f, fmt, name, sets, refs, graph.threshold, tolerances))
    checked_fail = bool(problems) or any("error" in r or any(not rep.passed for rep in r["reports"].values())
                                         for r in results)
    not_checked = [f"{Path(r['file']).name} on {r['backend']}" for r in results if "skipped" in r]
    # A file that could not be checked here (no TensorRT, say) is not a pass: verify says so and fails.
    failed = checked_fail or bool(not_checked)
    field_mild = None
    if field_images and not failed and (artifact / "model.onnx").is_file():
        # The device's path on camera crops: reported beside the checks, not a pass/fail of its own
        # (the field's targets are the model's, not the export's); only for files that passed.
        from .fieldbench import run_field
        field_mild = run_field(artifact, test, n=field_images, levels=["mild"], non_digits=0, printed=False,
                               backend="auto" if backend == "all" else backend)
    return {"passed": not failed, "verdict": "FAIL" if checked_fail else ("INCOMPLETE" if failed else "PASS"),
            "not_checked": not_checked, "manifest": problems, "files": results,
            "seconds": time.perf_counter() - t0, "n_test": len(test), "field_mild": field_mild,
            "runtimes_missing": None if installed is None else [n for n, ok in installed.items() if not ok]}


def _installed_backends() -> dict[str, bool]:
    """{backend: usable here}, asked once a run (OpenVINO's answer opens a Core)."""
    from runtime.backends import BACKENDS
    return {n: b.available()[0] for n, b in BACKENDS.items()}


def _backends_for(fmt: str, backend: str, installed: dict[str, bool] | None) -> list[str]:
    """The backends to run a file of format ``fmt`` on: the one asked ("auto": the file's
    default), or with "all" every installed backend that loads the format (none installed: the
    first, to be reported as not checked)."""
    from runtime.backends import BACKENDS
    if backend != "all":
        return [backend]
    names = [n for n, b in BACKENDS.items() if fmt in b.formats]
    return [n for n in names if (installed or {}).get(n)] or names[:1]


def _check_file(f: Path, fmt: Any, backend: str, sets: dict[str, Any], refs: dict[str, Any], threshold: float,
                tolerances: dict[str, Any] | None) -> dict[str, Any]:
    """One file on one backend against the PyTorch references, every image set."""
    from exporters.onnx_export import CHUNK
    from exporters.validate import TOLERANCES, compare
    from runtime import BackendUnavailable, Classifier
    entry: dict[str, Any] = {"file": str(f), "precision": fmt.precision, "reports": {},
                             "backend": fmt.backend if backend == "auto" else backend}
    try:
        clf = Classifier(f, backend=backend)
    except BackendUnavailable as e:
        entry["skipped"] = str(e)
        return entry
    except Exception as e:  # a file that does not even load is a failure to report, not a crash
        entry["error"] = f"cannot load: {e}"
        return entry
    precision = clf.metadata.get("precision", fmt.precision)
    tol = (tolerances or {}).get(precision) or TOLERANCES.get(precision, TOLERANCES["fp32"])
    entry.update(backend=clf.backend, providers=clf.providers, precision=precision)
    for name, (imgs, labels) in sets.items():
        preds = [clf.predict(imgs[i:i + CHUNK]) for i in range(0, len(imgs), CHUNK)]
        got = {"logits": np.concatenate([p.logits for p in preds]),
               "confidence": np.concatenate([p.confidences for p in preds]),
               "label": np.concatenate([p.labels for p in preds]),
               "accepted": np.concatenate([p.accepted for p in preds])}
        entry["reports"][name] = compare(f"{f.name} [{name}]", precision, refs[name], got, threshold, labels, tol)
    clf.close()
    return entry


def format_runtime_table(res: dict[str, Any]) -> str:
    """One agreement table: every file on every runtime against PyTorch (test / seed-protocol set)."""
    missing = res["runtimes_missing"]
    lines = ["Every installed runtime against PyTorch (test / seed-protocol set)"
             + (f"; not installed here: {', '.join(missing)}" if missing else "") + ":",
             f"{'file':<18} {'runtime':<12} {'labels agree':>19} {'accept decisions agree':>25} {'max |logit diff|':>20}"]
    for r in res["files"]:
        name = Path(r["file"]).name
        if "skipped" in r or "error" in r:
            lines.append(f"{name:<18} {r['backend']:<12} {'skipped: ' + r['skipped'] if 'skipped' in r else 'FAIL'}")
            continue
        t, s = r["reports"]["test"], r["reports"]["seed_protocol"]
        lines.append(f"{name:<18} {r['backend']:<12} {100 * t.label_agreement:>8.3f}% / {100 * s.label_agreement:>7.3f}% "
                     f"{100 * t.accept_agreement:>12.3f}% / {100 * s.accept_agreement:>7.3f}% "
                     f"{t.max_abs_logit_diff:>9.3g} / {s.max_abs_logit_diff:<8.3g}")
    return "\n".join(lines)


def format_verify(res: dict[str, Any]) -> str:
    """Human-readable verify report."""
    lines = []
    for p in res["manifest"]:
        lines.append(f"MANIFEST: {p}")
    for r in res["files"]:
        if "skipped" in r:
            lines.append(f"{r['file']}: skipped ({r['skipped']})")
            continue
        if "error" in r:
            lines.append(f"{r['file']}: FAIL: {r['error']}")
            continue
        lines.append(f"{r['file']} on {r['backend']} ({', '.join(r['providers'])}):")
        for rep in r["reports"].values():
            lines.append("  " + rep.describe().replace("\n", "\n  "))
    fm = res.get("field_mild")
    if fm:
        m = fm["levels"]["mild"]
        lines.append(f"field, mild camera crops ({fm['n']} test digits, runtime.preprocess + {fm['model']}): "
                     f"accuracy {100 * m['accuracy']:.2f}%, coverage {100 * m['coverage']:.2f}%, selective risk "
                     f"{100 * m['selective_risk']:.3f}%")
    if res["runtimes_missing"] is not None:  # --runtime all
        lines.append(format_runtime_table(res))
    skipped = res["not_checked"]
    lines.append(f"verify: {res['verdict']} ({res['seconds']:.1f} s, {res['n_test']} test images and their "
                 "seed-protocol versions)" + (f"; not checked here: {', '.join(skipped)}" if skipped else ""))
    return "\n".join(lines)


def to_json(res: dict[str, Any]) -> dict[str, Any]:
    out = dict(res)
    out["files"] = [{**r, "reports": {k: v.to_dict() for k, v in r.get("reports", {}).items()}} for r in res["files"]]
    return out

"""``lenet-tool info``: what a checkpoint, ONNX file or plan holds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from runtime.fileio import ArtifactError, sha256_file
from runtime.formats import FORMATS


def _gate_line(g: dict[str, Any] | None) -> str:
    if not g:
        return "gate: none (run 'lenet-tool calibrate')"
    extra = f", T={g['temperature']:.4f}" if "temperature" in g else ""
    risk = ""
    if g.get("certified") is False and g.get("method") == "empirical":
        risk = f", NOT certified (held-out selective risk <= {g['target_risk']}, an estimate)"
    elif "target_risk" in g:
        asked = g.get("requested_risk", g["target_risk"])
        risk = f", target risk {g['target_risk']} at delta {g['delta']}" + \
            (f" (asked {asked}: not certifiable)" if asked != g["target_risk"] else "")
    return f"gate: {g['method']} ({g['score']}), threshold {g['threshold']:.6f}{extra}{risk}"


def describe_checkpoint(path: Path) -> tuple[dict[str, Any], str]:
    from .checkpoint import build_pipeline, load_checkpoint
    from .model import count_parameters
    ckpt = load_checkpoint(path)
    params = count_parameters(build_pipeline(ckpt))
    split = dict(ckpt.get("split") or {})
    split.pop("holdout_indices", None)
    obj = {"kind": "checkpoint", "path": str(path), "sha256": sha256_file(path), "format": ckpt["format"],
           "format_version": ckpt["format_version"], "architecture": ckpt["arch"], "parameters": params,
           "preprocessing": ckpt["preprocess"], "train_config": ckpt["train_config"], "split": split,
           "best_epoch": ckpt.get("epoch"), "val_loss": ckpt.get("val_loss"), "gate": ckpt.get("calibration"),
           "class_names": ckpt["class_names"], "tool_version": ckpt.get("tool_version"),
           "torch_version": ckpt.get("torch_version")}
    text = "\n".join([
        f"{path}: lenet-tool checkpoint v{ckpt['format_version']}",
        f"architecture: {ckpt['arch']['name']} ({params:,} parameters), classes {', '.join(ckpt['class_names'])}",
        f"preprocessing: {json.dumps(ckpt['preprocess'])}",
        f"training: recipe {ckpt['train_config']['recipe']}, best epoch {ckpt.get('epoch')}, "
        f"validation loss {ckpt.get('val_loss', float('nan')):.4f}",
        f"held-out split: {split.get('n_holdout')} images of {split.get('dataset_source')}",
        _gate_line(ckpt.get("calibration")),
    ])
    return obj, text


def describe_onnx(path: Path) -> tuple[dict[str, Any], str]:
    import onnx

    from exporters.tensorrt import onnx_metadata
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise ArtifactError(f"{path}: not a readable ONNX file ({str(e).splitlines()[0][:200]})") from None
    meta = onnx_metadata(path)

    def spec(v: Any) -> dict[str, Any]:
        t = v.type.tensor_type
        dims = [d.dim_param or d.dim_value for d in t.shape.dim]
        return {"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name, "shape": dims}

    ins = [spec(v) for v in proto.graph.input]
    outs = [spec(v) for v in proto.graph.output]
    ops = sorted({n.op_type for n in proto.graph.node})
    obj = {"kind": "onnx", "path": str(path), "sha256": sha256_file(path), "opset": proto.opset_import[0].version,
           "inputs": ins, "outputs": outs, "operators": ops, "metadata": meta}
    text = "\n".join([
        f"{path}: ONNX, opset {obj['opset']}, precision {meta['precision']}, {len(proto.graph.node)} nodes",
        "inputs: " + "; ".join(f"{i['name']} {i['dtype']} {i['shape']}" for i in ins),
        "outputs: " + "; ".join(f"{o['name']} {o['dtype']} {o['shape']}" for o in outs),
        "preprocessing: " + json.dumps({k: meta["preprocessing"].get(k)
                                        for k in ("mean", "std", "polarity", "view_rotations")}),
        _gate_line(meta["gate"]),
        f"provenance: lenet-tool {meta['provenance']['tool_version']}, checkpoint "
        f"{meta['provenance']['checkpoint_sha256'][:16]}..., dataset {str(meta['provenance']['dataset_sha256'])[:16]}...",
    ])
    return obj, text


def describe_plan(path: Path) -> tuple[dict[str, Any], str]:
    from exporters.tensorrt import describe
    from runtime.backends.trt import check_plan, read_sidecar
    meta = read_sidecar(path)
    check_plan(path, meta, None, None)  # the hash; version and GPU are checked where it runs
    obj = {"kind": "tensorrt", "path": str(path), "sha256": sha256_file(path), "metadata": meta}
    text = "\n".join([f"{path}: TensorRT plan ({path.stat().st_size} bytes), hash matches its sidecar",
                      describe(meta), _gate_line(meta["gate"])])
    return obj, text


def describe_path(path: Path) -> tuple[dict[str, Any], str]:
    """Dispatch on what ``path`` is; a folder describes every model file in it."""
    if path.is_dir():
        objs, texts = [], []
        for name in ["checkpoint.pt", *[f.filename for f in FORMATS]]:
            if (path / name).is_file():
                o, t = describe_path(path / name)
                objs.append(o)
                texts.append(t)
        if not objs:
            raise ArtifactError(f"{path}: no checkpoint.pt or exported model in this folder")
        return {"files": objs}, "\n\n".join(texts)
    if not path.is_file():
        raise ArtifactError(f"{path}: no such file")
    if path.suffix == ".pt":
        return describe_checkpoint(path)
    if path.suffix == ".onnx":
        return describe_onnx(path)
    if path.suffix == ".engine":
        return describe_plan(path)
    raise ArtifactError(f"{path}: unknown file type {path.suffix!r}: expected .pt, .onnx or .engine")

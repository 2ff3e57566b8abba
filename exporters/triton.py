"""A Triton Inference Server model repository from an exported file:
``ARTIFACT/triton/<name>/config.pbtxt`` and ``ARTIFACT/triton/<name>/1/model.onnx`` (or ``model.plan``).

The config is built as Triton's own ``ModelConfig`` protobuf message (from ``tritonclient``),
written in protobuf text format, then read back from disk, parsed again and every field checked
against the model file it sits beside (:func:`check_repository`). The tensor interface here is the
one ``lenet-tool serve`` binds too (:func:`io_spec`), so a client cannot tell the two apart.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.fileio import sha256_file
from runtime.metadata import INPUT_NAME, OUTPUT_NAMES

from .targets import DEFAULTS

VERSION = "1"  # the one model version a repository holds
PLATFORMS = {".onnx": ("onnxruntime_onnx", "model.onnx"), ".engine": ("tensorrt_plan", "model.plan")}
PARAM_PREFIX = "lenet_tool."
NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")  # what PyTriton and Triton's repository agree on
# numpy dtype name -> Triton data type name (the subset this model's tensors use)
TRITON_DTYPES = {"uint8": "TYPE_UINT8", "float32": "TYPE_FP32", "int64": "TYPE_INT64", "bool": "TYPE_BOOL",
                 "float16": "TYPE_FP16", "int32": "TYPE_INT32"}


def check_model_name(name: str) -> None:
    """Raise ValueError unless ``name`` is a model name Triton's repository and PyTriton both take."""
    if not NAME_RE.match(name):
        raise ValueError(f"--model-name {name!r}: expected letters, digits, '_', '.' or '-' (at most 128, "
                         "not starting with '.' or '-')")


class TritonUnavailable(RuntimeError):
    """``tritonclient`` (which carries Triton's ModelConfig protobuf) is not installed."""


class TritonConfigError(ValueError):
    """A model repository whose config does not parse or does not match its model file."""


@dataclass(frozen=True)
class TensorSpec:
    """One tensor as a Triton client sees it (batch dimension left out)."""

    name: str
    dtype: str  # numpy dtype name
    dims: tuple[int, ...]
    reshape: tuple[int, ...] | None = None  # what the model file itself holds, when it differs from dims

    @property
    def triton_type(self) -> str:
        return TRITON_DTYPES[self.dtype]


def io_spec(meta: dict[str, Any]) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The repository's (and ``serve``'s) inputs and outputs for a model with metadata ``meta``.

    Per-image scalars (``confidence``, ``label``, ``accepted``: shape ``[N]`` in the model) are
    ``dims: [1]`` with ``reshape: { shape: [] }``: Triton needs at least one dimension beyond the
    batch, and the reshape tells it the model's own tensor has none.
    """
    shape = meta["input"]["shape"]
    inputs = [TensorSpec(INPUT_NAME, str(meta["input"]["dtype"]), tuple(int(d) for d in shape[1:]))]
    outputs = []
    for name in OUTPUT_NAMES:
        o = meta["outputs"][name]
        rank = len(o["shape"])
        if rank == 1:
            outputs.append(TensorSpec(name, str(o["dtype"]), (1,), ()))
        else:  # logits [N, C]: the class count is the metadata's, whatever the graph's dim says
            outputs.append(TensorSpec(name, str(o["dtype"]), (len(meta["class_names"]),)))
    return inputs, outputs


def _pb() -> Any:
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError as e:  # tritonclient[grpc] brings both
        raise TritonUnavailable(f"the Triton target needs tritonclient (for Triton's ModelConfig protobuf): {e}; "
                                "install it with: pip install 'lenet-tool[serve]'") from None
    return model_config_pb2, text_format


def _model_io(model: Path) -> tuple[dict[str, Any], dict[str, tuple[str, list[Any]]], dict[str, Any] | None]:
    """(metadata, {tensor name: (numpy dtype, shape with None for a dynamic dim)}, TensorRT section or None).

    An ONNX file is read for its graph; a plan cannot be opened without TensorRT, so its sidecar
    (which the runtime checks against the plan's SHA-256) stands for it.
    """
    if model.suffix == ".onnx":
        import onnx

        from runtime.metadata import METADATA_KEY, parse_metadata
        m = onnx.load(str(model), load_external_data=False)
        meta = parse_metadata({p.key: p.value for p in m.metadata_props}.get(METADATA_KEY), str(model))
        tensors = {}
        for v in [*m.graph.input, *m.graph.output]:
            tt = v.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
            try:
                dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type).name
            except (KeyError, ValueError, TypeError):  # a type numpy has no name for: no Triton type either
                dtype = f"onnx type {tt.elem_type}"
            tensors[v.name] = (dtype, dims)
        return meta, tensors, None
    from runtime.backends.trt import check_plan, read_sidecar
    meta = read_sidecar(model)
    check_plan(model, meta, None, None)  # the hash only: TensorRT's version and the GPU are the server's
    tensors = {meta["input"]["name"]: (meta["input"]["dtype"], [None, *meta["input"]["shape"][1:]])}
    for name, o in meta["outputs"].items():
        tensors[name] = (o["dtype"], [None if isinstance(d, str) else d for d in o["shape"]])
    return meta, tensors, meta["tensorrt"]


def gate_parameters(meta: dict[str, Any], model_sha256: str, source: str) -> dict[str, str]:
    """The gate and provenance a server operator needs, as Triton ``parameters`` (string values)."""
    gate = meta["gate"]
    return {PARAM_PREFIX + k: v for k, v in {
        "schema_version": str(meta["schema_version"]),
        "precision": str(meta["precision"]),
        "class_names": json.dumps(meta["class_names"]),
        "gate_method": str(gate["method"]),
        "gate_score": str(gate.get("score", "")),
        "gate_threshold": repr(float(gate["threshold"])),
        "gate_target_risk": repr(float(gate["target_risk"])) if gate.get("target_risk") is not None else "",
        "gate_delta": repr(float(gate["delta"])) if gate.get("delta") is not None else "",
        "gate_certified": str(bool(gate.get("certified", gate["method"] == "guaranteed"))).lower(),
        "source_file": source,
        "model_sha256": model_sha256,
    }.items()}


def build_config(name: str, model: Path, meta: dict[str, Any], *, max_batch: int, preferred_batch: int,
                 queue_delay_us: int, instances: int) -> Any:
    """Triton's ``ModelConfig`` message for ``model`` (an exported ONNX file or TensorRT plan) with
    metadata ``meta``."""
    pb, _ = _pb()
    platform, _ = PLATFORMS[model.suffix]
    cfg = pb.ModelConfig(name=name, platform=platform, max_batch_size=int(max_batch))
    inputs, outputs = io_spec(meta)
    for spec, field in [(s, cfg.input) for s in inputs] + [(s, cfg.output) for s in outputs]:
        t = field.add()
        t.name = spec.name
        t.data_type = pb.DataType.Value(spec.triton_type)
        t.dims.extend(spec.dims)
        if spec.reshape is not None:
            t.reshape.SetInParent()  # present with shape [] : the model's tensor is [N]
            t.reshape.shape.extend(spec.reshape)
    cfg.dynamic_batching.preferred_batch_size.append(int(preferred_batch))
    cfg.dynamic_batching.max_queue_delay_microseconds = int(queue_delay_us)
    group = cfg.instance_group.add()
    group.count = int(instances)
    group.kind = pb.ModelInstanceGroup.Kind.Value("KIND_GPU" if platform == "tensorrt_plan" else "KIND_CPU")
    for k, v in gate_parameters(meta, sha256_file(model), model.name).items():
        cfg.parameters[k].string_value = v
    return cfg


def check_repository(repo: Path, name: str) -> dict[str, Any]:
    """Parse ``repo/name/config.pbtxt`` as Triton's ``ModelConfig`` and check every field against
    the model file in ``repo/name/1/``. Returns a summary; every problem found is in the error.

    Raises:
        TritonConfigError: naming the file and each field that is wrong, with what was expected.
    """
    pb, text_format = _pb()
    folder = repo / name
    path = folder / "config.pbtxt"
    if not path.is_file():
        raise TritonConfigError(f"{path}: no such file: expected a Triton model config")
    cfg = pb.ModelConfig()
    try:
        text_format.Parse(path.read_text(encoding="utf-8"), cfg)
    except (text_format.ParseError, UnicodeDecodeError) as e:
        raise TritonConfigError(f"{path}: not a Triton ModelConfig in protobuf text format: {e}") from None
    problems: list[str] = []

    def want(ok: bool, field: str, msg: str) -> None:
        if not ok:
            problems.append(f"{field}: {msg}")

    want(cfg.name == name, "name", f"{cfg.name!r}, expected the folder's name {name!r}")
    by_platform = {p: f for p, f in PLATFORMS.values()}
    want(cfg.platform in by_platform, "platform",
         f"{cfg.platform!r}, expected one of {', '.join(sorted(by_platform))}")
    model = folder / VERSION / by_platform.get(cfg.platform, "model.onnx")
    versions = sorted(p.name for p in folder.iterdir() if p.is_dir())
    want(versions == [VERSION], "version folders", f"{versions}, expected ['{VERSION}']")
    if problems or not model.is_file():
        if not model.is_file():
            problems.append(f"model file: {model} is missing (platform {cfg.platform!r} loads {model.name})")
        raise TritonConfigError(f"{path}: " + "; ".join(problems))
    meta, tensors, trt = _model_io(model)  # a plan's sidecar travels beside it as model.plan.json
    inputs, outputs = io_spec(meta)

    want(cfg.max_batch_size >= 1, "max_batch_size", f"{cfg.max_batch_size}, expected >= 1 (the model is batched)")
    first = tensors.get(INPUT_NAME, (None, [1]))[1]
    want(bool(first) and first[0] is None, "max_batch_size",
         f"the model's first input dimension is {first[0] if first else None}, expected a dynamic batch axis")
    if trt is not None:
        prof = trt["profile"]
        want(int(prof["min"]) == 1, "max_batch_size",
             f"the plan's profile starts at batch {prof['min']}; Triton sends batches from 1: rebuild with --min-batch 1")
        want(cfg.max_batch_size <= int(prof["max"]), "max_batch_size",
             f"{cfg.max_batch_size} is above the plan's profile maximum {prof['max']}")

    def check_tensors(kind: str, got: Any, specs: list[TensorSpec]) -> None:
        names = [t.name for t in got]
        want(sorted(names) == sorted(s.name for s in specs), kind,
             f"{names}, expected {[s.name for s in specs]}")
        for t in got:
            spec = next((s for s in specs if s.name == t.name), None)
            if spec is None:
                continue
            field = f"{kind} '{t.name}'"
            dtype = pb.DataType.Name(t.data_type)
            model_dtype, model_shape = tensors.get(t.name, (None, None))
            want(model_shape is not None, field, "the model file has no tensor of this name")
            want(dtype == spec.triton_type and TRITON_DTYPES.get(str(model_dtype)) == dtype, field + " data_type",
                 f"{dtype}, the model's is {model_dtype} ({TRITON_DTYPES.get(str(model_dtype), 'no Triton type')})")
            dims = tuple(t.dims)
            want(dims == spec.dims, field + " dims", f"{list(dims)}, expected {list(spec.dims)}")
            has_reshape = t.HasField("reshape")
            held = tuple(t.reshape.shape) if has_reshape else dims
            if model_shape is not None:
                inner = model_shape[1:]
                fits = len(inner) == len(held) and all(d is None or d == h for d, h in zip(inner, held))
                want(fits, field + (" reshape" if has_reshape else " dims"),
                     f"{list(held)} does not fit the model's {['N' if d is None else d for d in model_shape]} "
                     "(batch axis first)")

    check_tensors("input", cfg.input, inputs)
    check_tensors("output", cfg.output, outputs)
    want(cfg.HasField("dynamic_batching"), "dynamic_batching", "missing: requests would not be batched together")
    for p in cfg.dynamic_batching.preferred_batch_size:
        want(1 <= p <= cfg.max_batch_size, "dynamic_batching.preferred_batch_size",
             f"{p}, expected 1..max_batch_size ({cfg.max_batch_size})")
    want(len(cfg.instance_group) >= 1, "instance_group", "missing: expected at least one group")
    for g in cfg.instance_group:
        kind = pb.ModelInstanceGroup.Kind.Name(g.kind)
        want(g.count >= 1, "instance_group.count", f"{g.count}, expected >= 1")
        ok_kinds = ("KIND_GPU",) if cfg.platform == "tensorrt_plan" else ("KIND_CPU", "KIND_GPU")
        want(kind in ok_kinds, "instance_group.kind", f"{kind}, expected {' or '.join(ok_kinds)}")
    source = cfg.parameters[PARAM_PREFIX + "source_file"].string_value if PARAM_PREFIX + "source_file" in \
        cfg.parameters else "(missing)"  # a name only: the hash below is what ties the config to the file
    expected = gate_parameters(meta, sha256_file(model), source)
    for k, v in expected.items():
        got = cfg.parameters[k].string_value if k in cfg.parameters else None
        want(got == v, f"parameters['{k}']", f"{got!r}, expected {v!r} (from the model file)")
    if problems:
        raise TritonConfigError(f"{path}: does not match {model.relative_to(repo)}: " + "; ".join(problems))
    return {"config": str(path), "model": str(model), "platform": cfg.platform, "max_batch_size": cfg.max_batch_size,
            "preferred_batch_size": list(cfg.dynamic_batching.preferred_batch_size),
            "max_queue_delay_microseconds": int(cfg.dynamic_batching.max_queue_delay_microseconds),
            "instances": sum(g.count for g in cfg.instance_group),
            "threshold": float(meta["gate"]["threshold"])}


def export_repository(artifact: Path, source: Path, *, name: str = DEFAULTS["model_name"], max_batch: int | None = None,
                      preferred_batch: int = DEFAULTS["preferred_batch"], queue_delay_us: int = DEFAULTS["queue_delay_us"],
                      instances: int = DEFAULTS["instances"]) -> tuple[Path, dict]:
    """Write ``artifact/triton/<name>/`` for ``source`` (an exported file in ``artifact``), checked with
    :func:`check_repository` before it replaces an earlier ``<name>``; other models there are kept.

    Raises:
        ValueError: a bad name or option, or a missing source file (naming the export that makes it).
        TritonConfigError: the written repository failed its own check (nothing is replaced).
    """
    check_model_name(name)
    if not source.is_file():
        from .targets import target_for_file
        raise ValueError(f"{source}: no such file: export it first with 'lenet-tool export {artifact} "
                         f"--target {target_for_file(source.name)}'")
    if source.suffix not in PLATFORMS:
        raise ValueError(f"{source}: expected an ONNX file or a TensorRT plan (.engine)")
    meta, _, trt = _model_io(source)
    if max_batch is None:  # ONNX Runtime takes any batch; a plan, what its profile allows
        max_batch = min(1024, int(trt["profile"]["max"])) if trt else 1024
    for flag, v, lo in (("--max-batch", max_batch, 1), ("--preferred-batch", preferred_batch, 1),
                        ("--queue-delay-us", queue_delay_us, 0), ("--instances", instances, 1)):
        if int(v) < lo:
            raise ValueError(f"{flag} {v}: expected at least {lo}")
    if preferred_batch > max_batch:
        raise ValueError(f"--preferred-batch {preferred_batch}: expected at most --max-batch ({max_batch})")
    _, text_format = _pb()
    cfg = build_config(name, source, meta, max_batch=max_batch, preferred_batch=preferred_batch,
                       queue_delay_us=queue_delay_us, instances=instances)
    repo = artifact / "triton"
    repo.mkdir(parents=True, exist_ok=True)
    # Built aside in the artifact folder (same file system, so the final rename is atomic), checked,
    # then swapped in: a failed export leaves an earlier repository as it was.
    stage = Path(tempfile.mkdtemp(prefix=".triton-", dir=artifact))
    try:
        folder = stage / name
        (folder / VERSION).mkdir(parents=True)
        filename = PLATFORMS[source.suffix][1]
        shutil.copyfile(source, folder / VERSION / filename)
        if trt is not None:  # the sidecar travels with the plan: the runtime and check_repository read it
            from runtime.backends.trt import sidecar_path
            shutil.copyfile(sidecar_path(source), sidecar_path(folder / VERSION / filename))
        header = (f"# Triton model config written by lenet-tool export --target triton from {source.name}\n"
                  f"# ({time.strftime('%Y-%m-%d %H:%M:%S %Z')}); checked against {VERSION}/{filename} on write.\n")
        (folder / "config.pbtxt").write_text(header + text_format.MessageToString(cfg), encoding="utf-8")
        summary = check_repository(stage, name)
        final = repo / name
        old = None
        if final.exists():
            old = stage / ".replaced"
            final.rename(old)
        folder.rename(final)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    summary.update(config=str(final / "config.pbtxt"), model=str(final / VERSION / filename), repository=str(repo))
    return final, summary


def describe_summary(s: dict[str, Any]) -> str:
    """One line for ``export``'s output from :func:`check_repository`'s summary."""
    kind = "GPU" if s["platform"] == "tensorrt_plan" else "CPU"
    return (f"config.pbtxt parses as Triton's ModelConfig and matches {Path(s['model']).parent.name}/"
            f"{Path(s['model']).name}: platform {s['platform']}, max_batch_size {s['max_batch_size']}, dynamic "
            f"batching (preferred {', '.join(map(str, s['preferred_batch_size']))}, queue delay "
            f"{s['max_queue_delay_microseconds']} us), {s['instances']} {kind} instance"
            f"{'s' if s['instances'] != 1 else ''}, gate threshold {s['threshold']:.6g}")

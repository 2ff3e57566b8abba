"""The ``lenet-tool`` command line: thin Click commands over the library functions.

Exit status: 0 success, 1 a check failed (verify, bench targets, a gate that cannot be
certified), 2 bad usage or bad input (with a message naming what was given and expected).
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from . import __version__

DEFAULT_OUT = Path("artifacts/lenet")


class CheckFailed(Exception):
    """A check ran and failed: exit status 1."""


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the library's typed errors into a one-line message and the contract's exit status."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from runtime.fileio import ArtifactError

        from .data import DataError
        from .gate import CertificationError, GateError
        try:
            return fn(*args, **kwargs)
        except CheckFailed as e:
            click.echo(f"Check failed: {e}", err=True)
            sys.exit(1)
        except CertificationError as e:
            click.echo(f"Error: {e}", err=True)
            sys.exit(1)
        except (DataError, ArtifactError, GateError, ValueError, FileNotFoundError) as e:
            click.echo(f"Error: {e}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("Interrupted: files already written are intact (every write is atomic).", err=True)
            sys.exit(130)
    return wrapper


def data_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--train-csv/--test-csv/--idx-dir, shared by every command that reads the dataset."""
    later = " Default: for train, the embedded MNIST; after it, the data the artifact was trained on (SHA-256 checked)."
    fn = click.option("--idx-dir", type=click.Path(path_type=Path),
                      help="Folder of the four MNIST-named IDX files (gzip'd or not)." + later)(fn)
    fn = click.option("--test-csv", type=click.Path(path_type=Path),
                      help="Test set in the seed's CSV format (label,784 pixels; header optional)." + later)(fn)
    fn = click.option("--train-csv", type=click.Path(path_type=Path),
                      help="Training set in the seed's CSV format (label,784 pixels; header optional)." + later)(fn)
    return fn


def load_splits(train_csv: Path | None, test_csv: Path | None, idx_dir: Path | None,
                need_train: bool = True, artifact: Path | None = None) -> tuple[Any, Any]:
    """See :func:`toolchain.jobs.load_splits` (imported lazily: torch is slow to import)."""
    from .jobs import load_splits as load
    return load(train_csv, test_csv, idx_dir, need_train=need_train, artifact=artifact)


GATE_FIELDS = ("method", "target_risk", "delta", "score", "search", "energy_floor", "novelty_ceiling",
               "strict_risk", "one_frame_per_digit")


def gate_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The gate's fitting options, shared by train and calibrate: the command gets one
    ``gate_cfg`` (a :class:`toolchain.gate.GateConfig`) in their place, and ``ood_data``."""
    from .gate import DEFAULT_ENERGY_FLOOR, DEFAULT_NOVELTY_CEILING, DEFAULT_SCORE, METHODS, SCORES

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from .gate import GateConfig, GateError
        for name, value in (("--target-risk", kwargs["target_risk"]), ("--delta", kwargs["delta"])):
            if not 0.0 < value < 1.0:
                raise click.BadParameter(f"{value}: expected a value in (0, 1)", param_hint=name)
        try:
            cfg = GateConfig(**{k: kwargs.pop(k) for k in GATE_FIELDS})
        except GateError as e:  # exit 2, like every other bad option
            raise click.UsageError(str(e)) from None
        return fn(*args, gate_cfg=cfg, **kwargs)

    opts = [
        click.option("--method", type=click.Choice(METHODS), default="guaranteed", show_default=True,
                     help="Gate method: temperature scaling with a certified threshold, or the notebook's rule."),
        click.option("--target-risk", type=float, default=0.002, show_default=True,
                     help="Largest error rate allowed among accepted inputs (guaranteed method)."),
        click.option("--strict-risk", is_flag=True,
                     help="Fail (exit 1) when --target-risk cannot be certified, instead of certifying the lowest "
                          "risk of the ladder 0.2%, 0.5%, 1%, 2%, 5%, 10%, 20% that can be (or, on too little "
                          "held-out data, the uncertified empirical rule)."),
        click.option("--one-frame-per-digit", is_flag=True,
                     help="Field models: certify with one frame of each held-out digit (raw or its camera rendering, "
                          "by a seeded coin), so the certificate's draws are independent; a digit's two frames err "
                          "together. Stricter: on the default recipe 1-7 points less coverage on average over divisions, and a "
                          "wide spread between them (docs/gate.md)."),
        click.option("--delta", type=float, default=0.05, show_default=True,
                     help="The guarantee holds with probability at least 1 - delta."),
        click.option("--score", type=click.Choice(SCORES), default=DEFAULT_SCORE, show_default=True,
                     help="Gate score of the guaranteed method."),
        click.option("--novelty-ceiling", type=float, default=DEFAULT_NOVELTY_CEILING, show_default=True,
                     help="msp-energy: refuse frames whose novelty residual is above this percentile of held-out "
                          "digits' (100: no such refusal)."),
        click.option("--energy-floor", type=float, default=DEFAULT_ENERGY_FLOOR, show_default=True,
                     help="msp-energy: refuse frames whose energy is below this percentile of held-out digits'."),
        click.option("--search", type=click.Choice(["ltt", "sgr"]), default="ltt", show_default=True,
                     help="Threshold search: Learn-then-Test fixed sequence, or SGR's binary search."),
        click.option("--ood-data", type=click.Path(path_type=Path),
                     help="Extra out-of-distribution images to measure acceptance on (CSV, IDX file or folder)."),
    ]
    for opt in reversed(opts):
        wrapper = opt(wrapper)
    return wrapper


def _emit(as_json: bool, obj: Any, text: str) -> None:
    click.echo(json.dumps(obj, indent=2) if as_json else text)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="lenet-tool")
def main() -> None:
    """Train, calibrate, export, verify and benchmark LeNet digit classifiers with a confidence gate."""


# --------------------------------------------------------------------------- train

def _parse_rotations(text: str | None) -> tuple[float, ...] | None:
    """``--view-rotations``: comma-separated degrees, or 'none' for the frame alone."""
    if text is None:
        return None
    if text.strip().lower() == "none":
        return ()
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected comma-separated degrees such as -15,-7.5,7.5,15, "
                                 "or 'none'", param_hint="--view-rotations") from None


@main.command()
@click.option("--out", type=click.Path(path_type=Path), default=DEFAULT_OUT, help="Artifact folder.")
@click.option("--recipe", type=click.Choice(["default", "seed"]), default="default",
              help="'seed' reproduces the notebook's hyperparameters exactly.")
@click.option("--arch", type=click.Choice(["lenet5", "lenet5-classic"]), default=None,
              help="Architecture (default: the recipe's; lenet5 for 'default').")
@click.option("--epochs", type=int, default=None, help="Epochs (default: the recipe's; 14 for 'default').")
@click.option("--batch-size", type=int, default=None, help="Batch size (default: the recipe's).")
@click.option("--lr", type=float, default=None, help="Peak learning rate (default: the recipe's).")
@click.option("--outlier-fraction", type=float, default=None,
              help="Synthetic non-digits per real image, trained toward uniform (default: the recipe's).")
@click.option("--outlier-weight", type=float, default=None,
              help="Weight of the outliers' loss against the digits' (default: the recipe's).")
@click.option("--glyph-weight", type=float, default=None,
              help="Weight of the field's printed letters and symbols among the outliers, times another "
                   "outlier's (default: the recipe's; 10).")
@click.option("--field-fraction", type=float, default=None,
              help="Share of each batch that is camera crops run through the preprocessing's torch twin "
                   "(default: the recipe's; 0.25 for 'default', 0 for 'seed'; 0 turns the field off).")
@click.option("--translate", type=float, default=None,
              help="Random shift augmentation in pixels (default: the recipe's; 0 for 'default').")
@click.option("--polarity", type=click.Choice(["auto", "none"]), default=None,
              help="'auto' inverts dark-on-light frames in the graph itself (default: the recipe's).")
@click.option("--view-rotations", default=None, metavar="DEG,DEG,...|none",
              help="Test-time views: the kept model averages its logits over the frame and these rotations "
                   "of it, in the graph too (default: the recipe's; -15,15 for 'default').")
@click.option("--device", default="auto", help="auto, cpu, cuda or cuda:N; data stays resident there.")
@click.option("--seed", type=int, default=0, help="Seed of the split, initialisation and augmentation.")
@click.option("--deterministic", is_flag=True, help="Use deterministic algorithms only (slower on CUDA).")
@click.option("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice).")
@click.option("--resume", is_flag=True, help="Continue from OUT/last.pt (same options; --epochs may grow).")
@click.option("--class-names", default=None, metavar="A,B,...|FILE",
              help="Names of the 10 classes in label order, comma-separated or a file with one a line; they travel "
                   "in every exported file and runtime.Result.class_name (default: 0-9).")
@data_options
@gate_options
@click.option("--quiet", is_flag=True, help="No progress bar or environment report.")
@click.option("--json", "as_json", is_flag=True, help="Print metrics.json's content as JSON at the end.")
@handle_errors
def train(out: Path, recipe: str, arch: str | None, epochs: int | None, batch_size: int | None, lr: float | None,
          outlier_fraction: float | None, outlier_weight: float | None, glyph_weight: float | None,
          field_fraction: float | None,
          translate: float | None, polarity: str | None, view_rotations: str | None, device: str, seed: int,
          deterministic: bool, threads: int | None, resume: bool, class_names: str | None,
          train_csv: Path | None, test_csv: Path | None, idx_dir: Path | None, gate_cfg: Any,
          ood_data: Path | None, quiet: bool, as_json: bool) -> None:
    """Train LeNet, evaluate it, calibrate its gate, and write the artifact folder."""
    import torch

    from . import jobs
    from .data import parse_class_names
    from .evaluate import per_class_table
    from .train import environment_report, make_config, resolve_device

    if threads is not None:
        if threads < 1:
            raise click.BadParameter(f"{threads}: expected at least 1", param_hint="--threads")
        torch.set_num_threads(threads)
    cfg = make_config(recipe, arch=arch, epochs=epochs, batch_size=batch_size, lr=lr,
                      outlier_fraction=outlier_fraction, outlier_weight=outlier_weight, glyph_weight=glyph_weight,
                      field_fraction=field_fraction, translate=translate,
                      polarity=polarity,
                      view_rotations=_parse_rotations(view_rotations), device=device,
                      seed=seed,
                      deterministic=deterministic)
    names = parse_class_names(class_names) if class_names is not None else None
    train_ds, test_ds = load_splits(train_csv, test_csv, idx_dir)
    ood_images = jobs.load_ood_images(ood_data) if ood_data else None
    quiet = quiet or as_json
    if not quiet:
        env = environment_report(resolve_device(cfg.device))
        click.echo("Environment: " + ", ".join(f"{k}={v}" for k, v in env.items()), err=True)
        click.echo(f"Data: train {train_ds.source} ({len(train_ds)}), test {test_ds.source} ({len(test_ds)})", err=True)
    bar: Any = None

    def on_start(start_epoch: int, n_train: int) -> None:
        nonlocal bar
        if quiet:
            return
        from tqdm import tqdm
        bar = tqdm(total=cfg.epochs * n_train, initial=start_epoch * n_train, unit="img", unit_scale=True,
                   desc=f"epoch {start_epoch + 1}/{cfg.epochs}", file=sys.stderr, dynamic_ncols=True,
                   mininterval=0.2 if sys.stderr.isatty() else 10.0)  # a log file gets a line every 10 s

    def on_batch(n: int) -> None:
        if bar is not None:
            bar.update(n)

    def on_epoch(rec: dict[str, float]) -> None:
        if bar is not None:
            bar.set_description(f"epoch {int(rec['epoch']) + 1 if rec['epoch'] < cfg.epochs else cfg.epochs}"
                                f"/{cfg.epochs}")
            bar.set_postfix(train_loss=f"{rec['train_loss']:.4f}", val_loss=f"{rec['val_loss']:.4f}",
                            val_acc=f"{100 * rec['val_accuracy']:.2f}%")

    try:
        metrics = jobs.train(cfg, out, train_ds, test_ds, resume=resume, gate_cfg=gate_cfg, class_names=names,
                             ood_images=ood_images, ood_name=str(ood_data) if ood_data else None,
                             on_start=on_start, on_batch=on_batch, on_epoch=on_epoch)
    finally:
        if bar is not None:
            bar.close()
    g = metrics["gate"]
    text = "\n".join([
        per_class_table(metrics["test"], metrics["class_names"]),
        f"Test loss: {metrics['test']['loss']:.4f}   training: {metrics['train']['seconds']:.1f} s on "
        f"{metrics['train']['device']}, best epoch {metrics['train']['best_epoch']}",
        f"Gate ({g['method']}, {g['score']}): threshold {g['threshold']:.6f}, test coverage "
        f"{100 * g['test']['coverage']:.2f}%, selective risk {100 * g['test']['selective_risk']:.3f}%",
        g["certification_line"],
        f"Artifact: {out}",
    ])
    _emit(as_json, metrics, text)


# --------------------------------------------------------------------------- calibrate

@main.command()
@click.argument("artifact", type=click.Path(path_type=Path), default=DEFAULT_OUT)
@gate_options
@data_options
@click.option("--holdout-csv", type=click.Path(path_type=Path),
              help="Held-out data to fit on (CSV) instead of the checkpoint's own held-out split.")
@click.option("--holdout-idx", type=click.Path(path_type=Path),
              help="Held-out data to fit on (IDX folder, 'train'-named files) instead of the checkpoint's split.")
@click.option("--json", "as_json", is_flag=True, help="Print the gate metrics as JSON.")
@handle_errors
def calibrate(artifact: Path, gate_cfg: Any, ood_data: Path | None, train_csv: Path | None,
              test_csv: Path | None, idx_dir: Path | None,
              holdout_csv: Path | None, holdout_idx: Path | None, as_json: bool) -> None:
    """Re-fit the gate of a trained ARTIFACT folder without retraining."""
    from . import jobs
    g = jobs.recalibrate(artifact, gate_cfg, train_csv=train_csv, test_csv=test_csv, idx_dir=idx_dir,
                         holdout_csv=holdout_csv, holdout_idx=holdout_idx, ood_data=ood_data)
    _emit(as_json, g, format_gate_table(g))


def format_gate_table(g: dict[str, Any]) -> str:
    """The side-by-side comparison of gate methods, as text."""
    kinds = list(next((r["ood_acceptance"] for r in g["comparison"] if "ood_acceptance" in r), {}))
    head = f"{'method':<11} {'score':<12} {'threshold':>10} {'coverage':>9} {'risk':>8} {'AURC':>8}  " + \
        "  ".join(f"{k[:14]:>14}" for k in kinds)
    lines = [g["certification_line"], "Gate comparison (test set; OOD columns: share of frames accepted)", head]
    for r in g["comparison"]:
        if "error" in r:
            lines.append(f"{r['method']:<11} {r['score']:<12} cannot fit: {r['error']}")
            continue
        mark = " *" if r.get("chosen") else ""
        lines.append(f"{r['method']:<11} {r['score']:<12} {r['threshold']:>10.6f} {100 * r['test']['coverage']:>8.2f}% "
                     f"{100 * r['test']['selective_risk']:>7.3f}% {r['test']['aurc']:>8.5f}  " +
                     "  ".join(f"{100 * r['ood_acceptance'][k]:>13.2f}%" for k in kinds) + mark)
    e = g["ece_15_bins"]
    lines.append(f"ECE (15 bins): {100 * e['before_temperature']:.3f}% before, {100 * e['after_temperature']:.3f}% "
                 f"after temperature scaling (T = {e['temperature']:.4f}); * = the gate in use")
    v = g.get("versus_seed_rule")
    if v:
        lines.append(f"Against the notebook's rule: at its coverage ({100 * v['seed_coverage']:.2f}%) the gate's score "
                     f"errs on {100 * v['risk_at_seed_coverage']:.3f}% (rule: {100 * v['seed_selective_risk']:.3f}%); "
                     f"at its risk the score covers {100 * v['coverage_at_seed_risk']:.2f}%")
    errs = g.get("accepted_holdout_errors")
    if errs is not None:
        count = g.get("accepted_holdout_error_count", len(errs))
        lines.append(f"Held-out frames accepted but labelled otherwise: {count}, most sure first (given label -> "
                     "model's): " + ", ".join(f"{r['label']}->{r['predicted']}" for r in errs[:12]) +
                     (" ..." if count > 12 else "") + " (report/gate_accepted_errors.png)")
    return "\n".join(lines)


# --------------------------------------------------------------------------- export

def _targets() -> dict[str, Any]:
    from exporters.targets import TARGETS
    return TARGETS


def _sources() -> list[str]:
    from exporters.targets import TRITON_SOURCES
    return list(TRITON_SOURCES)


def _repository_default(option: str) -> Any:
    """The Triton repository's default for ``option``: 'serve' binds the model under the same."""
    from exporters.targets import DEFAULTS
    return DEFAULTS[option]


@main.command()
@click.argument("artifact", type=click.Path(path_type=Path), default=DEFAULT_OUT)
@click.option("--target", "targets", multiple=True, required=True, type=click.Choice(list(_targets())),
              help="What to export (repeatable). " + "; ".join(f"{t.name}: {t.description}"
                                                              for t in _targets().values()) + ".")
@click.option("--opset", type=int, default=None, help="ONNX opset [onnx targets; default 17].")
@click.option("--validate-images", type=int, default=None,
              help="Test images the export is validated on against PyTorch [onnx targets and trt; default 10000; "
                   "0 skips].")
@click.option("--calibration-images", type=int, default=None,
              help="Training images (a seeded sample, never held-out ones) that calibrate int8 quantization "
                   "[onnx-int8; default 5000].")
@click.option("--int8-format", type=click.Choice(["qdq", "qoperator"]), default=None,
              help="QDQ (TensorRT and ONNX Runtime) or QOperator (ONNX Runtime CPU) [onnx-int8; default qdq].")
@click.option("--source", type=click.Choice(_sources()), default=None,
              help="Which exported file: the ONNX file a plan is built from [trt: onnx, int8 or fp16; default onnx], "
                   "or the file a Triton repository serves [triton: also trt, the plan; default onnx].")
@click.option("--min-batch", type=int, default=None, help="Plan profile minimum batch [trt; default 1].")
@click.option("--opt-batch", type=int, default=None, help="Plan profile optimal batch [trt; default 32].")
@click.option("--max-batch", type=int, default=None,
              help="Plan profile maximum batch [trt; default 1024]; Triton's max_batch_size [triton; default 1024, "
                   "or a plan's profile maximum if lower].")
@click.option("--model-name", default=None, help="Model name in the Triton repository [triton; default lenet].")
@click.option("--preferred-batch", type=int, default=None,
              help="Dynamic batching's preferred batch size [triton; default 64].")
@click.option("--queue-delay-us", type=int, default=None,
              help="Dynamic batching's longest wait for a fuller batch, microseconds [triton; default 100].")
@click.option("--instances", type=int, default=None, help="Model instances (instance_group count) [triton; default 1].")
@click.option("--workspace-mib", type=int, default=None, help="Builder workspace limit in MiB [trt; default 256].")
@click.option("--timing-cache", type=click.Path(path_type=Path), default=None,
              help="Timing cache file, read and updated [trt; default ARTIFACT/timing.cache].")
@data_options
@click.option("--json", "as_json", is_flag=True, help="Print the export results as JSON.")
@handle_errors
def export(artifact: Path, targets: tuple[str, ...], train_csv: Path | None, test_csv: Path | None,
           idx_dir: Path | None, as_json: bool, **options: Any) -> None:
    """Export a calibrated ARTIFACT folder's model, validating each file against PyTorch."""
    import exporters
    from exporters.targets import check_options
    from exporters.tensorrt import TensorRTUnavailable
    from exporters.triton import TritonUnavailable, describe_summary
    from exporters.validate import ValidationError

    for t in targets:  # every option problem before any work
        check_options(t, options)
    from exporters.targets import TARGETS
    # A repository copies an exported file: whatever the order given, it comes after the files.
    targets = tuple(sorted(targets, key=lambda name: TARGETS[name].format is None))
    need_train = "onnx-int8" in targets
    if set(targets) == {"triton"}:  # a repository copies an exported file: no images to validate on
        import numpy as np
        train_ds, test_images, test_labels = None, np.zeros((0, 1, 28, 28), np.uint8), None
    else:
        train_ds, test_ds = load_splits(train_csv, test_csv, idx_dir, need_train=need_train, artifact=artifact)
        test_images, test_labels = test_ds.images[:, None], test_ds.labels
    results = []
    for t in targets:
        try:
            r = exporters.export(artifact, t, test_images=test_images, test_labels=test_labels,
                                 calib_images=train_ds.images[:, None] if train_ds is not None else None,
                                 **{k: v for k, v in options.items() if v is not None})
        except ValidationError as e:
            raise CheckFailed(f"export of {t} failed validation; the file was not kept:\n{e}") from None
        except (TensorRTUnavailable, TritonUnavailable) as e:
            raise ValueError(str(e)) from None
        results.append({"target": t, "path": str(r.path), "seconds": r.seconds, **r.details,
                        "validation": r.report.to_dict() if r.report else None})
        if not as_json:
            click.echo(f"{t}: wrote {r.path} in {r.seconds:.2f} s")
            if r.report:
                click.echo(r.report.describe())
            if "triton" in r.details:
                click.echo("  " + describe_summary(r.details["triton"]))
            if "trt_rules" in r.details:  # reported, not enforced: the file may be meant for another runtime
                broken = r.details["trt_rules"]
                click.echo("  TensorRT parser rules: none broken" if not broken else
                           f"  TensorRT parser rules broken ({len(broken)}): " + "; ".join(broken))
    if as_json:
        click.echo(json.dumps(results, indent=2))


@main.command()
@click.argument("artifact", type=click.Path(path_type=Path), default=DEFAULT_OUT)
@click.option("--source", type=click.Choice(_sources()), default="onnx", show_default=True,
              help="Which exported file to serve: model.onnx, model.int8.onnx, model.fp16.onnx or model.engine "
                   "(ignored when ARTIFACT is a model file).")
@click.option("--model-name", default=_repository_default("model_name"), show_default=True,
              help="The name clients ask for.")
@click.option("--backend", default="auto", show_default=True, help="Runtime backend of the Classifier behind it.")
@click.option("--address", default="0.0.0.0", show_default=True, help="Address the three endpoints listen on.")
@click.option("--http-port", type=int, default=8000, show_default=True)
@click.option("--grpc-port", type=int, default=8001, show_default=True)
@click.option("--metrics-port", type=int, default=8002, show_default=True, help="Prometheus metrics port.")
@click.option("--max-batch", type=int, default=_repository_default("max_batch"), show_default=True,
              help="Triton's max_batch_size: the largest request, and the largest batch dynamic batching forms.")
@click.option("--instances", type=int, default=None,
              help="Model instances, each its own Classifier, run concurrently (default: one per CPU core, at most 4).")
@click.option("--preferred-batch", type=int, default=_repository_default("preferred_batch"), show_default=True,
              help="Dynamic batching's preferred batch size.")
@click.option("--queue-delay-us", type=int, default=_repository_default("queue_delay_us"), show_default=True,
              help="Dynamic batching's longest wait for a fuller batch, microseconds.")
@click.option("--drain-timeout", type=int, default=5, show_default=True,
              help="On SIGINT/SIGTERM, seconds Triton waits for in-flight requests and open connections.")
@click.option("--threads", type=int, default=None,
              help="CPU threads per instance's backend session (default: the cores shared among the instances).")
@handle_errors
def serve(artifact: Path, source: str, model_name: str, backend: str, address: str, http_port: int, grpc_port: int,
          metrics_port: int, max_batch: int, instances: int | None, preferred_batch: int, queue_delay_us: int,
          drain_timeout: int, threads: int | None) -> None:
    """Serve ARTIFACT's gated model on Triton Inference Server (HTTP, gRPC, metrics) until SIGINT/SIGTERM.

    The model is bound under the name, inputs and outputs of 'export --target triton'; one line
    says when it is ready. Needs the [serve] extra (nvidia-pytriton, tritonclient).
    """
    from exporters.targets import TRITON_SOURCES, target_for_file

    from .serve import ServeError, ServeOptions, ServeUnavailable, serve_forever
    model = artifact if artifact.is_file() else artifact / TRITON_SOURCES[source]
    if not model.is_file():
        raise ValueError(f"{model}: no such file: export it first ('lenet-tool export {artifact} --target "
                         f"{target_for_file(model.name)}')")
    opts = ServeOptions(model_name=model_name, backend=backend, address=address, http_port=http_port,
                        grpc_port=grpc_port, metrics_port=metrics_port, max_batch=max_batch, instances=instances,
                        preferred_batch=preferred_batch, queue_delay_us=queue_delay_us, drain_timeout=drain_timeout,
                        threads=threads)
    try:
        serve_forever(model, opts, lambda line: click.echo(line))
    except (ServeUnavailable, ServeError) as e:
        click.echo(f"Error: {e}", err=True)
        sys.exit(2 if isinstance(e, ServeUnavailable) else 1)


@main.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--check", type=click.Choice(["trt"]), default=None,
              help="Also hold an ONNX file against a runtime's documented rules: 'trt', the onnx-tensorrt parser's "
                   "(no TensorRT needed); exit 1 when one is broken.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@handle_errors
def info(path: Path, check: str | None, as_json: bool) -> None:
    """Describe a checkpoint, an ONNX file, a TensorRT plan, or every model in an artifact folder."""
    from .info import describe_path
    obj, text = describe_path(path)
    broken: list[str] = []
    if check == "trt":
        from exporters.trt_rules import check_trt_rules
        if path.suffix != ".onnx":
            raise click.BadParameter(f"{path}: --check trt reads an ONNX file", param_hint="--check")
        broken = [str(v) for v in check_trt_rules(path)]
        obj = {**obj, "trt_rules": broken}
        text += ("\nTensorRT parser rules: none broken" if not broken else
                 f"\n{path.name} violates the TensorRT parser's rules ({len(broken)}):\n  " + "\n  ".join(broken))
    _emit(as_json, obj, text)
    if broken:
        sys.exit(1)


# --------------------------------------------------------------------------- verify, bench, predict

@main.command()
@click.argument("artifact", type=click.Path(path_type=Path), default=DEFAULT_OUT)
@click.argument("files", nargs=-1, type=click.Path(path_type=Path))
@click.option("--backend", "--runtime", "backend", default="auto",
              help="Runtime backend for every file: auto (each file's default), a backend name, or 'all': every "
                   "installed runtime on every file it loads, with one agreement table.")
@click.option("--test-csv", type=click.Path(path_type=Path),
              help="Test set as a seed CSV (default: the test set the artifact was trained with, SHA-256 checked).")
@click.option("--idx-dir", type=click.Path(path_type=Path), help="Folder of IDX files holding the test set.")
@click.option("--field-images", type=int, default=1000,
              help="Test digits rendered as 'mild' camera crops for model.onnx (reported; 0 skips).")
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON.")
@handle_errors
def verify(artifact: Path, files: tuple[Path, ...], backend: str, test_csv: Path | None, idx_dir: Path | None,
           field_images: int, as_json: bool) -> None:
    """Check every exported file in ARTIFACT (or FILES) against the PyTorch checkpoint.

    Hashes are checked against manifest.json first; then each file runs through runtime on the
    full test set and its seed-protocol version. Exit 1 if anything disagrees. Then model.onnx
    runs on 'mild' camera crops of the test digits (see 'lenet-tool field'), reported, when every file passed.
    """
    from .verify import format_verify, to_json
    from .verify import verify as run_verify
    test = load_splits(None, test_csv, idx_dir, need_train=False, artifact=artifact)[1]
    res = run_verify(artifact, test, [Path(f) for f in files] or None, backend=backend, field_images=field_images)
    _emit(as_json, to_json(res), format_verify(res))
    if not res["passed"]:
        sys.exit(1)


@main.command()
@click.argument("artifact", type=click.Path(path_type=Path), default=DEFAULT_OUT)
@click.argument("files", nargs=-1, type=click.Path(path_type=Path))
@click.option("--threads", type=int, default=1, help="Threads for ONNX Runtime and PyTorch alike.")
@click.option("--iters", type=int, default=3000, help="Batch-1 calls timed per runner.")
@click.option("--seconds", type=float, default=1.0, help="Time per throughput measurement.")
@click.option("--soak", type=int, default=0, help="Also run this many batch-1 predictions and report memory growth.")
@click.option("--check/--no-check", default=True, help="Exit 1 when a target is missed.")
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON.")
@handle_errors
def bench(artifact: Path, files: tuple[Path, ...], threads: int, iters: int, seconds: float, soak: int, check: bool,
          as_json: bool) -> None:
    """Time runtime.Classifier beside PyTorch eager and a bare InferenceSession, same run."""
    from .bench import format_bench, run_bench
    if threads < 1:
        raise click.BadParameter(f"{threads}: expected at least 1", param_hint="--threads")
    res = run_bench(artifact, [Path(f) for f in files], threads=threads, iters=iters, seconds=seconds, soak_n=soak,
                    progress=None if as_json else lambda p: click.echo(f"benchmarking {p} ...", err=True))
    fails = res["missed"]
    _emit(as_json, res, format_bench(res["results"], res["import_runtime_seconds"], res["soak"], fails))
    if fails and check:
        sys.exit(1)


@main.command()
@click.argument("artifact", type=click.Path(path_type=Path), default=DEFAULT_OUT)
@click.option("--level", "levels", multiple=True, help="Levels to measure (repeatable; default: all): "
              "clean, mild, harsh, and each degradation alone (scale, blur, noise, contrast, gradient, vignette, "
              "specks, perspective, jpeg, polarity, rgb).")
@click.option("--images", "n", type=int, default=None,
              help="Test images rendered per level, the first N (default: the whole test set, about 2.5 minutes "
                   "for MNIST's 10,000 on 2 CPU cores; 2,000 take half a minute), and printed digits for the "
                   "'printed' row.")
@click.option("--non-digits", type=int, default=1000,
              help="Non-digit crops per kind: paper, texture, clutter, letters, clothing (0 skips them).")
@click.option("--backend", default="auto", help="Runtime backend for model.onnx.")
@click.option("--test-csv", type=click.Path(path_type=Path),
              help="Test set as a seed CSV (default: the test set the artifact was trained with, SHA-256 checked).")
@click.option("--idx-dir", type=click.Path(path_type=Path), help="Folder of IDX files holding the test set.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@handle_errors
def field(artifact: Path, levels: tuple[str, ...], n: int | None, non_digits: int, backend: str, test_csv: Path | None,
          idx_dir: Path | None, as_json: bool) -> None:
    """Measure ARTIFACT on the test set rendered as camera crops (seeded levels), the device's way.

    Writes ARTIFACT/report/field.png and ARTIFACT/field.json; exit 0 (the targets it prints
    are reported, not enforced).
    """
    from runtime.fileio import atomic_write_json

    from . import report
    from .fieldbench import format_field, run_field
    test = load_splits(None, test_csv, idx_dir, need_train=False, artifact=artifact)[1]
    res = run_field(artifact, test, n=n, levels=list(levels) or None, non_digits=non_digits, backend=backend)
    atomic_write_json(artifact / "field.json", res)
    report.field_plot(res, artifact / "report" / "field.png")
    _emit(as_json, res, format_field(res))


def _read_inputs(images: tuple[str, ...]) -> list[tuple[str, Any]]:
    """(name, 28x28 uint8 or a crop to preprocess) for each IMAGE argument; '-' reads CSV rows."""
    import numpy as np
    out: list[tuple[str, Any]] = []
    for item in images:
        if item == "-":
            for n, line in enumerate(sys.stdin, 1):
                fields = line.strip().split(",")
                if not line.strip():
                    continue
                if len(fields) not in (784, 785):
                    raise ValueError(f"stdin, line {n}: {len(fields)} columns: expected 784 pixels or label,784 pixels")
                try:
                    px = np.array([int(v) for v in fields[-784:]])
                except ValueError:
                    raise ValueError(f"stdin, line {n}: a pixel is not an integer: expected 0-255") from None
                if px.min() < 0 or px.max() > 255:
                    raise ValueError(f"stdin, line {n}: pixel out of range: expected 0-255")
                out.append((f"stdin:{n}", ("frame", px.astype(np.uint8).reshape(28, 28))))
            continue
        path = Path(item)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such image file")
        from PIL import Image, UnidentifiedImageError
        try:
            with Image.open(path) as im:
                crop = np.asarray(im.convert("L"))
        except (UnidentifiedImageError, OSError) as e:
            raise ValueError(f"{path}: cannot decode as an image ({e}): expected a PNG or JPEG file") from None
        out.append((str(path), ("crop", crop)))
    return out


@main.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True)
@click.option("--backend", default="auto", help="Runtime backend.")
@click.option("--threshold", type=float, default=None, help="Override the calibrated gate threshold (warns).")
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON.")
@handle_errors
def predict(artifact: Path, images: tuple[str, ...], backend: str, threshold: float | None, as_json: bool) -> None:
    """Classify IMAGE files (PNG/JPEG, any size, either polarity) or CSV rows on stdin ('-').

    An image file may hold one digit or several (a meter, a form field): each digit found
    (runtime.find_digits, left to right) gets one line with its box. ARTIFACT is a model file
    or an artifact folder (its model.onnx is used).
    """
    from runtime import Classifier, find_digits
    path = artifact / "model.onnx" if artifact.is_dir() else artifact
    clf = Classifier(path, backend=backend, threshold=threshold)
    rows: list[dict[str, Any]] = []
    for name, (kind, arr) in _read_inputs(images):
        if kind == "frame":
            r = clf.classify(arr)
            rows.append({"input": name, "label": r.label, "class": r.class_name, "confidence": r.confidence,
                         "accepted": r.accepted})
            continue
        found = find_digits(arr)
        if not found:
            rows.append({"input": name, "box": None, "label": None, "class": None, "confidence": 0.0,
                         "accepted": False, "refusal": "no digit found"})
        for d in found:
            where = f"{name}@{d.box[0]},{d.box[1]},{d.box[2]},{d.box[3]}"
            if d.image is None:
                rows.append({"input": where, "box": list(d.box), "label": None, "class": None, "confidence": 0.0,
                             "accepted": False, "refusal": d.refusal})
                continue
            r = clf.classify(d.image)
            rows.append({"input": where, "box": list(d.box), "label": r.label, "class": r.class_name,
                         "confidence": r.confidence, "accepted": r.accepted})
    text = "\n".join(f"{r['input']}: {r['class']} (confidence {r['confidence']:.4f}) "
                     f"{'accepted' if r['accepted'] else 'REFUSED'}" if r["label"] is not None else
                     f"{r['input']}: REFUSED ({r['refusal']})" for r in rows)
    note = f"model {path.name} on {clf.backend}, threshold {clf.threshold:.6f}" + \
        (" (overridden)" if clf.threshold_overridden else "")
    _emit(as_json, {"model": str(path), "backend": clf.backend, "threshold": clf.threshold,
                    "threshold_overridden": clf.threshold_overridden, "results": rows}, text + "\n" + note)


# --------------------------------------------------------------------------- data

@main.group()
def data() -> None:
    """Dataset utilities."""


@data.command("export-csv")
@click.argument("out_dir", type=click.Path(path_type=Path))
@data_options
@handle_errors
def export_csv(out_dir: Path, train_csv: Path | None, test_csv: Path | None, idx_dir: Path | None) -> None:
    """Write the seed's mnist_train.csv and mnist_test.csv (no header) into OUT_DIR."""
    from .data import write_csv
    train_ds, test_ds = load_splits(train_csv, test_csv, idx_dir)
    for name, ds in (("mnist_train.csv", train_ds), ("mnist_test.csv", test_ds)):
        write_csv(ds, out_dir / name)
        click.echo(f"wrote {out_dir / name} ({len(ds)} rows)")


if __name__ == "__main__":
    main()

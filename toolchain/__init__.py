"""lenet-tool's torch side: datasets, model, training, calibration, evaluation, CLI."""

__version__ = "0.1.0"

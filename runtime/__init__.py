"""Lean runtime for exported lenet-tool models: numpy and the backend library only.

    from runtime import Classifier
    clf = Classifier("artifacts/lenet/model.onnx")
    result = clf.classify(image_28x28_uint8)
    if result.accepted:
        act_on(result.label)
"""

from .backends import BACKENDS, BackendUnavailable, available_backends
from .classifier import Classifier, Prediction, Result, as_batch
from .fileio import ArtifactError
from .metadata import SCHEMA_VERSION, MetadataError
from .preprocess import Digit, Frames, PreprocessError, find_digits, preprocess, preprocess_batch

__all__ = ["BACKENDS", "SCHEMA_VERSION", "ArtifactError", "BackendUnavailable", "Classifier", "Digit", "Frames",
           "MetadataError", "Prediction", "PreprocessError", "Result", "as_batch", "available_backends", "find_digits",
           "preprocess", "preprocess_batch"]

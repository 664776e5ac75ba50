"""batchcam: batch Grad-CAM inside the training loop, and the two prototype losses of the Batch-CAM paper.

The public API is small; each function's docstring names the book chapter that explains it.
"""

from ._helpers import resolve_device, set_seed
from .cam import SampleMixingError, batch_gradcam, batch_gradcam_with_logits, gradcam_loop, normalize_cam
from .losses import DISTANCES, batchcam_loss, distance, prototype_loss
from .metrics import ReconstructionMeter, reconstruction_quality
from .models import create_model, default_target_layer, list_models
from .prototypes import class_prototypes

__version__ = "0.1.0"

__all__ = [
    "batch_gradcam",
    "batch_gradcam_with_logits",
    "gradcam_loop",
    "normalize_cam",
    "SampleMixingError",
    "create_model",
    "list_models",
    "default_target_layer",
    "class_prototypes",
    "distance",
    "DISTANCES",
    "prototype_loss",
    "batchcam_loss",
    "reconstruction_quality",
    "ReconstructionMeter",
    "set_seed",
    "resolve_device",
]

"""batchcam: batch Grad-CAM inside the training loop, and the two prototype losses of Batch-CAM.

The public API is small; each function's docstring names the book chapter that explains it.
"""

from ._helpers import set_seed
from .cam import SampleMixingError, batch_gradcam, gradcam_loop
from .config import TrainConfig
from .losses import Objective, batchcam_loss, objective_loss, prototype_loss
from .models import create_model, default_target_layer, list_models
from .prototypes import class_prototypes
from .train import fit

__version__ = "0.2.0"

__all__ = ["batch_gradcam", "gradcam_loop", "SampleMixingError", "create_model", "list_models",
           "default_target_layer", "class_prototypes", "prototype_loss", "batchcam_loss", "Objective",
           "objective_loss", "TrainConfig", "fit", "set_seed"]

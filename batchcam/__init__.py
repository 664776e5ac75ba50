"""batchcam: batch Grad-CAM inside the training loop, and the two prototype losses of Batch-CAM.

The public API is small; each function's docstring names the book chapter that explains it.
"""

from ._helpers import set_seed
from .cam import SampleMixingError, batch_cam, batch_gradcam, batch_gradcam_with_logits, gradcam_loop
from .config import TrainConfig
from .losses import Objective, batchcam_loss, objective_loss, prototype_loss
from .methods import list_methods, register_method
from .models import create_model, default_target_layer, list_models
from .prototypes import class_prototypes
from .reshape import tokens_to_grid, vit_reshape

__version__ = "0.3.0"

__all__ = ["batch_cam", "batch_gradcam", "batch_gradcam_with_logits", "gradcam_loop", "register_method",
           "list_methods", "vit_reshape", "tokens_to_grid", "SampleMixingError", "create_model", "list_models",
           "default_target_layer", "class_prototypes", "prototype_loss", "batchcam_loss", "Objective",
           "objective_loss", "TrainConfig", "fit", "set_seed"]


def __getattr__(name: str):
    # fit comes from batchcam.train, which imports tqdm (an extra): loaded on first use, so that
    # `import batchcam` needs torch and numpy only.
    if name == "fit":
        from .train import fit

        return fit
    raise AttributeError(f"module 'batchcam' has no attribute {name!r}")

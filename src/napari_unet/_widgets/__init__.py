"""napari dock widgets: U-Net training (with the correction loop) and inference.

Both widgets share one :class:`~napari_unet._widgets.session.Session` per viewer, holding the
current model and the reviewed-pixel masks of prediction layers. Work runs in napari workers
on plain arrays (:mod:`napari_unet._widgets.jobs`); layers are touched on the main thread only.
"""

from .inference import InferenceWidget
from .session import Session, get_session
from .training import TrainingWidget

__all__ = ["InferenceWidget", "Session", "TrainingWidget", "get_session"]

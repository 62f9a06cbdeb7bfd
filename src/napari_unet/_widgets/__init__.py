"""napari dock widgets: U-Net training (with the correction loop) and inference.

Both widgets share one :class:`~napari_unet._widgets.session.Session` per viewer, holding the
current model and the reviewed-pixel masks of prediction layers. Work runs in napari workers
on plain arrays (:mod:`napari_unet._widgets.jobs`); layers are touched on the main thread only.

The widgets are imported when first asked for (``napari_unet._widgets.TrainingWidget``, as the manifest names them),
so that importing a submodule does not import Qt and napari with them.
"""

import importlib

_EXPORTS = {"InferenceWidget": ".inference", "Session": ".session", "TrainingWidget": ".training", "get_session": ".session"}


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["InferenceWidget", "Session", "TrainingWidget", "get_session"]

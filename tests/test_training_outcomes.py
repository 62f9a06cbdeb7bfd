"""Training outcomes (session 62): divergences that keep weights end as "diverged"."""

import numpy as np
import pytest

from _helpers import stripes, tiny_configs
from napari_unet.train import TrainingFinished, TrainingStarted, TrainingStep, train_events


def _finite(model) -> bool:
    return all(np.isfinite(w).all() for w in model.keras_model.get_weights())


def _poison(network) -> None:
    network.set_weights([np.full_like(w, np.nan) if np.issubdtype(w.dtype, np.floating) else w for w in network.get_weights()])


@pytest.mark.slow
def test_a_divergence_in_an_epoch_without_validation_keeps_the_finite_epochs_before_it():
    # val_every 2: epoch 1 is not validated; a NaN loss in epoch 2 raised FloatingPointError, epoch 1's weights lost
    image, labels = stripes(n_slices=4, size=64)
    model_config, train_config = tiny_configs(epochs=3, steps_per_epoch=3, val_every=2)
    events, network = [], None
    for event in train_events(image, labels, model_config, train_config):
        events.append(event)
        if isinstance(event, TrainingStarted):
            network = event.model.keras_model
        if isinstance(event, TrainingStep) and event.step == 4:
            _poison(network)
    final = events[-1]
    assert isinstance(final, TrainingFinished) and final.reason == "diverged"
    assert final.divergence == "the loss was nan at step 5" and final.steps == 4
    assert final.best_epoch == 1 and final.kept == "best epoch 1" and final.history[0]["val_loss"] is None
    assert _finite(final.model)

"""Work run in napari worker threads: plain arrays, configs and models in, events out.

Nothing here touches Qt, a widget or a layer. Each job first imports TensorFlow safely next to
napari's OpenGL canvas (:mod:`._tensorflow`). Expected failures (bad input, a model that does
not fit, a file that does not load) end the job with a :class:`Failed` event carrying a clear
message instead of an exception, so the widget shows one notification and nothing else.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Optional, Union

import numpy as np

from napari_unet.config import ConfigError
from napari_unet.data import InputError, reader_errors, slices_text
from napari_unet.hardware import out_of_memory_line
from napari_unet.labels import LabelError
from napari_unet.model_io import ModelFileError, UNetModel
from napari_unet.predict import Agreement, PredictionError
from napari_unet.retrain import CorrectionCheck

from .._tensorflow import load_tensorflow, lower_thread_priority

EXPECTED = (InputError, LabelError, ConfigError, ModelFileError, PredictionError, FloatingPointError, MemoryError)

_log = logging.getLogger("napari_unet")


def _unexpected(what: str, err: Exception) -> "Failed":
    """A failure nobody foresaw (e.g. TensorFlow out of memory): its traceback goes to the log, the user gets a message.
    A job cut short by the interpreter's exit (its thread pools refuse new work) is told as such, without a traceback."""
    if _at_exit(err):
        return Failed(f"{what} ended by Python's exit")
    _log.exception("napari-unet: %s failed", what)
    if type(err).__name__ == "ResourceExhaustedError":  # (TensorFlow's: a multi-page message, the allocation in one line)
        return Failed(f"not enough memory for TensorFlow ({out_of_memory_line(err)}){_OOM_ADVICE.get(what, '')}")
    return Failed(f"{type(err).__name__}: {err}")


#: What to lower when TensorFlow runs out of memory, by the job (the CLI's advice; the widgets set no tile size). The
#: widget says "training failed: not enough memory ...".
_OOM_ADVICE = {"training": "; lower the batch size or the patch size (settings; a Retrain has its own)",
               "prediction": "; close other programs using the memory (or the GPU), or predict with napari-unet predict "
                             "and a lower --batch-size or --tile-size"}


def _at_exit(err: Exception) -> bool:
    """Whether ``err`` cut a job short at the interpreter's exit (its thread pools refuse new work)."""
    return isinstance(err, RuntimeError) and "interpreter shutdown" in str(err)


@dataclass(frozen=True)
class Failed:
    message: str
    # training diverged before it kept any weights (napari_unet.train.TrainingDiverged): no model, the learning rate is
    # the setting to lower
    diverged: bool = False
    divergence: str = ""  # diverged: what went wrong and when ("the loss was nan at step 3", TrainingDiverged.divergence)
    # a damaged page or chunk of a lazily read file (the image's) failed to read during training (no model was made)
    # or prediction (nothing was written: the widget writes only a finished prediction)
    read_error: bool = False


@dataclass(frozen=True)
class Note:
    """Something the user should know before trusting the result; the job goes on."""

    message: str


@dataclass(frozen=True)
class PredictionResult:
    labels: np.ndarray  # class values: the input's shape, or (Y, X) for one slice z
    probabilities: Optional[np.ndarray]
    instances: Optional[np.ndarray]  # int32 cell labels (2-class models), or None
    stopped: bool


#: The inference widget's membrane choice that shows the network's most probable class (no membrane rule).
NETWORK_LABELS = "most probable class"


@dataclass(frozen=True)
class CorrectionsLearned:
    """After a Retrain: how much of the painted corrections the new model labels as painted."""

    agreement: "Agreement"  # napari_unet.predict.Agreement
    check: CorrectionCheck
    has_rule: bool  # the model's labels follow a membrane rule, not only the most probable class
    # the retrained model labels the corrected slices as one class or no better than chance (napari_unet.retrain.score_retrained)
    one_class_note: str = ""

    def text(self) -> str:
        learned, total = self.agreement, self.check.total
        which = (f"your {total} corrected pixels" if learned.pixels == total or self.check.slices is None else
                 f"{learned.pixels} of your {total} corrected pixels (on slices {list(self.check.slices)}, which hold most of them)")
        if self.has_rule and abs(learned.labels - learned.network) >= 0.005:
            return (f"The retrained network labels {learned.network:.0%} of {which} as you painted them, its membrane rule "
                    f"{learned.labels:.0%} (the inference widget's membranes box: 'the model's rule' shows the rule's, "
                    f"'{NETWORK_LABELS}' the network's; 'keep my corrections' keeps your pixels either way).")
        return f"The retrained model labels {learned.labels:.0%} of {which} as you painted them."


@dataclass(frozen=True)
class CheckLost:
    """After a Retrain whose model is kept (``TrainingFinished``): the check of its corrections (a
    :class:`CorrectionsLearned`) could not be made, e.g. a page or chunk of the lazily read image became unreadable, or
    no memory was left for it."""

    # why, in one line: "image 'stack', slice 2: /data/stack.zarr: damaged or unreadable chunk (...)",
    # "not enough memory (MemoryError: ...)", "ValueError: ..." (an unforeseen error: its traceback is in the log)
    message: str


def train_job(image, labels, model_config, train_config, init=None, stop=None, auto_depth: bool = False, pixel_weights=None,
              check=None, pixel_size=None, data_name: str = "image and labels", names: Optional[dict] = None):
    """The core's training events; ends with ``TrainingFinished`` or :class:`Failed`.

    ``auto_depth``: the depth of ``model_config`` is settled here, as ``napari-unet train`` settles it
    (:func:`napari_unet.hardware.resolve_depth` may import TensorFlow to ask for a GPU, seconds on a GUI thread).
    ``check``: a :class:`CorrectionCheck` to score the trained model on; then a :class:`CorrectionsLearned` follows
    ``TrainingFinished`` (a :class:`CheckLost` saying why if it fails, e.g. a read error or out of memory: the model is
    kept by then). Its one prediction also tells a
    model of one class or of chance-level labels (:func:`napari_unet.retrain.score_retrained`): the training's own
    check is then off (a Retrain's stack holds copies of the corrected slices; it cost a third of a Retrain).
    ``pixel_size``: [Y, X] µm of the image's pixels, if known (the model records it). ``data_name``: the layers, as the
    memory check's messages name them; ``names``: the layers, as read errors name them (:func:`read_error_text`).
    """
    from napari_unet.hardware import AUTO, resolve_depth
    from napari_unet.retrain import score_retrained
    from napari_unet.train import TrainingDiverged, TrainingFinished, TrainingFinishing, train_events

    lower_thread_priority()
    load_tensorflow(quiet=True)  # no C++ info lines or cuInit "error" in the terminal napari runs in
    try:
        if auto_depth and model_config is not None:
            settled = replace(model_config, depth=resolve_depth(AUTO, train_config.max_minutes, train_config.mixed_precision))
            if train_config.patch_size % settled.size_multiple == 0:  # else keep the depth the form checked the patch against
                model_config = settled
        final = None
        for final in train_events(image, labels, model_config, train_config, init=init, stop=stop, pixel_weights=pixel_weights,
                                  pixel_size=pixel_size, check_one_class=check is None, data_name=data_name):
            if isinstance(final, TrainingFinishing):
                _answer_hardware_questions()
            yield final
        if check is not None and isinstance(final, TrainingFinished) and final.steps > 0:
            score = None
            try:
                score = score_retrained(final.model, check, stop=stop)
            except reader_errors() as err:  # a page or chunk the training read became unreadable (a changed file, memory)
                yield CheckLost(read_error_text(err, names))
            except Exception as err:  # e.g. out of memory: the retrained model is in use already; only the check is lost
                if not _at_exit(err):
                    _log.exception("napari-unet: scoring the corrections on the retrained model failed")
                yield CheckLost(_why(err))
            if score is not None:
                yield CorrectionsLearned(score.agreement, check, final.model.boundary_rule is not None, score.one_class_note)
    except EXPECTED as err:
        diverged = isinstance(err, TrainingDiverged)
        yield Failed(str(err), diverged=diverged, divergence=err.divergence if diverged else "")
    except reader_errors() as err:  # a damaged page or chunk of the lazily read image (its file named)
        yield Failed(read_error_text(err, names), read_error=True)
    except Exception as err:
        yield _unexpected("training", err)


def _why(err: Exception) -> str:
    """One line saying why an unforeseen failure happened (its traceback goes to the log): "not enough memory
    (MemoryError: ...)", "not enough memory for TensorFlow (OOM when allocating tensor with shape[...] ...)" (the
    allocation that failed, as the CLI says it), "ended by Python's exit", "ValueError: <its first line>"."""
    if type(err).__name__ == "ResourceExhaustedError":  # (TensorFlow's: its first line is "Graph execution error:")
        return f"not enough memory for TensorFlow ({out_of_memory_line(err)})"
    if _at_exit(err):
        return "ended by Python's exit"
    lines = str(err).strip().splitlines()
    what = f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__
    return f"not enough memory ({what})" if isinstance(err, MemoryError) else what


def read_error_text(err: Exception, names: Optional[dict] = None) -> str:
    """A reader's error (its file named) found by training or prediction, with the array's role and slices where known
    (:func:`napari_unet.data.read_planes`): "image 'stack', slice 2: /data/stack.zarr: damaged or unreadable chunk
    (...)". ``names``: the layers by the roles the core gives them, as the message names them
    (:func:`~.layers.read_roles`: ``{"image": "image 'stack'", "labels": "labels layer 'lab'"}``); a role not in it
    is said as it is (a layer read with its name as the role: "labels layer 'lab'")."""
    where = slices_text(getattr(err, "slices", None))
    role = getattr(err, "role", None) or "image"
    return f"{(names or {}).get(role, role)}{', ' + where if where else ''}: {err}"


def with_kept(labels: np.ndarray, kept: Optional[tuple], class_values) -> np.ndarray:
    """Class-value ``labels`` with the kept pixels' classes put back, as :func:`~.outputs.write_prediction` puts the
    corrections back; ``kept``: (flat indices into ``labels``, their class indices; a number of no class: not kept),
    :func:`~.outputs.kept_pixels`. ``labels`` itself is not changed."""
    if kept is None:
        return labels
    where, indices = kept
    known = (indices >= 0) & (indices < len(class_values))
    out = labels.copy()
    out.reshape(-1)[where[known]] = np.asarray(class_values, labels.dtype)[indices[known]]
    return out


def predict_job(model: UNetModel, image, tta: Union[bool, int, str], probabilities: bool, membrane_value=None,
                close_boundaries: Optional[bool] = None, stop=None, z: Optional[int] = None, kept=None, pixel_size=None,
                kept_cells=None, names: Optional[dict] = None):
    """The core's prediction events; the last is :class:`PredictionResult` or :class:`Failed`.

    ``z``: predict only slice ``z`` of the (Z, Y, X) ``image``, whose result is then (Y, X) (a model with context slices
    still sees the slice's neighbours).

    ``membrane_value``: with a 2-class model, the membrane class value; the cells the predicted labels
    separate are then also labelled (:func:`napari_unet.postprocess.cell_instances`). None: no instances.
    ``close_boundaries``: True always closes gaps in the model's thin boundary class, False gives the most probable
    class, None (default) applies the model's boundary rule (:func:`napari_unet.predict.predict_events`).
    ``kept``: class indices of the pixels the user's corrections keep (``image``'s shape, -1 elsewhere), for the layer
    ordering (:func:`napari_unet.predict.predict_events`). ``kept_cells``: the same pixels sparsely
    (:func:`~.outputs.kept_pixels`), put back before the cells are labelled (a kept membrane splits a cell).
    ``pixel_size``: [Y, X] µm of the image's pixels, if known: a :class:`Note` when the model was trained on others.
    ``names``: the image layer, as read errors name it (:func:`read_error_text`).
    """
    from napari_unet.postprocess import cell_instances
    from napari_unet.predict import Prediction, blank_slices_note, intensity_note, pixel_size_note, predict_events

    lower_thread_priority()
    load_tensorflow(quiet=True)
    try:
        for note in (intensity_note(image if z is None else image[z], model), pixel_size_note(model, pixel_size)):
            if note is not None:
                yield Note(note)
        slices = None if z is None else [z]
        events = predict_events(model, image, tta=tta, return_probabilities=probabilities, close_boundaries=close_boundaries, stop=stop, slices=slices, kept=kept)
        for event in events:
            if not isinstance(event, Prediction):
                yield event
                continue
            note = blank_slices_note(event.blank_slices)
            if note is not None:
                yield Note(note)
            labels, probs = event.labels, event.probabilities
            if z is not None:  # the one plane of slices=[z]
                labels, probs = labels[0], None if probs is None else probs[0]
            instances = None
            if membrane_value is not None and not event.stopped:
                instances = cell_instances(with_kept(labels, kept_cells, model.class_values), membrane_value)
            yield PredictionResult(labels, probs, instances, event.stopped)
    except EXPECTED as err:
        yield Failed(str(err))
    except reader_errors() as err:  # a damaged page or chunk of the lazily read image (its file named)
        if z is not None and getattr(err, "slices", None) is None:  # read as the 2-D image[z] (its intensity note)
            err.slices = range(z, z + 1)
        yield Failed(read_error_text(err, names), read_error=True)
    except Exception as err:
        yield _unexpected("prediction", err)


def relay(events):
    """Yield from ``events``, a job's generator: a worker runs this, and the widget keeps ``events`` to close it when the
    worker is aborted (napari aborts workers when the viewer closes and never closes their generators: a training
    left its batch thread, images and network behind)."""
    yield from events


def _answer_hardware_questions() -> None:
    """Ask for a GPU and time bfloat16 convolutions here, once per process (cached), so that the inference widget's
    "auto = ..." hint, shown when the model arrives, does not spend 0.2-0.3 s of the GUI thread on them. Best effort:
    a failure leaves the question to the hint."""
    from napari_unet.hardware import explain_auto_tta

    try:
        explain_auto_tta()
    except Exception:
        _log.exception("napari-unet: timing bfloat16 convolutions failed")


def load_job(path) -> "UNetModel | Failed":
    from napari_unet.model_io import load_model

    lower_thread_priority()
    load_tensorflow(quiet=True)
    try:
        model = load_model(path)
        _answer_hardware_questions()
        return model
    except EXPECTED as err:
        return Failed(str(err))
    except Exception as err:  # any unreadable file: a message, never a crash
        return Failed(f"{path}: could not be loaded ({type(err).__name__}: {err})")


class Handoff:
    """A value a job takes once (:meth:`take`): napari keeps every worker of a window with its arguments, so a model
    passed as such stayed in memory for good, also after the session replaced it."""

    def __init__(self, value):
        self._value = value

    def take(self):
        value, self._value = self._value, None
        return value


def save_job(model: Handoff, path) -> "str | Failed":
    """Save the model ``model`` hands over to ``path``."""
    from napari_unet.model_io import save_model

    model = model.take()
    lower_thread_priority()
    load_tensorflow(quiet=True)
    try:
        return str(save_model(model, path))
    except (OSError, ModelFileError) as err:
        return Failed(f"could not save the model to {path}: {err}")
    except Exception as err:
        return Failed(f"could not save the model to {path}: {_unexpected('saving', err).message}")


__all__ = [
    "CheckLost",
    "CorrectionsLearned",
    "Failed",
    "Handoff",
    "Note",
    "PredictionResult",
    "load_job",
    "predict_job",
    "relay",
    "save_job",
    "read_error_text",
    "train_job",
]

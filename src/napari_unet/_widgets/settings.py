"""The training settings form: preset, network size, budget, sampling, augmentation, retraining."""

from __future__ import annotations

import dataclasses
import math

from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import QCheckBox, QComboBox, QDoubleSpinBox, QFormLayout, QHBoxLayout, QSpinBox, QWidget

from napari_unet import hardware
from napari_unet.config import NOISE_AUGMENTATION, PRESETS, ModelConfig, TrainConfig, check_patch_size, preset
from napari_unet.data import INTENSITY_BRIGHTNESS, INTENSITY_CONTRAST, INTENSITY_LOG_GAMMA
from napari_unet.retrain import RETRAIN_BATCH_SIZE, RETRAIN_LEARNING_RATE, RETRAIN_PATCH_SIZE, RETRAIN_STEPS, retrain_config

AUTO_DEPTH = 0  # the depth box's "auto" (its minimum, shown as text)


def spin(low, high, value, step=1, tip="", decimals=None, suffix=""):
    box = QSpinBox() if decimals is None else QDoubleSpinBox()
    if decimals is not None:
        box.setDecimals(decimals)
    box.setRange(low, high)
    box.setSingleStep(step)
    box.setValue(value)
    box.setToolTip(tip)
    if suffix:
        box.setSuffix(suffix)
    return box


class TrainSettings(QWidget):
    """Form whose values, on top of the chosen preset, give a ModelConfig and a TrainConfig."""

    changed = Signal()  # a value of the form changed (by the user or a preset)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.preset = QComboBox()
        self.preset.addItems(list(PRESETS))
        self.preset.setToolTip("\n".join(f"{name}: {p.description}" for name, p in PRESETS.items()))
        self.depth = spin(
            AUTO_DEPTH, 6, 4,
            tip="poolings of the U-Net (patch sizes must be multiples of 2 to the power depth: 16 for depth 4); auto: 5 for time budgets of "
            "30 min or more on a GPU or a CPU with AMX (bfloat16 matrix units), else 4",
        )
        self.depth.setSpecialValueText("auto")
        self.filters = spin(4, 128, 32, 4, "filters of the first level (doubled at each level)")
        self.epochs = spin(1, 10000, 40, tip="epochs (training stops at the epochs or the time budget, whichever comes first)")
        self.steps = spin(1, 100000, 50, 10, "training steps (batches) per epoch")
        self.minutes = spin(0, 10000, 0, 1, "time budget in minutes; 0 = no budget (only epochs count)", decimals=1, suffix=" min")
        self.patch = spin(16, 1024, 256, 16, "side of the square training patches (pixels)")
        self.batch = spin(1, 64, 4, tip="patches per training step")
        self.lr = spin(1e-5, 0.1, 1e-3, 1e-4, "initial learning rate (Adam)", decimals=5)
        self.flips, self.rotations = QCheckBox("flips"), QCheckBox("rotations")
        self.elastic, self.intensity = QCheckBox("elastic"), QCheckBox("intensity")
        self.flips.setToolTip("mirror the patches left-right at random")
        defaults = TrainConfig()
        self.elastic.setToolTip(f"deform the patches smoothly at random (a {defaults.elastic_grid}x{defaults.elastic_grid} grid "
                                f"of displacements of about {defaults.elastic_alpha:g} pixels), as in the U-Net paper")
        self.intensity.setToolTip(
            "vary the patches' brightness, contrast and gamma at random (gamma "
            f"{math.exp(-INTENSITY_LOG_GAMMA):.2f}-{math.exp(INTENSITY_LOG_GAMMA):.2f}, contrast {INTENSITY_CONTRAST[0]:g}-"
            f"{INTENSITY_CONTRAST[1]:g}, brightness +-{INTENSITY_BRIGHTNESS:g} of the normalised range)")
        self.rotations.setTristate(True)  # partly checked = "auto"
        self.rotations.setToolTip(
            "turn the patches by multiples of 90 degrees; partly checked (auto): on, but off for labels layered top to "
            "bottom such as OCT layers, whose network must learn which way is up (prediction then keeps tiles upright)"
        )
        self.noise = QCheckBox("noise")
        self.noise.setTristate(True)  # partly checked = "auto"
        self.noise.setToolTip(
            f"add Gaussian pixel noise to the patches (std up to {NOISE_AUGMENTATION:g} of the normalised range), for images "
            "noisier than the annotated ones; partly checked (auto): on for time budgets of 30 min or more (so not for Retrain)"
        )
        self.validation = spin(0.0, 0.9, 0.2, 0.05, "share of annotated slices kept for validation (one 2-D image: its last columns; at most about 4.2 million "
                             "pixels: 16 slices of 512², 4 of 1024² or larger, a window of at least 1024² of larger ones)", decimals=2)
        self.retrain_steps = spin(1, 10000, RETRAIN_STEPS, 5, "training steps of one Retrain (fine-tuning from the current weights)")
        self.retrain_patch = spin(16, 1024, RETRAIN_PATCH_SIZE, 16, "patch side for Retrain (small = fast)")
        self.retrain_batch = spin(1, 64, RETRAIN_BATCH_SIZE, tip="patches per Retrain step")
        self.retrain_lr = spin(1e-6, 0.1, RETRAIN_LEARNING_RATE, 1e-5, "learning rate of Retrain (Adam); a tenth of the default "
                               "training rate: at 1e-3 a Retrain made an ISBI model worse, with or without corrections", decimals=6)

        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("preset", self.preset)
        form.addRow("depth / filters", _row(self.depth, self.filters))
        form.addRow("epochs x steps", _row(self.epochs, self.steps))
        form.addRow("time budget", self.minutes)
        form.addRow("patch / batch", _row(self.patch, self.batch))
        form.addRow("learning rate", self.lr)
        form.addRow("augment", _row(self.flips, self.elastic, self.intensity))
        form.addRow("", _row(self.rotations, self.noise))  # the two that may read "(auto)"
        form.addRow("validation", self.validation)
        # two rows: in one, the learning rate's box was too narrow to show 0.000100
        self.retrain_form = QWidget()
        retrain_form = QFormLayout(self.retrain_form)
        retrain_form.setContentsMargins(0, 0, 0, 0)
        retrain_form.addRow("steps / patch / batch", _row(self.retrain_steps, self.retrain_patch, self.retrain_batch))
        retrain_form.addRow("learning rate", self.retrain_lr)
        for box in (self.rotations, self.noise):  # a dash alone did not say "auto" (nor did a screen reader)
            box.stateChanged.connect(lambda _state, box=box: _say_auto(box))
        # Qt names a box after its form row's label, which a row of several boxes has only for the row
        for box, name in ((self.depth, "depth"), (self.filters, "filters"), (self.epochs, "epochs"),
                          (self.steps, "steps per epoch"), (self.patch, "patch size"), (self.batch, "batch size"),
                          (self.lr, "learning rate"), (self.retrain_steps, "Retrain steps"),
                          (self.retrain_patch, "Retrain patch size"), (self.retrain_batch, "Retrain batch size"),
                          (self.retrain_lr, "Retrain learning rate")):
            box.setAccessibleName(name)
        self.preset.currentTextChanged.connect(self.apply_preset)
        self.apply_preset(self.preset.currentText())  # from unchecked: an "auto" box says so through stateChanged
        on_form_change(self._boxes(), self.changed.emit)

    def _boxes(self) -> dict:
        return {"preset": self.preset, "depth": self.depth, "filters": self.filters, "epochs": self.epochs, "steps": self.steps,
                "minutes": self.minutes, "patch": self.patch, "batch": self.batch, "lr": self.lr, "flips": self.flips,
                "elastic": self.elastic, "intensity": self.intensity, "rotations": self.rotations, "noise": self.noise,
                "validation": self.validation, "retrain_steps": self.retrain_steps, "retrain_patch": self.retrain_patch,
                "retrain_batch": self.retrain_batch, "retrain_lr": self.retrain_lr}

    def values(self) -> dict:
        """The form's values by box name, for :meth:`restore` (:func:`form_values`)."""
        return form_values(self._boxes())

    def restore(self, values: dict) -> None:
        """Fill the form with :meth:`values` of another (a dock closed and opened again starts where it was)."""
        restore_form(self._boxes(), values)

    def apply_preset(self, name: str) -> None:
        p = preset(name)
        self.depth.setValue(AUTO_DEPTH if p.auto_depth else p.model.depth)  # auto: as `napari-unet train`
        self.filters.setValue(p.model.base_filters)
        t = p.train
        self.epochs.setValue(t.epochs)
        self.steps.setValue(t.steps_per_epoch)
        self.minutes.setValue(t.max_minutes or 0)
        self.patch.setValue(t.patch_size)
        self.batch.setValue(t.batch_size)
        self.lr.setValue(t.learning_rate)
        for box, on in ((self.flips, t.augment_flips), (self.elastic, t.augment_elastic), (self.intensity, t.augment_intensity)):
            box.setChecked(on)
        self.rotations.setCheckState(_auto_state(t.augment_rotations))
        self.noise.setCheckState(_noise_state(t.augment_noise))
        self.validation.setValue(t.val_fraction)

    def configs(self) -> tuple[ModelConfig, TrainConfig]:
        """The preset's configs with the form's values; :class:`ConfigError` if they do not fit."""
        p = preset(self.preset.currentText())
        train = p.train.replace(
            epochs=self.epochs.value(),
            steps_per_epoch=self.steps.value(),
            max_minutes=self.minutes.value() or None,
            patch_size=self.patch.value(),
            batch_size=self.batch.value(),
            val_fraction=self.validation.value(),
            **self._learning_settings(),
        )
        depth = self.depth.value()
        if depth == AUTO_DEPTH:  # where only a GPU would decide, the worker does (TrainJob.auto_depth)
            depth = (self._auto_depth_without_gpu(p) if p.auto_depth else None) or p.model.depth
        model = dataclasses.replace(p.model, depth=depth, base_filters=self.filters.value())
        check_patch_size(train.patch_size, model)
        return model, train

    def _noise(self):
        state = self.noise.checkState()
        if state == Qt.CheckState.PartiallyChecked:
            return "auto"
        return NOISE_AUGMENTATION if state == Qt.CheckState.Checked else 0.0

    def _auto_depth_without_gpu(self, p):
        """The auto depth for the form's budget, or None when only a GPU decides it."""
        return hardware.auto_depth_without_gpu_query(self.minutes.value() or None, p.train.mixed_precision)

    def depth_waits_for_gpu_query(self) -> bool:
        """True when the auto depth of :meth:`configs` depends on a GPU, which the training worker asks for."""
        p = preset(self.preset.currentText())
        return self.depth.value() == AUTO_DEPTH and p.auto_depth and self._auto_depth_without_gpu(p) is None

    def retrain_config(self, model_config: ModelConfig, previous: TrainConfig | None = None) -> TrainConfig:
        """:func:`napari_unet.retrain.retrain_config` with the form's training settings and Retrain boxes; ``previous``:
        the model's own training config (its seed + 1 is the Retrain's)."""
        _, train = self.configs_unchecked()
        return retrain_config(train, model_config, previous, learning_rate=self.retrain_lr.value(), steps=self.retrain_steps.value(),
                              patch_size=self.retrain_patch.value(), batch_size=self.retrain_batch.value())

    def configs_unchecked(self) -> tuple[ModelConfig, TrainConfig]:
        p = preset(self.preset.currentText())
        return p.model, p.train.replace(**self._learning_settings())

    def _learning_settings(self) -> dict:
        """The form's learning rate and augmentation boxes (configs and configs_unchecked)."""
        return dict(learning_rate=self.lr.value(), augment_flips=self.flips.isChecked(), augment_rotations=_auto_value(self.rotations),
                    augment_elastic=self.elastic.isChecked(), augment_intensity=self.intensity.isChecked(), augment_noise=self._noise())


def form_values(boxes: dict) -> dict:
    """The values of a form's ``boxes`` (name -> combo, check or spin box): texts, True / False / "auto" (partly
    checked), numbers."""
    values = {}
    for name, box in boxes.items():
        if isinstance(box, QComboBox):
            values[name] = box.currentText()
        elif isinstance(box, QCheckBox):
            values[name] = _auto_value(box)
        else:
            values[name] = box.value()
    return values


def restore_form(boxes: dict, values: dict) -> None:
    """Set ``boxes`` (name -> box) to :func:`form_values` ``values``, in the boxes' order (a preset first: it sets the
    others); names or texts the form no longer has are left out."""
    for name, box in boxes.items():
        if name not in values:
            continue
        value = values[name]
        if isinstance(box, QComboBox):
            if box.findText(value) >= 0:
                box.setCurrentText(value)
        elif isinstance(box, QCheckBox):
            box.setCheckState(_auto_state(value))
        else:
            box.setValue(value)


def on_form_change(boxes: dict, callback) -> None:
    """Call ``callback()`` whenever a value of ``boxes`` (name -> box) changes."""
    for box in boxes.values():
        if isinstance(box, QComboBox):
            box.currentTextChanged.connect(lambda *_: callback())
        elif isinstance(box, QCheckBox):
            box.stateChanged.connect(lambda *_: callback())
        else:
            box.valueChanged.connect(lambda *_: callback())


def _auto_state(value) -> Qt.CheckState:
    """A tri-state box's state for True, False or "auto" (partly checked)."""
    if value == "auto":
        return Qt.CheckState.PartiallyChecked
    return Qt.CheckState.Checked if value else Qt.CheckState.Unchecked


def _auto_value(box):
    """True, False or "auto" (partly checked) from a tri-state box."""
    state = box.checkState()
    return "auto" if state == Qt.CheckState.PartiallyChecked else state == Qt.CheckState.Checked


def _noise_state(augment_noise) -> Qt.CheckState:
    return _auto_state(augment_noise if augment_noise == "auto" else augment_noise > 0)


def _say_auto(box: QCheckBox) -> None:
    """Name a tri-state box "NAME (auto)" while it is partly checked."""
    name = box.text().removesuffix(" (auto)")
    box.setText(f"{name} (auto)" if box.checkState() == Qt.CheckState.PartiallyChecked else name)


def _row(*widgets) -> QWidget:
    box = QWidget()
    layout = QHBoxLayout(box)
    layout.setContentsMargins(0, 0, 0, 0)
    for widget in widgets:
        layout.addWidget(widget)
    return box

"""Live training curves: smoothed training loss (log scale), validation loss and Dice.

Points are appended from worker signals on the main thread; the figure is redrawn at most every
``min_interval_ms``, or five times the last draw's time if longer (a single-shot QTimer coalesces updates), so a fast
training cannot flood the event loop with redraws.
"""

from __future__ import annotations

import math
import time

from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from qtpy.QtCore import QTimer
from qtpy.QtGui import QFontInfo

from .session import disconnect_when_destroyed
from .style import theme_colors


#: Curve colours on a dark and on a light background (each at least 4.5:1 against it, as WCAG asks of small text:
#: the Dice axis's label shares its curve's colour, and the light theme's orange was 2.3:1).
_CURVES = {
    "dark": {"raw": "#5080c0", "train": "#60a0ff", "validation": "#ff6060", "dice": "#e0a030"},
    "light": {"raw": "#7090c0", "train": "#1f5fbf", "validation": "#c02020", "dice": "#8a5a00"},
}
_DPI = 90
#: The label of the dotted line where a run fine-tuned the model before it, live and in a loaded model's history alike:
#: a Retrain, a Train that continues from the current model or a ``train --init`` (a saved history tells runs apart,
#: not what started them).
FINE_TUNE_MARK = "Fine-tuned"


def _number(value):
    """``value`` as a finite float, or None (a model file's history is data from a file)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        value = float(value)
    except OverflowError:  # an integer beyond floats
        return None
    return value if math.isfinite(value) else None


class LossPlot(FigureCanvasQTAgg):
    """Follows the viewer's theme (``viewer.events.theme``) and the widget's font size."""

    def __init__(self, viewer=None, min_interval_ms: int = 400, smoothing: float = 0.9):
        figure = Figure(figsize=(4.0, 2.4), dpi=_DPI, layout="constrained")  # margins follow the text's size
        super().__init__(figure)
        self.ax = figure.add_subplot(111)
        self.ax_dice = self.ax.twinx()
        self.ax.set_xlabel("step")
        self.ax.set_ylabel("loss")
        self.ax_dice.set_ylabel("val Dice")
        (self._raw,) = self.ax.plot([], [], alpha=0.3, linewidth=0.8)
        (self._smooth,) = self.ax.plot([], [], linewidth=1.5, label="train (smoothed)")
        (self._val,) = self.ax.plot([], [], "o-", markersize=3, linewidth=1, label="validation")
        (self._dice,) = self.ax_dice.plot([], [], "s--", markersize=3, linewidth=1, label="val Dice")
        self.ax.set_yscale("log")
        self.ax_dice.set_ylim(0, 1)
        # Above the axes, in one row: inside them it covered the curves (the Dice curve ends near 1.0 at the right).
        self._legend_lines = (self._smooth, self._val, self._dice)
        self._legend = figure.legend(handles=list(self._legend_lines), loc="outside upper center",
                                     ncols=3, frameon=False, handlelength=1.5, columnspacing=1.0)
        self.smoothing = smoothing
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(min_interval_ms)
        self._min_interval_ms = min_interval_ms
        self._timer.timeout.connect(self.redraw)
        self.draws = 0
        self.marks: list = []  # (step, label) of the dotted lines where a run continued the curves before it
        self._mark_lines: list = []
        self._mark_label = None  # the latest mark's only: a Retrain's 20 steps after 1000 put labels on top of each other
        self.apply_theme(getattr(viewer, "theme", "dark"))
        if viewer is not None:
            viewer.events.theme.connect(self._on_theme)
            disconnect_when_destroyed(self, (viewer.events.theme, self._on_theme))
        self.clear()
        self.draw()  # the first draw is slow (fonts, layout): do it now, not during training
        self._timer.setInterval(min_interval_ms)  # (and not a measure of the next ones)
        self.setMinimumHeight(160)

    def draw(self) -> None:
        start = time.perf_counter()
        super().draw()
        # redraws take at most a fifth of the main thread: a slow or busy machine (0.1-0.3 s a draw, half of it the
        # layout of the tick labels) or a large dock draws the curves less often instead of stalling the viewer
        self._timer.setInterval(max(self._min_interval_ms, round(5000 * (time.perf_counter() - start))))

    def _on_theme(self, event) -> None:
        self.apply_theme(event.value)

    def apply_theme(self, theme_name: str) -> None:
        """Colour the figure as napari's ``theme_name`` and size its text as the widget's font."""
        background, text, dark = theme_colors(theme_name)
        curves = _CURVES["dark" if dark else "light"]
        size = QFontInfo(self.font()).pixelSize() * 72 / _DPI  # figure points whose pixels match the widget's text
        self.figure.patch.set_facecolor(background)
        for ax in (self.ax, self.ax_dice):
            ax.set_facecolor(background)
            ax.tick_params(which="both", colors=text, labelsize=0.85 * size)  # a log axis labels its minor ticks too
            for spine in ax.spines.values():
                spine.set_color(text)
        self.ax.xaxis.label.set(color=text, fontsize=size)
        self.ax.yaxis.label.set(color=text, fontsize=size)
        self.ax_dice.yaxis.label.set(color=curves["dice"], fontsize=size)
        self.ax_dice.tick_params(axis="y", colors=curves["dice"])
        for line, name in ((self._raw, "raw"), (self._smooth, "train"), (self._val, "validation"), (self._dice, "dice")):
            line.set_color(curves[name])
        for handle, line in zip(self._legend.legend_handles, self._legend_lines):
            handle.set_color(line.get_color())  # the legend drew copies of the curves as they were when it was made
        for item in self._legend.get_texts():
            item.set(color=text, fontsize=0.9 * size)
        self._text, self._text_size, self._background = text, size, background
        for line in self._mark_lines:
            line.set_color(text)
        if self._mark_label is not None:  # (its box hides the curves behind it)
            self._mark_label.set(color=text, fontsize=0.85 * size)
            self._mark_label.get_bbox_patch().set_facecolor(background)
        self.draw_idle()

    def clear(self) -> None:
        self._timer.stop()
        self.steps, self.losses, self.smoothed = [], [], []
        self.val_steps, self.val_losses, self.dice_steps, self.dice = [], [], [], []
        self._remove_marks()
        self._offset, self._segment_start, self._kept = 0, 0, None
        self._smooth.set(marker="", markevery=None)
        self.redraw()

    def show_history(self, records: list, steps: list, fine_tuned: str = FINE_TUNE_MARK) -> None:
        """The curves of a model's saved per-epoch ``records`` (a loaded or previous model:
        :meth:`napari_unet.model_io.UNetModel.history_records`), one point an epoch at ``steps`` (its ``history_steps``):
        mean training loss, validation loss and Dice; a dotted line labelled ``fine_tuned`` where a record's ``run``
        changes (a fine-tune of the model before)."""
        self.clear()
        run = None
        for index, (record, step) in enumerate(zip(records, steps)):
            if run is not None and record.get("run", 0) != run:
                self._add_mark(steps[index - 1], fine_tuned)
            run = record.get("run", 0)
            loss = _number(record.get("loss"))
            if loss is not None and loss > 0:
                self.steps.append(step)
                self.losses.append(loss)
                self.smoothed.append(loss)  # an epoch's mean is smooth already
            dice = _number(record.get("val_dice"))
            self.add_epoch(step, _number(record.get("val_loss")), {} if dice is None else {"dice": dice})
        self._segment_start = len(self.losses)
        self._timer.stop()  # (add_epoch scheduled a second draw of the same curves)
        # markers on the epochs' points: a one-epoch model is one point, which a line without markers does not draw
        self._smooth.set(marker="o", markersize=3, markevery=list(range(len(self.losses))))
        self.redraw()

    def start_run(self, continues: str = "") -> None:
        """Curves of a new run: the plot is cleared, or, with ``continues`` (:data:`FINE_TUNE_MARK`), the run's steps
        follow the shown curves after a dotted line with that label (a fine-tuned model's history is its model's before it).
        :meth:`discard_run` brings back what was shown."""
        kept = (self._lists(), list(self.marks), self._offset, self._segment_start, self._smooth.get_markevery())
        if continues and self.steps:
            self._offset = max(self.steps + self.val_steps)
            self._segment_start = len(self.losses)
            self._add_mark(self._offset, continues)
            self._schedule()
        else:
            self.clear()
        self._kept = kept

    def discard_run(self) -> None:
        """The curves as they were before the last :meth:`start_run` (the run's network was discarded or it failed)."""
        if self._kept is None:  # no run started since, or it was discarded already
            return
        lists, marks, self._offset, self._segment_start, markevery = self._kept
        self._smooth.set(marker="o" if markevery else "", markevery=markevery)
        (self.steps, self.losses, self.smoothed, self.val_steps, self.val_losses, self.dice_steps, self.dice) = lists
        self._remove_marks()
        for step, label in marks:
            self._add_mark(step, label)
        self._kept = None
        self.redraw()

    def keep_run(self) -> None:
        """The run since :meth:`start_run` made the current model: its curves stay (:meth:`discard_run` keeps them)."""
        self._kept = None
        self.redraw()

    def _add_mark(self, step: int, label: str) -> None:
        """A dotted line at ``step`` (the Dice curve is dashed), labelled along it on its left, inside the axes."""
        self.marks.append((step, label))
        self._mark_lines.append(self.ax.axvline(step, color=self._text, linestyle=":", linewidth=1.2))
        if self._mark_label is not None:
            self._mark_label.remove()
        self._mark_label = self.ax.annotate(label, (step, 0.5), xycoords=("data", "axes fraction"), xytext=(-3, 0),
                                            textcoords="offset points", rotation=90, ha="right", va="center",
                                            fontsize=0.85 * self._text_size, color=self._text,
                                            bbox={"boxstyle": "square,pad=0.15", "linewidth": 0, "facecolor": self._background})

    def _lists(self) -> tuple:
        return tuple(list(values) for values in (self.steps, self.losses, self.smoothed, self.val_steps, self.val_losses,
                                                 self.dice_steps, self.dice))

    def _remove_marks(self) -> None:
        for line in self._mark_lines:
            line.remove()
        if self._mark_label is not None:
            self._mark_label.remove()
        self._mark_lines, self._mark_label, self.marks = [], None, []

    def add_step(self, step: int, loss: float) -> None:
        """``step`` of the current run (from 1)."""
        if not math.isfinite(loss) or loss <= 0:
            return
        n = len(self.losses) - self._segment_start + 1  # a continuing run's loss is smoothed from its own first step
        previous = self.smoothed[-1] if n > 1 else loss
        # Bias-corrected exponential moving average: smooth from the first point on.
        ema = self.smoothing * (previous * (1 - self.smoothing ** (n - 1))) + (1 - self.smoothing) * loss
        self.steps.append(self._offset + step)
        self.losses.append(loss)
        self.smoothed.append(ema / (1 - self.smoothing**n))
        self._schedule()

    def add_epoch(self, step: int, val_loss, val_metrics: dict) -> None:
        if val_loss is not None and math.isfinite(val_loss) and val_loss > 0:
            self.val_steps.append(self._offset + step)
            self.val_losses.append(val_loss)
        if val_metrics.get("dice") is not None:
            self.dice_steps.append(self._offset + step)
            self.dice.append(val_metrics["dice"])
        self._schedule()

    def _schedule(self) -> None:
        if not self._timer.isActive():
            self._timer.start()

    def redraw(self) -> None:
        self._raw.set_data(self.steps, self.losses)
        self._smooth.set_data(self.steps, self.smoothed)
        self._val.set_data(self.val_steps, self.val_losses)
        self._dice.set_data(self.dice_steps, self.dice)
        values = self.losses + self.val_losses
        if values:
            low, high = min(values), max(values)
            self.ax.set_ylim(low / 1.3, high * 1.3 if high > low else low * 2)
            self.ax.set_xlim(0, max(self.steps + self.val_steps + [1]) * 1.02)
        else:  # no steps yet: a step axis from 0, not matplotlib's -0.04..0.04 around nothing
            self.ax.set_xlim(0, 1)
        self.draw_idle()
        self.draws += 1

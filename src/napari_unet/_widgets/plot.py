"""Live training curves: smoothed training loss (log scale), validation loss and Dice.

Points are appended from worker signals on the main thread; the figure is redrawn at most every
``min_interval_ms`` (a single-shot QTimer coalesces updates), so a fast training cannot flood
the event loop with redraws.
"""

from __future__ import annotations

import math

from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from qtpy.QtCore import QTimer


def _theme_colors(viewer):
    try:
        from napari.utils.theme import get_theme

        theme = get_theme(viewer.theme)
        return theme.canvas.as_hex(), theme.text.as_hex()
    except Exception:  # unknown theme or API: matplotlib defaults stay readable
        return "#262930", "#f0f1f2"


class LossPlot(FigureCanvasQTAgg):
    def __init__(self, viewer=None, min_interval_ms: int = 400, smoothing: float = 0.9):
        figure = Figure(figsize=(4.0, 2.4), dpi=90)
        super().__init__(figure)
        background, text = _theme_colors(viewer)
        figure.patch.set_facecolor(background)
        self.ax = figure.add_subplot(111)
        self.ax_dice = self.ax.twinx()
        for ax in (self.ax, self.ax_dice):
            ax.set_facecolor(background)
            ax.tick_params(which="both", colors=text, labelsize=7)  # a log axis labels its minor ticks too
            for spine in ax.spines.values():
                spine.set_color(text)
        self.ax.set_xlabel("step", color=text, fontsize=8)
        self.ax.set_ylabel("loss", color=text, fontsize=8)
        self.ax_dice.set_ylabel("val Dice", color="#e0a030", fontsize=8)
        figure.subplots_adjust(left=0.22, right=0.84, bottom=0.2, top=0.95)  # room for "3x10^-1" and the label
        (self._raw,) = self.ax.plot([], [], color="#5080c0", alpha=0.3, linewidth=0.8)
        (self._smooth,) = self.ax.plot([], [], color="#60a0ff", linewidth=1.5, label="train (smoothed)")
        (self._val,) = self.ax.plot([], [], "o-", color="#ff6060", markersize=3, linewidth=1, label="validation")
        (self._dice,) = self.ax_dice.plot([], [], "s--", color="#e0a030", markersize=3, linewidth=1, label="val Dice")
        self.ax.set_yscale("log")
        self.ax_dice.set_ylim(0, 1)
        legend = self.ax.legend(loc="upper right", fontsize=7, frameon=False)  # "best" of no curves: over the first steps
        for item in legend.get_texts():
            item.set_color(text)
        self.smoothing = smoothing
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(min_interval_ms)
        self._timer.timeout.connect(self.redraw)
        self.draws = 0
        self.clear()
        self.draw()  # the first draw is slow (fonts, layout): do it now, not during training
        self.setMinimumHeight(160)

    def clear(self) -> None:
        self._timer.stop()
        self.steps, self.losses, self.smoothed = [], [], []
        self.val_steps, self.val_losses, self.dice_steps, self.dice = [], [], [], []
        self.redraw()

    def add_step(self, step: int, loss: float) -> None:
        if not math.isfinite(loss) or loss <= 0:
            return
        previous = self.smoothed[-1] if self.smoothed else loss
        # Bias-corrected exponential moving average: smooth from the first point on.
        n = len(self.losses) + 1
        ema = self.smoothing * (previous * (1 - self.smoothing ** (n - 1))) + (1 - self.smoothing) * loss
        self.steps.append(step)
        self.losses.append(loss)
        self.smoothed.append(ema / (1 - self.smoothing**n))
        self._schedule()

    def add_epoch(self, step: int, val_loss, val_metrics: dict) -> None:
        if val_loss is not None and math.isfinite(val_loss) and val_loss > 0:
            self.val_steps.append(step)
            self.val_losses.append(val_loss)
        if val_metrics.get("dice") is not None:
            self.dice_steps.append(step)
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

"""A progress bar with ETA in the widget, plus a status line; the docks' button helpers."""

from __future__ import annotations

from collections import deque
from typing import Optional

from qtpy.QtCore import QEvent, QObject, Qt, QTimer
from qtpy.QtWidgets import QApplication, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

from napari_unet.train import format_seconds

_SCALE = 1000


class WrappingLabel(QLabel):
    """A word-wrapped label as tall as its wrapped text: in a form layout Qt gave such a label the height of fewer
    lines, cutting off its first and last ones (the inference widget's model description and TTA hint)."""

    def __init__(self, text: str = "", parent=None):
        super().__init__(text, parent)
        self.setWordWrap(True)
        self.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)  # an error's file path can be copied

    def setText(self, text: str) -> None:
        super().setText(text)
        self._fit()

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self._fit()

    def _fit(self) -> None:
        height = self.heightForWidth(self.width())
        if height > 0 and height != self.minimumHeight():
            self.setMinimumHeight(height)


class ProgressRow(QWidget):
    """A progress bar with ETA and a status line.

    Never animated and not mirrored in napari's activity dock: under software OpenGL (VMs, remote desktops, Xvfb) an
    indeterminate bar took 0.47 of a core and napari's animated activity indicator 0.42-0.47, which it kept after the run,
    repainting the window beside the training (BENCHMARKS.md, "Session 47").
    """

    def __init__(self, name: str, parent=None):
        super().__init__(parent)
        self.bar = QProgressBar()
        self.bar.setAccessibleName(f"{name} progress")  # a screen reader said "progress bar, idle"
        self.bar.setRange(0, _SCALE)
        self.bar.setValue(0)
        self.bar.setFormat("idle")
        self.bar.setTextVisible(True)
        self.status = WrappingLabel()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.bar)
        layout.addWidget(self.status)
        self._running = False

    def start(self, description: str) -> None:
        """An empty bar saying ``description`` until the first :meth:`update`."""
        self.finish()
        self.bar.setValue(0)
        self.bar.setFormat(description)
        self._running = True

    def update(self, fraction: float, eta: Optional[float], text: str = "") -> None:
        value = int(round(_SCALE * min(max(fraction, 0.0), 1.0)))
        self.bar.setValue(value)
        eta_text = f" - ETA {format_seconds(eta)}" if eta is not None else ""
        self.bar.setFormat(f"{text}{' ' if text else ''}%p%{eta_text}")

    def finish(self, text: Optional[str] = None, complete: bool = False) -> None:
        """End the run's display; ``complete`` fills the bar, else it keeps its value."""
        self._running = False
        if complete:
            self.bar.setValue(_SCALE)
        if text is not None:
            self.bar.setFormat(text)

    def reset(self, text: str) -> None:
        """An empty bar saying ``text`` (e.g. after a refused start, instead of the last run's "completed")."""
        self.finish()
        self.bar.setValue(0)
        self.bar.setFormat(text)

    @property
    def active(self) -> bool:
        return self._running

    def set_status(self, text: str) -> None:
        self.status.setText(text)


#: Put through :class:`InOrder` by a worker's ``finished`` signal: the end of a job is handled after its last
#: events (handled first, it dropped a prediction or a trained model still queued behind it).
WORKER_FINISHED = object()


class InOrder:
    """Worker events handled one at a time, in the order they arrived (the worker's end too: :data:`WORKER_FINISHED`).

    Updating napari's activity bar runs ``QApplication.processEvents()``, so a worker's queued ``yielded`` signals were
    handled inside the handler of an earlier event: loss-plot steps went 8, 7 and 21 -> 16. A nested call only queues
    its event; the outer call hands them out in order: ``self._in_order.handle(event, self._handle)``.
    """

    def __init__(self):
        self._pending: deque = deque()
        self._handling = False

    def handle(self, event, handler) -> None:
        self._pending.append(event)
        if self._handling:
            return
        self._handling = True
        try:
            while self._pending:
                handler(self._pending.popleft())
        finally:  # a handler that raised leaves the events behind it to the next call
            self._handling = False


def swap_buttons(start, stop, running: bool) -> None:
    """Enable ``stop`` and disable ``start`` while ``running``, else the reverse, and move the keyboard focus with
    them: Qt gives the focus of a button being disabled to the next control, so a second Space on Run marked a slice
    reviewed (and one on Retrain opened the save dialog)."""
    had_focus = start.hasFocus() or stop.hasFocus()
    enabled, disabled = (stop, start) if running else (start, stop)
    enabled.setEnabled(True)
    if had_focus:
        enabled.setFocus()
    disabled.setEnabled(False)


def press_on_return(widget) -> None:
    """Let Return and Enter press ``widget``'s focused push buttons too, as in dialogs (Qt gives a button outside a
    dialog Space only): a keyboard user who tabbed to Run pressed Return and nothing happened. A held key presses once
    (Qt clicks at each repeated press: Run, then Stop, which took the focus)."""
    repeats = _ReturnRepeatsIgnored(widget)
    for button in widget.findChildren(QPushButton):
        button.setAutoDefault(True)
        button.installEventFilter(repeats)


def keep_focus_from_notifications(widget) -> None:
    """Keep the keyboard focus on ``widget``'s push buttons when a program moves it elsewhere in the window: napari
    gives its canvas the focus when a notification closes (4 s after a note of a run shows), so Space after Space on
    Train went to the canvas, not to Stop. A click, Tab or another window moves it as ever."""
    kept = _FocusKept(widget)
    for button in widget.findChildren(QPushButton):
        button.installEventFilter(kept)


class _FocusKept(QObject):
    def __init__(self, dock: QWidget):
        super().__init__(dock)
        self._dock = dock

    def eventFilter(self, watched, event) -> bool:
        if event.type() == QEvent.Type.FocusOut and event.reason() == Qt.FocusReason.OtherFocusReason:
            taken_by = QApplication.focusWidget()
            if (taken_by is not None and not self._dock.isAncestorOf(taken_by) and taken_by.window() is watched.window()
                    and QApplication.mouseButtons() == Qt.MouseButton.NoButton):
                QTimer.singleShot(0, lambda: _focus_again(watched, taken_by))
        return False


def _focus_again(button, taken_by) -> None:
    """``button`` focused again if it can be and the focus is still where a program put it."""
    try:
        if QApplication.focusWidget() is taken_by and button.isEnabled() and button.isVisible():
            button.setFocus(Qt.FocusReason.OtherFocusReason)
    except RuntimeError:  # the dock was closed meanwhile
        pass


class _ReturnRepeatsIgnored(QObject):
    def eventFilter(self, watched, event) -> bool:
        return (event.type() == QEvent.Type.KeyPress and event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter)
                and event.isAutoRepeat())

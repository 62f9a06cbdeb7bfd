"""The docks' look: controls that scroll inside a dock, the viewer's theme, a visible keyboard focus."""

from __future__ import annotations

from qtpy.QtCore import QSize, Qt, QTimer
from qtpy.QtWidgets import (QApplication, QCheckBox, QDockWidget, QFrame, QMainWindow, QScrollArea, QSizePolicy,
                            QVBoxLayout, QWidget)

from .session import disconnect_when_destroyed


def scrolling_layout(widget: QWidget) -> QVBoxLayout:
    """A vertical layout for ``widget``'s controls inside a scroll area that fills ``widget``: napari docks a widget
    without one, so a dock taller than the screen made the main window taller than the screen too (the training
    dock's Save model and the inference dock's Run were below its bottom edge on a 1366x768 screen)."""
    area = _VerticalScrollArea(widget)
    contents = QWidget()
    area.setWidget(contents)
    outer = QVBoxLayout(widget)
    outer.setContentsMargins(0, 0, 0, 0)
    outer.addWidget(area)
    return QVBoxLayout(contents)


#: The share of the screen's height a dock asks for at most, so that docks stacked in one column start with a share
#: each (the first asked for its whole height and a dock docked below it got a scroll bar's height).
SCREEN_SHARE = 0.45
#: Lines of text a dock keeps at least: the window's minimum height adds up the docks' minimums (a third dock in the
#: column made a minimum of 0.4 of the screen per dock taller than the screen).
MINIMUM_LINES = 8


def _screen_of(widget: QWidget):
    """The screen ``widget`` is on, else the primary one, else None (QWidget.screen is Qt 5.14 and later)."""
    screen = widget.screen() if hasattr(widget, "screen") else None
    return screen if screen is not None else QApplication.primaryScreen()


class _VerticalScrollArea(QScrollArea):
    """Scrolls its controls up and down only: asks for their full size up to :data:`SCREEN_SHARE` of the screen, keeps
    :data:`MINIMUM_LINES` at least, and is never narrower than they are."""

    def __init__(self, parent: QWidget):
        super().__init__(parent)
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self._shown = False

    def showEvent(self, event) -> None:
        super().showEvent(event)
        if not self._shown:  # once: a height the user gave a dock afterwards stays
            self._shown = True
            QTimer.singleShot(0, lambda: _share_the_column(self))

    def _scroll_bar_width(self) -> int:
        return self.verticalScrollBar().sizeHint().width()

    def sizeHint(self) -> QSize:
        if self.widget() is None:
            return super().sizeHint()
        wanted = self.widget().sizeHint()
        screen = _screen_of(self)
        height = wanted.height() if screen is None else min(wanted.height(), int(SCREEN_SHARE * screen.availableGeometry().height()))
        return QSize(wanted.width() + self._scroll_bar_width(), height)

    def minimumSizeHint(self) -> QSize:
        hint = super().minimumSizeHint()
        if self.widget() is not None:
            needed = self.widget().minimumSizeHint()
            hint.setWidth(needed.width() + self._scroll_bar_width())
            hint.setHeight(max(hint.height(), min(needed.height(), MINIMUM_LINES * self.fontMetrics().lineSpacing())))
        return hint


def _share_the_column(area: QWidget) -> None:
    """Give the docks of scrolling controls that are stacked in ``area``'s dock column heights in proportion to what
    they ask for: Qt gave a dock docked below another most of the column (training 166 px of its 506, inference 830
    of its 389, 300 of them blank)."""
    dock = area.parentWidget()
    while dock is not None and not isinstance(dock, QDockWidget):
        dock = dock.parentWidget()
    window = dock.parentWidget() if dock is not None else None
    if not isinstance(window, QMainWindow) or dock.isFloating():
        return
    column = [other for other in window.findChildren(QDockWidget)
              if other.isVisible() and not other.isFloating() and other.x() == dock.x()
              and window.dockWidgetArea(other) == window.dockWidgetArea(dock) and not window.tabifiedDockWidgets(other)
              and other.findChild(_VerticalScrollArea) is not None]
    if len(column) >= 2:
        window.resizeDocks(column, [other.sizeHint().height() for other in column], Qt.Orientation.Vertical)


#: Border of the control with the keyboard focus, on a dark and on a light theme: napari's style sheet marks the focus
#: of none of the docks' buttons, check boxes and combo boxes, so a keyboard user pressed Return on an unseen button.
FOCUS_COLORS = {"dark": "#8fb0ff", "light": "#1f4fbf"}
_FOCUSABLE = ("QPushButton", "QCheckBox", "QComboBox")


def theme_colors(theme_name: str) -> tuple:
    """(background, text, dark) of napari's theme ``theme_name``: two hex strings and whether the background is dark."""
    try:
        from napari.utils.theme import get_theme

        theme = get_theme(theme_name)
        background, text = theme.canvas.as_hex(), theme.text.as_hex()
        red, green, blue = (value / 255 for value in theme.canvas.as_rgb_tuple()[:3])
    except Exception:  # unknown theme or API: napari's dark theme
        background, text, (red, green, blue) = "#262930", "#f0f1f2", (0.15, 0.16, 0.19)
    return background, text, 0.2126 * red + 0.7152 * green + 0.0722 * blue < 0.5


def _layout_holding(layout, widget: QWidget):
    """The layout, ``layout`` or one nested in it, that holds ``widget`` itself; None if none does."""
    if layout is None:
        return None
    for index in range(layout.count()):
        item = layout.itemAt(index)
        if item.widget() is widget:
            return layout
        found = _layout_holding(item.layout(), widget)
        if found is not None:
            return found
    return None


def show_keyboard_focus(widget: QWidget, viewer) -> None:
    """Draw a border around the control of ``widget`` that has the keyboard focus, in a colour for ``viewer``'s theme
    (around a check box and its text, not the form cell it stands in)."""

    def style(theme_name: str) -> None:
        color = FOCUS_COLORS["dark" if theme_colors(theme_name)[2] else "light"]
        # the unfocused border is transparent so that the focus does not move the text by a pixel; disabled controls
        # keep napari's own style (a rule without a state took their outline away)
        widget.setStyleSheet("\n".join(f"{kind}:enabled:!focus {{ border: 1px solid transparent; }} "
                                        f"{kind}:enabled:focus {{ border: 1px solid {color}; }}" for kind in _FOCUSABLE))

    def follow(event) -> None:  # a plain function: disconnected when the widget is deleted
        style(event.value)

    for box in widget.findChildren(QCheckBox):  # as wide as its text (the border spanned the form cell), where it stood
        box.setSizePolicy(QSizePolicy.Policy.Maximum, box.sizePolicy().verticalPolicy())
        holder = _layout_holding(box.parentWidget().layout(), box) if box.parentWidget() is not None else None
        if holder is not None:
            holder.setAlignment(box, Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter)
    style(getattr(viewer, "theme", "dark"))
    if viewer is not None:
        viewer.events.theme.connect(follow)
        disconnect_when_destroyed(widget, (viewer.events.theme, follow))


__all__ = ["FOCUS_COLORS", "MINIMUM_LINES", "SCREEN_SHARE", "scrolling_layout", "show_keyboard_focus", "theme_colors"]

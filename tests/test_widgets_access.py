"""The docks on small screens, with other themes and fonts, and to screen readers and keyboard users."""

import pytest

pytest.importorskip("napari")


def _docks(widgets):
    return (widgets.training, widgets.inference)


def test_docks_scroll_instead_of_making_the_window_taller_than_the_screen(widgets):
    # both docks' controls stacked made the main window at least 1286 px tall: on a 1366x768 screen the inference
    # dock's Run and the training dock's Save model were below its bottom edge, with no scroll bar to reach them
    from qtpy.QtWidgets import QLabel, QScrollArea

    from napari_unet._widgets.style import MINIMUM_LINES, SCREEN_SHARE

    window = widgets.viewer.window._qt_window
    screen = window.screen().availableGeometry().height()
    for dock, button in ((widgets.training, widgets.training.save_button), (widgets.inference, widgets.inference.run_button)):
        area = dock.findChild(QScrollArea)
        assert area is not None and area.isAncestorOf(button)
        lines = MINIMUM_LINES * area.fontMetrics().lineSpacing()
        assert lines <= area.minimumSizeHint().height() <= lines + 2  # a few lines, not the controls' 433-759 px
        # docks in one column start with a share of the screen each (a dock docked below another got a scroll bar's
        # height when the first asked for its whole height)
        assert area.sizeHint().height() == min(area.widget().sizeHint().height(), int(SCREEN_SHARE * screen))
        # never narrower than the controls (no horizontal scroll bar: they would be cut off instead)
        assert area.minimumSizeHint().width() >= area.widget().minimumSizeHint().width()
    third = QLabel("another plugin's dock")
    third.setMinimumHeight(150)
    widgets.viewer.window.add_dock_widget(third, name="another dock", area="right")  # stacked below ours
    assert window.minimumSizeHint().height() < screen


def test_docks_stacked_in_a_column_share_it_as_they_ask(widgets, qtbot):
    # the dock docked second got most of the column: training 166 px of the 506 it asked for, inference 830 of its 389
    from qtpy.QtWidgets import QApplication, QDockWidget

    def dock_of(widget):
        while not isinstance(widget, QDockWidget):
            widget = widget.parentWidget()
        return widget

    window = widgets.viewer.window._qt_window
    window.showNormal()
    window.resize(1200, min(1000, window.screen().availableGeometry().height()))
    docks = [dock_of(widget) for widget in (widgets.training, widgets.inference)]
    qtbot.waitUntil(lambda: all(dock.isVisible() for dock in docks), timeout=10_000)
    QApplication.processEvents()
    qtbot.wait(50)
    heights = [dock.height() for dock in docks]
    asked = [dock.sizeHint().height() for dock in docks]
    assert heights[0] / heights[1] == pytest.approx(asked[0] / asked[1], rel=0.15), (heights, asked)


def test_a_tall_training_dock_gives_its_height_to_the_loss_plot(em_viewer, qtbot):
    # in a tall window the dock kept the extra height as a blank below its buttons, the plot at its smallest
    from qtpy.QtWidgets import QApplication, QScrollArea

    from napari_unet._widgets import TrainingWidget

    training = TrainingWidget(em_viewer)
    qtbot.addWidget(training)
    controls = training.findChild(QScrollArea).widget().sizeHint().height()
    training.resize(560, controls)
    training.show()
    QApplication.processEvents()
    small = training.plot.height()
    training.resize(560, controls + 400)
    QApplication.processEvents()
    assert training.plot.height() >= small + 390
    buttons = training.save_button.mapTo(training, training.save_button.rect().bottomLeft()).y()
    assert training.height() - buttons < 30  # no blank below the last row


def test_loss_plot_and_focus_border_follow_the_viewer_theme(widgets):
    from matplotlib.colors import to_rgb

    from napari_unet._widgets.style import FOCUS_COLORS

    plot = widgets.training.plot

    def brightness(color):
        return sum(to_rgb(color)) / 3

    assert brightness(plot.figure.get_facecolor()) < 0.5  # napari's default dark theme
    widgets.viewer.theme = "light"  # the plot stayed black in a light window, and white in a dark one the other way
    assert brightness(plot.figure.get_facecolor()) > 0.5
    assert brightness(plot.ax.xaxis.label.get_color()) < 0.5
    for dock in _docks(widgets):
        assert f":enabled:focus {{ border: 1px solid {FOCUS_COLORS['light']}" in dock.styleSheet()
    widgets.viewer.theme = "dark"
    assert brightness(plot.figure.get_facecolor()) < 0.5 and brightness(plot.ax.xaxis.label.get_color()) > 0.5
    for dock in _docks(widgets):
        assert f"QPushButton:enabled:focus {{ border: 1px solid {FOCUS_COLORS['dark']}" in dock.styleSheet()
        # every rule names the enabled state: a rule without one replaced napari's outline of disabled controls
        rules = [rule.split("{")[0].strip() for rule in dock.styleSheet().split("}") if "{" in rule]
        assert rules and all(":enabled" in rule for rule in rules), rules


def test_a_check_box_focus_border_is_as_wide_as_its_text_and_the_box_stays_in_place(em_viewer, qtbot):
    # the border of a focused check box spanned its whole form cell (151 px around "flips", 54 px wide)
    from qtpy.QtWidgets import QApplication, QCheckBox

    from napari_unet._widgets import InferenceWidget, TrainingWidget

    for dock in (TrainingWidget(em_viewer), InferenceWidget(em_viewer)):
        qtbot.addWidget(dock)
        dock.resize(640, 1000)
        dock.show()
        QApplication.processEvents()
        boxes = [box for box in dock.findChildren(QCheckBox) if box.isVisible()]
        assert len(boxes) >= 3
        for box in boxes:
            assert box.width() == box.sizeHint().width(), box.text()
        if isinstance(dock, TrainingWidget):  # at the left of their cells, as before (a narrower box was centred in it)
            settings = dock.settings

            def left(widget):
                return widget.mapTo(dock, widget.rect().topLeft()).x()

            assert left(settings.flips) == left(settings.rotations) == left(settings.depth)


def test_the_loss_plot_names_every_curve_and_sizes_its_text_as_the_widget_font(widgets):
    from qtpy.QtGui import QFont

    plot = widgets.training.plot
    labels = [text.get_text() for text in plot._legend.get_texts()]
    assert labels == ["train (smoothed)", "validation", "val Dice"]  # the Dice curve had only its axis label's colour
    for theme in ("light", "dark"):
        widgets.viewer.theme = theme
        assert [handle.get_color() for handle in plot._legend.legend_handles] == [
            line.get_color() for line in (plot._smooth, plot._val, plot._dice)]  # not matplotlib's first colours
    small = plot.ax.xaxis.label.get_fontsize()
    font = QFont(plot.font())
    font.setPointSizeF(2 * font.pointSizeF())
    plot.setFont(font)
    plot.apply_theme(widgets.viewer.theme)
    assert plot.ax.xaxis.label.get_fontsize() == pytest.approx(2 * small, rel=0.2)  # stayed at 8 points


def test_every_setting_and_progress_bar_has_a_name_for_screen_readers(widgets):
    # Qt names a control after its form row's label; a row of several boxes named none of them ("spin box, 40")
    from qtpy.QtWidgets import QAbstractSpinBox, QComboBox, QLabel, QProgressBar

    for dock in _docks(widgets):
        buddies = {id(label.buddy()) for label in dock.findChildren(QLabel) if label.buddy() is not None}
        controls = dock.findChildren(QAbstractSpinBox) + dock.findChildren(QProgressBar) + dock.findChildren(QComboBox)
        unnamed = [c for c in controls if not c.accessibleName() and id(c) not in buddies]
        assert not unnamed, [type(c).__name__ for c in unnamed]
    assert widgets.training.progress.bar.accessibleName() == "training progress"
    assert widgets.training.settings.retrain_lr.accessibleName() != widgets.training.settings.lr.accessibleName()


def test_every_control_explains_itself_in_a_tooltip(widgets):
    from qtpy.QtWidgets import QAbstractSpinBox, QCheckBox, QComboBox, QPushButton

    for dock in _docks(widgets):
        controls = (dock.findChildren(QCheckBox) + dock.findChildren(QComboBox) + dock.findChildren(QAbstractSpinBox)
                    + dock.findChildren(QPushButton))
        silent = [getattr(c, "text", lambda: type(c).__name__)() for c in controls if not c.toolTip()]
        assert not silent  # flips, elastic, intensity, "apply to" and the layer pickers had none


def test_auto_check_boxes_say_auto_in_their_text(qtbot):
    from qtpy.QtCore import Qt

    from napari_unet._widgets.settings import TrainSettings

    settings = TrainSettings()
    qtbot.addWidget(settings)
    for box, name in ((settings.rotations, "rotations"), (settings.noise, "noise")):
        assert box.checkState() == Qt.CheckState.PartiallyChecked and box.text() == f"{name} (auto)"  # was a dash only
        box.setCheckState(Qt.CheckState.Checked)
        assert box.text() == name
        box.setCheckState(Qt.CheckState.PartiallyChecked)
        assert box.text() == f"{name} (auto)"


def test_status_text_can_be_selected_to_copy_a_path(widgets):
    from qtpy.QtCore import Qt

    for dock in _docks(widgets):
        flags = dock.progress.status.textInteractionFlags()
        assert flags & Qt.TextInteractionFlag.TextSelectableByMouse

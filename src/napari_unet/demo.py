"""``napari-unet demo``: the main job on embedded synthetic EM data, end to end."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path

from ._interrupts import interrupts_deferred


def has_display() -> bool:
    """True when a GUI can open (an X/Wayland display on Linux; assumed elsewhere)."""
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


def display_unreachable() -> str | None:
    """Why Qt cannot open the display (a DISPLAY of an ssh session that ended), else None: Qt aborts the process that
    tries (exit 134, "reinstalling the application may fix this problem"), so a child process tries first."""
    import subprocess

    probe = "from qtpy.QtWidgets import QApplication; QApplication([])"
    try:
        result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return "no answer within 60 s"
    except OSError as err:
        return str(err)
    if result.returncode == 0:
        return None
    lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
    if lines and lines[0].startswith("Traceback"):  # a Python error (no Qt binding): its last line says which
        missing = "QtBindingsNotFoundError" in lines[-1] or "No Qt bindings" in lines[-1]
        return lines[-1] + ("; napari needs one: pip install PyQt6" if missing else "")
    return lines[0] if lines else f"exit status {result.returncode}"


def save_figure(path, image, truth, prediction, history) -> Path:
    """PNG with one slice of image, truth, prediction and the loss curves; written atomically. A Figure of its own:
    the caller's pyplot backend stays as it is (matplotlib.use("Agg") switched it, and the user's windows stopped showing)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(13, 3.6), dpi=100)
    axes = figure.subplots(1, 4)
    for ax, data, title in zip(axes, (image, truth, prediction), ("image", "truth (0 = membrane)", "prediction")):
        ax.imshow(data, cmap="gray")
        ax.set_title(title)
        ax.axis("off")
    epochs = [h["epoch"] for h in history]
    axes[3].plot(epochs, [h["loss"] for h in history], marker="o", markersize=3, label="training loss")  # markers: a one-epoch run is one point
    val = [(h["epoch"], h["val_loss"]) for h in history if h.get("val_loss") is not None]
    if val:
        axes[3].plot(*zip(*val), marker="o", markersize=3, label="validation loss")
    axes[3].set_xlabel("epoch")
    axes[3].set_yscale("log")
    axes[3].legend()
    axes[3].set_title("loss")
    figure.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    try:
        figure.savefig(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # left only when saving failed
    return path


def run_demo(output_dir: Path, minutes: float = 1.0, headless: bool = False, seed: int = 0, written: list | None = None,
             no_xla: bool = False) -> int:
    """Generate data, train for ``minutes``, predict, score, write model, prediction and figure. Each file written is
    appended to ``written`` (an interrupted command names them). ``no_xla``: train and predict without XLA."""
    from .cli import CommandError, check_output, diverged_path, os_reason, run_training
    from .config import preset
    from .metrics import evaluate
    from .model_io import save_model
    from .predict import predict
    from .synthetic import make_em_stack
    from .tiff_io import write_tiff
    from .train import TrainingDiverged

    written = [] if written is None else written
    chosen = preset("default")
    train_config = chosen.train.replace(epochs=100_000, steps_per_epoch=20, max_minutes=minutes, seed=seed)  # checks the budget
    if no_xla:
        train_config = train_config.replace(jit_compile=False)
    if output_dir.exists() and not output_dir.is_dir():
        raise CommandError(f"--output-dir {str(output_dir)!r} is a file, not a folder")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CommandError(f"cannot create the folder {str(output_dir)!r}: {os_reason(err)}") from None
    outputs = {name: check_output(output_dir / name, f"the demo's {kind}")  # before a minute of training, not after
               for name, kind in (("demo-model.keras", "model"), ("demo-prediction.tif", "prediction"), ("demo.png", "figure"),
                                  ("demo-image.tif", "image"), ("demo-labels.tif", "labels"))}
    image, labels = make_em_stack(n_slices=10, shape=(256, 256), seed=seed)
    print(f"synthetic EM stack {image.shape} {image.dtype}; labels 0 = membrane, 255 = cell", file=sys.stderr)

    def write(path, save):
        with interrupts_deferred():  # the file and its record
            save()
            written.append(path)
        return path

    started = time.perf_counter()
    with contextlib.ExitStack() as finishing:  # an interrupt during the finishing comes once the model is saved, as in train
        try:
            _, final = run_training(image, labels, chosen.model, train_config, finishing=finishing, budget_option="--minutes",
                                    one_class_options=f"--minutes, now {minutes:g}; --seed, now {seed}",
                                    one_class_hint="try a longer run or another seed (the demo trains the default preset)")
        except TrainingDiverged as err:  # before it kept any weights (status 1, as train)
            raise FloatingPointError(f"{err} (the demo trains the default preset; another --seed?); nothing written") from None
        train_seconds = time.perf_counter() - started
        if final.steps == 0:  # its untrained weights would be scored as if trained
            raise CommandError(f"training ended ({final.reason}) before its first step; nothing written (a larger --minutes?)")
        model_file = outputs["demo-model.keras"]
        if final.reason == "diverged":  # as train: a failed run writes demo-model.diverged.keras, never demo-model.keras
            model_file = diverged_path(model_file)
        model_path = write(model_file, lambda: save_model(final.model, model_file))
    if final.reason == "diverged":  # status 1, as train: its weights from before it are kept, the rest not made
        raise FloatingPointError(f"training diverged ({final.divergence}) and stopped; {model_path} holds the {final.kept} "
                                 "from before it; the demo wrote nothing else (the demo trains the default preset: another --seed?)")
    # the data too: a newcomer without data of their own can run train, predict and evaluate on them
    write(outputs["demo-image.tif"], lambda: write_tiff(outputs["demo-image.tif"], image, metadata={"axes": "ZYX"}))
    write(outputs["demo-labels.tif"], lambda: write_tiff(outputs["demo-labels.tif"], labels,
                                                         metadata={"class_values": [0, 255], "class_names": ["membrane", "cell"]}))

    val = [8, 9]
    with interrupts_deferred(second_at_once=True):  # Ctrl-C comes after the prediction (a few seconds)
        result = predict(final.model, image, slices=val, return_probabilities=False, jit_compile=False if no_xla else None)
    scores = evaluate(result.labels, labels[val], final.model.class_values)
    write(outputs["demo-prediction.tif"], lambda: write_tiff(outputs["demo-prediction.tif"], result.labels,
                                                             metadata={"class_values": final.model.class_values}))
    figure = write(outputs["demo.png"], lambda: save_figure(outputs["demo.png"], image[val[0]], labels[val[0]], result.labels[0],
                                                            final.history))
    report = {"train_seconds": round(train_seconds, 1), "held_out_slices": val, **scores}
    print(json.dumps(report, indent=1), flush=True)  # before the lines after it, in a log of both streams
    if scores.get("v_rand") is not None:
        print(f"held-out slices {val[0]}-{val[-1]}: V_rand {scores['v_rand']:.3f} and V_info {scores['v_info']:.3f} (1 = every "
              f"cell separated as in the truth), ISBI pixel error {scores['isbi_pixel_error']:.3f} (0 = every pixel right)",
              file=sys.stderr)
    print(f"wrote {model_path}, {outputs['demo-prediction.tif']} (held-out slices {val[0]}-{val[-1]}) and {figure}, and the "
          f"data: {outputs['demo-image.tif']}, {outputs['demo-labels.tif']}", file=sys.stderr)

    if headless or not has_display():
        if not headless:
            print("no display: skipped opening napari (pass --headless to silence this)", file=sys.stderr)
        return 0
    unreachable = display_unreachable()
    if unreachable:
        print(f"cannot open the display ({unreachable}): skipped opening napari (pass --headless to silence this)", file=sys.stderr)
        return 0
    from ._napari_demo import show_in_napari

    show_in_napari(image, labels, predict(final.model, image, return_probabilities=False).labels, final.model)
    return 0

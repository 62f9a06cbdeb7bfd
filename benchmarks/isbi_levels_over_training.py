#!/usr/bin/env python
"""Merge level of the membrane rule over a training run: each level at every checkpoint, validation vs unseen.

    python benchmarks/isbi_levels_over_training.py DIR [DIR ...] [--levels 0.5,0.6,0.7,0.75] [--name isbi-levels-over-training]

Each DIR holds the probabilities that ``isbi_accuracy.py --save-probabilities DIR`` wrote at every checkpoint
(``validation-membrane-M.npy`` of slices 12-14, ``membrane-M.npy`` of 15-19). For each checkpoint: the threshold
as training tunes it (lowest validation pixel error), then every merge level scored on the validation slices and
on the unseen slices. It asks whether the level the unseen slices prefer moves as the network trains.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from isbi_merging import N_VAL, cell_scores, parse_saved_models, read_isbi_volume, write_results  # noqa: E402


def add_arguments(parser) -> None:
    parser.add_argument("--levels", default="0.5,0.6,0.7,0.75", help="comma-separated merge levels to score")


def checkpoint_minutes(directory: Path) -> list[str]:
    """The checkpoints (minutes, as the file names spell them) with both probability files, in order."""
    minutes = [p.stem.removeprefix("validation-membrane-") for p in directory.glob("validation-membrane-*.npy")]
    return sorted((m for m in minutes if (directory / f"membrane-{m}.npy").exists()), key=float)


def main(argv=None) -> int:
    args = parse_saved_models(argv, __doc__.splitlines()[0], "isbi-levels-over-training", add_arguments)
    if args is None:
        return 0
    from napari_unet.postprocess import boundary_mask, candidate_closings, tune_boundary_rule

    levels = [float(level) for level in args.levels.split(",")]
    _, cells = read_isbi_volume()  # (8, Y, X): slices 12-19
    runs = {}
    for directory in args.models:  # parse_saved_models calls them models: here, probability folders
        rows = {}
        for minute in checkpoint_minutes(directory):
            val = np.load(directory / f"validation-membrane-{minute}.npy").astype(np.float32)
            unseen = np.load(directory / f"membrane-{minute}.npy").astype(np.float32)
            threshold = tune_boundary_rule(val, cells[:N_VAL], closings=())[0]["threshold"]  # as training picks it
            scores = {}
            for closing in candidate_closings(levels):
                rule = {**closing, "threshold": threshold}
                scores[str(closing["merge_below"])] = {
                    "val": cell_scores(np.stack([~boundary_mask(p, **rule) for p in val]), cells[:N_VAL]),
                    "judge": cell_scores(np.stack([~boundary_mask(p, **rule) for p in unseen]), cells[N_VAL:]),
                }
            rows[minute] = {"threshold": threshold, "levels": scores}
            print(f"{directory.name} {minute:>5} min, threshold {threshold}:",
                  *(f"{level} val {s['val']['v_rand']:.3f} unseen {s['judge']['v_rand']:.3f}/{s['judge']['v_info']:.3f}" for level, s in scores.items()),
                  flush=True)
        runs[str(directory)] = rows
    write_results(args.name, {"levels": levels, "runs": runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Which cells the Rand errors of saved ISBI models come from: split and merge pairs per cell on unseen slices 15-19.

    python benchmarks/isbi_split_errors.py A.keras [B.keras ...] [--merge-levels 0.5,0.6,0.7] [--top 10]
        [--png docs/split-errors.png] [--name isbi-split-errors]

For models saved by ``isbi_accuracy.py --save-model`` (trained on slices 0-11, validation 12-14), with the
probabilities of slices 12-19 that ``isbi_merging.py`` caches beside each model: the rule is tuned on 12-14 as
training tunes it (levels: ``--merge-levels``, else those the model recorded), the labels of 15-19 are thinned as
the ISBI scores thin them, and every truth cell's split pairs (pixel pairs of the cell put in different segments)
and every segment's merge pairs (pairs of different cells in one segment) are counted, as a fraction of the slice's
pixel pairs (V_rand is a mean over slices). Prints the largest errors and what share of each kind the largest
one and three carry; ``--png`` draws the largest splits of the first model (truth cell green, labels red).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from isbi_merging import N_VAL, add_merge_levels_argument, membrane_probabilities, merge_levels_for, parse_saved_models, read_isbi_volume, write_results  # noqa: E402


def add_arguments(parser) -> None:
    add_merge_levels_argument(parser)
    parser.add_argument("--top", type=int, default=10, help="errors listed per model")
    parser.add_argument("--png", type=Path, default=None, help="draw the first model's largest splits here")


def cell_errors(proposal: np.ndarray, truth: np.ndarray) -> list[dict]:
    """Split pairs per truth cell and merge pairs per proposal segment of one (Y, X) slice, as fractions of the
    slice's truth-foreground pixel pairs; watershed-line pixels (proposal 0) count as singletons."""
    inside = truth > 0
    t, q = truth[inside], proposal[inside]
    n2 = float(t.size) ** 2
    errors = []
    for cell in np.unique(t):
        counts = np.bincount(q[t == cell])
        singletons, parts = counts[0], counts[1:]
        pairs = (counts.sum() ** 2 - (parts.astype(float) ** 2).sum() - singletons) / n2
        if pairs > 0:
            errors.append({"kind": "split", "label": int(cell), "pairs": pairs, "pixels": int(counts.sum()),
                           "pieces": int((parts > 0.02 * counts.sum()).sum())})
    for segment in np.unique(q[q > 0]):
        counts = np.bincount(t[q == segment])[1:]
        pairs = (counts.sum() ** 2 - (counts.astype(float) ** 2).sum()) / n2
        if pairs > 0:
            errors.append({"kind": "merge", "label": int(segment), "pairs": pairs, "pixels": int(counts.sum()),
                           "pieces": int((counts > 0.02 * counts.sum()).sum())})
    return errors


def draw(path: Path, image, cells, probability, labels, splits) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from skimage.segmentation import find_boundaries

    from napari_unet.metrics import truth_segments

    fig, axes = plt.subplots(2, len(splits), figsize=(4 * len(splits), 8), squeeze=False)
    for column, error in enumerate(splits):
        k = error["slice"] - 12
        truth = truth_segments(cells[k])
        ys, xs = np.nonzero(truth == error["label"])
        y0, y1, x0, x1 = max(0, ys.min() - 20), ys.max() + 21, max(0, xs.min() - 20), xs.max() + 21
        rgb = np.repeat(image[error["slice"]][y0:y1, x0:x1, None] / 255.0, 3, axis=2)
        rgb[find_boundaries(labels[k], mode="inner")[y0:y1, x0:x1]] = (1, 0, 0)
        rgb[find_boundaries(truth == error["label"], mode="inner")[y0:y1, x0:x1]] = (0, 1, 0)
        axes[0, column].imshow(rgb)
        axes[0, column].set_title(f"slice {error['slice']}: {error['pixels']} px, {error['pairs']:.4f}")
        axes[1, column].imshow(probability[k][y0:y1, x0:x1], cmap="magma", vmin=0, vmax=1)
    for axis in axes.ravel():
        axis.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def main(argv=None) -> int:
    args = parse_saved_models(argv, __doc__.splitlines()[0], "isbi-split-errors", add_arguments)
    if args is None:
        return 0

    from napari_unet.metrics import segment_cells, truth_segments
    from napari_unet.postprocess import boundary_mask, candidate_closings, tune_boundary_rule

    image, cells = read_isbi_volume()
    per_model = {}
    for index, path in enumerate(args.models):
        probability = membrane_probabilities(path, image)
        levels = merge_levels_for(path, args.merge_levels)
        rule, _ = tune_boundary_rule(probability[:N_VAL], cells[:N_VAL], closings=candidate_closings(levels))
        labels, errors = {}, []
        for k in range(N_VAL, len(probability)):
            labels[k] = segment_cells(~boundary_mask(probability[k], **rule))
            errors += [{**e, "slice": k + 12} for e in cell_errors(labels[k], truth_segments(cells[k]))]
        errors.sort(key=lambda e: -e["pairs"])
        totals, shares = {}, {}
        for kind in ("split", "merge"):
            pairs = [e["pairs"] for e in errors if e["kind"] == kind]
            totals[kind] = float(np.sum(pairs))
            shares[kind] = {f"largest_{n}": float(np.sum(pairs[:n]) / totals[kind]) if totals[kind] else 0.0 for n in (1, 3)}
        per_model[path.stem] = {"rule": rule, "totals": totals, "shares": shares, "largest": errors[:args.top]}
        print(f"{path.stem}: split pairs {totals['split']:.4f} (largest cell {shares['split']['largest_1']:.0%}, "
              f"three largest {shares['split']['largest_3']:.0%}), merge pairs {totals['merge']:.4f}", flush=True)
        for e in errors[:args.top]:
            print(f"  {e['kind']:5} slice {e['slice']} {'cell' if e['kind'] == 'split' else 'segment'} {e['label']}: "
                  f"{e['pairs']:.4f} of the pairs, {e['pixels']} px in {e['pieces']} pieces")
        if index == 0 and args.png is not None:
            splits = [e for e in errors if e["kind"] == "split"][:4]
            draw(args.png, image, cells, probability, labels, splits)
            print(f"wrote {args.png}")
    write_results(args.name, {"models": list(per_model), "per_model": per_model})
    return 0


if __name__ == "__main__":
    sys.exit(main())

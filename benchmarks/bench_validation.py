#!/usr/bin/env python
"""One epoch's validation during training: the training network itself against a batch-norm-folded copy.

Training validates after every epoch on its validation slices. Until session 22 each validation built an inference
copy of the network with batch norm folded in and traced it (``predict``'s default); now it predicts with the
training network itself (``predict(..., folded=False)``), whose traced predict step Keras keeps. In one process, a
training network (the default preset, weights of ``--model`` or freshly initialised) validates ISBI slices 12-14
(``../shared/data``; a synthetic 3-slice EM stack without it) both ways, alternated, ``--rounds`` times; the first
round of each way includes its tracing (and, with ``--jit``, XLA compiling, as a 10-minute training compiles).

    python benchmarks/bench_validation.py --model m10.keras --jit     # ~1 min
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def summarize(runs: dict) -> dict:
    """Per way (``runs``: its seconds per round), the first round's seconds and the median of the later rounds', and
    ``later_ratio``, before / now of those medians; with one round (only the times with tracing), the medians and the
    ratio are None."""
    summary = {variant: {"first_s": times[0], "median_later_s": statistics.median(times[1:]) if len(times) > 1 else None}
               for variant, times in runs.items()}
    before, now = (summary[variant]["median_later_s"] for variant in ("folded copy (before)", "training network (now)"))
    summary["later_ratio"] = before / now if before is not None else None
    return summary


def main() -> int:
    ap = C.argument_parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="a default-preset model file (else fresh weights)")
    ap.add_argument("--jit", action="store_true", help="the training network compiled with XLA, as 10-minute runs are")
    ap.add_argument("--rounds", type=C.at_least(1), default=4, help="rounds of both ways (the first traces; later ones "
                    "are compared from 2 on)")
    ap.add_argument("--out", type=Path, default=C.RESULTS_DIR / "validation.json")
    args = ap.parse_args()
    C.use_src()
    from napari_unet._tensorflow import load_tensorflow

    load_tensorflow()
    import numpy as np

    import napari_unet.train as T
    from napari_unet.config import preset
    from napari_unet.model import build_unet
    from napari_unet.model_io import UNetModel, load_model
    from napari_unet.predict import predict

    folder = C.SHARED_DATA / "isbi2012"
    if folder.is_dir():
        image, source = C.read_tif(folder / "train-volume.tif"), "isbi slices 12-14"
        slices = [12, 13, 14]
    else:
        from napari_unet.synthetic import make_em_stack

        image, source, slices = make_em_stack(3, (512, 512), seed=1)[0], "synthetic EM 3 x 512²", [0, 1, 2]
    default = preset("default")
    start = load_model(args.model) if args.model else None
    model_config = start.config if start else default.model
    train_config = (start.train_config if start else default.train).replace(jit_compile=args.jit, mixed_precision=False)
    network = start.keras_model if start else build_unet(model_config, seed=0)
    trainer = T._new_trainer(None, model_config, train_config, False, T._loss_settings(train_config, 0))
    trainer.start_from(network)
    live = UNetModel(trainer.keras_model, model_config, [0, 255], start.percentiles if start else train_config.percentiles, train_config, boundary_value=0)
    runs: dict = {"folded copy (before)": [], "training network (now)": []}
    outputs = {}
    for round_index in range(args.rounds):
        for variant, folded in (("folded copy (before)", True), ("training network (now)", False)):
            t0 = time.perf_counter()
            outputs[variant] = predict(live, image, slices=slices, tta=False, folded=folded).probabilities
            runs[variant].append(time.perf_counter() - t0)
            print(f"round {round_index + 1} {variant}: {runs[variant][-1]:.2f} s", flush=True)
    summary = summarize(runs)
    summary["max_probability_difference"] = float(np.max(np.abs(outputs["folded copy (before)"] - outputs["training network (now)"])))
    C.write_report(args.out, {"data": source, "model": str(args.model), "jit": args.jit, "runs": runs, "summary": summary})
    print(summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

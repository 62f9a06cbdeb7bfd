#!/usr/bin/env python
"""One ``predict`` call per image against one call for the whole stack, with and without the kept inference copy.

    python benchmarks/bench_predict_calls.py --name s50-predict-calls

A script that loops over its images calls ``predict`` once per image. Each call used to fold batch norm into a new
inference copy of the network and trace it again (session 49 measured 0.336 s against 0.048 s per 128² image). Since
session 50 the copy is kept with the network while its weights stay the same (``predict._FORWARD_CACHE``). Three ways
run side by side on the same untrained networks (the ``default`` and ``classic`` presets): per-image calls with the
kept copy, per-image calls with the cache emptied before each call (as before), one stack call. Seconds per image
and their ratios to the stack call. Writes results/<name>.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def seconds_per_image(run, images) -> float:
    start = time.perf_counter()
    run(images)
    return (time.perf_counter() - start) / len(images)


def main(argv=None) -> int:
    parser = C.argument_parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", default="predict-calls", help="results/<name>.json")
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args(argv)
    C.use_src()
    from napari_unet import predict as predict_module
    from napari_unet.config import preset
    from napari_unet.model import build_unet
    from napari_unet.model_io import UNetModel

    images = C.synthetic_stack(args.images, args.size)[0]
    settings = dict(tta=False, return_probabilities=False)
    rows = []
    for name in ("default", "classic"):
        config = preset(name).model
        model = UNetModel(build_unet(config, seed=0), config, [0, 255])
        predict_module.predict(model, images[:2], **settings)  # warm-up: TensorFlow's first graphs, the thread pools

        def per_image(stack, fresh=False):
            for image in stack:
                if fresh:
                    predict_module._FORWARD_CACHE.clear()
                predict_module.predict(model, image, **settings)

        kept = seconds_per_image(per_image, images)
        rebuilt = seconds_per_image(lambda stack: per_image(stack, fresh=True), images)
        stack = seconds_per_image(lambda stack: predict_module.predict(model, stack, **settings), images)
        row = {"preset": name, "image": [args.size, args.size], "images": args.images,
               "per_call_kept_s": round(kept, 4), "per_call_rebuilt_s": round(rebuilt, 4), "stack_call_s": round(stack, 4),
               "kept_vs_stack": round(kept / stack, 2), "rebuilt_vs_stack": round(rebuilt / stack, 2),
               "rebuilt_vs_kept": round(rebuilt / kept, 2)}
        rows.append(row)
        print(row, flush=True)
    C.write_report(C.RESULTS_DIR / f"{args.name}.json", {"rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())

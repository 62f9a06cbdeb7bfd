#!/usr/bin/env python
"""Where ``napari-unet predict``'s time goes, stage by stage, in one process.

Times, in the order the command pays them: importing TensorFlow + Keras (as the command does, without Keras'
notebook / pandas / plotting extras; ``--full-import`` for the import napari does), napari-unet's own modules,
reading the stack, ``load_model``, building the batch-norm-folded inference copy, its first (traced) call, then
the network alone per 512² slice (median of later calls), the membrane rule alone per slice (one core; median
over the first slices' probabilities), and finally the whole ``predict_events`` loop over the stack (network and rule overlapped as the command runs them).

    python benchmarks/bench_predict_stages.py --model m.keras                  # 30 ISBI test slices
    python benchmarks/bench_predict_stages.py --model m.keras --full-import

``m.keras``: a default-preset model trained on ISBI (the rule's run time depends on trained probabilities).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

TEST_VOLUME = C.SHARED_DATA / "isbi2012" / "test-volume.tif"


def main(argv=None) -> int:
    parser = C.argument_parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--image", type=Path, default=TEST_VOLUME)
    parser.add_argument("--full-import", action="store_true", help="import Keras with its optional packages (as napari does)")
    parser.add_argument("--repeats", type=int, default=5, help="calls timed for the network and the rule alone")
    parser.add_argument("--name", default="predict-stages")
    args = parser.parse_args(argv)
    if not args.image.exists():
        raise SystemExit(f"{args.image} not found: this benchmark needs ../shared/data beside the repository")
    stages: dict[str, float] = {}

    def mark(name: str, since: float) -> float:
        now = time.perf_counter()
        stages[name] = now - since
        return now

    t = time.perf_counter()
    from napari_unet._tensorflow import load_tensorflow

    load_tensorflow(skip_optional=not args.full_import)
    import keras  # noqa: F401

    t = mark("import_tensorflow_keras_s", t)
    import numpy as np

    from napari_unet import hardware
    from napari_unet.cli import read_stack
    from napari_unet.model import fold_batch_norm
    from napari_unet.model_io import load_model
    from napari_unet.postprocess import boundary_mask
    from napari_unet.predict import predict, predict_events

    t = mark("import_napari_unet_s", t)
    image = read_stack(args.image, "image")
    t = mark("read_stack_s", t)
    model = load_model(args.model)
    t = mark("load_model_s", t)
    bf16 = hardware.resolve_mixed_precision(hardware.AUTO)
    folded = fold_batch_norm(model.keras_model, model.config, bf16)
    t = mark("fold_batch_norm_s", t)
    tile = np.zeros((1, 512, 512, model.config.network_channels), np.float32)
    folded.predict_on_batch(tile)
    mark("first_network_call_s", t)
    network = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        folded.predict_on_batch(tile)
        network.append(time.perf_counter() - t)
    stages["network_per_slice_s"] = statistics.median(network)

    if model.boundary_rule and model.boundary_value is not None:
        index = model.class_values.index(model.boundary_value)
        some = image[: min(args.repeats, len(image))]
        probabilities = predict(model, some, tta=1, close_boundaries=False, mixed_precision=bf16).probabilities
        rule = []
        for plane in probabilities:
            t = time.perf_counter()
            boundary_mask(plane[..., index], **model.boundary_rule)
            rule.append(time.perf_counter() - t)
        stages["rule_per_slice_s"] = statistics.median(rule)

    loop_start = time.perf_counter()  # as the command runs it: labels only, the rule in a thread beside the network
    for _ in predict_events(model, image, return_probabilities=False, tta=1, mixed_precision=bf16):
        pass
    stages["predict_loop_s"] = time.perf_counter() - loop_start
    stages["predict_loop_per_slice_s"] = stages["predict_loop_s"] / len(image)
    for name, seconds in stages.items():
        print(f"{name:28s} {seconds:7.3f}")
    fields = {"model": str(args.model), "image": str(args.image), "slices": len(image), "bfloat16": bf16,
              "full_import": args.full_import, "stages": stages}
    C.write_report(C.RESULTS_DIR / f"{args.name}.json", fields)
    return 0


if __name__ == "__main__":
    sys.exit(main())

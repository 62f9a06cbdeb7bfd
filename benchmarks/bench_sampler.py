#!/usr/bin/env python
"""Training patches: CPU per batch and what it leaves for the training step, for two code versions side by side.

Each run is a fresh process importing napari_unet from one of ``--srcs`` (this checkout's src/ and, e.g., an older
commit's worktree), rounds alternated. On the ISBI training slices 0-11 (the default split of an
``isbi_accuracy.py`` run; ../shared/data; a 12-slice synthetic EM stack without it) with the default preset:

- ``batch_cpu_ms``: CPU time of one batch of 4 augmented 256² patches (border weights, elastic deformation), in
  the main thread with nothing else running (median of ``--batches``);
- ``step_s``: the median training step of a ``--steps``-step run of the default settings (4 x 256², XLA as a
  10-minute run compiles it), where the batches are made in the background thread beside TensorFlow on the same
  cores, as in every training;
- ``sampler_init_s``: making the sampler (annotated positions; border weights are a separate, cached step);
- ``unannotated_share``: pixels of those batches the loss ignores (weight 0) although every pixel of ISBI is annotated:
  what the augmentation lost (the elastic warp's border).

    git worktree add /tmp/old HEAD~1
    python benchmarks/bench_sampler.py --srcs src,/tmp/old/src      # 2 rounds, ~8 min
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def load_stack():
    folder = C.SHARED_DATA / "isbi2012"
    if folder.is_dir():
        return C.read_tif(folder / "train-volume.tif")[:12], C.read_tif(folder / "train-labels.tif")[:12], "isbi slices 0-11"
    from napari_unet.synthetic import make_em_stack

    image, labels = make_em_stack(12, (512, 512), seed=1)
    return image, labels, "synthetic EM 12 x 512²"


def worker(spec: dict) -> None:
    from napari_unet._tensorflow import load_tensorflow

    load_tensorflow()
    import napari_unet.data as data
    from napari_unet.config import preset
    from napari_unet.labels import to_indices
    from napari_unet.train import TrainingStep, train_events

    image, labels, source = load_stack()
    default = preset("default")
    train_config = default.train
    class_values = sorted(int(v) for v in set(labels.ravel().tolist()))
    indices = to_indices(labels, class_values, None)
    images = data.normalize(image, train_config.percentiles, default.model.local_contrast_sigma)
    weights = data.class_weights(indices, 2, train_config.class_weighting)
    pixel_weights = data.border_weights(indices, 0, train_config.border_weight, train_config.border_sigma)
    aug = data.Augmentation(elastic_alpha=train_config.elastic_alpha, elastic_grid=train_config.elastic_grid)
    start = time.perf_counter()
    sampler = data.PatchSampler(images, indices, 256, weights, aug, seed=0, pixel_weights=pixel_weights)
    init_s = time.perf_counter() - start
    cpu, ignored = [], []
    for _ in range(spec["batches"]):
        start = time.process_time()
        _, targets = sampler.batch(4)
        cpu.append(time.process_time() - start)
        ignored.append(float((targets[..., 1] == 0).mean()))
    config = train_config.replace(epochs=1, steps_per_epoch=spec["steps"], val_fraction=0.0, jit_compile=True)
    steps, last = [], None
    for event in train_events(image, labels, default.model, config):
        if isinstance(event, TrainingStep):
            now = time.perf_counter()
            if last is not None:
                steps.append(now - last)
            last = now
    C.emit({
        "data": source,
        "imported": data.__file__,
        "sampler_init_s": init_s,
        "batch_cpu_ms": 1000 * statistics.median(cpu),
        "step_s": statistics.median(steps[5:]),
        "unannotated_share": statistics.mean(ignored),
    })


def main() -> int:
    ap = C.side_by_side_parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=C.at_least(1), default=2)
    ap.add_argument("--batches", type=C.at_least(1), default=30)
    ap.add_argument("--steps", type=C.at_least(7, "the median step leaves out the first six (tracing, XLA compiling)"), default=60,
                    help="training steps per run (at least 7)")
    ap.add_argument("--out", type=Path, default=C.RESULTS_DIR / "sampler.json")
    args = ap.parse_args()
    if C.ran_worker(args, worker):
        return 0
    srcs = C.src_folders(args.srcs)
    runs: dict = {src: [] for src in srcs}
    for round_index in range(args.rounds):
        for src in srcs:
            payloads, status, seconds = C.run_child(
                Path(__file__), {"batches": args.batches, "steps": args.steps}, {"PYTHONPATH": src}, timeout=1800
            )
            result = payloads[-1] if payloads else {}
            runs[src].append({"status": status, "seconds": seconds, **result})
            print(f"round {round_index + 1} {src}: {status} " + ", ".join(f"{k} {v:.3f}" for k, v in result.items() if isinstance(v, float)), flush=True)
    keys = ("sampler_init_s", "batch_cpu_ms", "step_s", "unannotated_share")
    summary = {src: {k: statistics.median(r[k] for r in results if k in r) for k in keys} for src, results in runs.items() if all(k in results[0] for k in keys)}
    if len(summary) == 2:
        first, second = summary.values()
        summary["second_over_first"] = {k: second[k] / first[k] for k in keys}
    C.write_report(args.out, {"srcs": srcs, "batches": args.batches, "steps": args.steps, "runs": runs, "summary": summary})
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

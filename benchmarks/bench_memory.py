#!/usr/bin/env python
"""Peak resident memory (ru_maxrss of a fresh child process) of napari-unet training and prediction.

- training: ``napari_unet.train.train_events`` with the classic preset on the ISBI 2012 training volume
  (20 x 512 x 512), batch 2, 3 steps then validation on the last 20 % of the slices at the end of the epoch (as
  napari-unet trains; memory peaks within the first step and the validation), fp32 and mixed_bfloat16, at patch
  256 and 512 (bf16 at 512 only on CPUs with avx512_bf16/amx_bf16: elsewhere a step takes minutes);
- prediction: ``napari_unet.predict.predict`` of the 30-slice test volume (../shared/data/isbi2012/test-volume.tif,
  30 x 512 x 512) with the classic U-Net, tile 512, batch 2, labels only (CLI default) and with probabilities.

Each measurement runs in its own process; "baseline" is the RSS after importing TensorFlow and building the
model, so peak - baseline is what the work itself adds. Weights are random unless --model is given (memory
does not depend on their values).

    python benchmarks/bench_memory.py            # full: 3 training steps at 256^2 and 512^2, all 30 test slices
    python benchmarks/bench_memory.py --tasks predict   # only the 30-slice predictions
    python benchmarks/bench_memory.py --quick    # smoke test: 2 steps at 256^2 fp32, 3 test slices
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

SCRIPT = Path(__file__).resolve()
TRAIN_VOLUME = C.SHARED_DATA / "isbi2012" / "train-volume.tif"
TRAIN_LABELS = C.SHARED_DATA / "isbi2012" / "train-labels.tif"
TEST_VOLUME = C.SHARED_DATA / "isbi2012" / "test-volume.tif"


def worker(spec):
    C.use_src()
    from napari_unet.config import preset
    from napari_unet.model import build_unet, import_keras

    classic = preset("classic")
    if spec["task"] == "train":
        from napari_unet.train import EpochEnd, TrainingStep, train_events

        image, labels = C.read_tif(TRAIN_VOLUME), C.read_tif(TRAIN_LABELS)
        import_keras()
        build_unet(classic.model, mixed_precision=spec["mixed"])  # same imports and allocations as training's start
        baseline = C.current_rss_mb()
        from napari_unet import hardware

        # compiled (or not) as a full-length run would be: a few-step run alone would skip XLA's compile
        jit = hardware.resolve_jit_compile(hardware.AUTO, spec["mixed"])
        tcfg = classic.train.replace(patch_size=spec["patch"], epochs=1, steps_per_epoch=spec["steps"], mixed_precision=spec["mixed"], jit_compile=jit)
        t0 = time.perf_counter()
        n_steps, val = 0, None
        for event in train_events(image, labels, classic.model, tcfg):
            if isinstance(event, TrainingStep):
                n_steps += 1
            elif isinstance(event, EpochEnd):
                val = event.val_metrics
        C.emit({"baseline_rss_mb": baseline, "peak_rss_mb": C.peak_rss_mb(), "seconds": time.perf_counter() - t0,
                "steps": n_steps, "val_metrics": val, "image_shape": list(image.shape)})
        return

    from napari_unet.model_io import UNetModel, load_model
    from napari_unet.predict import predict

    volume = C.read_tif(TEST_VOLUME)[: spec["slices"]]
    if spec.get("model"):
        model = load_model(spec["model"])
    else:
        keras = import_keras()
        keras.utils.set_random_seed(0)
        model = UNetModel(build_unet(classic.model, mixed_precision=spec["mixed"]), classic.model, [0, 255], (1.0, 99.8))
    baseline = C.current_rss_mb()
    t0 = time.perf_counter()
    pred = predict(model, volume, return_probabilities=spec["probabilities"], mixed_precision=None if spec.get("model") else bool(spec["mixed"]),
                   tta="auto" if spec.get("model") else False)
    C.emit({"baseline_rss_mb": baseline, "peak_rss_mb": C.peak_rss_mb(), "seconds": time.perf_counter() - t0,
            "image_shape": list(volume.shape), "labels_dtype": str(pred.labels.dtype)})


def main():
    ap = C.argument_parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--model", type=Path, help="predict with this napari-unet model file instead of random weights")
    ap.add_argument("--tasks", default="train,predict", help="train, predict or both (default)")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--_worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._worker:
        worker(json.loads(args._worker))
        return

    if not (TRAIN_VOLUME.is_file() and TRAIN_LABELS.is_file() and TEST_VOLUME.is_file()):
        print(f"SKIPPED: the ISBI 2012 stacks are not in {C.SHARED_DATA / 'isbi2012'} (needs train-volume.tif, "
              "train-labels.tif, test-volume.tif); nothing measured.")
        return
    quick = args.quick
    if quick:
        jobs = [("train fp32 patch 256", {"task": "train", "patch": 256, "steps": 2, "mixed": False}),
                ("predict fp32 3 slices, labels", {"task": "predict", "slices": 3, "mixed": False, "probabilities": False})]
    else:
        flags = C.machine_info().get("cpu_flags", {})
        bf16_hw = bool(flags.get("avx512_bf16") or flags.get("amx_bf16"))
        jobs = []
        for patch in (256, 512):
            for mixed in (False, True):
                if mixed and patch == 512 and not bf16_hw:
                    continue  # bf16 training without bf16 hardware: ~8 min a step at 512^2; the 256^2 run shows its memory
                jobs.append((f"train {'bf16' if mixed else 'fp32'} patch {patch}", {"task": "train", "patch": patch, "steps": 3, "mixed": mixed}))
        for mixed in (False, True):
            for probs in (False, True):
                jobs.append((f"predict {'bf16' if mixed else 'fp32'} 30 slices, {'labels+probabilities' if probs else 'labels'}",
                             {"task": "predict", "slices": 30, "mixed": mixed, "probabilities": probs}))
    tasks = {t.strip() for t in args.tasks.split(",")}
    jobs = [(name, spec) for name, spec in jobs if spec["task"] in tasks]
    out_path = args.out or C.RESULTS_DIR / ("memory-quick.json" if quick else "memory.json")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(out_path.with_suffix(".log"), "w")
    report = {"mode": "quick" if quick else "full", "machine": C.machine_info(), "versions": C.library_versions(), "runs": {}}
    for name, spec in jobs:
        if args.model and spec["task"] == "predict":
            spec["model"] = str(args.model)
        payloads, status, seconds = C.run_child(SCRIPT, spec, None, 3 * 3600, log)
        entry = {"spec": spec, "status": status, "wall_seconds": round(seconds, 1)}
        for p in payloads:
            entry.update(p)
        report["runs"][name] = entry
        print(f"  {name:45s} {status:6s} peak RSS {entry.get('peak_rss_mb', float('nan')):8.0f} MB "
              f"(baseline {entry.get('baseline_rss_mb', float('nan')):6.0f} MB) {seconds:6.0f} s", flush=True)
        out_path.write_text(json.dumps(report, indent=1, default=float))
    print(f"\nJSON: {out_path}")


if __name__ == "__main__":
    main()

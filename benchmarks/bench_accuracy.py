#!/usr/bin/env python
"""Lever check for accuracy: do the speed levers change napari-unet's predictions?

One fp32 model (trained here briefly on ISBI 2012 slices 0-15 with the classic preset, or given with --model)
is applied with ``napari_unet.predict.predict`` to held-out slices under each lever, each in its own process:
fp32 (reference), fp32 again (run-to-run floor), fp32 without oneDNN, fp32 + XLA, fp32 with
ONEDNN_DEFAULT_FPMATH_MODE=BF16, Keras mixed_bfloat16 (same weights), mixed_bfloat16 + XLA, and the previous
core's plain UpSampling2D + 2x2 Conv2D up-convolution of benchmarks/_levers.py (same weights).
Against the reference: max / mean / 99.9th-percentile absolute difference of the probabilities, the fraction
of pixels whose argmax (class) changes, and the pixel error against the ISBI labels.

    python benchmarks/bench_accuracy.py             # full: 80 training steps at 256^2, 4 held-out 512^2 slices
    python benchmarks/bench_accuracy.py --quick     # smoke test: 3 steps at 64^2, one 128^2 crop
    python benchmarks/bench_accuracy.py --model trained.keras   # use a trained napari-unet model instead
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

SCRIPT = Path(__file__).resolve()

LEVERS = [
    dict(name="fp32", desc="reference: fp32, TF defaults"),
    dict(name="fp32_repeat", desc="fp32 again in a new process (run-to-run floor)"),
    dict(name="fp32_no_onednn", env={"TF_ENABLE_ONEDNN_OPTS": "0"}, desc="fp32, Eigen kernels"),
    dict(name="fp32_xla", jit=True, desc="fp32, jit_compile"),
    dict(name="fp32_fpmath_bf16", env={"ONEDNN_DEFAULT_FPMATH_MODE": "BF16"}, desc="fp32 model, oneDNN bf16 fpmath"),
    dict(name="bf16", mixed=True, desc="mixed_bfloat16, same weights"),
    dict(name="bf16_xla", mixed=True, jit=True, desc="mixed_bfloat16 + jit_compile"),
    dict(name="fp32_upsample", upsample=True, desc="fp32, previous core's UpSampling2D + Conv2D (_levers.py), same weights"),
]


def load_data(quick: bool):
    """(train images, train labels, test images, test labels or None, source)."""
    vol, lab = C.SHARED_DATA / "isbi2012" / "train-volume.tif", C.SHARED_DATA / "isbi2012" / "train-labels.tif"
    if vol.is_file() and lab.is_file():
        images, labels = C.read_tif(vol), C.read_tif(lab)
        source = "ISBI 2012 train slices 0-15 (training), 16-19 (evaluation)"
    else:
        images, labels = C.synthetic_stack(20, 512, seed=3)
        source = "synthetic blobs (../shared/data/isbi2012 absent)"
    train_x, train_y, test_x, test_y = images[:16], labels[:16], images[16:], labels[16:]
    if quick:
        test_x, test_y = test_x[:1, :128, :128], test_y[:1, :128, :128]
    return train_x, train_y, test_x, test_y, source


def worker(spec):
    C.use_src()
    import numpy as np

    from napari_unet.model_io import load_model, save_model

    if spec["stage"] == "train":
        from napari_unet.config import preset
        from napari_unet.train import train

        classic = preset("classic")
        tx, ty, *_ = load_data(spec["quick"])
        tcfg = classic.train.replace(patch_size=spec["patch"], epochs=1, steps_per_epoch=spec["steps"], val_fraction=0.0, mixed_precision=False)
        t0 = time.perf_counter()
        result = train(tx, ty, classic.model, tcfg)
        save_model(result.model, spec["model"])
        C.emit({"train_seconds": time.perf_counter() - t0, "final_loss": result.history[-1]["loss"] if result.history else None})
        return

    from napari_unet.model import build_unet
    from napari_unet.predict import predict

    model = load_model(spec["model"])
    if spec.get("mixed"):
        rebuilt = build_unet(model.config, mixed_precision=True)
        rebuilt.set_weights(model.keras_model.get_weights())
        model.keras_model = rebuilt
    if spec.get("upsample"):
        import _levers

        rebuilt = _levers.build_unet_upsampling(model.config)
        _levers.transfer_weights(model.keras_model, rebuilt)
        model.keras_model = rebuilt
    if spec.get("jit"):
        model.keras_model.jit_compile = True
    _, _, test_x, _, _ = load_data(spec["quick"])
    mixed = bool(spec.get("mixed"))  # the lever's precision, not what "auto" would pick on this CPU
    predict(model, test_x[:1], mixed_precision=mixed, tta=False)  # warm-up
    t0 = time.perf_counter()
    pred = predict(model, test_x, return_probabilities=True, mixed_precision=mixed, tta=False)
    seconds = time.perf_counter() - t0
    np.save(spec["out"], pred.probabilities[..., 1].astype(np.float32))
    C.emit({"predict_seconds": seconds, "policy": str(model.keras_model.dtype_policy.name)})


def compare(ref, other, labels):
    import numpy as np

    diff = np.abs(other - ref)
    ref_cls, cls = ref > 0.5, other > 0.5
    confident = np.abs(ref - 0.5) > 0.05
    out = {
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "p999_abs_diff": float(np.quantile(diff, 0.999)),
        "argmax_changed_frac": float(np.mean(ref_cls != cls)),
        "argmax_changed_frac_confident": float(np.mean((ref_cls != cls)[confident])) if confident.any() else 0.0,
    }
    if labels is not None:
        truth = labels > 0  # class index 1 = value 255 (cell interior)
        out["pixel_error"] = float(np.mean(cls != truth))
    return out


def main():
    ap = C.argument_parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--model", type=Path, help="a trained napari-unet .keras model (classic or any preset)")
    ap.add_argument("--steps", type=int, help="training steps of the reference model (full 80, quick 3)")
    ap.add_argument("--patch", type=int, help="training patch size (full 256, quick 64)")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--_worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._worker:
        worker(json.loads(args._worker))
        return

    import numpy as np

    quick = args.quick
    steps = args.steps or (3 if quick else 80)
    patch = args.patch or (64 if quick else 256)
    timeout = 900 if quick else 4 * 3600
    out_path = args.out or C.RESULTS_DIR / ("accuracy-quick.json" if quick else "accuracy.json")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(out_path.with_suffix(".log"), "w")
    _, _, _, test_y, source = load_data(quick)
    report = {"mode": "quick" if quick else "full", "data": source, "machine": C.machine_info(), "versions": C.library_versions(), "levers": {}}
    with tempfile.TemporaryDirectory(prefix="bench-accuracy-") as tmp:
        model_path = args.model or Path(tmp) / "reference.keras"
        if args.model is None:
            print(f"training the fp32 reference model: classic preset, {steps} steps at {patch}^2 on {source} ...", flush=True)
            payloads, status, seconds = C.run_child(SCRIPT, {"stage": "train", "quick": quick, "steps": steps, "patch": patch, "model": str(model_path)}, None, timeout, log)
            report["reference_training"] = {"steps": steps, "patch": patch, "status": status, "seconds": round(seconds, 1), **C_merge(payloads)}
            print(f"  {status} in {seconds:.0f} s: {report['reference_training']}", flush=True)
            if status != "ok":
                _write(report, out_path)
                sys.exit(f"reference training failed: {status} (see {out_path.with_suffix('.log')})")
        else:
            report["reference_model"] = str(args.model)
        probs = {}
        for lever in LEVERS:
            npy = Path(tmp) / f"{lever['name']}.npy"
            spec = {"stage": "predict", "quick": quick, "model": str(model_path), "out": str(npy), "mixed": lever.get("mixed"), "jit": lever.get("jit"), "upsample": lever.get("upsample")}
            payloads, status, seconds = C.run_child(SCRIPT, spec, lever.get("env"), timeout, log)
            entry = {"desc": lever["desc"], "env": lever.get("env", {}), "status": status, **C_merge(payloads)}
            if status == "ok":
                probs[lever["name"]] = np.load(npy)
            report["levers"][lever["name"]] = entry
            print(f"  predicted {lever['name']:18s} {status} ({seconds:.0f} s)", flush=True)
    ref = probs.get("fp32")
    for name, p in probs.items():
        if ref is not None:
            report["levers"][name].update(compare(ref, p, test_y))
    _write(report, out_path)
    print()
    print(f"{'lever':18s} {'max|dp|':>9s} {'mean|dp|':>9s} {'p99.9|dp|':>9s} {'class flips':>11s} {'flips(|p-.5|>.05)':>17s} {'pixel err':>9s}  predict s")
    for name, e in report["levers"].items():
        if "max_abs_diff" not in e:
            print(f"{name:18s} {e['status']}")
            continue
        print(f"{name:18s} {e['max_abs_diff']:9.2e} {e['mean_abs_diff']:9.2e} {e['p999_abs_diff']:9.2e} {100 * e['argmax_changed_frac']:10.4f}% "
              f"{100 * e['argmax_changed_frac_confident']:16.4f}% {100 * e.get('pixel_error', float('nan')):8.3f}%  {e.get('predict_seconds', float('nan')):.1f}")
    print(f"\nJSON: {out_path}")


def C_merge(payloads):
    out = {}
    for p in payloads:
        out.update(p)
    return out


def _write(report, path):
    path.write_text(json.dumps(report, indent=1, default=float))


if __name__ == "__main__":
    main()

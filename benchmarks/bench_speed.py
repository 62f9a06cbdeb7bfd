#!/usr/bin/env python
"""Training and inference throughput of the classic U-Net: napari-unet (a), the seed's way (b), PyTorch (c),
against the machine's matmul peak (d) -- all in one run, each variant in its own process.

    python benchmarks/bench_speed.py            # full run (tens of minutes on a quiet 2-core machine)
    python benchmarks/bench_speed.py --quick    # smoke test: tiny sizes, 1 warm-up + 2 timed steps
    python benchmarks/bench_speed.py --list     # variants and what they change
    python benchmarks/bench_speed.py --variants 'a_fp32,a_bf16*,b_*' --sizes 256

Variants
  (a) napari-unet as it trains and predicts: ``napari_unet.train.train_events`` (train_on_batch, masked loss,
      background batch prefetch, classic preset, batch 2) and ``napari_unet.predict.predict`` (tiled, tile 512,
      batch 2), with levers: oneDNN off, thread pools, XLA, oneDNN fp32->bf16 fpmath, Keras mixed_bfloat16.
  (a-) the previous core, run through the same napari-unet code (train_events' build_unet swapped in the child):
      plain UpSampling2D + 2x2 Conv2D instead of the sub-pixel UpConv2D (benchmarks/_levers.py).
  (b) the seed's way: the functional model written out (benchmarks/_common.seed_unet), fp32,
      ``fit``/``predict`` on in-memory numpy arrays, batch 2 / 1.
  (c) the same network in PyTorch on the CPU, fp32 (baseline), and tuned variants (channels_last, bf16 autocast).
  (d) matmul peak (TF and torch, fp32 and bf16) in GFLOP/s.

Timing: warm-up steps (tracing, first allocations) excluded; median over timed repetitions.
Training images/s = batch / median step time (steps include data loading as each variant does it).
Inference MP/s = pixels of the predicted stack / median wall time of one prediction of the stack.
GFLOP/s = analytic convolution FLOPs (training = 3 x forward) x images/s; fraction of the measured fp32 (and bf16)
matmul peak. Results: a table on stdout and benchmarks/results/speed[-quick].json.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

SCRIPT = Path(__file__).resolve()

# name, group, description, environment, options.
#   kind: napari | seed | torch | peak_tf | peak_torch
#   at512: also trained at 512^2 in the full run (the expensive size)
VARIANTS = [
    dict(name="peak_tf", group="d", kind="peak_tf", desc="tf.matmul fp32 / bf16 peak"),
    dict(name="peak_torch", group="d", kind="peak_torch", desc="torch.matmul fp32 / bf16 peak", needs_torch=True),
    dict(name="a_fp32", group="a", kind="napari", desc="napari-unet classic, fp32, TF defaults (oneDNN on)", at512=True),
    dict(name="a_fp32_no_onednn", group="a", kind="napari", env={"TF_ENABLE_ONEDNN_OPTS": "0"}, desc="fp32, TF_ENABLE_ONEDNN_OPTS=0 (Eigen kernels)"),
    dict(name="a_fp32_threads_2x1", group="a", kind="napari", threads=(2, 1), desc="fp32, intra-op 2 / inter-op 1 threads"),
    dict(name="a_fp32_xla", group="a", kind="napari", jit=True, desc="fp32, jit_compile=True (XLA)", at512=True),
    dict(name="a_fp32_fpmath_bf16", group="a", kind="napari", env={"ONEDNN_DEFAULT_FPMATH_MODE": "BF16"}, desc="fp32 model, ONEDNN_DEFAULT_FPMATH_MODE=BF16", at512=True, bf16=True),
    dict(name="a_bf16", group="a", kind="napari", mixed=True, desc="Keras mixed_bfloat16 (build_unet(mixed_precision=True))", at512=True),
    dict(name="a_bf16_threads_2x1", group="a", kind="napari", mixed=True, threads=(2, 1), desc="mixed_bfloat16, intra 2 / inter 1 threads"),
    dict(name="a_bf16_xla", group="a", kind="napari", mixed=True, jit=True, desc="mixed_bfloat16 + XLA"),
    dict(name="a_fp32_upsample", group="a-", kind="napari", upsample=True, desc="PREVIOUS core: UpSampling2D + 2x2 Conv2D (benchmarks/_levers.py), fp32", at512=True),
    dict(name="a_fp32_upsample_xla", group="a-", kind="napari", upsample=True, jit=True, desc="PREVIOUS core + XLA, fp32", at512=True),
    dict(name="b_seed_fp32", group="b", kind="seed", desc="seed's way: explicit functional model, fit/predict on numpy, fp32, batch 2/1", at512=True),
    dict(name="c_torch_fp32", group="c", kind="torch", desc="PyTorch fp32 NCHW, Adam + BCEWithLogits, batch 2/1", needs_torch=True, at512=True),
    dict(name="c_torch_cl", group="c+", kind="torch", channels_last=True, desc="PyTorch fp32 channels_last", needs_torch=True),
    dict(name="c_torch_bf16_cl", group="c+", kind="torch", channels_last=True, bf16=True, desc="PyTorch bf16 autocast + channels_last", needs_torch=True, at512=True),
]


# =========================================================================== workers (child processes)


def _set_tf_threads(threads):
    if threads:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(int(threads[0]))
        tf.config.threading.set_inter_op_parallelism_threads(int(threads[1]))


def _timed_reps(fn, reps: int, max_seconds: float) -> list:
    """Wall times of ``fn()``; stops after ``reps`` or once ``max_seconds`` passed (at least 2 reps)."""
    times = []
    start = time.perf_counter()
    while len(times) < reps:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if len(times) >= 2 and time.perf_counter() - start > max_seconds:
            break
    return times


def _matmul_size(run, n_max: int, target_seconds: float = 2.0) -> int:
    """Largest n <= n_max (multiple of 256) whose n x n matmul takes about ``target_seconds`` (slow dtypes get smaller n)."""
    n = 512
    run(n)
    t0 = time.perf_counter()
    run(n)
    gflops = 2.0 * n**3 / max(time.perf_counter() - t0, 1e-9)
    fit = int((target_seconds * gflops / 2.0) ** (1 / 3)) // 256 * 256
    return max(512, min(n_max, fit))


def worker_peak_tf(spec):
    import tensorflow as tf

    for name, dtype in (("fp32", tf.float32), ("bf16", tf.bfloat16)):
        def run(n):
            a = tf.cast(tf.random.normal((n, n)), dtype)
            return tf.matmul(a, a).numpy()

        n = _matmul_size(run, spec["matmul_n"])
        a = tf.cast(tf.random.normal((n, n)), dtype)
        b = tf.cast(tf.random.normal((n, n)), dtype)
        tf.matmul(a, b).numpy()
        times = _timed_reps(lambda: tf.matmul(a, b).numpy(), spec["matmul_reps"], spec["max_seconds"] / 4)
        C.emit({"peak": {name: 2.0 * n**3 / C.median(times) / 1e9}, "matmul_n": {name: n}})


def worker_peak_torch(spec):
    import torch

    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        def run(n):
            a = torch.randn(n, n).to(dtype)
            return torch.matmul(a, a)

        n = _matmul_size(run, spec["matmul_n"])
        a = torch.randn(n, n).to(dtype)
        b = torch.randn(n, n).to(dtype)
        torch.matmul(a, b)
        times = _timed_reps(lambda: torch.matmul(a, b), spec["matmul_reps"], spec["max_seconds"] / 4)
        C.emit({"peak": {name: 2.0 * n**3 / C.median(times) / 1e9}, "matmul_n": {name: n}, "torch_threads": torch.get_num_threads()})


def worker_napari(spec):
    C.use_src()
    import numpy as np

    _set_tf_threads(spec.get("threads"))
    from napari_unet.config import preset
    from napari_unet.model import build_unet, import_keras
    from napari_unet.model_io import UNetModel
    from napari_unet.predict import predict
    from napari_unet.train import TrainingStep, train_events

    classic = preset("classic")
    cfg = classic.model
    if spec.get("upsample"):  # the previous core: train_events builds the plain-layer U-Net
        import _levers
        import napari_unet.train

        napari_unet.train.build_unet = build_unet = _levers.build_unet_upsampling
    for size in spec["train_sizes"]:
        warmup, reps = spec["warmup"], spec["reps_by_size"][str(size)]
        image, labels = C.synthetic_stack(4, size, seed=size)
        tcfg = classic.train.replace(
            patch_size=size,
            epochs=1,
            steps_per_epoch=warmup + reps,
            val_fraction=0.0,
            mixed_precision=bool(spec.get("mixed")),
            jit_compile=bool(spec.get("jit")),
        )
        state = {"t0": None, "timed": 0}

        def stop():  # time budget on the timed steps, keeping at least two
            return state["t0"] is not None and state["timed"] >= 2 and time.perf_counter() - state["t0"] > spec["max_seconds"]

        elapsed = []
        for event in train_events(image, labels, cfg, tcfg, stop=stop):
            if isinstance(event, TrainingStep):
                elapsed.append(event.elapsed)
                if event.step == warmup:
                    state["t0"] = time.perf_counter()
                elif event.step > warmup:
                    state["timed"] += 1
        steps = [b - a for a, b in zip(elapsed[warmup - 1 :], elapsed[warmup:])] if warmup >= 1 else []
        C.emit({"train": {str(size): {"step_times": steps, "batch": tcfg.batch_size, "images_per_s": tcfg.batch_size / C.median(steps)}}})

    keras = import_keras()
    keras.utils.set_random_seed(0)
    keras_model = build_unet(cfg, mixed_precision=bool(spec.get("mixed")))
    if spec.get("jit"):
        keras_model.jit_compile = True
    model = UNetModel(keras_model, cfg, [0, 255], (1.0, 99.8))
    size, n = spec["infer_size"], spec["infer_slices"]
    stack, _ = C.synthetic_stack(n, size, seed=1)
    mixed = bool(spec.get("mixed"))  # the variant's precision, not what "auto" would pick on this CPU
    predict(model, stack[:1], mixed_precision=mixed, tta=False)  # warm-up: traces the predict function for this tile shape
    times = _timed_reps(lambda: predict(model, stack, mixed_precision=mixed, tta=False), spec["infer_reps"], spec["max_seconds"])
    pixels = n * size * size
    C.emit({"infer": {"size": size, "slices": n, "times": times, "mp_per_s": pixels / C.median(times) / 1e6, "images_per_s": n / C.median(times)}})

    # Inference levers that need no process-level setting: the raw model on batches of whole tiles
    # (what cross-slice batching in predict would give) -- model time only, no tiling/blending.
    extra = {}
    tiles = (stack.astype(np.float32) / 255.0)[..., None]
    for batch in spec.get("raw_batches", []):
        x = np.concatenate([tiles] * max(1, -(-batch // n)))[:batch]
        keras_model.predict_on_batch(x)
        t = _timed_reps(lambda: keras_model.predict_on_batch(x), spec["infer_reps"], spec["max_seconds"] / 2)
        extra[f"raw_model_batch{batch}"] = batch * size * size / C.median(t) / 1e6
    if extra:
        C.emit({"infer_extra_mp_per_s": extra})
    C.emit({"peak_rss_mb": C.peak_rss_mb()})


def worker_seed(spec):
    import numpy as np

    import keras

    keras.utils.set_random_seed(0)
    for size in spec["train_sizes"]:
        warmup, reps, batch = spec["warmup"], spec["reps_by_size"][str(size)], 2
        image, labels = C.synthetic_stack(batch * (warmup + reps), size, seed=size)
        x = (image.astype(np.float32) / 255.0)[..., None]
        y = (labels > 0).astype(np.float32)[..., None]
        model = C.seed_unet((size, size, 1))
        ends = []

        class Clock(keras.callbacks.Callback):
            def on_train_batch_end(self, batch_index, logs=None):
                ends.append(time.perf_counter())

        model.fit(x, y, batch_size=batch, epochs=1, verbose=0, shuffle=True, callbacks=[Clock()])
        steps = [b - a for a, b in zip(ends[warmup - 1 :], ends[warmup:])]
        C.emit({"train": {str(size): {"step_times": steps, "batch": batch, "images_per_s": batch / C.median(steps)}}})
        del model
        keras.backend.clear_session()

    size, n = spec["infer_size"], spec["infer_slices"]
    stack, _ = C.synthetic_stack(n, size, seed=1)
    x = (stack.astype(np.float32) / 255.0)[..., None]
    model = C.seed_unet((size, size, 1))
    model.predict(x[:1], batch_size=1, verbose=0)
    times = _timed_reps(lambda: model.predict(x, batch_size=1, verbose=0), spec["infer_reps"], spec["max_seconds"])
    C.emit({"infer": {"size": size, "slices": n, "times": times, "mp_per_s": n * size * size / C.median(times) / 1e6, "images_per_s": n / C.median(times)}})
    C.emit({"peak_rss_mb": C.peak_rss_mb()})


def worker_torch(spec):
    import contextlib

    import numpy as np
    import torch

    torch.manual_seed(0)
    fmt = torch.channels_last if spec.get("channels_last") else torch.contiguous_format

    def autocast():
        return torch.autocast("cpu", dtype=torch.bfloat16) if spec.get("bf16") else contextlib.nullcontext()

    for size in spec["train_sizes"]:
        warmup, reps, batch = spec["warmup"], spec["reps_by_size"][str(size)], 2
        image, labels = C.synthetic_stack(batch * (warmup + reps), size, seed=size)
        x_all = torch.from_numpy((image.astype(np.float32) / 255.0)[:, None])
        y_all = torch.from_numpy((labels > 0).astype(np.float32)[:, None])
        model = C.torch_unet().to(memory_format=fmt)
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        loss_fn = torch.nn.BCEWithLogitsLoss()

        def step(i):
            x = x_all[i * batch : (i + 1) * batch].contiguous(memory_format=fmt)
            y = y_all[i * batch : (i + 1) * batch]
            opt.zero_grad(set_to_none=True)
            with autocast():
                logits = model(x)
            loss = loss_fn(logits.float(), y)
            loss.backward()
            opt.step()
            return loss.item()

        for i in range(warmup):
            step(i)
        steps, start = [], time.perf_counter()
        for i in range(warmup, warmup + reps):
            t0 = time.perf_counter()
            step(i)
            steps.append(time.perf_counter() - t0)
            if len(steps) >= 2 and time.perf_counter() - start > spec["max_seconds"]:
                break
        C.emit({"train": {str(size): {"step_times": steps, "batch": batch, "images_per_s": batch / C.median(steps)}}})
        del model, opt

    size, n = spec["infer_size"], spec["infer_slices"]
    stack, _ = C.synthetic_stack(n, size, seed=1)
    x = torch.from_numpy((stack.astype(np.float32) / 255.0)[:, None])
    model = C.torch_unet().to(memory_format=fmt).eval()

    def run():
        outs = []
        with torch.inference_mode(), autocast():
            for i in range(n):
                outs.append(torch.sigmoid(model(x[i : i + 1].contiguous(memory_format=fmt)).float()).numpy())
        return outs

    run()
    times = _timed_reps(run, spec["infer_reps"], spec["max_seconds"])
    C.emit({"infer": {"size": size, "slices": n, "times": times, "mp_per_s": n * size * size / C.median(times) / 1e6, "images_per_s": n / C.median(times)}, "torch_threads": torch.get_num_threads()})
    C.emit({"peak_rss_mb": C.peak_rss_mb()})


WORKERS = {"napari": worker_napari, "seed": worker_seed, "torch": worker_torch, "peak_tf": worker_peak_tf, "peak_torch": worker_peak_torch}


# =========================================================================== parent


def plan(args) -> dict:
    if args.quick:
        sizes = args.sizes or [64]
        s = dict(train_sizes=sizes, warmup=1, reps=2, infer_size=args.infer_size or 128, infer_slices=2, infer_reps=2,
                 matmul_n=1024, matmul_reps=3, max_seconds=60.0, raw_batches=[1, 2], timeout=600)
    else:
        sizes = args.sizes or [256, 512]
        s = dict(train_sizes=sizes, warmup=2, reps=6, infer_size=args.infer_size or 512, infer_slices=3, infer_reps=3,
                 matmul_n=4096, matmul_reps=5, max_seconds=240.0, raw_batches=[1, 2, 4], timeout=3 * 3600)
    for key in ("reps", "warmup", "infer_slices", "infer_reps"):
        if getattr(args, key):
            s[key] = max(1, getattr(args, key))
    return s


def merge(payloads: list) -> dict:
    out: dict = {}
    for p in payloads:
        for k, v in p.items():
            if isinstance(v, dict) and isinstance(out.get(k), dict):
                out[k].update(v)
            else:
                out[k] = v
    return out


def main():
    ap = C.argument_parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes and repetitions: a smoke test in a minute or two")
    ap.add_argument("--variants", default="*", help="comma-separated names or globs (default: all)")
    ap.add_argument("--sizes", type=lambda s: [int(v) for v in s.split(",")], help="training sizes, e.g. 256,512")
    ap.add_argument("--infer-size", type=int, help="inference image size (full: 512)")
    ap.add_argument("--reps", type=int, help="timed training steps per size (halved, min 3, at 512^2)")
    ap.add_argument("--warmup", type=int, help="untimed training steps before timing (>= 1)")
    ap.add_argument("--infer-slices", type=int, help="slices in the predicted stack")
    ap.add_argument("--infer-reps", type=int, help="timed predictions of the stack")
    ap.add_argument("--all-at-512", action="store_true", help="train every variant at 512^2, not only the marked ones")
    ap.add_argument("--out", type=Path, help="JSON output (default benchmarks/results/speed[-quick].json)")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--_worker", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args._worker:
        spec = json.loads(args._worker)
        WORKERS[spec["kind"]](spec)
        return

    if args.list:
        for v in VARIANTS:
            print(f"{v['name']:22s} ({v['group']}) {v['desc']}  env={v.get('env', {})}")
        return

    settings = plan(args)
    patterns = [p.strip() for p in args.variants.split(",") if p.strip()]
    chosen = [v for v in VARIANTS if any(fnmatch.fnmatch(v["name"], p) for p in patterns)]
    if not any(v["kind"].startswith("peak") for v in chosen):
        chosen = [v for v in VARIANTS if v["kind"].startswith("peak")] + chosen  # peak is always measured
    torch_ok = C.have_torch()
    flags = C.machine_info().get("cpu_flags", {})
    bf16_hw = bool(flags.get("avx512_bf16") or flags.get("amx_bf16"))
    out_path = args.out or C.RESULTS_DIR / ("speed-quick.json" if args.quick else "speed.json")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(out_path.with_suffix(".log"), "w")

    C.use_src()
    from napari_unet.config import preset

    cfg = preset("classic").model
    report = {
        "mode": "quick" if args.quick else "full",
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "machine": C.machine_info(),
        "versions": C.library_versions(),
        "settings": settings,
        "flops": {
            "forward_gflop_per_image": {str(s): C.unet_forward_flops(cfg, s, s) / 1e9 for s in sorted(set(settings["train_sizes"] + [settings["infer_size"]]))},
            "forward_mflop_per_pixel": C.unet_forward_flops(cfg, 256, 256) / 256**2 / 1e6,
            "convention": "2 x conv MACs (pool/upsample/activations not counted); training = 3 x forward",
        },
        "variants": {},
    }
    print(f"bench_speed: {report['mode']} run, {len(chosen)} variants, settings {settings}", flush=True)
    t_start = time.perf_counter()
    for v in chosen:
        name = v["name"]
        entry = {k: v.get(k) for k in ("group", "kind", "desc")} | {"env": v.get("env", {}), "threads": v.get("threads")}
        if v.get("needs_torch") and not torch_ok:
            entry["status"] = "skipped: torch not installed (pip install torch)"
            report["variants"][name] = entry
            print(f"  {name:22s} {entry['status']}", flush=True)
            continue
        sizes = settings["train_sizes"]
        if not args.quick and not args.all_at_512 and not v.get("at512"):
            sizes = [s for s in sizes if s < 512]
        spec = {k: settings[k] for k in ("warmup", "infer_size", "infer_slices", "infer_reps", "matmul_n", "matmul_reps", "max_seconds", "raw_batches")}
        spec |= {"kind": v["kind"], "train_sizes": sizes, "mixed": v.get("mixed"), "jit": v.get("jit"), "threads": v.get("threads"), "upsample": v.get("upsample"),
                 "channels_last": v.get("channels_last"), "bf16": v.get("bf16"),
                 "reps_by_size": {str(s): (settings["reps"] if s < 512 else max(3, settings["reps"] // 2)) for s in sizes}}
        if v["kind"] != "napari" or v["name"] not in ("a_fp32", "a_bf16"):
            spec["raw_batches"] = []
        slow_bf16 = (v.get("mixed") or v.get("bf16")) and not bf16_hw and not args.quick
        if slow_bf16 and args.variants == "*" and v["name"] in ("a_bf16_threads_2x1", "a_bf16_xla"):
            entry["status"] = "skipped: CPU without avx512_bf16/amx_bf16 (a_bf16 shows the cost; name it in --variants to run)"
            report["variants"][name] = entry
            print(f"  {name:22s} {entry['status']}", flush=True)
            continue
        if slow_bf16 and args.variants == "*" and v["kind"] == "torch":
            sizes = []  # torch bf16 training without bf16 hardware: ~0.1 % of peak, hours at full size
            entry["reduced_training"] = "skipped training (no bf16 hardware); name it in --variants to train"
        if slow_bf16:
            # bf16 without AVX512-BF16/AMX runs through slow conversion paths (measured 10x slower training):
            # keep such variants to a few steps so the full run stays bounded.
            sizes = [s for s in sizes if s < 512]
            spec |= {"warmup": 1, "train_sizes": sizes, "reps_by_size": {str(s): 2 for s in sizes}, "infer_slices": 1, "infer_reps": 2}
            entry["reduced"] = "CPU without avx512_bf16/amx_bf16: 1 warm-up + 2 timed steps, no 512^2, 1-slice inference"
        payloads, status, seconds = C.run_child(SCRIPT, spec, v.get("env"), settings["timeout"], log)
        entry |= merge(payloads) | {"status": status, "seconds": round(seconds, 1)}
        report["variants"][name] = entry
        print(f"  {name:22s} {status:8s} {seconds:7.1f} s  " + _short(entry), flush=True)
        _write(report, out_path)
    report["total_seconds"] = round(time.perf_counter() - t_start, 1)
    derive(report, cfg)
    _write(report, out_path)
    print()
    print(table(report))
    print(f"\nJSON: {out_path}")


def _short(entry) -> str:
    parts = []
    for s, r in (entry.get("train") or {}).items():
        parts.append(f"train@{s} {r['images_per_s']:.3f} img/s")
    if entry.get("infer"):
        parts.append(f"infer {entry['infer']['mp_per_s']:.4f} MP/s")
    if entry.get("peak"):
        parts.append(" ".join(f"{k} {v:.1f} GFLOP/s" for k, v in entry["peak"].items()))
    return ", ".join(parts)


def _write(report, path):
    path.write_text(json.dumps(report, indent=1, default=float))


def derive(report, cfg):
    """GFLOP/s, fractions of peak, and the (a)/(b), (a)/(c) ratios."""
    vs = report["variants"]
    peaks = {"fp32": 0.0, "bf16": 0.0}
    for v in vs.values():
        for k, g in (v.get("peak") or {}).items():
            peaks[k] = max(peaks[k], g)
    report["peak_gflops"] = peaks
    for v in vs.values():
        for s, r in (v.get("train") or {}).items():
            r["gflops"] = C.train_flops_per_image(cfg, int(s)) * r["images_per_s"] / 1e9
            r["frac_peak_fp32"] = r["gflops"] / peaks["fp32"] if peaks["fp32"] else None
            r["frac_peak_bf16"] = r["gflops"] / peaks["bf16"] if peaks["bf16"] else None
        if v.get("infer"):
            r = v["infer"]
            r["gflops"] = C.unet_forward_flops(cfg, r["size"], r["size"]) * r["images_per_s"] / 1e9
            r["frac_peak_fp32"] = r["gflops"] / peaks["fp32"] if peaks["fp32"] else None
            r["frac_peak_bf16"] = r["gflops"] / peaks["bf16"] if peaks["bf16"] else None

    def get(name, what, size=None):
        v = vs.get(name) or {}
        if what == "infer":
            return (v.get("infer") or {}).get("mp_per_s")
        return ((v.get("train") or {}).get(str(size)) or {}).get("images_per_s")

    tuned_c = [n for n, v in vs.items() if v.get("group") == "c+"]
    ratios = {}
    keys = [("train", s) for s in report["settings"]["train_sizes"]] + [("infer", None)]
    for name, v in vs.items():
        if v.get("group") not in ("a", "a-"):
            continue
        for what, size in keys:
            a = get(name, what, size)
            if a is None:
                continue
            label = f"{what}@{size}" if size else what
            b, c = get("b_seed_fp32", what, size), get("c_torch_fp32", what, size)
            ct = max([x for x in (get(n, what, size) for n in tuned_c) if x] or [0]) or None
            ratios.setdefault(name, {})[label] = {
                "a_over_b": a / b if b else None,
                "a_over_c": a / c if c else None,
                "a_over_c_tuned_best": a / ct if ct else None,
            }
    report["ratios"] = ratios
    for key, groups in (("best_a", ("a",)),):
        best = {}
        for what, size in keys:
            label = f"{what}@{size}" if size else what
            cands = [(get(n, what, size), n) for n, v in vs.items() if v.get("group") in groups and get(n, what, size)]
            if cands:
                val, n = max(cands)
                best[label] = {"variant": n, "value": val, **ratios[n][label]}
        report[key] = best


def _fmt(x, spec=".3f"):
    return "-" if x is None else format(x, spec)


def table(report) -> str:
    vs, sizes = report["variants"], report["settings"]["train_sizes"]
    p = report.get("peak_gflops", {})
    lines = [f"matmul peak: fp32 {p.get('fp32', 0):.1f} GFLOP/s, bf16 {p.get('bf16', 0):.1f} GFLOP/s "
             f"(forward {report['flops']['forward_mflop_per_pixel']:.3f} MFLOP/pixel; training = 3 x forward)"]
    head = f"{'variant':22s} {'grp':3s} "
    for s in sizes:
        head += f"| train@{s}: img/s  GF/s  %fp32pk  xb    xc   "
    head += f"| infer@{report['settings']['infer_size']}: MP/s   GF/s  %fp32pk  xb    xc   | status"
    lines += [head, "-" * len(head)]
    for name, v in vs.items():
        if v.get("kind", "").startswith("peak"):
            continue
        row = f"{name:22s} {v.get('group', ''):3s} "
        rat = report.get("ratios", {}).get(name, {})
        for s in sizes:
            r = (v.get("train") or {}).get(str(s)) or {}
            q = rat.get(f"train@{s}", {})
            row += (f"| {_fmt(r.get('images_per_s'), '13.4f')} {_fmt(r.get('gflops'), '5.1f')} "
                    f"{_fmt(r.get('frac_peak_fp32') and 100 * r['frac_peak_fp32'], '6.1f')}% "
                    f"{_fmt(q.get('a_over_b'), '5.2f')} {_fmt(q.get('a_over_c'), '5.2f')} ")
        r = v.get("infer") or {}
        q = rat.get("infer", {})
        row += (f"| {_fmt(r.get('mp_per_s'), '14.4f')} {_fmt(r.get('gflops'), '6.1f')} "
                f"{_fmt(r.get('frac_peak_fp32') and 100 * r['frac_peak_fp32'], '6.1f')}% "
                f"{_fmt(q.get('a_over_b'), '5.2f')} {_fmt(q.get('a_over_c'), '5.2f')} ")
        row += f"| {v.get('status', '')}"
        lines.append(row)
    extra = {n: v["infer_extra_mp_per_s"] for n, v in vs.items() if v.get("infer_extra_mp_per_s")}
    if extra:
        lines.append("raw model MP/s by batch (no tiling): " + "; ".join(f"{n}: " + ", ".join(f"{k.replace('raw_model_', '')} {x:.4f}" for k, x in e.items()) for n, e in extra.items()))
    lines.append("xb = (a)/(b) seed-style Keras; xc = (a)/(c) plain fp32 torch (group a and a- rows; a- = the previous core, for comparison)")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

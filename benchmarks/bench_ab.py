#!/usr/bin/env python
"""Noise-robust A/B of the variants that can share one process: round-robin interleaving.

bench_speed.py isolates every variant in its own process (right for environment-level levers, but on a busy
machine the load drifts between processes). Here the contenders take turns step by step in ONE process, so
load drift hits all of them alike; the report gives each contender's median step time and the median of the
per-round time ratios against the first contender.

Contenders (names for --train / --infer):
  keras        napari-unet: build_unet(classic), masked_loss, train_on_batch / predict_on_batch
  keras_xla    the same with jit_compile=True
  keras_bf16   build_unet(mixed_precision=True) (slow on CPUs without AVX512-BF16/AMX: check before use)
  keras_upsample  the previous core (_levers.py): plain UpSampling2D + 2x2 Conv2D instead of the sub-pixel UpConv2D
  keras_upsample_xla  the same with jit_compile=True
  seed         the seed's way: explicit functional model, fit (2 steps per call, time / 2) / predict(batch_size=1)
  torch        PyTorch fp32 NCHW
  torch_cl     PyTorch fp32 channels_last
Caveat: mix TensorFlow and torch contenders with care -- each framework's idle worker threads (Eigen pool,
OpenMP) spin for a while after their work and can slow the other one; TF-vs-TF (keras, keras_xla, keras_upsample,
seed) comparisons are the clean use. For (a) vs (c), trust bench_speed.py (separate processes) on a quiet machine.
Environment levers (oneDNN, fpmath, threads) cannot be interleaved: set them for the whole run, e.g.
  TF_NUM_INTEROP_THREADS=1 python benchmarks/bench_ab.py ...

    python benchmarks/bench_ab.py --quick
    python benchmarks/bench_ab.py --size 256 --rounds 6 --train keras,keras_xla,seed,torch --infer keras,keras_xla,seed,torch
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def _keras_model(name, cfg):
    """build_unet(classic) for keras / keras_xla / keras_bf16; the previous core (same weights) for keras_upsample*."""
    from napari_unet.model import build_unet

    reference = build_unet(cfg, mixed_precision=name == "keras_bf16")
    if not name.startswith("keras_upsample"):
        return reference
    import _levers

    model = _levers.build_unet_upsampling(cfg)
    _levers.transfer_weights(reference, model)
    return model


def make_train(name, size, batch=2):
    import numpy as np

    image, labels = C.synthetic_stack(batch * 2, size, seed=size)
    x = (image.astype(np.float32) / 255.0)[..., None]
    y01 = (labels > 0).astype(np.float32)[..., None]
    if name.startswith("keras"):
        C.use_src()
        from napari_unet.config import preset
        from napari_unet.model import build_unet, import_keras, masked_loss

        keras = import_keras()
        cfg = preset("classic").model
        model = _keras_model(name, cfg)
        model.compile(optimizer=keras.optimizers.Adam(1e-4), loss=masked_loss(cfg, 0.0), jit_compile=name.endswith("_xla"))
        target = np.concatenate([y01, np.ones_like(y01)], axis=-1)  # class index, weight 1
        return lambda: model.train_on_batch(x[:batch], target[:batch]), 1
    if name == "seed":
        model = C.seed_unet((size, size, 1))
        return lambda: model.fit(x, y01, batch_size=batch, epochs=1, verbose=0), 2  # 2 steps per call
    if name.startswith("torch"):
        import torch

        fmt = torch.channels_last if name == "torch_cl" else torch.contiguous_format
        model = C.torch_unet().to(memory_format=fmt).train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        loss_fn = torch.nn.BCEWithLogitsLoss()
        tx = torch.from_numpy(np.moveaxis(x[:batch], -1, 1).copy()).contiguous(memory_format=fmt)
        ty = torch.from_numpy(np.moveaxis(y01[:batch], -1, 1).copy())

        def step():
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(tx), ty)
            loss.backward()
            opt.step()
            return loss.item()

        return step, 1
    raise SystemExit(f"unknown contender {name!r}")


def make_infer(name, size):
    import numpy as np

    image, _ = C.synthetic_stack(1, size, seed=1)
    x = (image.astype(np.float32) / 255.0)[..., None]
    if name.startswith("keras"):
        C.use_src()
        from napari_unet.config import preset

        model = _keras_model(name, preset("classic").model)
        if name.endswith("_xla"):
            model.jit_compile = True
        return lambda: model.predict_on_batch(x)
    if name == "seed":
        model = C.seed_unet((size, size, 1))
        return lambda: model.predict(x, batch_size=1, verbose=0)
    if name.startswith("torch"):
        import torch

        fmt = torch.channels_last if name == "torch_cl" else torch.contiguous_format
        model = C.torch_unet().to(memory_format=fmt).eval()
        tx = torch.from_numpy(np.moveaxis(x, -1, 1).copy()).contiguous(memory_format=fmt)

        def run():
            with torch.inference_mode():
                return torch.sigmoid(model(tx)).numpy()

        return run
    raise SystemExit(f"unknown contender {name!r}")


def interleave(fns: dict, warmup: int, rounds: int) -> dict:
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {n: [] for n in fns}
    for _ in range(rounds):
        for n, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[n].append(time.perf_counter() - t0)
    first = next(iter(fns))
    out = {}
    for n, t in times.items():
        out[n] = {"median_s": C.median(t), "times": t}
    return out


def main():
    ap = C.argument_parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--size", type=int, help="training and inference image size (full 256, quick 64)")
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--train", default="keras,keras_xla,keras_upsample,seed")
    ap.add_argument("--infer", default="keras,keras_xla,keras_upsample,seed")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    size = args.size or (64 if args.quick else 256)
    rounds = args.rounds or (2 if args.quick else 6)
    C.use_src()
    from napari_unet.config import preset

    cfg = preset("classic").model
    fwd = C.unet_forward_flops(cfg, size, size)
    have_torch = C.have_torch()
    report = {"size": size, "rounds": rounds, "machine": C.machine_info(), "versions": C.library_versions(), "train": {}, "infer": {}}
    for kind, names in (("train", args.train), ("infer", args.infer)):
        names = [n for n in names.split(",") if n and (have_torch or not n.startswith("torch"))]
        if not names:
            continue
        fns, per_call = {}, {}
        for n in names:
            if kind == "train":
                fn, k = make_train(n, size)
                per_call[n] = k
                fns[n] = fn
            else:
                fns[n], per_call[n] = make_infer(n, size), 1
        res = interleave(fns, 1, rounds)
        first = names[0]
        print(f"{kind} @ {size}^2 ({rounds} interleaved rounds; speedup = median per-round ratio vs {first}):")
        for n, r in res.items():
            step = r["median_s"] / per_call[n]
            imgs = (2 if kind == "train" else 1) / step
            gflops = imgs * fwd * (3 if kind == "train" else 1) / 1e9
            r |= {"step_s": step, "images_per_s": imgs, "gflops": gflops}
            sp = C.median([a / per_call[first] / (b / per_call[n]) for a, b in zip(res[first]["times"], r["times"])])
            r["speedup_vs_" + first] = sp
            print(f"  {n:11s} {step:8.3f} s/step  {imgs:8.4f} img/s  {gflops:6.1f} GFLOP/s  x{sp:5.2f} vs {first}")
        report[kind] = res
    out = args.out or C.RESULTS_DIR / ("ab-quick.json" if args.quick else f"ab-{size}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=float))
    print(f"JSON: {out}")


if __name__ == "__main__":
    main()

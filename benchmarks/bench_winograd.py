#!/usr/bin/env python
"""Winograd F(2x2, 3x3) convolutions against TensorFlow's own, for every 3x3 convolution of a U-Net preset.

Winograd's minimal filtering computes a 3x3 "same" convolution on 2x2 output tiles with 16 instead of 36
multiplications per tile and channel pair (2.25x fewer FLOPs): transform 4x4 input tiles (additions only),
one batched matmul per tile position (16 of them), transform back. It is the standard way to cut a 3x3
convolution's FLOPs (NNPACK, cuDNN; oneDNN only on AVX-512), so it is the one float32 lever left on a
CPU without bfloat16 hardware, where every contender already runs at 55-95 % of the matmul peak
(BENCHMARKS.md). Written here in TensorFlow ops (autodiff gives the backward pass), XLA-compiled as the
core trains, and timed interleaved round by round in one process against ``tf.nn.conv2d`` on the exact
convolution shapes of the preset (forward + backward of a training step, and forward alone for
inference). Also reports the whole-network estimate: the sum over layers, and the sum when each layer
takes whichever of the two is faster.

    python benchmarks/bench_winograd.py                           # classic preset, batch 2 x 256², ~3 min
    python benchmarks/bench_winograd.py --preset default --batch 4
    python benchmarks/bench_winograd.py --no-xla                  # plain TensorFlow graphs
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def conv_shapes(config, size: int) -> list[tuple[int, int, int]]:
    """(spatial size, in channels, out channels) of every 3x3 convolution of ``build_unet(config)``."""
    shapes, channels = [], config.network_channels
    for level in range(config.depth):
        filters = config.base_filters * 2**level
        shapes += [(size >> level, channels, filters), (size >> level, filters, filters)]
        channels = filters
    bottom = config.base_filters * 2**config.depth
    shapes += [(size >> config.depth, channels, bottom), (size >> config.depth, bottom, bottom)]
    for level in reversed(range(config.depth)):
        filters = config.base_filters * 2**level
        shapes += [(size >> level, 2 * filters, filters), (size >> level, filters, filters)]  # after the skip concat
    if config.pre_head_filters:
        shapes.append((size, config.base_filters, config.pre_head_filters))
    return shapes


def winograd_conv(x, kernel):
    """'same' 3x3 convolution of (N, H, W, C) float32 ``x`` (H, W even) with a (3, 3, C, O) kernel, F(2x2, 3x3)."""
    import numpy as np
    import tensorflow as tf

    g = tf.constant(np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float32))
    _, height, width, channels = x.shape
    outputs = kernel.shape[-1]
    padded = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]])
    # d[a][b]: the input pixel at offset (a, b) of every 4x4 tile (tiles start every 2 pixels)
    d = [[padded[:, a : a + height : 2, b : b + width : 2, :] for b in range(4)] for a in range(4)]

    def b_transpose(v):  # B^T v along one tile axis
        return [v[0] - v[2], v[1] + v[2], v[2] - v[1], v[1] - v[3]]

    rows = [b_transpose([d[a][b] for a in range(4)]) for b in range(4)]
    tiles = [b_transpose([rows[b][i] for b in range(4)]) for i in range(4)]
    v = tf.reshape(tf.stack([tiles[i][j] for i in range(4) for j in range(4)]), (16, -1, channels))
    u = tf.reshape(tf.einsum("ia,abco,jb->ijco", g, kernel, g), (16, channels, outputs))
    m = tf.reshape(tf.matmul(v, u), (4, 4, -1, height // 2, width // 2, outputs))
    r = [m[0] + m[1] + m[2], m[1] - m[2] - m[3]]  # A^T m, then m A below
    y = [[p[0] + p[1] + p[2], p[1] - p[2] - p[3]] for p in r]
    return tf.nn.depth_to_space(tf.concat([y[0][0], y[0][1], y[1][0], y[1][1]], axis=-1), 2)


def main() -> int:
    ap = C.argument_parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="classic")
    ap.add_argument("--batch", type=int, default=2, help="training images per step")
    ap.add_argument("--size", type=int, default=256, help="training patch size")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--no-xla", action="store_true", help="time plain TensorFlow graphs instead of XLA")
    ap.add_argument("--out", type=Path, help="JSON output (default results/winograd-<preset>[-noxla].json)")
    args = ap.parse_args()

    C.use_src()
    import numpy as np
    import tensorflow as tf

    from napari_unet.config import preset

    tf.get_logger().setLevel("ERROR")  # one tf.function per layer and variant: retracing warnings are expected
    config = preset(args.preset).model
    if args.size % 2 ** (config.depth + 1):
        ap.error(f"--size must be a multiple of {2 ** (config.depth + 1)}: Winograd tiles need even sizes down to the bottom level")
    jit = not args.no_xla
    rng = np.random.default_rng(0)
    layers = []
    for size, cin, cout in conv_shapes(config, args.size):
        x = tf.constant(rng.random((args.batch, size, size, cin), dtype=np.float32))
        kernel = tf.Variable(rng.normal(0, (2 / (9 * cin)) ** 0.5, (3, 3, cin, cout)).astype(np.float32))
        error = float(np.abs(winograd_conv(x, kernel).numpy() - tf.nn.conv2d(x, kernel, 1, "SAME").numpy()).max())
        functions = {}
        for name, conv in (("direct", lambda x, k: tf.nn.conv2d(x, k, 1, "SAME")), ("winograd", winograd_conv)):

            @tf.function(jit_compile=jit)
            def train_step(x, conv=conv, kernel=kernel):
                with tf.GradientTape() as tape:
                    tape.watch(x)
                    y = conv(x, kernel)
                    loss = tf.reduce_sum(y * y)
                return tape.gradient(loss, [x, kernel])

            @tf.function(jit_compile=jit)
            def forward(x, conv=conv, kernel=kernel):
                return conv(x, kernel)

            for _ in range(2):  # trace / compile, warm up
                [g.numpy() for g in train_step(x)]
                forward(x).numpy()
            functions[name] = (train_step, forward)
        layers.append({"size": size, "in": cin, "out": cout, "max_abs_error": error, "x": x, "functions": functions,
                       "train_s": {n: [] for n in functions}, "infer_s": {n: [] for n in functions}})

    for _ in range(args.rounds):
        for layer in layers:
            for name, (train_step, forward) in layer["functions"].items():
                start = time.perf_counter()
                [g.numpy() for g in train_step(layer["x"])]
                layer["train_s"][name].append(time.perf_counter() - start)
                start = time.perf_counter()
                forward(layer["x"]).numpy()
                layer["infer_s"][name].append(time.perf_counter() - start)

    print(f"{args.preset} preset, {args.batch} x {args.size}², XLA {'on' if jit else 'off'}, {args.rounds} rounds; "
          "median ms per layer, ratio = direct / winograd (> 1: Winograd faster)")
    print(f"{'size':>5s} {'in':>5s} {'out':>5s} {'train direct':>12s} {'winograd':>9s} {'ratio':>6s} "
          f"{'infer direct':>12s} {'winograd':>9s} {'ratio':>6s} {'max |err|':>9s}")
    rows, totals = [], {k: 0.0 for k in ("train_direct", "train_winograd", "train_best", "infer_direct", "infer_winograd", "infer_best")}
    for layer in layers:
        row = {k: layer[k] for k in ("size", "in", "out", "max_abs_error")}
        for phase in ("train", "infer"):
            direct, winograd = C.median(layer[f"{phase}_s"]["direct"]), C.median(layer[f"{phase}_s"]["winograd"])
            row.update({f"{phase}_direct_s": direct, f"{phase}_winograd_s": winograd, f"{phase}_ratio": direct / winograd,
                        f"{phase}_times": layer[f"{phase}_s"]})
            totals[f"{phase}_direct"] += direct
            totals[f"{phase}_winograd"] += winograd
            totals[f"{phase}_best"] += min(direct, winograd)
        rows.append(row)
        print(f"{row['size']:5d} {row['in']:5d} {row['out']:5d} {row['train_direct_s'] * 1e3:12.1f} {row['train_winograd_s'] * 1e3:9.1f} "
              f"{row['train_ratio']:6.2f} {row['infer_direct_s'] * 1e3:12.1f} {row['infer_winograd_s'] * 1e3:9.1f} "
              f"{row['infer_ratio']:6.2f} {row['max_abs_error']:9.1e}")
    summary = {
        f"{phase}_{kind}_speedup": totals[f"{phase}_direct"] / totals[f"{phase}_{kind}"]
        for phase in ("train", "infer") for kind in ("winograd", "best")
    }
    print("all 3x3 convolutions, direct / winograd: training x{train_winograd_speedup:.2f} (each layer the faster of the two: "
          "x{train_best_speedup:.2f}), inference x{infer_winograd_speedup:.2f} (x{infer_best_speedup:.2f})".format(**summary))
    fields = {
        "preset": args.preset, "batch": args.batch, "size": args.size, "xla": jit,
        "totals_s": totals, "summary": summary, "layers": rows,
    }
    out = args.out or C.RESULTS_DIR / f"winograd-{args.preset}{'' if jit else '-noxla'}.json"
    C.write_report(out, fields)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Peak memory of a training run against the network's size: the data behind
:func:`napari_unet.model.training_memory_bytes`, the estimate that refuses a network too large for the memory left
(depth 6 with 128 filters grew to 24 GB here and the kernel killed the process, which in napari is the viewer).

    python benchmarks/bench_training_memory.py --name training-memory

Each configuration trains 3 steps (batch ``--batch`` of ``--patch``², no validation) on two synthetic slices in a
fresh process; its peak resident memory is the child's ``VmHWM``. The table gives weights, the activation term of the
estimate, the measured peak and the estimate of this checkout, per configuration. Writes results/<name>.json;
``--table results/NAME.json`` prints the table of a saved run with this checkout's estimate.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

CHILD = r"""
import json, sys
import numpy as np
from napari_unet.config import ModelConfig, TrainConfig
from napari_unet.model import activation_count, parameter_count
from napari_unet.train import train
depth, filters, batch, patch, bf16 = json.loads(sys.argv[1])
rng = np.random.default_rng(0)
image = rng.integers(0, 255, (2, max(patch, 256), max(patch, 256)), dtype=np.uint8)
labels = np.where(image > 128, 255, 0).astype(np.uint8)
model_config = ModelConfig(depth=depth, base_filters=filters)
train_config = TrainConfig(epochs=1, steps_per_epoch=3, batch_size=batch, patch_size=patch, val_fraction=0.0,
                           mixed_precision=bool(bf16), jit_compile=False, recompute_batch_norm=False)
final = train(image, labels, model_config, train_config)
peak = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print("@@BENCH@@ " + json.dumps({"parameters": parameter_count(model_config), "peak_bytes": peak,
      "activations": batch * activation_count(model_config, patch)}))
"""

CONFIGS = [  # depth, filters, batch, patch, bfloat16
    (2, 8, 4, 256, 1),
    (4, 32, 4, 256, 1),
    (4, 32, 4, 256, 0),
    (4, 32, 4, 512, 1),
    (5, 64, 2, 512, 1),
    (5, 64, 4, 256, 0),
    (4, 128, 4, 256, 1),
    (4, 128, 4, 256, 0),
    (6, 32, 2, 256, 1),
    (3, 64, 4, 512, 1),
    (4, 16, 4, 256, 1),  # the default preset's network (session 46's second run: --only 10 11)
    (4, 16, 4, 256, 0),
]


def run(config) -> dict:
    env = dict(os.environ, PYTHONPATH=str(C.SRC), TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(config)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate()
    line = next((l for l in out.splitlines() if l.startswith(C.MARK)), None)
    if line is None:
        return {"config": config, "error": (err.strip().splitlines() or ["?"])[-1]}
    return {"config": config, **json.loads(line[len(C.MARK):])}


def table(rows) -> str:
    """Markdown table of measured rows with this checkout's :func:`napari_unet.model.training_memory_bytes`."""
    C.use_src()
    from napari_unet.config import ModelConfig
    from napari_unet.model import training_memory_bytes

    lines = ["| depth | filters | batch × patch² | precision | weights (M) | activations (M) | peak (GB) | estimate (GB) | estimate / peak |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        depth, filters, batch, patch, bf16 = row["config"]
        if "error" in row:
            lines.append(f"| {depth} | {filters} | {batch} × {patch}² | | | | failed: {row['error']} | | |")
            continue
        estimate = training_memory_bytes(ModelConfig(depth=depth, base_filters=filters), batch, patch, bool(bf16))
        lines.append(f"| {depth} | {filters} | {batch} × {patch}² | {'bfloat16' if bf16 else 'float32'} | "
                     f"{row['parameters'] / 1e6:.2f} | {row['activations'] / 1e6:.1f} | {row['peak_bytes'] / 1e9:.2f} | "
                     f"{estimate / 1e9:.2f} | {estimate / row['peak_bytes']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = C.argument_parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", default="training-memory")
    parser.add_argument("--only", type=int, nargs="*", help="indices of CONFIGS to run")
    parser.add_argument("--table", type=Path, help="print the table of this saved run instead of measuring")
    args = parser.parse_args()
    if args.table:
        print(table(json.loads(args.table.read_text())["rows"]))
        return
    rows = []
    for k, config in enumerate(CONFIGS):
        if args.only and k not in args.only:
            continue
        row = run(config)
        rows.append(row)
        print(json.dumps(row), flush=True)
    C.RESULTS_DIR.mkdir(exist_ok=True)
    (C.RESULTS_DIR / f"{args.name}.json").write_text(json.dumps({"machine": C.machine_info(), "rows": rows}, indent=1))
    print(table(rows))


if __name__ == "__main__":
    main()

"""Shared helpers of the benchmark scripts (not part of the napari_unet package).

- machine / library facts for the reports,
- analytic FLOP count of the U-Net built by ``napari_unet.model.build_unet``,
- the seed's U-Net written out explicitly in Keras (variant b) and the same network in PyTorch (variant c),
- deterministic synthetic images, the child-process protocol used to isolate variants.

Every heavy import (TensorFlow, Keras, torch) happens inside functions, so the parent process of a
benchmark stays light and each variant's environment variables take effect in a fresh child.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
SRC = REPO / "src"
RESULTS_DIR = BENCH_DIR / "results"
SHARED_DATA = REPO.parent / "shared" / "data"

# Settings that change TensorFlow / oneDNN speed: removed from a child's environment unless a variant sets them.
LEVER_ENV = (
    "TF_ENABLE_ONEDNN_OPTS",
    "ONEDNN_DEFAULT_FPMATH_MODE",
    "TF_NUM_INTRAOP_THREADS",
    "TF_NUM_INTEROP_THREADS",
    "OMP_NUM_THREADS",
    "TF_XLA_FLAGS",
    "XLA_FLAGS",
    "ONEDNN_VERBOSE",
    "DNNL_VERBOSE",
)

MARK = "@@BENCH@@ "


def use_src(src: Path = SRC) -> None:
    """Import napari_unet from ``src`` (default: this checkout's src/, same as PYTHONPATH=src; another checkout's
    src/, e.g. an older commit's worktree, compares code versions)."""
    src = str(Path(src).resolve())
    if src in sys.path:
        sys.path.remove(src)
    sys.path.insert(0, src)


# --------------------------------------------------------------------------- machine facts


def machine_info() -> dict:
    info = {"python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count()}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("Model name", "CPU family", "Model", "CPU(s)", "Thread(s) per core", "Core(s) per socket", "L2 cache", "L3 cache", "Hypervisor vendor"):
                info[key.strip()] = value.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        flags = set()
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
        wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile", "avx_vnni")
        info["cpu_flags"] = {f: (f in flags) for f in wanted}
    except OSError:
        pass
    try:
        info["mem_total_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    info["loadavg_at_start"] = os.getloadavg()
    return info


def library_versions() -> dict:
    """Versions without importing the heavy libraries (importlib.metadata)."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in ("numpy", "tensorflow", "keras", "torch", "psutil", "tifffile", "dask", "distributed", "zarr"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def have_torch() -> bool:
    from importlib.util import find_spec

    return find_spec("torch") is not None


# --------------------------------------------------------------------------- FLOPs


def unet_forward_flops(config, height: int, width: int) -> float:
    """Forward FLOPs (2 x multiply-accumulates of every convolution) of ``build_unet(config)`` on one
    (height, width) image. Pooling, upsampling, activations and concatenation (<0.1 %) are not counted.
    """
    macs = 0
    c_in = config.input_channels
    h, w = height, width
    for level in range(config.depth):
        f = config.base_filters * 2**level
        macs += h * w * 9 * (c_in * f + f * f)
        c_in = f
        h, w = h // 2, w // 2
    f = config.base_filters * 2**config.depth
    macs += h * w * 9 * (c_in * f + f * f)
    c_in = f
    for level in reversed(range(config.depth)):
        f = config.base_filters * 2**level
        h, w = h * 2, w * 2
        macs += h * w * 4 * c_in * f  # UpSampling2D + 2x2 conv, or 2x2 stride-2 transpose (same MACs per output pixel)
        macs += h * w * 9 * (2 * f * f + f * f)  # concat(skip, up) -> f, f -> f
        c_in = f
    if config.pre_head_filters:
        macs += h * w * 9 * c_in * config.pre_head_filters
        c_in = config.pre_head_filters
    macs += h * w * c_in * config.output_channels
    return 2.0 * macs


def train_flops_per_image(config, size: int) -> float:
    """Training FLOPs of one image: forward + gradient w.r.t. activations + w.r.t. weights = 3 x forward."""
    return 3.0 * unet_forward_flops(config, size, size)


def keras_model_conv_flops(model) -> float:
    """Forward FLOPs counted from a fixed-shape Keras model's Conv2D layers (cross-check of the formula)."""
    total = 0.0
    for layer in model.layers:
        if type(layer).__name__ == "Conv2D":
            kh, kw, cin, cout = layer.kernel.shape
            _, h, w, _ = layer.output.shape
            total += 2.0 * h * w * kh * kw * cin * cout
    return total


# --------------------------------------------------------------------------- models of variants (b) and (c)


def seed_unet(input_size=(256, 256, 1)):
    """The seed's U-Net (zhixuhao/unet model.py), written out as the seed writes it: Keras functional API,
    fixed input size, fp32, Adam 1e-4, binary cross-entropy, accuracy metric."""
    import keras
    from keras.layers import Conv2D, Dropout, Input, MaxPooling2D, UpSampling2D, concatenate
    from keras.models import Model
    from keras.optimizers import Adam

    inputs = Input(input_size)
    conv1 = Conv2D(64, 3, activation="relu", padding="same", kernel_initializer="he_normal")(inputs)
    conv1 = Conv2D(64, 3, activation="relu", padding="same", kernel_initializer="he_normal")(conv1)
    pool1 = MaxPooling2D(pool_size=(2, 2))(conv1)
    conv2 = Conv2D(128, 3, activation="relu", padding="same", kernel_initializer="he_normal")(pool1)
    conv2 = Conv2D(128, 3, activation="relu", padding="same", kernel_initializer="he_normal")(conv2)
    pool2 = MaxPooling2D(pool_size=(2, 2))(conv2)
    conv3 = Conv2D(256, 3, activation="relu", padding="same", kernel_initializer="he_normal")(pool2)
    conv3 = Conv2D(256, 3, activation="relu", padding="same", kernel_initializer="he_normal")(conv3)
    pool3 = MaxPooling2D(pool_size=(2, 2))(conv3)
    conv4 = Conv2D(512, 3, activation="relu", padding="same", kernel_initializer="he_normal")(pool3)
    conv4 = Conv2D(512, 3, activation="relu", padding="same", kernel_initializer="he_normal")(conv4)
    drop4 = Dropout(0.5)(conv4)
    pool4 = MaxPooling2D(pool_size=(2, 2))(drop4)

    conv5 = Conv2D(1024, 3, activation="relu", padding="same", kernel_initializer="he_normal")(pool4)
    conv5 = Conv2D(1024, 3, activation="relu", padding="same", kernel_initializer="he_normal")(conv5)
    drop5 = Dropout(0.5)(conv5)

    up6 = Conv2D(512, 2, activation="relu", padding="same", kernel_initializer="he_normal")(UpSampling2D(size=(2, 2))(drop5))
    merge6 = concatenate([drop4, up6], axis=3)
    conv6 = Conv2D(512, 3, activation="relu", padding="same", kernel_initializer="he_normal")(merge6)
    conv6 = Conv2D(512, 3, activation="relu", padding="same", kernel_initializer="he_normal")(conv6)

    up7 = Conv2D(256, 2, activation="relu", padding="same", kernel_initializer="he_normal")(UpSampling2D(size=(2, 2))(conv6))
    merge7 = concatenate([conv3, up7], axis=3)
    conv7 = Conv2D(256, 3, activation="relu", padding="same", kernel_initializer="he_normal")(merge7)
    conv7 = Conv2D(256, 3, activation="relu", padding="same", kernel_initializer="he_normal")(conv7)

    up8 = Conv2D(128, 2, activation="relu", padding="same", kernel_initializer="he_normal")(UpSampling2D(size=(2, 2))(conv7))
    merge8 = concatenate([conv2, up8], axis=3)
    conv8 = Conv2D(128, 3, activation="relu", padding="same", kernel_initializer="he_normal")(merge8)
    conv8 = Conv2D(128, 3, activation="relu", padding="same", kernel_initializer="he_normal")(conv8)

    up9 = Conv2D(64, 2, activation="relu", padding="same", kernel_initializer="he_normal")(UpSampling2D(size=(2, 2))(conv8))
    merge9 = concatenate([conv1, up9], axis=3)
    conv9 = Conv2D(64, 3, activation="relu", padding="same", kernel_initializer="he_normal")(merge9)
    conv9 = Conv2D(64, 3, activation="relu", padding="same", kernel_initializer="he_normal")(conv9)
    conv9 = Conv2D(2, 3, activation="relu", padding="same", kernel_initializer="he_normal")(conv9)
    conv10 = Conv2D(1, 1, activation="sigmoid")(conv9)

    model = Model(inputs=inputs, outputs=conv10)
    model.compile(optimizer=Adam(learning_rate=1e-4), loss="binary_crossentropy", metrics=["accuracy"])
    del keras
    return model


def torch_unet():
    """The same U-Net in PyTorch (NCHW; 'same' padding, the 2x2 conv pads right/bottom like Keras/TF)."""
    import torch
    from torch import nn

    def conv(cin, cout, k):
        layer = nn.Conv2d(cin, cout, k, padding=(k - 1) // 2)  # 3x3: 1; 2x2: 0 (padded in forward)
        nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
        nn.init.zeros_(layer.bias)
        return layer

    class Block(nn.Module):
        def __init__(self, cin, cout):
            super().__init__()
            self.c1, self.c2 = conv(cin, cout, 3), conv(cout, cout, 3)

        def forward(self, x):
            return torch.relu(self.c2(torch.relu(self.c1(x))))

    class UNet(nn.Module):
        def __init__(self, base=64, depth=4):
            super().__init__()
            self.down = nn.ModuleList()
            cin = 1
            for level in range(depth):
                self.down.append(Block(cin, base * 2**level))
                cin = base * 2**level
            self.bottom = Block(cin, base * 2**depth)
            self.up_convs, self.up_blocks = nn.ModuleList(), nn.ModuleList()
            for level in reversed(range(depth)):
                f = base * 2**level
                self.up_convs.append(conv(2 * f, f, 2))
                self.up_blocks.append(Block(2 * f, f))
            self.pre_head = conv(base, 2, 3)
            self.head = nn.Conv2d(2, 1, 1)
            self.drop = nn.Dropout(0.5)
            self.depth = depth

        def forward(self, x):  # returns logits; sigmoid is folded into the loss / applied at inference
            skips = []
            for level, block in enumerate(self.down):
                x = block(x)
                if level == self.depth - 1:
                    x = self.drop(x)
                skips.append(x)
                x = nn.functional.max_pool2d(x, 2)
            x = self.drop(self.bottom(x))
            for up_conv, block, skip in zip(self.up_convs, self.up_blocks, reversed(skips)):
                x = nn.functional.interpolate(x, scale_factor=2, mode="nearest")
                x = torch.relu(up_conv(nn.functional.pad(x, (0, 1, 0, 1))))  # Keras 'same' for k=2: pad right/bottom
                x = block(torch.cat([skip, x], dim=1))
            return self.head(torch.relu(self.pre_head(x)))

    return UNet()


# --------------------------------------------------------------------------- data


def synthetic_stack(n: int, size: int, seed: int = 0):
    """(n, size, size) uint8 images of smooth blobs and (n, size, size) uint8 labels 0 / 255 (about 25 % 0)."""
    import numpy as np
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    noise = rng.normal(size=(n, size, size)).astype(np.float32)
    smooth = ndimage.gaussian_filter(noise, sigma=(0, 4, 4))
    labels = np.where(smooth > np.quantile(smooth, 0.25), 255, 0).astype(np.uint8)
    image = np.clip(128 + 60 * smooth / (smooth.std() + 1e-6) + rng.normal(0, 10, size=smooth.shape), 0, 255).astype(np.uint8)
    return image, labels


def read_tif(path):
    import tifffile

    return tifffile.imread(str(path))


# --------------------------------------------------------------------------- child protocol


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (Linux ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _proc_status_mb(field: str, pid="self") -> float:
    """A memory field of /proc/PID/status (kB) in MB, NaN where there is none."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def anon_rss_mib(pid) -> float:
    """Anonymous resident memory of process ``pid`` (what the kernel cannot reclaim without swap) in MiB, NaN if gone."""
    return _proc_status_mb("RssAnon", pid)


def current_rss_mb() -> float:
    return _proc_status_mb("VmRSS")


def high_water_rss_mb() -> float:
    """This process's peak RSS (VmHWM: unlike ru_maxrss it does not carry the parent's peak over a fork and exec)."""
    return _proc_status_mb("VmHWM")


def time_command(command: list, what: str, src: str | None = None) -> float:
    """Wall seconds of ``command`` run as a child (benchmark environment; napari_unet imported from ``src``, default
    this repository's); SystemExit naming ``what`` if it fails."""
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=child_env({"PYTHONPATH": src} if src else {}))
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{what} failed:\n{result.stderr[-2000:]}")
    return seconds


def emit(payload: dict) -> None:
    """A child's partial result, one JSON line the parent picks out of stdout."""
    print(MARK + json.dumps(payload), flush=True)


def child_env(extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in LEVER_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(SRC)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["KERAS_BACKEND"] = "tensorflow"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONUNBUFFERED"] = "1"
    for key, value in (extra or {}).items():
        env[key] = str(value)
    return env


def run_child(script: Path, spec: dict, env_extra: dict | None, timeout: float, log=None) -> tuple[list, str, float]:
    """Run ``script --_worker SPEC`` in a fresh process; returns (payloads, status, seconds).

    status: "ok", "timeout", or "error: <last stderr line>". Payloads emitted before a timeout or a
    crash are kept.
    """
    cmd = [sys.executable, str(script), "--_worker", json.dumps(spec)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(env_extra), cwd=str(REPO))
    try:
        out, err = proc.communicate(timeout=timeout)
        status = "ok" if proc.returncode == 0 else "error"
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        status = "timeout"
    seconds = time.perf_counter() - start
    payloads = []
    for line in out.splitlines():
        if line.startswith(MARK):
            payloads.append(json.loads(line[len(MARK):]))
    if status == "error":
        lines = [l for l in err.strip().splitlines() if l.strip()]
        status = "error: " + (lines[-1][:300] if lines else f"exit code {proc.returncode}")
        if log is not None:
            log.write(f"--- stderr of {spec}\n{err[-4000:]}\n")
    return payloads, status, seconds


def argument_parser(description: str | None = None, **kwargs) -> argparse.ArgumentParser:
    """A benchmark's command-line parser: argparse's, with the same keywords, taking no abbreviated options as the
    napari-unet command does (a later option sharing the prefix would change what an old command line means)."""
    return argparse.ArgumentParser(description=description, allow_abbrev=False, **kwargs)


def at_least(minimum: int, why: str = ""):
    """An argparse ``type``: a whole number of at least ``minimum``; else argparse's error (status 2) saying so and
    ``why`` (e.g. "the median step leaves out the first two"), not a StatisticsError after minutes of work."""

    def whole_number(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}" + (f": {why}" if why else "") + f" (got {value})")
        return value

    return whole_number


def made_folder(parser: argparse.ArgumentParser, path: Path | None, option: str = "--workdir") -> Path | None:
    """``path`` (None: None) created with its parents when missing; a parser error (status 2) when it cannot be (a file
    of that name, no permission)."""
    if path is not None:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            parser.error(f"{option} {path}: cannot create the folder ({err.strerror or err})")
    return path


def side_by_side_parser(description: str | None = None, **kwargs) -> argparse.ArgumentParser:
    """:func:`argument_parser` of a benchmark that runs each ``--srcs`` folder's napari_unet in a child of its own
    (the script itself, given the child's JSON spec in the internal ``--_worker``: :func:`ran_worker`)."""
    parser = argument_parser(description, **kwargs)
    parser.add_argument("--srcs", default="src", help="comma-separated src/ folders to import napari_unet from")
    parser.add_argument("--_worker", help=argparse.SUPPRESS)
    return parser


def ran_worker(args: argparse.Namespace, worker) -> bool:
    """Whether this process is a side-by-side benchmark's child: then ``worker`` has run on its ``--_worker`` spec."""
    if not args._worker:
        return False
    worker(json.loads(args._worker))
    return True


def src_folders(srcs: str) -> list[str]:
    """Absolute paths of a ``--srcs`` option's comma-separated ``src/`` folders (relative ones from the repository)."""
    return [str((REPO / s).resolve()) if not Path(s).is_absolute() else s for s in srcs.split(",")]


def median(values):
    values = sorted(values)
    n = len(values)
    if not n:
        return float("nan")
    return values[n // 2] if n % 2 else 0.5 * (values[n // 2 - 1] + values[n // 2])


def run_header(settings: dict) -> dict:
    """The start of a results payload: command line, start time, machine, library versions and ``settings``."""
    return {"command": " ".join(["python"] + sys.argv), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "machine": machine_info(), "versions": library_versions(), "settings": settings}


def write_report(path: Path, fields: dict) -> None:
    """Write ``fields`` as JSON to ``path``, after the command line, start time, machine and library versions."""
    report = {
        "command": " ".join(["python"] + sys.argv),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": machine_info(),
        "versions": library_versions(),
        **fields,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1))
    print(f"wrote {path}")


def random_training_batch(rng, batch: int, size: int, channels: int):
    """(B, S, S, C) float32 random images and (B, S, S, 2) float32 targets (class index 0/1, pixel weight 1)."""
    import numpy as np

    images = rng.random((batch, size, size, channels), dtype=np.float32)
    classes = rng.integers(0, 2, (batch, size, size)).astype(np.float32)
    return images, np.stack([classes, np.ones_like(classes)], axis=-1)

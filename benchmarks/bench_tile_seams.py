#!/usr/bin/env python
"""Tile seams: how far tiled prediction strays from predicting the whole image as one tile, for code versions side by side.

A tile's edge is zero-padded: the network sees less context there, and its output differs from the whole image's
(``edge_profile``: a 256² tile cut from the middle of each slice against the whole slice, by distance from the tile's
edge). Where tiles overlap, the blend decides how much of that reaches the result. Each ``--srcs`` entry runs in a
fresh process (its napari_unet imported from there) on ISBI training slices 15-19 (../shared/data) with ``MODEL`` (a
trained ISBI ``.keras`` file), no TTA, float32, no XLA:

- reference: each 512² slice as one tile; then ``--tiles`` sizes with ``--overlap``; and mosaics of the slices with the
  default 512-px tiles against one tile of the whole mosaic: 1024² (2 x 2 slices: 3 tiles an axis) and 1440² (3 x 3
  slices cut: 1440 = 512 + 2 x 464, the size where the default tiles overlap by 48 px only);
- per tiling: ``max`` / ``p99`` / ``p999`` of |Δp| (membrane probability) against the reference, ``labels_equal``
  (share of equal labels after the model's membrane rule), V_rand / V_info of the labels against the truth
  (:func:`napari_unet.metrics.evaluate`, per-slice mean), ``seconds`` (whole ``predict``, the better of two), and
  ``blend_ms``: ``predict`` with the network replaced by a constant and argmax labels (what the tiling and blending
  cost besides the network), median of 5.

    git worktree add /tmp/old HEAD~1
    python benchmarks/bench_tile_seams.py isbi.keras --srcs /tmp/old/src,src --name s59     # ~6 min on 2 cores
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

SETTINGS = dict(mixed_precision=False, jit_compile=False, tta=False)


def worker(spec: dict) -> None:
    import numpy as np

    from napari_unet import metrics
    from napari_unet import predict as predict_module
    from napari_unet.model_io import load_model

    folder = C.SHARED_DATA / "isbi2012"
    image = C.read_tif(folder / "train-volume.tif")[15:20]
    truth = C.read_tif(folder / "train-labels.tif")[15:20]
    mosaic = np.block([[image[0], image[1]], [image[2], image[3]]])
    mosaic_truth = np.block([[truth[0], truth[1]], [truth[2], truth[3]]])
    order = [[0, 1, 2], [3, 4, 0], [1, 2, 3]]
    large = np.block([[image[i] for i in row] for row in order])[:1440, :1440]
    large_truth = np.block([[truth[i] for i in row] for row in order])[:1440, :1440]
    model = load_model(spec["model"])

    def timed(img, **kwargs):
        best, result = float("inf"), None
        for _ in range(2):  # the first call also builds the folded network
            start = time.perf_counter()
            result = predict_module.predict(model, img, **SETTINGS, **kwargs)
            best = min(best, time.perf_counter() - start)
        return result, best

    def blend_ms(img, **kwargs):
        run_model = predict_module._run_model
        constant = lambda m, tiles, *rest: np.full(tiles.shape[:3] + (2,), 0.5, np.float32)  # noqa: E731
        predict_module._run_model = constant
        try:
            times = []
            for _ in range(5):
                start = time.perf_counter()
                predict_module.predict(model, img, close_boundaries=False, **SETTINGS, **kwargs)
                times.append(time.perf_counter() - start)
        finally:
            predict_module._run_model = run_model
        return 1000 * statistics.median(times)

    def scores(labels, true):
        result = metrics.evaluate(labels, true)
        return {"v_rand": result["v_rand"], "v_info": result["v_info"]}

    # what blending has to hide: one 256² tile cut from the middle of each slice (all four edges inside the image) vs
    # the whole slice, both from the same normalised slice, by distance from the tile's nearest edge
    from napari_unet.data import normalize

    planes = np.stack([normalize(plane, model.percentiles, model.config.local_contrast_sigma) for plane in image])
    whole = predict_module.predict(model, planes, normalized=True, close_boundaries=False, **SETTINGS).probabilities[..., 0]
    cut = predict_module.predict(model, planes[:, 128:384, 128:384], normalized=True, close_boundaries=False,
                                  **SETTINGS).probabilities[..., 0]
    error = np.abs(cut - whole[:, 128:384, 128:384])
    index = np.arange(256)
    distance = np.minimum.outer(np.minimum(index, 255 - index), np.minimum(index, 255 - index))
    bands = [(0, 4), (4, 8), (8, 12), (12, 16), (16, 24), (24, 32), (32, 48), (48, 64), (64, 80), (80, 96), (96, 128)]
    C.emit({"edge_profile": [{"from": a, "to": b, "p99": float(np.percentile(error[:, (distance >= a) & (distance < b)], 99)),
                              "max": float(error[:, (distance >= a) & (distance < b)].max())} for a, b in bands]})

    cases = [("isbi 15-19", image, truth, 512, tile, spec["overlap"]) for tile in spec["tiles"]]
    cases.append(("mosaic 1024² of isbi 15-18", mosaic, mosaic_truth, 1024, 512, 48))
    # 1440 = 512 + 2 x 464: the tiles at 0, 464, 928 are already evenly spread, overlapping by 48 px only
    cases.append(("mosaic 1440² of isbi 15-19", large, large_truth, 1440, 512, 48))
    references = {}
    for name, img, true, whole_tile, tile, overlap in cases:
        if name not in references:
            reference, seconds = timed(img, tile_size=whole_tile)
            references[name] = reference
            C.emit({"data": name, "tile": whole_tile, "overlap": None, "seconds": seconds, **scores(reference.labels, true),
                    "blend_ms": blend_ms(img, tile_size=whole_tile), "imported": predict_module.__file__})
        reference = references[name]
        tiled, seconds = timed(img, tile_size=tile, overlap=overlap)
        d = np.abs(reference.probabilities - tiled.probabilities)[..., 0]
        C.emit({
            "data": name, "tile": tile, "overlap": overlap, "seconds": seconds,
            "max": float(d.max()), "p99": float(np.percentile(d, 99)), "p999": float(np.percentile(d, 99.9)),
            "labels_equal": float(np.mean(reference.labels == tiled.labels)), **scores(tiled.labels, true),
            "blend_ms": blend_ms(img, tile_size=tile, overlap=overlap),
        })


def main() -> int:
    ap = C.side_by_side_parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", help="a trained ISBI model (.keras)")
    ap.add_argument("--tiles", default="192,256,320")
    ap.add_argument("--overlap", type=int, default=48)
    ap.add_argument("--name", default="default")
    args = ap.parse_args()
    if C.ran_worker(args, worker):
        return 0
    if args.model is None:
        ap.error("give a trained ISBI model (.keras)")
    if not (C.SHARED_DATA / "isbi2012" / "train-volume.tif").exists():
        raise SystemExit(f"needs the ISBI 2012 training data in {C.SHARED_DATA / 'isbi2012'}")
    srcs = C.src_folders(args.srcs)
    spec = {"model": str(Path(args.model).resolve()), "tiles": [int(t) for t in args.tiles.split(",")], "overlap": args.overlap}
    runs = {}
    for src in srcs:
        payloads, status, seconds = C.run_child(Path(__file__), spec, {"PYTHONPATH": src}, timeout=3600)
        runs[src] = {"status": status, "seconds": seconds, "results": payloads}
        print(f"{src}: {status}")
        for p in payloads:
            if "edge_profile" in p:
                print("  |Δp| of a 256² tile vs the whole slice by distance from the tile's edge: " + ", ".join(
                    f"{b['from']}-{b['to']} px p99 {b['p99']:.3f} max {b['max']:.2f}" for b in p["edge_profile"]))
                continue
            seams = (f"max {p['max']:.4f} p99 {p['p99']:.4f} p99.9 {p['p999']:.4f} labels equal {p['labels_equal']:.5f} "
                     if "max" in p else "reference ")
            print(f"  {p['data']}, tile {p['tile']} overlap {p['overlap']}: {seams}V_rand {p['v_rand']:.4f} "
                  f"V_info {p['v_info']:.4f}; {p['seconds']:.2f} s, blending {p['blend_ms']:.0f} ms", flush=True)
    C.write_report(C.RESULTS_DIR / f"tile-seams-{args.name}.json", {"settings": {**spec, **SETTINGS}, "srcs": srcs, "runs": runs})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python
"""Calibration of ``data.PROFILE_SHIFT``: intensity-profile distances of images of one acquisition and of transformed ones.

    python benchmarks/intensity_profiles.py        # seconds; results/intensity-profiles.json

``predict`` notes an image whose :func:`napari_unet.data.intensity_profile` lies further than ``PROFILE_SHIFT`` plus
the spread of the training slices (:func:`napari_unet.data.intensity_reference`) from the model's training images'.
Each image is checked as a stack and slice by slice (the inference widget's "current slice", a 2-D file), with
the profile of the pixels above each slice's floor (model files since session 51) and of all pixels (before). This prints the distances that choose it: the reference is ISBI 2012 slices 0-14 (and
the OCT circular scan, and the Duke B-scans); "same" rows are other images of the same acquisition (must stay below),
"changed" rows are the same images inverted, gamma- or log-scaled (should lie above), as a user might have exported
them. Needs ../shared/data.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
from isbi_merging import DATA, write_results  # noqa: E402

OCT = DATA.parent / "oct"


def cases():
    """(reference name, reference image, [(kind, name, image)]) triples."""
    import tifffile

    volume = tifffile.imread(DATA / "train-volume.tif")
    test = tifffile.imread(DATA / "test-volume.tif")
    unseen = volume[15:]
    scaled = unseen.astype(np.float32) / 255
    noisy = unseen + np.random.default_rng(0).normal(0, 20, unseen.shape)
    scan = tifffile.imread(OCT / "circular-scan.tif")
    duke = tifffile.imread(OCT / "duke-dme-bscans.tif")
    noisy_scan = [np.clip(scan + np.random.default_rng(0).normal(0, std, scan.shape), 0, 255) for std in (10, 20)]
    decibel = lambda x: 20 * np.log10(x.astype(np.float32) + 1)  # noqa: E731
    return [
        ("ISBI slices 0-14", volume[:15], [
            ("same", "ISBI slices 15-19", unseen),
            ("same", "ISBI test volume", test),
            ("same", "ISBI 15-19 as float x3 + 7", scaled * 3 + 7),
            ("same", "ISBI 15-19 + noise of std 20", noisy),
            ("changed", "ISBI 15-19 inverted", 255 - unseen),
            ("changed", "ISBI 15-19 gamma 0.7", scaled**0.7),
            ("changed", "ISBI 15-19 gamma 1.3", scaled**1.3),
            ("changed", "ISBI 15-19 gamma 2", scaled**2),
            ("changed", "ISBI 15-19 log", np.log1p(unseen.astype(np.float32))),
        ]),
        ("OCT circular scan", scan, [
            ("same", "circular scan mirrored", scan[:, ::-1]),
            ("same", "circular scan crop, no vitreous", scan[150:470, 100:612]),
            ("same", "circular scan + noise of std 10", noisy_scan[0]),
            ("same", "circular scan + noise of std 20", noisy_scan[1]),
            ("changed", "circular scan in dB", decibel(scan)),
            ("changed", "circular scan square root", np.sqrt(scan.astype(np.float32))),
            ("changed", "circular scan gamma 0.7", (scan / 255) ** 0.7),
            ("changed", "circular scan gamma 1.3", (scan / 255) ** 1.3),
            ("changed", "circular scan gamma 2", (scan / 255) ** 2),
            ("changed", "circular scan linear (x^4)", (scan / 255) ** 4),
            ("changed", "circular scan inverted", 255 - scan),
            ("other device", "Duke DME B-scans", duke),
        ]),
        ("Duke B-scans 0-59", duke[:60], [
            ("same", "Duke B-scans 60-109", duke[60:]),
            ("changed", "Duke 60-109 in dB", decibel(duke[60:])),
            ("changed", "Duke 60-109 square root", np.sqrt(duke[60:].astype(np.float32))),
            ("changed", "Duke 60-109 gamma 0.7", (duke[60:] / 255) ** 0.7),
            ("changed", "Duke 60-109 linear (x^4)", (duke[60:] / 255) ** 4),
        ]),
    ]


def main() -> None:
    C.argument_parser(description=__doc__.split("\n")[0]).parse_args()  # --help (the benchmark has no options)
    missing = [str(path) for path in (DATA / "train-volume.tif", OCT / "circular-scan.tif") if not path.exists()]
    if missing:
        sys.exit(f"intensity_profiles.py needs ../shared/data beside the repository: {', '.join(missing)} not found")
    from napari_unet.data import PROFILE_SHIFT, intensity_profile, intensity_reference, profile_distance

    rows = []
    print(f"{'profile of':11s} {'reference':18s} {'spread':>6s} {'kind':12s} {'image':32s} {'stack':>6s} {'1 slice, max':>12s} "
          "noted (stack / slices)")
    for above_floor in (True, False):  # the profile of model files since session 51, and before
        of = "above floor" if above_floor else "all pixels"
        for reference_name, reference, others in cases():
            profile, spread = intensity_reference(reference, above_floor=above_floor)  # as training records it: 8 slices
            allowed = PROFILE_SHIFT + spread
            for kind, name, image in others:
                distance = profile_distance(profile, intensity_profile(image, above_floor=above_floor))
                stack = image if image.ndim == 3 else image[None]
                picks = np.unique(np.linspace(0, len(stack) - 1, min(8, len(stack))).round().astype(int))
                singles = [profile_distance(profile, intensity_profile(stack[z], above_floor=above_floor)) for z in picks]
                rows.append({"profile_of": of, "reference": reference_name, "spread": round(spread, 4), "kind": kind,
                             "image": name, "distance": round(distance, 4), "single_slice_max": round(max(singles), 4),
                             "single_slices_noted": int(sum(d > allowed for d in singles)), "slices_checked": len(singles),
                             "noted": distance > allowed})
                print(f"{of:11s} {reference_name:18s} {spread:6.3f} {kind:12s} {name:32s} {distance:6.3f} {max(singles):12.3f} "
                      f"{'yes' if distance > allowed else 'no'} / {sum(d > allowed for d in singles)} of {len(singles)}")
    write_results("intensity-profiles", {"profile_shift": PROFILE_SHIFT, "rows": rows})


if __name__ == "__main__":
    main()

"""Synthetic EM and OCT stacks with exact ground truth (numpy / scipy / scikit-image only).

Both generators are seeded and deterministic, and fast enough for sample data and tests.

* :func:`make_em_stack` imitates the ISBI 2012 serial-section TEM data: cells of a Voronoi-like
  tessellation whose outlines drift slowly from slice to slice, dark membranes 2-4 px wide,
  textured cytoplasm with organelle-like blobs, blur and noise. Labels follow the ISBI convention:
  0 = membrane, 255 = cell interior.
* :func:`make_oct_stack` imitates retinal OCT B-scans: nine smooth boundaries (ILM ... Bruch's
  membrane) with a foveal pit, layer reflectivities like real OCT, multiplicative speckle. Labels:
  0 = vitreous, 1-8 = retinal layers between consecutive boundaries, 9 = choroid and below.
"""

from __future__ import annotations

import numpy as np
from scipy import fft as sp_fft
from scipy import ndimage

__all__ = [
    "EM_CLASS_NAMES",
    "EM_CLASS_VALUES",
    "OCT_BOUNDARY_NAMES",
    "OCT_CLASS_NAMES",
    "OCT_CLASS_VALUES",
    "make_em_stack",
    "make_oct_boundaries",
    "make_oct_stack",
    "oct_labels_from_boundaries",
]

#: Label values of :func:`make_em_stack` and their meaning (ISBI 2012 convention).
EM_CLASS_VALUES = (0, 255)
EM_CLASS_NAMES = ("membrane", "cell")

#: Label values of :func:`make_oct_stack` and their meaning.
OCT_CLASS_VALUES = tuple(range(10))
OCT_CLASS_NAMES = (
    "vitreous",
    "RNFL",
    "GCL+IPL",
    "INL",
    "OPL",
    "ONL",
    "IS",
    "OS",
    "RPE",
    "choroid",
)
#: The nine boundaries of :func:`make_oct_boundaries`, top to bottom.
OCT_BOUNDARY_NAMES = (
    "ILM",
    "RNFL/GCL",
    "IPL/INL",
    "INL/OPL",
    "OPL/ONL",
    "ELM",
    "IS/OS",
    "OS/RPE",
    "Bruch's membrane",
)


def _check_shape(shape, minimum: int) -> tuple[int, int]:
    try:
        ny, nx = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape must be two integers (rows, columns), got {shape!r}") from None
    if ny < minimum or nx < minimum:
        raise ValueError(f"shape must be at least {minimum}x{minimum}, got {shape!r}")
    return ny, nx


def _smooth_noise(rng: np.random.Generator, shape, sigma) -> np.ndarray:
    """Gaussian-filtered white noise (float32, periodic) with zero mean and unit standard deviation.

    Large kernels are applied in the Fourier domain (constant cost whatever the sigma).
    """
    shape = tuple(int(s) for s in shape)
    sigma = np.broadcast_to(np.asarray(sigma, dtype=float), (len(shape),))
    noise = rng.standard_normal(shape, dtype=np.float32)
    if sigma.max() < 2.0:
        field = ndimage.gaussian_filter(noise, sigma, mode="wrap")
    else:
        spectrum = sp_fft.rfftn(noise)
        for axis, (n, s) in enumerate(zip(shape, sigma)):
            freq = sp_fft.rfftfreq(n) if axis == len(shape) - 1 else sp_fft.fftfreq(n)
            gain = np.exp(-2.0 * (np.pi * s * freq) ** 2).astype(np.float32)
            spectrum *= gain.reshape([-1 if i == axis else 1 for i in range(len(shape))])
        field = sp_fft.irfftn(spectrum, s=shape).astype(np.float32, copy=False)
    field -= field.mean()
    std = field.std()
    return field / std if std > 0 else field


# --------------------------------------------------------------------------------------------------
# EM
# --------------------------------------------------------------------------------------------------


def make_em_stack(
    n_slices: int = 8,
    shape: tuple[int, int] = (256, 256),
    n_cells: int | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """An ssTEM-like stack and its membrane labels.

    Parameters
    ----------
    n_slices : number of sections (Z).
    shape : (rows, columns) of each section, at least 32x32.
    n_cells : cells per section; default one per ~650 px (101 for 256x256), which gives a
        membrane fraction near the ISBI 2012 training labels (22 %).
    seed : random seed; the result is a deterministic function of all arguments.

    Returns
    -------
    image : uint8 (Z, Y, X); dark membranes on a lighter, textured cytoplasm.
    labels : uint8 (Z, Y, X); 0 = membrane, 255 = cell interior.
    """
    from skimage import segmentation  # here: importing the module stays light for napari's sample menu

    n_slices = int(n_slices)
    if n_slices < 1:
        raise ValueError(f"n_slices must be at least 1, got {n_slices}")
    ny, nx = _check_shape(shape, 32)
    if n_cells is None:
        n_cells = max(4, int(round(ny * nx / 650)))
    n_cells = int(n_cells)
    if n_cells < 2:
        raise ValueError(f"n_cells must be at least 2, got {n_cells}")
    rng = np.random.default_rng(seed)
    vol_shape = (n_slices, ny, nx)
    cell_size = np.sqrt(ny * nx / n_cells)

    # Seeds over the section plus a margin, so cells cross the border like in a crop of tissue.
    margin = int(np.ceil(cell_size)) + 4
    pad_shape = (ny + 2 * margin, nx + 2 * margin)
    min_dist = 0.6 * cell_size
    seeds = _spread_points(rng, int(round(n_cells * pad_shape[0] * pad_shape[1] / (ny * nx))), pad_shape, min_dist)
    n_total = len(seeds)
    # Slow drift of the cell centres between sections (axons run roughly across the sections).
    drift = rng.normal(0.0, 0.6, size=(n_total, 2))[None] * np.arange(n_slices)[:, None, None]
    drift += np.cumsum(rng.normal(0.0, 0.35, size=(n_slices, n_total, 2)), axis=0)
    # Each seed is a disc; the nearest disc (additively weighted Voronoi) gives cells of varied
    # size with curved walls. Radii < min_dist / 2 keep the discs disjoint.
    radius = rng.uniform(0.0, 0.45 * min_dist, size=n_total)
    r_max = int(np.ceil(radius.max())) if n_total else 0
    oy, ox = np.mgrid[-r_max : r_max + 1, -r_max : r_max + 1]
    offsets = np.stack([oy.ravel(), ox.ravel()], axis=1)
    offset_len = np.hypot(offsets[:, 0], offsets[:, 1])

    # Smooth warp of the coordinates (wiggly membranes) and membrane width 2..4 px.
    warp_amp = 0.12 * cell_size
    warp_sigma = (1.5, 0.5 * cell_size, 0.5 * cell_size)
    warp_y = warp_amp * _smooth_noise(rng, vol_shape, warp_sigma)
    warp_x = warp_amp * _smooth_noise(rng, vol_shape, warp_sigma)
    width = np.clip(3.0 + 0.7 * _smooth_noise(rng, vol_shape, (1.0, 6.0, 6.0)), 2.0, 4.0)

    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float32)
    cell_id = np.empty(vol_shape, np.int32)
    wall_dist = np.empty(vol_shape, np.float32)
    for z in range(n_slices):
        centres = np.rint(seeds + drift[z]).astype(np.int64)
        pixels = centres[:, None, :] + offsets[None]  # (n_total, n_offsets, 2)
        keep = (offset_len[None] <= radius[:, None]) & np.all(
            (pixels >= 0) & (pixels < np.asarray(pad_shape)), axis=2
        )
        owner = np.broadcast_to(np.arange(n_total)[:, None], keep.shape)[keep]
        pixels = pixels[keep]
        seed_map = np.full(pad_shape, -1, np.int32)
        seed_map[pixels[:, 0], pixels[:, 1]] = owner
        if not (seed_map >= 0).any():
            seed_map[pad_shape[0] // 2, pad_shape[1] // 2] = 0
        _, (iy, ix) = ndimage.distance_transform_edt(seed_map < 0, return_indices=True)
        nearest = seed_map[iy, ix]
        cell = ndimage.map_coordinates(
            nearest, [yy + margin + warp_y[z], xx + margin + warp_x[z]], order=0, mode="nearest"
        )
        cell_id[z] = cell
        # Both pixels of every differing neighbour pair: the wall line runs between them, so a
        # pixel at distance d from the marks is ~d + 0.5 from the wall.
        wall = segmentation.find_boundaries(cell, connectivity=1, mode="thick")
        wall_dist[z] = ndimage.distance_transform_edt(~wall) + 0.5 if wall.any() else np.inf
    membrane = wall_dist < width / 2.0
    labels = np.where(membrane, np.uint8(0), np.uint8(255))

    # ---- image ----
    cell_tone = rng.normal(0.0, 12.0, size=n_total).astype(np.float32)  # per-cell brightness
    image = 180.0 + cell_tone[cell_id]
    image += 8.0 * _smooth_noise(rng, vol_shape, (0.7, 1.2, 1.2))  # fine cytoplasm texture
    image += 8.0 * _smooth_noise(rng, vol_shape, (1.0, 10.0, 10.0))  # uneven staining
    # Organelles at least 3 px inside the cells (not labelled: the network must ignore them):
    # mitochondria-like dark blobs with a darker rim, and small vesicles (dark rings).
    inside = wall_dist > width / 2.0 + 3.0
    blob_field = _smooth_noise(rng, vol_shape, (0.8, 2.5, 2.5))
    blobs = (blob_field > 1.7) & inside
    rim = blobs & ~ndimage.binary_erosion(blobs, structure=np.ones((1, 3, 3), bool))
    vesicle_field = _smooth_noise(rng, vol_shape, (0.5, 1.3, 1.3))
    vesicles = (vesicle_field > 2.2) & inside
    vesicle_rim = ndimage.binary_dilation(vesicles, structure=np.ones((1, 3, 3), bool)) & ~vesicles & inside
    image -= 40.0 * blobs + 35.0 * rim + 50.0 * vesicle_rim
    # Membranes: dark, darkest at their centre line, with some variation along them.
    centre = np.clip(1.0 - 2.0 * wall_dist / width, 0.0, 1.0)
    membrane_tone = 135.0 + 15.0 * _smooth_noise(rng, vol_shape, (1.0, 4.0, 4.0))
    image = np.where(membrane, image - membrane_tone * (0.7 + 0.3 * centre), image)
    image = ndimage.gaussian_filter(image, (0.0, 0.8, 0.8))
    image += 10.0 * rng.standard_normal(vol_shape, dtype=np.float32)
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return image, labels


def _spread_points(rng: np.random.Generator, n: int, shape, min_dist: float) -> np.ndarray:
    """Up to ``n`` random points in ``[0, shape)``, at least ``min_dist`` apart (dart throwing)."""
    candidates = rng.uniform(0.0, 1.0, size=(8 * n, 2)) * np.asarray(shape, dtype=float)
    kept = np.empty((n, 2))
    count = 0
    min_d2 = min_dist * min_dist
    for point in candidates:
        if count and np.min(np.sum((kept[:count] - point) ** 2, axis=1)) < min_d2:
            continue
        kept[count] = point
        count += 1
        if count == n:
            break
    return kept[:count]


# --------------------------------------------------------------------------------------------------
# OCT
# --------------------------------------------------------------------------------------------------

# Relative thickness of layers 1..8 away from the fovea (sum = 1) and how much of it remains at the
# foveal centre (inner layers vanish in the pit, the ONL thickens).
_OCT_THICKNESS = np.array([0.13, 0.24, 0.12, 0.08, 0.23, 0.07, 0.07, 0.06])
_OCT_AT_FOVEA = np.array([0.02, 0.05, 0.10, 0.25, 1.60, 1.10, 1.25, 1.0])
# Mean reflectivity of classes 0..9 (0 = vitreous, 9 = choroid) on a 0..1 scale.
_OCT_REFLECTIVITY = np.array([0.0, 0.78, 0.45, 0.22, 0.48, 0.14, 0.30, 0.55, 0.92, 0.55])


def make_oct_boundaries(
    n_scans: int = 4,
    shape: tuple[int, int] = (248, 384),
    seed: int = 0,
) -> np.ndarray:
    """Row positions of the nine OCT boundaries (see :data:`OCT_BOUNDARY_NAMES`).

    Returns float32 ``(n_scans, 9, X)``; rows increase top to bottom and boundaries never cross
    (``b[:, k] <= b[:, k + 1]``). Scans are neighbouring B-scans of one volume: the foveal pit
    is deepest in the middle scan. Deterministic in (n_scans, shape, seed).
    """
    n_scans = int(n_scans)
    if n_scans < 1:
        raise ValueError(f"n_scans must be at least 1, got {n_scans}")
    ny, nx = _check_shape(shape, 32)
    rng = np.random.default_rng(seed)
    x = np.linspace(-1.0, 1.0, nx)

    total = ny * rng.uniform(0.27, 0.32)  # retinal thickness away from the fovea, in rows
    top = ny * rng.uniform(0.22, 0.30)  # ILM row at the image centre
    tilt = rng.uniform(-0.06, 0.06) * ny
    curvature = rng.uniform(0.04, 0.10) * ny  # the eye's curvature: edges higher than the centre
    fovea_x = rng.uniform(-0.15, 0.15)
    fovea_width = rng.uniform(0.13, 0.18)
    fovea_z = (n_scans - 1) / 2.0 + rng.uniform(-0.3, 0.3)
    wobble_top = _smooth_curve(rng, nx, 0.012 * ny, nx / 6)
    wobble_thick = np.stack([_smooth_curve(rng, nx, 0.08, nx / 8) for _ in range(8)])

    boundaries = np.empty((n_scans, 9, nx), np.float32)
    for z in range(n_scans):
        # The pit is deepest on the scan through the fovea and shallower on its neighbours.
        dz = 0.5 * fovea_width * (z - fovea_z) / max(n_scans - 1, 1)
        r2 = ((x - fovea_x) ** 2 + dz**2) / (2 * fovea_width**2)
        pit = np.exp(-(r2**1.3))  # flatter bottom, steeper walls than a Gaussian
        scan_wobble = _smooth_curve(rng, nx, 0.004 * ny, nx / 5)
        bruch = top + total + tilt * x - curvature * (x**2 - 1.0 / 3.0) + wobble_top + scan_wobble
        factor = (1.0 - pit[None]) + pit[None] * _OCT_AT_FOVEA[:, None]
        thickness = total * _OCT_THICKNESS[:, None] * factor * (1.0 + wobble_thick)
        thickness = np.maximum(thickness, 0.3)
        # Build the layers upwards from Bruch's membrane so the outer retina stays smooth.
        cumulative = np.cumsum(thickness[::-1], axis=0)[::-1]  # thickness from boundary k to Bruch
        boundaries[z, :8] = bruch[None] - cumulative
        boundaries[z, 8] = bruch
    return np.clip(boundaries, 1.0, ny - 2.0)


def _smooth_curve(rng: np.random.Generator, n: int, amplitude: float, sigma: float) -> np.ndarray:
    curve = ndimage.gaussian_filter1d(rng.standard_normal(n + 4 * int(sigma)), sigma, mode="reflect")
    curve = curve[2 * int(sigma) : 2 * int(sigma) + n]
    std = curve.std()
    return amplitude * (curve - curve.mean()) / (std if std > 0 else 1.0)


def oct_labels_from_boundaries(boundaries: np.ndarray, n_rows: int, unannotated: int = 255) -> np.ndarray:
    """Layer labels (uint8 ``(Z, n_rows, X)``) from boundary rows ``(Z, B, X)``; ``(B, X)`` (one B-scan, e.g. a
    manual ``boundaries.npy``) gives ``(n_rows, X)``.

    A pixel's label is the number of boundaries at or above its row centre: 0 above the first
    boundary, B below the last. Where a boundary is NaN (not traced, as in many manual traces), the rows between the
    traced boundaries above and below it are ambiguous and get ``unannotated`` (train with ``--ignore-value``).
    """
    boundaries = np.asarray(boundaries, dtype=np.float32)
    if boundaries.ndim == 2:
        return oct_labels_from_boundaries(boundaries[None], n_rows, unannotated)[0]
    if boundaries.ndim != 3:
        raise ValueError(f"boundaries must be (B, X) or (Z, B, X) rows, got shape {boundaries.shape}")
    if not boundaries.shape[1] < unannotated <= 255:
        raise ValueError(f"unannotated must be a uint8 value above the {boundaries.shape[1]} layers' labels, got {unannotated}")
    missing = np.isnan(boundaries)
    below, above = boundaries.copy(), np.empty_like(boundaries)
    following = np.full(boundaries[:, 0].shape, np.inf, np.float32)
    for k in reversed(range(boundaries.shape[1])):  # a missing boundary lies at or above the next traced one
        following = np.where(missing[:, k], following, boundaries[:, k])
        below[:, k] = following
    preceding = np.full(boundaries[:, 0].shape, -np.inf, np.float32)
    for k in range(boundaries.shape[1]):  # ... and below the previous traced one
        above[:, k] = preceding
        preceding = np.where(missing[:, k], preceding, boundaries[:, k])
    rows = np.arange(n_rows, dtype=np.float32)[None, :, None, None]  # (1, Y, 1, 1)
    labels = (rows >= below[:, None, :, :].transpose(0, 1, 3, 2)).sum(axis=-1, dtype=np.uint8)  # (Z, Y, X)
    if missing.any():
        lo, hi = above[:, None].transpose(0, 1, 3, 2), below[:, None].transpose(0, 1, 3, 2)  # (Z, 1, X, B)
        ambiguous = (missing[:, None].transpose(0, 1, 3, 2) & (rows >= lo) & (rows < hi)).any(axis=-1)
        labels[ambiguous] = unannotated
    return labels


def make_oct_stack(
    n_scans: int = 4,
    shape: tuple[int, int] = (248, 384),
    seed: int = 0,
    return_boundaries: bool = False,
):
    """OCT-like B-scans and their layer labels.

    Parameters
    ----------
    n_scans : number of B-scans (Z).
    shape : (rows = depth, columns = A-scans), at least 32x32.
    seed : random seed; deterministic in all arguments.
    return_boundaries : also return the boundary rows (see :func:`make_oct_boundaries`).

    Returns
    -------
    image : uint8 (Z, Y, X).
    labels : uint8 (Z, Y, X); 0 = vitreous, 1-8 = retinal layers (RNFL, GCL+IPL, INL, OPL, ONL,
        IS, OS, RPE), 9 = choroid and below (see :data:`OCT_CLASS_NAMES`).
    boundaries : float32 (Z, 9, X), only if ``return_boundaries``.
    """
    ny, nx = _check_shape(shape, 32)
    boundaries = make_oct_boundaries(n_scans, (ny, nx), seed)
    labels = oct_labels_from_boundaries(boundaries, ny)
    rng = np.random.default_rng([int(seed), 1])  # independent of the boundary stream
    n_scans = boundaries.shape[0]
    vol_shape = (n_scans, ny, nx)
    rows = np.arange(ny, dtype=np.float32)[None, :, None]

    # Mean reflectivity per layer, smoothed across the boundaries (finite axial resolution).
    signal = _OCT_REFLECTIVITY.astype(np.float32)[labels]
    # Within-layer structure: the choroid fades with depth, the ONL darkens towards the ELM.
    bruch = boundaries[:, 8][:, None, :]
    depth_below = np.clip(rows - bruch, 0, None)
    signal = np.where(labels == 9, signal * np.exp(-depth_below / (0.09 * ny)), signal)
    # Thin bright lines: ELM and the ellipsoid zone at IS/OS.
    for k, strength in ((5, 0.25), (6, 0.45)):
        line = np.exp(-0.5 * ((rows - boundaries[:, k][:, None, :]) / 0.9) ** 2)
        signal = signal + strength * line
    # Choroidal vessels: dark lumens in the choroid.
    vessels = _smooth_noise(rng, vol_shape, (0.8, 2.5, 4.0)) > 1.0
    signal = np.where((labels == 9) & vessels & (depth_below > 3), signal * 0.45, signal)
    # Shadows of retinal vessels: darker A-scans below the inner retina.
    shadow = np.ones((n_scans, 1, nx), np.float32)
    for z in range(n_scans):
        for _ in range(int(rng.integers(2, 5))):
            centre, half = rng.uniform(0, nx), rng.uniform(2.0, 5.0)
            cols = np.arange(nx)
            shadow[z, 0] *= 1.0 - 0.45 * np.exp(-0.5 * ((cols - centre) / half) ** 2)
    below_inner = rows > boundaries[:, 2][:, None, :]
    signal = np.where(below_inner, signal * shadow, signal)
    signal = ndimage.gaussian_filter(signal, (0.0, 0.8, 0.6))
    # Multiplicative speckle (gamma, mean 1) with grains slightly larger than a pixel.
    speckle = rng.gamma(shape=3.0, scale=1.0 / 3.0, size=vol_shape).astype(np.float32)
    speckle = ndimage.gaussian_filter(speckle, (0.0, 0.6, 0.9))
    speckle /= speckle.mean()
    image = (signal + 0.1) * speckle  # + noise floor: the vitreous is speckled, not black
    image += 0.025 * rng.standard_normal(vol_shape).astype(np.float32)  # detector noise
    image = np.clip(np.rint(image * 220.0), 0, 255).astype(np.uint8)
    if return_boundaries:
        return image, labels, boundaries
    return image, labels

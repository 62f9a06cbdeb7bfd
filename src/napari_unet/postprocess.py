"""Post-processing of boundary (membrane) probabilities into closed boundaries and cell instances."""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.measure import label
from skimage.morphology import remove_small_objects
from skimage.segmentation import watershed


def segment_instances(membrane_probability, seed_level: float = 0.2, sigma: float = 1.0, min_seed_size: int = 16):
    """Cells separated by one-pixel watershed lines, for a (Y, X) membrane probability in [0, 1].

    Seeds are connected regions where the smoothed probability is below ``seed_level`` (cell cores,
    at least ``min_seed_size`` pixels); a watershed of the smoothed probability grows them until they
    meet. Returns int32 (Y, X) labels, 0 on the watershed lines.
    """
    probability = np.asarray(membrane_probability, dtype=np.float32)
    if probability.ndim != 2:
        raise ValueError(f"expected a 2-D probability map, got shape {probability.shape}")
    smooth = ndimage.gaussian_filter(probability, sigma) if sigma > 0 else probability
    seeds = label(smooth < seed_level, connectivity=1)
    seeds = remove_small_objects(seeds, max_size=min_seed_size - 1) if min_seed_size > 1 else seeds
    if seeds.max() == 0:
        return np.ones(probability.shape, np.int32)
    return watershed(smooth, seeds, connectivity=1, watershed_line=True).astype(np.int32)


def close_boundaries(membrane_probability, threshold: float = 0.5, **kwargs) -> np.ndarray:
    """Boolean (Y, X) membrane mask: thresholded probability plus watershed lines that close its gaps.

    A gap in a predicted membrane merges two cells, which the ISBI Rand score punishes hard; the
    watershed lines between cell cores (see :func:`segment_instances`) close such gaps.
    """
    probability = np.asarray(membrane_probability, dtype=np.float32)
    return (probability > threshold) | (segment_instances(probability, **kwargs) == 0)


def find_boundary_class(indices, n_classes: int, max_width: float = 4.0):
    """Index of a thin boundary class (e.g. EM membranes) in (Z, Y, X) int class indices, or None.

    Only two-class problems qualify: the minority class is a boundary class when 95 % of its
    annotated pixels lie within ``max_width`` pixels of the other class (thin lines, not blobs).
    """
    if n_classes != 2:
        return None
    indices = np.asarray(indices)
    counts = np.bincount(indices[indices >= 0].ravel(), minlength=2)
    if counts.min() == 0:
        return None
    minority = int(np.argmin(counts))
    distances = [ndimage.distance_transform_edt(plane == minority)[plane == minority] for plane in indices]
    distances = np.concatenate(distances)
    return minority if np.percentile(distances, 95) <= max_width else None

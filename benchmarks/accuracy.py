"""Accuracy next to speed: max abs diff and cosine similarity against the fp32 reference."""

from __future__ import annotations

import numpy as np


def max_abs_diff(reference: np.ndarray, actual: np.ndarray) -> float:
    return float(np.max(np.abs(reference.astype(np.float64) - np.asarray(actual, np.float64))))


def cosine(reference: np.ndarray, actual: np.ndarray) -> float:
    """Cosine similarity of the flattened outputs."""
    ref = reference.astype(np.float64).ravel()
    act = np.asarray(actual, np.float64).ravel()
    denominator = np.linalg.norm(ref) * np.linalg.norm(act)
    return float(ref @ act / denominator) if denominator else float("nan")


def min_row_cosine(reference: np.ndarray, actual: np.ndarray) -> float:
    """The smallest cosine between matching rows (e.g. sentence embeddings of a batch)."""
    ref = reference.astype(np.float64).reshape(reference.shape[0], -1)
    act = np.asarray(actual, np.float64).reshape(ref.shape)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(act, axis=1)
    return float(np.min(np.sum(ref * act, axis=1) / np.where(norms == 0, 1.0, norms)))

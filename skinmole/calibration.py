"""From logits to probabilities: temperature scaling, and the operating threshold.

Both are fitted on the validation split after training and stored in ``config.json``; serving only
applies them. Pure numpy, so the fast inference path never needs TensorFlow.
"""

from __future__ import annotations

import numpy as np


def probabilities(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Softmax over classes, or a sigmoid for a single-logit (binary) head."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    if z.shape[-1] == 1:
        return 1.0 / (1.0 + np.exp(-z))
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def malignant_probability(probs: np.ndarray, class_names: list[str], malignant_classes: list[str]) -> np.ndarray:
    """P(malignant): the sigmoid of a binary head, or the sum over the malignant diagnoses."""
    if probs.shape[-1] == 1:
        return probs[..., 0]
    idx = [class_names.index(c) for c in malignant_classes]
    return probs[..., idx].sum(axis=-1)


def _nll(logits: np.ndarray, targets: np.ndarray, temperature: float) -> float:
    p = probabilities(logits, temperature)
    eps = 1e-12
    if p.shape[-1] == 1:
        q = p[:, 0]
        return float(-np.mean(targets * np.log(q + eps) + (1 - targets) * np.log(1 - q + eps)))
    return float(-np.mean(np.log(p[np.arange(len(targets)), targets] + eps)))


def fit_temperature(logits: np.ndarray, targets: np.ndarray) -> float:
    """The temperature minimising validation negative log-likelihood (golden-section on log T).

    ``targets`` are class indices (multi-class head) or 0/1 (binary head).
    """
    lo, hi = np.log(0.05), np.log(20.0)
    g = (np.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = _nll(logits, targets, np.exp(a)), _nll(logits, targets, np.exp(b))
    for _ in range(60):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = _nll(logits, targets, np.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = _nll(logits, targets, np.exp(b))
    return float(np.exp((lo + hi) / 2))


def threshold_for_sensitivity(y_true: np.ndarray, scores: np.ndarray, target: float = 0.90) -> float:
    """The highest threshold at which at least ``target`` of the positives score >= it.

    The highest such threshold keeps specificity as high as the sensitivity target allows.
    """
    pos = np.sort(np.asarray(scores, dtype=np.float64)[np.asarray(y_true) == 1])[::-1]
    if len(pos) == 0:
        raise ValueError("no positive (malignant) examples to choose a threshold from")
    k = int(np.ceil(target * len(pos)))  # need k positives at or above the threshold
    return float(pos[max(k, 1) - 1])


MIN_POSITIVES_PER_GROUP = 50  # sources with fewer malignant validation images do not set the threshold


def threshold_within_groups(y_true, scores, groups, target: float = 0.90,
                            min_positives: int = MIN_POSITIVES_PER_GROUP) -> tuple[float, list[str]]:
    """The highest threshold that reaches ``target`` sensitivity pooled AND within every group
    (image collection) with at least ``min_positives`` positives; returns it and those groups.

    Why: a threshold tuned on the pooled set can keep 0.90 pooled while missing far more malignant
    lesions within one clinic; the lowest of the per-group thresholds holds in each of them.
    """
    y, s, g = np.asarray(y_true), np.asarray(scores, dtype=np.float64), np.asarray(groups)
    threshold = threshold_for_sensitivity(y, s, target)
    used = []
    for name in sorted(set(g.tolist())):
        m = g == name
        if int(y[m].sum()) >= min_positives:
            used.append(name)
            threshold = min(threshold, threshold_for_sensitivity(y[m], s[m], target))
    return float(threshold), used

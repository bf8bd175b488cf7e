"""Metrics per image collection (``source``), beside the pooled ones.

Why: HAM10000's collections differ in what they hold (vidir_molemax is almost all benign nevi), so
a model that recognises the collection scores well pooled without knowing the lesion. The AUC
*within* a source, and on a source left out of training, is what says how well it judges lesions.
"""

from __future__ import annotations

import numpy as np

from .evaluation import roc_auc, sensitivity_specificity

MIN_MALIGNANT_FOR_AUC = 10  # below this a within-source AUC is noise; reported as None


def metrics_by_source(y, p, sources, threshold: float) -> dict[str, dict]:
    """{"pooled": ..., source: ...}: n, malignant count, ROC AUC (None with too few malignant or
    benign images), sensitivity and specificity at ``threshold``."""
    y, p, sources = np.asarray(y), np.asarray(p, dtype=np.float64), np.asarray(sources)
    out = {}
    for name in ["pooled", *sorted(set(sources.tolist()))]:
        m = np.ones(len(y), bool) if name == "pooled" else sources == name
        yy, pp = y[m], p[m]
        n_pos, n_neg = int(yy.sum()), int((1 - yy).sum())
        enough = n_pos >= MIN_MALIGNANT_FOR_AUC and n_neg >= MIN_MALIGNANT_FOR_AUC
        auc = roc_auc(yy, pp) if enough else None
        ss = sensitivity_specificity(yy, pp, threshold)
        out[name] = {
            "n": int(m.sum()), "n_malignant": n_pos,
            "roc_auc": round(auc, 4) if auc is not None else None,
            "sensitivity": round(ss["sensitivity"], 4) if n_pos else None,
            "specificity": round(ss["specificity"], 4) if n_neg else None,
        }
    return out


def evaluate_by_source(model_source, labels_csv, split: str, *, batch_size: int = 64) -> dict[str, dict]:
    """Load a model, predict every image of ``split`` (quality gate off: every image counts) and
    return ``metrics_by_source`` at the model's own threshold."""
    from .data import load_set
    from .model import load_model
    from .predict import predict

    model = load_model(model_source)
    s = load_set(labels_csv, split=split)
    preds = predict(list(s.paths), model=model, check_quality=False, batch_size=batch_size)
    p = np.array([r.malignant_probability for r in preds])
    return metrics_by_source(s.y, p, s.metadata["source"], model.threshold)

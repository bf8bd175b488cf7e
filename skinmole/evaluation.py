"""Evaluation: metric functions, ``evaluate(model, labelled_set)``, and the plots.

The metric functions are small, pure and numpy-in / plain-Python-out, so ``metrics.json`` is plain
JSON. Conventions (in the style of the ISIC challenge scoring):

* ``y`` is 1 for malignant, 0 for benign; ``p`` is the calibrated malignant probability.
* A case is called malignant when ``p >= threshold`` (the same rule as ``Prediction.label``).
* A metric that is undefined on the input (an AUC with one class absent, a sensitivity with no
  malignant case) is ``None``, never NaN and never an exception, so subgroup tables can be built on
  any slice. Empty inputs raise ``ValueError``.
* Intervals are 95%: a seeded stratified percentile bootstrap for the ROC AUC, Wilson score
  intervals for proportions (sensitivity, specificity).

``evaluate`` predicts through ``skinmole.predict.iter_predict`` with the quality gate off, so the
numbers are exactly those ``predict()`` returns and no image is hidden from the metrics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .data import BINARY_CLASSES as BINARY_NAMES
from .head import is_malignant

N_BOOTSTRAP = 1000
ECE_BINS = 15
AGE_BANDS = ("<30", "30-44", "45-59", "60-74", "75+")
UNKNOWN = "unknown"


def _arrays(y, p) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y, dtype=np.int64).ravel()
    p = np.asarray(p, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"labels and scores differ in length ({len(y)} vs {len(p)})")
    if len(y) == 0:
        raise ValueError("no cases to evaluate")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("binary labels must be 0 (benign) or 1 (malignant)")
    return y, p


def _both_classes(y: np.ndarray) -> bool:
    return bool(y.min() == 0 and y.max() == 1)


# --------------------------------------------------------------------------- ranking metrics

def roc_auc(y, p) -> float | None:
    """ROC AUC (ties count one half, as scikit-learn's; no scikit-learn needed, so training on a
    machine without it can still choose its best epoch). None when only one class is present."""
    y, p = _arrays(y, p)
    if not _both_classes(y):
        return None
    return float(rank_auc(np.concatenate([p[y == 1], p[y == 0]]), int(y.sum()))[0])


def rank_auc(scores: np.ndarray, n_pos: int) -> np.ndarray:
    """ROC AUC of each row of ``scores`` whose first ``n_pos`` columns are the malignant cases.

    Mann-Whitney U from mid-ranks, so ties count one half exactly as in ``roc_auc_score``.
    """
    from scipy.stats import rankdata

    scores = np.atleast_2d(scores)
    n_neg = scores.shape[1] - n_pos
    ranks = rankdata(scores, axis=1)
    return (ranks[:, :n_pos].sum(axis=1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def roc_auc_ci(y, p, n_resamples: int = N_BOOTSTRAP, seed: int = 0,
               level: float = 0.95) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the ROC AUC.

    Stratified: each resample draws the malignant and the benign cases separately, with
    replacement, keeping both counts; so every resample has both classes and the interval reflects
    the set's own prevalence. Seeded (``numpy.random.default_rng(seed)``), so it is reproducible.
    None when only one class is present. Each resample's AUC comes from ``rank_auc`` (vectorised).
    """
    y, p = _arrays(y, p)
    if not _both_classes(y):
        return None
    rng = np.random.default_rng(seed)
    pos, neg = p[y == 1], p[y == 0]
    n_pos, n_neg = len(pos), len(neg)
    aucs = []
    for start in range(0, n_resamples, 100):  # chunks keep memory at 100 x N
        b = min(100, n_resamples - start)
        scores = np.concatenate([rng.choice(pos, (b, n_pos)), rng.choice(neg, (b, n_neg))], axis=1)
        aucs.append(rank_auc(scores, n_pos))
    aucs = np.concatenate(aucs)
    tail = (1.0 - level) / 2 * 100
    lo, hi = np.percentile(aucs, [tail, 100 - tail])
    return float(lo), float(hi)


def pr_auc(y, p) -> float | None:
    """Area under the precision-recall curve as average precision (scikit-learn's step-wise sum,
    no interpolation). None when there is no malignant case; 1.0 when there is no benign one."""
    from sklearn.metrics import average_precision_score

    y, p = _arrays(y, p)
    if y.max() == 0:
        return None
    return float(average_precision_score(y, p))


# --------------------------------------------------------------------------- threshold metrics

def wilson_interval(successes: int, n: int, level: float = 0.95) -> tuple[float, float] | None:
    """Wilson score interval for a proportion ``successes / n``; None when ``n == 0``.

    Unlike the normal approximation it stays inside [0, 1] and is sensible at 0/n and n/n.
    """
    if n == 0:
        return None
    if not 0 <= successes <= n:
        raise ValueError(f"successes {successes} not in [0, {n}]")
    from statistics import NormalDist

    z = NormalDist().inv_cdf(0.5 + level / 2)
    phat = successes / n
    denom = 1 + z * z / n
    centre = (phat + z * z / (2 * n)) / denom
    half = z * math.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return lo, hi


def sensitivity_specificity(y, p, threshold: float) -> dict:
    """Sensitivity and specificity of ``p >= threshold`` with Wilson 95% intervals.

    Returns tp, fn, tn, fp, sensitivity, sensitivity_ci, specificity, specificity_ci; a rate and its
    interval are None when its class is absent.
    """
    y, p = _arrays(y, p)
    pred = is_malignant(p, threshold)
    tp, fn = int(np.sum(pred & (y == 1))), int(np.sum(~pred & (y == 1)))
    tn, fp = int(np.sum(~pred & (y == 0))), int(np.sum(pred & (y == 0)))
    return {
        "threshold": float(threshold),
        "tp": tp, "fn": fn, "tn": tn, "fp": fp,
        "sensitivity": tp / (tp + fn) if tp + fn else None,
        "sensitivity_ci": wilson_interval(tp, tp + fn),
        "specificity": tn / (tn + fp) if tn + fp else None,
        "specificity_ci": wilson_interval(tn, tn + fp),
    }


def accuracy(y_true, y_pred) -> float:
    """Fraction of cases predicted correctly (scikit-learn)."""
    from sklearn.metrics import accuracy_score

    if len(y_true) == 0:
        raise ValueError("no cases to evaluate")
    return float(accuracy_score(y_true, y_pred))


def balanced_accuracy(y_true, y_pred) -> float:
    """Mean per-class recall (scikit-learn), over the classes present in ``y_true``.

    A class absent from ``y_true`` does not count (its recall is undefined), so with one class
    present this is that class's recall.
    """
    import warnings

    from sklearn.metrics import balanced_accuracy_score

    if len(y_true) == 0:
        raise ValueError("no cases to evaluate")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "y_pred contains classes not in y_true": documented above
        return float(balanced_accuracy_score(y_true, y_pred))


def classification_report(y_true, y_pred, class_names: list[str]) -> dict:
    """Per-class precision, recall, f1 and support, plus macro and weighted averages.

    ``y_true``/``y_pred`` are class indices into ``class_names``. Every class is listed (support 0
    where absent); a precision or recall with a zero denominator is reported as 0 (scikit-learn's
    ``zero_division=0``).
    """
    from sklearn.metrics import classification_report as report

    rep = report(y_true, y_pred, labels=list(range(len(class_names))), target_names=class_names,
                 output_dict=True, zero_division=0)
    rep.pop("accuracy", None)  # only present in some cases; accuracy is reported separately
    rep.pop("micro avg", None)
    return {k: {m: (int(v) if m == "support" else float(v)) for m, v in d.items()} for k, d in rep.items()}


def confusion(y_true, y_pred, n_classes: int) -> list[list[int]]:
    """Confusion matrix as nested lists: row = true class, column = predicted class (scikit-learn)."""
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(y_true, y_pred, labels=list(range(n_classes))).astype(int).tolist()


# --------------------------------------------------------------------------- calibration

def _bin_index(p: np.ndarray, n_bins: int) -> np.ndarray:
    # Bins [0, 1/n), [1/n, 2/n), ..., [(n-1)/n, 1]: the last bin is closed so p == 1 is counted.
    return np.minimum((p * n_bins).astype(np.int64), n_bins - 1)


def reliability_bins(y, p, n_bins: int = ECE_BINS) -> list[dict]:
    """Reliability-diagram data for the malignant probability: ``n_bins`` equal-width bins on [0, 1].

    Each bin: lower, upper, count, mean_predicted, fraction_malignant (the last two None when empty).
    """
    y, p = _arrays(y, p)
    if ((p < 0) | (p > 1)).any():
        raise ValueError("probabilities must lie in [0, 1]")
    idx = _bin_index(p, n_bins)
    out = []
    for b in range(n_bins):
        m = idx == b
        n = int(m.sum())
        out.append({
            "lower": b / n_bins, "upper": (b + 1) / n_bins, "count": n,
            "mean_predicted": float(p[m].mean()) if n else None,
            "fraction_malignant": float(y[m].mean()) if n else None,
        })
    return out


def expected_calibration_error(y, p, n_bins: int = ECE_BINS) -> float:
    """Binary ECE of the malignant probability: sum over the ``n_bins`` equal-width bins of
    (bin count / N) * |fraction malignant - mean predicted probability|; empty bins add nothing.

    This is calibration of P(malignant) itself (both classes), not the top-label confidence ECE of
    Guo et al. (2017); 0 is perfect. 15 bins as in that paper.
    """
    bins = reliability_bins(y, p, n_bins)
    n = sum(b["count"] for b in bins)
    return float(sum(b["count"] / n * abs(b["fraction_malignant"] - b["mean_predicted"])
                     for b in bins if b["count"]))


# --------------------------------------------------------------------------- subgroups

def age_band(age) -> str:
    """``<30``, ``30-44``, ``45-59``, ``60-74``, ``75+``, or ``unknown`` for blank/unparseable ages."""
    try:
        a = float(age)
    except (TypeError, ValueError):
        return UNKNOWN
    if math.isnan(a) or a < 0:
        return UNKNOWN
    for upper, band in ((30, "<30"), (45, "30-44"), (60, "45-59"), (75, "60-74")):
        if a < upper:
            return band
    return "75+"


def subgroup_table(y, p, groups, threshold: float) -> list[dict]:
    """One row per group value: group, n, n_malignant, roc_auc, sensitivity, specificity.

    AUC is None where the group has one class only; sensitivity (specificity) is None where it has
    no malignant (benign) case. Blank group values are reported as ``unknown``. Rows are sorted by
    size, largest first.
    """
    y, p = _arrays(y, p)
    g = np.array([(str(v).strip() or UNKNOWN) if v is not None else UNKNOWN for v in groups], dtype=object)
    if len(g) != len(y):
        raise ValueError(f"groups and labels differ in length ({len(g)} vs {len(y)})")
    rows = []
    for value in sorted(set(g.tolist())):
        m = g == value
        ss = sensitivity_specificity(y[m], p[m], threshold)
        rows.append({
            "group": value, "n": int(m.sum()), "n_malignant": int(y[m].sum()),
            "roc_auc": roc_auc(y[m], p[m]),
            "sensitivity": ss["sensitivity"], "specificity": ss["specificity"],
        })
    return sorted(rows, key=lambda r: (-r["n"], r["group"]))


def subgroups(y, p, metadata: dict[str, list], threshold: float) -> dict[str, list[dict]]:
    """Subgroup tables by ``sex``, ``age_band`` (from ``age``) and ``localization`` where present."""
    out = {}
    if "sex" in metadata:
        out["sex"] = subgroup_table(y, p, metadata["sex"], threshold)
    if "age" in metadata:
        out["age_band"] = subgroup_table(y, p, [age_band(a) for a in metadata["age"]], threshold)
    if "localization" in metadata:
        out["localization"] = subgroup_table(y, p, metadata["localization"], threshold)
    return out


MIN_PER_CLASS_FOR_AUC = 10  # a within-source AUC on fewer malignant (or benign) images is noise: None


def metrics_by_source(y, p, sources, threshold: float) -> dict[str, dict]:
    """{"pooled": ..., "<source>": ...}: n, malignant count, ROC AUC and sensitivity/specificity at
    ``threshold``, pooled and within each image collection.

    Why: HAM10000's collections differ in what they hold (vidir_molemax is almost all benign nevi),
    so a model that recognises the collection scores well pooled without knowing the lesion; the
    AUC *within* a source is what says how well it judges lesions.
    """
    y, p = _arrays(y, p)
    sources = np.asarray(sources)
    out = {}
    for name in ["pooled", *sorted(set(sources.tolist()))]:
        m = np.ones(len(y), bool) if name == "pooled" else sources == name
        yy, pp = y[m], p[m]
        n_pos, n_neg = int(yy.sum()), int(len(yy) - yy.sum())
        auc = roc_auc(yy, pp) if min(n_pos, n_neg) >= MIN_PER_CLASS_FOR_AUC else None
        ss = sensitivity_specificity(yy, pp, threshold)
        out[name] = {
            "n": int(m.sum()), "n_malignant": n_pos,
            "roc_auc": None if auc is None else round(auc, 4),
            "sensitivity": None if ss["sensitivity"] is None else round(ss["sensitivity"], 4),
            "specificity": None if ss["specificity"] is None else round(ss["specificity"], 4),
        }
    return out


# --------------------------------------------------------------------------- everything together

def _curves(y: np.ndarray, p: np.ndarray) -> dict:
    from sklearn.metrics import precision_recall_curve, roc_curve

    out: dict = {}
    if _both_classes(y):
        fpr, tpr, _ = roc_curve(y, p)
        out["roc"] = {"fpr": np.round(fpr, 6).tolist(), "tpr": np.round(tpr, 6).tolist()}
    if y.max() == 1:
        precision, recall, _ = precision_recall_curve(y, p)
        out["pr"] = {"precision": np.round(precision, 6).tolist(), "recall": np.round(recall, 6).tolist(),
                     "prevalence": float(y.mean())}
    return out


def compute_metrics(y, p, threshold: float, *, dx_true=None, dx_pred=None, dx_names=None,
                    metadata: dict | None = None, n_bootstrap: int = N_BOOTSTRAP, seed: int = 0) -> dict:
    """All metrics of one labelled set as a JSON-ready dict (the content of ``metrics.json``).

    ``dx_true``/``dx_pred`` (class indices into ``dx_names``) add the 7-class report, confusion
    matrix and balanced accuracy; ``metadata`` (columns sex, age, localization) adds subgroups.
    """
    y, p = _arrays(y, p)
    pred = is_malignant(p, threshold).astype(np.int64)
    ss = sensitivity_specificity(y, p, threshold)
    out = {
        "n": int(len(y)),
        "n_malignant": int(y.sum()),
        "n_benign": int(len(y) - y.sum()),
        "threshold": float(threshold),
        "roc_auc": roc_auc(y, p),
        "roc_auc_ci": roc_auc_ci(y, p, n_bootstrap, seed),
        "roc_auc_ci_method": f"stratified percentile bootstrap, {n_bootstrap} resamples, seed {seed}",
        "pr_auc": pr_auc(y, p),
        **{k: ss[k] for k in ("sensitivity", "sensitivity_ci", "specificity", "specificity_ci")},
        "proportion_ci_method": "Wilson score, 95%",
        "accuracy": accuracy(y, pred),
        "balanced_accuracy": balanced_accuracy(y, pred),
        "ece": expected_calibration_error(y, p),
        "ece_bins": ECE_BINS,
        "binary": {
            "class_names": BINARY_NAMES,
            "confusion_matrix": confusion(y, pred, 2),
            "report": classification_report(y, pred, BINARY_NAMES),
            "counts": {k: ss[k] for k in ("tp", "fn", "tn", "fp")},
        },
        "reliability": reliability_bins(y, p),
        "curves": _curves(y, p),
    }
    if dx_true is not None and dx_pred is not None:
        dx_true, dx_pred = np.asarray(dx_true, np.int64), np.asarray(dx_pred, np.int64)
        out["accuracy_7class"] = accuracy(dx_true, dx_pred)
        out["balanced_accuracy_7class"] = balanced_accuracy(dx_true, dx_pred)
        out["dx"] = {
            "class_names": list(dx_names),
            "confusion_matrix": confusion(dx_true, dx_pred, len(dx_names)),
            "report": classification_report(dx_true, dx_pred, list(dx_names)),
        }
    else:
        out["accuracy_7class"] = out["balanced_accuracy_7class"] = None
    out["subgroups"] = subgroups(y, p, metadata or {}, threshold)
    if metadata and "source" in metadata:
        out["by_source"] = metrics_by_source(y, p, metadata["source"], threshold)
    return out


SUMMARY_KEYS = ("n", "roc_auc", "roc_auc_ci", "pr_auc", "sensitivity", "sensitivity_ci", "specificity",
                "specificity_ci", "accuracy", "balanced_accuracy", "balanced_accuracy_7class", "ece")


def summary(metrics: dict, split: str) -> dict:
    """The headline numbers (what goes into a model's ``config.json`` under ``metrics[split]``)."""
    out = {"split": split}
    for k in SUMMARY_KEYS:
        v = metrics.get(k)
        out[k] = [round(x, 4) for x in v] if isinstance(v, (list, tuple)) else (round(v, 4) if isinstance(v, float) else v)
    out["threshold"] = metrics["threshold"]
    if "by_source" in metrics:
        out["by_source"] = {k: v for k, v in metrics["by_source"].items() if k != "pooled"}
    return out


@dataclass
class SetPredictions:
    """What the model said about every readable image of a labelled set."""

    index: list[int]  # positions in the labelled set of the images that were read
    p_malignant: np.ndarray
    dx_probs: np.ndarray | None  # (n, classes) when the model has a multi-class head
    skipped: list[dict] = field(default_factory=list)  # unreadable images: {"image", "error"}


def predict_set(model, labelled_set, *, batch_size: int = 64) -> SetPredictions:
    """Predict every image of ``labelled_set`` with ``iter_predict`` (quality gate off).

    Unreadable images are not scored; they are listed in ``skipped`` (and in metrics.json).
    """
    from .images import InvalidImageError
    from .model import load_model
    from .predict import iter_predict

    m = load_model(model)
    index, p_mal, probs, skipped = [], [], [], []
    results = iter_predict(labelled_set.paths, m, check_quality=False, batch_size=batch_size)
    for i, (src, pred) in enumerate(results):
        if isinstance(pred, InvalidImageError):
            skipped.append({"image": str(src), "error": str(pred)})
            continue
        index.append(i)
        p_mal.append(pred.malignant_probability)
        if pred.diagnosis is not None:
            probs.append([pred.diagnosis[c] for c in m.class_names])
    return SetPredictions(index, np.asarray(p_mal, dtype=np.float64),
                          np.asarray(probs, dtype=np.float64) if probs else None, skipped)


def metrics_for(model, labelled_set, preds: SetPredictions, *, n_bootstrap: int = N_BOOTSTRAP,
                seed: int = 0) -> dict:
    """``compute_metrics`` on the predictions of ``predict_set``, plus where they came from."""
    from .data import DX_CLASSES
    from .model import load_model

    m = load_model(model)
    if not preds.index:
        raise ValueError(f"{labelled_set.source}: none of the images could be read")
    sub = labelled_set.subset(preds.index)
    dx_true = dx_pred = None
    if sub.dx is not None and preds.dx_probs is not None and m.class_names == DX_CLASSES:
        dx_true, dx_pred = sub.dx_index, preds.dx_probs.argmax(axis=1)
    metrics = compute_metrics(sub.y, preds.p_malignant, m.threshold, dx_true=dx_true, dx_pred=dx_pred,
                              dx_names=DX_CLASSES, metadata=sub.metadata, n_bootstrap=n_bootstrap, seed=seed)
    if dx_true is None:
        metrics["dx_note"] = ("no 7-class metrics: " + ("the set has no dx labels" if sub.dx is None
                              else "the model has no 7-class head"))
    metrics["data"] = labelled_set.source
    metrics["skipped"] = preds.skipped
    metrics["model"] = {
        "name": m.config.get("name", ""), "version": m.version, "architecture": m.config["architecture"],
        "input_size": m.input_size, "weights_sha256": m.weights_sha256, "folder": str(m.folder),
        "temperature": m.temperature, "threshold_rule": m.config.get("threshold_rule"),
    }
    return metrics


def evaluate(model, labelled_set, *, batch_size: int = 64, n_bootstrap: int = N_BOOTSTRAP, seed: int = 0) -> dict:
    """Predict ``labelled_set`` with ``model`` (any ``load_model`` source) and compute every metric.

    The probabilities are those ``predict(..., check_quality=False)`` returns; the operating point is
    the model's own threshold.
    """
    from .model import load_model

    m = load_model(model)  # once: loading checks the sha256 of every file
    preds = predict_set(m, labelled_set, batch_size=batch_size)
    return metrics_for(m, labelled_set, preds, n_bootstrap=n_bootstrap, seed=seed)


# --------------------------------------------------------------------------- plots

def _save(plt, fig, path: Path) -> Path:
    """Lay out, write and close one figure; returns its path."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _confusion_plot(plt, matrix, names, title, path):
    cm = np.asarray(matrix, dtype=np.float64)
    rows = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    fig, ax = plt.subplots(figsize=(max(4.2, 1.0 + 0.75 * len(names)), max(3.8, 0.8 + 0.7 * len(names))))
    ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{int(cm[i, j])}\n{frac[i, j]:.2f}", ha="center", va="center", fontsize=8,
                    color="white" if frac[i, j] > 0.6 else "black")
    ax.set_xticks(range(len(names)), names, rotation=45 if len(names) > 2 else 0)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title + "\n(count, fraction of true row)", fontsize=9)
    _save(plt, fig, path)


def plot_metrics(metrics: dict, output_dir, title: str = "") -> list[Path]:
    """Write roc.png, pr.png, confusion_binary.png, confusion_7class.png (when there is a 7-class
    report) and reliability.png from a ``compute_metrics`` dict; returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    prefix = f"{title}: " if title else ""
    curves = metrics.get("curves", {})

    if "roc" in curves:
        fig, ax = plt.subplots(figsize=(4.8, 4.5))
        ci = metrics.get("roc_auc_ci")
        ci_txt = f" (95% CI {ci[0]:.3f}-{ci[1]:.3f})" if ci else ""
        ax.plot(curves["roc"]["fpr"], curves["roc"]["tpr"], label=f"AUC {metrics['roc_auc']:.3f}{ci_txt}")
        ax.plot([0, 1], [0, 1], ":", color="grey")
        if metrics.get("sensitivity") is not None and metrics.get("specificity") is not None:
            ax.plot([1 - metrics["specificity"]], [metrics["sensitivity"]], "o", color="C3",
                    label=f"threshold {metrics['threshold']:.3f}")
        ax.set_xlabel("1 - specificity (false positive rate)")
        ax.set_ylabel("sensitivity (true positive rate)")
        ax.set_title(f"{prefix}ROC, malignant vs benign (n={metrics['n']})", fontsize=9)
        ax.legend(loc="lower right", fontsize=8)
        written.append(_save(plt, fig, out / "roc.png"))

    if "pr" in curves:
        fig, ax = plt.subplots(figsize=(4.8, 4.5))
        ax.step(curves["pr"]["recall"], curves["pr"]["precision"], where="post",
                label=f"average precision {metrics['pr_auc']:.3f}")
        ax.axhline(curves["pr"]["prevalence"], ls=":", color="grey", label="prevalence")
        if metrics.get("sensitivity") is not None:
            ax.plot([metrics["sensitivity"]], [metrics["binary"]["report"]["malignant"]["precision"]], "o",
                    color="C3", label=f"threshold {metrics['threshold']:.3f}")
        ax.set_xlabel("recall (sensitivity)")
        ax.set_ylabel("precision")
        ax.set_ylim(0, 1.02)
        ax.set_title(f"{prefix}precision-recall (n={metrics['n']})", fontsize=9)
        ax.legend(loc="lower left", fontsize=8)
        written.append(_save(plt, fig, out / "pr.png"))

    b = metrics["binary"]
    _confusion_plot(plt, b["confusion_matrix"], b["class_names"],
                    f"{prefix}binary at threshold {metrics['threshold']:.3f}", out / "confusion_binary.png")
    written.append(out / "confusion_binary.png")
    if "dx" in metrics:
        _confusion_plot(plt, metrics["dx"]["confusion_matrix"], metrics["dx"]["class_names"],
                        f"{prefix}7-class (argmax)", out / "confusion_7class.png")
        written.append(out / "confusion_7class.png")

    bins = metrics["reliability"]
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(4.8, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    full = [b for b in bins if b["count"]]
    width = bins[0]["upper"] - bins[0]["lower"]
    ax.bar([b["lower"] for b in full], [b["fraction_malignant"] for b in full], width=width, align="edge",
           edgecolor="k", alpha=0.7, label="fraction malignant")
    ax.plot([b["mean_predicted"] for b in full], [b["fraction_malignant"] for b in full], "o", ms=3, color="C3",
            label="bin mean prediction")
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfect calibration")
    ax.set_ylabel("observed fraction malignant")
    ax.set_title(f"{prefix}reliability, ECE {metrics['ece']:.3f} ({len(bins)} bins)", fontsize=9)
    ax.legend(loc="upper left", fontsize=8)
    ax2.bar([b["lower"] for b in bins], [b["count"] for b in bins], width=width, align="edge", edgecolor="k")
    ax2.set_yscale("log")
    ax2.set_ylabel("count")
    ax2.set_xlabel("predicted malignant probability")
    written.append(_save(plt, fig, out / "reliability.png"))
    return written


def format_summary(metrics: dict) -> str:
    """A few readable lines for the console."""
    def f(v, ci=None):
        if v is None:
            return "n/a"
        return f"{v:.3f}" + (f" (95% CI {ci[0]:.3f}-{ci[1]:.3f})" if ci else "")

    lines = [
        f"data: {metrics.get('data', '')}",
        f"model: {metrics.get('model', {}).get('name', '')} ({metrics.get('model', {}).get('folder', '')})",
        f"n = {metrics['n']} ({metrics['n_malignant']} malignant, {metrics['n_benign']} benign)"
        + (f"; {len(metrics['skipped'])} unreadable images skipped" if metrics.get("skipped") else ""),
        f"ROC AUC            {f(metrics['roc_auc'], metrics['roc_auc_ci'])}",
        f"PR AUC (AP)        {f(metrics['pr_auc'])}",
        f"threshold          {metrics['threshold']:.4f}",
        f"sensitivity        {f(metrics['sensitivity'], metrics['sensitivity_ci'])}",
        f"specificity        {f(metrics['specificity'], metrics['specificity_ci'])}",
        f"accuracy           {f(metrics['accuracy'])}",
        f"balanced accuracy  {f(metrics['balanced_accuracy'])}",
        f"7-class bal. acc.  {f(metrics.get('balanced_accuracy_7class'))}",
        f"ECE ({metrics['ece_bins']} bins)     {f(metrics['ece'])}",
    ]
    if metrics.get("by_source"):
        lines.append("by source (image collection; within-source AUC):")
        for name, r in metrics["by_source"].items():
            lines.append(f"  {name:<18} n={r['n']:<5} malignant={r['n_malignant']:<4} AUC {f(r['roc_auc'])}"
                         f"  sens {f(r['sensitivity'])}  spec {f(r['specificity'])}")
    for name, rows in metrics.get("subgroups", {}).items():
        lines.append(f"by {name}:")
        for r in rows:
            lines.append(f"  {r['group']:<18} n={r['n']:<5} malignant={r['n_malignant']:<4} AUC {f(r['roc_auc'])}"
                         f"  sens {f(r['sensitivity'])}  spec {f(r['specificity'])}")
    return "\n".join(lines)

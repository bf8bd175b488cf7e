"""The sentences that explain skinmole's numbers, written once: the demo, the model card and the Space
say the same thing about the same measurement (a rate of 344 in 1,225 must not be "about 1 in 4" in
one place and "about 3 of every 10" in another).

Everything here is derived from a model folder's config (threshold, its rule, the recorded metrics),
so the words change when the model does.
"""

from __future__ import annotations

import re

from . import ham10000

# The disclaimer every surface shows first (Markdown).
NOT_A_DIAGNOSIS = (
    "**Not a diagnostic device.** skinmole says how much a dermoscopic image resembles the malignant "
    "lesions of its training data; it can be wrong in both directions. Any mole that is new, changing, "
    "bleeding, itching or worrying needs a dermatologist, whatever the model says."
)

# What each split is, in words a reader of a card or the demo needs to weigh the numbers.
SPLIT_WORDS = {
    "test": ("test split", "never used for training or tuning"),
    "val": ("validation split", "also used to choose the threshold and temperature, so the numbers are optimistic"),
}


def reported_split(config: dict) -> tuple[str | None, dict]:
    """``(split, metrics)`` to quote: the test split where the config records it, else validation."""
    metrics = config.get("metrics") or {}
    for split in ("test", "val"):
        if isinstance(metrics.get(split), dict):
            return split, metrics[split]
    return None, {}


def plain_rate(rate: float) -> str:
    """A proportion as a reader says it: 0.9 -> 'about 9 of every 10', 0.083 -> 'about 1 in 12'.

    "1 in n" only when it is within 3 points of the rate, else tenths, twentieths or hundredths,
    whichever is within 2.5 points first."""
    rate = float(rate)
    if rate <= 0:
        return "none"
    if rate >= 1:
        return "all"
    if rate < 0.5:
        n = round(1 / rate)
        if abs(1 / n - rate) <= 0.03:
            return f"about 1 in {n}"
    for d in (10, 20, 100):
        k = round(rate * d)
        if 0 < k < d and abs(k / d - rate) <= 0.025:
            return f"about {k} of every {d}"
    return f"about {max(1, min(99, round(rate * 100)))} of every 100"


def dataset_name(config: dict) -> str | None:
    """The data set the metrics were measured on, by name (None when the config does not say)."""
    if config.get("dataset"):
        return str(config["dataset"])
    sources = [str((config.get("training") or {}).get("data", ""))]
    sources += [str(m.get("split", "")) for m in (config.get("metrics") or {}).values() if isinstance(m, dict)]
    return "HAM10000" if any("ham10000" in s.lower() for s in sources) else None


def threshold_rule_text(rule: str | None) -> str:
    """'val sensitivity 0.90' -> 'chosen on the validation split to keep sensitivity at 0.90 or more'."""
    if not rule:
        return ""
    m = re.fullmatch(r"\s*(val|test|train)\s+(sensitivity|specificity)\s+([0-9.]+)"
                     r"(?:\s+pooled and within\s+(.+?))?\s*", rule)
    if m is None:
        return f"chosen by the rule: {rule}"
    split = SPLIT_WORDS.get(m.group(1), (f"{m.group(1)} split",))[0]
    where = f" pooled and within each of {m.group(4)}" if m.group(4) else ""
    return f"chosen on the {split} to keep {m.group(2)} at {m.group(3)} or more{where}"




def per_source(metrics: dict) -> str:
    """'Within each image collection with an AUC: rosendahl (Queensland) sensitivity 93%, specificity
    27%; ...' from ``metrics['by_source']`` (only collections with enough lesions for an AUC)."""
    rows = [(k, v) for k, v in (metrics.get("by_source") or {}).items()
            if k != "pooled" and isinstance(v, dict) and v.get("roc_auc") is not None
            and v.get("sensitivity") is not None and v.get("specificity") is not None]
    if not rows:
        return ""
    parts = [f"{ham10000.SOURCES.get(k, k)} sensitivity {v['sensitivity']:.0%}, specificity {v['specificity']:.0%}"
             for k, v in rows]
    return ("Within its image collections the rates differ: " + "; ".join(parts) + ". On dermoscopy from "
            "other clinics and cameras the model finds fewer malignant lesions (see the model card).")


def measured_on(config: dict, split: str, metrics: dict) -> str:
    """'the HAM10000 test split (1520 images, never used for training or tuning)'."""
    name, caveat = SPLIT_WORDS.get(split, (f"{split} split", ""))
    data = dataset_name(config)
    details = [f"{int(metrics['n']):,} images"] if metrics.get("n") else []
    details += [caveat] if caveat else []
    return f"the {data + ' ' if data else ''}{name}" + (f" ({', '.join(details)})" if details else "")


def operating_point(config: dict) -> str:
    """The operating threshold in plain words, with the sensitivity and specificity measured at it and
    the data they were measured on (Markdown, one paragraph)."""
    t = float(config["threshold"])
    rule = threshold_rule_text(config.get("threshold_rule"))
    text = (f"An image is labelled *malignant* when its malignant probability is {t:.4f} ({t:.0%}) or more"
            + (f", a threshold {rule}" if rule else "") + ".")
    split, metrics = reported_split(config)
    sens, spec = metrics.get("sensitivity"), metrics.get("specificity")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (sens, spec)):
        return text + " No sensitivity or specificity was measured for this model."
    return (f"{text} On {measured_on(config, split, metrics)}, at this threshold the model found "
            f"{plain_rate(sens)} malignant lesions (sensitivity {sens:.0%}) and flagged {plain_rate(1 - spec)} "
            f"benign lesions as malignant (specificity {spec:.0%}). "
            + "".join(f"{w} " for w in [per_source(metrics)] if w)
            + "A lower threshold would miss fewer malignant lesions and flag more benign ones.")

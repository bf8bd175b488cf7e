"""The model's answer from its logits: the differential, P(malignant), and the label at the threshold.

The one place this arithmetic lives, so prediction, evaluation, the gate, the demo and the scripts
cannot disagree: ``Head.from_config(config).answer(logits)``. The head kind (one logit for
benign/malignant, or one per diagnosis) comes from the config, which decided it once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .calibration import malignant_probability, probabilities
from .errors import ModelLoadError

MALIGNANT, BENIGN = "malignant", "benign"


def is_malignant(p, threshold: float):
    """The operating rule, the one place it is written: P(malignant) >= threshold (number or array)."""
    return np.asarray(p) >= threshold


def label_at(p, threshold: float):
    """The label by that rule: ``"malignant"`` or ``"benign"`` (a string, or an array of them)."""
    above = is_malignant(p, threshold)
    if above.ndim == 0:
        return MALIGNANT if bool(above) else BENIGN
    return np.where(above, MALIGNANT, BENIGN)


@dataclass(frozen=True)
class Answers:
    """A batch of answers: ``p_malignant`` (N,), ``labels`` (N,), ``probs`` (N, classes) calibrated."""

    p_malignant: np.ndarray
    labels: list[str]
    probs: np.ndarray
    class_names: tuple[str, ...]
    binary: bool

    def differential(self, i: int) -> dict[str, float] | None:
        """Image ``i``'s probability per diagnosis; None for a one-logit head, which has none."""
        if self.binary:
            return None
        return {c: float(self.probs[i, j]) for j, c in enumerate(self.class_names)}


@dataclass(frozen=True)
class Head:
    """Calibration, class lists and threshold of a model: everything between logits and an answer."""

    class_names: tuple[str, ...]
    malignant_classes: tuple[str, ...]
    temperature: float
    threshold: float
    binary: bool

    @classmethod
    def from_config(cls, config) -> "Head":
        return cls(tuple(config.class_names), tuple(config.malignant_classes), float(config.temperature),
                   float(config.threshold), bool(config.binary))

    @property
    def n_logits(self) -> int:
        return 1 if self.binary else len(self.class_names)

    def probabilities(self, logits) -> np.ndarray:
        """Calibrated probabilities: a sigmoid (binary head) or softmax, at the fitted temperature."""
        logits = np.asarray(logits)
        if logits.ndim != 2 or logits.shape[1] != self.n_logits:
            raise ModelLoadError(f"the model answers {logits.shape[-1] if logits.ndim else 0} logits per image; "
                                 f"its config ({len(self.class_names)} classes) needs {self.n_logits}")
        return probabilities(logits, self.temperature)

    def malignant_probability(self, logits) -> np.ndarray:
        return malignant_probability(self.probabilities(logits), list(self.class_names), list(self.malignant_classes))

    def label(self, p):
        return label_at(p, self.threshold)

    def answer(self, logits) -> Answers:
        probs = self.probabilities(logits)
        p = malignant_probability(probs, list(self.class_names), list(self.malignant_classes))
        return Answers(p, [str(v) for v in label_at(p, self.threshold)], probs, self.class_names, self.binary)

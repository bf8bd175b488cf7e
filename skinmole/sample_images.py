"""The six HAM10000 test-split images shipped with the package (see samples/README.md for attribution).

Tests, the demo and the README examples use them so that everything runs offline without the data set.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

SAMPLES_DIR = Path(__file__).resolve().parent / "samples"


class Sample(NamedTuple):
    file: str
    dx: str
    label: str


SAMPLES = (
    Sample("ISIC_0024317.jpg", "nv", "benign"),
    Sample("ISIC_0024371.jpg", "bkl", "benign"),
    Sample("ISIC_0025668.jpg", "df", "benign"),
    Sample("ISIC_0024733.jpg", "mel", "malignant"),
    Sample("ISIC_0024331.jpg", "bcc", "malignant"),
    Sample("ISIC_0024517.jpg", "akiec", "malignant"),
)


def sample_paths() -> list[Path]:
    """Paths of the bundled sample images, benign first, in the order of ``SAMPLES``."""
    return [SAMPLES_DIR / s.file for s in SAMPLES]


def sample_path(dx: str) -> Path:
    """The bundled sample for a HAM10000 diagnosis code (nv, bkl, df, mel, bcc, akiec)."""
    for s in SAMPLES:
        if s.dx == dx:
            return SAMPLES_DIR / s.file
    raise KeyError(f"no bundled sample for dx {dx!r}; have {[s.dx for s in SAMPLES]}")

"""HAM10000 facts in one place: its diagnoses, which are malignant, their names, its image
collections, its citation, DOIs and licence.

Why: the data set is named by training (the config's citation), evaluation, the card, the Space and
the demo; one registry keeps them from drifting apart (MedMNIST's ``info.py`` does the same).
"""

from __future__ import annotations

NAME = "HAM10000"
DX_CLASSES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
MALIGNANT_DX = ["akiec", "bcc", "mel"]
DX_NAMES = {
    "akiec": "actinic keratosis / intraepithelial carcinoma",
    "bcc": "basal cell carcinoma",
    "bkl": "benign keratosis",
    "df": "dermatofibroma",
    "mel": "melanoma",
    "nv": "melanocytic nevus",
    "vasc": "vascular lesion",
}
# The `source` column of labels.csv: four collections that differ in camera, clinic and contents.
SOURCES = {
    "rosendahl": "rosendahl (Queensland)",
    "vidir_modern": "vidir_modern (Vienna)",
    "vidir_molemax": "vidir_molemax (Vienna, follow-up nevi)",
    "vienna_dias": "vienna_dias (Vienna)",
}
DATA_DOI = "https://doi.org/10.7910/DVN/DBW86T"
PAPER_DOI = "https://doi.org/10.1038/sdata.2018.161"
CITATION = (
    "Tschandl, P., Rosendahl, C. & Kittler, H. The HAM10000 dataset, a large collection of "
    "multi-source dermatoscopic images of common pigmented skin lesions. Sci. Data 5, 180161 (2018)."
)
SHORT_CITATION = "Tschandl, Rosendahl & Kittler, *Sci. Data* 5, 180161, 2018"
LICENCE = "CC BY-NC 4.0"

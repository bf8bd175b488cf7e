"""Metric functions against hand-computed values, and ``skinmole evaluate`` end to end on real images."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import ROOT as REPO, config_path, copy_model_folder, ham10000_or_skip
from skinmole import evaluation as ev
from skinmole.cli import main as skinmole_main

SCRIPT = REPO / "scripts" / "evaluate.py"  # the command as README and MODEL_CARD run it
PLOTS = {"roc.png", "pr.png", "confusion_binary.png", "confusion_7class.png", "reliability.png"}


# --------------------------------------------------------------------------- ROC AUC and its interval

def test_roc_auc_hand_computed():
    # malignant scores {0.35, 0.8} vs benign {0.1, 0.4}: 3 of 4 pairs ranked right
    assert ev.roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)


def test_roc_auc_perfect_inverted_and_ties():
    assert ev.roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert ev.roc_auc([0, 0, 1, 1], [0.4, 0.3, 0.2, 0.1]) == 0.0
    assert ev.roc_auc([0, 1], [0.5, 0.5]) == 0.5  # a tie counts one half
    # pairs: (0.5 vs 0.2) right, (0.5 vs 0.5) tie -> (1 + 0.5) / 2
    assert ev.roc_auc([0, 0, 1], [0.2, 0.5, 0.5]) == pytest.approx(0.75)


def test_roc_auc_single_class_is_none():
    assert ev.roc_auc([1, 1, 1], [0.2, 0.5, 0.9]) is None
    assert ev.roc_auc([0, 0], [0.2, 0.5]) is None
    assert ev.roc_auc_ci([0, 0], [0.2, 0.5]) is None


def test_bad_inputs_raise():
    with pytest.raises(ValueError):
        ev.roc_auc([], [])
    with pytest.raises(ValueError):
        ev.roc_auc([0, 1], [0.5])
    with pytest.raises(ValueError):
        ev.roc_auc([0, 2], [0.1, 0.5])


def test_rank_auc_equals_sklearn_with_ties():
    rng = np.random.default_rng(0)
    rows = rng.integers(0, 5, (20, 30)) / 4  # heavy ties
    got = ev.rank_auc(rows, 10)
    want = [ev.roc_auc(np.r_[np.ones(10), np.zeros(20)], r) for r in rows]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    assert ev.rank_auc(np.array([0.35, 0.8, 0.1, 0.4]), 2)[0] == pytest.approx(0.75)


def test_roc_auc_ci_perfect_separation_is_a_point():
    assert ev.roc_auc_ci([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4], n_resamples=200) == (1.0, 1.0)


def test_roc_auc_ci_seeded_and_contains_estimate():
    rng = np.random.default_rng(1)
    y = np.r_[np.ones(40, int), np.zeros(160, int)]
    p = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1)
    auc = ev.roc_auc(y, p)
    lo, hi = ev.roc_auc_ci(y, p, n_resamples=500, seed=3)
    assert 0 <= lo < auc < hi <= 1
    assert 0.05 < hi - lo < 0.3  # n=200: an interval of a few points either side
    assert ev.roc_auc_ci(y, p, n_resamples=500, seed=3) == (lo, hi)
    assert ev.roc_auc_ci(y, p, n_resamples=500, seed=4) != (lo, hi)


# --------------------------------------------------------------------------- PR AUC

def test_pr_auc_hand_computed():
    # descending: 0.8 (m), 0.4 (b), 0.35 (m), 0.1 (b): AP = 0.5 * 1 + 0.5 * 2/3
    assert ev.pr_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.5 + 1 / 3)
    assert ev.pr_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0


def test_pr_auc_edge_cases():
    assert ev.pr_auc([0, 0, 0], [0.1, 0.2, 0.3]) is None  # no malignant case: undefined
    assert ev.pr_auc([1, 1], [0.1, 0.2]) == 1.0  # no benign case: precision is always 1


# --------------------------------------------------------------------------- threshold metrics

def test_wilson_interval_known_values():
    lo, hi = ev.wilson_interval(8, 10)
    assert (lo, hi) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert ev.wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert ev.wilson_interval(0, 10)[0] == 0.0
    assert ev.wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert ev.wilson_interval(10, 10)[1] == 1.0
    assert ev.wilson_interval(0, 0) is None
    with pytest.raises(ValueError):
        ev.wilson_interval(3, 2)


def test_sensitivity_specificity_hand_computed():
    y = [1, 1, 1, 0, 0, 0, 0]
    p = [0.9, 0.6, 0.2, 0.7, 0.1, 0.3, 0.5]  # the benign 0.5 sits on the threshold: called malignant
    r = ev.sensitivity_specificity(y, p, 0.5)
    assert (r["tp"], r["fn"], r["tn"], r["fp"]) == (2, 1, 2, 2)
    assert r["sensitivity"] == pytest.approx(2 / 3)
    assert r["specificity"] == pytest.approx(0.5)
    assert r["sensitivity_ci"] == pytest.approx(ev.wilson_interval(2, 3))
    assert r["specificity_ci"] == pytest.approx(ev.wilson_interval(2, 4))


def test_sensitivity_undefined_without_malignant_cases():
    r = ev.sensitivity_specificity([0, 0, 0], [0.1, 0.6, 0.2], 0.5)
    assert r["sensitivity"] is None and r["sensitivity_ci"] is None
    assert r["specificity"] == pytest.approx(2 / 3)


def test_accuracy_and_balanced_accuracy():
    assert ev.accuracy([0, 0, 0, 1], [0, 0, 1, 1]) == 0.75
    assert ev.balanced_accuracy([0, 0, 0, 1], [0, 0, 1, 1]) == pytest.approx((2 / 3 + 1) / 2)
    # 7-class style: recalls 1/2, 1, 2/3 over the classes present
    assert ev.balanced_accuracy([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 2, 0]) == pytest.approx((0.5 + 1 + 2 / 3) / 3)
    # one class present: that class's recall (documented)
    assert ev.balanced_accuracy([0, 0, 0, 0], [0, 1, 1, 1]) == 0.25
    assert ev.balanced_accuracy([1, 1], [1, 1]) == 1.0


def test_confusion_and_report():
    cm = ev.confusion([0, 0, 0, 1, 1, 2], [0, 1, 0, 1, 1, 0], 4)
    assert cm == [[2, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    rep = ev.classification_report([0, 0, 0, 1], [0, 0, 1, 1], ["benign", "malignant"])
    assert rep["malignant"]["precision"] == 0.5 and rep["malignant"]["recall"] == 1.0
    assert rep["benign"]["recall"] == pytest.approx(2 / 3) and rep["benign"]["support"] == 3
    assert rep["macro avg"]["recall"] == pytest.approx((2 / 3 + 1) / 2)
    rep7 = ev.classification_report([0, 1], [0, 0], ["a", "b", "c"])  # c absent, b never predicted
    assert rep7["c"]["support"] == 0 and rep7["b"]["precision"] == 0.0


# --------------------------------------------------------------------------- calibration

def test_ece_hand_computed():
    # two bins, each off by 0.1 in opposite directions, half the cases each
    assert ev.expected_calibration_error([0, 0, 1, 1], [0.1, 0.1, 0.9, 0.9]) == pytest.approx(0.1)
    # one bin: mean prediction 0.2, observed 1/5: perfectly calibrated
    assert ev.expected_calibration_error([1, 0, 0, 0, 0], [0.2] * 5) == pytest.approx(0.0)
    # bin [0.4, 0.467): mean 0.45, observed 1.0 (weight 2/3); bin [0.933, 1]: p=1.0, observed 0 (1/3)
    assert ev.expected_calibration_error([1, 1, 0], [0.42, 0.48, 1.0]) == pytest.approx(2 / 3 * 0.55 + 1 / 3 * 1.0)


def test_reliability_bins():
    bins = ev.reliability_bins([0, 1, 1, 0], [0.0, 0.5, 1.0, 0.05])
    assert len(bins) == ev.ECE_BINS == 15
    assert sum(b["count"] for b in bins) == 4
    assert bins[0]["count"] == 2 and bins[0]["fraction_malignant"] == 0.0
    assert bins[0]["mean_predicted"] == pytest.approx(0.025)
    assert bins[-1]["count"] == 1 and bins[-1]["upper"] == 1.0  # p == 1 lands in the last, closed bin
    assert bins[7]["count"] == 1  # 0.5 is in [7/15, 8/15)
    assert bins[3]["count"] == 0 and bins[3]["mean_predicted"] is None
    with pytest.raises(ValueError):
        ev.reliability_bins([0], [1.5])


# --------------------------------------------------------------------------- subgroups

@pytest.mark.parametrize("age,band", [
    (0, "<30"), ("29.9", "<30"), (30, "30-44"), ("44.0", "30-44"), (45, "45-59"), (59.5, "45-59"),
    (60, "60-74"), (74.9, "60-74"), (75, "75+"), ("85.0", "75+"), ("", "unknown"), (None, "unknown"),
    ("nan", "unknown"), ("n/a", "unknown"),
])
def test_age_band(age, band):
    assert ev.age_band(age) == band


def test_subgroup_table():
    y = [1, 0, 0, 1, 0, 0, 1]
    p = [0.9, 0.2, 0.6, 0.3, 0.1, 0.4, 0.8]
    sex = ["male", "male", "male", "female", "female", "", "female"]
    rows = {r["group"]: r for r in ev.subgroup_table(y, p, sex, threshold=0.5)}
    assert set(rows) == {"male", "female", "unknown"}
    m = rows["male"]  # y 1,0,0 / p .9,.2,.6: AUC 1, sens 1, spec 1/2
    assert (m["n"], m["n_malignant"], m["roc_auc"], m["sensitivity"], m["specificity"]) == (3, 1, 1.0, 1.0, 0.5)
    f = rows["female"]  # y 1,0,1 / p .3,.1,.8: AUC 1, sens 1/2, spec 1
    assert (f["n"], f["n_malignant"], f["roc_auc"], f["sensitivity"], f["specificity"]) == (3, 2, 1.0, 0.5, 1.0)
    u = rows["unknown"]  # one benign case: no AUC, no sensitivity
    assert (u["n"], u["roc_auc"], u["sensitivity"], u["specificity"]) == (1, None, None, 1.0)


def test_subgroups_uses_present_columns():
    out = ev.subgroups([0, 1], [0.2, 0.7], {"age": ["20", "80"], "lesion_id": ["a", "b"]}, 0.5)
    assert list(out) == ["age_band"]
    assert {r["group"] for r in out["age_band"]} == {"<30", "75+"}


# --------------------------------------------------------------------------- all together, plots

def _toy_metrics():
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(30, int), np.zeros(70, int)]
    p = np.clip(rng.normal(0.3 + 0.35 * y, 0.2), 0, 1)
    dx_true = rng.integers(0, 7, 100)
    dx_pred = np.where(rng.random(100) < 0.6, dx_true, rng.integers(0, 7, 100))
    meta = {"sex": rng.choice(["male", "female"], 100).tolist(), "age": rng.integers(10, 90, 100).astype(str).tolist()}
    return y, p, ev.compute_metrics(y, p, 0.5, dx_true=dx_true, dx_pred=dx_pred, dx_names=list("abcdefg"),
                                    metadata=meta, n_bootstrap=200)


def test_compute_metrics_consistent_and_json():
    y, p, m = _toy_metrics()
    json.dumps(m)  # plain JSON, no numpy types
    assert m["n"] == 100 and m["n_malignant"] == 30
    assert m["roc_auc"] == pytest.approx(ev.roc_auc(y, p))
    assert m["roc_auc_ci"][0] <= m["roc_auc"] <= m["roc_auc_ci"][1]
    cm = np.array(m["binary"]["confusion_matrix"])
    assert cm.sum() == 100 and cm[1, 1] / cm[1].sum() == pytest.approx(m["sensitivity"])
    assert np.trace(cm) / 100 == pytest.approx(m["accuracy"])
    assert np.array(m["dx"]["confusion_matrix"]).sum() == 100
    assert 0 <= m["balanced_accuracy_7class"] <= 1
    assert set(m["subgroups"]) == {"sex", "age_band"}
    s = ev.summary(m, "test")
    assert s["split"] == "test" and set(ev.SUMMARY_KEYS) <= set(s)


def test_compute_metrics_single_class():
    m = ev.compute_metrics([0, 0, 0], [0.1, 0.7, 0.2], 0.5, n_bootstrap=10)
    assert m["roc_auc"] is None and m["roc_auc_ci"] is None and m["pr_auc"] is None and m["sensitivity"] is None
    assert m["specificity"] == pytest.approx(2 / 3) and m["balanced_accuracy_7class"] is None
    assert "roc" not in m["curves"] and "pr" not in m["curves"]


def test_plot_metrics_writes_pngs(tmp_path):
    _, _, m = _toy_metrics()
    written = ev.plot_metrics(m, tmp_path, title="toy")
    assert {w.name for w in written} == PLOTS
    for w in written:
        assert w.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and w.stat().st_size > 5000
    one = ev.compute_metrics([0, 0, 0], [0.1, 0.7, 0.2], 0.5, n_bootstrap=10)
    assert {w.name for w in ev.plot_metrics(one, tmp_path / "one")} == {"confusion_binary.png", "reliability.png"}


# --------------------------------------------------------------------------- the command, end to end

@pytest.fixture(scope="session")
def ham_subset(tmp_path_factory):
    """A CSV of 40 HAM10000 test-split rows (12 malignant), images via a symlinked folder."""
    root = ham10000_or_skip()
    with (root / "labels.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames, [r for r in reader if r["split"] == "test"]
    rows = [r for r in rows if r["label"] == "malignant"][:12] + [r for r in rows if r["label"] == "benign"][:28]
    d = tmp_path_factory.mktemp("ham40")
    (d / "images").symlink_to(root / "images", target_is_directory=True)
    with (d / "labels.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    return d / "labels.csv"


@pytest.fixture(scope="session")
def script_run(ham_subset, tmp_path_factory):
    """scripts/evaluate.py (as the model card runs it) in a subprocess, with --update-config on a copy
    of the bundled model."""
    from skinmole.model import BUNDLED_MODEL

    base = tmp_path_factory.mktemp("evalrun")
    model_dir = copy_model_folder(BUNDLED_MODEL, base / "model")
    out = base / "out"
    cmd = [sys.executable, str(SCRIPT), "--data", str(ham_subset), "--split", "test", "--model", str(model_dir),
           "--output", str(out), "--update-config", "--bootstrap", "200"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, out, model_dir


def test_script_writes_metrics_and_plots(script_run):
    proc, out, _ = script_run
    m = json.loads((out / "metrics.json").read_text())
    assert m["n"] == 40 and m["n_malignant"] == 12 and m["skipped"] == []
    assert 0 <= m["roc_auc"] <= 1 and m["roc_auc_ci"][0] <= m["roc_auc"] <= m["roc_auc_ci"][1]
    for k in ("pr_auc", "sensitivity", "specificity", "accuracy", "balanced_accuracy", "ece"):
        assert 0 <= m[k] <= 1, k
    assert set(m["subgroups"]) == {"sex", "age_band", "localization"}
    assert sum(r["n"] for r in m["subgroups"]["localization"]) == 40
    # the 7-class part is there when the model has a 7-class head (it is absent, with a note, otherwise)
    assert ("dx" in m) or "dx_note" in m
    expected = PLOTS if "dx" in m else PLOTS - {"confusion_7class.png"}
    assert expected <= {p.name for p in out.glob("*.png")}
    assert "ROC AUC" in proc.stdout and "by localization" in proc.stdout


def test_script_probabilities_equal_predict(script_run, ham_subset):
    """evaluate() scores an image exactly as predict() does (quality gate off)."""
    from skinmole import predict

    _, out, model_dir = script_run
    with (out / "predictions.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))[:6]
    preds = predict([ham_subset.parent / "images" / r["image"] for r in rows], model_dir, check_quality=False)
    for r, pr in zip(rows, preds):
        assert float(r["p_malignant"]) == pytest.approx(pr.malignant_probability, abs=2e-6)
        assert r["predicted"] == pr.label


def test_script_update_config(script_run):
    from skinmole.model import load_model

    _, out, model_dir = script_run
    cfg = json.loads(config_path(model_dir).read_text())
    m = json.loads((out / "metrics.json").read_text())
    entry = cfg["metrics"]["test"]
    assert "test" in entry["split"] and entry["n"] == 40
    assert entry["roc_auc"] == pytest.approx(m["roc_auc"], abs=1e-4)
    for k in ("roc_auc_ci", "pr_auc", "sensitivity", "specificity", "accuracy", "balanced_accuracy",
              "balanced_accuracy_7class", "ece"):
        assert k in entry
    assert "val" in cfg["metrics"]  # the training-time entry is kept
    assert {p.name for p in (model_dir / "plots").glob("*.png")} == {p.name for p in out.glob("*.png")}
    load_model(model_dir)  # rewriting the config leaves the weights' sha256 valid


def _evaluate(*argv: str) -> int:
    """``skinmole evaluate ARGV`` in this process."""
    return skinmole_main(["evaluate", *argv])


def test_script_clear_errors(tmp_path, capsys, ham_subset):
    out = str(tmp_path / "o")
    assert _evaluate("--data", str(tmp_path / "nope.csv"), "--output", out) == 2
    assert "no such CSV file" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("image,label\nISIC_0024306.jpg,maybe\n")
    assert _evaluate("--data", str(bad), "--output", out) == 2
    assert "unknown label" in capsys.readouterr().err
    assert _evaluate("--data", str(ham_subset), "--split", "nosuchsplit", "--output", out) == 2
    assert "no labelled images" in capsys.readouterr().err
    assert _evaluate("--data", str(ham_subset), "--model", str(tmp_path / "nomodel"), "--output", out) == 2
    assert "no such model folder" in capsys.readouterr().err
    not_model = tmp_path / "empty"
    not_model.mkdir()
    assert _evaluate("--data", str(ham_subset), "--model", str(not_model), "--output", out) == 2
    assert "not a skinmole model folder" in capsys.readouterr().err
    assert _evaluate("--data", str(ham_subset), "--model", "org/name", "--output", out, "--update-config") == 2
    assert "local model folder" in capsys.readouterr().err
    assert not Path(out).exists()


def test_evaluate_function_matches_script(script_run, ham_subset):
    from skinmole.data import load_set

    _, out, model_dir = script_run
    m = ev.evaluate(str(model_dir), load_set(ham_subset, split="test"), batch_size=16, n_bootstrap=200)
    saved = json.loads((out / "metrics.json").read_text())
    for k in ("n", "roc_auc", "roc_auc_ci", "pr_auc", "sensitivity", "specificity", "ece", "balanced_accuracy_7class"):
        assert m[k] == pytest.approx(saved[k], abs=1e-9), k

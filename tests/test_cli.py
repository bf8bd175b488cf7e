"""The ``skinmole`` command: JSON lines in input order, a table, exit codes, one-line errors.

``main([...])`` runs in-process (the model loads once); one test runs the installed console script.
Numbers are compared with ``--no-quality-check`` (NO_GATE) so that they hold whichever samples a
bundled model's quality gate refuses; a refusal's own output is checked with a stand-in.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import skinmole
from skinmole.cli import main
from skinmole.predict import Prediction
from skinmole.sample_images import sample_paths

NO_GATE = "--no-quality-check"


@pytest.fixture(scope="module")
def reference():
    """Probabilities from the Python API, for the same bundled model the CLI uses by default."""
    preds = skinmole.predict(sample_paths(), check_quality=False)
    return {str(p): r.malignant_probability for p, r in zip(sample_paths(), preds)}


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"skinmole {skinmole.__version__}"


def test_no_command_and_bad_usage_exit_2(capsys):
    assert main([]) == 2
    assert main(["predict"]) == 2  # no PATH
    assert main(["predict", "x.jpg", "--batch-size", "0"]) == 2
    assert "usage" in capsys.readouterr().err


def test_json_all_good_exit_0(capsys, reference):
    paths = [str(p) for p in sample_paths()]
    assert main(["predict", *paths, "--json", NO_GATE]) == 0
    out = capsys.readouterr().out
    records = json_lines(out)
    assert [r["input"] for r in records] == paths
    keys = set(skinmole.predict(sample_paths()[0]).to_dict())
    for r in records:
        assert set(r) == keys | {"input"}
        assert r["malignant_probability"] == pytest.approx(reference[r["input"]], abs=1e-6)
        assert r["label"] in ("benign", "malignant")
    assert len(out.splitlines()) == len(paths)  # nothing but the JSON lines on stdout


def test_json_mixed_good_and_bad_in_order_exit_2(capsys, tmp_path, reference):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "notes.png"
    text.write_text("hello")
    good = [str(p) for p in sample_paths()]
    inputs = [good[0], str(empty), good[1], str(tmp_path / "missing.jpg"), str(tmp_path), good[2], str(text), good[3]]
    assert main(["predict", *inputs, "--json", "--batch-size", "3", NO_GATE]) == 2
    records = json_lines(capsys.readouterr().out)
    assert [r["input"] for r in records] == inputs
    for r in records:
        if r["input"] in reference:
            assert "error" not in r
            assert r["malignant_probability"] == pytest.approx(reference[r["input"]], abs=1e-6)
        else:
            assert set(r) == {"input", "error"}
            assert r["input"] in r["error"]


def test_json_input_is_the_path_as_given(capsys, monkeypatch):
    monkeypatch.chdir(sample_paths()[0].parent)
    name = sample_paths()[0].name
    assert main(["predict", name, f"./{name}", "--json"]) == 0
    assert [r["input"] for r in json_lines(capsys.readouterr().out)] == [name, f"./{name}"]


def test_no_quality_check_flag(capsys):
    assert main(["predict", str(sample_paths()[0]), "--json", "--no-quality-check"]) == 0
    (r,) = json_lines(capsys.readouterr().out)
    assert r["quality"]["accepted"] is True and r["quality"].get("checked") is False


def test_table(capsys, tmp_path, reference):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(sample_paths()[0].read_bytes()[:500])
    paths = [str(p) for p in sample_paths()[:2]] + [str(bad)]
    assert main(["predict", *paths, NO_GATE]) == 2
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["input", "label", "p(malignant)"]
    for path, line in zip(paths, lines[1:4]):
        shown = line.split()[0]
        assert shown == path or (shown.startswith("...") and path.endswith(shown[3:])), (shown, path)
        if path in reference:
            assert f"{reference[path]:.3f}" in line and line.split()[1] in ("benign", "malignant")
        else:
            assert "error" in line and "truncated" in line
    assert any("3 input(s)" in line and "1 unreadable" in line for line in lines)
    assert any("not a diagnosis" in line for line in lines)


def test_with_the_gate_on_every_sample_is_read_exit_0(capsys):
    paths = [str(p) for p in sample_paths()]
    assert main(["predict", *paths, "--json"]) == 0
    records = json_lines(capsys.readouterr().out)
    assert [r["input"] for r in records] == paths
    for r in records:
        assert "error" not in r
        assert (r["label"] is None) == (r["quality"]["accepted"] is False)
    assert main(["predict", *paths]) == 0
    assert "0 unreadable" in capsys.readouterr().out


def _refused():
    return Prediction(malignant_probability=None, label=None, threshold=0.4, diagnosis=None,
                      quality={"accepted": False, "issues": ["the image is too dark"], "checked": True},
                      model={"name": "stand-in"})


def test_an_image_refused_by_the_quality_gate_counts_as_read(capsys, monkeypatch, tmp_path):
    """Exit 0, a JSON line with label null, a 'refused' row naming the issue, and errors still exit 2."""
    predict_module = sys.modules["skinmole.predict"]  # the module (skinmole.predict is the function)

    def fake_iter_predict(sources, model=None, **kw):
        for src in sources:
            yield src, _refused()

    monkeypatch.setattr(predict_module, "iter_predict", fake_iter_predict)
    path = str(sample_paths()[0])
    assert main(["predict", path, "--json"]) == 0
    (r,) = json_lines(capsys.readouterr().out)
    assert r["input"] == path and r["label"] is None and r["malignant_probability"] is None
    assert r["quality"]["issues"] == ["the image is too dark"]
    assert main(["predict", path]) == 0
    row = capsys.readouterr().out.splitlines()[1]
    assert "refused" in row and "too dark" in row


@pytest.mark.parametrize("model", ["/nonexistent/model", "tests"])
def test_bad_model_is_one_line_and_exit_2(capsys, model):
    assert main(["predict", str(sample_paths()[0]), "--json", "--model", model]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip()
    assert "\n" not in err and "Traceback" not in err and model in err and err.startswith("skinmole:")


def test_tampered_model_is_one_line_and_exit_2(capsys, tmp_path):
    folder = Path(shutil.copytree(skinmole.model.BUNDLED_MODEL, tmp_path / "m"))
    with open(folder / "model.keras", "ab") as f:
        f.write(b"\0")
    assert main(["predict", str(sample_paths()[0]), "--model", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "sha256" in err


def test_model_folder_option(capsys, reference):
    folder = str(skinmole.model.BUNDLED_MODEL)
    path = str(sample_paths()[0])
    assert main(["predict", path, "--json", "--model", folder, NO_GATE]) == 0
    (r,) = json_lines(capsys.readouterr().out)
    assert r["malignant_probability"] == pytest.approx(reference[path], abs=1e-6)


def test_many_paths_stream_in_order(capsys, reference):
    """A larger run in small batches: every line present, in order, one per input."""
    paths = [str(p) for p in sample_paths()] * 20
    assert main(["predict", *paths, "--json", "--batch-size", "16", NO_GATE]) == 0
    records = json_lines(capsys.readouterr().out)
    assert [r["input"] for r in records] == paths
    got = np.array([r["malignant_probability"] for r in records])
    np.testing.assert_allclose(got, [reference[p] for p in paths], atol=1e-6, rtol=0)


def test_the_installed_console_script(tmp_path):
    exe = Path(sys.executable).parent / "skinmole"
    if not exe.exists():
        exe = shutil.which("skinmole")
    assert exe, "the skinmole console script is not installed (pip install -e .)"
    version = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=120)
    assert version.returncode == 0 and version.stdout.strip() == f"skinmole {skinmole.__version__}"
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    good = str(sample_paths()[0])
    run = subprocess.run([str(exe), "predict", good, str(bad), "--json"], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 2, run.stderr
    records = json_lines(run.stdout)
    assert [r["input"] for r in records] == [good, str(bad)]
    assert 0.0 <= records[0]["malignant_probability"] <= 1.0 and "error" in records[1]
    assert "Traceback" not in run.stderr

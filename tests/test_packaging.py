"""The wheel: built from this checkout, installed into a fresh virtual environment, used from a folder
outside the repository (``skinmole predict``, ``skinmole demo --help``); the licences travel in it;
the core install pulls no TensorFlow, Keras or scikit-learn.

Offline: the wheel is built without build isolation (setuptools>=77 must be installed: the dev extra
has it), and the fresh environment sees the dependencies already installed here through a ``.pth``
file that names this environment's site-packages. Only the wheel puts ``skinmole`` in it.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import site
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from helpers import ROOT

SERVING_MUST_NOT_NEED = {"tensorflow", "tensorflow-cpu", "keras", "scikit-learn", "gradio"}
SAMPLE = ROOT / "skinmole" / "samples" / "ISIC_0024317.jpg"


def _setuptools_builds_offline() -> str | None:
    """Why the wheel cannot be built here without a download, or None."""
    try:
        version = importlib.metadata.version("setuptools")
    except importlib.metadata.PackageNotFoundError:
        return "setuptools is not installed (the dev extra installs it)"
    if int(version.split(".")[0]) < 77:
        return f"setuptools {version} is too old to build this pyproject.toml offline (>=77; the dev extra has it)"
    return None


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """What the build reads, copied out of the checkout (so the build leaves nothing in it)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", "LICENSE", "skinmole_launcher.py"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "skinmole", src / "skinmole", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return src


@pytest.fixture(scope="module")
def wheel(source, tmp_path_factory) -> Path:
    reason = _setuptools_builds_offline()
    if reason:
        pytest.skip(f"pip cannot build the wheel offline: {reason}")
    dist = tmp_path_factory.mktemp("dist")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                            "-q", "-w", str(dist), str(source)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-3000:]
    (whl,) = dist.glob("skinmole-*.whl")
    return whl


@pytest.fixture(scope="module")
def env(wheel, tmp_path_factory) -> Path:
    """A fresh virtual environment with the wheel installed and this environment's packages visible."""
    home = tmp_path_factory.mktemp("venv") / "env"
    venv.EnvBuilder(with_pip=False).create(home)
    python = home / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    # Plain paths: their own .pth files (an editable skinmole among them) are not processed.
    Path(purelib, "installed-dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                              "--no-index", "-q", str(wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-3000:]
    return home


def _run(env: Path, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "SKINMOLE_MODEL")}
    return subprocess.run(args, capture_output=True, text=True, cwd=cwd, env=clean, timeout=300)


def _metadata(wheel: Path) -> str:
    with zipfile.ZipFile(wheel) as z:
        (name,) = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        return z.read(name).decode()


def test_the_licences_travel_in_the_wheel(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        licences = {n.split("/licenses/", 1)[1]: z.read(n).decode() for n in names if "/licenses/" in n}
        assert "skinmole/weights/LICENSE-WEIGHTS.md" in names  # beside the weights it covers
    assert set(licences) == {"LICENSE", "skinmole/weights/LICENSE-WEIGHTS.md"}
    assert "Apache License" in licences["LICENSE"] and "Version 2.0, January 2004" in licences["LICENSE"]
    assert "END OF TERMS AND CONDITIONS" in licences["LICENSE"]
    weights = licences["skinmole/weights/LICENSE-WEIGHTS.md"]
    assert "CC BY-NC 4.0" in weights and "https://creativecommons.org/licenses/by-nc/4.0/" in weights
    assert "HAM10000" in weights and "10.1038/sdata.2018.161" in weights
    assert re.search(r"^License-Expression: Apache-2.0 AND CC-BY-NC-4.0$", _metadata(wheel), re.M)


def test_every_file_of_the_package_is_in_the_wheel(wheel, source):
    """Code, weights, samples: whatever lives under skinmole/ (the demo app and the subcommands too)."""
    with zipfile.ZipFile(wheel) as z:
        packaged = {n for n in z.namelist() if n.startswith("skinmole/")}
    expected = {p.relative_to(source).as_posix() for p in (source / "skinmole").rglob("*") if p.is_file()}
    assert expected - packaged == set()
    assert {"skinmole/demo_app.py", "skinmole/commands/evaluate.py"} <= packaged  # what the subcommands run


def test_the_core_install_pulls_no_tensorflow(wheel):
    """Requirements without an extra marker are the core; TensorFlow, Keras and scikit-learn are in extras."""
    core, extras = set(), {}
    for line in _metadata(wheel).splitlines():
        if line.startswith("Requires-Dist:"):
            spec = line.split(":", 1)[1].strip()
            name = re.match(r"[A-Za-z0-9_.\-]+", spec).group(0).lower().replace("_", "-")
            extra = re.search(r'extra == "([^"]+)"', spec)
            (extras.setdefault(extra.group(1), set()) if extra else core).add(name)
    assert core >= {"numpy", "pillow", "onnxruntime", "huggingface-hub"}
    assert core & SERVING_MUST_NOT_NEED == set()
    assert {"keras", "tensorflow-cpu", "tensorflow"} <= extras["keras"]  # what the MissingExtraError names
    assert "scikit-learn" in extras["evaluate"] and "gradio" in extras["demo"]
    assert {"skinmole", "onnx"} <= extras["train"]


def test_predict_and_demo_help_from_the_installed_wheel(env, tmp_path):
    """From a folder outside the repository, with the wheel's copy of skinmole and no TensorFlow."""
    shutil.copy2(SAMPLE, tmp_path / "mole.jpg")
    where = _run(env, [str(env / "bin" / "python"), "-c",
                       "import json, sys, skinmole; p = skinmole.predict('mole.jpg');"
                       "print(json.dumps([skinmole.__file__, p.malignant_probability,"
                       " sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'sklearn'))]))"],
                 tmp_path)
    assert where.returncode == 0, where.stderr[-3000:]
    path, probability, heavy = json.loads(where.stdout)
    assert Path(path).resolve().is_relative_to(env.resolve()) and heavy == []
    assert probability is None or 0.0 <= probability <= 1.0  # None: the quality gate refused it

    run = _run(env, [str(env / "bin" / "skinmole"), "predict", "mole.jpg", "--json"], tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    (record,) = [json.loads(line) for line in run.stdout.splitlines()]
    assert record["input"] == "mole.jpg" and "error" not in record
    if probability is None:
        assert record["malignant_probability"] is None
    else:
        assert record["malignant_probability"] == pytest.approx(probability, abs=1e-6)

    demo = _run(env, [str(env / "bin" / "skinmole"), "demo", "--help"], tmp_path)
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert "--model" in demo.stdout and "--port" in demo.stdout


# --- a feature that needs an extra says which one ----------------------------------------------------

def _hide(monkeypatch, *modules: str) -> None:
    """Make ``modules`` look uninstalled (an import raises ModuleNotFoundError, find_spec gives None)."""
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)


def test_explain_without_keras_names_the_extra(monkeypatch):
    import skinmole
    from skinmole.errors import MissingExtraError

    _hide(monkeypatch, "keras", "tensorflow")
    with pytest.raises(MissingExtraError, match=re.escape("pip install 'skinmole[keras]'")):
        skinmole.explain(SAMPLE)


@pytest.mark.parametrize("argv, hidden, extra", [
    (["train", "--data", "labels.csv", "--output", "out"], ("sklearn",), "train"),
    (["export-onnx", "--model", "folder"], ("onnx",), "train"),
    (["fit-quality", "--model", "folder", "--data", "labels.csv"], ("sklearn",), "train"),
    (["evaluate", "--data", "labels.csv", "--output", "out"], ("sklearn",), "evaluate"),
    (["demo"], ("gradio",), "demo"),
])
def test_a_subcommand_without_its_extra_is_one_line(monkeypatch, capsys, argv, hidden, extra):
    from skinmole.cli import main

    _hide(monkeypatch, *hidden)
    assert main(argv) != 0
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert f"pip install 'skinmole[{extra}]'" in err and hidden[0] in err

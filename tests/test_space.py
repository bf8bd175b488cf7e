"""The Hugging Face Space folder, offline: skinmole publish --space --dry-run writes it, its front matter and
pins are right, and ``python app.py`` from inside it serves the demo on a model resolved by repo id
from a Hugging Face cache laid out in a temporary folder (HF_HUB_OFFLINE=1)."""

from __future__ import annotations

import importlib.metadata
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from huggingface_hub import SpaceCard

from helpers import ROOT, free_port
from hfcache import populate_cache

from skinmole import hub_metadata, space  # noqa: E402
from skinmole.commands import publish  # noqa: E402
from skinmole.hub import PublishError  # noqa: E402
from skinmole.model import BUNDLED_MODEL  # noqa: E402

MODEL_REPO = "org/skinmole-model"
pytest.importorskip("gradio", reason="the demo extra (gradio) is not installed")


@pytest.fixture(scope="module")
def space_folder(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("space") / "space"
    rc = publish.main(["--space", "org/skinmole-demo", "--model-repo", MODEL_REPO,
                               "--dry-run", "--output", str(out)])
    assert rc == 0
    return out


def test_space_folder_has_the_app_the_package_and_pinned_requirements(space_folder):
    files = {p.relative_to(space_folder).as_posix() for p in space_folder.rglob("*") if p.is_file()}
    assert {"README.md", "app.py", "requirements.txt", "skinmole/__init__.py", "skinmole/demo_app.py",
            "skinmole/model.py", "skinmole/hub.py"} <= files
    assert not any(f.startswith(("skinmole/weights/", "demo/")) or "__pycache__" in f for f in files)
    assert (space_folder / "skinmole" / "demo_app.py").read_bytes() == (ROOT / "skinmole" / "demo_app.py").read_bytes()
    assert MODEL_REPO in (space_folder / "app.py").read_text()

    reqs = (space_folder / "requirements.txt").read_text().split()
    pins = dict(r.split("==") for r in reqs)
    assert len(pins) == len(reqs)  # every line pinned
    for dist in ("gradio", "keras", "tensorflow-cpu", "onnxruntime", "huggingface-hub", "numpy", "pillow"):
        assert pins[dist] == importlib.metadata.version(dist), dist


def test_space_front_matter(space_folder):
    card = SpaceCard.load(space_folder / "README.md")
    data = card.data
    assert data.sdk == "gradio"
    assert data.sdk_version == importlib.metadata.version("gradio")
    assert data.app_file == "app.py"
    assert data.license == "cc-by-nc-4.0"
    assert data.models == [MODEL_REPO]
    assert data.title and data.emoji
    assert "Not a diagnostic device" in card.text
    assert 0 < len(data.short_description) <= 60
    assert hub_metadata.space_metadata_problems(data.to_dict()) == []


@pytest.mark.parametrize("change, problem", [
    ({"short_description": "Mole image -> resemblance to malignant lesions (not a diagnosis)"},
     "short_description: 64 characters; the Hub takes 1 to 60"),
    ({"colorFrom": "orange"}, "colorFrom: 'orange' is not one of"),
    ({"emoji": "mole"}, "emoji: 'mole' is not emoji-only"),
    ({"sdk": "flask"}, "sdk: 'flask' is not one of"),
    ({"sdk_version": "latest"}, "sdk_version: 'latest' is not a version number"),
    ({"python_version": "2.7"}, "python_version: '2.7' is not 3.x or 3.x.x"),
    ({"pinned": "no"}, "pinned: must be true or false"),
    ({"models": ["skinmole-model"]}, "models: 'skinmole-model' is not a model repo id"),
    ({"preload_from_hub": ["org/m a,b sha extra"]}, "preload_from_hub: 'org/m a,b sha extra' is not"),
    ({"license": "CC-BY-NC-4.0"}, "license: 'CC-BY-NC-4.0' is not one of the Hub's licence identifiers"),
    ({"app_file": ""}, "app_file: required"),
    ({"sdk_versoin": "6.0.0"}, "sdk_versoin: not a Space configuration field"),
])
def test_space_front_matter_problems_are_found(space_folder, change, problem):
    data = {**SpaceCard.load(space_folder / "README.md").data.to_dict(), **change}
    problems = hub_metadata.space_metadata_problems(data)
    assert any(problem in p for p in problems), problems


def test_a_space_card_the_hub_would_refuse_is_not_written(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(space, "SHORT_DESCRIPTION", "x" * 61)
    with pytest.raises(PublishError, match="short_description: 61 characters"):
        space.build_space_card("org/skinmole-demo", MODEL_REPO)
    out = tmp_path / "space"
    assert publish.main(["--space", "org/demo", "--model-repo", MODEL_REPO, "--dry-run",
                                 "--output", str(out)]) == 1
    assert "short_description: 61 characters" in capsys.readouterr().err
    assert not out.exists()


def test_space_imports_its_vendored_skinmole(space_folder):
    out = subprocess.run([sys.executable, "-c", "import skinmole; print(skinmole.__file__)"], cwd=space_folder,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()).resolve() == (space_folder / "skinmole" / "__init__.py").resolve()


def test_space_needs_a_model_repo(tmp_path, capsys):
    out = tmp_path / "space"
    assert publish.main(["--space", "org/demo", "--dry-run", "--output", str(out)]) == 1
    assert "--model-repo" in capsys.readouterr().err
    assert not out.exists()


def test_space_runs_with_python_app_py_on_the_model_from_the_hf_cache(space_folder, tmp_path):
    cache = tmp_path / "hf-cache"
    populate_cache(cache, MODEL_REPO, BUNDLED_MODEL)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("SKINMOLE_MODEL", "HF_TOKEN", "PYTHONPATH")}
    env.update(HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache), GRADIO_SERVER_NAME="127.0.0.1",
               GRADIO_SERVER_PORT=str(port), GRADIO_ANALYTICS_ENABLED="False", HF_HUB_DISABLE_TELEMETRY="1",
               GRADIO_TEMP_DIR=str(tmp_path / "gradio-tmp"), PYTHONUNBUFFERED="1")
    log = tmp_path / "space.log"
    with open(log, "w") as log_file:
        proc = subprocess.Popen([sys.executable, "app.py"], cwd=space_folder, env=env, stdout=log_file,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline, status = time.monotonic() + 150, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                    status = response.status
                    break
            except OSError:
                time.sleep(1)
        output = log.read_text()
        assert status == 200, f"the Space did not answer (exit {proc.poll()}):\n{output[-3000:]}"
        assert MODEL_REPO in output  # the demo reports the model source it loaded
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def test_space_upload_creates_a_gradio_space_and_pushes_once(monkeypatch, tmp_path):
    import tempfile

    from huggingface_hub import HfApi

    calls = []

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, **kwargs):
        kwargs["files"] = {p.relative_to(kwargs["folder_path"]).as_posix()
                           for p in Path(kwargs["folder_path"]).rglob("*") if p.is_file()}
        calls.append(("upload_folder", kwargs["repo_id"], kwargs))

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    rc = publish.main(["--space", "org/skinmole-demo", "--model-repo", MODEL_REPO, "--token", "hf_x"])
    assert rc == 0
    assert [(c[0], c[1]) for c in calls] == [("create_repo", "org/skinmole-demo"), ("upload_folder", "org/skinmole-demo")]
    repo, up = calls[0][2], calls[1][2]
    assert repo["repo_type"] == "space" and repo["space_sdk"] == "gradio" and repo["token"] == "hf_x"
    assert up["repo_type"] == "space" and up["token"] == "hf_x"
    assert {"app.py", "README.md", "requirements.txt", "skinmole/demo_app.py", "skinmole/__init__.py"} <= up["files"]
    assert "demo/*" in up["delete_patterns"]  # an older Space's copy of the demo is removed
    assert list(tmp_path.iterdir()) == []

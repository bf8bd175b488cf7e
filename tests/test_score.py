"""``skinmole score``: an archive on Ray Data gives predict()'s answers, one row per input, every time.

The sources (folder, glob, CSV, text list) and the row layout are checked without Ray. The runs share
one local Ray (2 CPUs, a small object store, no dashboard) started once: on 2 shared cores each start
costs seconds. The runs check: the output equals ``predict()`` (unreadable files as error rows and
exit 2), an interrupted run resumes without losing or repeating an input and scores earlier errors
again, ``--overwrite`` starts over, and a worker killed with SIGKILL mid-run is restarted by Ray with
its batch retried (HAM10000, a few hundred images).
"""

from __future__ import annotations

import importlib.util
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest

import skinmole
from skinmole import cli
from skinmole.errors import MissingExtraError
from skinmole.images import InvalidImageError
from skinmole.score import PartWriter, ScoreBatches, ScoreError, class_column, list_inputs, output_schema, parts_folder

from helpers import ROOT, ham10000_or_skip

SAMPLES = sorted((ROOT / "skinmole" / "samples").glob("*.jpg"))
HAVE_RAY = importlib.util.find_spec("ray") is not None and importlib.util.find_spec("pyarrow") is not None
needs_ray = pytest.mark.skipif(not HAVE_RAY, reason="skinmole score needs the [scale] extra: pip install 'skinmole[scale]'")
WORKER_TITLE = "ray::MapWorker(MapBatches(ScoreBatches))"  # the process title Ray gives a score worker


@pytest.fixture(scope="session")
def local_ray():
    """One local Ray for every run of this file (``score`` uses a Ray already initialised)."""
    if not HAVE_RAY:
        pytest.skip("skinmole score needs the [scale] extra: pip install 'skinmole[scale]'")
    import logging

    import ray

    assert os.environ.get("RAY_USAGE_STATS_ENABLED") == "0"  # set by skinmole (privacy) before Ray starts
    ray.init(num_cpus=2, object_store_memory=200 * 1024 * 1024, include_dashboard=False,
             logging_level=logging.WARNING, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def archive(tmp_path) -> Path:
    """The sample images in a folder tree, with a text file, a hidden image and two unreadable images."""
    root = tmp_path / "archive"
    (root / "clinic_b").mkdir(parents=True)
    for i, src in enumerate(SAMPLES):
        (root / ("clinic_b" if i % 2 else "") / src.name).write_bytes(src.read_bytes())
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden.jpg").write_bytes(SAMPLES[0].read_bytes())
    (root / "broken.jpg").write_bytes(b"this is not a JPEG")
    (root / "clinic_b" / "truncated.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    return root


def _read(output: Path):
    import pandas as pd

    return pd.read_parquet(output)


def _write_part(output: Path, paths) -> None:
    """A finished part of an earlier run of ``output`` (bundled model), as an interrupted run leaves it."""
    writer = PartWriter(parts_folder(output), output_schema(skinmole.load_model().class_names))
    writer.add(ScoreBatches(None, 2)({"path": np.array([str(p) for p in paths], dtype=object)}))
    writer.flush()


def _assert_equals_predict(df, paths, model):
    """One row per path, each the answer of ``iter_predict`` on that path (errors as their message)."""
    import pandas as pd

    assert sorted(df["path"]) == sorted(paths)
    rows = df.set_index("path")
    for path, result in skinmole.iter_predict(list(paths), model):
        row = rows.loc[path]
        if isinstance(result, InvalidImageError):
            assert row["error"] == str(result)
            assert pd.isna(row["malignant_probability"]) and pd.isna(row["quality_accepted"])
            continue
        assert pd.isna(row["error"])
        assert bool(row["quality_accepted"]) is result.quality["accepted"]
        assert list(row["quality_issues"]) == result.quality["issues"]
        assert row["threshold"] == model.threshold and row["model_sha256"] == model.weights_sha256
        if result.malignant_probability is None:
            assert pd.isna(row["malignant_probability"]) and pd.isna(row["label"])
            continue
        assert row["label"] == result.label
        np.testing.assert_allclose(row["malignant_probability"], result.malignant_probability, rtol=0, atol=1e-6)
        for name, p in result.diagnosis.items():
            np.testing.assert_allclose(row[class_column(name)], p, rtol=0, atol=1e-6)


# --- sources (no Ray) ------------------------------------------------------------------------------

def test_a_folder_is_searched_recursively_for_images(archive):
    found = list_inputs(archive)
    expected = sorted(str(p) for p in archive.rglob("*") if p.suffix in (".jpg", ".png") and not p.name.startswith("."))
    assert sorted(found) == expected and len(found) == len(SAMPLES) + 2
    assert all(os.path.isabs(p) for p in found)


def test_a_glob_a_csv_and_a_text_list(archive, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert list_inputs(str(archive / "**" / "*.png")) == [str(archive / "clinic_b" / "truncated.png")]
    (archive / "list.csv").write_text("image,dx\nbroken.jpg,nv\nclinic_b/truncated.png,mel\nbroken.jpg,nv\n")
    assert list_inputs(archive / "list.csv") == [str(archive / "broken.jpg"), str(archive / "clinic_b" / "truncated.png")]
    (tmp_path / "paths.txt").write_text(f"{SAMPLES[0]}\n\narchive/broken.jpg\n")  # relative to the list's folder
    assert list_inputs("paths.txt") == [str(SAMPLES[0]), str(archive / "broken.jpg")]


def test_sources_that_name_nothing_are_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ScoreError, match="no image files"):
        list_inputs(tmp_path / "empty")
    (tmp_path / "list.csv").write_text("file,dx\na.jpg,nv\n")
    with pytest.raises(ScoreError, match="'path' or 'image' column"):
        list_inputs(tmp_path / "list.csv")
    with pytest.raises(ScoreError, match="no such file or folder"):
        list_inputs(tmp_path / "typo")
    with pytest.raises(ScoreError, match="no image files"):
        list_inputs(str(tmp_path / "*.jpg"))


@needs_ray
def test_the_cli_says_what_cannot_start_before_ray_starts(tmp_path, capsys):
    assert cli.main(["score", str(tmp_path / "typo"), "-o", str(tmp_path / "out.parquet")]) == 2
    assert "typo: no such file or folder" in capsys.readouterr().err
    assert cli.main(["score", str(SAMPLES[0]), "-o", str(tmp_path / "no" / "out.parquet")]) == 2
    assert "no such folder for the output" in capsys.readouterr().err
    assert not (tmp_path / "out.parquet").exists()


def test_a_worker_batch_is_the_answer_of_predict(archive, bundled):
    """The worker class, called in this process: its rows are predict()'s answers, errors as rows."""
    pytest.importorskip("pyarrow")
    paths = list_inputs(archive)
    table = ScoreBatches(None, batch_size=3)({"path": np.array(paths, dtype=object)})
    assert table.schema.names == output_schema(bundled.class_names).names
    _assert_equals_predict(table.to_pandas(), paths, bundled)


def test_without_ray_the_extra_is_named(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    with pytest.raises(MissingExtraError, match=r"pip install 'skinmole\[scale\]'"):
        skinmole.score.import_ray()
    assert cli.main(["score", str(SAMPLES[0]), "-o", str(tmp_path / "out.parquet")]) == 1
    assert "pip install 'skinmole[scale]'" in capsys.readouterr().err


# --- runs on the local Ray -------------------------------------------------------------------------

@needs_ray
def test_the_cli_scores_a_folder_like_predict(local_ray, archive, bundled, tmp_path, capsys):
    out = tmp_path / "scores.parquet"
    assert cli.main(["score", str(archive), "-o", str(out), "--workers", "2", "--batch-size", "3"]) == 2
    err = capsys.readouterr().err
    assert f"{len(SAMPLES) + 2} input(s)" in err and "2 unreadable" in err
    df = _read(out)
    _assert_equals_predict(df, list_inputs(archive), bundled)
    assert df["error"].notna().sum() == 2
    assert not parts_folder(out).exists() and not list(tmp_path.glob(".*.tmp"))


@needs_ray
def test_an_interrupted_run_resumes_and_overwrite_starts_over(local_ray, archive, bundled, tmp_path, capsys):
    from skinmole.score import score

    out = tmp_path / "scores.parquet"
    paths = list_inputs(archive)

    def interrupt(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # after the first finished batch
        score(archive, out, workers=2, batch_size=2, progress=interrupt)
    assert not out.exists()  # no output that looks complete
    kept = _read(parts_folder(out))
    assert 2 <= len(kept) < len(paths)
    broken = archive / "broken.jpg"
    if str(broken) not in set(kept["path"]):  # make sure an error row is among the kept rows
        _write_part(out, [broken])
        kept = _read(parts_folder(out))
    (parts_folder(out) / "part-00099.parquet.tmp").write_bytes(b"half a part")  # killed mid-write
    broken.write_bytes(SAMPLES[0].read_bytes())  # the unreadable file was fixed since

    report = score(archive, out, workers=2, batch_size=2)
    assert report.skipped == kept["error"].isna().sum() and report.retried_errors == kept["error"].notna().sum() >= 1
    assert report.scored == len(paths) - report.skipped and report.rows == len(paths)
    df = _read(out)
    _assert_equals_predict(df, paths, bundled)  # each input once, the fixed file answered
    assert df["error"].notna().sum() == 1 and not parts_folder(out).exists()

    assert cli.main(["score", str(archive), "-o", str(out), "--workers", "2"]) == 2  # only the error left
    err = capsys.readouterr().err
    assert f"skipped {len(paths) - 1} input(s) already scored" in err
    assert "scored again 1 input(s) that were errors" in err
    _assert_equals_predict(_read(out), paths, bundled)

    listing = tmp_path / "two.txt"
    listing.write_text(f"{SAMPLES[0]}\n{SAMPLES[1]}\n")
    assert cli.main(["score", str(listing), "-o", str(out), "--overwrite"]) == 0
    assert "overwrote the earlier results" in capsys.readouterr().err
    _assert_equals_predict(_read(out), [str(SAMPLES[0]), str(SAMPLES[1])], bundled)


@needs_ray
def test_an_output_of_another_model_is_not_mixed_in(tiny_folder, tmp_path):
    from skinmole.score import score

    out = tmp_path / "scores.parquet"
    _write_part(out, [SAMPLES[0]])
    with pytest.raises(ScoreError, match="another model"):
        score(SAMPLES[1], out, model=tiny_folder)


def _score_workers() -> list[int]:
    """The PIDs of this test process's Ray score workers (descendants of this process)."""
    def parent(pid: int) -> int:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])

    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if not f.read().startswith(WORKER_TITLE.encode()):
                    continue
            pid = int(entry)
            while pid > 1 and pid != os.getpid():
                pid = parent(pid)
        except (OSError, ValueError, IndexError):
            continue
        if pid == os.getpid():
            found.append(int(entry))
    return found


@needs_ray
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the worker processes in /proc")
def test_a_worker_killed_mid_run_loses_and_repeats_nothing(local_ray, bundled, tmp_path):
    from skinmole.score import score

    images = sorted((ham10000_or_skip() / "images").glob("*.jpg"))[:300]
    listing = tmp_path / "images.txt"
    listing.write_text("".join(f"{p}\n" for p in images))
    killed = []

    def kill_one_worker(done, total):
        if not killed and done >= 16:
            workers = _score_workers()
            assert workers, "no score worker process found"
            os.kill(workers[0], signal.SIGKILL)
            killed.append((workers[0], done))

    out = tmp_path / "scores.parquet"
    report = score(listing, out, workers=2, batch_size=8, progress=kill_one_worker)
    assert killed and killed[0][1] < len(images), "the worker was not killed mid-run"
    assert not Path(f"/proc/{killed[0][0]}").exists()
    assert report.rows == report.scored == len(images) and report.errors == 0
    _assert_equals_predict(_read(out), [str(p) for p in images], bundled)

"""The ``skinmole`` command: JSON lines in input order, a table, exit codes, one-line errors.

``main([...])`` runs in-process (the model loads once); one test runs the installed console script.
Numbers are compared with ``--no-quality-check`` (NO_GATE) so that they hold whichever samples a
bundled model's quality gate refuses; a refusal's own output is checked with a stand-in.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import skinmole
from skinmole.cli import main
from skinmole.predict import Prediction
from skinmole.sample_images import sample_paths

from helpers import copy_model_folder, tamper  # noqa: E402

NO_GATE = "--no-quality-check"
JSON_KEYS = ("input", "malignant_probability", "label", "threshold", "diagnosis", "quality", "model")


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
    inputs = [good[0], str(empty), good[1], str(tmp_path / "missing.jpg"), good[2], str(text), good[3]]
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
    def fake_iter_predict(sources, model=None, **kw):
        for src in sources:
            yield src, _refused()

    monkeypatch.setattr(skinmole, "iter_predict", fake_iter_predict)  # the public name the CLI calls
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
    folder = copy_model_folder(skinmole.model.BUNDLED_MODEL, tmp_path / "m")
    tamper(folder / "model.weights.h5")
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


# --- folders, stdin, --output ------------------------------------------------------------------------

def test_a_folder_is_searched_recursively_in_sorted_order(capsys, tmp_path):
    """Image suffixes in any case, subfolders, sorted; hidden names and other files are skipped."""
    jpg = sample_paths()[0].read_bytes()
    for rel in ["b.jpg", "a.JPEG", "sub/c.png", "sub/deeper/d.jpg", "notes.txt", ".hidden.jpg", ".git/e.jpg"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(jpg if rel != "notes.txt" else b"text")
    assert main(["predict", str(tmp_path), "--json", NO_GATE]) == 0
    records = json_lines(capsys.readouterr().out)
    assert [Path(r["input"]).relative_to(tmp_path).as_posix() for r in records] == [
        "a.JPEG", "b.jpg", "sub/c.png", "sub/deeper/d.jpg"]


def test_the_samples_folder_and_stdin_both_answer_the_six_samples(capsys, monkeypatch):
    folder = sample_paths()[0].parent
    assert main(["predict", str(folder)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert sum(1 for line in table if ".jpg" in line) == 6 and "6 input(s)" in "\n".join(table)

    listing = "".join(f"{p}\n" for p in sorted(folder.glob("*.jpg")))
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(listing.encode())))
    assert main(["predict", "-", "--json"]) == 0
    captured = capsys.readouterr()
    records = json_lines(captured.out)
    assert [r["input"] for r in records] == listing.splitlines()
    assert all(set(r) == set(JSON_KEYS) for r in records)
    assert "6 input(s)" in captured.err and "not a diagnosis" in captured.err  # the summary: stderr


def test_stdin_paths_mix_with_arguments_and_blank_lines_are_skipped(capsys, monkeypatch):
    a, b, c = (str(p) for p in sample_paths()[:3])
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{b}\n\n{c}\r\n"))
    assert main(["predict", a, "-", a, "--json", NO_GATE]) == 0
    assert [r["input"] for r in json_lines(capsys.readouterr().out)] == [a, b, c, a]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes on this system")
def test_a_named_pipe_in_a_folder_is_an_error_line_not_a_hang(tmp_path):
    """A FIFO named like an image would block a reader forever: it is refused, the rest answered."""
    shutil.copy2(sample_paths()[0], tmp_path / "a.jpg")
    os.mkfifo(tmp_path / "b.jpg")
    shutil.copy2(sample_paths()[1], tmp_path / "c.jpg")
    run = subprocess.run(_command() + ["predict", str(tmp_path), "--json", NO_GATE], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 2, run.stderr
    records = json_lines(run.stdout)
    assert [Path(r["input"]).name for r in records] == ["a.jpg", "b.jpg", "c.jpg"]
    assert "error" in records[1] and "error" not in records[0] and "error" not in records[2]


def test_an_empty_folder_is_said_and_exits_2(capsys, tmp_path):
    (tmp_path / "readme.txt").write_text("no images here")
    assert main(["predict", str(tmp_path), "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"{tmp_path}: no image files" in captured.err


@pytest.mark.parametrize("as_json", [True, False])
def test_output_file(capsys, tmp_path, as_json, reference):
    out = tmp_path / "results.txt"
    path = str(sample_paths()[0])
    assert main(["predict", path, "--output", str(out), NO_GATE] + (["--json"] if as_json else [])) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "1 input(s)" in captured.err
    text = out.read_text()
    if as_json:
        (r,) = json_lines(text)
        assert r["input"] == path and r["malignant_probability"] == pytest.approx(reference[path], abs=1e-6)
    else:
        assert text.splitlines()[0].split()[:2] == ["input", "label"]
        assert f"{reference[path]:.3f}" in text and "1 input(s)" in text


def test_a_model_that_cannot_load_leaves_the_output_file_alone(capsys, tmp_path):
    out = tmp_path / "answers.jsonl"
    out.write_text("earlier answers\n")
    assert main(["predict", str(sample_paths()[0]), "--model", str(tmp_path / "none"), "--output", str(out)]) == 2
    assert out.read_text() == "earlier answers\n"
    assert "cannot load model" in capsys.readouterr().err


def test_output_file_that_cannot_be_written_is_one_line_exit_1(capsys, tmp_path):
    assert main(["predict", str(sample_paths()[0]), "--output", str(tmp_path / "no" / "such" / "dir.txt")]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("skinmole: cannot write") and "dir.txt" in err


def test_table_names_are_printable_only(capsys, tmp_path):
    """A newline or a terminal escape in a file name must not start a row or reach the terminal."""
    name = "evil\nnext row\x1b[2J\x07.jpg"
    (tmp_path / name).write_bytes(sample_paths()[0].read_bytes())
    missing = str(tmp_path / "gone\x1b]0;title\x07.jpg")
    assert main(["predict", str(tmp_path / name), missing, NO_GATE]) == 2
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    rows = out.splitlines()
    assert len(rows) == 1 + 2 + 1 + 2  # header, two inputs, blank line, summary, disclaimer
    assert "evil\\nnext row\\x1b[2J\\x07.jpg" in rows[1]
    assert rows[2].split()[1] == "error" and "gone\\x1b]0;title\\x07.jpg" in rows[2]


def test_predict_help_has_examples_and_exit_codes(capsys):
    assert main(["predict", "--help"]) == 0
    text = capsys.readouterr().out
    assert "examples:" in text and "skinmole predict - --json" in text.replace("ls *.jpg | ", "")
    for code in ("0", "2", "130", "1"):
        assert any(line.strip().startswith(code + " ") for line in text.splitlines()), code


def test_the_other_subcommands_are_listed(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for command in ("predict", "demo", "train", "evaluate", "fit-quality", "export-onnx", "publish"):
        assert f"    {command}" in text, command


# --- the process: output failures and Ctrl-C ---------------------------------------------------------

def _command() -> list[str]:
    return [sys.executable, "-m", "skinmole"]


def _one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full on this system")
def test_a_full_disk_is_one_line_and_exit_1():
    with open("/dev/full", "w") as full:
        run = subprocess.run(_command() + ["predict", str(sample_paths()[0]), "--json"], stdout=full,
                             stderr=subprocess.PIPE, text=True, timeout=300)
    assert run.returncode == 1
    assert "No space left" in _one_error_line(run.stderr)


def test_a_closed_stdout_is_one_line_and_exit_1():
    run = subprocess.run(_command() + ["predict", str(sample_paths()[0]), "--json"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, timeout=300, close_fds=True,
                         preexec_fn=lambda: os.close(1))
    assert run.returncode == 1
    assert "stdout" in _one_error_line(run.stderr)


def test_a_reader_that_goes_away_is_one_line_and_exit_1():
    """`skinmole predict ... | head -1`: the pipe closes after the first line."""
    paths = [str(p) for p in sample_paths()] * 50
    proc = subprocess.Popen(_command() + ["predict", *paths, "--json", "--batch-size", "1", NO_GATE],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        proc.stdout.readline()
        proc.stdout.close()
        assert proc.wait(timeout=300) == 1
        assert "Broken pipe" in _one_error_line(proc.stderr.read())
    finally:
        proc.kill()
        proc.stderr.close()


def test_ctrl_c_while_waiting_for_stdin_exits_130_with_one_line():
    """Paths arrive on stdin and stdin stays open: after the first answers the command waits for more.
    Ctrl-C then stops it at once with one line; the answers already given stay on stdout."""
    proc = subprocess.Popen(_command() + ["predict", "-", "--json", "--batch-size", "1", NO_GATE],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_sigint_default)
    try:
        paths = [str(p) for p in sample_paths()] * 5  # more than the chunks decoded ahead on any machine
        proc.stdin.write("".join(f"{p}\n" for p in paths))
        proc.stdin.flush()
        first = json.loads(proc.stdout.readline())
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130
        assert first["input"] == paths[0]
        assert _one_error_line(proc.stderr.read()) == "skinmole: interrupted"
    finally:
        proc.kill()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            stream.close()


def _sigint_default():
    """In the child: Ctrl-C as in a terminal, even when the test runner was started with SIGINT
    ignored (a background job, some CI harnesses), which the CLI rightly keeps ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _wait_until_mapped(pid: int, library: str, timeout: float = 60.0) -> bool:
    """True once the process has loaded a shared library whose path contains ``library``."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if library in Path(f"/proc/{pid}/maps").read_text():
                return True
        except OSError:
            return False
        time.sleep(0.002)
    return False


@pytest.mark.parametrize("library", ["_multiarray_umath", "onnxruntime_pybind11_state"])
def test_ctrl_c_during_start_up_imports_exits_130_with_one_line(library):
    """The console script (skinmole_launcher) handles SIGINT before `import skinmole` starts, so an
    interrupt that lands inside numpy's or onnxruntime's import is one line and exit 130, never a
    traceback, never a silent fallback to Keras (issue 13 item 4). The signal is sent the moment the
    library is mapped, i.e. while its import runs."""
    exe = Path(sys.executable).parent / "skinmole"
    if not exe.is_file() or not Path("/proc/self/maps").is_file():
        pytest.skip("needs the installed skinmole console script and /proc")
    proc = subprocess.Popen([str(exe), "predict", str(sample_paths()[0]), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_sigint_default)
    try:
        assert _wait_until_mapped(proc.pid, library), f"{library} was never loaded"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130
        err = proc.stderr.read()
        assert "Traceback" not in err and _one_error_line(err) == "skinmole: interrupted"
        assert proc.stdout.read() == ""
    finally:
        proc.kill()
        proc.stdout.close()
        proc.stderr.close()


def test_the_cli_engine_choices_are_the_library_engines():
    """``--engine``'s choices are written out (the CLI parses without numpy): they must stay the library's."""
    from skinmole.commands import ENGINE_CHOICES
    from skinmole.engines import ENGINES

    assert sorted(ENGINE_CHOICES) == sorted(ENGINES)

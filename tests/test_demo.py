"""The Gradio demo (demo/app.py) against a live local server: gradio_client, raw HTTP, a real browser."""

import io
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

gr = pytest.importorskip("gradio", reason="the demo extra (gradio) is not installed")
gradio_client = pytest.importorskip("gradio_client", reason="gradio_client (dev extra) is not installed")

from helpers import free_port, load_script  # noqa: E402

import skinmole  # noqa: E402
from skinmole.predict import Prediction  # noqa: E402
from skinmole.sample_images import SAMPLES, sample_paths  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:::gradio.queueing")

CHROMIUM = "/usr/bin/chromium"
TO_DICT_KEYS = set(Prediction(0.5, "benign", 0.5, None).to_dict())


@pytest.fixture(scope="module")
def demo():
    return load_script("demo/app.py")


@pytest.fixture(scope="module")
def server(demo):
    model = demo.load_demo_model(None)
    app = demo.build_app(model)
    port = free_port()
    demo.launch(app, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield {"url": f"http://127.0.0.1:{port}/", "model": model, "app": app}
    finally:
        app.close()


@pytest.fixture(scope="module")
def client(server):
    return gradio_client.Client(server["url"], verbose=False)


def _predict(client, path):
    return client.predict(gradio_client.handle_file(str(path)), api_name="/predict")


def _uploads_named(demo, name):
    return list(demo._upload_folder().rglob(name))


def test_real_image_returns_a_probability_with_the_to_dict_keys(server, client):
    path = sample_paths()[3]
    verdict, diff, heat, result = _predict(client, path)
    assert set(result) == TO_DICT_KEYS
    assert result["quality"].get("accepted", True), result["quality"]
    assert 0.0 <= result["malignant_probability"] <= 1.0
    assert result["label"] in ("benign", "malignant") and result["label"] in verdict
    # The demo does no preprocessing of its own: it answers exactly what the library answers.
    direct = skinmole.predict(path, server["model"])
    assert result["malignant_probability"] == pytest.approx(direct.malignant_probability, abs=1e-6)
    assert "data:image/jpeg;base64," in heat
    if result["diagnosis"] is not None:
        assert len(diff["confidences"]) == len(server["model"].class_names)


def test_upload_is_deleted_after_the_request(demo, client, tmp_path):
    path = tmp_path / "my_private_mole.png"  # re-encoded, so not byte-identical to a public sample
    Image.open(sample_paths()[0]).save(path)
    _, _, _, result = _predict(client, path)
    assert result["malignant_probability"] is not None
    assert _uploads_named(demo, path.name) == []


def test_broken_upload_is_a_clear_error_and_the_server_keeps_answering(demo, client, tmp_path):
    broken = tmp_path / "broken_mole.jpg"
    broken.write_text("this is a text file, not a JPEG")
    with pytest.raises(gradio_client.exceptions.AppError, match="could not be read as an image"):
        _predict(client, broken)
    assert _uploads_named(demo, broken.name) == []
    _, _, _, result = _predict(client, sample_paths()[1])
    assert 0.0 <= result["malignant_probability"] <= 1.0


def test_oversize_upload_is_refused_and_the_server_keeps_answering(demo, server, client):
    import httpx

    limit = int(demo.MAX_UPLOAD_MB * 1024 * 1024)
    files = {"files": ("huge.jpg", io.BytesIO(b"\xff" * (limit + 1024)), "image/jpeg")}
    response = httpx.post(server["url"] + "gradio_api/upload", files=files, timeout=60)
    assert response.status_code == 413, response.text
    assert "size" in response.text.lower()
    _, _, _, result = _predict(client, sample_paths()[2])
    assert 0.0 <= result["malignant_probability"] <= 1.0


def test_eight_simultaneous_visitors_all_get_answers(server):
    results, errors = [], []

    def visit(i):
        try:
            c = gradio_client.Client(server["url"], verbose=False)
            results.append(_predict(c, sample_paths()[i % len(SAMPLES)])[3])
        except Exception as exc:  # collected, reported below
            errors.append(exc)

    threads = [threading.Thread(target=visit, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert len(results) == 8 and all(0 <= r["malignant_probability"] <= 1 for r in results)


def test_discard_upload_only_touches_uploads(demo, tmp_path):
    outside = tmp_path / "not_an_upload.jpg"
    outside.write_bytes(b"keep me")
    demo.discard_upload(str(outside))
    assert outside.exists()  # never deletes outside Gradio's upload folder, whatever path it is given
    folder = demo._upload_folder() / "skinmole-test-upload"
    folder.mkdir(parents=True, exist_ok=True)
    upload = folder / "mole.jpg"
    upload.write_bytes(b"private")
    demo.discard_upload(str(upload))
    assert not upload.exists() and not folder.exists()


# --- the page's words, without a server ---------------------------------------------------------

def test_plain_rates(demo):
    assert demo.plain_rate(0.9) == "about 9 of every 10"
    assert demo.plain_rate(0.25) == "about 1 in 4"
    assert demo.plain_rate(0.8) == "about 8 of every 10"
    assert demo.plain_rate(0.97) == "about 19 of every 20"
    assert demo.plain_rate(0.0) == "none" and demo.plain_rate(1.0) == "all"


def test_threshold_text_prefers_test_metrics(demo):
    config = {"threshold": 0.31, "metrics": {"val": {"sensitivity": 0.5, "specificity": 0.5},
                                            "test": {"sensitivity": 0.9, "specificity": 0.75, "n": 1500}}}
    text = demo.threshold_text(config)
    assert "31%" in text and "test set" in text and "1500 images" in text
    assert "about 9 of every 10 malignant" in text and "about 1 in 4 benign" in text
    del config["metrics"]["test"]
    assert "validation set" in demo.threshold_text(config)
    assert "no measured" in demo.threshold_text({"threshold": 0.3})


def test_model_source_comes_from_the_environment(demo, monkeypatch):
    monkeypatch.delenv("SKINMOLE_MODEL", raising=False)
    assert demo.model_source() is None
    monkeypatch.setenv("SKINMOLE_MODEL", "someorg/skinmole-model")
    assert demo.model_source() == "someorg/skinmole-model"


def test_refused_image_shows_the_issues_not_a_probability(demo):
    pred = Prediction(None, None, 0.4, None,
                      quality={"accepted": False, "issues": ["The image is too dark."]})
    text = demo.verdict_text(pred)
    assert "not assessed" in text and "The image is too dark." in text and "%" not in text


# --- a real browser ----------------------------------------------------------------------------

def test_browser_upload_example_analyse_label_and_heatmap(server, tmp_path):
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.skip("no browser: Debian's chromium is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (dev extra) is not installed")
    upload = tmp_path / "upload_test.png"
    Image.open(sample_paths()[4]).save(upload)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium"),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(server["url"])
            page.wait_for_selector("#analyse", timeout=30_000)
            assert "Not a diagnostic device" in page.inner_text("#notice")

            # 1. upload a file through the image input
            page.set_input_files("#image-input input[type=file]", str(upload))
            page.wait_for_selector("#image-input img", timeout=20_000)
            page.click("#analyse")
            page.wait_for_selector("#heatmap img", timeout=30_000)
            assert "Resembles" in page.inner_text("#verdict")

            # 2. an example, then analyse again: the answer changes to the example's
            s = SAMPLES[3]
            page.get_by_text(f"{s.dx} ({s.label}, {s.file[:-4]})").click()
            page.wait_for_timeout(500)
            before = page.get_attribute("#heatmap img", "src")
            page.click("#analyse")
            page.wait_for_function(
                "src => { const i = document.querySelector('#heatmap img'); return i && i.src !== src; }",
                arg=before, timeout=30_000)
            verdict = page.inner_text("#verdict")
            assert "malignant" in verdict or "benign" in verdict
            if "mel" in server["model"].class_names:
                assert "melanoma (mel)" in page.inner_text("#differential")
            assert page.locator("#heatmap img").evaluate("i => i.complete && i.naturalWidth > 0")
            shot = tmp_path / "demo.png"
            page.screenshot(path=str(shot), full_page=True)
            print(f"screenshot: {shot}")
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
    assert np.asarray(Image.open(shot)).std() > 10  # not a blank page

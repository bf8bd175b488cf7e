"""skinmole demo: upload a dermoscopic image of a mole, see how much it resembles malignant lesions,
how sure the model is, and which part of the image drove the answer.

Run ``python demo/app.py`` (or ``python app.py`` inside a Space folder next to an installed skinmole).
Environment:
  SKINMOLE_MODEL         any ``skinmole.load_model`` source (a model folder or a Hub repo id ORG/NAME);
                         unset = the model bundled with the package.
  GRADIO_SERVER_NAME     interface to listen on (default 127.0.0.1; a Space sets 0.0.0.0).
  GRADIO_SERVER_PORT     port (default 7860, or the next free one).
  SKINMOLE_MAX_UPLOAD_MB largest accepted upload in MB (default 15).

Uploads are health data, so the app keeps nothing:
  - no flagging (a ``gr.Blocks`` app has no flag button) and no run history (``run_history=False``);
  - the image input is handed to the handler unprocessed (``preprocess=False``), so Gradio never writes
    a converted copy; the handler decodes the upload with ``skinmole.load_image`` and deletes the
    uploaded file (and its folder) in a ``finally`` block, whatever the outcome. The bundled example
    images are public and are never deleted;
  - the Grad-CAM overlay is sent inline as a data: URL (``gr.HTML``), never written to disk;
  - ``delete_cache`` sweeps uploads that were never analysed (older than 5 minutes, every minute) and
    Gradio removes its whole cache when the server stops.
Only the library's public API is used: the demo does no image preprocessing of its own.
"""

from __future__ import annotations

import base64
import functools
import html
import io
import logging
import os
from pathlib import Path

import gradio as gr
import numpy as np
from PIL import Image

import skinmole
from skinmole import InvalidImageError
from skinmole.model import sha256_file
from skinmole.sample_images import SAMPLES, sample_paths

log = logging.getLogger("skinmole.demo")

MAX_UPLOAD_MB = float(os.environ.get("SKINMOLE_MAX_UPLOAD_MB", "15"))
CONCURRENCY = 2      # requests computed at once (2 CPU cores are the usual host); the rest wait in the queue
QUEUE_SIZE = 64      # visitors that may wait; beyond this Gradio answers "queue full"
SWEEP = (60, 300)    # delete_cache: every 60 s, remove uploads older than 300 s
DISPLAY_SIDE = 640   # the overlay sent to the browser is at most this many pixels wide/high

NOTICE = (
    "**Not a diagnostic device.** skinmole says how much a dermoscopic image resembles the malignant "
    "lesions it was trained on (the HAM10000 data set); it can be wrong in both directions. "
    "**Any mole that is new, changing, bleeding, itching or worrying you needs a dermatologist, "
    "whatever this model says.** A 'benign' answer is no reason to skip a check-up."
)

CSS = """
.notice {border-left: 6px solid #b91c1c; background: #fef2f2; padding: 0.6em 1em; border-radius: 6px;}
.notice, .notice * {color: #450a0a !important;}
#verdict h3 {margin-top: 0;}
#heatmap img {width: 100%; max-width: 480px; height: auto; border-radius: 6px;}
#heatmap figcaption {font-size: 0.9em; opacity: 0.8;}
"""

THEME = gr.themes.Soft(primary_hue="rose", secondary_hue="slate")


# ---------------------------------------------------------------------------------------------
# The model


def load_demo_model(source=None):
    """Load the model once and run one warm-up prediction and explanation, so that the lazy parts
    (engine, Grad-CAM sub-model) are built before visitors arrive and never concurrently."""
    # None: the bundled model, through the library's per-process cache (shared with predict()).
    model = skinmole.load_model(source)  # None: the bundled model, loaded once per process
    warm = sample_paths()[0]
    skinmole.predict(warm, model)
    skinmole.explain(warm, model)
    return model


# ---------------------------------------------------------------------------------------------
# Plain-language numbers


def plain_rate(rate: float) -> str:
    """0.9 -> 'about 9 of every 10', 0.25 -> 'about 1 in 4'."""
    if rate <= 0:
        return "none"
    if rate >= 1:
        return "all"
    if rate < 0.5:
        n = round(1 / rate)
        if abs(1 / n - rate) <= 0.03:
            return f"about 1 in {n}"
    for d in (10, 20, 100):
        k = round(rate * d)
        if 0 < k < d and abs(k / d - rate) <= 0.025:
            return f"about {k} of every {d}"
    return f"about {max(1, min(99, round(rate * 100)))} of every 100"


def threshold_text(config: dict) -> str:
    """The operating threshold in plain words, from the model's own measured metrics
    (the test split when the config has it, else validation)."""
    threshold = float(config["threshold"])
    metrics = config.get("metrics") or {}
    head = (f"**Operating threshold: {threshold:.0%}.** An image whose malignant probability is at "
            "or above it is labelled *malignant*.")
    for split, split_name, caveat in (
            ("test", "test", "The test images were never used for training or tuning."),
            ("val", "validation", "These validation images were used to choose the threshold, so "
                                  "expect somewhat worse on new images.")):
        m = metrics.get(split) or {}
        sens, spec = m.get("sensitivity"), m.get("specificity")
        if sens is None or spec is None:
            continue
        sens, spec = float(sens), float(spec)
        n = f"; {m['n']} images" if m.get("n") else ""
        return (f"{head} At this threshold the model finds {plain_rate(sens)} malignant lesions in "
                f"its {split_name} set (sensitivity {sens:.0%}) and flags {plain_rate(1 - spec)} benign "
                f"ones as malignant (specificity {spec:.0%}{n}). {caveat} Lowering the threshold would "
                "miss fewer malignant lesions and flag more benign ones.")
    return f"{head} This model's config records no measured sensitivity or specificity."


def _issue_text(issue) -> str:
    if isinstance(issue, dict):
        return str(issue.get("message") or issue.get("detail") or issue.get("code") or issue)
    return str(issue)


def verdict_text(pred) -> str:
    quality = pred.quality or {}
    issues = [_issue_text(i) for i in quality.get("issues") or []]
    if pred.malignant_probability is None or not quality.get("accepted", True):
        lines = ["### Image not assessed",
                 "The image did not pass the quality check, so no probability is shown:"]
        lines += [f"- {i}" for i in issues] or ["- (no reason given)"]
        lines.append("\nTry a sharp, well-lit, close-up dermoscopic image of a single mole.")
        return "\n".join(lines)
    p = pred.malignant_probability
    word = "malignant" if pred.label == "malignant" else "benign"
    out = (f"### Resembles **{word}** lesions\n"
           f"Malignant probability **{p:.0%}** (labelled malignant from {pred.threshold:.0%}). "
           "This is how much the image resembles the malignant lesions of the training data, "
           "not a diagnosis.")
    if issues:
        out += "\n\n**Quality warnings:**\n" + "\n".join(f"- {i}" for i in issues)
    return out


def differential(pred, model) -> dict | None:
    if not pred.diagnosis:
        return None
    names = model.config.get("class_descriptions") or {}
    return {f"{names.get(c, c)} ({c})": float(p) for c, p in pred.diagnosis.items()}


# ---------------------------------------------------------------------------------------------
# Uploads: read once, then delete


def _sha256(path: Path) -> str | None:
    try:
        return sha256_file(path)
    except OSError:
        return None


@functools.cache
def _samples_by_name() -> dict[str, str | None]:
    """An upload of an example's exact bytes under its name lands on the example's own cache path
    (Gradio names upload folders by content hash), so those files are left alone: public images.
    Hashed at the first upload, not at import."""
    return {p.name: _sha256(p) for p in sample_paths()}


def _upload_folder() -> Path:
    # Where Gradio writes uploads (the same rule Gradio uses).
    import tempfile

    return Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio").resolve()


def discard_upload(path) -> None:
    """Delete an uploaded file (and its now-empty folder). Only files inside Gradio's upload folder
    are touched, and never the public example images."""
    if not path:
        return
    p = Path(path).resolve()
    root = _upload_folder()
    if root not in p.parents or not p.is_file():
        return
    samples = _samples_by_name()
    if p.name in samples and _sha256(p) == samples[p.name]:
        return
    try:
        p.unlink()
        if p.parent != root and not any(p.parent.iterdir()):
            p.parent.rmdir()
    except OSError as exc:  # already gone (another request, the sweep): nothing to keep anyway
        log.debug("could not delete upload: %s", exc)


def _payload_path(upload) -> tuple[str | None, str]:
    if isinstance(upload, dict):
        return upload.get("path"), upload.get("orig_name") or "the upload"
    if isinstance(upload, (str, Path)):
        return str(upload), "the upload"
    return None, "the upload"


# ---------------------------------------------------------------------------------------------
# The request


def _heatmap_html(rgb: np.ndarray, model) -> str:
    heat = skinmole.explain(rgb, model)
    over = Image.fromarray(skinmole.overlay(rgb, heat))
    over.thumbnail((DISPLAY_SIDE, DISPLAY_SIDE))
    buf = io.BytesIO()
    over.save(buf, format="JPEG", quality=88)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return (f'<figure><img alt="Grad-CAM heatmap overlay" src="data:image/jpeg;base64,{data}"/>'
            "<figcaption>Grad-CAM: red areas pushed the score towards malignant, blue ones did not. "
            "A coarse hint about where the model looked, not a segmentation.</figcaption></figure>")


def _user_error(message: str, title: str) -> gr.Error:
    """An error the visitor sees in a pop-up. Gradio renders it as HTML, so it is escaped (it can
    hold the upload's file name), and no traceback is printed: these are expected events."""
    return gr.Error(html.escape(message), title=title, print_exception=False)


def analyse(upload, model):
    """One request: decode, predict, explain. Returns (verdict, differential, heatmap, JSON)."""
    path, name = _payload_path(upload)
    if path is None:
        raise _user_error("Upload, photograph or paste an image of the mole first (or pick an example).",
                          title="No image")
    try:
        try:
            size = Path(path).stat().st_size
        except OSError:
            raise _user_error("The upload is no longer on the server (uploads are deleted after a few "
                              "minutes). Please upload the image again.", title="Upload expired") from None
        if size > MAX_UPLOAD_MB * 1024 * 1024:
            raise _user_error(f"{name} is {size / 2**20:.1f} MB; the limit is {MAX_UPLOAD_MB:g} MB.",
                              title="File too large")
        try:
            rgb = skinmole.load_image(path, name=Path(name).name)
        except InvalidImageError as exc:
            raise _user_error(f"This file could not be read as an image ({exc}). Please upload a JPEG or "
                              "PNG photo of the mole.", title="Not an image") from None
    finally:
        discard_upload(path)
    try:
        pred = skinmole.predict(rgb, model)
        accepted = pred.malignant_probability is not None
        heat = _heatmap_html(rgb, model) if accepted else ""
    except Exception:  # never a stack trace in the browser; the log keeps it (not the image)
        log.exception("prediction failed")
        raise _user_error("Something went wrong while analysing this image. Please try another one.",
                          title="Analysis failed") from None
    return verdict_text(pred), differential(pred, model), heat, pred.to_dict()


# ---------------------------------------------------------------------------------------------
# The page


def _model_line(model) -> str:
    c = model.config
    bits = [f"{c.get('name') or 'model'} {c.get('version', '')}".strip(), c["architecture"],
            f"{model.input_size} px"]
    return "Model: " + ", ".join(bits) + (f". Licence: {c['licence']}" if c.get("licence") else "")


def build_app(model) -> gr.Blocks:
    """The demo's Blocks for an already loaded model (launch it with ``launch(app)``)."""
    # A 7-class head answers a differential; a one-logit binary head does not.
    has_differential = skinmole.predict(sample_paths()[0], model, check_quality=False).diagnosis is not None
    with gr.Blocks(title="skinmole", analytics_enabled=False, delete_cache=SWEEP) as app:
        gr.Markdown("# skinmole\nHow much does a dermoscopic image of a mole resemble malignant lesions?")
        gr.Markdown(NOTICE, elem_classes=["notice"], elem_id="notice")
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(label="Mole image (upload, webcam or paste)",
                                 sources=["upload", "webcam", "clipboard"], type="filepath",
                                 elem_id="image-input", height=360)
                button = gr.Button("Analyse", variant="primary", elem_id="analyse")
                gr.Examples(
                    examples=[[str(p)] for p in sample_paths()],
                    example_labels=[f"{s.dx} ({s.label}, {s.file[:-4]})" for s in SAMPLES],
                    inputs=[image], label="Examples: HAM10000 test-split images, diagnosis confirmed "
                                          "by histopathology",
                )
                gr.Markdown(
                    "Example images: HAM10000 (Tschandl, Rosendahl & Kittler, *Sci. Data* 5, 180161, "
                    "2018, https://doi.org/10.1038/sdata.2018.161), via the ISIC Archive, licensed "
                    "CC BY-NC 4.0.", elem_id="attribution")
            with gr.Column(scale=1):
                verdict = gr.Markdown("Choose an image and press **Analyse**.", label="verdict",
                                      elem_id="verdict")
                diff = gr.Label(label="Differential: probability of each diagnosis", num_top_classes=7,
                                show_heading=False,
                                visible=has_differential, elem_id="differential")
                heatmap = gr.HTML(label="heatmap", elem_id="heatmap")
                gr.Markdown(threshold_text(model.config), elem_id="threshold")
                with gr.Accordion("Raw result (JSON)", open=False):
                    raw = gr.JSON(label="prediction", elem_id="raw")
        gr.Markdown(_model_line(model) + ". Uploaded images are deleted right after analysis and "
                    "are never stored or logged.", elem_id="model-line")
        button.click(lambda upload: analyse(upload, model), inputs=[image],
                     outputs=[verdict, diff, heatmap, raw], api_name="predict", preprocess=False,
                     concurrency_limit=CONCURRENCY)
    app.queue(max_size=QUEUE_SIZE, default_concurrency_limit=CONCURRENCY)
    return app


def launch(app: gr.Blocks, **overrides):
    """Launch with the demo's serving settings; keyword arguments override them (tests pass a port
    and ``prevent_thread_lock=True``)."""
    kwargs = dict(
        server_name=os.environ.get("GRADIO_SERVER_NAME") or "127.0.0.1",
        server_port=int(os.environ["GRADIO_SERVER_PORT"]) if os.environ.get("GRADIO_SERVER_PORT") else None,
        max_file_size=f"{MAX_UPLOAD_MB:g}mb",
        run_history=False,
        show_error=False,
        footer_links=["api"],
        theme=THEME,
        css=CSS,
    )
    kwargs.update(overrides)
    return app.launch(**kwargs)


def model_source() -> str | None:
    """The model to serve: ``SKINMOLE_MODEL`` (any ``skinmole.load_model`` source), else None (bundled)."""
    return os.environ.get("SKINMOLE_MODEL", "").strip() or None


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    source = model_source()
    try:
        model = load_demo_model(source)
    except skinmole.ModelLoadError as exc:
        raise SystemExit(f"skinmole demo: cannot load the model ({exc})") from None
    print(f"skinmole demo: {model!r} from {source or 'the bundled model'}", flush=True)
    launch(build_app(model))


if __name__ == "__main__":
    main()

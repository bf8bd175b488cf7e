"""skinmole demo: upload a dermoscopic image of a mole, see how much it resembles malignant lesions,
how sure the model is, and which part of the image (if any) drove the answer.

Run ``skinmole demo [--model SOURCE]`` (or ``python -m skinmole.demo_app``; a Space's ``app.py`` calls
``main()``). Environment:
  SKINMOLE_MODEL         any ``skinmole.load_model`` source (a model folder or a Hub repo id ORG/NAME);
                         unset = the model bundled with the package. ``--model`` wins over it.
  GRADIO_SERVER_NAME     interface to listen on (default 127.0.0.1; a Space sets 0.0.0.0).
  GRADIO_SERVER_PORT     port (default 7860, or the next free one).
  SKINMOLE_MAX_UPLOAD_MB largest accepted upload in MB (default 15).
  GRADIO_TEMP_DIR        the folder in which the demo makes its private upload folder (else TMPDIR,
                         else the system's temporary folder); the demo then points Gradio inside it.

Uploads are health data, so the app keeps nothing:
  - no flagging (a ``gr.Blocks`` app has no flag button), no run history, analytics off;
  - Gradio writes uploads only into the demo's own folder, ``<tmp>/skinmole-demo-<uid>/<pid>``
    (mode 0700; ``GRADIO_TEMP_DIR`` is set to it before any component is made), so the demo can remove it whole without touching
    anyone else's files. At start-up the folders of earlier runs that are no longer running are
    removed (a crash or ``kill -9`` leaves one behind); on SIGTERM/SIGHUP (``docker stop``, a Space
    restart) and Ctrl-C the folder is removed before the process exits;
  - the image input is handed to the handler unprocessed (``preprocess=False``), so Gradio never
    writes a converted copy; the handler decodes the upload with ``skinmole.load_image`` and deletes
    the uploaded file in a ``finally`` block, whatever the outcome. The bundled example images are
    public and are never deleted;
  - ``delete_cache`` sweeps uploads that were never analysed (older than 5 minutes, every minute);
  - the Grad-CAM overlay is sent inline as a data: URL (``gr.HTML``), never written to disk.
Memory per request is bounded by the decoded upload: the picture shown is shrunk to DISPLAY_SIDE
first and the Grad-CAM map is computed at that size, never at the upload's full resolution.
Only the library's public API is used: the demo does no image preprocessing of its own.
"""

from __future__ import annotations

import argparse
import base64
import functools
import html
import io
import logging
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

# The package first: importing it turns telemetry off (Gradio's analytics included) before gradio loads.
from . import InvalidImageError, ModelLoadError, explain, load_image, load_model, overlay, predict
from . import ham10000
from .explain import MIN_LOG_ODDS_SHARE
from .model import sha256_file
from .sample_images import SAMPLES, sample_paths
from .wording import NOT_A_DIAGNOSIS, operating_point

import gradio as gr  # after the package, see above

log = logging.getLogger("skinmole.demo")

MAX_UPLOAD_MB = float(os.environ.get("SKINMOLE_MAX_UPLOAD_MB", "15"))
CONCURRENCY = 2      # requests computed at once (2 CPU cores are the usual host); the rest wait in the queue
QUEUE_SIZE = 64      # visitors that may wait; beyond this Gradio answers "queue full"
SWEEP = (60, 300)    # delete_cache: every 60 s, remove uploads older than 300 s
DISPLAY_SIDE = 640   # the picture sent back is at most this many pixels wide/high; Grad-CAM is drawn at it
TEMP_BASE = os.environ.get("GRADIO_TEMP_DIR") or None  # read before the demo points it at its own folder

CSS = """
.notice {border-left: 6px solid #b91c1c; background: #fef2f2; padding: 0.6em 1em; border-radius: 6px;}
.notice, .notice * {color: #450a0a !important;}
#verdict h3 {margin-top: 0;}
#heatmap img {width: 100%; max-width: 480px; height: auto; border-radius: 6px;}
#heatmap figcaption, #heatmap p {font-size: 0.9em; opacity: 0.85;}
/* A phone stacks the columns: keep the input short so the verdict is on the first screen. */
@media (max-width: 640px) {
  #image-input {height: 190px !important;}
  .notice {font-size: 0.85em; padding: 0.4em 0.7em;}
}
"""

THEME = gr.themes.Soft(primary_hue="rose", secondary_hue="slate")

HEATMAP_CAPTION = (
    "Grad-CAM: the yellow areas pushed the score towards malignant most, green ones less, dark blue "
    "ones not at all. A coarse hint about where the model looked, not a segmentation.")
NO_REGION = (
    "<strong>Grad-CAM: no region stands out.</strong> No part of the image raised the odds of malignant "
    "by {pct:.0%} or more on its own, so no heatmap is drawn: the answer does not rest on one spot "
    "the model could point to.")


# ---------------------------------------------------------------------------------------------
# A private upload folder, removed at every kind of stop


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def _private_root() -> Path:
    """``<tmp>/skinmole-demo-<uid>``, ours alone (mode 0700); refused if someone else made it."""
    root = Path(TEMP_BASE or tempfile.gettempdir()) / f"skinmole-demo-{os.getuid()}"
    root.parent.mkdir(parents=True, exist_ok=True)
    root.mkdir(mode=0o700, exist_ok=True)
    info = root.lstat()
    if root.is_symlink() or info.st_uid != os.getuid():
        raise SystemExit(f"skinmole demo: {root} is not this user's own folder; remove it or set "
                         "GRADIO_TEMP_DIR")
    root.chmod(0o700)
    return root


@functools.cache
def private_upload_folder() -> Path:
    """This process's upload folder (made once per process), after removing what earlier runs left:
    the folders of processes no longer running, and a stale folder under our own pid (a container
    restarts with the same pid). Sets ``GRADIO_TEMP_DIR`` so that Gradio writes only there."""
    root = _private_root()
    for child in root.iterdir():
        if child.name.isdigit() and (int(child.name) == os.getpid() or not _pid_running(int(child.name))):
            shutil.rmtree(child, ignore_errors=True)
    folder = root / str(os.getpid())
    folder.mkdir(mode=0o700)
    os.environ["GRADIO_TEMP_DIR"] = str(folder)
    return folder


def remove_upload_folder() -> None:
    """Remove this process's upload folder and everything in it (uploads never analysed included)."""
    if private_upload_folder.cache_info().currsize:
        shutil.rmtree(private_upload_folder(), ignore_errors=True)


def _stop(signum, frame):  # noqa: ARG001 - signal handler signature
    remove_upload_folder()  # first, whatever happens next
    raise SystemExit(128 + signum)


def remove_uploads_on_stop() -> None:
    """SIGTERM and SIGHUP remove the upload folder and exit; Ctrl-C and a normal exit reach the
    ``finally`` in ``main``."""
    for name in ("SIGTERM", "SIGHUP"):  # Windows has no SIGHUP
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), _stop)


# ---------------------------------------------------------------------------------------------
# The page's words


def _percent(p: float) -> str:
    return f"{p:.0%}"


def sum_text(pred, model) -> str:
    """Why the verdict and the differential's top bar can disagree: P(malignant) is a sum."""
    if not pred.diagnosis:
        return ""
    names = model.config.get("class_descriptions") or {}
    parts = sorted(((pred.diagnosis[c], names.get(c, c)) for c in model.malignant_classes),
                   reverse=True)
    terms = " + ".join(f"{name} {_percent(p)}" for p, name in parts)
    return (f"The malignant probability is the sum of the malignant diagnoses in the differential: "
            f"{terms} = {_percent(pred.malignant_probability)} (each rounded). The label follows this "
            "sum, not the differential's top bar.")


def _issue_text(issue) -> str:
    if isinstance(issue, dict):
        return str(issue.get("message") or issue.get("detail") or issue.get("code") or issue)
    return str(issue)


def verdict_text(pred, model=None) -> str:
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
           f"Malignant probability **{_percent(p)}** (labelled malignant from {_percent(pred.threshold)}). "
           "This is how much the image resembles the malignant lesions of the training data, "
           "not a diagnosis.")
    if model is not None and pred.diagnosis:
        out += "\n\n" + sum_text(pred, model)
    if issues:
        out += "\n\n**Quality warnings:**\n" + "\n".join(f"- {i}" for i in issues)
    return out


def differential(pred, model) -> dict | None:
    if not pred.diagnosis:
        return None
    names = model.config.get("class_descriptions") or {}
    return {f"{names.get(c, c)} ({c})": float(p) for c, p in pred.diagnosis.items()}


def examples_label() -> str:
    order = ", ".join(f"{i}. {s.dx} ({s.label})" for i, s in enumerate(SAMPLES, 1))
    return (f"Examples, left to right: {order}. HAM10000 test-split images, diagnosis confirmed by "
            "histopathology")


def _model_line(model) -> str:
    c = model.config
    bits = [f"{c.get('name') or 'model'} {c.get('version', '')}".strip(), c["architecture"],
            f"{model.input_size} px"]
    return "Model: " + ", ".join(bits) + (f". Licence: {c['licence']}" if c.get("licence") else "")


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
    # Where Gradio writes uploads (the same rule Gradio uses); the demo's private folder once set.
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


def display_image(rgb: np.ndarray) -> np.ndarray:
    """The picture as shown: at most DISPLAY_SIDE pixels a side (the upload's own size if smaller)."""
    im = Image.fromarray(rgb)
    im.thumbnail((DISPLAY_SIDE, DISPLAY_SIDE), Image.BILINEAR)
    return np.asarray(im)


def heatmap_html(rgb: np.ndarray, model) -> str:
    """The Grad-CAM overlay as an inline image, or a sentence when no region stands out. The map is
    computed and drawn at the display size only (a huge upload never gets a full-size map)."""
    shown = display_image(rgb)
    heat = explain(rgb, model, size=(shown.shape[1], shown.shape[0]))
    if not heat.stands_out:
        return f'<p id="no-region">{NO_REGION.format(pct=float(np.expm1(MIN_LOG_ODDS_SHARE)))}</p>'
    buf = io.BytesIO()
    Image.fromarray(overlay(shown, heat)).save(buf, format="JPEG", quality=88)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return (f'<figure><img alt="Grad-CAM heatmap overlay" src="data:image/jpeg;base64,{data}"/>'
            f"<figcaption>{HEATMAP_CAPTION}</figcaption></figure>")


def _user_error(message: str, title: str) -> gr.Error:
    """An error the visitor sees in a pop-up. Gradio renders it as HTML, so it is escaped (it can
    hold the upload's file name), and no traceback is printed: these are expected events."""
    return gr.Error(html.escape(message), title=title, print_exception=False)


def analyse(upload, model):
    """One request: decode, predict, explain. Returns (verdict, differential, heatmap, to_dict())."""
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
            rgb = load_image(path, name=Path(name).name)
        except InvalidImageError as exc:
            raise _user_error(f"This file could not be read as an image ({exc}). Please upload a JPEG or "
                              "PNG photo of the mole.", title="Not an image") from None
    finally:
        discard_upload(path)
    try:
        pred = predict(rgb, model)
        accepted = pred.malignant_probability is not None
        heat = heatmap_html(rgb, model) if accepted else ""
    except Exception:  # never a stack trace in the browser; the log keeps it (not the image)
        log.exception("prediction failed")
        raise _user_error("Something went wrong while analysing this image. Please try another one.",
                          title="Analysis failed") from None
    return verdict_text(pred, model), differential(pred, model), heat, pred.to_dict()


def differential_shown(result) -> gr.Label:
    """Show the differential only beside an answer that has one: a refused image (or a one-logit
    binary head) leaves no empty or stale chart on screen. A follow-up event, so that the API's
    outputs stay plain values."""
    return gr.Label(visible=bool(isinstance(result, dict) and result.get("diagnosis")))


# ---------------------------------------------------------------------------------------------
# The page


def warm_up(model):
    """One prediction and explanation, so that the lazy parts (engine, Grad-CAM sub-model) are built
    before visitors arrive and never concurrently."""
    warm = sample_paths()[0]
    predict(warm, model)
    explain(warm, model, size=(8, 8))


def build_app(model) -> gr.Blocks:
    """The demo's Blocks for a loaded model (launch it with ``launch(app)``). Points Gradio at the
    private upload folder first: components copy the examples into it as they are made."""
    private_upload_folder()
    warm_up(model)
    with gr.Blocks(title="skinmole", analytics_enabled=False, delete_cache=SWEEP) as app:
        gr.Markdown("# skinmole\nHow much does a dermoscopic image of a mole resemble malignant lesions?")
        gr.Markdown(NOT_A_DIAGNOSIS + " A *benign* answer is no reason to skip a check-up.",
                    elem_classes=["notice"], elem_id="notice")
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(label="Mole image (upload, webcam or paste)",
                                 sources=["upload", "webcam", "clipboard"], type="filepath",
                                 elem_id="image-input", height=300)
                button = gr.Button("Analyse", variant="primary", elem_id="analyse")
            with gr.Column(scale=1):
                verdict = gr.Markdown("Choose an image (or an example below) and press **Analyse**.",
                                      label="verdict", elem_id="verdict")
                # Shown with the first answer; a one-logit binary head never has one.
                diff = gr.Label(label="Differential: probability of each diagnosis", num_top_classes=7,
                                show_heading=False, visible=False, elem_id="differential")
                heatmap = gr.HTML(label="heatmap", elem_id="heatmap")
                gr.Markdown(operating_point(model.config), elem_id="threshold")
                with gr.Accordion("Raw result (JSON)", open=False):
                    raw = gr.JSON(label="prediction", elem_id="raw")
        # Below the results: on a phone the columns stack, and the verdict must come first.
        gr.Examples(examples=[[str(p)] for p in sample_paths()], inputs=[image], label=examples_label(),
                    examples_per_page=len(SAMPLES), elem_id="examples")
        gr.Markdown(
            f"Example images: HAM10000 ({ham10000.SHORT_CITATION}, {ham10000.PAPER_DOI}), via the ISIC "
            f"Archive, licensed {ham10000.LICENCE}.", elem_id="attribution")
        gr.Markdown(_model_line(model) + ". Uploaded images are deleted right after analysis and "
                    "are never stored or logged.", elem_id="model-line")
        button.click(lambda upload: analyse(upload, model), inputs=[image],
                     outputs=[verdict, diff, heatmap, raw], api_name="predict", preprocess=False,
                     concurrency_limit=CONCURRENCY,
                     ).then(differential_shown, inputs=[raw], outputs=[diff], api_visibility="private")
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="The skinmole web demo.")
    parser.add_argument("--model", default=model_source(),
                        help="model folder or Hub repo id ORG/NAME (default: SKINMOLE_MODEL, else bundled)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    source = args.model
    try:
        model = load_model(source)
        warm_up(model)
    except Exception as exc:  # noqa: BLE001 - any failure here means "this model cannot be served"
        log.debug("model load failed", exc_info=True)
        what = "" if isinstance(exc, ModelLoadError) else f"{type(exc).__name__}: "
        print(f"skinmole demo: cannot load the model {source or '(bundled)'}: {what}{exc}",
              file=sys.stderr, flush=True)
        return 2
    print(f"skinmole demo: {model!r} from {source or 'the bundled model'}", flush=True)
    remove_uploads_on_stop()
    try:
        launch(build_app(model))
    finally:
        remove_upload_folder()
    return 0


if __name__ == "__main__":
    sys.exit(main())

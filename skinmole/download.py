"""Fetch a model folder from the Hugging Face Hub into its cache (``load_model("ORG/NAME")`` calls this).

Transfers go through ``huggingface_hub`` (its cache, ``HF_HUB_OFFLINE``, ``HF_HUB_CACHE``, tokens),
imported only when a download runs. The result is a plain local model folder; ``load_model`` then
validates it and checks every sha256 like any other folder. Publishing lives in ``skinmole.hub``,
above the loader; this module sits below it and imports nothing of skinmole but the errors.
"""

from __future__ import annotations

from pathlib import Path

from .errors import ModelLoadError

# What a model folder needs at inference: skinmole.json (or a format-1 config.json), the weights
# (Keras' config.json, metadata.json, model.weights.h5, or model.keras; model.onnx) and the quality
# gate's statistics. ``download_model`` fetches only these.
MODEL_PATTERNS = ["config.json", "*.keras", "*.onnx", "*.h5", "*.npz", "*.npy", "*.json"]
CONFIG_NAMES = ("skinmole.json", "config.json")


def _library_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("skinmole")
    except PackageNotFoundError:
        return "unknown"


def network_errors() -> tuple:
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


def http_summary(exc) -> str:
    """One line for an HTTP error of ``huggingface_hub``: the status and the server's message."""
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    text = str(exc).strip()
    message = getattr(exc, "server_message", None) or (text.splitlines()[0] if text else type(exc).__name__)
    return f"HTTP {status}: {message}" if status else message


def download_model(repo_id: str, revision: str | None = None, *, cache_dir=None, token=None) -> Path:
    """The local folder of a Hub model repo (``ORG/NAME``), downloaded into or found in the HF cache.

    Only the files a model folder needs are fetched (``MODEL_PATTERNS``). ``revision`` pins a branch,
    tag or commit. ``HF_HUB_OFFLINE`` and ``HF_HUB_CACHE`` work as everywhere in ``huggingface_hub``
    (``cache_dir`` is passed only when given). Every failure is a ``ModelLoadError`` that says what
    to do; ``load_model`` then checks every file's sha256 against the folder's config.
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
            library_name="skinmole", library_version=_library_version(), **kwargs,
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
        raise ModelLoadError(f"{repo_id}{at}: the Hub refused the download ({http_summary(exc)})") from exc
    except network_errors() as exc:
        raise ModelLoadError(
            f"{repo_id}{at}: could not reach the Hugging Face Hub ({type(exc).__name__}: {exc})") from exc
    folder = Path(path)
    if not any((folder / name).is_file() for name in CONFIG_NAMES):
        raise ModelLoadError(f"{repo_id}{at}: not a skinmole model repo (no {' or '.join(CONFIG_NAMES)} in it)")
    return folder


def looks_like_repo_id(source: str) -> bool:
    """``ORG/NAME``: two non-empty parts, not a relative or home path."""
    parts = source.split("/")
    return len(parts) == 2 and all(parts) and not source.startswith((".", "/", "~")) and "\\" not in source

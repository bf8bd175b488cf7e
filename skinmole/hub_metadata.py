"""What the Hugging Face Hub accepts in a README's YAML front matter, checked before anything is pushed.

The Hub validates a card's metadata only at push time (``RepoCard.validate`` asks the Hub over the
network), and refuses the whole commit for one bad value, e.g. a Space ``short_description`` over
60 characters. These checks follow the Hub's documentation, offline:

- Spaces: https://huggingface.co/docs/hub/spaces-config-reference
- model cards: https://huggingface.co/docs/hub/model-cards and the annotated spec
  https://github.com/huggingface/hub-docs/blob/main/modelcard.md (``model-index``)
- licences: https://huggingface.co/docs/hub/repositories-licenses

Each function returns a list of problems (empty when the metadata is valid), so a caller can report
all of them at once.
"""

from __future__ import annotations

import re
import unicodedata

SHORT_DESCRIPTION_MAX = 60  # the Hub refuses a longer Space short_description at push
SPACE_COLORS = {"red", "yellow", "green", "blue", "indigo", "purple", "pink", "gray"}
SPACE_SDKS = {"gradio", "streamlit", "docker", "static"}
SPACE_KEYS = {
    "title", "emoji", "colorFrom", "colorTo", "sdk", "python_version", "sdk_version", "suggested_hardware",
    "suggested_storage", "app_file", "app_port", "app_build_command", "base_path", "fullWidth", "header",
    "short_description", "models", "datasets", "tags", "thumbnail", "pinned", "hf_oauth", "hf_oauth_scopes",
    "hf_oauth_expiration_minutes", "hf_oauth_authorized_org", "disable_embedding", "startup_duration_timeout",
    "custom_headers", "preload_from_hub", "license", "license_name", "license_link", "duplicated_from",
}
MODEL_KEYS = {
    "language", "license", "license_name", "license_link", "library_name", "tags", "datasets", "metrics",
    "base_model", "base_model_relation", "pipeline_tag", "model-index", "inference", "widget", "thumbnail",
    "new_version", "co2_eq_emissions", "extra_gated_prompt", "extra_gated_fields", "extra_gated_heading",
    "extra_gated_description", "extra_gated_button_content",
}
LICENSES = set("""
apache-2.0 mit openrail bigscience-openrail-m creativeml-openrail-m bigscience-bloom-rail-1.0 bigcode-openrail-m
afl-3.0 artistic-2.0 bsl-1.0 bsd bsd-2-clause bsd-3-clause bsd-3-clause-clear c-uda cc cc0-1.0 cc-by-2.0
cc-by-2.5 cc-by-3.0 cc-by-4.0 cc-by-sa-3.0 cc-by-sa-4.0 cc-by-nc-2.0 cc-by-nc-3.0 cc-by-nc-4.0 cc-by-nd-4.0
cc-by-nc-nd-3.0 cc-by-nc-nd-4.0 cc-by-nc-sa-2.0 cc-by-nc-sa-3.0 cc-by-nc-sa-4.0 cdla-sharing-1.0
cdla-permissive-1.0 cdla-permissive-2.0 wtfpl ecl-2.0 epl-1.0 epl-2.0 etalab-2.0 eupl-1.1 agpl-3.0 gfdl gpl
gpl-2.0 gpl-3.0 lgpl lgpl-2.1 lgpl-3.0 isc lppl-1.3c ms-pl mpl-2.0 odc-by odbl openrail++ osl-3.0 postgresql
ofl-1.1 ncsa unlicense zlib pddl lgpl-lr deepfloyd-if-license llama2 gemma unknown other
""".split())
# The Hub's task ids (the pipeline_tag values its task filter knows).
PIPELINE_TAGS = set("""
text-classification token-classification table-question-answering question-answering zero-shot-classification
translation summarization feature-extraction text-generation text2text-generation fill-mask sentence-similarity
text-to-speech text-to-audio automatic-speech-recognition audio-to-audio audio-classification
voice-activity-detection depth-estimation image-classification object-detection image-segmentation
text-to-image image-to-text image-to-image image-to-video unconditional-image-generation video-classification
reinforcement-learning robotics tabular-classification tabular-regression tabular-to-text table-to-text
multiple-choice text-ranking text-retrieval time-series-forecasting text-to-video image-text-to-text
visual-question-answering document-question-answering zero-shot-image-classification graph-ml mask-generation
zero-shot-object-detection text-to-3d image-to-3d image-feature-extraction video-text-to-text
keypoint-detection visual-document-retrieval any-to-any other
""".split())
_LIBRARY = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_VERSION = re.compile(r"^\d+\.\d+(\.\d+)?([a-z0-9.+-]*)$")


def _is_repo_id(value: str) -> bool:
    """ORG/NAME by the Hub's own rules (``validate_repo_id``); skinmole always writes the namespace."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(value)
    except HFValidationError:
        return False
    return "/" in value


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _str_list(data: dict, key: str, problems: list[str], check=None, what: str = "") -> None:
    value = data.get(key)
    if value is None:
        return
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        problems.append(f"{key}: must be a list of non-empty strings, not {value!r}")
        return
    for v in value:
        if check is not None and not check(v):
            problems.append(f"{key}: {v!r} is not {what}")


def _is_emoji(text: str) -> bool:
    """Emoji-only: symbols (So/Sk), plus the joiners and modifiers emoji sequences are made of."""
    return bool(text) and all(
        unicodedata.category(c) in ("So", "Sk") or c in "\u200d\ufe0f\u20e3" or 0x1F3FB <= ord(c) <= 0x1F3FF
        for c in text)


def _licence(data: dict, problems: list[str]) -> None:
    licence = data.get("license")
    if licence is None:
        return
    if licence not in LICENSES:
        problems.append(f"license: {licence!r} is not one of the Hub's licence identifiers")
    if licence == "other" and not data.get("license_name"):
        problems.append("license: 'other' needs license_name (and a LICENSE file)")


def space_metadata_problems(data: dict) -> list[str]:
    """Problems with a Space README's front matter (a dict, as ``SpaceCardData.to_dict()`` gives)."""
    problems = [f"{key}: not a Space configuration field" for key in data if key not in SPACE_KEYS]
    for key in ("title", "sdk", "app_file"):
        if not isinstance(data.get(key), str) or not data[key].strip():
            problems.append(f"{key}: required, a non-empty string")
    if data.get("sdk") not in SPACE_SDKS:
        problems.append(f"sdk: {data.get('sdk')!r} is not one of {sorted(SPACE_SDKS)}")
    if data.get("sdk") in ("gradio", "streamlit") and not _VERSION.match(str(data.get("sdk_version", ""))):
        problems.append(f"sdk_version: {data.get('sdk_version')!r} is not a version number")
    if "python_version" in data and not re.fullmatch(r"3\.\d+(\.\d+)?", str(data["python_version"])):
        problems.append(f"python_version: {data['python_version']!r} is not 3.x or 3.x.x")
    if "emoji" in data and not _is_emoji(str(data["emoji"])):
        problems.append(f"emoji: {data['emoji']!r} is not emoji-only")
    for key in ("colorFrom", "colorTo"):
        if key in data and data[key] not in SPACE_COLORS:
            problems.append(f"{key}: {data[key]!r} is not one of {sorted(SPACE_COLORS)}")
    short = data.get("short_description")
    if short is not None and (not isinstance(short, str) or not 0 < len(short) <= SHORT_DESCRIPTION_MAX):
        problems.append(f"short_description: {len(str(short))} characters; the Hub takes 1 to "
                        f"{SHORT_DESCRIPTION_MAX}: {short!r}")
    for key in ("pinned", "fullWidth", "disable_embedding", "hf_oauth"):
        if key in data and not isinstance(data[key], bool):
            problems.append(f"{key}: must be true or false, not {data[key]!r}")
    if "header" in data and data["header"] not in ("mini", "default"):
        problems.append(f"header: {data['header']!r} is not 'mini' or 'default'")
    _str_list(data, "models", problems, _is_repo_id, "a model repo id (ORG/NAME)")
    _str_list(data, "datasets", problems, _is_repo_id, "a dataset repo id (ORG/NAME)")
    _str_list(data, "tags", problems)
    # "repo", "repo file1,file2" or "repo file1,file2 commit"
    _str_list(data, "preload_from_hub", problems,
              lambda v: bool(_is_repo_id(v.split()[0])) and len(v.split()) <= 3, "'ORG/NAME [files [commit]]'")
    _licence(data, problems)
    return problems


def _model_index_problems(index, problems: list[str]) -> None:
    if not isinstance(index, list) or not index:
        problems.append("model-index: must be a non-empty list")
        return
    for entry in index:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
            problems.append(f"model-index: each entry needs a name, not {entry!r}")
            continue
        results = entry.get("results")
        if not isinstance(results, list) or not results:
            problems.append(f"model-index[{entry['name']}]: results must be a non-empty list")
            continue
        for i, result in enumerate(results):
            where = f"model-index[{entry['name']}].results[{i}]"
            task, dataset, metrics = (result.get(k) if isinstance(result, dict) else None
                                      for k in ("task", "dataset", "metrics"))
            if not isinstance(task, dict) or task.get("type") not in PIPELINE_TAGS:
                problems.append(f"{where}.task.type: required, a Hub task id, not {task!r}")
            if not isinstance(dataset, dict) or not all(isinstance(dataset.get(k), str) and dataset[k]
                                                        for k in ("type", "name")):
                problems.append(f"{where}.dataset: type and name are required, not {dataset!r}")
            if not isinstance(metrics, list) or not metrics:
                problems.append(f"{where}.metrics: must be a non-empty list")
                continue
            for m in metrics:
                if not isinstance(m, dict) or not isinstance(m.get("type"), str) or not _is_number(m.get("value")):
                    problems.append(f"{where}.metrics: each needs a type and a numeric value, not {m!r}")


def model_metadata_problems(data: dict) -> list[str]:
    """Problems with a model card's front matter (a dict, as ``ModelCardData.to_dict()`` gives)."""
    problems = [f"{key}: not a model card metadata field" for key in data if key not in MODEL_KEYS]
    _licence(data, problems)
    if "library_name" in data and not _LIBRARY.match(str(data["library_name"])):
        problems.append(f"library_name: {data['library_name']!r} is not a library id")
    if "pipeline_tag" in data and data["pipeline_tag"] not in PIPELINE_TAGS:
        problems.append(f"pipeline_tag: {data['pipeline_tag']!r} is not a Hub task id")
    _str_list(data, "tags", problems)
    _str_list(data, "metrics", problems)
    _str_list(data, "datasets", problems, _is_repo_id, "a dataset repo id (ORG/NAME)")
    base = data.get("base_model")
    if base is not None:
        for b in [base] if isinstance(base, str) else base if isinstance(base, list) else [base]:
            if not isinstance(b, str) or not _is_repo_id(b):
                problems.append(f"base_model: {b!r} is not a model repo id (ORG/NAME)")
    if "model-index" in data:
        _model_index_problems(data["model-index"], problems)
    return problems

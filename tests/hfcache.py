"""Test helper: lay a model folder out as a Hugging Face cache entry, the way ``snapshot_download`` does.

``<cache>/models--ORG--NAME/{blobs/<sha256>, snapshots/<commit>/<file> -> ../../blobs/<sha256>,
refs/<branch>}``, so ``load_model("ORG/NAME")`` resolves it with ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path


def populate_cache(cache_dir, repo_id: str, folder, *, commit: str | None = None, branch: str | None = "main",
                   copy: bool = False) -> Path:
    """Add ``folder``'s files as commit ``commit`` of ``repo_id`` (pointed to by ``refs/<branch>``).

    Blobs are named by their sha256, snapshot files are relative symlinks to them (copies when
    ``copy``). Returns the snapshot folder.
    """
    folder = Path(folder)
    commit = commit or hashlib.sha1(f"{repo_id}{folder}".encode()).hexdigest()
    storage = Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))
    snapshot = storage / "snapshots" / commit
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        rel = path.relative_to(folder)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        blob = storage / "blobs" / digest
        blob.parent.mkdir(parents=True, exist_ok=True)
        if not blob.exists():
            shutil.copyfile(path, blob)
        dest = snapshot / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if copy:
            shutil.copyfile(blob, dest)
        else:
            os.symlink(os.path.relpath(blob, dest.parent), dest)
    if branch:
        (storage / "refs").mkdir(parents=True, exist_ok=True)
        (storage / "refs" / branch).write_text(commit)
    return snapshot

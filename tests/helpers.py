"""What several test files need: the repo root, a free port, HAM10000, and cheap copies of model
folders to break."""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import pytest

from skinmole.data import ham10000_root

ROOT = Path(__file__).resolve().parents[1]
HAM10000_MISSING = "HAM10000 not found (set SKINMOLE_HAM10000 or put it in ../shared/data/ham10000)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ham10000_or_skip() -> Path:
    """The HAM10000 folder, or skip the test with the reason (CI has the data)."""
    root = ham10000_root()
    if root is None:
        pytest.skip(HAM10000_MISSING)
    return root


# ------------------------------------------------------------------ model folders for tests

# Weights files are hard-linked (skinmole replaces them, never writes into them); the rest is copied.
LINKED_SUFFIXES = (".h5", ".keras", ".onnx", ".npz")


def config_path(folder) -> Path:
    """The file holding skinmole's config in a model folder (``skinmole.json``, or a format-1 ``config.json``)."""
    folder = Path(folder)
    return folder / "skinmole.json" if (folder / "skinmole.json").is_file() else folder / "config.json"


def copy_model_folder(src, dest) -> Path:
    """A cheap private copy of a model folder: the weights hard-linked, other files copied.

    Never write into a copied weights file in place (``open(..., "ab")``, ``write_bytes`` on the
    same name): it is the original's inode. Use ``replace_file`` or ``tamper``, which make a new file.
    """
    src, dest = Path(src), Path(dest)
    for path in sorted(src.rglob("*")):
        target = dest / path.relative_to(src)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix in LINKED_SUFFIXES:
            try:
                os.link(path, target)
                continue
            except OSError:  # another file system: copy
                pass
        shutil.copyfile(path, target)
    return dest


def replace_file(path, data: bytes) -> None:
    """Give ``path`` new contents as a new file (a hard-linked original stays untouched)."""
    path = Path(path)
    path.unlink(missing_ok=True)
    path.write_bytes(data)


def tamper(path) -> None:
    """Flip one bit in the middle of ``path`` (as a new file)."""
    data = bytearray(Path(path).read_bytes())
    data[len(data) // 2] ^= 0x01
    replace_file(path, bytes(data))


def edit_config(folder, change) -> dict:
    """Edit a model folder's config as raw JSON (bypassing validation, to write values a test wants
    refused): ``change(config_dict)`` edits it in place. Returns the new dict."""
    path = config_path(folder)
    config = json.loads(path.read_text())
    change(config)
    replace_file(path, json.dumps(config, indent=2).encode())
    return config


def write_config(folder, config: dict) -> Path:
    """Write a config dict as the folder's config, unvalidated (``skinmole.json`` for format 2)."""
    name = "skinmole.json" if config.get("format_version", 2) >= 2 else "config.json"
    path = Path(folder) / name
    replace_file(path, (json.dumps(config, indent=2) + "\n").encode())
    return path

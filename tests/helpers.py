"""What several test files need: the repo root, a script loaded as a module, a free port, HAM10000."""

from __future__ import annotations

import functools
import importlib.util
import socket
import sys
from pathlib import Path

import pytest

from skinmole.data import ham10000_root

ROOT = Path(__file__).resolve().parents[1]
HAM10000_MISSING = "HAM10000 not found (set SKINMOLE_HAM10000 or put it in ../shared/data/ham10000)"


@functools.cache
def load_script(relpath: str):
    """A file of the repo (``scripts/NAME.py``, ``demo/app.py``) as a module, loaded once per session."""
    path = ROOT / relpath
    name = "skinmole_test_" + relpath.replace("/", "_").removesuffix(".py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


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

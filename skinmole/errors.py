"""Every error type skinmole raises on purpose, in one leaf module (it imports nothing of skinmole).

Any module may raise these without importing the module that usually does, so the import graph
stays one-way. The input errors are ``ValueError`` subclasses: bad input, not a bug.
"""

from __future__ import annotations


class InvalidImageError(ValueError):
    """The input is not an image skinmole can read; the message names the input and why."""


class ModelLoadError(ValueError):
    """The source is not a usable skinmole model (missing, not a model folder, tampered, a value out
    of range, an engine that cannot run it); the message names the file or field."""


class DatasetError(ValueError):
    """A labelled set that cannot be used as given (missing files, unknown labels, empty class)."""


class OnnxExportError(ValueError):
    """The model cannot be exported (an unsupported layer or setting), or the export does not match."""


class UnsafeWeightsError(ValueError):
    """The file is not a plain legacy state dict of tensors."""


class PublishError(RuntimeError):
    """Publishing failed: no token, the Hub unreachable, the push refused, a bad model folder."""


class MissingExtraError(ImportError):
    """A feature needs an optional dependency that is not installed; the message names the pip extra
    that brings it (``pip install 'skinmole[keras]'``)."""

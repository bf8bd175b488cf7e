"""A typed result that still reads as the dict it replaced.

``Prediction`` used to carry plain dicts (``quality``, ``model``); users' code indexes them
(``p.quality["accepted"]``, ``.get``, ``dict(...)``). ``Record`` gives a frozen dataclass that shape: a
read-only mapping over its fields, in field order, so the typed object and its JSON form agree.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields


class Record(Mapping):
    """Base of a ``@dataclass(frozen=True, eq=False)``: the mapping of field name to value.

    ``eq=False`` keeps ``Mapping``'s equality, so a record equals its dict form. Lists are copied
    on the way out, so ``to_dict()`` cannot be used to change a frozen record."""

    __slots__ = ()

    @classmethod
    def from_dict(cls, d: Mapping):
        """The record of a dict with some or all of its keys; unknown keys are a ``TypeError``."""
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"{cls.__name__}: unknown key(s) {sorted(map(str, unknown))}")
        return cls(**d)

    def to_dict(self) -> dict:
        """The JSON form: every field, in declaration order."""
        return {k: list(v) if isinstance(v, list) else v for k, v in self.items()}

    def __getitem__(self, key):
        if not isinstance(key, str) or key not in self.__dataclass_fields__:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self):
        return (f.name for f in fields(self))

    def __len__(self) -> int:
        return len(fields(self))

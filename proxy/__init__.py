"""Grayscale: a gradual-release gateway for machine-learning model endpoints."""

import os
import sys
from collections.abc import Sequence
from importlib.machinery import SOURCE_SUFFIXES, FileFinder, ModuleSpec, SourceFileLoader
from types import ModuleType

__version__ = "0.1.0"


class _Sources:
    """Finds the package's modules by their sources only: with `GRAYSCALE_PURE=1`, a compiled
    build (`make compiled`: mypyc's extensions beside the .py files, which the import system
    would prefer) runs as pure Python."""

    _finders: dict[str, FileFinder] = {}  # noqa: RUF012  (one per folder of the package)

    @classmethod
    def find_spec(
        cls, name: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if not name.startswith("proxy.") or path is None:
            return None
        for entry in path:
            finder = cls._finders.get(entry)
            if finder is None:
                finder = cls._finders[entry] = FileFinder(
                    entry, (SourceFileLoader, SOURCE_SUFFIXES)
                )
            spec = finder.find_spec(name, target)
            if spec is not None:
                return spec
        return None


if os.environ.get("GRAYSCALE_PURE") == "1":
    sys.meta_path.insert(0, _Sources)

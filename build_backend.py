"""The build backend: setuptools', asking for mypy (mypyc) too when GRAYSCALE_COMPILE=1, so that
`GRAYSCALE_COMPILE=1 pip wheel .` (the Docker image) and `make compiled` build the compiled
modules of setup.py, and a plain `pip install -e .` downloads nothing more."""

import os
import tomllib
from collections.abc import Callable

from setuptools import build_meta
from setuptools.build_meta import *  # noqa: F403  (the hooks this module does not change)

# mypy, and what it reads to type the compiled modules: the package's dependencies and the stubs
# of the dev extra; pinned like the rest by constraints.txt (PIP_CONSTRAINT, in the Makefile and
# the Dockerfile).
with open("pyproject.toml", "rb") as file:
    MYPYC = ["mypy>=1.10", "types-PyYAML", *tomllib.load(file)["project"]["dependencies"]]

Settings = dict[str, str] | None


def _requires(hook: Callable[[Settings], list[str]], config_settings: Settings) -> list[str]:
    # setuptools runs setup.py to find its requirements: before mypy is installed, so pure.
    compile = os.environ.pop("GRAYSCALE_COMPILE", None)
    try:
        requires = hook(config_settings)
    finally:
        if compile is not None:
            os.environ["GRAYSCALE_COMPILE"] = compile
    return [*requires, *MYPYC] if compile == "1" else requires


def get_requires_for_build_wheel(config_settings: Settings = None) -> list[str]:
    return _requires(build_meta.get_requires_for_build_wheel, config_settings)


def get_requires_for_build_editable(config_settings: Settings = None) -> list[str]:
    return _requires(build_meta.get_requires_for_build_editable, config_settings)

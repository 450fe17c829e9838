"""The container image, read rather than built (no Docker engine runs where the tests do): what it
copies exists, and it runs as it is, with a config it provides."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
from pathlib import Path

from proxy.config.loader import load_config

ROOT = Path(__file__).resolve().parents[2]


def instructions() -> list[tuple[str, str]]:
    """The Dockerfile's instructions (keyword, arguments), continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    found = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last_from:]


def exec_form(arguments: str) -> list[str]:
    return json.loads(arguments) if arguments.startswith("[") else shlex.split(arguments)


def ignored(path: str) -> bool:
    """Whether .dockerignore leaves `path` out of the build context."""
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines() if p.strip()]
    return any(
        fnmatch.fnmatch(path, pattern) or path.startswith(pattern.rstrip("/") + "/")
        for pattern in patterns
        if not pattern.startswith("#")
    )


def copies(steps: list[tuple[str, str]]) -> list[tuple[list[str], str]]:
    """(sources, destination) of every COPY from the build context."""
    found = []
    for keyword, arguments in steps:
        if keyword == "COPY" and "--from" not in arguments:
            *sources, destination = shlex.split(arguments)
            found.append((sources, destination))
    return found


def test_every_copied_file_exists_and_is_in_the_build_context():
    for sources, _ in copies(instructions()):
        for source in sources:
            assert (ROOT / source).exists(), source
            assert not ignored(source), f"{source} is left out by .dockerignore"


def test_the_image_runs_a_config_it_provides():
    steps = final_stage()
    entry = exec_form(next(a for k, a in steps if k == "ENTRYPOINT"))
    command = exec_form(next(a for k, a in steps if k == "CMD"))
    argv = entry + command
    assert argv[:2] == ["grayscale", "serve"]
    config_path = argv[argv.index("--config") + 1]
    provided = {dest: sources[0] for sources, dest in copies(steps)}
    assert config_path in provided, f"the image has no {config_path}"
    config = load_config(ROOT / provided[config_path])
    # Reachable from outside the container, and its state kept in the image's volume.
    assert config.server.listen.host == "0.0.0.0"
    volume = exec_form(next(a for k, a in steps if k == "VOLUME"))[0]
    assert config.state.path.startswith(volume + "/")


def test_the_health_check_asks_the_readiness_endpoint_of_that_config():
    steps = final_stage()
    check = next(a for k, a in steps if k == "HEALTHCHECK")
    command = next(a for k, a in steps if k == "CMD")
    config_path = exec_form(command)[exec_form(command).index("--config") + 1]
    provided = {dest: sources[0] for sources, dest in copies(steps)}
    admin = load_config(ROOT / provided[config_path]).server.admin_listen
    assert f"127.0.0.1:{admin.port}/readyz" in check


def test_the_license_named_in_the_package_is_there():
    assert 'license = "Apache-2.0"' in (ROOT / "pyproject.toml").read_text()
    assert "Apache License" in (ROOT / "LICENSE").read_text().splitlines()[0]


def test_the_image_has_cis_python_and_the_tested_library_versions():
    steps = instructions()
    images = [arguments.split()[0] for keyword, arguments in steps if keyword == "FROM"]
    assert images == ["python:3.11-slim", "python:3.11-slim"]  # as CI's Python 3.11
    wheel = next(a for k, a in steps if k == "RUN" and "pip wheel" in a)
    assert "--constraint constraints.txt" in wheel
    assert any("constraints.txt" in sources for sources, _ in copies(steps))
    install = next(a for k, a in final_stage() if k == "RUN" and "pip install" in a)
    assert "--no-index --find-links /wheels" in install  # only the wheels built to those pins

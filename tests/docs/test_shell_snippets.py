"""Every command of the `sh` blocks of README.md and docs/*.md, and every `$ command` that
opens a `text` block, is one that works as written.

Quick and safe commands are run (`grayscale check`, `grayscale simulate`, `--help`). The others
are checked without being run, each against what it depends on:

- `grayscale ...` (or `python -m proxy ...`): parsed by the real argument parser, so a command or
  a flag the CLI lacks fails; a file it names must exist, or be a config the same page shows (a
  `yaml` or `yaml expand-env` block whose first line is `# FILE`), which is then loaded as the
  command would load it: with its `--expand-env`, `--listen` and `--admin-listen`, the variables
  set before it (`REPLICA=a grayscale serve ...`) and every other variable the config names
  unset; a variable set before it is one the product reads, or, with `--expand-env`, one its
  config names;
- `make TARGET`: `make -n TARGET` succeeds;
- `curl URL`: every flag is one curl knows; a URL on the demo's proxy port is a path the demo
  config routes, one on its admin port a method and path the admin API serves (a route named
  in it exists in the demo);
- `pytest`: the paths exist, the markers are registered, an environment variable given is read
  by the tests named; `python SCRIPT`: the script's `--help` lists every flag given;
- `docker`: the ports, volumes and image agree with the Dockerfile; `kubectl`: the kustomize
  trees exist and render, and the Secrets created are the ones the manifests read;
- `export NAME=...`: the product reads NAME; `pip install .`: the project installs `grayscale`.

A program without a check here fails the test, so that a new kind of snippet gets one. A check
that needs a program this machine lacks (curl, docker, kubectl) is skipped, saying which.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from proxy.app.server import Server
from proxy.cli import build_parser
from proxy.config.loader import ConfigError, load_config, parse_config
from proxy.config.model import LoadOptions
from proxy.routing.table import RoutingTable
from proxy.tools.demo.run import DEMO_CONFIG
from tests.docs.configs import shown_configs, use_environment, variables
from tests.docs.test_yaml_snippets import completed
from tests.support.markdown_pages import PAGES, Block, blocks
from tests.support.paths import ROOT

RUN = {"check", "simulate"}  # grayscale commands quick and safe enough to run here
PYTHONS = {"python", "python3", ".venv/bin/python"}
SEPARATORS = {"|", "||", "&&", ";", "&"}
ASSIGNMENT = re.compile(r"^[A-Z_][A-Z0-9_]*=")


@dataclass(frozen=True)
class Command:
    """One command of a snippet: its words, the variables set before it, and whether it may be
    run (an `sh` block's) or only checked (a `text` block's `$ ...` line)."""

    block: Block
    line: int
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    runnable: bool

    def where(self) -> str:
        """`page:line` of the command."""
        return f"{self.block.page.relative_to(ROOT)}:{self.line}"

    def id(self) -> str:
        """The test's name for it."""
        return f"{self.where()}:{' '.join(self.argv)[:60]}"


def logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """The block's lines, those continued by `\\` or by an open quote joined, each with its
    first line's offset."""
    pending, start = "", 0
    for offset, line in enumerate(text.splitlines()):
        if not pending:
            start = offset
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        try:
            words(pending + line)
        except ValueError:  # (a quoted word goes on)
            pending += line + "\n"
            continue
        yield start, pending + line
        pending = ""
    assert not pending, f"an unfinished command: {pending}"


def words(line: str) -> list[str]:
    """A shell line's words, `$(...)` read as one word, comments dropped."""
    line = re.sub(r"\$\([^()]*\)", "SUBSTITUTED", line)
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    return list(lexer)


def commands_of(block: Block) -> list[Command]:
    """The commands of an `sh` block, or the `$ ...` line that opens a `text` block."""
    if block.label == "text":
        first = block.text.splitlines()[0] if block.text.strip() else ""
        if not first.startswith("$ "):
            return []
        lines: Iterator[tuple[int, str]] = iter([(0, first[2:])])
    else:
        lines = logical_lines(block.text)
    found = []
    for offset, line in lines:
        argv: list[str] = []
        for word in [*words(line), ";"]:
            if word not in SEPARATORS:
                argv.append(word)
                continue
            env = []
            while argv and ASSIGNMENT.match(argv[0]):
                name, _, value = argv.pop(0).partition("=")
                env.append((name, value))
            if argv:
                line_number = block.line + 1 + offset
                runnable = block.label == "sh"
                found.append(Command(block, line_number, tuple(argv), tuple(env), runnable))
            argv = []
    return found


COMMANDS = [
    command
    for page in PAGES
    for block in blocks(page)
    if block.label in ("sh", "text")
    for command in commands_of(block)
]


def test_the_pages_have_commands_to_check():
    programs = {command.argv[0] for command in COMMANDS}
    assert {"make", "grayscale", "curl", "docker", "kubectl"} <= programs, programs


@pytest.mark.parametrize("command", COMMANDS, ids=Command.id)
async def test_a_snippet_command_works(
    command: Command, pytestconfig: pytest.Config, monkeypatch: pytest.MonkeyPatch
):
    program, *args = command.argv
    if (cli := grayscale_args(command.argv)) is not None:
        check_grayscale(command, cli, monkeypatch)
    elif program in PYTHONS:
        check_script(command, args)
    elif program == "make":
        check_make(command, args)
    elif program in ("pytest", ".venv/bin/pytest"):
        check_pytest(command, args, pytestconfig)
    elif program == "curl":
        await check_curl(command, args)
    elif program == "docker":
        check_docker(command, args)
    elif program == "kubectl":
        check_kubectl(command, args)
    elif program == "export":
        check_export(command, args)
    elif program == "pip":
        check_pip(command, args)
    else:
        pytest.fail(
            f"{command.where()}: no check for `{program}`: add one to {Path(__file__).name}"
        )


# --- grayscale ---------------------------------------------------------------------------------


def grayscale_args(argv: tuple[str, ...]) -> list[str] | None:
    """The arguments of a `grayscale` (or `python -m proxy`) command; None for another."""
    program, *args = argv
    if program in ("grayscale", ".venv/bin/grayscale"):
        return args
    if program in PYTHONS and args[:2] == ["-m", "proxy"]:
        return args[2:]
    return None


def parse_grayscale(command: Command, args: list[str]) -> argparse.Namespace | None:
    """The parsed arguments, or None for `--help` (which the parser answers)."""
    errors, out = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(out):
            return build_parser().parse_args(args)
    except SystemExit as exit:
        assert exit.code == 0, f"{command.where()}: grayscale refuses it: {errors.getvalue()}"
        assert out.getvalue().startswith("usage: grayscale")
        return None


def config_paths(parsed: argparse.Namespace) -> list[str]:
    """The config files a parsed command names."""
    named = [*getattr(parsed, "files", []), getattr(parsed, "config", None)]
    return [path for path in named if path is not None]


def in_repository(path: str) -> bool:
    """Whether `path` is a file of the repository (relative to its root)."""
    return not Path(path).is_absolute() and (ROOT / path).is_file()


def check_grayscale(command: Command, args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Parsed by the CLI's own parser with every flag spelled in full; its files exist or are
    shown, and load as it would load them; run if quick and safe."""
    parsed = parse_grayscale(command, args)
    if parsed is None:
        return
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    known = {
        *parser._option_string_actions,
        *commands.choices[parsed.command]._option_string_actions,
    }
    for flag in (arg.partition("=")[0] for arg in args if arg.startswith("--")):
        assert flag in known, f"{command.where()}: grayscale {parsed.command} has no {flag} as such"
    shown = shown_configs(command.block.page)
    texts = [
        (ROOT / path).read_text() if in_repository(path) else shown[path].text
        for path in config_paths(parsed)
        if in_repository(path) or path in shown
    ]
    expand = getattr(parsed, "expand_env", False)
    for name, _ in command.env:
        named = expand and any(name in variables(text) for text in texts)
        assert named or product_reads(name), (
            f"{command.where()}: ${name} is read neither by the product nor, with --expand-env, "
            "by the config"
        )
    if not command.runnable:
        return
    for path in config_paths(parsed):
        assert in_repository(path) or path in shown, f"{command.where()}: {path}: no such file"
        if path in shown and shown[path].label != "yaml invalid":
            load_shown(command, parsed, shown[path], monkeypatch)
    if runs_here(args):
        returncode, stderr = ran(tuple(args))
        assert returncode == 0, f"{command.where()}: exit {returncode}: {stderr}"


def load_shown(
    command: Command, parsed: argparse.Namespace, block: Block, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The config `block` loads as `command` would load it: its flags, the variables it sets."""
    options = LoadOptions(
        getattr(parsed, "expand_env", False),
        getattr(parsed, "listen", None),
        getattr(parsed, "admin_listen", None),
    )
    with monkeypatch.context() as patched:
        use_environment(patched, block.text, dict(command.env))
        try:
            parse_config(completed(block), block.where(), options)
        except ConfigError as exc:
            pytest.fail(f"{command.where()}: the config of {block.where()} is refused:\n{exc}")


_RUNS: dict[tuple[str, ...], subprocess.Popen[str]] = {}


@pytest.fixture(scope="module", autouse=True)
def _every_run_ends() -> Iterator[None]:
    """No command started by `ran` outlives the module's tests."""
    yield
    for process in _RUNS.values():
        if process.returncode is None:
            process.communicate(timeout=60)


def runs_here(args: list[str]) -> bool:
    """Whether `grayscale ARGS` is run here: a quick and safe command on the repository's files
    (one on a config a page shows is loaded in the test's process instead)."""
    if not args or args[0] not in RUN or "--help" in args:
        return False
    return all(in_repository(path) for path in config_paths(build_parser().parse_args(args)))


def ran(args: tuple[str, ...]) -> tuple[int, str]:
    """The exit status and error output of `grayscale ARGS`. The first call starts every
    runnable grayscale command of the pages at once, each once; each call waits for its own."""
    if not _RUNS:
        for command in COMMANDS:
            rest = grayscale_args(command.argv)
            if command.runnable and rest and runs_here(rest) and tuple(rest) not in _RUNS:
                _RUNS[tuple(rest)] = subprocess.Popen(
                    [sys.executable, "-m", "proxy", *rest],
                    cwd=ROOT,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    text=True,
                )
    process = _RUNS[args]
    _, stderr = process.communicate(timeout=60)
    return process.returncode, stderr


# --- make, pytest, scripts ---------------------------------------------------------------------


def check_make(command: Command, args: list[str]) -> None:
    """`make -n` knows the targets; a variable set before `make` is one the Makefile reads."""
    assert args and not any(arg.startswith("-") for arg in args), command.where()
    done = subprocess.run(
        ["make", "-n", *args],
        cwd=ROOT,
        env={**os.environ, **dict(command.env)},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, f"{command.where()}: make -n {' '.join(args)}: {done.stderr}"
    for name, _ in command.env:
        assert f"$({name})" in (ROOT / "Makefile").read_text(), f"{name}: not read by the Makefile"


def check_pytest(command: Command, args: list[str], config: pytest.Config) -> None:
    """The tests named exist, the markers are registered, a variable set is read by the tests."""
    markers = {line.split(":")[0].split("(")[0] for line in config.getini("markers")}
    paths = []
    given = iter(args)
    for arg in given:
        if arg == "-m":
            expression = next(given)
            named = set(re.findall(r"\w+", expression)) - {"and", "or", "not"}
            assert named <= markers, f"{command.where()}: unknown markers {named - markers}"
        elif arg == "-k":
            next(given)
        elif arg.startswith("-"):
            assert arg in {"-q", "-x", "-s", "-v", "-ra"}, f"{command.where()}: check {arg} here"
        else:
            paths.append(ROOT / arg.split("::")[0])
    assert paths, f"{command.where()}: name the tests"
    for path in paths:
        assert path.exists(), f"{command.where()}: {path.relative_to(ROOT)}: no such tests"
    for name, _ in command.env:
        assert any(name in path.read_text() for path in paths if path.is_file()), (
            f"{command.where()}: none of the tests named reads ${name}"
        )


def check_script(command: Command, args: list[str]) -> None:
    """The script exists, and its `--help` lists every flag given."""
    script, *flags = args
    assert (ROOT / script).is_file(), f"{command.where()}: {script}: no such script"
    done = subprocess.run(
        [sys.executable, script, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, f"{command.where()}: {script} --help: {done.stderr}"
    for flag in (arg for arg in flags if arg.startswith("-")):
        assert flag in done.stdout.split(), f"{command.where()}: {script} has no {flag}"


# --- curl --------------------------------------------------------------------------------------

CURL_VALUES = {"-H", "-d", "-X", "-o", "--data", "--header", "--request", "--output"}


@cache
def curl_flags() -> frozenset[str]:
    """Every option curl knows; none when curl is not installed."""
    program = shutil.which("curl")
    if program is None:
        return frozenset()
    help_text = subprocess.run(
        [program, "--help", "all"], capture_output=True, text=True, timeout=10, check=True
    ).stdout
    return frozenset(re.findall(r"(?<![\w-])(--?[A-Za-z0-9][\w-]*)", help_text))


_ADMIN_ROUTES: list[tuple[str, re.Pattern[str]]] = []


async def admin_routes() -> list[tuple[str, re.Pattern[str]]]:
    """(method, path pattern) of every route of the admin API, as built for the demo config."""
    if not _ADMIN_ROUTES:
        server = Server(load_config(DEMO_CONFIG))
        for route in server.admin.build_app().router.routes():
            info = route.resource.get_info() if route.resource is not None else {}
            pattern = info.get("pattern") or re.compile(re.escape(str(info.get("path"))))
            _ADMIN_ROUTES.append((route.method, pattern))
    return _ADMIN_ROUTES


async def check_curl(command: Command, args: list[str]) -> None:
    """The URL is one the demo serves (a routed path, or an admin route); the flags are curl's."""
    urls = [arg for arg in args if arg.startswith("http://")]
    assert len(urls) == 1, f"{command.where()}: one URL, please"
    method = "POST" if {"-d", "--data"} & set(args) else "GET"
    given = iter(args)
    for arg in given:
        if arg in ("-X", "--request"):
            method = next(given)
        elif arg in CURL_VALUES:
            next(given)
    url = urlsplit(urls[0])
    demo = load_config(DEMO_CONFIG)
    if url.netloc == str(demo.server.listen):
        routed = RoutingTable(demo.routes).match(url.path)
        assert routed is not None, f"{command.where()}: the demo routes nothing at {url.path}"
    elif url.netloc == str(demo.server.admin_listen):
        served = await admin_routes()
        assert any(m == method and p.fullmatch(url.path) for m, p in served), (
            f"{command.where()}: the admin API serves no {method} {url.path}"
        )
        named = re.fullmatch(r"/routes/([^/]+)/\w+", url.path)
        if named:
            assert named[1] in {route.name for route in demo.routes}, command.where()
    else:
        pytest.fail(f"{command.where()}: {urls[0]}: neither the demo's proxy nor its admin API")
    known = curl_flags()
    if not known:
        pytest.skip("curl is not installed: its flags were not checked")
    for arg in (arg for arg in args if arg.startswith("-") and arg not in known):
        assert arg[1] != "-" and all(f"-{letter}" in known for letter in arg[1:]), (
            f"{command.where()}: curl has no {arg}"
        )


# --- docker, kubectl ---------------------------------------------------------------------------


def dockerfile() -> dict[str, list[str]]:
    """The Dockerfile's instructions by name: each one's arguments, joined."""
    found: dict[str, list[str]] = {}
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, rest = line.strip().partition(" ")
            found.setdefault(name, []).append(rest.strip())
    return found


def built_images(page: Path) -> set[str]:
    """The tags the `docker build -t` commands of `page` give."""
    tags = set()
    for command in COMMANDS:
        if command.block.page == page and command.argv[:2] == ("docker", "build"):
            tags.add(command.argv[command.argv.index("-t") + 1])
    return tags


def check_docker(command: Command, args: list[str]) -> None:
    """Ports, volumes, variables and the image agree with the Dockerfile; the flags are docker's."""
    action, *rest = args
    instructions = dockerfile()
    if action == "build":
        assert rest[-1] == "." and "-t" in rest, f"{command.where()}: docker build -t NAME ."
    elif action == "run":
        exposed = set(" ".join(instructions["EXPOSE"]).split())
        volumes = set(" ".join(instructions["VOLUME"]).split())
        served = json.loads(instructions["CMD"][-1])
        config_folder = str(Path(served[served.index("--config") + 1]).parent)
        given = iter(rest)
        for arg in given:
            if arg == "-p":
                inside = next(given).rpartition(":")[2]
                assert inside in exposed, f"{command.where()}: the image exposes no {inside}"
            elif arg == "-v":
                mount = next(given).split(":")[1]
                assert mount in volumes | {config_folder}, f"{command.where()}: {mount}"
            elif arg == "-e":
                assert product_reads(next(given)), command.where()
            else:
                assert arg in built_images(command.block.page), f"{command.where()}: {arg}?"
    else:
        pytest.fail(f"{command.where()}: check docker {action} here")
    program = shutil.which("docker")
    if program is None:
        pytest.skip("docker is not installed: its flags were not checked")
    usage = subprocess.run(
        [program, action, "--help"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    for flag in (arg for arg in rest if arg.startswith("-")):
        assert re.search(rf"(?<![\w-]){flag}\b", usage), f"{command.where()}: docker has no {flag}"


def secret_references() -> set[tuple[str, str]]:
    """(Secret, key) of every secretKeyRef in the Kubernetes manifests."""
    found: set[tuple[str, str]] = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            reference = node.get("secretKeyRef")
            if isinstance(reference, dict):
                found.add((reference["name"], reference["key"]))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for manifest in (ROOT / "deploy" / "kubernetes").rglob("*.yaml"):
        for document in yaml.safe_load_all(manifest.read_text()):
            walk(document)
    return found


def check_kubectl(command: Command, args: list[str]) -> None:
    """The namespace and Secrets are the kit's, the trees exist; run offline where possible."""
    kustomization = yaml.safe_load((ROOT / "deploy/kubernetes/kustomization.yaml").read_text())
    namespace = kustomization["namespace"]
    given = None
    if args[0] == "-n":
        given, args = args[1], args[2:]
    if args[:2] == ["create", "namespace"]:
        assert args[2] == namespace, f"{command.where()}: the kit deploys into {namespace}"
        rendered = [*args, "--dry-run=client", "-o", "yaml"]
    elif args[:3] == ["create", "secret", "generic"]:
        assert given == namespace, f"{command.where()}: the kit reads Secrets in {namespace}"
        name = args[3]
        for literal in (arg for arg in args[4:] if arg.startswith("--from-literal=")):
            key = literal.removeprefix("--from-literal=").partition("=")[0]
            assert (name, key) in secret_references(), (
                f"{command.where()}: no manifest reads key {key} of Secret {name}"
            )
        rendered = ["-n", namespace, *args, "--dry-run=client", "-o", "yaml"]
    elif args[:2] == ["apply", "-k"]:
        tree = ROOT / args[2]
        assert (tree / "kustomization.yaml").is_file(), f"{command.where()}: {args[2]}"
        rendered = ["kustomize", args[2]]
    else:
        pytest.fail(f"{command.where()}: check kubectl {' '.join(args[:2])} here")
    program = shutil.which("kubectl")
    if program is None:
        pytest.skip("kubectl is not installed: the command was not run")
    done = subprocess.run(
        [program, *rendered], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, f"{command.where()}: kubectl {' '.join(rendered)}: {done.stderr}"


# --- export, pip -------------------------------------------------------------------------------


@cache
def product_reads(name: str) -> bool:
    """Whether the product's code names the environment variable `name`."""
    return any(
        f'"{name}"' in text or f"'{name}'" in text
        for text in (path.read_text() for path in (ROOT / "proxy").rglob("*.py"))
    )


def check_export(command: Command, args: list[str]) -> None:
    """Every variable exported is one the product reads."""
    for assignment in args:
        name = assignment.partition("=")[0]
        assert product_reads(name), f"{command.where()}: the product does not read ${name}"


def check_pip(command: Command, args: list[str]) -> None:
    """`pip install .` installs the `grayscale` command."""
    assert args == ["install", "."], f"{command.where()}: check pip {' '.join(args)} here"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["grayscale"] == "proxy.cli:main"

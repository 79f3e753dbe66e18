"""The package's shape: imports follow the pipeline one way, the server's and the client's processes never import
each other, production code never imports the test harnesses, only SecAgg+'s two halves touch Flower's legacy API,
modules and functions stay short, and `fedhubert --help` imports no more than fairseq does."""

import ast
import subprocess
import sys
from pathlib import Path
from typing import Dict, Set

import pytest

from tests.helpers import REPO

PACKAGES = ("fedhubert_plugin", "upstream")
# module prefix -> prefixes it must never import (the pipeline: data -> targets -> task -> federation ->
# checkpoints -> upstream; prepare, export, downstream, report, demo, cli and the commands' configs sit above
# all of them)
SERVER, CLIENT = "fedhubert_plugin.federation.server", "fedhubert_plugin.federation.client"
SIMULATION = "fedhubert_plugin.federation.simulation"
APPS = (
    "fedhubert_plugin.prepare",
    "fedhubert_plugin.kmeans_app",
    "fedhubert_plugin.codebooks",
    "fedhubert_plugin.export",
    "fedhubert_plugin.downstream",
    "fedhubert_plugin.report",
    "fedhubert_plugin.demo",
    "fedhubert_plugin.probe",
    "fedhubert_plugin.cli",
    "fedhubert_plugin.configs",
    "upstream",
)
FORBIDDEN = {
    "fedhubert_plugin.files": ("fedhubert_plugin.",),
    "fedhubert_plugin.options": ("fedhubert_plugin.",),
    "fedhubert_plugin.checkpoints": (
        "fedhubert_plugin.data",
        "fedhubert_plugin.targets",
        "fedhubert_plugin.tasks",
        "fedhubert_plugin.criterions",
        "fedhubert_plugin.federation",
        "fedhubert_plugin.recipes",
        *APPS,
    ),
    "fedhubert_plugin.data": (
        "fedhubert_plugin.targets",
        "fedhubert_plugin.tasks",
        "fedhubert_plugin.criterions",
        "fedhubert_plugin.federation",
        "fedhubert_plugin.recipes",
        *APPS,
    ),
    "fedhubert_plugin.targets": (
        "fedhubert_plugin.tasks",
        "fedhubert_plugin.criterions",
        "fedhubert_plugin.federation",
        "fedhubert_plugin.recipes",
        *APPS,
    ),
    "fedhubert_plugin.tasks": ("fedhubert_plugin.federation", "fedhubert_plugin.recipes", *APPS),
    "fedhubert_plugin.criterions": ("fedhubert_plugin.federation", "fedhubert_plugin.recipes", *APPS),
    "fedhubert_plugin.recipes": ("fedhubert_plugin.federation", *APPS),
    # by process: the server's and a client's never import each other; shared modules import neither; only
    # the simulation wires both sides into one process tree
    SERVER: (CLIENT, SIMULATION),
    CLIENT: (SERVER, SIMULATION),
    **{
        f"fedhubert_plugin.federation.{shared}": (SERVER, CLIENT)
        for shared in ("settings", "wire", "nodes", "schedule")
    },
    "fedhubert_plugin.federation": APPS,
}
HARNESSES = "fedhubert_plugin.testing"  # for rehearsals, tests and benchmarks only


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> Set[str]:
    """Every module ``path`` imports (at any depth of the file), as absolute names."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


@pytest.fixture(scope="module")
def graph() -> Dict[str, Set[str]]:
    files = [p for package in PACKAGES for p in (REPO / package).rglob("*.py")]
    names = {module_name(p) for p in files}
    return {module_name(p): {m for m in imports_of(p) if m in names and m != module_name(p)} for p in files}


def test_imports_follow_the_pipeline_one_way(graph):
    wrong = [
        f"{module} imports {imported}"
        for module, imported_set in graph.items()
        for imported in imported_set
        for prefix, banned in FORBIDDEN.items()
        if module.startswith(prefix) and imported.startswith(banned)
    ]
    assert not wrong


def test_production_code_never_imports_the_test_harnesses(graph):
    assert not [
        f"{module} imports {imported}"
        for module, imported_set in graph.items()
        for imported in imported_set
        if imported.startswith(HARNESSES) and not module.startswith(HARNESSES)
    ]


def test_upstream_depends_only_on_checkpoint_loading(graph):
    for module, imported in graph.items():
        if module.startswith("upstream"):
            assert {m for m in imported if m.startswith("fedhubert_plugin")} <= {"fedhubert_plugin.checkpoints"}, module


def test_no_import_cycle(graph):
    state: Dict[str, int] = {}

    def visit(module, path):
        state[module] = 1
        for imported in graph[module]:
            assert state.get(imported) != 1, " -> ".join(path + [imported])
            if imported not in state:
                visit(imported, path + [imported])
        state[module] = 2

    for module in graph:
        if module not in state:
            visit(module, [module])


def test_only_the_two_halves_of_secure_aggregation_touch_flowers_legacy_api():
    legacy = ("flwr.server", "flwr.client", "flwr.common", "flwr.compat")
    users = {
        module_name(p)
        for package in PACKAGES
        for p in (REPO / package).rglob("*.py")
        if any(m in legacy or m.startswith(tuple(f"{name}." for name in legacy)) for m in imports_of(p))
    }
    assert users == {"fedhubert_plugin.federation.server.secure", "fedhubert_plugin.federation.client.secure"}


def package_files():
    return [p for package in PACKAGES for p in sorted((REPO / package).rglob("*.py"))]


def test_modules_stay_under_300_lines_and_functions_read_in_one_screen():
    long_modules = [
        f"{p.relative_to(REPO)} ({n} lines)" for p in package_files() if (n := len(p.read_text().splitlines())) > 300
    ]
    long_functions = [
        f"{path.relative_to(REPO)}:{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for path in package_files()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 50
    ]
    assert not long_modules and not long_functions


def test_cli_stays_short():
    assert len((REPO / "fedhubert_plugin" / "cli.py").read_text().splitlines()) <= 250


def test_help_imports_nothing_beyond_fairseq():
    """`fedhubert --help` and each command's help: fairseq's import is the floor (the plugin registers with it)."""
    code = """
import sys
import fairseq.criterions, fairseq.models, fairseq.tasks
floor = {m.split(".")[0] for m in sys.modules}
from fedhubert_plugin.cli import build_parser
commands = ["toy-data", "prepare", "pretrain", "distill", "label-quality", "probe", "export", "demo"]
for command in [[]] + [[name] for name in commands]:
    try:
        build_parser().parse_args(command + ["--help"])
    except SystemExit as done:
        assert done.code == 0, f"fedhubert {' '.join(command + ['--help'])} exited with {done.code}"
    else:
        raise AssertionError(f"fedhubert {' '.join(command + ['--help'])} printed no help")
added = {m.split(".")[0] for m in sys.modules} - floor - set(sys.stdlib_module_names)
print("ADDED", sorted(added))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    added = proc.stdout.split("ADDED")[-1].strip()
    assert added == "['fedhubert_plugin']", added

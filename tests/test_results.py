"""Every benchmark figure a reader sees traces to a results file that says when, where, from which commit and with
which command it was measured."""

import re
import sys

from tests.helpers import REPO

BENCHMARKS = REPO / "benchmarks"
RESULTS = BENCHMARKS / "results"
PROVENANCE = re.compile(r"_Run \d{4}-\d{2}-\d{2} on .+; commit [0-9a-f]{7}.*; `python benchmarks/\S+\.py.*`\._")
DECIMAL = re.compile(r"(?<![\w.])\d+\.\d+(?!\w|\.\d)")  # a sentence may end after it
TARGET = re.compile(r"[≤≥]\s*\d+(\.\d+)?")  # a target is a promise, not a measurement


def section(markdown: str, title: str) -> str:
    """The text under the level-2 heading ``title``, up to the next one."""
    start = markdown.index(f"\n## {title}\n")
    end = markdown.find("\n## ", start + 1)
    return markdown[start : end if end > 0 else None]


def results_text() -> str:
    return "\n".join(path.read_text() for path in sorted(RESULTS.glob("*.md")))


def test_every_results_file_opens_with_its_date_commit_and_command():
    files = sorted(RESULTS.glob("*.md"))
    assert files
    for path in files:
        first = path.read_text().splitlines()[0]
        assert PROVENANCE.fullmatch(first), f"{path} does not open with its provenance line: {first!r}"


def test_results_md_is_gathered_from_the_results_files_and_every_section_is_dated():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from run_all import SECTIONS, gather
    finally:
        sys.path.remove(str(BENCHMARKS))
    text = (BENCHMARKS / "results.md").read_text()
    assert text == gather(), "benchmarks/results.md is stale: run `python benchmarks/run_all.py --gather`"
    for title in SECTIONS.values():
        body = section(text, title).split("\n", 3)[-1]
        assert PROVENANCE.match(body.strip()) or body.strip().startswith("Not run yet"), title


def test_the_figures_of_the_readmes_are_in_the_results_files():
    measured = set(DECIMAL.findall(results_text()))
    quoted = {
        "README.md, Results": section((REPO / "README.md").read_text(), "Results"),
        "benchmarks/README.md": (BENCHMARKS / "README.md").read_text(),
    }
    for where, text in quoted.items():
        missing = sorted(set(DECIMAL.findall(TARGET.sub("", text))) - measured)
        assert not missing, f"{where} quotes figures that no results file holds: {missing}"

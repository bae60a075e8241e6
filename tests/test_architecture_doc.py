"""docs/ARCHITECTURE.md's file tree names exactly the files of the package and of benchmarks/.

The tree is the first fenced block of the document. An entry is the text before the first run of two spaces on a line
indented by 0, 2, 4 or 6 spaces (deeper lines continue the description above them): a folder (``nn/``), one file
(``layers.py``), several (``runner.py, store.py``) or a pattern (``recipes/*.yaml``). A folder's ``__init__.py`` is
implied by the folder's entry; the top level's is listed. ``benchmarks/`` lists its scripts after the folder's name.
"""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "torchbop"
SOURCE_SUFFIXES = {".py", ".yaml", ".c", ".h"}


def tree_block() -> list[str]:
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    match = re.search(r"^```\n(.*?)^```$", text, flags=re.S | re.M)
    assert match, "docs/ARCHITECTURE.md has no fenced file tree"
    return match.group(1).splitlines()


def documented() -> tuple[set[str], set[str]]:
    """(package entries relative to src/torchbop, possibly patterns; benchmark scripts)."""
    entries: set[str] = set()
    benchmarks: set[str] = set()
    folders: list[str] = []
    in_benchmarks = False
    for line in tree_block():
        indent = len(line) - len(line.lstrip(" "))
        if not line.strip() or indent > 6:
            if in_benchmarks:  # the benchmarks' list continues over several lines
                benchmarks.update(re.findall(r"\w+\.py", line))
            continue
        in_benchmarks = False
        head, *rest_ = re.split(r" {2,}", line.strip(), maxsplit=1)
        rest = rest_[0] if rest_ else ""
        depth = indent // 2
        if head == "benchmarks/":
            benchmarks.update(re.findall(r"\w+\.py", rest))
            in_benchmarks = True
            continue
        if not head.startswith("src/torchbop") and depth == 0:
            continue  # reports/<profile>/ and the like: not source files
        if head.endswith("/") and "*" not in head:
            folders[depth:] = [head]
            if depth > 0:
                entries.add("/".join(f.rstrip("/") for f in folders[1:]) + "/__init__.py")
            continue
        prefix = "/".join(f.rstrip("/") for f in folders[1:depth])
        for name in (n.strip() for n in head.split(",")):
            entries.add(f"{prefix}/{name}" if prefix else name)
    return entries, benchmarks


def actual() -> set[str]:
    return {
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*")
        if p.is_file() and p.suffix in SOURCE_SUFFIXES and "__pycache__" not in p.parts
    }


def test_the_tree_names_every_package_file_and_no_other():
    entries, _ = documented()
    files = actual()
    patterns = {e for e in entries if "*" in e}
    covered = {f for f in files if any(fnmatch.fnmatch(f, p) for p in patterns)}
    missing = sorted(files - entries - covered)
    stale = sorted(e for e in entries - files if e not in patterns)
    empty = sorted(p for p in patterns if not any(fnmatch.fnmatch(f, p) for f in files))
    assert not missing, f"files not in docs/ARCHITECTURE.md: {missing}"
    assert not stale, f"docs/ARCHITECTURE.md names files that do not exist: {stale}"
    assert not empty, f"patterns in docs/ARCHITECTURE.md that match nothing: {empty}"


def test_the_tree_names_every_benchmark():
    _, benchmarks = documented()
    scripts = {p.name for p in (ROOT / "benchmarks").glob("*.py")}
    assert benchmarks == scripts, (
        f"benchmarks/ in docs/ARCHITECTURE.md: missing {sorted(scripts - benchmarks)}, "
        f"stale {sorted(benchmarks - scripts)}"
    )

"""The package's shape: the core imports torch alone, and the public API is where the README says."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import torchbop

ROOT = Path(__file__).resolve().parents[1]


def test_core_does_not_import_lightning_or_plotting():
    code = (
        "import sys, torchbop, torchbop.quantizers, torchbop.nn, torchbop.optim, torchbop.metrics;"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'lightning', 'pytorch_lightning', 'matplotlib',"
        " 'yaml', 'tensorboard', 'numpy'});"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    # torch itself may pull numpy in; everything else must stay out of the core
    assert set(filter(None, out.split(","))) <= {"numpy"}, out


def test_all_lists_exactly_what_the_package_imports():
    """``__all__`` names every public object ``torchbop/__init__.py`` imports or defines (``load_model``, which
    imports the training engine on first use), and nothing else."""
    tree = ast.parse((ROOT / "src" / "torchbop" / "__init__.py").read_text())
    imported = {
        alias.asname or alias.name for node in tree.body if isinstance(node, ast.ImportFrom) for alias in node.names
    }
    imported |= {node.name for node in tree.body if isinstance(node, ast.FunctionDef) and not node.name.startswith("_")}
    assert sorted(torchbop.__all__) == sorted(imported)
    assert len(set(torchbop.__all__)) == len(torchbop.__all__)
    assert torchbop.sign.__module__ == "torchbop.quantizers"  # re-exported, not redefined


def test_readme_imports_resolve():
    """Every ``from torchbop import ...`` of the README names an exported object."""
    readme = (ROOT / "README.md").read_text()
    names = [
        n.strip() for line in re.findall(r"^from torchbop import (.+)$", readme, flags=re.M) for n in line.split(",")
    ]
    assert names, "the README shows no top-level import"
    assert set(names) <= set(torchbop.__all__), set(names) - set(torchbop.__all__)

"""The package's shape: the core imports torch alone, and the public API is where the README says."""

from __future__ import annotations

import subprocess
import sys


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


def test_public_api():
    import torchbop

    for name in torchbop.__all__:
        assert hasattr(torchbop, name), name
    assert torchbop.sign.__module__ == "torchbop.quantizers"

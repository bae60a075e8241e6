"""atomic_write: the destination holds its old content or the whole new one, and no temporary file is left."""

from __future__ import annotations

import pytest

from torchbop.atomic_file import atomic_write


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "record.json"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_write(path, "w") as f:
            f.write("half of the new")
            raise RuntimeError("killed")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["record.json"]


@pytest.mark.parametrize("durable", [False, True])
def test_a_complete_write_replaces_the_file(tmp_path, durable):
    path = tmp_path / "sub" / "model.bin"
    with atomic_write(path, "wb", durable=durable) as f:
        f.write(b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01" and [p.name for p in path.parent.iterdir()] == ["model.bin"]

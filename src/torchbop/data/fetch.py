"""Make sure datasets are on disk before a long job starts: download what is missing, then verify everything.

:func:`fetch_datasets` is what a command runs first (``torchbop experiment``, ``make demo``): for each named dataset
it looks under the data root (:func:`~torchbop.data.paths.resolve_data_dir`), downloads only the files that are
missing, from the canonical URLs, each checked against its md5 and renamed into place only when complete
(:func:`~torchbop.data.paths.download_file`), with progress on stderr; then it reads every split once with
verification on, so that a corrupt file is reported now, by name, rather than hours into a run.

What each dataset needs (its row of :data:`~torchbop.data.datasets.DATASETS` lists the files):

* ``mnist``, ``fashion-mnist``: the four IDX files in ``<root>/<name>/`` (``.gz`` or uncompressed);
* ``cifar10``: ``<root>/cifar10/cifar-10-batches-py/`` with all six batches, or else the canonical archive
  ``<root>/cifar10/cifar-10-python.tar.gz`` (which is then read directly, never extracted).

On a machine without network access the first failed download stops the fetch with one
:class:`~torchbop.data.paths.DatasetUnavailableError` listing every file still missing, across all the datasets
asked for: its URL, its md5 and the exact path to copy it to. Files fetched before the failure are complete and
kept; the failed one leaves nothing behind.

Example:
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as root:
    ...     [f.filename for _, f in missing_files(["cifar10"], root)]
    ['cifar-10-python.tar.gz']
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import TextIO

from torchbop.data.datasets import DATASETS, check_dataset_names, load_dataset
from torchbop.data.paths import RemoteFile, describe_data_dir, fetch_files, resolve_data_dir

__all__ = ["DATASETS", "fetch_datasets", "missing_files"]


def missing_files(names: Iterable[str], root: str | os.PathLike[str] | None = None) -> list[tuple[Path, RemoteFile]]:
    """The files that must be downloaded so that every split of the named datasets loads from the data root, as
    ``(folder, remote)`` pairs (the file goes to ``folder / remote.filename``).

    Raises:
        ValueError: an unknown dataset name.
    """
    data_root = resolve_data_dir(root)
    missing: list[tuple[Path, RemoteFile]] = []
    for name in check_dataset_names(names):
        missing += DATASETS[name].files(data_root)
    return missing


def fetch_datasets(
    names: Iterable[str],
    root: str | os.PathLike[str] | None = None,
    *,
    progress: bool | TextIO | None = True,
    verify: bool = True,
) -> Path:
    """Make sure each named dataset is present and intact under the data root, downloading only what is missing.

    Args:
        names: datasets of :data:`~torchbop.data.datasets.DATASETS` (a single name works too).
        root: the data root, as ``--data-dir``/``data_dir``; ``None`` uses ``$TORCHBOP_DATA`` or
            ``~/.cache/torchbop`` (:func:`~torchbop.data.paths.resolve_data_dir`).
        progress: where downloads report progress: ``True`` for stderr, a text stream, ``False`` for silence.
        verify: after downloading, read every split with verification on (about 1 s for CIFAR-10 and 0.5 s per
            MNIST variant), so that corrupt files are found now.

    Returns:
        The data root.

    Raises:
        ValueError: an unknown dataset name.
        DatasetUnavailableError: a download failed (typically: offline). The message lists every file still
            missing with its URL, md5 and the exact path to put it at, and how to choose another data root.
        ChecksumError: a download arrived with the wrong md5, or a file on disk is corrupt; the message names the
            file and the fix.
        ValueError: a file on disk is unreadable (truncated, not the format); the message names it.
    """
    unique = check_dataset_names(names)
    data_root = resolve_data_dir(root)
    fetch_files(
        missing_files(unique, data_root), root=data_root, data_dir_source=describe_data_dir(root), progress=progress
    )
    if verify:
        for name in unique:  # both splits, read with verification on: the loaders raise on any corrupt file
            for train in (True, False):
                load_dataset(name, data_root, train=train)
    return data_root

"""Journals for the state-machine tests live on tmpfs when there is one: the machines commit
(fsync) twice per step, which on a busy disk would dominate the tier's run time."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest

from hpcmig.controller.journal import Journal


@pytest.fixture
def journal() -> Iterator[Journal]:
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    d = tempfile.mkdtemp(prefix="hpcmig-journal-", dir=base)
    j = Journal(os.path.join(d, "journal.db"))
    try:
        yield j
    finally:
        j.close()
        shutil.rmtree(d, ignore_errors=True)

"""Local writes through ``storage.write_bytes`` (manifests, run manifests, checkpoints, the sink's
Parquet files): the old content or the new, never a part, no temp file left behind, and the rename
made durable. ENOSPC and power loss cannot be provoked here, so ``os.fsync`` is replaced: raising
for the first, recording what was synced for the second."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from catalog_vision import storage as st


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path, monkeypatch):
    target = tmp_path / "runs" / "_run.json"
    st.write_bytes(str(target), b'{"status": "succeeded"}')
    real_fsync = os.fsync

    def full_disk(fd):
        if stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        st.write_bytes(str(target), b'{"status": "fail' + b"x" * 100_000)
    assert target.read_bytes() == b'{"status": "succeeded"}'
    assert sorted(p.name for p in target.parent.iterdir()) == ["_run.json"]


def test_the_rename_is_made_durable_by_syncing_the_folder(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def record(fd):
        mode = os.fstat(fd).st_mode
        synced.append("dir" if stat.S_ISDIR(mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", record)
    target = tmp_path / "part-1.parquet"
    st.write_bytes(str(target), b"new content")
    assert target.read_bytes() == b"new content"
    assert synced == ["file", "dir"]  # the data, then the folder entry that names it

import mmap
import os
import uuid
from pathlib import Path

from nanovl.launch import SHM_PREFIX, remove_orphan_shm


def test_orphan_shared_memory_regions_are_removed_and_mapped_ones_kept():
    shm = Path("/dev/shm")
    orphan = shm / f"{SHM_PREFIX}{uuid.uuid4()}"
    in_use = shm / f"{SHM_PREFIX}{uuid.uuid4()}"
    for path in (orphan, in_use):
        path.write_bytes(b"\0" * 4096)
    fd = os.open(in_use, os.O_RDWR)
    mapping = mmap.mmap(fd, 4096)   # a live process maps it, as a running server and its stubs do
    try:
        assert remove_orphan_shm() >= 1
        assert not orphan.exists() and in_use.exists()
    finally:
        mapping.close()
        os.close(fd)
        in_use.unlink()

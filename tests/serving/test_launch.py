import mmap
import os
import uuid
from pathlib import Path

from nanovl.serving.launch import SHM_PREFIX, remove_orphan_shm


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


def test_the_library_path_keeps_a_containers_own_order():
    from nanovl.serving.launch import TRITONSERVER_ENV, library_path

    ngc = {TRITONSERVER_ENV: "/opt/tritonserver",
           "LD_LIBRARY_PATH": "/usr/local/cuda/compat/lib:/usr/local/tensorrt/lib"}
    # Ubuntu's python3 (the container's): its LIBDIR is searched anyway and must not shadow the CUDA libraries.
    assert library_path(ngc, "/usr/lib/x86_64-linux-gnu") == ngc["LD_LIBRARY_PATH"]
    # A Python of its own (pyenv, conda), even below a system folder: the stub needs its libpython, after the
    # container's folders.
    for own in ("/opt/conda/lib", "/usr/local/lib/python-builds/3.10/lib"):
        assert library_path(ngc, own) == f"{ngc['LD_LIBRARY_PATH']}:{own}"


def test_the_wheels_server_gets_its_libraries_then_pythons_then_the_callers(monkeypatch):
    from nanovl.serving import launch
    from nanovl.serving.launch import library_path

    monkeypatch.setattr(launch, "_pytriton_dir", lambda: Path("/site/pytriton"))
    path = library_path({"LD_LIBRARY_PATH": "/mine"}, "/root/.pyenv/versions/3.11.7/lib").split(":")
    assert path == ["/site/nvidia_pytriton.libs", "/root/.pyenv/versions/3.11.7/lib", "/mine"]
    assert library_path({}, "/usr/lib/x86_64-linux-gnu").split(":")[1:] == []

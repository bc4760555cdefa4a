"""The llm stage's own mmap threshold (nanovl.serving.memory), set through glibc's mallopt."""
from __future__ import annotations

import platform

import pytest

from nanovl.serving.memory import set_mmap_threshold


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_glibc_takes_a_fixed_mmap_threshold():
    assert set_mmap_threshold(64 << 20) is True
    assert set_mmap_threshold(1 << 20) is True   # back to the launcher's default for the rest of the run

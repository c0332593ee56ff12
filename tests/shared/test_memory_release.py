"""perennial.memory: freed memory goes back to the OS where the C library can do it."""

from __future__ import annotations

import platform

import pytest

from perennial.memory import release_freed_memory


@pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's; elsewhere a no-op"
)
def test_freed_memory_goes_back_to_the_os_on_glibc() -> None:
    assert release_freed_memory() is True

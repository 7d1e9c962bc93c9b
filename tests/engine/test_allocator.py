"""keep_freed_memory: a thread that allocates, touches and frees a large block again and again is served
from the kept heap (its pages fault in once), where glibc's defaults map and fault it in every time."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")

# Run in a fresh interpreter: the settings are process-wide, and glibc fixes its arenas at the first
# allocation by a second thread.
PROBE = """
import ctypes, json, resource, sys, threading
from app.engine.allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
BLOCK = 64 * 2**20  # bytes: above the 32 MB that glibc's adaptive threshold reaches, like a batch's activations
def work(out):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(12):  # as torch's CPU allocator does: malloc, write every page, free
        block = libc.malloc(BLOCK)
        ctypes.memset(block, 1, BLOCK)
        libc.free(block)
    out.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
libc.free(libc.malloc(1 << 20))  # the main thread has allocated too
faults = []
thread = threading.Thread(target=work, args=(faults,))
thread.start(); thread.join()
print(json.dumps({"applied": applied, "faults": faults[0], "pages": BLOCK // resource.getpagesize()}))
"""


def _probe(mode: str) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=120, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_freed_blocks_are_reused_instead_of_faulted_in_again():
    kept, default = _probe("keep"), _probe("default")
    assert kept["applied"] is True
    pages = kept["pages"]
    # glibc's defaults: the block is mapped afresh on each of the 12 rounds, so its pages fault in each time
    assert default["faults"] > 6 * pages, default
    # kept: the first round faults the block in; the other 11 reuse it
    assert kept["faults"] < 3 * pages, kept


def test_the_settings_apply_once_and_report_it():
    code = (
        "from app.engine import allocator; "
        "print(allocator.keep_freed_memory(), allocator.keep_freed_memory(), allocator._applied)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.split() == ["True", "True", "True"]


@pytest.mark.parametrize("keep", [True, False])
def test_the_console_scripts_apply_the_setting_first(monkeypatch, keep):
    import argparse

    from app import cli
    from app.engine import allocator

    calls = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: calls.append(1) or True)
    monkeypatch.setenv("DIFFUSION_KEEP_FREED_MEMORY", "true" if keep else "false")
    args = argparse.Namespace(model_store=None, queue_url=None, log_level="warning")
    assert cli._settings(args).keep_freed_memory is keep
    assert calls == ([1] if keep else [])

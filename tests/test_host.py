import subprocess
import sys

import pytest

from lmjax import host

# A fresh process allocates, touches and frees a 256 MB buffer (a step's temporaries) 5 times and prints the
# page faults of the last 4 rounds: glibc's defaults map and unmap it every time, keep_freed_memory keeps it
# in the heap.
PROBE = """
import ctypes, resource, sys
from lmjax import host
print(host.keep_freed_memory() if sys.argv[1] == "tuned" else "default")
libc = ctypes.CDLL("libc.so.6"); libc.malloc.restype = ctypes.c_void_p; size = 256 << 20
for i in range(5):
    if i == 1:
        start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    p = libc.malloc(size); ctypes.memset(p, 1, size); libc.free(ctypes.c_void_p(p))
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
"""


def probe(mode: str, env: dict | None = None) -> tuple[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True, env=env
    )
    applied, faults = out.stdout.split()
    return applied, int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_freed_memory_stops_the_per_step_page_faults(monkeypatch):
    for key in host.ENV:
        monkeypatch.delenv(key, raising=False)
    default_faults = probe("default")[1]  # 4 x 65,536 with 4 KiB pages (fewer where huge pages are on)
    applied, faults = probe("tuned")
    assert applied == "True" and default_faults > 100 and faults * 10 < default_faults, (
        faults,
        default_faults,
    )


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_users_malloc_settings_win(monkeypatch):
    monkeypatch.setenv("MALLOC_TOP_PAD_", "131072")
    assert host.keep_freed_memory() is False
    assert probe("tuned", env=None)[0] == "False"


INLINE_PROBE = """
import sys
import jax, jax.numpy as jnp
from lmjax import host
if sys.argv[1] == "inline":
    host.run_cpu_steps_inline()
f = jax.jit(lambda x: (x @ x @ x @ x).sum())
x = jnp.ones((1500, 1500))
f(x).block_until_ready()
print(f(x).is_ready())  # an inline step has finished when the call returns; a dispatched one (0.2 s) has not
"""


def test_cpu_steps_run_inline_after_setup():
    def run(mode):
        return subprocess.run(
            [sys.executable, "-c", INLINE_PROBE, mode], capture_output=True, text=True, check=True
        ).stdout.split()[-1]

    assert run("default") == "False"
    assert run("inline") == "True"

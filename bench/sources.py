"""Many client addresses for wrk: ``bench/sources.c`` (an LD_PRELOAD of ``connect``) built
once with the machine's C compiler; each loopback connection wrk opens then comes from one of
``count`` addresses 127.0.1.1, 127.0.1.2, … in turn. The hash scheduler keys on the client's
address: from wrk's one address every connection goes to one worker."""

from __future__ import annotations

import atexit
import functools
import shutil
import subprocess
import tempfile
from pathlib import Path

SOURCE = Path(__file__).with_name("sources.c")
#: Client addresses by default: enough that rendezvous hashing spreads them over the workers.
COUNT = 250


@functools.cache
def _built() -> Path | None:
    """The shared object, built into a temporary folder for this process (None: no compiler)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    folder = Path(tempfile.mkdtemp(prefix="clusterlab-sources-"))
    atexit.register(shutil.rmtree, folder, True)
    lib = folder / "sources.so"
    subprocess.run(
        [cc, "-O2", "-shared", "-fPIC", "-o", str(lib), str(SOURCE), "-ldl"],
        check=True,
        capture_output=True,
        text=True,
    )
    return lib


def preload_env(count: int = COUNT) -> dict[str, str] | None:
    """The environment that makes wrk connect from ``count`` addresses (None: no C compiler
    here, so wrk keeps its one address)."""
    lib = _built()
    if lib is None:
        return None
    return {"LD_PRELOAD": str(lib), "CLUSTERLAB_SOURCES": str(count)}

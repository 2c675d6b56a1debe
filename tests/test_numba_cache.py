"""The compiled modules' on-disk cache follows the runtime: a cached step is reused only under
the runtime sources it was compiled with (``numba_jit.RUNTIME_STAMP``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from optgen_runtime import numba_jit

ROOT = Path(__file__).resolve().parent.parent

# A caller and a compiled helper in another file, as a generated step and the runtime's ``load``:
# the helper is compiled into the caller, so the caller's cache entry holds the helper's code.
HELPER = """
from optgen_runtime.numba_jit import compiled

@compiled()
def helper(x):
    return x + {add}
"""
CALLER = """
from helper import helper
from optgen_runtime.numba_jit import compiled

@compiled()
def caller(x):
    return helper(x)
"""
RUN = """
import json, sys
from optgen_runtime import numba_jit
if len(sys.argv) > 1:
    numba_jit.RUNTIME_STAMP = sys.argv[1]
from caller import caller
value = caller(1.0)
stats = caller.stats
print(json.dumps([value, sum(stats.cache_hits.values()), sum(stats.cache_misses.values())]))
"""


def run(folder: Path, *stamp: str) -> list[float]:
    env = {**os.environ, "PYTHONPATH": f"{folder}{os.pathsep}{ROOT}", "OPTGEN_NUMBA_CACHE": "1"}
    env.pop("NUMBA_CACHE_DIR", None)
    done = subprocess.run(
        [sys.executable, "-c", RUN, *stamp], env=env, capture_output=True, text=True, cwd=folder
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_runtime_change_compiles_afresh(tmp_path: Path) -> None:
    (tmp_path / "helper.py").write_text(HELPER.format(add=1))
    (tmp_path / "caller.py").write_text(CALLER)
    assert run(tmp_path) == [2.0, 0, 1]  # compiled, saved
    assert run(tmp_path) == [2.0, 1, 0]  # loaded from the cache
    (tmp_path / "helper.py").write_text(HELPER.format(add=2))
    # numba's own key: the caller's file is unchanged, so its entry is used, with the old helper
    # in it (the hazard the stamp removes; the control that shows this test can fail)
    assert run(tmp_path) == [2.0, 1, 0]
    # another runtime: compiled afresh, with the helper as it now is, and cached under it
    assert run(tmp_path, "another runtime") == [3.0, 0, 1]
    assert run(tmp_path, "another runtime") == [3.0, 1, 0]


def test_the_stamp_is_a_digest_of_every_runtime_source(tmp_path: Path) -> None:
    folder = Path(numba_jit.__file__).parent
    assert numba_jit.runtime_stamp() == numba_jit.runtime_stamp(folder)
    assert numba_jit.RUNTIME_STAMP == numba_jit.runtime_stamp()
    for name in ("numba_support.py", "common.py", "numpy_support.py"):
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    before = numba_jit.runtime_stamp(tmp_path)
    stamps = {before}
    for name in ("numba_support.py", "common.py"):  # its own code, the constants it freezes
        path = tmp_path / name
        text = path.read_bytes()
        changed = text.replace(b"CHUNK = 65536", b"CHUNK = 32768").replace(
            b'MASTER = "plain"', b'MASTER = "flat"'
        )
        assert changed != text
        path.write_bytes(changed)
        stamps.add(numba_jit.runtime_stamp(tmp_path))
        path.write_bytes(text)
    (tmp_path / "new.py").write_text("")
    stamps.add(numba_jit.runtime_stamp(tmp_path))
    assert len(stamps) == 4
    (tmp_path / "new.py").unlink()
    assert numba_jit.runtime_stamp(tmp_path) == before

"""Fuzz suite settings (hypothesis profiles) and the per-category outcome collector.

Profiles: ``ci`` (default: bounded, derandomized, so CI is deterministic) and ``long``
(``OPTGEN_FUZZ=long``: 20x the examples, a random seed). With ``OPTGEN_FUZZ_REPORT=PATH`` set,
the per-category counts of every case drawn (refused cleanly, accepted and equal, silently
wrong, partial writes, ...) are written there as JSON at the end of the session
(``python -m tools.fuzz_report`` runs the suite and prints them as a table).

``tests/fuzz`` is a package (``__init__.py``) so that this file is imported as
``fuzz.conftest``: the test modules in ``tests/`` keep importing ``tests/conftest.py`` as
``conftest``.
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict

from hypothesis import HealthCheck, settings

LONG = os.environ.get("OPTGEN_FUZZ", "") == "long"
FACTOR = 20 if LONG else 1

_COMMON = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
    "database": None,
}
settings.register_profile("ci", derandomize=True, print_blob=True, **_COMMON)
settings.register_profile("long", derandomize=False, print_blob=True, **_COMMON)
settings.load_profile("long" if LONG else "ci")


def examples(n: int) -> int:
    """``n`` examples in the CI profile, ``FACTOR`` times as many in the long one."""
    return n * FACTOR


# category -> outcome -> count (filled by harness.record; one process, so a module global).
COUNTS: defaultdict[str, Counter[str]] = defaultdict(Counter)


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get("OPTGEN_FUZZ_REPORT")
    if not path or not COUNTS:
        return
    data = {
        "profile": "long" if LONG else "ci",
        "categories": {c: dict(sorted(v.items())) for c, v in sorted(COUNTS.items())},
    }
    with open(path, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)

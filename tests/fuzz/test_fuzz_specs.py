"""Malformed specs (a small category): ``codegen.load.load_rule`` raises an error naming the file,
and ``python -m tools.generate --specs DIR --out DIR2 --check`` exits non-zero with one line
naming it, never 0 with nothing generated; neither writes anything."""

from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from codegen.load import load_rule
from fuzz.conftest import COUNTS, examples
from fuzz.harness import EQUAL, PARTIAL, REFUSED, UNCLEAR, WRONG
from tools import generate

BASE = '''"""A fuzzed rule."""
import sympy as sp
from codegen.mxnet import common
from codegen.spec import Rule, unit
RULE = Rule("fz", __doc__)
mx = common(RULE)
w = RULE.weight
m = RULE.state("m")
RULE.update(m, 0.9 * m + RULE.grad)
RULE.update(w, w - mx.lr * RULE.new(m))
'''

# (what, old line or None to append, new text)
MUTATIONS = [
    ("syntax error", None, "RULE.update(w,\n"),
    ("undefined name", None, "x = undefined_name\n"),
    ("import error", "import sympy as sp\n", "import sympy as sp\nimport no_such_module_fz\n"),
    ("raises at import", None, "1 / 0\n"),
    ("no RULE", 'RULE = Rule("fz", __doc__)\n', 'RULE2 = Rule("fz", __doc__)\nRULE = None\n'),
    ("name mismatch", 'Rule("fz", __doc__)', 'Rule("other", __doc__)'),
    ("reserved name", 'RULE.state("m")', 'RULE.state("key")'),
    ("default outside", None, "b = RULE.hyper('beta', 1.5, unit())\n"),
    ("unsupported function", "- mx.lr * RULE.new(m))", "- mx.lr * sp.erf(RULE.new(m)))"),
    ("weight never updated", "RULE.update(w, w - mx.lr * RULE.new(m))\n", ""),
    ("state never updated", "RULE.update(m, 0.9 * m + RULE.grad)\n", ""),
    ("weight updated twice", None, "RULE.update(w, w)\n"),
    ("empty file", "*", ""),
    ("binary junk", "*", "\x00\x01 not python"),
    ("undeclared symbol", "RULE.grad)\n", "RULE.grad * sp.Symbol('mystery'))\n"),
]


def mutate(text: str, old: str | None, new: str) -> str:
    if old is None:
        return text + new
    if old == "*":
        return new
    return text.replace(old, new, 1)


def record(outcome: str) -> str:
    COUNTS["malformed specs"][outcome] += 1
    COUNTS["malformed specs"]["drawn"] += 1
    return outcome


@settings(max_examples=examples(15))
@given(st.sampled_from(MUTATIONS))
def test_malformed_spec_is_refused_naming_the_file(mutation):
    # One mutation per spec: two can cancel out (drop the weight's update, append another).
    what, old, new = mutation
    text = mutate(BASE, old, new)
    with tempfile.TemporaryDirectory() as tmp:
        specs, out = Path(tmp) / "specs", Path(tmp) / "out"
        specs.mkdir()
        out.mkdir()
        path = specs / "fz.py"
        path.write_text(text)
        try:
            load_rule(path)
        except Exception as error:
            load_ok = "fz.py" in str(error)
            load_message = f"{type(error).__name__}: {error}"
        else:
            load_ok, load_message = None, "accepted"
        stdout, stderr = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                code = generate.main(["--specs", str(specs), "--out", str(out), "--check"])
            except SystemExit as exit_:
                code = exit_.code
            except Exception as error:
                code = f"uncaught {type(error).__name__}: {error}"
        lines = stderr.getvalue().strip().splitlines()
        unchanged = path.read_text() == text and not any(out.iterdir())
    if not unchanged:
        outcome, why = PARTIAL, "wrote a file"
    elif load_ok is None or code == 0:
        outcome, why = WRONG, f"accepted: load_rule {load_message!r}, generate exit {code!r}"
    elif not load_ok or not isinstance(code, int) or len(lines) != 1 or "fz.py" not in lines[0]:
        outcome, why = UNCLEAR, f"load_rule: {load_message!r}; generate: {code!r} {lines!r}"
    else:
        outcome, why = REFUSED, ""
    record(outcome)
    assert outcome == REFUSED, f"{what}: {outcome}: {why}"


def test_a_good_spec_and_an_empty_specs_dir():
    """The base spec loads (so every mutation above is what makes a spec bad); an empty specs
    directory is not "in sync": nothing would be generated."""
    with tempfile.TemporaryDirectory() as tmp:
        specs, out = Path(tmp) / "specs", Path(tmp) / "out"
        specs.mkdir()
        out.mkdir()
        (specs / "fz.py").write_text(BASE)
        assert load_rule(specs / "fz.py").name == "fz"
        record(EQUAL)
        (specs / "fz.py").unlink()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            code = generate.main(["--specs", str(specs), "--out", str(out), "--check"])
        record(REFUSED if code != 0 else WRONG)
        assert code != 0, "an empty specs directory checks as in sync"

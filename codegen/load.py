"""Discover and load spec files: ``specs/<rule>.py`` binding ``RULE``.

A spec file is Python run at load time. Whatever it raises, ``SystemExit`` and
``KeyboardInterrupt`` included, comes back as one :class:`SpecError` naming the file and the spec
line (the original exception is chained, for ``python -m tools.generate --debug``): a spec can
neither end the generator nor let it report success without having generated it.
"""

from __future__ import annotations

import importlib.util
import sys
import traceback
from pathlib import Path

from codegen.spec import Rule, SpecError
from codegen.spec_parts import display_path

SPECS_DIR = Path(__file__).resolve().parent.parent / "specs"


def spec_paths(specs_dir: Path = SPECS_DIR) -> list[Path]:
    """Every spec file, sorted by name (files starting with '_' are helpers, not rules)."""
    return sorted(p for p in Path(specs_dir).glob("*.py") if not p.name.startswith("_"))


def _spec_line(error: BaseException, path: Path) -> int:
    """The line of ``path`` the error came from: the innermost frame in the spec file (for a
    syntax error, the line the parser names); 0 when none is known."""
    if isinstance(error, SyntaxError) and error.filename and Path(error.filename) == path:
        return error.lineno or 0
    line = 0
    for frame, lineno in traceback.walk_tb(error.__traceback__):
        if Path(frame.f_code.co_filename) == path:
            line = lineno
    return line


def _one_line(error: BaseException) -> str:
    """``Type: message`` on one line (a SyntaxError without its caret drawing)."""
    if isinstance(error, SyntaxError):
        text = error.msg
    elif isinstance(error, SystemExit):
        text = f"the spec called exit({error.code!r})" if error.code is not None else "exit()"
    else:
        text = str(error)
    text = " ".join(text.split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _run(path: Path, source: str) -> object:
    """Run the spec module and return its ``RULE`` (any exception becomes a SpecError)."""
    name = f"_optgen_spec_{path.stem}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise SpecError(f"{source}: cannot be imported")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except SpecError:
        raise
    except BaseException as error:  # a spec must not end or fool the generator
        line = _spec_line(error, path)
        where = f"{source}:{line}" if line else source
        hint = ""
        if isinstance(error, TypeError) and "convert expression to" in str(error):
            # math.sqrt(beta2), float(lr), np.exp(g): a number wanted of a SymPy symbol
            hint = " (a math, NumPy or float() call on a symbol: use SymPy's, sp.sqrt, sp.exp)"
        raise SpecError(f"{where}: {_one_line(error)}{hint}") from error
    finally:
        sys.modules.pop(name, None)
    return getattr(module, "RULE", None)


def load_rule(path: Path) -> Rule:
    """Run one spec file and return its checked rule."""
    path = Path(path).resolve()
    source = display_path(str(path))
    rule = _run(path, source)
    if not isinstance(rule, Rule):
        raise SpecError(f"{source}: defines no RULE = Rule(...)")
    if rule.name != path.stem:
        raise SpecError(
            f"{rule._where(rule.line)}: rule is named {rule.name!r}; "
            f"the file must be {rule.name}.py"
        )
    try:
        return rule.finish()
    except SpecError:
        raise
    except Exception as error:  # SymPy failing on a malformed equation: still one line
        raise SpecError(f"{source}: {_one_line(error)}") from error


def load_rules(specs_dir: Path = SPECS_DIR, names: list[str] | None = None) -> list[Rule]:
    paths = spec_paths(specs_dir)
    if names:
        known = {p.stem: p for p in paths}
        missing = [n for n in names if n not in known]
        if missing:
            raise SpecError(f"no spec file for {', '.join(missing)} in {specs_dir}")
        paths = [known[n] for n in names]
    return [load_rule(p) for p in paths]

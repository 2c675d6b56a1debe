"""Write a commented spec skeleton for a new rule: ``python -m tools.new NAME``.

The skeleton is a working rule (plain SGD) with every feature of the spec language shown in
comments; edit the equations, then run the commands in ``NEXT`` (printed as a hint; README's
"Adding an optimizer" lists the same, tests/test_new_spec.py checks): the tests pick the new spec
up and derive their settings from its declarations, with no test edit.
"""

from __future__ import annotations

import argparse
import keyword
import sys
from pathlib import Path

from codegen.generate import GENERATED_DIR
from codegen.load import SPECS_DIR

SKELETON = '''"""{title}: <one sentence saying what the rule does>.

<Author et al. (year), "Paper title">. <Reference implementation it follows: MXNet 1.9.1's
``mx.optimizer.X``, torch.optim.X, or the paper>.

Paper's equations:
    <the update, in the seed's notation: the value at step i+1 from values at step i>

Code followed here (and every difference from the paper or from MXNet, with the reason):
    G = clip(rescale_grad * g, clip_gradient)
    w_{{i+1}} = w_i - lr * G
"""

import sympy as sp  # noqa: F401  (sqrt, Abs, sign, Max, Min, exp, log, tanh, Piecewise)

from codegen.mxnet import common  # also clip(x, c), mxnet_sign(x) (MXNet's sign: 0 at NaN)
from codegen.spec import Rule, positive, unit  # noqa: F401  (legal values; integer, softplus)

# class_name="..." names its torch.optim-style class (default: CamelCase of the rule name);
# mxnet="sgd" says it reproduces that MXNet 1.9.1 optimizer, which then requires goldens recorded
# from it (tools/record_mxnet_goldens.py); leave it out for a rule MXNet does not have.
RULE = Rule("{name}", __doc__)

# lr, wd, rescale_grad, clip_gradient with MXNet's names and defaults (lr: this rule's default).
mx = common(RULE, lr=0.01)
# More hyperparameters: name, default, legal values (a default outside them is refused).
#   beta1 = RULE.hyper("beta1", 0.9, unit(), doc="decay of the first moment")
#   flag = RULE.flag("bias_correction", True);  kind = RULE.choice("mode", "a", ("a", "b"))
#   period = RULE.hyper("period", 4, integer(1))   # a count: whole numbers only
w, g, t = RULE.weight, RULE.grad, RULE.t

# Per-element states (same shape as the weight), with their initial value (a constant, w, or
# hyperparameters declared above: init_state then takes them):
#   mean = RULE.state("mean", 0, doc="first moment")
# Powers: x**2, x**(3/2) (sqrt), x**(1/3) (cbrt), x**sp.Rational(2, 5) (pow); a float exponent
# that is a whole number, half or third (2.0, 0.5, Python's 1/3) is that number; a fractional
# power of a negative base is NaN.
# Host-side scalars carried across steps (one per weight), e.g. a schedule product:
#   prod = RULE.host_state("prod", 1.0)
# Per-tensor reductions over all elements, computed in a phase before the update:
#   gw = RULE.sum("gw", g * w)               # the sum of a per-element expression
#   w_norm = RULE.norm("w_sq", w)            # sqrt of the sum of w^2 (named w_sq)
# Random draws: a standard normal per element and step (declares the ``seed`` hyperparameter):
#   xi = RULE.normal("xi")                   # scale it: + sp.sqrt(mx.lr) * xi is N(0, lr)

# Equations: RULE.update(x, expr) returns x at step i+1; RULE.let names an intermediate.
# Anything that depends only on hyperparameters, t and host states is computed on the host.
G = RULE.let("G", mx.clipped())  # clip(rescale_grad * g, clip_gradient)
RULE.update(w, w - mx.lr * G)

# The tests derive their settings from the declarations above (random legal values, every flag
# and choice value, enough steps for every branch the host decides, up to 40). Where that cannot
# reach a branch or make a state move, ask for a setting (the rest at their defaults):
#   RULE.test_case(steps=10, beta2=0.9)
'''


# Every command a new rule needs once its spec is written, in order, with what it does.
NEXT: tuple[tuple[str, str], ...] = (
    ("python -m tools.generate", "generated/{rules,numpy,numba,triton}/NAME.py, indexes"),
    ("python -m tools.op_counts --write", "pins its op counts (tests/goldens/op_counts.json)"),
    ("python -m tools.docs --write", "adds it to README's rule table"),
    ("python -m tools.trajectories", "draws docs/trajectories/NAME.gif and the comparisons"),
    ("bash tools/test.sh -k NAME", "its tests, every parametrized one (2-5 min, 2 cores)"),
    ("bash tools/test.sh", "lint and the whole suite"),
)


def next_commands(name: str) -> list[str]:
    """``NEXT``'s commands for the rule ``name``."""
    return [command.replace("NAME", name) for command, _ in NEXT]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.new", description=__doc__.split("\n")[0])
    parser.add_argument("name", help="rule name (a Python identifier, e.g. my_adam)")
    parser.add_argument("--specs", type=Path, default=SPECS_DIR, help="specs directory")
    parser.add_argument("--force", action="store_true", help="overwrite an existing spec")
    args = parser.parse_args(argv)
    name = args.name
    if not name.isidentifier() or keyword.iskeyword(name) or name.startswith("_"):
        print(f"error: {name!r} is not a valid rule name (a Python identifier)", file=sys.stderr)
        return 2
    if name != name.lower():
        print(
            f"error: rule names are lower-case (module names): {name.lower()!r}; the class "
            "name is the spec's Rule(..., class_name=...)",
            file=sys.stderr,
        )
        return 2
    if not args.specs.is_dir():
        print(f"error: --specs {args.specs}: no such directory", file=sys.stderr)
        return 2
    path = args.specs / f"{name}.py"
    if path.exists() and not args.force:
        print(f"error: {path} exists (use --force to overwrite)", file=sys.stderr)
        return 2
    variant = GENERATED_DIR / "rules" / f"{name}.py"
    ours = args.specs.resolve() == SPECS_DIR.resolve()
    if ours and variant.exists() and not path.exists():  # a special case's or variant's module
        print(
            f"error: {name!r} is the name of another rule's generated module ({variant}): "
            "choose another name",
            file=sys.stderr,
        )
        return 2
    title = name.replace("_", " ").title()
    try:
        path.write_text(SKELETON.format(name=name, title=title))
    except OSError as error:
        print(f"error: cannot write {path}: {error.strerror or error}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    print("next: edit it, then run (python: .venv/bin/python, or source .venv/bin/activate)")
    for command, what in NEXT:
        print(f"  {command.replace('NAME', name):<40} # {what.replace('NAME', name)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

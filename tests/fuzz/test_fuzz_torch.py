"""Fuzz the torch.optim-style classes: ``step``, ``load_state_dict`` and
``load_torch_state_dict`` are refused before any write (class and culprit named; parameters,
gradients, every state entry, the param groups and the loaded state dict byte-identical) or
equal the reference: the rule's module on copies (the one the class runs: numba where the rule is
compiled, else NumPy; with ``backend="triton"``, Triton)."""

from __future__ import annotations

import copy
import importlib
import math
from typing import Any

import numpy as np
import pytest
import torch
from conftest import torch_peer
from hypothesis import given, settings
from hypothesis import strategies as st

from fuzz.conftest import examples
from fuzz.harness import (
    META,
    RULE_NAMES,
    Case,
    absent_under,
    canonical_hyperparams,
    fill,
    hyperparams,
    numpy_module,
    snap,
    torch_class,
    triton_module,
    verdict,
)
from optgen_runtime.hyperparams import resolve_hyperparams
from optgen_runtime.philox import tensor_seed

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore::UserWarning")

# The step fuzz checks each parameter against the module's step on it alone: a rule with group
# reductions (a global norm) updates a group together (tests/test_group_reductions.py,
# tests/test_prodigy.py check those classes against step_multi and their references).
PER_PARAMETER = [r for r in RULE_NAMES if not META[r].GROUP_REDUCTIONS]


# Found by this suite (each pinned by a strict xfail in test_fuzz_found.py).


def make(draw: st.DrawFn, rule: str, backend: str, n: int | None = None):
    """An optimizer of ``rule`` over 1-2 parameters with gradients, perhaps stepped already."""
    n = n or draw(st.integers(1, 2))
    dtype = (
        torch.float32
        if backend == "triton"
        else draw(st.sampled_from([torch.float32, torch.float64]))
    )
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shapes = [draw(st.sampled_from([(1,), (5,), (3, 4), (0,), ()])) for _ in range(n)]
    params = [
        torch.nn.Parameter(torch.from_numpy(fill(rng, s, "normal", "w")).to(dtype)) for s in shapes
    ]
    for p in params:
        p.grad = torch.from_numpy(fill(rng, tuple(p.shape), "normal", "g")).to(dtype)
    opt = torch_class(rule)(params, backend=backend)
    for _ in range(draw(st.integers(0, 2))):
        opt.step()
    return params, opt


def opt_inputs(params, opt, *extra):
    return (
        [p.detach() for p in params],
        [p.grad for p in params],
        [opt.state.get(p, {}) for p in params],
        [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups],
        *extra,
    )


def state_of(opt, p) -> dict[str, Any]:
    return {k: (v.clone() if torch.is_tensor(v) else v) for k, v in opt.state.get(p, {}).items()}


TORCH_PERTURBATIONS = [
    "grad_dtype", "grad_shape", "grad_strided", "grad_is_param", "grad_sparse", "grad_meta",
    "grad_none", "state_missing", "state_extra", "state_shape", "state_dtype", "state_list",
    "state_view_of_param", "step_bad", "host_state_bad", "shared_state_dicts", "group_hp",
    "param_strided",
]  # fmt: skip

BAD_STEPS = [
    torch.tensor(-1), torch.tensor(1.5), torch.tensor(math.nan), torch.tensor(2**63 - 1),
    torch.tensor(True), torch.tensor([1, 2]), 3, torch.tensor(3.0), torch.tensor(7),
]  # fmt: skip


def step_legal(value: Any, loading: bool = False) -> bool | None:
    """A saved step count: a whole number in [0, 2**63 - 2], in a 1-element tensor (a loader
    also takes a Python number)."""
    if loading and isinstance(value, (int, float)) and not isinstance(value, bool):
        v = value
    elif not torch.is_tensor(value) or value.numel() != 1 or value.dtype == torch.bool:
        return False
    else:
        v = value.item()
    return bool(math.isfinite(v) and float(v).is_integer() and 0 <= v < 2**63 - 1)


@st.composite
def torch_step_case(draw: st.DrawFn):
    rule = draw(st.sampled_from(PER_PARAMETER))
    cls = torch_class(rule)
    case = Case(cls.__name__, rule)
    backend = draw(st.sampled_from(["auto", "auto", "auto", "triton"]))
    params, opt = make(draw, rule, backend)
    meta = META[rule]
    count = draw(st.sampled_from([0, 0, 1, 1, 2]))
    touched: set[int] = set()
    grads_touched: set[int] = set()
    for what in draw(
        st.lists(st.sampled_from(TORCH_PERTURBATIONS), min_size=count, max_size=count, unique=True)
    ):
        j = draw(st.integers(0, len(params) - 1))
        p = params[j]
        label = f"parameter {j}"
        state = opt.state.get(p)
        nonempty = p.numel() > 0
        s = draw(st.sampled_from(meta.STATES)) if meta.STATES else None
        if state is not None and not torch.is_tensor(state.get(s)):
            s = None  # removed or replaced by an earlier perturbation
        if p.grad is None or (what == "grad_none" and j in touched):
            continue  # a parameter without a gradient is skipped: its state is never read
        if what.startswith("grad_") and j in grads_touched:
            continue  # one gradient perturbation per parameter: a second would replace it
        touched.add(j)
        if what.startswith("grad_"):
            grads_touched.add(j)
        if what == "grad_dtype" and p.grad is not None:
            p.grad_dtype = None  # torch refuses the assignment itself otherwise
            p.grad = p.grad.to(draw(st.sampled_from([torch.float16, torch.int32, torch.complex64])))
            if p.grad.dtype.is_floating_point:
                case.perturb(what, [label], None)  # converted to the parameter's dtype
            else:
                case.perturb(what, [label], True)
        elif what == "grad_shape" and p.grad is not None:
            try:
                p.grad = torch.zeros(p.numel() + 1, dtype=p.dtype)
            except RuntimeError:
                continue  # torch refuses it on assignment already
            case.perturb(what, [label], True)
        elif what == "grad_strided" and p.grad is not None and p.dim():
            big = torch.zeros((*p.shape, 2), dtype=p.dtype)
            p.grad = big[..., 0]
            case.perturb(what, [label], None)  # a strided gradient may be copied
        elif what == "grad_is_param":
            p.grad = p.detach()
            case.perturb(what, [label], True if nonempty else None)
        elif what == "grad_sparse" and p.dim() and p.grad is not None:
            if meta.SPARSE is not None:
                continue  # taken, lazily or densely: tests/test_lazy_rows.py
            p.grad = p.grad.to_sparse()
            case.perturb(what, [label, "sparse"], True)
        elif what == "grad_meta" and p.grad is not None:
            try:
                p.grad = torch.empty(p.shape, dtype=p.dtype, device="meta")
            except RuntimeError:
                continue  # torch refuses it on assignment already
            case.perturb(what, [label, "meta"], True)
        elif what == "grad_none":
            p.grad = None
            case.perturb(what, [], False)  # skipped, as torch.optim skips it
        elif what == "param_strided" and p.dim() and not state:
            pass  # a Parameter's storage cannot be swapped cheaply; covered by state views
        elif state and what == "state_missing" and s:
            del state[s]
            # an ABSENT state (SGD's momentum buffer) is created when the group needs it
            case.perturb(what, [label, s], s not in meta.ABSENT)
        elif state and what == "state_extra":
            # a key of another rule's state, not of this one (TorchAdam keeps an exp_avg: the
            # long profile drew it, and replacing a buffer with zeros is legal)
            known = {*meta.STATES, *meta.HOST_STATES, "step", "master"}
            extra = next(k for k in ("exp_avg", "momentum_buffer", "not_a_state") if k not in known)
            state[extra] = torch.zeros_like(p)
            case.perturb(what, [label, extra], True)
        elif state and what == "state_shape" and s:
            # one more element than the state has (not than the parameter: CAME's row factor
            # of an empty vector has one element, the long profile found)
            state[s] = torch.zeros(state[s].numel() + 1, dtype=state[s].dtype)
            case.perturb(what, [label, s], True)
        elif state and what == "state_dtype" and s:
            other = torch.float64 if state[s].dtype == torch.float32 else torch.float32
            state[s] = state[s].to(other)
            case.perturb(what, [label, s], True)
        elif state and what == "state_list" and s:
            state[s] = state[s].tolist()
            case.perturb(what, [label, s], True)
        elif state and what == "state_view_of_param" and s and state[s].dtype == p.dtype:
            state[s] = p.detach()
            case.perturb(what, [label, s], True if nonempty else None)
        elif state and what == "step_bad":
            value = draw(st.sampled_from(BAD_STEPS))
            state["step"] = value
            legal = step_legal(value)
            case.perturb(f"step={value!r}", [label, "step"], None if legal is None else not legal)
        elif state and what == "host_state_bad" and meta.HOST_STATES:
            h = meta.HOST_STATES[0]
            value = draw(st.sampled_from([math.nan, math.inf, "1", True, None, torch.tensor(0.5)]))
            state[h] = value
            case.perturb(f"{h}={value!r}", [label, h], True)
        elif (
            what == "shared_state_dicts"
            and len(params) == 2
            and state
            and opt.state.get(params[1 - j])
        ):
            q = params[1 - j]
            if q.shape == p.shape:
                opt.state[q] = state
                # one state dict stepped twice, unless the other parameter is skipped (no
                # gradient: the long profile found it accepted, rightly)
                must = True if nonempty and q.grad is not None else None
                case.perturb(what, ["parameter 0", "parameter 1"], must)
                touched.add(1 - j)  # a later grad_none on it would make the sharing legal
        elif what == "group_hp":
            hp = draw(hyperparams(rule, Case(case.where)))
            hp.pop("bogus", None)
            sub = Case(case.where)
            for name, value in hp.items():
                from fuzz.harness import predicted_legal

                legal = predicted_legal(rule, name, value)
                sub.perturb(f"group {name}={value!r}", [name], None if legal is None else not legal)
                opt.param_groups[0][name] = value
            case.perturb(
                "; ".join(sub.notes),
                sub.culprits,
                True if sub.must_refuse else (None if sub.may_refuse else False),
            )
    return case, rule, backend, params, opt


def torch_reference(rule, backend, before, opt, params):
    """Each parameter with a gradient updated by the rule's module on copies of ``before``."""
    ps, grads, states, _ = before
    meta = META[rule]
    index = 0
    for group in opt.param_groups:
        hp = {k: group[k] for k in meta.HYPERPARAMS}
        resolved = resolve_hyperparams(rule, meta.HYPERPARAMS, meta.LEGAL, meta.NONE_MEANS, hp)
        hp = canonical_hyperparams(rule, hp)
        init = {k: hp[k] for k in meta.INIT_HYPERPARAMS}  # the class's first state: the group's
        for p in group["params"]:
            j = index
            index += 1
            if grads[j] is None:
                if snap(p.detach()) != snap(ps[j]):
                    return f"parameter {j} without a gradient changed"
                continue
            if meta.DRAWS:
                hp = {**hp, "seed": tensor_seed(resolved["seed"], j)}
            state = dict(states[j])
            needed = [k for k in meta.ABSENT if k not in absent_under(rule, resolved)]
            if state and [k for k in needed if k not in state]:  # created by the class now
                if backend == "triton":
                    first = triton_module(rule).init_state(ps[j].clone(), **init)
                else:
                    first = numpy_module(rule).init_state(ps[j].numpy().copy(), **init)
                    first = {k: torch.from_numpy(v) for k, v in first.items() if k in needed}
                state.update({k: first[k] for k in needed if k not in state})
            if backend == "triton":
                w = ps[j].clone()
                s = {k: state.get(k) for k in meta.STATES}
                if not state:
                    s = triton_module(rule).init_state(w, **init)
                    s.update(
                        {
                            k: v
                            for k, v in numpy_module(rule)
                            .init_state(w.numpy().copy(), **init)
                            .items()
                            if k in meta.HOST_STATES
                        }
                    )
                else:
                    s = {
                        k: (v.clone() if torch.is_tensor(v) else v)
                        for k, v in state.items()
                        if k != "step"
                    }
                t = int(state["step"]) + 1 if state else 1
                triton_module(rule).step(w, grads[j].clone(), s, t, **hp)
                got_w = p.detach()
            else:
                cpu = numpy_module(rule)
                if opt._use_numba():  # the class runs the compiled module (= NumPy: test_numba)
                    cpu = importlib.import_module(f"generated.numba.{rule}")
                w = ps[j].numpy().copy()
                if state:
                    s = {
                        k: (v.numpy().copy() if torch.is_tensor(v) else v)
                        for k, v in state.items()
                        if k != "step"
                    }
                else:
                    s = cpu.init_state(w.copy(), **init)
                t = int(state["step"]) + 1 if state else 1
                g = grads[j].to(ps[j].dtype).numpy().copy()  # the class converts it
                cpu.step(w, g, s, t, **hp)
                w = torch.from_numpy(w)
                s = {
                    k: (torch.from_numpy(v) if isinstance(v, np.ndarray) else v)
                    for k, v in s.items()
                }
                got_w = p.detach()
            if snap(got_w) != snap(w):
                return f"parameter {j} differs from the module"
            got = opt.state[p]
            for k in meta.STATES:
                if k in meta.ABSENT and k not in got:  # absent at these settings: not created
                    continue
                if snap(got[k]) != snap(s[k]):
                    return f"parameter {j}'s state[{k!r}] differs from the module"
            for k in meta.HOST_STATES:
                if float(got[k]) != float(s[k]):
                    return f"parameter {j}'s {k} differs from the module"
            if int(got["step"]) != t:
                return f"parameter {j}'s step is {got['step']!r}, not {t}"
    return None


@settings(max_examples=examples(200))
@given(torch_step_case())
def test_torch_step(drawn):
    case, rule, backend, params, opt = drawn
    before = (
        [p.detach().clone() for p in params],
        [
            None
            if p.grad is None or p.grad.layout != torch.strided or p.grad.is_meta
            else p.grad.clone()
            for p in params
        ],
        [state_of(opt, p) for p in params],
        copy.deepcopy([{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]),
    )
    verdict(
        "torch step",
        case,
        lambda: opt_inputs(params, opt),
        opt.step,
        lambda _: torch_reference(rule, backend, before, opt, params),
    )


LOAD_PERTURBATIONS = [
    "none", "other_rule", "no_record", "record_other", "state_missing", "state_extra",
    "step_bad", "buffer_shape", "buffer_dtype", "buffer_list", "host_state_bad", "group_hp",
    "group_missing_hp", "groups_count", "params_count", "not_dict", "state_of_unknown_param",
]  # fmt: skip


def sd_state_matches(opt, params, sd) -> str | None:
    """After an accepted load: the optimizer's state is the saved one (in the rule's dtypes)."""
    ids = [i for g in sd["param_groups"] for i in g["params"]]
    for p, i in zip(params, ids, strict=True):
        saved, got = sd["state"].get(i, {}), opt.state.get(p, {})
        if sorted(saved) != sorted(k for k in got if k != "master"):
            return f"state keys {sorted(got)} after loading {sorted(saved)}"
        for k, v in saved.items():
            if k == "step":
                if int(got[k]) != int(float(v)):
                    return f"step {got[k]!r} after loading {v!r}"
            elif torch.is_tensor(v):
                if not torch.equal(got[k], v.to(got[k].dtype)) and not (
                    torch.isnan(got[k]).any()
                    and torch.allclose(got[k], v.to(got[k].dtype), equal_nan=True)
                ):
                    return f"state {k} differs from the loaded one"
            elif float(got[k]) != float(v):
                return f"host state {k} differs from the loaded one"
    for g, s in zip(opt.param_groups, sd["param_groups"], strict=True):
        for k in META[opt.RULE].HYPERPARAMS:
            if snap(g[k]) != snap(s[k]):
                return f"param group {k} = {g[k]!r} after loading {s[k]!r}"
    return None


@st.composite
def load_case(draw: st.DrawFn):
    rule = draw(st.sampled_from(RULE_NAMES))
    cls = torch_class(rule)
    meta = META[rule]
    case = Case(f"{cls.__name__}.load_state_dict")
    n = draw(st.integers(1, 2))
    params_a, a = make(draw, rule, "auto", n)
    a.step()
    sd = copy.deepcopy(a.state_dict())
    params, b = make(draw, rule, "auto", n)
    # b's parameters must have a's shapes for the saved state to fit
    for p, q in zip(params, params_a, strict=True):
        if p.shape != q.shape or p.dtype != q.dtype:
            p.data = q.detach().clone() + 1
            p.grad = q.grad.clone()
    b = cls(params)
    b.step()
    what = draw(st.sampled_from(LOAD_PERTURBATIONS))
    i = draw(st.sampled_from(sorted(sd["state"]))) if sd["state"] else None
    s = draw(st.sampled_from(meta.STATES)) if meta.STATES else None
    if i is not None and s not in sd["state"][i]:
        s = None  # an ABSENT state the run never created (SGD at momentum=0)
    if what == "other_rule":
        other = draw(st.sampled_from([r for r in RULE_NAMES if r != rule]))
        _, c = make(draw, other, "auto", n)
        c.step()
        sd = copy.deepcopy(c.state_dict())
        case.perturb(f"{what}:{other}", [other, torch_class(other).__name__, "state"], True)
    elif what == "no_record":
        del sd["optgen_rule"]
        case.perturb(what, [], False)
    elif what == "record_other":
        sd["optgen_rule"] = draw(st.sampled_from([r for r in RULE_NAMES if r != rule]))
        case.perturb(what, [sd["optgen_rule"]], True)
    elif what == "state_missing" and i is not None and s:
        del sd["state"][i][s]
        case.perturb(what, ["state", s], s not in meta.ABSENT)  # ABSENT: created when needed
    elif what == "state_extra" and i is not None:
        sd["state"][i]["exp_avg_extra"] = torch.zeros(1)
        case.perturb(what, ["state", "exp_avg_extra"], True)
    elif what == "step_bad" and i is not None:
        value = draw(st.sampled_from(BAD_STEPS))
        sd["state"][i]["step"] = value
        legal = step_legal(value, loading=True)
        case.perturb(f"step={value!r}", ["step"], None if legal is None else not legal)
    elif what == "buffer_shape" and i is not None and s:
        sd["state"][i][s] = torch.zeros(sd["state"][i][s].numel() + 1)
        case.perturb(what, [s], True)
    elif what == "buffer_dtype" and i is not None and s:
        sd["state"][i][s] = sd["state"][i][s].to(
            draw(st.sampled_from([torch.float16, torch.float64, torch.int64]))
        )
        case.perturb(what, [s], None)  # restored in the rule's dtype
    elif what == "buffer_list" and i is not None and s:
        sd["state"][i][s] = sd["state"][i][s].tolist()
        case.perturb(what, [s], True)
    elif what == "host_state_bad" and i is not None and meta.HOST_STATES:
        h = meta.HOST_STATES[0]
        sd["state"][i][h] = draw(st.sampled_from([math.nan, "1", None, True]))
        case.perturb(what, [h], True)
    elif what == "group_hp":
        from fuzz.harness import predicted_legal

        name = draw(st.sampled_from(list(meta.HYPERPARAMS)))
        from fuzz.harness import hyper_candidates

        value = draw(st.sampled_from(hyper_candidates(rule, name)))
        # a saved group holds torch's tuple (betas, Rprop's etas and step_sizes) next to its
        # items: both changed, as the class's own state_dict would have them (an item that
        # disagrees with its tuple is ambiguous, and refused: the long profile drew Rprop's
        # step_size_max alone)
        bases = []
        for base, items in cls._aliases().items():
            for index, item in items:
                if item == name and base in sd["param_groups"][0]:
                    value_tuple = list(sd["param_groups"][0][base])
                    value_tuple[index] = value
                    sd["param_groups"][0][base] = tuple(value_tuple)
                    bases.append(base)
        sd["param_groups"][0][name] = value
        legal = predicted_legal(rule, name, value)
        case.perturb(f"{name}={value!r}", [name, *bases], None if legal is None else not legal)
    elif what == "group_missing_hp":
        name = draw(st.sampled_from(list(meta.HYPERPARAMS)))
        del sd["param_groups"][0][name]
        case.perturb(what, [name], True)
    elif what == "groups_count":
        sd["param_groups"].append(copy.deepcopy(sd["param_groups"][0]))
        case.perturb(what, ["group"], True)
    elif what == "params_count":
        sd["param_groups"][0]["params"].append(99)
        case.perturb(what, ["group", "parameter"], True)
    elif what == "not_dict":
        sd = list(sd.items())
        case.perturb(what, ["dict"], True)
    elif what == "state_of_unknown_param":
        sd["state"][99] = {"step": torch.tensor(1)}
        case.perturb(what, [], False)  # torch keeps state of no parameter as it is
    return case, rule, params, b, sd


@settings(max_examples=examples(150))
@given(load_case())
def test_torch_load_state_dict(drawn):
    case, _, params, opt, sd = drawn
    if isinstance(case.where, str) and "load_state_dict" in case.where:
        case.where = type(opt).__name__
    verdict(
        "torch load_state_dict",
        case,
        lambda: opt_inputs(params, opt, sd),
        lambda: opt.load_state_dict(sd),
        lambda _: sd_state_matches(opt, params, sd),
    )


# Rules with row/column states (Adafactor) exchange through their drop-in class only
# (tests/test_dropin.py; the spec-named class refuses: tests/test_dropin_state.py).
TORCH_RULES = [r for r in RULE_NAMES if META[r].TORCH is not None and not META[r].STATE_AXES]

TORCH_LOAD_PERTURBATIONS = [
    "none", "state_missing", "step_bad", "buffer_shape", "setting", "groups_count",
    "state_list",
]  # fmt: skip


@st.composite
def torch_load_case(draw: st.DrawFn):
    rule = draw(st.sampled_from(TORCH_RULES))
    cls = torch_class(rule)
    case = Case(cls.__name__, rule)
    n = draw(st.integers(1, 2))
    params, opt = make(draw, rule, "auto", n)
    opt.step()
    peer_params = [torch.nn.Parameter(p.detach().float().clone()) for p in params]
    sparse_only = META[rule].TORCH.class_name == "SparseAdam"  # torch's: sparse gradients only
    for p, q in zip(peer_params, params, strict=True):
        g = q.grad.detach().float().clone()
        p.grad = g.to_sparse() if sparse_only else g
    peer = torch_peer(rule, peer_params, {})
    peer.step()
    sd = copy.deepcopy(peer.state_dict())
    what = draw(st.sampled_from(TORCH_LOAD_PERTURBATIONS))
    i = draw(st.sampled_from(sorted(sd["state"]))) if sd["state"] else None
    keys = sorted(sd["state"][i]) if i is not None else []
    tensors = [
        k
        for k in keys
        if k != "step" and torch.is_tensor(sd["state"][i][k]) and sd["state"][i][k].dim()
    ]
    if what == "state_missing" and tensors:
        k = draw(st.sampled_from(tensors))
        del sd["state"][i][k]
        case.perturb(what, [k], None)  # some buffers torch may omit
    elif what == "step_bad" and "step" in keys:
        value = draw(st.sampled_from(BAD_STEPS))
        sd["state"][i]["step"] = value
        legal = step_legal(value, loading=True)
        case.perturb(f"step={value!r}", ["step"], None if legal is None else not legal)
    elif what == "buffer_shape" and tensors:
        k = draw(st.sampled_from(tensors))
        sd["state"][i][k] = torch.zeros(sd["state"][i][k].numel() + 1)
        case.perturb(what, [k, *META[rule].STATES], True)
    elif what == "state_list" and tensors:
        k = draw(st.sampled_from(tensors))
        sd["state"][i][k] = sd["state"][i][k].tolist()
        case.perturb(what, [k, *META[rule].STATES], True)
    elif what == "setting":
        key, value = draw(
            st.sampled_from(
                [
                    ("maximize", True),
                    ("foreach", True),
                    ("nesterov", True),
                    ("amsgrad", True),
                    ("centered", True),
                    ("dampening", 0.5),
                    ("lr", -1.0),
                    ("differentiable", True),
                ]
            )
        )
        if key in sd["param_groups"][0] and sd["param_groups"][0][key] != value:
            sd["param_groups"][0][key] = value
            either = key in ("foreach", "differentiable")  # how torch runs, not what it computes
            # a setting the rule maps (a drop-in rule's maximize, amsgrad, ...) is legal
            mapped = {theirs.split("[")[0] for theirs in META[rule].TORCH.hyper.values()}
            either = either or (key in mapped and key != "lr")
            case.perturb(f"{key}={value!r}", [key, "lr"], None if either else True)
    elif what == "groups_count":
        sd["param_groups"].append(copy.deepcopy(sd["param_groups"][0]))
        case.perturb(what, ["param groups"], True)

    def reference(_):
        back = opt.to_torch_state_dict()
        for idx, st_ in sd["state"].items():
            for k, v in st_.items():
                mine = back["state"].get(idx, {}).get(k)
                if torch.is_tensor(v) and torch.is_tensor(mine) and k != "step":
                    got = back["state"][idx][k].to(v.dtype)
                    if not torch.allclose(got, v, rtol=1e-6, atol=0, equal_nan=True):
                        return f"state {idx}[{k!r}] does not round-trip"
        return None

    return case, rule, params, opt, sd, reference


@settings(max_examples=examples(80))
@given(torch_load_case())
def test_torch_load_torch_state_dict(drawn):
    case, _, params, opt, sd, reference = drawn
    verdict(
        "torch load_torch_state_dict",
        case,
        lambda: opt_inputs(params, opt, sd),
        lambda: opt.load_torch_state_dict(sd),
        reference,
    )


@st.composite
def group_case(draw: st.DrawFn):
    rule = draw(st.sampled_from(PER_PARAMETER))  # compared per parameter, as torch_case
    cls = torch_class(rule)
    case = Case(cls.__name__, rule)
    params, opt = make(draw, rule, draw(st.sampled_from(["auto", "auto", "triton"])))
    group = opt.param_groups[0]
    aliases = cls._aliases()
    names = [*META[rule].HYPERPARAMS, *aliases]
    chosen = draw(st.lists(st.sampled_from(names), min_size=1, max_size=2, unique=True))
    for base, items in aliases.items():  # betas and beta1 both changed: refused if they differ
        if base in chosen and any(n in chosen for _, n in items):
            case.perturb(f"{base} and an item both set", [base, *(n for _, n in items)], None)
    for name in chosen:
        if name in aliases:  # torch's tuple (betas): one item replaced, or a malformed tuple
            items = aliases[name]
            value = draw(
                st.sampled_from(
                    [(0.8, 0.99), (0.5,), (0.9, 0.999, 0.5), (1.0, 0.9), (math.nan, 0.9), "ab"]
                )
            )
            from fuzz.harness import predicted_legal

            # each item as its hyperparameter's LEGAL takes it (Rprop's etas: each positive,
            # not betas' [0, 1): the long profile drew etas=(1.0, 0.9))
            legal = [False]
            if isinstance(value, tuple) and len(value) == len(items):
                named = [n for _, n in sorted(items)]
                legal = [predicted_legal(rule, n, v) for n, v in zip(named, value, strict=True)]
            group[name] = value
            must = None if None in legal and False not in legal else not all(legal)
            case.perturb(f"{name}={value!r}", [name, *(n for _, n in items)], must)
        else:
            from fuzz.harness import hyper_candidates, predicted_legal

            value = draw(st.sampled_from(hyper_candidates(rule, name)))
            group[name] = value
            legal = predicted_legal(rule, name, value)
            case.perturb(f"{name}={value!r}", [name], None if legal is None else not legal)
    return case, rule, params, opt


@settings(max_examples=examples(150))
@given(group_case())
def test_torch_step_group_hyperparams(drawn):
    case, rule, params, opt = drawn
    backend = opt.backend
    before = (
        [p.detach().clone() for p in params],
        [p.grad.clone() for p in params],
        [state_of(opt, p) for p in params],
        copy.deepcopy([{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]),
    )
    verdict(
        "torch step (group hyperparameters)",
        case,
        lambda: opt_inputs(params, opt),
        opt.step,
        lambda _: torch_reference(rule, backend, before, opt, params),
    )

"""Minimal reproductions of what the fuzz suite found: a strict xfail while open (the fuzz tests
count such cases as ``known (strict xfail)`` instead of failing; when one is fixed, remove its
xfail here and its ``known`` label in the fuzz test), a regression test once fixed."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from fuzz.harness import snap
from generated.torch import Adadelta, Adagrad, Adam, RAdam


def one_param(cls, **hp):
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.full((3,), 0.5)
    return p, cls([p], **hp)


def everything(p, opt):
    groups = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    return snap((p.detach(), p.grad, dict(opt.state.get(p, {})), groups))


# Fixed in 2e05a8d, a regression test (was a strict xfail:
# issue 9: torch classes write before raising (betas synced from beta1)).
@pytest.mark.parametrize(
    "cls, key, value", [(Adam, "beta1", math.nan), (RAdam, "betas", (1.0, 0.9))]
)
def test_refused_step_leaves_the_param_group_alone(cls, key, value):
    p, opt = one_param(cls)
    opt.param_groups[0][key] = value
    before = everything(p, opt)
    with pytest.raises(ValueError, match=cls.__name__):
        opt.step()
    assert everything(p, opt) == before  # was: group["betas"] (or beta1) was rewritten


# Fixed in 2e05a8d, a regression test (was a strict xfail:
# issue 9: torch classes write before raising (state of a first step)).
def test_first_step_refused_for_a_kernel_scalar_creates_no_state():
    p, opt = one_param(Adadelta)
    opt.param_groups[0]["clip_gradient"] = 1e308  # legal, but -1e308 does not fit float32
    with pytest.raises(ValueError, match="kernel scalar"):
        opt.step()
    assert not opt.state.get(p)  # was: {'step': 0, 'acc_g': 0, 'acc_delta': 0} was created


# Fixed in 2e05a8d, a regression test (was a strict xfail:
# found by the fuzz suite: int/complex gradients accepted).
@pytest.mark.parametrize("dtype", [torch.int32, torch.complex64])
def test_numpy_path_refuses_a_non_float_gradient(dtype):
    p, opt = one_param(Adam)
    p.grad_dtype = None  # torch 2.13: allow a gradient dtype other than the parameter's
    p.grad = torch.ones(3, dtype=dtype)
    with pytest.raises(TypeError, match="Adam: parameter 0's grad"):
        opt.step()  # was: converted to float32 (complex: imaginary part dropped)


# Fixed in 2e05a8d, a regression test (was a strict xfail:
# found by the fuzz suite: torch's messages, no class name).
@pytest.mark.parametrize("what", ["groups", "params"])
def test_load_state_dict_group_mismatch_names_the_class(what):
    _, opt = one_param(Adam)
    opt.step()
    sd = copy.deepcopy(opt.state_dict())
    if what == "groups":
        sd["param_groups"].append(copy.deepcopy(sd["param_groups"][0]))
    else:
        sd["param_groups"][0]["params"].append(99)
    with pytest.raises(ValueError, match="Adam"):  # was: "loaded state dict has a different
        opt.load_state_dict(sd)  # number of parameter groups" (torch's words)


# Fixed in 2e05a8d, a regression test (was a strict xfail:
# found by the fuzz suite: float() on a non-tensor buffer).
def test_load_torch_state_dict_names_a_non_tensor_buffer():
    _, opt = one_param(Adagrad)
    peer = torch.optim.Adagrad([torch.nn.Parameter(torch.ones(3))], lr=0.01)
    peer.param_groups[0]["params"][0].grad = torch.ones(3)
    peer.step()
    sd = copy.deepcopy(peer.state_dict())
    sd["state"][0]["sum"] = sd["state"][0]["sum"].tolist()
    with pytest.raises((TypeError, ValueError), match=r"Adagrad.*sum"):
        opt.load_torch_state_dict(sd)  # was: "float() argument must be ... not 'list'"


# Fixed in ec6cdcf, a regression test (was a strict xfail: issue 9, spec error messages).
@pytest.mark.parametrize("text", ["RULE.update(w,\n", "x = undefined_name\n"])
def test_a_spec_that_raises_is_named(tmp_path, text):
    from codegen.load import load_rule
    from codegen.spec import SpecError

    path = tmp_path / "fz.py"
    path.write_text(
        '"""A rule."""\nfrom codegen.spec import Rule\nRULE = Rule("fz", __doc__)\n' + text
    )
    with pytest.raises(SpecError, match=r"fz\.py"):  # was a bare SyntaxError / NameError
        load_rule(path)


# Fixed on 2026-12-07, a regression test (was a strict xfail: found by the fuzz suite: -0.0
# scalar arrives as +0.0): Triton's interpreter made a float argument equal to 0 its +0.0
# constant; optgen_runtime.triton_compat hands float arguments over as float32 values, as the
# compiled launcher does. The long profile found it again in the torch classes (LBSGD's -0.0
# scalar -wd*lr at wd=0 against a momentum of -0.0), where no known-case label covered it.
def test_single_tensor_kernel_keeps_the_sign_of_a_zero_scalar():
    from generated.numpy import dcasgd as numpy_dcasgd
    from generated.triton import dcasgd

    def inputs():
        state = {"mom": torch.tensor([-0.001]), "prev_weight": torch.tensor([-0.1321])}
        return torch.tensor([-0.1332]), torch.tensor([0.1049]), state

    one, multi = inputs(), inputs()
    dcasgd.step(*one, 2, rescale_grad=-0.0)
    dcasgd.step_multi(*([x] for x in multi), 2, rescale_grad=-0.0)
    w, g, s = inputs()
    s = {k: v.numpy() for k, v in s.items()}
    numpy_dcasgd.step(w.numpy(), g.numpy(), s, 2, rescale_grad=-0.0)
    assert snap(multi[2]["mom"]) == snap(torch.from_numpy(s["mom"]))  # both +0.0
    assert snap(one[2]["mom"]) == snap(multi[2]["mom"])  # was: step gives -0.0


# Fixed on 2026-12-07, a regression test (was a strict xfail: found by the fuzz suite: bf16
# subnormals (interpreter)): Triton's interpreter converted bfloat16 field by field;
# optgen_runtime.triton_compat casts float32 <-> bfloat16 by their bits, as a GPU does.
def test_bfloat16_subnormal_weights_survive_a_zero_gradient():
    from generated.triton import sgd

    w = torch.tensor([1e-39, -2.75e-40, 1e-30]).to(torch.bfloat16)  # two subnormals, one normal
    before = w.clone()
    sgd.step(w, torch.zeros(3, dtype=torch.bfloat16), {}, 1, lr=0.01)
    assert torch.equal(w, before)  # was: [5.8775e-39, -0.0, 1e-30] (TRITON_INTERPRET=1)


# Fixed in 2e05a8d, a regression test (was a strict xfail:
# found by the fuzz suite: lars host division by zero).
@pytest.mark.parametrize("rescale_grad", [0.0, -0.0])
def test_lars_zero_denominator_is_not_a_bare_zero_division(rescale_grad):
    import numpy as np

    from generated.numpy import lars

    w, g = np.ones(3, np.float32), np.ones(3, np.float32)
    state = lars.init_state(w)
    try:  # legal: rescale_grad is any real, eps (default 0) and wd (default 0) may be 0
        lars.step(w, g, state, 1, rescale_grad=rescale_grad)
    except ZeroDivisionError as error:  # was: raised by host_scalars, naming nothing
        pytest.fail(f"bare {error!r}")
    except ValueError as error:
        assert "lars" in str(error)


# Fixed (was a strict xfail: found by the fuzz suite, betas with an extra item).
def test_betas_with_an_extra_item_is_refused():
    p, opt = one_param(Adam)
    opt.param_groups[0]["betas"] = (0.9, 0.999, 0.5)  # torch.optim.Adam cannot unpack it
    before = everything(p, opt)
    with pytest.raises(ValueError, match=r"Adam.*betas"):
        opt.step()  # was: accepted, the 0.5 ignored
    assert everything(p, opt) == before


# Fixed (was a strict xfail: found by the fuzz suite, tensor beta1 in a group).
def test_a_many_element_tensor_hyperparameter_in_a_group_is_named():
    p, opt = one_param(Adam)
    opt.param_groups[0]["beta1"] = torch.tensor([0.5, 0.5])
    before = everything(p, opt)
    with pytest.raises((TypeError, ValueError), match=r"Adam.*beta1"):
        opt.step()  # was: RuntimeError: Boolean value of Tensor with more than one value
    assert everything(p, opt) == before


# Fixed, a regression test (was a strict xfail: found by the long fuzz profile, the NumPy
# path of a rule with per-tensor reductions).
def test_numpy_backend_refuses_a_later_tensor_before_writing_an_earlier_one():
    """LARS on the NumPy backend over a weight and an empty one, lr = 5e-324 (float64's
    smallest): the first tensor's trust ratio makes its kernel scalar -lr * ratio 0 in float64
    (fine), the empty tensor's (ratio 1) 5e-324, which float32 cannot hold: refused. The class
    stepped such a rule one tensor after another through the module's ``step``, so the first
    tensor's step was written (its momentum and step count) before the refusal; now one NumPy
    ``step_multi`` reduces and checks every tensor before any write, as numba and Triton do."""
    from generated.torch import LARS

    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(5)), torch.nn.Parameter(torch.randn(0))]
    for p in params:
        p.grad = torch.randn_like(p)
    opt = LARS(params, backend="numpy")
    opt.step()
    opt.param_groups[0]["lr"] = 5e-324
    before = [everything(p, opt) for p in params]
    with pytest.raises(ValueError, match="float32 cannot hold"):
        opt.step()
    assert [everything(p, opt) for p in params] == before  # was: tensor 0's mom and step written


# Fixed, a regression test (found by the long fuzz profile: Triton step_multi, shared state dict).
@pytest.mark.parametrize("target", ["triton", "numba"])
def test_one_state_dict_for_two_tensors_is_refused_on_a_variant_path(target):
    """TorchSGD at momentum 0 runs its variant without the momentum buffer; a state dict that
    holds one anyway went to the variant as a view without it, a new dict per tensor, so one
    state dict given for two tensors passed the identity check the full rule makes."""
    import importlib

    import numpy as np
    from conftest import DEVICE

    module = importlib.import_module(f"generated.{target}.torch_sgd")
    if target == "triton":
        weights = [torch.randn(5, device=DEVICE), torch.randn(5, device=DEVICE)]
        grads = [torch.randn_like(w) for w in weights]
    else:
        weights = [np.ones(5, np.float32), np.ones(5, np.float32)]
        grads = [np.full(5, 0.5, np.float32), np.full(5, 0.5, np.float32)]
    state = module.init_state(weights[0])
    assert "momentum_buffer" in state
    before = snap((weights, state))
    with pytest.raises(ValueError, match="torch_sgd: tensors 0 and 1 share one state dict"):
        module.step_multi(weights, grads, [state, state], 1)
    assert snap((weights, state)) == before


# Fixed, a regression test (found by the long fuzz profile: torch load_torch_state_dict).
def test_a_loaded_group_torch_would_not_construct_exports_and_runs_as_torch():
    """A torch.optim.SGD state dict with nesterov=True at momentum 0: torch's load_state_dict
    and step take it (plain SGD), its constructor refuses it. TorchSGD loaded it, then its
    to_torch_state_dict raised torch's constructor error (naming neither class nor setting);
    it now exports the group as torch holds it, and both step alike."""
    from generated.torch import TorchSGD

    p = torch.nn.Parameter(torch.tensor([0.5, -1.0]))
    q = torch.nn.Parameter(p.detach().clone())
    theirs = torch.optim.SGD([q], lr=0.1)
    group = dict(theirs.state_dict()["param_groups"][0], nesterov=True)
    saved = {"state": {}, "param_groups": [group]}
    theirs.load_state_dict(saved)
    ours = TorchSGD([p], lr=0.1)
    ours.load_torch_state_dict(saved)
    exported = ours.to_torch_state_dict()
    assert exported["param_groups"][0]["nesterov"] is True
    assert exported["param_groups"][0]["momentum"] == 0
    for opt, x in ((ours, p), (theirs, q)):
        x.grad = torch.tensor([1.0, 2.0])
        opt.step()
    assert torch.equal(p.detach(), q.detach())
    back = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
    back.load_state_dict(exported)  # torch loads what was exported


# Fixed, a regression test (found by the long fuzz profile: torch load_torch_state_dict).
def test_a_buffer_a_setting_needs_is_refused_naming_the_setting():
    """A torch.optim.RMSprop state dict saved uncentered, then marked centered=True: torch's
    own step would fail on the missing 'grad_avg' (KeyError); TorchRMSprop refuses it on
    load, and now names the setting that needs it, not only the missing key."""
    from generated.torch import TorchRMSprop

    q = torch.nn.Parameter(torch.ones(3))
    theirs = torch.optim.RMSprop([q], lr=0.01)
    q.grad = torch.ones(3)
    theirs.step()
    saved = theirs.state_dict()
    saved["param_groups"][0]["centered"] = True
    p = torch.nn.Parameter(torch.ones(3))
    ours = TorchRMSprop([p], lr=0.01)
    before = everything(p, ours)
    with pytest.raises(ValueError, match=r"TorchRMSprop.*'grad_avg'.*\(centered=True\)"):
        ours.load_torch_state_dict(saved)
    assert everything(p, ours) == before


# Fixed on 2026-12-07 (OPTGEN_FUZZ=long, test_numpy_step: sm3 with a float weight): the row and
# column rules' NumPy and numba modules read ``weight.shape`` before checking the weight
# (``numpy_tiles.matrix_views``), so a weight that is no array gave an AttributeError naming
# neither the rule nor the weight.
@pytest.mark.parametrize("target", ["numpy", "numba"])
@pytest.mark.parametrize("rule", ["adafactor", "came", "sm3"])
@pytest.mark.parametrize("weight", [0.125, [0.5, 0.25], None], ids=["float", "list", "None"])
def test_a_weight_that_is_no_array_is_refused_by_the_row_rules(target, rule, weight):
    import importlib

    import numpy as np

    module = importlib.import_module(f"generated.{target}.{rule}")
    grad = np.full((2, 3), 0.5, np.float32)
    state = module.init_state(np.ones((2, 3), np.float32))
    before = snap((grad, state))
    with pytest.raises(TypeError, match=f"{rule}: weight must be a numpy.ndarray"):
        module.step(weight, grad, state, 1)
    assert snap((grad, state)) == before


def test_a_torch_class_on_triton_keeps_the_signs_of_zero_momenta():
    """The long profile's case: LBSGD at its defaults (momentum 0, wd 0: a -0.0 host scalar),
    a zero gradient and a momentum of -0.0 and +0.0, on the Triton backend, as the NumPy module
    computes it."""
    import numpy as np

    from generated.numpy import lbsgd as numpy_lbsgd
    from generated.triton import lbsgd

    w0, mom = torch.tensor([0.1221, -0.1451]), torch.tensor([-0.0, 0.0])
    w, s = w0.clone(), {"mom": mom.clone(), "acc": torch.zeros(2)}
    lbsgd.step(w, torch.zeros(2), s, 2)
    want = {"mom": mom.numpy().copy(), "acc": np.zeros(2, np.float32)}
    numpy_lbsgd.step(w0.numpy().copy(), np.zeros(2, np.float32), want, 2)
    assert snap(s["mom"]) == snap(torch.from_numpy(want["mom"]))  # was: [+0.0, +0.0]

"""``GeneratedOptimizer``: the behaviour every generated ``torch.optim``-style class shares.

A generated class (``generated/torch``) only names its rule's metadata (``META``: hyperparameters,
legal values, states, ...), its code (``NUMPY``, ``TRITON``), its torch.optim mapping (``TORCH``)
and its hyperparameters; this class follows torch.optim's conventions: param groups with
per-group hyperparameters (checked when a group is added and at every step),
``add_param_group``, ``zero_grad``, ``step(closure)``, lr schedulers editing ``group["lr"]``:
hyperparameters are runtime kernel arguments, so changing them never recompiles.

It is composed of one part per concern, each in its own module:

- :mod:`~optgen_runtime.optim.aliases`: torch's tuple settings (``betas``) kept in every group;
- :mod:`~optgen_runtime.optim.state`: per-parameter state, its checks, ``state_dict()`` /
  ``load_state_dict()``, multi-precision master weights;
- :mod:`~optgen_runtime.optim.amp`: ``torch.amp.GradScaler`` support (skipped steps rolled back);
- :mod:`~optgen_runtime.optim.step`: the step's checks, then the numba, NumPy or Triton backend
  (:mod:`~optgen_runtime.optim.backends`);
- :mod:`~optgen_runtime.optim.fast`: the step of an unchanged parameter set on the numba
  backend, its checks cut to one pass, on the plan :mod:`~optgen_runtime.optim.plan` keeps
  (its classes: :mod:`~optgen_runtime.optim.plan_data`);
- :mod:`~optgen_runtime.optim.rows`: sparse gradients stepped lazily, on the rows they hold
  (SparseAdam; MXNet's lazy SGD, Adam, AdaGrad);
- :mod:`~optgen_runtime.optim.inputs`: a step's inputs besides the gradients (``hessian=``,
  a loss);
- :mod:`~optgen_runtime.optim.exchange`: state exchange with torch.optim, and the torch.optim
  optimizer that runs a rule (``torch_optimizer``);
- :mod:`~optgen_runtime.optim.distributed`: FSDP2's DTensor parameters (local shards, state as
  DTensors, reductions across shards), ZeRO's noise keys.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import os
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any, ClassVar

import torch
from torch.optim import optimizer as torch_optimizer

from optgen_runtime.hyperparams import TorchEquivalent, resolve_hyperparams
from optgen_runtime.optim.aliases import TupleAliases
from optgen_runtime.optim.amp import AmpScaling, Pending
from optgen_runtime.optim.checkpoint import Checkpoint
from optgen_runtime.optim.distributed import Distributed, zero_owner
from optgen_runtime.optim.exchange import TorchExchange
from optgen_runtime.optim.fast import FastStep
from optgen_runtime.optim.inputs import StepInputs
from optgen_runtime.optim.rows import SparseRows
from optgen_runtime.optim.state import ParamState
from optgen_runtime.optim.step import Stepping


def eager_when_compiled(func: Callable[..., Any]) -> Callable[..., Any]:
    """``func``, run eagerly where ``torch.compile`` traces a call to it (a graph break), and
    called directly otherwise (``torch.compiler.is_compiling()``, true only while Dynamo traces:
    about 0.1 us per call with this wrapper, where a ``torch.compiler.disable`` one costs 0.4)."""
    eager = torch.compiler.disable(func)

    @functools.wraps(func)
    def call(*args: Any, **kwargs: Any) -> Any:
        if torch.compiler.is_compiling():
            return eager(*args, **kwargs)
        return func(*args, **kwargs)

    return call


# torch.optim's names of hyperparameters the rules name as MXNet does (a torch user's first
# guess at a class of MXNet's semantics; the drop-ins take torch's names)
_SYNONYMS = {"weight_decay": ("wd",), "eps": ("epsilon",), "betas": ("beta1", "beta2")}


def _unexpected(
    init: Callable[..., Any], signature: inspect.Signature, given: dict[str, Any], error: TypeError
) -> str:
    """Python's message for a call ``signature`` cannot bind, with hints for each keyword it
    does not take: the arguments it takes, a close match, the generated classes that take it."""
    cls = init.__qualname__.split(".")[0]
    message = str(error)
    taken = [p for p in signature.parameters if p not in ("self", "params")]
    for key in [k for k in given if k not in signature.parameters]:
        message += f"; {cls} takes {', '.join(taken)}"
        close = difflib.get_close_matches(key, taken, n=1)
        named = [n for n in _SYNONYMS.get(key, ()) if n in taken]
        if named:  # torch's name for an MXNet-named hyperparameter
            names = " and ".join(map(repr, named))
            message += f" ({names}: MXNet's name{'s' * (len(named) > 1)} for torch's {key!r})"
        elif close:
            message += f" (did you mean {close[0]!r}?)"
        takers = [
            c
            for c in GeneratedOptimizer._classes
            if getattr(c, "RULE", None) and key in inspect.signature(c.__init__).parameters
        ]  # the same name or one it begins (SGD: SGDMomentum) first, then the most alike
        takers.sort(
            key=lambda c: (
                not c.__name__.startswith(cls),
                -difflib.SequenceMatcher(None, cls, c.__name__).ratio(),
            )
        )
        others = [
            c.__name__ if c.__module__ == init.__module__ else f"{c.__module__}.{c.__name__}"
            for c in takers
        ]
        if others:
            shown = ", ".join(others[:6]) + (
                f" and {len(others) - 6} more" if len(others) > 6 else ""
            )
            message += f"; {key!r} is taken by {shown}"
    return message


class GeneratedOptimizer(
    SparseRows,
    TupleAliases,
    Checkpoint,
    ParamState,
    AmpScaling,
    StepInputs,
    FastStep,
    Stepping,
    TorchExchange,
    Distributed,
    torch.optim.Optimizer,
):
    """Base class of the generated optimizers; see the module docstring."""

    RULE: ClassVar[str]
    META: ClassVar[ModuleType]  # HYPERPARAMS, LEGAL, NONE_MEANS, STATES, HOST_STATES, ...
    NUMPY: ClassVar[ModuleType]  # init_state, step
    TRITON: ClassVar[ModuleType]  # step_multi
    TORCH: ClassVar[TorchEquivalent | None] = None
    _numpy_by_env = False  # set by __init__ (an optimizer unpickled from before it: unset)
    _classes: ClassVar[list[type]] = []  # every subclass, for the hints of _unexpected

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A class's ``__init__`` given a keyword it does not take raises Python's TypeError
        with what it does take, a close match and the classes that take that keyword (MXNet's
        ``SGD(momentum=...)`` is ``SGDMomentum`` here), before anything is built."""
        super().__init_subclass__(**kwargs)
        GeneratedOptimizer._classes.append(cls)
        init = cls.__dict__.get("__init__")
        if init is None:
            return
        signature = inspect.signature(init)

        @functools.wraps(init)
        def checked(self: Any, *args: Any, **kw: Any) -> None:
            try:
                signature.bind(self, *args, **kw)
            except TypeError:
                try:  # the call cannot bind either: Python's own message, then the hints
                    init(self, *args, **kw)
                except TypeError as error:
                    raise TypeError(_unexpected(init, signature, kw, error)) from None
                raise
            init(self, *args, **kw)

        cls.__init__ = checked  # type: ignore[method-assign]

    def __init__(
        self,
        params: Iterable[Any],
        defaults: dict[str, Any],
        *,
        lazy_update: bool = True,
        multi_precision: bool = False,
        backend: str = "auto",
    ) -> None:
        if backend not in ("auto", "numpy", "numba", "triton"):
            raise ValueError(f"{type(self).__name__}: backend must be auto, numpy, numba or triton")
        if backend == "numba":
            module = self._numba()
            if not module.COMPILED:
                raise ValueError(f"{type(self).__name__}: backend='numba': {module.FALLBACK}")
        self._check(defaults)
        if not isinstance(lazy_update, bool):
            raise TypeError(
                f"{type(self).__name__}: lazy_update must be True or False, not {lazy_update!r}"
            )
        self.multi_precision = bool(multi_precision)
        self.lazy_update = lazy_update  # (only classes whose rule has META.LAZY_UPDATE take it)
        self.backend = backend
        # OPTGEN_CPU_BACKEND=numpy: "auto" keeps the NumPy reference on CPU (Stepping._use_numba)
        self._numpy_by_env = os.environ.get("OPTGEN_CPU_BACKEND", "") == "numpy"
        defaults = dict(defaults)
        for base, items in self._aliases().items():
            if base not in defaults:  # (a drop-in keeps torch's as given: tensors stay tensors)
                defaults[base] = self._alias_from_names(base, items, defaults)
        self._seen: dict[int, tuple[dict[str, Any], dict[str, Any]]] = {}  # see TupleAliases
        # each parameter with a master copy: (version, address) after the last step that wrote
        # it (Stepping._masters_moved)
        self._master_seen: dict[torch.Tensor, tuple[int, int]] = {}
        self._scratch: torch.Tensor | None = None  # see Stepping._grad_scratch
        self._pending: Pending | None = None  # see AmpScaling._settle
        # ZeRO: the ZeroRedundancyOptimizer building this one keys the noise (Distributed._stream)
        self._zero = zero_owner()
        if self._zero is not None and self.META.GROUP_REDUCTIONS:
            raise ValueError(
                f"{type(self).__name__}: ZeroRedundancyOptimizer gives each rank a part of every "
                f"param group, and {type(self).__name__}'s group reductions "
                f"({', '.join(self.META.GROUP_REDUCTIONS)}) need the whole group: not supported "
                "(use DDP or FSDP2)"
            )
        super().__init__(params, defaults)

    # What pickling (``pickle``, ``copy.deepcopy``, ``torch.save`` of the object) keeps besides
    # torch.optim's ``defaults``, ``state`` and ``param_groups``: the constructor's settings.
    # Caches of the process (plans and tables of addresses, scratch buffers, the last checks'
    # key, an AMP flag, ZeRO's owner: a weak reference) are left out: they start afresh.
    _PICKLED = ("multi_precision", "lazy_update", "backend", "_numpy_by_env")

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()  # a speculative AMP step settled first (AmpScaling)
        state.update({key: self.__dict__[key] for key in self._PICKLED if key in self.__dict__})
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)  # torch.optim's: hooks, the step wrapper
        if "_seen" not in self.__dict__:  # unpickled (not load_state_dict): caches start afresh
            self._remember_groups()
        self._master_seen = {}  # the masters as loaded: not made again from the parameters

    @staticmethod
    def profile_hook_step(func: Callable[..., Any]) -> Callable[..., Any]:
        """torch.optim's wrapper of ``step`` (step hooks, the profiler's ``record_function``),
        entered where it has something to do: a step hook registered (on the optimizer or
        globally) or a profiler on. Else ``step`` is called directly: the wrapper's context
        objects cost about as much host time as a fast step of one small tensor.

        A ``step`` that ``torch.compile`` traces (``torch.compile(opt.step)``, or a compiled
        function calling it, as torch's tutorials do with torch.optim's optimizers) runs eagerly
        instead: a graph break (``torch.compiler.disable``). Its work is kernels and host code
        that Dynamo cannot trace (numba, NumPy, Triton launches, checks reading values)."""
        hooked = torch.optim.Optimizer.profile_hook_step(func)
        enabled = getattr(torch._C._autograd, "_profiler_enabled", None)
        pre = getattr(torch_optimizer, "_global_optimizer_pre_hooks", None)
        post = getattr(torch_optimizer, "_global_optimizer_post_hooks", None)
        if enabled is None or pre is None or post is None:
            return eager_when_compiled(hooked)  # another torch: its wrapper, always

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            self = args[0]
            if (
                self._optimizer_step_pre_hooks
                or self._optimizer_step_post_hooks
                or pre
                or post
                or enabled()
            ):
                return hooked(*args, **kwargs)
            out = func(*args, **kwargs)
            self._optimizer_step_code()  # the profiler's python tracing hook, as torch's wrapper
            return out

        return eager_when_compiled(wrapper)

    @classmethod
    def _labels(cls) -> dict[str, str]:
        """The names a refusal gives the rule's hyperparameters where the class's groups call
        them otherwise (a drop-in's torch keys); none here."""
        return {}

    def _check(self, values: dict[str, Any]) -> dict[str, float]:
        """The group's hyperparameters, resolved and checked (the generated modules' check)."""
        meta = self.META
        hp = {k: values[k] for k in meta.HYPERPARAMS if k in values}
        try:
            return resolve_hyperparams(
                type(self).__name__,
                meta.HYPERPARAMS,
                meta.LEGAL,
                meta.NONE_MEANS,
                hp,
                self._labels(),
            )
        except (TypeError, ValueError) as error:
            message = str(error)
            lr = hp.get("lr")
            zero = isinstance(lr, (int, float)) and lr == 0
            if zero and "lr" in meta.LEGAL and not meta.LEGAL["lr"].contains(0.0):
                message += (
                    f" ({type(self).__name__} cannot step at lr=0; for "
                    "torch.distributed.checkpoint's set_optimizer_state_dict, which initialises "
                    "state with a step at lr=0, call init_state() first)"
                )
            raise type(error)(message) from None

    @torch.no_grad()
    def init_state(self) -> None:
        """Create the state of every parameter that has none, as its first step would, without
        stepping: torch.distributed.checkpoint's ``set_optimizer_state_dict`` then loads into it
        instead of initialising it with a step at lr=0 (which FTRL, FTML and MADGRAD refuse)."""
        self._settle()
        for group in self.param_groups:
            hp = self._hyper(group)
            self._check(hp)
            for p in group["params"]:
                if not self.state.get(p):
                    self._state_for(p, hp)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self._settle()
        given = set(param_group) if isinstance(param_group, dict) else set()
        # the defaults' betas or beta1/beta2, whichever was set since (torch's users set
        # ``defaults["betas"]``), before torch fills the group's missing keys from them
        self._sync_aliases(self.defaults)
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            self._adopt_aliases(group, given)
            self._check(group)
            check_matrix = getattr(self.META, "check_matrix", None)  # a rule of matrix equations
            for p in group["params"] if check_matrix else ():
                check_matrix(p)  # 2-D only, refused when added (as torch.optim.Muon does)
            first = sum(len(g["params"]) for g in self.param_groups[:-1])
            self._check_distributed(group["params"], first)
        except (TypeError, ValueError):
            self.param_groups.pop()
            raise

    def _hyper(self, group: dict[str, Any]) -> dict[str, Any]:
        return {k: group[k] for k in self.META.HYPERPARAMS}

"""torch.optim's classes that take only sparse gradients and update only the elements a gradient
holds (``SparseAdam``: Adam applied lazily, to the rows of ``nn.Embedding(sparse=True)`` that a
batch looked up).

Such a class's step gathers, for each parameter with a gradient, the elements its coalesced
gradient holds (``grad.coalesce()``: repeated indices summed, as torch sums them) from the
weight, its state buffers and its master copy into dense rows of their own, runs the ordinary
step on those rows (every check, every backend: numba, NumPy, Triton; GradScaler's unscaling and
skipped steps), then writes the rows back with ``index_put_``: a step costs the rows a batch
touched, not the table. Elements without a gradient keep their weight and state (torch's
moments do not decay there either); the step count advances on every step a parameter has a
gradient, an empty one included, as torch's. Every check comes before any write: a dense
gradient (torch's RuntimeError), a complex, sparse or DTensor parameter, and what the row step
refuses, leave every parameter and state as it
was. The fast step (:mod:`~optgen_runtime.optim.fast`) is never taken: the rows change every
step.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from optgen_runtime.checks import check_overlaps
from optgen_runtime.common import commit
from optgen_runtime.optim.distributed import is_dtensor

# torch.optim's classes that take only sparse gradients: torch's message for a dense one. Their
# state's step count is a Python int (torch's others keep a float32 tensor).
ONLY_SPARSE = {
    "SparseAdam": "SparseAdam does not support dense gradients, please consider Adam instead",
}


def _take(x: torch.Tensor, index: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """``x[index]``, a copy: the elements (or rows, along the first dims) ``index`` holds; for
    one index tensor (a table's rows) by ``index_select``, 8x faster than advanced indexing
    (4,096 rows of 64 floats: 30 against 240 us)."""
    return x.index_select(0, index[0]) if len(index) == 1 else x[index]


def _taken_state(state: dict[str, Any], index: tuple[torch.Tensor, ...]) -> dict[str, Any]:
    """A parameter's state for its rows: each buffer's held elements (``_take``), the count."""
    return {k: v.clone() if k == "step" else _take(v, index) for k, v in state.items()}


def _put(x: torch.Tensor, index: tuple[torch.Tensor, ...], rows: torch.Tensor) -> None:
    """``x[index] = rows`` in place (``index`` holds no element twice: coalesced)."""
    if len(index) == 1:
        x.index_copy_(0, index[0], rows)
    else:
        x.index_put_(index, rows)


class _Gathered(NamedTuple):
    """One parameter's rows this step: where it sits in its group, the indices its gradient
    holds, and the dense rows the step updates in its place."""

    group: dict[str, Any]
    slot: int
    param: torch.Tensor
    index: tuple[torch.Tensor, ...]
    rows: torch.Tensor


class SparseRows:
    """The step of a class of ``ONLY_SPARSE``; see the module docstring. Mixed into ``DropIn``;
    the other drop-ins step as every generated class does."""

    DROP_IN: str

    def _only_sparse(self) -> bool:
        return self.DROP_IN in ONLY_SPARSE

    def _update(self, given: Any, tried: bool) -> None:
        if not self._only_sparse():
            super()._update(given, tried)  # type: ignore[misc]
            return
        gathered = self._gather()
        try:
            super()._update(given, True)  # type: ignore[misc]  # (no fast step: new rows)
            done = True
        except BaseException:
            done = False
            raise
        finally:
            states = [self.state.pop(g.rows, None) for g in gathered]  # type: ignore[attr-defined]
            for g in gathered:
                g.group["params"][g.slot] = g.param
            self._checked = None  # (the key of this step's rows)
            if done:
                commit(lambda: self._scatter(gathered, states))  # after the rows' writes

    def _remember(self) -> None:
        """No plan for a fast step: the rows change every step."""
        if self._only_sparse():
            self._plan = None
        else:
            super()._remember()  # type: ignore[misc]

    def _gather(self) -> list[_Gathered]:
        """Every parameter with a gradient checked, then its rows put in its place in its group
        (with their state under the rows, gathered from the parameter's): nothing of the
        parameters or their states is written."""
        name = type(self).__name__
        placed = [
            (group, slot, p)
            for group in self.param_groups  # type: ignore[attr-defined]
            for slot, p in enumerate(group["params"])
        ]
        with_grads = [(i, *x) for i, x in enumerate(placed) if x[2].grad is not None]
        if len({id(p) for _, _, _, p in with_grads}) < len(with_grads):
            self._refuse_listed_twice()  # type: ignore[attr-defined]
        written: list[tuple[str, Any, bool]] = []
        for index, _, _, p in with_grads:
            self._check_sparse(p, f"parameter {index}")
            written.append((f"parameter {index}", p, True))
            state = self.state.get(p)  # type: ignore[attr-defined]
            if state:
                self._check_state(p, state, f"parameter {index}")  # type: ignore[attr-defined]
                written += [
                    (f"parameter {index}'s state[{key!r}]", value, True)
                    for key, value in state.items()
                    if isinstance(value, torch.Tensor) and value.dim()
                ]
        check_overlaps(name, written)
        gathered, row_states = [], []
        for _, group, slot, p in with_grads:
            grad = p.grad.coalesce()  # repeated indices summed, as torch's step sums them
            index = tuple(grad.indices())
            rows = _take(p.detach(), index)  # a copy: (held elements, *the dense dims)
            rows.grad = grad.values()
            state = self.state.get(p)  # type: ignore[attr-defined]
            if state:  # (else the row step creates the rows' initial state)
                row_states.append((rows, _taken_state(state, index)))
            gathered.append(_Gathered(group, slot, p, index, rows))
        for rows, row_state in row_states:  # (all gathered: nothing of a refusal above stays)
            self.state[rows] = row_state  # type: ignore[attr-defined]
        for g in gathered:
            g.group["params"][g.slot] = g.rows
        return gathered

    def _check_sparse(self, p: torch.Tensor, label: str) -> None:
        """What gathering ``p``'s rows needs of it and its gradient (torch's ``grad`` setter
        gave the gradient ``p``'s shape, dtype and device; the row step checks the rest: dtypes
        it takes, devices its backend takes, its state's)."""
        name, grad = type(self).__name__, p.grad
        if not grad.is_sparse:  # torch's error and message, and what to do under DCP
            raise RuntimeError(
                f"{name}: {label}'s grad is dense. {ONLY_SPARSE[self.DROP_IN]} "
                "(torch.distributed.checkpoint's set_optimizer_state_dict initialises a missing "
                "state with a step on dense zero gradients: call init_state() before it)"
            )
        if grad.layout != torch.sparse_coo:
            raise ValueError(f"{name}: {label}'s grad is {grad.layout}: pass a sparse COO one")
        problem = None
        if is_dtensor(p):
            problem = "is a DTensor: sparse gradients of sharded parameters are not supported"
        elif p.layout != torch.strided:
            problem = f"is {p.layout}: {self.DROP_IN} requires dense parameter tensors"
        elif p.is_complex():
            problem = f"is complex: {self.DROP_IN} does not support complex parameters"
        if problem is not None:
            raise ValueError(f"{name}: {label} {problem}")
        self._check_writable(label, p)  # type: ignore[attr-defined]

    def _scatter(self, gathered: list[_Gathered], states: list[dict[str, Any] | None]) -> None:
        """The updated rows and their state written back into each parameter and its state
        (created, as a first step makes it, for a parameter that had none)."""
        for g, rows_state in zip(gathered, states, strict=True):
            assert rows_state is not None  # the row step made or kept it
            state = self.state.get(g.param)  # type: ignore[attr-defined]
            if not state:
                hp = self._hyper(g.group)  # type: ignore[attr-defined]
                state = self._state_for(g.param, hp)  # type: ignore[attr-defined]
            _put(g.param.detach(), g.index, g.rows)
            for key, value in rows_state.items():
                if key == "step":
                    state[key] = value
                else:
                    _put(state[key], g.index, value)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """torch's constructor refuses complex parameters (on every group added): so here."""
        if self._only_sparse() and isinstance(param_group, dict):
            params = param_group.get("params")
            params = [params] if isinstance(params, torch.Tensor) else params
            if isinstance(params, list | tuple):
                for slot, p in enumerate(params):
                    if isinstance(p, torch.Tensor) and p.is_complex():
                        raise ValueError(
                            f"{type(self).__name__}: parameter {slot} of the group is complex: "
                            f"{self.DROP_IN} does not support complex parameters"
                        )
        super().add_param_group(param_group)  # type: ignore[misc]

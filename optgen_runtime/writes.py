"""All or nothing: a step's writes made only once every check of every tensor (and, in a torch
class, of every param group) has passed. Multi-tensor steps run in two stages (``run_steps``),
and writes are queued inside ``deferred_writes`` (``commit``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from optgen_runtime.common import of_tensor


def run_steps(rule: str, steppers: Sequence[Iterator[None]]) -> None:
    """One step per tensor in two stages: each stepper runs to its ``yield None`` (its
    reductions, checks and host scalars: it reads, writes only temporaries) and only when
    every one has does any resume to write, so a refusal of any tensor (a scalar its data
    make unrepresentable) leaves every tensor as it was."""
    for j in range(len(steppers)):
        if advance(rule, steppers, j) is not None:
            raise RuntimeError(f"{rule}: a step yielded before its checks")  # a generator bug
    finish_steps(rule, steppers)


def advance(rule: str, steppers: Sequence[Iterator[Any]], j: int, value: Any = None) -> Any:
    """Stepper ``j`` run to its next ``yield`` (sent ``value``); a refusal of one of several
    tensors names it (:func:`of_tensor`)."""
    try:
        return steppers[j].send(value)
    except (TypeError, ValueError) as error:
        raise of_tensor(rule, j, error, len(steppers)) from None


def finish_steps(rule: str, steppers: Sequence[Iterator[Any]]) -> None:
    """Resume every stepper, each at its ``yield None``, to its writes and its end (through
    :func:`commit`: inside :func:`deferred_writes`, once every step of the block has passed)."""

    def writes() -> None:
        for s in steppers:
            try:
                next(s)
            except StopIteration:
                continue
            raise RuntimeError(f"{rule}: a step did not finish after its writes")  # a bug

    commit(writes)


# The writes of the steps made inside ``deferred_writes()``, queued in order (None: none is
# open, a step writes at once). A torch class steps its param groups one after the other, and a
# module can refuse a group only once it has its sums or host states: the class opens the block
# around every group's step and runs the writes once all have passed, so a later group's refusal
# leaves every group as it was.
_PENDING: ContextVar[list[Callable[[], None]] | None] = ContextVar("optgen_pending", default=None)


def commit(writes: Callable[[], None], *alive: object) -> None:
    """Run a step's ``writes`` (its every check passed) now, or queue them inside
    :func:`deferred_writes`, with ``alive`` (the buffers the writes reach by address: a
    gradient converted for the step, say) kept alive while they wait."""
    pending = _PENDING.get()
    if pending is None:
        writes()
    else:
        pending.append(_Queued(writes, alive))


class _Queued:
    """Queued writes and what they need alive until they run."""

    __slots__ = ("alive", "writes")

    def __init__(self, writes: Callable[[], None], alive: tuple[object, ...]) -> None:
        self.writes, self.alive = writes, alive

    def __call__(self) -> None:
        self.writes()


@contextmanager
def deferred_writes() -> Iterator[list[Callable[[], None]]]:
    """A block whose steps queue their writes (:func:`commit`) instead of making them: the
    caller runs the list it yields, in order, once the block has ended without an error (a
    refused step leaves the list to be dropped: nothing written). Steps that take buffers of
    the caller's must keep them unchanged until then (no scratch reused between them)."""
    pending: list[Callable[[], None]] = []
    token = _PENDING.set(pending)
    try:
        yield pending
    finally:
        _PENDING.reset(token)


@contextmanager
def all_or_nothing() -> Iterator[None]:
    """The steps made inside write only if every one passes: their writes queued and made at
    the end of the block, or, inside an enclosing :func:`deferred_writes` (a torch class's
    step), left queued for its caller."""
    if deferring():
        yield
        return
    with deferred_writes() as writes:
        yield
    for write in writes:
        write()


def deferring() -> bool:
    """Whether a :func:`deferred_writes` block is open (its steps' writes are queued)."""
    return _PENDING.get() is not None

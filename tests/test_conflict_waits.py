"""Conflict retries and busy waits, decided by ``continue_flow`` without a database.

A scripted store answers the flow's operations: the test says what each ``Load``
sees and whether each ``Swap`` wins, and a fake clock advances by what each ``Sleep``
asks for. The tests check the sequence of operations, the delays and the number of
model calls; nothing here measures time.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

import pytest

from agent_session import (
    Agent,
    InputValidationError,
    SessionBusyError,
    StaleSessionError,
)
from agent_session._flows import (
    Insert,
    Load,
    SessionSpec,
    Snapshot,
    Swap,
    Waits,
    continue_flow,
    start_flow,
)
from agent_session._turn import Sleep, drive
from agent_session.context import utcnow
from agent_session.llm import ModelRequest
from agent_session.testing import FunctionModel
from support.stress_worker import Echo, echo

MODEL = FunctionModel(echo)
CLAIMED_TURN = ["swap running", "model", "write"]
"""A turn's operations after its load, with the status column: claim, call, write."""
TIMEOUT = timedelta(minutes=10)


class Row:
    """What the flows see of a mapped row: attributes, set freely."""

    __agent__ = Agent(MODEL, output_schema=Echo, instruction="Repeat the token.")

    def __init__(self, **values: Any) -> None:
        self.__dict__.update(values)


def spec(*, status: bool) -> SessionSpec:
    return SessionSpec(
        cls=Row,
        context_attr="context",
        revision_attr="revision",
        status_attr="status" if status else None,
        status_changed_attr="status_changed_at" if status else None,
        running_timeout=TIMEOUT,
    )


def first_document() -> dict[str, Any]:
    def handle(op: Any) -> Any:
        return op.instance if isinstance(op, Insert) else MODEL.complete(op)

    row = drive(start_flow(spec(status=False), MODEL, "hello [t0]", None, {}), handle)
    document: dict[str, Any] = row.context
    return document


DOCUMENT = first_document()


def snap(revision: int, status: str | None = None, *, age: timedelta = timedelta(0)) -> Snapshot:
    """A loaded row at ``revision``; ``status`` changed ``age`` ago."""
    since = (utcnow() - age).replace(tzinfo=None) if status is not None else None
    return Snapshot(Row(), DOCUMENT, revision, status, since)


def running(revision: int) -> Snapshot:
    return snap(revision, "running", age=timedelta(seconds=1))


class Script:
    """Answers a flow's operations from scripted loads and swaps, with a fake clock."""

    def __init__(self, loads: Iterable[Snapshot], swaps: Iterable[bool]) -> None:
        self.loads = iter(loads)
        self.swaps = iter(swaps)
        self.ops: list[str] = []
        self.sleeps: list[float] = []
        self.model_calls = 0
        self.now = 1000.0

    def clock(self) -> float:
        return self.now

    def __call__(self, op: Any) -> Any:
        if isinstance(op, Sleep):
            self.ops.append("sleep")
            self.sleeps.append(op.seconds)
            self.now += op.seconds
            return None
        if isinstance(op, Load):
            self.ops.append("load")
            return next(self.loads)
        if isinstance(op, Swap):
            status = op.values.get("status")
            self.ops.append("write" if "context" in op.values else f"swap {status}")
            return next(self.swaps)
        assert isinstance(op, ModelRequest), op
        self.ops.append("model")
        self.model_calls += 1
        return MODEL.complete(op)


def run_continue(
    script: Script,
    *,
    status: bool,
    conflict_retries: int = 0,
    busy_timeout: Any = None,
    seed: int = 1,
    **waits: Any,
) -> Any:
    flow = continue_flow(
        spec(status=status),
        MODEL,
        1,
        None,
        "turn [t1]",
        conflict_retries,
        busy_timeout=busy_timeout,
        waits=Waits(rng=random.Random(seed), clock=script.clock, **waits),
    )
    return drive(flow, script)


def revisions(start: int) -> Iterable[Snapshot]:
    """A row that another writer moves on between every two loads."""
    revision = start
    while True:
        yield snap(revision)
        revision += 1


class Highest(random.Random):
    """Jitter that always picks the top of the window: shows the window itself."""

    def uniform(self, a: float, b: float) -> float:
        return b


# -- conflict retries ------------------------------------------------------------------


def test_the_windows_double_up_to_their_caps() -> None:
    waits = Waits(rng=Highest())
    assert [waits.retry_delay(n) for n in range(9)] == pytest.approx(
        [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0]
    )
    assert [waits.poll_delay(n) for n in range(6)] == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.5, 0.5])
    assert waits.retry_delay(10_000) == 2.0  # no overflow however many retries


def test_conflict_retries_sleep_a_growing_jittered_delay() -> None:
    script = Script(revisions(1), [False] * 6 + [True])
    run_continue(script, status=False, conflict_retries=6)

    assert script.ops == ["load", "model", "write"] + ["sleep", "load", "model", "write"] * 6
    assert script.model_calls == 7
    windows = [min(2.0, 0.05 * 2**n) for n in range(6)]
    assert all(0 <= d <= w for d, w in zip(script.sleeps, windows, strict=True)), script.sleeps
    assert len(set(script.sleeps)) == 6  # drawn, not fixed
    assert not any(math.isclose(d, w) for d, w in zip(script.sleeps, windows, strict=True))


def test_the_same_seed_gives_the_same_delays() -> None:
    delays = []
    for seed in (5, 5, 6):
        script = Script(revisions(1), [False] * 3 + [True])
        run_continue(script, status=False, conflict_retries=3, seed=seed)
        delays.append(script.sleeps)
    assert delays[0] == delays[1] != delays[2]


def test_without_backoff_retries_come_at_once() -> None:
    """``retry_cap=0``: how retries behaved before the backoff (the benchmark's baseline)."""
    script = Script(revisions(1), [False, False, True])
    run_continue(script, status=False, conflict_retries=2, retry_cap=0.0)
    assert script.ops == ["load", "model", "write"] * 3
    assert script.sleeps == []


def test_exhausted_conflict_retries_raise_stale() -> None:
    script = Script(revisions(1), [False] * 3)
    with pytest.raises(StaleSessionError, match="nothing was written"):
        run_continue(script, status=False, conflict_retries=2)
    assert script.ops == ["load", "model", "write"] + ["sleep", "load", "model", "write"] * 2
    assert script.model_calls == 3


def test_busy_timeout_without_a_status_column_changes_nothing() -> None:
    """Without the column no turn is seen running: only conflict retries help."""
    script = Script(revisions(1), [False])
    with pytest.raises(StaleSessionError):
        run_continue(script, status=False, busy_timeout=30)
    assert script.ops == ["load", "model", "write"]


# -- a turn running in another worker ------------------------------------------------------


def test_a_running_turn_is_waited_for_then_the_turn_runs_on_its_history() -> None:
    script = Script([running(3), running(3), snap(4, "completed")], [True, True])
    run_continue(script, status=True, busy_timeout=10)

    assert script.ops == ["load", "sleep", "load", "sleep", "load", *CLAIMED_TURN]
    assert script.model_calls == 1
    assert 0 <= script.sleeps[0] <= 0.05 and 0 <= script.sleeps[1] <= 0.1


def test_the_wait_ends_at_busy_timeout() -> None:
    script = Script(iter(lambda: running(3), None), [])
    with pytest.raises(SessionBusyError, match=r"still running after 1\.5s"):
        run_continue(script, status=True, busy_timeout=1.5)

    assert script.model_calls == 0
    assert set(script.ops) == {"load", "sleep"}
    assert script.ops[0] == "load" and script.ops[-1] == "load"
    assert sum(script.sleeps) == pytest.approx(1.5)  # the last sleep is cut to the deadline
    assert all(d <= 0.5 for d in script.sleeps)


@pytest.mark.parametrize(("busy_timeout", "retries"), [(None, 0), (None, 3), (0, 0), (0.0, 3)])
def test_no_wait_without_busy_timeout(busy_timeout: float | None, retries: int) -> None:
    """The behaviour before ``busy_timeout``: a running row is busy at once, and a
    conflict retry does not wait for it either."""
    script = Script([running(3)], [])
    with pytest.raises(SessionBusyError, match="running a turn in another worker"):
        run_continue(script, status=True, busy_timeout=busy_timeout, conflict_retries=retries)
    assert script.ops == ["load"]


def test_a_stale_running_status_is_taken_over_without_waiting() -> None:
    dead = snap(3, "running", age=TIMEOUT + timedelta(seconds=1))
    script = Script([dead], [True, True])
    run_continue(script, status=True, busy_timeout=10)
    assert script.ops == ["load", *CLAIMED_TURN]


# -- a claim lost to another worker ----------------------------------------------------------


def test_a_lost_claim_is_waited_for_without_a_model_call() -> None:
    """Both loaded revision 2; the other worker claimed it first. With ``busy_timeout``
    this is no conflict: reload, wait for its turn, then claim the newer history."""
    loads = [snap(2, "completed"), running(3), snap(4, "completed")]
    script = Script(loads, [False, True, True])
    run_continue(script, status=True, busy_timeout=10, conflict_retries=0)
    assert script.ops == ["load", "swap running", "load", "sleep", "load", *CLAIMED_TURN]
    assert script.model_calls == 1


def test_a_lost_claim_without_busy_timeout_is_a_conflict() -> None:
    script = Script([snap(2, "completed")], [False])
    with pytest.raises(StaleSessionError):
        run_continue(script, status=True, conflict_retries=0)
    assert script.ops == ["load", "swap running"]

    # With a retry, the reload sees the winner running: busy, as before busy_timeout.
    script = Script([snap(2, "completed"), running(3)], [False])
    with pytest.raises(SessionBusyError):
        run_continue(script, status=True, conflict_retries=1)
    assert script.ops == ["load", "swap running", "sleep", "load"]
    assert script.model_calls == 0


def test_a_claim_lost_after_the_deadline_is_busy() -> None:
    script = Script([snap(2, "completed")], [False])
    with pytest.raises(SessionBusyError, match="claimed by another worker"):
        run_continue(script, status=True, busy_timeout=0)
    assert script.ops == ["load", "swap running"]


def test_a_reload_that_cannot_see_the_winner_is_stale_at_once() -> None:
    """A caller-owned REPEATABLE READ transaction reloads its own snapshot."""
    script = Script([snap(2, "completed"), snap(2, "completed")], [False])
    with pytest.raises(StaleSessionError, match="REPEATABLE READ"):
        run_continue(script, status=True, busy_timeout=10)
    assert script.ops == ["load", "swap running", "load"]
    assert script.model_calls == 0


# -- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize("busy_timeout", [-1, -0.5, "5", True, math.nan, [1]], ids=repr)
def test_a_bad_busy_timeout_is_refused_before_any_operation(busy_timeout: Any) -> None:
    script = Script([], [])
    with pytest.raises(InputValidationError, match="busy_timeout must be None or a number") as info:
        run_continue(script, status=True, busy_timeout=busy_timeout)
    assert info.value.source == "busy_timeout"
    assert script.ops == []


@pytest.mark.parametrize("busy_timeout", [0, 2, 0.25, math.inf])
def test_good_busy_timeouts(busy_timeout: float) -> None:
    script = Script([snap(2, "completed")], [True, True])
    run_continue(script, status=True, busy_timeout=busy_timeout)
    assert script.ops == ["load", *CLAIMED_TURN]

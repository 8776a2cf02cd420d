"""The engine enforces the machines: phases change only along declared transitions."""

from __future__ import annotations

import math

import pytest
from transitions.core import Condition

from hypha_sm.core.engine import Ctx, Engine, Registry
from hypha_sm.core.errors import InvalidTransition, InvariantViolation
from hypha_sm.core.resources import Amounts
from hypha_sm.core.spec import parse_machine
from hypha_sm.roles.worker.core.events import JobExited, Now, Tick
from hypha_sm.roles.worker.core.policy import Policy
from hypha_sm.roles.worker.core.reducer import initial_state, step
from hypha_sm.roles.worker.core.state import WorkerState
from tests.helpers import Worker, ad

TOY = """
[machine]
name = "%s"
initial = "a"
terminal = ["z"]

[events]
go = { kind = "internal" }
late = { kind = "timer" }

[states.a]
[states.b]
deadline = "late"
[states.z]

[[transitions]]
from = "a"
on = "go"
to = "b"
effects = ["act"]

[[transitions]]
from = "b"
on = ["go", "late"]
to = "z"
"""


def _toy_state(act: object) -> WorkerState:
    """A state whose engine has only toy machines named like the real ones, all running `act`."""
    specs = {}
    registries = {}
    for name in ("node", "batch", "request", "lease", "job"):
        specs[name] = parse_machine(f"machines/{name}.toml", TOY % name)
        registry = Registry.new(name)
        registry.actions["act"] = act  # type: ignore[assignment]
        registries[name] = registry
    engine = Engine(specs, registries)
    return WorkerState(engine, Policy(capacity=Amounts(cpu=1)), bytes(16))


def test_assigning_a_phase_directly_raises_invalid_transition() -> None:
    """`rec.phase = ...` outside the engine is a bug the engine catches loudly."""
    worker = Worker()
    node = worker.state.records["node"]["node"]
    with pytest.raises(InvalidTransition, match="outside a declared transition"):
        node.phase = "stopped"
    assert node.phase == "running"


def test_an_action_that_sets_the_phase_behind_the_engines_back_is_caught() -> None:
    """An action writing the private phase slot is detected after the transition."""

    def act(ctx: Ctx) -> None:
        ctx.rec._phase = "z"
        ctx.state.arm(ctx.rec, 1.0)

    state = _toy_state(act)
    with pytest.raises(InvalidTransition, match="changed the phase directly"):
        state.fire("node", "node", "go")


def test_entering_a_deadline_state_without_arming_the_deadline_is_caught() -> None:
    """A state with a deadline edge must get a deadline, or the record could get stuck."""
    state = _toy_state(lambda ctx: None)
    with pytest.raises(InvariantViolation, match="without arming its deadline"):
        state.fire("node", "node", "go")


def test_firing_on_the_same_kind_from_inside_an_action_is_refused() -> None:
    """Actions post events instead of re-entering their own machine (the flyweight is shared)."""

    def act(ctx: Ctx) -> None:
        ctx.state.arm(ctx.rec, 1.0)
        ctx.state.fire("node", "node", "go")

    state = _toy_state(act)
    with pytest.raises(InvariantViolation, match="re-entrant"):
        state.fire("node", "node", "go")


@pytest.mark.parametrize("condition", ["second guard", "negated guard"])
def test_the_table_path_refuses_a_transition_it_cannot_express(condition: str) -> None:
    """The table runs one positive guard per transition; a Machine that grew a second guard or
    an `unless` one cannot be compiled into it and fails loudly instead of firing wrongly."""
    runtime = _toy_state(lambda ctx: None).engine.runtimes["node"]
    transition = runtime.machine.events["go"].transitions["a"][0]
    if condition == "second guard":
        transition.conditions.extend([Condition(lambda: True), Condition(lambda: True)])
    else:
        transition.conditions.append(Condition(lambda: True, target=False))
    with pytest.raises(InvariantViolation, match="one positive guard per transition"):
        runtime._compile()


def test_an_event_a_state_does_not_declare_is_an_invalid_transition() -> None:
    """Internal events with no declared answer in the current phase raise."""
    state = _toy_state(lambda ctx: ctx.state.arm(ctx.rec, 1.0))
    with pytest.raises(InvalidTransition, match="no transition, ignore or reject"):
        state.fire("node", "node", "late")


def test_terminal_records_are_dropped_and_deadlines_cleared() -> None:
    """Reaching a terminal phase removes the record; its timers go stale."""
    state = _toy_state(lambda ctx: ctx.state.arm(ctx.rec, 1.0))
    state.fire("node", "node", "go")
    assert state.next_deadline() == 1.0
    state.fire("node", "node", "go")
    assert "node" not in state.records["node"]
    assert state.next_deadline() == math.inf
    assert state.counters["node.z"] == 1


def test_time_going_backwards_is_an_invariant_violation() -> None:
    """The shell's monotonic clock must not run backwards."""
    worker = Worker()
    worker.tick(5.0)
    with pytest.raises(InvariantViolation, match="went backwards"):
        step(worker.state, Tick(), Now(4.0, 0.0))


def test_a_result_for_a_job_the_core_never_started_is_a_shell_bug() -> None:
    """The shell only reports on jobs the core asked it to start; anything else raises."""
    worker = Worker()
    with pytest.raises(InvariantViolation, match="'ghost', which is not live"):
        worker.feed(JobExited("ghost", 0))


def test_invalid_capacity_is_refused() -> None:
    """A policy with a negative capacity cannot build a state."""
    from tests.helpers import engine

    with pytest.raises(ValueError, match="invalid capacity"):
        initial_state(engine(), Policy(capacity=Amounts(cpu=-1)), bytes(16))


def test_ids_are_deterministic_per_seed_and_distinct() -> None:
    """The same seed gives the same lease ids; another seed gives others."""

    def lease_ids(seed: bytes) -> list[str]:
        worker = Worker(seed=seed)
        for i in range(3):
            worker.feed(ad(f"r{i}", t=0.0), 0.0)
        out = worker.tick(0.2)
        return [e.lease_id for e in out.effects]  # type: ignore[union-attr]

    a = lease_ids(bytes(16))
    assert a == lease_ids(bytes(16))
    assert len(set(a)) == 3
    assert set(a).isdisjoint(lease_ids(bytes(range(16))))


def test_rapid_renewals_do_not_grow_the_timer_heap_without_bound() -> None:
    """Each renewal leaves a stale timer entry; compaction keeps about two per live record."""
    from tests.helpers import renew

    worker = Worker()
    worker.feed(ad("a"), 0.0)
    lease = worker.tick(0.2).effects[0].lease_id  # type: ignore[union-attr]
    for i in range(5000):
        out = worker.feed(renew(lease, reply_to=i), 0.3 + i * 0.001)
        assert out.effects[0].lease_id == lease  # type: ignore[union-attr]
    assert len(worker.state.timers) <= 2 * worker.state.live_records() + 1024
    # The deadline that counts is the last renewal's, and it still fires exactly then.
    last = worker.t + worker.timings.lease_timeout
    assert worker.state.next_deadline() == last
    worker.tick(last)
    assert lease not in worker.state.records["lease"]

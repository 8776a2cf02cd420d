"""The role-free core: a machine, a registry and a ``Host`` subclass that know nothing of the worker.

A toy role (a door that closes itself after a while and refuses to open when locked) runs on
the same engine and host the worker runs on: this is what a new role brings and all it needs.
"""

from __future__ import annotations

import math

import pytest

from hypha_sm.core.engine import Ctx, Engine, Registry
from hypha_sm.core.errors import InvalidTransition, InvariantViolation
from hypha_sm.core.host import Host
from hypha_sm.core.record import Record
from hypha_sm.core.spec import parse_machines
from hypha_sm.core.trace import CREATED, IGNORED, REJECTED, Now

DOOR = b"""
[machine]
name = "door"
description = "A door that closes itself."
initial = "closed"
terminal = ["gone"]

[events]
push = { kind = "remote", doc = "someone pushes" }
lock = { kind = "command", doc = "the keeper locks it" }
unhinge = { kind = "command", doc = "taken away" }
close_time = { kind = "timer", doc = "open long enough" }

[states.closed]
doc = "Closed."
ignore = ["close_time"]

[states.open]
doc = "Open until its deadline."
deadline = "close_time"
ignore = ["push"]

[states.locked]
doc = "Locked: a push is refused with a reason."
reject = { push = "locked" }
ignore = ["lock"]

[states.gone]
doc = "Taken away."

[[transitions]]
from = "closed"
on = "push"
to = "open"
effects = ["hold_open"]

[[transitions]]
from = "open"
on = "close_time"
to = "closed"
effects = ["say(closed)"]

[[transitions]]
from = ["closed", "open"]
on = "lock"
to = "locked"

[[transitions]]
from = ["closed", "open", "locked"]
on = "unhinge"
to = "gone"
"""

REGISTRY = Registry.new("door")


class DoorRec(Record):
    __slots__ = ()
    kind = "door"


class Doors(Host[str]):
    """The toy role's state: it answers a refused push with a reply effect."""

    def refuse(self, payload: object, reason: str) -> None:
        self.emit(f"refused {payload} ({reason})")


@REGISTRY.action
def hold_open(ctx: Ctx[Doors]) -> None:
    ctx.state.arm_after(ctx.rec, 5.0)


@REGISTRY.action_with_arg
def say(ctx: Ctx[Doors], words: str) -> None:
    ctx.state.emit(f"{ctx.rec.key} {words}")


def doors() -> Doors:
    engine = Engine(parse_machines({"machines/door.toml": DOOR}), {"door": REGISTRY})
    return Doors(engine, ("door",), bytes(16))


def step(host: Doors, at: float, kind: str, key: str, event: str, payload: object = None) -> None:
    host.begin(Now(at, 1000.0 + at))
    host.fire_due()
    if event:
        host.fire(kind, key, event, payload)
    host.drain()


def test_a_toy_role_runs_on_the_engine_and_host_without_the_worker() -> None:
    """Create, fire, a deadline at its exact time, a refused event answered by the role."""
    host = doors()
    host.create(DoorRec("front"))
    assert host.trace == [("door", "front", "", "created", "closed", CREATED)]
    step(host, 1.0, "door", "front", "push", "alice")
    assert host.get("door", "front").phase == "open"
    assert host.next_deadline() == 6.0
    step(host, 5.9, "door", "front", "push", "bob")
    assert host.trace == [("door", "front", "open", "push", None, IGNORED)]
    step(host, 6.0, "", "", "")
    assert host.get("door", "front").phase == "closed"
    assert host.effects == ["front closed"]
    step(host, 7.0, "door", "front", "lock")
    step(host, 8.0, "door", "front", "push", "carol")
    assert host.effects == ["refused carol (locked)"]
    assert host.trace == [("door", "front", "locked", "push", None, REJECTED)]
    assert host.counters["rejected.door.locked"] == 1
    step(host, 9.0, "door", "front", "unhinge")
    assert host.get("door", "front") is None
    assert host.counters["door.gone"] == 1


def test_deadlines_fire_in_time_order_and_stale_ones_are_skipped() -> None:
    """Two doors; one re-armed later: each closes at its latest deadline, earliest first."""
    host = doors()
    for key in ("a", "b"):
        host.create(DoorRec(key))
    step(host, 0.0, "door", "a", "push")
    step(host, 1.0, "door", "b", "push")
    host.arm(host.get("door", "a"), 10.0)  # re-armed: its 5.0 entry is stale
    step(host, 20.0, "", "", "")
    assert host.effects == ["b closed", "a closed"]
    assert host.next_deadline() == float("inf")


def test_time_that_goes_backwards_is_an_invariant_break() -> None:
    host = doors()
    host.begin(Now(5.0, 0.0))
    with pytest.raises(InvariantViolation, match="went backwards"):
        host.begin(Now(4.0, 0.0))


@pytest.mark.parametrize(
    ("kinds", "problem"),
    [(("door", "window"), "do not match"), ((), "do not match")],
)
def test_a_host_refuses_kinds_that_are_not_its_machines(
    kinds: tuple[str, ...], problem: str
) -> None:
    engine = Engine(parse_machines({"machines/door.toml": DOOR}), {"door": REGISTRY})
    with pytest.raises(InvariantViolation, match=problem):
        Doors(engine, kinds, bytes(16))


def test_an_undeclared_event_and_a_dead_record_raise() -> None:
    """Internal misuse is loud: an event no phase declares, or a record that is not live."""
    host = doors()
    host.create(DoorRec("front"))
    with pytest.raises(InvalidTransition):
        host.fire("door", "front", "close_time_typo")
    with pytest.raises(InvariantViolation, match="not live"):
        host.fire("door", "back", "push")
    with pytest.raises(InvariantViolation, match="already exists"):
        host.create(DoorRec("front"))


def test_a_record_lists_its_phase_and_every_slot_once() -> None:
    """``fields()``: the phase under its public name, then the slots of every class."""
    host = doors()
    host.create(DoorRec("front"))
    assert host.get("door", "front").fields() == {
        "phase": "closed",
        "deadline": math.inf,
        "key": "front",
    }

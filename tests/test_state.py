"""The worker state's deadline heap and its snapshot, below the reducer."""

from __future__ import annotations

import heapq
import math

from hypothesis import given
from hypothesis import strategies as st

from hypha_sm.core.resources import Amounts
from hypha_sm.core.trace import Now
from hypha_sm.machines_io import load_engine
from hypha_sm.roles.worker.core.policy import Policy
from hypha_sm.roles.worker.core.records import NodeRec
from hypha_sm.roles.worker.core.role import WORKER
from hypha_sm.roles.worker.core.state import WorkerState

ENGINE, _ = load_engine(WORKER)
KEYS = ("n0", "n1", "n2", "n3")


def _state() -> WorkerState:
    """A state with four extra node-kind records to arm: timers only look at kind and key."""
    state = WorkerState(ENGINE, Policy(capacity=Amounts(cpu=2, memory=4)), bytes(16))
    for key in KEYS:
        state.create(NodeRec(key))
    return state


def _firing_order(state: WorkerState) -> list[tuple[float, str]]:
    """Each live record's deadline in the order the reducer would fire them: pop the heap,
    skip stale entries, and count a record once (firing moves it on)."""
    heap = list(state.timers)
    fired: list[tuple[float, str]] = []
    done: set[str] = set()
    while heap:
        at, _, kind, key = heapq.heappop(heap)
        rec = state.records[kind].get(key)
        if rec is None or rec.deadline != at or key in done:
            continue
        done.add(key)
        fired.append((at, key))
    return fired


#: (record index, deadline) to arm, or (record index, None) to drop the record.
OPS = st.lists(
    st.tuples(st.integers(0, len(KEYS) - 1), st.one_of(st.none(), st.integers(1, 4))),
    max_size=40,
)


@given(OPS)
def test_compacting_the_deadline_heap_never_changes_what_fires_or_in_which_order(
    ops: list[tuple[int, int | None]],
) -> None:
    """Arms (with ties, and a record re-armed back to an earlier time) and drops of records:
    after compaction the heap holds one entry per live armed record, and deadlines fire in
    exactly the order the uncompacted heap gives."""
    plain, compacted = _state(), _state()
    for index, at in ops:
        for state in (plain, compacted):
            rec = state.records["node"].get(KEYS[index])
            if rec is None:
                continue
            if at is None:
                del state.records["node"][KEYS[index]]
            else:
                state.arm(rec, float(at))
    compacted._compact_timers()
    armed = [r for r in compacted.records["node"].values() if r.deadline != math.inf]
    assert len(compacted.timers) == len(armed)
    assert _firing_order(compacted) == _firing_order(plain)
    assert compacted.next_deadline() == plain.next_deadline()


def test_a_record_renewed_without_end_keeps_the_heap_bounded() -> None:
    """Re-arming one record 10,000 times (a peer renewing in a loop) leaves at most one entry
    per live record plus the slack before compaction, and the newest deadline is the one due."""
    state = _state()
    rec = state.records["node"]["n0"]
    bound = 2 * state.live_records() + 1024
    for i in range(10_000):
        state.arm(rec, 100.0 + i)
        assert len(state.timers) <= bound + 1
    assert state.next_deadline() == 100.0 + 9_999
    assert _firing_order(state) == [(100.0 + 9_999, "n0")]


def test_the_snapshot_names_everything_that_determines_future_behaviour() -> None:
    """`hypha-sm replay` prints this dict: time, intake, ledger, ids, next deadline, records,
    counters, remembered advertisements, storage and lapsed schedulers, by these names."""
    state = _state()
    state.arm(state.records["node"]["n1"], 7.0)
    state.counters["ads.seen"] += 2
    state.seen_ads["req-1"] = 30.0
    state.storage_full = True
    state.lapses["sched"] = (1, 5.0)
    state.note_ended("lease-1", "sched", "not_accepted")
    snap = state.snapshot()
    records = snap.pop("records")
    assert snap == {
        "now": {"mono": 0.0, "wall": 0.0},
        "accepting": True,
        "capacity": state.capacity.to_amounts(),
        "reserved": state.reserved.to_amounts(),
        "reservations": {},
        "ids_issued": 0,
        "next_deadline": 7.0,
        "counters": {"ads.seen": 2},
        "remembered_ads": 1,
        "storage_full": True,
        "lapses": {"sched": (1, 5.0)},
        "ended_leases": {"lease-1": ("sched", "offer_expired")},
    }
    assert isinstance(records, dict)
    assert records["node"]["n1"]["deadline"] == 7.0
    assert set(records) == {"node", "batch", "request", "lease", "job"}


def test_a_fresh_worker_holds_only_its_node_and_window_with_their_initial_fields() -> None:
    """Every field a record starts with is what replay prints and snapshots carry."""
    engine, _ = load_engine(WORKER)
    state = WorkerState(engine, Policy(capacity=Amounts(cpu=1.0)), bytes(16))
    assert state.snapshot()["records"] == {
        "node": {
            "node": {"phase": "running", "deadline": math.inf, "key": "node", "stop_reason": ""}
        },
        "batch": {"batch": state.records["batch"]["batch"].fields()},
        "request": {},
        "lease": {},
        "job": {},
    }
    batch = state.records["batch"]["batch"].fields()
    assert (batch["phase"], batch["deadline"], batch["key"]) == ("idle", math.inf, "batch")
    assert "_phase" not in batch


def _with(**policy: object) -> WorkerState:
    return WorkerState(ENGINE, Policy(capacity=Amounts(cpu=1.0), **policy), bytes(16))


def test_deadlines_due_at_the_same_time_fire_in_the_order_they_were_armed() -> None:
    state = _state()
    for key in ("n3", "n0", "n2"):
        state.arm(state.records["node"][key], 5.0)
    assert [key for _, key in _firing_order(state)] == ["n3", "n0", "n2"]


def test_advertisement_ids_are_forgotten_at_their_time_and_beyond_capacity_oldest_first() -> None:
    """``forget_seen`` at exactly the forget time; ``bound_seen`` evicts the soonest to expire
    down to the capacity, counting each eviction."""
    state = _with()
    for request_id, forget_at in (("a", 10.0), ("b", 20.0), ("c", 30.0)):
        state.seen_ads[request_id] = forget_at
        heapq.heappush(state.seen_heap, (forget_at, request_id))
    state.bound_seen(3)
    assert set(state.seen_ads) == {"a", "b", "c"}
    state.bound_seen(2)
    assert set(state.seen_ads) == {"b", "c"}
    assert state.counters["dedupe.evicted"] == 1
    state.now = Now(20.0, 0.0)
    state.forget_seen()
    assert set(state.seen_ads) == {"c"}


def test_lapse_memory_is_bounded_and_a_long_quiet_scheduler_starts_afresh() -> None:
    """At most ``scheduler_memory`` schedulers are remembered (the least recently changed go);
    one quiet for longer than ``backoff_max`` counts its next lapse as its first."""
    state = _with(scheduler_memory=2, lapses_before_backoff=2)
    for scheduler in ("s1", "s2", "s3"):
        state.note_lapse(scheduler)
    assert list(state.lapses) == ["s2", "s3"]
    quiet = state.policy.timings.backoff_max
    state.now = Now(quiet, 0.0)
    state.note_lapse("s3")  # quiet exactly backoff_max: not yet a fresh start
    assert state.lapses["s3"][0] == 2
    state.now = Now(state.lapses["s3"][1] + quiet + 1e-3, 0.0)  # quiet for longer than that
    state.note_lapse("s3")
    assert state.lapses["s3"][0] == 1


def test_ended_lease_memory_is_bounded_and_tells_only_the_owner() -> None:
    """A stranger who renews lease ids cannot grow the memory of ended leases (at most
    ``ended_lease_memory``, the oldest forgotten) or learn why one ended."""
    state = _with(ended_lease_memory=2)
    state.note_ended("l1", "owner", "not_accepted")
    state.note_ended("l2", "owner", "job_ended")
    state.note_ended("l3", "owner", "draining?")  # a reason without its own reply
    assert list(state.ended_leases) == ["l2", "l3"]
    assert state.why_unknown("l1", "owner") == "unknown_lease"  # forgotten
    assert state.why_unknown("l2", "owner") == "job_ended"
    assert state.why_unknown("l3", "owner") == "lease_ended"
    assert state.why_unknown("l2", "stranger") == "unknown_lease"


def test_ended_records_are_counted_by_kind_and_final_phase() -> None:
    state = _state()
    for key in ("n0", "n1"):
        state.records["node"][key]._phase = "stopped"
        state.drop(state.records["node"][key])
    assert state.counters["node.stopped"] == 2

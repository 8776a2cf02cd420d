"""Hypothesis drives a DiLoCo job's progress at the scheduler's core, as honest workers and a
parameter server would (and as a lost worker does not).

Each training worker is modelled as the executor behaves: it reports batches and counts the
scheduler's ScheduleUpdate down, sends its update, and once the round's update was published
says update-received. The rules pick who acts next, in any interleaving (the PS's `updated`
may come before or after a worker's update-received: B4), and lose workers now and then.
After every step: every reply is one the worker's state allows (the machine); Done comes only
after the last round and only in answer to update-received; the job finishes exactly when
every round was aggregated; and a round never waits for a lost worker.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import hypothesis.strategies as st
from hypothesis import event, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from hypha_sm.roles.scheduler.core import effects as fx
from hypha_sm.roles.scheduler.core import events as ev
from tests.scheduler_world import World, placed_diloco, progress

ROUNDS = 3


@dataclass
class Trainer:
    """What one executor knows: its counter, whether it sent its update, what it heard."""

    lease: str
    counter: int = -1
    sent: bool = False
    waiting: bool = False  # said update-received, reply held back
    done: bool = False
    lost: bool = False
    rounds_done: int = 0
    replies: list[str] = field(default_factory=list)


def _replies(effects: list[fx.Effect]) -> list[fx.ReplyProgress]:
    return [e for e in effects if isinstance(e, fx.ReplyProgress)]


class DiLoCoRounds(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.world: World = placed_diloco(3, rounds=ROUNDS, samples=48)
        self.trainers = {
            lease: Trainer(lease) for lease in sorted(self.world.state.records["training"])
        }
        self.available = 0  # rounds whose update the PS sent to the workers
        self.published = 0  # rounds whose update the PS reported to the scheduler

    def _live(self) -> list[Trainer]:
        return [t for t in self.trainers.values() if not t.lost and not t.done]

    def _deliver_held(self, effects: list[fx.Effect], lease_of: dict[int, str]) -> None:
        for reply in _replies(effects):
            lease = lease_of.get(reply.reply_to)
            if lease is None:
                continue
            trainer = self.trainers[lease]
            trainer.replies.append(reply.reply)
            trainer.waiting = False
            self._after_update_received(trainer, reply.reply)

    def _after_update_received(self, trainer: Trainer, answer: str) -> None:
        assert answer in ("continue", "done"), answer
        trainer.rounds_done += 1
        event(f"a worker finished round {trainer.rounds_done}")
        if answer == "done":
            assert self.world.state.tracker.finished
            assert trainer.rounds_done == ROUNDS  # Done exactly after the last round
            trainer.done = True
        else:
            assert not self.world.state.tracker.finished or trainer.rounds_done < ROUNDS
            trainer.counter, trainer.sent = -1, False

    @precondition(lambda self: any(not t.sent and not t.waiting for t in self._live()))
    @rule(pick=st.integers(0, 10))
    def batch(self, pick: int) -> None:
        """A worker finishes a batch (or, its counter at 0, sends its update)."""
        candidates = [t for t in self._live() if not t.sent and not t.waiting]
        trainer = candidates[pick % len(candidates)]
        self.world.advance(0.05)
        if trainer.counter == 0:
            (reply,) = _replies(progress(self.world, trainer.lease, "update"))
            assert reply.reply == "ok"
            trainer.sent = True
            return
        (reply,) = _replies(progress(self.world, trainer.lease, "status", 8))
        assert reply.reply in ("continue", "schedule_update"), reply
        if reply.reply == "schedule_update":
            trainer.counter = reply.counter
        elif trainer.counter > 0:
            trainer.counter -= 1

    @precondition(
        lambda self: any(
            t.sent and not t.waiting and t.rounds_done < self.available for t in self._live()
        )
    )
    @rule(pick=st.integers(0, 10))
    def update_received(self, pick: int) -> None:
        """A worker that got the round's update merged it and says so (maybe before the PS's
        ``updated`` reached the scheduler: B4)."""
        candidates = [
            t for t in self._live() if t.sent and not t.waiting and t.rounds_done < self.available
        ]
        trainer = candidates[pick % len(candidates)]
        token = self.world.replies + 1
        effects = progress(self.world, trainer.lease, "update-received", 0, "w")
        replies = [r for r in _replies(effects) if r.reply_to == token]
        if replies:
            trainer.replies.append(replies[0].reply)
            self._after_update_received(trainer, replies[0].reply)
        else:
            assert self.published < self.available  # only while `updated` is in flight
            trainer.waiting = True  # B4: held until the round closes
            event("an update-received waited for the round to close (B4)")

    @precondition(
        lambda self: (
            bool(self._live())
            and all(t.sent and t.rounds_done == self.available for t in self._live())
            and self.available == self.published < ROUNDS
        )
    )
    @rule()
    def publish(self) -> None:
        """The PS aggregated the round and its update reached the workers."""
        self.available += 1

    @precondition(lambda self: self.published < self.available)
    @rule()
    def updated(self) -> None:
        """The PS tells the scheduler the round's update is out."""
        lease_of = {}
        # Held replies answer tokens of waiting workers: map them back.
        for key, rec in self.world.state.records["training"].items():
            if rec.held is not None:
                lease_of[rec.held[0]] = key
        effects = progress(self.world, "PS", "updated")
        self.published += 1
        own = [r for r in _replies(effects) if r.reply_to not in lease_of]
        assert [r.reply for r in own] == ["done" if self.published == ROUNDS else "ok"]
        self._deliver_held(effects, lease_of)

    @precondition(lambda self: len(self._live()) > 1)
    @rule(pick=st.integers(0, 10))
    def lose(self, pick: int) -> None:
        """A worker's job fails: it leaves the rounds."""
        live = self._live()
        trainer = live[pick % len(live)]
        job_id = self.world.job_of(trainer.lease)
        rec = self.world.state.records["placement"].get(trainer.lease)
        if rec is None:
            return
        peer = rec.worker
        self.world.feed(ev.StatusReceived(self.world.token(), peer, job_id or "", "failed", 1))
        trainer.lost = True

    @rule()
    def wait(self) -> None:
        """Time passes; the workers answer the renewals (also after the job ended)."""
        while (renewal := self.world.take(fx.RenewLease)) is not None:
            self.world.answer(renewal)
        self.world.advance(0.05)

    @invariant()
    def a_round_never_waits_for_a_lost_worker(self) -> None:
        tracker = self.world.state.tracker
        live_leases = {t.lease for t in self.trainers.values() if not t.lost}
        assert set(tracker.peers) <= live_leases

    @invariant()
    def the_job_finishes_when_every_round_was_aggregated(self) -> None:
        tracker = self.world.state.tracker
        assert tracker.round - 1 == self.published <= ROUNDS
        if all(t.done or t.lost for t in self.trainers.values()) and any(
            t.done for t in self.trainers.values()
        ):
            assert tracker.finished


DiLoCoRounds.TestCase.settings = settings(max_examples=100, stateful_step_count=150, deadline=None)
test_diloco_rounds = DiLoCoRounds.TestCase

"""The worker's slice fetcher alone: prefetch bookkeeping with the network stubbed out."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import trio
import trio.testing

from hypha_sm.roles.worker.slices import SliceFetcher
from hypha_sm.wire import messages as m


class StubbedFetcher(SliceFetcher):
    """Scheduler answers and pulls without sockets: dataset D's slices are D-0, D-1, ..."""

    def __init__(self, nursery: trio.Nursery) -> None:
        super().__init__(
            transport=None,  # type: ignore[arg-type]
            gateways=None,  # type: ignore[arg-type]
            files=None,  # type: ignore[arg-type]
            bulk_address=lambda: "",
            scheduler_of=lambda _: ("12D3KooWScheduler", "tcp://scheduler:1"),
            nursery=nursery,
            prefetch=1,
        )
        self.counters: dict[str, Any] = {}
        self.asked: list[str] = []

    async def _ask(
        self, job_id: str, dataset: str, scheduler: str, address: str
    ) -> m.DataSliceAnswer:
        counter = self.counters.setdefault(dataset, itertools.count())
        self.asked.append(dataset)
        return m.DataSliceAnswer(dataset, "found", "p", "a", next(counter))

    async def _pull(self, answer: m.DataSliceAnswer, target: Path) -> m.SliceServed:
        await trio.Path(target).write_text(f"{answer.dataset}-{answer.index}")
        return m.SliceServed("t", (await trio.Path(target).stat()).st_size, "")

    async def _report_done(self, job_id: str, job: Any, address: str) -> None:
        job.outstanding.clear()


async def test_a_slice_fetched_ahead_is_handed_out_next_and_only_for_its_dataset(
    tmp_path: Path,
) -> None:
    """fox-0 is fetched, fox-1 fetched ahead and handed out next; when the job asks for another
    dataset the fox slice fetched ahead is dropped (its file removed), not handed out."""
    async with trio.open_nursery() as nursery:
        fetcher = StubbedFetcher(nursery)
        (first,) = await fetcher.fetch("job", "fox", tmp_path, None)
        assert first.path.read_text() == "fox-0"
        await trio.testing.wait_all_tasks_blocked()
        (second,) = await fetcher.fetch("job", "fox", tmp_path, None)
        assert second.path.read_text() == "fox-1"  # the one fetched ahead
        await trio.testing.wait_all_tasks_blocked()
        staged = [Path(p) for p in await trio.Path(tmp_path).glob(".prefetch-*")]
        assert len(staged) == 1  # fox-2, on its way to the next fox fetch
        (other,) = await fetcher.fetch("job", "cat", tmp_path, None)
        assert other.path.read_text() == "cat-0"
        assert not any(p.exists() for p in staged)
        await fetcher.job_ended("job", finished=False)
        nursery.cancel_scope.cancel()
    assert fetcher.asked[:4] == ["fox", "fox", "fox", "cat"]

"""What the node does in the market, in its log: a line per lease decision, a summary a minute.

A line for each offer the node makes, each lease a scheduler accepts and each lease that ends
(leases are bounded by the node's capacity, so these lines are too); advertisements the node
declines are counted and summed up at most once a minute, by reason, so a flood of them costs a
line a minute, not a line each.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from typing import Any

from hypha_sm.core.resources import NAMES
from hypha_sm.core.trace import Now
from hypha_sm.roles.worker.core.effects import SendOffer

log = logging.getLogger("hypha_sm.roles.worker.market")

#: Seconds between two summaries of the declined advertisements.
SUMMARY_EVERY = 60.0


def _short(text: str, keep: int = 8) -> str:
    return text[:keep]


class MarketLog:
    """Watches the core's steps (``on_step``) and the counters it keeps."""

    def __init__(self, counters: Mapping[str, int], *, every: float = SUMMARY_EVERY) -> None:
        self._counters = counters
        self._every = every
        self._seen: Counter[str] = Counter()
        self._next: float | None = None

    def on_step(self, event: Any, result: Any, now: Now) -> None:
        """Lines for this step's lease decisions; the summary when a minute has passed."""
        for effect in result.effects:
            if isinstance(effect, SendOffer):
                log.info(
                    "offered lease %s to scheduler …%s at price %g (%s); it lapses unless accepted",
                    _short(effect.lease_id),
                    effect.scheduler[-6:],
                    effect.price,
                    ", ".join(
                        f"{name} {getattr(effect.resources, name):g}"
                        for name in NAMES
                        if getattr(effect.resources, name)
                    ),
                )
        for kind, key, src, name, dst, _index in result.trace:
            if kind != "lease" or dst is None or dst == src:
                continue
            if src == "offered" and dst == "active":
                log.info("lease %s won: the scheduler accepted the offer", _short(key))
            elif dst == "released":
                how = "lapsed unaccepted" if src == "offered" else f"ended ({name})"
                log.info("lease %s %s", _short(key), how)
        if self._next is None:
            self._next = now.mono + self._every
            self._seen.update(self._declines())
        elif now.mono >= self._next:
            self._next = now.mono + self._every
            self.summarise()

    def _declines(self) -> Counter[str]:
        return Counter(
            {k: v for k, v in self._counters.items() if k.startswith(("declined.", "offers"))}
        )

    def summarise(self) -> None:
        """One line of what changed since the last summary (nothing: no line)."""
        now = self._declines()
        delta = now - self._seen
        self._seen = now
        declined = {k.removeprefix("declined."): v for k, v in delta.items() if k != "offers"}
        if not declined and not delta.get("offers"):
            return
        reasons = ", ".join(f"{r} {n}" for r, n in sorted(declined.items(), key=lambda x: -x[1]))
        log.info(
            "market: %d offer(s) made, %d advertisement(s) declined%s",
            delta.get("offers", 0),
            sum(declined.values()),
            f" ({reasons})" if reasons else "",
        )

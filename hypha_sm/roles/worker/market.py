"""What the node does in the market, in its log: a line per lease decision, a summary a minute.

A line for each offer the node makes, each lease a scheduler accepts and each lease that ends
or starts to drain (leases are bounded by the node's capacity, so these lines are too). The
first advertisement declined for each reason gets a line at once; after it, declines and
renewals are counted and summed up at most once a minute, so a flood of them costs a line a
minute, not a line each. At stop, the totals of the run.
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
#: Seconds between two looks for a decline reason not yet said.
SCAN_EVERY = 1.0


def _short(text: str, keep: int = 8) -> str:
    return text[:keep]


class MarketLog:
    """Watches the core's steps (``on_step``) and the counters it keeps."""

    def __init__(self, counters: Mapping[str, int], *, every: float = SUMMARY_EVERY) -> None:
        self._counters = counters
        self._every = every
        self._seen: Counter[str] = Counter()
        self._next: float | None = None
        self._announced: set[str] = set()
        self._next_scan = 0.0
        #: Lease decisions of the whole run, for the totals at stop.
        self.totals: Counter[str] = Counter()

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
            if kind != "lease" or dst is None:
                continue
            if dst == src:
                if name == "renew_requested" and src == "active":
                    self.totals["renewals"] += 1
                continue
            if src == "offered" and dst == "active":
                self.totals["won"] += 1
                log.info("lease %s won: the scheduler accepted the offer", _short(key))
            elif dst == "draining":
                why = "expired unrenewed" if name == "lease_expired" else "ends: node stopping"
                log.info("lease %s %s while its job runs: stopping the job", _short(key), why)
            elif dst == "released":
                self.totals["lapsed" if src == "offered" else "ended"] += 1
                how = "lapsed unaccepted" if src == "offered" else f"ended ({name})"
                log.info("lease %s %s", _short(key), how)
        # Scanning the counters costs a walk over all of them: at most once a second, not per
        # step (a flood of advertisements is thousands of steps a second).
        if self._next is None or now.mono >= self._next_scan:
            self._next_scan = now.mono + SCAN_EVERY
            self._announce(self._declines())
        if self._next is None:
            self._next = now.mono + self._every
            self._seen.update(self._declines())
            self._seen["renewals"] = self.totals["renewals"]
        elif now.mono >= self._next:
            self._next = now.mono + self._every
            self.summarise()

    def _announce(self, declines: Counter[str]) -> None:
        """A line for each decline reason seen for the first time."""
        for reason in sorted(declines):
            if reason.startswith("declined.") and reason not in self._announced:
                self._announced.add(reason)
                log.info(
                    "declining advertisements: %s (from now on summed once a minute)",
                    reason.removeprefix("declined."),
                )

    def _declines(self) -> Counter[str]:
        return Counter(
            {k: v for k, v in self._counters.items() if k.startswith(("declined.", "offers"))}
        )

    def summarise(self) -> None:
        """One line of what changed since the last summary (nothing: no line)."""
        now = self._declines()
        now["renewals"] = self.totals["renewals"]
        delta = now - self._seen
        self._seen = now
        declined = {k.removeprefix("declined."): v for k, v in delta.items() if "." in k}
        if not any(delta.values()):
            return
        log.info(
            "market: %d offer(s) made, %d advertisement(s) declined%s, %d renewal(s)",
            delta.get("offers", 0),
            sum(declined.values()),
            _reasons(declined),
            delta.get("renewals", 0),
        )

    def stopped(self) -> None:
        """The last summary, and the totals of the run."""
        self.summarise()
        declines = self._declines()
        declined = {k.removeprefix("declined."): v for k, v in declines.items() if "." in k}
        t = self.totals
        log.info(
            "market totals: %d offer(s), %d won, %d lapsed, %d ended, %d renewal(s), "
            "%d advertisement(s) declined%s",
            declines.get("offers", 0),
            t["won"],
            t["lapsed"],
            t["ended"],
            t["renewals"],
            sum(declined.values()),
            _reasons(declined),
        )


def _reasons(declined: Mapping[str, int]) -> str:
    reasons = ", ".join(
        f"{r} {n}" for r, n in sorted(declined.items(), key=lambda x: (-x[1], x[0]))
    )
    return f" ({reasons})" if reasons else ""

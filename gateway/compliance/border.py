"""The border: where one transfer's facts meet the rule tables, on the sending and the
receiving side, and what it then counts towards its exporter's yearly totals.

Why one object for both sides: the two gateways must judge the same transfer the same way --
the same facts from the same passport, the same counters semantics, the same refusal text --
so that a refusal at the sender (egress, always enforced) reads like one at the receiver
(ingress: enforced, or recorded only, as configured).

Counting: a transfer counts towards ``(direction, exporter, calendar year)`` -- subjects of
personal information, and of sensitive personal information, separately -- from the moment
it is accepted (in flight) and for good once it commits (``ledger.compliance_counts``). The
year is the one of the decision, reckoned in ``compliance.year_timezone``. A threshold is
therefore judged as if every open transfer commits; :meth:`Border.reserving` serialises
"judge, then record the transfer" so that two transfers decided at once -- on one node or
on several sharing one database -- cannot both slip under one. A transfer judged again
(its resume) does not count against itself.

Every decision is one JSON log line on ``xbgw.compliance`` with the rule trail (rule ids,
articles, the facts each read, outcomes) and is counted by rule and outcome in the metrics.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from zoneinfo import ZoneInfo

from gateway.compliance.engine import Decision, Outcome
from gateway.compliance.facts import Direction, TransferFacts
from gateway.config import ComplianceConfig
from gateway.errors import PolicyDeniedError
from gateway.ledger import Count, Ledger
from gateway.passport_claims import ComplianceTerms, XbgwClaims, compliance_terms

log = logging.getLogger("xbgw.compliance")

#: First judgements remembered for the second one (a transfer is judged twice within
#: milliseconds; the oldest are dropped first, and a dropped one is simply decided again).
RECENT_JUDGEMENTS = 1024

#: Called with every decision (the daemon counts them by rule and outcome).
Observer = Callable[[Decision], None]


class Border:
    """Judges transfers against the configured rule tables; thread-safe."""

    def __init__(
        self,
        config: ComplianceConfig,
        ledger: Ledger,
        clock: Callable[[], float] = time.time,
        observe: Observer | None = None,
    ) -> None:
        self._config = config
        self._ledger = ledger
        self._clock = clock
        self.observe = observe
        self._reserving = threading.Lock()
        # The first judgement of each transfer, kept for the second (``again``): when neither
        # its facts (counters included) nor the configuration changed, the decision cannot have.
        self._recent: OrderedDict[tuple[Direction, str], _Judged] = OrderedDict()
        self._year_of: tuple[int, str, int] | None = None  # (now, zone, year) asked last
        self._guard = threading.Lock()
        self._trails: OrderedDict[tuple[Direction, str], list[str]] = OrderedDict()

    def reconfigure(self, config: ComplianceConfig) -> None:
        """New rule tables apply to the next decision; transfers accepted stay accepted."""
        self._config = config

    @contextmanager
    def reserving(self) -> Iterator[None]:
        """Hold while judging a new transfer and recording it (with its :class:`Count`):
        this node's lock, then -- with several nodes on one database -- the database's
        (``Ledger.counters_locked``), so that no node decides against counts another is
        about to change."""
        with self._reserving, self._ledger.counters_locked():
            yield

    def facts(
        self,
        direction: Direction,
        claims: XbgwClaims,
        *,
        transfer_id: str,
        sender: tuple[str, str],
        receiver: tuple[str, str],
        has_digest: bool = False,
    ) -> TransferFacts:
        """The facts of one transfer as this gateway sees them now (counters included).

        ``has_digest``: the passport names its data set's digest (``sub``, outside the
        ``xbgw`` claims)."""
        terms = compliance_terms(claims)
        now = int(self._clock())
        counts = self._counts(direction, terms.exporter, now, transfer_id)
        return self._facts(
            self._config, direction, terms, now, counts, sender, receiver, has_digest
        )

    def _counts(
        self, direction: Direction, exporter: str, now: int, transfer_id: str
    ) -> tuple[int, int]:
        """(subjects, sensitive) ``exporter`` has moved in ``direction`` in the year of
        ``now``, this transfer excluded."""
        return self._ledger.compliance_counts(
            direction.value, exporter, self.year(now), excluding=transfer_id
        )

    @staticmethod
    def _facts(
        config: ComplianceConfig,
        direction: Direction,
        terms: ComplianceTerms,
        now: int,
        counts: tuple[int, int],
        sender: tuple[str, str],
        receiver: tuple[str, str],
        has_digest: bool,
    ) -> TransferFacts:
        facts = terms.facts(
            direction=direction,
            now=now,
            sender=sender[0],
            receiver=receiver[0],
            sender_jurisdiction=sender[1],
            receiver_jurisdiction=receiver[1],
            year_subjects=counts[0],
            year_sensitive=counts[1],
        )
        return replace(
            facts,
            has_digest=has_digest,
            zone=facts.zone if config.zone is None else config.zone,
        )

    def trail(self, direction: Direction, transfer_id: str) -> list[str]:
        """``rule:outcome`` of every rule that applied to the last decision on the transfer
        (for its audit record); empty if none is remembered."""
        with self._guard:
            return list(self._trails.get((direction, transfer_id), []))

    def year(self, now: int) -> int:
        """The calendar year of ``now`` where the counters are reckoned (the last answer is
        kept: a transfer asks for the same second several times)."""
        zone = self._config.year_timezone
        last = self._year_of
        if last is not None and last[0] == now and last[1] == zone:
            return last[2]
        year = datetime.fromtimestamp(now, ZoneInfo(zone)).year
        self._year_of = (now, zone, year)
        return year

    def judge(
        self,
        direction: Direction,
        claims: XbgwClaims,
        *,
        transfer_id: str,
        sender: tuple[str, str],
        receiver: tuple[str, str],
        again: bool = False,
        has_digest: bool = False,
    ) -> Count:
        """Decide the transfer; what it will count. ``PolicyDeniedError`` (the rule ids, the
        articles and the missing evidence) if refused -- unless this is ingress in
        ``record`` mode, where the refusal is logged and the transfer goes on.

        ``again``: the same transfer judged a second time, under :meth:`reserving`, just
        before it is recorded (the counters may have moved since the first judgement): logged
        and counted in the metrics only if the outcome changed to a refusal."""
        config = self._config
        rules = config.rules
        key = (direction, transfer_id)
        inputs = (claims, sender, receiver, has_digest)
        with self._guard:
            earlier = self._recent.pop(key, None) if again else None
        now = int(self._clock())
        if earlier is not None and earlier.inputs == inputs and earlier.config is config:
            # The same passport terms, parties and configuration: the facts differ only if
            # the second or the counters did. The counters are read again -- that is what
            # this judgement is for -- and if nothing moved, neither did the decision.
            counts = self._counts(direction, earlier.facts.exporter, now, transfer_id)
            seen = earlier.facts
            if (now, *counts) == (seen.now, seen.year_subjects, seen.year_sensitive):
                return earlier.count
            terms = compliance_terms(claims)
        else:
            terms = compliance_terms(claims)
            counts = self._counts(direction, terms.exporter, now, transfer_id)
        facts = self._facts(config, direction, terms, now, counts, sender, receiver, has_digest)
        decision = rules.decide(facts)
        with self._guard:
            self._trails[key] = [
                f"{e.rule}:{e.outcome.value}"
                for e in decision.trail
                if e.outcome is not Outcome.NOT_APPLICABLE
            ]
            while len(self._trails) > RECENT_JUDGEMENTS:
                self._trails.popitem(last=False)
        if not (again and decision.allow):
            self._report(direction, decision, transfer_id, sender, receiver)
        enforced = direction is Direction.EGRESS or self._config.ingress == "enforce"
        if not decision.allow and enforced:
            raise PolicyDeniedError("; ".join(decision.reasons))
        subjects = facts.subjects if facts.cn_pi == "personal" else 0
        sensitive = facts.subjects if facts.cn_pi == "sensitive" else 0
        count = Count(facts.exporter, self.year(facts.now), subjects, sensitive)
        if not again:
            with self._guard:
                self._recent[key] = _Judged(inputs, config, facts, count)
                while len(self._recent) > RECENT_JUDGEMENTS:
                    self._recent.popitem(last=False)
        return count

    def _report(
        self,
        direction: Direction,
        decision: Decision,
        transfer_id: str,
        sender: tuple[str, str],
        receiver: tuple[str, str],
    ) -> None:
        if self.observe is not None:
            self.observe(decision)
        partner = receiver[0] if direction is Direction.EGRESS else sender[0]
        enforced = direction is Direction.EGRESS or self._config.ingress == "enforce"
        outcome = "allowed" if decision.allow else "refused" if enforced else "recorded"
        applied = [e for e in decision.trail if e.outcome is not Outcome.NOT_APPLICABLE]
        log.log(
            logging.INFO if decision.allow else logging.WARNING,
            "compliance %s %s: %s",
            direction.value,
            outcome,
            "; ".join(decision.reasons) or "no rule refuses",
            extra={
                "transfer_id": transfer_id,
                "partner": partner,
                "outcome": outcome,
                "rule": ",".join(e.rule for e in decision.refused_by),
                "trail": [e.as_dict() for e in applied],
            },
        )


@dataclass(frozen=True)
class _Judged:
    """A first judgement, kept for the second: what its facts were made of (the passport's
    ``xbgw`` claims, sender, receiver, has_digest), the configuration it used, the facts and
    what it counts."""

    inputs: tuple[XbgwClaims, tuple[str, str], tuple[str, str], bool]
    config: ComplianceConfig
    facts: TransferFacts
    count: Count

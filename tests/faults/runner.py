"""A whole fault run: the plan for a seed, the pair under fault, the checks, the summary.

:func:`run_suite` is what ``make faults`` (``python -m tests.faults``) and the smoke test in
``tests/system/test_fault_suite_smoke.py`` call. It never raises for a fault the gateways
did not survive: that is a failed check in the :class:`Summary`, with the seed to replay.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from tests.faults.checks import Check, final_checks
from tests.faults.driver import TransferDriver, TransferResult
from tests.faults.plan import MIB, Kind, Plan, make_plan
from tests.faults.rig import FaultRig, fault_rig

#: Room on frankfurt's spool tmpfs beyond the run's payload (headers, tags, partials).
SPOOL_HEADROOM = 64 * MIB


@dataclass(frozen=True)
class Settings:
    seed: int
    transfers: int
    max_size: int = 24 * MIB
    segment_size: int = 256 << 10
    #: The longest an outage, a full disk or a lost HSM lasts, in seconds.
    max_seconds: float = 5.0
    #: Seconds a transfer may take besides its faults (a fault adds its length + 30 s).
    transfer_deadline: float = 120.0
    kinds: tuple[Kind, ...] = tuple(Kind)
    #: False: each kind exactly once, nothing more (the smoke test).
    extra_faults: bool = True
    #: Where to keep state (default: a temporary directory, removed after a passing run).
    root: Path | None = None

    def replay(self) -> str:
        """The command that runs this again (the same plan: same seed, same options)."""
        defaults = Settings(self.seed, self.transfers)
        if replace(self, root=None) == defaults:
            return f"make faults SEED={self.seed} TRANSFERS={self.transfers}"
        command = f"python -m tests.faults --seed {self.seed} --transfers {self.transfers}"
        if self.max_size != defaults.max_size:
            command += f" --max-mib {self.max_size / MIB:g}"
        if self.segment_size != defaults.segment_size:
            command += f" --segment-kib {self.segment_size >> 10}"
        if self.max_seconds != defaults.max_seconds:
            command += f" --max-seconds {self.max_seconds:g}"
        if self.kinds != defaults.kinds:
            command += f" --kinds {','.join(k.value for k in self.kinds)}"
        return command

    def plan(self) -> Plan:
        return make_plan(
            self.seed,
            self.transfers,
            max_size=self.max_size,
            kinds=self.kinds,
            max_seconds=self.max_seconds,
            extra_faults=self.extra_faults,
        )


@dataclass
class Summary:
    settings: Settings
    plan: Plan
    results: list[TransferResult] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    seconds: float = 0.0
    peak_rss_kib: dict[str, int] = field(default_factory=dict)
    restarts: dict[str, int] = field(default_factory=dict)
    root: Path | None = None
    aborted: str = ""

    @property
    def ok(self) -> bool:
        return not self.aborted and bool(self.checks) and all(c.ok for c in self.checks)

    def injected(self) -> Counter[Kind]:
        return Counter(i.fault.kind for r in self.results for i in r.injected)

    def render(self) -> str:
        return "\n".join(_render(self))


def run_suite(settings: Settings, say: Callable[[str], None] = print) -> Summary:
    plan = settings.plan()
    summary = Summary(settings, plan)
    root = settings.root or Path(tempfile.mkdtemp(prefix=f"xbgw-faults-s{settings.seed}-"))
    summary.root = root
    say(f"xbgw fault suite: seed {plan.seed}, {len(plan.transfers)} transfers "
        f"({plan.total_bytes / MIB:.1f} MiB), state in {root}")  # fmt: skip
    for transfer in plan.transfers:
        faults = ", ".join(f.describe() for f in transfer.faults) or "no fault"
        say(f"  plan {transfer.transfer_id} {transfer.size:>10,} B: {faults}")
    started = time.monotonic()
    spool_bytes = int(plan.total_bytes * 1.05) + SPOOL_HEADROOM
    try:
        with fault_rig(root, settings.segment_size, spool_bytes) as rig:
            try:
                _run(rig, settings, plan, summary, root, say)
            except Exception as exc:  # a fault could not be injected or healed
                summary.aborted = f"{type(exc).__name__}: {exc}\n{rig.logs()}"
            if not summary.aborted:
                summary.checks = final_checks(rig, summary.results, root)
            summary.peak_rss_kib = dict(rig.rss.peak_kib)
            summary.restarts = dict(rig.restarts)
    except Exception as exc:  # the rig itself broke: say so in the summary, keep the state
        summary.aborted = f"{type(exc).__name__}: {exc}"
    summary.seconds = time.monotonic() - started
    if summary.ok and settings.root is None:
        shutil.rmtree(root, ignore_errors=True)
        summary.root = None
    return summary


def _run(
    rig: FaultRig,
    settings: Settings,
    plan: Plan,
    summary: Summary,
    root: Path,
    say: Callable[[str], None],
) -> None:
    driver = TransferDriver(rig, plan.seed, root, settings.transfer_deadline, say)
    total = len(plan.transfers)
    for transfer in plan.transfers:
        died = [g.id for g in rig.pair.gateways if not g.is_running()]
        if died:  # nothing we did stopped it: a crash the summary must show
            say(f"    !! {', '.join(died)} not running before {transfer.transfer_id}")
            summary.aborted = f"{', '.join(died)} stopped on its own\n{rig.logs()}"
            return
        faults = len(transfer.faults)
        say(f"  [{transfer.index + 1:>3}/{total}] {transfer.transfer_id} "
            f"{transfer.size / MIB:6.2f} MiB, {faults} fault{'s' * (faults != 1)}")  # fmt: skip
        result = driver.run(transfer)
        summary.results.append(result)
        outcome = "delivered" if result.delivered else f"NOT DELIVERED ({result.problem})"
        say(f"    {outcome}: {len(result.attempts)} attempt(s), {result.seconds:.1f}s")
        for attempt in result.attempts[:-1] if result.delivered else result.attempts:
            say(f"      failed attempt ({attempt.code}): {attempt.error}")
        sys.stdout.flush()


def _render(s: Summary) -> list[str]:
    plan, results = s.plan, s.results
    lines = [
        "",
        f"=== xbgw fault suite: seed {plan.seed}, {len(plan.transfers)} transfers, "
        f"{plan.total_bytes / MIB:.1f} MiB, segments {s.settings.segment_size >> 10} KiB",
        f"  replay: {s.settings.replay()}",
    ]
    injected = s.injected()
    after = sum(1 for r in results for i in r.injected if i.after_delivery)
    by_kind = ", ".join(f"{k.value} {injected[k]}/{plan.count(k)}" for k in plan.kinds)
    lines.append(
        f"  faults injected/planned: {by_kind} "
        f"(total {sum(injected.values())}/{len(plan.faults())}; {after} after delivery)"
    )
    attempts = [a for r in results for a in r.attempts]
    failed = [a for a in attempts if a.code != 0]
    causes = Counter(k.value for a in failed for k in a.during or ())
    lines.append(
        f"  sends: {len(attempts)} attempts for {len(results)} transfers, "
        f"{sum(r.resends for r in results)} resends; failed attempts by fault during them: "
        + (", ".join(f"{k} {n}" for k, n in sorted(causes.items())) or "none")
        + f"; {sum(1 for a in failed if not a.during)} failed with no fault during them"
    )
    held = sum(i.seconds for r in results for i in r.injected)
    slowest = max((r.seconds for r in results), default=0.0)
    lines.append(
        f"  time: {s.seconds:.0f}s wall, {held:.0f}s of it injecting and healing faults; "
        f"slowest transfer {slowest:.1f}s"
    )
    if s.peak_rss_kib:
        rss = ", ".join(f"{g} {kib / 1024:.0f} MiB" for g, kib in s.peak_rss_kib.items())
        restarts = ", ".join(f"{g} {n}" for g, n in s.restarts.items())
        lines.append(f"  max RSS: {rss}; daemon restarts: {restarts}")
    errors = Counter(a.error for a in failed)
    if errors:
        lines.append("  what failed sends said:")
        lines += [f"    {n:>3}x {error[:160]}" for error, n in errors.most_common(8)]
    lines.append("  checks:")
    for check in s.checks:
        lines.append(f"    {'ok  ' if check.ok else 'FAIL'}  {check.name}")
        lines += [f"          - {problem}" for problem in check.problems[:10]]
        if len(check.problems) > 10:
            lines.append(f"          ... and {len(check.problems) - 10} more")
    if s.aborted:
        lines.append(f"  ABORTED: {s.aborted}")
    if s.root is not None:
        lines.append(f"  state kept in {s.root} (daemon logs: */daemon.log)")
    lines.append(f"  result: {'PASS' if s.ok else 'FAIL'} (seed {plan.seed})")
    return lines

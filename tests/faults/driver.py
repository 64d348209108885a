"""One transfer under its planned faults: send, inject at the byte marks, resend until done.

``xbgw send`` runs in the background against lingang while this loop watches the proxy's
upstream byte count. A reset is armed on the proxy and fires at its exact byte; every
other fault fires at the first poll past its mark, at whatever moment that is. A fault is
injected and healed before the loop goes on (the daemon restarted, the space given back, the
token returned); a send that failed is then sent again with the same passport -- which
resumes -- with a growing pause, until it is delivered or the transfer's deadline passes.
Faults whose mark the transfer never reached fire right after the delivery, so every
planned fault is injected in a run that delivers everything.
"""

from __future__ import annotations

import hashlib
import subprocess
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.faults.plan import Fault, Kind, TransferPlan
from tests.faults.rig import FaultRig

POLL = 0.002  # a kill lands within about 2 ms of its byte mark
FIRST_PAUSE, MAX_PAUSE = 0.25, 4.0  # between resends: a retry policy, not a race
#: A deadline per transfer on top of its size's share: a restart takes a few seconds.
PER_FAULT_SECONDS = 30.0


@dataclass(frozen=True)
class Attempt:
    code: int | None  # None: still running at the deadline (killed)
    error: str  # the CLI's last stderr line when it failed
    seconds: float
    #: The faults injected while this attempt ran (what it may have failed of).
    during: tuple[Kind, ...]


@dataclass(frozen=True)
class Injected:
    fault: Fault
    wire_bytes: int  # upstream bytes of this transfer when it fired
    after_delivery: bool
    seconds: float  # wall time of injecting and healing


@dataclass
class TransferResult:
    plan: TransferPlan
    sha256: str
    attempts: list[Attempt] = field(default_factory=list)
    injected: list[Injected] = field(default_factory=list)
    seconds: float = 0.0
    problem: str = ""

    @property
    def delivered(self) -> bool:
        return bool(self.attempts) and self.attempts[-1].code == 0

    @property
    def resends(self) -> int:
        return max(0, len(self.attempts) - 1)


class TransferDriver:
    def __init__(
        self,
        rig: FaultRig,
        seed: int,
        workdir: Path,
        deadline: float,
        say: Callable[[str], None],
    ) -> None:
        self.rig = rig
        self.seed = seed
        self.workdir = workdir
        self.deadline = deadline
        self.say = say

    def run(self, plan: TransferPlan) -> TransferResult:
        source, digest = self._dataset(plan)
        passport = self.workdir / f"{plan.transfer_id}.passport"
        passport.write_text(
            self.rig.pair.passport(byte_limit=max(plan.size, 1), jti=plan.transfer_id)
        )
        result = TransferResult(plan, digest)
        started = time.monotonic()
        timed = sum(fault.seconds for fault in plan.faults)
        deadline = started + self.deadline + timed + PER_FAULT_SECONDS * len(plan.faults)
        try:
            self._drive(plan, source, passport, result, deadline)
        finally:
            self.rig.proxy.disarm()
            result.seconds = time.monotonic() - started
            source.unlink(missing_ok=True)
        return result

    def _dataset(self, plan: TransferPlan) -> tuple[Path, str]:
        data = plan.data(self.seed)
        source = self.workdir / f"{plan.transfer_id}.bin"
        source.write_bytes(data)
        return source, hashlib.sha256(data).hexdigest()

    def _drive(
        self,
        plan: TransferPlan,
        source: Path,
        passport: Path,
        result: TransferResult,
        deadline: float,
    ) -> None:
        base = self.rig.proxy.upstream_bytes
        pending = deque(plan.faults)
        armed: Fault | None = None
        during: list[Kind] = []
        pause = FIRST_PAUSE
        send: subprocess.Popen[str] | None = None
        attempt_started = 0.0
        while True:
            if time.monotonic() > deadline:
                if send is not None:
                    send.kill()
                    send.communicate(timeout=10)
                    took = time.monotonic() - attempt_started
                    killed = Attempt(None, "killed at the deadline", took, tuple(during))
                    result.attempts.append(killed)
                result.problem = f"not delivered by its deadline ({len(result.attempts)} attempts)"
                return
            if send is None:
                send = self._send(source, passport)
                attempt_started = time.monotonic()
            wire = self.rig.proxy.upstream_bytes - base
            if armed is None and pending and pending[0].kind is Kind.RESET:
                armed = pending.popleft()
                self.rig.proxy.reset_after(max(0, armed.at - wire), rst=armed.variant == "rst")
            if armed is not None and self.rig.proxy.tripped:
                self.say(f"    {armed.describe()}: fired")
                result.injected.append(Injected(armed, wire, False, 0.0))
                during.append(Kind.RESET)
                armed = None
            elif pending and pending[0].kind is not Kind.RESET and wire >= pending[0].at:
                fault = pending.popleft()
                result.injected.append(self._inject(fault, wire, False))
                during.append(fault.kind)
            self.rig.drain_notifications()
            code = send.poll()
            if code is None:
                time.sleep(POLL)
                continue
            _out, err = send.communicate(timeout=10)
            lines = err.strip().splitlines()
            error = lines[-1] if code != 0 and lines else ""
            took = time.monotonic() - attempt_started
            result.attempts.append(Attempt(code, error, took, tuple(during)))
            send, during = None, []
            if code == 0:
                break
            time.sleep(pause)
            pause = min(MAX_PAUSE, pause * 2)
        # Delivered before these marks: inject them now, against the delivered state.
        wire = self.rig.proxy.upstream_bytes - base
        self.rig.proxy.disarm()
        for fault in ([armed] if armed is not None else []) + list(pending):
            result.injected.append(self._inject(fault, wire, True))

    def _send(self, source: Path, passport: Path) -> subprocess.Popen[str]:
        return self.rig.lingang.cli_background(
            "send", str(source), "--to", "frankfurt", "--passport", str(passport), "-q"
        )

    def _inject(self, fault: Fault, wire: int, after_delivery: bool) -> Injected:
        started = time.monotonic()
        when = "after delivery" if after_delivery else f"at {wire:,} B"
        self.say(f"    {fault.describe()}: fired {when}")
        rig = self.rig
        if fault.kind is Kind.KILL_SENDER:
            rig.kill(rig.lingang)
        elif fault.kind is Kind.KILL_RECEIVER:
            rig.kill(rig.frankfurt)
        elif fault.kind is Kind.RESET:
            rig.proxy.cut_all(reset=fault.variant == "rst")
        elif fault.kind is Kind.OUTAGE:
            rig.stop(rig.frankfurt)
            time.sleep(fault.seconds)  # the outage itself
            rig.start(rig.frankfurt)
        elif fault.kind is Kind.DISK_FULL:
            room = rig.spool.fill() - rig.spool.used()
            self.say(f"      frankfurt's spool: {room:,} bytes left")
            try:
                time.sleep(fault.seconds)  # the time the disk stays full
            finally:
                rig.spool.restore()
        elif fault.kind is Kind.HSM_LOSS:
            with rig.hsm_lost(rig.pair.gateway(fault.variant)):
                time.sleep(fault.seconds)  # the time the token stays away
        return Injected(fault, wire, after_delivery, time.monotonic() - started)

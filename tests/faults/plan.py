"""What a fault run does, decided up front from one seed: sizes, faults, where they land.

The whole schedule is drawn from ``random.Random(seed)`` before anything runs, so a seed
names exactly what is injected (which fault, in which transfer, after how many bytes on the
wire, for how long) and a failing run can be replayed with the same seed. Only the moment a
polled fault lands is left to the machine: a kill fires at the first poll after its byte
mark, as a power cut would, at whatever the daemon happens to be doing then.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass, field

MIB = 1 << 20
#: Bytes beyond the payload a transfer puts on the wire (TLS, gRPC framing, offer, finish):
#: a fault's mark is drawn up to a little past the end, so some land on the finish.
WIRE_SLACK = 96 << 10


class Kind(enum.Enum):
    KILL_SENDER = "kill-sender"  # kill -9 of lingang, restarted on the same state and port
    KILL_RECEIVER = "kill-receiver"  # kill -9 of frankfurt, likewise
    RESET = "reset"  # every partner connection cut at a byte offset (RST or FIN)
    OUTAGE = "outage"  # frankfurt stopped (SIGTERM) for a while, then started
    DISK_FULL = "disk-full"  # frankfurt's spool file system full for a while
    HSM_LOSS = "hsm-loss"  # one gateway's SoftHSM token unreachable for a while


TIMED = (Kind.OUTAGE, Kind.DISK_FULL, Kind.HSM_LOSS)


@dataclass(frozen=True)
class Fault:
    kind: Kind
    #: Upstream bytes through the proxy, counted from the transfer's first attempt, after
    #: which the fault fires (if the transfer is delivered first, it fires right after).
    at: int
    #: How long a timed fault lasts, in seconds (0 for the others).
    seconds: float = 0.0
    #: hsm-loss: whose token goes; reset: "rst" or "fin".
    variant: str = ""

    def describe(self) -> str:
        extra = f" {self.variant}" if self.variant else ""
        lasting = f" for {self.seconds:.1f}s" if self.seconds else ""
        return f"{self.kind.value}{extra} at {self.at:,} B{lasting}"


@dataclass(frozen=True)
class TransferPlan:
    index: int
    transfer_id: str
    size: int
    faults: tuple[Fault, ...]

    def data(self, seed: int) -> bytes:
        """The transfer's content: random, and the same for the same seed and index."""
        return random.Random(f"xbgw-faults:{seed}:{self.index}").randbytes(self.size)


@dataclass(frozen=True)
class Plan:
    seed: int
    transfers: tuple[TransferPlan, ...]
    kinds: tuple[Kind, ...] = field(default=tuple(Kind))

    def faults(self) -> list[Fault]:
        return [fault for transfer in self.transfers for fault in transfer.faults]

    def count(self, kind: Kind) -> int:
        return sum(1 for fault in self.faults() if fault.kind is kind)

    @property
    def total_bytes(self) -> int:
        return sum(transfer.size for transfer in self.transfers)


def make_plan(
    seed: int,
    transfers: int,
    *,
    max_size: int = 24 * MIB,
    kinds: tuple[Kind, ...] = tuple(Kind),
    max_seconds: float = 5.0,
    extra_faults: bool = True,
) -> Plan:
    """Draw sizes and faults for ``transfers`` transfers; every kind in ``kinds`` at least once.

    About one fault per transfer on average: a quarter get none (a clean transfer between
    faults shows the pair recovered), some get two. Sizes are uniform in 0..``max_size`` with
    one in ten small (under 64 KiB, 0 included), where a fault tends to land on the offer
    or the finish rather than mid-stream. Without ``extra_faults``, each kind comes exactly
    once (a quick run that still covers every kind).
    """
    if transfers < 1:
        raise ValueError("a fault run needs at least one transfer")
    rng = random.Random(seed)
    sizes = [_size(rng, max_size) for _ in range(transfers)]
    kinds_of: list[list[Kind]] = [[] for _ in range(transfers)]
    # Coverage first: each kind in some transfer, so even a short run injects every kind.
    for kind in rng.sample(kinds, len(kinds)):
        kinds_of[rng.randrange(transfers)].append(kind)
    for chosen in kinds_of if extra_faults else []:
        extra = rng.choices((0, 1, 2), weights=(3, 6, 2))[0]
        chosen.extend(rng.choice(kinds) for _ in range(max(0, extra - len(chosen))))
    plans = []
    for index, (size, chosen) in enumerate(zip(sizes, kinds_of, strict=True)):
        faults = sorted(
            (_fault(rng, kind, size, max_seconds) for kind in chosen), key=lambda f: f.at
        )
        transfer_id = f"dpo_faults-s{seed}-t{index:03d}"
        plans.append(TransferPlan(index, transfer_id, size, tuple(faults)))
    return Plan(seed, tuple(plans), kinds)


def _size(rng: random.Random, max_size: int) -> int:
    if rng.random() < 0.1:
        return rng.choice((0, rng.randrange(1, 64 << 10)))
    return rng.randrange(0, max_size + 1)


def _fault(rng: random.Random, kind: Kind, size: int, max_seconds: float) -> Fault:
    at = rng.randrange(0, size + WIRE_SLACK)
    seconds = round(rng.uniform(1.0, max(1.0, max_seconds)), 1) if kind in TIMED else 0.0
    variant = ""
    if kind is Kind.RESET:
        variant = rng.choice(("rst", "fin"))
    elif kind is Kind.HSM_LOSS:
        variant = rng.choice(("lingang", "frankfurt"))
    return Fault(kind, at, seconds, variant)

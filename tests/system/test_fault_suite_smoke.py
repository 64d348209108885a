"""The fault suite (``make faults``, :mod:`tests.faults`) still runs and still finds nothing.

One seed, four transfers, every fault kind exactly once -- kill -9 of each daemon, a reset,
an outage of the receiver, its spool full, an HSM lost -- against two real gateways (SoftHSM
tokens, mutual-TLS gRPC on loopback through the fault proxy, frankfurt's spool on a tmpfs):
every transfer delivered exactly once, fetched byte-identical, nothing stuck or partial,
both audit logs verified. The full suite (40 transfers per seed, faults drawn at random)
is too long for ``make test``; this proves its harness and its checks work end to end.

The schedule is checked without processes too: a seed names exactly what is injected.
"""

from __future__ import annotations

from pathlib import Path

from tests.faults.plan import MIB, Kind, make_plan
from tests.faults.runner import Settings, run_suite

SEED = 7


def test_a_seed_names_its_whole_schedule() -> None:
    plan = make_plan(SEED, 40)
    assert plan == make_plan(SEED, 40)
    assert plan != make_plan(SEED + 1, 40)
    assert plan.transfers[3].data(SEED) == make_plan(SEED, 40).transfers[3].data(SEED)
    assert all(plan.count(kind) >= 1 for kind in Kind)
    assert all(0 <= t.size <= 24 * MIB for t in plan.transfers)
    assert len({t.transfer_id for t in plan.transfers}) == 40
    for transfer in plan.transfers:
        assert [f.at for f in transfer.faults] == sorted(f.at for f in transfer.faults)


def test_every_fault_kind_once_delivers_everything_exactly_once(tmp_path: Path) -> None:
    settings = Settings(
        seed=SEED,
        transfers=4,
        max_size=3 * MIB,
        segment_size=128 << 10,
        max_seconds=1.0,
        extra_faults=False,
        root=tmp_path / "faults",
    )
    progress: list[str] = []
    summary = run_suite(settings, say=progress.append)
    report = "\n".join(progress) + summary.render()
    assert summary.ok, report
    assert {kind: summary.plan.count(kind) for kind in Kind} == dict.fromkeys(Kind, 1), report
    assert summary.injected() == {kind: 1 for kind in Kind}, report
    assert all(kib > 0 for kib in summary.peak_rss_kib.values()), report
    assert summary.restarts == {"lingang": 1, "frankfurt": 2}, report  # two kills, one outage

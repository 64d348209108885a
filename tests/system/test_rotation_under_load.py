"""Keys rotate while transfers run: 50 transfers of mixed sizes, four at a time, lingang ->
frankfurt, while each gateway rotates its transport, signing and storage keys twice (twelve
rotations, spread over the run, through the daemons' sockets).

What must hold afterwards: every transfer completed exactly once and fetches byte-identical;
every receipt lingang stored verifies -- checked here with ``cryptography`` alone, under the
public key of the version it names, read from frankfurt's token; lingang followed frankfurt's
signing rotations with its configuration untouched (still pinning signing v1); retire refuses
what is still in use and says why; after a rewrap the old storage versions retire and are
destroyed, and every inbox item still fetches.

Grace periods are 0 on both sides so that old versions can be retired within the test.
"""

from __future__ import annotations

import concurrent.futures
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from bench.passports import issue_many
from devtools.pair import Gateway, Pair, provision_pair
from devtools.provision import SOFTHSM_MODULE
from tests.system.keys_helpers import fetched, ok, send, status

TRANSFERS = 50
AT_ONCE = 4
#: Mixed sizes (segments are 64 KiB): under one segment, exactly one, several, many.
SIZES = (1, 4096, 65_536, 200_000, 1_000_003)
PURPOSES = ("transport", "signing", "storage")
#: (gateway, purpose) in order, each purpose of each gateway twice.
ROTATIONS = [(g, p) for _ in range(2) for p in PURPOSES for g in ("frankfurt", "lingang")]
EVERY = TRANSFERS // (len(ROTATIONS) + 1)  # a rotation after every EVERY completed transfers


def _no_grace(_gateway_id: str, data: dict[str, Any]) -> None:
    data["keys"] = {"grace": {"transport": 0, "signing": 0, "storage": 0}}


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    made = provision_pair(
        tmp_path_factory.mktemp("rotation"), segment_size=1 << 16, configure=_no_grace
    )
    with made.running():
        yield made


def _ledger_rows(gateway: Gateway, query: str) -> list[sqlite3.Row]:
    """Rows of the running gateway's ledger, read-only (the daemon keeps writing it)."""
    path = gateway.paths.config.parent / "state" / "ledger.sqlite3"
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    try:
        return db.execute(query).fetchall()
    finally:
        db.close()


def _public_key(gateway: Gateway, version: int) -> ec.EllipticCurvePublicKey:
    """``gateway``'s signing public key ``version``, read from its token by ``xbgw keys public``."""
    paths = gateway.paths
    done = subprocess.run(
        [
            *(sys.executable, "-m", "gateway.cli", "keys", "public", "--module", SOFTHSM_MODULE),
            *("--token", paths.token, "--pin-file", str(paths.pin_file)),
            *("--purpose", "signing", "--version", str(version)),
        ],
        capture_output=True,
        check=True,
        env={**gateway.cli_env(), "SOFTHSM2_CONF": str(paths.softhsm_conf)},
    )
    public = load_pem_public_key(done.stdout)
    assert isinstance(public, ec.EllipticCurvePublicKey)
    return public


def _verify(public: ec.EllipticCurvePublicKey, body: bytes, signature: bytes) -> None:
    """ECDSA P-256 over SHA-256(body), raw r || s (the signed-blob format in the README)."""
    assert len(signature) == 64
    der = encode_dss_signature(
        int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    )
    public.verify(der, body, ec.ECDSA(hashes.SHA256()))  # raises InvalidSignature


def _run_with_rotations(pair: Pair, tmp_path: Path) -> list[tuple[str, str]]:
    """The 50 transfers, AT_ONCE at a time, interleaved with the rotations: rotation k waits
    for k * EVERY transfers to complete, transfer i starts once i // EVERY rotations are done
    -- so rotations happen while transfers are in flight, whichever side is faster."""
    state = threading.Condition()
    completed = [0]
    rotated: list[str] = []
    failed = threading.Event()

    # Issued first, by one child process: the issuer's token is not what is under test here.
    tokens = issue_many(
        pair.issuer, pair.lingang.spec, pair.frankfurt.spec, TRANSFERS, max(SIZES) + 1
    )

    def one(index: int) -> tuple[str, str]:
        due = min(len(ROTATIONS), index // EVERY)
        with state:
            state.wait_for(lambda: len(rotated) >= due or failed.is_set(), timeout=300)
        try:
            return send(pair, tmp_path, SIZES[index % len(SIZES)], tokens[index])
        finally:
            with state:
                completed[0] += 1
                state.notify_all()

    def rotate() -> None:
        try:
            for step, (gateway_id, purpose) in enumerate(ROTATIONS, start=1):
                due = step * EVERY
                with state:
                    state.wait_for(lambda: completed[0] >= due or failed.is_set(), timeout=300)  # noqa: B023
                if failed.is_set():
                    return
                out = ok(pair.gateway(gateway_id), "keys", "rotate", purpose)
                with state:
                    rotated.append(out.splitlines()[0])
                    state.notify_all()
        except BaseException:
            failed.set()
            with state:
                state.notify_all()
            raise

    rotator = threading.Thread(target=rotate, name="rotator")
    rotator.start()
    try:
        with concurrent.futures.ThreadPoolExecutor(AT_ONCE, "sender") as pool:
            results = list(pool.map(one, range(TRANSFERS)))
    except BaseException:
        failed.set()
        with state:
            state.notify_all()
        raise
    finally:
        rotator.join()
    assert len(rotated) == len(ROTATIONS), rotated
    return results


def test_fifty_transfers_while_every_key_rotates_twice(pair: Pair, tmp_path: Path) -> None:
    pinned = pair.lingang.paths.config.read_text()
    sent = _run_with_rotations(pair, tmp_path)

    # Every key rotated twice: versions 1..3 of each purpose, 3 active, on both gateways.
    for gateway in pair.gateways:
        states = {ref: entry["state"] for ref, entry in status(gateway).items()}
        for purpose in PURPOSES:
            assert states[f"{gateway.id}/{purpose}/3"] == "active", states
            assert states[f"{gateway.id}/{purpose}/1"] != "active", states

    # Every transfer completed exactly once on each side.
    ids = [transfer_id for transfer_id, _ in sent]
    assert len(set(ids)) == TRANSFERS
    outbound = _ledger_rows(
        pair.lingang,
        "SELECT transfer_id, state, receipt_body, receipt_signature, receipt_kid FROM outbound",
    )
    assert sorted(r["transfer_id"] for r in outbound) == sorted(ids)
    assert {r["state"] for r in outbound} == {"delivered"}
    inbound = _ledger_rows(pair.frankfurt, "SELECT transfer_id, state FROM inbound")
    assert sorted(r["transfer_id"] for r in inbound) == sorted(ids)
    assert {r["state"] for r in inbound} == {"committed"}

    # Every receipt verifies under the frankfurt signing version it names, with cryptography
    # alone; the run spanned the signing rotations.
    keys = {version: _public_key(pair.frankfurt, version) for version in (1, 2, 3)}
    kids = set()
    for row in outbound:
        owner, purpose, version = row["receipt_kid"].split("/")
        assert (owner, purpose) == ("frankfurt", "signing")
        _verify(keys[int(version)], bytes(row["receipt_body"]), bytes(row["receipt_signature"]))
        kids.add(int(version))
    assert len(kids) >= 2, f"every receipt signed by one version: {kids}"

    # lingang pins frankfurt's signing v1 in its YAML, unchanged, and followed to v3.
    assert pair.lingang.paths.config.read_text() == pinned
    learnt = _ledger_rows(
        pair.lingang,
        "SELECT version, state FROM partner_keys WHERE partner = 'frankfurt' AND purpose = "
        "'signing' ORDER BY version",
    )
    assert [(r["version"], r["state"]) for r in learnt][-1] == (3, "active")
    assert "partner signing key followed: frankfurt/signing/3" in pair.lingang.log_text()

    # Retire refuses what is in use, and says why.
    active = pair.frankfurt.cli("keys", "retire", "storage", "3")
    assert active.returncode == 1
    assert "frankfurt/storage/3 is the active version; rotate storage first" in active.stderr
    in_use = pair.frankfurt.cli("keys", "retire", "storage", "1")
    assert in_use.returncode == 1
    assert "stored data key(s) are still wrapped to it (run 'xbgw keys rewrap')" in in_use.stderr

    # Rewrap, retire and destroy the old storage versions; everything still fetches.
    for gateway in pair.gateways:
        rewrap = ok(gateway, "keys", "rewrap")
        assert "none remains under an older storage version" in rewrap, rewrap
        for version in ("1", "2"):
            ok(gateway, "keys", "retire", "storage", version)
            ok(gateway, "keys", "destroy", "storage", version, "--yes")
        for purpose in ("transport", "signing"):
            ok(gateway, "keys", "retire", purpose, "1")
    for transfer_id, digest in sent:
        assert fetched(pair.frankfurt, tmp_path, transfer_id) == digest
    expected = {f"frankfurt/storage/{v}": "destroyed" for v in (1, 2)} | {
        "frankfurt/storage/3": "active",
        "frankfurt/transport/1": "retired",
    }
    states = {ref: entry["state"] for ref, entry in status(pair.frankfurt).items()}
    assert {ref: states[ref] for ref in expected} == expected

    # Transfers go on after all that (lingang's cached key set may still name a retired
    # transport version: it re-seals to a fresh one).
    after = send(pair, tmp_path, 300_000)
    assert fetched(pair.frankfurt, tmp_path, after[0]) == after[1]

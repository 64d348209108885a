"""Locked HSM keys (issue 13, items 2 and 6) on real SoftHSM tokens.

The attack this answers: with the PIN alone, ``C_SetAttributeValue`` added CKA_SIGN to the
transport key and CKA_DERIVE to the signing key, and they worked. Keys are now generated
unmodifiable with only their one capability; the daemon refuses widened or modifiable keys
at start, ``keys list`` exits 1 on them; per-purpose CKA_IDs, old ones still found.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pkcs11.exceptions as p11e
import pytest
from pkcs11 import Attribute, ObjectClass

from devtools.pair import FRANKFURT, LINGANG
from devtools.provision import (
    DaemonProcess,
    GatewaySpec,
    Provisioned,
    free_port,
    provision,
    write_softhsm_conf,
)
from gateway.errors import ConfigError
from gateway.hsm import Hsm, KeyInfo
from gateway.keyring import KeyRing
from gateway.keys import KeyState, Purpose, version_id
from gateway.ledger import Ledger
from tests.integration.legacy_keys import make_legacy_key
from tests.softhsm import SOFTHSM_MODULE, TokenSpec, init_token

LOCKED_CAPABILITIES = {
    Purpose.TRANSPORT: ("derive",),
    Purpose.SIGNING: ("sign",),
    Purpose.STORAGE: ("wrap", "unwrap"),
}
# What the attack added, and what the storage key must not do either.
WIDENINGS = [
    (Purpose.TRANSPORT, Attribute.SIGN),
    (Purpose.SIGNING, Attribute.DERIVE),
    (Purpose.STORAGE, Attribute.ENCRYPT),
    (Purpose.STORAGE, Attribute.DECRYPT),
]


@pytest.fixture(scope="module")
def token_hsm(fresh_token: TokenSpec) -> Iterator[Hsm]:
    opened = Hsm.open(fresh_token.module, fresh_token.label, fresh_token.pin)
    for purpose in Purpose:
        opened.generate(purpose)
    yield opened
    opened.close()


@contextmanager
def raw_session(hsm: Hsm) -> Iterator[Any]:
    """A python-pkcs11 session of our own on the token, as an attacker with the PIN has.

    Login is per application, so it is logged in already; held under the module lock, as
    every call into SoftHSM must be.
    """
    module = hsm._module
    with module.lock:
        session = module.lib.get_token(token_label=hsm.token_label).open(rw=True)
        try:
            yield session
        finally:
            session.close()


def key_objects(session: Any, purpose: Purpose, key_class: ObjectClass) -> list[Any]:
    return list(session.get_objects({Attribute.LABEL: purpose.label, Attribute.CLASS: key_class}))


def private_class(purpose: Purpose) -> ObjectClass:
    return ObjectClass.SECRET_KEY if purpose is Purpose.STORAGE else ObjectClass.PRIVATE_KEY


# --- generation ------------------------------------------------------------------------------


@pytest.mark.parametrize(("purpose", "attr"), WIDENINGS, ids=str)
def test_a_new_key_cannot_be_widened_with_the_pin(
    token_hsm: Hsm, purpose: Purpose, attr: Attribute
) -> None:
    with raw_session(token_hsm) as session:
        (key,) = key_objects(session, purpose, private_class(purpose))
        with pytest.raises(p11e.PKCS11Error):  # SoftHSM: CKR_ATTRIBUTE_READ_ONLY
            key[attr] = True
        assert key[attr] is False
        assert key[Attribute.MODIFIABLE] is False


def test_keys_carry_only_their_capability_as_reported(token_hsm: Hsm) -> None:
    infos = token_hsm.list_keys()
    assert {(i.purpose, i.version) for i in infos} == {(p, 1) for p in Purpose}
    for info in infos:
        assert info.capabilities == LOCKED_CAPABILITIES[info.purpose], info
        assert (info.modifiable, info.copyable) == (False, False), info
        assert info.extra_capabilities == () and info.problems == [], info
    with raw_session(token_hsm) as session:
        for purpose in (Purpose.TRANSPORT, Purpose.SIGNING):
            (private,) = key_objects(session, purpose, ObjectClass.PRIVATE_KEY)
            assert private[Attribute.SIGN_RECOVER] is False  # SoftHSM's EC default is true
            assert private[Attribute.COPYABLE] is False
            (public,) = key_objects(session, purpose, ObjectClass.PUBLIC_KEY)
            assert public[Attribute.MODIFIABLE] is False
            for attr in (Attribute.VERIFY, Attribute.VERIFY_RECOVER, Attribute.ENCRYPT,
                         Attribute.WRAP, Attribute.DERIVE):  # fmt: skip
                assert public[attr] is False, (purpose, attr)


def test_every_key_pair_has_its_own_cka_id(token_hsm: Hsm) -> None:
    with raw_session(token_hsm) as session:
        ids = {}
        for purpose in Purpose:
            (key,) = key_objects(session, purpose, private_class(purpose))
            ids[purpose] = bytes(key[Attribute.ID])
            if purpose is not Purpose.STORAGE:  # the pair shares it: that is how tools pair
                (public,) = key_objects(session, purpose, ObjectClass.PUBLIC_KEY)
                assert bytes(public[Attribute.ID]) == ids[purpose]
    assert ids == {p: bytes([p.code]) + version_id(1) for p in Purpose}
    assert len(set(ids.values())) == len(Purpose)


def test_keys_made_with_the_old_cka_id_are_still_found_and_used(token_hsm: Hsm) -> None:
    with raw_session(token_hsm) as session:
        make_legacy_key(session, Purpose.SIGNING, 7)
        make_legacy_key(session, Purpose.STORAGE, 7)
        make_legacy_key(session, Purpose.TRANSPORT, 7)
    assert token_hsm.versions(Purpose.SIGNING) == [1, 7]
    assert token_hsm.versions(Purpose.STORAGE) == [1, 7]
    signature = token_hsm.sign(7, b"old key")
    assert len(signature) == 64
    assert token_hsm.public_key(Purpose.SIGNING, 7) != token_hsm.public_key(Purpose.SIGNING, 1)
    assert token_hsm.unwrap(7, token_hsm.wrap(7, b"k" * 32)) == b"k" * 32
    point = token_hsm.public_key(Purpose.TRANSPORT, 1)
    assert len(token_hsm.ecdh(7, _point(point))) == 32
    old = {(i.purpose, i.version): i for i in token_hsm.list_keys() if i.version == 7}
    assert set(old) == {(p, 7) for p in Purpose}
    for info in old.values():
        assert info.modifiable and info.copyable, info
        assert info.faults == [], info  # old, not tampered with: refused only while active
        assert info.problems[-1] == (
            "is modifiable (CKA_MODIFIABLE true: capabilities can be added)"
        ), info
    # SoftHSM's default the old template left on for EC private keys.
    assert old[(Purpose.SIGNING, 7)].extra_capabilities == ("sign_recover",)
    assert old[(Purpose.TRANSPORT, 7)].extra_capabilities == ("sign_recover",)
    assert old[(Purpose.STORAGE, 7)].extra_capabilities == ()
    # A new version after them gets the new id; the old ones can be destroyed.
    assert token_hsm.generate(Purpose.SIGNING) == 8
    token_hsm.destroy(Purpose.SIGNING, 7)
    token_hsm.destroy(Purpose.STORAGE, 7)
    token_hsm.destroy(Purpose.TRANSPORT, 7)
    token_hsm.destroy(Purpose.SIGNING, 8)
    assert [i.version for i in token_hsm.list_keys()] == [1, 1, 1]


def _point(key: Any) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return bytes(key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint))


# --- the start check (KeyRing.check_attributes) ----------------------------------------------


def test_start_check_refuses_widened_and_active_modifiable_keys(
    token_hsm: Hsm, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    try:
        with raw_session(token_hsm) as session:
            make_legacy_key(session, Purpose.SIGNING, 2)  # adopted active: the highest
        ring = KeyRing("lingang", ledger, token_hsm)
        assert ring.signing == 2
        with pytest.raises(ConfigError) as refused:
            ring.check_attributes(token_hsm.list_keys())
        message = str(refused.value)
        assert "\n" not in message
        assert "lingang/signing/2 is modifiable" in message
        assert "'xbgw keys rotate signing" in message
        assert "transport" not in message and "storage" not in message

        # Rotated away: the old version only verifies; it is warned about, not refused.
        ring.rotate(Purpose.SIGNING)
        assert ring.find(Purpose.SIGNING, 2).state is KeyState.VERIFY_ONLY  # type: ignore[union-attr]
        with caplog.at_level(logging.WARNING, logger="xbgw.keys"):
            ring.check_attributes(token_hsm.list_keys())
        assert "lingang/signing/2 (verify-only) is modifiable" in caplog.text

        # Widened (as the attack did): refused whatever its state.
        with raw_session(token_hsm) as session:
            (old,) = session.get_objects(
                {Attribute.LABEL: Purpose.SIGNING.label, Attribute.ID: version_id(2),
                 Attribute.CLASS: ObjectClass.PRIVATE_KEY}
            )  # fmt: skip
            old[Attribute.DERIVE] = True
        with pytest.raises(ConfigError, match=r"lingang/signing/2 has extra capability derive"):
            ring.check_attributes(token_hsm.list_keys())
    finally:
        ledger.close()
        for version in token_hsm.versions(Purpose.SIGNING)[1:]:
            token_hsm.destroy(Purpose.SIGNING, version)


def test_problems_name_every_fault() -> None:
    info = KeyInfo(
        purpose=Purpose.TRANSPORT,
        version=3,
        key_class="private",
        sensitive=True,
        always_sensitive=True,
        extractable=False,
        never_extractable=True,
        capabilities=("sign", "sign_recover", "derive"),
        public_point=None,
        modifiable=True,
        copyable=None,
    )
    assert info.extra_capabilities == ("sign", "sign_recover")
    assert info.faults == ["has extra capability sign"]  # sign_recover: the old default
    assert info.problems == [
        "has extra capability sign, sign_recover",
        "is modifiable (CKA_MODIFIABLE true: capabilities can be added)",
    ]
    locked = dataclasses.replace(info, modifiable=False)
    assert locked.faults == ["has extra capability sign, sign_recover"]


# --- the CLI and the daemon, in their own processes and token directories ------------------


def xbgw(conf: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "SOFTHSM2_CONF": str(conf), "GRPC_VERBOSITY": "ERROR"},
        check=False,
    )


def legacy_key(conf: Path, hsm_args: list[str], purpose: str, version: int, *extra: str) -> None:
    module, token, pin_file = hsm_args[1], hsm_args[3], hsm_args[5]
    subprocess.run(
        [sys.executable, "-m", "tests.integration.legacy_keys", module, token, pin_file,
         purpose, str(version), *extra],
        check=True,
        timeout=60,
        env={**os.environ, "SOFTHSM2_CONF": str(conf)},
    )  # fmt: skip


@pytest.fixture
def own_token(tmp_path: Path) -> tuple[Path, list[str]]:
    conf = write_softhsm_conf(tmp_path)
    spec = init_token(conf, "cli-locked")
    pin_file = tmp_path / "pin"
    pin_file.write_text(spec.pin + "\n", encoding="utf-8")
    pin_file.chmod(0o600)
    return conf, ["--module", SOFTHSM_MODULE, "--token", spec.label, "--pin-file", str(pin_file)]


def test_keys_init_purposes_makes_only_those(own_token: tuple[Path, list[str]]) -> None:
    conf, hsm_args = own_token
    done = xbgw(conf, "keys", "init", *hsm_args, "--purposes", "signing")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["created xbgw-signing v1"]
    listed = xbgw(conf, "keys", "list", *hsm_args)
    assert listed.returncode == 0, listed.stderr
    assert [line.split()[0] for line in listed.stdout.splitlines()[1:]] == ["signing"]
    rest = xbgw(conf, "keys", "init", *hsm_args)  # default: all, the one there kept
    assert rest.stdout.splitlines() == [
        "xbgw-signing: already has versions [1]; kept",
        "created xbgw-transport v1, xbgw-storage v1",
    ]
    bad = xbgw(conf, "keys", "init", *hsm_args, "--purposes", "signing,tls")
    assert bad.returncode == 2 and "invalid purpose 'tls'" in bad.stderr


def test_keys_list_exits_1_naming_a_modifiable_or_widened_key(
    own_token: tuple[Path, list[str]],
) -> None:
    conf, hsm_args = own_token
    assert xbgw(conf, "keys", "init", *hsm_args).returncode == 0
    clean = xbgw(conf, "keys", "list", *hsm_args)
    assert (clean.returncode, clean.stderr) == (0, "")
    legacy_key(conf, hsm_args, "storage", 2)
    legacy_key(conf, hsm_args, "transport", 2, "--add", "sign")
    listed = xbgw(conf, "keys", "list", *hsm_args, "--json")
    assert listed.returncode == 1
    warnings = [line for line in listed.stderr.splitlines() if line.startswith("WARNING")]
    assert warnings == [
        "WARNING: storage v2 is modifiable (CKA_MODIFIABLE true: capabilities can be added)",
        "WARNING: transport v2 has extra capability sign, sign_recover and is modifiable "
        "(CKA_MODIFIABLE true: capabilities can be added)",
    ]
    assert "xbgw keys rotate PURPOSE" in listed.stderr
    entries = {(e["purpose"], e["version"]): e for e in json.loads(listed.stdout)}
    assert entries[("transport", 2)]["capabilities"] == ["sign", "sign_recover", "derive"]
    assert entries[("transport", 2)]["modifiable"] is True
    assert entries[("transport", 1)]["modifiable"] is False
    assert entries[("transport", 1)]["copyable"] is False


@pytest.fixture
def lingang(tmp_path: Path) -> tuple[Provisioned, list[str]]:
    """A provisioned gateway (real token, keys made by ``xbgw keys init``), not started."""
    gateways, _ = provision(
        tmp_path, [GatewaySpec(*LINGANG, free_port()), GatewaySpec(*FRANKFURT, free_port())]
    )
    mine = gateways["lingang"]
    hsm_args = ["--module", SOFTHSM_MODULE, "--token", mine.token, "--pin-file",
                str(mine.pin_file)]  # fmt: skip
    return mine, hsm_args


def refused_start(daemon: DaemonProcess) -> str:
    """Start ``daemon``, which must exit 78 before READY; its last stderr line."""
    try:
        with pytest.raises(RuntimeError, match="lingang exited with 78"):
            daemon.start()
    finally:
        daemon.stop()
    lines = daemon.log_path.read_text(encoding="utf-8").splitlines()
    assert not any("Traceback" in line for line in lines), lines
    return lines[-1]


def test_daemon_refuses_to_start_on_a_widened_key(lingang: tuple[Provisioned, list[str]]) -> None:
    mine, hsm_args = lingang
    legacy_key(mine.softhsm_conf, hsm_args, "signing", 2, "--add", "derive")
    last = refused_start(DaemonProcess(mine))
    assert last.startswith(
        "xbgw: HSM key attributes refused: lingang/signing/2 has extra capability derive "
        "(rotate it away: 'xbgw keys rotate signing'"
    ), last


def test_an_old_active_key_is_refused_until_rotated_away(
    lingang: tuple[Provisioned, list[str]],
) -> None:
    """The upgrade path the README gives: refused, rotate offline, starts (old key warned)."""
    mine, hsm_args = lingang
    legacy_key(mine.softhsm_conf, hsm_args, "signing", 2)  # adopted active: the highest
    last = refused_start(DaemonProcess(mine))
    assert last.startswith("xbgw: HSM key attributes refused: lingang/signing/2 is modifiable"), (
        last
    )
    assert "'xbgw keys rotate signing -c CONFIG' while the daemon is stopped" in last
    rotated = xbgw(mine.softhsm_conf, "keys", "rotate", "signing", "-c", str(mine.config))
    assert rotated.returncode == 0, rotated.stderr
    assert "lingang/signing/3 is active" in rotated.stdout
    daemon = DaemonProcess(mine)
    try:
        daemon.start()
    finally:
        assert daemon.stop() == 0
    log = daemon.log_path.read_text(encoding="utf-8")
    assert "lingang/signing/2 (verify-only) is modifiable" in log

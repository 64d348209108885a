"""gateway.hsm losing its SoftHSM token and getting it back, in process.

How a SoftHSM 2.6 token is lost for real: its directory under ``directories.tokendir`` (a
UUID-named folder holding ``token.object``) is moved out of the token directory, and moved
back to come back. Measured here: while it is away, searches in the open session answer
nothing and cached handles fail (``UnwrappingKeyHandleInvalid``); listing tokens answers
``GeneralError``. Once SoftHSM has seen the folder go, it never picks it up again in that
process -- not on a new session, not on a new login -- until the library is finalised and
initialised again, which re-reads ``SOFTHSM2_CONF`` and the token directory. ``chmod 000``
does not work as a loss: these tests run as root, who reads it anyway.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pkcs11
import pkcs11.exceptions as p11e
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

import gateway.hsm
from gateway.errors import HsmError, HsmPinError
from gateway.hsm import REOPEN_INTERVAL_SECONDS, Hsm
from gateway.keys import Purpose
from tests.softhsm import TokenSpec
from tests.system.harness import wait_until

RECOVERY_DEADLINE = 10.0


@pytest.fixture(scope="module")
def token_hsm(fresh_token: TokenSpec) -> Iterator[Hsm]:
    opened = Hsm.open(fresh_token.module, fresh_token.label, fresh_token.pin)
    for purpose in Purpose:
        opened.generate(purpose)
    yield opened
    opened.close()


def _token_dir(spec: TokenSpec) -> Path:
    """The folder SoftHSM keeps ``spec``'s token in (the label is in its token.object)."""
    tokendir = Path(
        next(
            line.split("=", 1)[1].strip()
            for line in spec.conf.read_text().splitlines()
            if line.startswith("directories.tokendir")
        )
    )
    label = spec.label.encode().ljust(32)
    found = [d for d in tokendir.iterdir() if label in (d / "token.object").read_bytes()]
    assert len(found) == 1, found
    return found[0]


@contextmanager
def token_away(spec: TokenSpec) -> Iterator[None]:
    folder = _token_dir(spec)
    parked = folder.parent.parent / f"parked-{folder.name}"
    shutil.move(folder, parked)
    try:
        yield
    finally:
        shutil.move(parked, folder)


def _point(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)


def _verifies(public: ec.EllipticCurvePublicKey, message: bytes, raw: bytes) -> bool:
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    digest = hashlib.sha256(message).digest()
    public.verify(der, digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    return True


def _exercise(hsm: Hsm, wrapped: bytes, secret: bytes) -> None:
    """Every operation that uses a cached handle, each result checked."""
    transport = hsm.public_key(Purpose.TRANSPORT, 1)
    ephemeral = ec.generate_private_key(ec.SECP256R1())
    assert hsm.ecdh(1, _point(ephemeral.public_key())) == ephemeral.exchange(ec.ECDH(), transport)
    assert _verifies(hsm.public_key(Purpose.SIGNING, 1), b"m", hsm.sign(1, b"m"))
    assert hsm.unwrap(1, wrapped) == secret
    assert hsm.wrap(1, secret) == wrapped  # RFC 5649 is deterministic


def _session_objects_seen_from_outside(spec: TokenSpec) -> int:
    """Session objects on the token, counted through a second session of this process.

    Session objects are visible to every session of the application, and this one needs no
    login of its own (login is per application).
    """
    lib = pkcs11.lib(spec.module)
    session = lib.get_token(token_label=spec.label).open()
    try:
        return sum(1 for _ in session.get_objects({pkcs11.Attribute.TOKEN: False}))
    finally:
        session.close()


def test_token_lost_and_back_is_used_again_with_its_handles_found_again(
    token_hsm: Hsm, fresh_token: TokenSpec
) -> None:
    secret = os.urandom(32)
    wrapped = token_hsm.wrap(1, secret)
    _exercise(token_hsm, wrapped, secret)  # every handle cached
    assert token_hsm.problem() is None
    with token_away(fresh_token):
        assert token_hsm.ping() is False
        with pytest.raises(HsmError, match=r"the HSM is unreachable since \d{4}-\d\d-\d\d "):
            token_hsm.unwrap(1, wrapped)
        with pytest.raises(HsmError, match=f"token {fresh_token.label!r} is not present"):
            token_hsm.sign(1, b"m")
        problem = token_hsm.problem()
        assert problem is not None and "unreachable since" in problem
        assert fresh_token.pin not in problem
    wait_until(token_hsm.ping, RECOVERY_DEADLINE, "the token to answer again")
    assert token_hsm.problem() is None
    _exercise(token_hsm, wrapped, secret)


def test_while_the_token_is_away_calls_fail_at_once_instead_of_logging_in_each_time(
    token_hsm: Hsm, fresh_token: TokenSpec
) -> None:
    restarts = token_hsm.library_restarts
    with token_away(fresh_token):
        assert token_hsm.ping() is False
        tried = token_hsm.library_restarts
        assert tried > restarts  # the way back for SoftHSM: the library started afresh
        started = time.monotonic()
        for _ in range(50):
            with pytest.raises(HsmError, match="unreachable since"):
                token_hsm.sign(1, b"m")
        if time.monotonic() - started < REOPEN_INTERVAL_SECONDS:
            assert token_hsm.library_restarts == tried
    wait_until(token_hsm.ping, RECOVERY_DEADLINE, "the token to answer again")


def test_threads_across_a_loss_get_a_right_answer_or_a_clear_error(
    token_hsm: Hsm, fresh_token: TokenSpec
) -> None:
    """Never two calls at once, never a wrong key: each result is checked."""
    secret = os.urandom(48)
    wrapped = token_hsm.wrap(1, secret)
    signing = token_hsm.public_key(Purpose.SIGNING, 1)
    stop = threading.Event()
    wrong: list[str] = []
    outcomes = {"ok": 0, "unreachable": 0}
    count = threading.Lock()

    def worker(seed: int) -> None:
        while not stop.is_set():
            try:
                ok = token_hsm.unwrap(1, wrapped) == secret and _verifies(
                    signing, b"%d" % seed, token_hsm.sign(1, b"%d" % seed)
                )
                key = "ok"
                if not ok:
                    wrong.append(f"thread {seed}: wrong unwrapped key")
            except HsmError as exc:
                key = "unreachable"
                if "unreachable since" not in str(exc) and "session was lost" not in str(exc):
                    wrong.append(f"thread {seed}: {exc}")
            except Exception as exc:
                wrong.append(f"thread {seed}: {type(exc).__name__}: {exc}")
                return
            with count:
                outcomes[key] += 1

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: outcomes["ok"] >= 20, RECOVERY_DEADLINE, "calls before the loss")
        with token_away(fresh_token):
            wait_until(lambda: outcomes["unreachable"] >= 20, RECOVERY_DEADLINE, "failures")
        before = outcomes["ok"]
        wait_until(lambda: outcomes["ok"] >= before + 20, RECOVERY_DEADLINE, "calls after")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads)
    assert wrong == []


def test_every_session_object_is_destroyed(token_hsm: Hsm, fresh_token: TokenSpec) -> None:
    transport = token_hsm.public_key(Purpose.TRANSPORT, 1)
    for _ in range(30):
        ephemeral = ec.generate_private_key(ec.SECP256R1())
        shared = token_hsm.ecdh(1, _point(ephemeral.public_key()))
        assert shared == ephemeral.exchange(ec.ECDH(), transport)
        secret = os.urandom(32)
        assert token_hsm.unwrap(1, token_hsm.wrap(1, secret)) == secret
    counts = token_hsm.count_objects()
    assert counts.session == 0
    assert counts.token == 5  # transport and signing pairs, the storage key
    assert _session_objects_seen_from_outside(fresh_token) == 0


def test_the_library_is_started_afresh_after_many_session_objects(
    token_hsm: Hsm, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SoftHSM frees a destroyed session object only in C_Finalize (see RECYCLE_AFTER_...)."""
    monkeypatch.setattr(gateway.hsm, "RECYCLE_AFTER_SESSION_OBJECTS", 10)
    secret = os.urandom(32)
    wrapped = token_hsm.wrap(1, secret)
    restarts = token_hsm.library_restarts
    for _ in range(25):
        assert token_hsm.unwrap(1, wrapped) == secret
    assert token_hsm.library_restarts == restarts + 2
    assert token_hsm.count_objects().created_since_restart == 25 + 1 - 2 * 10


class _DiesOnce:
    """A session whose first call of ``fail`` fails as ``error`` (a lost session, by default)."""

    def __init__(
        self, real: Any, fail: str, error: type[p11e.PKCS11Error] = p11e.SessionHandleInvalid
    ) -> None:
        self._real = real
        self._fail = fail
        self._error = error
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        if name != self._fail or self.calls:
            return getattr(self._real, name)

        def dead(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            raise self._error()

        return dead


def test_a_read_is_retried_once_on_a_new_session(token_hsm: Hsm) -> None:
    token_hsm.ping()
    dying = _DiesOnce(token_hsm._session, "get_objects")
    token_hsm._session = dying
    token_hsm._handles.clear()
    assert token_hsm.versions(Purpose.SIGNING) == [1]
    assert dying.calls == 1
    assert token_hsm.problem() is None


def test_a_key_generation_is_never_run_twice(token_hsm: Hsm) -> None:
    token_hsm.ping()
    dying = _DiesOnce(token_hsm._session, "generate_key")
    token_hsm._session = dying
    with pytest.raises(HsmError, match=r"generate was cut off.*xbgw keys list"):
        token_hsm.generate(Purpose.STORAGE)
    assert dying.calls == 1
    assert token_hsm.versions(Purpose.STORAGE) == [1]  # a new session, nothing made


def test_an_error_a_new_session_repeats_is_not_called_an_unreachable_hsm(
    token_hsm: Hsm, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GeneralError may be a lost token or a refused call: a login that works tells them apart."""
    token_hsm.ping()
    token_hsm._session = _DiesOnce(token_hsm._session, "get_objects", p11e.GeneralError)
    login = token_hsm._login_locked
    monkeypatch.setattr(
        token_hsm, "_login_locked", lambda: _DiesOnce(login(), "get_objects", p11e.GeneralError)
    )
    with pytest.raises(HsmError, match=r"HSM list failed, on a new session too: .*GeneralError"):
        token_hsm.versions(Purpose.SIGNING)
    assert token_hsm.problem() is None
    monkeypatch.undo()
    assert token_hsm.versions(Purpose.SIGNING) == [1]


def _change_pin(spec: TokenSpec, old: str, new: str) -> None:
    """From another process, as an operator would (pkcs11-tool, same token directory)."""
    subprocess.run(
        ["pkcs11-tool", "--module", spec.module, "--token-label", spec.label,
         "--login", "--pin", old, "--change-pin", "--new-pin", new],
        check=True,
        capture_output=True,
        env={**os.environ, "SOFTHSM2_CONF": str(spec.conf)},
    )  # fmt: skip


def test_a_pin_refused_when_logging_in_again_is_never_tried_again(
    token_hsm: Hsm, fresh_token: TokenSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Last in this module: it leaves ``token_hsm`` refusing for good, as designed.

    A retried wrong PIN can lock a real HSM, so a refusal ends the logging in again.
    """
    monkeypatch.setattr(gateway.hsm, "REOPEN_INTERVAL_SECONDS", 0.0)  # try at every call
    _change_pin(fresh_token, fresh_token.pin, "changed-pin-5678")
    try:
        with token_away(fresh_token):
            assert token_hsm.ping() is False
        assert token_hsm.ping() is False
        problem = token_hsm.problem() or ""
        assert "refused the PIN" in problem and "fix the PIN and restart" in problem
        with pytest.raises(HsmPinError, match="refused the PIN"):
            token_hsm.sign(1, b"m")
    finally:
        _change_pin(fresh_token, "changed-pin-5678", fresh_token.pin)
    restarts = token_hsm.library_restarts
    for _ in range(3):  # the right PIN is back, but nothing logs in with it any more
        assert token_hsm.ping() is False
    assert token_hsm.library_restarts == restarts
    assert "changed-pin-5678" not in problem and fresh_token.pin not in problem

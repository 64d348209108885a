"""``xbgw check -c gateway.yaml`` and ``xbgw --version``, as child processes, against the demo
pair's real SoftHSM tokens, wrapped TLS keys and CA files (issue 15, item 1).

Each broken case is a real broken setup -- a wrong PIN file, a token label that is not there,
a key version with an extra capability made on the token, a certificate whose key is not the
TLS key, a certificate that ends in 10 days, a CA file that is not PEM, a ledger from a newer
xbgw -- written as a variant of lingang's config in the test's own directory (the token and
the state directory stay lingang's: check changes neither). One case runs check while the
daemon holds the state directory and the token.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import gateway
from devtools.pair import Pair, provision_pair
from devtools.provision import SOFTHSM_MODULE, DemoCa, wrap_tls_key

#: The demo certificates last 30 days; below that no warning is expected.
QUIET = ("--expiry-warning", "7")


def xbgw(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "GRPC_VERBOSITY": "ERROR"},
        check=False,
    )


def lines(done: subprocess.CompletedProcess[str], kind: str) -> list[str]:
    return [line for line in done.stdout.splitlines() if line.startswith(f"{kind}: ")]


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Pair:
    return provision_pair(tmp_path_factory.mktemp("check-pair"))


def variant(pair: Pair, where: Path, change: Callable[[dict[str, Any]], object]) -> Path:
    """lingang's config, its relative paths made absolute, changed, written under ``where``."""
    paths = pair.lingang.paths
    data = yaml.safe_load(paths.config.read_text(encoding="utf-8"))
    data["tls"] = {"certificate": str(paths.tls_certificate), "private_key": str(paths.tls_key)}
    change(data)
    config = where / "gateway.yaml"
    config.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return config


def wrong_pin(where: Path) -> Callable[[dict[str, Any]], None]:
    pin = where / "wrong-pin"
    pin.write_text("0000000000000000\n", encoding="utf-8")
    pin.chmod(0o600)
    return lambda data: data["hsm"].update(pin={"file": str(pin)})


def foreign_certificate(where: Path, days: int = 30) -> Callable[[dict[str, Any]], None]:
    """A certificate for lingang from another CA, whose key is not lingang's TLS key."""
    DemoCa(where / "other-ca").issue("lingang", where / "other.crt", where / "other.key", days)
    return lambda data: data["tls"].update(certificate=str(where / "other.crt"))


def garbage_ca(where: Path) -> Callable[[dict[str, Any]], None]:
    bad = where / "bad-ca.pem"
    bad.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n", encoding="utf-8")
    return lambda data: data["partners"][0].update(ca=str(bad))


def test_version_is_the_package_version() -> None:
    done = xbgw("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"xbgw {importlib.metadata.version('xbgw')}\n"
    assert gateway.__version__ == importlib.metadata.version("xbgw")  # `status` reports this


def test_the_demo_config_passes(pair: Pair) -> None:
    config = str(pair.lingang.paths.config)
    done = xbgw("check", "-c", config, *QUIET)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr == ""
    assert lines(done, "problem") == lines(done, "warning") == []
    passed = lines(done, "ok")
    for needle in (
        "config ",
        "state directory ",
        "ledger ",
        "HSM token 'lingang'",
        "keys: transport v1, signing v1, storage v1 active",
        "tls.certificate ",
        "(unwrapped by the HSM) matches the certificate",
        "partner frankfurt: CA (1 certificate) and signing key parse",
        "issuers: 1 public key parses",
    ):
        assert any(needle in line for line in passed), (needle, done.stdout)
    assert done.stdout.splitlines()[-1] == f"{config}: 0 problems, 0 warnings, 9 checks passed"

    # The demo certificates end within 30 days: warned about by default; --strict fails.
    default = xbgw("check", "-c", config)
    assert default.returncode == 0
    assert len(lines(default, "warning")) == 2  # our certificate and frankfurt's CA
    assert all("expires on" in line for line in lines(default, "warning"))
    strict = xbgw("check", "-c", config, "--strict")
    assert strict.returncode == 1
    assert strict.stdout.splitlines()[-1].endswith("(--strict: warnings fail)")


def test_check_runs_beside_the_running_daemon(pair: Pair) -> None:
    gateway_ = pair.lingang
    gateway_.start()
    try:
        done = xbgw("check", "-c", str(gateway_.paths.config), *QUIET)
        assert gateway_.is_running()
    finally:
        gateway_.stop()
    assert done.returncode == 0, done.stdout + done.stderr
    assert any("schema version" in line and "(current)" in line for line in lines(done, "ok"))


def test_wrong_pin(pair: Pair, tmp_path: Path) -> None:
    done = xbgw("check", "-c", str(variant(pair, tmp_path, wrong_pin(tmp_path))), *QUIET)
    assert done.returncode == 1
    assert lines(done, "problem") == [
        "problem: wrong PIN for HSM token 'lingang' -- put the token's user PIN where hsm.pin "
        "says; do not try again with the same PIN: an HSM locks after a few wrong ones"
    ]
    assert "0000000000000000" not in done.stdout + done.stderr
    assert "not checked: key versions -- needs the HSM and the ledger (see above)" in done.stdout
    assert "not checked: the TLS private key" in done.stdout


def test_token_missing(pair: Pair, tmp_path: Path) -> None:
    config = variant(pair, tmp_path, lambda data: data["hsm"].update(token="no-such-token"))
    done = xbgw("check", "-c", str(config), *QUIET)
    assert done.returncode == 1
    (problem,) = lines(done, "problem")
    assert "HSM token 'no-such-token' not found" in problem
    assert "tokens present: 'lingang'" in problem


def test_tls_key_not_matching_the_certificate(pair: Pair, tmp_path: Path) -> None:
    done = xbgw("check", "-c", str(variant(pair, tmp_path, foreign_certificate(tmp_path))), *QUIET)
    assert done.returncode == 1
    (problem,) = lines(done, "problem")
    assert "the private key does not belong to the certificate" in problem
    assert problem.endswith("-- install a matching key and certificate with 'xbgw tls rotate'")


def test_certificate_expiring_in_10_days(pair: Pair, tmp_path: Path) -> None:
    paths = pair.lingang.paths
    DemoCa(tmp_path / "ca").issue("lingang", tmp_path / "short.crt", tmp_path / "short.key", 10)
    wrapped = tmp_path / "short.xbgw-key"
    wrap_tls_key(dataclasses.replace(paths, tls_key=wrapped), tmp_path / "short.key")

    def short(data: dict[str, Any]) -> None:
        data["tls"] = {"certificate": str(tmp_path / "short.crt"), "private_key": str(wrapped)}

    config = str(variant(pair, tmp_path, short))
    done = xbgw("check", "-c", config, *QUIET)  # 10 days > 7: quiet
    assert (done.returncode, lines(done, "warning")) == (0, []), done.stdout
    warned = xbgw("check", "-c", config)
    assert warned.returncode == 0, warned.stdout
    assert f"warning: tls.certificate {tmp_path / 'short.crt'} expires on" in warned.stdout
    assert "in 9 days -- renew it and install it with 'xbgw tls rotate'" in warned.stdout
    assert xbgw("check", "-c", config, "--strict").returncode == 1


def test_unparsable_partner_ca_stops_no_other_check(pair: Pair, tmp_path: Path) -> None:
    done = xbgw("check", "-c", str(variant(pair, tmp_path, garbage_ca(tmp_path))), *QUIET)
    assert done.returncode == 1
    (problem,) = lines(done, "problem")
    assert "partners[0].ca: " in problem and "is not a PEM X.509 certificate" in problem
    assert "not checked: partners[0] -- its problems are above" in done.stdout
    assert any("PIN accepted" in line for line in lines(done, "ok"))
    assert any("matches the certificate" in line for line in lines(done, "ok"))


def newer_ledger(where: Path) -> Callable[[dict[str, Any]], None]:
    """A state directory whose ledger a newer xbgw wrote (schema version 99)."""
    state = where / "state"
    state.mkdir()
    with sqlite3.connect(state / "ledger.sqlite3") as db:
        db.execute("PRAGMA user_version=99")
        db.execute("CREATE TABLE t (x)")
    return lambda data: data.update(state_dir=str(state))


def test_several_problems_reported_together(pair: Pair, tmp_path: Path) -> None:
    changes = [
        wrong_pin(tmp_path),
        garbage_ca(tmp_path),
        foreign_certificate(tmp_path),
        newer_ledger(tmp_path),
    ]

    def every(data: dict[str, Any]) -> None:
        for change in changes:
            change(data)

    done = xbgw("check", "-c", str(variant(pair, tmp_path, every)), *QUIET)
    assert done.returncode == 1
    problems = lines(done, "problem")
    assert len(problems) == 3, done.stdout  # the TLS key is not checked: it needs the HSM
    assert "partners[0].ca" in problems[0]
    assert "schema version 99, newer than this xbgw's" in problems[1]
    assert "wrong PIN" in problems[2]
    # The certificate's own dates are checked without the HSM.
    assert any("tls.certificate " in line for line in lines(done, "ok"))
    assert done.stdout.splitlines()[-1].endswith(": 3 problems, 0 warnings, 3 checks passed")


def test_a_config_that_does_not_load(pair: Pair, tmp_path: Path) -> None:
    def broken(data: dict[str, Any]) -> None:
        del data["tls"]
        data["hsm"]["tokn"] = "typo"

    done = xbgw("check", "-c", str(variant(pair, tmp_path, broken)))
    assert done.returncode == 1
    problems = lines(done, "problem")
    assert any("tls: required key is missing" in line for line in problems), done.stdout
    assert any("hsm.tokn: " in line for line in problems), done.stdout
    assert lines(done, "ok") == []
    skipped = "not checked: state directory, ledger, HSM, keys, TLS, partners -- the config"
    assert f"{skipped} does not load; fix the problems above" in done.stdout


def test_ledger_from_a_newer_xbgw(pair: Pair, tmp_path: Path) -> None:
    config = variant(pair, tmp_path, newer_ledger(tmp_path))
    done = xbgw("check", "-c", str(config), *QUIET)
    assert done.returncode == 1
    (problem,) = lines(done, "problem")
    assert "schema version 99, newer than this xbgw's" in problem


@pytest.fixture
def fresh_pair(tmp_path: Path) -> Iterator[Pair]:
    yield provision_pair(tmp_path / "pair")


def test_key_with_an_extra_capability(fresh_pair: Pair) -> None:
    paths = fresh_pair.lingang.paths
    # transport v2 made the old way and widened with CKA_SIGN: the highest, so adopted
    # active by a gateway that has not started yet (see tests/integration/test_hsm_locked).
    subprocess.run(
        [sys.executable, "-m", "tests.integration.legacy_keys", SOFTHSM_MODULE, paths.token,
         str(paths.pin_file), "transport", "2", "--add", "sign"],
        check=True,
        timeout=60,
        env={**os.environ, "SOFTHSM2_CONF": str(paths.softhsm_conf)},
    )  # fmt: skip
    done = xbgw("check", "-c", str(paths.config), *QUIET)
    assert done.returncode == 1
    (problem,) = lines(done, "problem")
    assert "lingang/transport/2 has extra capability sign" in problem, problem
    assert not (paths.state_dir / "ledger.sqlite3").exists()  # adopted in a copy only

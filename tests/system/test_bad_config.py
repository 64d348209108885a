"""A bad configuration at start and on reload (issue 12, item 1), through real daemons.

Each case is one mistake a person can make in ``gateway.yaml`` that PyYAML or a naive read
could not take: a control character, nesting deep enough for a RecursionError, and a FIFO,
device, directory, socket or over-cap file where the config names a file. At start,
``xbgw serve`` must exit 78 (EX_CONFIG) within a deadline with one line on stderr; a running
daemon given the same file and SIGHUP must refuse the reload (an error line, ``READY=1`` with
``STATUS=reload refused: ...``), keep serving -- health and a real transfer -- and still stop
on SIGTERM with exit 0, also right after a SIGHUP with a FIFO in the config.

One running pair per module (lingang -> frankfurt, SoftHSM, mutual TLS on loopback); the
reloads go to frankfurt. The start-up cases run as parallel processes of their own.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.files import MIB
from tests.system.lifecycle_helpers import (
    CLI_ENV,
    World,
    answers_health,
    cli_command,
    json_log,
    make_world,
    send_and_fetch,
    standalone_config,
    stop_quietly,
    wait_after,
)

SEGMENT = 64 << 10
EX_CONFIG = 78
START_DEADLINE = 30.0  # parallel interpreter starts on two shared cores
STOP_DEADLINE = 20.0

#: How one case spoils a config: ``(data, text, bad_dir) -> text`` -- edit the parsed YAML
#: in place, or return new raw text (``text`` is the file as it is).
Spoil = Callable[[dict[str, Any], str, Path], str | None]


def _fifo(bad: Path) -> str:
    path = bad / "a-fifo.pem"
    if not path.exists():
        os.mkfifo(path)
    return str(path)


def _socket(bad: Path) -> str:
    path = bad / "a-socket.pem"
    if not path.exists():
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
            server.bind(str(path))  # the socket file stays after close
    return str(path)


def _huge(bad: Path, name: str = "huge.pem", size: int = MIB + 1) -> str:
    path = bad / name
    with path.open("wb") as out:
        out.truncate(size)  # sparse: over the cap (1 MiB for a PEM) without writing it
    return str(path)


def _set(dotted: str, value: Callable[[Path], object]) -> Spoil:
    def spoil(data: dict[str, Any], _text: str, bad: Path) -> None:
        *parents, last = dotted.split(".")
        node: Any = data
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[last] = value(bad)

    return spoil


def _control_character(_data: dict[str, Any], text: str, _bad: Path) -> str:
    return text.replace("gateway:", "gateway:\x01", 1)


def _deep(_data: dict[str, Any], text: str, _bad: Path) -> str:
    return text + "extra: " + "[" * 5000 + "]" * 5000 + "\n"


@dataclass(frozen=True)
class Case:
    spoil: Spoil
    needles: tuple[str, ...]  # in the one stderr line and in the refused reload's status


CASES = {
    "control character": Case(_control_character, ("control character U+0001",)),
    "deep nesting": Case(_deep, ("invalid YAML: nested more than 64 levels deep",)),
    "FIFO as partner CA": Case(
        _set("partners.0.ca", _fifo), ("partners[0].ca: ", "is a FIFO, expected a regular file")
    ),
    "/dev/zero as TLS key": Case(
        _set("tls.private_key", lambda _bad: "/dev/zero"),
        ("tls.private_key: /dev/zero is a character device",),
    ),
    "directory as certificate": Case(
        _set("tls.certificate", str), ("tls.certificate: ", "is a directory")
    ),
    "socket as signing key": Case(
        _set("partners.0.signing_key", _socket), ("partners[0].signing_key: ", "is a socket")
    ),
    "huge issuer key": Case(
        _set("issuers.0.public_key", _huge), ("issuers[0].public_key: ", "larger than 1 MiB")
    ),
    "FIFO as PIN file": Case(
        _set("hsm.pin", lambda bad: {"file": _fifo(bad)}), ("hsm.pin.file: ", "is a FIFO")
    ),
    "FIFO as SoftHSM conf": Case(
        _set("hsm.softhsm_conf", _fifo), ("hsm.softhsm_conf: ", "is a FIFO")
    ),
    "FIFO as rule table": Case(
        _set("compliance", lambda bad: {"tables": ["baseline", _fifo(bad)]}),
        ("compliance.tables[1]: ", "is a FIFO"),
    ),
}


def _spoilt(case: Case, text: str, bad: Path) -> str:
    data = yaml.safe_load(text)
    raw = case.spoil(data, text, bad)
    return raw if raw is not None else yaml.safe_dump(data, sort_keys=False)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    world = make_world(
        tmp_path_factory.mktemp("bad-config"), SEGMENT, extra_limits={"drain_grace_seconds": 2}
    )
    with world.pair.running():
        yield world


@pytest.fixture(scope="module")
def bad_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bad-files")


# -- at start: exit 78, one line -------------------------------------------------------------


def test_serve_with_each_bad_config_exits_78_with_one_line(
    world: World, bad_dir: Path, tmp_path: Path
) -> None:
    base = world.frankfurt
    texts: dict[str, tuple[str, tuple[str, ...]]] = {}
    for label, case in CASES.items():
        own = tmp_path / label.replace(" ", "-").replace("/", "")
        own.mkdir()
        text = yaml.safe_dump(standalone_config(base, own), sort_keys=False)
        config_path = own / "gateway.yaml"
        config_path.write_text(_spoilt(case, text, bad_dir), encoding="utf-8")
        texts[str(config_path)] = (label, case.needles)
    fifo_config = tmp_path / "fifo.yaml"
    os.mkfifo(fifo_config)
    texts[str(fifo_config)] = ("config is a FIFO", ("cannot use the configuration file: a FIFO",))
    huge_config = _huge(tmp_path, "huge.yaml", 4 * MIB + 1)
    texts[huge_config] = ("config is huge", ("configuration file: larger than 4 MiB",))

    started = time.monotonic()
    processes = {
        config: subprocess.Popen(
            cli_command("serve", "-c", config),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **CLI_ENV},
        )
        for config in texts
    }
    failures: list[str] = []
    try:
        for config, process in processes.items():
            label, needles = texts[config]
            left = max(0.1, START_DEADLINE - (time.monotonic() - started))
            try:
                out, err = process.communicate(timeout=left)
            except subprocess.TimeoutExpired:
                failures.append(f"{label}: still running after {START_DEADLINE}s")
                continue
            lines = err.strip().splitlines()
            if process.returncode != EX_CONFIG:
                failures.append(f"{label}: exit {process.returncode}, stderr {err!r}")
            elif len(lines) != 1 or "Traceback" in err or out:
                failures.append(f"{label}: expected one line on stderr, got {err!r} {out!r}")
            elif not lines[0].startswith(f"xbgw: {config}: ") or not all(
                needle in lines[0] for needle in needles
            ):
                failures.append(f"{label}: {needles} not in {lines[0]!r}")
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()  # by its own PID; only a failing run gets here
                process.wait(10)
    assert not failures, "\n".join(failures)


# -- on reload: refused, still serving, still stopping ---------------------------------------


def _fields(message: str) -> list[str]:
    return message.split("\n")


def _reload_with(world: World, text_or_fifo: str | None) -> tuple[str, list[dict[str, Any]]]:
    """Write the config (``None``: make it a FIFO), SIGHUP frankfurt, and return the STATUS of
    the READY=1 that ends the reload and the log entries it wrote; the file is restored."""
    frankfurt = world.pair.frankfurt
    config = world.frankfurt.config
    original = config.read_bytes()
    logged = len(json_log(frankfurt.log_path)[0])
    try:
        if text_or_fifo is None:
            config.unlink()
            os.mkfifo(config)
        else:
            config.write_text(text_or_fifo, encoding="utf-8")
        mark = len(frankfurt.messages)
        frankfurt.signal(signal.SIGHUP)
        reloading = wait_after(frankfurt, mark, "RELOADING=1")
        ready = wait_after(frankfurt, reloading + 1, "READY=1")
    finally:
        config.unlink()
        config.write_bytes(original)
    status = [f for f in _fields(frankfurt.messages[ready]) if f.startswith("STATUS=")]
    assert len(status) == 1, frankfurt.messages[ready]
    return status[0], json_log(frankfurt.log_path)[0][logged:]


@pytest.mark.parametrize("label", list(CASES))
def test_reload_with_a_bad_config_is_refused(world: World, bad_dir: Path, label: str) -> None:
    case = CASES[label]
    text = world.frankfurt.config.read_text(encoding="utf-8")
    status, entries = _reload_with(world, _spoilt(case, text, bad_dir))
    assert status.startswith(f"STATUS=reload refused: {world.frankfurt.config}: "), status
    for needle in case.needles:
        assert needle in status, (needle, status)
    refused = [e for e in entries if e.get("level") == "error" and "reload refused" in e["msg"]]
    assert len(refused) == 1, entries
    assert all(needle in refused[0]["msg"] for needle in case.needles), refused
    assert world.pair.frankfurt.is_running()
    assert answers_health(world.frankfurt)


def test_reload_with_the_config_file_itself_a_fifo_is_refused(world: World) -> None:
    status, _entries = _reload_with(world, None)
    assert status == (
        f"STATUS=reload refused: {world.frankfurt.config}: cannot use the configuration file: "
        "a FIFO, expected a regular file"
    )


def test_after_the_refused_reloads_it_serves_and_reloads_a_good_config(
    world: World, tmp_path: Path
) -> None:
    assert answers_health(world.frankfurt)
    send_and_fetch(world, tmp_path, 150_000, "after-bad-reloads")
    status, entries = _reload_with(world, world.frankfurt.config.read_text(encoding="utf-8"))
    assert status.startswith("STATUS=serving as frankfurt"), status
    assert any(e.get("msg") == "configuration reloaded" for e in entries), entries


def test_sigterm_right_after_a_sighup_with_a_fifo_stops_it(world: World, bad_dir: Path) -> None:
    """The last test of the module: it stops frankfurt (the fixture then finds it stopped)."""
    frankfurt = world.pair.frankfurt
    config = world.frankfurt.config
    original = config.read_text(encoding="utf-8")
    config.write_text(_spoilt(CASES["FIFO as partner CA"], original, bad_dir), encoding="utf-8")
    try:
        mark = len(frankfurt.messages)
        frankfurt.signal(signal.SIGHUP)
        # Once the reload has begun (else the main loop would skip it for the stop): a FIFO
        # opened for reading used to block it there, and SIGTERM was never acted upon.
        mark = wait_after(frankfurt, mark, "RELOADING=1")
        frankfurt.signal(signal.SIGTERM)
        signalled = time.monotonic()
        wait_after(frankfurt, mark, "STOPPING=1", timeout=STOP_DEADLINE)
        assert frankfurt.process is not None
        code = frankfurt.process.wait(timeout=STOP_DEADLINE)
        took = time.monotonic() - signalled
    finally:
        config.write_text(original, encoding="utf-8")
        stop_quietly(frankfurt)
    assert code == 0, frankfurt.log_text()[-2000:]
    assert took < STOP_DEADLINE
    assert "Traceback" not in frankfurt.log_text()

"""``xbgw tls import|rotate|show`` as real processes, and a running daemon that takes a
rotated key and certificate on SIGHUP (issue 9, part 5: the TLS key never plaintext at rest).

One provisioned pair for the module (``own_ca``: the test holds the CA, so it can issue new
certificates for the gateways), whose frankfurt daemon runs for the tests that need it and is
stopped by PID at the end. The served certificate is read with a fresh mutual-TLS handshake
(lingang's stand-in identity as the client); a wrapped key is checked by unwrapping it with
the gateway's HSM in a child process, as the daemon would.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import yaml

from devtools.pair import Gateway, provision_pair
from devtools.provision import SOFTHSM_MODULE, DaemonProcess, DemoCa, Provisioned
from gateway import tlskey
from tests.system.lifecycle_helpers import (
    World,
    file_serial,
    health_status,
    json_log,
    partner_channel,
    server_certificate,
    standalone_config,
    stop_quietly,
    unwrapped_tls_key,
    wait_after,
    write_standalone,
)

EXIT_USAGE = 2


@dataclass
class Rig:
    world: World
    ca: DemoCa

    @property
    def frankfurt(self) -> Provisioned:
        return self.world.frankfurt

    @property
    def daemon(self) -> Gateway:
        return self.world.pair.frankfurt


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    pair = provision_pair(tmp_path_factory.mktemp("cli-tls"), own_ca=True)
    assert pair.ca is not None
    rig = Rig(World(pair), pair.ca)
    try:
        yield rig
    finally:
        stop_quietly(rig.daemon)


@pytest.fixture(scope="module")
def running(rig: Rig) -> Rig:
    """frankfurt's daemon, started once for the module (stopped by ``rig``)."""
    rig.daemon.start()
    return rig


def xbgw(paths: Provisioned, *args: str) -> subprocess.CompletedProcess[str]:
    """``xbgw ARGS`` with the gateway's SoftHSM token directory."""
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "GRPC_VERBOSITY": "ERROR", "SOFTHSM2_CONF": str(paths.softhsm_conf)},
    )


def hsm_args(paths: Provisioned) -> list[str]:
    return ["--module", SOFTHSM_MODULE, "--token", paths.token, "--pin-file", str(paths.pin_file)]


def issue(rig: Rig, directory: Path, name: str, days: int = 30) -> tuple[Path, Path]:
    """A new certificate and plaintext key for frankfurt from the CA the gateways trust."""
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    rig.ca.issue(rig.frankfurt.id, cert, key, days=days)
    return cert, key


def snapshot(*paths: Path) -> list[tuple[bytes, int, int, int]]:
    """Content, inode, mode and mtime of each file: a replaced file changes its inode."""
    out = []
    for path in paths:
        st = path.stat()
        out.append((path.read_bytes(), st.st_ino, st.st_mode, st.st_mtime_ns))
    return out


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def reload(daemon: DaemonProcess) -> None:
    """SIGHUP, then wait for RELOADING=1 and the READY=1 after it; the reload must succeed."""
    mark = len(daemon.messages)
    daemon.signal(signal.SIGHUP)
    ready = wait_after(daemon, wait_after(daemon, mark, "RELOADING=1") + 1, "READY=1")
    status = [f for f in daemon.messages[ready].split("\n") if f.startswith("STATUS=")]
    assert status and status[0].startswith("STATUS=serving as"), status


# --- import ----------------------------------------------------------------------------------


def test_import_writes_a_wrapped_key_0600_and_refuses_to_overwrite(
    rig: Rig, tmp_path: Path
) -> None:
    paths = rig.frankfurt
    cert, key = issue(rig, tmp_path, "new")
    command = ["tls", "import", *hsm_args(paths), "--gateway", paths.id, "--key", str(key)]
    done = xbgw(paths, *command)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "new.xbgw-key"
    assert f"wrapped  {key} to frankfurt/storage/1 (the highest storage version" in done.stdout
    assert f"wrote    {out} (mode 0600;" in done.stdout
    assert f"shred -u {key}" in done.stdout
    assert mode(out) == 0o600
    data = out.read_bytes()
    assert tlskey.parse_wrapped_tls_key(data).storage_ref.version == 1
    assert key.read_bytes() not in data
    assert key.exists(), "import deletes nothing: the operator shreds the plaintext"
    # The HSM unwraps it to exactly the key that was imported.
    assert unwrapped_tls_key(paths, out, cert) == key.read_bytes()

    again = xbgw(paths, *command)
    assert again.returncode == EXIT_USAGE
    assert again.stderr.strip() == f"xbgw: {out} exists; give --force to replace it"
    assert out.read_bytes() == data

    forced = xbgw(paths, *command, "--force")
    assert forced.returncode == 0, forced.stderr
    assert out.read_bytes() != data  # a fresh data key and nonce
    assert mode(out) == 0o600
    assert unwrapped_tls_key(paths, out, cert) == key.read_bytes()

    wrapped = xbgw(
        paths, "tls", "import", *hsm_args(paths), "--gateway", paths.id, "--key", str(out)
    )
    assert wrapped.returncode == EXIT_USAGE
    assert "is already wrapped (to frankfurt/storage/1); give the PEM key" in wrapped.stderr


def test_import_with_a_config_checks_the_key_against_its_certificate(
    rig: Rig, tmp_path: Path
) -> None:
    paths = rig.frankfurt
    _, key = issue(rig, tmp_path, "other")
    out = tmp_path / "other.xbgw-key"
    done = xbgw(paths, "tls", "import", "-c", str(paths.config), "--key", str(key), "-o", str(out))
    assert done.returncode == EXIT_USAGE, done.stdout
    assert "the private key does not belong to the certificate" in done.stderr
    assert "use 'xbgw tls rotate'" in done.stderr
    assert not out.exists()


# --- show ------------------------------------------------------------------------------------


def test_show_tells_whether_the_key_is_wrapped_and_to_which_version(
    running: Rig, tmp_path: Path
) -> None:
    paths = running.frankfurt
    done = xbgw(paths, "tls", "show", "-c", str(paths.config))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    serial = f"{file_serial(paths.tls_certificate):x}"
    assert f"  serial     {serial}" in lines
    assert "  names      DNS:frankfurt" in lines
    assert "  at rest    wrapped by the HSM (xbgw-key format 1) to frankfurt/storage/1" in lines
    assert "  storage    v1 is active" in lines  # read from the running daemon's key state
    assert "PRIVATE KEY" not in done.stdout

    # The same gateway configured with a plaintext PEM (its stand-in identity).
    data = yaml.safe_load(paths.config.read_text(encoding="utf-8"))
    certificate, key = paths.stand_in()
    data["tls"] = {"certificate": str(certificate), "private_key": str(key)}
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump(data), encoding="utf-8")
    shown = xbgw(paths, "tls", "show", "-c", str(plain))
    assert shown.returncode == 0, shown.stderr
    assert "  at rest    PLAINTEXT PEM: wrap it with 'xbgw tls import'" in shown.stdout.splitlines()
    assert "PRIVATE KEY" not in shown.stdout


# --- rotate ----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["key of another certificate", "expired", "wrapped key"])
def test_a_refused_rotation_changes_nothing(rig: Rig, tmp_path: Path, case: str) -> None:
    paths = rig.frankfurt
    if case == "key of another certificate":
        cert, _ = issue(rig, tmp_path, "one")
        _, key = issue(rig, tmp_path, "two")
        words = f"--key {key} and --cert {cert}: the private key does not belong to the cert"
    elif case == "expired":
        cert, key = issue(rig, tmp_path, "old", days=0)
        words = f"--cert {cert} expired at "
    else:
        cert, key = paths.tls_certificate, paths.tls_key
        words = f"--key {key} is already wrapped (to frankfurt/storage/1)"
    tls_dir = paths.tls_certificate.parent
    before = snapshot(paths.tls_certificate, paths.tls_key)
    listing = sorted(p.name for p in tls_dir.iterdir())
    done = xbgw(
        paths, "tls", "rotate", "-c", str(paths.config), "--key", str(key), "--cert", str(cert)
    )
    assert done.returncode == EXIT_USAGE, done.stdout
    assert words in done.stderr, done.stderr
    assert snapshot(paths.tls_certificate, paths.tls_key) == before
    assert sorted(p.name for p in tls_dir.iterdir()) == listing


def test_rotate_then_sighup_serves_the_new_certificate(running: Rig, tmp_path: Path) -> None:
    world, paths, daemon = running.world, running.frankfurt, running.daemon
    port = world.port("frankfurt")
    old = server_certificate(port, world.ca_path(), world.lingang).serial_number
    assert old == file_serial(paths.tls_certificate)
    cert, key = issue(running, tmp_path, "renewed")

    done = xbgw(
        paths, "tls", "rotate", "-c", str(paths.config), "--key", str(key), "--cert", str(cert)
    )
    assert done.returncode == 0, done.stderr
    assert "(the active storage version of the daemon)" in done.stdout
    assert "systemctl reload xbgw" in done.stdout
    new = file_serial(cert)
    assert paths.tls_certificate.read_bytes() == cert.read_bytes()
    assert tlskey.looks_wrapped(paths.tls_key.read_bytes())
    assert mode(paths.tls_key) == 0o600
    assert sorted(p.name for p in paths.tls_key.parent.iterdir()) == sorted(
        [paths.tls_certificate.name, paths.tls_key.name]
    )
    # Until the reload the daemon serves what it loaded.
    assert server_certificate(port, world.ca_path(), world.lingang).serial_number == old

    reload(daemon)
    assert server_certificate(port, world.ca_path(), world.lingang).serial_number == new
    with partner_channel(world, world.lingang, port) as channel:
        assert health_status(channel) == "SERVING"  # gRPC over mTLS with the unwrapped key
    entries, _ = json_log(daemon.log_path)
    assert not [e for e in entries if "plaintext" in str(e.get("msg"))], entries
    assert key.read_text().splitlines()[1] not in daemon.log_text()


def test_a_plaintext_key_warns_on_every_load_until_rotate_wraps_it(
    running: Rig, tmp_path: Path
) -> None:
    """A daemon configured with a plaintext PEM still starts, with one WARNING per load (start
    and each reload); ``tls rotate`` replaces that file with a wrapped key, and from the
    next reload on there is nothing to warn about."""
    world, base = running.world, running.frankfurt
    certificate, key = base.stand_in()
    tls_dir = tmp_path / "tls"
    tls_dir.mkdir()
    data = standalone_config(base, tmp_path)
    data["tls"] = {
        "certificate": str(shutil.copy(certificate, tls_dir / "gateway.crt")),
        "private_key": str(shutil.copy(key, tls_dir / "gateway.key")),
    }
    paths = write_standalone(base, tmp_path, data)
    paths = replace(paths, tls_certificate=tls_dir / "gateway.crt", tls_key=tls_dir / "gateway.key")
    port = int(data["listen"]["partner"].rsplit(":", 1)[1])
    daemon = DaemonProcess(paths)

    def warnings() -> list[str]:
        entries, _ = json_log(daemon.log_path)
        return [str(e["msg"]) for e in entries if e.get("level") == "warning"]

    try:
        daemon.start()
        expected = f"{tlskey.PLAINTEXT_WARNING} ({paths.tls_key})"
        assert warnings() == [expected]
        reload(daemon)
        assert warnings() == [expected, expected]

        cert, new_key = issue(running, tmp_path, "wrapped")
        done = xbgw(
            paths,
            "tls",
            "rotate",
            "-c",
            str(paths.config),
            "--key",
            str(new_key),
            "--cert",
            str(cert),
        )
        assert done.returncode == 0, done.stderr
        assert f"note:    {paths.tls_key} held a plaintext PEM; it now holds the wrapped key" in (
            done.stdout
        )
        assert tlskey.looks_wrapped(paths.tls_key.read_bytes())
        reload(daemon)
        assert warnings() == [expected, expected]
        served = server_certificate(port, world.ca_path(), world.lingang).serial_number
        assert served == file_serial(cert)
    finally:
        stop_quietly(daemon)
    assert daemon.process is not None and daemon.process.returncode == 0

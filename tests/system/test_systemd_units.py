"""The systemd packaging, checked without systemd as PID 1.

* ``systemd-analyze verify --man=no`` prints nothing for each unit. It exits 0 even on a
  misspelled directive (systemd 252 only warns), so any output is a failure; a negative
  test shows the check does fail. ``ExecStart`` must name an existing program, so the
  units are verified from a copy whose programs are rewritten to existing ones, next to
  their companion units.
* ``systemd-analyze security --offline=true`` scores each service at 1.5 or lower.
* ``sysusers.d`` and ``tmpfiles.d`` entries are applied to a scratch root directory.
* The example configuration loads once the files it names exist, and agrees with the unit
  (credential name, socket and state directories, stop timeout vs. drain grace).
* ``scripts/install`` puts everything in place under ``DESTDIR`` (without the venv, for speed).
* The demo -- two daemons, SoftHSM, mutual TLS, a transfer, SIGTERM -- runs under the unit's
  seccomp policy (system call filter, MemoryDenyWriteExecute, address families), applied by
  ``unit_sandbox.py`` the way systemd applies it.
"""

from __future__ import annotations

import datetime
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.config import load_config
from gateway.daemon import IDLE_WAIT_SECONDS
from gateway.secrets import PinSource

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD = ROOT / "systemd"
SERVICE = "xbgw.service"
ROTATE = "xbgw-keys-rotate.service"
TIMER = "xbgw-keys-rotate.timer"
UNITS = (SERVICE, ROTATE, TIMER)
SERVICES = (SERVICE, ROTATE)
MAX_EXPOSURE = 1.5
CONFIG_PATH = "/etc/xbgw/gateway.yaml"
COMMAND = "/usr/bin/xbgw"
# Programs the units run, and an existing stand-in for each (verify needs ExecStart to exist).
STAND_INS = {COMMAND: sys.executable, "/bin/kill": shutil.which("kill") or "/bin/true"}
# systemd's tools would otherwise colour their messages or page them.
TOOL_ENV = {**os.environ, "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": "", "SYSTEMD_LOG_COLOR": "0"}


@pytest.fixture(autouse=True)
def _systemd_tools() -> None:
    """systemd's offline tools come with the systemd package (not in minimal images)."""
    missing = [
        t
        for t in ("systemd-analyze", "systemd-sysusers", "systemd-tmpfiles")
        if not shutil.which(t)
    ]
    assert not missing, f"{', '.join(missing)} missing: apt-get install systemd"


def run(*argv: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in argv],
        capture_output=True,
        text=True,
        env=TOOL_ENV,
        cwd=cwd,
        timeout=120,
        check=False,
    )


def unit_entries(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Sections of a unit file -> ``(key, value)`` in order, repeated keys kept."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"{path}: {line!r} is outside any section"
        assert not line.endswith("\\"), f"{path}: keep {line!r} on one line"
        key, sep, value = line.partition("=")
        assert sep, f"{path}: {line!r} is not key=value"
        current.append((key.strip(), value.strip()))
    return sections


def values(path: Path, section: str, key: str) -> list[str]:
    return [v for k, v in unit_entries(path).get(section, []) if k == key]


def one(path: Path, section: str, key: str) -> str:
    found = values(path, section, key)
    assert len(found) == 1, f"{path.name}: expected one {key}=, found {found}"
    return found[0]


def seconds(text: str) -> float:
    """A systemd time span with one unit (``30s``, ``10min``, ``90``) in seconds."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(ms|s|sec|min|m|h)?", text)
    assert match, f"unsupported time span {text!r}"
    scale = {"ms": 0.001, None: 1, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600}
    return float(match[1]) * scale[match[2]]


def stage_units(directory: Path) -> Path:
    """Copy every unit into ``directory`` with the programs swapped for existing ones."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in UNITS:
        text = (SYSTEMD / name).read_text(encoding="utf-8")
        for old, new in STAND_INS.items():
            text = re.sub(
                rf"^(Exec\w+=[-@:+!]*){re.escape(old)}(?=\s|$)", rf"\g<1>{new}", text, flags=re.M
            )
        (directory / name).write_text(text, encoding="utf-8")
    return directory


def exposure(unit: Path) -> float:
    done = run("systemd-analyze", "security", "--offline=true", "--no-pager", unit)
    assert done.returncode == 0, done.stderr
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout)
    assert match, f"no overall exposure line in:\n{done.stdout}{done.stderr}"
    return float(match[1])


# --- systemd-analyze verify -----------------------------------------------------------------


@pytest.mark.parametrize("name", UNITS)
def test_verify_prints_nothing(name: str, tmp_path: Path) -> None:
    staged = stage_units(tmp_path / "units")
    done = run("systemd-analyze", "verify", "--man=no", staged / name, cwd=tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 0 and output == "", f"systemd-analyze verify {name}:\n{output}"


def test_staged_units_run_existing_programs(tmp_path: Path) -> None:
    """The rewrite in stage_units really happened (else verify would test the wrong thing)."""
    staged = stage_units(tmp_path / "units")
    for name in SERVICES:
        for key in ("ExecStart", "ExecReload"):
            for line in values(staged / name, "Service", key):
                program = line.split()[0]
                assert os.access(program, os.X_OK), f"{name}: {key}={line}"


@pytest.mark.parametrize(
    ("mistake", "expected", "exit_code"),
    [
        (("ProtectSystem=strict", "ProtectSystm=strict"), "Unknown key 'ProtectSystm'", 0),
        (("UMask=0077", "UMask=0778"), "Failed to parse mode value", 0),
        (
            ("LoadCredential=hsm-pin:/etc/xbgw/hsm-pin", "LoadCredential=hsm-pin:etc/../pin"),
            "Credential source",
            0,
        ),
        ((f"ExecStart={sys.executable}", "ExecStart=/nonexistent/xbgw"), "/nonexistent/xbgw", 1),
    ],
    ids=["misspelled-directive", "bad-value", "bad-credential-source", "missing-program"],
)
def test_verify_reports_mistakes(
    mistake: tuple[str, str], expected: str, exit_code: int, tmp_path: Path
) -> None:
    """The check can fail: each mistake makes verify print something -- mostly with exit 0,
    which is why test_verify_prints_nothing checks the output and not the exit code."""
    staged = stage_units(tmp_path / "units")
    unit = staged / SERVICE
    text = unit.read_text(encoding="utf-8")
    old, new = mistake
    assert old in text
    unit.write_text(text.replace(old, new, 1), encoding="utf-8")
    done = run("systemd-analyze", "verify", "--man=no", unit, cwd=tmp_path)
    output = done.stdout + done.stderr
    assert expected in output, f"verify said:\n{output}"
    assert done.returncode == exit_code


# --- systemd-analyze security ---------------------------------------------------------------


@pytest.mark.parametrize("name", SERVICES)
def test_security_exposure(name: str) -> None:
    score = exposure(SYSTEMD / name)
    print(f"systemd-analyze security {name}: overall exposure {score}")
    assert score <= MAX_EXPOSURE


def test_security_score_is_read_from_the_output(tmp_path: Path) -> None:
    """An unsandboxed service scores high: the parser reads the real number."""
    bare = tmp_path / "bare.service"
    bare.write_text("[Service]\nExecStart=/bin/true\n", encoding="utf-8")
    assert exposure(bare) > 9.0


# --- the unit, the config and the other files agree -----------------------------------------


def test_service_contract() -> None:
    unit = SYSTEMD / SERVICE
    expect = {
        "Type": "notify",
        "NotifyAccess": "main",
        "User": "xbgw",
        "Group": "xbgw",
        "StateDirectory": "xbgw",
        "RuntimeDirectory": "xbgw",
        "ConfigurationDirectory": "xbgw",
        "Restart": "on-failure",
        "ExecReload": "/bin/kill -HUP $MAINPID",
        "ExecStart": f"{COMMAND} serve -c {CONFIG_PATH}",
    }
    for key, value in expect.items():
        assert one(unit, "Service", key) == value, key
    assert seconds(one(unit, "Service", "WatchdogSec")) > 0
    assert not values(unit, "Service", "DynamicUser")
    assert one(unit, "Service", "CapabilityBoundingSet") == ""
    rotate = SYSTEMD / ROTATE
    assert values(rotate, "Service", "ExecStart") == [
        f"{COMMAND} keys rotate -c {CONFIG_PATH}",
        f"{COMMAND} keys rewrap -c {CONFIG_PATH}",
    ]
    # A oneshot with RuntimeDirectory= would delete /run/xbgw (and the socket) when it ends.
    assert not values(rotate, "Service", "RuntimeDirectory")
    for key in ("User", "Group", "LoadCredential", "LoadCredentialEncrypted", "StateDirectory"):
        assert values(rotate, "Service", key) == values(unit, "Service", key), key
    assert one(SYSTEMD / TIMER, "Timer", "Unit") == ROTATE


def write_referenced_files(doc: dict[str, Any], rewrite: dict[str, Path]) -> None:
    """Create every file the example config names, with content of the right kind."""

    def target(path: str) -> Path:
        for prefix, new in rewrite.items():
            if path.startswith(prefix):
                return new / path[len(prefix) :].lstrip("/")
        raise AssertionError(f"the example names {path}, outside {list(rewrite)}")

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "xbgw example")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC))
        .not_valid_after(datetime.datetime(2034, 1, 1, tzinfo=datetime.UTC))
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    files: dict[str, bytes] = {
        doc["tls"]["certificate"]: cert_pem,
        doc["tls"]["private_key"]: key_pem,
        doc["hsm"]["module"]: b"\x7fELF (stand-in for the PKCS#11 module)\n",
    }
    if doc["hsm"].get("softhsm_conf"):
        files[doc["hsm"]["softhsm_conf"]] = b"directories.tokendir = /var/lib/xbgw/softhsm\n"
    for partner in doc.get("partners") or []:
        files[partner["ca"]] = cert_pem
        files[partner["signing_key"]] = public_pem
    for issuer in doc.get("issuers") or []:
        files[issuer["public_key"]] = public_pem
    for path, content in files.items():
        assert path.startswith("/"), f"the example should use absolute paths, not {path}"
        file = target(path)
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(content)


def test_example_config_loads_and_matches_the_unit(tmp_path: Path) -> None:
    example = (SYSTEMD / "gateway.yaml.example").read_text(encoding="utf-8")
    doc = yaml.safe_load(example)
    rewrite = {
        "/etc/xbgw": tmp_path / "etc",
        "/var/lib/xbgw": tmp_path / "state",
        "/run/xbgw": tmp_path / "run",
        "/usr/lib/softhsm": tmp_path / "lib",
    }
    write_referenced_files(doc, rewrite)
    text = example
    for prefix, new in rewrite.items():
        text = re.sub(rf"{re.escape(prefix)}(?=[/\s]|$)", str(new), text, flags=re.M)
        assert prefix not in re.sub(r"#.*", "", text), f"{prefix} escaped the rewrite"
    copy = tmp_path / "etc" / "gateway.yaml"
    copy.write_text(text, encoding="utf-8")

    config = load_config(copy)

    unit = SYSTEMD / SERVICE
    # The PIN is the credential the unit loads, and never a value in the file.
    assert config.hsm.pin == PinSource("credential", "hsm-pin")
    assert any(v.startswith("hsm-pin:") for v in values(unit, "Service", "LoadCredential"))
    # The paths are the ones systemd creates for the unit.
    assert doc["state_dir"] == "/var/lib/" + one(unit, "Service", "StateDirectory")
    socket_dir = Path(doc["listen"]["local_socket"]).parent
    assert socket_dir == Path("/run") / one(unit, "Service", "RuntimeDirectory")
    assert config.listen.local_socket == tmp_path / "run" / "local.sock"
    assert config.state_dir == tmp_path / "state"
    assert config.listen.metrics is not None
    assert config.listen.metrics.host == "127.0.0.1"
    # systemd must not kill the daemon while it drains.
    stop = seconds(one(unit, "Service", "TimeoutStopSec"))
    assert config.limits.drain_grace_seconds + IDLE_WAIT_SECONDS + 5 <= stop
    assert config.limits == type(config.limits)(), "the example's limits are the defaults"


# --- sysusers.d and tmpfiles.d --------------------------------------------------------------


def test_sysusers_dry_run(tmp_path: Path) -> None:
    done = run(
        "systemd-sysusers", "--dry-run", f"--root={tmp_path}", SYSTEMD / "sysusers.d/xbgw.conf"
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "Creating group 'xbgw'" in output
    assert "Creating user 'xbgw'" in output


def test_sysusers_and_tmpfiles_in_a_scratch_root(tmp_path: Path) -> None:
    root_dir = tmp_path / "root"
    (root_dir / "etc").mkdir(parents=True)
    done = run("systemd-sysusers", f"--root={root_dir}", SYSTEMD / "sysusers.d/xbgw.conf")
    assert done.returncode == 0, done.stdout + done.stderr
    passwd = (root_dir / "etc/passwd").read_text(encoding="utf-8")
    user = next(line.split(":") for line in passwd.splitlines() if line.startswith("xbgw:"))
    uid, gid, home = int(user[2]), int(user[3]), user[5]
    assert uid < 1000 and home == "/var/lib/xbgw"

    (root_dir / "etc/xbgw").mkdir(mode=0o755)
    (root_dir / "etc/xbgw/gateway.yaml").write_text("# example\n", encoding="utf-8")
    (root_dir / "etc/xbgw/hsm-pin").write_text("1234\n", encoding="utf-8")
    os.chmod(root_dir / "etc/xbgw/hsm-pin", 0o644)
    done = run(
        "systemd-tmpfiles", f"--root={root_dir}", "--create", SYSTEMD / "tmpfiles.d/xbgw.conf"
    )
    lines = (done.stdout + done.stderr).splitlines()
    if os.geteuid() != 0:  # an unprivileged run cannot chown; everything else must pass
        lines = [ln for ln in lines if not re.search(r"chown.*Operation not permitted", ln)]
    assert lines == [], "\n".join(lines)
    assert done.returncode == 0 or os.geteuid() != 0

    expected = {
        "etc/xbgw": (0o750, 0, gid),
        "etc/xbgw/gateway.yaml": (0o640, 0, gid),
        "etc/xbgw/hsm-pin": (0o600, 0, 0),
        "var/lib/xbgw": (0o700, uid, gid),
    }
    for relative, (mode, owner, group) in expected.items():
        st = (root_dir / relative).stat()
        assert stat.S_IMODE(st.st_mode) == mode, f"{relative}: {oct(st.st_mode)}"
        if os.geteuid() == 0:
            assert (st.st_uid, st.st_gid) == (owner, group), relative
    # The unit asks systemd for the same modes, so the two never fight over them.
    state_mode = one(SYSTEMD / SERVICE, "Service", "StateDirectoryMode")
    assert int(state_mode, 8) == expected["var/lib/xbgw"][0]
    config_mode = one(SYSTEMD / SERVICE, "Service", "ConfigurationDirectoryMode")
    assert int(config_mode, 8) == expected["etc/xbgw"][0]


# --- scripts/install ------------------------------------------------------------------------


def install(destdir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(ROOT / "scripts" / "install"), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "DESTDIR": str(destdir), **env},
        timeout=120,
        check=False,
    )


def test_install_into_destdir(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    done = install(dest, "--no-venv")
    assert done.returncode == 0, done.stderr
    assert "Next steps" in done.stdout and "systemctl enable --now xbgw" in done.stdout

    wrapper = dest / "usr/bin/xbgw"
    assert wrapper.stat().st_mode & 0o111
    assert 'exec /usr/lib/xbgw/bin/python -m gateway.cli "$@"' in wrapper.read_text()
    for name in UNITS:
        installed = dest / "usr/lib/systemd/system" / name
        assert installed.read_bytes() == (SYSTEMD / name).read_bytes(), name
    for kind in ("sysusers.d", "tmpfiles.d"):
        assert (dest / "usr/lib" / kind / "xbgw.conf").read_bytes() == (
            SYSTEMD / kind / "xbgw.conf"
        ).read_bytes()
    config = dest / CONFIG_PATH.lstrip("/")  # where the unit's ExecStart looks
    assert config.read_bytes() == (SYSTEMD / "gateway.yaml.example").read_bytes()
    assert stat.S_IMODE(config.stat().st_mode) == 0o640
    assert stat.S_IMODE((dest / "etc/xbgw").stat().st_mode) == 0o750
    assert (dest / "usr/share/doc/xbgw/gateway.yaml.example").is_file()
    assert not (dest / "usr/lib/xbgw").exists(), "--no-venv made a venv"

    # Reinstalling keeps an edited configuration.
    config.write_text("gateway: {id: edited}\n", encoding="utf-8")
    again = install(dest, XBGW_INSTALL_SKIP_VENV="1")
    assert again.returncode == 0, again.stderr
    assert "keeping the existing" in again.stdout
    assert config.read_text(encoding="utf-8") == "gateway: {id: edited}\n"


def test_install_with_another_prefix(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    done = install(dest, "--no-venv", PREFIX="/usr/local")
    assert done.returncode == 0, done.stderr
    wrapper = dest / "usr/local/bin/xbgw"
    assert "exec /usr/local/lib/xbgw/bin/python -m gateway.cli" in wrapper.read_text()
    units = dest / "etc/systemd/system"
    assert one(units / SERVICE, "Service", "ExecStart").startswith("/usr/local/bin/xbgw serve")
    assert all(
        line.startswith("/usr/local/bin/xbgw keys")
        for line in values(units / ROTATE, "Service", "ExecStart")
    )
    assert (dest / "etc/sysusers.d/xbgw.conf").is_file()
    assert (dest / "etc/tmpfiles.d/xbgw.conf").is_file()
    assert not (dest / "usr/lib").exists()
    # The rewritten units still verify.
    for name in UNITS:
        text = (units / name).read_text(encoding="utf-8")
        (units / name).write_text(
            text.replace("ExecStart=/usr/local/bin/xbgw ", f"ExecStart={sys.executable} "),
            encoding="utf-8",
        )
    for name in UNITS:
        checked = run("systemd-analyze", "verify", "--man=no", units / name, cwd=tmp_path)
        assert checked.stdout + checked.stderr == "", name


def test_install_refuses_a_relative_destdir(tmp_path: Path) -> None:
    done = subprocess.run(
        ["sh", str(ROOT / "scripts" / "install"), "--no-venv"],
        capture_output=True,
        text=True,
        env={**os.environ, "DESTDIR": "relative/dir"},
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0 and "DESTDIR must be an absolute path" in done.stderr
    assert not (tmp_path / "relative").exists()


# --- the daemon under the unit's seccomp policy ---------------------------------------------


SANDBOX = Path(__file__).with_name("unit_sandbox.py")
PROBE = """
import ctypes, mmap, os, socket
libc = ctypes.CDLL(None, use_errno=True)
page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
address = ctypes.addressof(ctypes.c_char.from_buffer(page))
results = {
    "mprotect-exec": libc.mprotect(ctypes.c_void_p(address), mmap.PAGESIZE, 0x5) == 0,
}
try:
    mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    results["mmap-wx"] = True
except OSError:
    results["mmap-wx"] = False
try:
    socket.socket(socket.AF_NETLINK, socket.SOCK_RAW).close()
    results["netlink"] = True
except OSError:
    results["netlink"] = False
try:
    os.setgroups([])
    results["setgroups"] = True
except OSError:
    results["setgroups"] = False
socket.socket(socket.AF_INET6, socket.SOCK_STREAM).close()
print(results)
"""


def test_unit_sandbox_is_in_force() -> None:
    """The emulated policy really refuses what the unit forbids (so the next test means it)."""
    done = subprocess.run(
        [sys.executable, str(SANDBOX), str(SYSTEMD / SERVICE), sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "SystemCallFilter" in done.stderr and "MemoryDenyWriteExecute" in done.stderr
    allowed = {"mprotect-exec": False, "mmap-wx": False, "netlink": False, "setgroups": False}
    assert done.stdout.strip() == repr(allowed)


def test_demo_runs_under_the_units_seccomp_policy(tmp_path: Path) -> None:
    """Two daemons (SoftHSM, mutual TLS, watchdog thread) and a transfer, all filtered."""
    env = {**os.environ, "WATCHDOG_USEC": "4000000", "GRPC_VERBOSITY": "ERROR"}
    env.pop("WATCHDOG_PID", None)
    command = [sys.executable, "-m", "devtools.demo", "--size", "2MiB", "--dir", str(tmp_path)]
    done = subprocess.run(
        [sys.executable, str(SANDBOX), str(SYSTEMD / SERVICE), *command],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=240,
        check=False,
    )
    logs = "".join(
        f"\n--- {log}\n{log.read_text(errors='replace')[-2000:]}"
        for log in sorted(tmp_path.glob("*/daemon.log"))
    )
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}{logs}"
    assert "matches what lingang sent" in done.stdout
    # Both daemons drained and exited 0 on SIGTERM, inside the filter too.
    assert re.findall(r"exited with (-?\d+)", done.stdout) == ["0", "0"], done.stdout

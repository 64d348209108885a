"""Run a command under the seccomp part of a systemd unit's sandbox, without systemd.

Usage: ``python tests/system/unit_sandbox.py UNIT_FILE COMMAND [ARG...]``

There is no systemd as PID 1 here, so ``systemctl start`` cannot show that the daemon works
inside the unit's sandbox. The settings most likely to break a Python daemon are the ones
systemd enforces with seccomp, and those this script installs itself, the way systemd does,
through libseccomp:

* ``SystemCallFilter=`` -- an allow list (always including ``@default``), later ``~`` lines
  removing from it; groups expanded with ``systemd-analyze syscall-filter``; a call outside
  it fails with ``SystemCallErrorNumber=`` (or kills the process when that is unset);
* ``MemoryDenyWriteExecute=yes`` -- refuses ``mmap`` of writable+executable memory,
  ``mprotect``/``pkey_mprotect`` adding execute, ``shmat`` with ``SHM_EXEC``;
* ``RestrictAddressFamilies=`` (allow list) -- ``socket()`` of any other family fails with
  ``EAFNOSUPPORT``.

Then it execs the command; the filters hold for it and every process it starts. File system,
user, namespace and capability settings are not emulated.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import subprocess
import sys
from pathlib import Path

SCMP_ACT_KILL_PROCESS = 0x80000000
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_EQ = 4
SCMP_CMP_MASKED_EQ = 7
PROT_WRITE, PROT_EXEC = 0x2, 0x4
SHM_EXEC = 0o100000
MAX_ADDRESS_FAMILY = 64  # above AF_MAX (46 on Linux 6.x)


def scmp_act_errno(number: int) -> int:
    return 0x00050000 | (number & 0xFFFF)


class _ArgCmp(ctypes.Structure):
    _fields_ = (
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    )


def unit_settings(path: Path) -> list[tuple[str, str]]:
    """``(key, value)`` of the ``[Service]`` section in order (repeated keys kept)."""
    settings: list[tuple[str, str]] = []
    section = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
        elif section == "Service" and "=" in line:
            key, value = line.split("=", 1)
            settings.append((key.strip(), value.strip()))
    return settings


def syscall_names(entry: str, seen: set[str] | None = None) -> set[str]:
    """A system call name, or every name in a ``@group`` (nested groups expanded)."""
    if not entry.startswith("@"):
        return {entry}
    seen = set() if seen is None else seen
    seen.add(entry)
    listing = subprocess.run(
        ["systemd-analyze", "syscall-filter", entry], capture_output=True, text=True, check=True
    ).stdout
    names: set[str] = set()
    for line in listing.splitlines()[1:]:
        item = line.strip()
        if not item or item.startswith("#") or item in seen:
            continue
        names |= syscall_names(item, seen)
    return names


def allowed_syscalls(settings: list[tuple[str, str]]) -> set[str] | None:
    """The allow list from ``SystemCallFilter=`` lines; None when the unit sets none."""
    allowed: set[str] | None = None
    for key, value in settings:
        if key != "SystemCallFilter":
            continue
        if not value:
            allowed = None
            continue
        deny = value.startswith("~")
        names = set().union(*(syscall_names(e) for e in value.lstrip("~").split()))
        if allowed is None:
            if deny:
                raise SystemExit("unit_sandbox: only allow-list SystemCallFilter= is emulated")
            allowed = syscall_names("@default")
        allowed = allowed - names if deny else allowed | names
    return allowed


def last(settings: list[tuple[str, str]], key: str) -> str | None:
    values = [value for k, value in settings if k == key]
    return values[-1] if values else None


class _Seccomp:
    """One libseccomp filter context."""

    lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = (ctypes.c_uint32,)
    lib.seccomp_syscall_resolve_name.argtypes = (ctypes.c_char_p,)
    lib.seccomp_rule_add_array.argtypes = (
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(_ArgCmp),
    )
    lib.seccomp_load.argtypes = (ctypes.c_void_p,)
    lib.seccomp_release.argtypes = (ctypes.c_void_p,)

    def __init__(self, default_action: int) -> None:
        self.ctx = self.lib.seccomp_init(default_action)
        if not self.ctx:
            raise OSError("seccomp_init failed")

    def rule(self, action: int, name: str, *compare: tuple[int, int, int, int]) -> bool:
        """Add a rule; compare: (argument, operator, datum a, datum b), all must hold.

        Returns False when this architecture has no such system call.
        """
        number = int(self.lib.seccomp_syscall_resolve_name(name.encode()))
        if number < 0:
            return False
        args = (_ArgCmp * len(compare))(*(_ArgCmp(*c) for c in compare))
        result = int(self.lib.seccomp_rule_add_array(self.ctx, action, number, len(compare), args))
        if result != 0:
            raise OSError(-result, f"seccomp_rule_add({name})")
        return True

    def load(self) -> None:
        result = int(self.lib.seccomp_load(self.ctx))
        self.lib.seccomp_release(self.ctx)
        if result != 0:
            raise OSError(-result, "seccomp_load")


def apply(unit: Path) -> str:
    """Install the unit's seccomp filters in this process; return what was applied."""
    settings = unit_settings(unit)
    applied = []
    if last(settings, "MemoryDenyWriteExecute") in {"yes", "true", "1", "on"}:
        mdwe = _Seccomp(SCMP_ACT_ALLOW)
        refuse = scmp_act_errno(errno.EPERM)
        wx = PROT_WRITE | PROT_EXEC  # (prot & mask) == value
        mdwe.rule(refuse, "mmap", (2, SCMP_CMP_MASKED_EQ, wx, wx))
        mdwe.rule(refuse, "mprotect", (2, SCMP_CMP_MASKED_EQ, PROT_EXEC, PROT_EXEC))
        mdwe.rule(refuse, "pkey_mprotect", (2, SCMP_CMP_MASKED_EQ, PROT_EXEC, PROT_EXEC))
        mdwe.rule(refuse, "shmat", (2, SCMP_CMP_MASKED_EQ, SHM_EXEC, SHM_EXEC))
        mdwe.load()
        applied.append("MemoryDenyWriteExecute")
    families_text = last(settings, "RestrictAddressFamilies")
    if families_text and not families_text.startswith("~"):
        families = {int(getattr(socket, name)) for name in families_text.split()}
        restrict = _Seccomp(SCMP_ACT_ALLOW)
        for family in range(MAX_ADDRESS_FAMILY):
            if family not in families:
                refuse = scmp_act_errno(errno.EAFNOSUPPORT)
                restrict.rule(refuse, "socket", (0, SCMP_CMP_EQ, family, 0))
        restrict.load()
        applied.append(f"RestrictAddressFamilies={families_text}")
    allowed = allowed_syscalls(settings)
    if allowed is not None:  # last: the seccomp() call itself is not on the list
        error = last(settings, "SystemCallErrorNumber")
        action = scmp_act_errno(getattr(errno, error)) if error else SCMP_ACT_KILL_PROCESS
        syscalls = _Seccomp(action)
        count = sum(syscalls.rule(SCMP_ACT_ALLOW, name) for name in sorted(allowed))
        syscalls.load()
        applied.append(f"SystemCallFilter ({count} calls; otherwise {error or 'kill'})")
    return ", ".join(applied)


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    applied = apply(Path(argv[0]))
    print(f"unit_sandbox: {applied or 'nothing to apply'}", file=sys.stderr, flush=True)
    os.execvp(argv[1], argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

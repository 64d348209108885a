"""The pair under fault: two real gateways, a proxy between them, a spool that can fill up.

* lingang (the sender) reaches frankfurt through a :class:`ResetProxy` (the system tests'
  :class:`~tests.system.faults.FaultProxy`, whose armed cut may be a TCP RST), so a reset
  lands at an exact byte offset;
* frankfurt's spool is a tmpfs of its own, so "disk full" is the file system refusing a
  write (ENOSPC), made by shrinking the tmpfs to what it holds and undone by growing it;
  everything else (ledger, audit log) stays on the real disk. Mounting needs root, which
  the runner has; the tmpfs is unmounted on the way out, whatever happened;
* an HSM is lost by moving its SoftHSM token's folder away and back (:meth:`FaultRig.hsm_lost`);
* :class:`RssWatch` follows the peak RSS (``VmHWM``) of every daemon process of the run,
  read once more just before a process is killed.

Both daemons are stopped by PID on the way out.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devtools.pair import Gateway, Pair, edit_config, provision_pair
from tests.system.faults import FaultProxy, privileged, tmpfs_options

#: Room left on the spool while it is "full": less than one segment, so the next write fails.
FULL_SLACK = 16 << 10
FILL_TRIES = 12
RSS_POLL = 0.2


class ResetProxy(FaultProxy):
    """A :class:`FaultProxy` whose armed cut may end the connections with a TCP RST."""

    def __init__(self, target: tuple[str, int]) -> None:
        self._rst = False
        super().__init__(target)

    def reset_after(self, n: int, rst: bool) -> None:
        """Cut every connection after ``n`` more upstream bytes, with RST or with FIN."""
        self._rst = rst
        self.cut_after(n)

    def cut_all(self, reset: bool = False) -> None:
        super().cut_all(reset or self._rst)

    def disarm(self) -> None:
        """Pass traffic again; a cut armed but not fired is dropped."""
        self._rst = False
        self.release()


class RssWatch:
    """Peak RSS of each gateway over every process it ran as during the run."""

    def __init__(self, gateways: tuple[Gateway, ...]) -> None:
        self._gateways = gateways
        self.peak_kib: dict[str, int] = {gateway.id: 0 for gateway in gateways}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="rss-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sample()

    def sample(self, only: Gateway | None = None) -> None:
        for gateway in self._gateways if only is None else (only,):
            process = gateway.process
            if process is None or process.poll() is not None:
                continue
            kib = _vm_hwm_kib(process.pid)
            with self._lock:
                self.peak_kib[gateway.id] = max(self.peak_kib[gateway.id], kib)

    def _poll(self) -> None:
        while not self._stop.wait(RSS_POLL):
            self.sample()


def _vm_hwm_kib(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0  # gone between the check and the read
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


class Tmpfs:
    """A tmpfs mounted at ``path`` whose size can be cut to what it holds (full) and back."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size
        self.mounted = False

    def mount(self) -> None:
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        _run("mount", "-t", "tmpfs", "-o", tmpfs_options(self.size), "tmpfs", str(self.path))
        self.mounted = True

    def used(self) -> int:
        stat = os.statvfs(self.path)
        return (stat.f_blocks - stat.f_bfree) * stat.f_frsize

    def fill(self) -> int:
        """Shrink to what is used plus a little (:data:`FULL_SLACK`); the new size.

        The kernel refuses a size below what is in use, and the receiver may write between
        our look and the remount: then look again, with more room.
        """
        slack = FULL_SLACK
        for attempt in range(FILL_TRIES):
            size = self.used() + slack
            if attempt == FILL_TRIES - 1:
                break
            with contextlib.suppress(RuntimeError):
                self._resize(size)
                return size
            if attempt >= FILL_TRIES // 2:  # writes keep outrunning us: leave more room
                slack *= 4
        self._resize(size)
        return size

    def restore(self) -> None:
        self._resize(self.size)

    def _resize(self, size: int) -> None:
        _run("mount", "-o", f"remount,size={size}", str(self.path))

    def unmount(self) -> None:
        if not self.mounted:
            return
        umount = privileged("umount", str(self.path))
        done = subprocess.run(umount, capture_output=True, check=False)
        if done.returncode != 0:  # still busy (a process we lost track of): detach it anyway
            _run("umount", "-l", str(self.path))
        self.mounted = False


def _run(*command: str) -> None:
    """A mount command, as root (see :func:`tests.system.faults.privileged`)."""
    done = subprocess.run(privileged(*command), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()}")


@dataclass
class FaultRig:
    pair: Pair
    proxy: ResetProxy
    spool: Tmpfs
    rss: RssWatch
    restarts: dict[str, int] = field(default_factory=lambda: {"lingang": 0, "frankfurt": 0})

    @property
    def lingang(self) -> Gateway:
        return self.pair.lingang

    @property
    def frankfurt(self) -> Gateway:
        return self.pair.frankfurt

    def kill(self, gateway: Gateway) -> None:
        """kill -9, its peak RSS read first; then started again on the same state and port."""
        self.rss.sample(gateway)
        gateway.kill()
        self.start(gateway)

    def stop(self, gateway: Gateway) -> None:
        self.rss.sample(gateway)
        gateway.stop()

    def start(self, gateway: Gateway) -> None:
        gateway.start()
        self.restarts[gateway.id] += 1

    def ensure_running(self) -> None:
        """Start whichever daemon is down (a fault that failed half-way left it so)."""
        for gateway in (self.frankfurt, self.lingang):
            if not gateway.is_running():
                self.start(gateway)

    def drain_notifications(self) -> None:
        """Read the notify sockets, so a daemon's sd_notify never finds the queue full."""
        for gateway in self.pair.gateways:
            if gateway.is_running():
                gateway.drain()

    @contextlib.contextmanager
    def hsm_lost(self, gateway: Gateway) -> Iterator[None]:
        """The gateway's SoftHSM token gone for the block, then back.

        SoftHSM keeps a token in a folder of its token directory; the folder is moved out
        and back, as ``tests/integration/test_hsm_recovery.py`` loses one. To the daemon this
        is an HSM pulled or out of reach: its objects cannot be found until it is back.
        """
        tokens, away = _token_dirs(gateway)
        away.mkdir(exist_ok=True)
        moved = []
        try:
            for folder in sorted(tokens.iterdir()):
                folder.rename(away / folder.name)
                moved.append(folder.name)
            yield
        finally:
            for name in moved:
                (away / name).rename(tokens / name)

    def logs(self, lines: int = 15) -> str:
        parts = []
        for gateway in self.pair.gateways:
            tail = gateway.log_text().strip().splitlines()[-lines:]
            parts.append(f"--- {gateway.id} log (last {len(tail)} lines) ---\n" + "\n".join(tail))
        return "\n".join(parts)


@contextlib.contextmanager
def fault_rig(root: Path, segment_size: int, spool_bytes: int) -> Iterator[FaultRig]:
    """Provision the pair under ``root``, put the proxy and the tmpfs in, start both."""

    def configure(gateway_id: str, data: dict[str, Any]) -> None:
        # An outage is a stop: let a stop drain for a moment, not the default 20 s.
        data["limits"]["drain_grace_seconds"] = 2

    pair = provision_pair(root, segment_size=segment_size, configure=configure)
    spool = Tmpfs(pair.frankfurt.paths.state_dir / "spool", spool_bytes)
    proxy = ResetProxy(("127.0.0.1", pair.port("frankfurt")))
    with contextlib.closing(proxy):

        def via_proxy(data: dict[str, Any]) -> None:
            partner = next(p for p in data["partners"] if p["id"] == "frankfurt")
            partner["endpoint"] = proxy.endpoint

        edit_config(pair.lingang.paths.config, via_proxy)
        rss = RssWatch(pair.gateways)
        try:
            spool.mount()
            with pair.running():
                rss.start()
                rig = FaultRig(pair, proxy, spool, rss)
                try:
                    yield rig
                finally:
                    rss.stop()
        finally:
            with contextlib.suppress(OSError):  # a fault that failed half-way
                _restore(pair, spool)
            spool.unmount()


def _token_dirs(gateway: Gateway) -> tuple[Path, Path]:
    """SoftHSM's token directory of the gateway, and where a lost token's folder waits."""
    tokens = gateway.paths.softhsm_conf.parent / "tokens"
    return tokens, tokens.with_name("tokens-lost")


def _restore(pair: Pair, spool: Tmpfs) -> None:
    """Undo what a fault that failed half-way may have left: a token away, a full spool."""
    for gateway in pair.gateways:
        tokens, away = _token_dirs(gateway)
        for folder in sorted(away.iterdir()) if away.exists() else []:
            folder.rename(tokens / folder.name)
    if spool.mounted:
        with contextlib.suppress(RuntimeError):
            spool.restore()

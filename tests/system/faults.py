"""Fault injection for system tests: a loopback TCP proxy that can cut or hold a stream.

The sending gateway's partner endpoint is pointed at :class:`FaultProxy`, which forwards
every connection to the receiving gateway. Bytes are counted in the upstream direction
(sender to receiver, where the segments flow), so a test can say exactly where a fault lands:

* :meth:`FaultProxy.cut_after` -- after ``n`` more upstream bytes, close every connection
  (both sides see the TCP connection end, as when a link drops); then pass traffic again;
* :meth:`FaultProxy.hold_after` -- after ``n`` more upstream bytes, stop forwarding upstream
  (the bytes read meanwhile are kept) until :meth:`FaultProxy.release`. The receiver then
  sits mid-stream for as long as the test needs, so a daemon can be killed there without a
  race. If either end closes while held, the connection is closed on both sides, as a
  router passes on a FIN or a reset;
* :meth:`FaultProxy.cut_every` -- a flaky link: reset every connection (TCP RST) each time
  another ``n`` upstream bytes have gone through, until :meth:`FaultProxy.release`;
  :attr:`FaultProxy.cuts` counts the resets;
* :meth:`FaultProxy.black_hole` -- a silent black hole: from now on nothing is forwarded in
  either direction and nothing is closed (what is read is dropped, as a dead route drops
  packets), until :meth:`FaultProxy.release` (which resets the connections caught in it).
  Only keepalive can tell the ends apart from a quiet peer.

The proxy knows nothing of TLS or gRPC: it never reads what it forwards, so mutual TLS is
verified end to end between the two gateways.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
from dataclasses import dataclass, field

_PASS, _CUT, _HOLD, _EVERY, _BLACK_HOLE = "pass", "cut", "hold", "every", "black hole"
_HOLE_AFTER = "black hole after"
_BUFFER = 1 << 16


@dataclass
class _Link:
    client: socket.socket
    server: socket.socket
    lock: threading.Lock = field(default_factory=threading.Lock)
    held: bytearray = field(default_factory=bytearray)
    closed: bool = False
    _closing: threading.Lock = field(default_factory=threading.Lock)

    def close(self, reset: bool = False) -> None:
        """Close both sides: FIN after what was forwarded, or with ``reset`` a TCP RST.

        The first close decides (the pumps' own close on their way out changes nothing).
        """
        with self._closing:
            if self.closed:
                return
            self.closed = True
        for sock in (self.client, self.server):
            with contextlib.suppress(OSError):
                if reset:  # linger 0: the last close sends RST instead of FIN
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                # Wake the pump blocked in recv() (close() alone does not); SHUT_RD sends
                # nothing, so a reset stays a reset.
                sock.shutdown(socket.SHUT_RD if reset else socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()


class FaultProxy:
    """Forward ``127.0.0.1:<port>`` to ``target``; inject faults on request."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._lock = threading.Lock()
        self._links: list[_Link] = []
        self._threads: list[threading.Thread] = []
        self._mode = _PASS
        self._budget = 0
        self._tripped = threading.Event()
        self._upstream = 0
        self._connections = 0
        self._period = 0  # cut_every's n
        self._cuts = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._closing = False
        self._acceptor = threading.Thread(target=self._accept, name="fault-proxy", daemon=True)
        self._acceptor.start()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def upstream_bytes(self) -> int:
        """Bytes forwarded from the sender to the receiver since the proxy started."""
        with self._lock:
            return self._upstream

    @property
    def connections(self) -> int:
        """Connections accepted since the proxy started."""
        with self._lock:
            return self._connections

    @property
    def cuts(self) -> int:
        """Resets made by :meth:`cut_every` since the proxy started."""
        with self._lock:
            return self._cuts

    # -- faults ----------------------------------------------------------------------------

    def cut_after(self, n: int) -> None:
        """Close every connection once ``n`` more upstream bytes have been forwarded."""
        self._arm(_CUT, n)

    def hold_after(self, n: int) -> None:
        """Stop forwarding upstream once ``n`` more bytes have gone through."""
        self._arm(_HOLD, n)

    def cut_every(self, n: int) -> None:
        """Reset every connection each time ``n`` more upstream bytes have been forwarded
        (counted across connections: a new connection gets what the last one left of ``n``)."""
        if n <= 0:
            raise ValueError("cut_every needs a positive byte count")
        with self._lock:
            self._period = n
        self._arm(_EVERY, n)

    def black_hole(self) -> None:
        """Stop forwarding both ways now, silently: no FIN, no RST, bytes read are dropped."""
        self._arm(_BLACK_HOLE, 0)
        self._tripped.set()

    def black_hole_after(self, n: int) -> None:
        """:meth:`black_hole` once ``n`` more upstream bytes have been forwarded: the fault
        lands at an exact byte, however fast the sender is."""
        self._arm(_HOLE_AFTER, n)

    def _arm(self, mode: str, n: int) -> None:
        with self._lock:
            self._mode, self._budget = mode, n
            self._tripped.clear()

    def wait_tripped(self, timeout: float) -> None:
        """Block until the armed fault has fired; ``TimeoutError`` if it does not in time."""
        if not self._tripped.wait(timeout):
            raise TimeoutError(
                f"the proxy's {self._mode} fault did not fire within {timeout}s "
                f"({self.upstream_bytes} upstream bytes so far)"
            )

    @property
    def tripped(self) -> bool:
        return self._tripped.is_set()

    def release(self) -> None:
        """End a hold (or disarm a fault): forward what was held and pass traffic again.
        Connections caught in a black hole are reset: what it dropped cannot be replayed."""
        with self._lock:
            was, self._mode = self._mode, _PASS
            links = list(self._links)
        if was == _BLACK_HOLE:
            self.cut_all(reset=True)
            return
        for link in links:
            with link.lock:
                if link.held and not link.closed:
                    with contextlib.suppress(OSError):
                        link.server.sendall(link.held)
                    with self._lock:
                        self._upstream += len(link.held)
                link.held.clear()

    def cut_all(self, reset: bool = False) -> None:
        """Close every open connection now, both sides; ``reset``: with a TCP RST, as a
        firewall or NAT box that drops its state does, rather than a FIN."""
        with self._lock:
            links, self._links = self._links, []
        for link in links:
            link.close(reset)

    def close(self) -> None:
        """Stop accepting, close every connection, join every thread."""
        self._closing = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(); close doesn't
        self._listener.close()
        self.cut_all()
        self._acceptor.join(5)
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(5)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- forwarding ------------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=10)
                server.settimeout(None)
            except OSError:
                client.close()  # receiver down: the sender sees a refused/closed connection
                continue
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            link = _Link(client, server)
            up = threading.Thread(target=self._upstream_pump, args=(link,), daemon=True)
            down = threading.Thread(target=self._downstream_pump, args=(link,), daemon=True)
            with self._lock:
                self._links.append(link)
                self._connections += 1
                self._threads = [t for t in self._threads if t.is_alive()]
                self._threads += [up, down]
            up.start()
            down.start()

    def _end(self, link: _Link) -> None:
        with self._lock:
            if link in self._links:
                self._links.remove(link)
        link.close()

    def _downstream_pump(self, link: _Link) -> None:
        try:
            while data := link.server.recv(_BUFFER):
                with self._lock:
                    dropped = self._mode == _BLACK_HOLE
                if not dropped:
                    link.client.sendall(data)
        except OSError:
            pass
        finally:
            self._end(link)

    def _upstream_pump(self, link: _Link) -> None:
        try:
            while data := link.client.recv(_BUFFER):
                if not self._forward_upstream(link, data):
                    return
        except OSError:
            pass
        finally:
            self._end(link)

    def _forward_upstream(self, link: _Link, data: bytes) -> bool:
        """Forward, hold or cut per the armed fault; False once this link must end."""
        with link.lock:
            with self._lock:
                now, later, cut = data, b"", False
                if self._mode == _BLACK_HOLE:
                    return True  # dropped: the receiver hears nothing, the sender no reset
                reset = self._mode == _EVERY
                if reset:
                    now, cut = self._every(data)
                elif self._mode == _HOLD and self._tripped.is_set():
                    now, later = b"", data
                elif self._mode in (_CUT, _HOLD, _HOLE_AFTER):
                    if len(data) >= self._budget:
                        now, later = data[: self._budget], data[self._budget :]
                        self._tripped.set()
                        if self._mode == _CUT:
                            cut, later, self._mode = True, b"", _PASS
                        elif self._mode == _HOLE_AFTER:  # the rest falls into the hole
                            later, self._mode = b"", _BLACK_HOLE
                    self._budget -= len(now)
                flush = self._mode == _PASS and bool(link.held)
                self._upstream += len(now) + (len(link.held) if flush else 0)
            if flush:
                link.server.sendall(link.held)
                link.held.clear()
            if now:
                link.server.sendall(now)
            link.held += later
        if cut:
            self.cut_all(reset=reset)
            return False
        return True

    def _every(self, data: bytes) -> tuple[bytes, bool]:
        """cut_every (under ``self._lock``): what of ``data`` goes through, and whether the
        period ends with it (then the budget starts again for the next connection)."""
        if len(data) < self._budget:
            self._budget -= len(data)
            return data, False
        now = data[: self._budget]
        self._budget = self._period
        self._cuts += 1
        self._tripped.set()
        return now, True


# -- full disks --------------------------------------------------------------------------------


def privileged(*command: str) -> list[str]:
    """``command`` as root: itself when the tests run as root, else through ``sudo -n`` (CI
    machines that install packages with sudo). Mounting a small tmpfs is how a test fills a
    disk for real; without root or password-less sudo it fails with the reason."""
    if os.geteuid() == 0:
        return list(command)
    return ["sudo", "-n", *command]


def tmpfs_options(size: int) -> str:
    """A tmpfs of ``size`` bytes owned by the test's user (the daemons it starts write there)
    and closed to everyone else."""
    return f"size={size},mode=0700,uid={os.getuid()},gid={os.getgid()}"

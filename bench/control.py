"""The control: what plain gRPC does with the same bytes, certificates, chunks and limits.

The server only counts bytes. It runs in its own process, started with the ``spawn`` method
(neither gRPC nor PKCS#11 survives a ``fork()`` after initialisation), just
as the receiving daemon is its own process. It presents the receiving gateway's stand-in
certificate (same name, same CA and key type: the gateway's own key is wrapped by its HSM)
and requires a client certificate issued by the demo CA; the client (in the harness process)
presents the sending gateway's stand-in, verifies the server against the demo CA with the
target name overridden to the receiving gateway's id, and uses the gateway's message limits.
The methods are generic handlers with raw ``bytes`` messages: no protobuf framing at all,
which is the floor the gateway's ``Segment`` messages are compared against; a unary call of a
small transfer's size is the floor of the gateway's one partner call per small transfer.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

if TYPE_CHECKING:
    from devtools.pair import Pair

SERVICE = "xbgw.bench.Control"
UPLOAD = f"/{SERVICE}/Upload"
ECHO = f"/{SERVICE}/Echo"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of one end: its certificate and key, and the CA it trusts."""

    certificate: Path
    private_key: Path
    ca: Path


def stand_ins(pair: Pair) -> tuple[TlsFiles, TlsFiles]:
    """(client, server) files of the control: the sending and receiving gateways' stand-ins.

    The gateways' own keys are wrapped by their HSMs: the control uses their stand-ins (same
    names, same CA, same key type), so its handshakes are the gateways' in all but key."""
    return (
        TlsFiles(*pair.lingang.paths.stand_in(), pair.ca_path()),
        TlsFiles(*pair.frankfurt.paths.stand_in(), pair.ca_path()),
    )


@dataclass(frozen=True)
class UploadResult:
    seconds: float
    bytes: int

    @property
    def mbps(self) -> float:
        return self.bytes / self.seconds / 1e6


def _options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]


# --- the server (child process) -------------------------------------------------------------


def _count(request_iterator: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
    total = 0
    for chunk in request_iterator:
        total += len(chunk)
    return total.to_bytes(8, "big")


def _length(request: bytes, context: grpc.ServicerContext) -> bytes:
    return len(request).to_bytes(8, "big")


def _serve(
    certificate: str, private_key: str, ca: str, max_message_bytes: int, conn: Connection
) -> None:
    """Child-process entry point: serve on an ephemeral loopback port, send the port back."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="control"),
        options=_options(max_message_bytes),
    )
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE,
                {
                    "Upload": grpc.stream_unary_rpc_method_handler(_count),
                    "Echo": grpc.unary_unary_rpc_method_handler(_length),
                },
            ),
        )
    )
    credentials = grpc.ssl_server_credentials(
        [(Path(private_key).read_bytes(), Path(certificate).read_bytes())],
        root_certificates=Path(ca).read_bytes(),
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    conn.send(port)
    conn.close()
    server.wait_for_termination()


class ControlServer:
    """The counting server as a ``spawn`` child process; stopped by its PID."""

    def __init__(self, tls: TlsFiles, max_message_bytes: int) -> None:
        self.tls = tls
        self.max_message_bytes = max_message_bytes
        self.port = 0
        self._process: multiprocessing.process.BaseProcess | None = None

    @property
    def pid(self) -> int:
        assert self._process is not None and self._process.pid is not None
        return self._process.pid

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe(duplex=False)
        self._process = context.Process(
            target=_serve,
            args=(
                str(self.tls.certificate),
                str(self.tls.private_key),
                str(self.tls.ca),
                self.max_message_bytes,
                child,
            ),
            name="xbgw-bench-control",
            daemon=True,
        )
        self._process.start()
        child.close()
        try:
            if not parent.poll(START_TIMEOUT):
                raise TimeoutError(f"control server did not report its port in {START_TIMEOUT}s")
            self.port = int(parent.recv())
        except EOFError:
            raise RuntimeError(
                f"control server exited with {self._process.exitcode} before listening"
            ) from None
        finally:
            parent.close()

    def stop(self) -> None:
        """SIGTERM by PID, then SIGKILL if it lingers."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.is_alive():
            process.terminate()
            process.join(STOP_TIMEOUT)
            if process.is_alive():
                process.kill()
                process.join(STOP_TIMEOUT)
        process.close()


# --- the client (harness process) -----------------------------------------------------------


class ControlClient:
    """One mutual-TLS channel to the control server, connected (handshake done) up front."""

    def __init__(
        self,
        address: str,
        tls: TlsFiles,
        server_name: str,
        max_message_bytes: int,
        *,
        own_connection: bool = False,
    ) -> None:
        """``own_connection``: a TCP connection of this client's own. Channels of one process
        with equal arguments share one connection (gRPC's global subchannel pool); a local
        subchannel pool keeps this one apart, as the long-link bench's N connections need."""
        credentials = grpc.ssl_channel_credentials(
            root_certificates=tls.ca.read_bytes(),
            private_key=tls.private_key.read_bytes(),
            certificate_chain=tls.certificate.read_bytes(),
        )
        self._channel = grpc.secure_channel(
            address,
            credentials,
            options=[
                ("grpc.ssl_target_name_override", server_name),
                *_options(max_message_bytes),
                *([("grpc.use_local_subchannel_pool", 1)] if own_connection else []),
            ],
        )
        self._upload = self._channel.stream_unary(UPLOAD, None, None)  # raw bytes
        self._echo = self._channel.unary_unary(ECHO, None, None)
        # A one-chunk call so the TLS handshake is not part of any timed upload.
        received = self._upload(iter([b"\0" * 1024]), timeout=START_TIMEOUT)
        if int.from_bytes(received, "big") != 1024:
            raise RuntimeError("control server miscounted the warm-up upload")

    def upload(self, path: Path, size: int, chunk_size: int) -> UploadResult:
        """Stream the first ``size`` bytes of ``path`` in ``chunk_size`` messages; time it."""

        def chunks() -> Iterator[bytes]:
            left = size
            with path.open("rb") as src:
                while left > 0:
                    block = src.read(min(chunk_size, left))
                    if not block:
                        raise RuntimeError(f"{path} is shorter than {size} bytes")
                    left -= len(block)
                    yield block

        return self.upload_chunks(chunks(), size)

    def upload_chunks(self, chunks: Iterator[bytes], size: int) -> UploadResult:
        """One upload of ``chunks`` (``size`` bytes in all); timed, and checked by the count."""
        started = time.perf_counter()
        received = self._upload(chunks)
        seconds = time.perf_counter() - started
        counted = int.from_bytes(received, "big")
        if counted != size:
            raise RuntimeError(f"control server counted {counted} bytes, {size} were sent")
        return UploadResult(seconds, counted)

    def call(self, data: bytes) -> None:
        """One unary call carrying ``data``; the server answers with its length (checked)."""
        answered = int.from_bytes(self._echo(data, timeout=START_TIMEOUT), "big")
        if answered != len(data):
            raise RuntimeError(f"control server counted {answered} bytes, {len(data)} were sent")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._channel.close()

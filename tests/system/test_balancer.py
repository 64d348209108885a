"""HAProxy in front of the nodes of one gateway, with gRPC health checks: real parts.

What ships (``deploy/haproxy/xbgw.cfg``, the systemd drop-ins) is checked by the tools that
read it (``haproxy -c``, ``systemd-analyze verify``), and the check's bytes are rebuilt here
from HTTP/2 and gRPC. Then a real HAProxy -- with the shipped check lines, as
:mod:`devtools.haproxy` takes them -- balances over frankfurt's two real nodes
(:mod:`tests.system.multinode`, ``balancer=True``), each serving ``listen.health``:

* both nodes UP; node B's HSM taken away turns its health NOT_SERVING and HAProxy takes it
  DOWN because of that answer (a layer-7 "did not match", not a failed connection); back UP
  once the HSM returns;
* a transfer lingang -> frankfurt through HAProxy arrives byte-identical.

A node killed mid-transfer and resumed through HAProxy on the other is
``test_multinode.py``'s kill test, which runs on this rig too.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devtools.haproxy import (
    SHIPPED,
    Haproxy,
    Node,
    answer_frame,
    check_request,
    haproxy_program,
    shipped_check_block,
)
from devtools.pair import Gateway
from gateway._proto.xbgw.v1 import partner_pb2
from gateway.config import load_config
from gateway.errors import ConfigError
from tests.postgres import Cluster, postgres  # noqa: F401
from tests.system.multinode import MultiNode, running_multinode

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "haproxy"
NODE_DROPIN = ROOT / "systemd" / "xbgw.service.d" / "node.conf.example"
HAPROXY_DROPIN = DEPLOY / "haproxy.service.d" / "xbgw.conf"
HAPROXY_UNIT = Path("/lib/systemd/system/haproxy.service")
SEGMENT = 4096
DEADLINE = 30.0
HSM_DEADLINE = 20.0  # the daemon pings its HSM every 5 s (HSM_CHECK_SECONDS)
XBGW = [sys.executable, "-m", "gateway.cli"]
TOOL_ENV = {**os.environ, "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": "", "SYSTEMD_LOG_COLOR": "0"}


# -- what ships -------------------------------------------------------------------------------


def test_the_shipped_config_is_valid() -> None:
    done = subprocess.run(
        [haproxy_program(), "-c", "-f", str(DEPLOY / "xbgw.cfg")],
        check=False,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Configuration file is valid" in done.stdout + done.stderr


def test_the_check_sends_a_grpc_health_call_and_passes_only_serving() -> None:
    """The hex in the shipped check is an HTTP/2 Health/Check call with an empty request;
    the first expect waits for the answer's DATA frame whatever its status, the second
    passes SERVING only."""
    block = shipped_check_block()
    sent = re.search(r"tcp-check send-binary ([0-9a-f]+)", block)
    assert sent is not None and bytes.fromhex(sent.group(1)) == check_request()
    request = check_request()
    assert request.startswith(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    assert b"/grpc.health.v1.Health/Check" in request and b"application/grpc" in request
    assert request.endswith(bytes.fromhex("0000050001000000010000000000"))
    waits = re.search(r'tcp-check expect rbinary "([^"]+)"', block)
    passes = re.search(r"tcp-check expect min-recv 1 binary ([0-9a-f]+)", block)
    assert waits is not None and passes is not None
    serving, not_serving = answer_frame(1).hex(), answer_frame(2).hex()
    assert re.fullmatch(waits.group(1), serving) and re.fullmatch(waits.group(1), not_serving)
    assert passes.group(1) == serving != not_serving


def test_the_rig_checks_with_the_shipped_lines(tmp_path: Path) -> None:
    block = shipped_check_block()
    assert SHIPPED.read_text(encoding="utf-8").count(block) == 1
    assert "balance leastconn" in block and "option tcp-check" in block
    rig = Haproxy(tmp_path, [Node("a", ("127.0.0.1", 1), ("127.0.0.1", 2))])
    assert block in rig.config.read_text(encoding="utf-8")
    rig.check_config()


def _verify(unit: Path, cwd: Path) -> str:
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        check=False,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=TOOL_ENV,
    )
    return (done.stdout + done.stderr).strip() + ("" if done.returncode == 0 else " (failed)")


def _stage(unit: Path, dropin: Path, target: Path, programs: dict[str, str]) -> Path:
    """``unit`` and ``dropin`` (as ``<unit>.d/``) under ``target``, with the programs they
    run rewritten to ones that exist (verify requires that)."""
    text = unit.read_text(encoding="utf-8")
    for program, stand_in in programs.items():
        text = text.replace(program, stand_in)
    staged = target / unit.name
    staged.write_text(text, encoding="utf-8")
    (target / f"{unit.name}.d").mkdir()
    shutil.copy(dropin, target / f"{unit.name}.d" / "xbgw.conf")
    return staged


@pytest.mark.parametrize("which", ["node", "haproxy"])
def test_the_drop_ins_verify(which: str, tmp_path: Path) -> None:
    """``systemd-analyze verify`` prints nothing for each unit with its drop-in; a mistake in
    the drop-in is reported (the drop-in is really read)."""
    if which == "node":
        unit, dropin, programs = ROOT / "systemd" / "xbgw.service", NODE_DROPIN, {}
        programs = {"/usr/bin/xbgw": sys.executable}
    else:
        unit, dropin, programs = HAPROXY_UNIT, HAPROXY_DROPIN, {}
    staged = _stage(unit, dropin, tmp_path, programs)
    assert _verify(staged, tmp_path) == ""
    with (tmp_path / f"{unit.name}.d" / "xbgw.conf").open("a", encoding="utf-8") as extra:
        extra.write("[Service]\nNoSuchDirective=1\n")
    assert "NoSuchDirective" in _verify(staged, tmp_path)


# -- through a real HAProxy -------------------------------------------------------------------


@pytest.fixture(scope="module")
def rig(
    tmp_path_factory: pytest.TempPathFactory,
    postgres: Cluster,  # noqa: F811
) -> Iterator[MultiNode]:
    root = tmp_path_factory.mktemp("balancer")
    with running_multinode(
        root, postgres.database("balancer"), segment_size=SEGMENT, balancer=True
    ) as rig:
        yield rig


def _balancer(rig: MultiNode) -> Haproxy:
    assert rig.balancer is not None
    return rig.balancer


def _health_address(node: Gateway) -> str:
    health = load_config(node.paths.config).listen.health
    assert health is not None
    return str(health)


def _health(node: Gateway) -> str:
    with grpc.insecure_channel(_health_address(node)) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))


def test_the_health_listener_serves_health_check_only(rig: MultiNode) -> None:
    """Plaintext, Check only: Watch and every other service are refused; ``xbgw status``
    lists it."""
    node = rig.b
    assert _health(node) == "SERVING"
    with grpc.insecure_channel(_health_address(node)) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(), timeout=5
        )
        with pytest.raises(grpc.RpcError) as refused:
            next(iter(watch))
        assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert "Check only" in str(refused.value.details())
        service = partner_pb2.DESCRIPTOR.services_by_name["PartnerGateway"].full_name
        key_set = channel.unary_unary(
            f"/{service}/KeySet", request_serializer=None, response_deserializer=None
        )
        with pytest.raises(grpc.RpcError) as other:
            key_set(b"", timeout=5)
        assert other.value.code() == grpc.StatusCode.UNIMPLEMENTED
    status = node.cli("status")
    assert status.returncode == 0, status.stderr
    assert re.search(rf"health\s+{re.escape(_health_address(node))}", status.stdout), status.stdout


def test_a_node_not_serving_is_taken_down_and_back_up(rig: MultiNode) -> None:
    """Node B's HSM taken away (its token directory's path): its health answers NOT_SERVING
    and HAProxy takes it DOWN on that answer; the HSM back, B is UP again."""
    balancer = _balancer(rig)
    for name in ("a", "b"):
        balancer.wait_state(name, "UP", DEADLINE)
        assert balancer.check(name).startswith("L7OK"), balancer.check(name)
    tokens = rig.b.paths.softhsm_conf.parent / "tokens"
    away = tokens.with_name("tokens-away")
    tokens.rename(away)
    try:
        balancer.wait_state("b", "DOWN", HSM_DEADLINE)
        # The check connected and got an answer that is not SERVING: the answer decided.
        assert balancer.check("b").startswith("L7RSP"), balancer.check("b")
        assert "SERVING" in balancer.check("b")
        assert _health(rig.b) == "NOT_SERVING"
        assert balancer.state("a") == "UP"
    finally:
        away.rename(tokens)
    balancer.wait_state("b", "UP", HSM_DEADLINE)
    assert _health(rig.b) == "SERVING"
    assert balancer.check("b").startswith("L7OK"), balancer.check("b")


def test_a_transfer_through_haproxy_arrives_byte_identical(rig: MultiNode, tmp_path: Path) -> None:
    balancer = _balancer(rig)
    for name in ("a", "b"):
        balancer.wait_state(name, "UP", DEADLINE)
    data = os.urandom(300_000)
    source = tmp_path / "data.bin"
    source.write_bytes(data)
    transfer_id = f"dpo_balanced-{uuid.uuid4().hex[:12]}"
    token = rig.pair.passport(byte_limit=1 << 20, jti=transfer_id)
    sent = subprocess.run(
        [*XBGW, "send", str(source), "--to", rig.a.id, "--passport", token, "--wait", "30"],
        check=False,
        capture_output=True,
        text=True,
        env=rig.lingang.cli_env(),
        timeout=60,
    )
    assert sent.returncode == 0, sent.stderr + rig.logs()
    assert rig.query("SELECT state FROM inbound WHERE transfer_id = %s", (transfer_id,)) == [
        ("committed",)
    ]
    # Lingang's connections to frankfurt go through HAProxy (its proxy forwards only there).
    assert rig.proxy.connections > 0 and sum(balancer.connections().values()) > 0
    for node in rig.nodes:  # one ledger and spool: either node serves it
        target = tmp_path / f"fetched-{rig.balanced_name(node)}.bin"
        fetched = node.cli("fetch", transfer_id, "-o", str(target))
        assert fetched.returncode == 0, fetched.stderr
        assert hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(data).digest()


def test_the_example_node_config_documents_the_health_listener() -> None:
    """gateway.yaml.example shows listen.health (commented out: one node needs none), and
    the line loads when uncommented."""
    example = (ROOT / "systemd" / "gateway.yaml.example").read_text(encoding="utf-8")
    line = next(row for row in example.splitlines() if "health:" in row and "#" in row)
    value = yaml.safe_load(line.replace("#", "", 1).split("#")[0])
    assert isinstance(value, dict) and re.fullmatch(r"[0-9.]+:\d+", str(value["health"]))


def test_a_bad_health_address_is_refused_by_name(rig: MultiNode) -> None:
    """Node B's config with listen.health a bare port: refused, naming the key (next to
    the original, so that its relative paths still resolve)."""
    config = rig.b.paths.config.with_name("bad-health.yaml")
    data = yaml.safe_load(rig.b.paths.config.read_text(encoding="utf-8"))
    data["listen"]["health"] = "7444"
    config.write_text(yaml.safe_dump(data), encoding="utf-8")
    try:
        with pytest.raises(ConfigError) as refused:
            load_config(config)
    finally:
        config.unlink()
    assert str(refused.value).splitlines() == [
        f"{config}: listen.health: expected host:port, got '7444'"
    ]

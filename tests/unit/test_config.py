"""gateway.config: a valid file loads into typed values; every mistake is reported at once.

Each test writes a real config tree (certificates, PEM keys, a fake PKCS#11 module file, a
PIN file) under ``tmp_path`` and loads it from there as ``gateway.yaml``, so messages read
exactly as an operator would see them.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import os
import socket
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway import files, tlskey
from gateway.config import (
    MAX_YAML_DEPTH,
    Address,
    GatewayConfig,
    Identity,
    Limits,
    LogConfig,
    load_config,
)
from gateway.errors import ConfigError
from gateway.keys import KeyRef, Purpose
from gateway.secrets import PinSource
from tests.unit.test_files import within_deadline

PIN = "836201"  # must never show up in a message
DELETE = object()


def _public_pem(curve: ec.EllipticCurve) -> bytes:
    key = ec.generate_private_key(curve).public_key()
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.fixture(scope="module")
def material() -> dict[str, bytes]:
    """File contents of a config tree, made once per module (key generation is not free)."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "demo-ca")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(ca_key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    return {
        "tls/lingang.crt": cert.public_bytes(serialization.Encoding.PEM),
        "tls/demo-ca.crt": cert.public_bytes(serialization.Encoding.PEM),
        "tls/lingang.key": ca_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        "keys/frankfurt-signing.pem": _public_pem(ec.SECP256R1()),
        "keys/paris-signing.pem": _public_pem(ec.SECP256R1()),
        "keys/issuer.pem": _public_pem(ec.SECP256R1()),
        "keys/p384.pem": _public_pem(ec.SECP384R1()),
        "hsm/libsofthsm2.so": b"\x7fELF not really a library",
        "hsm/softhsm2.conf": b"directories.tokendir = /tmp/tokens\n",
        "secrets/pin": f"{PIN}\n".encode(),
    }


def full_config() -> dict[str, Any]:
    return {
        "gateway": {
            "id": "lingang",
            "jurisdiction": "CN-SH",
            "description": "Lingang Special Area, Shanghai",
        },
        "listen": {
            "partner": "127.0.0.1:7443",
            "local_socket": "/run/xbgw/local.sock",
            "metrics": "[::1]:9464",
        },
        "tls": {
            "certificate": "tls/lingang.crt",
            "private_key": "tls/lingang.key",
            "private_key_passphrase": {"env": "XBGW_TLS_PASSPHRASE"},
        },
        "hsm": {
            "module": "hsm/libsofthsm2.so",
            "token": "lingang",
            "pin": {"file": "secrets/pin"},
            "softhsm_conf": "hsm/softhsm2.conf",
            "keys": {"transport": 2, "signing": 1},
        },
        "partners": [
            {
                "id": "frankfurt",
                "endpoint": "127.0.0.1:7444",
                "jurisdiction": "EU-DE",
                "ca": "tls/demo-ca.crt",
                "signing_key": "keys/frankfurt-signing.pem",
                "max_transfer_bytes": 10737418240,
            },
            {
                "id": "paris",
                "endpoint": "gw.paris.example:7445",
                "jurisdiction": "EU-FR",
                "ca": "tls/demo-ca.crt",
                "identity": "spiffe://paris.example/xbgw",
                "signing_key": "keys/paris-signing.pem",
            },
        ],
        "issuers": [{"kid": "lingang-dpo/signing/1", "public_key": "keys/issuer.pem"}],
        "state_dir": "/var/lib/xbgw",
        "limits": {"segment_size": 65536, "drain_grace_seconds": 5},
        "log": {"level": "debug", "format": "json"},
    }


def edit(doc: dict[str, Any], dotted: str, value: object) -> None:
    """Set (or with DELETE remove) ``a.b.0.c`` in ``doc``; missing mappings are created."""
    *parents, last = dotted.split(".")
    node: Any = doc
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    if value is DELETE:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


@pytest.fixture
def tree(tmp_path: Path, material: dict[str, bytes], monkeypatch: pytest.MonkeyPatch) -> Path:
    """A config directory, also the working directory so the file's label is gateway.yaml."""
    for name, data in material.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(tree: Path, doc: object) -> Path:
    path = tree / "gateway.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def problems(path: str | Path = "gateway.yaml") -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


# --- valid files ----------------------------------------------------------------------------


def test_full_config_loads_with_paths_resolved(tree: Path, material: dict[str, bytes]) -> None:
    write(tree, full_config())
    cfg = load_config(tree / "gateway.yaml")

    assert cfg.path == tree / "gateway.yaml"
    assert cfg.gateway == Identity("lingang", "CN-SH", "Lingang Special Area, Shanghai")
    assert cfg.id == "lingang"
    assert cfg.listen.partner == Address("127.0.0.1", 7443)
    assert str(cfg.listen.partner) == "127.0.0.1:7443"
    assert str(cfg.listen.metrics) == "[::1]:9464"
    assert cfg.listen.local_socket == Path("/run/xbgw/local.sock")
    assert cfg.tls.certificate == tree / "tls/lingang.crt"
    assert cfg.tls.private_key == tree / "tls/lingang.key"
    assert cfg.tls.private_key_passphrase == PinSource("env", "XBGW_TLS_PASSPHRASE")
    assert cfg.hsm.module == tree / "hsm/libsofthsm2.so"
    assert cfg.hsm.softhsm_conf == tree / "hsm/softhsm2.conf"
    assert cfg.hsm.token == "lingang"
    assert cfg.hsm.pin == PinSource("file", str(tree / "secrets/pin"))
    assert cfg.hsm.pin.read() == PIN
    assert cfg.hsm.key_versions == {Purpose.TRANSPORT: 2, Purpose.SIGNING: 1}

    frankfurt, paris = cfg.partners
    assert frankfurt.id == "frankfurt"
    assert frankfurt.identity == "frankfurt"  # defaults to the id
    assert frankfurt.endpoint == Address("127.0.0.1", 7444)
    assert frankfurt.jurisdiction == "EU-DE"
    assert frankfurt.ca == tree / "tls/demo-ca.crt"
    assert frankfurt.ca_pem == material["tls/demo-ca.crt"]
    assert frankfurt.signing_key == tree / "keys/frankfurt-signing.pem"
    assert (
        frankfurt.signing_public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        == material["keys/frankfurt-signing.pem"]
    )
    assert frankfurt.max_transfer_bytes == 10737418240
    assert paris.endpoint == Address("gw.paris.example", 7445)
    assert paris.identity == "spiffe://paris.example/xbgw"
    assert paris.max_transfer_bytes is None

    (issuer,) = cfg.issuers
    assert issuer.kid == KeyRef("lingang-dpo", Purpose.SIGNING, 1)
    assert issuer.public_key_path == tree / "keys/issuer.pem"
    assert isinstance(issuer.public_key.curve, ec.SECP256R1)
    assert cfg.trusted_issuer_keys() == {"lingang-dpo/signing/1": issuer.public_key}

    assert cfg.state_dir == Path("/var/lib/xbgw")
    assert cfg.limits == dataclasses.replace(
        Limits(), segment_size=65536, max_message_bytes=65536 + 65536, drain_grace_seconds=5
    )
    assert cfg.log == LogConfig(level="debug", format="json")


def test_minimal_config_gets_defaults(tree: Path) -> None:
    doc = full_config()
    for key in ("partners", "issuers", "limits", "log"):
        del doc[key]
    for key in ("gateway.description", "listen.metrics", "tls.private_key_passphrase"):
        edit(doc, key, DELETE)
    for key in ("hsm.softhsm_conf", "hsm.keys"):
        edit(doc, key, DELETE)
    edit(doc, "state_dir", "state")  # relative: against the config file's directory
    write(tree, doc)
    cfg = load_config("gateway.yaml")

    assert cfg.path == tree / "gateway.yaml"
    assert cfg.partners == ()
    assert cfg.issuers == ()
    assert cfg.trusted_issuer_keys() == {}
    assert cfg.limits == Limits()
    assert cfg.limits.max_message_bytes == 1024 * 1024 + 64 * 1024
    assert cfg.log == LogConfig("info", "auto")
    assert cfg.gateway.description is None
    assert cfg.listen.metrics is None
    assert cfg.tls.private_key_passphrase is None
    assert cfg.hsm.softhsm_conf is None
    assert cfg.hsm.key_versions is None
    assert cfg.state_dir == tree / "state"


def test_partner_lookups(tree: Path) -> None:
    write(tree, full_config())
    cfg = load_config("gateway.yaml")
    assert cfg.partner("paris").jurisdiction == "EU-FR"
    with pytest.raises(ConfigError, match=r"no partner 'tokyo' \(configured: frankfurt, paris\)"):
        cfg.partner("tokyo")
    assert cfg.partner_by_identity("FRANKFURT") is cfg.partner("frankfurt")
    assert cfg.partner_by_identity("spiffe://paris.example/xbgw") is cfg.partner("paris")
    assert cfg.partner_by_identity("paris") is None  # paris presents its URI, not its id
    assert cfg.partner_by_identity("tokyo") is None


def test_config_is_frozen(tree: Path) -> None:
    write(tree, full_config())
    cfg: GatewayConfig = load_config("gateway.yaml")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.state_dir = Path("/tmp")  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.partners[0].endpoint = Address("evil", 1)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("[2001:db8::7]:443", "2001:db8::7", 443),
        ("gw-1.example.org:1", "gw-1.example.org", 1),
        ("localhost:65535", "localhost", 65535),
    ],
)
def test_endpoint_forms(tree: Path, text: str, host: str, port: int) -> None:
    doc = full_config()
    edit(doc, "partners.0.endpoint", text)
    write(tree, doc)
    endpoint = load_config("gateway.yaml").partners[0].endpoint
    assert endpoint == Address(host, port)
    assert str(endpoint) == text


def test_ephemeral_listen_port_is_allowed(tree: Path) -> None:
    doc = full_config()
    edit(doc, "listen.partner", "127.0.0.1:0")
    write(tree, doc)
    assert load_config("gateway.yaml").listen.partner.port == 0


# --- mistakes -------------------------------------------------------------------------------


def test_all_mistakes_are_reported_at_once(tree: Path) -> None:
    doc = full_config()
    edit(doc, "gateway.jurisdiction", "Shanghai")
    edit(doc, "listen.metric", "127.0.0.1:9464")
    edit(doc, "tls.certificate", "tls/gone.crt")
    edit(doc, "hsm.token", DELETE)
    edit(doc, "partners.1.endpoint", "frankfurt")
    edit(doc, "partners.1.id", "frankfurt")
    edit(doc, "issuers.0.kid", "lingang-dpo/transport/1")
    edit(doc, "limits.max_concurrent_transfers", 0)
    edit(doc, "log.level", "verbose")
    write(tree, doc)

    found = problems()

    assert found == [
        "gateway.yaml: gateway.jurisdiction: expected a jurisdiction code like CN-SH or EU-DE "
        "(two capital letters, optionally '-' and 1-3 capital letters or digits), "
        "got 'Shanghai'",
        "gateway.yaml: listen.metric: unknown key (did you mean 'metrics'?)",
        f"gateway.yaml: tls.certificate: file {tree}/tls/gone.crt does not exist",
        "gateway.yaml: hsm.token: required key is missing",
        "gateway.yaml: partners[1].endpoint: expected host:port, got 'frankfurt'",
        "gateway.yaml: issuers[0].kid: 'lingang-dpo/transport/1' must name a signing key, "
        "not a transport key",
        "gateway.yaml: limits.max_concurrent_transfers: must be between 1 and 1024, got 0",
        "gateway.yaml: log.level: expected one of debug, info, warning, error; got 'verbose'",
        "gateway.yaml: partners[1].id: duplicate partner id 'frankfurt' (see partners[0])",
    ]


Mutation = Callable[[dict[str, Any]], None]


def setting(dotted: str, value: object) -> Mutation:
    return lambda doc: edit(doc, dotted, value)


MISTAKES: list[tuple[str, Mutation, str]] = [
    # unknown keys
    ("unknown-top", setting("extra", 1), "extra: unknown key (allowed: gateway, listen, tls"),
    ("unknown-nested", setting("listen.metric", "x:1"), "listen.metric: unknown key (did you "),
    ("unknown-in-list", setting("partners.0.endpiont", "x:1"), "partners[0].endpiont: unknown"),
    ("unknown-purpose", setting("hsm.keys.encryption", 1), "hsm.keys.encryption: unknown key"),
    # wrong types
    (
        "int-as-str",
        setting("limits.segment_size", "1 MiB"),
        "limits.segment_size: expected an integer, got a string",
    ),
    (
        "bool-as-int",
        setting("limits.drain_grace_seconds", True),
        "limits.drain_grace_seconds: expected an integer, got a boolean",
    ),
    (
        "norway",
        setting("partners.0.jurisdiction", False),
        "partners[0].jurisdiction: expected a "
        "string, got a boolean (YAML reads yes/no/on/off/true/false as booleans; quote the value)",
    ),
    (
        "section-as-str",
        setting("listen", "127.0.0.1:7443"),
        "listen: expected a mapping, got a string",
    ),
    ("list-as-map", setting("partners", {"id": "x"}), "partners: expected a list, got a mapping"),
    (
        "item-as-str",
        setting("issuers.0", "lingang-dpo/signing/1"),
        "issuers[0]: expected a mapping, got a string",
    ),
    ("empty-string", setting("hsm.token", " "), "hsm.token: must not be empty"),
    # missing required keys
    ("missing-nested", setting("hsm.token", DELETE), "hsm.token: required key is missing"),
    ("missing-top", setting("state_dir", DELETE), "state_dir: required key is missing"),
    ("missing-in-list", setting("partners.1.ca", DELETE), "partners[1].ca: required key is "),
    ("no-value", setting("gateway.id", None), "gateway.id: required key has no value"),
    # files
    (
        "missing-file",
        setting("tls.certificate", "tls/gone.crt"),
        "tls.certificate: file {tree}/tls/gone.crt does not exist",
    ),
    (
        "missing-module",
        setting("hsm.module", "/nonexistent/libsofthsm2.so"),
        "hsm.module: file /nonexistent/libsofthsm2.so does not exist",
    ),
    (
        "missing-softhsm-conf",
        setting("hsm.softhsm_conf", "hsm/none.conf"),
        "hsm.softhsm_conf: file {tree}/hsm/none.conf does not exist",
    ),
    (
        "missing-issuer-key",
        setting("issuers.0.public_key", "keys/none.pem"),
        "issuers[0].public_key: file {tree}/keys/none.pem does not exist",
    ),
    (
        "directory",
        setting("hsm.softhsm_conf", "hsm"),
        "hsm.softhsm_conf: {tree}/hsm is a directory, expected a regular file",
    ),
    (
        "not-a-cert",
        setting("partners.0.ca", "keys/issuer.pem"),
        "partners[0].ca: {tree}/keys/issuer.pem is not a PEM X.509 certificate",
    ),
    (
        "not-a-private-key",
        setting("tls.private_key", "tls/lingang.crt"),
        "tls.private_key: {tree}/tls/lingang.crt is not a PEM private key",
    ),
    (
        "private-as-public",
        setting("partners.0.signing_key", "tls/lingang.key"),
        "partners[0].signing_key: {tree}/tls/lingang.key is not a PEM public key (it holds a "
        "private key, which must never be here)",
    ),
    (
        "p384-key",
        setting("issuers.0.public_key", "keys/p384.pem"),
        "issuers[0].public_key: "
        "{tree}/keys/p384.pem holds a public key of type EC secp384r1; expected EC P-256",
    ),
    (
        "long-socket",
        setting("listen.local_socket", "/run/" + "x" * 110),
        "listen.local_socket: /run/" + "x" * 110 + " is 115 bytes; Unix sockets allow 107",
    ),
    # addresses
    (
        "bad-endpoint",
        setting("partners.1.endpoint", "frankfurt"),
        "partners[1].endpoint: expected host:port, got 'frankfurt'",
    ),
    (
        "bare-ipv6",
        setting("partners.0.endpoint", "::1:7444"),
        "partners[0].endpoint: expected host:port, got '::1:7444' "
        "(IPv6 addresses go in brackets: [::1]:7443)",
    ),
    (
        "bad-ipv4",
        setting("listen.partner", "300.1.1.1:7443"),
        "listen.partner: '300.1.1.1' in '300.1.1.1:7443' is not an IP address or host name",
    ),
    ("bad-host", setting("listen.metrics", "bad_host:9464"), "listen.metrics: 'bad_host' in"),
    (
        "port-range",
        setting("listen.partner", "127.0.0.1:70000"),
        "listen.partner: port in '127.0.0.1:70000' must be between 0 (ephemeral) and 65535",
    ),
    (
        "dial-port-0",
        setting("partners.0.endpoint", "127.0.0.1:0"),
        "partners[0].endpoint: port in '127.0.0.1:0' must be between 1 and 65535",
    ),
    # identities
    (
        "bad-jurisdiction",
        setting("gateway.jurisdiction", "china"),
        "gateway.jurisdiction: expected a jurisdiction code like CN-SH or EU-DE",
    ),
    (
        "bad-partner-jurisdiction",
        setting("partners.1.jurisdiction", "EU-FRAN"),
        "partners[1].jurisdiction: expected a jurisdiction code",
    ),
    (
        "bad-gateway-id",
        setting("gateway.id", "Lingang!"),
        "gateway.id: gateway id 'Lingang!' must be 1-63 characters",
    ),
    (
        "bad-identity",
        setting("partners.0.identity", "not a name"),
        "partners[0].identity: expected a DNS name or URI (a certificate SAN), got 'not a name'",
    ),
    (
        "duplicate-partner",
        setting("partners.1.id", "frankfurt"),
        "partners[1].id: duplicate partner id 'frankfurt' (see partners[0])",
    ),
    (
        "own-id",
        setting("partners.0.id", "lingang"),
        "partners[0].id: 'lingang' is this gateway's own id",
    ),
    (
        "duplicate-identity",
        setting("partners.1.identity", "FRANKFURT"),
        "partners[1].identity: "
        "certificate identity 'frankfurt' is also partners[0]'s; it must be unique",
    ),
    (
        "kid-purpose",
        setting("issuers.0.kid", "lingang-dpo/storage/1"),
        "issuers[0].kid: 'lingang-dpo/storage/1' must name a signing key, not a storage key",
    ),
    (
        "kid-form",
        setting("issuers.0.kid", "lingang-dpo"),
        "issuers[0].kid: key reference 'lingang-dpo' is not of the form owner/purpose/version",
    ),
    (
        "kid-version",
        setting("issuers.0.kid", "lingang-dpo/signing/01"),
        "issuers[0].kid: key "
        "reference 'lingang-dpo/signing/01': version must be a positive integer",
    ),
    (
        "duplicate-kid",
        lambda d: d["issuers"].append(dict(d["issuers"][0])),
        "issuers[1].kid: duplicate issuer kid 'lingang-dpo/signing/1' (see issuers[0])",
    ),
    # secret sources
    (
        "pin-two-sources",
        setting("hsm.pin", {"file": "secrets/pin", "env": "XBGW_PIN"}),
        "hsm.pin: give exactly one of file, env, credential; got 2",
    ),
    (
        "pin-no-source",
        setting("hsm.pin", {}),
        "hsm.pin: give exactly one of file, env, credential; got 0",
    ),
    (
        "pin-file-missing",
        setting("hsm.pin", {"file": "secrets/none"}),
        "hsm.pin.file: file {tree}/secrets/none does not exist",
    ),
    (
        "pin-env-name",
        setting("hsm.pin", {"env": "1-PIN"}),
        "hsm.pin.env: '1-PIN' is not a valid env name",
    ),
    (
        "pin-credential-name",
        setting("hsm.pin", {"credential": "../pin"}),
        "hsm.pin.credential: '../pin' is not a valid credential name",
    ),
    # limits and log
    (
        "leeway-range",
        setting("limits.passport_leeway_seconds", 601),
        "limits.passport_leeway_seconds: must be between 0 and 600, got 601",
    ),
    (
        "segment-range",
        setting("limits.segment_size", 32),
        "limits.segment_size: must be between 64 and 16777216, got 32",
    ),
    (
        "message-range",
        setting("limits.max_message_bytes", 32 * 1024 * 1024),
        "limits.max_message_bytes: must be between 65600 and 16777216, got 33554432",
    ),
    (
        "message-below-segment",
        setting("limits.max_message_bytes", 100_000),
        "limits.max_message_bytes: segment_size + 65536 bytes of framing = 131072 must fit in "
        "max_message_bytes (100000, at most 16777216)",
    ),
    (
        "segment-leaves-no-room",
        setting("limits.segment_size", 16 * 1024 * 1024),
        "limits.segment_size: segment_size + 65536 bytes of framing = 16842752 must fit in",
    ),
    (
        "transfer-limit",
        setting("partners.0.max_transfer_bytes", 0),
        "partners[0].max_transfer_bytes: must be at least 1, got 0",
    ),
    (
        "key-version",
        setting("hsm.keys.storage", 0),
        "hsm.keys.storage: must be between 1 and 4294967295, got 0",
    ),
    (
        "log-format",
        setting("log.format", "xml"),
        "log.format: expected one of auto, json, text; got 'xml'",
    ),
]


@pytest.mark.parametrize(("mutate", "expected"), [pytest.param(m, e, id=i) for i, m, e in MISTAKES])
def test_each_mistake_is_reported_with_file_and_key(
    tree: Path, mutate: Mutation, expected: str
) -> None:
    doc = copy.deepcopy(full_config())
    mutate(doc)
    write(tree, doc)
    found = problems()
    expected_line = "gateway.yaml: " + expected.format(tree=tree)
    assert len(found) == 1, found
    assert found[0].startswith(expected_line), found


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("hsm.pin", PIN),
        ("hsm.pin", int(PIN)),
        ("hsm.pin", [PIN]),
        ("tls.private_key_passphrase", PIN),
    ],
)
def test_literal_secret_is_refused_without_echo(tree: Path, key: str, value: object) -> None:
    doc = full_config()
    edit(doc, key, value)
    write(tree, doc)
    (found,) = problems()
    assert found.startswith(
        f"gateway.yaml: {key}: expected a mapping with one of file, env or credential"
    )
    assert "the secret itself never goes in the YAML" in found
    assert "value not shown" in found
    assert PIN not in found


def test_secret_under_unknown_source_is_not_echoed(tree: Path) -> None:
    doc = full_config()
    edit(doc, "hsm.pin", {"value": PIN})
    write(tree, doc)
    assert problems() == [
        "gateway.yaml: hsm.pin.value: unknown source: use file, env or credential "
        "(the secret itself never goes in the YAML)"
    ]


def deny(monkeypatch: pytest.MonkeyPatch, *denied: Path) -> None:
    """Make ``denied`` (and anything below) unreadable, as for a non-root user, even as root:
    ``stat`` works (the directory is searchable), opening fails with EACCES."""
    real_open = os.open

    def guarded_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if (p := Path(path)) in denied or any(parent in denied for parent in p.parents):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", guarded_open)


def test_unreadable_secret_files_are_left_to_the_daemon(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI loads the config as a user who may not read the PIN or the TLS key."""
    write(tree, full_config())
    deny(monkeypatch, tree / "secrets", tree / "tls/lingang.key")
    cfg = load_config("gateway.yaml")
    assert cfg.hsm.pin == PinSource("file", str(tree / "secrets/pin"))
    assert cfg.tls.private_key == tree / "tls/lingang.key"


def test_unreadable_public_files_are_errors(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tree, full_config())
    deny(monkeypatch, tree / "keys/issuer.pem")
    assert problems() == [
        f"gateway.yaml: issuers[0].public_key: cannot read {tree}/keys/issuer.pem: "
        "permission denied"
    ]


# --- the file itself ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "",
            "gateway.yaml: the file is empty; expected a mapping with gateway, "
            "listen, tls, hsm, state_dir",
            id="empty",
        ),
        pytest.param("# only a comment\n", "gateway.yaml: the file is empty", id="comment-only"),
        pytest.param(
            "- gateway\n- listen\n",
            "gateway.yaml: the top level must be a mapping, got a list",
            id="list",
        ),
        pytest.param(
            "just text\n",
            "gateway.yaml: the top level must be a mapping, got a string",
            id="scalar",
        ),
        pytest.param(
            "gateway:\n  id: lingang\n  jurisdiction: [CN-SH\nlisten: {}\n",
            "gateway.yaml: line 4, column 7: invalid YAML: expected ',' or ']', but got ':' "
            "(while parsing a flow sequence at line 3)",
            id="syntax",
        ),
        pytest.param(
            "gateway:\n\tid: lingang\n",
            "gateway.yaml: line 2, column 1: invalid "
            "YAML: found character '\\t' that cannot start any token",
            id="tab",
        ),
    ],
)
def test_file_level_errors(tree: Path, text: str, expected: str) -> None:
    (tree / "gateway.yaml").write_text(text, encoding="utf-8")
    (found,) = problems()
    assert found.startswith(expected), found


def test_bad_timestamp_is_a_config_error(tree: Path) -> None:
    (tree / "gateway.yaml").write_text("gateway:\n  description: 2024-13-01\n", encoding="utf-8")
    (found,) = problems()
    assert found.startswith("gateway.yaml: not valid YAML: month must be in 1..12"), found


def test_syntax_error_does_not_quote_the_line(tree: Path) -> None:
    """PyYAML's own message shows the offending line, which could hold a secret."""
    (tree / "gateway.yaml").write_text(f'hsm:\n  pin: "{PIN}\n  token: x\n', encoding="utf-8")
    (found,) = problems()
    assert found.startswith("gateway.yaml: line ")
    assert PIN not in found


def test_key_given_twice_is_an_error(tree: Path) -> None:
    path = write(tree, full_config())
    lines = path.read_text(encoding="utf-8").splitlines()
    path.write_text("\n".join([*lines, "state_dir: /elsewhere", ""]), encoding="utf-8")
    assert problems() == [f"gateway.yaml: line {len(lines) + 1}: key 'state_dir' is given twice"]


def test_missing_and_unreadable_config_files(tree: Path) -> None:
    assert problems("nowhere.yaml") == ["nowhere.yaml: configuration file does not exist"]
    (tree / "latin1.yaml").write_bytes(b"gateway:\n  description: \xe9\n")
    assert problems("latin1.yaml") == ["latin1.yaml: configuration file is not UTF-8 text"]


def test_absolute_label_when_loaded_by_absolute_path(tree: Path) -> None:
    doc = full_config()
    edit(doc, "extra", 1)
    path = write(tree, doc)
    (found,) = problems(path)
    assert found.startswith(f"{path}: extra: unknown key")


# --- compliance: the rule tables a gateway applies ------------------------------------------

OWN_TABLE = """\
table: xbgw-rules
version: 1
name: own-rules
description: a deployment's own table, next to its gateway.yaml
rules:
  - id: own-no-marketing
    article: "house rule 1"
    when: {fact: purpose, is: marketing}
    outcome: refuse
"""


def test_absent_compliance_section_gives_the_default_tables(tree: Path) -> None:
    write(tree, full_config())
    compliance = load_config("gateway.yaml").compliance
    assert compliance.tables == ("baseline", "prc-export", "gdpr-chapter-v")
    assert compliance.rules.tables == ("baseline v1", "prc-export v1", "gdpr-chapter-v v1")
    ids = [rule.id for rule in compliance.rules.rules]
    assert ids[:3] == ["baseline-passport-src", "baseline-passport-dst", "cn-core-data"]
    assert "eu-third-country" in ids
    assert not [rule for rule in ids if rule.startswith("ftz-")]  # the example list is opt-in
    assert (compliance.ingress, compliance.year_timezone, compliance.zone) == (
        "enforce",
        "UTC",
        None,
    )


def test_compliance_section_with_a_table_file_relative_to_the_config(
    tree: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tree / "rules").mkdir()
    (tree / "rules" / "own.yaml").write_text(OWN_TABLE, encoding="utf-8")
    doc = full_config()
    doc["compliance"] = {
        "tables": ["baseline", "prc-export", "rules/own.yaml"],
        "overrides": {"cn-pi-below-100k": {"disable": True}},
        "ingress": "record",
        "year_timezone": "Asia/Shanghai",
        "zone": "lingang",
    }
    path = write(tree, doc)
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))  # not the config's directory

    compliance = load_config(path).compliance

    assert compliance.tables == ("baseline", "prc-export", str(tree / "rules" / "own.yaml"))
    assert compliance.rules.tables == ("baseline v1", "prc-export v1", "own-rules v1")
    ids = [rule.id for rule in compliance.rules.rules]
    assert "own-no-marketing" in ids
    assert "cn-pi-below-100k" not in ids  # disabled
    assert "eu-third-country" not in ids  # gdpr-chapter-v was not named
    assert compliance.ingress == "record"
    assert compliance.year_timezone == "Asia/Shanghai"
    assert compliance.zone == "lingang"


def test_all_compliance_mistakes_are_reported_at_once(tree: Path) -> None:
    """A typo'd table name, a missing table file (relative: against the config's directory),
    a mistake inside a table file, an override of an unknown rule, an unknown key, a wrong
    ingress mode and an unknown time zone: one ConfigError, every line with file and key."""
    (tree / "rules").mkdir()
    bad_table = OWN_TABLE.replace("outcome: refuse", "outcome: deny")
    (tree / "rules" / "bad.yaml").write_text(bad_table, encoding="utf-8")
    doc = full_config()
    doc["compliance"] = {
        "tables": ["baseline", "prc-exprot", "rules/missing.yaml", "rules/bad.yaml"],
        "overrides": {"cn-pi-below-100kk": {"disable": True}},
        "ingres": "record",
        "ingress": "warn",
        "year_timezone": "Asia/Shangai",
    }
    write(tree, doc)

    found = problems()

    bad = tree / "rules" / "bad.yaml"
    assert found == [
        "gateway.yaml: compliance.tables[1]: no shipped table 'prc-exprot' (did you mean "
        "'prc-export'?); name a file by a path or with .yaml",
        f"gateway.yaml: compliance.tables[2]: file {tree}/rules/missing.yaml does not exist",
        f"{bad}: rules[0].outcome: expected allow, refuse, flag, {{require: [...]}} or "
        "{exempt: [...]}; got 'deny'",
        "gateway.yaml: compliance.overrides.cn-pi-below-100kk: no rule 'cn-pi-below-100kk' in "
        "the tables loaded (baseline v1, own-rules v1)",
        "gateway.yaml: compliance.ingress: expected one of enforce, record; got 'warn'",
        "gateway.yaml: compliance.year_timezone: unknown time zone 'Asia/Shangai' (an IANA "
        "name like Asia/Shanghai)",
        # a section's unknown keys come after its known keys (pydantic's order)
        "gateway.yaml: compliance.ingres: unknown key (did you mean 'ingress'?)",
    ]


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        (
            {"tables": []},
            "compliance.tables: expected a non-empty list of rule table names "
            "or files, got an empty list",
        ),
        (
            {"tables": "prc-export"},
            "compliance.tables: expected a non-empty list of rule "
            "table names or files, got a string",
        ),
        ({"tables": ["baseline", 7]}, "compliance.tables[1]: expected a string, got an integer"),
        (
            {"overrides": ["cn-core-data"]},
            "compliance.overrides: expected a mapping of rule ids, got a list",
        ),
        (
            {"overrides": {"baseline-passport-src": {"disable": True}}},
            "compliance.overrides.baseline-passport-src: rule 'baseline-passport-src' is final "
            "(gateway/compliance/tables/baseline.yaml: rules[0]): no override may touch it",
        ),
        (
            {"overrides": {"cn-core-data": {"disable": "yes"}}},
            "compliance.overrides.cn-core-data.disable: expected disable: true, alone",
        ),
        ({"zone": ""}, "compliance.zone: must not be empty"),
        (
            {"year_timezone": 8},
            "compliance.year_timezone: expected a time zone name like "
            "Asia/Shanghai, got an integer",
        ),
        (
            {"tables": ["prc-exprot"], "overrides": {"cn-core-data": {"disable": True}}},
            "compliance.tables[0]: no shipped table 'prc-exprot' (did you mean 'prc-export'?); "
            "name a file by a path or with .yaml",  # the override is not judged without tables
        ),
        ("all", "compliance: expected a mapping, got a string"),
    ],
)
def test_each_compliance_mistake_is_reported_with_file_and_key(
    tree: Path, section: object, expected: str
) -> None:
    doc = full_config()
    doc["compliance"] = section
    write(tree, doc)
    assert problems() == [f"gateway.yaml: {expected}"]


# --- files that are not regular files, or too large (issue 12) -------------------------------
#
# Every key that names a file, and every wrong kind of file there: each is one problem with
# the file and key, found at once -- a FIFO must not block, /dev/zero must not be read.

SetPath = Callable[[dict[str, Any], str], None]
#: key path in messages -> (how to name the file there, its cap or None: any size)
FILE_KEYS: dict[str, tuple[SetPath, int | None]] = {
    "tls.certificate": (lambda d, p: edit(d, "tls.certificate", p), files.PEM_MAX),
    "tls.private_key": (lambda d, p: edit(d, "tls.private_key", p), tlskey.MAX_KEY_FILE_LEN),
    "tls.private_key_passphrase.file": (
        lambda d, p: edit(d, "tls.private_key_passphrase", {"file": p}),
        files.SECRET_MAX,
    ),
    "hsm.module": (lambda d, p: edit(d, "hsm.module", p), None),
    "hsm.softhsm_conf": (lambda d, p: edit(d, "hsm.softhsm_conf", p), files.NAMED_MAX),
    "hsm.pin.file": (lambda d, p: edit(d, "hsm.pin", {"file": p}), files.SECRET_MAX),
    "partners[0].ca": (lambda d, p: edit(d, "partners.0.ca", p), files.PEM_MAX),
    "partners[0].signing_key": (lambda d, p: edit(d, "partners.0.signing_key", p), files.PEM_MAX),
    "issuers[0].public_key": (lambda d, p: edit(d, "issuers.0.public_key", p), files.PEM_MAX),
    "compliance.tables[0]": (lambda d, p: edit(d, "compliance.tables", [p]), files.YAML_MAX),
}


def bad_file(tree: Path, kind: str, cap: int | None) -> tuple[Path, str] | None:
    """A file of ``kind`` under ``tree`` and how the loader must describe it (None: n/a)."""
    if kind == "directory":
        (path := tree / "a-directory.yaml").mkdir()
        return path, f"{path} is a directory, expected a regular file"
    if kind == "fifo":
        os.mkfifo(path := tree / "a-fifo.yaml")
        return path, f"{path} is a FIFO, expected a regular file"
    if kind == "socket":
        path = tree / "a-socket.yaml"
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(path))
        server.close()  # the socket file stays
        return path, f"{path} is a socket, expected a regular file"
    if kind == "device":
        return Path("/dev/zero"), "/dev/zero is a character device, expected a regular file"
    if cap is None:
        return None  # a PKCS#11 module may be any size: the dynamic loader maps it
    with (path := tree / "huge.yaml").open("wb") as out:
        out.truncate(cap + 1)
    size = f"{cap // files.MIB} MiB" if cap % files.MIB == 0 else f"{cap // files.KIB} KiB"
    return (
        path,
        f"{path} is larger than {size}, the most such a file may hold (is it the right file?)",
    )


@pytest.mark.parametrize("kind", ["directory", "fifo", "socket", "device", "huge"])
@pytest.mark.parametrize("key", list(FILE_KEYS))
def test_every_named_file_must_be_a_regular_file_within_its_cap(
    tree: Path, key: str, kind: str
) -> None:
    set_path, cap = FILE_KEYS[key]
    made = bad_file(tree, kind, cap)
    if made is None:
        assert kind == "huge" and key == "hsm.module"
        return
    path, reason = made
    doc = full_config()
    set_path(doc, str(path))
    write(tree, doc)
    got = within_deadline(problems)
    assert isinstance(got, list), got
    (found,) = got
    assert found.startswith(f"gateway.yaml: {key}: {reason}"), found


@pytest.mark.parametrize("kind", ["directory", "fifo", "socket", "device", "huge"])
def test_the_config_file_itself_must_be_a_regular_file_within_4_mib(tree: Path, kind: str) -> None:
    made = bad_file(tree, kind, files.YAML_MAX)
    assert made is not None
    path, reason = made
    why = reason.removeprefix(f"{path} is ")
    got = within_deadline(lambda: problems(path))
    assert got == [f"{path}: cannot use the configuration file: {why}"], got


def test_a_huge_file_is_refused_unread(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The size is judged by fstat: the content of an over-cap file is never read."""
    with (tree / "huge.pem").open("wb") as out:
        out.truncate(files.PEM_MAX + 1)
    doc = full_config()
    edit(doc, "partners.0.ca", "huge.pem")
    write(tree, doc)
    real_read = os.read
    reads: list[int] = []

    def counting_read(fd: int, size: int) -> bytes:
        data = real_read(fd, size)
        reads.append(len(data))
        return data

    monkeypatch.setattr(os, "read", counting_read)
    (found,) = problems()
    assert "huge.pem is larger than 1 MiB" in found
    assert sum(reads) < files.PEM_MAX  # the config file and the other small files only


# --- YAML that PyYAML itself cannot take (issue 12) ------------------------------------------


def test_a_control_character_is_a_config_error_with_its_position(tree: Path) -> None:
    """PyYAML refuses it while building its loader, before parsing: that must be a
    ConfigError too (it was a ReaderError traceback), naming the place, not the line."""
    path = write(tree, full_config())
    lines = path.read_text(encoding="utf-8").splitlines()
    lines.insert(3, f'  note: "{PIN}\x01"')
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    (found,) = problems()
    assert found == (
        "gateway.yaml: line 4, column 16: invalid YAML: control character U+0001 is not "
        "allowed (only tab, newline and printable text)"
    )
    assert PIN not in found


@pytest.mark.parametrize("character", ["\x00", "\x1b", "\x7f", "\ufffe"])
def test_other_unprintable_characters_are_config_errors(tree: Path, character: str) -> None:
    (tree / "gateway.yaml").write_text(f"gateway:\n  id: a{character}b\n", encoding="utf-8")
    (found,) = problems()
    assert found.startswith("gateway.yaml: line 2, column 8: invalid YAML: control character")


@pytest.mark.parametrize("newline", ["", "\n"])
def test_deep_nesting_is_a_config_error_not_a_recursion_error(tree: Path, newline: str) -> None:
    opening = f"[{newline}" * 5000
    (tree / "gateway.yaml").write_text(f"extra: {opening}{']' * 5000}\n", encoding="utf-8")
    (found,) = problems()
    assert found.startswith("gateway.yaml: line "), found
    assert found.endswith(f"invalid YAML: nested more than {MAX_YAML_DEPTH} levels deep"), found


def test_nesting_within_the_limit_is_parsed(tree: Path) -> None:
    doc = full_config()
    nested: object = 1
    for _ in range(MAX_YAML_DEPTH - 2):  # the top-level mapping and "extra"'s list count too
        nested = [nested]
    doc["extra"] = nested
    write(tree, doc)
    (found,) = problems()
    assert found.startswith("gateway.yaml: extra: unknown key"), found


def test_the_digest_is_of_the_bytes_that_were_loaded(tree: Path) -> None:
    path = write(tree, full_config())
    edit_pin = full_config()
    edit(edit_pin, "hsm.pin", {"env": "XBGW_PIN"})
    write(tree, edit_pin)
    config = load_config(path)
    assert config.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()

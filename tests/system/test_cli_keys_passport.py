"""The first commands through the real ``xbgw`` program, against real SoftHSM tokens.

``xbgw keys init|list|public`` and ``xbgw passport issue|inspect|verify`` run as child
processes, each with ``SOFTHSM2_CONF`` naming a token directory made here (SoftHSM binds one
token directory per process, so these tests never load PKCS#11 themselves). What the CLI says
about keys is checked against an outside witness, OpenSC's ``pkcs11-tool --list-objects``,
and passports against ``cryptography`` with the public key ``keys public`` exported.

Tokens and keys are made once per module (module-scoped fixtures that only record what the
commands did; the tests judge it). SoftHSM rewrites a token's flags on every login, so
children that log in run one at a time; the commands that never log in (passport inspect and
verify, and the misconfigurations caught before login) run four at a time in one batch.
Tests of bad input pin down the one-line errors the CLI gives instead of tracebacks.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from devtools.provision import write_softhsm_conf
from tests.softhsm import SO_PIN, SOFTHSM_MODULE, USER_PIN

TIMEOUT = 60.0
_CONSOLE_SCRIPT = Path(sys.executable).with_name("xbgw")
# The installed console script is the real `xbgw`; fall back to the module for odd layouts.
XBGW = [str(_CONSOLE_SCRIPT)] if _CONSOLE_SCRIPT.exists() else [sys.executable, "-m", "gateway.cli"]

ISSUER = "dpo"
KID = f"{ISSUER}/signing/1"
AUDIENCE = "frankfurt"
SAFE_ACCESS = "sensitive, always sensitive, never extractable"
# What `xbgw keys init` must create: (pkcs11-tool object kind, label) -> usages.
EXPECTED_KEYS = {
    ("Private Key Object", "xbgw-transport"): ("derive",),
    ("Private Key Object", "xbgw-signing"): ("sign",),
    ("Secret Key Object", "xbgw-storage"): ("wrap", "unwrap"),
}
# Variables a developer's shell may carry that must not leak into the children.
_SCRUBBED = ("SOFTHSM2_CONF", "CREDENTIALS_DIRECTORY", "XBGW_SOCKET", "XBGW_TEST_PIN")


# --- running things -------------------------------------------------------------------------


def run(
    argv: Sequence[str],
    env: Mapping[str, str],
    cwd: Path,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` to completion (``subprocess.run`` kills and reaps it on timeout)."""
    return subprocess.run(
        list(argv),
        env=dict(env),
        cwd=cwd,
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


@dataclass(frozen=True)
class Call:
    """One ``xbgw`` invocation, to be run later (possibly alongside others)."""

    argv: list[str]
    env: dict[str, str]
    cwd: Path
    stdin: str | None = None


def run_all(
    calls: Mapping[str, Call], width: int = 4
) -> dict[str, subprocess.CompletedProcess[str]]:
    """Run ``calls`` ``width`` at a time; every child is waited for by ``run``."""
    with ThreadPoolExecutor(max_workers=width) as pool:
        futures = {
            name: pool.submit(run, call.argv, call.env, call.cwd, call.stdin)
            for name, call in calls.items()
        }
        return {name: future.result() for name, future in futures.items()}


def outcome(done: subprocess.CompletedProcess[str]) -> str:
    """Everything a failed assertion should show about a child."""
    return f"exit {done.returncode}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"


def base_env(conf: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED}
    env["GRPC_VERBOSITY"] = "ERROR"
    if conf is not None:
        env["SOFTHSM2_CONF"] = str(conf)
    return env


def init_token(conf: Path, label: str, pin: str) -> None:
    argv = ["softhsm2-util", "--init-token", "--free", "--label", label]
    secrets = ["--so-pin", SO_PIN, "--pin", pin]
    subprocess.run(
        [*argv, *secrets],
        env=base_env(conf),
        capture_output=True,
        check=True,
        timeout=TIMEOUT,
    )


def write_private(path: Path, text: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    return path


@dataclass(frozen=True)
class Token:
    """One SoftHSM token in its own token directory, seen only by child processes."""

    root: Path
    conf: Path
    label: str
    pin: str
    pin_file: Path

    @classmethod
    def make(cls, root: Path, label: str, pin: str = USER_PIN) -> Token:
        conf = write_softhsm_conf(root)
        init_token(conf, label, pin)
        return cls(root, conf, label, pin, write_private(root / "pin", pin + "\n"))

    def env(self, **extra: str) -> dict[str, str]:
        return {**base_env(self.conf), **extra}

    def hsm(
        self,
        *,
        module: str | Path = SOFTHSM_MODULE,
        token: str | None = None,
        pin: Sequence[str] | None = None,
    ) -> list[str]:
        """``--module``, ``--token`` and a PIN source: this token and its PIN file by default."""
        source = list(pin) if pin is not None else ["--pin-file", str(self.pin_file)]
        return ["--module", str(module), "--token", token or self.label, *source]

    def call(
        self, *args: str, env: Mapping[str, str] | None = None, stdin: str | None = None
    ) -> Call:
        return Call([*XBGW, *args], dict(env if env is not None else self.env()), self.root, stdin)

    def xbgw(
        self, *args: str, env: Mapping[str, str] | None = None, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        call = self.call(*args, env=env, stdin=stdin)
        return run(call.argv, call.env, call.cwd, call.stdin)

    def pkcs11_tool(self, *args: str) -> subprocess.CompletedProcess[str]:
        """OpenSC's pkcs11-tool, logged in to this token: the outside witness."""
        login = ["--login", "--pin", self.pin]
        argv = ["pkcs11-tool", "--module", SOFTHSM_MODULE, "--token-label", self.label, *login]
        return run([*argv, *args], self.env(), self.root)

    def pkcs11_objects(self) -> tuple[list[P11Object], subprocess.CompletedProcess[str]]:
        done = self.pkcs11_tool("--list-objects")
        return parse_pkcs11_objects(done.stdout), done

    def pkcs11_aes_key(self, version: int, *flags: str) -> subprocess.CompletedProcess[str]:
        """A foreign AES key labelled like ours, made by pkcs11-tool with ``flags``."""
        return self.pkcs11_tool(
            "--keygen", "--key-type", "AES:32", "--label", "xbgw-storage",
            "--id", f"{version:08x}", "--usage-wrap", *flags,
        )  # fmt: skip


# --- reading pkcs11-tool and the CLI's tables -----------------------------------------------


@dataclass(frozen=True)
class P11Object:
    """One object as ``pkcs11-tool --list-objects`` prints it."""

    kind: str  # "Private Key Object", "Secret Key Object", "Public Key Object", ...
    detail: str  # what follows the kind on its line, e.g. "EC" or "AES length 32"
    attrs: dict[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.attrs.get("label", "")

    @property
    def version(self) -> int:
        # CKA_ID: purpose code byte + 4-byte version (issue 13), or the bare version (older).
        key_id = bytes.fromhex(self.attrs["ID"])
        return int.from_bytes(key_id[1:] if len(key_id) == 5 else key_id, "big")

    @property
    def usage(self) -> tuple[str, ...]:
        text = self.attrs.get("Usage", "none")
        return () if text == "none" else tuple(u.strip() for u in text.split(","))

    @property
    def access(self) -> str:
        return self.attrs.get("Access", "")

    @property
    def access_flags(self) -> set[str]:
        return {flag.strip() for flag in self.access.split(",") if flag.strip()}

    @property
    def is_private_or_secret(self) -> bool:
        return self.kind in ("Private Key Object", "Secret Key Object")


def parse_pkcs11_objects(text: str) -> list[P11Object]:
    objects: list[P11Object] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        if not line[0].isspace():
            kind, _, detail = line.partition(";")
            objects.append(P11Object(kind.strip(), detail.strip()))
            continue
        if objects:
            name, _, value = line.strip().partition(":")
            objects[-1].attrs[name.strip()] = value.strip()
    return objects


def keys_by_version(objects: Sequence[P11Object]) -> dict[tuple[str, int], P11Object]:
    """Private and secret keys by (purpose, version), as the CLI names them."""
    found: dict[tuple[str, int], P11Object] = {}
    for obj in objects:
        if obj.is_private_or_secret:
            found[(obj.label.removeprefix("xbgw-"), obj.version)] = obj
    return found


@dataclass(frozen=True)
class Row:
    purpose: str
    version: int
    state: str
    sensitive: str
    extractable: str
    usage: tuple[str, ...]


JSON_FIELDS = {"purpose", "version", "state", "capabilities", "sensitive", "always_sensitive",
               "extractable", "never_extractable", "modifiable", "copyable"}  # fmt: skip
TABLE_HEADER = ["PURPOSE", "VER", "STATE", "SENSITIVE", "EXTRACTABLE", "USAGE"]


def parse_table(text: str) -> list[Row]:
    lines = text.splitlines()
    assert lines, "keys list printed nothing"
    assert lines[0].split() == TABLE_HEADER, lines[0]
    rows = []
    for line in lines[1:]:
        purpose, version, state, sensitive, extractable, usage = line.split()
        rows.append(
            Row(purpose, int(version), state, sensitive, extractable, tuple(usage.split(",")))
        )
    return rows


def ec_point_of(obj: P11Object) -> bytes:
    """The uncompressed point of a pkcs11-tool EC public key (its EC_POINT is DER-wrapped)."""
    der = bytes.fromhex(obj.attrs["EC_POINT"])
    assert der[:2] == b"\x04\x41", obj.attrs["EC_POINT"]
    return der[2:]


def public_object(objects: Sequence[P11Object], label: str) -> P11Object:
    (obj,) = [o for o in objects if o.kind == "Public Key Object" and o.label == label]
    return obj


def point_of_pem(pem: str) -> bytes:
    key = serialization.load_pem_public_key(pem.encode("ascii"))
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert isinstance(key.curve, ec.SECP256R1)
    return key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


def assert_clean_failure(done: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    """Exit ``code``, one ``xbgw:`` line on stderr naming ``needles``, no traceback."""
    assert done.returncode == code, outcome(done)
    assert "Traceback" not in done.stderr, outcome(done)
    assert done.stderr.startswith("xbgw: "), outcome(done)
    assert len(done.stderr.splitlines()) == 1, outcome(done)
    for needle in needles:
        assert needle in done.stderr, outcome(done)


# --- module fixtures: one provisioned token, one passport -----------------------------------


@dataclass(frozen=True)
class Provisioned:
    token: Token
    spare: Token  # same token directory, no keys: for wrong-PIN attempts
    first_init: subprocess.CompletedProcess[str]
    objects_after_first: list[P11Object]
    second_init: subprocess.CompletedProcess[str]
    objects: list[P11Object]
    listing: subprocess.CompletedProcess[str]
    table: subprocess.CompletedProcess[str]
    json_list: subprocess.CompletedProcess[str]
    public: subprocess.CompletedProcess[str]
    signing_pem: Path


@pytest.fixture(scope="module")
def prov(tmp_path_factory: pytest.TempPathFactory) -> Provisioned:
    """A fresh token 'alpha' run through `keys init` twice, listed, its signing key exported.

    A second token 'beta' shares the token directory (so 'tokens present' has two names).
    """
    root = tmp_path_factory.mktemp("cli-keys")
    token = Token.make(root, "alpha")
    init_token(token.conf, "beta", "beta-pin-5678")
    spare_pin = write_private(root / "beta-pin", "beta-pin-5678\n")
    spare = Token(root, token.conf, "beta", "beta-pin-5678", spare_pin)
    first_init = token.xbgw("keys", "init", *token.hsm())
    objects_after_first, _ = token.pkcs11_objects()
    second_init = token.xbgw("keys", "init", *token.hsm())
    objects, listing = token.pkcs11_objects()
    table = token.xbgw("keys", "list", *token.hsm())
    json_list = token.xbgw("keys", "list", *token.hsm(), "--json")
    signing_pem = root / "dpo-signing.pem"
    public = token.xbgw("keys", "public", *token.hsm(), "-o", str(signing_pem))
    return Provisioned(
        token,
        spare,
        first_init,
        objects_after_first,
        second_init,
        objects,
        listing,
        table,
        json_list,
        public,
        signing_pem,
    )


# --- keys init ------------------------------------------------------------------------------


def test_keys_init_creates_version_1_of_each_purpose(prov: Provisioned) -> None:
    assert prov.first_init.returncode == 0, outcome(prov.first_init)
    assert prov.first_init.stdout == (
        "created xbgw-transport v1, xbgw-signing v1, xbgw-storage v1\n"
    ), outcome(prov.first_init)


def test_pkcs11_tool_sees_every_private_and_secret_key_sensitive_and_never_extractable(
    prov: Provisioned,
) -> None:
    assert prov.listing.returncode == 0, outcome(prov.listing)
    keys = [obj for obj in prov.objects if obj.is_private_or_secret]
    assert keys, prov.listing.stdout
    for obj in keys:
        # The issue's acceptance check, verbatim: these words in pkcs11-tool's Access line.
        assert SAFE_ACCESS in obj.access, f"{obj.kind} {obj.label}: Access: {obj.access}"
        assert "extractable" not in obj.access_flags, obj.access
    assert {(obj.kind, obj.label): obj.usage for obj in keys} == EXPECTED_KEYS
    assert len(keys) == 3
    assert [obj.version for obj in keys] == [1, 1, 1]
    assert sorted(obj.detail for obj in keys) == ["AES length 32", "EC", "EC"]


def test_public_halves_exist_and_can_do_nothing(prov: Provisioned) -> None:
    public = [obj for obj in prov.objects if obj.kind == "Public Key Object"]
    assert sorted(obj.label for obj in public) == ["xbgw-signing", "xbgw-transport"]
    assert all(obj.usage == () and obj.version == 1 for obj in public), public
    # Nothing else on the token: no certificates, data objects or stray keys.
    assert len(prov.objects) == 5, prov.listing.stdout


def test_second_keys_init_keeps_the_existing_keys(prov: Provisioned) -> None:
    assert prov.second_init.returncode == 0, outcome(prov.second_init)
    assert prov.second_init.stdout.splitlines() == [
        "xbgw-transport: already has versions [1]; kept",
        "xbgw-signing: already has versions [1]; kept",
        "xbgw-storage: already has versions [1]; kept",
        "nothing to create",
    ], outcome(prov.second_init)
    # Same objects, same public points: nothing was regenerated or added.
    assert prov.objects == prov.objects_after_first
    assert len(prov.objects) == 5


# --- keys list ------------------------------------------------------------------------------


def test_keys_list_table_agrees_with_pkcs11_tool(prov: Provisioned) -> None:
    assert prov.table.returncode == 0, outcome(prov.table)
    assert prov.table.stderr == "", outcome(prov.table)
    rows = parse_table(prov.table.stdout)
    hsm_keys = keys_by_version(prov.objects)
    assert {(row.purpose, row.version) for row in rows} == set(hsm_keys)
    assert len(rows) == 3
    for row in rows:
        witness = hsm_keys[(row.purpose, row.version)]
        # Without -c there is no key state to read: the token alone does not know which
        # version is in use, so the list does not guess.
        assert (row.state, row.sensitive, row.extractable) == ("-", "always", "never")
        assert {"sensitive", "always sensitive", "never extractable"} <= witness.access_flags
        assert row.usage == witness.usage, (row, witness)


def test_keys_list_json_agrees_with_pkcs11_tool_and_the_table(prov: Provisioned) -> None:
    assert prov.json_list.returncode == 0, outcome(prov.json_list)
    entries: list[dict[str, Any]] = json.loads(prov.json_list.stdout)
    hsm_keys = keys_by_version(prov.objects)
    assert {(e["purpose"], e["version"]) for e in entries} == set(hsm_keys)
    for entry in entries:
        assert set(entry) == JSON_FIELDS
        witness = hsm_keys[(entry["purpose"], entry["version"])]
        flags = witness.access_flags
        assert entry["sensitive"] is ("sensitive" in flags)
        assert entry["always_sensitive"] is ("always sensitive" in flags)
        assert entry["extractable"] is ("extractable" in flags)
        assert entry["never_extractable"] is ("never extractable" in flags)
        assert tuple(entry["capabilities"]) == witness.usage
        assert entry["state"] is None
    table = {(r.purpose, r.version, r.usage) for r in parse_table(prov.table.stdout)}
    assert table == {(e["purpose"], e["version"], tuple(e["capabilities"])) for e in entries}


# --- keys public ----------------------------------------------------------------------------


def test_keys_public_writes_the_signing_key_pkcs11_tool_sees(prov: Provisioned) -> None:
    assert prov.public.returncode == 0, outcome(prov.public)
    assert prov.public.stdout == f"wrote xbgw-signing v1 public key to {prov.signing_pem}\n"
    pem = prov.signing_pem.read_text(encoding="ascii")
    assert point_of_pem(pem) == ec_point_of(public_object(prov.objects, "xbgw-signing"))


# --- PIN sources and misconfiguration that reach the token -----------------------------------


def test_pin_from_environment_variable(prov: Provisioned) -> None:
    token = prov.token
    hsm = token.hsm(pin=["--pin-env", "XBGW_TEST_PIN"])
    env = token.env(XBGW_TEST_PIN=token.pin)
    done = token.xbgw("keys", "public", *hsm, "--purpose", "transport", env=env)
    assert done.returncode == 0, outcome(done)
    assert done.stdout.startswith("-----BEGIN PUBLIC KEY-----\n")
    assert point_of_pem(done.stdout) == ec_point_of(public_object(prov.objects, "xbgw-transport"))


def test_pin_from_systemd_credential(prov: Provisioned, tmp_path: Path) -> None:
    token = prov.token
    write_private(tmp_path / "xbgw-pin", token.pin + "\n")
    hsm = token.hsm(pin=["--pin-credential", "xbgw-pin"])
    done = token.xbgw("keys", "list", *hsm, env=token.env(CREDENTIALS_DIRECTORY=str(tmp_path)))
    assert done.returncode == 0, outcome(done)
    assert done.stdout == prov.table.stdout


def test_wrong_pin_fails_without_printing_it(prov: Provisioned) -> None:
    wrong = "wrong-pin-31337"
    spare = prov.spare
    hsm = spare.hsm(pin=["--pin-env", "XBGW_TEST_PIN"])
    done = spare.xbgw("keys", "list", *hsm, env=spare.env(XBGW_TEST_PIN=wrong))
    assert_clean_failure(done, 78, "wrong PIN for HSM token 'beta'")
    assert done.stdout == ""
    assert wrong not in done.stderr
    assert spare.pin not in done.stderr


def test_unknown_token_lists_the_tokens_present(prov: Provisioned) -> None:
    done = prov.token.xbgw("keys", "list", *prov.token.hsm(token="gamma"))
    assert_clean_failure(done, 1, "'gamma' not found", "tokens present: 'alpha', 'beta'")


# --- passports ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Issued:
    prov: Provisioned
    dataset: Path
    dataset_sha256: str
    path: Path
    issued: subprocess.CompletedProcess[str]
    issued_at: tuple[float, float]  # wall clock bounds around the issue command

    @property
    def token(self) -> str:
        return self.path.read_text(encoding="ascii").strip()


ISSUE_TERMS = [
    "--to", AUDIENCE, "--sender", "lingang", "--src", "CN-SH", "--dst", "EU-DE",
    "--classification", "important", "--pi", "personal", "--subjects", "1200",
    "--purpose", "clinical trial follow-up", "--legal-basis", "CAC-SC-2026-0042",
    "--byte-limit", "64MiB",
]  # fmt: skip


@pytest.fixture(scope="module")
def passport(prov: Provisioned) -> Issued:
    """One passport issued by `xbgw passport issue --file` into a file."""
    dataset = prov.token.root / "dataset.bin"
    data = os.urandom(100_003)
    dataset.write_bytes(data)
    path = prov.token.root / "passport.jwt"
    before = time.time()
    options = ["--ttl", "2h", "--jti", "t-0001", "--file", str(dataset), "-o", str(path)]
    issued = prov.token.xbgw(
        "passport", "issue", *prov.token.hsm(), "--kid", KID, *ISSUE_TERMS, *options
    )
    after = time.time()
    return Issued(prov, dataset, hashlib.sha256(data).hexdigest(), path, issued, (before, after))


def test_passport_issue_writes_a_compact_jws(passport: Issued) -> None:
    assert passport.issued.returncode == 0, outcome(passport.issued)
    assert passport.issued.stdout == ""
    assert passport.issued.stderr == f"passport dpo_t-0001 written to {passport.path}\n"
    assert re.fullmatch(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]{86}", passport.token)


def test_passport_signature_verifies_with_the_exported_key(passport: Issued) -> None:
    """Independently of the CLI: ES256 over the signing input, with `keys public`'s key."""
    key = serialization.load_pem_public_key(passport.prov.signing_pem.read_bytes())
    assert isinstance(key, ec.EllipticCurvePublicKey)
    signing_input, _, signature_b64 = passport.token.rpartition(".")
    signature = base64.urlsafe_b64decode(signature_b64 + "==")
    der = encode_dss_signature(
        int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    )
    key.verify(der, signing_input.encode("ascii"), ec.ECDSA(hashes.SHA256()))
    with pytest.raises(InvalidSignature):
        key.verify(der, signing_input.encode("ascii") + b"x", ec.ECDSA(hashes.SHA256()))


def test_passport_issue_to_stdout_with_sub(prov: Provisioned) -> None:
    digest = "ab" * 32
    done = prov.token.xbgw(
        "passport", "issue", *prov.token.hsm(), "--kid", KID, *ISSUE_TERMS, "--sub", digest
    )
    assert done.returncode == 0, outcome(done)
    token = done.stdout.strip()
    assert done.stdout == token + "\n"
    assert done.stderr == ""
    claims = unverified_claims(token)
    assert claims["sub"] == digest
    assert claims["exp"] - claims["iat"] == 3600  # the default --ttl
    assert re.fullmatch(r"dpo_[0-9a-f]{32}", claims["jti"])  # random by default, in its id space


def test_passport_issue_with_a_key_version_not_on_the_token(prov: Provisioned) -> None:
    done = prov.token.xbgw(
        "passport", "issue", *prov.token.hsm(), "--kid", f"{ISSUER}/signing/2", *ISSUE_TERMS
    )
    assert_clean_failure(done, 1, "xbgw-signing version 2 is not on HSM token 'alpha'")
    assert done.stdout == ""


def unverified_claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    claims: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return claims


def tamper_payload(token: str) -> str:
    """Change one character in the middle of the payload (still canonical base64url)."""
    header, payload, signature = token.split(".")
    middle = len(payload) // 2
    replacement = "A" if payload[middle] != "A" else "B"
    changed = payload[:middle] + replacement + payload[middle + 1 :]
    assert changed != payload
    return f"{header}.{changed}.{signature}"


# --- commands that never log in, run as one concurrent batch --------------------------------


Results = dict[str, subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def offline(passport: Issued, tmp_path_factory: pytest.TempPathFactory) -> Results:
    """Every case below that is settled before a token login, run four at a time."""
    work = tmp_path_factory.mktemp("cli-offline")
    token = passport.prov.token
    bogus_module = work / "vendor-pkcs11.so"
    bogus_module.write_text("not an ELF file\n", encoding="ascii")
    other_key = work / "other.pem"
    other_key.write_bytes(
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    tampered = work / "tampered.jwt"
    tampered.write_text(tamper_payload(passport.token) + "\n", encoding="ascii")
    jwt, jwt_text = str(passport.path), passport.token + "\n"
    trusted = ["--issuer", f"{KID}={passport.prov.signing_pem}"]
    verify = ["passport", "verify", jwt, "--audience", AUDIENCE]
    issue = ["passport", "issue", *token.hsm(), *ISSUE_TERMS]
    calls = {
        # PIN sources and module/config problems, all refused before any login.
        "pin-credential-no-dir": token.call(
            "keys", "list", *token.hsm(pin=["--pin-credential", "xbgw-pin"])
        ),
        "pin-env-unset": token.call("keys", "list", *token.hsm(pin=["--pin-env", "XBGW_TEST_PIN"])),
        "no-pin-source": token.call("keys", "list", *token.hsm(pin=[])),
        "module-missing": token.call("keys", "list", *token.hsm(module=work / "no-such.so")),
        "module-not-a-library": token.call("keys", "list", *token.hsm(module=bogus_module)),
        "softhsm-conf-missing": token.call(
            "keys", "list", *token.hsm(), env=base_env(work / "missing.conf")
        ),
        # Passports: inspect and verify need no HSM.
        "inspect-file": token.call("passport", "inspect", jwt),
        "inspect-stdin": token.call("passport", "inspect", "-", stdin=jwt_text),
        "verify-file": token.call(*verify, *trusted),
        "verify-stdin": token.call(
            "passport", "verify", "-", "--audience", AUDIENCE, *trusted, stdin=jwt_text
        ),
        "verify-wrong-audience": token.call(
            "passport", "verify", passport.token, "--audience", "paris", *trusted
        ),
        "verify-tampered": token.call(
            "passport", "verify", str(tampered), "--audience", AUDIENCE, *trusted
        ),
        "verify-other-key": token.call(*verify, "--issuer", f"{KID}={other_key}"),
        # Bad input that once ended in a traceback.
        "kid-not-a-key-ref": token.call(*issue, "--kid", "dpo"),
        "dataset-missing": token.call(*issue, "--kid", KID, "--file", str(work / "missing.bin")),
        "issuer-pem-missing": token.call(*verify, "--issuer", f"{KID}={work / 'missing.pem'}"),
        "issuer-pem-not-a-key": token.call(*verify, "--issuer", f"{KID}={jwt}"),
        "issuer-kid-malformed": token.call(
            *verify, "--issuer", f"dpo/signing/01={passport.prov.signing_pem}"
        ),
        "issuer-kid-not-signing": token.call(
            *verify[:-2], "--audience", AUDIENCE, "--issuer", f"dpo/transport/1={other_key}"
        ),
        "audience-invalid": token.call(*verify[:-2], "--audience", "Frankfurt", *trusted),
    }
    return run_all(calls)


def test_pin_credential_without_credentials_directory(offline: Results) -> None:
    assert_clean_failure(offline["pin-credential-no-dir"], 78, "CREDENTIALS_DIRECTORY is not set")


def test_pin_environment_variable_not_set(offline: Results) -> None:
    done = offline["pin-env-unset"]
    assert_clean_failure(done, 78, "environment variable XBGW_TEST_PIN is not set")


def test_no_pin_source_is_a_usage_error(offline: Results) -> None:
    done = offline["no-pin-source"]
    assert_clean_failure(done, 2, "--pin-file, --pin-env or --pin-credential")
    assert done.stdout == ""


def test_missing_module(offline: Results) -> None:
    done = offline["module-missing"]
    assert_clean_failure(done, 1, "PKCS#11 module ", "no-such.so does not exist")


def test_module_that_is_not_a_library(offline: Results) -> None:
    done = offline["module-not-a-library"]
    assert_clean_failure(done, 1, "PKCS#11 module ", "vendor-pkcs11.so could not be loaded")


def test_softhsm_conf_pointing_nowhere(offline: Results) -> None:
    done = offline["softhsm-conf-missing"]
    assert_clean_failure(done, 1, "SOFTHSM2_CONF names ", "missing.conf, which does not exist")


def _inspected(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert done.returncode == 0, outcome(done)
    first, _, rest = done.stdout.partition("\n")
    assert "UNVERIFIED" in first, outcome(done)
    decoded: dict[str, Any] = json.loads(rest)
    return decoded


def test_passport_inspect_shows_header_and_claims_unverified(
    passport: Issued, offline: Results
) -> None:
    shown = _inspected(offline["inspect-file"])
    assert shown["header"] == {"alg": "ES256", "kid": KID, "typ": "xbgw-passport+jwt"}
    claims = shown["claims"]
    before, after = passport.issued_at
    assert before - 1 <= claims["iat"] <= after + 1
    assert claims["exp"] - claims["iat"] == 7200
    assert claims["nbf"] <= claims["iat"]
    assert {k: claims[k] for k in ("iss", "aud", "jti", "sub")} == {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "jti": "dpo_t-0001",  # --jti t-0001: the issuer's id comes first
        "sub": passport.dataset_sha256,
    }
    assert claims["xbgw"] == {
        "sender": "lingang",
        "src": "CN-SH",
        "dst": "EU-DE",
        "classification": "important",
        "pi": "personal",
        "subjects": 1200,
        "purpose": "clinical trial follow-up",
        "legal_basis": "CAC-SC-2026-0042",
        "byte_limit": 64 * 2**20,
    }
    assert set(claims) == {"iss", "aud", "jti", "sub", "iat", "nbf", "exp", "xbgw"}


def test_passport_inspect_reads_stdin(offline: Results) -> None:
    assert offline["inspect-stdin"].stdout == offline["inspect-file"].stdout
    assert _inspected(offline["inspect-stdin"])["claims"]["jti"] == "dpo_t-0001"


def test_passport_verify_from_file(offline: Results) -> None:
    done = offline["verify-file"]
    assert done.returncode == 0, outcome(done)
    assert done.stdout.startswith(
        f"valid passport dpo_t-0001: lingang (CN-SH) -> {AUDIENCE} (EU-DE), important, "
        f"up to {64 * 2**20} bytes, signed by {KID}, expires "
    ), outcome(done)
    assert done.stderr == ""


def test_passport_verify_from_stdin(offline: Results) -> None:
    done = offline["verify-stdin"]
    assert done.returncode == 0, outcome(done)
    assert done.stdout == offline["verify-file"].stdout


def test_passport_verify_wrong_audience(offline: Results) -> None:
    done = offline["verify-wrong-audience"]  # the token itself as the argument
    assert_clean_failure(done, 1, f"passport dpo_t-0001 is for '{AUDIENCE}', not for 'paris'")
    assert "valid passport" not in done.stdout


def test_passport_verify_refuses_a_tampered_payload(offline: Results) -> None:
    done = offline["verify-tampered"]
    assert_clean_failure(done, 1, f"passport signature does not verify with key {KID}")
    assert "valid passport" not in done.stdout


def test_passport_verify_refuses_a_key_that_is_not_the_issuers(offline: Results) -> None:
    done = offline["verify-other-key"]
    assert_clean_failure(done, 1, f"passport signature does not verify with key {KID}")
    assert "valid passport" not in done.stdout


# --- keys list reads the flags from the HSM (a foreign, unsafe key) -------------------------


@dataclass(frozen=True)
class Foreign:
    made: list[subprocess.CompletedProcess[str]]
    init: subprocess.CompletedProcess[str]
    table: subprocess.CompletedProcess[str]
    json_list: subprocess.CompletedProcess[str]
    objects: list[P11Object]


@pytest.fixture(scope="module")
def foreign(tmp_path_factory: pytest.TempPathFactory) -> Foreign:
    """A token on which pkcs11-tool made storage v1 (sensitive) and v2 (extractable, NOT
    sensitive) before `keys init`: the CLI must report what the HSM says, not what it made."""
    token = Token.make(tmp_path_factory.mktemp("cli-foreign"), "gamma")
    made = [token.pkcs11_aes_key(1, "--sensitive"), token.pkcs11_aes_key(2, "--extractable")]
    init = token.xbgw("keys", "init", *token.hsm())
    table = token.xbgw("keys", "list", *token.hsm())
    json_list = token.xbgw("keys", "list", *token.hsm(), "--json")
    objects, _ = token.pkcs11_objects()
    return Foreign(made, init, table, json_list, objects)


def test_keys_init_fills_in_only_the_missing_purposes(foreign: Foreign) -> None:
    for done in foreign.made:
        assert done.returncode == 0, outcome(done)
    assert foreign.init.returncode == 0, outcome(foreign.init)
    assert foreign.init.stdout.splitlines() == [
        "xbgw-storage: already has versions [1, 2]; kept",
        "created xbgw-transport v1, xbgw-signing v1",
    ]


def test_keys_list_table_reports_an_unsafe_key_as_the_hsm_does(foreign: Foreign) -> None:
    rows = parse_table(foreign.table.stdout)
    assert {(r.purpose, r.version): (r.state, r.sensitive, r.extractable) for r in rows} == {
        ("signing", 1): ("-", "always", "never"),
        ("storage", 1): ("-", "always", "never"),
        ("storage", 2): ("-", "NO", "YES"),
        ("transport", 1): ("-", "always", "never"),
    }
    hsm_keys = keys_by_version(foreign.objects)
    assert SAFE_ACCESS in hsm_keys[("storage", 1)].access
    assert "sensitive" not in hsm_keys[("storage", 2)].access_flags
    assert "extractable" in hsm_keys[("storage", 2)].access_flags
    assert foreign.table.returncode == 1, outcome(foreign.table)
    assert "WARNING: 1 key(s) could have left the HSM in clear" in foreign.table.stderr


def test_keys_list_json_reports_an_unsafe_key_as_the_hsm_does(foreign: Foreign) -> None:
    entries = json.loads(foreign.json_list.stdout)
    hsm_keys = keys_by_version(foreign.objects)
    assert {(e["purpose"], e["version"]) for e in entries} == set(hsm_keys)
    for entry in entries:
        flags = hsm_keys[(entry["purpose"], entry["version"])].access_flags
        assert entry["sensitive"] is ("sensitive" in flags), entry
        assert entry["always_sensitive"] is ("always sensitive" in flags), entry
        assert entry["extractable"] is ("extractable" in flags), entry
        assert entry["never_extractable"] is ("never extractable" in flags), entry
    assert {e["state"] for e in entries} == {None}  # no -c: no key state to report


def test_keys_list_json_exit_status_flags_an_unsafe_key(foreign: Foreign) -> None:
    """The table exits 1 for a key that could have left the HSM; --json must not exit 0."""
    assert foreign.table.returncode == 1, outcome(foreign.table)
    assert foreign.json_list.returncode == foreign.table.returncode, outcome(foreign.json_list)


# --- CLI defects ----------------------------------------------------------------------------


def test_passport_issue_refuses_the_maximum_ttl(prov: Provisioned) -> None:
    """`--ttl 7d` is the maximum lifetime passport.issue allows, yet the CLI is refused:
    it sets nbf = now - 5, so exp - nbf = 7 d + 5 s."""
    done = prov.token.xbgw(
        "passport", "issue", *prov.token.hsm(), "--kid", KID, *ISSUE_TERMS, "--ttl", "7d"
    )
    assert done.returncode == 0, outcome(done)


def assert_no_traceback(done: subprocess.CompletedProcess[str], needle: str) -> None:
    """A refusal (exit 1, or 2 for usage) whose last stderr line is xbgw's, naming ``needle``."""
    assert done.returncode in (1, 2), outcome(done)
    assert "Traceback" not in done.stderr, outcome(done)
    lines = done.stderr.splitlines()
    assert lines, outcome(done)
    assert lines[-1].startswith("xbgw"), outcome(done)  # "xbgw: ..." or argparse's "xbgw ...:"
    assert needle in lines[-1], outcome(done)


def test_passport_issue_with_a_transport_kid(prov: Provisioned) -> None:
    done = prov.token.xbgw(
        "passport", "issue", *prov.token.hsm(), "--kid", f"{ISSUER}/transport/1", *ISSUE_TERMS
    )
    assert_no_traceback(done, "is not a signing key")


def test_keys_public_with_a_negative_version(prov: Provisioned) -> None:
    done = prov.token.xbgw("keys", "public", *prov.token.hsm(), "--version", "-1")
    assert_no_traceback(done, "-1")


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("kid-not-a-key-ref", "not of the form owner/purpose/version"),
        ("dataset-missing", "missing.bin"),
        ("issuer-pem-missing", "missing.pem"),
        ("issuer-pem-not-a-key", "not a PEM public key"),
        ("issuer-kid-malformed", "'dpo/signing/01'"),
        ("issuer-kid-not-signing", "'dpo/transport/1' is not a signing key"),
        ("audience-invalid", "'Frankfurt'"),
    ],
)
def test_bad_input_is_one_line_not_a_traceback(offline: Results, case: str, needle: str) -> None:
    assert_no_traceback(offline[case], needle)

"""``xbgw tls import|rotate|show``: the TLS private key wrapped by the HSM, never plaintext at
rest (format and reasons: :mod:`gateway.tlskey`).

* ``import`` wraps a PEM key to the active storage version and writes ``*.xbgw-key`` next to
  it; the operator then points ``tls.private_key`` at it and deletes the plaintext.
* ``rotate`` installs a renewed key and certificate where the config points -- the key
  checked against the certificate, wrapped, both files replaced atomically -- for the
  running daemon to pick up on ``systemctl reload xbgw``.
* ``show`` tells what is configured without the HSM: the certificate's names and dates, and
  whether the key is wrapped and to which storage version. It never prints key material.

The storage version wrapped to is the *active* one: from the key ring on the gateway's ledger
(``-c``; under the state-directory lock when the daemon is stopped, read as the running daemon
wrote it otherwise), or, with no config, the highest storage version on the token.
"""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509

from gateway.cli.common import open_hsm
from gateway.errors import (
    KeyNotFoundError,
    StateLockedError,
    TlsKeyError,
    UsageError,
    XbgwError,
)
from gateway.keys import KeyRef, KeyState, Purpose, check_gateway_id
from gateway.secrets import PinSource
from gateway.tlskey import (
    CERTIFICATE_MODE,
    KEY_MODE,
    SUFFIX,
    NewFile,
    check_key_matches_certificate,
    leaf_certificate,
    looks_wrapped,
    parse_wrapped_tls_key,
    plain_pem,
    read_passphrase,
    read_tls_key_file,
    seal_tls_key,
    write_files_atomically,
)

if TYPE_CHECKING:
    from gateway.config import GatewayConfig
    from gateway.hsm import Hsm


# --- shared steps -------------------------------------------------------------------------------


def _config(args: argparse.Namespace) -> GatewayConfig | None:
    if not args.config:
        return None
    from gateway.config import load_config

    return load_config(args.config)


def _passphrase(args: argparse.Namespace) -> str | None:
    if args.passphrase_file:
        return read_passphrase(PinSource("file", args.passphrase_file), "--passphrase-file")
    if args.passphrase_env:
        return read_passphrase(PinSource("env", args.passphrase_env), "--passphrase-env")
    return None


def _input_key(args: argparse.Namespace) -> tuple[Path, bytes]:
    """The plaintext key named by ``--key``, as unencrypted PKCS#8 PEM in memory."""
    path = Path(args.key)
    try:
        data = read_tls_key_file(path, f"--key {path}")
        if looks_wrapped(data):
            ref = parse_wrapped_tls_key(data, f"--key {path}").storage_ref
            raise UsageError(f"--key {path} is already wrapped (to {ref}); give the PEM key")
        return path, plain_pem(data, _passphrase(args), f"--key {path}")
    except TlsKeyError as exc:
        raise UsageError(str(exc)) from None


def _owner(args: argparse.Namespace, config: GatewayConfig | None) -> str:
    """The gateway the key belongs to (checked before the HSM is opened)."""
    if config is None:
        if not args.gateway:
            raise UsageError("name the gateway the key belongs to: --gateway ID, or -c CONFIG")
        try:
            return check_gateway_id(args.gateway)
        except ValueError as exc:
            raise UsageError(f"--gateway: {exc}") from None
    if args.gateway and args.gateway != config.id:
        raise UsageError(f"--gateway {args.gateway} is not the gateway of {config.path}")
    return config.id


def _active_storage(owner: str, config: GatewayConfig | None, hsm: Hsm) -> tuple[KeyRef, str]:
    """The storage version new wraps go to, and how it was found (printed for the operator)."""
    if config is None:
        versions = hsm.versions(Purpose.STORAGE)
        if not versions:
            raise KeyNotFoundError("the HSM token has no storage key (run 'xbgw keys init')")
        highest = KeyRef(owner, Purpose.STORAGE, versions[-1])
        return highest, "the highest storage version on the token"
    from gateway.ledger import open_ledger
    from gateway.statelock import StateLock

    try:
        lock = StateLock(config.state_dir, "xbgw tls (offline)").acquire()
    except StateLockedError:
        return _active_in_running_ledger(config), "the active storage version of the daemon"
    try:
        from gateway.keyring import KeyRing

        ledger = open_ledger(config)
        try:
            ring = KeyRing(config.id, ledger, hsm, config.keys, pinned=config.hsm.key_versions)
            ref = KeyRef(config.id, Purpose.STORAGE, ring.storage)
        finally:
            ledger.close()
    finally:
        lock.release()
    return ref, f"the active storage version (key state in {config.state_dir})"


def _active_in_running_ledger(config: GatewayConfig) -> KeyRef:
    """The running daemon owns the state: read its key states, change nothing."""
    from gateway.ledger import open_ledger

    ledger = open_ledger(config)
    try:
        versions = ledger.key_versions()
    finally:
        ledger.close()
    active = [
        v.version for v in versions if v.purpose is Purpose.STORAGE and v.state is KeyState.ACTIVE
    ]
    if not active:
        raise KeyNotFoundError(
            f"the key state in {config.state_dir} has no active storage version "
            "(see 'xbgw keys status')"
        )
    return KeyRef(config.id, Purpose.STORAGE, active[0])


def _certificate_summary(certificate: x509.Certificate) -> str:
    return (
        f"{certificate.subject.rfc4514_string()}, serial {certificate.serial_number:x}, "
        f"not after {_when(certificate.not_valid_after_utc)}"
    )


def _names(certificate: x509.Certificate) -> list[str]:
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    dns = [f"DNS:{name}" for name in san.get_values_for_type(x509.DNSName)]
    uris = [f"URI:{uri}" for uri in san.get_values_for_type(x509.UniformResourceIdentifier)]
    return dns + uris


def _when(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


# --- the verbs ----------------------------------------------------------------------------------


def cmd_tls_import(args: argparse.Namespace) -> int:
    key_path, pem = _input_key(args)
    out = Path(args.output) if args.output else key_path.with_suffix(SUFFIX)
    if out.resolve() == key_path.resolve():
        raise UsageError(f"-o {out} is the plaintext key itself; write the wrapped key elsewhere")
    if out.is_dir():
        raise UsageError(f"-o {out} is a directory; name the file to write")
    if (out.exists() or out.is_symlink()) and not args.force:
        raise UsageError(f"{out} exists; give --force to replace it")
    config = _config(args)
    if config is not None:
        certificate = leaf_certificate(
            config.tls.certificate.read_bytes(), f"tls.certificate {config.tls.certificate}"
        )
        try:
            check_key_matches_certificate(pem, certificate, f"--key {key_path}")
        except TlsKeyError as exc:
            raise UsageError(
                f"{exc} ({config.tls.certificate}); to install a new key and certificate "
                "together use 'xbgw tls rotate'"
            ) from None
    owner = _owner(args, config)
    with open_hsm(args) as hsm:
        ref, how = _active_storage(owner, config, hsm)
        sealed = seal_tls_key(pem, hsm, ref)
    write_files_atomically([NewFile(out, sealed, KEY_MODE, owner_of=key_path)])
    where = str(config.path) if config is not None else "the gateway's config"
    print(f"wrapped  {key_path} to {ref} ({how})")
    print(f"wrote    {out} (mode {KEY_MODE:04o}; unusable without this gateway's HSM)")
    print(f"next:    set in {where}")
    print("           tls:")
    print(f"             private_key: {out.absolute()}")
    if config is not None and config.tls.private_key_passphrase is not None:
        print("         and remove tls.private_key_passphrase (a wrapped key needs none)")
    print("         reload the daemon (systemctl reload xbgw), then delete the plaintext key:")
    print(f"           shred -u {key_path}")
    return 0


def cmd_tls_rotate(args: argparse.Namespace) -> int:
    config = _config(args)
    if config is None:
        raise UsageError("name the gateway config with -c CONFIG: the files go where it points")
    key_path, pem = _input_key(args)
    cert_path = Path(args.cert)
    try:
        cert_pem = cert_path.read_bytes()
    except OSError as exc:
        raise UsageError(f"--cert {cert_path}: cannot read it: {exc.strerror}") from None
    try:
        certificate = leaf_certificate(cert_pem, f"--cert {cert_path}")
        check_key_matches_certificate(pem, certificate, f"--key {key_path} and --cert {cert_path}")
    except XbgwError as exc:
        raise UsageError(str(exc)) from None
    now = datetime.datetime.now(datetime.UTC)
    if certificate.not_valid_after_utc <= now:
        raise UsageError(
            f"--cert {cert_path} expired at {_when(certificate.not_valid_after_utc)}; "
            "it would be refused by every partner"
        )
    names = _names(certificate)
    with open_hsm(args) as hsm:
        ref, how = _active_storage(config.id, config, hsm)
        sealed = seal_tls_key(pem, hsm, ref)
    key_file, cert_file = config.tls.private_key, config.tls.certificate
    was_plaintext = _is_plaintext(key_file)
    write_files_atomically(
        [
            NewFile(key_file, sealed, KEY_MODE),
            NewFile(cert_file, cert_pem, CERTIFICATE_MODE),
        ]
    )
    print(f"checked  {key_path} belongs to {cert_path}: {_certificate_summary(certificate)}")
    if certificate.not_valid_before_utc > now:
        print(f"note:    it is valid only from {_when(certificate.not_valid_before_utc)}")
    if not any(name.split(":", 1)[1].lower() == config.id for name in names):
        shown = ", ".join(names) or "none"
        print(
            f"note:    its names ({shown}) do not include this gateway's id {config.id!r}: "
            "partners must expect that identity (partners[].identity)"
        )
    print(f"wrapped  the key to {ref} ({how})")
    print(f"wrote    {key_file} (wrapped key) and {cert_file}")
    if was_plaintext:
        print(f"note:    {key_file} held a plaintext PEM; it now holds the wrapped key")
    if config.tls.private_key_passphrase is not None:
        print(f"note:    remove tls.private_key_passphrase from {config.path} (no longer used)")
    print("next:    systemctl reload xbgw   (new handshakes present the new certificate;")
    print("         transfers in flight keep theirs), then delete the plaintext key:")
    print(f"           shred -u {key_path}")
    return 0


def _is_plaintext(path: Path) -> bool:
    try:
        return not looks_wrapped(read_tls_key_file(path))
    except TlsKeyError:
        return False


def cmd_tls_show(args: argparse.Namespace) -> int:
    config = _config(args)
    if config is None:
        raise UsageError("name the gateway config with -c CONFIG")
    cert_file, key_file = config.tls.certificate, config.tls.private_key
    certificate = leaf_certificate(cert_file.read_bytes(), f"tls.certificate {cert_file}")
    now = datetime.datetime.now(datetime.UTC)
    left = certificate.not_valid_after_utc - now
    expiry = f"in {left.days} days" if left.total_seconds() > 0 else "EXPIRED"
    print(f"certificate  {cert_file}")
    print(f"  subject    {certificate.subject.rfc4514_string()}")
    print(f"  names      {', '.join(_names(certificate)) or 'none (no subjectAltName)'}")
    print(f"  issuer     {certificate.issuer.rfc4514_string()}")
    print(f"  serial     {certificate.serial_number:x}")
    print(f"  not before {_when(certificate.not_valid_before_utc)}")
    print(f"  not after  {_when(certificate.not_valid_after_utc)} ({expiry})")
    print(f"private key  {key_file}")
    try:
        data = read_tls_key_file(key_file)
    except TlsKeyError as exc:
        print(f"  at rest    unknown: {exc}")
        return 1
    if not looks_wrapped(data):
        print("  at rest    PLAINTEXT PEM: wrap it with 'xbgw tls import'")
        return 0
    try:
        ref = parse_wrapped_tls_key(data, str(key_file)).storage_ref
    except TlsKeyError as exc:
        print(f"  at rest    malformed wrapped key: {exc}")
        return 1
    print(f"  at rest    wrapped by the HSM (xbgw-key format 1) to {ref}")
    state = _storage_state(config, ref.version)
    if state is not None:
        print(f"  storage    v{ref.version} is {state}{_state_note(state)}")
    if ref.owner != config.id:
        print(f"  WARNING    wrapped for {ref.owner!r}, not this gateway ({config.id!r})")
        return 1
    return 0


def _storage_state(config: GatewayConfig, version: int) -> str | None:
    """The version's lifecycle state in the ledger, if there is a ledger (read only)."""
    from gateway.ledger import LEDGER_FILE, open_ledger

    if config.state.database is None and not (config.state_dir / LEDGER_FILE).exists():
        return None

    try:
        ledger = open_ledger(config)
    except XbgwError:
        return None
    try:
        found = [
            v
            for v in ledger.key_versions()
            if v.purpose is Purpose.STORAGE and v.version == version
        ]
    finally:
        ledger.close()
    return found[0].state.value if found else "unknown to the key state"


def _state_note(state: str) -> str:
    if state == KeyState.ACTIVE.value:
        return ""
    if state == KeyState.DECRYPT_ONLY.value:
        return " (rotated since: 'xbgw keys rewrap' moves the key to the active version)"
    return " (the daemon will not unwrap it: install a new key with 'xbgw tls rotate')"

"""``xbgw check -c gateway.yaml``: everything ``xbgw serve`` needs at start, checked without
starting it, every problem reported at once.

Why it works this way:

* **Every check that can run, runs.** A broken partner entry (its CA missing, say) is one
  problem, but does not hide a wrong PIN: when the config does not load, the entries that
  failed -- ``partners[i]``, ``issuers[i]`` and the optional sections -- are left out and the
  rest is loaded again (:func:`gateway.config.load_config_document`). Only a mistake in a
  required section (``gateway``, ``listen``, ``tls``, ``hsm``, ``state_dir``) or in the YAML
  itself stops the checks after the config's.
* **The daemon's own checks, not a copy of them.** ``Hsm.open`` with the configured PIN
  source, ``KeyRing`` + ``Hsm.check_versions`` + ``KeyRing.check_attributes`` for the keys,
  ``load_tls_private_key`` for the TLS key (unwrapped by the HSM in memory, never written),
  the ledger's own migration for its schema. What the daemon logs as a WARNING while doing
  this (a plaintext TLS key, a modifiable replaced key version) is a ``warning:`` line here.
* **Read-only, and fine while the daemon runs.** SoftHSM tokens can be opened by two
  processes. The state-directory lock is not taken: the ledger is copied (SQLite's backup
  API, a consistent snapshot also while the daemon writes) into a private temporary
  directory, and the key ring adopts and migrates there -- what the daemon would do at start,
  without changing the real ledger. The writability probe is an unnamed temporary file.
* **Output**: ``ok:``, ``problem: WHAT -- WHAT TO DO``, ``warning: WHAT -- WHAT TO DO`` and
  ``not checked: WHAT -- WHY`` lines on stdout (the report is what the command was asked
  for, in one ordered stream a script can grep), then a summary line. Exit 0 when there is no
  problem (warnings do not count unless ``--strict``), 1 otherwise: the answer to "would it
  start", whatever the kind of problem. 78 (EX_CONFIG) stays ``serve``'s: it tells systemd
  not to restart a service, which means nothing for a command a person or script runs.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import logging
import os
import re
import sqlite3
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from cryptography import x509

from gateway import files
from gateway.config import GatewayConfig, load_config, load_config_document
from gateway.errors import (
    ConfigError,
    HsmConfigError,
    HsmError,
    HsmPinError,
    KeyNotFoundError,
    PinSourceError,
    StorageError,
    XbgwError,
)
from gateway.hsm import Hsm
from gateway.keyring import KeyRing
from gateway.keys import Purpose
from gateway.ledger import SCHEMA_VERSION, Ledger, open_ledger
from gateway.tlskey import leaf_certificate, load_tls_private_key, looks_wrapped, read_tls_key_file

EXPIRY_WARNING_DAYS = 30
LEDGER_NAME = "ledger.sqlite3"  # as the daemon names it (gateway.daemon.Daemon.start)
#: Entries of a config that can be left out to check the rest: list items and the optional
#: sections whose defaults the remaining checks do not depend on.
_PRUNABLE = re.compile(r"(partners|issuers)\[(\d+)\]|(limits|log|keys|compliance|retention)\b")
_FIX_CONFIG = "fix it in the config file"


@dataclass
class Report:
    """The lines of one check, printed as they come (a slow HSM shows where it is)."""

    strict: bool = False
    passed: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def ok(self, what: str) -> None:
        self.passed.append(what)
        print(f"ok: {what}", flush=True)

    def problem(self, what: str, todo: str) -> None:
        self.problems.append(what)
        print(f"problem: {what} -- {todo}", flush=True)

    def warning(self, what: str, todo: str | None) -> None:
        """``todo`` None: the message says it already (the daemon's own warnings)."""
        self.warnings.append(what)
        print(f"warning: {what}" + (f" -- {todo}" if todo else ""), flush=True)

    def skipped(self, what: str, why: str) -> None:
        print(f"not checked: {what} -- {why}", flush=True)

    @property
    def failed(self) -> bool:
        return bool(self.problems or (self.strict and self.warnings))

    def summary(self, config: str) -> str:
        counts = (
            f"{_count(len(self.problems), 'problem')}, {_count(len(self.warnings), 'warning')}, "
            f"{_count(len(self.passed), 'check')} passed"
        )
        strict = " (--strict: warnings fail)" if self.strict and self.warnings else ""
        return f"{config}: {counts}{strict}"


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def cmd_check(args: argparse.Namespace) -> int:
    report = Report(strict=args.strict)
    with _warnings_as_lines(report):
        run_checks(Path(args.config), report, args.expiry_warning)
    print(report.summary(args.config), flush=True)
    return 1 if report.failed else 0


def run_checks(path: Path, report: Report, warn_days: int) -> None:
    """Every check, in the order the daemon meets them at start."""
    config = _config(path, report)
    if config is None:
        report.skipped(
            "state directory, ledger, HSM, keys, TLS, partners",
            "the config does not load; fix the problems above and run the check again",
        )
        return
    now = datetime.datetime.now(datetime.UTC)
    _state_dir(config, report)
    with tempfile.TemporaryDirectory(prefix="xbgw-check-") as scratch:
        ledger = _ledger_copy(config, Path(scratch), report)
        hsm = _hsm(config, report)
        try:
            ring = _keys(config, hsm, ledger, report)
            _tls(config, hsm, ring, report, now, warn_days)
        finally:
            if hsm is not None:
                hsm.close()
            if ledger is not None:
                ledger.close()
    _partners(config, report, now, warn_days)


# --- the config -----------------------------------------------------------------------------


def _config(path: Path, report: Report) -> GatewayConfig | None:
    try:
        config = load_config(path)
    except ConfigError as exc:
        for line in exc.problems:
            report.problem(line, _FIX_CONFIG)
        return _without_broken_entries(path, exc.problems, report)
    report.ok(
        f"config {path} loads: gateway {config.id}, {_count(len(config.partners), 'partner')}, "
        f"{_count(len(config.issuers), 'issuer')}"
    )
    return config


def _without_broken_entries(
    path: Path, problems: list[str], report: Report
) -> GatewayConfig | None:
    """The config without the entries its problems are in, if they can be left out."""
    prefix = f"{path}: "
    dropped: set[tuple[str, int | None]] = set()
    for line in problems:
        match = _PRUNABLE.match(line.removeprefix(prefix)) if line.startswith(prefix) else None
        if match is None:
            return None  # a required section, the YAML itself, a duplicate key...
        if match.group(1):
            dropped.add((match.group(1), int(match.group(2))))
        else:
            dropped.add((match.group(3), None))
    try:
        doc = yaml.safe_load(files.read_bounded(path, files.YAML_MAX))
    except (ConfigError, yaml.YAMLError, ValueError):
        return None
    if not isinstance(doc, dict):
        return None
    for key, index in sorted(dropped, key=lambda d: (d[0], -(d[1] or 0))):
        if index is None:
            doc.pop(key, None)
        elif isinstance(items := doc.get(key), list) and index < len(items):
            del items[index]
    try:
        config = load_config_document(doc, path)
    except ConfigError:
        return None
    left_out = ", ".join(f"{k}[{i}]" if i is not None else k for k, i in sorted(dropped, key=str))
    report.skipped(left_out, "its problems are above; the other checks run without it")
    return config


# --- the state directory and the ledger -----------------------------------------------------


def _state_dir(config: GatewayConfig, report: Report) -> None:
    """Writable by this user: the daemon creates the ledger, spool and lock file there."""
    directory = config.state_dir
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent  # the daemon creates the missing part (mkdir -p)
    who = _user()
    try:
        if not existing.is_dir():
            raise NotADirectoryError(f"{existing} is not a directory")
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        report.problem(
            f"state_dir {directory}: {existing} is not writable by {who} ({exc.strerror or exc})",
            "run the check as the daemon's user, or give that user the directory",
        )
        return
    made = "" if existing == directory else f" (created at start under {existing})"
    report.ok(f"state directory {directory} is writable by {who}{made}")


def _user() -> str:
    import pwd

    try:
        return f"user {pwd.getpwuid(os.geteuid()).pw_name}"
    except KeyError:
        return f"uid {os.geteuid()}"


def _ledger_copy(config: GatewayConfig, scratch: Path, report: Report) -> Ledger | None:
    """A private copy of the ledger, migrated as the daemon would: what the key checks use."""
    if config.state.database is not None:
        return _shared_ledger_copy(config, scratch, report)
    source = config.state_dir / LEDGER_NAME
    copy = scratch / LEDGER_NAME
    found = 0
    if source.exists():
        try:
            found = _backup(source, copy)
        except sqlite3.Error as exc:
            report.problem(
                f"ledger {source} cannot be read: {exc}",
                "run the check as the daemon's user; restore the ledger from a backup if "
                "it is damaged",
            )
            return None
    try:
        ledger = Ledger(copy)
    except StorageError as exc:
        why = str(exc).replace(str(copy), str(source))  # the copy is ours, not theirs
        report.problem(why, "the daemon would not start with it")
        return None
    if not source.exists():
        report.ok(f"ledger {source}: none yet (created at first start)")
    elif found == SCHEMA_VERSION:
        report.ok(f"ledger {source}: schema version {found} (current)")
    else:
        report.ok(
            f"ledger {source}: schema version {found}, brought up to {SCHEMA_VERSION} at the "
            "next start (tried on a copy)"
        )
    return ledger


def _shared_ledger_copy(config: GatewayConfig, scratch: Path, report: Report) -> Ledger | None:
    """The database the nodes share, reached and its schema checked as the daemon would --
    nothing written there -- and its key states copied into a private SQLite ledger for the
    key checks (which may adopt keys: never in the shared database from a check)."""
    try:
        shared = open_ledger(config)
    except (StorageError, PinSourceError) as exc:
        report.problem(str(exc), "the daemon would not start with it")
        return None
    try:
        where = shared.store.where
        rows = shared.store.all(f"SELECT {_KEY_COLUMNS} FROM key_versions")  # noqa: S608
    except StorageError as exc:
        report.problem(str(exc), "the daemon would not start with it")
        return None
    finally:
        shared.close()
    copy = Ledger(scratch / LEDGER_NAME)
    with copy.store.transaction() as db:
        db.executemany(
            f"INSERT INTO key_versions ({_KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
            [tuple(row[i] for i in range(8)) for row in rows],
        )
    report.ok(f"ledger database {where}: schema version {SCHEMA_VERSION} (current)")
    return copy


_KEY_COLUMNS = (
    "purpose, version, state, created_at, activated_at, deactivated_at, retired_at, destroyed_at"
)


def _backup(source: Path, copy: Path) -> int:
    """Copy ``source`` to ``copy`` with SQLite's backup API; its schema version."""
    uri = f"{source.resolve().as_uri()}?mode=ro"
    reader = sqlite3.connect(uri, uri=True)
    try:
        reader.execute("PRAGMA busy_timeout=5000")
        found = int(reader.execute("PRAGMA user_version").fetchone()[0])
        writer = sqlite3.connect(copy)
        try:
            reader.backup(writer)
        finally:
            writer.close()
    finally:
        reader.close()
    return found


# --- the HSM and the keys -------------------------------------------------------------------


def _hsm(config: GatewayConfig, report: Report) -> Hsm | None:
    hsm_config = config.hsm
    if hsm_config.softhsm_conf is not None:
        os.environ["SOFTHSM2_CONF"] = str(hsm_config.softhsm_conf)  # as the daemon does
    try:
        pin = hsm_config.pin.read()
    except PinSourceError as exc:
        report.problem(
            f"hsm.pin: {exc}", "run the check as the daemon's user, with its environment"
        )
        return None
    try:
        hsm = Hsm.open(str(hsm_config.module), hsm_config.token, pin)
    except HsmPinError as exc:
        report.problem(
            str(exc),
            "put the token's user PIN where hsm.pin says; do not try again with the same "
            "PIN: an HSM locks after a few wrong ones",
        )
        return None
    except HsmConfigError as exc:
        report.problem(str(exc), "check hsm.module, hsm.token and hsm.softhsm_conf")
        return None
    except HsmError as exc:
        report.problem(f"HSM: {exc}", "check that the HSM is reachable, then run the check again")
        return None
    report.ok(f"HSM token {hsm_config.token!r} in {hsm_config.module}: PIN accepted")
    return hsm


def _keys(
    config: GatewayConfig, hsm: Hsm | None, ledger: Ledger | None, report: Report
) -> KeyRing | None:
    if hsm is None or ledger is None:
        report.skipped("key versions", "needs the HSM and the ledger (see above)")
        return None
    try:
        ring = KeyRing(config.id, ledger, hsm, config.keys, pinned=config.hsm.key_versions)
        current = ring.current()
        hsm.check_versions(current.as_dict())
        ring.check_attributes(hsm.list_keys())
    except (KeyNotFoundError, ConfigError) as exc:
        report.problem(str(exc), "see README, Rotating keys")
        return None
    except XbgwError as exc:
        report.problem(f"key versions: {exc}", "check the HSM, then run the check again")
        return None
    versions = ", ".join(f"{p.value} v{current.as_dict()[p]}" for p in Purpose)
    report.ok(f"keys: {versions} active on the token, each locked to its one capability")
    return ring


# --- TLS and partners -----------------------------------------------------------------------


def _tls(
    config: GatewayConfig,
    hsm: Hsm | None,
    ring: KeyRing | None,
    report: Report,
    now: datetime.datetime,
    warn_days: int,
) -> None:
    tls = config.tls
    try:
        data = files.read_bounded(tls.certificate, files.PEM_MAX)
        certificate = leaf_certificate(data, f"tls.certificate {tls.certificate}")
    except ConfigError as exc:
        report.problem(f"tls.certificate: {exc}", _FIX_CONFIG)
    else:
        _validity(
            f"tls.certificate {tls.certificate}",
            certificate,
            report,
            now,
            warn_days,
            "renew it and install it with 'xbgw tls rotate'",
        )
    try:
        wrapped = looks_wrapped(read_tls_key_file(tls.private_key))
    except ConfigError as exc:
        report.problem(str(exc), "run the check as the daemon's user; or fix tls.private_key")
        return
    if wrapped and (hsm is None or ring is None):
        report.skipped("the TLS private key", "it is wrapped by the HSM, whose check failed")
        return
    try:
        pem = load_tls_private_key(
            tls.private_key,
            tls.certificate,
            config.id,
            _NoHsm() if hsm is None else hsm,
            passphrase=tls.private_key_passphrase,
            opens=None if ring is None else lambda version: ring.opens(Purpose.STORAGE, version),
        )
    except XbgwError as exc:
        report.problem(str(exc), "install a matching key and certificate with 'xbgw tls rotate'")
        return
    del pem  # in memory only, as in the daemon
    how = "unwrapped by the HSM" if wrapped else "a plaintext PEM"
    report.ok(f"tls.private_key {tls.private_key} ({how}) matches the certificate")


class _NoHsm:
    """For a plaintext TLS key when the HSM did not open: nothing to unwrap."""

    def wrap(self, version: int, secret: bytes, /) -> bytes:
        raise HsmError("the HSM did not open")

    def unwrap(self, version: int, wrapped: bytes, /) -> bytes:
        raise HsmError("the HSM did not open")


def _partners(config: GatewayConfig, report: Report, now: datetime.datetime, days: int) -> None:
    """The config loader parsed each CA bundle and pinned key already; here their dates."""
    for partner in config.partners:
        where = f"partner {partner.id}: ca {partner.ca}"
        try:
            bundle = x509.load_pem_x509_certificates(partner.ca_pem)
        except ValueError:
            report.problem(f"{where} is not a PEM X.509 certificate", _FIX_CONFIG)
            continue
        good = [
            _validity(
                f"{where} ({ca.subject.rfc4514_string()})",
                ca,
                report,
                now,
                days,
                f"get a current CA certificate from {partner.id}'s operator",
            )
            for ca in bundle
        ]
        if all(good):
            report.ok(
                f"partner {partner.id}: CA ({_count(len(bundle), 'certificate')}) and signing "
                "key parse"
            )
    if config.issuers:
        n = len(config.issuers)
        report.ok(f"issuers: {_count(n, 'public key')} {'parses' if n == 1 else 'parse'}")


def _validity(
    what: str,
    certificate: x509.Certificate,
    report: Report,
    now: datetime.datetime,
    warn_days: int,
    todo: str,
) -> bool:
    """Within its validity (a problem if not), and not ending within ``warn_days`` (a
    warning). True when nothing was reported."""
    start, end = certificate.not_valid_before_utc, certificate.not_valid_after_utc
    if now < start:
        report.problem(f"{what} is not valid before {start:%Y-%m-%d %H:%M}Z", todo)
        return False
    if now >= end:
        report.problem(f"{what} expired on {end:%Y-%m-%d %H:%M}Z", todo)
        return False
    left = end - now
    if left < datetime.timedelta(days=warn_days):
        report.warning(f"{what} expires on {end:%Y-%m-%d %H:%M}Z, in {left.days} days", todo)
        return False
    if what.startswith("tls.certificate"):
        report.ok(f"{what} valid until {end:%Y-%m-%d}")
    return True


# --- the daemon's warnings ------------------------------------------------------------------


class _Collect(logging.Handler):
    def __init__(self, report: Report) -> None:
        super().__init__(logging.WARNING)
        self.report = report

    def emit(self, record: logging.LogRecord) -> None:
        self.report.warning(record.getMessage(), None)


@contextlib.contextmanager
def _warnings_as_lines(report: Report) -> Iterator[None]:
    """What the daemon's start logs as a WARNING becomes a ``warning:`` line; its INFO
    lines (keys adopted, in the copy of the ledger) are not shown."""
    logger = logging.getLogger("xbgw")
    handler = _Collect(report)
    saved = logger.propagate, logger.level
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate, logger.level = saved

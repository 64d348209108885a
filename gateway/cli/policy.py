"""``xbgw policy explain|check|counters``: the compliance rules, offline.

Why offline and read-only: the questions these answer -- why was (or would be) this transfer
refused, is this rule table right, how much has this exporter sent this year -- are asked by
an operator or a DPO, often while the daemon is busy, and the answer must not change what it
explains. So the verbs load the gateway's configuration (its rule tables and overrides,
partners, issuers), read its ledger opened read-only (:meth:`gateway.ledger.Ledger.read_only`:
works while the daemon writes it), and judge with the same :class:`Border` the daemon uses --
the same facts, the same counters -- but call only its :meth:`~Border.facts` and the rule set's
``decide``: nothing is reserved, logged or counted in the metrics.

Imported only when one of these verbs runs.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from gateway.cli.common import EXIT_FAILURE, read_token
from gateway.compliance import (
    Decision,
    Direction,
    Exempt,
    Outcome,
    Plain,
    Require,
    RuleSet,
    RuleTableError,
    TransferFacts,
    load_tables,
    shipped_tables,
)
from gateway.compliance.border import Border
from gateway.compliance.facts import FACTS, Evidence, show
from gateway.config import GatewayConfig, PartnerConfig, load_config
from gateway.errors import PeerNotAuthorizedError
from gateway.ledger import Ledger, open_ledger
from gateway.passport import PassportVerifier, VerifiedPassport, inspect

LEDGER = "ledger.sqlite3"  # in the state directory, as the daemon names it


def _ledger(config: GatewayConfig) -> tuple[str, Ledger]:
    """The ledger for reading, and how messages name it: the SQLite file, or the database
    the nodes share (``state.database``)."""
    if config.state.database is not None:
        ledger = open_ledger(config)
        return ledger.store.where, ledger
    path = config.state_dir / LEDGER
    return str(path), Ledger.read_only(path)


# --- explain -----------------------------------------------------------------------------------


def cmd_policy_explain(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    token = read_token(args.passport)
    direction = Direction(args.direction) if args.direction else _direction(config, token)
    passport, sender, receiver, why = _verify(config, token, direction)
    claims = passport.claims
    _, ledger = _ledger(config)
    try:
        border = Border(config.compliance, ledger)
        facts = border.facts(
            direction,
            claims.xbgw,
            transfer_id=claims.jti,
            sender=sender,
            receiver=receiver,
            has_digest=claims.sub is not None,
        )
        year = border.year(facts.now)
        egress = direction is Direction.EGRESS
        record = ledger.outbound(claims.jti) if egress else ledger.inbound(claims.jti)
        state = None if record is None else record.state.value
    finally:
        ledger.close()
    decision = config.compliance.rules.decide(facts)
    enforced = direction is Direction.EGRESS or config.compliance.ingress == "enforce"
    said = _Said(config, passport, facts, decision, enforced, year, state)
    print(
        json.dumps(_explained(said, args.all)) if args.json else _explanation(said, why, args.all)
    )
    return 0 if decision.allow else EXIT_FAILURE


@dataclass(frozen=True)
class _Said:
    """Everything an explanation shows."""

    config: GatewayConfig
    passport: VerifiedPassport
    facts: TransferFacts
    decision: Decision
    enforced: bool
    year: int
    state: str | None  # of this transfer in the ledger, if it is there already


def _direction(config: GatewayConfig, token: str) -> Direction:
    """Egress when the passport's sender is this gateway, ingress when it is addressed to it
    (read unverified only to choose; the verification that follows decides)."""
    _, payload = inspect(token, max_token_bytes=config.limits.max_passport_bytes)
    terms = payload.get("xbgw")
    sender = terms.get("sender") if isinstance(terms, dict) else None
    if sender == config.id:
        return Direction.EGRESS
    if payload.get("aud") == config.id:
        return Direction.INGRESS
    raise PeerNotAuthorizedError(
        f"passport {payload.get('jti')!r} is neither sent by this gateway ({config.id}) nor "
        f"addressed to it (sender {sender!r}, audience {payload.get('aud')!r}): explain it "
        "with the configuration of the gateway that sends or receives it"
    )


def _partner(config: GatewayConfig, partner_id: object, role: str) -> PartnerConfig:
    for partner in config.partners:
        if partner.id == partner_id:
            return partner
    known = ", ".join(p.id for p in config.partners) or "none"
    raise PeerNotAuthorizedError(
        f"the passport's {role} {partner_id!r} is not a partner of {config.id} (partners: {known})"
    )


_End = tuple[str, str]  # (gateway id, jurisdiction): one end of the transfer, as Border takes it


def _verify(
    config: GatewayConfig, token: str, direction: Direction
) -> tuple[VerifiedPassport, _End, _End, str]:
    """The passport verified as the daemon would for ``direction``; (passport, sender,
    receiver, what was verified, in words)."""
    me = (config.id, config.gateway.jurisdiction)
    partner = None
    if direction is Direction.EGRESS:  # as xbgw send does, before it offers anything
        _, payload = inspect(token, max_token_bytes=config.limits.max_passport_bytes)
        terms = payload.get("xbgw")
        _must_send(
            config, payload.get("jti"), terms.get("sender") if isinstance(terms, dict) else None
        )
        partner = _partner(config, payload.get("aud"), "audience")
        audience = f"audience {partner.id} (the partner it is addressed to)"
    else:  # as the offer does: addressed to us, from the partner it names
        audience = f"audience {config.id} (this gateway)"
    verifier = PassportVerifier(
        config.trusted_issuer_keys(),
        audience=partner.id if partner is not None else config.id,
        leeway_seconds=config.limits.passport_leeway_seconds,
        max_token_bytes=config.limits.max_passport_bytes,
    )
    passport = verifier.verify(token)
    claims = passport.claims
    why = f"verified: signed by {passport.kid}, {audience}"
    if partner is not None:
        _must_send(config, claims.jti, claims.xbgw.sender)  # now read from verified claims
        return passport, me, (partner.id, partner.jurisdiction), why
    sender = _partner(config, claims.xbgw.sender, "sender")
    return passport, (sender.id, sender.jurisdiction), me, why + f", sender {sender.id} (a partner)"


def _must_send(config: GatewayConfig, jti: object, sender: object) -> None:
    """Egress: the passport names this gateway as its sender (the daemon's words)."""
    if sender != config.id:
        raise PeerNotAuthorizedError(
            f"passport {jti} is for sender {sender!r}, not this gateway ({config.id})"
        )


def _explanation(said: _Said, why: str, everything: bool) -> str:
    config, facts, decision = said.config, said.facts, said.decision
    route = (
        f"{facts.sender} ({facts.sender_jurisdiction}) -> {facts.receiver} "
        f"({facts.receiver_jurisdiction})"
    )
    mode = "enforced" if said.enforced else "record-only: a refusal is logged, not enforced"
    lines = [
        f"passport {said.passport.claims.jti}: {route}, {facts.direction.value} at "
        f"{config.id} ({mode})",
        f"  {why}",
        f"  rule tables: {', '.join(config.compliance.rules.tables)}",
    ]
    if said.state is not None:
        lines.append(
            f"  note: this transfer is already in the ledger ({said.state}); the counts below "
            "are today's, which may include it, not those it was judged with"
        )
    lines.append(decision.explain(everything=everything))
    if not everything and all(e.outcome is Outcome.NOT_APPLICABLE for e in decision.trail):
        lines.append("  (no rule applies; --all lists every rule with the facts it read)")
    lines.append("facts:")
    rows = [
        ("exporter", f"{facts.exporter} ({'a CIIO' if facts.ciio else 'not a CIIO'})"),
        (
            "data",
            f"cn_class {facts.cn_class}, cn_pi {facts.cn_pi}, eu_class {facts.eu_class}, "
            f"{facts.subjects} subjects",
        ),
        ("categories", ", ".join(facts.categories) or "none"),
        ("zone", show(facts.zone)),
        ("purpose", facts.purpose),
        ("evidence", "; ".join(_evidence(e) for e in facts.evidence) or "none"),
        (
            "this year",
            f"{said.year} ({config.compliance.year_timezone}): {facts.exporter} has "
            f"{facts.year_subjects} subjects of personal information and "
            f"{facts.year_sensitive} of sensitive personal information counted for "
            f"{facts.direction.value} at {config.id}, committed and in flight, before this "
            "transfer",
        ),
    ]
    lines += [f"  {name:<11} {value}" for name, value in rows]
    return "\n".join(lines)


def _evidence(e: Evidence) -> str:
    text = f"{e.kind} {e.reference}"
    for name in ("article", "module", "tia"):
        if (value := getattr(e, name)) is not None:
            text += f" {name}={value}"
    return text + (f" expires={_utc(e.expires)}" if e.expires is not None else "")


def _explained(said: _Said, everything: bool) -> dict[str, Any]:
    config, facts, decision = said.config, said.facts, said.decision
    shown = [e for e in decision.trail if everything or e.outcome is not Outcome.NOT_APPLICABLE]
    return {
        "passport": said.passport.claims.jti,
        "gateway": config.id,
        "direction": facts.direction.value,
        "enforced": said.enforced,
        "signed_by": str(said.passport.kid),
        "tables": list(config.compliance.rules.tables),
        "ledger_state": said.state,
        "decision": {
            "allow": decision.allow,
            "outcome": "allowed" if decision.allow else "refused",
            "refused_by": [e.rule for e in decision.refused_by],
            "reasons": list(decision.reasons),
            "flags": list(decision.flags),
        },
        "trail": [e.as_dict() for e in shown],
        "facts": {
            **{name: fact.get(facts) for name, fact in FACTS.items()},
            "evidence": [asdict(e) for e in facts.evidence],
        },
        "year": said.year,
        "year_timezone": config.compliance.year_timezone,
    }


def _utc(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


# --- check -------------------------------------------------------------------------------------


def cmd_policy_check(args: argparse.Namespace) -> int:
    """Each table checked on its own, with the ``--with`` tables it may name rules of; every
    mistake in every one reported at once (a ``RuleTableError``: exit 78)."""
    context = [_table(name) for name in args.with_tables or []]
    problems: list[str] = []
    checked: list[tuple[str, RuleSet]] = []
    for name in args.tables:
        table = _table(name)
        others = [t for t in context if _same(t) != _same(table)]
        try:
            rules = load_tables([*others, table])
        except RuleTableError as exc:
            problems += [p for p in exc.problems if p not in problems]
            continue
        checked.append((_label(table), rules))
    if problems:
        raise RuleTableError(problems)
    for label, rules in checked:
        name = rules.tables[-1]  # "name vN" of the table checked; the --with ones come first
        own = [rule for rule in rules.rules if rule.table == name]
        with_ = f", checked with {', '.join(rules.tables[:-1])}" if len(rules.tables) > 1 else ""
        print(f"{name} ({label}): {len(own)} rule{'s' * (len(own) != 1)}{with_}")
        width = max((len(rule.id) for rule in own), default=0)
        for rule in own:
            print(f"  {rule.id:<{width}}  {rule.article}  -> {_action(rule.action)}")
    return 0


def _table(name: str) -> str | Path:
    """A file if there is one by that name, else a shipped table's name (or a mistake that
    :func:`load_tables` reports)."""
    return Path(name) if os.path.exists(name) else name


def _same(table: str | Path) -> str:
    """What two arguments that name the same table have in common: the file's real path."""
    if isinstance(table, str) and table in shipped_tables():
        table = Path(str(resources.files("gateway.compliance") / "tables" / f"{table}.yaml"))
    return str(Path(table).resolve()) if isinstance(table, Path) else table


def _label(table: str | Path) -> str:
    return f"shipped: {table}" if isinstance(table, str) else str(table)


def _action(action: Plain | Require | Exempt) -> str:
    if isinstance(action, Require):
        return "require " + " or ".join(map(str, action.any_of))
    if isinstance(action, Exempt):
        return "exempt " + ", ".join(action.rules)
    return action.value


# --- counters ----------------------------------------------------------------------------------


def cmd_policy_counters(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    path, ledger = _ledger(config)
    try:
        counted = ledger.compliance_counters()
        in_flight = ledger.compliance_in_flight()
        this_year = Border(config.compliance, ledger).year(int(time.time()))
    finally:
        ledger.close()
    timezone = config.compliance.year_timezone
    rows: dict[tuple[int, str, str], list[int]] = {}
    for counters, at in ((counted, 0), (in_flight, 2)):
        for c in counters:
            if args.year is None or c.year == args.year:
                row = rows.setdefault((c.year, c.direction, c.exporter), [0, 0, 0, 0])
                row[at], row[at + 1] = c.subjects, c.sensitive
    ordered = sorted(rows.items(), key=lambda item: (-item[0][0], item[0][1], item[0][2]))
    if args.json:
        print(json.dumps(_counters_json(config, path, timezone, this_year, ordered)))
        return 0
    print(f"compliance counters of {config.id} (ledger {path}, read-only)")
    print(f"years: calendar years in {timezone} (now {this_year})")
    print(
        "data subjects of personal (non-sensitive) and of sensitive personal information; "
        "in flight: open transfers, counted when they commit"
    )
    if not ordered:
        print("nothing counted yet" if args.year is None else f"nothing counted in {args.year}")
        return 0
    print(
        f"{'YEAR':<6}{'DIRECTION':<11}{'PERSONAL':>10}{'SENSITIVE':>11}  {'IN FLIGHT':<16}EXPORTER"
    )
    for (year, direction, exporter), (subjects, sensitive, open_, open_sensitive) in ordered:
        flying = f"+{open_} / +{open_sensitive}" if open_ or open_sensitive else "-"
        print(f"{year:<6}{direction:<11}{subjects:>10}{sensitive:>11}  {flying:<16}{exporter}")
    return 0


def _counters_json(
    config: GatewayConfig,
    path: str,
    timezone: str,
    this_year: int,
    ordered: list[tuple[tuple[int, str, str], list[int]]],
) -> dict[str, Any]:
    return {
        "gateway": config.id,
        "ledger": path,
        "year_timezone": timezone,
        "current_year": this_year,
        "counters": [
            {
                "year": year,
                "direction": direction,
                "exporter": exporter,
                "subjects": subjects,
                "sensitive": sensitive,
                "in_flight_subjects": open_,
                "in_flight_sensitive": open_sensitive,
            }
            for (year, direction, exporter), (subjects, sensitive, open_, open_sensitive) in ordered
        ],
    }

"""The ``xbgw`` command line.

Every verb is a thin client: HSM verbs open the token named on the command line (or in the
gateway config), daemon verbs talk to the local Unix socket. Errors from the one error tree
are caught once, in :func:`main`, and printed as one line with a non-zero exit.

Layout (imports point one way: this module -> verb modules -> :mod:`gateway.cli.common`):

* :mod:`gateway.cli.common`: exit codes, argument helpers, passports read from the command
  line, the HSM arguments and :func:`~gateway.cli.common.open_hsm`;
* :mod:`gateway.cli.keys`, :mod:`gateway.cli.passport`: the HSM and passport verbs;
* :mod:`gateway.cli.daemon`: ``serve`` and the verbs that talk to the running daemon; imported
  only when one of them runs, so ``xbgw keys`` and ``xbgw passport`` do not load grpc;
* :mod:`gateway.cli.__main__`: ``python -m gateway.cli``.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from collections.abc import Callable, Sequence
from types import ModuleType

import gateway
from gateway import DEFAULT_SOCKET
from gateway.cli.common import (
    EXIT_CONFIG,
    EXIT_FAILURE,
    EXIT_USAGE,
    add_hsm_arguments,
    closed_pipe_exits_quietly,
    error_line,
    parse_duration,
    parse_size,
    positive_int,
)
from gateway.cli.keys import cmd_keys_init, cmd_keys_list, cmd_keys_public
from gateway.cli.passport import (
    ExplicitTerm,
    cmd_passport_inspect,
    cmd_passport_issue,
    cmd_passport_verify,
)
from gateway.cli.tls import cmd_tls_import, cmd_tls_rotate, cmd_tls_show
from gateway.errors import ConfigError, HsmPinError, UsageError, XbgwError
from gateway.keys import Purpose

__all__ = [
    "EXIT_CONFIG",
    "EXIT_FAILURE",
    "EXIT_USAGE",
    "build_parser",
    "main",
    "parse_duration",
    "parse_size",
]


# --- parser ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xbgw",
        description="Cross-border data exchange gateway: keys, passports, transfers.",
    )
    parser.add_argument("--version", action="version", version=f"xbgw {gateway.__version__}")
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="add the status code (and gRPC's own words) to an error, e.g. xbgw -v status",
    )
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="COMMAND")

    keys = verbs.add_parser(
        "keys", help="HSM keys: create, list, export, rotate, retire, destroy"
    ).add_subparsers(dest="keys_verb", required=True, metavar="ACTION")
    init = keys.add_parser("init", help="create version 1 of each key purpose on a token")
    add_hsm_arguments(init)
    init.add_argument(
        "--purposes",
        type=_purpose_list,
        metavar="LIST",
        help="comma-separated purposes to create (default all; an issuer token: signing)",
    )
    init.set_defaults(func=cmd_keys_init)
    listing = keys.add_parser("list", help="key versions with the flags the HSM reports")
    add_hsm_arguments(listing)
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(func=cmd_keys_list)
    public = keys.add_parser("public", help="print a transport or signing public key (PEM)")
    add_hsm_arguments(public)
    public.add_argument("--purpose", choices=["transport", "signing"], default="signing")
    public.add_argument("--version", type=positive_int, help="key version (default: newest)")
    public.add_argument("-o", "--output", help="write the PEM to this file")
    public.set_defaults(func=cmd_keys_public)
    _add_lifecycle_verbs(keys)

    passport = verbs.add_parser(
        "passport", help="data passports: issue one in the HSM, inspect, verify"
    ).add_subparsers(dest="passport_verb", required=True, metavar="ACTION")
    issue = passport.add_parser(
        "issue",
        help="sign a passport with an issuer key in the HSM",
        description="The transfer is named by flags (--to, --sender, --src, --dst, "
        "--byte-limit); the facts of the data come from flags and from --claims FILE, a YAML "
        "mapping of the xbgw claim names (classification, pi, eu_class, subjects, purpose, "
        "legal_basis, exporter, ciio, categories, zone, evidence), and a flag overrides the "
        "file. Evidence expiries are ISO dates (00:00 UTC), ISO times with a zone, or Unix "
        "seconds.",
    )
    add_hsm_arguments(issue)
    issue.add_argument("--kid", required=True, help="issuer key: ISSUER/signing/VERSION")
    issue.add_argument("--to", required=True, help="receiving gateway id (aud)")
    issue.add_argument("--claims", metavar="FILE", help="YAML file of terms; flags override it")
    issue.add_argument("--sender", required=True, help="sending gateway id")
    issue.add_argument("--src", required=True, help="source jurisdiction, e.g. CN-SH")
    issue.add_argument("--dst", required=True, help="destination jurisdiction, e.g. EU-DE")
    issue.add_argument(
        "--cn-class",
        "--classification",
        dest="classification",
        action=ExplicitTerm,
        default="general",
        choices=["core", "important", "general"],
        metavar="CLASS",
        help="PRC data class, DSL Art. 21: core, important or general (default: general)",
    )
    issue.add_argument(
        "--pi",
        action=ExplicitTerm,
        default="none",
        choices=["none", "personal", "sensitive"],
        help="PRC personal information, PIPL (default: none)",
    )
    issue.add_argument(
        "--eu-class",
        choices=["non-personal", "personal", "special"],
        help="GDPR class; must agree with --pi (default: from --pi)",
    )
    issue.add_argument(
        "--subjects",
        action=ExplicitTerm,
        type=int,
        default=0,
        help="number of data subjects (default: 0)",
    )
    issue.add_argument("--exporter", help="the data handler (default: the sending gateway)")
    issue.add_argument(
        "--ciio",
        action=argparse.BooleanOptionalAction,
        help="the exporter is a critical-information-infrastructure operator (default: no)",
    )
    issue.add_argument(
        "--category",
        action="append",
        dest="categories",
        metavar="NAME",
        help="a data category, for free-trade-zone lists (repeatable)",
    )
    issue.add_argument("--zone", help="the free-trade zone the data leaves from, e.g. lingang")
    issue.add_argument(
        "--evidence",
        action="append",
        metavar="KIND:REF[:K=V,...]",
        help="evidence, e.g. cac-assessment:CAC-2026-0042:expires=2029-01-31 (repeatable; "
        "K is expires, article, module or tia)",
    )
    issue.add_argument("--purpose", help="purpose of the transfer (here or in --claims)")
    issue.add_argument("--legal-basis", help="free text for the audit record (here or in --claims)")
    issue.add_argument("--byte-limit", type=parse_size, required=True, help="e.g. 64MiB")
    issue.add_argument("--ttl", type=parse_duration, default=3600, help="lifetime, e.g. 2h")
    issue.add_argument(
        "--jti", help="name of the transfer; its id is <issuer>_<name> (default: random)"
    )
    dataset = issue.add_mutually_exclusive_group()
    dataset.add_argument("--sub", help="dataset SHA-256 (hex)")
    dataset.add_argument("--file", help="compute the dataset SHA-256 from this file")
    issue.add_argument("-o", "--output", help="write the token to this file")
    issue.set_defaults(func=cmd_passport_issue)

    inspect = passport.add_parser("inspect", help="show a passport's header and claims")
    inspect.add_argument("token", help="the token, a file holding it, or - for stdin")
    inspect.set_defaults(func=cmd_passport_inspect)

    verify = passport.add_parser("verify", help="verify a passport as a gateway would")
    verify.add_argument("token", help="the token, a file holding it, or - for stdin")
    verify.add_argument("-c", "--config", help="gateway YAML: trusted issuers and audience")
    verify.add_argument("--issuer", action="append", help="trusted issuer KID=PEMFILE")
    verify.add_argument("--audience", help="this gateway's id")
    verify.set_defaults(func=cmd_passport_verify)

    _add_tls_verbs(verbs)
    _add_check_verb(verbs)
    _add_db_verbs(verbs)
    _add_daemon_verbs(verbs)
    _add_policy_verbs(verbs)
    _add_receipt_verbs(verbs)
    _add_audit_verbs(verbs)
    _add_witness_verbs(verbs)
    document_verbs(parser)
    return parser


# --- help: a one-line purpose and an example on every verb ----------------------------------

_ETC = "/etc/xbgw/gateway.yaml"

#: Examples per verb path ("" is ``xbgw`` itself), shown under ``--help`` and in the man page
#: (devtools/manpage.py). tests/unit/test_cli_help.py parses each one with this parser, so
#: an example cannot name a flag that does not exist, and fails for a verb that has none.
EXAMPLES: dict[str, tuple[str, ...]] = {
    "": (
        f"xbgw check -c {_ETC}",
        f"xbgw send report.csv --to frankfurt --passport passport.jwt -c {_ETC}",
        f"xbgw status -c {_ETC}",
    ),
    "keys": (f"xbgw keys status -c {_ETC}",),
    "keys init": (
        "xbgw keys init --token lingang --pin-file /etc/xbgw/hsm-pin",
        "xbgw keys init --token dpo --pin-file dpo-pin --purposes signing   # an issuer",
    ),
    "keys list": (f"xbgw keys list -c {_ETC} --json",),
    "keys public": (f"xbgw keys public -c {_ETC} --purpose signing -o lingang-signing.pem",),
    "keys status": (f"xbgw keys status -c {_ETC}",),
    "keys rotate": (f"xbgw keys rotate transport -c {_ETC}", f"xbgw keys rotate -c {_ETC}"),
    "keys retire": (f"xbgw keys retire transport 1 -c {_ETC}",),
    "keys destroy": (f"xbgw keys destroy transport 1 -c {_ETC}",),
    "keys rewrap": (f"xbgw keys rewrap -c {_ETC}",),
    "passport": ("xbgw passport inspect passport.jwt",),
    "passport issue": (
        "xbgw passport issue --token dpo --pin-file dpo-pin --kid dpo/signing/1 \\\n"
        "    --to frankfurt --sender lingang --src CN-SH --dst EU-DE --purpose 'Q3 report' \\\n"
        "    --legal-basis CAC-SC-2026-0042 --byte-limit 64MiB --file report.csv \\\n"
        "    --jti q3-report -o passport.jwt",
    ),
    "passport inspect": ("xbgw passport inspect passport.jwt",),
    "passport verify": (f"xbgw passport verify passport.jwt -c {_ETC}",),
    "tls": (f"xbgw tls show -c {_ETC}",),
    "tls import": (
        f"xbgw tls import -c {_ETC} --key gateway.key -o /etc/xbgw/tls/gateway.xbgw-key",
    ),
    "tls rotate": (f"xbgw tls rotate -c {_ETC} --key new.key --cert new.crt",),
    "tls show": (f"xbgw tls show -c {_ETC}",),
    "check": (f"xbgw check -c {_ETC}", f"xbgw check -c {_ETC} --expiry-warning 60 --strict"),
    "db": (f"xbgw db status -c {_ETC}",),
    "db migrate": (f"xbgw db migrate -c {_ETC}   # once, with the older nodes stopped",),
    "db status": (f"xbgw db status -c {_ETC} --json",),
    "serve": (f"xbgw serve -c {_ETC}   # systemd runs this: systemctl start xbgw",),
    "send": (f"xbgw send report.csv --to frankfurt --passport passport.jwt -c {_ETC}",),
    "inbox": (f"xbgw inbox --pending -c {_ETC}",),
    "inbox ack": (f"xbgw inbox ack dpo_q3-report -c {_ETC}",),
    "inbox delete": (f"xbgw inbox delete dpo_q3-report -c {_ETC}",),
    "cancel": (f"xbgw cancel dpo_q3-report --reason 'wrong file' -c {_ETC}",),
    "fetch": (f"xbgw fetch dpo_q3-report -o q3-report.csv -c {_ETC}",),
    "status": (f"xbgw status -c {_ETC}", "xbgw status --socket /run/xbgw/local.sock --all"),
    "policy": (f"xbgw policy explain passport.jwt -c {_ETC}",),
    "policy explain": (f"xbgw policy explain passport.jwt -c {_ETC} --all",),
    "policy check": ("xbgw policy check my-zone.yaml --with prc-export",),
    "policy counters": (f"xbgw policy counters -c {_ETC} --year 2026",),
    "receipt": ("xbgw receipt verify q3-report.receipt --key frankfurt-signing.pem",),
    "receipt export": (f"xbgw receipt export dpo_q3-report -o q3-report.receipt -c {_ETC}",),
    "receipt verify": ("xbgw receipt verify q3-report.receipt --key frankfurt-signing.pem",),
    "audit": (f"xbgw audit verify -c {_ETC}",),
    "audit verify": (f"xbgw audit verify -c {_ETC} --key lingang-signing.pem",),
    "audit tail": (f"xbgw audit tail -c {_ETC} -n 20 -f",),
    "audit proof": (f"xbgw audit proof 42 -c {_ETC}",),
    "audit export": (f"xbgw audit export -c {_ETC} --since 2026-01-01 -o audit.jsonl",),
    "witness": (f"xbgw witness status -c {_ETC}",),
    "witness status": (f"xbgw witness status -c {_ETC} --json",),
    "witness run": (f"xbgw witness run frankfurt -c {_ETC}",),
    "witness acknowledge": (f"xbgw witness acknowledge frankfurt -c {_ETC}",),
}


def verb_parsers(
    parser: argparse.ArgumentParser, path: str = ""
) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """Every verb below ``parser``, depth first: (path such as ``"keys init"``, its one-line
    ``help``, its parser). The help test and the man page walk the parser with this."""
    found: list[tuple[str, str, argparse.ArgumentParser]] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            for name, sub in action.choices.items():
                sub_path = f"{path} {name}".strip()
                found.append((sub_path, helps.get(name, ""), sub))
                found.extend(verb_parsers(sub, sub_path))
    return found


def document_verbs(parser: argparse.ArgumentParser) -> None:
    """Give every verb its purpose (the ``help`` line it is listed with) as the first line of
    its ``--help``, and its examples as the epilog. Done once, after every verb is added, so a
    verb added later is documented by adding its help line and an entry in :data:`EXAMPLES`;
    the raw formatter keeps example lines as written."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = _examples("") + "\n\n'xbgw COMMAND --help' shows each command's options."
    for path, purpose, sub in verb_parsers(parser):
        sub.formatter_class = argparse.RawDescriptionHelpFormatter
        first = purpose[:1].upper() + purpose[1:]
        first = first if first.endswith(".") else first + "."
        more = textwrap.fill(sub.description, 79) if sub.description else ""
        sub.description = f"{first}\n\n{more}" if more else first
        sub.epilog = _examples(path) or None


def _examples(path: str) -> str:
    examples = EXAMPLES.get(path, ())
    if not examples:
        return ""
    lines = "\n".join("  " + line for text in examples for line in text.split("\n"))
    return ("example:" if len(examples) == 1 else "examples:") + "\n" + lines


def _add_db_verbs(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ledger's database: its schema migrations and the nodes that share it
    (:mod:`gateway.cli.db`, imported only when it runs)."""
    db = verbs.add_parser(
        "db", help="the ledger database: schema migrations, nodes"
    ).add_subparsers(dest="db_verb", required=True, metavar="ACTION")
    migrate = db.add_parser(
        "migrate",
        help="apply pending schema migrations (refused while an older node still runs)",
    )
    migrate.add_argument("-c", "--config", required=True, help="gateway YAML file")
    migrate.set_defaults(func=_lazy("db", "cmd_db_migrate"))
    status = db.add_parser("status", help="where the ledger is, its schema, the nodes using it")
    status.add_argument("-c", "--config", required=True, help="gateway YAML file")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=_lazy("db", "cmd_db_status"))


def _add_check_verb(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Everything ``serve`` needs at start, checked without starting it (the verb lives in
    :mod:`gateway.cli.check`, imported only when it runs)."""
    check = verbs.add_parser(
        "check",
        help="check a config: files, HSM, keys, TLS, partners, ledger",
        description="Checks the files it names, the HSM and PIN, the keys, the TLS key and "
        "certificate dates, the partners and the ledger. Runs every check it can, also while "
        "the daemon runs, and prints one line per problem (exit 1) or 'ok:' lines (exit 0).",
    )
    check.add_argument("-c", "--config", required=True, help="gateway YAML file")
    check.add_argument(
        "--expiry-warning",
        type=_days,
        default=30,
        metavar="DAYS",
        help="warn about certificates that expire within DAYS (default: 30)",
    )
    check.add_argument("--strict", action="store_true", help="warnings fail the check too (exit 1)")
    check.set_defaults(func=_lazy("check", "cmd_check"))


def _add_witness_verbs(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Witnessing of the partners' audit logs, through the running daemon (the verbs live in
    :mod:`gateway.cli.witness`, imported only when one runs)."""
    actions = verbs.add_parser(
        "witness", help="witness partners' audit logs: status, run, acknowledge"
    ).add_subparsers(dest="witness_verb", required=True, metavar="ACTION")

    def verb(name: str, help_text: str) -> argparse.ArgumentParser:
        parser = actions.add_parser(name, help=help_text)
        where = parser.add_mutually_exclusive_group()
        where.add_argument("-c", "--config", help="gateway YAML (for its socket path)")
        where.add_argument(
            "--socket", help=f"local socket (default $XBGW_SOCKET or {DEFAULT_SOCKET})"
        )
        parser.add_argument("--json", action="store_true", help="machine-readable output")
        parser.set_defaults(func=_lazy("witness", f"cmd_witness_{name}"))
        return parser

    verb("status", "each partner's checkpoint held and alarm; who witnessed this gateway's log")
    run = verb("run", "witness the partners now (exit status 1 while one is under alarm)")
    run.add_argument("partners", nargs="*", metavar="PARTNER", help="only these (default: all)")
    acknowledge = verb(
        "acknowledge",
        "end a partner's alarm after checking it: its offers are accepted again and the "
        "checkpoint that raised the alarm is the new base",
    )
    acknowledge.add_argument("partner", metavar="PARTNER")


def _add_receipt_verbs(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """A delivered transfer's evidence as a file, and its offline check (the verbs live in
    :mod:`gateway.cli.receipt`, imported only when one runs)."""
    actions = verbs.add_parser(
        "receipt", help="export a receipt with its commit proof; verify one offline"
    ).add_subparsers(dest="receipt_verb", required=True, metavar="ACTION")

    def verb(name: str, help_text: str) -> argparse.ArgumentParser:
        parser = actions.add_parser(name, help=help_text)
        parser.set_defaults(func=_lazy("receipt", f"cmd_receipt_{name}"))
        return parser

    export = verb("export", "write a delivered transfer's receipt, manifest and commit proof")
    export.add_argument("transfer_id", metavar="ID")
    export.add_argument("-o", "--output", required=True, help="the file to write")
    export.add_argument("-c", "--config", required=True, help="gateway YAML file (the sender's)")
    check = verb("verify", "check an exported receipt with nothing but public keys")
    check.add_argument("file", help="an xbgw-receipt/1 file")
    check.add_argument(
        "--key",
        action="append",
        required=True,
        metavar="PEM",
        help="the receiver's signing public key (repeat for each version that may have signed)",
    )
    check.add_argument("--sender-key", action="append", metavar="PEM", help="the sender's too")
    check.add_argument(
        "--require-proof", action="store_true", help="fail when the file has no commit proof"
    )


def _add_audit_verbs(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The audit log, offline: the ledger read-only, also while the daemon runs (the verbs
    live in :mod:`gateway.cli.audit`, imported only when one runs)."""
    actions = verbs.add_parser(
        "audit", help="the audit log: verify it, tail it, prove a leaf, export it"
    ).add_subparsers(dest="audit_verb", required=True, metavar="ACTION")

    def verb(name: str, help_text: str) -> argparse.ArgumentParser:
        parser = actions.add_parser(name, help=help_text)
        parser.add_argument("-c", "--config", required=True, help="gateway YAML file")
        parser.set_defaults(func=_lazy("audit", f"cmd_audit_{name}"))
        return parser

    def count(text: str) -> int:
        if not text.strip().isdigit():
            raise argparse.ArgumentTypeError(f"not a non-negative integer: {text!r}")
        return int(text)

    check = verb("verify", "recompute the whole log and check every checkpoint")
    check.add_argument(
        "--key",
        action="append",
        dest="keys",
        metavar="PEM",
        help="a signing public key to check the checkpoints with, instead of every signing "
        "key version on the token (repeatable)",
    )
    add_hsm_arguments(check, config=False)  # the signing keys without --key

    tail = verb("tail", "the newest records as JSON lines, with their leaf index")
    tail.add_argument(
        "-n", "--lines", type=count, default=10, metavar="N", help="how many (default: 10)"
    )
    tail.add_argument(
        "-f", "--follow", action="store_true", help="then print new ones as they come"
    )

    proof = verb("proof", "a leaf's record and inclusion proof under a signed checkpoint (JSON)")
    proof.add_argument("leaf", type=count, metavar="LEAF", help="the leaf index")
    proof.add_argument(
        "--size",
        type=positive_int,
        metavar="N",
        help="tree size to prove it in (default: the newest signed checkpoint's)",
    )

    export = verb("export", "every record as JSON lines with leaf index and hash, for a SIEM")
    export.add_argument(
        "--since",
        metavar="TIME",
        help="records from this time on: Unix seconds, an ISO date or an ISO time with a zone",
    )
    export.add_argument("-o", "--output", metavar="FILE", help="write to FILE (default: stdout)")


def _add_tls_verbs(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The TLS private key, wrapped by the HSM so it is never plaintext at rest."""
    tls = verbs.add_parser("tls", help="the TLS key and certificate").add_subparsers(
        dest="tls_verb", required=True, metavar="ACTION"
    )

    def key_input(parser: argparse.ArgumentParser, what: str) -> None:
        parser.add_argument("--key", required=True, metavar="PEM", help=what)
        secret = parser.add_mutually_exclusive_group()
        secret.add_argument("--passphrase-file", help="file holding the PEM's passphrase")
        secret.add_argument("--passphrase-env", help="variable holding the PEM's passphrase")

    wrap = tls.add_parser(
        "import", help="wrap a PEM private key to the active storage key (writes *.xbgw-key)"
    )
    add_hsm_arguments(wrap)
    key_input(wrap, "the plaintext PEM private key to wrap")
    wrap.add_argument("-o", "--output", help="wrapped key file (default: KEY with .xbgw-key)")
    wrap.add_argument("--gateway", metavar="ID", help="the gateway's id (without -c)")
    wrap.add_argument("--force", action="store_true", help="replace an existing output file")
    wrap.set_defaults(func=cmd_tls_import)

    rotate = tls.add_parser(
        "rotate", help="install a renewed key and certificate where the config points"
    )
    add_hsm_arguments(rotate)
    key_input(rotate, "the new plaintext PEM private key")
    rotate.add_argument("--cert", required=True, metavar="PEM", help="its new certificate")
    rotate.set_defaults(func=cmd_tls_rotate, gateway=None)

    show = tls.add_parser("show", help="certificate names and dates; is the key wrapped, to what")
    show.add_argument("-c", "--config", required=True, help="gateway YAML file")
    show.set_defaults(func=cmd_tls_show)


def _lazy(module: str, command: str) -> Callable[[argparse.Namespace], int]:
    """``gateway.cli.<module>.<command>``, imported only when the verb runs: the daemon,
    audit, witness, policy and receipt verbs load grpc or the rule tables, which ``xbgw keys``
    and ``xbgw passport`` need not pay for."""

    def run(args: argparse.Namespace) -> int:
        function: Callable[[argparse.Namespace], int] = getattr(_verb_module(module), command)
        return function(args)

    return run


def _verb_module(name: str) -> ModuleType:
    """One verb module; plain ``import`` statements, so that the import graph (and its test
    against cycles) sees every edge."""
    if name == "daemon":
        from gateway.cli import daemon

        return daemon
    if name == "lifecycle":
        from gateway.cli import lifecycle

        return lifecycle
    if name == "policy":
        from gateway.cli import policy

        return policy
    if name == "audit":
        from gateway.cli import audit

        return audit
    if name == "receipt":
        from gateway.cli import receipt

        return receipt
    if name == "witness":
        from gateway.cli import witness

        return witness
    if name == "transfers":
        from gateway.cli import transfers

        return transfers
    if name == "check":
        from gateway.cli import check

        return check
    if name == "db":
        from gateway.cli import db

        return db
    raise ValueError(f"no verb module {name!r}")


def _days(text: str) -> int:
    if not text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"not a number of days: {text!r}")
    return int(text)


def _page_size(text: str) -> int:
    if not text.strip().isdigit() or not 1 <= int(text) <= 1000:
        raise argparse.ArgumentTypeError(f"a page size is 1-1000, not {text!r}")
    return int(text)


def _purpose_list(text: str) -> list[Purpose]:
    return [Purpose(_purpose(part.strip())) for part in text.split(",")]


def _purpose(text: str) -> str:
    if text not in {p.value for p in Purpose}:
        raise argparse.ArgumentTypeError(
            f"invalid purpose {text!r} (choose from {', '.join(p.value for p in Purpose)})"
        )
    return text


def _add_lifecycle_verbs(keys: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The key lifecycle: against the running daemon, or offline with -c when it is stopped."""
    purposes = [p.value for p in Purpose]

    def verb(name: str, help_text: str) -> argparse.ArgumentParser:
        parser = keys.add_parser(name, help=help_text)
        parser.add_argument(
            "-c", "--config", help="gateway YAML: its socket, or offline when the daemon is stopped"
        )
        parser.add_argument(
            "--socket", help=f"local socket (default $XBGW_SOCKET or {DEFAULT_SOCKET})"
        )
        parser.set_defaults(func=_lazy("lifecycle", f"cmd_keys_{name}"))
        return parser

    verb(
        "status", "every key version, its state and dates, and what blocks retiring it"
    ).add_argument("--json", action="store_true", help="machine-readable output")
    rotate = verb(
        "rotate", "make a new version active (no purpose: those due by keys.rotate_every)"
    )
    rotate.add_argument(
        "purposes", nargs="*", type=_purpose, metavar="PURPOSE", help=", ".join(purposes)
    )
    rotate.add_argument("--all", action="store_true", help="rotate every purpose")
    for name, help_text in (
        ("retire", "take a replaced version out of service (refused while it is needed)"),
        ("destroy", "delete a retired version from the HSM (cannot be undone)"),
    ):
        parser = verb(name, help_text)
        parser.add_argument("purpose", choices=purposes)
        parser.add_argument("version", type=positive_int)
        if name == "destroy":
            parser.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    verb("rewrap", "re-wrap every stored data key to the active storage version")


def _add_daemon_verbs(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = verbs.add_parser("serve", help="run the gateway daemon")
    serve.add_argument("-c", "--config", required=True, help="gateway YAML file")
    serve.set_defaults(func=_lazy("daemon", "cmd_serve"))

    def client(name: str, help_text: str) -> argparse.ArgumentParser:
        parser = verbs.add_parser(name, help=help_text)
        where = parser.add_mutually_exclusive_group()
        where.add_argument("-c", "--config", help="gateway YAML (for its socket path)")
        where.add_argument(
            "--socket", help=f"local socket (default $XBGW_SOCKET or {DEFAULT_SOCKET})"
        )
        return parser

    send = client("send", "send a file to a partner gateway")
    send.add_argument("file")
    send.add_argument("--to", required=True, help="partner gateway id")
    send.add_argument("--passport", required=True, help="the passport token or a file holding it")
    _add_progress_flags(send)
    send.add_argument(
        "--wait",
        type=lambda text: int(text) if text.strip().isdigit() else parse_duration(text),
        metavar="DURATION",
        help="how long to wait for a partner that is unreachable or busy, retrying and "
        "resuming by itself (e.g. 60s, 10m; 0: fail at once; default: the gateway's "
        "limits.partner_wait_seconds)",
    )
    send.set_defaults(func=_lazy("daemon", "cmd_send"))

    inbox = client("inbox", "list committed inbound transfers; ack or delete them")
    inbox.add_argument("--pending", action="store_true", help="only items not acknowledged")
    inbox.add_argument("--page-size", type=_page_size, help="items per request (default 100)")
    inbox.set_defaults(func=_lazy("transfers", "cmd_inbox"))
    inbox_actions = inbox.add_subparsers(dest="inbox_verb", metavar="ACTION")
    for name, help_text in (
        ("ack", "acknowledge items: their data goes retention.acknowledged later"),
        ("delete", "remove items' data now (the record and receipt stay)"),
    ):
        action = inbox_actions.add_parser(name, help=help_text)
        where = action.add_mutually_exclusive_group()
        where.add_argument("-c", "--config", default=argparse.SUPPRESS, help="gateway YAML")
        where.add_argument("--socket", default=argparse.SUPPRESS, help="local socket")
        action.add_argument("transfer_ids", nargs="+", metavar="ID")

    cancel = client("cancel", "cancel an unfinished transfer, sent or received (audited)")
    cancel.add_argument("transfer_id", metavar="ID")
    cancel.add_argument("--reason", default="", help="kept in the ledger; shown to the partner")
    cancel.set_defaults(func=_lazy("transfers", "cmd_cancel"))

    fetch = client("fetch", "write a received transfer's plaintext to a file")
    fetch.add_argument("transfer_id")
    fetch.add_argument(
        "-o", "--output", required=True, help="file to write, created 0600 (owner only)"
    )
    _add_progress_flags(fetch)
    fetch.set_defaults(func=_lazy("daemon", "cmd_fetch"))

    status = client(
        "status",
        "readiness, listeners, partners, key versions, transfers",
    )
    status.add_argument("--all", action="store_true", help="every transfer, page after page")
    status.add_argument("--json", action="store_true", help="print one JSON object (for scripts)")
    status.add_argument("--page-size", type=_page_size, help="transfers per request (default 100)")
    status.set_defaults(func=_lazy("transfers", "cmd_status"))


def _add_policy_verbs(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The compliance rules, offline: the config's tables and the ledger, read-only (the
    verbs live in :mod:`gateway.cli.policy`, imported only when one runs)."""
    actions = verbs.add_parser(
        "policy", help="compliance rules: explain, check tables, counters"
    ).add_subparsers(dest="policy_verb", required=True, metavar="ACTION")

    def verb(name: str, help_text: str) -> argparse.ArgumentParser:
        parser = actions.add_parser(name, help=help_text)
        parser.set_defaults(func=_lazy("policy", f"cmd_policy_{name}"))
        return parser

    explain = verb("explain", "judge a passport as this gateway would, and show the rule trail")
    explain.add_argument("passport", help="the token, a file holding it, or - for stdin")
    explain.add_argument("-c", "--config", required=True, help="gateway YAML file")
    explain.add_argument(
        "--direction",
        choices=["egress", "ingress"],
        help="egress: as this gateway sends it; ingress: as it receives it (default: egress "
        "if the passport's sender is this gateway, ingress if it is addressed to it)",
    )
    explain.add_argument("--all", action="store_true", help="also the rules that do not apply")
    explain.add_argument("--json", action="store_true", help="machine-readable output")

    check = verb("check", "validate rule tables; list each good table's rules")
    check.add_argument(
        "tables", nargs="+", metavar="FILE", help="a rule table file (or a shipped table's name)"
    )
    check.add_argument(
        "--with",
        action="append",
        dest="with_tables",
        metavar="TABLE",
        help="a table (file or shipped name) whose rules the checked ones may name, e.g. "
        "--with prc-export for a free-trade-zone list (repeatable)",
    )

    counters = verb("counters", "the yearly compliance counters in the ledger (read-only)")
    counters.add_argument("-c", "--config", required=True, help="gateway YAML file")
    counters.add_argument("--year", type=positive_int, help="only this calendar year")
    counters.add_argument("--json", action="store_true", help="machine-readable output")


def _add_progress_flags(parser: argparse.ArgumentParser) -> None:
    """A live bar on a terminal, plain lines otherwise; these two are for scripts."""
    output = parser.add_mutually_exclusive_group()
    output.add_argument("-q", "--quiet", action="store_true", help="only the final result")
    output.add_argument(
        "--json",
        action="store_true",
        help="one JSON object per line on stdout: each event, then the result",
    )


def main(argv: Sequence[str] | None = None) -> int:
    with closed_pipe_exits_quietly():  # xbgw status | head -1: exit 141, silently
        return _main(argv)


def _main(argv: Sequence[str] | None) -> int:
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    parser = build_parser()
    args = parser.parse_args(argv)
    verbose = bool(getattr(args, "verbose", False))
    try:
        result: int = args.func(args)
        return result
    except UsageError as exc:
        print(error_line(exc, verbose), file=sys.stderr)
        return EXIT_USAGE
    except (ConfigError, HsmPinError) as exc:
        print(error_line(exc, verbose), file=sys.stderr)
        return EXIT_CONFIG
    except XbgwError as exc:
        print(error_line(exc, verbose), file=sys.stderr)
        return EXIT_FAILURE
    except BrokenPipeError:
        raise  # stdout's reader went away: closed_pipe_exits_quietly ends the run
    except OSError as exc:  # a file named on the command line: say which and why
        where = f" {exc.filename}" if exc.filename else ""
        print(f"xbgw:{where}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("xbgw: interrupted", file=sys.stderr)
        return 130

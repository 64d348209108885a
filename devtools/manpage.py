"""``make man``: the ``xbgw(1)`` manual page, generated from the command's own parser.

The page is written from :func:`gateway.cli.build_parser` -- every verb's one-line purpose,
description, options and examples (:data:`gateway.cli.EXAMPLES`) -- so it cannot drift from
``--help``. ``scripts/install`` runs this to install the page as
``$PREFIX/share/man/man1/xbgw.1``.

Why not argparse-manpage (the PyPI package): it would be a new dependency for ~150 lines,
and it renders nested verbs (``xbgw keys init``) as flat option lists without their
examples; this generator writes exactly the sections an operator looks for (COMMANDS with an
example each, EXIT STATUS, ENVIRONMENT, FILES) and needs nothing but the standard library.

Usage: ``python -m devtools.manpage [-o FILE] [--prefix PREFIX]`` (default: stdout, /usr).
The date is ``$SOURCE_DATE_EPOCH`` if set (reproducible builds), else today.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from pathlib import Path

import gateway
from gateway import DEFAULT_SOCKET
from gateway.cli import (
    EXAMPLES,
    EXIT_CONFIG,
    EXIT_FAILURE,
    EXIT_USAGE,
    build_parser,
    verb_parsers,
)

__all__ = ["main", "render"]

USAGE_WIDTH = 72


def roff(text: str) -> str:
    """``text`` as roff input: backslashes and dashes escaped (so options copy and paste as
    ASCII), and a line that starts with a control character made literal."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(
        "\\&" + line if line.startswith((".", "'")) else line for line in text.split("\n")
    )


def _date() -> str:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = (
        datetime.datetime.fromtimestamp(int(epoch), datetime.UTC)
        if epoch and epoch.isdigit()
        else datetime.datetime.now(datetime.UTC)
    )
    return when.strftime("%Y-%m-%d")


def _options(parser: argparse.ArgumentParser) -> list[str]:
    """One ``.TP`` paragraph per argument: its invocation in bold, its help below."""
    formatter = parser._get_formatter()
    lines: list[str] = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        if action.help == argparse.SUPPRESS:
            continue
        invocation = formatter._format_action_invocation(action)
        text = action.help or ""
        if "%(" in text:
            text = text % {**vars(action), "prog": parser.prog}
        if action.choices is not None and not action.option_strings and not text:
            text = "one of: " + ", ".join(str(choice) for choice in action.choices)
        lines += [".TP", f".B {roff(invocation)}", roff(text) if text else "\\&"]
    return lines


def _examples(path: str) -> list[str]:
    examples = EXAMPLES.get(path, ())
    if not examples:
        return []
    lines = [".PP", "Example:" if len(examples) == 1 else "Examples:", ".PP", ".RS", ".nf"]
    lines += [roff(line) for text in examples for line in text.split("\n")]
    return [*lines, ".fi", ".RE"]


def _usage(parser: argparse.ArgumentParser) -> list[str]:
    """The verb's usage, wrapped at a fixed width (not the terminal's: the same page on every
    machine)."""
    formatter = argparse.HelpFormatter(prog=parser.prog, width=USAGE_WIDTH)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups)
    usage = formatter.format_help().removeprefix("usage: ").strip()
    return [".nf", roff(usage), ".fi"]


def render(parser: argparse.ArgumentParser | None = None, prefix: str = "/usr") -> str:
    """The whole page, in the man(7) macros."""
    parser = parser or build_parser()
    summary = (parser.description or "").rstrip(".")
    out = [
        f'.TH XBGW 1 "{_date()}" "xbgw {gateway.__version__}" "User Commands"',
        ".SH NAME",
        f"xbgw \\- {roff(summary[:1].lower() + summary[1:])}",
        ".SH SYNOPSIS",
        ".B xbgw",
        ".I COMMAND",
        "[\\fIACTION\\fR] [\\fIOPTIONS\\fR]",
        ".br",
        ".B xbgw \\-\\-version",
        ".SH DESCRIPTION",
        roff(
            "xbgw moves data sets between organisations in different jurisdictions: partner "
            "gateways reach each other over gRPC on mutual TLS, keys live in a PKCS#11 HSM, "
            "every transfer is end-to-end encrypted, authorised by a signed data passport and "
            "acknowledged with a signed receipt. The daemon is `xbgw serve`; the other verbs "
            "are clients: HSM verbs open the token named by -c or --module, --token and a PIN "
            "source; daemon verbs talk to its local Unix socket."
        ),
        ".PP",
        roff(
            "Every failure prints one line and exits non-zero. `xbgw COMMAND --help` lists a "
            "command's options, as below."
        ),
        *_examples(""),
        ".SH COMMANDS",
    ]
    for path, _purpose, sub in verb_parsers(parser):
        out += [f'.SS "xbgw {roff(path)}"']
        description = (sub.description or "").split("\n\n")
        for paragraph in description:
            out += [roff(paragraph.replace("\n", " ")), ".PP"]
        out += _usage(sub)
        out += _options(sub)
        out += _examples(path)
    share = f"{prefix.rstrip('/')}/share"
    out += [
        ".SH EXIT STATUS",
        ".TP",
        ".B 0",
        "success",
        ".TP",
        f".B {EXIT_FAILURE}",
        roff("a failure: the message says what happened and what to do"),
        ".TP",
        f".B {EXIT_USAGE}",
        "a usage error on the command line",
        ".TP",
        f".B {EXIT_CONFIG}",
        roff("a configuration error or a refused HSM PIN (EX_CONFIG; systemd does not retry it)"),
        ".TP",
        ".B 130",
        "interrupted",
        ".SH ENVIRONMENT",
        ".TP",
        ".B XBGW_SOCKET",
        roff(f"the daemon's local socket when neither -c nor --socket is given ({DEFAULT_SOCKET})"),
        ".TP",
        ".B SOFTHSM2_CONF",
        roff("the SoftHSM configuration (hsm.softhsm_conf in the gateway config wins over it)"),
        ".SH FILES",
        ".TP",
        ".I /etc/xbgw/gateway.yaml",
        roff("the gateway configuration; every key is explained in gateway.yaml.example"),
        ".TP",
        roff(f".I {DEFAULT_SOCKET}"),
        "the local API socket (group xbgw)",
        ".TP",
        ".I /var/lib/xbgw",
        "the ledger, the audit log and the spool",
        ".TP",
        roff(f".I {share}/xbgw/proto"),
        roff(
            "the .proto files of the local API (xbgw/v1/local.proto) for local applications: "
            f"protoc -I {share}/xbgw/proto xbgw/v1/local.proto"
        ),
        ".TP",
        roff(f".I {share}/doc/xbgw/README.md"),
        "the operator's guide",
        ".SH SEE ALSO",
        ".BR systemctl (1),",
        ".BR journalctl (1),",
        ".BR softhsm2\\-util (1),",
        ".BR systemd.exec (5)",
        "",
    ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.manpage", description=__doc__)
    parser.add_argument("-o", "--output", type=Path, help="write the page here (default: stdout)")
    parser.add_argument(
        "--prefix", default="/usr", help="installation prefix named under FILES (default /usr)"
    )
    args = parser.parse_args(argv)
    page = render(prefix=args.prefix)
    if args.output is None:
        sys.stdout.write(page)
    else:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(page, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

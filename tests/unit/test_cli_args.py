"""The ``xbgw`` command line's pure parts: size and duration arguments, and parser errors.

Nothing here opens an HSM or a socket: parser errors are argparse's exit 2 with a message on
stderr, and the usage errors :func:`gateway.cli.main` raises before it would open a token
(no token named, no PIN source, no trusted issuer) are exit 2 as well.
"""

from __future__ import annotations

import argparse
import io
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import EXIT_USAGE, build_parser, main, parse_duration, parse_size
from gateway.cli.common import read_token
from gateway.errors import UsageError

MIB = 2**20

# The arguments `passport issue` cannot do without; tests add or replace one at a time.
ISSUE = [
    "passport",
    "issue",
    "--token",
    "t",
    "--pin-env",
    "PIN",
    "--kid",
    "dpo/signing/1",
    "--to",
    "frankfurt",
    "--sender",
    "lingang",
    "--src",
    "CN-SH",
    "--dst",
    "EU-DE",
    "--purpose",
    "research",
    "--legal-basis",
    "CAC-SC-2026-0042",
    "--byte-limit",
    "64MiB",
]


# --- parse_size -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("1", 1),
        ("4096", 4096),
        ("7B", 7),
        ("1K", 2**10),
        ("1KB", 2**10),
        ("1KiB", 2**10),
        ("64MiB", 64 * MIB),
        ("64M", 64 * MIB),
        ("64MB", 64 * MIB),  # binary multiples throughout, as documented
        ("1G", 2**30),
        ("1GiB", 2**30),
        ("3T", 3 * 2**40),
        ("1tib", 2**40),  # units are case-insensitive
        ("64 MiB", 64 * MIB),
        ("  64MiB\n", 64 * MIB),
        ("1125899906842624", 2**50),
    ],
)
def test_parse_size_accepts(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "MiB",
        "-1",
        "+1",
        "1.5G",
        "1e6",
        "0x10",
        "12X",
        "1PiB",
        "1 G B",
        "1GiBB",
        "1iB",
        "1Bi",
        "64 MiB extra",
        "1_000",
        "½",
    ],
)
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="not a size"):
        parse_size(text)


# --- parse_duration -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0s", 0),
        ("90s", 90),
        ("15m", 900),
        ("2h", 7200),
        ("7d", 7 * 86400),
        ("5 s", 5),
        (" 2h\n", 7200),
    ],
)
def test_parse_duration_accepts(text: str, expected: int) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    "text", ["", "90", "h", "1.5h", "-5s", "+5s", "2w", "2H", "2hours", "1h30m", "1e3s", "0x10s"]
)
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="not a duration"):
        parse_duration(text)


# --- the parser -----------------------------------------------------------------------------


def test_issue_arguments_are_converted_and_defaulted() -> None:
    args = build_parser().parse_args([*ISSUE, "--ttl", "2h"])
    assert args.byte_limit == 64 * MIB
    assert args.ttl == 7200
    assert (args.pi, args.subjects, args.classification) == ("none", 0, "general")
    assert (args.sub, args.file, args.output, args.jti) == (None, None, None, None)
    assert args.pin_env == "PIN"
    assert (args.pin_file, args.pin_credential) == (None, None)
    assert build_parser().parse_args(ISSUE).ttl == 3600


def test_keys_list_arguments() -> None:
    args = build_parser().parse_args(
        ["keys", "list", "--module", "/m.so", "--token", "t", "--pin-credential", "c", "--json"]
    )
    assert (args.module, args.token, args.pin_credential, args.json) == ("/m.so", "t", "c", True)
    assert args.config is None


def test_keys_public_defaults_to_the_newest_signing_key() -> None:
    args = build_parser().parse_args(["keys", "public", "--token", "t", "--pin-file", "p"])
    assert (args.purpose, args.version, args.output) == ("signing", None, None)


def test_policy_arguments() -> None:
    args = build_parser().parse_args(["policy", "explain", "p.jwt", "-c", "gw.yaml"])
    assert (args.passport, args.config, args.direction, args.all, args.json) == (
        "p.jwt",
        "gw.yaml",
        None,
        False,
        False,
    )
    args = build_parser().parse_args(
        ["policy", "check", "a.yaml", "b.yaml", "--with", "prc-export", "--with", "x.yaml"]
    )
    assert (args.tables, args.with_tables) == (["a.yaml", "b.yaml"], ["prc-export", "x.yaml"])
    args = build_parser().parse_args(["policy", "counters", "-c", "gw.yaml", "--year", "2026"])
    assert (args.config, args.year, args.json) == ("gw.yaml", 2026, False)


def test_audit_arguments() -> None:
    args = build_parser().parse_args(["audit", "verify", "-c", "gw.yaml"])
    assert (args.config, args.keys, args.token, args.pin_file) == ("gw.yaml", None, None, None)
    args = build_parser().parse_args(
        ["audit", "verify", "-c", "gw.yaml", "--key", "a.pem", "--key", "b.pem"]
    )
    assert args.keys == ["a.pem", "b.pem"]
    args = build_parser().parse_args(["audit", "tail", "-c", "gw.yaml"])
    assert (args.lines, args.follow) == (10, False)
    args = build_parser().parse_args(["audit", "tail", "-c", "gw.yaml", "-n", "0", "-f"])
    assert (args.lines, args.follow) == (0, True)
    args = build_parser().parse_args(["audit", "proof", "17", "-c", "gw.yaml"])
    assert (args.leaf, args.size) == (17, None)
    args = build_parser().parse_args(["audit", "proof", "0", "-c", "gw.yaml", "--size", "40"])
    assert (args.leaf, args.size) == (0, 40)
    args = build_parser().parse_args(["audit", "export", "-c", "gw.yaml"])
    assert (args.since, args.output) == (None, None)
    args = build_parser().parse_args(
        ["audit", "export", "-c", "gw.yaml", "--since", "2026-03-01", "-o", "out.jsonl"]
    )
    assert (args.since, args.output) == ("2026-03-01", "out.jsonl")


@pytest.mark.parametrize(
    ("since", "seconds"),
    [
        ("1770000000", 1_770_000_000),
        ("2026-03-01", 1_772_323_200),
        ("2026-03-01T08:00:00+08:00", 1_772_323_200),
        ("2026-03-01T00:00:00Z", 1_772_323_200),
    ],
)
def test_audit_export_since_forms(since: str, seconds: int) -> None:
    from gateway.cli.audit import _since

    assert _since(since) == seconds


@pytest.mark.parametrize(
    ("since", "message"),
    [
        ("yesterday", "--since 'yesterday': not a time (give Unix seconds, an ISO date"),
        ("2026-03-01T08:00:00", "--since '2026-03-01T08:00:00' has no time zone"),
    ],
)
def test_audit_export_since_refused(since: str, message: str) -> None:
    from gateway.cli.audit import _since

    with pytest.raises(UsageError, match=re.escape(message)):
        _since(since)


def _parser_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(argv)
    assert exited.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("usage: xbgw"), err
    return err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "required: COMMAND"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["keys"], "required: ACTION"),
        (["keys", "rotate", "colour"], "invalid purpose 'colour'"),
        (["keys", "retire", "storage"], "required: version"),
        (["keys", "destroy", "storage", "0"], "not a positive integer: '0'"),
        (["passport"], "required: ACTION"),
        (
            ["keys", "init", "--token", "t", "--pin-file", "p", "--pin-env", "PIN"],
            "argument --pin-env: not allowed with argument --pin-file",
        ),
        (
            ["keys", "list", "--pin-env", "PIN", "--pin-credential", "c"],
            "argument --pin-credential: not allowed with argument --pin-env",
        ),
        (["keys", "public", "--purpose", "storage"], "argument --purpose: invalid choice"),
        (["keys", "public", "--version", "one"], "argument --version: "),
        (["keys", "init", "--bogus"], "unrecognized arguments: --bogus"),
        (ISSUE[:-2], "the following arguments are required: --byte-limit"),
        ([*ISSUE[:6], *ISSUE[8:]], "the following arguments are required: --kid"),
        ([*ISSUE[:-1], "12X"], "argument --byte-limit: not a size: '12X'"),
        ([*ISSUE, "--ttl", "1.5h"], "argument --ttl: not a duration: '1.5h'"),
        ([*ISSUE, "--pi", "secret"], "argument --pi: invalid choice: 'secret'"),
        ([*ISSUE, "--subjects", "many"], "argument --subjects: invalid int value"),
        (
            [*ISSUE, "--sub", "ab" * 32, "--file", "data.bin"],
            "argument --file: not allowed with argument --sub",
        ),
        (["passport", "inspect"], "the following arguments are required: token"),
        (["passport", "verify"], "the following arguments are required: token"),
        (["policy"], "required: ACTION"),
        (["policy", "explain", "p.jwt"], "the following arguments are required: -c/--config"),
        (
            ["policy", "explain", "p.jwt", "-c", "gw.yaml", "--direction", "sideways"],
            "argument --direction: invalid choice: 'sideways'",
        ),
        (["policy", "check"], "the following arguments are required: FILE"),
        (["policy", "counters"], "the following arguments are required: -c/--config"),
        (["policy", "counters", "-c", "gw.yaml", "--year", "0"], "not a positive integer: '0'"),
        (["audit"], "required: ACTION"),
        (["audit", "verify"], "the following arguments are required: -c/--config"),
        (["audit", "tail", "-c", "gw.yaml", "-n", "-1"], "not a non-negative integer: '-1'"),
        (["audit", "proof", "-c", "gw.yaml"], "the following arguments are required: LEAF"),
        (["audit", "proof", "x", "-c", "gw.yaml"], "not a non-negative integer: 'x'"),
        (["audit", "proof", "1", "-c", "gw.yaml", "--size", "0"], "not a positive integer: '0'"),
        (
            ["audit", "verify", "-c", "gw.yaml", "--pin-file", "p", "--pin-env", "PIN"],
            "argument --pin-env: not allowed with argument --pin-file",
        ),
    ],
)
def test_parser_errors_exit_2_with_the_reason(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    err = _parser_error(argv, capsys)
    assert message in err, err


# --- usage errors found before any HSM or file is touched ---------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["keys", "list", "--pin-env", "PIN"], "name the HSM token with --token or --config"),
        (
            ["keys", "init", "--token", "t"],
            "give the PIN source with --pin-file, --pin-env or --pin-credential",
        ),
        (
            ["passport", "verify", "tok", "--audience", "frankfurt"],
            "no trusted issuer: give --issuer KID=PEMFILE or --config",
        ),
        (
            ["passport", "verify", "tok", "--issuer", "dpo/signing/1", "--audience", "frankfurt"],
            "--issuer takes KID=PEMFILE, got 'dpo/signing/1'",
        ),
    ],
)
def test_usage_errors_exit_2_before_opening_anything(
    argv: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GRPC_VERBOSITY", "ERROR")  # main() sets it by default otherwise
    assert main(argv) == EXIT_USAGE
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"xbgw: {message}\n"


def test_python_m_gateway_cli_runs_main() -> None:
    """``python -m gateway.cli`` (how the system tests start daemons) is the ``xbgw`` command."""
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "keys", "list", "--pin-env", "PIN"],
        capture_output=True,
        check=False,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stdout) == (EXIT_USAGE, "")
    assert done.stderr == "xbgw: name the HSM token with --token or --config\n"


def test_read_token_takes_the_token_a_file_or_stdin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert read_token("  a.b.c\n") == "a.b.c"
    held = tmp_path / "passport.jwt"
    held.write_text("d.e.f\n", encoding="ascii")
    assert read_token(str(held)) == "d.e.f"
    monkeypatch.setattr(sys, "stdin", io.StringIO("g.h.i\n"))
    assert read_token("-") == "g.h.i"
    held.write_bytes(b"\xff")
    with pytest.raises(UsageError, match="cannot read a passport from"):
        read_token(str(held))

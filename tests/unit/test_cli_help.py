"""``--help`` on every verb: a one-line purpose first, an example that really parses last, and
a top-level list with one line per verb on an 80-column terminal."""

from __future__ import annotations

import argparse
import shlex

import pytest

from gateway.cli import EXAMPLES, build_parser, verb_parsers

#: On an 80-column terminal the top-level list has 58 columns for help text while the option
#: column is up to 20 wide ("-v, --verbose" makes it 17).
TOP_LEVEL_HELP_WIDTH = 58

VERBS = verb_parsers(build_parser())


def _commands(text: str) -> list[list[str]]:
    """The command lines of one example text: continuations joined, comments dropped."""
    joined = text.replace("\\\n", " ")
    return [shlex.split(line, comments=True) for line in joined.split("\n")]


def _help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([*argv, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def test_the_walk_finds_nested_verbs() -> None:
    paths = {path for path, _help_text, _parser in VERBS}
    assert {"keys init", "inbox ack", "witness acknowledge", "serve", "status"} <= paths
    assert len(paths) == len(VERBS) >= 40


@pytest.mark.parametrize("path", [path for path, _h, _p in VERBS])
def test_every_verb_has_a_purpose_and_an_example(
    path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _path, purpose, parser = next(verb for verb in VERBS if verb[0] == path)
    assert purpose.strip(), f"xbgw {path} has no help line"
    assert EXAMPLES.get(path), f"xbgw {path} has no example in gateway.cli.EXAMPLES"
    assert parser.formatter_class is argparse.RawDescriptionHelpFormatter
    text = _help(path.split(), capsys)
    body = text.split("\n\n")
    first = purpose[:1].upper() + purpose[1:]
    assert body[1].startswith(first), f"the purpose is not the first paragraph: {body[1]!r}"
    assert "\n" not in body[1], f"the purpose of xbgw {path} is not one line"
    tail = body[-1]
    assert tail.startswith(("example:", "examples:")), tail
    assert f"xbgw {path}" in tail


@pytest.mark.parametrize("path", sorted(EXAMPLES))
def test_every_example_parses_as_its_own_verb(path: str) -> None:
    for text in EXAMPLES[path]:
        for argv in _commands(text):
            assert argv[0] == "xbgw", text
            words = path.split()
            assert argv[1 : 1 + len(words)] == words, f"{text!r} is not an example of {path!r}"
            args = build_parser().parse_args(argv[1:])  # SystemExit on an unknown flag
            assert callable(args.func)


def test_no_example_names_a_verb_that_does_not_exist() -> None:
    known = {path for path, _h, _p in VERBS} | {""}
    assert set(EXAMPLES) <= known, set(EXAMPLES) - known


def test_the_top_level_lists_each_verb_on_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    text = _help([], capsys)
    top = [(path, purpose) for path, purpose, _p in VERBS if " " not in path]
    for path, purpose in top:
        assert len(purpose) <= TOP_LEVEL_HELP_WIDTH, f"{path}: {purpose!r} wraps at 80 columns"
        assert any(line.split(None, 1) == [path, purpose] for line in text.splitlines()), path
    assert "examples:\n  xbgw check -c /etc/xbgw/gateway.yaml" in text
    assert "'xbgw COMMAND --help'" in text


def test_a_long_description_is_kept_after_the_purpose(capsys: pytest.CaptureFixture[str]) -> None:
    text = _help(["passport", "issue"], capsys)
    purpose, rest = text.split("\n\n")[1:3]
    assert purpose == "Sign a passport with an issuer key in the HSM."
    assert rest.startswith("The transfer is named by flags")
    assert max(len(line) for line in rest.splitlines()) <= 79
    assert "    --to frankfurt --sender lingang" in text  # example lines kept as written


def test_a_verb_without_an_example_fails_the_check() -> None:
    """The table is what the test reads: a verb missing from it is caught, not skipped."""
    parser = build_parser()
    verbs = parser._subparsers._group_actions[0]  # type: ignore[union-attr]
    assert isinstance(verbs, argparse._SubParsersAction)
    verbs.add_parser("frobnicate", help="a verb someone forgot to document")
    missing = [path for path, _h, _p in verb_parsers(parser) if not EXAMPLES.get(path)]
    assert missing == ["frobnicate"]

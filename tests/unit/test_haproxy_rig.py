"""The HAProxy rig reads HAProxy's last check outcome as HAProxy writes it.

HAProxy prefixes ``check_status`` with ``* `` while a check is running (management guide,
CSV stats); a test that asked at that moment saw ``* L7OK`` and failed, once in CI.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from devtools.haproxy import Haproxy, Node


def _rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, status: str) -> Haproxy:
    rig = Haproxy(tmp_path, [Node("a", ("127.0.0.1", 1), ("127.0.0.1", 2))], port=3)
    row = {"check_status": status, "check_desc": "Layer7 check passed", "last_chk": ""}
    monkeypatch.setattr(rig, "stats", lambda: {"a": row})
    return rig


@pytest.mark.parametrize("status", ["L7OK", "* L7OK"])
def test_the_last_check_is_read_whether_or_not_one_is_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, status: str
) -> None:
    assert _rig(tmp_path, monkeypatch, status).check("a") == "L7OK Layer7 check passed:"


def test_a_failed_check_keeps_its_status(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _rig(tmp_path, monkeypatch, "* L7RSP").check("a").startswith("L7RSP ")

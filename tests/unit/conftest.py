"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.loopback import Loopback, make_loopback


@pytest.fixture
def lb(tmp_path: Path) -> Iterator[Loopback]:
    """lingang and frankfurt in this process (``tests.loopback``), closed afterwards. A module
    that needs them made otherwise defines its own ``lb``."""
    made = make_loopback(tmp_path)
    try:
        yield made
    finally:
        made.close()

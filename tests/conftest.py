"""Shared fixtures: a pool of real SoftHSM tokens made before PKCS#11 is loaded."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.provision import write_softhsm_conf
from tests.softhsm import TokenSpec, init_token

POOL_SIZE = 12
_counter = itertools.count()


@pytest.fixture(scope="session")
def softhsm_pool(tmp_path_factory: pytest.TempPathFactory) -> list[TokenSpec]:
    """Tokens ``pool-00`` .. for in-process tests; SOFTHSM2_CONF set for this process."""
    directory = tmp_path_factory.mktemp("softhsm")
    conf = write_softhsm_conf(directory)
    os.environ["SOFTHSM2_CONF"] = str(conf)
    return [init_token(conf, f"pool-{i:02d}") for i in range(POOL_SIZE)]


@pytest.fixture(scope="module")
def fresh_token(softhsm_pool: list[TokenSpec]) -> TokenSpec:
    """An unused token from the pool (one per test module)."""
    index = next(_counter)
    if index >= len(softhsm_pool):
        raise RuntimeError("SoftHSM token pool exhausted: raise POOL_SIZE in tests/conftest.py")
    return softhsm_pool[index]


@pytest.fixture(scope="module")
def hsm(fresh_token: TokenSpec) -> Iterator[object]:
    """A logged-in ``Hsm`` on a fresh token with version 1 of every purpose."""
    from gateway.hsm import Hsm
    from gateway.keys import Purpose

    opened = Hsm.open(fresh_token.module, fresh_token.label, fresh_token.pin)
    for purpose in Purpose:
        opened.generate(purpose)
    yield opened
    opened.close()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path

"""Re-cutting plaintext chunks into segments: any chunking gives the same segments."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from gateway.envelope import cut_segments


@given(
    data=st.binary(max_size=700),
    size=st.integers(min_value=1, max_value=128),
    cuts=st.lists(st.integers(min_value=0, max_value=700), max_size=12),
)
def test_any_chunking_yields_the_canonicalcut_segments(
    data: bytes, size: int, cuts: list[int]
) -> None:
    points = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    chunks = [data[a:b] for a, b in itertools.pairwise(points)]
    got = list(cut_segments(chunks, size))
    assert b"".join(p for _, _, p in got) == data
    assert [i for i, _, _ in got] == list(range(len(got)))
    assert [f for _, f, _ in got] == [False] * (len(got) - 1) + [True]
    assert all(len(p) == size for _, f, p in got if not f)
    assert 1 <= len(got[-1][2]) <= size or data == b""


def test_aligned_chunks_are_passed_through_without_copying() -> None:
    blocks = [bytes([n]) * 8 for n in range(3)]
    got = list(cut_segments(iter(blocks), 8))
    assert [p is b for (_, _, p), b in zip(got, blocks, strict=True)] == [True, True, True]
    assert [f for _, f, _ in got] == [False, False, True]


def test_empty_input_is_one_empty_final_segment() -> None:
    assert list(cut_segments(iter([]), 16)) == [(0, True, b"")]

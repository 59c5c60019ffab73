"""Ways to cut a byte string into the chunks a codec is fed (STYLE rule 1: every codec
test runs its input whole, byte by byte, and in random chunks)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from hypothesis import strategies as st


def whole(data: bytes) -> list[bytes]:
    return [data]


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def split_at(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    points = [0, *sorted(set(cuts)), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


def random_chunks(draw: st.DataObject, data: bytes) -> list[bytes]:
    cuts = draw.draw(st.lists(st.integers(0, len(data)), max_size=12), label="cuts")
    return split_at(data, cuts)

"""`retained_memory`: glibc's thresholds raised on entering the outermost block, released on leaving it."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from churnops import _memory


class FakeLibc:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append(("mallopt", param, value))
        return 1

    def malloc_trim(self, pad: int) -> int:
        self.calls.append(("malloc_trim", pad))
        return 1


HELD = [
    ("mallopt", -3, _memory.MMAP_THRESHOLD),
    ("mallopt", -1, _memory.HELD_TRIM_THRESHOLD),
    ("mallopt", -2, _memory.HELD_TOP_PAD),
]
RELEASED = [
    ("mallopt", -1, _memory.RELEASED_TRIM_THRESHOLD),
    ("mallopt", -2, _memory.RELEASED_TOP_PAD),
    ("malloc_trim", 0),
]


def test_nested_blocks_hold_once_and_release_once(monkeypatch: pytest.MonkeyPatch) -> None:
    libc = FakeLibc()
    monkeypatch.setattr(_memory, "_libc", libc)
    with _memory.retained_memory():
        assert libc.calls == HELD
        with _memory.retained_memory():
            pass
        assert libc.calls == HELD  # the inner block leaving releases nothing
    assert libc.calls == HELD + RELEASED
    with pytest.raises(ValueError, match="a failure inside"), _memory.retained_memory():
        raise ValueError("a failure inside")
    assert libc.calls == (HELD + RELEASED) * 2  # released on the way out of an error too


def test_blocks_on_two_threads_release_when_the_last_leaves(monkeypatch: pytest.MonkeyPatch) -> None:
    libc = FakeLibc()
    monkeypatch.setattr(_memory, "_libc", libc)
    entered, leave = threading.Event(), threading.Event()

    def other() -> None:
        with _memory.retained_memory():
            entered.set()
            leave.wait(10)

    thread = threading.Thread(target=other)
    thread.start()
    assert entered.wait(10)
    with _memory.retained_memory():
        pass
    assert libc.calls == HELD  # the other thread is still inside
    leave.set()
    thread.join(10)
    assert libc.calls == HELD + RELEASED


def test_another_c_library_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_memory, "_libc", False)
    with _memory.retained_memory():
        assert _memory._depth == 0


def test_the_real_glibc_takes_the_settings() -> None:
    libc = _memory._glibc()
    if libc is None:
        pytest.skip("not glibc")
    try:
        assert libc.mallopt(-3, _memory.MMAP_THRESHOLD) == 1  # mallopt returns 0 for a value it refuses
        assert libc.mallopt(-1, _memory.HELD_TRIM_THRESHOLD) == 1
        assert libc.mallopt(-2, _memory.HELD_TOP_PAD) == 1
    finally:  # this test process goes on trimming as the block leaves it
        libc.mallopt(-1, _memory.RELEASED_TRIM_THRESHOLD)
        libc.mallopt(-2, _memory.RELEASED_TOP_PAD)
    with _memory.retained_memory():
        assert _memory._depth == 1
    assert _memory._depth == 0

"""minidiff.nn.fast.blocks: elementwise chains in blocks on several threads give exactly the one-call numbers."""
import numpy as np
import pytest

from minidiff.nn import fast
from minidiff.nn import functional as F
from minidiff.nn.fast import blocks


@pytest.fixture
def fast_routes():
    """The ops take their fast routes (the ones that use the blocks), also under MINIDIFF_FAST=0."""
    previous = fast.set_enabled(True)
    yield
    fast.set_enabled(previous)


@pytest.fixture
def two_threads():
    previous = blocks.set_threads(2)
    yield
    blocks.set_threads(previous)


def _big(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_map_rows_equals_one_call_for_one_and_several_outputs(two_threads):
    x = _big((37, 3, blocks.BLOCK // 8 + 5))                   # ~4.7 blocks, rows not a multiple of a block's
    y = _big(x.shape, 1)

    def chain(a, b):
        return np.exp(-a * a) * b + 1.0, a.sum(axis=-1)       # a full array and a per-row summary

    got_one = blocks.map_rows(lambda a: np.tanh(a) * 2.0, x)
    np.testing.assert_array_equal(got_one, np.tanh(x) * 2.0)
    got = blocks.map_rows(chain, x, y)
    expected = chain(x, y)
    assert isinstance(got, tuple) and len(got) == 2
    for g, e in zip(got, expected):
        assert g.shape == e.shape and g.dtype == e.dtype
        np.testing.assert_array_equal(g, e)


def test_map_rows_passes_small_and_nested_calls_straight_through(two_threads):
    calls = []

    def record(a):
        calls.append(a.shape[0])
        return a + 1

    small = np.ones((4, 10), np.float32)
    np.testing.assert_array_equal(blocks.map_rows(record, small), small + 1)
    assert calls == [4]                                       # one call with every row
    calls.clear()
    big = np.zeros((64, blocks.BLOCK // 16), np.float32)       # 4 blocks of 16 rows
    blocks.map_rows(lambda a: blocks.map_rows(record, a), big)
    assert sum(calls) == 64 and len(calls) == 1 + 4           # row 0, then one call per block, none split further


def test_map_rows_reraises_a_blocks_exception(two_threads):
    def fails_late(a):
        if a.shape[0] > 1 and a[0, 0] > 0:                    # only a block of the second half
            raise FloatingPointError("block went wrong")
        return a

    x = np.concatenate([np.zeros((32, blocks.BLOCK // 16), np.float32), np.ones((32, blocks.BLOCK // 16), np.float32)])
    with pytest.raises(FloatingPointError, match="block went wrong"):
        blocks.map_rows(fails_late, x)


@pytest.mark.parametrize("op", ["silu", "gelu", "gelu_tanh", "geglu", "normal_cdf"])
def test_blocked_activations_match_a_single_thread(op, fast_routes):
    x = _big((9, 70, 600))                                    # 378,000 numbers: blocks on two threads
    dy = _big(x.shape, 2)

    def run():
        if op == "normal_cdf":
            return (F.normal_cdf(x),)
        if op == "geglu":
            y, cache = F.geglu(x)
            return y, F.geglu_backward(dy[..., :300], cache)
        y, cache = F.gelu(x, "tanh") if op == "gelu_tanh" else getattr(F, op)(x)
        backward = F.silu_backward if op == "silu" else F.gelu_backward
        return y, backward(dy, cache)

    previous = blocks.set_threads(1)
    try:
        expected = run()
        blocks.set_threads(2)
        got = run()
    finally:
        blocks.set_threads(previous)
    for g, e in zip(got, expected):
        np.testing.assert_array_equal(g, e)


def test_set_threads_rejects_zero():
    with pytest.raises(ValueError, match="at least 1 thread"):
        blocks.set_threads(0)


def test_keep_freed_memory_respects_the_opt_outs(monkeypatch):
    monkeypatch.setenv("MINIDIFF_KEEP_MEMORY", "0")
    assert blocks.keep_freed_memory() is False
    monkeypatch.delenv("MINIDIFF_KEEP_MEMORY")
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")              # the user tunes glibc themselves
    assert blocks.keep_freed_memory() is False


def test_for_blocks_covers_every_row_once(two_threads):
    seen = np.zeros(1000, np.int64)

    def mark(rows):
        seen[rows] += 1

    blocks.for_blocks(mark, 1000, np.empty(4 * blocks.BLOCK), parts=7)
    np.testing.assert_array_equal(seen, 1)
    blocks.for_blocks(mark, 1000, np.empty(10))                 # small work: one call, here
    np.testing.assert_array_equal(seen, 2)


def test_im2col_by_channel_blocks_matches_one_thread(fast_routes):
    x = _big((16, 40, 12, 12))                                # col has 829,440 numbers: threads
    w = _big((8, 40, 3, 3), 1)
    previous = blocks.set_threads(1)
    try:
        expected = F.conv2d(x, w, None, stride=1, padding=1)[1][0]
        blocks.set_threads(2)
        got = F.conv2d(x, w, None, stride=1, padding=1)[1][0]
    finally:
        blocks.set_threads(previous)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_a_forked_child_gets_a_working_pool(two_threads):
    import os
    x = _big((16, 3, blocks.BLOCK // 8))
    blocks.map_rows(np.tanh, x)                                 # the parent's pool exists now
    pid = os.fork()
    if pid == 0:                                              # child: must not wait on the parent's threads
        import signal
        signal.alarm(20)                                      # a hang kills the child: the test fails
        ok = np.array_equal(blocks.map_rows(np.tanh, x), np.tanh(x))
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_for_blocks_with_fewer_rows_than_threads_calls_no_empty_block():
    previous = blocks.set_threads(8)
    try:
        called = []
        blocks.for_blocks(called.append, 3, np.empty(4 * blocks.BLOCK))
        assert sorted((b.start, b.stop) for b in called) == [(0, 1), (1, 2), (2, 3)]
    finally:
        blocks.set_threads(previous)


def test_a_bad_thread_count_in_the_environment_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("MINIDIFF_THREADS", "two")
    monkeypatch.setattr(blocks, "_threads", None)               # read again at the next use
    with pytest.raises(ValueError, match="MINIDIFF_THREADS must be a whole number of threads, got 'two'"):
        blocks.threads()

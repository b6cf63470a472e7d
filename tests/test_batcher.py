"""The micro-batcher on its own: grouping, bounds, isolation of failures, the event loop kept free."""

import asyncio
import threading
import time

import pytest

from catsdogs.apps.serve.batcher import MicroBatcher


class Recorder:
    """A batch function that doubles numbers, remembers its batches and can be slow or fail."""

    def __init__(self, seconds=0.0):
        self.batches = []
        self.threads = set()
        self.seconds = seconds

    def __call__(self, items):
        self.batches.append(list(items))
        self.threads.add(threading.current_thread().name)
        time.sleep(self.seconds)
        if "explode" in items:
            raise RuntimeError("the whole batch failed")
        return [ValueError(f"bad item {item}") if item == "bad" else 2 * item for item in items]


async def run_with(batcher, coroutine):
    await batcher.start()
    try:
        return await coroutine
    finally:
        await batcher.stop()


async def submit_all(batcher, items):
    """Submits items at once, each as its own request would; returns results or exceptions."""
    return await asyncio.gather(*(batcher.submit(item) for item in items), return_exceptions=True)


def test_items_submitted_together_share_one_batch_and_keep_their_order():
    recorder = Recorder()
    batcher = MicroBatcher(recorder, max_batch_size=16, max_wait_ms=100)
    results = asyncio.run(run_with(batcher, submit_all(batcher, range(8))))
    assert results == [2 * i for i in range(8)]
    assert recorder.batches == [list(range(8))]
    assert (batcher.stats.batches, batcher.stats.items, batcher.stats.largest_batch) == (1, 8, 8)


def test_batches_never_exceed_the_maximum_and_queue_up_while_one_runs():
    recorder = Recorder(seconds=0.05)
    batcher = MicroBatcher(recorder, max_batch_size=4, max_wait_ms=1)
    results = asyncio.run(run_with(batcher, submit_all(batcher, range(10))))
    assert results == [2 * i for i in range(10)]
    assert [len(batch) for batch in recorder.batches] == [4, 4, 2]


def test_batch_size_one_turns_batching_off():
    recorder = Recorder()
    batcher = MicroBatcher(recorder, max_batch_size=1, max_wait_ms=100)
    asyncio.run(run_with(batcher, submit_all(batcher, range(3))))
    assert recorder.batches == [[0], [1], [2]]


def test_a_lone_item_waits_no_longer_than_the_bound():
    batcher = MicroBatcher(Recorder(), max_batch_size=16, max_wait_ms=30)

    async def timed():
        start = time.perf_counter()
        await batcher.submit(1)
        return time.perf_counter() - start

    assert asyncio.run(run_with(batcher, timed())) < 0.5


def test_a_failing_item_does_not_fail_its_neighbours():
    recorder = Recorder()
    batcher = MicroBatcher(recorder, max_batch_size=16, max_wait_ms=100)
    items = [1, "bad", 3]
    results = asyncio.run(run_with(batcher, submit_all(batcher, items)))
    assert len(recorder.batches) == 1
    assert results[0] == 2 and results[2] == 6
    assert isinstance(results[1], ValueError) and "bad item" in str(results[1])


def test_a_failing_batch_fails_its_items_and_the_batcher_goes_on():
    recorder = Recorder()
    batcher = MicroBatcher(recorder, max_batch_size=16, max_wait_ms=50)

    async def scenario():
        failed = await submit_all(batcher, [1, "explode"])
        return failed, await batcher.submit(5)

    failed, after = asyncio.run(run_with(batcher, scenario()))
    assert all(isinstance(result, RuntimeError) for result in failed)
    assert after == 10


def test_the_batch_function_runs_off_the_event_loop():
    recorder = Recorder(seconds=0.3)
    batcher = MicroBatcher(recorder, max_batch_size=4, max_wait_ms=1)

    async def scenario():
        ticks = 0

        async def tick():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.create_task(tick())
        await batcher.submit(1)
        ticker.cancel()
        return ticks

    ticks = asyncio.run(run_with(batcher, scenario()))
    assert ticks >= 10  # the loop kept running during the 0.3 s batch
    assert recorder.threads and threading.main_thread().name not in recorder.threads


def test_stopping_fails_what_still_waits():
    recorder = Recorder(seconds=0.2)
    batcher = MicroBatcher(recorder, max_batch_size=1, max_wait_ms=0)

    async def scenario():
        await batcher.start()
        pending = [asyncio.ensure_future(batcher.submit(i)) for i in range(3)]
        await asyncio.sleep(0.05)  # the first is running, the others wait
        await batcher.stop()
        return await asyncio.gather(*pending, return_exceptions=True)

    results = asyncio.run(scenario())
    assert all(isinstance(r, RuntimeError) and "shutting down" in str(r) for r in results[1:])
    with pytest.raises(RuntimeError, match="not running"):
        asyncio.run(batcher.submit(1))


@pytest.mark.parametrize("size, wait", [(0, 5), (4, -1)])
def test_bad_settings_are_refused(size, wait):
    with pytest.raises(ValueError):
        MicroBatcher(Recorder(), max_batch_size=size, max_wait_ms=wait)

"""Micro-batching: requests that arrive together share one forward pass of the model."""

import asyncio
import concurrent.futures
import dataclasses
import logging

log = logging.getLogger(__name__)


@dataclasses.dataclass
class BatchStats:
    """What the batcher has done so far."""

    batches: int = 0  # calls of the batch function
    items: int = 0
    largest_batch: int = 0


class MicroBatcher:
    """Groups items submitted on the event loop into batches for a function that runs off it.

    The first item of a batch waits at most `max_wait_ms` for company, or until `max_batch_size`
    items are there. While a batch runs, new items queue up and form the next one, so under load
    batches fill without waiting. The batch function runs in one worker thread, never on the
    event loop, and returns one result per item; an exception returned in an item's place fails
    that item alone.
    """

    def __init__(self, process_batch, max_batch_size=16, max_wait_ms=5.0):
        """Args:
            process_batch: list of items -> list of results (or exceptions), in the same order.
            max_batch_size: the most items in one call; 1 turns batching off.
            max_wait_ms: how long the first item of a batch waits for others.
        """
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must not be negative, got {max_wait_ms}")
        self.process_batch = process_batch
        self.max_batch_size = max_batch_size
        self.max_wait_ms = max_wait_ms
        self.stats = BatchStats()
        self._queue = None
        self._task = None
        self._executor = None

    async def start(self):
        """Starts the batching loop on the running event loop."""
        self._queue = asyncio.Queue()
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="catsdogs-model")
        self._task = asyncio.create_task(self._run(), name="catsdogs-batcher")

    async def stop(self):
        """Stops the loop; items still waiting fail with a clear error."""
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        while not self._queue.empty():
            _, future = self._queue.get_nowait()
            _fail(future, RuntimeError("the server is shutting down"))
        self._executor.shutdown(wait=True)

    async def submit(self, item):
        """Queues one item and returns its result when its batch is done (or raises its error)."""
        if self._task is None or self._task.done():
            raise RuntimeError("the batcher is not running")
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((item, future))
        return await future

    async def _collect(self):
        loop = asyncio.get_running_loop()
        batch = [await self._queue.get()]
        deadline = loop.time() + self.max_wait_ms / 1000
        while len(batch) < self.max_batch_size:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return batch

    async def _run(self):
        loop = asyncio.get_running_loop()
        while True:
            # Clients that went away while waiting cancelled their futures: no work for them.
            batch = [(item, future) for item, future in await self._collect() if not future.done()]
            if not batch:
                continue
            items = [item for item, _ in batch]
            try:
                results = await loop.run_in_executor(self._executor, self.process_batch, items)
            except asyncio.CancelledError:
                for _, future in batch:
                    _fail(future, RuntimeError("the server is shutting down"))
                raise
            except Exception as error:  # the whole batch failed: every item gets the error
                log.exception("a batch of %d failed", len(items))
                results = [error] * len(items)
            self.stats.batches += 1
            self.stats.items += len(items)
            self.stats.largest_batch = max(self.stats.largest_batch, len(items))
            for (_, future), result in zip(batch, results):
                if isinstance(result, BaseException):
                    _fail(future, result)
                elif not future.done():
                    future.set_result(result)


def _fail(future, error):
    if not future.done():
        future.set_exception(error)

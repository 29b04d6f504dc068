"""Dynamic batching: concurrent requests to one signature run as one batch.

A request's rows wait in a queue; a batch thread takes the oldest request and as many of the
following ones as fit in max_batch_size (requests whose inputs have other trailing shapes wait for
a later batch), waiting up to batch_timeout_micros for the batch to fill, runs the signature once
on the rows stacked along axis 0 and hands each request its slice of every output. This is what
TF Serving's BasicBatchScheduler does; a request larger than max_batch_size is split into chunks
(TF Serving's enable_large_batch_splitting), and a full queue refuses new requests (TF Serving's
UNAVAILABLE, HTTP 503) instead of growing without bound.
"""

import collections
import concurrent.futures
import threading
import time

import numpy as np


class QueueFullError(RuntimeError):
    """The batch queue holds max_enqueued_batches batches already (HTTP 503, gRPC UNAVAILABLE)."""


class _Task:
    __slots__ = ("inputs", "rows", "key", "future", "enqueued")

    def __init__(self, inputs, rows):
        self.inputs, self.rows = inputs, rows
        # Requests batch together only when every input's shape past the batch axis agrees.
        self.key = tuple(sorted((name, array.shape[1:], array.dtype.str) for name, array in inputs.items()))
        self.future = concurrent.futures.Future()
        self.enqueued = time.monotonic()


class Batcher:
    """One signature of one loaded version: submit(inputs, rows) -> Future of its outputs."""

    def __init__(self, run, options, stats, name, model=""):
        self._run = run  # callable({input: array}) -> {output: array}
        self._model = model
        self._options = options
        self._stats = stats
        self._queue = collections.deque()
        self._queued_rows = 0
        self._condition = threading.Condition()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._work, name=f"batch-{name}-{index}", daemon=True)
            for index in range(options.num_batch_threads)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, inputs, rows):
        """Queues a request of `rows` rows; a Future of {output: array} for those rows."""
        limit = self._options.max_batch_size
        chunks = [
            _Task({name: array[start : start + limit] for name, array in inputs.items()}, min(limit, rows - start))
            for start in range(0, rows, limit)
        ]
        with self._condition:
            if self._closed:
                raise QueueFullError("this model version is being unloaded; retry the request")
            capacity = self._options.max_enqueued_batches * limit
            if self._queued_rows + rows > capacity and self._queue:
                raise QueueFullError(
                    f"the batch queue is full ({self._queued_rows} rows waiting, max_enqueued_batches "
                    f"{self._options.max_enqueued_batches} x max_batch_size {limit}); retry later"
                )
            self._queue.extend(chunks)
            self._queued_rows += rows
            self._condition.notify_all()
        if len(chunks) == 1:
            return chunks[0].future
        return _joined([chunk.future for chunk in chunks])

    def _take_batch(self):
        """The next batch's tasks; waits for the first and then up to the timeout. None when closed."""
        options = self._options
        with self._condition:
            while True:
                while not self._queue and not self._closed:
                    self._condition.wait()
                if not self._queue:
                    return None
                # Another thread may have taken the head meanwhile: the deadline is the current head's.
                first_key = self._queue[0].key
                rows = sum(task.rows for task in self._queue if task.key == first_key)
                remaining = self._queue[0].enqueued + options.batch_timeout_micros / 1e6 - time.monotonic()
                if self._closed or rows >= options.max_batch_size or remaining <= 0:
                    break
                self._condition.wait(remaining)
            tasks, rows, taken, kept = [], 0, 0, collections.deque()
            first_key = self._queue[0].key
            while self._queue:
                task = self._queue.popleft()
                if task.key == first_key and taken + task.rows <= options.max_batch_size:
                    taken += task.rows
                    # False for a request whose client gave up (a REST timeout cancels it): skipped.
                    if task.future.set_running_or_notify_cancel():
                        tasks.append(task)
                        rows += task.rows
                else:
                    kept.append(task)
            self._queue = kept
            self._queued_rows -= taken
            return tasks

    def _work(self):
        while True:
            tasks = self._take_batch()
            if tasks is None:
                return
            if tasks:
                self._run_batch(tasks)

    def _run_batch(self, tasks):
        names = tasks[0].inputs.keys()
        if len(tasks) == 1:
            inputs = tasks[0].inputs
        else:
            inputs = {name: np.concatenate([task.inputs[name] for task in tasks]) for name in names}
        total = sum(task.rows for task in tasks)
        try:
            outputs = self._run(inputs)
            for name, array in outputs.items():
                if np.ndim(array) == 0 or np.shape(array)[0] != total:
                    raise ValueError(
                        f"output {name!r} has shape {list(np.shape(array))}, not one row per input row ({total}); "
                        "this signature cannot be batched: serve it without --enable_batching"
                    )
        except Exception as error:  # noqa: BLE001  Every waiting request gets the error.
            for task in tasks:
                task.future.set_exception(error)
            return
        self._stats.record(self._model, total)
        start = 0
        for task in tasks:
            task.future.set_result({name: array[start : start + task.rows] for name, array in outputs.items()})
            start += task.rows

    def close(self):
        """Finishes what is queued, then stops the threads."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()
        for thread in self._threads:
            thread.join()


def _joined(futures):
    """One Future of the row-wise concatenation of several futures' outputs."""
    joined = concurrent.futures.Future()
    remaining = [len(futures)]
    lock = threading.Lock()

    def done(_):
        with lock:
            remaining[0] -= 1
            if remaining[0]:
                return
        if any(future.cancelled() for future in futures):
            joined.cancel()
            return
        errors = [future.exception() for future in futures if future.exception() is not None]
        if errors:
            joined.set_exception(errors[0])
        else:
            results = [future.result() for future in futures]
            joined.set_result({name: np.concatenate([result[name] for result in results]) for name in results[0]})

    for future in futures:
        future.add_done_callback(done)
    return joined

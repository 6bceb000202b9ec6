"""Admission budgets and a dynamic batcher in front of the tail.

::

    request ─► Budget.admit(bytes) ─► Ticket.add_samples(B) ─► decode (per request, threads)
            │ over budget: Overloaded ─► 503 + Retry-After, at once, nothing queued
            ▼
    Batcher.submit(symbols (B, *S)) ─► queue ─► worker thread: take requests while
        Σ B ≤ max_batch and the first one has waited < max_delay ─► stack (≤ max_batch, *S)
        ─► run (the tail) ─► split the outputs back by request ─► each request's future

A request holding more than ``max_batch`` samples runs in slices of ``max_batch`` (the
tail's activations, not the payload, are what a big request costs in memory); each sample's
outputs are the same bits in any slice. With ``max_batch=1`` every sample runs alone, one
at a time (the tail already uses every core).

Why written here and not taken from an engine: Triton's and Ray Serve's batchers
(``@serve.batch``) batch *calls*, one sample each, and know nothing of a payload that holds
several samples, of a budget counted in samples and bytes, or of the payload decoding that
must happen per request before symbols can be stacked. Ray Serve runs this same batcher
inside each replica (:mod:`splitter.deploy.ray_serve`).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Budget", "Ticket", "Overloaded", "Batcher"]


class Overloaded(Exception):
    """Over a budget: answer 503 with ``Retry-After`` instead of queueing. ``reason``:
    ``"queue"`` (requests), ``"samples"`` or ``"bytes"`` in flight."""

    def __init__(self, reason: str, message: str, retry_after: int = 1):
        super().__init__(message)
        self.reason = reason
        self.retry_after = retry_after


class Budget:
    """Requests, samples and payload bytes in flight (admitted and not yet answered).

    ``admit`` and ``Ticket.add_samples`` never wait: a request that does not fit is refused
    with :class:`Overloaded`, so the server's memory stays bounded by the budget whatever
    the clients do.
    """

    def __init__(self, max_requests: int, max_samples: int, max_bytes: int, retry_after: int = 1):
        self.max_requests, self.max_samples, self.max_bytes = max_requests, max_samples, max_bytes
        self.retry_after = retry_after
        self.requests = self.samples = self.bytes = 0
        self._lock = threading.Lock()

    def admit(self, nbytes: int) -> Ticket:
        """Reserve one request and ``nbytes``; :class:`Overloaded` when either does not fit."""
        with self._lock:
            if self.requests + 1 > self.max_requests:
                raise Overloaded("queue", f"{self.requests} requests in flight, the limit is "
                                 f"{self.max_requests}; retry shortly", self.retry_after)
            if self.bytes + nbytes > self.max_bytes and self.requests:
                raise Overloaded("bytes", f"{self.bytes + nbytes} payload bytes would be in flight, "
                                 f"the limit is {self.max_bytes}; retry shortly", self.retry_after)
            self.requests += 1
            self.bytes += nbytes
        return Ticket(self, nbytes)

    def _add_samples(self, n: int) -> None:
        with self._lock:
            # An idle server takes any one request (its size is bounded by the payload limits).
            if self.samples + n > self.max_samples and self.samples:
                raise Overloaded("samples", f"{self.samples + n} samples would be in flight, the "
                                 f"limit is {self.max_samples}; retry shortly", self.retry_after)
            self.samples += n

    def _release(self, t: Ticket) -> None:
        with self._lock:
            self.requests -= 1
            self.bytes -= t.nbytes
            self.samples -= t.samples


@dataclass
class Ticket:
    """One admitted request; ``release()`` (or ``with``) returns what it reserved."""

    budget: Budget
    nbytes: int
    samples: int = 0
    _released: bool = field(default=False, repr=False)

    def add_samples(self, n: int) -> None:
        self.budget._add_samples(n)
        self.samples += n

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.budget._release(self)

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


@dataclass
class _Item:
    symbols: np.ndarray
    future: Future
    t: float
    taken: int = 0  # samples handed to a run so far
    parts: list = field(default_factory=list)  # outputs of the runs so far, in order

    @property
    def left(self) -> int:
        return len(self.symbols) - self.taken


class Batcher:
    """Stack concurrent requests' symbols and run them through ``run`` together.

    ``run``: ``(N, *S) -> [output (N, ...), ...]``. ``max_batch``: most samples in one run;
    ``max_delay_s``: longest the first request of a batch waits for company.
    ``on_batch(samples, requests)`` is called after every run (metrics). ``incoming()``, when
    given, counts requests admitted but not yet submitted (still being decoded): with none on
    the way the batch runs at once instead of waiting out ``max_delay_s`` for nobody, so a
    lone client pays no delay.
    """

    def __init__(self, run: Callable[[np.ndarray], list[np.ndarray]], *, max_batch: int = 8,
                 max_delay_s: float = 0.002,
                 on_batch: Callable[[int, int], None] | None = None,
                 incoming: Callable[[], int] | None = None):
        self._run, self.max_batch, self.max_delay_s = run, max(1, int(max_batch)), float(max_delay_s)
        self._on_batch = on_batch
        self._incoming = incoming
        self._queue: deque[_Item] = deque()
        self._cv = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="splitter-batcher", daemon=True)
        self._thread.start()

    @property
    def queue_depth(self) -> int:
        """Requests waiting for the tail (not counting the batch running now)."""
        return len(self._queue)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._closed

    def submit(self, symbols: np.ndarray) -> Future:
        """Queue one request's symbols ``(B, *S)``; the future gives its outputs ``[(B, ...)]``."""
        fut: Future = Future()
        with self._cv:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            self._queue.append(_Item(symbols, fut, time.monotonic()))
            self._cv.notify()
        return fut

    def wake(self) -> None:
        """Re-check ``incoming()`` now (a request on its way was dropped)."""
        with self._cv:
            self._cv.notify()

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._thread.join(timeout=10)

    def _take(self) -> list[tuple[_Item, int, int]] | None:
        """Under the lock: wait for a first request, then for company until its deadline.

        Returns ``(item, start, stop)`` slices adding up to at most ``max_batch`` samples; a
        request larger than that stays at the head of the queue for the next runs.
        """
        with self._cv:
            while not self._queue and not self._closed:
                self._cv.wait()
            if self._closed and not self._queue:
                return None
            first = self._queue[0]
            key = (first.symbols.shape[1:], first.symbols.dtype)
            deadline = first.t + self.max_delay_s
            batch: list[tuple[_Item, int, int]] = []
            n = 0
            while n < self.max_batch:
                if self._queue:
                    it = self._queue[0]
                    if (it.symbols.shape[1:], it.symbols.dtype) != key:
                        break
                    k = min(it.left, self.max_batch - n)
                    batch.append((it, it.taken, it.taken + k))
                    it.taken += k
                    n += k
                    if not it.left:
                        self._queue.popleft()
                    continue
                left = deadline - time.monotonic()
                if left <= 0 or self._closed or (self._incoming is not None and not self._incoming()):
                    break
                self._cv.wait(left)
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            batch = [(it, a, b) for it, a, b in batch
                     if a > 0 or it.future.set_running_or_notify_cancel()]
            batch = [(it, a, b) for it, a, b in batch if not it.future.done()]
            if not batch:
                continue
            try:
                it0, a0, b0 = batch[0]
                x = (it0.symbols[a0:b0] if len(batch) == 1
                     else np.concatenate([it.symbols[a:b] for it, a, b in batch]))
                outs = self._run(x)
            except BaseException as e:  # noqa: BLE001 - handed to every waiting request
                for it, _, _ in batch:
                    if not it.future.done():
                        it.future.set_exception(e)
                with self._cv:  # drop what is left of a failed request
                    self._queue = deque(q for q in self._queue if not q.future.done())
                continue
            start = 0
            for it, a, b in batch:
                it.parts.append([o[start:start + b - a] for o in outs] if len(batch) > 1 else outs)
                start += b - a
                if b == len(it.symbols):
                    res = (it.parts[0] if len(it.parts) == 1
                           else [np.concatenate(p) for p in zip(*it.parts)])
                    it.parts = []
                    it.future.set_result(res)
            if self._on_batch is not None:
                self._on_batch(start, len(batch))

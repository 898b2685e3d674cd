"""Measurement: variants timed side by side in interleaved rounds, every result checked.

A `Variant` is one way of doing a scenario's operation (ours, the floor, a reference
or a peer) wrapped as a `Series`: run n samples, return each sample's wall time and
this thread's CPU time per operation, and how many results were checked. `per_call`,
`batched` and their async twins build series from an operation, an argument source
and a check; arguments are made and results checked outside the timed region.
`measure` warms every variant up, then runs rounds in alternating order (A B C,
C B A, ...) with a `gc.collect()` before each series, and returns one `Stats` per
variant. No statistics are asserted here: the report compares them.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import math
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, TextIO, TypeVar

__all__ = [
    "CheckFailed",
    "Progress",
    "Role",
    "Sampled",
    "Series",
    "Stats",
    "Target",
    "Timing",
    "Variant",
    "async_batched",
    "async_per_call",
    "batched",
    "measure",
    "per_call",
]

A = TypeVar("A")
R = TypeVar("R")

Role = Literal["ours", "floor", "reference", "peer"]


@dataclass(frozen=True)
class Sampled:
    """What a series returns: per-sample wall and client CPU time per operation
    (seconds), and how many results it checked."""

    times: list[float]
    cpu: list[float]
    checked: int


# A series: given a sample count, run that many samples.
Series = Callable[[int], Sampled]


class CheckFailed(AssertionError):
    """A variant returned a wrong result: its timings would mean nothing."""


@dataclass(frozen=True)
class Target:
    """A bound on ours ÷ this row's median: met when the ratio is at most `limit`.

    With `over`, a bound on ours' median minus this row's instead (seconds): what
    ours adds to an operation that is large either way (a whole request).
    """

    limit: float
    text: str
    over: bool = False

    def met(self, figure: float) -> bool:
        return figure <= self.limit


@dataclass(frozen=True)
class Variant:
    label: str
    role: Role
    series: Series
    target: Target | None = None
    note: str = ""


@dataclass(frozen=True)
class Timing:
    """How long to measure: rounds of one series per variant, each ~series_seconds."""

    rounds: int
    series_seconds: float
    warmup_seconds: float
    min_samples: int = 3
    max_samples: int = 20_000


@dataclass
class Stats:
    """Per-operation times of one variant over all rounds (seconds)."""

    times: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    ops: int = 0
    checked: int = 0

    @property
    def samples(self) -> int:
        return len(self.times)

    @property
    def median(self) -> float:
        return _quantile(sorted(self.times), 0.5)

    @property
    def p99(self) -> float:
        return _quantile(sorted(self.times), 0.99)

    @property
    def cpu_median(self) -> float:
        """This thread's CPU time per operation: the client's own work, without
        the time spent waiting for the server or for a CPU."""
        return _quantile(sorted(self.cpu), 0.5)

    @property
    def mean(self) -> float:
        return math.fsum(self.times) / len(self.times)

    @property
    def ops_per_s(self) -> float:
        return 1.0 / self.mean


def _quantile(ordered: list[float], q: float) -> float:
    # Nearest rank: a time that some sample actually took.
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


def per_call(
    op: Callable[[A], R], arg: Callable[[int], A], check: Callable[[A, R], None]
) -> Series:
    """Each sample times one call `op(arg(i))`; `arg` and `check` run untimed."""
    counter = itertools.count()
    clock, cpu_clock = time.perf_counter, time.thread_time

    def series(n: int) -> Sampled:
        times, cpu = [0.0] * n, [0.0] * n
        for i in range(n):
            a = arg(next(counter))
            c0 = cpu_clock()
            t0 = clock()
            r = op(a)
            t1 = clock()
            c1 = cpu_clock()
            times[i] = t1 - t0
            cpu[i] = c1 - c0
            check(a, r)
        return Sampled(times, cpu, n)

    return series


def batched(
    op: Callable[[Sequence[A]], Sequence[R]],
    batches: Sequence[Sequence[A]],
    check: Callable[[A, R], None],
) -> Series:
    """Each sample times `op(batch)` over a batch of arguments, per operation.

    For in-process operations of a microsecond or less, where reading the clock
    around each call would cost as much as the call.
    """
    counter = itertools.count()
    clock, cpu_clock = time.perf_counter, time.thread_time

    def series(n: int) -> Sampled:
        times, cpu = [0.0] * n, [0.0] * n
        checked = 0
        for i in range(n):
            batch = batches[next(counter) % len(batches)]
            c0 = cpu_clock()
            t0 = clock()
            results = op(batch)
            t1 = clock()
            c1 = cpu_clock()
            times[i] = (t1 - t0) / len(batch)
            cpu[i] = (c1 - c0) / len(batch)
            for a, r in zip(batch, results, strict=True):
                check(a, r)
            checked += len(batch)
        return Sampled(times, cpu, checked)

    return series


def async_per_call(
    runner: asyncio.Runner,
    op: Callable[[A], Awaitable[R]],
    arg: Callable[[int], A],
    check: Callable[[A, R], None],
) -> Series:
    """`per_call` for a coroutine: a whole series runs in one `runner.run`."""
    counter = itertools.count()
    clock, cpu_clock = time.perf_counter, time.thread_time

    async def run(n: int) -> Sampled:
        times, cpu = [0.0] * n, [0.0] * n
        for i in range(n):
            a = arg(next(counter))
            c0 = cpu_clock()
            t0 = clock()
            r = await op(a)
            t1 = clock()
            c1 = cpu_clock()
            times[i] = t1 - t0
            cpu[i] = c1 - c0
            check(a, r)
        return Sampled(times, cpu, n)

    def series(n: int) -> Sampled:
        return runner.run(run(n))

    return series


def async_batched(
    runner: asyncio.Runner,
    op: Callable[[Sequence[A]], Awaitable[Sequence[R]]],
    batches: Sequence[Sequence[A]],
    check: Callable[[A, R], None],
) -> Series:
    """`batched` for a coroutine over a batch (a whole series in one `runner.run`)."""
    counter = itertools.count()
    clock, cpu_clock = time.perf_counter, time.thread_time

    async def run(n: int) -> Sampled:
        times, cpu = [0.0] * n, [0.0] * n
        checked = 0
        for i in range(n):
            batch = batches[next(counter) % len(batches)]
            c0 = cpu_clock()
            t0 = clock()
            results = await op(batch)
            t1 = clock()
            c1 = cpu_clock()
            times[i] = (t1 - t0) / len(batch)
            cpu[i] = (c1 - c0) / len(batch)
            for a, r in zip(batch, results, strict=True):
                check(a, r)
            checked += len(batch)
        return Sampled(times, cpu, checked)

    def series(n: int) -> Sampled:
        return runner.run(run(n))

    return series


class Progress:
    """One line per step on stderr; rounds update in place on a terminal."""

    def __init__(self, stream: TextIO | None = None, *, quiet: bool = False) -> None:
        self._stream = stream or sys.stderr
        self._tty = self._stream.isatty()
        self._quiet = quiet
        self._start = time.monotonic()
        self._open = False

    def _stamp(self) -> str:
        return f"[{time.monotonic() - self._start:6.1f}s]"

    def step(self, text: str) -> None:
        if self._quiet:
            return
        self._end_line()
        print(f"{self._stamp()} {text}", file=self._stream, flush=True)

    def rounds(self, text: str, done: int, total: int) -> None:
        if self._quiet or not self._tty:
            return
        print(
            f"\r{self._stamp()} {text}: round {done}/{total}",
            end="",
            file=self._stream,
            flush=True,
        )
        self._open = True

    def _end_line(self) -> None:
        if self._open:
            print(file=self._stream, flush=True)
            self._open = False


def measure(
    variants: Sequence[Variant],
    timing: Timing,
    *,
    progress: Progress,
    name: str,
    after_warmup: Callable[[], None] = lambda: None,
) -> list[Stats]:
    """Warm up, then time every variant in `timing.rounds` interleaved rounds."""
    # What setup built (10,000 tenants, expected answers) stays alive all along:
    # freezing it keeps each gc.collect() — and the collector during the series —
    # from walking it again, ~50 ms per collection.
    gc.collect()
    gc.freeze()
    try:
        return _measure(variants, timing, progress, name, after_warmup)
    finally:
        gc.unfreeze()


def _measure(
    variants: Sequence[Variant],
    timing: Timing,
    progress: Progress,
    name: str,
    after_warmup: Callable[[], None],
) -> list[Stats]:
    # Warm-up: prepared statements, pool connections, caches, code paths. It also
    # estimates each variant's sample time, so that every variant gets the same
    # number of samples per series and a round takes about series_seconds each.
    per_sample: list[float] = []
    for v in variants:
        n, spent = 1, 0.0
        while True:
            gc.collect()
            t0 = time.perf_counter()
            v.series(n)
            spent = time.perf_counter() - t0
            if spent >= timing.warmup_seconds or n >= timing.max_samples:
                break
            n = min(timing.max_samples, n * 4)
        per_sample.append(spent / n)
    after_warmup()
    slowest = max(per_sample)
    samples = int(timing.series_seconds / slowest) if slowest > 0 else 1
    samples = max(timing.min_samples, min(timing.max_samples, samples))

    stats = [Stats() for _ in variants]
    order = list(range(len(variants)))
    for r in range(timing.rounds):
        progress.rounds(name, r, timing.rounds)
        for i in order if r % 2 == 0 else reversed(order):
            gc.collect()
            sampled = variants[i].series(samples)
            stats[i].times.extend(sampled.times)
            stats[i].cpu.extend(sampled.cpu)
            stats[i].checked += sampled.checked
            stats[i].ops += sampled.checked
    progress.rounds(name, timing.rounds, timing.rounds)
    return stats

"""Running an analysis: plan the tasks, run them on an engine, put the results back in order.

    >>> from sniinspect.pcap import analyze
    >>> for rec in analyze(["day1.pcap", "day2.pcap"], jobs=0):    # every core
    ...     print(rec.ts, rec.file, rec.frame, rec.sni)
    >>> analyze(paths, dask="tcp://scheduler:8786").to_parquet("hellos/")

`analyze` gives the same records whatever runs it: ``jobs=1`` reads the inputs in this
process (streaming: a record comes out as soon as its packet is read), ``jobs=N`` on a
process pool, ``dask=...`` on a Dask cluster. Records come out in the inputs' time
order (files sorted by their first packet), ``frame`` numbered in the record's own file
and ``file`` the path as given, however the files were cut into tasks. Results of later
tasks wait for earlier ones; a split file whose parts did not line up (see
`sniinspect.capture.split`) is analysed again whole, and its records after the parts
already released come from that run.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from sniinspect.capture import split
from sniinspect.capture.parallel import (
    PartResult,
    PartRunner,
    WindowStats,
    _renumber,
    dask_client,
    run_dask,
    run_pool,
    warm_up,
)
from sniinspect.capture.records import HelloRecord, Problem
from sniinspect.capture.tcp import Limits

__all__ = ["Analysis", "analyze", "run_pcap"]


class _Files:
    """Per-input bookkeeping while windows are released: frame numbers and problems."""

    def __init__(self, emit: Callable[[Problem], None]) -> None:
        self.emit = emit
        self.frames: dict[int, int] = {}
        self.snaplen: dict[int, int] = {}
        self.said: set[tuple[int, str]] = set()
        self.packets = 0

    def begin(self, ws: WindowStats) -> int:
        """The frame number before the window's first packet, in its file."""
        base = 0 if ws.from_start else self.frames.get(ws.input, 0)
        self.frames[ws.input] = base + ws.frames
        self.packets += ws.frames
        return base

    def restart(self, i: int, frames: int) -> None:
        """Input ``i`` is read again from its start, its first ``frames`` packets counted."""
        self.packets -= frames
        self.snaplen[i] = 0  # the whole run counts the file's cut packets again

    def end(self, ws: WindowStats, base: int, problems: Iterable[Problem]) -> None:
        for p in problems:
            if not p.fatal:  # a warning (snaplen, link type) is said once per file
                if (ws.input, p.message) in self.said:
                    continue
                self.said.add((ws.input, p.message))
            self.emit(p if p.frame is None else dataclasses.replace(p, frame=p.frame + base))
        cut = self.snaplen.get(ws.input, 0) + ws.snaplen
        self.snaplen[ws.input] = cut
        if ws.end_of_file and cut > 1:
            self.emit(
                Problem(
                    ws.path,
                    f"{cut} packets cut short by the capture's snaplen; "
                    "hellos in them may be incomplete",
                    False,
                )
            )


class Analysis:
    """An analysis of capture files: iterate it for the records, or write them to Parquet.

    Args:
        paths: capture files (pcap, pcapng, gzip-compressed or not) or ``"-"``.
        jobs: worker processes on this machine; 0 means one per core; 1 reads in this
            process and streams records as they are found.
        dask: a Dask scheduler address (``"tcp://host:8786"``), ``"local"`` for a
            `distributed.LocalCluster` on this machine, or a `distributed.Client`.
            Its workers must see the same paths.
        limits: the reassembler's bounds.
        part_size: bytes of input per task (default: chosen from the total size and the
            number of workers); smaller values cut files into more parts.
        overlap: bytes a task reads before and after its own (default
            `split.DEFAULT_OVERLAP`): the furthest apart two segments of one hello
            may be, across a split point, and still be put together.
        progress: called as ``progress(bytes_done, bytes_total)`` as input is read.
        on_problem: called with each `Problem` as it is known (they are also kept in
            ``problems``).

    After iteration: ``problems``, ``failed`` (a fatal problem: some input unreadable),
    ``packets`` (read, over all inputs), ``hellos`` (records), ``seconds`` (wall time).
    Records from worker processes have ``hello`` None (the parsed hello stays there).
    """

    def __init__(
        self,
        paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
        *,
        jobs: int = 1,
        dask: Any = None,
        limits: Limits | None = None,
        part_size: int | None = None,
        overlap: int | None = None,
        progress: Callable[[int, int], None] | None = None,
        on_problem: Callable[[Problem], None] | None = None,
    ) -> None:
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        self.paths = [os.fspath(p) for p in paths]
        self.jobs = jobs if jobs > 0 else (os.cpu_count() or 1)
        self.dask = dask
        self.limits = limits or Limits()
        self.part_size = part_size
        self.overlap = split.DEFAULT_OVERLAP if overlap is None else overlap
        self.progress = progress
        self.on_problem = on_problem
        self.problems: list[Problem] = []
        self.failed = False
        self.packets = 0
        self.hellos = 0
        self.seconds = 0.0
        self.total_bytes = 0
        self._done_bytes = 0
        self._files = _Files(self._problem)

    @property
    def parallel(self) -> bool:
        """True when tasks run in other processes (so output is a directory of parts)."""
        return self.dask is not None or self.jobs > 1

    def __iter__(self) -> Iterator[HelloRecord]:
        for _part, rec in self.records_by_part():
            yield rec

    def records_by_part(self) -> Iterator[tuple[int, HelloRecord]]:
        """Yield ``(part, record)``: ``part`` numbers the task a record came from."""
        t0 = time.perf_counter()
        try:
            if self.parallel:
                yield from self._parallel()
            else:
                yield from self._serial()
        finally:
            self.packets = self._files.packets
            self.seconds = time.perf_counter() - t0

    def to_parquet(self, path: str | os.PathLike[str], partition_by: str | None = None) -> int:
        """Write the records to Parquet; return how many were written.

        ``path`` is a file when the analysis runs in this process without partitions,
        else a directory (created if missing) of part files, under Hive-style
        ``date=YYYY-MM-DD`` folders when ``partition_by="date"``.
        """
        from sniinspect.capture.parquet import ParquetWriter

        writer = ParquetWriter(path, dataset=self.parallel, partition_by=partition_by)
        try:
            for part, rec in self.records_by_part():
                writer.write(rec, part)
        finally:
            writer.close()
        return writer.rows

    # -- engines -------------------------------------------------------------------------
    def _problem(self, p: Problem) -> None:
        self.problems.append(p)
        self.failed |= p.fatal
        if self.on_problem is not None:
            self.on_problem(p)

    def _advance(self, n: int) -> None:
        self._done_bytes += n
        if self.progress is not None:
            self.progress(min(self._done_bytes, self.total_bytes), self.total_bytes)

    def _serial(self) -> Iterator[tuple[int, HelloRecord]]:
        p = split.plan(self.paths, workers=1, overlap=self.overlap, limits=self.limits)
        self.total_bytes = p.total_bytes

        def window_done(ws: WindowStats, problems: list[Problem]) -> None:
            self._files.end(ws, self._files.begin(ws), problems)

        runner = PartRunner(
            p.tasks[0],
            self._advance if self.progress is not None else None,
            keep_hellos=True,
            on_window=window_done,
        )
        for _ordinal, rec in runner:  # whole files only: frames are already the file's
            self.hellos += 1
            yield 0, rec

    def _parallel(self) -> Iterator[tuple[int, HelloRecord]]:
        close: Callable[[], None] = lambda: None  # noqa: E731
        client = None
        workers = self.jobs
        if self.dask is not None:
            client, close = dask_client(self.dask, self.jobs if self.jobs > 1 else None)
            workers = max(1, len(client.scheduler_info().get("workers", {})))
        else:
            warm_up()
        try:
            yield from self._schedule(client, max(2, workers))
        finally:
            close()

    def _run(self, tasks: list[split.Task], client: Any) -> Iterator[PartResult]:
        advance = self._advance if self.progress is not None else None
        if client is not None:
            return run_dask(tasks, client, advance)
        return run_pool(tasks, self.jobs, advance)

    def _schedule(self, client: Any, workers: int) -> Iterator[tuple[int, HelloRecord]]:
        p = split.plan(
            self.paths,
            workers=workers,
            part_size=self.part_size,
            overlap=self.overlap,
            limits=self.limits,
        )
        self.total_bytes = p.total_bytes
        tasks = list(p.tasks)
        parts_of: dict[int, list[int]] = {}
        for t in tasks:
            for i in _own_inputs(t):
                if i in p.split:
                    parts_of.setdefault(i, []).append(t.index)
        results: dict[int, PartResult] = {}
        flagged: set[int] = set()
        nxt = 0

        # A task's records go out once every task before it is out and none of its split
        # files has been found not to line up. For a pcap file that is enough: a part's
        # own records are the ones a single run gives for its packets, whatever a later
        # part finds (only a corrupt record makes a later part ask for the file whole,
        # and a single run stops there too). A pcapng part waits for the file's last
        # part: a later section or interface block changes how earlier parts' packets
        # read. (Holding a pcap file's records until its last part, too, put about 60
        # ms of writing on the critical path of a 1 GB file on two cores.)
        def ready(k: int) -> bool:
            if k not in results:
                return False
            for i in _own_inputs(tasks[k]):
                if i not in parts_of:
                    continue
                if i in flagged:
                    return False
                if p.inputs[i].kind != "pcap" and any(t not in results for t in parts_of[i]):
                    return False
            return True

        for result in self._run(tasks, client):
            results[result.index] = result
            flagged |= result.retry & p.split
            while nxt < len(tasks) and ready(nxt):
                yield from self._release(tasks[nxt], results.pop(nxt), {})
                nxt += 1
        if nxt == len(tasks):
            return
        # Split files whose parts did not line up: analysed again, whole, and their records
        # after the parts already released go out in place of the rest of the parts'.
        pending = sorted(i for i in flagged if parts_of[i][-1] >= nxt)
        again = [split.whole_file_task(p, i, len(tasks) + n) for n, i in enumerate(pending)]
        whole = dict(zip(pending, _in_order(self._run(again, client), again), strict=True))
        released = {i: self._files.frames.get(i, 0) for i in whole if parts_of[i][0] < nxt}
        for k in range(nxt, len(tasks)):
            firsts = {i: whole[i] for i in whole if min(t for t in parts_of[i] if t >= nxt) == k}
            yield from self._release(
                tasks[k], results.pop(k), firsts, skip=set(whole), released=released
            )

    def _release(
        self,
        task: split.Task,
        result: PartResult,
        whole: dict[int, PartResult],
        skip: set[int] | None = None,
        released: dict[int, int] | None = None,
    ) -> Iterator[tuple[int, HelloRecord]]:
        """Emit one task's records and problems (and those of files re-run whole).

        ``released``: for a file re-run whole, the frames its parts already gave out
        (their records and problems are not given again).
        """
        skip = skip or set()
        if result.error is not None:
            for i, path in sorted(_own_paths(task).items()):
                if i not in skip:
                    self._problem(Problem(path, f"analysis failed: {result.error}"))
        yield from self._emit(task.index, result, skip)
        for i in sorted(whole):
            yield from self._emit(task.index, whole[i], set(), released)

    def _emit(
        self,
        part: int,
        result: PartResult,
        skip: set[int],
        released: dict[int, int] | None = None,
    ) -> Iterator[tuple[int, HelloRecord]]:
        before = dict(self._files.frames)  # each file's frames before this task's
        bases: dict[int, int] = {}
        stats: dict[int, WindowStats] = {}
        done: dict[int, int] = {}  # by ordinal: frames out already (a file re-run whole)
        for ws in result.windows:
            if ws.input not in skip:
                if released and ws.input in released:
                    done[ws.ordinal] = released[ws.input]
                    self._files.restart(ws.input, released[ws.input])
                bases[ws.ordinal] = self._files.begin(ws)
                stats[ws.ordinal] = ws
        for n, (ordinal, rec) in enumerate(result.records):
            if ordinal not in bases or rec.frame <= done.get(ordinal, 0):
                continue
            self.hellos += 1
            base = bases[ordinal]
            if base:
                rec = rec.replace(frame=rec.frame + base)
            ref = result.refs.get(n)
            if ref is not None:  # the packet its error text names, in its file
                frame = _resolve(ref, bases, stats, before)
                rec = rec.replace(error=_renumber(rec.error or "", frame))
            yield part, rec
        problems: dict[int, list[Problem]] = {}
        for ordinal, prob in result.problems:
            if prob.frame is not None and prob.frame <= done.get(ordinal, 0):
                continue
            problems.setdefault(ordinal, []).append(prob)
        for ordinal, ws in stats.items():
            self._files.end(ws, bases[ordinal], problems.get(ordinal, []))


def _resolve(
    ref: tuple[int, int],
    bases: dict[int, int],
    stats: dict[int, WindowStats],
    before: dict[int, int],
) -> int:
    """A packet number from a task (`PartResult.refs`) as the number in its file."""
    at, frame = ref
    if at >= 0:  # in own window ``at``
        return frame + bases.get(at, 0)
    # Counted back from the end of a lead window of input -1 - at: it ends where the
    # task's first own window starts (the same file), or at the end of its file.
    first = min(bases, default=0)
    if first in stats and stats[first].input == -1 - at:
        return frame + bases[first]
    return frame + before.get(-1 - at, 0)


def _own_inputs(task: split.Task) -> list[int]:
    return list(_own_paths(task))


def _own_paths(task: split.Task) -> dict[int, str]:
    return {w.input: w.path for r in task.runs for w in r.windows if w.role == split.OWN}


def _in_order(results: Iterable[PartResult], tasks: list[split.Task]) -> list[PartResult]:
    by_index = {r.index: r for r in results}
    return [by_index[t.index] for t in tasks]


def analyze(
    paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    *,
    jobs: int = 1,
    dask: Any = None,
    limits: Limits | None = None,
    part_size: int | None = None,
    overlap: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    on_problem: Callable[[Problem], None] | None = None,
) -> Analysis:
    """Analyse capture files on this process, every core (``jobs=0``) or a Dask cluster.

    Returns an `Analysis`: iterate it for `HelloRecord`s, or call its ``to_parquet``.
    See `Analysis` for the arguments.
    """
    return Analysis(
        paths,
        jobs=jobs,
        dask=dask,
        limits=limits,
        part_size=part_size,
        overlap=overlap,
        progress=progress,
        on_problem=on_problem,
    )


def run_pcap(
    paths: list[str],
    *,
    keep: Callable[[HelloRecord], bool],
    writer: Any = None,
    counts: Any = None,
    parquet: str | None = None,
    partition_by: str | None = None,
    jobs: int = 1,
    dask: Any = None,
    part_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    on_problem: Callable[[Problem], None] | None = None,
    before_write: Callable[[], None] | None = None,
) -> Analysis:
    """What ``sniinspect pcap`` does: analyse, filter, then count, print or write Parquet.

    Args:
        keep: the filter (``--sni``, ``--host``, ``--transport``).
        writer: a `sniinspect.output.RecordWriter` for the records, or
        counts: a `sniinspect.output.Summary` to count them in, or
        parquet: the Parquet file or directory to write them to.
        before_write: called before each record is written (to clear a progress bar).

    Raises:
        ImportError: Parquet or Dask asked for but not installed (the message says
            which extra to install).
        CaptureError, OSError: a Dask scheduler that cannot be reached.
    """
    analysis = Analysis(
        paths,
        jobs=jobs,
        dask=dask,
        part_size=part_size,
        progress=progress,
        on_problem=on_problem,
    )
    if parquet is not None:
        from sniinspect.capture.parquet import ParquetWriter

        pw = ParquetWriter(parquet, dataset=analysis.parallel, partition_by=partition_by)
        try:
            for part, rec in analysis.records_by_part():
                if keep(rec):
                    pw.write(rec, part)
        finally:
            pw.close()
        return analysis
    for rec in analysis:
        if not keep(rec):
            continue
        if counts is not None:
            counts.add(rec)
        elif writer is not None:
            if before_write is not None:
                before_write()
            writer.write(rec)
    return analysis

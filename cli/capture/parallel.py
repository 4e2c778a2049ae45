"""Parallel analysis: one pure task function, and the engines that schedule it.

`analyze_part` takes a `sniinspect.capture.split.Task` (byte ranges of capture files,
planned by `sniinspect.capture.split.plan`) and returns a `PartResult`: the records of
the bytes the task owns, its packet counts and problems. It reads the files itself and
touches nothing else, so the same function runs in this process (``--jobs 1``, where
`PartRunner` streams records as they are found), in a process pool (`run_pool`) or on a
Dask cluster (`run_dask`); putting the results back in order and numbering frames is
`sniinspect.capture.analysis`'s job.

Inside a task each `Run` feeds its windows in turn to one `FlowTable`, so flows carry
from one window (file, part) to the next; every packet is numbered in one sequence per
run, and a record belongs to the window holding its packet. Lead and trail windows only
give context: their records and problems are dropped (another task owns them). A trail
is read until no flow open at its start is left or ``overlap`` bytes were read.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import io
import os
import re
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sniinspect.capture.files import Capture
from sniinspect.capture.records import CaptureError, HelloRecord, Problem
from sniinspect.capture.split import LEAD, OWN, TRAIL, Task, Window
from sniinspect.capture.tcp import FlowTable

if TYPE_CHECKING:
    from concurrent.futures import Future

__all__ = [
    "WindowStats",
    "PartResult",
    "PartRunner",
    "analyze_part",
    "run_pool",
    "run_dask",
    "dask_client",
    "task_bytes",
    "warm_up",
]

_SHB = b"\x0a\x0d\x0d\x0a"
# A packet number inside a record's error text (tcp.py: "(packet N was cut by the
# snaplen)"): renumbered like the record's own frame.
_PACKET_REF = re.compile(r"\(packet (-?\d+) ")
_PROGRESS_STEP = 4 << 20  # bytes a worker reads between two progress messages


@dataclass(frozen=True, slots=True)
class WindowStats:
    """What a task read in one of its own windows.

    ``frames`` is the number of packets in it; ``snaplen`` how many of them were cut
    by the capture's snaplen. ``from_start`` and ``end_of_file`` are the window's.
    """

    ordinal: int
    input: int
    path: str
    start: int | None
    from_start: bool
    end_of_file: bool
    frames: int
    snaplen: int


@dataclass(slots=True)
class PartResult:
    """A task's output: records and problems tagged with the own window they belong to.

    Frame numbers (of records and problems) count from the window's first packet
    unless the window starts its file (``from_start``); ``retry`` names the inputs
    that must be analysed whole because a split did not hold (see `split`).
    ``refs`` maps a record's position in ``records`` to the packet its error text
    names: ``(own ordinal, frame in that window)``, or for a packet read before the
    task's own bytes ``(-1 - input, frame counted back from the lead's end)``.
    """

    index: int
    records: list[tuple[int, HelloRecord]] = field(default_factory=list)
    problems: list[tuple[int, Problem]] = field(default_factory=list)
    windows: list[WindowStats] = field(default_factory=list)
    retry: set[int] = field(default_factory=set)
    error: str | None = None
    refs: dict[int, tuple[int, int]] = field(default_factory=dict)


class _RangeReader(io.RawIOBase):
    """Bytes ``[start, stop)`` of a file with ``head`` in front; `cut` ends it early.

    ``tell`` counts the range's bytes read (not the head's). Seeing a pcapng Section
    Header Block magic in the range sets ``sections`` (a split part then cannot trust
    the header blocks it was given).
    """

    def __init__(self, path: str, head: bytes, start: int, stop: int, watch: bool) -> None:
        super().__init__()
        self._f = open(path, "rb", buffering=0)  # noqa: SIM115 - closed in close()
        self._f.seek(start)
        self._head = head
        self._left = stop - start
        self._read = 0
        self._watch = watch
        self._tail = b""
        self.sections = False
        self.name = path

    def readable(self) -> bool:
        return True

    def cut(self) -> None:
        self._left = 0

    def tell(self) -> int:
        return self._read

    def read(self, n: int = -1) -> bytes:
        if self._head:
            n = len(self._head) if n < 0 else n
            out, self._head = self._head[:n], self._head[n:]
            return out
        if self._left <= 0:
            return b""
        want = self._left if n < 0 else min(n, self._left)
        data: bytes = self._f.read(want) or b""
        self._left -= len(data)
        self._read += len(data)
        if not data:
            self._left = 0
        if self._watch and data:
            if _SHB in self._tail + data:
                self.sections = True
            self._tail = data[-3:]
        return data

    read1 = read

    def readinto(self, view: Any) -> int:
        if self._head or self._watch:
            data = self.read(len(view))
            view[: len(data)] = data
            return len(data)
        if self._left <= 0:
            return 0
        with memoryview(view) as whole, whole[: min(len(whole), self._left)] as part:
            got = self._f.readinto(part) or 0
        self._left -= got
        self._read += got
        if not got:
            self._left = 0
        return got

    def close(self) -> None:
        self._f.close()
        super().close()


class PartRunner:
    """Runs a task, yielding ``(own window ordinal, record)`` as records are found.

    After iteration, ``windows``, ``problems`` and ``retry`` hold the rest of the
    `PartResult`. ``progress`` is called with the number of own bytes read since the
    last call. ``keep_hellos`` keeps each record's parsed hello (dropped otherwise:
    results cross process boundaries). ``on_window`` is called at the end of each
    own window with its stats and problems (as they are also kept).
    """

    def __init__(
        self,
        task: Task,
        progress: Callable[[int], None] | None = None,
        keep_hellos: bool = False,
        on_window: Callable[[WindowStats, list[Problem]], None] | None = None,
    ) -> None:
        self.task = task
        self.progress = progress
        self.keep_hellos = keep_hellos
        self.on_window = on_window
        self.windows: list[WindowStats] = []
        self.problems: list[tuple[int, Problem]] = []
        self.retry: set[int] = set()
        self.refs: list[tuple[int, int] | None] = []  # per record yielded, see PartResult
        self._own = 0  # ordinals of own windows, over the whole task
        self._trail_used = 0
        self._settled = False

    def __iter__(self) -> Iterator[tuple[int, HelloRecord]]:
        for run in self.task.runs:
            yield from self._run(run.windows)

    def _run(self, windows: tuple[Window, ...]) -> Iterator[tuple[int, HelloRecord]]:
        table = FlowTable(windows[0].path, self.task.limits)
        bases: list[int] = []  # the frame number before each window's first packet
        ordinals: list[int] = []  # each window's own ordinal, or -1
        base = 0
        self._trail_used = 0  # bytes of trail windows read so far in this run
        self._settled = False
        for w in windows:
            if w.role == TRAIL and (self._settled or self._trail_used >= self.task.overlap):
                break  # the trail has served: nothing this task owns can change
            bases.append(base)
            ordinals.append(self._own if w.role == OWN else -1)
            table.problems = []
            table.snaplen_truncated = 0
            table.unsupported_linktypes = set()
            error: list[Problem] = []
            try:
                cap, reader = self._capture(w, table, base)
            except OSError as exc:
                cap, reader = Capture(w.path, table=table, frame_base=base, finish=False), None
                error.append(Problem(w.path, exc.strerror or str(exc)))
            try:
                if not error:
                    for rec in cap:
                        yield from self._owned(rec, windows, bases, ordinals)
            except CaptureError as exc:
                error.append(Problem(w.path, str(exc).removeprefix(w.path + ": ")))
            finally:
                if reader is not None:
                    self._check(w, cap, reader)
                    if w.role == TRAIL:
                        self._trail_used += reader.tell()
                    reader.close()
                table.__dict__.pop("segment", None)  # the trail's filter, if any
            self._window_done(w, cap, table, base, error)
            base = cap.packets
        table.finish()
        out, table.out = table.out, []
        for rec in out:
            yield from self._owned(rec, windows, bases, ordinals)

    def _capture(
        self, w: Window, table: FlowTable, base: int
    ) -> tuple[Capture, _RangeReader | None]:
        reader = None
        source: Any = w.path
        if w.start is not None:
            watch = w.kind == "pcapng" and w.role != TRAIL and not w.from_start
            reader = _RangeReader(w.path, w.head, w.start, w.stop or 0, watch)
            source = reader
        done = 0

        def own_progress(pos: int, _total: int | None) -> None:
            nonlocal done
            if self.progress is not None and pos > done:
                self.progress(pos - done)
                done = pos

        progress: Callable[[int, int | None], None] | None = None
        if w.role == OWN:
            progress = own_progress if self.progress is not None else None
        elif w.role == TRAIL and reader is not None:
            progress = self._trail(table, reader)
        cap = Capture(
            source,
            limits=self.task.limits,
            progress=progress,
            name=w.path,
            table=table,
            frame_base=base,
            finish=False,
        )
        return cap, reader

    def _trail(self, table: FlowTable, reader: _RangeReader) -> Callable[[int, int | None], None]:
        """Feed only the hellos open at the trail's start; stop once none is, or at overlap.

        A direction matters only while it is reading a hello (its reader holds bytes):
        one still searching for a hello, or done, would report a new hello at a packet
        of the trail, which is another task's.
        """
        active = {k for k, fl in table.flows.items() if fl.reader is not None}
        segment = table.segment

        def only_active(key: bytes, *args: Any) -> None:
            if key in active:
                segment(key, *args)

        # An instance attribute over the method: `PacketDecoder.packet` calls self.segment.
        table.segment = only_active  # type: ignore[method-assign,assignment]
        left = self.task.overlap - self._trail_used

        def settled() -> bool:
            # No TCP direction open at the start is still open, no UDP flow holds part
            # of a hello: nothing this task owns can change any more.
            flows = table.flows
            return not table.udp.held and not any(
                k in flows and flows[k].reader is not None for k in active
            )

        def check(pos: int, _total: int | None) -> None:
            if settled():
                self._settled = True
                reader.cut()
            elif pos >= left:
                reader.cut()

        check(0, None)
        return check

    def _owned(
        self, rec: HelloRecord, windows: tuple[Window, ...], bases: list[int], ordinals: list[int]
    ) -> Iterator[tuple[int, HelloRecord]]:
        k = bisect.bisect_right(bases, rec.frame - 1) - 1
        if k < 0 or windows[k].role != OWN:
            return
        w = windows[k]
        changes: dict[str, Any] = {"frame": rec.frame - bases[k], "file": w.path}
        if not self.keep_hellos:
            changes["hello"] = None
        ref = None
        m = _PACKET_REF.search(rec.error) if rec.error else None
        if m is not None:
            n = int(m.group(1))
            j = bisect.bisect_right(bases, n - 1) - 1
            if j >= 0 and windows[j].role == OWN:
                ref = (ordinals[j], n - bases[j])
            elif j >= 0 and windows[j].role == LEAD and j + 1 < len(bases):
                ref = (-1 - windows[j].input, n - bases[j + 1])
            if ref is not None:
                changes["error"] = _renumber(rec.error or "", ref[1])
        self.refs.append(ref)
        if any(getattr(rec, name) != value for name, value in changes.items()):
            rec = rec.replace(**changes)
        yield ordinals[k], rec

    def _check(self, w: Window, cap: Capture, reader: _RangeReader) -> None:
        """Ask for the whole file when a split did not hold (see `split`)."""
        if w.role == TRAIL:
            return
        mid = w.role == LEAD or not w.end_of_file
        if reader.sections or (mid and any(p.fatal for p in cap.problems)):
            self.retry.add(w.input)
        elif w.kind == "pcapng" and not w.from_start and any(p.fatal for p in cap.problems):
            self.retry.add(w.input)  # e.g. an interface defined after the part's header

    def _window_done(
        self, w: Window, cap: Capture, table: FlowTable, base: int, error: list[Problem]
    ) -> None:
        if w.role != OWN:
            return
        ordinal = self._own
        self._own += 1
        problems = []
        for p in [*error, *table.problems, *cap.problems]:
            frame = None if p.frame is None else p.frame - base
            problems.append(dataclasses.replace(p, file=w.path, frame=frame))
        self.problems.extend((ordinal, p) for p in problems)
        stats = WindowStats(
            ordinal,
            w.input,
            w.path,
            w.start,
            w.from_start,
            w.end_of_file,
            cap.packets - base,
            table.snaplen_truncated,
        )
        self.windows.append(stats)
        if self.on_window is not None:
            self.on_window(stats, problems)


def analyze_part(task: Task, progress: Callable[[int], None] | None = None) -> PartResult:
    """Analyse one task: the pure function that every engine calls.

    Args:
        task: what to read (planned by `sniinspect.capture.split.plan`).
        progress: called with the number of own bytes read since the last call.

    Returns:
        The task's `PartResult`; an input that cannot be read is a problem in it,
        never an exception.
    """
    runner = PartRunner(task, progress)
    records = list(runner)
    refs = {i: r for i, r in enumerate(runner.refs) if r is not None}
    return PartResult(task.index, records, runner.problems, runner.windows, runner.retry, refs=refs)


def _renumber(text: str, frame: int) -> str:
    """``text`` with the packet number it names replaced by ``frame``."""
    return _PACKET_REF.sub(f"(packet {frame} ", text, count=1)


# -- the process pool ------------------------------------------------------------------------
_queue: Any = None  # a worker's progress queue (set by _init_worker)


def _init_worker(queue: Any) -> None:
    global _queue
    _queue = queue


def _pool_task(task: Task) -> PartResult:
    if _queue is None:
        return analyze_part(task)
    pending = 0

    def report(n: int) -> None:
        nonlocal pending
        pending += n
        if pending >= _PROGRESS_STEP:
            _queue.put(pending)
            pending = 0

    result = analyze_part(task, report)
    if pending:
        _queue.put(pending)
    return result


def _context() -> Any:
    import multiprocessing

    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and threading.active_count() == 1 and sys.platform == "linux":
        # A single-threaded parent (the command line) forks safely, and its workers
        # start with the engine already imported: no start-up to pay per run.
        return multiprocessing.get_context("fork")
    if "forkserver" in methods:
        ctx = multiprocessing.get_context("forkserver")
        # Workers fork from a server that has the engine imported (and nothing else:
        # not click, not pyarrow, not the caller's modules).
        ctx.set_forkserver_preload(["sniinspect.capture.parallel"])
        return ctx
    return multiprocessing.get_context("spawn")


def warm_up() -> None:
    """Start the worker server now, so its imports overlap the caller's planning."""
    ctx = _context()
    if ctx.get_start_method() == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()


def run_pool(
    tasks: Iterable[Task], jobs: int, progress: Callable[[int], None] | None = None
) -> Iterator[PartResult]:
    """Run ``tasks`` on ``jobs`` worker processes; yield results as they complete.

    A task that fails in its worker (or takes the worker down) yields a `PartResult`
    with ``error`` set; the others go on.
    """
    # Imported here: a run in one process (the default) does not pay for them.
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    ctx = _context()
    queue = ctx.Queue() if progress is not None else None
    todo = list(tasks)
    pool = ProcessPoolExecutor(
        max_workers=min(jobs, max(1, len(todo))),
        mp_context=ctx,
        initializer=_init_worker,
        initargs=(queue,),
    )
    finished = False
    try:
        with _main_hidden():  # workers start as tasks are submitted
            futures: dict[Future[PartResult], Task] = {pool.submit(_pool_task, t): t for t in todo}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.1, return_when=FIRST_COMPLETED)
            _drain(queue, progress)
            for fut in done:
                yield _result(fut, futures[fut])
        _drain(queue, progress)
        finished = True
    finally:
        # Stopped early (Ctrl-C, a closed pipe): do not wait for the queued tasks.
        pool.shutdown(wait=finished, cancel_futures=not finished)


@contextlib.contextmanager
def _main_hidden() -> Iterator[None]:
    """Start workers without re-running the caller's ``__main__`` in them.

    spawn and forkserver workers import the parent's main script unless it has no
    file; ours need nothing from it (the task function and tasks are the engine's), so
    hiding it spares scripts the ``if __name__ == "__main__":`` guard.
    """
    main = sys.modules.get("__main__")
    names = ("__file__", "__spec__")
    saved: dict[str, Any] = {k: main.__dict__[k] for k in names if main and k in main.__dict__}
    try:
        if main is not None:
            main.__dict__.pop("__file__", None)
            main.__dict__["__spec__"] = None
        yield
    finally:
        if main is not None:
            main.__dict__.update(saved)
            if "__spec__" not in saved:
                main.__dict__.pop("__spec__", None)


def _drain(queue: Any, progress: Callable[[int], None] | None) -> None:
    if queue is None or progress is None:
        return
    import queue as queue_mod

    while True:
        try:
            progress(queue.get_nowait())
        except queue_mod.Empty:
            return


def _result(fut: Any, task: Task) -> PartResult:
    try:
        result: PartResult = fut.result()
    except Exception as exc:
        return PartResult(task.index, error=f"{type(exc).__name__}: {exc}")
    return result


# -- Dask ------------------------------------------------------------------------------------
def dask_client(address: Any, workers: int | None = None) -> tuple[Any, Callable[[], None]]:
    """A `distributed.Client` for ``address`` and a function that closes what we opened.

    ``address`` is a scheduler address (``tcp://host:8786``), ``"local"`` (a
    `distributed.LocalCluster` on this machine, listening on loopback only, one
    single-threaded worker process per core or ``workers``), or a Client already made.
    """
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise CaptureError(
            "--dask needs Dask distributed: pip install 'sniinspect[dask]'"
        ) from None
    if not isinstance(address, str):
        return address, lambda: None
    if address == "local":
        # distributed has no type hints: hence the no-untyped-call ignores below.
        cluster = LocalCluster(  # type: ignore[no-untyped-call]
            n_workers=workers or os.cpu_count() or 1,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        )
        client = Client(cluster)  # type: ignore[no-untyped-call]

        def close() -> None:
            client.close()  # type: ignore[no-untyped-call]
            cluster.close()

        return client, close
    client = Client(address)  # type: ignore[no-untyped-call]
    return client, client.close


def run_dask(
    tasks: Iterable[Task], client: Any, progress: Callable[[int], None] | None = None
) -> Iterator[PartResult]:
    """Run ``tasks`` on a Dask cluster through ``client``; yield results as they complete.

    The workers read the capture paths themselves, so they must see the same files.
    Progress is counted per finished task (its own bytes).
    """
    from distributed import as_completed

    todo = list(tasks)
    futures = client.map(analyze_part, todo, pure=False)
    by_key = {f.key: t for f, t in zip(futures, todo, strict=False)}
    for fut in as_completed(futures):  # type: ignore[no-untyped-call]
        task = by_key[fut.key]
        result = _result(fut, task)
        if progress is not None:
            progress(task_bytes(task))
        fut.release()
        yield result


def task_bytes(task: Task) -> int:
    """The bytes of input a task owns (a whole file counts its size on disk)."""
    size = 0
    for run in task.runs:
        for w in run.windows:
            if w.role != OWN:
                continue
            if w.start is not None:
                size += (w.stop or 0) - w.start
                continue
            with contextlib.suppress(OSError):
                size += os.stat(w.path).st_size
    return size

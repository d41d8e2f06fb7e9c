"""Worker processes on CUDA devices (one per device, or several on one): tasks handed out one at a time, results
back to the caller.

``simulate validate`` spreads its cases over the GPUs of the machine with :func:`spread` (and its ``--jobs``
checks over several workers per device). Each worker is a process that sees only its own device
(``CUDA_VISIBLE_DEVICES`` set before anything starts CUDA); the caller's process hands a worker its next task as
soon as it returns a result, in the order given (so the devices finish together when the longest tasks come
first), and alone consumes the results: whatever it writes is written by one process.

Forked or spawned: a forked worker starts with the caller's imports (torch, triton, the kernels: a ``preload``
runs here first) instead of importing them again, but CUDA cannot start in the child of a process where the
driver has started. So the workers are forked only where :func:`fork_safe` says the caller has not started CUDA
(Linux; the CUDA driver not initialised in this process (its library not mapped, or mapped and answering "not
initialised"); Triton's driver not created; torch not imported, built
without CUDA, or with CUDA not initialised, no device count cached and NVML counting the devices, the path on
which ``torch.cuda.device_count()`` starts no driver); anything uncertain spawns them. A caller that means to fork
counts its devices with ``torch.cuda.device_count()`` (NVML), never ``torch.cuda.is_available()`` (which starts
the driver unless ``PYTORCH_NVML_BASED_CUDA_CHECK=1``).

A task whose work raises is an outcome with an ``error`` line; a worker that exits (a crash, a kill) loses
only the task it held, reported the same way, and the others take the rest. When every worker has exited with
tasks left, :class:`WorkersLost` names them. Ctrl-C reaches the caller only (the workers ignore SIGINT), which
stops every worker; the outcomes already consumed are the caller's to keep. A worker told to end (after the last
result) flushes what it sent and exits at once, skipping the interpreter's teardown (torch's and CUDA's take most
of a second); one that does not end in time is terminated.

Every outcome from a worker carries its stamps (:class:`~sparsesim.kernels.phases.TaskTiming`: the worker's spawn,
start, prepare step, the task's start and end and the parts its work noted); :func:`sparsesim.kernels.phases.breakdown`
tells from them where a campaign's wall time went.

Example:
    >>> parse_devices("all", visible=2), parse_devices("1", visible=2), parse_devices("0,2", visible=4)
    ((0, 1), (), (0, 2))
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
import sys
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

from sparsesim.kernels import phases
from sparsesim.kernels.phases import TaskTiming

#: Seconds between looks at the workers' health while no result arrives.
POLL_S = 0.5
#: Seconds a finished worker gets to exit before it is terminated.
JOIN_S = 10.0
#: Environment variable that forces how the workers start (``fork``, ``spawn`` or ``forkserver``), for measuring
#: one against the other; unset: :func:`choose_start` decides.
START_ENV = "SPARSESIM_WORKER_START"


class WorkersLost(RuntimeError):
    """Every worker exited with tasks left; ``remaining`` are their positions in the list given, ``exits`` each
    worker's exit code by its position in the devices given."""

    def __init__(self, message: str, remaining: tuple[int, ...], exits: dict[int, int | None]) -> None:
        super().__init__(message)
        self.remaining = remaining
        self.exits = exits


@dataclass(frozen=True)
class Outcome:
    """One task's end: ``result`` of ``work(task)``, or ``None`` and ``error`` (one line) when it gave none;
    ``timing``: its stamps when its worker sent it (not when the worker was lost); ``worker``: which worker ran
    it (its position in the devices given to :func:`spread`)."""

    index: int
    device: int
    result: Any
    error: str = ""
    timing: TaskTiming | None = field(default=None, compare=False)
    worker: int = 0


def parse_devices(spec: str, visible: int) -> tuple[int, ...]:
    """The devices of ``--devices``: ``all`` (every visible one), ``N`` (the first N) or indices such as ``0,2``.

    ``()`` means one device, measured in the calling process (``1``, or ``all`` with one device or none visible);
    a list of indices, even of one (``1,``), means one worker per device named.
    """
    from sparsesim.simulator.errors import ConfigError

    text = spec.strip().lower()
    allowed = ("all or 1" if visible < 2 else
               f"all, a count 1 to {visible}, or distinct indices below {visible} such as 0,1")
    bad = ConfigError(f"--devices {spec!r}; allowed: {allowed} ({visible} CUDA device(s) visible)")
    if text == "all":
        return tuple(range(visible)) if visible > 1 else ()
    if "," not in text:
        if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= max(visible, 1):
            raise bad
        return tuple(range(int(text))) if int(text) > 1 else ()
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts or not all(p.isascii() and p.isdigit() for p in parts):
        raise bad
    devices = tuple(int(p) for p in parts)
    if len(set(devices)) != len(devices) or max(devices) >= visible:
        raise bad
    return devices


def pin(device: int) -> None:
    """Make ``device`` (an index among the caller's visible devices) the only one this process sees; before
    anything in it starts CUDA."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    entries = [e.strip() for e in visible.split(",")] if visible else []
    os.environ["CUDA_VISIBLE_DEVICES"] = entries[device] if device < len(entries) else str(device)


def _driver_library_loaded(maps: str = "/proc/self/maps") -> bool | None:
    """Whether the CUDA driver library (libcuda) is mapped into this process (``maps``: its memory map): whatever
    starts the driver loads it (``cudaGetDeviceCount`` included), importing torch or triton does not; ``None`` when
    the map cannot be read."""
    try:
        with open(maps, encoding="utf-8", errors="replace") as fh:
            return any("/libcuda.so" in line for line in fh)
    except OSError:
        return None


def _driver_initialized() -> bool | None:
    """Whether the CUDA driver was initialised (``cuInit``) in this process: False while its library is not mapped
    or, mapped (importing torch or triton may map it), answers ``cuDeviceGetCount`` with "not initialised" (a call
    that initialises nothing); True when it counts the devices; ``None`` when unsure."""
    loaded = _driver_library_loaded()
    if loaded is not True:
        return loaded
    import ctypes

    try:
        lib = ctypes.CDLL("libcuda.so.1", mode=os.RTLD_NOLOAD)  # the library already mapped, never a new load
        count = ctypes.c_int(0)
        status = int(lib.cuDeviceGetCount(ctypes.byref(count)))
    except (OSError, AttributeError):
        return None
    return {0: True, CUDA_ERROR_NOT_INITIALIZED: False}.get(status)


#: The driver API's answer before ``cuInit``.
CUDA_ERROR_NOT_INITIALIZED = 3


def _triton_driver_created() -> bool | None:
    """Whether Triton's active driver exists in this process (creating it asks CUDA for its devices); ``None``
    when this Triton keeps it in a form not known here. Read without touching the lazy driver."""
    module = sys.modules.get("triton.runtime.driver")
    if module is None:
        return False
    state = getattr(getattr(module, "driver", None), "__dict__", None)
    if not isinstance(state, dict):
        return None
    if "_default" in state or "_active" in state:  # Triton >= 3.2: created on first use of .default/.active
        return state.get("_default") is not None or state.get("_active") is not None
    proxies = [vars(state[k]) for k in ("default", "active") if hasattr(state.get(k), "__dict__")]
    if proxies and all("_obj" in p for p in proxies):  # Triton 3.0/3.1: LazyProxy objects
        return any(p["_obj"] is not None for p in proxies)
    return None


def fork_safe() -> bool:
    """Whether workers forked from this process can start CUDA (the module's rule): Linux, the CUDA driver not
    initialised (:func:`_driver_initialized`), Triton's driver not created, and torch not imported, built without
    CUDA, or not initialised (nor a bad fork itself, nor a device count cached) with NVML counting the devices.
    ``False`` whenever unsure."""
    if not sys.platform.startswith("linux") or "fork" not in mp.get_all_start_methods():
        return False
    if _driver_initialized() is not False or _triton_driver_created() is not False:
        return False
    torch = sys.modules.get("torch")
    if torch is None:
        return True
    try:
        cuda = torch.cuda
        if not torch.backends.cuda.is_built():
            return True  # a build without CUDA never starts it
        if cuda.is_initialized() or cuda._is_in_bad_fork() or getattr(cuda, "_cached_device_count", None) is not None:
            return False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Can't initialize NVML": an answer (spawn), not news
            return int(cuda._device_count_nvml()) >= 0
    except Exception:  # noqa: BLE001 - a torch without these functions, or one that fails: unsure
        return False


def choose_start(preload: Callable[[], object] | None = None, method: str | None = None) -> str:
    """How :func:`spread` starts its workers: ``method`` when given, else ``SPARSESIM_WORKER_START`` when set, else
    ``"fork"`` when :func:`fork_safe` holds, else ``"spawn"``. When forking, ``preload()`` runs here first (the
    imports the workers then start with) and, unless forced, :func:`fork_safe` is asked again after it; a
    ``preload`` that raises means spawn (unless forced: the workers meet the failure)."""
    forced = method
    if forced is None:
        text = os.environ.get(START_ENV, "").strip().lower()
        if text and text not in mp.get_all_start_methods():
            from sparsesim.simulator.errors import ConfigError

            raise ConfigError(f"{START_ENV}={text!r}; allowed: {', '.join(mp.get_all_start_methods())} or unset")
        forced = text or None
    elif forced not in mp.get_all_start_methods():
        raise ValueError(f"start method {forced!r}; allowed: {', '.join(mp.get_all_start_methods())}")
    if forced is None and not fork_safe():
        return "spawn"
    chosen = forced or "fork"
    if chosen == "fork" and preload is not None:
        try:
            preload()
        except Exception:  # noqa: BLE001 - spawned workers meet (and report) the same failure
            if forced is None:
                return "spawn"
        if forced is None and not fork_safe():  # the imports started CUDA after all
            return "spawn"
    return chosen


def _one_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0][:160] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _serve(worker: int, device: int, work: Callable[[Any], Any], inbox: Any, outbox: Any,
           prepare: Callable[[], Mapping[str, float]] | None = None) -> None:
    """A worker's loop on ``device``: ``(index, task)`` from its inbox, ``(worker, index, result, error, stamps)`` to
    the shared outbox; ``None`` ends it (:func:`_leave`). ``prepare()`` runs first (its failure is left to the tasks
    to meet)."""
    started = time.time()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the caller's: it stops the workers
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a forked worker inherits the caller's handler: terminate() ends it
    pin(device)
    torch = sys.modules.get("torch")
    if torch is not None:  # forked with torch: its CPU thread pool stayed behind (using it would wait for good)
        torch.set_num_threads(1)
    parts: tuple[tuple[str, float], ...] = ()
    if prepare is not None:
        try:
            parts = tuple((str(k), float(v)) for k, v in prepare().items())
        except Exception:  # noqa: BLE001 - the tasks meet the same failure and report it
            pass
    ready = time.time()
    while True:
        item = inbox.get()
        if item is None:
            _leave(outbox)
        got = time.time()
        phases.take()
        index, task = item
        try:
            result = work(task)
        except Exception as exc:  # noqa: BLE001 - a failing task is an outcome, the worker goes on
            result, error = None, _one_line(exc)
        else:
            error = ""
        stamps = (started, ready, parts, got, time.time(), tuple(phases.take().items()))
        outbox.put((worker, index, result, error, stamps))


def _leave(outbox: Any) -> NoReturn:
    """End a worker told to end: its results already sent are flushed into the pipe (the queue's feeder thread
    joined), its standard streams flushed, then the process exits with code 0 without the interpreter's teardown
    (torch's and CUDA's: most of a second; the driver frees the device when the process is gone)."""
    outbox.close()
    outbox.join_thread()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a closed or broken stream: nothing more to keep
            pass
    os._exit(0)


def _start(processes: Sequence[Any], spawned: dict[int, float]) -> None:
    """Start the workers with SIGINT ignored from their first instruction (a spawned Python keeps an ignored
    SIGINT ignored, a forked child inherits it), so that Ctrl-C during their start prints no traceback;
    ``spawned[i]``: when the i-th started."""
    main = threading.current_thread() is threading.main_thread()
    old = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
    try:
        for i, p in enumerate(processes):
            spawned[i] = time.time()
            p.start()
    finally:
        if main:
            signal.signal(signal.SIGINT, old)


def next_task(todo: Sequence[int], keys: Sequence[Hashable] | None, mine: set[Hashable],
              claimed: set[Hashable]) -> int:
    """Which waiting task (an index of ``todo``) a free worker takes: without ``keys`` the first; else the first whose
    key it has already had (``mine``: its kernels are compiled there), else the first whose key no worker has had
    (``claimed``), else the first. Keys name what a task compiles, so two workers compile the same kernels only
    when one would otherwise wait; within each preference the given order (longest first) holds."""
    if keys is None:
        return 0
    fresh = None
    for pos, index in enumerate(todo):
        key = keys[index]
        if key in mine:
            return pos
        if fresh is None and key not in claimed:
            fresh = pos
    return 0 if fresh is None else fresh


def spread(work: Callable[[Any], Any], tasks: Sequence[Any], devices: Sequence[int], *,
           poll_s: float = POLL_S, keys: Sequence[Hashable] | None = None,
           prepare: Callable[[], Mapping[str, float]] | None = None,
           preload: Callable[[], object] | None = None, start_method: str | None = None) -> Iterator[Outcome]:
    """Run ``work(task)`` for every task on one worker process per entry of ``devices`` (an index repeated: that
    many workers on the device); yield the outcomes as they finish.

    ``work`` and the tasks must pickle (``work`` a module-level function). Tasks go out in the order given, the
    next to whichever worker returns first, preferring (with ``keys``, one per task: what it compiles) a task
    whose kernels that worker already compiled (:func:`next_task`). Close the iterator (``contextlib.closing``)
    to stop the workers early; on an exception in the caller (Ctrl-C included) they are terminated.
    ``prepare`` (module-level, or ``None``): each worker's first call, before its tasks; it returns named seconds
    (``import_s``, ``cuda_init_s``...) which, like the parts the work notes (:func:`sparsesim.kernels.phases.timed`),
    come back on each :attr:`Outcome.timing`. ``start_method``: ``fork``, ``spawn`` or ``forkserver``; ``None``:
    :func:`choose_start` decides (fork where :func:`fork_safe`), running ``preload`` (any callable: it runs here)
    before forking, e.g. the imports that ``prepare`` would make in each worker.
    """
    if keys is not None and len(keys) != len(tasks):
        raise ValueError(f"{len(keys)} keys for {len(tasks)} tasks; allowed: one key per task")
    if len(devices) == 1:  # one worker compiles everything anyway: the given order as it is
        keys = None
    if not devices or any(isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in devices):
        raise ValueError(f"devices {list(devices)}: one or more device indices (0 or more)")
    if not tasks:
        return
    ctx: Any = mp.get_context(choose_start(preload, start_method))  # queues and processes of one context
    shared = len(set(devices)) != len(devices)

    def name(w: int) -> str:
        return f"worker {w} on cuda:{devices[w]}" if shared else f"worker on cuda:{devices[w]}"

    workers = range(len(devices))
    outbox = ctx.Queue()
    inboxes = {w: ctx.Queue() for w in workers}
    procs = {w: ctx.Process(target=_serve, args=(w, devices[w], work, inboxes[w], outbox, prepare),
                            name=f"sparsesim-cuda{devices[w]}" + (f"-{w}" if shared else ""), daemon=True)
             for w in workers}
    todo = deque(range(len(tasks)))
    held: dict[int, int] = {}  # worker -> the task it is on
    dead_since: dict[int, float] = {}  # worker -> when it was first seen exited
    seen: dict[int, set[Hashable]] = {w: set() for w in workers}  # worker -> the keys it has had
    claimed: set[Hashable] = set()
    spawned: dict[int, float] = {}  # worker -> when its process was started

    def give(w: int) -> None:
        if todo:
            pos = next_task(todo, keys, seen[w], claimed)
            index = todo[pos]
            del todo[pos]
            if keys is not None:
                seen[w].add(keys[index])
                claimed.add(keys[index])
            held[w] = index
            inboxes[w].put((index, tasks[index]))

    finished = False
    try:
        _start(list(procs.values()), spawned)
        for w in workers:
            give(w)
        while held:
            try:
                w, index, result, error, stamps = outbox.get(timeout=poll_s)
            except queue.Empty:
                pass
            else:
                received = time.time()
                held.pop(w, None)
                if procs[w].exitcode is None:
                    give(w)
                first, ready, prep, got, done, parts = stamps
                timing = TaskTiming(devices[w], index, spawned[w], first, ready, prep, got, done, parts, received)
                yield Outcome(index, devices[w], result, f"{name(w)}: {error}" if error else "", timing, w)
            now = time.monotonic()
            for w in [w for w in held if procs[w].exitcode is not None]:
                if now - dead_since.setdefault(w, now) >= poll_s:  # its last result, if any, had time to arrive
                    yield Outcome(held.pop(w), devices[w], None, f"{name(w)} exited (code {procs[w].exitcode})",
                                  worker=w)
        if todo:
            exits = {w: p.exitcode for w, p in procs.items()}
            codes = "; ".join(f"cuda:{devices[w]}{f' worker {w}' if shared else ''} code {c}"
                              for w, c in exits.items())
            raise WorkersLost(f"every worker exited ({codes}) with {len(todo)} task(s) left", tuple(todo), exits)
        finished = True
    finally:
        _stop(procs, inboxes, graceful=finished)
        outbox.cancel_join_thread()


def _stop(procs: dict[int, Any], inboxes: dict[int, Any], *, graceful: bool) -> None:
    """End the workers: ask them to exit and wait (``graceful``), else terminate them; never leave one running."""
    for d, p in procs.items():
        if p.is_alive() and graceful:
            inboxes[d].put(None)
        inboxes[d].cancel_join_thread()
    for p in procs.values():
        if p.pid is None:
            continue
        if graceful:
            p.join(JOIN_S)
        if p.is_alive():
            p.terminate()
            p.join(JOIN_S)
        if p.is_alive():
            p.kill()
            p.join()


__all__ = ["Outcome", "WorkersLost", "choose_start", "fork_safe", "next_task", "parse_devices", "pin", "spread"]

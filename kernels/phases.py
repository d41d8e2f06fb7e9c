"""Where a validation campaign's wall time goes: per worker, its start, imports, CUDA start, tasks, waits and tail.

:func:`sparsesim.kernels.workers.spread` stamps every task it runs (a :class:`TaskTiming` on its
:class:`~sparsesim.kernels.workers.Outcome`); a work function names parts of a task's time with :func:`timed`
(``first_call_s``, ``check_s``, ``time_s``, ``probe_s`` in :mod:`sparsesim.kernels.validate`). :func:`breakdown`
turns the stamps of one campaign into seconds per device that add up to the campaign's wall time exactly.

Stamps are wall-clock seconds (``time.time()``, comparable between the processes of one machine); a part is a
``time.perf_counter`` difference within one process.

Example:
    >>> t = TaskTiming(device=0, index=0, spawned=1.0, started=1.5, ready=3.5, prepare=(("import_s", 1.5),),
    ...                got=3.5, done=5.5, parts=(("time_s", 1.0),), received=5.5)
    >>> row = breakdown([t], start=0.5, end=6.0)["devices"][0]
    >>> row["spawn_s"], row["import_s"], row["measure_s"], row["task_other_s"], row["sum_s"]
    (0.5, 1.5, 1.0, 1.0, 5.5)
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

_NOTES: dict[str, float] = {}

#: The columns of :func:`breakdown`, in the order of a worker's time line (their sum is ``sum_s``).
COLUMNS = ("setup_s", "spawn_s", "import_s", "cuda_init_s", "prepare_other_s", "compile_s", "check_s", "measure_s",
           "task_other_s", "between_s", "idle_end_s", "stop_s")


def note(name: str, seconds: float) -> None:
    """Add ``seconds`` to the part ``name`` of the task this process is running."""
    _NOTES[name] = _NOTES.get(name, 0.0) + seconds


@contextmanager
def timed(name: str) -> Iterator[None]:
    """Note the time of the ``with`` block as the part ``name`` (also when it raises)."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        note(name, time.perf_counter() - t0)


def take() -> dict[str, float]:
    """The parts noted since the last call, forgotten here."""
    out = dict(_NOTES)
    _NOTES.clear()
    return out


@dataclass(frozen=True)
class TaskTiming:
    """One task's stamps. ``device``: its worker's device, ``None`` for the calling process.

    ``spawned``: the caller, just before starting the worker's process (calling process: the run's start);
    ``started``: the worker's first line of code; ``ready``: its prepare step done, whose own parts (``import_s``,
    ``cuda_init_s``...) are ``prepare``; ``got``/``done``: the worker took the task / the work returned, with the
    parts the work noted (:func:`timed`) in ``parts``; ``received``: the caller took the result.
    """

    device: int | None
    index: int
    spawned: float
    started: float
    ready: float
    prepare: tuple[tuple[str, float], ...]
    got: float
    done: float
    parts: tuple[tuple[str, float], ...]
    received: float

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["prepare"], d["parts"] = dict(self.prepare), dict(self.parts)
        return d


def breakdown(timings: Iterable[TaskTiming], start: float, end: float) -> dict[str, Any]:
    """Seconds per device of a campaign from ``start`` to ``end`` (wall-clock stamps), in :data:`COLUMNS`:

    - ``setup_s``: from ``start`` to the worker's spawn (the caller's own work first: predictions, ordering);
    - ``spawn_s``: spawn call to the worker's first line (interpreter start, the spawn's re-import of the main
      module, unpickling the work function: its module's imports);
    - ``import_s``, ``cuda_init_s``: the prepare step's parts; ``prepare_other_s``: the rest of that step;
    - ``compile_s``: the tasks' ``first_call_s`` (first call of a case: compiles, autotuning, one run);
      ``check_s``: the rest of their ``check_s`` (inputs, reference); ``measure_s``: their ``time_s`` (timed
      calls); ``task_other_s``: the rest of the tasks' wall time (``probe_s``, unreported work);
    - ``between_s``: the worker ready but on no task (waiting for the next; in the calling process: predicting
      and writing rows);
    - ``idle_end_s``: from the worker's last result to the campaign's last (the tail);
    - ``stop_s``: from the campaign's last result to ``end`` (last row, stopping the workers).

    ``sum_s`` is their sum, ``end - start`` for every device. Also per device: ``tasks``, ``busy_s`` (the tasks'
    wall time), ``lag_s`` (results sent but not yet taken by the caller, summed: part of ``between_s`` and
    ``idle_end_s``) and the summed ``parts`` and ``prepare`` as reported.
    """
    timings = list(timings)
    finished = max((t.received for t in timings), default=start)
    rows = []
    for device in sorted({t.device for t in timings}, key=lambda d: -1 if d is None else d):
        mine = sorted((t for t in timings if t.device == device), key=lambda t: t.got)
        first = mine[0]
        prepare = dict(first.prepare)
        parts: dict[str, float] = {}
        for t in mine:
            for k, v in t.parts:
                parts[k] = parts.get(k, 0.0) + v
        busy = sum(t.done - t.got for t in mine)
        between = sum(t.got - prev for t, prev in zip(mine, [first.ready] + [t.done for t in mine[:-1]],
                                                      strict=True))
        compile_s = parts.get("first_call_s", 0.0)
        check_s = max(parts.get("check_s", 0.0), compile_s)  # the first call is part of the check when there is one
        row: dict[str, Any] = {
            "device": device, "tasks": len(mine), "setup_s": first.spawned - start,
            "spawn_s": first.started - first.spawned, "import_s": prepare.get("import_s", 0.0),
            "cuda_init_s": prepare.get("cuda_init_s", 0.0),
            "prepare_other_s": (first.ready - first.started) - prepare.get("import_s", 0.0)
            - prepare.get("cuda_init_s", 0.0),
            "compile_s": compile_s, "check_s": check_s - compile_s, "measure_s": parts.get("time_s", 0.0),
            "task_other_s": busy - check_s - parts.get("time_s", 0.0),
            "between_s": between, "idle_end_s": finished - mine[-1].done, "stop_s": end - finished,
        }
        row["sum_s"] = sum(row[c] for c in COLUMNS)
        row.update(busy_s=busy, lag_s=sum(t.received - t.done for t in mine), parts=parts, prepare=prepare)
        rows.append(row)
    return {"start": start, "end": end, "wall_s": end - start, "devices": rows}


def write(path: str | os.PathLike[str], tasks: Sequence[tuple[str, TaskTiming]], start: float, end: float,
          flag: str = "SPARSESIM_PHASES", **info: Any) -> None:
    """Write a campaign's phases as JSON (:func:`sparsesim.simulator.files.write_text`; check the path with
    ``check_output`` before the work): ``info``, the :func:`breakdown` and every task's stamps with its label
    (``tasks``: ``(label, timing)``, e.g. the case id)."""
    from sparsesim.simulator.files import write_text

    data = {"version": 1, **info, "breakdown": breakdown([t for _, t in tasks], start, end),
            "tasks": [{"label": label, **t.as_dict()} for label, t in tasks]}
    write_text(json.dumps(data, indent=1) + "\n", path, flag)


def load(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A phases file (:func:`write`): its JSON object."""
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    if not isinstance(data, Mapping) or "breakdown" not in data:
        raise ValueError(f"{path}: not a phases file (no 'breakdown')")
    return dict(data)


__all__ = ["COLUMNS", "TaskTiming", "breakdown", "load", "note", "take", "timed", "write"]

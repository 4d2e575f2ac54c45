"""Where a continuous query keeps its state at each parallelism.

At parallelism 1 the state is ``<state_root>/<name>``; at N > 1 the tasks' states are under
``<state_root>/<name>.p<N>`` (see :mod:`.parallel`). A query with state of a parallel run runs as
a parallel query at any parallelism, 1 included (``<name>.p1``), its state moved to the new
tasks first (:mod:`.rescale`). This module is apart from
:mod:`.parallel` so that starting a query at parallelism 1 does not import the task machinery.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["parallel_states", "task_checkpoint_name", "task_root"]


def task_root(state_root: Path, name: str, parallelism: int) -> Path:
    """Where the tasks of query ``name`` at ``parallelism`` keep their state."""
    return state_root / f"{name}.p{parallelism}"


def parallel_states(state_root: Path, name: str) -> dict[int, Path]:
    """The state directories of query ``name``'s parallel runs, by parallelism."""
    found = {}
    for path in state_root.glob(f"{name}.p*"):
        digits = path.name[len(name) + 2 :]
        if digits.isdigit() and path.is_dir():
            found[int(digits)] = path
    return found


def task_checkpoint_name(name: str, parallelism: int, store: str) -> str:
    """The name the checkpoints of one state store of a task (``task-<i>``, ``exchange-<i>``)
    are kept and recorded under on agents (:mod:`.placement`)."""
    return f"{name}.p{parallelism}.{store}"

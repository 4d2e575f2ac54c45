"""Where a continuous query keeps its state at each parallelism, and the refusal to run it at
another parallelism than its state was checkpointed at (rescaling is not supported yet).

At parallelism 1 the state is ``<state_root>/<name>``; at N > 1 the tasks' states are under
``<state_root>/<name>.p<N>`` (see :mod:`.parallel`). This module is apart from
:mod:`.parallel` so that starting a query at parallelism 1 does not import the task machinery.
"""

from __future__ import annotations

from pathlib import Path

from streamhouse.errors import SqlError

__all__ = ["check_parallelism", "task_root"]


def task_root(state_root: Path, name: str, parallelism: int) -> Path:
    """Where the tasks of query ``name`` at ``parallelism`` keep their state."""
    return state_root / f"{name}.p{parallelism}"


def check_parallelism(state_root: Path, name: str, parallelism: int) -> None:
    """Refuse to run query ``name`` at ``parallelism`` over state checkpointed at another one
    (it would start from its sources again and write every window twice)."""
    own = state_root / name if parallelism == 1 else task_root(state_root, name, parallelism)
    others = [
        p for p in state_root.glob(f"{name}.p*") if p != own and p.name[len(name) + 2 :].isdigit()
    ]
    if parallelism > 1 and (state_root / name).exists():
        others.append(state_root / name)
    if others:
        raise SqlError(
            f"query {name!r} was checkpointed at another parallelism ({others[0]}):"
            " rescaling is not supported yet; run it at that parallelism, or delete its"
            " state to run it afresh"
        )

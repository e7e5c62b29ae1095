"""Which task made each data artifact. Metaflow hands artifacts down the graph by content hash,
so a training task holds an X_train that an earlier step (the one before a foreach) produced.

The walk goes up the run's graph from the training task while a parent step's task holds an
artifact of the same name and content hash; the farthest such task produced it. It reads the
run's ancestor steps only, with one datastore listing for all of them.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Protocol


class TaskStore(Protocol):
    """What the walk reads of a task (Metaflow's TaskDataStore has this shape)."""

    @property
    def run_id(self) -> str: ...
    @property
    def step_name(self) -> str: ...
    @property
    def task_id(self) -> str: ...
    @property
    def pathspec(self) -> str: ...  # run/step/task

    def __contains__(self, name: str) -> bool: ...
    def keys_for_artifacts(self, names: list[str]) -> list[str | None]: ...


def producing_tasks(flow_datastore: Any, graph: Any, task: TaskStore, names: list[str]) -> dict[str, str]:
    """name -> pathspec (run/step/task) of the task that produced `task`'s artifact of that name."""
    ancestors: set[str] = set()
    todo = list(graph[task.step_name].in_funcs)
    while todo:
        step = todo.pop()
        if step not in ancestors:  # NOTE: a recursive step is its own ancestor; this ends the loop
            ancestors.add(step)
            todo.extend(graph[step].in_funcs)
    by_step: dict[str, list[TaskStore]] = defaultdict(list)
    if ancestors:
        for found in flow_datastore.get_task_datastores(run_id=task.run_id, steps=sorted(ancestors)):
            by_step[found.step_name].append(found)
    shas = task.keys_for_artifacts(names)
    return {name: _origin(graph, by_step, task, name, sha) for name, sha in zip(names, shas, strict=True)}


def _origin(graph: Any, by_step: dict[str, list[TaskStore]], task: TaskStore, name: str, sha: Any) -> str:
    found, visited = task, {task.step_name}
    while sha is not None:
        holders = [
            t
            for step in graph[found.step_name].in_funcs
            for t in by_step[step]
            if t.pathspec != found.pathspec and name in t and t.keys_for_artifacts([name])[0] == sha
        ]
        if not holders:
            break
        # NOTE: foreach siblings can hold the same content; the first created is the stable choice.
        found = min(holders, key=lambda t: (len(t.task_id), t.task_id))
        if found.step_name in visited:
            break
        visited.add(found.step_name)
    return found.pathspec

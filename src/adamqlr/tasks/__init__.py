"""The paper's tasks, by name: :func:`get_task` returns a :class:`~adamqlr.tasks.base.Task`.

Modules are imported only when their task is asked for, so that e.g. the Rosenbrock task does
not pull in the data loaders.
"""

from __future__ import annotations

import importlib

from adamqlr.tasks.base import PROFILES, Split, Task, TaskData, TaskProfile

__all__ = ["PROFILES", "TASKS", "Split", "Task", "TaskData", "TaskProfile", "get_task"]

#: Task name -> "module:Class".
TASKS: dict[str, str] = {
    "rosenbrock": "adamqlr.tasks.rosenbrock:Rosenbrock",
    "rosenbrock-random-start": "adamqlr.tasks.rosenbrock:RosenbrockRandomStart",
    "uci-energy": "adamqlr.tasks.uci:UCIEnergy",
    "uci-protein": "adamqlr.tasks.uci:UCIProtein",
    "fashion-mnist": "adamqlr.tasks.fashion_mnist:FashionMNIST",
    "svhn": "adamqlr.tasks.images:SVHN",
    "cifar-10": "adamqlr.tasks.images:CIFAR10",
    "cifar-10-jpeg": "adamqlr.tasks.images:CIFAR10JPEG",
    "penn-treebank": "adamqlr.tasks.penn_treebank:PennTreebank",
}


def get_task(name: str) -> Task:
    """Return the task called ``name``.

    Raises:
        ValueError: If no task has that name.
    """
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; expected one of {sorted(TASKS)}")
    module, cls = TASKS[name].split(":")
    return getattr(importlib.import_module(module), cls)()

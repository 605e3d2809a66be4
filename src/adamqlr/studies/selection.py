"""Part of a study: the arms a campaign runs (or sizes) first.

``adamqlr study plan|status|run NAME --task TASK --arm PATTERN --exclude-arm PATTERN`` works on
the arms that :func:`select_arms` keeps:

* ``--task`` (repeatable): arms whose task is one of these (the task of an arm around another
  arm's choice is that arm's task);
* ``--arm`` (repeatable): arms whose id matches one of these shell-style patterns
  (:func:`fnmatch.fnmatchcase`, e.g. ``'fashion-mnist/*'`` or ``'*/k-fac/*'``);
* ``--exclude-arm`` (repeatable): minus the arms whose id matches one of these.

The filters combine with *and*. A selection is an ordinary :class:`~adamqlr.studies.core.Study`
(same name, same records) with fewer arms, so plans, campaigns, interleaving and the store work on
it unchanged. **Dependencies come along:** an arm around another arm's choice
(:class:`~adamqlr.studies.core.BestOf`) needs that arm's tuning; its plan already lists the
referenced arm's tuning trials (its repeats only once they are chosen), and a selection keeps a
link to its whole study, so the referenced arm is found even when it is not selected. Its tuning
runs are then run (and counted by :func:`adamqlr.studies.costs.estimate`) with the selection; its
own repeats are not.

A filter that selects nothing is an error: a task or pattern that matches no arm at all (the
message names it and lists some valid ids), or filters that together leave no arm.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from adamqlr.studies.core import Arm, Study, arm_task

__all__ = ["ArmFilter", "select_arms", "select_studies"]

#: How many valid ids an error message lists.
_SHOWN = 8


@dataclass(frozen=True)
class ArmFilter:
    """Which arms of a study to keep (see the module doc).

    Attributes:
        tasks: Keep arms of these tasks (empty: any task).
        arms: Keep arms whose id matches one of these shell-style patterns (empty: any id).
        exclude: Drop arms whose id matches one of these patterns.
    """

    tasks: tuple[str, ...] = ()
    arms: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("tasks", "arms", "exclude"):
            values = getattr(self, name)
            if isinstance(values, str):
                raise ValueError(f"invalid {name} {values!r} (expected a sequence of strings)")
            values = tuple(values)
            bad = [v for v in values if not isinstance(v, str) or not v]
            if bad:
                raise ValueError(f"invalid {name} {bad!r} (expected non-empty strings)")
            object.__setattr__(self, name, values)

    def __bool__(self) -> bool:
        return bool(self.tasks or self.arms or self.exclude)

    def keeps(self, study: Study, arm: Arm) -> bool:
        """Whether ``arm`` of ``study`` passes the filter."""
        if self.tasks and arm_task(study, arm) not in self.tasks:
            return False
        if self.arms and not any(fnmatch.fnmatchcase(arm.id, p) for p in self.arms):
            return False
        return not any(fnmatch.fnmatchcase(arm.id, p) for p in self.exclude)

    @property
    def options(self) -> str:
        """The filter as command-line options (what ``adamqlr study run`` takes)."""
        parts = [f"--task {shlex.quote(t)}" for t in self.tasks]
        parts += [f"--arm {shlex.quote(p)}" for p in self.arms]
        parts += [f"--exclude-arm {shlex.quote(p)}" for p in self.exclude]
        return " ".join(parts)


def _some(ids: Sequence[str]) -> str:
    """Return a few of ``ids``, spread over the list (so every task shows), and their count."""
    if len(ids) <= _SHOWN:
        return ", ".join(ids)
    shown = [ids[i * len(ids) // _SHOWN] for i in range(_SHOWN)]
    return ", ".join(shown) + f", ... ({len(ids)} in all)"


def _check_each_matches(studies: Sequence[Study], arm_filter: ArmFilter) -> None:
    """Raise ValueError naming a task or pattern that matches no arm of ``studies``."""
    arms = [(s, a) for s in studies for a in s.arms]
    ids = [a.id for _, a in arms]
    names = ", ".join(s.name for s in studies)
    tasks = sorted({arm_task(s, a) for s, a in arms})
    for task in arm_filter.tasks:
        if task not in tasks:
            raise ValueError(f"--task {task!r} matches no arm of {names}; its tasks are {tasks}")
    for option, patterns in (("--arm", arm_filter.arms), ("--exclude-arm", arm_filter.exclude)):
        for pattern in patterns:
            if not any(fnmatch.fnmatchcase(i, pattern) for i in ids):
                raise ValueError(
                    f"{option} {pattern!r} matches no arm id of {names}; ids are e.g. {_some(ids)}"
                )


def select_arms(study: Study, arm_filter: ArmFilter) -> Study:
    """Return the part of ``study`` that ``arm_filter`` keeps (``study`` itself for no filter).

    The result has the study's name, profile and policies and the kept arms in the study's order;
    :attr:`~adamqlr.studies.core.Study.parent` links it to ``study`` (so an arm around another
    arm's choice finds that arm) and :attr:`~adamqlr.studies.core.Study.command` repeats the
    filter.

    Raises:
        ValueError: If a task or pattern matches no arm of the study, or the filters together
            keep none (the message names them and lists some valid ids).
    """
    return select_studies([study], arm_filter)[0]


def select_studies(studies: Sequence[Study], arm_filter: ArmFilter) -> list[Study]:
    """Apply ``arm_filter`` to several studies; drop those it keeps no arm of.

    Each task and pattern must match an arm of at least one of the studies (so ``all`` with
    ``--task uci-energy`` keeps the studies that have UCI Energy arms).

    Raises:
        ValueError: If a task or pattern matches no arm of any study, or no arm is kept at all.
    """
    if not arm_filter:
        return list(studies)
    _check_each_matches(studies, arm_filter)
    out = []
    for study in studies:
        kept = tuple(a for a in study.arms if arm_filter.keeps(study, a))
        if kept:
            whole = study.parent if study.parent is not None else study
            options = f"{study.selection} {arm_filter.options}".strip()
            out.append(dataclasses.replace(study, arms=kept, parent=whole, selection=options))
    if not out:
        ids = [a.id for s in studies for a in s.arms]
        raise ValueError(
            f"the filter {arm_filter.options} keeps no arm of "
            f"{', '.join(s.name for s in studies)}; ids are e.g. {_some(ids)}"
        )
    return out

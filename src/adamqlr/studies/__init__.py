"""Named studies: the experiments behind each experiment chapter, under each profile.

::

    from adamqlr.studies import get_study, missing, obtain

    study = get_study("untuned-vs-tuned", "quick")
    todo, blocked = missing(study)          # runs without a record (and arms waiting on them)
    records = obtain(study)                 # the records, or StudyIncomplete naming the runs
    records.by_label(task="fashion-mnist")  # {figure label: [RunRecord, ...]}

From the command line: ``adamqlr study list``, ``adamqlr study status NAME --profile quick``,
``adamqlr study plan NAME --profile paper`` (runs, steps, core-hours), ``adamqlr study run NAME
--profile paper --jobs 2`` (also ``python -m adamqlr.studies ...``). ``plan``, ``status`` and
``run`` take ``--task``, ``--arm PATTERN`` and ``--exclude-arm PATTERN`` to work on part of a study
(:mod:`adamqlr.studies.selection`); ``plan --by task|optimiser|arm`` breaks the core-hours down.

:mod:`adamqlr.studies.core` has the machinery (arms, tuning by random search with successive
halving or by a grid, plans against a store), :mod:`adamqlr.studies.catalogue` the studies
themselves, :mod:`adamqlr.studies.campaign` the parallel, resumable runner,
:mod:`adamqlr.studies.costs` the per-step costs and estimates, :mod:`adamqlr.studies.selection`
the parts of a study a campaign runs first, :mod:`adamqlr.studies.analysis` the
tables the chapters print.
"""

from adamqlr.studies.campaign import Campaign, CampaignSummary, DirtyTreeError
from adamqlr.studies.catalogue import (
    STUDIES,
    get_study,
    notebook_records,
    notebook_records_by_task,
    study_names,
)
from adamqlr.studies.core import (
    Arm,
    ArmPlan,
    BestOf,
    Search,
    Study,
    StudyIncomplete,
    StudyRecords,
    apply_variation,
    final_value,
    grid,
    missing,
    obtain,
    plan,
    run_study,
)
from adamqlr.studies.selection import ArmFilter, select_arms

__all__ = [
    "STUDIES",
    "Arm",
    "ArmFilter",
    "ArmPlan",
    "BestOf",
    "Campaign",
    "CampaignSummary",
    "DirtyTreeError",
    "Search",
    "Study",
    "StudyIncomplete",
    "StudyRecords",
    "apply_variation",
    "final_value",
    "get_study",
    "grid",
    "missing",
    "notebook_records",
    "notebook_records_by_task",
    "obtain",
    "plan",
    "run_study",
    "select_arms",
    "study_names",
]

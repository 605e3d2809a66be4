"""Named studies: the experiments behind each experiment chapter, under each profile.

::

    from adamqlr.studies import get_study, missing, obtain

    study = get_study("untuned-vs-tuned", "quick")
    todo, blocked = missing(study)          # runs without a record (and arms waiting on them)
    records = obtain(study)                 # the records, or StudyIncomplete naming the runs
    records.by_label(task="fashion-mnist")  # {figure label: [RunRecord, ...]}

From the command line: ``adamqlr study list``, ``adamqlr study status NAME --profile quick``,
``adamqlr study run NAME --profile paper`` (also ``python -m adamqlr.studies ...``).

:mod:`adamqlr.studies.core` has the machinery (arms, tuning by a grid, plans against a store),
:mod:`adamqlr.studies.catalogue` the studies themselves, :mod:`adamqlr.studies.analysis` the
tables the chapters print.
"""

from adamqlr.studies.catalogue import STUDIES, get_study, study_names
from adamqlr.studies.core import (
    Arm,
    ArmPlan,
    BestOf,
    Study,
    StudyIncomplete,
    StudyRecords,
    apply_variation,
    final_value,
    grid,
    missing,
    notebook_records,
    obtain,
    plan,
    run_study,
)

__all__ = [
    "STUDIES",
    "Arm",
    "ArmPlan",
    "BestOf",
    "Study",
    "StudyIncomplete",
    "StudyRecords",
    "apply_variation",
    "final_value",
    "get_study",
    "grid",
    "missing",
    "notebook_records",
    "obtain",
    "plan",
    "run_study",
    "study_names",
]

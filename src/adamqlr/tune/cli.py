r"""``adamqlr tune``: tune an optimiser on a task the paper's way, then repeat the best.

Examples::

    adamqlr tune --task uci-energy --optimiser adam --profile quick
    adamqlr tune --task fashion-mnist --optimiser kfac --profile paper \
        --storage journal:results/tuning/fmnist.log --workers 4
    adamqlr tune --task fashion-mnist --optimiser kfac --profile paper --status

Several commands (on one or many machines) given the same ``--storage`` and study work on one
study together; a killed worker's trial is failed and retried by the others once its lease
expires. Every trial and repeat is a run record in the results store.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import textwrap
from typing import Any

from adamqlr.profiles import PROFILES, Profile, profile_argument

__all__ = ["handle", "register"]

_PROFILE_HELP = (
    "tuning profile: smoke (3 trials, 2 repeats, 10 s cap), quick (8 trials, 3 repeats, 60 s cap "
    "per trial, the task's quick budget), paper (200 trials, 50 repeats -- 10 on Penn Treebank --, "
    "the paper's caps of 900/3600 s)"
)


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``tune`` subcommand to the ``adamqlr`` parser."""
    from adamqlr.tune.spaces import SPACES, UNTUNED

    epilog = "\n".join(
        [
            "tunable optimisers:",
            textwrap.fill(", ".join(SPACES), 88, initial_indent="  ", subsequent_indent="  "),
            "untuned (repeats only):",
            textwrap.fill(
                ", ".join(sorted(UNTUNED)), 88, initial_indent="  ", subsequent_indent="  "
            ),  # fmt: skip
            "",
            "storage: sqlite:///PATH, journal:PATH (Optuna JournalFileBackend, best for many "
            "workers),",
            "  or a database URL (postgresql://...); default: <results>/tuning/optuna.sqlite3",
        ]
    )
    p = subparsers.add_parser(
        "tune",
        help="tune an optimiser (random search + successive halving), then repeat the best",
        description=(
            "Random search over the paper's search space with an ASHA-style successive-halving "
            "pruner on optimisation time, then repeats of the best configuration with fresh "
            "seeds. Every trial and repeat is stored as a run record."
        ),
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--task", required=True, help="task name (see `adamqlr run --help`)")
    p.add_argument("--optimiser", "--optimizer", required=True, help="optimiser registry name")
    p.add_argument(
        "--regime",
        default="fixed-epochs",
        choices=("fixed-epochs", "runtime-train", "runtime-val"),
        help="objective and budget (default: fixed-epochs, validation loss)",
    )
    p.add_argument("--profile", type=profile_argument, default=Profile.QUICK,
                   metavar="{" + ",".join(PROFILES) + "}", help=_PROFILE_HELP)  # fmt: skip
    p.add_argument("--trials", type=int, default=None, help="tuning trials (profile's default)")
    p.add_argument("--repeats", type=int, default=None, help="repeats of the best configuration")
    p.add_argument("--time-cap", type=float, default=None, help="seconds of optimisation per trial")
    p.add_argument("--rung-unit", type=float, default=None,
                   help="seconds per pruner resource unit (rungs at unit * 4**k)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of the random search (default 0)")
    p.add_argument("--storage", default=None, help="Optuna storage URL or journal:PATH")
    p.add_argument(
        "--study", default=None, help="study name (default task/optimiser/regime/profile)"
    )
    p.add_argument("--workers", type=int, default=1, help="worker processes on this machine")
    p.add_argument("--max-trials", type=int, default=None, help="stop each worker after N trials")
    p.add_argument(
        "--no-wait",
        action="store_true",
        help="return when nothing is left to start (do not wait for other workers)",
    )
    p.add_argument(
        "--lease-timeout",
        type=float,
        default=300.0,
        help="seconds after which a silent worker's trial is failed and retried",
    )
    p.add_argument("--results", default=None, help="results folder (default: the package's)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--status", action="store_true", help="print the study's state and exit")
    p.add_argument("-v", "--verbose", action="store_true", help="log each trial")
    p.set_defaults(handler=handle)
    return p


def _config(args: argparse.Namespace) -> Any:
    from adamqlr.tune.study import TuneConfig

    return TuneConfig(
        task=args.task,
        optimiser=args.optimiser,
        regime=args.regime,
        profile=args.profile,
        n_trials=args.trials,
        n_repeats=args.repeats,
        time_cap_s=args.time_cap,
        rung_unit_s=args.rung_unit,
        seed=args.seed,
        study_name=args.study,
        lease_timeout_s=args.lease_timeout,
        lease_interval_s=min(30.0, args.lease_timeout / 5),
    )


def _work(config_fields: dict[str, Any], storage: str | None, root: str | None, device: str,
          max_trials: int | None, wait: bool) -> str:  # fmt: skip
    """Run one worker (also the entry point of the extra worker processes)."""
    import optuna

    from adamqlr.tune.objective import SpecObjective
    from adamqlr.tune.study import TuneConfig, run_worker

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    config = TuneConfig(**config_fields)
    objective = SpecObjective(config, root=root, device=device)
    summary = run_worker(config, objective, storage, root=root, max_trials=max_trials, wait=wait)
    return summary.status


def handle(args: argparse.Namespace) -> int:
    """Run ``adamqlr tune``; return 0 (done or idle), 1 (no tuning trial succeeded) or 2."""
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")  # fmt: skip
    try:
        import optuna
    except ImportError:
        print("adamqlr tune needs optuna: pip install 'adamqlr[tune]'", file=sys.stderr)
        return 2
    from adamqlr.tune.study import describe_study, open_study

    if not args.verbose:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        config = _config(args)
        if args.workers < 1:
            raise ValueError(f"invalid --workers {args.workers!r} (expected >= 1)")
        study, _ = open_study(config, args.storage, root=args.results)
    except ValueError as err:
        print(f"adamqlr tune: {err}", file=sys.stderr)
        return 2
    if not args.status:
        import multiprocessing

        work_args = (config.as_dict(), args.storage, args.results, args.device, args.max_trials,
                     not args.no_wait)  # fmt: skip
        ctx = multiprocessing.get_context("spawn")
        extra = [ctx.Process(target=_work, args=work_args) for _ in range(args.workers - 1)]
        for proc in extra:
            proc.start()
        try:
            _work(*work_args)
        finally:
            for proc in extra:
                proc.join()
    report = describe_study(study)
    print(json.dumps(report, indent=2, default=str))
    return 1 if report["no_best"] else 0

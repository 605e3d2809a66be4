"""``adamqlr study``: list the book's studies, say which runs are missing, run them.

Examples::

    adamqlr study list
    adamqlr study status untuned-vs-tuned --profile quick
    adamqlr study run untuned-vs-tuned --profile quick --threads 1
    adamqlr study plan all --profile paper
    adamqlr study plan factorial --profile paper --by task
    adamqlr study plan untuned-vs-tuned --profile paper --exclude-arm '*/kfac*' --by optimiser
    adamqlr study plan all --profile paper --left
    adamqlr study run factorial --profile paper --task fashion-mnist --jobs 2
    adamqlr study calibrate --profile paper
    adamqlr study run untuned-vs-tuned --profile paper --jobs 2
    adamqlr study fold all --profile paper
    adamqlr study upgrade

``python -m adamqlr.studies ...`` is the same command.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from adamqlr.profiles import PROFILE_CHOICES, Profile, profile_argument

__all__ = ["handle", "main", "register"]


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", type=profile_argument, default=Profile.QUICK,
                   help=f"{PROFILE_CHOICES} (default: {Profile.QUICK})")  # fmt: skip
    p.add_argument("--results", type=Path, help="results store folder (default: $ADAMQLR_RESULTS "
                   "or results/ of the checkout)")  # fmt: skip


def _add_filters(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "part of a study",
        "select arms (filters combine with 'and'; an arm around another arm's choice brings "
        "that arm's tuning runs along)",
    )
    g.add_argument("--task", action="append", default=[], metavar="TASK",
                   help="only the arms of this task (repeatable)")  # fmt: skip
    g.add_argument("--arm", action="append", default=[], metavar="PATTERN",
                   help="only the arms whose id matches this shell-style pattern, e.g. "
                   "'fashion-mnist/*' or '*/k-fac/*' (repeatable)")  # fmt: skip
    g.add_argument("--exclude-arm", action="append", default=[], metavar="PATTERN",
                   help="leave out the arms whose id matches PATTERN (repeatable)")  # fmt: skip


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``study`` subcommand to the ``adamqlr`` parser."""
    p = subparsers.add_parser(
        "study",
        help="run the named studies behind the experiment chapters",
        description=(
            "The experiment chapters of the book each draw from a named study: a list of "
            "experiments (tuning trials, then repeats of the chosen configuration). `status` "
            "lists what is missing from the results store; `run` makes it, stage by stage."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("Examples::", 1)[1].split("``python", 1)[0].rstrip(),
    )
    sub = p.add_subparsers(dest="study_command", metavar="ACTION")
    ls = sub.add_parser("list", help="list the studies and their size")
    _add_common(ls)
    for name, help_ in (("status", "list the missing runs of a study"),
                        ("run", "run the missing runs of a study")):  # fmt: skip
        q = sub.add_parser(name, help=help_)
        q.add_argument("name", help="study name, or 'all'")
        _add_common(q)
        _add_filters(q)
        if name == "run":
            q.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N")
            q.add_argument("--jobs", type=int, default=None,
                           help="worker processes (default: the number of cores; 0: run in "
                           "this process, one run after another)")  # fmt: skip
            q.add_argument("--allow-dirty", action="store_true",
                           help="run a paper-profile campaign from a tree with uncommitted "
                           "changes (the records say so)")  # fmt: skip
            q.add_argument("--threads", type=int,
                           help="torch threads per worker (default 1)")  # fmt: skip
            q.add_argument("--force", action="store_true", help="rerun runs that have a record")
            q.add_argument("--no-progress", action="store_true", help="no progress bars")
            q.add_argument("--dry-run", action="store_true", help="only list what would run")
        else:
            q.add_argument("--all", action="store_true", help="list every missing run")
    pl = sub.add_parser("plan", help="runs, steps and estimated core-hours of a study")
    pl.add_argument("name", help="study name, or 'all'")
    _add_common(pl)
    _add_filters(pl)
    pl.add_argument("--by", choices=("task", "optimiser", "arm"),
                    help="also break the core-hours down by task, optimiser or arm")  # fmt: skip
    pl.add_argument("--overhead", type=float, default=1.0,
                    help="seconds of start-up and evaluation per run (default 1)")  # fmt: skip
    pl.add_argument("--left", action="store_true",
                    help="what is left: the estimate less the runs already stored")  # fmt: skip
    fo = sub.add_parser(
        "fold",
        help="fold finished tuning trials' full records into the trial ledgers (and compress "
        "ledgers still in plain text)",
    )
    fo.add_argument("name", help="study name, or 'all'")
    _add_common(fo)
    up = sub.add_parser(
        "upgrade",
        help="rewrite the store's records of older layouts in the current one (losslessly: each "
        "record's table must read back unchanged)",
    )
    up.add_argument("--results", type=Path, help="results store folder (default: "
                    "$ADAMQLR_RESULTS or results/ of the checkout)")  # fmt: skip
    ca = sub.add_parser("calibrate", help="measure per-step costs into <results>/costs.json")
    ca.add_argument("name", nargs="?", default="all", help="study name, or 'all' (default)")
    _add_common(ca)
    ca.add_argument("--steps", type=int, default=20, help="timed steps per case (default 20)")
    p.set_defaults(handler=handle)
    return p


def _studies(name: str, profile: Profile) -> list:
    from adamqlr.studies.catalogue import get_study, study_names

    names = study_names() if name == "all" else [name]
    return [get_study(n, profile) for n in names]


def handle(args: argparse.Namespace) -> int:
    """Run the ``study`` subcommand; return the exit status (2 for bad input, 1 if incomplete).

    A damaged record (a manifest that names a missing or altered file) stops every action with
    the folder's name and what to do, exit status 2: the store never overwrites or removes one
    for the user.
    """
    from adamqlr.results.store import CorruptRecordError

    try:
        return _handle(args)
    except CorruptRecordError as err:
        print(
            f"adamqlr study: error: {err}\n  a damaged record is never overwritten or removed "
            "for you: move its folder aside (or delete it) and run again to make it anew; "
            "finished runs are stored",
            file=sys.stderr,
        )
        return 2


def _handle(args: argparse.Namespace) -> int:
    from adamqlr.results.store import ResultStore
    from adamqlr.studies.core import describe_spec, missing, run_study

    action = getattr(args, "study_command", None)
    if action is None:
        print(
            "adamqlr study: error: give an action: list, status, plan, calibrate, fold, upgrade "
            "or run",
            file=sys.stderr,
        )
        return 2
    if action == "upgrade":
        store = ResultStore(args.results)
        try:
            upgraded = store.upgrade()
        except ValueError as err:
            print(f"adamqlr study: error: {err}", file=sys.stderr)
            return 2
        print(f"upgraded {len(upgraded)} record(s) under {store.root} to the current layout")
        return 0
    try:
        studies = _studies(getattr(args, "name", "all"), args.profile)
        if action in ("status", "run", "plan"):
            from adamqlr.studies.selection import ArmFilter, select_studies

            arm_filter = ArmFilter(tuple(args.task), tuple(args.arm), tuple(args.exclude_arm))
            studies = select_studies(studies, arm_filter)
        if action == "run" and args.threads is not None:
            if args.threads < 1:
                raise ValueError(f"invalid --threads {args.threads} (expected >= 1)")
            import torch

            torch.set_num_threads(args.threads)
        if action == "run" and args.jobs is not None and args.jobs < 0:
            raise ValueError(f"invalid --jobs {args.jobs} (expected >= 0)")
    except ValueError as err:
        print(f"adamqlr study: error: {err}", file=sys.stderr)
        return 2
    if action in ("plan", "calibrate"):
        from adamqlr.studies.costs import CostTable, calibrate, describe, estimate, left, made

        root = ResultStore(args.results, sweep=False).root
        if action == "calibrate":
            calibrate(studies, root, steps=args.steps)
            print(f"wrote {Path(root) / 'costs.json'}")
            return 0
        costs = CostTable.load(root)
        seen: set[str] = set()  # a run (or search) two studies share is counted once
        estimates = [estimate(s, costs, overhead_s=args.overhead, seen=seen) for s in studies]
        if args.left:
            store_seen: set[str] = set()
            store = ResultStore(args.results, sweep=False)
            estimates = [
                left(e, made(s, costs, store, overhead_s=args.overhead, seen=store_seen))
                for e, s in zip(estimates, studies, strict=True)
            ]
        print(f"profile {args.profile}" + (", left to make" if args.left else ""))
        if any(s.parent is not None for s in studies):
            for s in studies:
                whole = s.parent if s.parent is not None else s
                print(f"{s.name}: {len(s.arms)} of {len(whole.arms)} arms ({s.selection})")
        print(describe(estimates, costs, by=args.by))
        return 0
    store = ResultStore(args.results)
    if action == "fold":
        from adamqlr.studies.tables import fold_trials

        folded = fold_trials(studies, store, protect=_studies("all", args.profile))
        print(f"folded {len(folded)} tuning-trial record(s) into the ledgers under {store.root}")
        compressed = store.compress_ledgers()
        if compressed:
            print(f"compressed {len(compressed)} plain-text ledger(s)")
        return 0
    if action == "list":
        for study in studies:
            trials = sum(
                len(a.grid) or (a.search.n_trials if a.search is not None else 0)
                for a in study.arms
            )
            repeats = sum(len(a.seeds) for a in study.arms)
            print(f"{study.name:<18} {study.profile:<6} {len(study.arms):>3} arms, {trials:>4} "
                  f"tuning trials, {repeats:>4} repeats  {study.title}")  # fmt: skip
        return 0
    incomplete = 0
    for study in studies:
        todo, blocked = missing(study, store)
        if action == "status" or args.dry_run:
            state = "complete" if not (todo or blocked) else "incomplete"
            part = ""
            if study.parent is not None:
                part = f" [{len(study.arms)} of {len(study.parent.arms)} arms: {study.selection}]"
            print(f"{study.name} ({study.profile}){part}: {state}; {len(todo)} run(s) missing, "
                  f"{len(blocked)} arm(s) blocked")  # fmt: skip
            shown = todo if getattr(args, "all", False) or action == "run" else todo[:20]
            for spec in shown:
                print(f"  missing  {spec.key[:12]}  {describe_spec(spec)}")
            if len(shown) < len(todo):
                print(f"  ... and {len(todo) - len(shown)} more (--all lists them)")
            for line in blocked:
                print(f"  blocked  {line}")
            if todo or blocked:
                incomplete += 1
                print(f"  make them with: {study.command}")
            continue
        if args.jobs != 0:
            continue  # campaigns run below, over every study at once
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        run_study(
            study,
            store,
            device=args.device,
            progress=False if args.no_progress else None,
            force=args.force,
        )
        todo, blocked = missing(study, store)
        if todo or blocked:
            incomplete += 1
            print(f"{study.name}: still incomplete ({len(todo)} missing, {len(blocked)} blocked)",
                  file=sys.stderr)  # fmt: skip
        else:
            print(f"{study.name} ({study.profile}): complete")
    if action == "run" and not args.dry_run and args.jobs != 0:
        from adamqlr.studies.campaign import Campaign, CampaignInterrupted, DirtyTreeError

        try:
            campaign = Campaign(
                studies,
                store,
                jobs=args.jobs,
                threads=args.threads if args.threads is not None else 1,
                device=args.device,
                allow_dirty=args.allow_dirty,
                protect=_studies("all", args.profile),
                force=args.force,
            )
            summary = campaign.run()
        except (DirtyTreeError, ValueError) as err:
            print(f"adamqlr study: error: {err}", file=sys.stderr)
            return 2
        except CampaignInterrupted as err:
            print(f"adamqlr study: {err}; finished runs are stored, run again to resume",
                  file=sys.stderr)  # fmt: skip
            return 128 + err.signum
        return 0 if summary.complete else 1
    return 1 if incomplete else 0


def main(argv: list[str] | None = None) -> int:
    """``python -m adamqlr.studies``: the ``study`` subcommand on its own."""
    parser = argparse.ArgumentParser(prog="python -m adamqlr.studies")
    sub = parser.add_subparsers(dest="command")
    register(sub)
    args = parser.parse_args(["study", *(sys.argv[1:] if argv is None else argv)])
    return int(args.handler(args) or 0)

"""``adamqlr run``: train experiments from the command line and store their records.

Examples::

    adamqlr run --task fashion-mnist --optimiser adamqlr-untuned --profile quick --seeds 0-4
    adamqlr run --task uci-energy,uci-protein --optimiser adam --set lr=3e-3 --epochs 5
    adamqlr run --specs sweep.yaml --results /tmp/results

A finished run is loaded, not rerun (``--force`` reruns it); an interrupted one resumes from its
checkpoint. Records go to ``--results``, else ``$ADAMQLR_RESULTS``, else the user's data folder
(``~/.local/share/adamqlr/results`` on Linux; :func:`results_folder`): never, unless asked, into
the book's ``results/``, whose records the book's pages are drawn from.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import sys
import textwrap
from pathlib import Path
from typing import Any

from adamqlr.profiles import PROFILE_CHOICES, Profile, parse_profile

__all__ = [
    "build_specs",
    "handle",
    "parse_assignment",
    "register",
    "results_folder",
    "user_data_folder",
]


def user_data_folder() -> Path:
    """Return the per-user data folder of ``adamqlr``, as ``platformdirs.user_data_dir`` would.

    ``$XDG_DATA_HOME/adamqlr`` (default ``~/.local/share/adamqlr``) on Linux and other Unix,
    ``~/Library/Application Support/adamqlr`` on macOS, ``adamqlr`` in ``%LOCALAPPDATA%`` on
    Windows.
    """
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / "adamqlr"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "adamqlr"
    xdg = os.environ.get("XDG_DATA_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".local" / "share"
    return base / "adamqlr"


def results_folder(option: str | os.PathLike[str] | None = None) -> Path:
    """Return the store folder of ``adamqlr run``.

    Args:
        option: The ``--results`` argument, if given.

    Returns:
        ``option`` when given; else ``$ADAMQLR_RESULTS`` when set; else ``results`` in
        :func:`user_data_folder` (``~/.local/share/adamqlr/results`` on Linux), so that trying
        the command line never adds records to the book's ``results/``.
    """
    if option is not None:
        return Path(option).expanduser()
    env = os.environ.get("ADAMQLR_RESULTS")
    if env:
        return Path(env).expanduser()
    return user_data_folder() / "results"


def parse_assignment(text: str) -> tuple[str, Any]:
    """Parse ``key=value`` (a ``--set`` argument).

    The value is read as JSON when it parses (``1e-3``, ``null``, ``[0.9,0.99]``, ``true``) and
    kept as a string otherwise (``hessian``).

    Raises:
        ValueError: If there is no ``=`` or the key is empty.
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ValueError(f"invalid --set {text!r}: expected key=value")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return key, value


def _epilog() -> str:
    from adamqlr.experiment.optimisers import get_optimiser, optimiser_names
    from adamqlr.tasks import TASKS

    lines = ["tasks:", textwrap.fill(", ".join(TASKS), 88, initial_indent="  ",
                                     subsequent_indent="  ")]  # fmt: skip
    lines += ["", "optimisers:"]
    for name in optimiser_names():
        entry = get_optimiser(name)
        lines.append(f"  {name:<24} {entry.label}: {entry.description}")
    lines += [
        "",
        f"profiles: {PROFILE_CHOICES}",
        "",
        "examples:",
        "  adamqlr run --task fashion-mnist --optimiser adamqlr-untuned --seeds 0-4",
        "  adamqlr run --task uci-energy --optimiser adam --set lr=3e-3 --steps 500",
        "  adamqlr run --specs specs.yaml --results /tmp/results",
    ]
    return "\n".join(lines)


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``run`` subcommand to the ``adamqlr`` parser."""
    p = subparsers.add_parser(
        "run",
        help="train experiments and store their run records",
        description=textwrap.fill(
            "Train one experiment per (task, optimiser, seed) and write its run record to the "
            "results store (default: ~/.local/share/adamqlr/results, not the book's results/). "
            "Finished runs are loaded, not rerun; interrupted ones resume from "
            "their checkpoint.",
            88,
        ),
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--task", help="task name(s), comma-separated")
    p.add_argument("--optimiser", "--optimizer", dest="optimiser",
                   help="optimiser name(s), comma-separated")  # fmt: skip
    p.add_argument("--profile", default=Profile.QUICK.value,
                   help=f"{PROFILE_CHOICES} (default: {Profile.QUICK})")  # fmt: skip
    p.add_argument("--seeds", default="0", help="seeds: 3, 0-4, 0,2,5 (default: 0)")
    p.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                   help="hyperparameter override (repeatable), e.g. --set lr=1e-3")  # fmt: skip
    p.add_argument("--batch-size", type=int, help="mini-batch size")
    p.add_argument("--epochs", type=float, help="epoch budget (replaces the profile's budget)")
    p.add_argument("--steps", type=int, help="step budget (replaces the profile's budget)")
    p.add_argument(
        "--seconds", type=float, help="budget in optimisation seconds (replaces the profile's)"
    )
    p.add_argument("--eval-every", type=int, help="evaluation cadence in steps")
    p.add_argument("--eval-points", type=int,
                   help="evaluate and log at about this many log-spaced steps")  # fmt: skip
    p.add_argument("--padding-dilution", action="store_true",
                   help="reproduce the official code's squared-error padding dilution")  # fmt: skip
    p.add_argument(
        "--specs",
        type=Path,
        help="JSON or YAML file: a list of mappings of ExperimentSpec fields (a 'seeds' field "
        "such as '0-4' expands to one spec per seed)",
    )
    p.add_argument("--results", type=Path, help="results store folder (default: $ADAMQLR_RESULTS "
                   "or ~/.local/share/adamqlr/results; the book's records are in results/ of "
                   "the checkout)")  # fmt: skip
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--force", action="store_true", help="rerun even if a record exists")
    p.add_argument("--dry-run", action="store_true", help="list the runs and their keys only")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--checkpoint-every", type=float, default=60.0, metavar="SECONDS",
                   help="checkpoint cadence (default: 60)")  # fmt: skip
    p.set_defaults(handler=handle)
    return p


def _names(text: str | None, what: str) -> list[str]:
    if not text:
        raise ValueError(f"--{what} is required (or give --specs FILE)")
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ValueError(f"invalid --{what} {text!r}")
    return names


def _read_specs_file(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text()
    except OSError as err:
        raise ValueError(f"cannot read --specs {path}: {err}") from err
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except ValueError as err:
            raise ValueError(f"--specs {path}: invalid JSON: {err}") from err
    else:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ValueError(f"--specs {path}: invalid YAML: {err}") from err
    if isinstance(data, dict) and "specs" in data:
        data = data["specs"]
    if not isinstance(data, list) or not all(isinstance(d, dict) for d in data):
        raise ValueError(f"--specs {path}: expected a list of mappings (one per spec)")
    return data


def build_specs(args: argparse.Namespace) -> list[Any]:
    """Turn parsed arguments into experiment specs.

    The specs are the cartesian product of tasks, optimisers and seeds, or the list in ``--specs``.

    Raises:
        ValueError: On any invalid input, naming it.
    """
    from adamqlr.experiment.spec import ExperimentSpec, parse_seeds

    if args.specs is not None:
        specs = []
        for i, entry in enumerate(_read_specs_file(args.specs)):
            entry = dict(entry)
            seeds = entry.pop("seeds", None)
            entry.setdefault("device", args.device)
            try:
                if seeds is None:
                    specs.append(ExperimentSpec.from_dict(entry))
                else:
                    specs += [ExperimentSpec.from_dict({**entry, "seed": s})
                              for s in parse_seeds(seeds)]  # fmt: skip
            except (ValueError, TypeError) as err:
                raise ValueError(f"--specs {args.specs}, entry {i}: {err}") from err
        return specs
    hparams = dict(parse_assignment(a) for a in args.assignments)
    return [
        ExperimentSpec(
            task=task,
            optimiser=opt,
            profile=parse_profile(args.profile),
            seed=seed,
            hyperparameters=hparams,
            batch_size=args.batch_size,
            epochs=args.epochs,
            steps=args.steps,
            seconds=args.seconds,
            eval_every=args.eval_every,
            eval_points=args.eval_points,
            padding_dilution=args.padding_dilution,
            device=args.device,
        )
        for task, opt, seed in itertools.product(
            _names(args.task, "task"), _names(args.optimiser, "optimiser"), parse_seeds(args.seeds)
        )
    ]


def handle(args: argparse.Namespace) -> int:
    """Run the ``run`` subcommand; return the exit status (2 for bad input, 1 for a failed run)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        specs = build_specs(args)
        from adamqlr.experiment.loop import resolve_device

        resolve_device(args.device)
        if args.threads is not None:
            if args.threads < 1:
                raise ValueError(f"invalid --threads {args.threads} (expected >= 1)")
            import torch

            torch.set_num_threads(args.threads)
        for spec in specs:
            spec.settings()  # resolve defaults now, so bad input fails before any training
    except ValueError as err:
        print(f"adamqlr run: error: {err}", file=sys.stderr)
        return 2
    from adamqlr.experiment.runner import run
    from adamqlr.results.store import ResultStore

    store = ResultStore(results_folder(args.results))
    if args.dry_run:
        for spec in specs:
            print(f"{spec.key[:16]}  {store.status(spec):<8}  {spec}")
        return 0
    failures = 0
    for i, spec in enumerate(specs, 1):
        stored = not args.force and store.status(spec) == "complete"
        try:
            record = run(
                spec,
                store=store,
                force=args.force,
                progress=False if args.no_progress else None,
                checkpoint_every_s=args.checkpoint_every,
            )
        except Exception as err:  # noqa: BLE001 - report and go on with the other runs
            failures += 1
            print(f"[{i}/{len(specs)}] {spec}: FAILED: {type(err).__name__}: {err}",
                  file=sys.stderr)  # fmt: skip
            continue
        p = record.provenance
        final = record.metrics.iloc[-1]
        test = final.get("test_loss", float("nan"))
        print(
            f"[{i}/{len(specs)}] {spec}: {p['steps']} steps, {p['optimisation_time_s']:.1f} s "
            f"optimisation + {p['eval_time_s']:.1f} s eval, stop={p['stop_reason']}, "
            f"train {final.get('train_loss', float('nan')):.4g}, test {test:.4g}"
            f"{' (stored record)' if stored else ''} -> {record.path}"
        )
    return 1 if failures else 0

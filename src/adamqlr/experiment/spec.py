"""What an experiment is: a frozen, hashable spec, and the settings it resolves to.

An :class:`ExperimentSpec` is what a user writes: a task, an optimiser, a profile, a seed, and
optionally hyperparameters, a batch size and a budget. Anything left out takes the default of the
optimiser entry (:mod:`adamqlr.experiment.optimisers`) or of the task's profile
(:class:`adamqlr.tasks.TaskProfile`). :meth:`ExperimentSpec.settings` resolves those defaults into
:class:`RunSettings`, which is everything the training loop needs and nothing else.

The key of an experiment (:attr:`RunSettings.key`) is the SHA-256 of the canonical JSON of the
*resolved* settings. So two specs that spell the same experiment differently (a batch size given
or taken from the profile, hyperparameters in another order, ``lr=1`` or ``lr=1.0``) share one
key, and a change of a default (a profile's budget, an optimiser's placeholder) changes the key,
so an old record is never mistaken for the new experiment. The device is *where* an experiment
runs, not what it is: it is not part of the key (the record's provenance says which device ran it).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import numbers
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from adamqlr.experiment.optimisers import get_optimiser
from adamqlr.profiles import Profile, parse_profile
from adamqlr.tasks import TASKS, get_task

__all__ = [
    "KEY_VERSION",
    "LATER_FIELDS",
    "ExperimentSpec",
    "RunSettings",
    "canonical_json",
    "parse_seeds",
]

#: Version of the key derivation; bumping it changes every key.
KEY_VERSION = 1

#: Settings added after records were first keyed, with the value that leaves a key unchanged:
#: a setting equal to its value here does not enter the key, so the records of specs that do not
#: use it keep their keys.
LATER_FIELDS: dict[str, Any] = {"eval_points": None}

_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def canonical_json(obj: Any) -> str:
    """Return ``obj`` as canonical JSON: sorted keys, no spaces, ASCII, no NaN or infinity.

    Raises:
        ValueError: If ``obj`` holds NaN or an infinity (JSON has no portable spelling for them).
    """
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, Profile):
        return value.value
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def _freeze(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, Mapping):
        raise ValueError(
            f"invalid hyperparameter value {value!r} (nested mappings are not allowed)"
        )
    return value


def _int(name: str, value: Any, minimum: int, *, optional: bool = True) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"invalid {name}: {value!r} (expected an int >= {minimum})")
    return int(value)


def _positive(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"invalid {name}: {value!r} (expected a positive number)")
    value = float(value)
    if not (0 < value < math.inf):
        raise ValueError(f"invalid {name}: {value!r} (expected a positive, finite number)")
    return value


def parse_seeds(text: str | int) -> tuple[int, ...]:
    """Parse ``"0-4"``, ``"0,2,7"``, ``"3"`` (or combinations: ``"0-2,9"``) into seeds.

    Raises:
        ValueError: On malformed text, negative seeds, an empty or reversed range, or duplicates.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        return (_int("seed", text, 0, optional=False),)  # type: ignore[return-value]
    seeds: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise ValueError(f"invalid seeds {text!r}: {part!r} is not N or N-M with N, M >= 0")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if hi < lo:
            raise ValueError(f"invalid seeds {text!r}: range {part!r} is reversed")
        seeds.extend(range(lo, hi + 1))
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"invalid seeds {text!r}: a seed is repeated")
    return tuple(seeds)


@dataclass(frozen=True)
class RunSettings:
    """The resolved settings of one run: every default filled in.

    Attributes:
        task: Task name.
        optimiser: Optimiser registry name.
        profile: Profile name.
        seed: Seed (model initialisation, batch order, random layers).
        hyperparameters: All hyperparameters of the optimiser, sorted ``(name, value)`` pairs.
        batch_size: Mini-batch size.
        epochs: Epoch budget or ``None``.
        steps: Step budget or ``None``.
        seconds: Budget in seconds of optimisation time or ``None``.
        eval_every: Evaluate validation and test every this many steps (and at the end).
        train_size: Use only the first this many training examples (``None``: all).
        val_size: Use only the first this many validation examples (``None``: all).
        test_size: Use only the first this many test examples (``None``: all).
        model: The task's model configuration name.
        padding_dilution: Reproduce the official code's padding dilution of the squared-error
            Fisher term (the authors' code, `curvature_matrix`).
        eval_points: Evaluate at about this many log-spaced steps (plus the first and the last)
            instead of every ``eval_every`` steps, and log a row only at those steps (``None``:
            every step is logged, evaluation every ``eval_every`` steps).
    """

    task: str
    optimiser: str
    profile: Profile
    seed: int
    hyperparameters: tuple[tuple[str, Any], ...]
    batch_size: int
    epochs: float | None
    steps: int | None
    seconds: float | None
    eval_every: int
    train_size: int | None
    val_size: int | None
    test_size: int | None
    model: str
    padding_dilution: bool
    eval_points: int | None = None

    @property
    def hparams(self) -> dict[str, Any]:
        """The hyperparameters as a dict."""
        return dict(self.hyperparameters)

    def as_dict(self) -> dict[str, Any]:
        """Return the settings as JSON-ready data (tuples as lists, hyperparameters as a dict)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["hyperparameters"] = self.hparams
        return _jsonable(d)

    @functools.cached_property
    def key(self) -> str:
        """SHA-256 (hex) of the canonical JSON of the settings: the experiment's identity.

        Computed once per instance (the settings are frozen and the key depends on nothing else).
        """
        data = {
            k: v
            for k, v in self.as_dict().items()
            if not (k in LATER_FIELDS and v == LATER_FIELDS[k])
        }
        payload = canonical_json({"key_version": KEY_VERSION, **data})
        return hashlib.sha256(payload.encode()).hexdigest()


@dataclass(frozen=True)
class ExperimentSpec:
    """One experiment: a task, an optimiser and its hyperparameters, a budget, a seed, a profile.

    Frozen and hashable. Hyperparameters may be given as a mapping; they are stored as sorted
    ``(name, value)`` pairs with lists turned into tuples. Anything left ``None`` is resolved by
    :meth:`settings` from the optimiser entry and the task's profile.

    The budget: if any of ``epochs``, ``steps``, ``seconds`` is given, the run stops at the first
    of the given limits and the profile's budget is ignored; if none is given, the profile's
    (epochs, steps, time limit) applies.

    Attributes:
        task: A name in :data:`adamqlr.tasks.TASKS`.
        optimiser: A name in the optimiser registry
            (:func:`~adamqlr.experiment.optimisers.get_optimiser`).
        profile: A :class:`~adamqlr.profiles.Profile` (or its name, parsed at construction).
        seed: Non-negative int.
        hyperparameters: Overrides of the optimiser's defaults.
        batch_size: Mini-batch size (``None``: the optimiser's default, else the profile's).
        epochs: Epoch budget (may be fractional).
        steps: Step budget.
        seconds: Budget in seconds of optimisation time (evaluation excluded).
        eval_every: Evaluation cadence in steps (``None``: the profile's).
        eval_points: Evaluate at about this many log-spaced steps instead (see
            :class:`RunSettings`); ``None``: every ``eval_every`` steps.
        padding_dilution: Reproduce the official code's padding dilution (squared-error tasks).
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; not part of
            the experiment's identity (excluded from equality, hash and key).

    Raises:
        ValueError: At construction, naming the bad field and value (unknown task, optimiser,
            profile or hyperparameter; non-positive budget; ...).
    """

    task: str
    optimiser: str
    profile: Profile = Profile.QUICK
    seed: int = 0
    hyperparameters: Any = ()
    batch_size: int | None = None
    epochs: float | None = None
    steps: int | None = None
    seconds: float | None = None
    eval_every: int | None = None
    padding_dilution: bool = False
    device: str = field(default="auto", compare=False)
    eval_points: int | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if not isinstance(self.task, str) or self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; expected one of {sorted(TASKS)}")
        entry = get_optimiser(self.optimiser)
        set_(self, "profile", parse_profile(self.profile))
        set_(self, "seed", _int("seed", self.seed, 0, optional=False))
        hp = self.hyperparameters
        if hp is None:
            hp = {}
        if not isinstance(hp, Mapping):
            try:
                hp = dict(hp)
            except (TypeError, ValueError) as err:
                raise ValueError(
                    f"invalid hyperparameters {self.hyperparameters!r} (expected a mapping or "
                    "(name, value) pairs)"
                ) from err
        for k in hp:
            if not isinstance(k, str):
                raise ValueError(f"invalid hyperparameter name {k!r} (expected a string)")
        entry.hyperparameters(hp)  # validates names and values
        set_(self, "hyperparameters", tuple(sorted((k, _freeze(v)) for k, v in hp.items())))
        set_(self, "batch_size", _int("batch_size", self.batch_size, 1))
        set_(self, "epochs", _positive("epochs", self.epochs))
        set_(self, "steps", _int("steps", self.steps, 1))
        set_(self, "seconds", _positive("seconds", self.seconds))
        set_(self, "eval_every", _int("eval_every", self.eval_every, 1))
        set_(self, "eval_points", _int("eval_points", self.eval_points, 2))
        if not isinstance(self.padding_dilution, bool):
            raise ValueError(
                f"invalid padding_dilution: {self.padding_dilution!r} (expected a bool)"
            )
        if not isinstance(self.device, str) or not _DEVICE.match(self.device):
            raise ValueError(
                f"invalid device {self.device!r}; expected 'auto', 'cpu', 'cuda' or 'cuda:N'"
            )

    # ------------------------------------------------------------------------- resolution
    @property
    def hparams(self) -> dict[str, Any]:
        """The hyperparameter overrides as a dict."""
        return dict(self.hyperparameters)

    def settings(self) -> RunSettings:
        """Resolve every default (optimiser entry, task profile) into :class:`RunSettings`.

        Raises:
            ValueError: If the resolved budget has no limit at all, or ``padding_dilution`` is
                asked for on a task whose loss is not the squared error.
        """
        entry = get_optimiser(self.optimiser)
        task = get_task(self.task)
        prof = task.profile(self.profile)
        batch = self.batch_size or entry.default_batch_size(self.task) or prof.batch_size
        if self.epochs is None and self.steps is None and self.seconds is None:
            epochs, steps, seconds = prof.epochs, prof.steps, prof.time_limit_s
        else:
            epochs, steps, seconds = self.epochs, self.steps, self.seconds
        if epochs is None and steps is None and seconds is None:
            raise ValueError(
                f"spec {self.task}/{self.optimiser}/{self.profile} has no budget: give epochs, "
                "steps or seconds"
            )
        if self.padding_dilution and task.loss not in ("squared_error", "mse"):
            raise ValueError(
                f"invalid padding_dilution=True for task {self.task!r}: its loss is {task.loss!r}, "
                "and the dilution only exists for the squared error"
            )
        hparams = entry.hyperparameters(self.hparams)
        return RunSettings(
            task=self.task,
            optimiser=self.optimiser,
            profile=self.profile,
            seed=self.seed,
            hyperparameters=tuple(sorted((k, _freeze(v)) for k, v in hparams.items())),
            batch_size=int(batch),
            epochs=None if epochs is None else float(epochs),
            steps=None if steps is None else int(steps),
            seconds=None if seconds is None else float(seconds),
            eval_every=int(self.eval_every or prof.eval_every),
            train_size=prof.train_size,
            val_size=getattr(prof, "val_size", None),
            test_size=getattr(prof, "test_size", None),
            model=prof.model,
            padding_dilution=self.padding_dilution,
            eval_points=self.eval_points,
        )

    @functools.cached_property
    def key(self) -> str:
        """The experiment's key: :attr:`RunSettings.key` of the resolved settings.

        Computed once per instance: the registries it resolves against are complete by the time
        a key is asked for.
        """
        return self.settings().key

    # ------------------------------------------------------------------------- conversion
    def as_dict(self) -> dict[str, Any]:
        """Return the spec as JSON-ready data (``device`` included; ``None`` fields kept)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["hyperparameters"] = self.hparams
        for k, default in LATER_FIELDS.items():
            if k in d and d[k] == default:
                del d[k]
        return _jsonable(d)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExperimentSpec:
        """Build a spec from a mapping (e.g. one entry of a YAML/JSON list of specs).

        Raises:
            ValueError: On unknown fields or invalid values.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"invalid spec {data!r} (expected a mapping of fields)")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown spec field(s) {unknown}; expected some of {sorted(names)}")
        missing = [n for n in ("task", "optimiser") if n not in data]
        if missing:
            raise ValueError(f"spec {dict(data)!r} lacks required field(s) {missing}")
        return cls(**dict(data))

    def replace(self, **changes: Any) -> ExperimentSpec:
        """Return a copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def command(self) -> str:
        """Return the ``adamqlr run`` command line that runs this spec."""
        parts = [
            "adamqlr", "run", "--task", self.task, "--optimiser", self.optimiser,
            "--profile", self.profile, "--seeds", str(self.seed),
        ]  # fmt: skip
        for k, v in self.hyperparameters:
            parts += ["--set", f"{k}={json.dumps(_jsonable(v))}"]
        for flag, value in (
            ("--batch-size", self.batch_size),
            ("--epochs", self.epochs),
            ("--steps", self.steps),
            ("--seconds", self.seconds),
            ("--eval-every", self.eval_every),
            ("--eval-points", self.eval_points),
        ):
            if value is not None:
                parts += [flag, repr(value) if isinstance(value, float) else str(value)]
        if self.padding_dilution:
            parts.append("--padding-dilution")
        return shlex.join(parts)

    def __str__(self) -> str:
        extra = "".join(f" {k}={v}" for k, v in self.hyperparameters)
        return f"{self.task}/{self.optimiser}/{self.profile}/seed{self.seed}{extra}"

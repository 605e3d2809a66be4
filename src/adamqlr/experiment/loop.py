"""The wall-clock-honest training loop.

:func:`train` runs one experiment's optimisation and returns its metrics. What it measures:

* every step: the mini-batch loss *before* the update (``train_loss``, as in every figure of the
  paper), the mini-batch accuracy for classification tasks (from the same forward pass, handed
  back by the stepper's ``last_outputs()``, so it costs no extra pass and puts no hook on the
  model that would keep an optimiser off its layer-wise fast path), and the optimiser's
  statistics (``lr``, ``damping``, ``rho``, ...);
* every ``eval_every`` steps (or, when the settings give ``eval_points``, at about that many
  log-spaced steps: :func:`eval_schedule`), before the first step and after the last: the loss
  (and accuracy) on the *full* validation and test splits, in eval mode, in chunks that bound
  memory. With ``eval_points`` a row is logged only at those steps (and the last), so a record's
  size does not grow with the number of steps;
* the clocks: ``time`` is the optimisation time so far, the sum over steps of fetching the batch
  and the optimiser step (CUDA is synchronised before each clock reading); evaluation and
  checkpointing are timed separately (``eval_time``; the provenance has both) and never count as
  optimisation. ``wall`` is the elapsed time of the whole loop.

Budgets are in steps, epochs (fractions allowed) or seconds of optimisation time; the run stops at
the first limit reached, or when the training, validation or test loss is not finite, and says
which in :attr:`TrainResult.stop_reason`.

Runs are repeatable on CPU from the seed: the model comes from ``task.make_model(seed, ...)``, the
batch order from a ``torch.Generator`` seeded from the seed, random layers from the global torch
generator, also seeded. Checkpoints (model, optimiser, generator states, counters, clocks, metrics)
are written atomically at epoch boundaries and every ``checkpoint_every_s`` seconds and are loaded
with ``torch.load(weights_only=True)`` only; a run resumed from a checkpoint continues exactly where
it stopped, so on CPU its parameters and metrics equal those of an uninterrupted run bitwise.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from adamqlr import version
from adamqlr.experiment.optimisers import Stepper, get_optimiser
from adamqlr.experiment.spec import RunSettings
from adamqlr.losses import CrossEntropyLoss, Loss, SquaredErrorLoss, get_loss
from adamqlr.results.atomic import atomic_write
from adamqlr.tasks import Split, Task, TaskData, get_task

__all__ = [
    "CHECKPOINT_FORMAT",
    "MetricLog",
    "TrainResult",
    "derived_seeds",
    "eval_schedule",
    "evaluate",
    "resolve_device",
    "train",
]

logger = logging.getLogger(__name__)

#: Version of the checkpoint layout; a checkpoint of another format is not resumed from.
CHECKPOINT_FORMAT = 1

#: Columns the loop writes itself; optimiser statistics with these names get an ``opt_`` prefix.
RESERVED = ("step", "epoch", "time", "eval_time", "wall", "train_loss", "train_accuracy")

#: Largest number of output elements one evaluation chunk may produce (bounds eval memory).
EVAL_OUTPUT_ELEMENTS = 1 << 24


class MetricLog:
    """A growing table of float columns (missing entries are NaN), one row per logged event."""

    def __init__(self, columns: dict[str, list[float]] | None = None) -> None:
        self.columns: dict[str, list[float]] = {k: list(v) for k, v in (columns or {}).items()}
        lengths = {len(v) for v in self.columns.values()}
        if len(lengths) > 1:
            raise ValueError(f"metric columns of unequal lengths {sorted(lengths)}")
        self.rows = lengths.pop() if lengths else 0

    def append(self, row: dict[str, float]) -> None:
        """Add a row; new columns are back-filled with NaN, absent ones get NaN."""
        for key in row:
            if key not in self.columns:
                self.columns[key] = [math.nan] * self.rows
        for key, col in self.columns.items():
            col.append(float(row.get(key, math.nan)))
        self.rows += 1

    def update_last(self, values: dict[str, float]) -> None:
        """Set entries of the last row (new columns are back-filled with NaN)."""
        for key, value in values.items():
            if key not in self.columns:
                self.columns[key] = [math.nan] * self.rows
            self.columns[key][-1] = float(value)

    def to_tensors(self) -> dict[str, Tensor]:
        """Columns as float64 tensors (for checkpoints that load with ``weights_only=True``)."""
        return {k: torch.tensor(v, dtype=torch.float64) for k, v in self.columns.items()}

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor]) -> MetricLog:
        """Inverse of :meth:`to_tensors`."""
        return cls({k: v.tolist() for k, v in tensors.items()})

    def frame(self) -> Any:
        """Return the table as a ``pandas.DataFrame`` (``step`` as int64, the rest float64)."""
        import pandas as pd

        df = pd.DataFrame({k: np.asarray(v, dtype=np.float64) for k, v in self.columns.items()})
        if "step" in df:
            df["step"] = df["step"].astype("int64")
        return df


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        metrics: The metric table (:class:`MetricLog`; :meth:`MetricLog.frame` for pandas).
        stop_reason: ``"steps"``, ``"epochs"``, ``"seconds"``, ``"nonfinite_train_loss"``,
            ``"nonfinite_val_loss"``, ``"nonfinite_test_loss"`` or ``"callback:<reason>"``.
        steps: Optimiser steps taken.
        epochs: Epochs completed (fractional).
        optimisation_time_s: Time spent fetching batches and stepping.
        eval_time_s: Time spent evaluating.
        checkpoint_time_s: Time spent writing checkpoints.
        wall_time_s: Elapsed time of the loop (across resumptions).
        resumed: How many times the run was resumed from a checkpoint.
        started_at: ISO-8601 UTC time at which the run (first) started.
        model: The trained model.
        device: The device the run used.
    """

    metrics: MetricLog
    stop_reason: str
    steps: int
    epochs: float
    optimisation_time_s: float
    eval_time_s: float
    checkpoint_time_s: float
    wall_time_s: float
    resumed: int
    started_at: str
    model: nn.Module = field(repr=False)
    device: str = "cpu"


def resolve_device(device: str | torch.device | None) -> torch.device:
    """Turn ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda[:N]"`` into a device.

    Raises:
        ValueError: If CUDA is asked for and not available, or the name is unknown.
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"invalid device {device!r}") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but CUDA is not available here")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"invalid device {device!r} (expected cpu or cuda)")
    return dev


def derived_seeds(seed: int) -> tuple[int, int]:
    """Return ``(batch_seed, torch_seed)``: separate streams for batch order and random layers."""
    a, b = np.random.SeedSequence(seed).generate_state(2, dtype=np.uint64)
    return int(a) >> 1, int(b) >> 1


def _count(loss: Loss, targets: Tensor) -> Tensor:
    if isinstance(loss, CrossEntropyLoss):
        return (targets != loss.ignore_index).sum()
    return torch.tensor(targets.shape[0], device=targets.device)


def _correct(loss: Loss, outputs: Tensor, targets: Tensor) -> Tensor:
    hits = outputs.argmax(-1) == targets
    if isinstance(loss, CrossEntropyLoss):
        hits = hits & (targets != loss.ignore_index)
    return hits.sum()


def _to(x: Any, device: torch.device) -> Any:
    return x.to(device, non_blocking=True) if isinstance(x, Tensor) else x


def evaluate(
    model: nn.Module,
    split: Split,
    loss: Loss,
    *,
    device: torch.device,
    chunk: int,
    accuracy: bool,
) -> dict[str, float]:
    """Return the mean loss (and accuracy) of ``model`` on the whole ``split``, in eval mode.

    The split is processed in chunks of ``chunk`` examples; the mean is over all examples (or
    counted token positions) of the split, not a mean of chunk means. The model's training mode is
    restored afterwards. An empty split gives ``{}``.
    """
    n = len(split)
    if n == 0:
        return {}
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.float64, device=device)
    try:
        with torch.no_grad():
            for start in range(0, n, chunk):
                x = _to(split.inputs[start : start + chunk], device)
                y = _to(split.targets[start : start + chunk], device)
                out = model(x)
                c = _count(loss, y)
                # a chunk with no counted position has a NaN mean: it contributes nothing
                total += torch.where(c > 0, loss.value(out, y).double() * c, 0.0)
                count += c
                if accuracy:
                    correct += _correct(loss, out, y)
    finally:
        model.train(was_training)
    out = {"loss": float(total / count.clamp_min(1))}
    if accuracy:
        out["accuracy"] = float(correct / count.clamp_min(1))
    return out


def _small_params(model: nn.Module, limit: int) -> list[tuple[str, Tensor]]:
    params: list[tuple[str, Tensor]] = list(model.named_parameters())
    if sum(p.numel() for _, p in params) > limit:
        return []
    return params


def _param_row(params: list[tuple[str, Tensor]]) -> dict[str, float]:
    row: dict[str, float] = {}
    for name, p in params:
        flat = p.detach().reshape(-1).double().cpu().tolist()
        if p.dim() == 0:
            row[f"param.{name}"] = flat[0]
        else:
            for i, v in enumerate(flat):
                row[f"param.{name}.{i}"] = v
    return row


def _eval_chunk(model: nn.Module, split: Split, batch_size: int, device: torch.device) -> int:
    """Choose an evaluation chunk size that keeps the outputs of one chunk small."""
    n = len(split)
    if n == 0:
        return 1
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            probe = model(_to(split.inputs[:1], device))
    finally:
        model.train(was_training)
    per_example = max(1, probe.numel())
    return int(max(1, min(n, max(batch_size, 1024), EVAL_OUTPUT_ELEMENTS // per_example)))


def _first(split: Split, n: int | None) -> Split:
    """Return the first ``n`` examples of ``split`` (all when ``n`` is ``None`` or not smaller)."""
    if n is None or len(split) <= n:
        return split
    return Split(split.inputs[:n], split.targets[:n])


def _iso_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _make_loss(task: Task, settings: RunSettings) -> Loss:
    if settings.padding_dilution:
        return SquaredErrorLoss(curvature_count=settings.batch_size)
    return get_loss(task.loss)


class _Clock:
    """Reads ``perf_counter`` after synchronising CUDA (so GPU work is on the right side)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.device = device

    def __call__(self) -> float:
        if self.cuda:
            torch.cuda.synchronize(self.device)
        return time.perf_counter()


def planned_steps(settings: RunSettings, train_size: int) -> int | None:
    """Return the number of steps the budget allows, or ``None`` when only time limits it."""
    per_epoch = math.ceil(train_size / settings.batch_size)
    limits = []
    if settings.steps is not None:
        limits.append(settings.steps)
    if settings.epochs is not None:
        limits.append(math.ceil(settings.epochs * per_epoch - 1e-9))
    return min(limits) if limits else None


def eval_schedule(points: int, total: int | None) -> Callable[[int], bool]:
    """Return ``is_eval_step(step)`` for about ``points`` log-spaced steps.

    With a known ``total`` the steps are ``round(total ** (i / (points - 1)))`` for
    ``i = 0 .. points - 1`` (distinct ones only, so early steps are all evaluated and later ones
    spread out geometrically up to ``total``). With ``total=None`` (a time budget), the same
    spacing continues without end at ``(points - 1) / 5`` steps per decade (that is ``points``
    steps up to 10^5). The loop also evaluates before the first step and after the last.

    Raises:
        ValueError: If ``points < 2`` or ``total < 1``.
    """
    if points < 2:
        raise ValueError(f"invalid eval_points: {points!r} (expected an int >= 2)")
    if total is not None:
        if total < 1:
            raise ValueError(f"invalid total steps: {total!r} (expected >= 1)")
        marks = {int(round(total ** (i / (points - 1)))) for i in range(points)}
        return marks.__contains__
    per_decade = (points - 1) / 5

    def is_eval(step: int) -> bool:
        if step < 1:
            return False
        k = math.floor(math.log10(step) * per_decade)
        # the marks round(10 ** (j / per_decade)) around step
        return any(int(round(10 ** (j / per_decade))) == step for j in (k - 1, k, k + 1, k + 2))

    return is_eval


def train(
    settings: RunSettings,
    *,
    task: Task | None = None,
    data: TaskData | None = None,
    device: str | torch.device | None = "cpu",
    checkpoint: str | Path | None = None,
    checkpoint_every_s: float = 60.0,
    checkpoint_epoch_min_s: float = 5.0,
    progress: bool | None = None,
    callback: Callable[[dict[str, float]], str | None] | None = None,
    eval_chunk: int | None = None,
    log_params_max: int = 16,
) -> TrainResult:
    """Train one experiment and return its metrics.

    Args:
        settings: The resolved settings (:meth:`adamqlr.experiment.ExperimentSpec.settings`).
        task: The task object (default: ``get_task(settings.task)``).
        data: Its data (default: ``task.load_data(settings.profile)``); each split is cut to the
            profile's ``train_size``/``val_size``/``test_size`` when it is longer (tasks usually
            cut them already, before standardising).
        device: Where to train (``"auto"``, ``"cpu"``, ``"cuda"``). Data stay on the CPU; each batch
            is moved to the device as part of fetching it (timed as optimisation).
        checkpoint: File for checkpoints. When it exists and belongs to these settings, the run
            resumes from it; it is left in place (the caller removes it once the record is saved).
            ``None``: no checkpoints.
        checkpoint_every_s: Write a checkpoint after a step once this many seconds passed since
            the last one.
        checkpoint_epoch_min_s: At an epoch boundary, write a checkpoint if at least this many
            seconds passed since the last one (0: at every epoch boundary).
        progress: Show a tqdm bar (``None``: only on a terminal, and only after two seconds).
        callback: Called after every step with that step's row (training statistics, plus
            ``val_*``/``test_*`` on evaluation steps); returning a non-empty string stops the run
            with ``stop_reason = "callback:<string>"`` (e.g. a tuner's pruning decision).
        eval_chunk: Examples per evaluation chunk (default: chosen to bound output memory).
        log_params_max: Log every parameter value per step (``param.<name>[.<i>]`` columns) when
            the model has at most this many scalars (e.g. Rosenbrock's position).

    Returns:
        The :class:`TrainResult`.

    Raises:
        ValueError: For an unusable device or settings.
    """
    dev = resolve_device(device)
    task = task if task is not None else get_task(settings.task)
    data = data if data is not None else task.load_data(settings.profile)
    train_split = _first(data.train, settings.train_size)
    data = TaskData(
        train_split,
        _first(data.val, settings.val_size),
        _first(data.test, settings.test_size),
        data.meta,
    )
    if len(train_split) == 0:
        raise ValueError(f"task {settings.task!r} has an empty training split")
    loss = _make_loss(task, settings)
    batch_seed, torch_seed = derived_seeds(settings.seed)

    model = task.make_model(settings.seed, settings.profile).to(dev)
    model.train()
    stepper: Stepper = get_optimiser(settings.optimiser).build(model, loss, settings.hparams)
    generator = torch.Generator()
    generator.manual_seed(batch_seed)
    torch.manual_seed(torch_seed)

    last_outputs = getattr(stepper, "last_outputs", None) if task.classification else None
    logged_params = _small_params(model, log_params_max)
    chunks = {
        name: eval_chunk or _eval_chunk(model, split, settings.batch_size, dev)
        for name, split in (("val", data.val), ("test", data.test))
    }
    clock = _Clock(dev)
    steps_per_epoch = math.ceil(len(train_split) / settings.batch_size)
    eval_points = getattr(settings, "eval_points", None)
    is_eval_step: Callable[[int], bool]
    if eval_points is None:
        every = settings.eval_every

        def is_eval_step(n: int) -> bool:
            return n % every == 0

    else:
        is_eval_step = eval_schedule(eval_points, planned_steps(settings, len(train_split)))
    unlogged: dict[str, float] | None = None  # the last step's row, when it was not logged

    # ------------------------------------------------------------------ state (maybe resumed)
    step = epoch = batch_in_epoch = resumed = 0
    last_eval_step = -1
    opt_time = eval_time = ckpt_time = wall_before = 0.0
    epoch_state = generator.get_state()
    log = MetricLog()
    started_at = _iso_now()
    ckpt_path = Path(checkpoint) if checkpoint is not None else None
    restored = _load_checkpoint(ckpt_path, settings, dev) if ckpt_path else None
    if restored is not None:
        model.load_state_dict(restored["model"])
        stepper.load_state_dict(restored["optimiser"])
        c, k = restored["counters"], restored["clocks"]
        step, epoch, batch_in_epoch = int(c["step"]), int(c["epoch"]), int(c["batch_in_epoch"])
        resumed, last_eval_step = int(c["resumed"]) + 1, int(c["last_eval_step"])
        opt_time, eval_time = float(k["optimisation"]), float(k["eval"])
        ckpt_time, wall_before = float(k["checkpoint"]), float(k["wall"])
        epoch_state = restored["epoch_generator"]
        log = MetricLog.from_tensors(restored["metrics"])
        started_at = str(restored["started_at"])
        logger.info("resuming %s from step %d (epoch %d)", settings.task, step, epoch)

    t_start = time.perf_counter()
    last_ckpt = t_start

    def wall() -> float:
        return wall_before + time.perf_counter() - t_start

    def run_eval() -> tuple[dict[str, float], float]:
        t0 = clock()
        values: dict[str, float] = {}
        for name, split in (("val", data.val), ("test", data.test)):
            res = evaluate(
                model, split, loss, device=dev, chunk=chunks[name], accuracy=task.classification
            )
            values.update({f"{name}_{k}": v for k, v in res.items()})
        return values, clock() - t0

    def save_checkpoint() -> None:
        nonlocal ckpt_time, last_ckpt
        if ckpt_path is None:
            return
        t0 = time.perf_counter()
        state = {
            "format": CHECKPOINT_FORMAT,
            "key": settings.key,
            "algorithm_version": version.ALGORITHM_VERSION,
            "model": model.state_dict(),
            "optimiser": stepper.state_dict(),
            "generator": generator.get_state(),
            "epoch_generator": epoch_state,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if dev.type == "cuda" else [],
            "counters": {
                "step": step,
                "epoch": epoch,
                "batch_in_epoch": batch_in_epoch,
                "resumed": resumed,
                "last_eval_step": last_eval_step,
            },
            "clocks": {
                "optimisation": opt_time,
                "eval": eval_time,
                "checkpoint": ckpt_time,
                "wall": wall(),
            },
            "metrics": log.to_tensors(),
            "started_at": started_at,
        }
        atomic_write(ckpt_path, lambda f: torch.save(state, f))
        now = time.perf_counter()
        ckpt_time += now - t0
        last_ckpt = now

    stop_reason = ""
    if restored is None:
        values, dt = run_eval()
        eval_time += dt
        log.append(
            {"step": 0, "epoch": 0.0, "time": 0.0, "eval_time": eval_time, "wall": wall()}
            | values
            | _param_row(logged_params)
        )
        last_eval_step = 0
        for name in ("val", "test"):
            v = values.get(f"{name}_loss")
            if v is not None and not math.isfinite(v):
                stop_reason = stop_reason or f"nonfinite_{name}_loss"
    else:
        generator.set_state(restored["generator"])
        torch.set_rng_state(restored["torch_rng"])
        if dev.type == "cuda" and restored["cuda_rng"]:
            torch.cuda.set_rng_state_all(list(restored["cuda_rng"]))

    total_steps = settings.steps if settings.steps is not None else math.inf
    bar = _progress(progress, settings, total_steps, steps_per_epoch, step)
    try:
        while not stop_reason:
            # --------------------------------------------------------------- one epoch
            if batch_in_epoch == 0:
                epoch_state = generator.get_state()
            else:
                generator.set_state(epoch_state)
            batches: Iterator[tuple[Any, Tensor]] = iter(
                task.batches(train_split, settings.batch_size, generator)
            )
            if batch_in_epoch:
                saved = restored["generator"] if restored is not None else None
                for _ in range(batch_in_epoch):
                    next(batches)
                if saved is not None and not torch.equal(generator.get_state(), saved):
                    warnings.warn(
                        f"task {task.name!r}: replaying {batch_in_epoch} batches did not restore "
                        "the batch generator; the resumed run will differ from an uninterrupted "
                        "one",
                        RuntimeWarning,
                        stacklevel=2,
                    )
            while True:
                if step >= total_steps:
                    stop_reason = "steps"
                elif (
                    settings.epochs is not None
                    and epoch + batch_in_epoch / steps_per_epoch >= settings.epochs - 1e-12
                ):
                    stop_reason = "epochs"
                elif settings.seconds is not None and opt_time >= settings.seconds:
                    stop_reason = "seconds"
                if stop_reason:
                    break
                t0 = clock()
                try:
                    inputs, targets = next(batches)
                except StopIteration:
                    break
                inputs, targets = _to(inputs, dev), _to(targets, dev)
                stats = stepper.step(inputs, targets)
                t1 = clock()
                opt_time += t1 - t0
                step += 1
                batch_in_epoch += 1
                row = {
                    "step": step,
                    "epoch": epoch + batch_in_epoch / steps_per_epoch,
                    "time": opt_time,
                    "train_loss": stats["loss"],
                }
                for key, value in stats.items():
                    if key != "loss":
                        row[f"opt_{key}" if key in RESERVED else key] = value
                outputs = last_outputs() if last_outputs is not None else None
                if isinstance(outputs, Tensor):
                    with torch.no_grad():
                        hits = _correct(loss, outputs, targets)
                        row["train_accuracy"] = float(hits / _count(loss, targets).clamp_min(1))
                row |= _param_row(logged_params)
                if not math.isfinite(stats["loss"]):
                    stop_reason = "nonfinite_train_loss"
                evaluating = is_eval_step(step)
                if evaluating and not stop_reason:
                    values, dt = run_eval()
                    eval_time += dt
                    row |= values
                    last_eval_step = step
                    for name in ("val", "test"):
                        v = values.get(f"{name}_loss")
                        if v is not None and not math.isfinite(v):
                            stop_reason = stop_reason or f"nonfinite_{name}_loss"
                row |= {"eval_time": eval_time, "wall": wall()}
                if eval_points is None or evaluating or stop_reason:
                    log.append(row)
                    unlogged = None
                else:
                    unlogged = row
                if callback is not None and not stop_reason:
                    verdict = callback(dict(row))
                    if verdict:
                        stop_reason = f"callback:{verdict}"
                if bar is not None:
                    bar.update(1)
                    if step % 10 == 0:
                        bar.set_postfix(loss=f"{stats['loss']:.4g}", refresh=False)
                if stop_reason:
                    break
                if time.perf_counter() - last_ckpt >= checkpoint_every_s:
                    save_checkpoint()
            if stop_reason:
                break
            epoch += 1
            batch_in_epoch = 0
            if time.perf_counter() - last_ckpt >= checkpoint_epoch_min_s:
                epoch_state = generator.get_state()
                save_checkpoint()
    finally:
        if bar is not None:
            bar.close()

    if unlogged is not None:  # the last step was not an evaluation step: log it now
        log.append(unlogged)
    elif eval_points is not None and step > 0 and last_eval_step != step:
        # resumed with nothing left to run, and the last row was not logged before the checkpoint
        log.append({"step": step, "epoch": epoch + batch_in_epoch / steps_per_epoch,
                    "time": opt_time, "eval_time": eval_time, "wall": wall()})  # fmt: skip
    if last_eval_step != step and not stop_reason.startswith(("nonfinite_val", "nonfinite_test")):
        values, dt = run_eval()
        eval_time += dt
        log.update_last(values | {"eval_time": eval_time, "wall": wall()})
    return TrainResult(
        metrics=log,
        stop_reason=stop_reason,
        steps=step,
        epochs=epoch + batch_in_epoch / steps_per_epoch,
        optimisation_time_s=opt_time,
        eval_time_s=eval_time,
        checkpoint_time_s=ckpt_time,
        wall_time_s=wall(),
        resumed=resumed,
        started_at=started_at,
        model=model,
        device=str(dev),
    )


def _progress(
    progress: bool | None,
    settings: RunSettings,
    total_steps: float,
    steps_per_epoch: int,
    initial: int,
) -> Any:
    if progress is False:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is an [experiments] dependency
        return None
    total = total_steps
    if settings.epochs is not None:
        total = min(total, math.ceil(settings.epochs * steps_per_epoch))
    return tqdm(
        total=None if math.isinf(total) else int(total),
        initial=initial,
        desc=f"{settings.task} {settings.optimiser} s{settings.seed}",
        unit="step",
        disable=None if progress is None else False,
        delay=0.0 if progress else 2.0,
        leave=False,
        dynamic_ncols=True,
    )


def _load_checkpoint(path: Path, settings: RunSettings, device: torch.device) -> dict | None:
    """Load a checkpoint (weights only, never anything else) if it belongs to ``settings``."""
    if not path.exists():
        return None
    state = torch.load(path, map_location=device, weights_only=True)
    reasons = []
    if state.get("format") != CHECKPOINT_FORMAT:
        reasons.append(f"format {state.get('format')!r} != {CHECKPOINT_FORMAT}")
    if state.get("key") != settings.key:
        reasons.append("it belongs to other settings")
    if state.get("algorithm_version") != version.ALGORITHM_VERSION:
        reasons.append(
            f"algorithm version {state.get('algorithm_version')!r} != {version.ALGORITHM_VERSION}"
        )
    if reasons:
        warnings.warn(
            f"ignoring checkpoint {path}: {'; '.join(reasons)}; starting afresh",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    # Generator states must be CPU byte tensors whatever map_location did.
    for key in ("generator", "epoch_generator", "torch_rng"):
        state[key] = state[key].cpu()
    state["cuda_rng"] = [s.cpu() for s in state["cuda_rng"]]
    return state

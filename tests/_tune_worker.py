"""A tuning worker process for the tests: a synthetic objective that logs every call.

Usage: python _tune_worker.py CONFIG_JSON STORAGE CALL_LOG SUMMARY_JSON [--hang-on N --marker PATH]
[--max-trials N] [--sleep S]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from adamqlr.tune import Outcome, TuneConfig, run_worker


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("config")
    p.add_argument("storage")
    p.add_argument("call_log")
    p.add_argument("summary")
    p.add_argument("--hang-on", type=int, default=None)
    p.add_argument("--marker", default=None)
    p.add_argument("--max-trials", type=int, default=None)
    p.add_argument("--sleep", type=float, default=0.02)
    args = p.parse_args()
    config = TuneConfig(**json.loads(args.config))

    def objective(request, report):
        with open(args.call_log, "a") as f:  # one line per call, flushed at once
            f.write(json.dumps({"number": request.number, "role": request.role,
                                "seed": request.seed, "retry_of": request.retry_of,
                                "hparams": request.hyperparameters}) + "\n")  # fmt: skip
        if request.number == args.hang_on:
            Path(args.marker).write_text("started")
            time.sleep(120)
        time.sleep(args.sleep)
        lr = request.hyperparameters.get("lr", 1e-3)
        return Outcome((math.log10(lr) + 3.0) ** 2, attrs={"worker": "test"})

    summary = run_worker(config, objective, args.storage, max_trials=args.max_trials, poll_s=0.1)
    Path(args.summary).write_text(json.dumps({"status": summary.status, "trials": summary.trials,
                                              "reaped": summary.reaped}))  # fmt: skip


if __name__ == "__main__":
    main()

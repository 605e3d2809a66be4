"""``adamqlr run``: help, bad input, spec files, and a real run into a temporary store."""

from __future__ import annotations

import json

import pytest
from tinytask import registered

from adamqlr.cli import main
from adamqlr.experiment.cli import parse_assignment
from adamqlr.experiment.optimisers import optimiser_names
from adamqlr.experiment.spec import ExperimentSpec
from adamqlr.results.store import ResultStore


@pytest.fixture(autouse=True)
def tiny_tasks(monkeypatch):
    yield from registered(monkeypatch)


def cli(capsys, *args):
    try:
        code = main(["run", *args])
    except SystemExit as exc:  # argparse's own exits (--help, malformed options)
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_help_lists_tasks_optimisers_and_profiles(capsys):
    code, out, _ = cli(capsys, "--help")
    assert code == 0
    for name in ["uci-energy", "fashion-mnist", "cifar-10", "penn-treebank", "rosenbrock"]:
        assert name in out
    for name in optimiser_names():
        assert f"\n  {name} " in out
    assert "AdamQLR (Untuned)" in out and "smoke, quick, paper" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--task", "nope", "--optimiser", "adam"], "unknown task 'nope'"),
        (["--task", "tiny-regression", "--optimiser", "adamw"], "unknown optimiser 'adamw'"),
        (["--task", "tiny-regression", "--optimiser", "adam", "--profile", "x"], "unknown profile"),
        (["--task", "tiny-regression", "--optimiser", "adam", "--seeds", "4-2"], "reversed"),
        (["--task", "tiny-regression", "--optimiser", "adam", "--set", "lr"], "expected key=value"),
        (["--task", "tiny-regression", "--optimiser", "adam", "--set", "mom=1"], "unknown hyper"),
        (["--task", "tiny-regression", "--optimiser", "adam", "--epochs", "-2"], "invalid epochs"),
        (["--task", "tiny-regression", "--optimiser", "adam", "--device", "tpu"], "invalid device"),
        (["--optimiser", "adam"], "--task is required"),
        (["--task", "tiny-regression"], "--optimiser is required"),
        (["--specs", "/nonexistent/specs.yaml"], "cannot read --specs"),
    ],
)
def test_bad_input_exits_2_with_a_message(capsys, tmp_path, args, message):
    code, out, err = cli(capsys, *args, "--results", str(tmp_path))
    assert code == 2
    assert message in err and err.startswith("adamqlr run: error:")
    assert not list(tmp_path.glob("tiny-*"))  # nothing ran


def test_malformed_option_is_argparse_error(capsys):
    code, _, err = cli(capsys, "--steps", "many")
    assert code == 2 and "invalid int value" in err


def test_a_failing_run_exits_1_and_the_others_still_run(capsys, tmp_path):
    code, out, err = cli(capsys, "--task", "tiny-missing-data,tiny-regression", "--optimiser",
                         "adam", "--profile", "smoke", "--steps", "2", "--results",
                         str(tmp_path), "--no-progress")  # fmt: skip
    assert code == 1
    assert "tiny-missing-data/adam/smoke/seed0: FAILED: FileNotFoundError: tiny.csv" in err
    assert "tiny-regression/adam/smoke/seed0: 2 steps" in out


def test_parse_assignment():
    assert parse_assignment("lr=1e-3") == ("lr", 1e-3)
    assert parse_assignment("curvature=hessian") == ("curvature", "hessian")
    assert parse_assignment("betas=[0.9, 0.99]") == ("betas", [0.9, 0.99])
    assert parse_assignment("lr_clip=null") == ("lr_clip", None)


def test_run_seeds_then_skip_then_dry_run(capsys, tmp_path):
    args = ["--task", "tiny-regression", "--optimiser", "adam,sgd", "--profile", "smoke",
            "--seeds", "0-1", "--steps", "3", "--set", "lr=0.01", "--results", str(tmp_path),
            "--no-progress", "--device", "cpu"]  # fmt: skip
    code, out, err = cli(capsys, *args)
    assert code == 0, err
    assert out.count("3 steps") == 4 and "stop=steps" in out
    store = ResultStore(tmp_path)
    assert len(store.query()) == 4
    code, out, _ = cli(capsys, *args)
    assert code == 0 and out.count("(stored record)") == 4
    code, out, _ = cli(capsys, *args, "--dry-run")
    assert code == 0 and out.count("complete") == 4
    s = ExperimentSpec("tiny-regression", "sgd", profile="smoke", seed=1, steps=3,
                       hyperparameters={"lr": 0.01})  # fmt: skip
    assert store.load(s).provenance["steps"] == 3


def test_specs_file_json_and_yaml(capsys, tmp_path):
    entries = [
        {"task": "tiny-classification", "optimiser": "adamqlr", "profile": "smoke", "seed": 2,
         "steps": 2},
        {"task": "tiny-regression", "optimiser": "sgd", "profile": "smoke", "seeds": "0-1",
         "hyperparameters": {"lr": 0.05}, "steps": 2},
    ]  # fmt: skip
    path = tmp_path / "specs.json"
    path.write_text(json.dumps(entries))
    code, out, err = cli(capsys, "--specs", str(path), "--results", str(tmp_path / "r"),
                         "--no-progress")  # fmt: skip
    assert code == 0, err
    assert len(ResultStore(tmp_path / "r").query()) == 3
    yaml_path = tmp_path / "specs.yaml"
    yaml_path.write_text(
        "specs:\n  - {task: tiny-regression, optimiser: adam, profile: smoke, steps: 2}\n"
    )
    code, out, err = cli(capsys, "--specs", str(yaml_path), "--results", str(tmp_path / "r"),
                         "--dry-run")  # fmt: skip
    assert code == 0 and "missing" in out


def test_specs_file_refuses_python_tags_and_bad_entries(capsys, tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("- !!python/object/apply:os.system ['echo pwned']\n")
    code, _, err = cli(capsys, "--specs", str(evil), "--results", str(tmp_path))
    assert code == 2 and "invalid YAML" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("- {task: tiny-regression, optimiser: adam, colour: red}\n")
    code, _, err = cli(capsys, "--specs", str(bad), "--results", str(tmp_path))
    assert code == 2 and "entry 0" in err and "colour" in err
    notalist = tmp_path / "x.yaml"
    notalist.write_text("task: tiny-regression\n")
    code, _, err = cli(capsys, "--specs", str(notalist), "--results", str(tmp_path))
    assert code == 2 and "expected a list of mappings" in err

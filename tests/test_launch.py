"""launch.py: the run command's flow — exit codes per request, two launches of one experiment, the table and the
figure built from one table."""

import json
import re
import subprocess
import sys
import time

import pandas as pd
import pytest

from convnext_roadmap import plots
from convnext_roadmap.cli import main
from convnext_roadmap.results import read_metrics

from conftest import SMOKE, make_imagefolder


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_imagefolder(tmp_path_factory.mktemp("data"))


def test_exit_code_is_that_of_this_request_only(tmp_path, data, capsys):
    common = ["run", *SMOKE, "--data", f"imagefolder:{data}", "--results", str(tmp_path), "--experiment", "x",
              "--executor", "local", "--parallel", "1"]
    assert main([*common, "--steps", "resnet50", "--set", "train.batch_size=1000"]) == 1  # fails: batch > data
    assert main([*common, "--steps", "patchify_stem"]) == 0  # a clean request beside an old failure
    table = pd.read_csv(tmp_path / "x" / "table.csv")
    assert dict(zip(table.step, table.status)) == {"resnet50": "failed", "patchify_stem": "completed"}
    records = json.loads((tmp_path / "x" / "jobs.json").read_text())["jobs"]
    assert {r["name"] for r in records} == {"resnet50", "patchify_stem"}


def test_table_and_figure_agree_on_every_row(tmp_path, data, monkeypatch, capsys):
    drawn = {}
    real = plots.figure2
    monkeypatch.setattr(plots, "figure2", lambda df, *a, **k: (drawn.update(zip(df.step, df.status)),
                                                               real(df, *a, **k)))
    assert main(["run", "--steps", "resnet50,patchify_stem", *SMOKE, "--data", f"imagefolder:{data}", "--results",
                 str(tmp_path), "--experiment", "t", "--set", "train.batch_size=1000"]) == 1
    table = pd.read_csv(tmp_path / "t" / "table.csv")
    assert drawn == dict(zip(table.step, table.status)) == {"resnet50": "failed", "patchify_stem": "failed"}
    assert table.error.str.contains("batch_size").all()
    drawn.clear()
    assert main(["plot", "t", "--results", str(tmp_path)]) == 0
    assert drawn == dict(zip(table.step, table.status))


def test_two_launches_of_one_experiment_train_each_run_once(tmp_path, data):
    import signal

    args = [sys.executable, "-m", "convnext_roadmap.cli", "run", "--steps", "resnet50,patchify_stem", *SMOKE,
            "--set", "train.epochs=10", "--set", "train.batch_size=4", "--data", f"imagefolder:{data}",
            "--results", str(tmp_path), "--experiment", "twice"]
    first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    run = tmp_path / "twice" / "resnet50" / "seed0"
    deadline = time.time() + 120
    while not (run / "metrics.jsonl").exists() and time.time() < deadline:  # the first has begun training
        time.sleep(0.1)
    first.send_signal(signal.SIGSTOP)  # mid-run, however fast this machine trains, while the second starts
    try:
        second = subprocess.run(args, capture_output=True, text=True, timeout=300)
    finally:
        first.send_signal(signal.SIGCONT)
    out_first = first.communicate(timeout=300)[0]
    assert first.returncode == 0 and second.returncode == 0, out_first + second.stdout + second.stderr
    assert re.search(r"= resnet50 seed0: running in pid \d+ on host \S+", second.stdout)
    for name in ("resnet50", "patchify_stem"):
        assert [m["epoch"] for m in read_metrics(tmp_path / "twice" / name / "seed0")] == list(range(1, 11))
        assert not (tmp_path / "twice" / name / "seed0" / "run.lock").exists()
    trained = [out.count("epoch 1/10") for out in (out_first, second.stdout)]
    assert trained == [1, 1]  # resnet50 in the first, patchify_stem in the second, each once

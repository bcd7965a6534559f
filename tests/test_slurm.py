"""The SLURM path, against a real one-node SLURM (slurm/local-cluster/up.sh; .ci/run brings it up)."""

import json
import os
import shutil
import subprocess
import time

import pandas as pd
import pytest

from convnext_roadmap import executors
from convnext_roadmap.cli import main
from convnext_roadmap.executors.slurm import Slurm
from convnext_roadmap.results import read_metrics

from conftest import make_imagefolder

if shutil.which("sbatch") is None:
    if os.environ.get("CI"):
        raise RuntimeError("CI must run the SLURM tests: bring the cluster up with slurm/local-cluster/up.sh")
    pytest.skip("no sbatch on PATH: bring up a local cluster with slurm/local-cluster/up.sh", allow_module_level=True)

JOB = ["--executor", "slurm", "--cpus-per-task", "1", "--mem-gb", "2", "--recipe", "smoke",
       "--set", "train.batch_size=4"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_imagefolder(tmp_path_factory.mktemp("data"))


def _job_ids(exp):
    return [r["job_id"] for r in json.loads((exp / "jobs.json").read_text())["jobs"]]


def _state(job_id):
    found = Slurm.states([{"job_id": job_id}]).get(job_id)
    return found.state if found else None


def _reason(job_id):
    return subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%r"], capture_output=True, text=True).stdout.strip()


def _until(predicate, seconds=120, what="a condition"):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def test_two_steps_as_one_array_gathered_into_the_table(tmp_path, data):
    assert main(["run", "--steps", "resnet50,patchify_stem", *JOB, "--data", f"imagefolder:{data}",
                 "--results", str(tmp_path), "--experiment", "arr", "--wait"]) == 0
    exp = tmp_path / "arr"
    ids = _job_ids(exp)
    assert len(ids) == 2 and len({i.split("_")[0] for i in ids}) == 1  # one array
    table = pd.read_csv(exp / "table.csv")
    assert table.step.tolist() == ["resnet50", "patchify_stem"] and (table.status == "completed").all()
    assert (exp / "figure2.png").exists()
    # submitted again: nothing to do
    assert main(["run", "--steps", "resnet50,patchify_stem", *JOB, "--data", f"imagefolder:{data}",
                 "--results", str(tmp_path), "--experiment", "arr"]) == 0
    assert _job_ids(exp) == ids


def test_preempted_job_requeues_and_resumes(tmp_path, data):
    exp = tmp_path / "rq"
    assert main(["run", "--steps", "resnet50", *JOB, "--set", "train.batch_size=2", "--set", "train.epochs=5",
                 "--data", f"imagefolder:{data}", "--results", str(tmp_path), "--experiment", "rq"]) == 0
    (job_id,) = _job_ids(exp)
    run = exp / "resnet50" / "seed0"
    _until(lambda: len(read_metrics(run)) >= 1, what="the first epoch")
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True)  # what SLURM sends before a time limit
    # SLURM holds a requeued job for a couple of minutes before it may start again; once it waits, start it now
    _until(lambda: _reason(job_id) == "BeginTime", 60, "the requeued job to wait for its begin time")
    subprocess.run(["scontrol", "update", f"jobid={job_id}", "StartTime=now"], check=True)
    Slurm(exp).wait(json.loads((exp / "jobs.json").read_text())["jobs"], poll_s=1)
    assert _state(job_id) == "COMPLETED"
    assert [m["epoch"] for m in read_metrics(run)] == [1, 2, 3, 4, 5]  # no epoch twice
    assert json.loads((run / "summary.json").read_text())["epochs"] == 5
    rows = executors.status(exp)
    assert rows[0]["requeued"] == 1 and rows[0]["state"] == "COMPLETED" and rows[0]["epoch"] == 5


def test_two_task_ddp_job_matches_a_single_process_run(tmp_path, data):
    common = ["run", "--steps", "resnet50", "--recipe", "smoke", "--set", "train.batch_size=4", "--data",
              f"imagefolder:{data}", "--results", str(tmp_path)]
    assert main([*common, "--experiment", "single"]) == 0
    assert main([*common, "--experiment", "ddp", "--executor", "slurm", "--tasks-per-node", "2",
                 "--cpus-per-task", "1", "--mem-gb", "2", "--wait"]) == 0
    single = json.loads((tmp_path / "single" / "resnet50" / "seed0" / "summary.json").read_text())
    ddp = json.loads((tmp_path / "ddp" / "resnet50" / "seed0" / "summary.json").read_text())
    assert set(single) == set(ddp) and ddp["status"] == "completed"
    assert (single["processes"], ddp["processes"]) == (1, 2)
    assert ddp["effective_batch"] == 2 * single["effective_batch"] and ddp["lr"] == 2 * single["lr"]
    a = read_metrics(tmp_path / "single" / "resnet50" / "seed0")
    b = read_metrics(tmp_path / "ddp" / "resnet50" / "seed0")
    assert [set(m) for m in a] == [set(m) for m in b]


def test_failed_job_is_a_failed_row_with_its_error(tmp_path, data):
    assert main(["run", "--steps", "resnet50", *JOB, "--set", "train.batch_size=1000", "--data",
                 f"imagefolder:{data}", "--results", str(tmp_path), "--experiment", "bad", "--wait"]) == 1
    table = pd.read_csv(tmp_path / "bad" / "table.csv")
    assert table.status.tolist() == ["failed"] and "batch_size" in table.error[0]


def test_status_and_cancel_live_jobs(tmp_path, data, capsys):
    assert main(["run", "--steps", "resnet50", *JOB, "--set", "train.epochs=200", "--data",
                 f"imagefolder:{data}", "--results", str(tmp_path), "--experiment", "live"]) == 0
    (job_id,) = _job_ids(tmp_path / "live")
    _until(lambda: _state(job_id) == "RUNNING", what="the job to start")
    capsys.readouterr()
    assert main(["status", "live", "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert job_id in out and "RUNNING" in out and "log.out" in out
    assert main(["cancel", "live", "--results", str(tmp_path)]) == 0
    assert f"cancelled 1 job(s): {job_id}" in capsys.readouterr().out
    _until(lambda: _state(job_id) == "CANCELLED", 60, "the cancel")
    main(["status", "live", "--results", str(tmp_path)])
    assert "CANCELLED" in capsys.readouterr().out

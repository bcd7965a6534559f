"""The SLURM path, against a real two-node SLURM (slurm/local-cluster/up.sh; .ci/run brings it up)."""

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from convnext_roadmap.executors import records as job_records
from convnext_roadmap.cli import main
from convnext_roadmap.errors import RoadmapError
from convnext_roadmap.executors import JobState
from convnext_roadmap.executors.slurm import Slurm, expand, max_array_size
from convnext_roadmap.results import read_metrics

from conftest import make_imagefolder


def _no_controller(timeout_s: float = 5) -> str | None:
    """Why no SLURM controller answers here, or None when one does: one `sinfo`, cut off after a few seconds (a
    client without a controller retries for longer than that)."""
    for tool in ("sinfo", "sbatch"):
        if shutil.which(tool) is None:
            return f"no {tool} on PATH"
    try:
        done = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return f"sinfo got no answer from a controller within {timeout_s:g} s"
    if done.returncode != 0:
        said = [line for line in done.stderr.splitlines() if line.strip()]
        return f"sinfo exited {done.returncode}" + (f" ({said[-1].strip()})" if said else "")
    return None


@pytest.fixture(scope="module")
def controller():
    # module scope: asked once, and its skip or failure is given again to every test without asking again; CI
    # brings the cluster up first, so there a missing controller is a failure, not a skip
    why = _no_controller()
    if why and os.environ.get("CI"):
        pytest.fail(f"CI must run the SLURM tests, but {why}: bring the cluster up with slurm/local-cluster/up.sh",
                    pytrace=False)
    if why:
        pytest.skip(f"{why}: bring up a local cluster with slurm/local-cluster/up.sh")


pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("controller")]
README = (Path(__file__).resolve().parent.parent / "docs" / "slurm.md").read_text()  # its local-cluster command
JOB = ["--executor", "slurm", "--cluster", "local", "--recipe", "smoke", "--set", "train.batch_size=4",
       "--seeds", "1"]
# An epoch of these jobs takes well under a second: with a handful of epochs a job could end before the signal
# reached it (seen once in CI), so the requeue tests train long enough that it always arrives mid-run.
REQUEUE_EPOCHS = 30


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_imagefolder(tmp_path_factory.mktemp("data"))


def _records(exp):
    return json.loads((exp / "jobs.json").read_text())["jobs"]


def _state(job_id):
    return Slurm.states([{"job_id": job_id}])[job_id].state


def _reason(job_id):
    return Slurm.states([{"job_id": job_id}])[job_id].reason


def _until(predicate, seconds=120, what="a condition", every_s=1.0):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(every_s)
    raise AssertionError(f"timed out waiting for {what}")


def _readme_command(start: str) -> list[str]:
    """The README's command line that starts with `start`, as words."""
    line = next(ln for ln in README.splitlines() if ln.startswith(start))
    return line.split("#")[0].split()[1:]


def test_the_readmes_local_cluster_command_completes(tmp_path, capsys):
    words = _readme_command("roadmap run --upto patchify_stem --recipe smoke")
    assert "--cluster" in words and "local" in words and "--wait" in words
    assert main([*words, "--results", str(tmp_path)]) == 0
    exp = next(tmp_path.iterdir())
    table = pd.read_csv(exp / "table.csv")
    assert table.step.tolist() == ["resnet50", "stage_ratio", "patchify_stem"]
    assert (table.status == "completed").all()
    records = _records(exp)
    assert len(records) == 3 * table.seeds.str.split("/").str[1].astype(int).iloc[0]
    assert len({r["job_id"].split("_")[0] for r in records}) == -(-len(records) // max_array_size())  # arrays
    # a thread per CPU the job was given (slurm/local.yaml: 1), not per core of the node
    summary = json.loads((exp / "resnet50" / "seed0" / "summary.json").read_text())
    assert summary["hardware"]["torch_threads"] == 1
    # submitted again: nothing to do
    capsys.readouterr()
    assert main([*words, "--results", str(tmp_path)]) == 0
    assert capsys.readouterr().out.count("done already") == len(records)


def test_a_layer_of_ones_own_trains_on_a_node_without_its_folder(tmp_path, data, monkeypatch):
    # the README's se.yaml beside its my_layers.py, the file gone once the launch has checked it: the job builds
    # from the source its config carries
    from test_user_layers import SE, SE_YAML, gone_after_the_checks

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "my_layers.py").write_text(SE)
    (mine / "se.yaml").write_text(SE_YAML)
    monkeypatch.chdir(mine)
    gone_after_the_checks(monkeypatch, mine / "my_layers.py")
    assert main(["run", "--patch", "./se.yaml", *JOB, "--data", f"imagefolder:{data}", "--results",
                 str(tmp_path / "r"), "--wait"]) == 0
    table = pd.read_csv(next((tmp_path / "r").iterdir()) / "table.csv")
    assert table.step.tolist() == ["resnet50+se"] and table.status.tolist() == ["completed"]
    assert not (mine / "my_layers.py").exists()


def test_the_default_profile_runs_on_the_local_cluster(tmp_path, data):
    assert main(["run", "--steps", "resnet50", "--recipe", "smoke", "--seeds", "1", "--executor", "slurm", "--data",
                 f"imagefolder:{data}", "--results", str(tmp_path), "--wait"]) == 0
    assert pd.read_csv(tmp_path / "resnet50-smoke" / "table.csv").status.tolist() == ["completed"]


def test_a_request_the_partition_can_never_run_is_refused_before_submission(tmp_path, data, capsys):
    assert main(["run", "--steps", "resnet50", "--recipe", "smoke", "--executor", "slurm", "--cpus-per-task", "8",
                 "--data", f"imagefolder:{data}", "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert re.search(r"--cpus-per-task: cpus_per_task: 8 CPU\(s\) × 1 task\(s\) per node = 8, but the nodes "
                     r"of partition debug have at most \d+", err) and err.count("\n") == 1
    assert not (tmp_path / "resnet50-smoke").exists()
    assert main(["run", "--steps", "resnet50", *JOB, "--nodes", "3", "--data", f"imagefolder:{data}",
                 "--results", str(tmp_path)]) == 2
    assert "--nodes: nodes: 3 nodes, but partition debug has 2" in capsys.readouterr().err
    assert main(["run", "--steps", "resnet50", *JOB, "--partition", "nope", "--data", f"imagefolder:{data}",
                 "--results", str(tmp_path)]) == 2
    assert "--partition: partition: nope: sinfo knows no such partition" in capsys.readouterr().err
    # a GPU on nodes asked for none (this machine's lack of one does not count: the jobs run on the nodes)
    assert main(["run", "--steps", "resnet50", *JOB, "--device", "cuda", "--data", f"imagefolder:{data}",
                 "--results", str(tmp_path)]) == 2
    assert "slurm/local.yaml: gpus_per_node: 0, but --device cuda trains on a GPU" in capsys.readouterr().err
    # a recipe sized for GPUs on the profile's CPU nodes, not 300 epochs started on their CPUs without a word
    args = ["run", "--steps", "resnet50", "--recipe", "paper_in1k", "--executor", "slurm", "--cluster", "local",
            "--seeds", "1", "--data", f"imagefolder:{data}", "--results", str(tmp_path), "--dry-run"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "slurm/local.yaml: gpus_per_node: 0, so the jobs get no GPU; but resnet50 " \
                                     "trains with a recipe sized for GPUs" in err and "or --device cpu" in err
    assert main([*args, "--device", "cpu"]) == 0
    # what only sbatch can judge (a feature, an account) is its own error line, not a traceback
    assert main(["run", "--steps", "resnet50", *JOB, "--constraint", "nosuch", "--data", f"imagefolder:{data}",
                 "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sbatch refused the jobs (0 of 1 submitted before)" in err
    assert "Invalid feature specification" in err


def test_a_pending_then_cancelled_array_ends_the_wait(tmp_path, data, capsys):
    later = ["--set", "train.epochs=1"]
    profile = tmp_path / "later.yaml"
    profile.write_text("cpus_per_task: 1\nmem_gb: 1\nadditional_parameters: {begin: now+1hour}\n")
    assert main(["run", "--steps", "resnet50,patchify_stem", *JOB, "--cluster", str(profile), *later, "--data",
                 f"imagefolder:{data}", "--results", str(tmp_path), "--experiment", "later"]) == 0
    records = _records(tmp_path / "later")
    _until(lambda: _reason(records[0]["job_id"]) == "BeginTime", 30, "the array to wait for its begin time")
    capsys.readouterr()
    assert main(["status", "later", "--results", str(tmp_path)]) == 0
    assert "BeginTime" in capsys.readouterr().out
    subprocess.run(["scancel", records[0]["job_id"].split("_")[0]], check=True)  # the whole array, never started
    start = time.time()
    Slurm(tmp_path / "later").wait(records, poll_s=1)
    assert time.time() - start < 60
    assert {s.state for s in Slurm.states(records).values()} == {"CANCELLED"}
    assert main(["table", "later", "--results", str(tmp_path), "--format", "csv"]) == 0
    table = pd.read_csv(tmp_path / "later" / "table.csv")
    assert (table.status == "failed").all() and table.error.str.startswith("CANCELLED").all()


def test_a_reason_that_never_clears_fails_the_wait(tmp_path, monkeypatch):
    monkeypatch.setattr(Slurm, "states", staticmethod(lambda records: {"7_0": JobState("PENDING", "PartitionConfig")}))
    with pytest.raises(RoadmapError, match=r"job 7_0 \(gelu seed0\) will not start by itself: PartitionConfig"):
        Slurm(tmp_path / "x").wait([{"job_id": "7_0", "name": "gelu", "seed": 0}], poll_s=0.01)
    monkeypatch.setattr(Slurm, "states", staticmethod(lambda records: {"7_0": JobState("PENDING", "Priority")}))
    with pytest.raises(RoadmapError, match="--timeout-wait 0.001: stopped waiting with 1 pending \\(Priority\\)"):
        Slurm(tmp_path / "x").wait([{"job_id": "7_0", "name": "gelu", "seed": 0}], timeout_min=0.001, poll_s=0.01)


def test_a_job_held_by_its_user_ends_the_wait_with_that_reason(tmp_path, data, capsys):
    profile = tmp_path / "held.yaml"
    profile.write_text("cpus_per_task: 1\nmem_gb: 1\nadditional_parameters: {hold: true}\n")  # sbatch --hold
    start = time.time()
    code = main(["run", "--steps", "resnet50", *JOB, "--cluster", str(profile), "--data", f"imagefolder:{data}",
                 "--results", str(tmp_path), "--experiment", "held", "--wait", "--timeout-wait", "1"])
    job_id = _records(tmp_path / "held")[0]["job_id"]
    subprocess.run(["scancel", job_id.split("_")[0]], check=True)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and time.time() - start < 60 and len(err) == 1
    assert err[0].startswith(f"roadmap: error: job {job_id} (resnet50 seed0) will not start by itself: JobHeldUser")
    assert "scontrol release" in err[0]


def test_array_ids_expand():
    assert expand("12_[0-2,5%4]") == ["12_0", "12_1", "12_2", "12_5"]
    assert expand("12_3") == ["12_3"] and expand("13") == ["13"]


def test_more_jobs_than_max_array_size_run_as_several_arrays(tmp_path, data):
    cap = max_array_size()
    assert cap < 6  # the local cluster's slurm.conf sets it low
    assert main(["run", "--steps", "resnet50", *JOB, "--seeds", str(cap + 2), "--data", f"imagefolder:{data}",
                 "--results", str(tmp_path), "--experiment", "many", "--wait"]) == 0
    records = _records(tmp_path / "many")
    arrays = {r["job_id"].split("_")[0] for r in records}
    assert len(records) == cap + 2 and len(arrays) == 2
    assert (pd.read_csv(tmp_path / "many" / "table.csv").seeds == f"{cap + 2}/{cap + 2}").all()


def test_a_time_out_signal_mid_epoch_saves_there_requeues_resumes_and_the_table_equals_a_straight_run(tmp_path):
    # 240 images in batches of 2: 120 steps an epoch, a progress line every 20; the signal, sent once epoch 2's
    # first line is out, finds the job in epoch 2's middle. The straight run trains on the cluster too (one thread a
    # job: the same floats)
    data = make_imagefolder(tmp_path / "data", per_class=80)
    common = ["run", "--steps", "resnet50", *JOB, "--set", "train.batch_size=2", "--set", "train.epochs=4",
              "--set", "train.log_every=20", "--data", f"imagefolder:{data}", "--results", str(tmp_path)]
    assert main([*common, "--experiment", "straight", "--wait"]) == 0
    exp = tmp_path / "rq"
    assert main([*common, "--experiment", "rq"]) == 0
    run = exp / "resnet50" / "seed0"
    _requeue_and_finish(exp, run, 4, once_logged="epoch 2 batch 20/120")
    rows = job_records.status(exp)
    assert rows[0]["requeued"] == 1 and rows[0]["state"] == "COMPLETED"
    [resume] = json.loads((run / "summary.json").read_text())["resumes"]
    assert resume["epoch"] == 2 and 20 <= resume["batch"] < 120 and resume["batches"] == 120  # where it stopped
    assert resume["lost_s"] == 0  # nothing trained after the save: it came at the signal's step's end
    log = "".join(p.read_text() for p in (exp / "slurm").rglob("*_log.out"))
    assert f"saved in epoch 2 at batch {resume['batch']}/120: the run stops" in log
    assert f"resumed at batch {resume['batch']}/120" in log
    assert main(["table", "rq", "--results", str(tmp_path)]) == 0
    straight = pd.read_csv(tmp_path / "straight" / "table.csv")
    requeued = pd.read_csv(exp / "table.csv")
    assert requeued.top1.tolist() == straight.top1.tolist()
    a, b = read_metrics(tmp_path / "straight" / "resnet50" / "seed0"), read_metrics(run)
    for x, y in zip(a, b):
        for key in ("train_loss", "val_loss", "top1", "top5"):
            assert x[key] == pytest.approx(y[key], abs=1e-6), (x["epoch"], key)


def _requeue_and_finish(exp, run, epochs, once_logged: str | None = None):
    """Send the job SLURM's time-out signal once its first epoch is written (or its log has the line `once_logged`),
    let it requeue and finish; return when the signal was sent."""
    (record,) = _records(exp)
    job_id = record["job_id"]
    if once_logged is None:
        _until(lambda: len(read_metrics(run)) >= 1, what="the first epoch")
    else:
        _until(lambda: once_logged in "".join(p.read_text() for p in (exp / "slurm").rglob("*_log.out")),
               what=once_logged, every_s=0.05)
    signalled = time.time()
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True)  # what SLURM sends before a time limit
    # SLURM holds a requeued job for a couple of minutes before it may start again; once it waits, start it now
    _until(lambda: _reason(job_id) == "BeginTime", 60, "the requeued job to wait for its begin time")
    subprocess.run(["scontrol", "update", f"jobid={job_id}", "StartTime=now"], check=True)
    Slurm(exp).wait([record], poll_s=1)
    assert _state(job_id) == "COMPLETED"
    assert [m["epoch"] for m in read_metrics(run)] == list(range(1, epochs + 1))  # no epoch twice
    assert json.loads((run / "summary.json").read_text())["epochs"] == epochs
    return signalled


def test_a_two_task_ddp_job_has_a_single_runs_shape_at_twice_the_batch(tmp_path, data):
    common = ["run", "--steps", "resnet50", "--recipe", "smoke", "--set", "train.batch_size=4", "--data",
              f"imagefolder:{data}", "--results", str(tmp_path), "--seeds", "1"]
    assert main([*common, "--experiment", "single", "--executor", "inprocess"]) == 0
    assert main([*common, "--experiment", "ddp", "--executor", "slurm", "--cluster", "local",
                 "--tasks-per-node", "2", "--wait"]) == 0
    single = json.loads((tmp_path / "single" / "resnet50" / "seed0" / "summary.json").read_text())
    ddp = json.loads((tmp_path / "ddp" / "resnet50" / "seed0" / "summary.json").read_text())
    assert set(single) == set(ddp) and ddp["status"] == "completed"
    assert (single["processes"], ddp["processes"]) == (1, 2)
    assert ddp["effective_batch"] == 2 * single["effective_batch"] and ddp["lr"] == 2 * single["lr"]
    a = read_metrics(tmp_path / "single" / "resnet50" / "seed0")
    b = read_metrics(tmp_path / "ddp" / "resnet50" / "seed0")
    assert [set(m) for m in a] == [set(m) for m in b]


def test_two_node_ddp_job_spans_both_hosts_and_resumes_after_a_requeue(tmp_path, data):
    exp = tmp_path / "nodes"
    assert main(["run", "--steps", "resnet50", *JOB, "--nodes", "2", "--set", "train.batch_size=2",
                 "--set", f"train.epochs={REQUEUE_EPOCHS}", "--data", f"imagefolder:{data}", "--results",
                 str(tmp_path), "--experiment", "nodes"]) == 0
    run = exp / "resnet50" / "seed0"
    _requeue_and_finish(exp, run, REQUEUE_EPOCHS)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["processes"] == 2 and sorted(summary["hosts"]) == ["node1", "node2"]
    assert job_records.status(exp)[0]["requeued"] == 1


def test_failed_job_is_a_failed_row_with_its_root_cause(tmp_path, data, capsys):
    assert main(["run", "--steps", "resnet50", *JOB, "--set", "train.batch_size=1000", "--data",
                 f"imagefolder:{data}", "--results", str(tmp_path), "--experiment", "bad", "--wait"]) == 1
    table = pd.read_csv(tmp_path / "bad" / "table.csv")
    assert table.status.tolist() == ["failed"] and table.error[0].startswith("RoadmapError: train.batch_size")
    assert "Traceback" in (tmp_path / "bad" / "resnet50" / "seed0" / "error.txt").read_text()
    capsys.readouterr()
    main(["status", "bad", "--results", str(tmp_path)])
    assert "RoadmapError: train.batch_size" in capsys.readouterr().out


def test_status_and_cancel_live_jobs(tmp_path, data, capsys):
    assert main(["run", "--steps", "resnet50", *JOB, "--set", "train.epochs=200", "--data",
                 f"imagefolder:{data}", "--results", str(tmp_path), "--experiment", "live"]) == 0
    (record,) = _records(tmp_path / "live")
    job_id = record["job_id"]
    _until(lambda: _state(job_id) == "RUNNING", what="the job to start")
    capsys.readouterr()
    assert main(["status", "live", "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert job_id in out and "RUNNING" in out and "log.out" in out
    # a second launch of the same experiment leaves the running job alone
    assert main(["run", "--steps", "resnet50", *JOB, "--set", "train.epochs=200", "--data",
                 f"imagefolder:{data}", "--results", str(tmp_path), "--experiment", "live"]) == 0
    assert f"= resnet50 seed0: running already (job {job_id})" in capsys.readouterr().out
    assert _records(tmp_path / "live") == [record]
    assert main(["cancel", "live", "--results", str(tmp_path)]) == 0
    assert f"cancelled 1 job(s): {job_id}" in capsys.readouterr().out
    _until(lambda: _state(job_id) == "CANCELLED", 60, "the cancel")
    main(["status", "live", "--results", str(tmp_path)])
    assert "CANCELLED" in capsys.readouterr().out

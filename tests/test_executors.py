"""The executors without SLURM: the local executor and its queue, the job records, the profile flags, and the errors
before anything is written."""

import json
import os
import re

import pytest
import torch

from convnext_roadmap import RoadmapError
from convnext_roadmap.cli import main
from convnext_roadmap.executors.slurm import load_profile

from conftest import SMOKE, make_imagefolder


def test_local_executor_runs_the_same_job(tmp_path):
    data = make_imagefolder(tmp_path / "data")
    assert main(["run", "--steps", "resnet50", *SMOKE, "--data", f"imagefolder:{data}", "--results",
                 str(tmp_path / "r"), "--experiment", "loc", "--executor", "local"]) == 0
    exp = tmp_path / "r" / "loc"
    assert json.loads((exp / "resnet50" / "seed0" / "summary.json").read_text())["status"] == "completed"
    assert json.loads((exp / "jobs.json").read_text())["jobs"][0]["executor"] == "local"
    assert (exp / "table.csv").exists()
    assert not (exp / "local" / "%j").exists()  # submitit's unexpanded folder template is not left behind


def test_no_sbatch_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert main(["run", "--recipe", "smoke", "--executor", "slurm", "--results", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "no sbatch on PATH" in err and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


def test_profile_flags_override_and_unknown_keys_fail(tmp_path, monkeypatch):
    p, source_of = load_profile("default", {"gpus_per_node": 8, "nodes": 2, "partition": None})
    assert (p.gpus_per_node, p.nodes, p.tasks(), p.timeout_min) == (8, 2, 8, 60)
    # the default's CPUs: the official run_with_submitit.py's 10 per GPU task; a CPU job's 2
    assert (p.cpus(), load_profile("default", {})[0].cpus(), load_profile("local", {})[0].cpus()) == (10, 2, 1)
    assert source_of("nodes") == "--nodes" and source_of("cpus_per_task").endswith("slurm/default.yaml")
    bad = tmp_path / "mine.yaml"
    bad.write_text("gpus: 4\n")
    with pytest.raises(RoadmapError, match="mine.yaml: gpus: unknown key"):
        load_profile(str(bad), {})
    with pytest.raises(RoadmapError, match="--nodes: nodes: got 0"):
        load_profile("default", {"nodes": 0})
    with pytest.raises(RoadmapError, match="no such profile"):
        load_profile("hpc9", {})
    # a name is the project's profile, else ./slurm/NAME.yaml here (an installed package's user keeps theirs there)
    (tmp_path / "slurm").mkdir()
    (tmp_path / "slurm" / "mine.yaml").write_text("partition: gpu\n")
    monkeypatch.chdir(tmp_path)
    assert load_profile("mine", {})[0].partition == "gpu"
    bad.write_text("additional_parameters: 5\n")
    with pytest.raises(RoadmapError, match="mine.yaml: additional_parameters: got 5, expected a mapping of names to"):
        load_profile(str(bad), {})
    # a profile that leaves a field out gets what slurm/default.yaml documents for it
    from convnext_roadmap.config import ClusterProfile

    assert ClusterProfile() == load_profile("default", {})[0]
    bad.write_text("partition: gpu\n")
    assert load_profile(str(bad), {})[0] == ClusterProfile(partition="gpu")


@pytest.mark.parametrize("tasks, says", [(16, "two or more processes on one GPU"), (4, "GPUs 4-7 of each node idle"),
                                         (7, "GPU 7 of each node idle")])
def test_a_gpu_profile_whose_tasks_are_not_its_gpus_is_refused_before_sinfo_is_asked(tmp_path, monkeypatch, capsys,
                                                                                    tasks, says):
    # NCCL takes one rank per GPU: 16 tasks on 8 GPUs fail ("Duplicate GPU detected") after the queue's wait and at
    # every requeue; 4 leave half the GPUs idle. Found from the profile alone, before the cluster is asked anything
    profile = tmp_path / "gpus.yaml"
    profile.write_text(f"gpus_per_node: 8\ntasks_per_node: {tasks}\n")
    (tmp_path / "bin").mkdir()
    for tool in ("sbatch", "sinfo", "scontrol"):  # the cluster's tools, each refusing to be asked
        (tmp_path / "bin" / tool).write_text("#!/bin/sh\nexit 99\n")
        (tmp_path / "bin" / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    args = ["run", "--steps", "resnet50", "--recipe", "smoke", "--executor", "slurm", "--device", "cuda",
            "--results", str(tmp_path / "r")]
    assert main([*args, "--cluster", str(profile)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"gpus.yaml: tasks_per_node: {tasks}, but gpus_per_node: 8" in err and says in err
    assert not (tmp_path / "r").exists()
    # the flag that set it is named where a flag did
    assert main([*args, "--cluster", "default", "--gpus-per-node", "8", "--tasks-per-node", str(tasks)]) == 2
    assert f"--tasks-per-node: tasks_per_node: {tasks}, but gpus_per_node: 8" in capsys.readouterr().err
    # on the CPU of GPU nodes, processes are not GPUs: as many as asked
    profile.write_text(f"gpus_per_node: 8\ntasks_per_node: {tasks}\n")
    assert main([*args[:-4], "--device", "cpu", "--cluster", str(profile), "--results", str(tmp_path / "r")]) == 2
    assert "sinfo" in capsys.readouterr().err  # got past the profile to the cluster's own limits


def test_the_local_share_of_cpus_is_of_those_the_launch_may_use(tmp_path, monkeypatch):
    # in a cpuset or an salloc allocation the machine has more cores than the launch may use: 3 of 64 here
    import os

    from convnext_roadmap.executors.local import Local

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {4, 5, 6}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    local = Local(tmp_path)
    assert local.parallel == 3 and local.cpus(3) == (1, "--executor local gives each process 1 CPU(s) (the 3 CPUs "
                                                       "this launch may use shared by 3 job(s) × 1 process(es))")
    assert Local(tmp_path, parallel=1).cpus(5)[0] == 3


def test_two_jobs_at_once_give_what_one_at_a_time_gives(tmp_path):
    from convnext_roadmap.results import read_metrics

    data = make_imagefolder(tmp_path / "data")
    common = ["run", "--steps", "resnet50,patchify_stem", "--recipe", "smoke", "--set", "train.batch_size=8",
              "--seeds", "1", "--data", f"imagefolder:{data}", "--results", str(tmp_path / "r"),
              "--executor", "local"]
    # one thread each both ways: another thread count sums in another order, and the runs drift apart by 1e-3
    assert main([*common, "--parallel", "2", "--threads-per-job", "1", "--experiment", "together"]) == 0
    assert main([*common, "--parallel", "1", "--threads-per-job", "1", "--experiment", "apart"]) == 0
    for exp in ("together", "apart"):
        summaries = [json.loads((tmp_path / "r" / exp / s / "seed0" / "summary.json").read_text())
                     for s in ("resnet50", "patchify_stem")]
        assert [(s["status"], s["hardware"]["torch_threads"]) for s in summaries] == [("completed", 1)] * 2
    for step in ("resnet50", "patchify_stem"):
        a = read_metrics(tmp_path / "r" / "together" / step / "seed0")
        b = read_metrics(tmp_path / "r" / "apart" / step / "seed0")
        assert [(m["train_loss"], m["val_loss"], m["top1"]) for m in a] == \
            [(m["train_loss"], m["val_loss"], m["top1"]) for m in b]


def test_the_workers_share_one_queue_and_claim_each_run_once(tmp_path):
    from convnext_roadmap.executors.injob import Queue

    a, b = Queue([None] * 5, tmp_path, slot=0), Queue([None] * 5, tmp_path, slot=1)
    # each worker looks past the run it last had: a has 0, b skips it; a (after 0) skips b's 1 and 2 …
    assert [a._claim_after(-1, "11"), b._claim_after(-1, "12"), b._claim_after(1, "12"), a._claim_after(0, "11"),
            a._claim_after(3, "11"), b._claim_after(2, "12")] == [0, 1, 2, 3, 4, None]
    assert [(tmp_path / str(i)).read_text() for i in range(5)] == ["0 11", "1 12", "1 12", "0 11", "0 11"]


_ORPHAN = """
import os, sys, time
from pathlib import Path
from convnext_roadmap.executors.injob import Queue
claims = Path(sys.argv[1])
queue = Queue([None] * 2, claims, slot=0)
queue.parent = os.getppid()  # as a worker does when it starts: its controller
(claims / "ready").touch()
deadline = time.time() + 30
while os.getppid() == queue.parent and time.time() < deadline:
    time.sleep(0.05)
(claims / "after.tmp").write_text(repr(queue._claim_after(-1, "11")))
os.rename(claims / "after.tmp", claims / "after")
"""


def test_a_worker_whose_controller_died_claims_no_more_runs(tmp_path):
    import subprocess
    import sys
    import time

    # a shell stands in for the controller: it starts the worker and ends (killed, say) once the worker is ready
    subprocess.run(["sh", "-c", '"$0" -c "$2" "$1" & while [ ! -e "$1/ready" ]; do sleep 0.05; done',
                    sys.executable, str(tmp_path), _ORPHAN], timeout=60, check=True)
    deadline = time.time() + 60
    while not (tmp_path / "after").exists() and time.time() < deadline:
        time.sleep(0.1)
    assert (tmp_path / "after").read_text() == "None"
    assert not (tmp_path / "0").exists()  # the run is left for a worker the launch watches


def test_a_queued_runs_state_comes_from_its_claim_its_worker_and_its_summary(tmp_path, monkeypatch):
    from convnext_roadmap.executors import local

    monkeypatch.setattr(local, "_controller_alive", lambda pid: pid == "11")  # worker 11 lives, worker 12 has ended
    killed = []
    monkeypatch.setattr(local.os, "kill", lambda pid, sig: killed.append(pid))
    claims = tmp_path / "queue"
    claims.mkdir()

    def queued(i, claim=None, status=None):
        run = tmp_path / f"run{i}"
        run.mkdir()
        if status:
            (run / "summary.json").write_text(json.dumps({"status": status}))
        if claim:
            (claims / str(i)).write_text(claim)
        return {"name": f"r{i}", "seed": 0, "job_id": f"11_{i}", "executor": "local", "run_dir": str(run),
                "workers": ["11", "12"], "claim": str(claims / str(i))}

    records = [queued(0, "0 11"), queued(1, "0 11", "completed"), queued(2, "1 12"), queued(3, "1 12", "failed"),
               queued(4)]
    # a record from before the queue: the job itself, here ended, its run completed
    before = {"name": "old", "seed": 0, "job_id": "12", "executor": "local", "run_dir": str(tmp_path / "run1")}
    states = local.Local.states([*records, before])
    assert [states[r["job_id"]].state for r in [*records, before]] == [
        "RUNNING", "COMPLETED", "UNKNOWN", "FAILED", "PENDING", "COMPLETED"]
    assert local.Local.cancel([records[0], records[4]]) == ["11_0", "11_4"] and killed == [11]


def test_a_queued_run_no_worker_reached_is_missing_not_failed(tmp_path):
    from convnext_roadmap import results
    from convnext_roadmap.executors import records as job_records

    exp = tmp_path / "exp"
    (exp / "queue").mkdir(parents=True)
    log = tmp_path / "worker.err"
    log.write_text("Traceback …\nRuntimeError: the first run's own failure\n")
    (exp / "queue" / "0").write_text("0 999999999")  # claimed by a worker that has ended (no such process)

    def queued(i):
        return {"name": f"r{i}", "seed": 0, "job_id": f"999999999_{i}", "executor": "local",
                "run_dir": str(exp / f"r{i}" / "seed0"), "stdout": "", "stderr": str(log), "stderr_from": 0,
                "workers": ["999999999"], "claim": str(exp / "queue" / str(i))}

    results.record_jobs(exp, [queued(0), queued(1)])  # the launch was interrupted before a worker reached r1
    lines = job_records.mark_ended_failed(exp)
    # the last line that names an error (last_error_line): r0's own cause
    assert lines == ["✗ r0 seed0: job 999999999_0 UNKNOWN: RuntimeError: the first run's own failure"]
    assert results.read_json(exp / "r0" / "seed0" / "summary.json")["status"] == "failed"
    assert not (exp / "r1" / "seed0" / "summary.json").exists()


def test_a_worker_killed_in_a_run_is_replaced_and_the_queue_goes_on(tmp_path):
    import signal
    import threading
    import time

    import pandas as pd

    data = make_imagefolder(tmp_path / "data")
    exp = tmp_path / "r" / "w"
    killed = []

    def kill_the_first_trainer():  # as the kernel's OOM killer would: the worker's process, mid-run
        deadline = time.time() + 300
        while time.time() < deadline:
            for lock in exp.glob("*/seed0/run.lock"):
                try:
                    pid = json.loads(lock.read_text())["pid"]
                except (OSError, ValueError):
                    continue
                os.kill(pid, signal.SIGKILL)
                killed.append(lock.parent.parent.name)
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=kill_the_first_trainer, daemon=True)
    watcher.start()
    assert main(["run", "--steps", "resnet50,patchify_stem", "--recipe", "smoke", "--set", "train.batch_size=8",
                 "--set", "train.epochs=20", "--seeds", "1", "--data", f"imagefolder:{data}", "--results",
                 str(tmp_path / "r"), "--experiment", "w", "--executor", "local", "--parallel", "1"]) == 1
    watcher.join(timeout=5)
    assert len(killed) == 1
    other = ({"resnet50", "patchify_stem"} - set(killed)).pop()
    table = pd.read_csv(exp / "table.csv").set_index("step")
    assert table.status.to_dict() == {killed[0]: "failed", other: "completed"}
    assert isinstance(table.error[killed[0]], str) and table.error[killed[0]]  # how its worker ended
    assert len([p for p in (exp / "local").iterdir() if p.name.isdigit()]) == 2  # the killed worker, its successor


def test_roadmap_cancel_ends_a_local_launch_and_no_worker_replaces_the_cancelled_one(tmp_path, capfd):
    import threading
    import time

    import pandas as pd

    data = make_imagefolder(tmp_path / "data")
    exp = tmp_path / "r" / "c"
    said = []

    def cancel_once_a_run_trains():  # as a user would from another terminal
        deadline = time.time() + 300
        while time.time() < deadline:
            if list(exp.glob("*/seed0/checkpoint.pt")):
                said.append(main(["cancel", "c", "--results", str(tmp_path / "r")]))
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=cancel_once_a_run_trains, daemon=True)
    watcher.start()
    start = time.time()
    assert main(["run", "--steps", "resnet50,patchify_stem", "--recipe", "smoke", "--set", "train.batch_size=4",
                 "--set", "train.epochs=500", "--seeds", "1", "--data", f"imagefolder:{data}", "--results",
                 str(tmp_path / "r"), "--experiment", "c", "--executor", "local", "--parallel", "1"]) == 1
    watcher.join(timeout=5)
    assert said == [0] and time.time() - start < 200  # not the 500 epochs of the other run
    out, err = capfd.readouterr()
    assert "cancelled 2 job(s)" in out
    # the worker was stopped with SIGTERM, which its controller passes on: the run saved its place first (at a step's
    # end, or at the epoch's end where the signal came in its last step or its evaluation)
    assert "Traceback" not in err
    log = "".join(p.read_text() for p in (exp / "local").glob("*/*_log.out"))
    assert "SIGTERM: the run stops after this step, its place saved" in log
    assert re.search(r"saved in epoch \d+ at batch \d+/7: the run stops|the run stops after epoch \d+, its checkpoint "
                     r"saved", log)
    table = pd.read_csv(exp / "table.csv").set_index("step")
    first = table.status[table.status != "missing"].index.tolist()
    assert len(first) == 1 and table.status[first[0]] == "failed" and table.error[first[0]].startswith("CANCELLED")
    assert len([p for p in (exp / "local").iterdir() if p.name.isdigit()]) == 1  # nobody replaced the worker


def test_one_worker_trains_every_run_and_a_failed_run_does_not_stop_it(tmp_path):
    import pandas as pd

    data = make_imagefolder(tmp_path / "data")
    exp = tmp_path / "r" / "q"
    broken = exp / "resnet50" / "seed0"
    broken.mkdir(parents=True)
    (broken / "checkpoint.pt").write_bytes(b"not a checkpoint")  # resuming from it fails
    assert main(["run", "--steps", "resnet50,patchify_stem", "--recipe", "smoke", "--set", "train.batch_size=8",
                 "--seeds", "1", "--data", f"imagefolder:{data}", "--results", str(tmp_path / "r"),
                 "--experiment", "q", "--executor", "local", "--parallel", "1"]) == 1
    table = pd.read_csv(exp / "table.csv")
    assert dict(zip(table.step, table.status)) == {"resnet50": "failed", "patchify_stem": "completed"}
    workers = [p.name for p in (exp / "local").iterdir() if p.name.isdigit()]
    assert len(workers) == 1  # one process trained both runs, one after the other
    records = json.loads((exp / "jobs.json").read_text())["jobs"]
    # the failed run came first (the larger at this scale), so the queue went on past a failure
    assert {r["name"]: r["job_id"] for r in records} == {"resnet50": f"{workers[0]}_0",
                                                         "patchify_stem": f"{workers[0]}_1"}
    assert all(r["workers"] == workers and workers[0] in r["stdout"] for r in records)


def test_the_cores_are_divided_between_the_jobs(tmp_path):
    from convnext_roadmap.executors.local import Local

    cores = os.cpu_count() or 1
    assert Local(tmp_path, parallel=2).threads() == max(1, cores // 2)
    assert Local(tmp_path, parallel=1).threads() == cores
    assert Local(tmp_path, parallel=2, threads_per_job=3).threads() == 3
    # one job left: it gets every core, not its share of slots that would stay empty
    assert Local(tmp_path, parallel=2).threads(jobs=1) == cores and Local(tmp_path, parallel=2).slots(jobs=1) == 1
    assert Local(tmp_path, parallel=2).slots(jobs=5) == 2


# what torchrun, a Kubeflow pod or a cluster's prolog may leave in the launch's shell: none of it this job's
INHERITED = {"MASTER_ADDR": "10.255.255.1", "MASTER_PORT": "29500", "RANK": "0", "WORLD_SIZE": "1",
             "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"}


@pytest.mark.parametrize("inherited", [{}, INHERITED], ids=["clean", "inherited-rendezvous"])
def test_a_local_job_can_train_data_parallel(tmp_path, monkeypatch, inherited):
    for name, value in inherited.items():
        monkeypatch.setenv(name, value)
    data = make_imagefolder(tmp_path / "data")
    # two runs on one worker (--parallel 1): rank 0 claims each from the queue and its other rank follows
    assert main(["run", "--steps", "resnet50,patchify_stem", "--recipe", "smoke", "--set", "train.batch_size=4",
                 "--seeds", "1", "--data", f"imagefolder:{data}", "--results", str(tmp_path / "r"), "--experiment",
                 "ddp", "--executor", "local", "--tasks-per-job", "2", "--parallel", "1"]) == 0
    for step in ("resnet50", "patchify_stem"):
        summary = json.loads((tmp_path / "r" / "ddp" / step / "seed0" / "summary.json").read_text())
        assert summary["processes"] == 2 and summary["effective_batch"] == 8
    assert {name: os.environ.get(name) for name in inherited} == inherited  # the launch's own are left alone


def test_a_worker_that_dies_before_its_run_leaves_its_error_in_the_row(tmp_path):
    from convnext_roadmap.executors.local import Local
    from convnext_roadmap.job import Job

    # --device cuda on a machine without one, past the pre-flight: each worker's process group refuses it
    job = Job(run_dir=str(tmp_path / "e" / "resnet50" / "seed0"), name="resnet50", cfg={"train": {"epochs": 1}},
              seed=0, device="cuda")
    Local(tmp_path / "e", tasks_per_job=2, parallel=1).submit([job])
    error = json.loads((tmp_path / "e" / "resnet50" / "seed0" / "summary.json").read_text())["error"]
    assert error.startswith("not started: the queue's workers ended: ") and \
        "RoadmapError: --device cuda: no CUDA device is available here" in error, error


_RANK = """
import sys, datetime, torch.distributed as dist
from convnext_roadmap.job import Job
from convnext_roadmap.train import run_job
rank, init, run_dir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2, timeout=datetime.timedelta(seconds=90))
try:
    run_job(Job(run_dir=run_dir, name="resnet50", cfg={}))
except Exception as e:
    print(type(e).__name__, e)
"""


def test_every_rank_hears_that_rank_0_could_not_claim_the_run(tmp_path):
    import subprocess
    import sys

    run_dir = tmp_path / "resnet50" / "seed0"
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text('{"status": "compl')  # damaged by hand between the plan and the claim
    ranks = [subprocess.Popen([sys.executable, "-c", _RANK, str(rank), f"file://{tmp_path / 'pg'}", str(run_dir)],
                              stdout=subprocess.PIPE, text=True) for rank in (0, 1)]
    # rank 0 fails before the broadcast that tells the other ranks whether to train: they must not wait for it
    try:
        outs = [r.communicate(timeout=60)[0] for r in ranks]
    finally:
        for r in ranks:
            r.kill()
    assert all(f"RoadmapError {run_dir / 'summary.json'}: not JSON" in out for out in outs), outs


def test_the_time_left_is_extrapolated_from_the_work_done():
    from convnext_roadmap.executors.local import _progress

    # a quarter of the work in 5 minutes: 15 minutes left, whatever the number of jobs behind it
    assert _progress(6, 24, done=25.0, total=100.0, elapsed=300) == "  [6/24, about 15 min left]"
    assert _progress(24, 24, done=100.0, total=100.0, elapsed=1200) == ""


def _fake(bin_dir, name, code, out="", err=""):
    path = bin_dir / name
    path.write_text(f"#!/bin/sh\nprintf '{out}'\nprintf '{err}' >&2\nexit {code}\n")
    path.chmod(0o755)


def test_a_scheduler_that_does_not_answer_is_not_one_whose_jobs_ended(tmp_path, monkeypatch):
    from convnext_roadmap import results
    from convnext_roadmap.executors import records as job_records
    from convnext_roadmap.executors import SchedulerSilent
    from convnext_roadmap.executors.slurm import Slurm

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _fake(bin_dir, "sacct", 1, err="sacct: error: Problem talking to the database: Connection refused\\n")
    _fake(bin_dir, "squeue", 0, out="7_0|RUNNING|1:00|None\\n")
    _fake(bin_dir, "sbatch", 0)  # the whole scheduler stood in: the test needs no SLURM on this machine
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    exp = tmp_path / "exp"
    run = exp / "gelu" / "seed0"
    run.mkdir(parents=True)
    record = {"job_id": "7_0", "name": "gelu", "seed": 0, "executor": "slurm", "run_dir": str(run), "stderr": None}
    results.record_jobs(exp, [record])
    with pytest.raises(SchedulerSilent, match="sacct failed: sacct: error: Problem talking to the database"):
        Slurm.states([record])
    # the table's settling marks nothing failed; the wait goes on asking until its bound
    assert job_records.mark_ended_failed(exp)[0].startswith("! sacct failed")
    assert not (run / "summary.json").exists()
    with pytest.raises(RoadmapError, match="--timeout-wait .*stopped waiting with sacct failed"):
        Slurm(exp).wait([record], timeout_min=0.001, poll_s=0.01)
    # a job SLURM no longer knows (squeue: invalid id, exit 1; sacct: nothing) is UNKNOWN, which has ended
    _fake(bin_dir, "sacct", 0)
    _fake(bin_dir, "squeue", 1, err="slurm_load_jobs error: Invalid job id specified\\n")
    assert Slurm.states([record])["7_0"].state == "UNKNOWN"


def test_the_root_cause_in_a_jobs_log_is_not_a_warning(tmp_path):
    from convnext_roadmap.executors.records import last_error_line

    log = tmp_path / "job.err"
    log.write_text("WARNING:convnext_roadmap.data.pil:skipping image a.png, unreadable (UnidentifiedImageError: "
                   "cannot identify image file)\n"
                   "slurmstepd: error: *** JOB 12 ON node1 CANCELLED AT 2026-11-29T10:00:00 DUE TO TIME LIMIT ***\n"
                   "WARNING:convnext_roadmap.data.pil:skipping image b.png, unreadable (UnidentifiedImageError)\n")
    assert last_error_line(str(log)).startswith("slurmstepd: error: *** JOB 12 ON node1 CANCELLED")


def _no_process_left(experiment, within_s: float) -> bool:
    """Whether, within that many seconds, no process of this machine names the experiment's folder (a launch's
    workers have it in their command line)."""
    import time
    from pathlib import Path

    def processes():
        mine = []
        for proc in Path("/proc").glob("[0-9]*"):
            try:
                if str(experiment).encode() in (proc / "cmdline").read_bytes():
                    mine.append(proc.name)
            except OSError:
                pass
        return mine

    deadline = time.time() + within_s
    while processes() and time.time() < deadline:
        time.sleep(0.2)
    return processes() == []


@pytest.mark.parametrize("sigint", ["handled", "ignored"])
def test_a_killed_local_run_takes_its_jobs_with_it_and_resumes(tmp_path, sigint):
    import signal
    import subprocess
    import sys
    import time

    # "ignored": as a command started in a script's background (`roadmap run … &`) is, and its children would be
    ignore = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sigint == "ignored" else None

    data = make_imagefolder(tmp_path / "data")
    args = [sys.executable, "-m", "convnext_roadmap.cli", "run", "--steps", "resnet50", "--recipe", "smoke",
            "--set", "train.epochs=5000", "--set", "train.batch_size=4", "--seeds", "1", "--data",
            f"imagefolder:{data}", "--results", str(tmp_path / "r"), "--experiment", "k", "--executor", "local"]
    first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=ignore)
    run = tmp_path / "r" / "k" / "resnet50" / "seed0"
    deadline = time.time() + 300  # planning, a job's start and one epoch; minutes where CI's machine is busy
    while not (run / "checkpoint.pt").exists() and time.time() < deadline and first.poll() is None:
        time.sleep(0.2)
    first.send_signal(signal.SIGTERM)
    code = first.wait(timeout=60)
    assert (run / "checkpoint.pt").exists(), f"no checkpoint to resume from; the run said:\n{first.stdout.read()}"
    assert code == 143

    assert _no_process_left(tmp_path / "r" / "k", 60)  # no job left training behind the killed command
    again = subprocess.run([*args, "--dry-run"], capture_output=True, text=True, timeout=120)
    assert "seed0: resume" in again.stdout, again.stdout  # from its checkpoint, next time


def test_ctrl_c_at_the_terminal_stops_a_local_launchs_runs_each_after_it_saved_its_place(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    import torch

    data = make_imagefolder(tmp_path / "data")
    # the per-image pipeline with loader workers, which must neither die of the signal nor keep their process alive
    args = [sys.executable, "-m", "convnext_roadmap.cli", "run", "--steps", "resnet50", "--recipe", "smoke",
            "--set", "train.epochs=5000", "--set", "train.batch_size=4", "--set", "data.pipeline=pil", "--set",
            "data.workers=2", "--seeds", "1", "--data", f"imagefolder:{data}", "--results", str(tmp_path / "r"),
            "--experiment", "k", "--executor", "local"]
    # a session of its own: its process group is what a terminal's Ctrl-C reaches, the launch and every worker
    first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
    run = tmp_path / "r" / "k" / "resnet50" / "seed0"
    deadline = time.time() + 300
    while not (run / "checkpoint.pt").exists() and time.time() < deadline and first.poll() is None:
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGINT)
    stopped_at = time.time()
    said = first.communicate(timeout=180)[0]
    assert "save their runs' places" in said, said
    assert time.time() - stopped_at < 60  # the worker ended after its save, not killed after the launch's grace
    assert _no_process_left(tmp_path / "r" / "k", 60)
    # the workers ignore the terminal's SIGINT (submitit's controller would kill them a second later); the launch
    # stops them with SIGTERM, which each holds until its step's end and its save
    log = "".join(p.read_text() for p in (tmp_path / "r" / "k" / "local").glob("*/*_log.out"))
    assert "SIGTERM: the run stops after this step, its place saved" in log and "SIGINT:" not in log
    saved = torch.load(run / "checkpoint.pt", weights_only=False)
    stopped = re.search(r"saved in epoch (\d+) at batch (\d+)/7: the run stops|the run stops after epoch (\d+)", log)
    assert stopped, log
    if stopped[1]:  # in an epoch's middle
        assert saved["epoch"] + 2 == int(stopped[1]) and saved["places"][0]["batch"] == int(stopped[2])
    else:
        assert saved["epoch"] + 1 == int(stopped[3]) and saved["places"] is None
    again = subprocess.run([*args, "--dry-run"], capture_output=True, text=True, timeout=120)
    assert "seed0: resume" in again.stdout, again.stdout


def test_a_local_launch_that_resumes_a_run_prints_only_the_epochs_it_trains(tmp_path, capsys):
    from convnext_roadmap import resolve_config
    from convnext_roadmap.job import Job
    from convnext_roadmap.train import run_job

    data = make_imagefolder(tmp_path / "data")
    cfg = resolve_config("resnet50", recipe="smoke", data=f"imagefolder:{data}", overrides=["train.epochs=3"])
    run = tmp_path / "r" / "e" / "resnet50" / "seed0"
    assert run_job(Job(run_dir=str(run), name="resnet50", cfg=cfg.model_dump(), seed=0, device="cpu",
                       stop_after=1))["status"] == "interrupted"  # an earlier attempt: epoch 1, a checkpoint
    capsys.readouterr()
    assert main(["run", "--steps", "resnet50", "--recipe", "smoke", "--set", "train.epochs=3", "--seeds", "1",
                 "--data", f"imagefolder:{data}", "--results", str(tmp_path / "r"), "--experiment", "e",
                 "--executor", "local"]) == 0
    out = capsys.readouterr().out
    assert "resnet50 seed0: goes on from its checkpoint (1 epoch(s) done)" in out
    assert "resnet50 seed0: epoch 1/3" not in out and "resnet50 seed0: epoch 2/3" in out


def test_a_controller_that_does_not_answer_is_not_an_unknown_partition(tmp_path, monkeypatch, capsys):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _fake(bin_dir, "sbatch", 0)
    # what sinfo says with munge or slurmctld down; of an unknown partition it says nothing, exit 0
    _fake(bin_dir, "sinfo", 1, err="slurm_load_partitions: Protocol authentication error\\n")
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    assert main(["run", "--steps", "resnet50", "--recipe", "smoke", "--executor", "slurm", "--dry-run",
                 "--results", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sinfo failed: slurm_load_partitions: Protocol authentication error" in err
    assert "no such partition" not in err
    _fake(bin_dir, "sinfo", 0)
    assert main(["run", "--steps", "resnet50", "--recipe", "smoke", "--executor", "slurm", "--dry-run",
                 "--results", str(tmp_path / "r")]) == 2
    assert "partition: the default partition: sinfo knows no such partition" in capsys.readouterr().err


def test_a_finished_runs_line_says_when_it_had_not_levelled_off(tmp_path):
    from convnext_roadmap.executors.records import outcome_line
    from convnext_roadmap.job import Job

    job = Job(run_dir=str(tmp_path), name="widen", cfg={}, seed=1)
    summary = {"status": "completed", "final_top1": 52.04, "best_top1": 54.4, "gflops_224": 4.2, "params": 28.6e6,
               "levelled_off": False, "last_epochs_below_best": 1.9}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    assert outcome_line(job, 71.2) == ("✓ widen seed1: top-1 52.0% (best 54.4), 4.20 GFLOPs at 224², 28.6 M params, "
                                       "71 s; not levelled off (its last epochs 1.9 below its best)")
    (tmp_path / "summary.json").write_text(json.dumps({**summary, "levelled_off": True}))
    assert outcome_line(job, 71.2).endswith("28.6 M params, 71 s")


@pytest.mark.parametrize("device, backend, gpu", [("auto", "nccl", 1), ("cuda", "nccl", 1), ("cpu", "gloo", None)])
def test_a_tasks_rank_takes_its_gpu_among_those_it_sees_and_the_backend_of_its_device(monkeypatch, device, backend,
                                                                                      gpu):
    # local rank 3 of a task that sees 2 GPUs (SLURM binding each pair of tasks to its GPUs): GPU 3 % 2 = 1; a job
    # told --device cpu trains on gloo even where CUDA is
    import datetime
    from types import SimpleNamespace

    import submitit

    from convnext_roadmap.executors.injob import process_group

    calls = {}
    monkeypatch.setattr(submitit, "JobEnvironment", lambda: SimpleNamespace(num_tasks=4))
    monkeypatch.setattr(submitit.helpers, "TorchDistributedEnvironment",
                        lambda: SimpleNamespace(export=lambda **kw: SimpleNamespace(local_rank=3)))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.setdefault("gpu", torch.device(d).index))
    monkeypatch.setattr(torch.distributed, "init_process_group",
                        lambda name, timeout: calls.setdefault("backend", (name, timeout)))
    monkeypatch.setattr(torch.distributed, "destroy_process_group", lambda: calls.setdefault("destroyed", True))
    with process_group(device) as distributed:
        assert distributed
    assert calls == {"backend": (backend, datetime.timedelta(minutes=10)), "destroyed": True,
                     **({"gpu": gpu} if gpu is not None else {})}


@pytest.mark.parametrize("launch, positions, want", [
    (None, "1", "1"),  # the launch saw every GPU: submitit's numbers are the GPUs'
    ("4,5,6,7", "1", "5"),  # the second slot of a launch given GPUs 4-7 trains on GPU 5, not on GPU 1
    ("4,5,6,7", "2,3", "6,7"),
    ("GPU-8f1e,GPU-77a2,MIG-5c3d", "2", "MIG-5c3d"),  # UUIDs and MIG instances kept as they were given
    ("4,5", "", ""),  # a CPU worker sees no GPU
])
def test_a_local_worker_gets_its_gpus_from_the_launchs_own_list(launch, positions, want):
    from convnext_roadmap.executors.injob import slot_gpus

    assert slot_gpus(launch, positions) == want


def test_a_gpu_number_is_refused_where_each_worker_sees_only_its_own(tmp_path, monkeypatch):
    from convnext_roadmap.errors import RoadmapError
    from convnext_roadmap.executors.local import Local

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")  # the launch's GPUs: its cuda:1 is GPU 5
    local = Local(tmp_path)
    local.check("cuda")
    with pytest.raises(RoadmapError, match=r"^--device cuda:1: each local worker sees only its own GPU\(s\).*"
                                           r"CUDA_VISIBLE_DEVICES=5 and --device cuda.*--executor inprocess"):
        local.check("cuda:1")
    # NCCL takes one rank per GPU: two ranks on one GPU would fail inside it, after the start
    with pytest.raises(RoadmapError, match=r"^--tasks-per-job 4: with GPUs, a job has one process per GPU "
                                           r"\(--gpus-per-job 2\)"):
        Local(tmp_path, gpus_per_job=2, tasks_per_job=4)


def test_a_launch_killed_outright_stops_its_workers_and_the_next_ends_as_a_straight_run(tmp_path):
    # SIGKILL (the OOM killer, a lost login node) gives the launch no chance to stop its workers: they stop
    # themselves, and the next launch resumes the run from its checkpoint
    import signal
    import subprocess
    import sys
    import time

    from convnext_roadmap.results import read_metrics

    data = make_imagefolder(tmp_path / "data")
    request = ["run", "--steps", "resnet50", "--recipe", "smoke", "--set", "train.epochs=24", "--set",
               "train.batch_size=4", "--seeds", "1", "--data", f"imagefolder:{data}", "--results", str(tmp_path / "r"),
               "--executor", "local"]
    launch = [sys.executable, "-m", "convnext_roadmap.cli", *request, "--experiment", "killed"]
    first = subprocess.Popen(launch, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    run = tmp_path / "r" / "killed" / "resnet50" / "seed0"
    deadline = time.time() + 300
    while not (run / "checkpoint.pt").exists() and time.time() < deadline and first.poll() is None:
        time.sleep(0.1)
    first.send_signal(signal.SIGKILL)
    assert first.wait(timeout=30) == -signal.SIGKILL
    assert (run / "checkpoint.pt").exists() and not (run / "summary.json").exists(), first.stdout.read()

    assert _no_process_left(tmp_path / "r" / "killed", 30)
    assert not (run / "summary.json").exists()  # a worker left training would have finished the run (~5 s)
    again = subprocess.run(launch, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout
    logs = "".join(p.read_text() for p in (tmp_path / "r" / "killed" / "local").rglob("*.out"))
    assert "has ended without stopping this worker: it stops now" in logs  # the first launch's worker
    assert "resuming resnet50 seed0 after epoch" in logs  # the second's
    assert subprocess.run([sys.executable, "-m", "convnext_roadmap.cli", *request, "--experiment", "straight"],
                          capture_output=True, timeout=300).returncode == 0
    resumed, straight = read_metrics(run), read_metrics(tmp_path / "r" / "straight" / "resnet50" / "seed0")
    assert [m["epoch"] for m in resumed] == list(range(1, 25))
    for a, b in zip(straight, resumed):
        assert (a["train_loss"], a["val_loss"], a["top1"]) == pytest.approx((b["train_loss"], b["val_loss"], b["top1"]),
                                                                          abs=1e-6)

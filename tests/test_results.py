"""The result store: atomic writes, one owner per run folder, and reading back an experiment that is damaged or
half finished."""

import json
import os
import subprocess
import sys
import time

import pytest

from convnext_roadmap import RoadmapError, results
from convnext_roadmap.experiment import Experiment
from convnext_roadmap.plan import save


def test_a_write_that_fails_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "summary.json"
    results.write_json(path, {"status": "completed"})

    def half(f):
        f.write(b'{"status": "fai')
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        results.atomic_write(path, half)
    assert json.loads(path.read_text()) == {"status": "completed"}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_a_damaged_file_is_one_line_naming_it(tmp_path):
    (tmp_path / "summary.json").write_text('{"status": ')
    with pytest.raises(RoadmapError, match=r"summary\.json: not JSON .*changed by hand or damaged"):
        results.read_json(tmp_path / "summary.json")
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\n{"epo\n')
    with pytest.raises(RoadmapError, match=r"metrics\.jsonl: line 2: not JSON"):
        results.read_metrics(tmp_path)
    (tmp_path / "jobs.json").write_text('{"jobs": [{"name": "a"}]}')
    with pytest.raises(RoadmapError, match=r"jobs\.json: not a list of job records"):
        results.read_jobs(tmp_path)
    assert results.read_json(tmp_path / "absent.json") is None


def _experiment(tmp_path, seeds=(0, 1)):
    save(tmp_path, "resnet50", "cpu_proxy", list(seeds),
         [{"name": n, "label": n, "baseline": b, "group": "path", "gflops": 4.0, "params": 25e6}
          for n, b in (("resnet50", None), ("stage_ratio", "resnet50"))])
    return tmp_path


def test_a_half_finished_experiment_reads_back_with_every_cells_status(tmp_path):
    exp = _experiment(tmp_path)
    done = results.run_dir(exp, "resnet50", 0)
    done.mkdir(parents=True)
    results.write_json(done / "summary.json", {"status": "completed", "final_top1": 61.0, "train_img_s": 100.0})
    results.write_failure(results.run_dir(exp, "resnet50", 1), "resnet50", 1, "RuntimeError: CUDA out of memory")
    stopped = results.run_dir(exp, "stage_ratio", 0)
    stopped.mkdir(parents=True)
    (stopped / "metrics.jsonl").write_text('{"epoch": 1, "top1": 20.0}\n')  # stage_ratio seed1: nothing at all
    read = Experiment.load(exp)
    assert [(c["name"], c["seed"], c["status"]) for c in read.cells] == [
        ("resnet50", 0, "completed"), ("resnet50", 1, "failed"), ("stage_ratio", 0, "interrupted"),
        ("stage_ratio", 1, "missing")]
    assert read.baselines == {"resnet50": None, "stage_ratio": "resnet50"}
    assert read.top1_by_seed() == {"resnet50": {0: 61.0}}
    table = read.table().set_index("step")
    assert table.loc["resnet50", "seeds"] == "1/2" and table.loc["resnet50", "seeds_done"] == 1
    assert table.loc["resnet50", "status"] == "completed, failed"
    assert table.loc["resnet50", "error"] == "RuntimeError: CUDA out of memory"  # the root cause reaches the table
    assert table.loc["stage_ratio", "seeds_done"] == 0 and table.loc["stage_ratio", "status"] == "interrupted, missing"
    assert table.loc["resnet50", "paper_top1"] == 78.82  # Table 10's printed row (results/paper_reference.csv)


def test_a_damaged_summary_stops_the_read_with_its_path(tmp_path):
    exp = _experiment(tmp_path, seeds=(0,))
    run = results.run_dir(exp, "stage_ratio", 0)
    run.mkdir(parents=True)
    (run / "summary.json").write_text("[1, 2]")
    with pytest.raises(RoadmapError, match=r"stage_ratio/seed0/summary\.json: not a JSON object"):
        Experiment.load(exp)
    (exp / "plan.json").write_text('{"runs": 3}')
    with pytest.raises(RoadmapError, match=r"plan\.json: not a plan"):
        Experiment.load(exp)


def test_the_figures_arrows_come_from_what_each_run_is_compared_with():
    from convnext_roadmap.results import compared_with

    def arrows(names, baselines):
        return [(start, end) for end, start in compared_with(names, baselines).items() if start is not None]

    path = {"resnet50": None, "stage_ratio": "resnet50", "patchify_stem": "stage_ratio"}
    assert arrows(list(path), path) == [("resnet50", "stage_ratio"), ("stage_ratio", "patchify_stem")]
    left_out = {"large_kernel": None, "no_widen": "large_kernel", "no_gelu": "large_kernel"}
    assert arrows(list(left_out), left_out) == [("large_kernel", "no_widen"), ("large_kernel", "no_gelu")]
    # --steps resnet50,layer_scale: layer_scale's baseline is not there, so from the row before; a reference: none
    picked = {"resnet50": None, "layer_scale": "split_downsampling", "convnext_small": None}
    assert arrows(list(picked), picked) == [("resnet50", "layer_scale")]


def test_one_owner_per_run_folder(tmp_path, monkeypatch):
    from convnext_roadmap.results import LOCK, RunLock, lock_holder

    run = tmp_path / "gelu" / "seed0"
    first = RunLock(run)
    assert first.acquire() is None
    assert RunLock(run).acquire()["pid"] == os.getpid()  # held by a live process: refused, with who holds it
    first.release()
    assert not (run / LOCK).exists()

    def plant(**holder):
        run.mkdir(parents=True, exist_ok=True)
        (run / LOCK).write_text(json.dumps({"host": "elsewhere", "pid": 1, "slurm_job": None, "restart": 0,
                                            **holder}))

    # a lock left by a process that has ended (its pid gone on this host) is no lock, and is taken over
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    for pid in (int(dead), 2 ** 22 + 12345):
        plant(host=__import__("socket").gethostname(), pid=pid)
        assert lock_holder(run) is None
        lock = RunLock(run)
        assert lock.acquire() is None and json.loads((run / LOCK).read_text())["pid"] == os.getpid()
        lock.release()
    plant()
    os.utime(run / LOCK, (time.time() - 1000, time.time() - 1000))  # not refreshed for longer than STALE_S
    lock = RunLock(run)
    assert lock.acquire() is None
    lock.release()
    # the same SLURM job: after a requeue (its restart count grew) the lock is ours; beside it in the same
    # allocation (same count), another process's
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    plant(slurm_job="77")
    assert RunLock(run).acquire()["host"] == "elsewhere" and lock_holder(run)["slurm_job"] == "77"
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    lock = RunLock(run)
    assert lock.acquire() is None and json.loads((run / LOCK).read_text())["restart"] == 1
    lock.release()

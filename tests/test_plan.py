"""plan.py: which jobs run, conflicts with what is on disk or queued, --force, a run asked for again, the dry run."""

import json

import pytest

from convnext_roadmap.executors import records as job_records
from convnext_roadmap.cli import main
from convnext_roadmap.executors import JobState, SchedulerSilent
from convnext_roadmap.loading import read_config
from convnext_roadmap.plan import pending
from convnext_roadmap.results import read_metrics
from convnext_roadmap.job import Job

from conftest import SMOKE, make_imagefolder


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_imagefolder(tmp_path_factory.mktemp("data"))


def _job(name, seed=0):
    return Job(run_dir=f"/r/{name}/seed{seed}", name=name, cfg={}, seed=seed)


def test_pending_is_a_pure_choice():
    jobs = [_job("a"), _job("b"), _job("c"), _job("c", 1)]
    todo, skipped = pending(jobs, finished={("a", 0)}, live={("b", 0): "running already (job 7)"}, force=False)
    assert [(j.name, j.seed) for j in todo] == [("c", 0), ("c", 1)]
    assert skipped == ["= a seed0: done already (/r/a/seed0)", "= b seed0: running already (job 7)"]
    todo, _ = pending(jobs, finished={("a", 0)}, live={("b", 0): "queued"}, force=True)
    assert [j.name for j in todo] == ["a", "c", "c"]  # forced: a finished run trains again, a live one is left alone


def test_conflicting_config_is_refused_and_force_trains_again(tmp_path, data, capsys):
    base = ["run", "--steps", "resnet50", *SMOKE, "--data", f"imagefolder:{data}", "--results", str(tmp_path),
            "--experiment", "c"]
    assert main(base) == 0
    run = tmp_path / "c" / "resnet50" / "seed0"
    first = json.loads((run / "summary.json").read_text())
    capsys.readouterr()
    assert main([*base, "--set", "block.kernel_size=5"]) == 2
    err = capsys.readouterr().err
    assert "config.yaml: this run was made with another config (block.kernel_size: 3 → 5)" in err
    assert json.loads((run / "summary.json").read_text()) == first  # nothing touched
    assert main([*base, "--set", "block.kernel_size=5", "--force"]) == 0
    again = json.loads((run / "summary.json").read_text())
    assert "kernel_size: 5" in (run / "config.yaml").read_text() and again["wall_s"] != first["wall_s"]
    assert [m["epoch"] for m in read_metrics(run)] == [1, 2]
    # --force of seed0 alone under a third config would leave seed1 on the second: one row, two networks
    assert main([*base, "--set", "block.kernel_size=5", "--seeds", "2"]) == 0
    capsys.readouterr()
    assert main([*base, "--set", "block.kernel_size=7", "--force"]) == 2
    err = capsys.readouterr().err
    assert "seed1 of resnet50 was made with another config (block.kernel_size: 5 → 7)" in err
    assert "kernel_size: 5" in (run / "config.yaml").read_text()  # nothing touched


def _trained_config(base, tmp_path):
    """The config a request of `base` trains, as its run wrote it (experiment x)."""
    assert main([*base, "--experiment", "x"]) == 0
    return read_config(tmp_path / "x" / "resnet50" / "seed0" / "config.yaml")


def test_a_seed_queued_under_another_config_binds_the_run(tmp_path, data, capsys, monkeypatch):
    """A job that waits in the queue has written nothing in its run's folder yet: the config kept with it in
    jobs.json is what a later request must agree with, or the row would average two networks."""
    base = ["run", "--steps", "resnet50", *SMOKE, "--data", f"imagefolder:{data}", "--results", str(tmp_path)]
    cfg = _trained_config(base, tmp_path).model_dump()
    del cfg["train"]["sched"]  # as if queued before the field existed: its default fills in, no difference
    (tmp_path / "q").mkdir()
    record = {"name": "resnet50", "seed": 1, "job_id": "77", "executor": "slurm", "cfg": cfg,
              "run_dir": str(tmp_path / "q" / "resnet50" / "seed1"), "stdout": "", "stderr": ""}
    (tmp_path / "q" / "jobs.json").write_text(json.dumps({"jobs": [record]}))
    monkeypatch.setattr(job_records, "states", lambda records: {"77": JobState("PENDING")})
    capsys.readouterr()
    for force in ([], ["--force"]):  # --force trains again what is on disk, never what waits to train
        assert main([*base, "--experiment", "q", "--seeds", "2", "--set", "block.kernel_size=5", *force]) == 2
        err = capsys.readouterr().err
        assert "resnet50 seed1 is pending already (job 77) with another config (block.kernel_size: 3 → 5)" in err
        assert not (tmp_path / "q" / "resnet50").exists()  # nothing written
    assert main([*base, "--experiment", "q", "--seeds", "2"]) == 0  # the same config: seed1 is left to its job
    assert "= resnet50 seed1: pending already (job 77)" in capsys.readouterr().out
    assert json.loads((tmp_path / "q" / "resnet50" / "seed0" / "summary.json").read_text())["status"] == "completed"


def test_only_a_job_that_has_not_ended_binds_by_its_record(tmp_path, data, capsys, monkeypatch):
    """A recorded job that ended binds nothing by its record, even while another process holds its run (that
    holder's config.yaml speaks for it); a record from before jobs.json kept configs binds nothing; and a dry run
    goes on, saying so, when the scheduler does not answer."""
    from convnext_roadmap.results import RunLock

    base = ["run", "--steps", "resnet50", *SMOKE, "--data", f"imagefolder:{data}", "--results", str(tmp_path)]
    old = _trained_config(base, tmp_path).model_dump()
    seed1 = tmp_path / "q" / "resnet50" / "seed1"
    seed1.mkdir(parents=True)
    records = [{"name": "resnet50", "seed": 1, "job_id": "77", "executor": "slurm", "cfg": old,
                "run_dir": str(seed1), "stdout": "", "stderr": ""},
               {"name": "resnet50", "seed": 2, "job_id": "78", "executor": "slurm",  # no cfg: an older version's
                "run_dir": str(tmp_path / "q" / "resnet50" / "seed2"), "stdout": "", "stderr": ""}]
    (tmp_path / "q" / "jobs.json").write_text(json.dumps({"jobs": records}))
    new = (tmp_path / "x" / "resnet50" / "seed0" / "config.yaml").read_text()
    (seed1 / "config.yaml").write_text(new.replace("kernel_size: 3", "kernel_size: 5"))  # what the holder trains
    lock = RunLock(seed1)
    assert lock.acquire() is None
    try:
        monkeypatch.setattr(job_records, "states", lambda records: {"77": JobState("FAILED"),
                                                                  "78": JobState("PENDING")})
        capsys.readouterr()
        assert main([*base, "--experiment", "q", "--seeds", "3", "--set", "block.kernel_size=5"]) == 0
        out = capsys.readouterr().out
        assert "= resnet50 seed1: running in pid" in out and "= resnet50 seed2: pending already (job 78)" in out
    finally:
        lock.release()

    def silent(records):
        raise SchedulerSilent("sacct did not answer")

    monkeypatch.setattr(job_records, "states", silent)
    assert main([*base, "--experiment", "s", "--dry-run"]) == 0
    assert "! sacct did not answer: the dry run does not know which jobs are queued" in capsys.readouterr().out
    assert main([*base, "--experiment", "s"]) == 2 and not (tmp_path / "s" / "plan.json").exists()


def test_a_run_that_failed_before_training_takes_a_fixed_config_without_force(tmp_path, data, capsys):
    base = ["run", "--steps", "resnet50", *SMOKE, "--data", f"imagefolder:{data}", "--results", str(tmp_path),
            "--experiment", "f"]
    assert main([*base, "--set", "train.batch_size=1000"]) == 1  # more than the training images: fails at once
    run = tmp_path / "f" / "resnet50" / "seed0"
    assert json.loads((run / "summary.json").read_text())["status"] == "failed"
    assert not (run / "checkpoint.pt").exists() and "batch_size: 1000" in (run / "config.yaml").read_text()
    capsys.readouterr()
    (run / "skipped.txt").write_text(f"{data}/elsewhere.png\tcannot identify image file\n")  # as other data left
    assert main([*base, "--set", "train.batch_size=4"]) == 0  # nothing was trained under the old config
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["skipped_images"] == 0  # not the first attempt's
    assert "batch_size: 4" in (run / "config.yaml").read_text() and not (run / "skipped.txt").exists()


def test_a_run_asked_for_again_keeps_its_place_and_its_baseline(tmp_path, data):
    from convnext_roadmap.plan import save

    rows = [{"name": n, "baseline": b} for n, b in (("resnet50", None), ("stage_ratio", "resnet50"))]
    save(tmp_path, "resnet50", "smoke", [0, 1], rows)
    save(tmp_path, "resnet50", "smoke", [2], [{"name": "gelu", "baseline": None}, {"name": "resnet50",
                                                                                   "baseline": None}])
    save(tmp_path, "resnet50", "smoke", [0], [{"name": "stage_ratio", "baseline": None}])
    runs = json.loads((tmp_path / "plan.json").read_text())["runs"]
    assert [(r["name"], r["baseline"], r["seeds"]) for r in runs] == [
        ("resnet50", None, [0, 1, 2]), ("stage_ratio", "resnet50", [0, 1]), ("gelu", None, [2])]


def test_the_dry_run_shows_each_change_against_the_run_it_is_measured_against(tmp_path, data, capsys):
    assert main(["run", "--upto", "large_kernel", "--leave-one-out", *SMOKE, "--data", f"imagefolder:{data}",
                 "--results", str(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    # leaving out the patchify stem brings back ResNet's 7×7/2 stem and its max pool, and nothing else
    # (against the row before, it would also show stage_ratio's depths coming back)
    line = out.split("no_patchify_stem", 1)[1].splitlines()[1].strip()
    assert line == ("against large_kernel: stem.act: none → relu; stem.kernel_size: 4 → 7; stem.pool: none → max; "
                    "stem.stride: 4 → 2")
    line = out.split("no_inverted_bottleneck", 1)[1].splitlines()[1].strip()
    assert line == "against large_kernel: no change in the network"
    # --steps leaving a run's baseline out: compared with the row before, not called the start
    assert main(["run", "--steps", "resnet50,stage_ratio,large_kernel", *SMOKE, "--data", f"imagefolder:{data}",
                 "--results", str(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    # the paper's steps from patchify stem to 7×7 kernels, composed
    assert out.split("large_kernel ", 1)[1].splitlines()[1].strip() == (
        "block.groups: 1 → depthwise; block.kernel_size: 3 → 7; block.layout: bottleneck → dw_first; "
        "stages.widths: [64, 128, 256, 512] → [96, 192, 384, 768]; stem.act: relu → none; stem.kernel_size: 7 → 4; "
        "stem.pool: max → none; stem.stride: 2 → 4; stem.width: 64 → 96")
    # … and said to have no Δ there: the table's is against the run's own baseline, never the row before
    assert out.split("large_kernel ", 1)[1].splitlines()[2].strip() == (
        "its Δ in the table is against move_up_dwconv, which this request leaves out: none unless the experiment "
        "has it")



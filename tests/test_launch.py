"""Launching without SLURM: submitit's local executor, and the errors before anything is written."""

import json

import pytest

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


def test_no_sbatch_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert main(["run", "--recipe", "smoke", "--executor", "slurm", "--results", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "no sbatch on PATH" in err and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


def test_profile_flags_override_and_unknown_keys_fail(tmp_path):
    p = load_profile("default", {"gpus_per_node": 8, "nodes": 2, "partition": None})
    assert (p.gpus_per_node, p.nodes, p.tasks(), p.timeout_min) == (8, 2, 8, 60)
    bad = tmp_path / "mine.yaml"
    bad.write_text("gpus: 4\n")
    with pytest.raises(RoadmapError, match="mine.yaml: gpus: unknown key"):
        load_profile(str(bad), {})
    with pytest.raises(RoadmapError, match="--nodes: nodes: got 0"):
        load_profile("default", {"nodes": 0})
    with pytest.raises(RoadmapError, match="no such profile"):
        load_profile("hpc9", {})

"""The data package: a run's loaders from its config (make_loaders), and the images a run left out reaching its
summary through loader workers."""

import json

import pytest

from convnext_roadmap.cli import main

from conftest import SMOKE, make_imagefolder


def _run_with_a_bad_image(tmp_path, monkeypatch, pipeline, workers, bad_image):
    """A smoke run of resnet50 on an image folder whose `bad_image` (relative to it) is not an image: (exit code,
    the bad file, the run's folder)."""
    root = make_imagefolder(tmp_path / "d")
    bad = root / bad_image
    bad.write_bytes(b"not a png")
    monkeypatch.setenv("ROADMAP_CACHE", str(tmp_path / "cache"))
    code = main(["run", "--steps", "resnet50", *SMOKE, "--data", f"imagefolder:{root}",
                 "--set", f"data.pipeline={pipeline}", "--set", f"data.workers={workers}",
                 "--results", str(tmp_path / "r"), "--experiment", "e"])
    return code, bad, tmp_path / "r" / "e" / "resnet50" / "seed0"


@pytest.mark.parametrize("pipeline,workers", [("pil", 1), ("tensor", 0)])
def test_a_runs_summary_counts_the_images_it_left_out(tmp_path, monkeypatch, capsys, pipeline, workers):
    # a loader worker is a process of its own: what it skips must still reach the run's summary, once per image
    code, bad, run = _run_with_a_bad_image(tmp_path, monkeypatch, pipeline, workers, "train/dog/3.png")
    assert code == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["skipped_images"] == 1
    assert any("1 image(s) left out" in note for note in summary["notes"])
    assert "1 image(s) left out (skipped.txt)" in capsys.readouterr().out  # the run's line says so too
    lines = (run / "skipped.txt").read_text().splitlines()
    assert {line.split("\t")[0] for line in lines} == {str(bad)}  # two epochs, one image


@pytest.mark.parametrize("pipeline,workers", [("pil", 1), ("tensor", 0)])
def test_an_unreadable_validation_image_fails_the_run_naming_it(tmp_path, monkeypatch, capsys, pipeline, workers):
    # replaced by its neighbour, it would be counted twice in top-1; left out, top-1 would be of another set
    _, bad, run = _run_with_a_bad_image(tmp_path, monkeypatch, pipeline, workers, "val/owl/1.png")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed" and f"{bad}: unreadable (UnidentifiedImageError" in summary["error"], summary

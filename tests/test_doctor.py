"""doctor.py: `roadmap doctor`'s checks, with stood-in GPUs where the logic allows."""

from pathlib import Path

import pytest
import torch

from convnext_roadmap.cli import main


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without CUDA")
def test_doctor_on_cuda_without_a_gpu_is_one_line_exit_2(capsys):
    assert main(["doctor", "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err == "roadmap: error: --device cuda: no CUDA device is available here\n"


def test_doctor_expects_one_run_on_each_visible_gpu(tmp_path, monkeypatch):
    # a machine of two GPUs, stood in for: the executor records what each run saw, the doctor compares
    import json

    from convnext_roadmap import doctor as d

    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the doctor's scratch folder
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-aa,GPU-bb")
    doc = d.Doctor("cpu", None, say=lambda line: None)
    doc.cuda = True
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    seen = {0: "GPU-aa", 1: "GPU-bb"}

    class Pinned:
        def check(self, device):
            pass

        def submit(self, jobs):
            for job in jobs:
                folder = Path(job.run_dir)
                folder.mkdir(parents=True, exist_ok=True)
                (folder / "summary.json").write_text(json.dumps(
                    {"status": "completed", "hardware": {"visible_gpus": seen[job.seed]}}))

    monkeypatch.setattr("convnext_roadmap.executors.make", lambda kind, exp, options: Pinned())
    monkeypatch.setattr(d.plan, "complexities", lambda variants, classes: {v.name: {} for v in variants})
    (line,) = doc.pinned()
    assert line.verdict == "PASS" and "['GPU-aa', 'GPU-bb']" in line.text
    seen[1] = "GPU-aa"  # both runs on one GPU
    (line,) = doc.pinned()
    assert line.verdict == "FAIL"

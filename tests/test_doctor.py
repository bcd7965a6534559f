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


def test_the_data_path_compares_pinned_with_pinned_and_times_the_cpu_only(tmp_path, monkeypatch):
    # on a GPU ours pins its batches (a CPU cost): timm's must pin too, or the ratio favours timm by the pinning;
    # and the GPU finishing its copies while the CPU spins in synchronize is not the input path's CPU time
    import timm.data

    from conftest import make_imagefolder
    from convnext_roadmap import doctor
    from convnext_roadmap.data import pil

    root = make_imagefolder(tmp_path / "imgs", per_class=4)
    clock, asked = [0.0], {}

    class Batches(list):
        def set_epoch(self, epoch):
            pass

    def ours(d, split, val_split, batch, *args):  # what ours costs: 1 s of CPU a pass
        asked["ours"] = args[-1]
        clock[0] += 1.0
        return Batches([None] * (len(split.samples) // batch)), None

    class Timms(list):
        dataset = range(8)

    def timms(*args, **kwargs):
        asked["timm's pin_memory"] = kwargs["pin_memory"]
        clock[0] += 2.0
        return Timms()

    monkeypatch.setattr(pil, "image_loaders", ours)
    monkeypatch.setattr(timm.data, "create_loader", timms)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: clock.__setitem__(0, clock[0] + 100.0))
    monkeypatch.setattr(doctor.time, "process_time", lambda: clock[0])
    per_image_ours, per_image_timms, images = doctor.input_path_cpu_s(f"imagefolder:{root}", torch.device("cuda"), 8)
    assert asked == {"ours": torch.device("cuda"), "timm's pin_memory": True}
    assert (per_image_ours, per_image_timms, images) == (1.0 / 8, 2.0 / 8, 8)  # no synchronize in either

"""preflight.py: every check before anything is written — one line naming the flag, file or key, exit 2, nothing
on disk."""

import os

import pytest
import torch

from convnext_roadmap.cli import main

from conftest import SMOKE, make_imagefolder


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_imagefolder(tmp_path_factory.mktemp("data"))


@pytest.mark.parametrize("extra, words", [
    (["--patch", "gelu", "--leave-one-out"], "not allowed with argument --patch"),
    (["--patch", "gelu", "--sweep", "kernel_size"], "--patch makes one network; it does not combine with --sweep"),
    (["--patch", "gelu", "--steps", "zzz"], "--patch makes one network; it does not combine with --steps"),
    # another executor's option would be ignored without a word
    (["--executor", "inprocess", "--parallel", "4"], "--parallel is for --executor local, not inprocess"),
    (["--executor", "slurm", "--threads-per-job", "2"], "--threads-per-job is for --executor local, not slurm"),
    (["--executor", "local", "--cluster", "local"], "--cluster is for --executor slurm, not local"),
    (["--executor", "local", "--wait", "--timeout-wait", "3"], "--wait is for --executor slurm, not local"),
    (["--executor", "local", "--cpus-per-task", "9"], "--cpus-per-task is for --executor slurm, not local"),
    # the launch's flags are checked before the executor is made (which would say what the machine lacks)
    (["--executor", "local", "--gpus-per-job", "64", "--wait"], "--wait is for --executor slurm, not local"),
    # loader workers beyond the CPUs each process will have, named with what gives it those CPUs
    (["--executor", "local", "--threads-per-job", "2", "--set", "data.pipeline=pil", "--set", "data.workers=3"],
     "--set data.workers=3: data.workers: 3 loader workers per process, but --executor local gives each process "
     "2 CPU(s) (--threads-per-job)"),
    (["--executor", "inprocess", "--set", "data.pipeline=pil", "--set", "data.workers=4096"],
     f"data.workers: 4096 loader workers per process, but this process may use {len(os.sched_getaffinity(0))} "
     f"CPU(s)"),
    pytest.param(["--executor", "local", "--gpus-per-job", "2"], "--gpus-per-job 2: this machine has 0 GPU(s)",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without CUDA")),
])
def test_options_that_cannot_combine_are_one_line_exit_2(tmp_path, data, capsys, extra, words):
    with pytest.raises(SystemExit) if "allowed" in words else _no_raise() as caught:
        code = main(["run", *SMOKE, "--data", f"imagefolder:{data}", "--results", str(tmp_path), "--dry-run",
                     *extra])
    code = caught.value.code if "allowed" in words else code
    err = capsys.readouterr().err
    assert code == 2 and words in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


class _no_raise:
    value = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_a_recipe_sized_for_gpus_on_a_machine_without_one_is_refused_unless_cpu_is_asked(tmp_path, data, capsys,
                                                                                         monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = ["run", "--steps", "resnet50", "--recipe", "paper_in1k", "--seeds", "1", "--data", f"imagefolder:{data}",
            "--results", str(tmp_path), "--dry-run"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("roadmap: error: --device auto: this machine has no CUDA device; but resnet50 trains with "
                          "a recipe sized for GPUs (") and "paper_in1k.yaml: train.needs_gpu)" in err
    assert "or --device cpu to train on the CPU all the same" in err and list(tmp_path.iterdir()) == []
    assert main([*args, "--device", "cpu"]) == 0
    assert main([*args[:3], "--recipe", "cpu_proxy", *args[5:]]) == 0  # the CPU proxy is no GPU recipe


def test_a_step_spacing_needs_a_tracker_and_a_tracker_its_package(monkeypatch):
    import builtins

    from convnext_roadmap import RoadmapError
    from convnext_roadmap.preflight import check_log_flags, check_tracker_installed

    check_log_flags([], None)
    check_log_flags(["tensorboard"], 10)
    check_log_flags(["wandb"], 10, {"project": "p"})
    monkeypatch.setenv("WANDB_MODE", "offline")  # W&B's login: tests/test_trackers.py
    check_tracker_installed(["tensorboard", "wandb"])
    with pytest.raises(RoadmapError, match="--log-every-steps: only with --log tensorboard"):
        check_log_flags([], 10)
    with pytest.raises(RoadmapError, match="--wandb-entity: only with --log wandb"):
        check_log_flags(["tensorboard"], None, {"entity": "me"})
    real = builtins.__import__

    def without_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_tensorboard)
    with pytest.raises(RoadmapError, match=r"pip install 'convnext-roadmap\[tensorboard\]'"):
        check_tracker_installed(["tensorboard"])

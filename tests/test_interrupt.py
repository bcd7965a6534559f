"""A run stopped in the middle of an epoch (a signal, its place saved) and resumed ends as the straight run did."""

import json
import os
import signal

import pytest
import torch

from convnext_roadmap import resolve_config
from convnext_roadmap.job import Job
from convnext_roadmap.results import read_metrics
from convnext_roadmap.train import run_job
from convnext_roadmap.train.interrupt import Interrupted

from conftest import make_imagefolder

TIMES = {"train_img_s", "train_s", "data_s", "epoch_s"}  # how long: not what was trained


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_imagefolder(tmp_path_factory.mktemp("data"))


def _job(tmp_path, data, name, overrides=()):
    # 30 images in batches of 4: 7 batches an epoch; mixup and drop path draw from the global streams, RandAugment
    # and erasing from the loaders'
    cfg = resolve_config("patchify_stem", recipe="smoke", data=f"imagefolder:{data}",
                         overrides=["train.batch_size=4", "train.epochs=3", "train.mixup=0.2", "block.drop_path=0.1",
                                    "data.random_erasing=0.25", *overrides])
    return Job(run_dir=str(tmp_path / name), name="patchify_stem", cfg=cfg.model_dump(), seed=1, device="cpu")


def _signal_at(monkeypatch, batch: int, signum=signal.SIGTERM):
    """Send this process `signum` while its `batch`-th training micro-batch (from 1) is moved to the device,
    before its forward pass: the step it belongs to finishes first."""
    from convnext_roadmap.train import loop

    seen, real = [0], loop.Trainer._to_device

    def to_device(self, x, y):
        seen[0] += self.model.training  # not evaluation's
        if seen[0] == batch and self.model.training:
            os.kill(os.getpid(), signum)
        return real(self, x, y)

    monkeypatch.setattr(loop.Trainer, "_to_device", to_device)
    return lambda: monkeypatch.setattr(loop.Trainer, "_to_device", real)


@pytest.fixture
def quiet_sigterm():
    """SIGTERM handled by a handler that returns (as submitit's `bypass` does): the run ends with Interrupted."""
    before = signal.signal(signal.SIGTERM, lambda *_: None)
    yield
    signal.signal(signal.SIGTERM, before)


def _same(straight, resumed):
    a, b = read_metrics(straight), read_metrics(resumed)
    assert [m["epoch"] for m in a] == [m["epoch"] for m in b]
    for x, y in zip(a, b):
        for key in set(x) - TIMES:
            assert x[key] == pytest.approx(y[key], abs=1e-6), (x["epoch"], key)
    wa = torch.load(straight / "checkpoint.pt", weights_only=False)["model"]
    wb = torch.load(resumed / "checkpoint.pt", weights_only=False)["model"]
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], atol=1e-6, rtol=0, msg=key)


@pytest.mark.parametrize("pipeline, accum, positions", [
    # the signal in epoch 2's first batch, in its middle, in the one before its last, and in its last (the run
    # stops at the epoch's end, after its checkpoint)
    ("tensor", 1, (1, 4, 6, 7)),
    ("pil", 1, (3,)),
    # a stop asked in a step's first micro-batch waits for its second: the place saved is a step's end
    ("tensor", 2, (1, 4)),
])
def test_a_run_stopped_in_the_middle_of_epoch_2_and_resumed_ends_as_the_straight_run(
        tmp_path, data, monkeypatch, quiet_sigterm, capsys, pipeline, accum, positions):
    overrides = [f"data.pipeline={pipeline}", f"train.accum_steps={accum}", "data.workers=2"]
    straight = run_job(_job(tmp_path, data, "straight", overrides))
    capsys.readouterr()
    for at in positions:
        run = tmp_path / f"stopped{at}"
        undo = _signal_at(monkeypatch, 7 + at)  # epoch 1's 7 batches, then epoch 2's `at`-th
        with pytest.raises(Interrupted):
            run_job(_job(tmp_path, data, run.name, overrides))
        undo()
        saved = torch.load(run / "checkpoint.pt", weights_only=False)
        out = capsys.readouterr().out
        step_end = -(-at // accum) * accum  # the end of the step whose micro-batch got the signal
        if step_end < 7:
            assert saved["epoch"] == 0 and [p["batch"] for p in saved["places"]] == [step_end]
            assert f"saved in epoch 2 at batch {step_end}/7: the run stops" in out
        else:
            assert saved["epoch"] == 1 and saved["places"] is None
        assert [m["epoch"] for m in read_metrics(run)] == [1, 2][:saved["epoch"] + 1]
        resumed = run_job(_job(tmp_path, data, run.name, overrides))
        out = capsys.readouterr().out
        if step_end < 7:
            assert f"resuming patchify_stem seed1 in epoch 2/3 at batch {step_end}/7" in out
            assert read_metrics(run)[1]["resumed_at_batch"] == step_end and read_metrics(run)[1]["batches"] == 7
            assert f"resumed at batch {step_end}/7" in out.split("epoch 2/3  loss")[1].splitlines()[0]
        else:
            assert "resuming patchify_stem seed1 after epoch 2/3" in out
        _same(tmp_path / "straight", run)
        assert resumed["final_top1"] == straight["final_top1"]
        [resume] = resumed["resumes"]
        assert (resume["epoch"], resume["batch"] % 7, resume["batches"]) == (2 + saved["epoch"], step_end % 7, 7)
        assert resume["lost_s"] < 5


_RANKS = """
import datetime, json, os, signal, sys
import torch.distributed as dist
from convnext_roadmap.job import Job
from convnext_roadmap.train import loop, run_job
from convnext_roadmap.train.interrupt import Interrupted
rank, init, job, at = int(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4])
# handlers that return, as submitit's bypass does on ranks other than 0: the run ends with Interrupted
for signum in (signal.SIGTERM, signal.SIGUSR2):
    signal.signal(signum, lambda n, _: print(f"handed {signal.Signals(n).name} on", flush=True))
dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2, timeout=datetime.timedelta(seconds=120))
seen, real = [0], loop.Trainer._to_device
def to_device(self, x, y):  # SLURM's time-out signal to rank 1 alone, in its `at`-th training batch
    seen[0] += self.model.training
    if rank == 1 and seen[0] == at and self.model.training:
        os.kill(os.getpid(), signal.SIGUSR2)
    return real(self, x, y)
loop.Trainer._to_device = to_device
try:
    print(run_job(Job(**job))["status"])
except Interrupted:
    print("interrupted")
"""


def _ranks(tmp_path, job: Job, tag: str, at: int = 0) -> list[str]:
    """Each rank's output."""
    import dataclasses
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ranks = [subprocess.Popen([sys.executable, "-c", _RANKS, str(rank), f"file://{tmp_path / f'pg-{tag}'}",
                               json.dumps(dataclasses.asdict(job)), str(at)], stdout=subprocess.PIPE, text=True,
                              env=env) for rank in (0, 1)]
    try:
        return [r.communicate(timeout=240)[0] for r in ranks]
    finally:
        for r in ranks:
            r.kill()


def test_two_ranks_stop_at_the_same_batch_when_one_is_signalled_and_resume_exactly(tmp_path, data):
    # 30 images over 2 ranks in batches of 4: 3 batches a rank and epoch. The ranks agree on a stop one step
    # after the step that asked (the wish is all-reduced behind it): signalled in epoch 2's first batch, both
    # save at its second step's end
    overrides = ["train.ema=true", "train.ema_decay=0.5"]
    def ends(outputs):
        return [out.strip().splitlines()[-1] for out in outputs]

    assert ends(_ranks(tmp_path, _job(tmp_path, data, "straight", overrides), "a")) == ["completed", "completed"]
    stopped = _ranks(tmp_path, _job(tmp_path, data, "stopped", overrides), "b", at=4)
    assert ends(stopped) == ["interrupted"] * 2
    # rank 0, which no signal reached, hands on the one rank 1 got (on SLURM: to submitit, which requeues)
    assert all("handed SIGUSR2 on" in out for out in stopped)
    saved = torch.load(tmp_path / "stopped" / "checkpoint.pt", weights_only=False)
    assert saved["epoch"] == 0 and [p["batch"] for p in saved["places"]] == [2, 2]
    assert len(saved["rng"]) == 2 and not torch.equal(saved["places"][0]["loader"]["augment"],
                                                      saved["places"][1]["loader"]["augment"])
    assert ends(_ranks(tmp_path, _job(tmp_path, data, "stopped", overrides), "c")) == ["completed", "completed"]
    _same(tmp_path / "straight", tmp_path / "stopped")


_KILLED_IN_A_SAVE = """
import json, os, signal, sys
import torch
from convnext_roadmap.job import Job
from convnext_roadmap.train import run_job
job, kill_in = json.loads(sys.argv[1]), int(sys.argv[2])
real, saves = torch.save, [0]
def save(obj, f, *args, **kwargs):  # the `kill_in`-th save of a place in an epoch dies half-way through its write
    if isinstance(obj, dict) and obj.get("places"):
        saves[0] += 1
        if saves[0] == kill_in:
            f.write(b"half a checkpoint")
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
    return real(obj, f, *args, **kwargs)
torch.save = save
run_job(Job(**job))
"""


def test_a_process_killed_while_it_saves_resumes_from_the_checkpoint_before(tmp_path, data):
    import dataclasses
    import subprocess
    import sys

    def run(job, kill_in=0):  # each in a process of its own, on one thread: the same floats in all three
        return subprocess.run([sys.executable, "-c", _KILLED_IN_A_SAVE, json.dumps(dataclasses.asdict(job)),
                               str(kill_in)], capture_output=True, text=True, timeout=240,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})

    assert run(_job(tmp_path, data, "straight")).returncode == 0
    # a place saved at every step's end (6 in each epoch of 7 batches): the 9th is epoch 2's third
    job = _job(tmp_path, data, "killed", ["train.checkpoint_every_min=0.000001"])
    killed = run(job, 9)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert "saved in epoch 2 at batch 2/7\n" in killed.stdout
    assert [p.name for p in (tmp_path / "killed").glob(".checkpoint.pt.*")]  # the write cut short
    resumed = run(job)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming patchify_stem seed1 in epoch 2/3 at batch 2/7" in resumed.stdout
    assert not list((tmp_path / "killed").glob(".checkpoint.pt.*"))
    _same(tmp_path / "straight", tmp_path / "killed")
    [resume] = json.loads((tmp_path / "killed" / "summary.json").read_text())["resumes"]
    assert (resume["epoch"], resume["batch"]) == (2, 2) and 0 <= resume["lost_s"] < 60


def test_a_stop_before_training_acts_at_once_one_delivered_twice_is_one_and_an_ignored_one_stays_ignored():
    from convnext_roadmap.train.interrupt import STOP, Breaks

    handed = []
    before = (signal.signal(signal.SIGTERM, lambda n, _: handed.append(n)),
              signal.signal(signal.SIGUSR2, signal.SIG_IGN))
    try:
        with Breaks(0) as breaks:  # not armed: nothing trained, nothing to save
            with pytest.raises(Interrupted, match="before a save"):
                os.kill(os.getpid(), signal.SIGTERM)
        assert handed == [signal.SIGTERM]
        with Breaks(0) as breaks:
            breaks.arm()
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)  # the same stop by a second route (srun and its step): held once
            assert breaks.requested == signal.SIGTERM and handed == [signal.SIGTERM]
            os.kill(os.getpid(), signal.SIGUSR2)  # ignored by this process before: still ignored
            assert breaks.at_step() == STOP + signal.SIGTERM
            breaks.asked_at -= Breaks.REPEAT_S  # a second Ctrl-C, seconds later: no more waiting
            with pytest.raises(Interrupted, match="before a save"):
                os.kill(os.getpid(), signal.SIGTERM)
        assert handed == [signal.SIGTERM] * 2
        with Breaks(0, world=2) as breaks:  # a rank of two (no collective below)
            breaks.armed = True  # as `arm` leaves it (which asks the other ranks first)
            breaks._adopt(STOP + signal.SIGTERM)  # the stop another rank got, from the all-reduce
            os.kill(os.getpid(), signal.SIGTERM)  # this rank's own copy, a moment later: the same stop
            breaks.asked_at -= Breaks.REPEAT_S
            os.kill(os.getpid(), signal.SIGTERM)  # and later again: a rank alone never leaves the others waiting
            assert breaks.requested == signal.SIGTERM and handed == [signal.SIGTERM] * 2
    finally:
        signal.signal(signal.SIGTERM, before[0])
        signal.signal(signal.SIGUSR2, before[1])


def test_a_place_saved_on_another_kind_of_device_begins_its_epoch_again(tmp_path, data, quiet_sigterm, monkeypatch,
                                                                          capsys):
    undo = _signal_at(monkeypatch, 7 + 3)
    with pytest.raises(Interrupted):
        run_job(_job(tmp_path, data, "moved"))
    undo()
    path = tmp_path / "moved" / "checkpoint.pt"
    saved = torch.load(path, weights_only=False)
    for place in saved["places"]:  # as a GPU run's: its loaders' streams include the GPU's noise generator
        place["device"] = "cuda"
    torch.save(saved, path)
    capsys.readouterr()
    resumed = run_job(_job(tmp_path, data, "moved"))
    out = capsys.readouterr().out
    assert ("the checkpoint was saved in the middle of epoch 2 on cuda, this run trains on cpu: the epoch begins "
            "again from its first batch") in out
    assert resumed["status"] == "completed" and [m["epoch"] for m in read_metrics(tmp_path / "moved")] == [1, 2, 3]

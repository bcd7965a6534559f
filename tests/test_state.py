"""train/state.py: a checkpoint restores a run on whatever device it trains on, each rank its own streams."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from convnext_roadmap import rng
from convnext_roadmap.train import state


def _trainer(device, rank=0, world=1):
    model = nn.Linear(4, 2).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    schedule = SimpleNamespace(state_dict=lambda: {}, load_state_dict=lambda s: None)
    return SimpleNamespace(model=model, optimizer=optimizer, scheduler=schedule, ema=None, scaler=None,
                           device=torch.device(device), rank=rank, world=world)


def _checkpoint(tmp_path):
    trainer = _trainer("cpu")
    trainer.model(torch.randn(3, 4)).sum().backward()
    trainer.optimizer.step()
    torch.manual_seed(5)
    saved = state.snapshot(trainer, 0, [], 0.0, state.streams(trainer))
    after = torch.rand(3)  # what the run draws next
    torch.save(saved, tmp_path / "checkpoint.pt")
    return after


@pytest.mark.filterwarnings("ignore:for .* copying from a non-meta parameter:UserWarning")
def test_a_checkpoint_resumes_on_another_device(tmp_path):
    # `meta` stands for a GPU here: whatever belongs on the device goes there, the random streams stay on the CPU
    # (torch.set_rng_state takes only a CPU ByteTensor: loaded onto the device, every resume on CUDA failed)
    after = _checkpoint(tmp_path)
    torch.manual_seed(99)
    trainer = _trainer("meta")
    saved, note = state.resume(trainer, tmp_path / "checkpoint.pt")
    assert note is None and saved["epoch"] == 0
    assert torch.equal(torch.rand(3), after)
    assert next(iter(trainer.optimizer.state.values()))["exp_avg"].device.type == "meta"


def test_each_rank_resumes_its_own_streams_and_another_count_is_said(tmp_path):
    streams = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        streams.append(rng.get_state())
    trainer = _trainer("cpu")
    torch.save(state.snapshot(trainer, 3, [], 0.0, streams), tmp_path / "checkpoint.pt")
    for rank, seed in ((0, 1), (1, 2)):
        torch.manual_seed(seed)
        want = torch.rand(2)
        torch.manual_seed(99)
        state.resume(_trainer("cpu", rank, 2), tmp_path / "checkpoint.pt")
        assert torch.equal(torch.rand(2), want)
    _, note = state.resume(_trainer("cpu", 0, 4), tmp_path / "checkpoint.pt")
    assert note == ("the checkpoint was saved by 2 process(es), this run has 4: ranks 2-3 go on with fresh random "
                    "streams (seed + rank)")
    _, note = state.resume(_trainer("cpu", 0, 1), tmp_path / "checkpoint.pt")
    assert note == "the checkpoint was saved by 2 process(es), this run has 1: the random streams of rank 1 are left"


def test_the_fp16_loss_scale_and_an_earlier_versions_schedule_come_back_from_the_checkpoint(tmp_path):
    from convnext_roadmap.train.schedule import WarmupCosine

    trainer = _trainer("cpu")
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    trainer.scaler.scale(torch.ones(()))  # the scale starts at the first use
    trainer.scaler.update(new_scale=128.0)
    torch.save(state.snapshot(trainer, 0, [], 0.0, state.streams(trainer)), tmp_path / "checkpoint.pt")
    again = _trainer("cpu")
    again.scaler = torch.amp.GradScaler("cpu")
    _, note = state.resume(again, tmp_path / "checkpoint.pt")
    assert again.scaler.get_scale() == 128.0 and note is None
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    saved["scheduler"] = {"t_initial": 1800, "warmup_t": 100}  # timm's CosineLRScheduler's, as it was saved
    torch.save(saved, tmp_path / "checkpoint.pt")
    old = _trainer("cpu")
    old.scheduler = WarmupCosine(old.optimizer, 1800, 100, 0.0, 1e-5)
    _, note = state.resume(old, tmp_path / "checkpoint.pt")
    assert note.startswith("the checkpoint was written under timm's cosine schedule; the run goes on under the "
                           "official one")

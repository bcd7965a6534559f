"""The lr of every optimizer step against the official ConvNeXt schedule, its formula written out here."""

import numpy as np
import pytest
import torch

from convnext_roadmap import resolve_config
from convnext_roadmap.train.schedule import build_schedule


def official(base, final, epochs, niter_per_ep, warmup_epochs=0, start_warmup_value=0):
    # facebookresearch/ConvNeXt, utils.cosine_scheduler, as it reads there
    warmup_schedule = np.array([])
    warmup_iters = warmup_epochs * niter_per_ep
    if warmup_epochs > 0:
        warmup_schedule = np.linspace(start_warmup_value, base, warmup_iters)
    iters = np.arange(epochs * niter_per_ep - warmup_iters)
    schedule = final + 0.5 * (base - final) * (1 + np.cos(np.pi * iters / len(iters)))
    return np.concatenate((warmup_schedule, schedule))


def applied(train, steps_per_epoch, lr):
    """The lr each optimizer step trains with, in both of timm's parameter groups (decay, no decay)."""
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))]},
              {"params": [torch.nn.Parameter(torch.zeros(1))], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=lr)
    schedule = build_schedule(optimizer, train, steps_per_epoch)
    out = []
    for step in range(train.epochs * steps_per_epoch):
        out.append([g["lr"] for g in optimizer.param_groups])
        schedule.step_update(step + 1)  # as the loop does after each optimizer step
    return np.array(out)


@pytest.mark.parametrize("changes, steps_per_epoch, lr", [
    ({}, 312, 4e-3),  # the paper's recipe at ImageNet scale: 300 epochs, 20 of warm-up from 0, lr 4e-3 at 4096
    ({"epochs": 5, "warmup_epochs": 2, "warmup_lr": 1e-4, "min_lr": 1e-5}, 3, 1e-3),
    ({"epochs": 4, "warmup_epochs": 0, "min_lr": 0.0}, 7, 2e-3),
])
def test_the_cosine_is_the_official_schedule_step_by_step(changes, steps_per_epoch, lr):
    train = resolve_config(recipe="paper_in1k", data="synthetic").train.model_copy(update=changes)
    got = applied(train, steps_per_epoch, lr)
    want = official(lr, train.min_lr, train.epochs, steps_per_epoch, train.warmup_epochs, train.warmup_lr)
    assert got.shape == (len(want), 2)
    np.testing.assert_allclose(got[:, 0], want, rtol=1e-12, atol=1e-18)
    np.testing.assert_array_equal(got[:, 0], got[:, 1])


def test_a_resumed_schedule_goes_on_where_it_stopped():
    train = resolve_config(recipe="paper_in1k", data="synthetic").train.model_copy(
        update={"epochs": 6, "warmup_epochs": 2})
    params = [torch.nn.Parameter(torch.zeros(1))]
    first = torch.optim.AdamW(params, lr=1e-3)
    schedule = build_schedule(first, train, 5)
    schedule.step_update(17)  # 17 steps taken, then the checkpoint
    saved = (first.state_dict(), schedule.state_dict())
    again = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    resumed = build_schedule(again, train, 5)
    again.load_state_dict(saved[0])
    resumed.load_state_dict(saved[1])
    assert again.param_groups[0]["lr"] == pytest.approx(official(1e-3, train.min_lr, 6, 5, 2, 0.0)[17], rel=1e-12)

"""Where a run's scalars go besides its own files (`--log`): TensorBoard event files in the run folder, and Weights &
Biases; the same points to each, written by rank 0."""

from __future__ import annotations

from pathlib import Path

import torch

WANDB_ID = "wandb_id"  # in the run folder: the W&B run that a resumed or requeued run goes on writing to
WANDB_PROJECT = "convnext-roadmap"  # when neither --wandb-project nor WANDB_PROJECT names one


class TensorBoard:
    """TensorBoard scalars in the run folder, so that `tensorboard --logdir results/EXP` shows each run and seed."""

    def __init__(self, folder: Path, every: int, **_):
        from torch.utils.tensorboard import SummaryWriter

        self.writer, self.every = SummaryWriter(log_dir=str(folder)), every

    def step(self, step: int, loss: float, lr: float) -> None:
        self.writer.add_scalar("step/train_loss", loss, step)
        self.writer.add_scalar("step/lr", lr, step)

    def epoch(self, metrics: dict) -> None:
        for key, value in _scalars(metrics).items():
            self.writer.add_scalar(f"epoch/{key}", value, metrics["epoch"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandB:
    """A W&B run per (step, seed): named `step/seedN` in the experiment's group, with the run's resolved config. Its
    id is kept in the run folder, so that a resumed run (a requeue, another launch) goes on with the same W&B run.
    Steps and epochs each have their own axis (`optimizer_step`, `epoch`): a resumed run writes again the points
    after its checkpoint, which a single monotonic W&B step would drop."""

    def __init__(self, folder: Path, every: int, job=None, config: dict | None = None, project: str | None = None,
                 entity: str | None = None):
        import os
        import uuid

        import wandb

        from .. import results

        kept = folder / WANDB_ID
        run_id = kept.read_text().strip() if kept.exists() else uuid.uuid4().hex[:12]
        results.write_text(kept, run_id + "\n")
        self.run = wandb.init(
            project=project or os.environ.get("WANDB_PROJECT") or WANDB_PROJECT, entity=entity, id=run_id,
            resume="allow", group=job.meta.get("experiment"), name=f"{job.name}/seed{job.seed}", config=config,
            dir=str(folder), reinit="create_new")  # a local worker trains run after run in one process
        self.run.define_metric("optimizer_step")
        self.run.define_metric("step/*", step_metric="optimizer_step")
        self.run.define_metric("epoch")
        self.run.define_metric("epoch/*", step_metric="epoch")

    def step(self, step: int, loss: float, lr: float) -> None:
        self.run.log({"step/train_loss": loss, "step/lr": lr, "optimizer_step": step})

    def epoch(self, metrics: dict) -> None:
        self.run.log({"epoch": metrics["epoch"], **{f"epoch/{k}": v for k, v in _scalars(metrics).items()}})

    def close(self) -> None:
        self.run.finish()


TRACKERS = {"tensorboard": TensorBoard, "wandb": WandB}


NOT_SCALARS = ("epoch", "resumed_at_batch", "batches")  # the axis; where a resumed epoch went on from


def _scalars(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in NOT_SCALARS and isinstance(v, (int, float))}


class Trackers:
    """The trackers a job asked for (none on ranks other than 0), as one: a training-loss point every `every`
    optimizer steps, every epoch's metrics."""

    def __init__(self, names, folder: Path, every: int, **options):
        self.every, self.open = every, []
        try:
            for name in names:
                self.open.append(TRACKERS[name](folder, every, **options))
        except BaseException:  # the ones already open are closed, not left behind
            self.close()
            raise

    def step(self, step: int, loss: torch.Tensor, lr: float) -> None:
        if self.open and step % self.every == 0:
            value = loss.item()  # waits for the device: once per `every` steps
            for tracker in self.open:
                tracker.step(step, value, lr)

    def epoch(self, metrics: dict) -> None:
        for tracker in self.open:
            tracker.epoch(metrics)

    def close(self) -> None:
        for tracker in self.open:
            tracker.close()

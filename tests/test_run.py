import json
import re

import pandas as pd
import pytest
import torch

from convnext_roadmap import resolve_config
from convnext_roadmap.cli import main
from convnext_roadmap.results import read_metrics
from convnext_roadmap.job import Job
from convnext_roadmap.train import run_job

from conftest import SMOKE, make_imagefolder


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_imagefolder(tmp_path_factory.mktemp("data"))


def test_run_two_steps_end_to_end(tmp_path, data, capsys, monkeypatch):
    from matplotlib.container import BarContainer, ErrorbarContainer

    from convnext_roadmap import plots

    figures = []
    monkeypatch.setattr(plots.plt, "close", figures.append)  # keep each figure to look at
    args = ["run", "--steps", "resnet50,patchify_stem", *SMOKE, "--data", f"imagefolder:{data}",
            "--results", str(tmp_path), "--experiment", "e2e"]
    assert main(args) == 0
    exp = tmp_path / "e2e"
    table = pd.read_csv(exp / "table.csv")
    assert list(table.step) == ["resnet50", "patchify_stem"]
    assert (table.status == "completed").all() and table.top1.notna().all()
    assert table.paper_top1.tolist() == [78.82, 79.51] and table.gflops_224.round(2).tolist() == [4.09, 4.42]
    assert "top-1" in (exp / "table.md").read_text()
    for png in ("figure2.png", "top1_vs_gflops.png", "curves.png"):
        assert (exp / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # what the figures draw, read back from them (in plot_experiment's order) against each step's one seed
    steps = ["resnet50", "patchify_stem"]
    top1 = [json.loads((exp / s / "seed0" / "summary.json").read_text())["final_top1"] for s in steps]
    assert table.top1.tolist() == pytest.approx(top1)
    fig2, vs_flops, curves = figures[:3]
    # Figure 2: a bar per step, top to bottom in roadmap order, as long as its top-1, named as the paper's rows;
    # with one seed there is no interval to draw and no verdict, so no bar is hatched
    ours, paper = fig2.axes[:2]
    (bars,) = [c.patches for c in ours.containers if isinstance(c, BarContainer)]
    assert [b.get_width() for b in bars] == pytest.approx(top1) and [b.get_x() for b in bars] == [0, 0]
    assert [b.get_y() + b.get_height() / 2 for b in bars] == [1, 0]
    assert [t.get_text() for t in ours.get_yticklabels()] == ["ResNet-50", '"patchify" stem']
    assert table.verdict.isna().all() and [b.get_hatch() for b in bars] == [None, None] and not ours.collections
    assert {"4.1 GF", "4.4 GF"} <= {t.get_text() for t in ours.texts}
    # the paper's panel: Table 10's top-1 on the same rows; the patchify stem's +0.15 over the stage ratio is
    # within the paper's own noise (test_stats): an open marker, the other filled
    (marks,) = paper.collections
    assert marks.get_offsets().tolist() == [[78.82, 1], [79.51, 0]]
    assert marks.get_facecolors()[:, :3].tolist() == [[0, 0, 0], [1, 1, 1]]
    # a row whose Δ is within noise is hatched, and only that one
    plots.figure2(table.assign(verdict=[None, "within noise"]), {}, tmp_path / "hatched.png", "t")
    (bars,) = [c.patches for c in figures[-1].axes[0].containers if isinstance(c, BarContainer)]
    assert [b.get_hatch() for b in bars] == [None, "///"] and [b.get_width() for b in bars] == pytest.approx(top1)
    # top-1 against GFLOPs: a point per step at (its GFLOPs, its top-1), named, an arrow from the one before
    (ax,) = vs_flops.axes
    points = [c.lines[0] for c in ax.containers if isinstance(c, ErrorbarContainer)]
    gflops = table.gflops_224.tolist()
    assert [p.get_xdata()[0] for p in points] == pytest.approx(gflops)
    assert [p.get_ydata()[0] for p in points] == pytest.approx(top1)
    arrow, *names = ax.texts
    assert [t.get_text() for t in names] == ["ResNet-50", '"patchify" stem']
    assert [*arrow.xyann, *arrow.xy] == pytest.approx([gflops[0], top1[0], gflops[1], top1[1]])
    # the curves: per step, its run's validation top-1 and training loss at epochs 1 and 2
    acc, loss = curves.axes
    assert [line.get_label() for line in acc.lines] == steps and len(loss.lines) == 2
    for panel, key in ((acc, "top1"), (loss, "train_loss")):
        for line, s in zip(panel.lines, steps):
            metrics = read_metrics(exp / s / "seed0")
            assert list(line.get_xdata()) == [1, 2]
            assert list(line.get_ydata()) == pytest.approx([m[key] for m in metrics])
    run = exp / "patchify_stem" / "seed0"
    summary = json.loads((run / "summary.json").read_text())
    for key in ("final_top1", "best_top1", "gflops_224", "params", "train_img_s", "wall_s", "hardware",
                "git_commit", "versions", "effective_batch", "lr_rule"):
        assert key in summary
    assert [m["epoch"] for m in read_metrics(run)] == [1, 2]
    assert summary["levelled_off"] is None  # two epochs cannot tell
    assert (run / "config.yaml").exists() and (run / "checkpoint.pt").exists() and (run / "best.pt").exists()
    capsys.readouterr()
    assert main(args) == 0  # again: nothing to train
    assert capsys.readouterr().out.count("done already") == 2


def _job(tmp_path, data, name, stop_after=None, overrides=()):
    cfg = resolve_config("patchify_stem", recipe="smoke", data=f"imagefolder:{data}",
                         overrides=["train.batch_size=8", "train.epochs=3", "train.mixup=0.2",
                                    "block.drop_path=0.1", *overrides])
    return Job(run_dir=str(tmp_path / name), name="patchify_stem", cfg=cfg.model_dump(), seed=1,
               device="cpu", stop_after=stop_after)


@pytest.mark.parametrize("amp, pipeline", [("false", "tensor"), ("fp16", "tensor"), ("false", "pil")])
def test_resume_gives_the_same_run(tmp_path, data, amp, pipeline):
    # fp16: its loss scale is in the checkpoint too; pil: two persistent loader workers, started in epoch 1 by the
    # straight run and in epoch 2 by the resumed one, must not shift the network's random draws
    overrides = [f"train.amp={amp}", f"data.pipeline={pipeline}", "data.workers=2"]
    straight = run_job(_job(tmp_path, data, "straight", overrides=overrides))
    assert run_job(_job(tmp_path, data, "resumed", 1, overrides))["status"] == "interrupted"
    assert [m["epoch"] for m in read_metrics(tmp_path / "resumed")] == [1]
    if amp == "fp16":
        scale = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=False)["scaler"]["scale"]
        assert straight["autocast"] == "float16" and scale > 0
    resumed = run_job(_job(tmp_path, data, "resumed", overrides=overrides))
    a, b = read_metrics(tmp_path / "straight"), read_metrics(tmp_path / "resumed")
    assert [m["epoch"] for m in b] == [1, 2, 3]
    for x, y in zip(a, b):
        assert x["train_loss"] == pytest.approx(y["train_loss"], abs=1e-6)
        assert x["top1"] == y["top1"] and x["val_loss"] == pytest.approx(y["val_loss"], abs=1e-6)
    assert straight["final_top1"] == resumed["final_top1"]
    top1 = [m["top1"] for m in a]  # three epochs: whether they levelled off, from the curve by hand
    below = max(top1) - sum(top1) / 3
    assert straight["last_epochs_below_best"] == pytest.approx(below) and straight["levelled_off"] == (below <= 1.5)


def test_a_compiled_run_is_evaluated_compiled_the_model_and_its_ema(tmp_path, data, monkeypatch):
    compiled = []

    class Compiled(torch.nn.Module):  # torch.compile's stand-in: what went through the compiled model, and how
        def __init__(self, model):
            super().__init__()
            self.model, self.calls = model, []
            compiled.append(self)

        def forward(self, x):
            self.calls.append(self.model.training)
            return self.model(x)

    monkeypatch.setattr(torch, "compile", lambda model, **_: Compiled(model))
    job = _job(tmp_path, data, "compiled", overrides=["train.compile=true", "train.ema=true", "train.epochs=1"])
    assert run_job(job)["status"] == "completed"
    model, ema = compiled
    assert True in model.calls and False in model.calls  # trained, then evaluated, through the compiled model
    assert ema.calls and not any(ema.calls)  # the EMA's evaluations through its own


def test_failed_run_is_a_failed_row(tmp_path, data, capsys):
    args = ["run", "--steps", "resnet50", *SMOKE, "--set", "train.batch_size=1000", "--data",
            f"imagefolder:{data}", "--results", str(tmp_path), "--experiment", "broken"]
    assert main(args) == 1
    table = pd.read_csv(tmp_path / "broken" / "table.csv")
    assert table.status.tolist() == ["failed"] and "batch_size" in table.error[0]
    assert "failed" in capsys.readouterr().out


def test_dry_run_writes_nothing(tmp_path, data, capsys):
    assert main(["run", "--upto", "depthwise", *SMOKE, "--data", f"imagefolder:{data}", "--results",
                 str(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "block.groups: 1 → depthwise" in out and "seed0: run" in out and "2.35 GFLOPs" in out
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("extra, words", [
    (["--data", "imagefolder:/no/such/folder"], "no such folder"),
    (["--upto", "kernel7"], "unknown step"),
    (["--recipe", "fast"], "--recipe fast: no such recipe or file"),
    (["--set", "train.epochz=3"], "train.epochz: unknown key"),
    (["--set", "train.epochs=two"], "expected an integer"),
    (["--steps", "resnet50,gelu2"], "unknown gelu2"),
    # checked before anything runs, not by every job in turn
    (["--device", "bogus"], "--device bogus: expected auto, cpu, cuda or cuda:N"),
    (["--device", "mps"], "--device mps: expected auto, cpu, cuda or cuda:N"),
    pytest.param(["--device", "cuda"], "--device cuda: no CUDA device is available here",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without CUDA")),
    (["--set", "data.auto_augment=rand-m9-zz"],
     "--set data.auto_augment=rand-m9-zz: data.auto_augment: got 'rand-m9-zz', whose 'zz' the tensor pipeline"),
    (["--set", "data.pipeline=pil", "--set", "data.auto_augment=zzz"],
     "--set data.auto_augment=zzz: data.auto_augment: got 'zzz', which timm cannot read"),
])
def test_bad_input_writes_nothing(tmp_path, data, capsys, extra, words):
    args = ["run", "--recipe", "smoke", "--data", f"imagefolder:{data}", "--results", str(tmp_path), *extra]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_table_and_plot_commands(tmp_path, data, capsys):
    main(["run", "--steps", "resnet50", *SMOKE, "--data", f"imagefolder:{data}", "--results", str(tmp_path),
          "--experiment", "t"])
    capsys.readouterr()
    assert main(["table", "--results", str(tmp_path), "--format", "md"]) == 0
    out, err = capsys.readouterr()
    assert "| resnet50" in out and "fidelity" not in out and err.startswith("fidelity to the paper: ")
    assert main(["table", "--results", str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("fidelity to the paper: ")
    assert main(["plot", "t", "--results", str(tmp_path)]) == 0
    assert "figure2.png" in capsys.readouterr().out
    assert main(["table", "nope", "--results", str(tmp_path)]) == 2


def test_a_retried_run_does_not_keep_the_failed_attempts_summary(tmp_path):
    from convnext_roadmap import results
    from convnext_roadmap.train.runner import claim as _claim

    run = tmp_path / "gelu" / "seed0"
    results.write_failure(run, "gelu", 0, "RuntimeError: out of memory")
    results.write_text(run / "error.txt", "Traceback …")
    lock = results.RunLock(run)
    assert _claim(run, lock) is None  # ours now: the old failure no longer speaks for the run
    assert not (run / "summary.json").exists() and not (run / "error.txt").exists()
    lock.release()


def test_a_damaged_result_file_is_one_line_naming_it(tmp_path, data, capsys):
    assert main(["run", "--steps", "resnet50", *SMOKE, "--data", f"imagefolder:{data}", "--results", str(tmp_path),
                 "--experiment", "t"]) == 0
    metrics = tmp_path / "t" / "resnet50" / "seed0" / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"epoch": 3, "top1"')
    capsys.readouterr()
    assert main(["table", "t", "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{metrics}: line 3: not JSON" in err  # SMOKE trains 2 epochs
    metrics.write_text(metrics.read_text().rsplit("\n", 1)[0] + "\n")  # the damaged line gone again
    summary = tmp_path / "t" / "resnet50" / "seed0" / "summary.json"
    kept = summary.read_text()
    summary.write_text("[]")
    assert main(["table", "t", "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{summary}: not a JSON object" in err
    summary.write_text('{"status": "completed"')
    assert main(["table", "t", "--results", str(tmp_path)]) == 2
    assert f"{summary}: not JSON" in capsys.readouterr().err
    (tmp_path / "t" / "jobs.json").write_text('{"jobs": [{"name": "resnet50"}]}')
    assert main(["status", "t", "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "jobs.json: not a list of job records" in err
    (tmp_path / "t" / "jobs.json").unlink()
    summary.write_text(kept)
    (tmp_path / "t" / "plan.json").write_text('{"runs": 3}')
    assert main(["plot", "t", "--results", str(tmp_path)]) == 2
    assert "plan.json: not a plan" in capsys.readouterr().err
    (tmp_path / "t" / "plan.json").write_text("[]")
    assert main(["plot", "t", "--results", str(tmp_path)]) == 2
    assert "plan.json: not a JSON object" in capsys.readouterr().err


_DDP = """
import datetime, json, sys
import torch.distributed as dist
from convnext_roadmap.job import Job
from convnext_roadmap.train import run_job
rank, init, job = int(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2, timeout=datetime.timedelta(seconds=120))
print(run_job(Job(**job))["status"])
dist.destroy_process_group()
"""


def _two_ranks(tmp_path, job: Job, tag: str) -> list[str]:
    import dataclasses
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ranks = [subprocess.Popen([sys.executable, "-c", _DDP, str(rank), f"file://{tmp_path / f'pg-{tag}'}",
                               json.dumps(dataclasses.asdict(job))], stdout=subprocess.PIPE, text=True, env=env)
             for rank in (0, 1)]
    try:
        return [r.communicate(timeout=240)[0].strip().splitlines()[-1] for r in ranks]
    finally:
        for r in ranks:
            r.kill()


def test_a_data_parallel_run_resumed_after_a_stop_ends_as_the_straight_one(tmp_path, data):
    # each rank draws its own drop-path masks and mixup pairs: a resume that gave every rank rank 0's streams
    # would train the epochs after it on other draws. The EMA too: every rank evaluates its shard of the
    # validation set with its own EMA, so an EMA started from each rank's own initial weights (before DDP's
    # broadcast) would mix models in ema_* and, resumed from rank 0's saved one, differ from the straight run
    ema = ["train.ema=true", "train.ema_decay=0.5"]
    assert _two_ranks(tmp_path, _job(tmp_path, data, "straight", overrides=ema), "a") == ["completed", "completed"]
    assert _two_ranks(tmp_path, _job(tmp_path, data, "resumed", 1, ema), "b") == ["interrupted", "interrupted"]
    assert len(torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=False)["rng"]) == 2
    assert _two_ranks(tmp_path, _job(tmp_path, data, "resumed", overrides=ema), "c") == ["completed", "completed"]
    a, b = read_metrics(tmp_path / "straight"), read_metrics(tmp_path / "resumed")
    assert [m["epoch"] for m in b] == [1, 2, 3]
    for x, y in zip(a, b):
        for key in ("train_loss", "val_loss", "ema_val_loss"):
            assert x[key] == pytest.approx(y[key], abs=1e-6), key


_FAILING_RANK = """
import datetime, json, sys, time
import torch.distributed as dist
from convnext_roadmap.job import Job
from convnext_roadmap.train import loop, run_job
rank, init, job = int(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2, timeout=datetime.timedelta(seconds=300))
if rank == 1:  # the second optimizer step of epoch 1 fails on rank 1 alone
    calls = iter(range(10**6))
    step = loop.Trainer._step
    def failing(self):
        if next(calls) == 1:
            raise ValueError("rank 1's own failure")
        step(self)
    loop.Trainer._step = failing
try:
    run_job(Job(**job))
except Exception as e:
    print("raised", type(e).__name__, flush=True)
if rank == 1 and sys.argv[4] == "lingers":
    time.sleep(240)  # a failed rank's process that lingers (NCCL's teardown may): its peers must not wait for it
"""


@pytest.mark.parametrize("failed", ["lingers", "exits"])  # exits: rank 0's collective fails at once, of another cause
def test_a_rank_that_fails_ends_its_job_within_a_minute_with_its_cause_in_the_row(tmp_path, data, failed):
    import dataclasses
    import os
    import subprocess
    import sys
    import time

    job = _job(tmp_path, data, "failing")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ranks = [subprocess.Popen([sys.executable, "-c", _FAILING_RANK, str(rank), f"file://{tmp_path / 'pg'}",
                               json.dumps(dataclasses.asdict(job)), failed], stdout=subprocess.PIPE, text=True,
                              env=env)
             for rank in (0, 1)]
    try:
        began = time.time()
        ranks[0].wait(timeout=200)  # gloo's own timeout here is 300 s; NCCL's ours, 10 min
        waited = time.time() - began
    finally:
        for r in ranks:
            r.kill()
    summary = json.loads((tmp_path / "failing" / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["error"] == "rank 1: ValueError: rank 1's own failure", summary
    assert waited < 60 + 30  # a minute after the failure, and the start of two processes before it
    assert "rank 1's own failure" in (tmp_path / "failing" / "error.rank1.txt").read_text()


def test_progress_lines_come_every_log_every_batches_without_a_terminal(tmp_path, data, capsys):
    # a SLURM log has no terminal: the lines must come all the same, each with what a user watches a run for
    assert run_job(_job(tmp_path, data, "logged", overrides=["train.log_every=2"]))["status"] == "completed"
    lines = [ln for ln in capsys.readouterr().out.splitlines() if re.match(r"\s+epoch \d+ batch ", ln)]
    assert [ln.split()[1:4] for ln in lines] == [["1", "batch", "2/3"], ["2", "batch", "2/3"], ["3", "batch", "2/3"]]
    assert all(re.search(r"loss \d+\.\d{3}  lr \d\.\d\de-\d\d  [\d,]+ img/s  data wait \d+%$", ln) for ln in lines)


_BN = """
import datetime, sys
from types import SimpleNamespace
import torch, torch.distributed as dist
from convnext_roadmap.train.loop import Trainer
rank, init = int(sys.argv[1]), sys.argv[2]
dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2, timeout=datetime.timedelta(seconds=60))
model = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 1), torch.nn.BatchNorm2d(2), torch.nn.Flatten(),
                            torch.nn.Linear(2 * 4 * 4, 2))
model[1].running_mean.fill_(1.0 + 2 * rank)  # each rank's statistics of its own images
trainer = Trainer.__new__(Trainer)
trainer.model, trainer.world, trainer.device, trainer.amp, trainer.classes = model, 2, torch.device("cpu"), None, [0, 1]
trainer.cfg = SimpleNamespace(train=SimpleNamespace(channels_last=False))
trainer.val_loader = [(torch.randn(2, 3, 4, 4), torch.tensor([0, 1]))]
trainer.evaluate(model)
print(model[1].running_mean.tolist())
dist.destroy_process_group()
"""


def test_evaluation_under_ddp_takes_the_mean_of_the_ranks_batch_norm_statistics(tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ranks = [subprocess.Popen([sys.executable, "-c", _BN, str(rank), f"file://{tmp_path / 'pg'}"],
                              stdout=subprocess.PIPE, text=True, env=env) for rank in (0, 1)]
    try:
        outs = [r.communicate(timeout=120)[0].strip().splitlines()[-1] for r in ranks]
    finally:
        for r in ranks:
            r.kill()
    assert outs == ["[2.0, 2.0]", "[2.0, 2.0]"]  # (1 + 3) / 2 on both


@pytest.mark.parametrize("pipeline", ["tensor", "pil"])
def test_a_gpu_epoch_reads_the_loss_back_only_every_sync_every_batches(tmp_path, data, monkeypatch, pipeline):
    # each .item() or truth test of a tensor makes the host wait for the GPU: on a terminal the progress bar used
    # to ask for one per batch. The CPU stands in for the GPU here (the flag the loop keys on), with a progress bar
    # on, as on a terminal; pil: the per-image path, erasing on the device, in this process.
    import io

    from tqdm import tqdm

    from convnext_roadmap.train import loop

    cfg = resolve_config("patchify_stem", recipe="smoke", data=f"imagefolder:{data}",
                         overrides=["train.batch_size=2", "train.mixup=0.2", f"data.pipeline={pipeline}",
                                    "data.workers=0", "data.random_erasing=0.5"])
    trainer = loop.Trainer(cfg, 0, torch.device("cpu"))
    trainer.cuda = True
    monkeypatch.setattr(loop, "SYNC_EVERY", 4)
    import sys

    reads, truths = [], []
    item, truth = torch.Tensor.item, torch.Tensor.__bool__

    def ours(kept: list):  # asked for by this project's code: torch's and torchvision's own are CPU tensors
        return "convnext_roadmap" in sys._getframe(2).f_code.co_filename and kept.append(1)

    monkeypatch.setattr(torch.Tensor, "item", lambda t: ours(reads) or item(t))
    monkeypatch.setattr(torch.Tensor, "__bool__", lambda t: ours(truths) or truth(t))
    batches = len(trainer.train_loader)
    with tqdm(total=batches, file=io.StringIO(), disable=False) as bar:
        trainer.train_epoch(0, bar)
    # the bar every 4th batch and the epoch's mean once; the loss's finiteness every 4th batch
    assert batches >= 12 and len(reads) == batches // 4 + 1 and len(truths) == batches // 4

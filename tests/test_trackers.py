"""`--log wandb` (offline: the run files read back) and `--log tensorboard`, also across a stop and its resume."""

import json
import signal
import struct

import pytest

from convnext_roadmap import resolve_config
from convnext_roadmap.cli import main
from convnext_roadmap.job import Job
from convnext_roadmap.results import read_metrics
from convnext_roadmap.train import run_job
from convnext_roadmap.train.interrupt import Interrupted

from conftest import make_imagefolder
from test_interrupt import _signal_at

pytest.importorskip("wandb")


def wandb_records(path):
    """The records of a W&B run file: a 7-byte header (":W&B", magic, version), then LevelDB's log format (32 KiB
    blocks of chunks: crc32c, length, type — full, first, middle, last), each record a protobuf `Record`."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, chunks = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a chunk header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunks += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunks)
            chunks = b""
            yield record


def _read(run_file):
    """(the run record, its config, every history row) of an offline W&B run file."""
    run, rows = None, []
    for r in wandb_records(run_file):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            run = r.run
        elif kind == "history":
            rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item})
    config = {i.key: json.loads(i.value_json) for i in run.config.update}
    return run, config, rows


def test_wandb_offline_holds_the_scalars_and_the_config_and_a_resumed_run_is_the_same_wandb_run(
        tmp_path, monkeypatch, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    data = make_imagefolder(tmp_path / "data")
    cfg = resolve_config("patchify_stem", recipe="smoke", data=f"imagefolder:{data}",
                         overrides=["train.batch_size=4", "train.epochs=3"])
    job = Job(run_dir=str(tmp_path / "exp" / "patchify_stem" / "seed1"), name="patchify_stem", cfg=cfg.model_dump(),
              seed=1, device="cpu", meta={"experiment": "exp"}, log=("wandb", "tensorboard"), log_every_steps=2,
              wandb={"project": "roadmap-test"})
    before = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        undo = _signal_at(monkeypatch, 7 + 3)  # in epoch 2's third batch: saved after it
        with pytest.raises(Interrupted):
            run_job(job)
        undo()
    finally:
        signal.signal(signal.SIGTERM, before)
    run_job(job)
    out = tmp_path / "exp" / "patchify_stem" / "seed1"
    files = sorted(out.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 2  # two attempts, one W&B run
    kept = (out / "wandb_id").read_text().strip()
    attempts = [_read(f) for f in files]
    assert {run.run_id for run, _, _ in attempts} == {kept}
    for run, config, _ in attempts:
        assert (run.run_group, run.display_name, run.project) == ("exp", "patchify_stem/seed1", "roadmap-test")
        assert config["train"]["epochs"] == 3 and config["train"]["batch_size"] == 4
        assert config["block"]["kernel_size"] == cfg.block.kernel_size
    rows = [row for _, _, rs in attempts for row in rs]
    epochs = {row["epoch"]: row for row in rows if "epoch" in row}
    metrics = read_metrics(out)
    assert sorted(epochs) == [1, 2, 3]
    for m in metrics:
        assert epochs[m["epoch"]]["epoch/top1"] == pytest.approx(m["top1"])
        assert epochs[m["epoch"]]["epoch/train_loss"] == pytest.approx(m["train_loss"])
    steps = sorted(row["optimizer_step"] for row in rows if "step/train_loss" in row)
    assert steps == list(range(2, 22, 2))  # 7 steps an epoch, every 2nd, each once: the stop came after step 10
    # TensorBoard beside it: the same epochs' points
    board = EventAccumulator(str(out))
    board.Reload()
    assert [e.value for e in board.Scalars("epoch/top1")] == pytest.approx([m["top1"] for m in metrics])


def test_wandb_asked_without_the_package_is_one_line_before_anything_is_written(tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "wandb", None)  # an import of it fails, as where it is not installed
    data = make_imagefolder(tmp_path / "data")
    assert main(["run", "--steps", "resnet50", "--recipe", "smoke", "--data", f"imagefolder:{data}", "--seeds", "1",
                 "--executor", "inprocess", "--results", str(tmp_path / "r"), "--log", "wandb"]) == 2
    err = capsys.readouterr().err
    assert err == ("roadmap: error: --log wandb: the wandb package is not installed "
                   "(pip install 'convnext-roadmap[wandb]')\n")
    assert not (tmp_path / "r").exists()


def test_wandb_needs_a_login_or_offline_mode_and_finds_them_where_wandb_does(tmp_path, monkeypatch):
    from convnext_roadmap import RoadmapError
    from convnext_roadmap.preflight import check_tracker_installed, wandb_can_log

    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL", "NETRC"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    assert not wandb_can_log()
    with pytest.raises(RoadmapError, match=r"--log wandb: no W&B login here \(run `wandb login`"):
        check_tracker_installed(["wandb"])
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password 0123456789abcdef\n")
    assert wandb_can_log()  # what `wandb login` writes
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org")
    assert not wandb_can_log()  # a key for another server
    (tmp_path / "wandb-config").mkdir()
    (tmp_path / "wandb-config" / "settings").write_text("[default]\nmode = offline\n")  # what `wandb offline` writes
    assert wandb_can_log()
    (tmp_path / "wandb-config" / "settings").write_text("[default]\n")
    monkeypatch.setenv("WANDB_API_KEY", "0123456789abcdef")
    assert wandb_can_log()

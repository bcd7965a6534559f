"""predict.py: finding a finished run, a test set's ids in their order, and the probabilities with a flip."""

import pytest
import torch

from convnext_roadmap import RoadmapError, predict


def test_a_run_is_a_folder_or_experiment_run_and_seed0_by_default(tmp_path):
    run = tmp_path / "exp" / "gelu" / "seed0"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("{}\n")
    with pytest.raises(RoadmapError, match="seed0: the run has no best.pt yet"):
        predict.find_run(tmp_path, "exp/gelu")
    (run / "best.pt").write_bytes(b"")
    assert predict.find_run(tmp_path, "exp/gelu") == run
    assert predict.find_run(tmp_path, str(run)) == run
    with pytest.raises(RoadmapError, match="exp/widen: no such run"):
        predict.find_run(tmp_path, "exp/widen")


def test_a_test_sets_ids_keep_the_csvs_order_else_the_files_sorted(tmp_path):
    (tmp_path / "test").mkdir()
    for name in ("b", "a", "c"):
        (tmp_path / "test" / f"{name}.png").write_bytes(b"")
    assert [i for i, _ in predict.test_images(f"csv:{tmp_path}")] == ["a", "b", "c"]
    (tmp_path / "test.csv").write_text("id\nc\na\nb\n")
    assert [(i, p.name) for i, p in predict.test_images(f"csv:{tmp_path}")] == [("c", "c.png"), ("a", "a.png"),
                                                                                ("b", "b.png")]
    with pytest.raises(RoadmapError, match="expected csv:PATH"):
        predict.test_images("synthetic")


def test_a_flip_averages_the_probabilities_of_the_image_and_its_mirror():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 2 * 4, 5))  # sees left from right
    x = torch.randn(6, 3, 2, 4)
    loader = [(x[:4], None), (x[4:], None)]
    plain = predict._probabilities(model, loader, torch.device("cpu"), flip=False)
    flipped = predict._probabilities(model, loader, torch.device("cpu"), flip=True)
    with torch.no_grad():
        mirror = model(x[..., [3, 2, 1, 0]]).softmax(-1)  # the columns reversed by hand
        assert torch.allclose(plain, model(x).softmax(-1))
    assert torch.allclose(flipped, (plain + mirror) / 2) and not torch.allclose(flipped, plain)


class _Touch:
    """What a foreign pickle may hold: a call made while it loads (here, creating a file)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.path}",)


def test_a_checkpoint_that_would_run_code_is_refused_and_runs_none(tmp_path, capsys):
    from convnext_roadmap import resolve_config
    from convnext_roadmap.cli import main
    from convnext_roadmap.loading import to_yaml

    run = tmp_path / "exp" / "resnet50" / "seed0"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(to_yaml(resolve_config("resnet50", recipe="smoke")))
    marker = tmp_path / "ran"
    torch.save({"model": {}, "epoch": 1, "classes": ["a", "b"], "extra": _Touch(marker)}, run / "best.pt")
    for command in (["eval", "exp/resnet50"], ["predict", "exp/resnet50", "--data", f"csv:{tmp_path}"]):
        assert main([*command, "--results", str(tmp_path), "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{run / 'best.pt'}: " in err and "posix.system" in err, err
        assert not marker.exists()


def test_our_own_checkpoints_load_with_weights_only_new_and_old(tmp_path):
    import random

    import numpy as np

    from convnext_roadmap.results import load_checkpoint

    # what a checkpoint of this project holds: tensors, plain data, and (before and after this change) numpy's
    # random state, an array
    saved = {"model": {"w": torch.ones(2)}, "history": [{"epoch": 1, "top1": 50.0}], "classes": ["a"],
             "rng": [{"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}]}
    torch.save(saved, tmp_path / "checkpoint.pt")
    back = load_checkpoint(tmp_path / "checkpoint.pt")
    assert back["history"] == saved["history"] and (back["rng"][0]["numpy"][1] == saved["rng"][0]["numpy"][1]).all()
    # the same checkpoint as numpy 1 writes it: its globals under numpy.core, not numpy._core (a protocol-2 pickle
    # names each global as text lines, so the names can be rewritten in place)
    import zipfile

    with zipfile.ZipFile(tmp_path / "checkpoint.pt") as z, zipfile.ZipFile(tmp_path / "numpy1.pt", "w") as out:
        for item in z.infolist():
            data = z.read(item)
            out.writestr(item, data.replace(b"numpy._core", b"numpy.core") if item.filename.endswith(".pkl") else data)
    assert b"numpy.core.multiarray" in zipfile.ZipFile(tmp_path / "numpy1.pt").read(
        next(n for n in zipfile.ZipFile(tmp_path / "numpy1.pt").namelist() if n.endswith("data.pkl")))
    back = load_checkpoint(tmp_path / "numpy1.pt")
    assert (back["rng"][0]["numpy"][1] == saved["rng"][0]["numpy"][1]).all()


@pytest.mark.parametrize("amp, channels_last, want", [("bf16", "true", torch.bfloat16), ("false", "false", None)])
def test_a_run_is_evaluated_in_its_own_precision_and_memory_format(amp, channels_last, want):
    from convnext_roadmap import resolve_config

    cfg = resolve_config("resnet50", recipe="smoke", overrides=[f"train.amp={amp}",
                                                                f"train.channels_last={channels_last}"])
    seen = []

    class Looks(torch.nn.Module):  # what the forward pass was given, as the training loop gives it
        def forward(self, x):
            seen.append((torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None,
                         x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()))
            return torch.zeros(len(x), 3)

    predict._probabilities(Looks(), [(torch.randn(2, 3, 4, 4), None)], torch.device("cpu"), flip=True, cfg=cfg)
    assert seen == [(want, channels_last == "true")] * 2

import csv
import json

import pandas as pd
import pytest
import timm
from safetensors.torch import save_file

from convnext_roadmap.cli import main
from convnext_roadmap.plots import GROUP_COLOURS, bar_colours

from conftest import make_csv_dataset

TINY = ["--set", "train.batch_size=8", "--set", "train.epochs=1", "--set", "train.warmup_epochs=0", "--seeds", "1",
        "--executor", "inprocess"]


@pytest.fixture(scope="module")
def kaggle(tmp_path_factory):
    return make_csv_dataset(tmp_path_factory.mktemp("kaggle") / "comp")


def test_fixed_input_size_is_enforced(tmp_path, kaggle, capsys):
    args = ["run", "--references", "vit_small_patch32_224", "--recipe", "smoke", "--data", f"csv:{kaggle}",
            "--results", str(tmp_path)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "vit_small_patch32_224 needs 224×224 input, got 32" in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_finetune_a_reference_from_a_local_file_then_eval_and_predict(tmp_path, kaggle, capsys):
    weights = tmp_path / "vit.safetensors"
    save_file(timm.create_model("vit_small_patch32_224").state_dict(), str(weights))
    results = tmp_path / "results"
    assert main(["run", "--references", "vit_small_patch32_224", "--recipe", "finetune", "--pretrained",
                 str(weights), "--data", f"csv:{kaggle}", *TINY, "--set", "data.workers=0",
                 "--results", str(results), "--experiment", "course"]) == 0
    run = results / "course" / "vit_small_patch32_224" / "seed0"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["pretrained"] == str(weights)
    assert any("re-initialised the classifier (head)" in n and "1000 classes" in n for n in summary["notes"])
    table = pd.read_csv(results / "course" / "table.csv")
    assert table.group.tolist() == ["reference"]
    assert bar_colours(table, {"vit_small_patch32_224": "reference"}) == [GROUP_COLOURS["reference"]]
    capsys.readouterr()

    assert main(["eval", "course/vit_small_patch32_224", "--results", str(results)]) == 0
    assert "top-1" in capsys.readouterr().out

    out = tmp_path / "submission.csv"
    assert main(["predict", str(run), "--data", f"csv:{kaggle}", "--out", str(out), "--flip"]) == 0
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["id", "label"]
    assert [r[0] for r in rows[1:]] == (kaggle / "test.csv").read_text().split()[1:]
    assert {r[1] for r in rows[1:]} <= {"cat", "dog", "owl"}
    assert main(["predict", str(run), "--data", f"csv:{kaggle}", "--out", str(tmp_path / "again.csv"),
                 "--flip"]) == 0
    assert (tmp_path / "again.csv").read_text() == out.read_text()
    # the same folder as an image folder: its train/ is flat (the images of train.csv) and names no classes
    assert main(["predict", str(run), "--data", f"imagefolder:{kaggle}", "--out", str(tmp_path / "flat.csv"),
                 "--flip"]) == 0
    assert (tmp_path / "flat.csv").read_text() == out.read_text()
    capsys.readouterr()

    # another competition's data: this run's class names would make a file that only looks like a submission
    other = make_csv_dataset(tmp_path / "other", classes=("ant", "bee", "cat"), per_class=2, tests=2)
    assert main(["predict", str(run), "--data", f"csv:{other}", "--out", str(tmp_path / "wrong.csv")]) == 2
    err = capsys.readouterr().err
    assert f"{other / 'train.csv'} names the classes ant, bee, cat, but {run} was trained on cat, dog, owl" in err
    assert err.count("\n") == 1 and not (tmp_path / "wrong.csv").exists()


def test_roadmap_end_finetunes_from_timm_weights(tmp_path, kaggle):
    weights = tmp_path / "resnet50.pth"
    import torch

    torch.save(timm.create_model("resnet50").state_dict(), weights)
    results = tmp_path / "results"
    assert main(["run", "--steps", "resnet50", "--recipe", "smoke", "--set", "stages.width_mult=1.0",
                 "--set", "stages.depth_mult=1.0", "--pretrained", str(weights), "--data", f"csv:{kaggle}",
                 *TINY, "--results", str(results), "--experiment", "ft"]) == 0
    summary = json.loads((results / "ft" / "resnet50" / "seed0" / "summary.json").read_text())
    assert summary["notes"][0] == f"loaded {weights}"
    assert "re-initialised the classifier (head.fc)" in summary["notes"][1]


def test_a_checkpoint_that_does_not_fit_is_one_line(tmp_path, kaggle, capsys):
    weights = tmp_path / "convnext.pth"
    import torch

    torch.save(timm.create_model("convnext_tiny").state_dict(), weights)
    args = ["run", "--steps", "resnet50", "--recipe", "smoke", "--set", "stages.width_mult=1.0",
            "--pretrained", str(weights), "--data", f"csv:{kaggle}", "--results", str(tmp_path / "r")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "does not fit this network" in err and "missing" in err and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


def test_with_references_adds_the_bases_list(capsys, kaggle):
    assert main(["run", "--upto", "resnet50", "--with-references", "--recipe", "smoke", "--set",
                 "data.img_size=224", "--data", f"csv:{kaggle}", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "swin_tiny_patch4_window7_224" in out and "4.49 GFLOPs" in out and "convnext_small" in out


def test_overrides_go_to_the_networks_that_have_those_sections(capsys, kaggle):
    assert main(["run", "--upto", "resnet50", "--with-references", "--recipe", "smoke", "--set", "timm.img_size=32",
                 "--set", "block.kernel_size=5", "--data", f"csv:{kaggle}", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "vit_small_patch32_224, adapted to 32²" in out and "swin_tiny_patch4_window7_224, adapted to 32²" in out
    assert "timm model convnext_small\n" in out  # takes any input size: nothing to adapt
    assert "4.49 GFLOPs" in out  # reference FLOPs are counted at the model's own 224²


@pytest.mark.parametrize("request_args, hub", [
    (["--steps", "layer_scale"], "timm:convnext_tiny"),  # picked from the whole path, whose others have no weights
    (["--upto", "resnet50"], "timm:resnet50"),
    (["--upto", "layer_scale", "--leave-one-out", "--steps", "layer_scale"], "timm:convnext_tiny"),
])
def test_the_finetune_recipe_takes_hub_weights_for_the_paths_ends(capsys, kaggle, request_args, hub):
    # finetune.yaml asks for drop path 0.1 and the hub weights (pretrained: true): a regularizer is not another network
    assert main(["run", *request_args, "--recipe", "finetune", "--data", f"csv:{kaggle}", "--dry-run"]) == 0
    assert f"pretrained: {hub}" in capsys.readouterr().out


def test_hub_weights_for_a_network_timm_does_not_have_is_one_line(tmp_path, capsys, kaggle):
    args = ["run", "--steps", "stage_ratio", "--recipe", "finetune", "--data", f"csv:{kaggle}",
            "--results", str(tmp_path), "--dry-run"]  # a regression must not fine-tune a full-size network
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "stage_ratio is not a timm model" in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []

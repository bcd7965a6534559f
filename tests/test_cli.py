import subprocess
import sys
from pathlib import Path

import pytest

from convnext_roadmap import resolve_config
from convnext_roadmap.cli import main


def run(*args):
    return subprocess.run([sys.executable, "-m", "convnext_roadmap.cli", *args], capture_output=True, text=True)


def test_steps_lists_the_path(capsys):
    assert main(["steps"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("resnet50") and out[-2].startswith("layer_scale") and out[-1].startswith("grn")
    assert len(out) == 15
    assert "kernel sz. → 7" in "\n".join(out)


def test_show_prints_yaml_and_diff(capsys):
    assert main(["show", "--upto", "patchify_stem", "--set", "block.kernel_size=5"]) == 0
    import yaml

    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["stem"]["stride"] == 4 and cfg["block"]["kernel_size"] == 5
    assert main(["show", "--patch", "gelu", "--diff"]) == 0
    assert capsys.readouterr().out.strip() == "block.act: relu → gelu"


@pytest.mark.parametrize("recipe", ["paper_in1k", "finetune", "imagenet_proxy", "torchvision_r50"])
def test_show_takes_data_for_the_recipes_that_need_it(capsys, recipe):
    import yaml

    assert main(["show", "--recipe", recipe, "--data", "imagefolder:/datasets/imagenet"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["data"]["source"] == "imagefolder:/datasets/imagenet"


def test_flops_csv(capsys):
    assert main(["flops", "--upto", "patchify_stem", "--format", "csv"]) == 0
    import io

    import pandas as pd

    df = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert list(df.step) == ["resnet50", "stage_ratio", "patchify_stem"]
    assert list(df.check) == ["ok"] * 3
    assert {"paper_gflops", "gflops", "gflops_fvcore", "params_m", "diff"} <= set(df.columns)
    # a training scale is not the paper's table: counted at full scale (Table 10: 4.09), and said so
    assert main(["flops", "--upto", "resnet50", "--set", "stages.width_mult=0.5", "--format", "csv"]) == 0
    out, err = capsys.readouterr()
    assert pd.read_csv(io.StringIO(out)).gflops.round(2).tolist() == [4.09]
    assert "counted at the paper's scale, without stages.width_mult/depth_mult" in err


@pytest.mark.parametrize("args, words", [
    (["show", "--upto", "nope"], "--upto nope: unknown step"),
    (["show", "--set", "block.kernel_size=2"], "block.kernel_size"),
    (["flops", "--patch", "no_such.yaml"], "no such file"),
    (["steps", "--base", "foo"], "--base foo: unknown base"),
    (["show", "--data", "imagefolder:/x"], "--data sets a recipe's data.source: give --recipe too"),
    (["run", "--log-every-steps", "5", "--dry-run"], "--log-every-steps: only with --log tensorboard"),
])
def test_user_errors_are_one_line_exit_2(args, words):
    result = run(*args)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and words in result.stderr and "Traceback" not in result.stderr


def test_bench_puts_timm_beside_the_end(capsys, monkeypatch):
    # timings are noise on this machine, so the bench reads a clock that only the forward passes move, by what
    # the test says each costs: a pass of ours 1 s in evaluation and 3 s in training, of timm's resnet50 2 s and
    # 4.5 s, and 100 s more for each one's first pass in each mode (the warm-up round, which must not count).
    # By hand, batch 2: ours 2/1 = 2.0 and 2/3 = 0.7 images/s; ours over timm's 2.0 in evaluation, 1.5 in training
    import io
    import types

    import pandas as pd
    import timm

    from convnext_roadmap import measure, model

    clock = [0.0]

    def costing(net, infer_s, train_s):
        first = {True, False}

        def tick(module, args):
            clock[0] += (train_s if module.training else infer_s) + 100 * (module.training in first)
            first.discard(module.training)

        net.register_forward_pre_hook(tick)
        return net

    build, create = model.build_model, timm.create_model
    monkeypatch.setattr(model, "build_model", lambda *a, **k: costing(build(*a, **k), 1.0, 3.0))
    monkeypatch.setattr(timm, "create_model", lambda *a, **k: costing(create(*a, **k), 2.0, 4.5))
    monkeypatch.setattr(measure, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    assert main(["bench", "--upto", "resnet50", "--img-size", "64", "--batch-size", "2", "--rounds", "1",
                 "--format", "csv"]) == 0
    (row,) = pd.read_csv(io.StringIO(capsys.readouterr().out), skiprows=1).to_dict("records")
    assert (row["step"], row["timm_model"]) == ("resnet50", "resnet50")
    assert (row["infer_img_s"], row["train_img_s"]) == (2.0, 0.7)
    assert (row["ratio_vs_timm_infer"], row["ratio_vs_timm_train"]) == (2.0, 1.5)


def test_the_readmes_error_example_is_what_the_cli_prints():
    readme = (Path(__file__).resolve().parent.parent / "docs" / "config.md").read_text().splitlines()
    at = next(i for i, line in enumerate(readme) if line.startswith("$ roadmap show --set block.kernel_size=8"))
    result = run(*readme[at].split()[2:])
    assert result.returncode == 2 and result.stderr.strip() == readme[at + 1]


def test_a_recipe_without_data_and_a_config_yaml_that_no_longer_fits_are_one_line(tmp_path):
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("train:\n  epochs: 2\n")
    result = run("run", "--steps", "resnet50", "--recipe", str(recipe), "--dry-run")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "mine.yaml: data: missing (a recipe sets train and data" in result.stderr
    from convnext_roadmap import RoadmapError
    from convnext_roadmap.loading import read_config

    old = tmp_path / "config.yaml"
    old.write_text("stem:\n  kind: conv7\n")
    with pytest.raises(RoadmapError, match=r"config\.yaml: stem\.\w+: "):  # the file and the key, one line
        read_config(old)


def test_a_reader_that_stops_early_is_no_traceback():
    # `true` exits without reading: every write of the command meets a closed pipe
    result = subprocess.run(f"{sys.executable} -m convnext_roadmap.cli steps | true", shell=True,
                            capture_output=True, text=True)
    assert result.stderr == ""



def test_bench_times_as_runs_train_and_measures_each_peak_memory_alone(monkeypatch):
    # a run turns on cuDNN's autotuner and TF32 (the recipes' defaults); a bench without them timed other kernels.
    # timm's twin trained without the stochastic depth ours did (ResNet-50's config has 0.1), ~7% of a CPU step.
    # A peak measured while the twin sat on the GPU too counted the twin's weights: each is measured alone
    from types import SimpleNamespace

    import timm
    import torch

    from convnext_roadmap import device, measure, model

    backends, held, at_peak = [], [], []
    monkeypatch.setattr(device, "configure_backends",
                        lambda cfg, dev: backends.append((cfg.cudnn_benchmark, cfg.tf32, dev)))
    init, release, peak = measure.Timer.__init__, measure.Timer.release, measure.Timer.peak_memory_mb
    monkeypatch.setattr(measure.Timer, "__init__", lambda self, *a, **k: (held.append(self), init(self, *a, **k))[1])
    monkeypatch.setattr(measure.Timer, "release", lambda self: (held.remove(self), release(self))[1])
    monkeypatch.setattr(measure.Timer, "peak_memory_mb", lambda self: (at_peak.append(len(held)), peak(self))[1])
    create, twins = timm.create_model, []
    monkeypatch.setattr(timm, "create_model", lambda *a, **k: (twins.append(k.get("drop_path_rate")), create(*a, **k))[1])
    assert main(["bench", "--upto", "resnet50", "--img-size", "32", "--batch-size", "2", "--rounds", "1"]) == 0
    assert backends == [(True, True, torch.device("cpu"))]  # the recipes' defaults
    assert at_peak == [1, 1]  # ours, then timm's resnet50
    assert twins == [resolve_config("resnet50").block.drop_path] != [0.0]  # timm's does our stochastic depth's work
    speeds = measure.measure_speed({"a": model.build_model(resolve_config("resnet50"))}, batch_size=2, img_size=32,
                                   device="cpu", rounds=1, train_cfg=SimpleNamespace(cudnn_benchmark=False, tf32=False))
    assert backends[-1] == (False, False, torch.device("cpu")) and speeds["a"].peak_mem_mb > 0  # a run's own

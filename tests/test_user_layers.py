"""Layers of one's own: norms and activations named as `module:attr`, modules inserted into the block (the
README's SE example verbatim), ConvNeXt V2's GRN against its paper, and the bad inputs, each one line."""

import re
import textwrap

import pytest
import torch

from convnext_roadmap import build_model, resolve_config
from convnext_roadmap.cli import main
from convnext_roadmap.measure import count_params
from convnext_roadmap.model.layers import GlobalResponseNorm

SE = '''\
import torch.nn as nn


class SqueezeExcite(nn.Module):
    def __init__(self, channels, ratio=0.25):
        super().__init__()
        hidden = max(1, int(channels * ratio))
        self.fc1, self.fc2 = nn.Conv2d(channels, hidden, 1), nn.Conv2d(hidden, channels, 1)

    def forward(self, x):
        return x * self.fc2(self.fc1(x.mean((2, 3), keepdim=True)).relu()).sigmoid()
'''
SE_YAML = '''\
# se.yaml: squeeze-and-excitation on the residual branch, before the add
block:
  extras:
    - {at: conv3, module: "my_layers:SqueezeExcite", args: {ratio: 0.25}}
'''


@pytest.fixture
def se(tmp_path, monkeypatch):
    """A folder with the README's se.yaml beside the my_layers.py it names, as the current directory."""
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "my_layers.py").write_text(SE)
    (folder / "se.yaml").write_text(SE_YAML)
    monkeypatch.chdir(folder)
    monkeypatch.setenv("ROADMAP_CACHE", str(tmp_path / "cache"))
    return folder


def test_grn_is_the_v2_papers_algorithm_1():
    # Woo et al. 2023, Algorithm 1 (NHWC), written out: gx = norm(X, p=2, dim=(1,2)); nx = gx / (mean(gx, -1) + 1e-6);
    # gamma * (X * nx) + beta + X
    torch.manual_seed(0)
    grn = GlobalResponseNorm(6)
    with torch.no_grad():
        grn.weight.normal_(), grn.bias.normal_()
    x = torch.randn(2, 6, 5, 4)
    X = x.permute(0, 2, 3, 1)
    gx = torch.norm(X, p=2, dim=(1, 2), keepdim=True)
    nx = gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)
    expected = grn.weight * (X * nx) + grn.bias + X
    torch.testing.assert_close(grn(x), expected.permute(0, 3, 1, 2))
    assert torch.equal(GlobalResponseNorm(6)(x), x)  # gamma = beta = 0: it starts as the identity


def test_the_se_example_adds_what_its_layers_hold(se, capsys):
    # SE after conv3 of each ResNet-50 block: C = 256, 512, 1024, 2048 over 3, 4, 6, 3 blocks, hidden C/4; each SE
    # holds two 1×1 convs with biases, 2·C·C/4 + C/4 + C parameters, and costs 2·C·C/4 multiply-adds (on a 1×1 map)
    per_stage = [(256, 3), (512, 4), (1024, 6), (2048, 3)]
    params = sum(n * (2 * c * c // 4 + c // 4 + c) for c, n in per_stage)
    macs = sum(n * 2 * c * c // 4 for c, n in per_stage)
    assert params == 10_078_656
    base, ours = build_model(resolve_config()), build_model(resolve_config(patches=["./se.yaml"]))
    assert count_params(ours) - count_params(base) == params
    assert main(["flops", "--patch", "./se.yaml", "--format", "csv"]) == 0
    row = capsys.readouterr().out.splitlines()[-1].split(",")
    assert abs(float(row[3]) - (4.089 + macs / 1e9)) < 2e-3  # gflops: resnet50's 4.089 and the SE's


def gone_after_the_checks(monkeypatch, file):
    """`file` removed once the pre-flight has checked the request: a job must build from the source the launch
    checked, which the config carries, not from the user's folder (on a SLURM node it may not be there)."""
    from convnext_roadmap import preflight

    check = preflight.check

    def check_then_remove(*args, **kwargs):
        out = check(*args, **kwargs)
        file.rename(file.with_suffix(".moved"))
        return out

    monkeypatch.setattr(preflight, "check", check_then_remove)


def test_a_layer_of_ones_own_trains_under_the_local_executor(se, tmp_path, capsys, monkeypatch):
    import json

    request = ["run", "--patch", "./se.yaml", "--recipe", "smoke", "--set", "data.workers=0", "--results",
               str(tmp_path / "r"), "--experiment", "e"]
    with monkeypatch.context() as m:
        gone_after_the_checks(m, se / "my_layers.py")
        assert main([*request, "--seeds", "1"]) == 0
    (se / "my_layers.moved").rename(se / "my_layers.py")
    summary = json.loads((tmp_path / "r" / "e" / "resnet50+se" / "seed0" / "summary.json").read_text())
    assert summary["status"] == "completed"
    # the row's network at 224²: ResNet-50's 25,557,032 parameters and the SE layers' (hand-counted above)
    assert summary["params"] == 25_557_032 + 10_078_656
    assert abs(summary["gflops_224"] - (4.089 + 0.010059776)) < 1e-3
    config = (tmp_path / "r" / "e" / "resnet50+se" / "seed0" / "config.yaml").read_text()
    assert "class SqueezeExcite" in config  # the source the job imported, recorded with its digest
    (se / "my_layers.py").write_text(SE.replace("ratio=0.25", "ratio=0.5"))
    capsys.readouterr()
    assert main([*request, "--seeds", "2"]) == 2  # seed 1 of another SE beside seed 0's: refused
    assert "code.my_layers" in capsys.readouterr().err


def test_the_source_travels_and_a_changed_module_is_another_network(se):
    before = resolve_config(patches=["./se.yaml"])
    (se / "my_layers.py").write_text(SE.replace("ratio=0.25", "ratio=0.5"))
    after = resolve_config(patches=["./se.yaml"])
    assert before != after and before.code["my_layers"].sha256 != after.code["my_layers"].sha256
    (se / "my_layers.py").unlink()  # the job builds from the config's source, not from the folder
    assert count_params(build_model(before)) > count_params(build_model(resolve_config()))


@pytest.mark.parametrize("key, value", [("block.act", "torch.nn:SiLU"), ("block.norm", "timm.layers:LayerNorm2d"),
                                        ("head.norm", "my_layers:Scale")])
def test_norms_and_activations_may_be_anyones(se, key, value):
    (se / "my_layers.py").write_text(SE + textwrap.dedent('''
        class Scale(nn.Module):  # a norm gets NCHW, in the head too (N×C×1×1)
            def __init__(self, channels):
                super().__init__()
                self.channels = channels

            def forward(self, x):
                assert x.ndim == 4 and x.shape[1] == self.channels
                return 2 * x
    '''))
    cfg = resolve_config("layer_scale", overrides=[f"{key}={value}"])
    model = build_model(cfg, num_classes=3)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    kind = value.split(":")[1]
    assert any(type(m).__name__ == kind for m in model.modules())


BAD = {
    "unknown built-in": ("block:\n  norm: groupnorm\n", "block.norm: got 'groupnorm'"),
    "no such module": ("block:\n  extras: [{at: conv3, module: 'nosuch_mod:X'}]\n",
                       "block.extras[0].module: nosuch_mod:X: does not import (ModuleNotFoundError: No module named "
                       "'nosuch_mod')"),
    "no such attribute": ("block:\n  extras: [{at: conv3, module: 'my_layers:Nope'}]\n",
                          "block.extras[0].module: my_layers:Nope: does not import (AttributeError"),
    "raises": ("block:\n  extras: [{at: conv3, module: 'my_layers:SqueezeExcite', args: {ration: 0.5}}]\n",
               "block.extras[0].module: my_layers:SqueezeExcite: raised TypeError: SqueezeExcite.__init__() got an "
               "unexpected keyword argument 'ration'"),
    "not a module": ("block:\n  act: 'my_layers:not_a_module'\n",
                     "block.act: my_layers:not_a_module: returned a int, expected a torch.nn.Module"),
    "changes the shape": ("block:\n  extras: [{at: conv2, module: 'my_layers:Halve'}]\n",
                          "block.extras[0].module: my_layers:Halve: returned (2, 4, 16, 16) for an input of "
                          "(2, 8, 16, 16): the network needs the shape kept"),  # the smoke recipe's widths
    "no such point": ("block:\n  extras: [{at: conv4, module: grn}]\n", "block.extras[0].at: got 'conv4'"),
}


@pytest.mark.parametrize("case", BAD)
def test_a_bad_layer_is_one_line_naming_the_file_and_key_and_nothing_is_written(se, tmp_path, capsys, case):
    (se / "my_layers.py").write_text(SE + textwrap.dedent('''
        def not_a_module():
            return 3

        class Halve(nn.Module):
            def __init__(self, channels):
                super().__init__()

            def forward(self, x):
                return x[:, : x.shape[1] // 2]
    '''))
    text, words = BAD[case]
    (se / "bad.yaml").write_text(text)
    code = main(["run", "--patch", "./bad.yaml", "--recipe", "smoke", "--results", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("roadmap: error: bad.yaml: "), err
    assert words in err, err
    assert not (tmp_path / "r").exists()


MY_ROADMAP = '''\
steps:
  se: {group: mine, label: "+ SE", about: "squeeze-and-excitation before the add"}
bases:
  resnet50:
    label: ResNet-50
    path: [stage_ratio, patchify_stem, se]
'''


def test_a_roadmap_of_ones_own_lists_and_runs_its_steps_beside_the_built_in_ones(se, tmp_path, capsys):
    (se / "my_roadmap.yaml").write_text(MY_ROADMAP)
    assert main(["steps", "--roadmap", "my_roadmap.yaml"]) == 0
    rows = [line.split()[:2] for line in capsys.readouterr().out.splitlines()]
    assert rows == [["resnet50", "ResNet-50"], ["stage_ratio", "stage"], ["patchify_stem", '"patchify"'],
                    ["se", "+"]]
    assert main(["run", "--roadmap", "my_roadmap.yaml", "--upto", "se", "--dry-run", "--results",
                 str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    runs = [line.split()[0] for line in out.splitlines() if re.match(r"^\w+ +[\d.]+ GFLOPs", line)]
    assert runs == ["resnet50", "stage_ratio", "patchify_stem", "se"], out
    assert "block.extras: [] → [{'at': 'conv3', 'module': 'my_layers:SqueezeExcite'" in out
    # se's network is the paper's patchify_stem with the SE layers: their parameters, hand-counted as above
    se_cfg = resolve_config("se", roadmap=__import__("convnext_roadmap").roadmap.load_roadmap("my_roadmap.yaml"))
    stem = resolve_config("patchify_stem")
    per_stage = [(256, 3), (512, 3), (1024, 9), (2048, 3)]  # stage_ratio's (3, 3, 9, 3)
    assert count_params(build_model(se_cfg)) - count_params(build_model(stem)) == sum(
        n * (2 * c * c // 4 + c // 4 + c) for c, n in per_stage)


@pytest.mark.parametrize("text, words", [
    ("bases:\n  mine: {label: Mine, path: [se]}\n", "my_roadmap.yaml: bases.mine: no base/mine.yaml beside it"),
    ("steps: {}\nbases:\n  resnet50: {label: R, path: [nosuch]}\n",
     "my_roadmap.yaml: bases.resnet50.path: nosuch: not in its steps, nor a built-in step"),
    ("steps: {}\nbases:\n  resnet50: {label: R}\n", "my_roadmap.yaml: bases.resnet50.path: missing"),
    ("steps: {se: {about: x}}\nbases:\n  resnet50: {label: R, path: [se]}\n", "my_roadmap.yaml: steps.se.label: missing"),
    ("bases:\n  resnet50: {label: R, path: se}\n", "my_roadmap.yaml: bases.resnet50.path: got 'se', expected a list"),
])
def test_a_bad_roadmap_file_is_one_line(se, capsys, text, words):
    (se / "my_roadmap.yaml").write_text(text)
    assert main(["steps", "--roadmap", "my_roadmap.yaml"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err, err


def test_extras_add_up_over_the_patches_and_null_removes_them(se):
    # grn's extras, then se.yaml's: ConvNeXt V2-T with SE, not SE alone (every other list is replaced whole)
    cfg = resolve_config("grn", patches=["./se.yaml"])
    assert [(e.at, e.module) for e in cfg.block.extras] == [("conv2", "grn"), ("conv3", "my_layers:SqueezeExcite")]
    assert resolve_config("grn", patches=["./se.yaml", "./se.yaml"]).block.extras == cfg.block.extras  # not twice
    assert resolve_config("grn", overrides=["block.extras=null"]).block.extras == []


def test_a_carried_module_is_imported_as_a_module_is(se):
    # dataclasses (and pickle) look a class's module up in sys.modules while the module runs
    (se / "my_layers.py").write_text(SE + textwrap.dedent('''
        import dataclasses

        @dataclasses.dataclass
        class Options:
            ratio: float = 0.25
    '''))
    assert count_params(build_model(resolve_config(patches=["./se.yaml"]))) > 0


def test_an_error_names_the_key_of_the_layer_that_failed_not_another_naming_the_same(se, capsys):
    (se / "two.yaml").write_text("block:\n  extras:\n    - {at: conv3, module: 'my_layers:SqueezeExcite'}\n"
                                 "    - {at: conv2, module: 'my_layers:SqueezeExcite', args: {ration: 1}}\n")
    assert main(["flops", "--patch", "./two.yaml"]) == 2
    assert "two.yaml: block.extras[1].module: my_layers:SqueezeExcite: raised TypeError" in capsys.readouterr().err


def test_two_files_of_one_module_name_are_refused(se, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    (other / "my_layers.py").write_text(SE.replace("0.25", "0.5"))
    (other / "norm.yaml").write_text("head:\n  norm: 'my_layers:SqueezeExcite'\n")
    assert main(["show", "--patch", "./se.yaml", "--patch", str(other / "norm.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is another my_layers.py than the one beside" in err, err
    assert "se.yaml" in err and "norm.yaml" in err

from pathlib import Path

import pytest

from convnext_roadmap import RoadmapError, resolve_config
from convnext_roadmap.config import parse_override
from convnext_roadmap.roadmap import path_variants, steps


def test_base_is_resnet50():
    cfg = resolve_config()
    assert cfg.stages.depths == [3, 4, 6, 3] and cfg.stages.widths == [64, 128, 256, 512]
    assert (cfg.block.layout, cfg.block.kernel_size, cfg.stem.kernel_size) == ("bottleneck", 3, 7)


def test_upto_applies_every_step_before():
    cfg = resolve_config(upto="large_kernel")
    assert cfg.stages.depths == [3, 3, 9, 3]
    assert (cfg.stem.kernel_size, cfg.stem.stride) == (4, 4)
    assert cfg.block.groups == "depthwise" and cfg.block.layout == "dw_first" and cfg.block.kernel_size == 7
    assert cfg.block.act == "relu"  # gelu comes after large_kernel
    assert resolve_config(upto="large_kernel") == resolve_config(
        patches=[s.name for s in steps()[: [s.name for s in steps()].index("large_kernel") + 1]])


def test_patches_compose_in_any_order_and_subset():
    a = resolve_config(patches=["gelu", "layernorm"])
    b = resolve_config(patches=["layernorm", "gelu"])
    assert a == b
    assert (a.block.act, a.block.norm, a.stem.norm, a.block.layout) == ("gelu", "layernorm", "layernorm", "bottleneck")


def test_leave_one_out_differs_only_in_that_step():
    names = [s.name for s in steps()]
    full = resolve_config(upto="split_downsampling")
    without = resolve_config(patches=[n for n in names[: names.index("split_downsampling") + 1] if n != "large_kernel"])
    assert without.block.kernel_size == 3 and full.block.kernel_size == 7
    assert without.model_copy(update={"block": full.block}) == full


def test_user_patch_file_and_overrides(tmp_path: Path):
    patch = tmp_path / "mine.yaml"
    patch.write_text("block:\n  kernel_size: 5\n")
    cfg = resolve_config(upto="large_kernel", patches=[patch], overrides=["stages.depths=[3,3,27,3]"])
    assert cfg.block.kernel_size == 5 and cfg.stages.depths == [3, 3, 27, 3]


def test_override_reads_yaml_and_exponent_floats():
    assert parse_override("block.layer_scale=1e-6") == {"block": {"layer_scale": 1e-6}}
    assert parse_override("stages.depths=[3, 3, 9, 3]") == {"stages": {"depths": [3, 3, 9, 3]}}


@pytest.mark.parametrize("patch_text, words", [
    ("block:\n  kernal_size: 5\n", ["block.kernal_size", "unknown key", "kernel_size"]),
    ("block:\n  kernel_size: '7'\n", ["block.kernel_size", "expected an integer"]),
    ("block:\n  kernel_size: 6\n", ["block.kernel_size", "odd"]),
    ("stages:\n  depths: [3, 0, 9, 3]\n", ["stages.depths", "positive"]),
    ("block:\n  groups: 5\n", ["block.groups", "divisor"]),
    ("blocks:\n  groups: 5\n", ["blocks", "unknown key", "the top level takes"]),
    ("- a list\n", ["expected a mapping"]),
    ("block: [unclosed\n", ["not valid YAML"]),
])
def test_bad_patch_names_file_and_key(tmp_path: Path, patch_text, words):
    patch = tmp_path / "bad.yaml"
    patch.write_text(patch_text)
    with pytest.raises(RoadmapError) as err:
        resolve_config(patches=[patch])
    message = str(err.value)
    assert "bad.yaml" in message and "\n" not in message
    for w in words:
        assert w in message


def test_error_names_the_file_that_set_the_key(tmp_path: Path):
    # widths set by the widen step, groups by this patch: the divisibility error is about the patch's key
    patch = tmp_path / "groups.yaml"
    patch.write_text("block:\n  groups: 7\n")
    with pytest.raises(RoadmapError, match=r"groups\.yaml: block\.groups"):
        resolve_config(upto="widen", patches=[patch])
    with pytest.raises(RoadmapError, match=r"^--set block.kernel_size=4: block.kernel_size"):
        resolve_config(overrides=["block.kernel_size=4"])


@pytest.mark.parametrize("kwargs, words", [
    ({"upto": "large_kernels"}, "--upto large_kernels: unknown step"),
    ({"patches": ["gelus"]}, "--patch gelus: unknown step or patch file"),
    ({"patches": ["missing.yaml"]}, "--patch missing.yaml: no such file"),
    ({"base": "resnet18"}, "unknown base 'resnet18'"),
    ({"overrides": ["block.kernel_size"]}, "expected KEY=VALUE"),
])
def test_bad_request(kwargs, words):
    with pytest.raises(RoadmapError, match=words):
        resolve_config(**kwargs)


def test_sweep_variants_sit_beside_their_step_without_repeats():
    names = [v.name for v in path_variants(upto="gelu", sweep="kernel_size")]
    assert names[names.index("move_up_dwconv"):] == [
        "move_up_dwconv", "large_kernel@kernel_size=5", "large_kernel", "large_kernel@kernel_size=9",
        "large_kernel@kernel_size=11", "gelu"]
    with pytest.raises(RoadmapError, match="unknown sweep"):
        path_variants(sweep="depth")

from pathlib import Path

import pytest

from convnext_roadmap import RoadmapError, resolve_config
from convnext_roadmap.loading import parse_override
from convnext_roadmap.roadmap import Context, leave_one_out_runs, patched_run, path_runs, select, steps


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


def _leaves(name: str) -> dict[str, object]:
    """A step's YAML as dotted keys and their values, read from the file itself."""
    import yaml

    def flat(d, at=""):
        for k, v in d.items():
            yield from flat(v, f"{at}{k}.") if isinstance(v, dict) else [(f"{at}{k}", v)]

    return dict(flat(yaml.safe_load((Path(__file__).resolve().parent.parent / "ablations" / "steps" /
                                     f"{name}.yaml").read_text())))


def _get(cfg, key: str):
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


@pytest.mark.parametrize("first, second", [("gelu", "layernorm"), ("patchify_stem", "widen")])
def test_patches_that_set_different_keys_commute(first, second):
    # patchify_stem and widen both patch the stem section, different keys of it: a merge that replaced a section
    # whole would keep only the later one's keys
    a, b = _leaves(first), _leaves(second)
    assert not set(a) & set(b)
    cfg = resolve_config(patches=[first, second])
    assert cfg == resolve_config(patches=[second, first])
    assert {k: _get(cfg, k) for k in {**a, **b}} == {**a, **b}


def test_patches_that_set_the_same_key_apply_in_order():
    # both set block.layout (the path applies inverted_bottleneck, then move_up_dwconv): the later one wins
    a, b = _leaves("inverted_bottleneck"), _leaves("move_up_dwconv")
    assert set(a) & set(b) == {"block.layout"} and a["block.layout"] != b["block.layout"]
    assert resolve_config(patches=["inverted_bottleneck", "move_up_dwconv"]).block.layout == b["block.layout"]
    assert resolve_config(patches=["move_up_dwconv", "inverted_bottleneck"]).block.layout == a["block.layout"]
    assert resolve_config(upto="move_up_dwconv").block.layout == "dw_first"


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
    ("stages:\n  depths: [3, 0, 9, 3]\n", ["stages.depths[1]: got 0, expected ≥ 1"]),
    ("stages:\n  widths: [64, 128]\n", ["stages.widths: got [64, 128], expected 4 widths, one per stage"]),
    ("block:\n  drop_path: 1.5\n", ["block.drop_path: got 1.5, expected < 1"]),
    ("block:\n  groups: 5\n", ["block.groups", "divisor"]),
    ("blocks:\n  groups: 5\n", ["blocks", "unknown key", "the top level takes"]),
    ("- a list\n", ["expected a mapping"]),
    ("timm:\n  name: resnet18\n", ["timm: the timm model resnet18 beside the roadmap's network"]),
    ("block: [unclosed\n", ["not valid YAML"]),
    ("block:\n  kernel_size: 5\n  kernel_size: 7\n", ["line 3", "kernel_size: given twice"]),
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
    # a rule between two keys names where each came from
    with pytest.raises(RoadmapError, match=r"resnet50\.yaml: stages\.widths: .* \(stages\.depths: --set stages"):
        resolve_config(overrides=["stages.depths=[1,2]"])
    with pytest.raises(RoadmapError, match=r"finetune\.yaml: train\.warmup_epochs: got 1, expected fewer than epochs "
                                           r"\(1\) \(train\.epochs: --set train\.epochs=1\)"):
        resolve_config(recipe="finetune", overrides=["train.epochs=1"])


@pytest.mark.parametrize("kwargs, words", [
    ({"upto": "large_kernels"}, "--upto large_kernels: unknown step"),
    ({"patches": ["gelus"]}, "--patch gelus: unknown step or patch file"),
    ({"patches": ["missing.yaml"]}, "--patch missing.yaml: no such file"),
    ({"base": "resnet18"}, "--base resnet18: unknown base"),
    ({"overrides": ["block.kernel_size"]}, "expected KEY=VALUE"),
])
def test_bad_request(kwargs, words):
    with pytest.raises(RoadmapError, match=words):
        resolve_config(**kwargs)


def test_sweep_variants_sit_beside_their_step_without_repeats():
    variants = path_runs(Context(), upto="gelu", sweep="kernel_size")
    names = [v.name for v in variants]
    assert names[names.index("move_up_dwconv"):] == [
        "move_up_dwconv", "large_kernel@kernel_size=5", "large_kernel", "large_kernel@kernel_size=9",
        "large_kernel@kernel_size=11", "gelu"]
    # each step is measured against the step before it on the path, each kernel size against 3×3
    baselines = {v.name: v.baseline for v in variants}
    assert baselines["gelu"] == "large_kernel" and baselines["large_kernel"] == "move_up_dwconv"
    assert baselines["large_kernel@kernel_size=11"] == "move_up_dwconv" and baselines["resnet50"] is None
    with pytest.raises(RoadmapError, match="unknown sweep"):
        path_runs(Context(), sweep="depth")
    for runs in (path_runs, leave_one_out_runs):  # a sweep off the path is an error, not dropped in silence
        with pytest.raises(RoadmapError, match="its step large_kernel is not on the path up to depthwise"):
            runs(Context(), upto="depthwise", sweep="kernel_size")


@pytest.mark.parametrize("sweep", [None, "kernel_size"])
def test_leave_one_out_leaves_each_step_out_of_the_path_up_to_upto(sweep):
    variants = leave_one_out_runs(Context(), upto="large_kernel", sweep=sweep)
    full = variants[0]
    assert full.name == "large_kernel" and full.cfg == resolve_config(upto="large_kernel")
    path = [s.name for s in steps()][: [s.name for s in steps()].index("large_kernel") + 1]
    dropped = {v.name: v for v in variants if v.name.startswith("no_")}
    assert list(dropped) == [f"no_{name}" for name in path]
    for name in path:  # the path without that one step, measured against the full path
        others = [n for n in path if n != name]
        assert dropped[f"no_{name}"].cfg == resolve_config(patches=others) and dropped[f"no_{name}"].baseline == full.name
    swept = [v for v in variants if "@" in v.name]
    if sweep is None:
        assert swept == []
    else:  # kernel 3 is no_large_kernel and 7 the full network: neither is repeated
        assert [v.name for v in swept] == [f"large_kernel@kernel_size={k}" for k in (5, 9, 11)]
        assert all(v.cfg.block.kernel_size != 7 and v.cfg.block.layout == "dw_first" for v in swept)
    assert [v.name for v in select(variants, ["no_widen"])] == ["no_widen"]


def test_a_later_patch_wins_and_lists_are_replaced_whole(tmp_path: Path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("block:\n  kernel_size: 5\n  act_at: [conv1, conv2, conv3, output]\n")
    b.write_text("block:\n  kernel_size: 9\n  act_at: [conv2]\n")
    cfg = resolve_config(patches=[a, b])
    assert cfg.block.kernel_size == 9 and cfg.block.act_at == ["conv2"]  # the shorter list, not a merge
    assert resolve_config(patches=[b, a]).block.kernel_size == 5
    assert cfg.block.norm_at == ["conv1", "conv2", "conv3"]  # untouched keys keep the base's values


def test_a_patched_network_never_takes_the_name_of_a_paths_step():
    # --patch gelu is ResNet-50 with GELU; the path's gelu step is ConvNeXt up to GELU: two networks, two folders
    assert [v.name for v in patched_run(Context(), ["gelu"])] == ["resnet50+gelu"]
    assert [v.name for v in patched_run(Context(), ["gelu", "layernorm"], upto="widen")] == ["widen+gelu+layernorm"]
    assert "gelu" in {v.name for v in path_runs(Context())}


def test_yaml_anchors_and_merge_keys_are_yaml(tmp_path: Path):
    patch = tmp_path / "merge.yaml"  # a key given twice is an error, a merged key overridden is not
    patch.write_text("stem: &ln {norm: layernorm}\ndownsample: {<<: *ln, kernel_size: 2}\n")
    cfg = resolve_config(patches=[patch])
    assert (cfg.stem.norm, cfg.downsample.norm, cfg.downsample.kernel_size) == ("layernorm", "layernorm", 2)

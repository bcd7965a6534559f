"""loading.py: YAML layers merged in order, --set, and which file or flag set each key (for the error lines)."""

import pytest

from convnext_roadmap import RoadmapError
from convnext_roadmap.loading import Merged, load_yaml, parse_override


def test_a_set_is_a_nested_mapping_with_its_value_read_as_yaml():
    assert parse_override("block.kernel_size=9") == {"block": {"kernel_size": 9}}
    assert parse_override("train.betas=[0.9, 0.95]") == {"train": {"betas": [0.9, 0.95]}}
    assert parse_override("train.pretrained=null") == {"train": {"pretrained": None}}
    assert parse_override("data.source=imagefolder:/a=b") == {"data": {"source": "imagefolder:/a=b"}}
    for bad in ("block.kernel_size", "=3", "block..kernel_size=3"):
        with pytest.raises(RoadmapError, match=f"--set {bad}: expected KEY=VALUE"):
            parse_override(bad)


def test_layers_merge_deeply_and_each_leaf_remembers_the_last_source_that_set_it():
    merged = Merged()
    merged.merge({"block": {"kernel_size": 3, "act": "relu"}, "stem": {"width": 64}}, "base.yaml")
    merged.merge({"block": {"kernel_size": 7}}, "large_kernel.yaml")
    merged.merge({"block": {"act": "gelu"}}, "--set block.act=gelu")
    assert merged.data == {"block": {"kernel_size": 7, "act": "gelu"}, "stem": {"width": 64}}
    assert merged.source_of("block.kernel_size") == "large_kernel.yaml"
    assert merged.source_of("block.act") == "--set block.act=gelu"
    assert merged.source_of("stem.width") == "base.yaml"
    assert merged.source_of("stem.width.nothing") == "base.yaml"  # the nearest enclosing key that was set
    # a layer that replaces a whole mapping with a scalar takes the origins of the leaves below it
    merged.merge({"stem": None}, "no_stem.yaml")
    assert merged.data["stem"] is None and merged.source_of("stem.width") == "no_stem.yaml"


def test_a_yaml_that_is_not_a_mapping_or_has_a_key_twice_is_one_line(tmp_path):
    twice = tmp_path / "twice.yaml"
    twice.write_text("block:\n  kernel_size: 3\n  kernel_size: 7\n")
    with pytest.raises(RoadmapError, match="twice.yaml"):
        load_yaml(twice)
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    with pytest.raises(RoadmapError, match="list.yaml"):
        load_yaml(listed)

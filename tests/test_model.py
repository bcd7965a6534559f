import pytest
import timm
import torch

from convnext_roadmap import RoadmapError, build_model, load_timm_state_dict, resolve_config
from convnext_roadmap.measure import count_params

from conftest import randomize

ENDS = [("resnet50", "resnet50", "resnet50", 25_557_032),
        ("resnet50", "layer_scale", "convnext_tiny", 28_589_128),
        ("resnet200", "resnet200", "resnet200", 64_673_832),
        ("resnet200", "layer_scale", "convnext_base", 88_591_464)]


@pytest.mark.parametrize("base, step, timm_name, params", ENDS)
def test_ends_are_timm_models(base, step, timm_name, params):
    ours = build_model(resolve_config(step, base=base)).eval()
    theirs = randomize(timm.create_model(timm_name, pretrained=False)).eval()
    assert count_params(ours) == count_params(theirs) == params
    load_timm_state_dict(ours, theirs.state_dict())
    x = torch.randn(2, 3, 224, 224) if base == "resnet50" else torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        expected, got = theirs(x), ours(x)
    assert expected.std() > 0.1  # far from a trivial output
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_mismatched_state_dict_names_the_keys():
    ours = build_model(resolve_config("large_kernel"))
    with pytest.raises(RoadmapError, match="does not fit") as err:
        load_timm_state_dict(ours, timm.create_model("convnext_tiny").state_dict())
    assert "missing" in str(err.value) and "more" in str(err.value)
    with pytest.raises(RoadmapError, match="neither a timm ResNet"):
        load_timm_state_dict(ours, {"foo.weight": torch.zeros(1)})


@pytest.mark.parametrize("step", ["resnet50", "depthwise", "inverted_bottleneck", "fewer_norms", "layer_scale"])
def test_every_layout_trains_scaled_down(step):
    cfg = resolve_config(step, overrides=["stages.width_mult=0.25", "stages.depth_mult=0.34",
                                          "block.drop_path=0.1"])
    model = build_model(cfg, num_classes=5)
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 5)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    assert count_params(model) < count_params(build_model(resolve_config(step), num_classes=5)) / 8


def test_block_axes_build_what_they_say():
    cfg = resolve_config("fewer_norms")
    block = build_model(cfg).stages[1].blocks[0]
    assert block.conv1.groups == block.conv1.in_channels == 96 and block.conv1.stride == (2, 2)
    assert block.conv1.kernel_size == (7, 7) and isinstance(block.norm1, torch.nn.BatchNorm2d)
    assert isinstance(block.norm2, torch.nn.Identity) and isinstance(block.act2, torch.nn.GELU)
    assert isinstance(block.act1, torch.nn.Identity) and isinstance(block.act_out, torch.nn.Identity)
    assert (block.conv2.out_channels, block.conv3.out_channels) == (768, 192)
    assert block.shortcut.conv.stride == (2, 2)

import pytest
import timm
import torch

from convnext_roadmap import RoadmapError, build_model, load_timm_state_dict, resolve_config
from convnext_roadmap.measure import count_params

from conftest import randomize

ENDS = [("resnet50", "resnet50", "resnet50", 25_557_032),
        ("resnet50", "layer_scale", "convnext_tiny", 28_589_128),
        ("resnet200", "resnet200", "resnet200", 64_673_832),
        ("resnet200", "layer_scale", "convnext_base", 88_591_464),
        # ConvNeXt V2: ConvNeXt's, less layer scale's C per block, plus GRN's 2 × 4C per block; by hand, ConvNeXt-T:
        # ΣC·depth = 96·3 + 192·3 + 384·9 + 768·3 = 6,624, so 28,589,128 − 6,624 + 8 · 6,624 (the V2 README: 28.6 M);
        # ConvNeXt-B: ΣC·depth = 128·3 + 256·3 + 512·27 + 1024·3 = 18,048 → 88,717,800 (89 M)
        ("resnet50", "grn", "convnextv2_tiny", 28_589_128 + 7 * 6_624),
        ("resnet200", "grn", "convnextv2_base", 88_591_464 + 7 * 18_048)]


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


@pytest.mark.parametrize("act_at, in_place", [
    ("block.act_at=[conv1, conv2, output]", True),  # ResNet's: the branch ends in bn3, summed into in place (timm's)
    ("block.act_at=[conv1, conv2, conv3, output]", False),  # an in-place ReLU's output, which its backward needs
])
def test_the_shortcut_is_added_in_place_where_no_backward_needs_the_branchs_output(act_at, in_place):
    cfg = resolve_config("resnet50", overrides=["stages.width_mult=0.25", "block.drop_path=0.0", act_at])
    model = build_model(cfg, num_classes=5)
    block = model.stages[0].blocks[1]  # its shortcut is the identity
    seen = []
    block.norm3.register_forward_hook(lambda m, i, o: seen.append(o.data_ptr()))
    block.register_forward_hook(lambda m, i, o: seen.append(o.data_ptr()))
    model(torch.randn(2, 3, 32, 32)).sum().backward()  # an in-place add that a backward needed would raise here
    assert (seen[0] == seen[1]) == in_place  # one tensor: the branch's output, the sum, the ReLU's output


# The CPU's faster convs (model/layers.py) against torch's own nn.Conv2d: the same outputs and gradients, in float64.

def _conv_pair(kind, c, k, stride, padding, bias=True):
    from convnext_roadmap.model import layers

    groups = c if kind is layers.DepthwiseConv2d else 1
    ref = torch.nn.Conv2d(c, c, k, stride, padding=padding, groups=groups, bias=bias).double()
    fast = kind(c, c, k, stride, padding=padding, groups=groups, bias=bias).double()
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def _outputs_and_grads(conv, x, grad):
    x = x.clone().requires_grad_()
    y = conv(x)
    wrt = (x, conv.weight) + ((conv.bias,) if conv.bias is not None else ())
    return (y, *torch.autograd.grad(y, wrt, grad))


LAYOUTS = {"nchw": lambda x: x, "nhwc": lambda x: x.contiguous(memory_format=torch.channels_last),
           "view": lambda x: x.transpose(2, 3).contiguous().transpose(2, 3)}  # neither: a transposed view


@pytest.mark.parametrize("k, stride", [(3, 1), (7, 1), (3, 2), (7, 2), (5, 1), (5, 2)])
@pytest.mark.parametrize("h, w", [(1, 1), (2, 2), (4, 4), (3, 5), (2, 7), (8, 8)])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_depthwise_conv_on_small_maps_is_torchs_conv(k, stride, h, w, layout):
    from convnext_roadmap.model.layers import DepthwiseConv2d

    torch.manual_seed(k * 100 + h * 10 + w)
    batch, bias = (1, False) if (h + w) % 2 else (3, True)
    ref, fast = _conv_pair(DepthwiseConv2d, 6, k, stride, padding=(k - 1) // 2, bias=bias)
    x = LAYOUTS[layout](torch.randn(batch, 6, h, w, dtype=torch.float64))
    grad = torch.randn_like(ref(x))
    expected, got = _outputs_and_grads(ref, x, grad), _outputs_and_grads(fast, x, grad)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-10)
    smaller = h < k or w < k  # where the other way is taken: it must be the one tested here
    assert ("ValidDepthwise" in type(fast(x).grad_fn).__name__) == smaller


def test_depthwise_conv_on_small_maps_under_bf16_autocast():
    """The network trains under bf16 autocast on the CPU (train.amp): backward runs outside the autocast block, on
    the fp32 tensors the forward saved; the result is torch's conv to bf16 precision."""
    from convnext_roadmap.model.layers import DepthwiseConv2d

    ref, fast = _conv_pair(DepthwiseConv2d, 8, 7, 1, padding=3)
    ref, fast = ref.float(), fast.float()
    x = torch.randn(2, 8, 4, 4).contiguous(memory_format=torch.channels_last)
    results = []
    for conv in (ref, fast):
        xi = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = conv(xi)
        assert y.dtype == torch.bfloat16
        y.float().square().sum().backward()
        results.append((y.float(), xi.grad, conv.weight.grad, conv.bias.grad))
        assert xi.grad.dtype == conv.weight.grad.dtype == torch.float32
    for e, g in zip(*results):
        torch.testing.assert_close(g, e, rtol=0.02, atol=0.02 * e.abs().max().item())


@pytest.mark.parametrize("h", [1, 2, 4])
def test_pointwise_conv_on_channels_last_is_torchs_conv(h):
    from convnext_roadmap.model.layers import PointwiseConv2d

    ref, fast = _conv_pair(PointwiseConv2d, 5, 1, 1, padding=0)
    x = torch.randn(4, 5, h, max(h - 1, 1), dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    grad = torch.randn_like(ref(x))
    for e, g in zip(_outputs_and_grads(ref, x, grad), _outputs_and_grads(fast, x, grad)):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-10)
    assert "Permute" in type(fast(x).grad_fn).__name__  # the matrix product, not the conv


def test_only_ungrouped_1x1_convs_are_matrix_products():
    from convnext_roadmap.model.layers import PointwiseConv2d, conv

    grouped = conv(8, 8, 1, 1, groups=2)
    assert not isinstance(grouped, PointwiseConv2d) and isinstance(conv(8, 16, 1), PointwiseConv2d)
    x = torch.randn(2, 8, 3, 3).contiguous(memory_format=torch.channels_last)
    assert grouped(x).shape == (2, 8, 3, 3)


def test_proxy_network_trains_as_with_torchs_convs(monkeypatch):
    """The CPU proxy's large_kernel network, channels_last at 32² (maps down to 1×1 under a 7×7 kernel): one
    training step's loss and gradients are those of the same network with plain nn.Conv2d."""
    from convnext_roadmap.model import layers

    cfg = resolve_config("large_kernel", recipe="cpu_proxy")
    torch.manual_seed(0)
    model = build_model(cfg, num_classes=10).double().to(memory_format=torch.channels_last).train()
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    y = torch.tensor([0, 3, 5, 9])

    def step():
        model.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    state = {k: v.clone() for k, v in model.state_dict().items()}  # BatchNorm's running stats move each step
    loss, grads = step()
    model.load_state_dict(state)
    monkeypatch.setattr(layers.DepthwiseConv2d, "forward", torch.nn.Conv2d.forward)
    monkeypatch.setattr(layers.PointwiseConv2d, "forward", torch.nn.Conv2d.forward)
    expected_loss, expected = step()
    torch.testing.assert_close(loss, expected_loss, rtol=1e-10, atol=1e-10)
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e, rtol=1e-8, atol=1e-10)
    assert sum(isinstance(m, layers.DepthwiseConv2d) for m in model.modules()) >= 4


def _zero_weights(model):
    return {name for name, p in model.named_parameters() if name.endswith("weight") and not p.detach().any()}


def test_resnet_init_is_timms():
    # the oracle is timm's own ResNet-50, freshly initialised: which of its weights start at zero (each bottleneck's
    # bn3), read in our names by loading its state dict into our network, and its convs' Kaiming fan-out spread
    cfg = resolve_config("resnet50", overrides=["block.init=resnet"])
    torch.manual_seed(0)
    ours = build_model(cfg)
    theirs_in_ours = load_timm_state_dict(build_model(resolve_config("resnet50")),
                                          timm.create_model("resnet50", pretrained=False).state_dict())
    assert _zero_weights(ours) == _zero_weights(theirs_in_ours) and len(_zero_weights(ours)) == 16
    conv = ours.stages[2].blocks[1].conv2  # 3×3, 256 → 256: fan-out 256·9, std √(2 / 2304) = 0.0295
    assert conv.weight.std().item() == pytest.approx((2 / (256 * 9)) ** 0.5, rel=0.02)
    default = build_model(resolve_config("resnet50")).stages[2].blocks[1].conv2
    assert default.weight.std().item() == pytest.approx(0.02, rel=0.03)  # truncated at ±2 (not ±2σ): 0.02
    assert not _zero_weights(build_model(resolve_config("resnet50")))


def test_resnet_init_zeroes_each_blocks_last_norm_on_every_layout():
    for step in ["fewer_norms", "layer_scale"]:  # one norm per block (after the depthwise conv), BN then LN
        model = build_model(resolve_config(step, overrides=["block.init=resnet", "stages.width_mult=0.25"]))
        for block in (b for stage in model.stages for b in stage.blocks):
            norms = [n for n in (block.norm1, block.norm2, block.norm3) if getattr(n, "weight", None) is not None]
            assert len(norms) == 1 and not norms[0].weight.any()


def test_resnet_init_starts_each_resnet_block_as_its_shortcut():
    cfg = resolve_config("resnet50", overrides=["block.init=resnet", "stages.width_mult=0.25"])
    model = build_model(cfg).eval()
    block = model.stages[1].blocks[1]  # no projection: the shortcut is the input itself
    x = torch.randn(2, block.conv1.in_channels, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(block(x), torch.relu(x))  # the branch is zero: ReLU(0 + x)


def test_the_in_place_add_keeps_the_wider_dtype_of_the_two():
    # CUDA's autocast runs LayerNorm in fp32: a bf16 branch then meets an fp32 shortcut, whose sum stays fp32 (as
    # `x + shortcut` gives); added into the bf16 branch in place, it would be rounded to bf16. Stood in on the CPU
    # by a block whose shortcut is the fp32 input and whose branch ends in bf16
    block = build_model(resolve_config("resnet50", overrides=["stages.width_mult=0.25", "block.drop_path=0.0"]),
                        num_classes=5).stages[0].blocks[1]
    block.norm3.register_forward_hook(lambda m, i, o: o.to(torch.bfloat16))
    x = torch.randn(2, block.conv1.in_channels, 8, 8)
    with torch.no_grad():
        out = block(x)
        branch = block.norm3(block.conv3(block.act2(block.norm2(block.conv2(block.act1(block.norm1(block.conv1(x))))))))
    assert out.dtype == torch.float32 and block.add_in_place
    assert torch.equal(out, torch.relu(branch.float() + x))  # the fp32 sum, by hand

"""Contracts of the ResNet family: exact parameter counts, forward shapes, options and their errors."""
import pytest
import timm
import torch
import torchvision
from torch import nn

from resnet_fpn import build_resnet, list_models
from resnet_fpn.models import VARIANTS, get_variant

# Counts with the 1000-class head, as torchvision's and timm's models of the same architecture have them.
EXPECTED_PARAMS = {
    "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032, "resnet101": 44_549_160,
    "resnet152": 60_192_808, "resnext50_32x4d": 25_028_904, "resnext101_32x4d": 44_177_704,
    "resnext101_32x8d": 88_791_336, "resnext101_64x4d": 83_455_272, "wide_resnet50_2": 68_883_240,
    "wide_resnet101_2": 126_886_696, "se_resnet50": 28_088_024, "se_resnet101": 49_326_872,
    "se_resnext50_32x4d": 27_559_896, "se_resnext101_32x4d": 48_955_416, "resnet18d": 11_708_744,
    "resnet34d": 21_816_904, "resnet50d": 25_576_264, "resnet101d": 44_568_392, "preact_resnet50": 25_549_352,
}


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def reference(name: str) -> nn.Module:
    """The live torchvision or timm model of the same architecture (the variant table names it)."""
    source = get_variant(name).source
    if source.startswith("timm:"):
        return timm.create_model(source[len("timm:"):], pretrained=False)
    return getattr(torchvision.models, name)(weights=None)


def test_table_lists_every_expected_name():
    assert set(EXPECTED_PARAMS) <= set(list_models())
    assert {f"preact_resnet{d}" for d in (18, 34, 101, 152)} <= set(list_models())


@pytest.mark.parametrize("name", list(VARIANTS))
def test_parameter_count_and_names_match_reference(name):
    # The meta device builds without allocating: counting 127M parameters costs nothing.
    with torch.device("meta"):
        ours, ref = build_resnet(name), reference(name)
    assert count(ours) == count(ref)
    if name in EXPECTED_PARAMS:
        assert count(ours) == EXPECTED_PARAMS[name]
    if not get_variant(name).preact:  # pre-activation keys are renamed on load (see test_weights)
        assert set(ours.state_dict()) == set(ref.state_dict())


@pytest.mark.parametrize("name", list(VARIANTS))
def test_forward_shape(name):
    model = build_resnet(name, num_classes=7).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 7)


def projection_params(name: str, *, where: str) -> int:
    """Parameters that 1x1 projections (conv + BN) would have on the blocks whose shape changes
    (`where="changes"`) or stays (`where="same"`), derived from the variant table's shapes."""
    variant = get_variant(name)
    total, in_ch = 0, 64
    for stage, (out_ch, blocks) in enumerate(zip(variant.stage_channels, variant.layers)):
        for i in range(blocks):
            block_in = in_ch if i == 0 else out_ch
            stride = 2 if i == 0 and stage > 0 else 1
            changes = stride != 1 or block_in != out_ch
            if changes == (where == "changes"):
                total += block_in * out_ch + 2 * out_ch
        in_ch = out_ch
    return total


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50", "resnext50_32x4d"])
def test_shortcut_options_change_counts_as_the_shapes_say(name):
    with torch.device("meta"):
        b = count(build_resnet(name, options={"shortcut": "B"}))
        a = count(build_resnet(name, options={"shortcut": "A"}))
        c = count(build_resnet(name, options={"shortcut": "C"}))
        plain = count(build_resnet(name, options={"shortcut": "none"}))
    assert a == b - projection_params(name, where="changes")  # A: projections become zero padding
    assert c == b + projection_params(name, where="same")  # C: a projection on every block
    assert plain == a  # neither zero padding nor no shortcut has parameters


def test_resnet34_option_a_count():
    with torch.device("meta"):
        assert count(build_resnet("resnet34", options={"shortcut": "A"})) == 21_623_848


def test_plain_network_has_no_residual_add():
    model = build_resnet("resnet18", options={"shortcut": "none"}).eval()
    block = model.layer1[0]
    x = torch.randn(1, 64, 8, 8)
    # With no shortcut the block is conv-bn-relu-conv-bn-relu: zeroing conv2 zeroes the output.
    nn.init.zeros_(block.conv2.weight)
    nn.init.zeros_(block.bn2.bias)
    with torch.no_grad():
        assert block(x).abs().max() == 0


def test_option_a_output_matches_shape_of_option_b():
    x = torch.randn(1, 3, 65, 47)
    with torch.no_grad():
        a = build_resnet("resnet18", options={"shortcut": "A"}, num_classes=None).eval()(x)
        b = build_resnet("resnet18", options={"shortcut": "B"}, num_classes=None).eval()(x)
    assert a.shape == b.shape == (1, 512, 3, 2)


def test_stride_in_1x1_moves_the_stride():
    model = build_resnet("resnet50", options={"stride_in_1x1": True})
    block = model.layer2[0]
    assert block.conv1.stride == (2, 2) and block.conv2.stride == (1, 1)
    default = build_resnet("resnet50").layer2[0]
    assert default.conv1.stride == (1, 1) and default.conv2.stride == (2, 2)


def test_dilation_keeps_c5_at_stride_16():
    model = build_resnet("resnet50", options={"replace_stride_with_dilation": (False, False, True)}, num_classes=None).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 96)).shape == (1, 2048, 4, 6)
    assert model.layer4[1].conv2.dilation == (2, 2)


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "preact_resnet50"])
def test_zero_init_residual_makes_blocks_identity_like(name):
    model = build_resnet(name, options={"zero_init_residual": True})
    for block in model.layer1:
        assert torch.count_nonzero(block.last_norm().weight) == 0


def test_kaiming_init_statistics():
    torch.manual_seed(0)
    conv = build_resnet("resnet50").layer3[0].conv2  # 3x3, 256 -> 256: fan_out = 256 * 9
    expected_std = (2.0 / (256 * 9)) ** 0.5
    assert conv.weight.std().item() == pytest.approx(expected_std, rel=0.02)
    bn = build_resnet("resnet18").bn1
    assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)


def test_norm_layer_callable_is_used():
    model = build_resnet("resnet18", norm_layer=lambda c: nn.GroupNorm(32, c))
    assert isinstance(model.bn1, nn.GroupNorm) and isinstance(model.layer4[1].bn2, nn.GroupNorm)


def test_headless_model_returns_c5():
    model = build_resnet("resnet50", num_classes=None).eval()
    assert not hasattr(model, "fc")
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 2048, 2, 2)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"name": "resnet5O"}, ValueError, r"unknown model 'resnet5O'\. Did you mean 'resnet50'"),
        ({"name": 50}, TypeError, r"model name must be a str, got int 50"),
        ({"name": "resnet50", "options": {"shortcut": "D"}}, ValueError, r"shortcut must be one of \('A', 'B', 'C', 'none'\), got 'D'"),
        ({"name": "resnet50", "options": {"replace_stride_with_dilation": (True,)}}, ValueError, r"must be 3 booleans .* got \(True,\)"),
        ({"name": "resnet50", "options": {"stride": 1}}, ValueError, r"unknown ResNet options \['stride'\]; valid options are \['shortcut', 'stride_in_1x1'"),
        ({"name": "resnet50", "options": "B"}, TypeError, r"options must be a ResNetOptions, a mapping of its fields or None, got 'B'"),
        ({"name": "resnet50", "num_classes": 0}, ValueError, r"num_classes must be a positive int or None, got 0"),
        ({"name": "resnet50", "norm_layer": "bn"}, TypeError, r"norm_layer must be a callable"),
    ],
)
def test_bad_options_raise_clear_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        build_resnet(**kwargs)


def test_options_are_keyword_only():
    with pytest.raises(TypeError):
        build_resnet("resnet18", 10)  # type: ignore[misc]

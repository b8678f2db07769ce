"""load_weights: torchvision/timm checkpoints load unchanged and give the same outputs; errors name keys."""
import pytest
import timm
import torch
import torchvision
from torch import nn

from resnet_fpn import build_resnet, load_weights
from resnet_fpn.weights import read_state_dict


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN statistics and affine terms, so a parity check exercises every BN buffer."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return model.eval()


PARITY = [
    ("resnet50", lambda: torchvision.models.resnet50(weights=None)),
    ("resnext50_32x4d", lambda: torchvision.models.resnext50_32x4d(weights=None)),
    ("wide_resnet50_2", lambda: torchvision.models.wide_resnet50_2(weights=None)),
    ("se_resnet50", lambda: timm.create_model("seresnet50", pretrained=False)),
    ("resnet50d", lambda: timm.create_model("resnet50d", pretrained=False)),
    ("preact_resnet50", lambda: timm.create_model("resnetv2_50", pretrained=False)),
]


@pytest.mark.parametrize("name, make_reference", PARITY, ids=[p[0] for p in PARITY])
def test_strict_load_and_output_parity(name, make_reference):
    torch.manual_seed(0)
    ref = randomize_bn(make_reference())
    model = build_resnet(name).eval()
    report = load_weights(model, ref.state_dict(), strict=True)
    assert report.missing == [] and report.unexpected == []
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        ours, theirs = model(x), ref(x)
    assert (ours - theirs).abs().max() / theirs.abs().max() <= 1e-5


def test_timm_resnetv2_keys_are_reported_as_converted():
    model = build_resnet("preact_resnet50")
    report = load_weights(model, timm.create_model("resnetv2_50").state_dict())
    assert ("stem.conv.weight", "conv1.weight") in report.converted
    assert ("stages.0.blocks.0.norm1.weight", "layer1.0.bn1.weight") in report.converted
    assert ("head.fc.weight", "fc.weight") in report.converted


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: {"state_dict": sd},
        lambda sd: {"model": sd, "optimizer": {}, "epoch": 3},
        lambda sd: {"state_dict": {f"model.{k}": v for k, v in sd.items()}, "epoch": 1},  # Lightning
        lambda sd: {f"module.{k}": v for k, v in sd.items()},  # DDP
        lambda sd: {f"_orig_mod.{k}": v for k, v in sd.items()},  # torch.compile
    ],
    ids=["state_dict", "model", "lightning", "ddp", "compile"],
)
def test_wrappers_and_prefixes(wrap):
    source = torchvision.models.resnet18(weights=None)
    model = build_resnet("resnet18")
    report = load_weights(model, wrap(source.state_dict()))
    assert report.missing == [] and report.unexpected == []
    assert torch.equal(model.layer3[1].conv2.weight, source.layer3[1].conv2.weight)


def test_load_from_file_and_safetensors(tmp_path):
    from safetensors.torch import save_file

    source = torchvision.models.resnet18(weights=None)
    pth = tmp_path / "r18.pth"
    torch.save(source.state_dict(), pth)
    st = tmp_path / "r18.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(st))
    for path in (pth, str(pth), st):
        model = build_resnet("resnet18", weights=path)
        assert torch.equal(model.fc.weight, source.fc.weight)


def test_missing_and_unexpected_keys_are_listed():
    state = torchvision.models.resnet18(weights=None).state_dict()
    del state["layer4.1.bn2.weight"]
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"1 missing keys \[layer4\.1\.bn2\.weight\], 1 unexpected keys \[extra\.weight\]"):
        load_weights(build_resnet("resnet18"), state)
    report = load_weights(build_resnet("resnet18"), state, strict=False)
    assert report.missing == ["layer4.1.bn2.weight"] and report.unexpected == ["extra.weight"]


def test_wrong_architecture_lists_keys_and_counts():
    state = torchvision.models.resnet50(weights=None).state_dict()
    with pytest.raises(ValueError, match=r"shape mismatch for 'conv1.weight'|missing keys"):
        load_weights(build_resnet("resnet101"), state)


def test_shape_mismatch_names_key_and_both_shapes():
    state = torchvision.models.resnet18(weights=None, num_classes=10).state_dict()
    with pytest.raises(ValueError, match=r"shape mismatch for 'fc.weight': .* has \(10, 512\), model expects \(1000, 512\)"):
        load_weights(build_resnet("resnet18"), state, strict=False)


def test_missing_file_and_unreadable_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"weights file not found: .*nope\.pth"):
        load_weights(build_resnet("resnet18"), tmp_path / "nope.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"could not read weights file .*bad\.pth"):
        load_weights(build_resnet("resnet18"), bad)


def test_unreachable_url_names_the_url_and_suggests_a_path(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    url = "http://127.0.0.1:9/resnet18.pth"  # the discard port on loopback: refused at once
    with pytest.raises(ValueError, match=r"could not download weights from http://127\.0\.0\.1:9/resnet18\.pth .*local path"):
        load_weights(build_resnet("resnet18"), url)


def test_not_a_state_dict():
    with pytest.raises(ValueError, match=r"no tensors found; top-level keys are \['epoch', 'note'\]"):
        read_state_dict({"epoch": 1, "note": "hello"})
    with pytest.raises(TypeError, match=r"weights must be a path, a URL or a state dict, got int"):
        read_state_dict(3)


def test_report_says_where_unexpected_tensors_would_have_gone():
    from torchvision.models.detection import FasterRCNN

    from resnet_fpn import build_backbone

    deeper = torchvision.models.resnet34(weights=None).state_dict()
    report = load_weights(build_backbone("resnet18-fpn"), deeper, strict=False)
    assert report.unexpected_targets["layer3.5.conv1.weight"] == "body.layer3.5.conv1.weight"
    assert report.unexpected_targets["fc.weight"] == "body.fc.weight"
    assert set(report.unexpected_targets) == set(report.unexpected)
    # A detection checkpoint aligns on backbone.*: its heads are outside the aligned part, so no target.
    detection = FasterRCNN(build_backbone("resnet18-fpn"), num_classes=3).state_dict()
    report = load_weights(build_backbone("resnet18-fpn"), detection, strict=False)
    assert report.missing == [] and any(k.startswith("rpn.") for k in report.unexpected)
    assert report.unexpected_targets == {}

"""ResNet options (ResNetOptions, THE declaration) from every entry point, and what the newer ones compute:
deformable convs (plain network at init, offsets that learn, ONNX), weight standardisation, gradient checkpointing
(same gradients, one BN update, less saved), YAML and --backbone-opt, errors that name the key and the allowed values.
"""
import copy
import dataclasses
import json
import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from resnet_fpn.backbone import build_backbone, register_backbone
from resnet_fpn.backbone.registry import _REGISTRY
from resnet_fpn.cli import main
from resnet_fpn.detectors import build_detector
from resnet_fpn.models import build_resnet
from resnet_fpn.models.convs import WS_EPS, DeformConv2d, OffsetConv2d, WSConv2d, standardize_weight
from resnet_fpn.models.resnet import DEFORM_STAGES, ResNetOptions
from resnet_fpn.training import load_config

from test_training import tiny_config
from test_weights import randomize_bn

# A non-default value of every ResNetOptions field, as YAML writes it (lists, not tuples). A new field fails
# test_every_field_has_a_non_default_value_here until it is added: then it is checked from YAML and the CLI.
NON_DEFAULT = {
    "shortcut": "C",
    "stride_in_1x1": True,
    "replace_stride_with_dilation": [False, False, True],
    "zero_init_residual": True,
    "conv": "ws",
    "deform_stages": ["c3", "c4", "c5"],
    "deform_modulated": False,
    "deform_groups": 2,
    "grad_checkpointing": True,
}
# How each is written on the command line (--backbone-opt KEY=VALUE, VALUE read as YAML).
CLI_TEXT = {
    "shortcut": "C", "stride_in_1x1": "true", "replace_stride_with_dilation": "[false,false,true]",
    "zero_init_residual": "yes", "conv": "ws", "deform_stages": "[c3,c4,c5]", "deform_modulated": "false",
    "deform_groups": "2", "grad_checkpointing": "true",
}


def _options(value) -> ResNetOptions:
    return ResNetOptions.coerce(value)


def test_every_field_has_a_non_default_value_here():
    names = [f.name for f in dataclasses.fields(ResNetOptions)]
    assert sorted(NON_DEFAULT) == sorted(names) == sorted(CLI_TEXT)
    for name, value in NON_DEFAULT.items():
        assert getattr(_options({name: value}), name) != getattr(ResNetOptions(), name), name


# ------------------------------------------------------------------------------------ deformable convs
def _offset_convs(model: nn.Module):
    return [m for m in model.modules() if isinstance(m, OffsetConv2d)]


@pytest.mark.parametrize("name,stages,modulated,groups", [
    ("resnet18", ("c3", "c4", "c5"), True, 1),
    ("resnet50", ("c3", "c4", "c5"), True, 1),
    ("resnet50", ("c2", "c3", "c4", "c5"), False, 2),
    ("resnext50_32x4d", ("c4", "c5"), True, 4),
])
def test_dcn_at_init_computes_the_plain_network_from_the_same_checkpoint(name, stages, modulated, groups, caplog):
    torch.manual_seed(0)
    plain = randomize_bn(build_backbone(f"{name}-fpn", norm="bn", freeze_at=0))
    checkpoint = copy.deepcopy(plain.state_dict())
    with caplog.at_level(logging.INFO, logger="resnet_fpn.backbone.registry"):
        dcn = build_backbone(f"{name}-fpn", weights=checkpoint, norm="frozen_bn", freeze_at=0,
                             options={"deform_stages": list(stages), "deform_modulated": modulated,
                                      "deform_groups": groups}).eval()
    per_block = {"resnet18": [2, 2, 2, 2], "resnet50": [3, 4, 6, 3], "resnext50_32x4d": [3, 4, 6, 3]}[name]
    expected = sum(n for stage, n in zip(DEFORM_STAGES, per_block) if stage in stages)
    convs = [m for m in dcn.modules() if isinstance(m, DeformConv2d)]
    assert len(convs) == expected and all(c.modulated is modulated and c.deform_groups == groups for c in convs)
    assert f"{2 * expected} deformable-conv offset tensors not in the checkpoint, left at zero" in caplog.text
    # The main weight loaded where the plain conv's is (conv2.weight); the offsets are new and zero.
    assert torch.equal(dcn.body.layer4[0].conv2.weight, checkpoint["body.layer4.0.conv2.weight"])
    assert all(not c.weight.any() and not c.bias.any() for c in _offset_convs(dcn))
    x = torch.rand(2, 3, 96, 128)
    with torch.no_grad():
        want, got = plain(x), dcn(x)
    for key in want:
        assert (got[key] - want[key]).abs().max() <= 1e-5 * want[key].abs().max(), key


def test_a_training_step_moves_the_offsets():
    torch.manual_seed(0)
    model = build_backbone("resnet18-fpn", norm="frozen_bn", freeze_at=2,
                           options={"deform_stages": ["c3", "c4", "c5"]}).train()
    before = [m.weight.detach().clone() for m in _offset_convs(model)]
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    out = model(torch.rand(2, 3, 64, 64))
    sum((v ** 2).mean() for v in out.values()).backward()
    for conv in _offset_convs(model):
        assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
    optimizer.step()
    assert all(not torch.equal(m.weight, b) for m, b in zip(_offset_convs(model), before))
    # ... and then the network is no longer the plain one: the modulation and offsets act.
    conv = model.body.layer4[1].conv2
    x = torch.rand(1, conv.in_channels, 5, 5)
    assert not torch.allclose(conv(x), F.conv2d(x, conv.weight, padding=1), atol=1e-6)


def test_plain_classifier_weights_load_strictly_into_a_dcn_resnet():
    plain = build_resnet("resnet18", num_classes=10)
    dcn = build_resnet("resnet18", num_classes=10, weights=plain.state_dict(), options={"deform_stages": ["c5"]})
    assert torch.equal(dcn.layer4[1].conv2.weight, plain.layer4[1].conv2.weight)
    # Only offsets may be missing: anything else still fails as strict loading does.
    partial = {k: v for k, v in plain.state_dict().items() if k != "fc.bias"}
    with pytest.raises(ValueError, match=r"1 tensors missing \(e\.g\. \['fc\.bias'\]\)"):
        build_resnet("resnet18", num_classes=10, weights=partial, options={"deform_stages": ["c5"]})
    # A DCN checkpoint in a plain network: its offsets are body tensors the plain network lacks.
    with pytest.raises(ValueError, match=r"hold 4 backbone tensors that resnet18-fpn does not have, in layer4\.0\.conv2"):
        build_backbone("resnet18-fpn", weights={f"body.{k}": v for k, v in dcn.state_dict().items()})


def test_dcn_exports_to_onnx_from_opset_19_and_refuses_earlier_saying_why(tmp_path):
    pytest.importorskip("onnxruntime")
    from resnet_fpn.deploy.export import export_onnx
    from resnet_fpn.deploy.parity import check_parity, parity_inputs

    torch.manual_seed(0)
    model = build_backbone("resnet18-fpn", options={"deform_stages": ["c4", "c5"], "deform_groups": 2}).eval()
    with torch.no_grad():  # offsets and modulation away from their init, so the file's DeformConv really samples
        for conv in _offset_convs(model):
            conv.weight.normal_(0, 0.01)
            conv.bias.normal_(0, 0.5)
    with pytest.raises(RuntimeError, match=r"export to ONNX from opset 19 on, whose DeformConv op they map to .* "
                                           r"pass opset=19"):
        export_onnx(model, tmp_path / "dcn17.onnx", opset=17, example_size=(64, 96))
    exported = export_onnx(model, tmp_path / "dcn19.onnx", opset=19, example_size=(64, 96))
    report = check_parity(model, exported, inputs=parity_inputs("backbone", sizes=[(64, 96), (80, 64)]))
    assert report.ok, report.lines()


def test_non_finite_offsets_are_refused_not_a_segfault():
    conv = DeformConv2d(8, 8, 3, padding=1)
    with pytest.raises(FloatingPointError, match=r"offset predictor gave non-finite values \(NaN/inf\); "
                                                 r"non-finite input: True"):
        conv(torch.full((1, 8, 5, 5), float("inf")))


# ------------------------------------------------------------------------------- weight standardisation
def test_ws_weight_has_zero_mean_and_unit_std_per_output_channel_as_the_formula():
    torch.manual_seed(0)
    conv = WSConv2d(16, 32, 3, padding=1, bias=False)
    nn.init.normal_(conv.weight, mean=0.3, std=0.05)
    w = conv.weight.detach()
    hat = standardize_weight(w)
    flat = hat.flatten(1)
    assert flat.mean(1).abs().max() < 1e-6
    # Unbiased std of W_hat is std / (std + eps): 1 up to the documented eps (mmcv's ConvWS2d).
    std = w.flatten(1).std(1)
    assert torch.allclose(flat.std(1), std / (std + WS_EPS), atol=1e-6)
    assert (flat.std(1) - 1).abs().max() < 2 * WS_EPS / std.min()
    by_hand = (w - w.mean((1, 2, 3), keepdim=True)) / (w.var((1, 2, 3), keepdim=True, unbiased=True).sqrt() + 1e-5)
    assert torch.allclose(hat, by_hand, atol=1e-6)
    x = torch.rand(2, 16, 9, 9)
    assert torch.allclose(conv(x), F.conv2d(x, by_hand, padding=1), atol=1e-5)


@pytest.mark.parametrize("name", ["resnet18", "resnet50d"])
def test_ws_makes_every_body_conv_standardised_with_the_same_names(name):
    plain = build_backbone(f"{name}-fpn", norm="gn")
    ws = build_backbone(f"{name}-fpn", norm="gn", options={"conv": "ws", "deform_stages": ["c5"]})
    assert plain.state_dict().keys() == {k for k in ws.state_dict() if ".offset." not in k}
    body_convs = {n: m for n, m in ws.body.named_modules() if isinstance(m, (nn.Conv2d, DeformConv2d))
                  and not isinstance(m, OffsetConv2d)}
    assert any(n.startswith("conv1") for n in body_convs) and any("downsample" in n for n in body_convs)
    assert all(isinstance(m, WSConv2d) or (isinstance(m, DeformConv2d) and m.eps == WS_EPS)
               for m in body_convs.values())
    ws.load_state_dict(plain.state_dict(), strict=False)  # loads by name; computes the WS network
    out = ws(torch.rand(1, 3, 64, 64))
    assert all(torch.isfinite(v).all() for v in out.values())


# ---------------------------------------------------------------------------------- gradient checkpointing
def _step(model: nn.Module, x: torch.Tensor):
    model.zero_grad(set_to_none=True)
    out = model(x)
    loss = sum((v.float() * torch.linspace(-1, 1, v.shape[-1])).square().mean() for v in out.values())
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _saved_tensors(model: nn.Module, x: torch.Tensor) -> int:
    count = [0]

    def pack(t):
        count[0] += t.numel()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return count[0]


@pytest.mark.parametrize("norm,freeze_at", [("frozen_bn", 2), ("bn", 0)])
def test_checkpointing_gives_the_plain_gradients_and_one_bn_update(norm, freeze_at):
    torch.manual_seed(0)
    plain = build_backbone("resnet50-fpn", norm=norm, freeze_at=freeze_at, fpn_norm="bn" if norm == "bn" else None)
    if norm == "frozen_bn":
        plain = randomize_bn(build_backbone("resnet50-fpn", norm="bn"))
        plain = build_backbone("resnet50-fpn", weights=plain.state_dict(), norm=norm, freeze_at=freeze_at)
    checkpointed = build_backbone("resnet50-fpn", norm=norm, freeze_at=freeze_at,
                                  fpn_norm="bn" if norm == "bn" else None, options={"grad_checkpointing": True})
    checkpointed.load_state_dict(plain.state_dict())
    assert checkpointed.grad_checkpointing
    plain.train(), checkpointed.train()
    x = torch.rand(2, 3, 64, 96)
    want, got = _step(plain, x), _step(checkpointed, x)
    assert want.keys() == got.keys() and len(want) == sum(p.requires_grad for p in plain.parameters())
    if freeze_at:
        assert not any(k.startswith(("body.conv1", "body.layer1")) for k in got)
    for name, grad in want.items():
        assert (got[name] - grad).abs().max() <= 1e-6 * max(grad.abs().max(), 1e-12), name
    # BN running statistics moved once per step (not once more in the recomputation).
    for (name, a), b in zip(plain.state_dict().items(), checkpointed.state_dict().values()):
        assert torch.equal(a, b), name
    # And it is checkpointing: far less is kept for backward.
    assert _saved_tensors(checkpointed, x) < 0.5 * _saved_tensors(plain, x)


def test_checkpointing_off_in_eval_and_under_no_grad_and_with_everything_frozen():
    model = build_backbone("resnet18-fpn", norm="frozen_bn", freeze_at=5, options={"grad_checkpointing": True})
    x = torch.rand(1, 3, 64, 64)
    model.fpn.requires_grad_(False)
    assert _saved_tensors(model.train(), x) == 0  # nothing needs grad: no graph, nothing to recompute
    model.fpn.requires_grad_(True)
    with torch.no_grad():
        model.train()(x)
    assert _saved_tensors(model.eval(), x) > 0  # eval with grad: plain autograd, nothing recomputed


def test_checkpointing_with_dcn_under_bf16_autocast_runs():
    torch.manual_seed(0)
    model = build_backbone("resnet50-fpn", norm="frozen_bn", freeze_at=2,
                           options={"grad_checkpointing": True, "deform_stages": ["c3", "c4", "c5"]}).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.rand(2, 3, 64, 64))
        assert {v.dtype for v in out.values()} == {torch.bfloat16}
        loss = sum(v.float().square().mean() for v in out.values())
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert all(m.weight.grad.abs().sum() > 0 for m in _offset_convs(model))


# --------------------------------------------------------------------------------- from every entry point
def _built_options(model_section: dict) -> ResNetOptions:
    detector = build_detector(num_classes=3, **model_section)
    return detector.backbone.body.options


def _yaml_config(tmp_path: Path, options: dict) -> Path:
    config = tiny_config(tmp_path)
    config["model"]["backbone_options"] = options
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("field", list(NON_DEFAULT))
def test_each_option_arrives_from_yaml(tmp_path, field):
    config = load_config(_yaml_config(tmp_path, {field: NON_DEFAULT[field]}))
    options = _built_options(config.model)
    assert options == _options({field: NON_DEFAULT[field]})
    assert getattr(options, field) != getattr(ResNetOptions(), field)


def test_all_options_at_once_from_yaml_build_that_backbone(tmp_path):
    config = load_config(_yaml_config(tmp_path, NON_DEFAULT))
    detector = build_detector(num_classes=3, **config.model)
    assert detector.backbone.body.options == _options(NON_DEFAULT)
    assert detector.backbone.grad_checkpointing  # the FPN follows grad_checkpointing
    body = detector.backbone.body
    assert isinstance(body.conv1, WSConv2d) and isinstance(body.layer1[0].downsample[0], WSConv2d)  # shortcut C
    assert isinstance(body.layer2[0].conv2, DeformConv2d) and not body.layer2[0].conv2.modulated
    assert body.layer2[0].conv2.deform_groups == 2 and isinstance(body.layer1[0].conv2, WSConv2d)
    assert body.output_shape()["c5"].stride == 16  # c5 dilated


def _cli_config(monkeypatch, argv):
    """The TrainConfig `resnet-fpn train ARGV` would train (training itself replaced)."""
    import resnet_fpn.training as training

    seen = {}
    monkeypatch.setattr(training, "train", lambda config, resume=None: seen.setdefault("config", config))
    assert main(["train", *argv]) == 0
    return seen["config"]


@pytest.mark.parametrize("field", list(NON_DEFAULT))
def test_each_option_arrives_from_the_command_line(tmp_path, monkeypatch, field):
    recipe = _yaml_config(tmp_path, {})
    config = _cli_config(monkeypatch, ["--config", str(recipe), "--backbone-opt", f"{field}={CLI_TEXT[field]}"])
    options = _built_options(config.model)
    assert options == _options({field: NON_DEFAULT[field]})


def test_backbone_opt_flags_merge_over_the_recipe(tmp_path, monkeypatch):
    recipe = _yaml_config(tmp_path, {"deform_stages": ["c5"], "stride_in_1x1": True})
    config = _cli_config(monkeypatch, ["--config", str(recipe), "--backbone-opt", "deform_stages=[c4,c5]",
                                       "--backbone-opt", "deform_groups=2", "--backbone-opt", "deform_groups=4"])
    assert config.model["backbone_options"] == {"deform_stages": ["c4", "c5"], "stride_in_1x1": True,
                                                "deform_groups": 4}
    # config.yaml of a run is written with yaml.safe_dump: the options stay plain YAML.
    assert yaml.safe_load(yaml.safe_dump(config.to_dict()))["model"]["backbone_options"]["deform_stages"] == ["c4", "c5"]


# ------------------------------------------------------------------------------------------------- errors
VALID_KEYS = r"valid keys are ResNetOptions' fields: \['shortcut', 'stride_in_1x1', .*'grad_checkpointing'\]"
BAD_VALUES = [
    ({"deform_stage": ["c5"]}, r"model\.backbone_options: unknown key\(s\) \['deform_stage'\]; " + VALID_KEYS),
    ({"deform_stages": ["c6"]}, r"model\.backbone_options\.deform_stages: deform_stages must be distinct stage names "
                                r"from \('c2', 'c3', 'c4', 'c5'\), got \['c6'\]"),
    ({"deform_stages": "c5"}, r"model\.backbone_options\.deform_stages: deform_stages must be a list of stage names "
                              r"from \('c2', 'c3', 'c4', 'c5'\)"),
    ({"conv": "std"}, r"model\.backbone_options\.conv: conv must be one of \('plain', 'ws'\), got 'std'"),
    ({"deform_groups": 0}, r"model\.backbone_options\.deform_groups: deform_groups must be a positive int, got 0"),
    ({"deform_modulated": "yes please"}, r"model\.backbone_options\.deform_modulated: deform_modulated must be a "
                                         r"bool, got 'yes please'"),
    ({"grad_checkpointing": 1}, r"model\.backbone_options\.grad_checkpointing: grad_checkpointing must be a bool"),
    ({"shortcut": "D"}, r"model\.backbone_options\.shortcut: shortcut must be one of \('A', 'B', 'C', 'none'\)"),
    ({"replace_stride_with_dilation": [True]}, r"model\.backbone_options\.replace_stride_with_dilation: "
                                               r"replace_stride_with_dilation must be 3 booleans"),
]


@pytest.mark.parametrize("options,match", BAD_VALUES)
def test_bad_options_fail_at_config_load_naming_the_key_and_the_allowed_values(tmp_path, options, match):
    with pytest.raises(ValueError, match=r"recipe\.yaml: " + match):
        load_config(_yaml_config(tmp_path, options))


@pytest.mark.parametrize("flag,message", [
    ("deform_stages=[c1]", r"--backbone-opt deform_stages \(model\.backbone_options\.deform_stages\): deform_stages "
                           r"must be distinct stage names from \('c2', 'c3', 'c4', 'c5'\), got \['c1'\]"),
    ("conv=ws2", r"--backbone-opt conv \(model\.backbone_options\.conv\): conv must be one of \('plain', 'ws'\)"),
    ("deform_stagse=[c5]", r"unknown key\(s\) \['deform_stagse'\]; " + VALID_KEYS),
    ("deform_stages", r"argument --backbone-opt: expected KEY=VALUE with KEY a ResNet option"),
    ("a.b=1", r"argument --backbone-opt: expected KEY=VALUE"),
    ("conv=", r"argument --backbone-opt: conv: no value given"),
    ("deform_stages=[c4", r"argument --backbone-opt: deform_stages: the value '\[c4' is not a YAML scalar or list"),
])
def test_bad_backbone_opt_flags_are_one_line_naming_the_flag(tmp_path, capsys, flag, message):
    recipe = _yaml_config(tmp_path, {})
    assert main(["train", "--config", str(recipe), "--backbone-opt", flag]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 or "usage:" in err, err
    assert __import__("re").search(message, err), err


def test_build_backbone_refuses_unknown_options_and_options_for_timm():
    with pytest.raises(ValueError, match=r"unknown ResNet options \['dcn'\]; valid options are \['shortcut'"):
        build_backbone("resnet18-fpn", options={"dcn": True})
    with pytest.raises(TypeError, match=r"options must be a ResNetOptions, a mapping of its fields or None"):
        build_backbone("resnet18-fpn", options=["deform_stages"])
    with pytest.raises(ValueError, match=r"backbone 'timm:resnet18-fpn' does not take ResNet options: got "
                                         r"\{'deform_stages': \('c5',\)\}; they apply to this project's ResNets"):
        build_backbone("timm:resnet18-fpn", options={"deform_stages": ["c5"]})
    build_backbone("timm:resnet18-fpn", options=ResNetOptions())  # the defaults are no option at all


def test_a_factory_without_the_options_keyword_works_and_refuses_only_options(monkeypatch):
    from resnet_fpn.backbone import FPNBackbone, ResNetFeatures
    from resnet_fpn.models import get_variant

    monkeypatch.setattr("resnet_fpn.backbone.registry._REGISTRY", dict(_REGISTRY))

    @register_backbone("old-style-fpn")
    def old(*, weights, norm, freeze_at, out_features, top_block, fpn_channels):
        return FPNBackbone(ResNetFeatures(get_variant("resnet18"), out_features=out_features, norm=norm),
                           top_block=top_block, fpn_channels=fpn_channels)

    assert build_backbone("old-style-fpn", options={}).output_shape()["0"].stride == 4
    with pytest.raises(ValueError, match=r"backbone 'old-style-fpn' does not support the option "
                                         r"options=\{'grad_checkpointing': True\}"):
        build_backbone("old-style-fpn", options={"grad_checkpointing": True})


# ------------------------------------------------------------------------------------- end to end (slow)
@pytest.mark.slow
@pytest.mark.parametrize("model", ["faster_rcnn", "mask_rcnn"])
def test_dcn_detectors_train_end_to_end_on_fruits_nuts(tmp_path, shared_data, model):
    from resnet_fpn.training import config_from_dict, train

    config = tiny_config(tmp_path, root=str(shared_data / "fruits_nuts"))
    config["model"].update(model=model, min_size=128, max_size=160, mask_head_dim=32, fpn_channels=64,
                           backbone_options={"deform_stages": ["c3", "c4", "c5"], "grad_checkpointing": True})
    config["data"].update(batch_size=2, val_batch_size=2)
    config["trainer"].update(max_steps=3, val_every_n_steps=3, checkpoint_every_n_steps=3)
    config["num_pictures"] = 0
    result = train(config_from_dict(config))
    iou_types = {"faster_rcnn": {"bbox"}, "mask_rcnn": {"bbox", "segm"}}[model]
    assert set(result["metrics"]) == iou_types | {"per_category"}
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    offsets = {k: v for k, v in ckpt["state_dict"].items() if ".conv2.offset.weight" in k}
    assert len(offsets) == 2 + 2 + 2  # resnet18: two blocks in each of c3, c4, c5
    assert any(v.abs().sum() > 0 for v in offsets.values())  # three steps moved them from zero
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics == result["metrics"]

"""Weights by name (resnet_fpn.hub): torchvision, timm and detectron2 names load from the cache with no network,
downloads go through torch.hub's cache and hash check, and every failure names the URL and where to put the file.

Everything here is offline: files are generated in the test, placed in a temporary TORCH_HOME / Hugging Face cache
or served from a loopback HTTP server; any other download attempt fails the test.
"""
import dataclasses
import hashlib
import http.server
import io
import pickle
import socket
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torchvision
from torch import nn

import resnet_fpn
from resnet_fpn import build_backbone, build_detector, build_resnet, hub, load_weights
from resnet_fpn.cli import main
from resnet_fpn.models.variants import VARIANTS

from test_weights import randomize_bn

MSRA_R50 = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"


@pytest.fixture
def torch_home(tmp_path, monkeypatch) -> Path:
    """TORCH_HOME in tmp_path (torch.hub's set_dir override cleared, so the variable decides); the checkpoints
    folder is returned."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # what torch.hub.set_dir sets; restored after the test
    assert Path(torch.hub.get_dir()) == tmp_path / "torch" / "hub"
    return tmp_path / "torch" / "hub" / "checkpoints"


@pytest.fixture
def no_network(monkeypatch):
    """Any download attempt fails the test (AssertionError is not among the errors the hub reports)."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"a download was attempted: {args[:1]}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)


@pytest.fixture
def server():
    """A loopback HTTP server; put bytes in the returned dict under a path ("/x.pth") to serve them."""
    files = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            body = files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", files
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _saved(state) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def _default_file_name(builder: str) -> str:
    return Path(torchvision.models.get_model_weights(builder).DEFAULT.url).name


# ---------------------------------------------------------------------------------------------------------------
# torchvision names, from the cache


def test_torchvision_name_loads_from_the_cache_with_no_network(torch_home, no_network):
    state = randomize_bn(torchvision.models.resnet50(weights=None)).state_dict()
    cached = torch_home / _default_file_name("resnet50")
    cached.parent.mkdir(parents=True)
    torch.save(state, cached)  # not torchvision's file: a cached file is used with no hash check, as torch.hub

    by_name = build_backbone("resnet50-fpn", weights="torchvision://resnet50").state_dict()
    by_path = build_backbone("resnet50-fpn", weights=cached).state_dict()
    body = [k for k in by_path if k.startswith("body.")]
    assert body and all(torch.equal(by_name[k], by_path[k]) for k in body)
    assert torch.equal(by_name["body.bn1.running_var"], state["bn1.running_var"])

    report = load_weights(build_resnet("resnet50"), "torchvision://resnet50/IMAGENET1K_V2")
    assert report.source == f"torchvision://resnet50 ({cached})"


def test_torchvision_detector_name_loads_from_the_cache(torch_home, no_network):
    reference = torchvision.models.detection.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    state = reference.state_dict()
    cached = torch_home / _default_file_name("fasterrcnn_resnet50_fpn")
    cached.parent.mkdir(parents=True)
    torch.save(state, cached)

    ours = build_detector("faster_rcnn", backbone="resnet50-fpn", num_classes=91,
                          weights="torchvision://fasterrcnn_resnet50_fpn").state_dict()
    counters = lambda keys: {k for k in keys if not k.endswith("num_batches_tracked")}  # noqa: E731
    assert counters(ours) == counters(state)
    assert all(torch.equal(ours[k], state[k]) for k in counters(ours))


def test_a_truncated_cached_file_is_named_with_the_advice_to_delete_it(torch_home, no_network):
    cached = torch_home / _default_file_name("resnet18")
    cached.parent.mkdir(parents=True)
    cached.write_bytes(_saved(torchvision.models.resnet18().state_dict())[:1000])
    with pytest.raises(ValueError, match=rf"cached weights file {cached}.*Delete it"):
        build_resnet("resnet18", weights="torchvision://resnet18")


# ---------------------------------------------------------------------------------------------------------------
# Downloads from a loopback server


def test_url_download_lands_in_the_cache_and_loads(torch_home, server):
    base, files = server
    source = torchvision.models.resnet18(weights=None)
    body = _saved(source.state_dict())
    name = f"resnet18-{hashlib.sha256(body).hexdigest()[:8]}.pth"
    files[f"/{name}"] = body

    report = load_weights(build_resnet("resnet18"), f"{base}/{name}")
    assert (torch_home / name).read_bytes() == body
    assert report.source == f"{base}/{name} ({torch_home / name})" and report.missing == []


def test_a_download_that_does_not_match_its_hash_is_refused_and_not_kept(torch_home, server):
    base, files = server
    body = _saved(torchvision.models.resnet18(weights=None).state_dict())
    assert not hashlib.sha256(body).hexdigest().startswith("deadbeef")
    files["/resnet18-deadbeef.pth"] = body
    url = f"{base}/resnet18-deadbeef.pth"
    with pytest.raises(ValueError, match=rf"{url} does not match the hash prefix 'deadbeef'.*not kept"):
        load_weights(build_resnet("resnet18"), url)
    assert not torch_home.exists() or list(torch_home.iterdir()) == []  # no file, no partial download


def test_http_error_and_closed_port_name_the_url_the_cache_path_and_torch_home(torch_home, server):
    base, _ = server
    url = f"{base}/missing-0123abcd.pth"
    with pytest.raises(ValueError, match=rf"could not download weights from {url} \(HTTP Error 404.*put it at "
                                         rf"{torch_home / 'missing-0123abcd.pth'} .*TORCH_HOME"):
        load_weights(build_resnet("resnet18"), url)

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/resnet18.pth"
    with pytest.raises(ValueError, match=rf"from {url} \(.*refused.*{torch_home / 'resnet18.pth'}.*TORCH_HOME"):
        load_weights(build_resnet("resnet18"), url)


def test_a_name_goes_through_the_same_download_path(torch_home, server, monkeypatch):
    base, files = server
    body = _saved(torchvision.models.resnet18(weights=None).state_dict())
    digest = hashlib.sha256(body).hexdigest()
    name = f"resnet18-{digest[:8]}.pth"
    files[f"/{name}"] = body
    entry = hub.get_weights("torchvision://resnet18")
    moved = dataclasses.replace(entry, url=f"{base}/{name}", file_name=name, hash_prefix=digest[:8])
    monkeypatch.setitem(hub._registry(), "torchvision://resnet18", moved)

    backbone = build_backbone("resnet18-fpn", weights="torchvision://resnet18")
    assert (torch_home / name).is_file()
    assert torch.equal(backbone.body.conv1.weight, torch.load(torch_home / name)["conv1.weight"])

    wrong = dataclasses.replace(moved, file_name="resnet18-other.pth", hash_prefix="deadbeef")
    monkeypatch.setitem(hub._registry(), "torchvision://resnet18", wrong)
    with pytest.raises(ValueError, match=r"^torchvision://resnet18: the file downloaded from .* hash prefix 'deadbeef'"):
        build_backbone("resnet18-fpn", weights="torchvision://resnet18")
    assert not (torch_home / "resnet18-other.pth").exists()


# ---------------------------------------------------------------------------------------------------------------
# timm names, from a Hugging Face cache


@pytest.fixture
def hf_cache(tmp_path, monkeypatch) -> Path:
    """An offline Hugging Face cache in tmp_path (huggingface_hub read its environment at import: its constants
    are patched, and the variables set for the messages)."""
    from huggingface_hub import constants

    cache = tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def test_timm_name_loads_from_the_hugging_face_cache(hf_cache, no_network):
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in randomize_bn(timm.create_model("seresnet50")).state_dict().items()}
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = hf_cache / "models--timm--seresnet50.a1_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    save_file(state, str(repo / "snapshots" / commit / "model.safetensors"))

    loaded = build_backbone("se_resnet50-fpn", weights="timm://seresnet50.a1_in1k").state_dict()
    compared = [k for k in state if not k.startswith("fc.") and not k.endswith("num_batches_tracked")]
    assert len(compared) > 300 and all(torch.equal(loaded[f"body.{k}"], state[k]) for k in compared)
    assert hub.get_weights("timm://seresnet50.a1_in1k").architecture == "se_resnet50"


def test_timm_name_missing_offline_names_the_repo_the_cache_and_hf_home(hf_cache, no_network):
    with pytest.raises(ValueError, match=rf"timm/seresnet50\.a2_in1k .*HF_HUB_OFFLINE.*"
                                         rf"{hf_cache / 'models--timm--seresnet50.a2_in1k'}.*HF_HOME"):
        build_backbone("se_resnet50-fpn", weights="timm://seresnet50.a2_in1k")


def test_timm_names_outside_our_architectures_are_refused():
    with pytest.raises(ValueError, match=r"'vit_base_patch16_224' is not one of ours.*seresnet50"):
        hub.get_weights("timm://vit_base_patch16_224.augreg_in21k")
    with pytest.raises(ValueError, match=r"refused: .*StdConv2d.*GroupNorm"):
        hub.get_weights("timm://resnetv2_50x1_bit.goog_in21k")
    with pytest.raises(ValueError, match=r"Did you mean 'seresnet50\.a1_in1k'"):
        hub.get_weights("timm://seresnet50.a1_in1")
    entries = hub.list_weights("timm://*")
    ours = {v.source[len("timm:"):] if v.source.startswith("timm:") else n: n for n, v in VARIANTS.items()}
    assert entries and all(ours[e.name[len("timm://"):].split(".")[0]] == e.architecture for e in entries)


# ---------------------------------------------------------------------------------------------------------------
# detectron2's Caffe2 pickles


def _to_caffe2(state, eps=1e-5):
    """torchvision names -> Caffe2 blobs (an independent table): BN folded into AffineChannel scale/bias,
    conv1's input channels in BGR order (MSRA's nets take BGR)."""
    blobs = {}

    def affine(prefix, name):
        s = state[f"{name}.weight"] / torch.sqrt(state[f"{name}.running_var"] + eps)
        blobs[f"{prefix}_bn_s"] = s.numpy()
        blobs[f"{prefix}_bn_b"] = (state[f"{name}.bias"] - state[f"{name}.running_mean"] * s).numpy()

    blobs["conv1_w"] = state["conv1.weight"].flip(1).numpy()  # RGB -> BGR input channels
    affine("res_conv1", "bn1")
    for key in state:
        parts = key.split(".")
        if parts[0].startswith("layer") and parts[-1] == "weight" and (parts[2].startswith("conv")
                                                                         or parts[2:4] == ["downsample", "0"]):
            stage, block = int(parts[0][5:]) + 1, parts[1]
            branch = "branch1" if parts[2] == "downsample" else "branch2" + "abc"[int(parts[2][4:]) - 1]
            prefix = f"res{stage}_{block}_{branch}"
            blobs[f"{prefix}_w"] = state[key].numpy()
            norm = ".".join(parts[:2] + (["downsample", "1"] if parts[2] == "downsample" else [f"bn{parts[2][4:]}"]))
            affine(prefix, norm)
    blobs["fc1000_w"], blobs["fc1000_b"] = state["fc.weight"].numpy(), state["fc.bias"].numpy()
    blobs["conv1_w_momentum"] = np.zeros_like(blobs["conv1_w"])  # SGD state in some files: ignored
    return blobs


def test_detectron2_msra_pickle_by_name_matches_the_msra_network(torch_home, no_network):
    torch.manual_seed(0)
    reference = randomize_bn(torchvision.models.resnet50(weights=None))
    blobs = _to_caffe2(reference.state_dict())
    assert len(blobs) == 3 * 53 + 2 + 1  # 53 conv+BN pairs (w, s, b), fc1000 w/b, one momentum blob
    cached = hub.cache_path(MSRA_R50)
    assert cached == torch_home / "detectron2" / "ImageNetPretrained" / "MSRA" / "R-50.pkl"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(pickle.dumps({"blobs": blobs}, protocol=2))

    # The MSRA network: stride on the 1x1 convs, conv1 taking BGR (the blob as stored), BGR [0, 255] minus mean.
    for layer in (reference.layer2, reference.layer3, reference.layer4):
        layer[0].conv1.stride, layer[0].conv2.stride = (2, 2), (1, 1)
    reference.conv1.weight.data = torch.from_numpy(blobs["conv1_w"].copy())
    image = torch.rand(2, 3, 64, 96)
    msra_input = image[:, [2, 1, 0]] * 255.0 - torch.tensor([103.530, 116.280, 123.675]).view(1, 3, 1, 1)

    assert hub.weights_options(MSRA_R50) == {"stride_in_1x1": True}
    preprocessing = hub.get_weights(MSRA_R50).preprocessing
    ours = build_resnet("resnet50", options=hub.weights_options(MSRA_R50), weights=MSRA_R50).eval()
    our_input = (image - torch.tensor(preprocessing.image_mean).view(1, 3, 1, 1)) / torch.tensor(
        preprocessing.image_std).view(1, 3, 1, 1)
    features = {}
    for name, model in (("ours", ours), ("reference", reference)):
        model.layer4.register_forward_hook(lambda m, i, o, name=name: features.__setitem__(name, o))
    with torch.no_grad():
        logits, reference_logits = ours(our_input), reference(msra_input)
    # float32 with ~1e3-term sums per output through 53 layers: relative errors ~1e-6; the features are not of
    # unit scale (std 1 on [0, 255] pixels), so the bound is relative to the largest value.
    for a, b in ((features["ours"], features["reference"]), (logits, reference_logits)):
        assert (a - b).abs().max() / b.abs().max() <= 1e-5
    # The stride matters: without stride_in_1x1 the same weights compute something else.
    other = build_resnet("resnet50", weights=MSRA_R50).eval()
    with torch.no_grad():
        assert (other(our_input) - reference_logits).abs().max() / reference_logits.abs().max() > 1e-3


def test_detectron2_pickle_by_path_is_converted_assuming_bgr(tmp_path, caplog):
    state = randomize_bn(torchvision.models.resnet18(weights=None)).state_dict()
    path = tmp_path / "R-18.pkl"
    path.write_bytes(pickle.dumps(_to_caffe2(state)))  # flat: no "blobs" key
    with caplog.at_level("INFO", logger="resnet_fpn.weights"):
        model = build_resnet("resnet18", weights=path)
    assert "assuming BGR" in caplog.text
    assert torch.equal(model.conv1.weight, state["conv1.weight"])  # back in RGB order
    assert torch.allclose(model.layer2[0].downsample[1].running_var, torch.full((128,), 1 - 1e-5))


def test_a_pickle_asking_for_another_global_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pkl"
    path.write_bytes(b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.")  # os.system("touch ...")
    with pytest.raises(ValueError, match=rf"refused to read {path}: the pickle asks for the global os\.system"):
        load_weights(build_resnet("resnet18"), path)
    assert not marker.exists()


def test_detectron2_entries_state_their_preprocessing():
    msra, fair = hub.get_weights(MSRA_R50), hub.get_weights("detectron2://ImageNetPretrained/FAIR/X-101-32x8d.pkl")
    assert msra.url == "https://dl.fbaipublicfiles.com/detectron2/ImageNetPretrained/MSRA/R-50.pkl"
    assert msra.hash_prefix is None and msra.metrics == {} and msra.architecture == "resnet50"
    assert np.allclose(msra.preprocessing.image_mean, (0.485, 0.456, 0.406), atol=1e-6)
    assert np.allclose(msra.preprocessing.image_std, (1 / 255,) * 3)
    # FAIR's X-101-32x8d: BGR like every detectron2 config; its std is ImageNet's, in BGR order.
    assert fair.options == {} and fair.architecture == "resnext101_32x8d"
    assert np.allclose(fair.preprocessing.image_std, (0.229, 0.224, 0.225), atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# Listing


def test_torchvision_entries_are_torchvision_enums():
    entries = [e for e in hub.list_weights("torchvision://*")]
    expected = {}
    for builder in [n for n, v in VARIANTS.items() if v.source == "torchvision"] + list(hub._TORCHVISION_DETECTORS):
        for member in torchvision.models.get_model_weights(builder):
            expected[f"torchvision://{builder}/{member.name}"] = member
    seen = {}
    for entry in entries:
        full = next(n for n in (entry.name, *entry.aliases) if n.count("/") == 3)
        member = expected[full]
        assert entry.url == member.url and entry.file_size_mb == member.meta["_file_size"]
        assert entry.hash_prefix and member.url.endswith(f"-{entry.hash_prefix}.pth")
        seen[full] = entry
    assert set(seen) == set(expected)
    assert hub.get_weights("torchvision://resnet50").aliases == ("torchvision://resnet50/IMAGENET1K_V2",)
    assert hub.get_weights("torchvision://resnet50").metrics["ImageNet-1K acc@1"] == 80.858
    keypoint = hub.get_weights("torchvision://keypointrcnn_resnet50_fpn")
    assert (keypoint.architecture, keypoint.backbone, keypoint.num_classes) == ("keypoint_rcnn", "resnet50-fpn", 2)


def test_list_by_pattern_and_unknown_names():
    names = [e.name for e in hub.list_weights("torchvision://resnet50*")]
    assert "torchvision://resnet50" in names and "torchvision://resnet50/IMAGENET1K_V1" in names
    assert not any("resnet101" in n for n in names)
    with pytest.raises(ValueError, match=r"unknown weights name 'torchvision://resnet5'\. Did you mean "
                                         r"'torchvision://resnet50'.*resnet-fpn weights"):
        hub.get_weights("torchvision://resnet5")
    with pytest.raises(ValueError, match=r"unknown weights scheme in 'torchvison://resnet50'"):
        build_resnet("resnet50", weights="torchvison://resnet50")
    assert hub.weights_preprocessing("r50.pth") is None and hub.weights_options("r50.pth") == {}
    assert resnet_fpn.get_weights is hub.get_weights and resnet_fpn.NamedWeights is hub.NamedWeights
    assert resnet_fpn.list_weights is hub.list_weights


def test_cli_weights_prints_the_table(capsys):
    assert main(["weights", "torchvision://resnet50*"]) == 0
    out = capsys.readouterr().out
    assert "torchvision://resnet50/IMAGENET1K_V1" in out and "ImageNet-1K top-1 76.13" in out
    assert "ImageNet-1K top-1 80.858" in out and "RGB [0,1] ImageNet" in out
    assert main(["weights"]) == 0
    out = capsys.readouterr().out
    assert "stride_in_1x1=True" in out and "BGR [0,255] mean 103.53,116.28,123.675 std 1" in out
    assert "timm://" not in out.split("\n\n")[0] and "timm names of our architectures are not shown" in out


def test_a_detector_on_msra_weights_takes_their_normalisation_and_stride_and_its_checkpoint_keeps_them(
        torch_home, no_network, tmp_path):
    from resnet_fpn import detector_from_checkpoint
    from resnet_fpn.checkpoint import save_detector_checkpoint
    from resnet_fpn.coco_format import Category

    torch.manual_seed(0)
    cached = hub.cache_path(MSRA_R50)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(pickle.dumps({"blobs": _to_caffe2(randomize_bn(torchvision.models.resnet50()).state_dict())}))
    options = dict(model="faster_rcnn", num_classes=3, backbone="resnet50-fpn", backbone_weights=MSRA_R50,
                   min_size=96, max_size=96)
    detector = build_detector(**options)
    # BGR [0, 255] minus MSRA's means, std 1 -> in torchvision's terms: RGB [0, 1], ImageNet's means, std 1/255.
    assert detector.transform.image_mean == pytest.approx([123.675 / 255, 116.280 / 255, 103.530 / 255])
    assert detector.transform.image_std == pytest.approx([1 / 255] * 3)
    body = detector.backbone.body
    assert body.layer2[0].conv1.stride == (2, 2) and body.layer2[0].conv2.stride == (1, 1)  # stride_in_1x1
    with pytest.raises(ValueError, match=r"weights detectron2://ImageNetPretrained/MSRA/R-50\.pkl need backbone "
                                         r"option stride_in_1x1=True .* but the backbone options say stride_in_1x1=False"):
        build_detector(**options, backbone_options={"stride_in_1x1": False})

    # The checkpoint records both, so it rebuilds without the weights file (the cache is emptied first).
    path = save_detector_checkpoint(tmp_path / "d.ckpt", detector, model_options=options,
                                    categories=[Category(1, 1, "a"), Category(2, 2, "b")])
    cached.unlink()
    rebuilt = detector_from_checkpoint(path).detector
    assert rebuilt.transform.image_mean == detector.transform.image_mean
    assert rebuilt.backbone.body.layer2[0].conv1.stride == (2, 2)
    image = [torch.rand(3, 96, 96)]
    with torch.no_grad():
        a, b = detector.eval()(image)[0], rebuilt(image)[0]
    assert torch.equal(a["boxes"], b["boxes"])


def test_torchvision_v2_detector_name_loads_from_the_cache(torch_home, no_network):
    state = torchvision.models.detection.retinanet_resnet50_fpn_v2(weights=None, weights_backbone=None).state_dict()
    cached = torch_home / _default_file_name("retinanet_resnet50_fpn_v2")
    cached.parent.mkdir(parents=True)
    torch.save(state, cached)
    ours = build_detector("retinanet_v2", num_classes=91, weights="torchvision://retinanet_resnet50_fpn_v2")
    got = ours.state_dict()
    assert all(torch.equal(got[k], v) for k, v in state.items() if not k.endswith("num_batches_tracked"))


def test_build_backbone_applies_what_named_weights_require(torch_home, no_network):
    cached = hub.cache_path(MSRA_R50)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(pickle.dumps({"blobs": _to_caffe2(torchvision.models.resnet50().state_dict())}))
    backbone = build_backbone("resnet50-fpn", weights=MSRA_R50)
    assert backbone.body.layer3[0].conv1.stride == (2, 2) and backbone.body.layer3[0].conv2.stride == (1, 1)
    with pytest.raises(ValueError, match=r"need backbone option stride_in_1x1=True"):
        build_backbone("resnet50-fpn", weights=MSRA_R50, options={"stride_in_1x1": False})

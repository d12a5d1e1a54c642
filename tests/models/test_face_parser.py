"""BiSeNet face parser: the reference's 79999_iter.pth layout, strict loading, refusals."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch

from musetalk_core.errors import WeightsError
from musetalk_core.models.face_parser import FaceParser, load_face_parser


def _bn(prefix: str, c: int) -> dict[str, tuple]:
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
            f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()}


def _cbr(prefix: str, cin: int, cout: int, k: int) -> dict[str, tuple]:
    return {f"{prefix}.conv.weight": (cout, cin, k, k), **_bn(f"{prefix}.bn", cout)}


def expected_keys() -> dict[str, tuple]:
    """The key names and shapes of REF's 79999_iter.pth, written out from the reference code
    (face-parsing.PyTorch model.py / resnet.py, as vendored in MuseTalk)."""
    keys: dict[str, tuple] = {"cp.resnet.conv1.weight": (64, 3, 7, 7), **_bn("cp.resnet.bn1", 64)}
    chans = [(64, 64, 1), (64, 128, 2), (128, 256, 2), (256, 512, 2)]
    for li, (cin, cout, stride) in enumerate(chans, start=1):
        for b in range(2):
            p = f"cp.resnet.layer{li}.{b}"
            bin_ = cin if b == 0 else cout
            keys[f"{p}.conv1.weight"] = (cout, bin_, 3, 3)
            keys.update(_bn(f"{p}.bn1", cout))
            keys[f"{p}.conv2.weight"] = (cout, cout, 3, 3)
            keys.update(_bn(f"{p}.bn2", cout))
            if b == 0 and (cin != cout or stride != 1):
                keys[f"{p}.downsample.0.weight"] = (cout, cin, 1, 1)
                keys.update(_bn(f"{p}.downsample.1", cout))
    for name, cin in (("arm16", 256), ("arm32", 512)):
        keys.update(_cbr(f"cp.{name}.conv", cin, 128, 3))
        keys[f"cp.{name}.conv_atten.weight"] = (128, 128, 1, 1)
        keys.update(_bn(f"cp.{name}.bn_atten", 128))
    keys.update(_cbr("cp.conv_head32", 128, 128, 3))
    keys.update(_cbr("cp.conv_head16", 128, 128, 3))
    keys.update(_cbr("cp.conv_avg", 512, 128, 1))
    keys.update(_cbr("ffm.convblk", 256, 256, 1))
    keys["ffm.conv1.weight"] = (64, 256, 1, 1)
    keys["ffm.conv2.weight"] = (256, 64, 1, 1)
    for name, cin, mid in (("conv_out", 256, 256), ("conv_out16", 128, 64),
                           ("conv_out32", 128, 64)):
        keys.update(_cbr(f"{name}.conv", cin, mid, 3))
        keys[f"{name}.conv_out.weight"] = (19, mid, 1, 1)
    return keys


def random_state(seed: int = 0) -> OrderedDict:
    g = torch.Generator().manual_seed(seed)
    sd = OrderedDict()
    for k, shape in expected_keys().items():
        if k.endswith("num_batches_tracked"):
            sd[k] = torch.tensor(100, dtype=torch.int64)
        elif k.endswith("running_var"):
            sd[k] = torch.rand(shape, generator=g) + 0.5
        elif k.endswith(("bn1.weight", "bn2.weight", "bn.weight", "bn_atten.weight",
                         "downsample.1.weight")):
            sd[k] = torch.rand(shape, generator=g) * 0.5 + 0.5
        else:
            fan = max(1, int(torch.tensor(shape[1:]).prod())) if len(shape) > 1 else 1
            sd[k] = torch.randn(shape, generator=g) / fan ** 0.5
    return sd


@pytest.fixture(scope="module")
def parser_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("face-parse-bisent") / "79999_iter.pth"
    torch.save(random_state(), path)
    return str(path)


def test_state_dict_matches_reference_layout():
    sd = FaceParser().state_dict()
    exp = expected_keys()
    assert list(sd) == list(exp) or set(sd) == set(exp)
    assert {k: tuple(v.shape) for k, v in sd.items()} == exp
    assert len(exp) == 191 and sum(k.endswith("num_batches_tracked") for k in exp) == 31
    assert sum(v.numel() for k, v in sd.items() if "num_batches" not in k) == 13_313_088


def test_real_format_loads_strictly_and_runs(parser_file):
    model = load_face_parser(parser_file, device="cpu", dtype=torch.float32)
    ref = random_state()
    for k, v in model.state_dict().items():
        assert torch.equal(v, ref[k]), k
    assert not model.training
    x = torch.randn(1, 3, 128, 128)
    out = model(x)
    assert out.shape == (1, 19, 128, 128) and torch.isfinite(out).all()
    assert model.parser_id == load_face_parser(parser_file, device="cpu").parser_id


def test_prefixed_and_counterless_checkpoints_load(tmp_path):
    sd = random_state(1)
    bare = OrderedDict((k, v) for k, v in sd.items() if not k.endswith("num_batches_tracked"))
    torch.save(bare, tmp_path / "a.pth")
    torch.save({"module." + k: v for k, v in sd.items()}, tmp_path / "b.pth")
    a = load_face_parser(str(tmp_path / "a.pth"), device="cpu")
    b = load_face_parser(str(tmp_path / "b.pth"), device="cpu")
    assert torch.equal(a.state_dict()["conv_out.conv_out.weight"],
                       b.state_dict()["conv_out.conv_out.weight"])


def test_batched_equals_per_image(parser_file):
    model = load_face_parser(parser_file, device="cpu")
    x = torch.randn(3, 3, 160, 160)
    both = model(x)
    single = torch.cat([model(x[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(both, single, atol=1e-4, rtol=1e-4)


def test_parse_gives_512_labels(parser_file):
    model = load_face_parser(parser_file, device="cpu")
    rgb = torch.rand(2, 3, 512, 512)
    labels = model.parse(rgb, batch_size=1)
    assert labels.shape == (2, 512, 512) and labels.dtype == torch.int64
    assert labels.min() >= 0 and labels.max() <= 18
    mean = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
    direct = model((rgb[:1] - mean) / std).argmax(1)
    assert (direct == labels[:1]).float().mean() > 0.999


def test_imagenet_backbone_refused(tmp_path):
    """Robustness M10: the resnet18 file the reference keeps beside the parser."""
    sd = {"conv1.weight": torch.randn(4, 3, 3, 3), "bn1.weight": torch.ones(4),
          "layer1.0.conv1.weight": torch.randn(4, 4, 3, 3), "fc.weight": torch.randn(10, 4),
          "fc.bias": torch.zeros(10)}
    path = tmp_path / "resnet18-5c106cde.pth"
    torch.save(sd, path)
    with pytest.raises(WeightsError) as err:
        load_face_parser(str(path), device="cpu")
    msg = str(err.value)
    assert ("face-parse-bisent/resnet18-5c106cde.pth is the ImageNet ResNet-18 backbone, not "
            "the BiSeNet face parser") in msg
    assert "Fix: pick 79999_iter.pth" in msg


def test_other_class_count_refused(tmp_path):
    sd = random_state()
    sd["conv_out.conv_out.weight"] = torch.randn(2, 256, 1, 1)
    torch.save(sd, tmp_path / "two.pth")
    with pytest.raises(WeightsError, match="2 classes"):
        load_face_parser(str(tmp_path / "two.pth"), device="cpu")


def test_wrong_model_lists_keys(tmp_path):
    sd = random_state()
    del sd["ffm.conv1.weight"]
    sd["extra.weight"] = torch.zeros(1)
    sd["cp.conv_avg.conv.weight"] = torch.zeros(128, 256, 1, 1)
    torch.save(sd, tmp_path / "x.pth")
    with pytest.raises(WeightsError) as err:
        load_face_parser(str(tmp_path / "x.pth"), device="cpu")
    msg = str(err.value)
    assert "ffm.conv1.weight" in msg and "extra.weight" in msg and "cp.conv_avg" in msg
    assert "Fix:" in msg


def test_code_carrying_pickle_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("boom",))

    torch.save({"x": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(WeightsError, match="code"):
        load_face_parser(str(tmp_path / "evil.pth"), device="cpu")

"""S3FD + 2D-FAN: random weights in the real state-dict formats, loaded and run batched."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from musetalk_core.errors import InputError, WeightsError
from musetalk_core.models import face_detector as fd


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from face_alignment.detection.sfd.net_s3fd import s3fd
    from face_alignment.models import FAN

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("fd")
    net = s3fd()
    # a strong "face" bias on the finest level so boxes survive the 0.5 threshold
    with torch.no_grad():
        net.conv3_3_norm_mbox_conf.bias.copy_(torch.tensor([0.0, 0.0, 0.0, 4.0]))
    torch.save(net.state_dict(), d / "s3fd-619a316812.pth")
    fan = FAN(1)  # one hourglass module: a small FAN in the 2DFAN4 file format
    for m in fan.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    torch.save(fan.state_dict(), d / "2DFAN4-11f355bf06.pth.tar")
    return d


def _frames(b=3, h=96, w=128):
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (b, h, w, 3), generator=g, dtype=torch.uint8)


def test_detect_and_landmarks_batched(files):
    det = fd.load_face_detector(str(files / "s3fd-619a316812.pth"),
                                str(files / "2DFAN4-11f355bf06.pth.tar"), device="cpu")
    assert det.device.type == "cpu" and det.dtype == torch.float32
    frames = _frames(2)
    boxes = det.detect(frames)
    assert len(boxes) == 2 and all(b.shape[1] == 5 for b in boxes)
    assert sum(len(b) for b in boxes) > 0
    for b in boxes:
        assert (b[:, 4] > 0.5).all() and torch.all(b[:-1, 4] >= b[1:, 4])
    one = det.detect(frames[1:2])[0]  # the same frame alone gives the same boxes
    assert one.shape == boxes[1].shape and torch.allclose(one, boxes[1], atol=1e-3)
    few = [b[:1] for b in boxes]
    lm = det.landmarks(frames, few)
    assert lm.shape == (sum(len(b) for b in few), 68, 2) and lm.dtype == torch.float32
    assert torch.equal(lm, torch.trunc(lm))
    single = det.landmarks(frames[1:2], [few[1]])
    assert torch.allclose(lm[-1:], single, atol=1.0)


def test_s3fd_matches_face_alignments_own_pipeline(files):
    from face_alignment.detection.sfd.detect import batch_detect
    from face_alignment.detection.sfd.sfd_detector import SFDDetector

    det = fd.load_face_detector(str(files / "s3fd-619a316812.pth"),
                                str(files / "2DFAN4-11f355bf06.pth.tar"))
    frames = _frames(2)
    ours = det.detect(frames)
    # face-alignment flips its input RGB->BGR before subtracting; REF feeds it RGB as "BGR",
    # so giving it channel-reversed frames reproduces REF's (and our) network input.
    x = frames.flip(-1).permute(0, 3, 1, 2).float()
    raw = batch_detect(det.s3fd, x, device="cpu")
    filt = SFDDetector._filter_bboxes(type("S", (), {"filter_threshold": 0.5})(), raw[0])
    theirs = np.array(filt).reshape(-1, 5)
    assert theirs.shape == tuple(ours[0].shape)
    assert np.allclose(theirs, ours[0].numpy(), atol=1e-3)


def test_heatmap_decoding_and_crop_match_face_alignment(monkeypatch):
    import face_alignment.utils as fau
    from face_alignment.utils import crop

    # run face-alignment's numba functions as plain Python (same code, no 20 s JIT compile)
    monkeypatch.setattr(fau, "transform_np", fau.transform_np.py_func)
    monkeypatch.setattr(fau, "_get_preds_fromhm", fau._get_preds_fromhm.py_func)
    get_preds_fromhm = fau.get_preds_fromhm

    g = torch.Generator().manual_seed(2)
    hm = torch.rand(2, 68, 64, 64, generator=g)
    params = torch.tensor([[150.3, 170.8, 1.31], [90.0, 80.5, 0.77]], dtype=torch.float64)
    ours = fd.decode_heatmaps(hm, params)
    for i in range(2):
        _, orig, _ = get_preds_fromhm(hm[i:i + 1].numpy(), params[i, :2].numpy(),
                                      float(params[i, 2]))
        assert np.abs(orig[0] - ours[i].numpy()).max() <= 1.0
        assert (orig[0] == ours[i].numpy()).mean() > 0.95
    img = torch.randint(0, 256, (200, 240, 3), generator=g, dtype=torch.uint8)
    for cx, cy, s in [(120.0, 100.0, 0.8), (20.0, 190.0, 0.6)]:
        ref = crop(img.numpy(), np.array([cx, cy]), s).astype(np.float32)
        mine = fd.FaceDetector._crop(img, cx, cy, s, torch.device("cpu")).permute(1, 2, 0) * 255
        assert np.abs(mine.numpy() - ref).mean() < 0.5


def test_dtype_and_large_frames_downscaled(files, caplog):
    det = fd.load_face_detector(str(files / "s3fd-619a316812.pth"),
                                str(files / "2DFAN4-11f355bf06.pth.tar"), dtype=torch.float64)
    assert det.dtype == torch.float64 and next(det.fan.parameters()).dtype == torch.float64
    det.detect_max_side = 64
    with caplog.at_level(logging.INFO):
        out = det.detect(_frames(1, 96, 128))
    assert "copy of the 128x96 frames" in caplog.text
    assert out[0].dtype == torch.float32


def test_loading_refuses_wrong_files(files, tmp_path):
    s3 = str(files / "s3fd-619a316812.pth")
    fan = str(files / "2DFAN4-11f355bf06.pth.tar")
    with pytest.raises(WeightsError, match="not an S3FD"):
        fd.load_face_detector(fan, fan)
    with pytest.raises(WeightsError, match="not a 2D-FAN"):
        fd.load_face_detector(s3, s3)
    bad = tmp_path / "cut.pth"
    bad.write_bytes((files / "s3fd-619a316812.pth").read_bytes()[:5000])
    with pytest.raises(WeightsError, match="cut.pth"):
        fd.load_s3fd(str(bad))
    sd = torch.load(s3, weights_only=True)
    sd.pop("conv5_3.bias")
    torch.save(sd, tmp_path / "partial.pth")
    with pytest.raises(WeightsError, match="1 missing"):
        fd.load_s3fd(str(tmp_path / "partial.pth"))


def test_torchscript_fan_only_without_a_state_dict(files, tmp_path, caplog):
    from face_alignment.models import FAN

    net = FAN(1).eval()
    scripted = torch.jit.trace(net, torch.rand(1, 3, 64, 64), check_trace=False)
    lone = tmp_path / "2DFAN4-cd938726ad.zip"
    scripted.save(str(lone))
    with caplog.at_level(logging.WARNING):
        m = fd.load_fan(str(lone))
    assert isinstance(m, torch.jit.ScriptModule) and "runs code" in caplog.text
    both = files / "2DFAN4-cd938726ad.zip"
    scripted.save(str(both))
    m2 = fd.load_fan(str(both))
    assert not isinstance(m2, torch.jit.ScriptModule)
    with pytest.raises(WeightsError, match="TorchScript"):
        fd.load_s3fd(str(lone))


class _OneFaceS3FD(torch.nn.Module):
    """Stands in for S3FD: one confident face centred on cell (row 5, col 7) of the stride-4
    map of whatever it is given (a 16-pixel box around (30, 22) in its input's pixels)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[tuple[int, int]] = []

    def forward(self, x):
        self.seen.append(tuple(x.shape[-2:]))
        outs = []
        for level in range(6):
            stride = 2 ** (level + 2)
            hh, ww = -(-x.shape[-2] // stride), -(-x.shape[-1] // stride)
            cls = torch.zeros(x.shape[0], 2, hh, ww, dtype=x.dtype)
            cls[:, 0] = 10.0  # background everywhere...
            if level == 0:
                cls[:, 0, 5, 7], cls[:, 1, 5, 7] = 0.0, 10.0  # ...but one face
            outs += [cls, torch.zeros(x.shape[0], 4, hh, ww, dtype=x.dtype)]
        return outs


def test_detect_max_side_finds_faces_on_a_copy_in_frame_pixels(files):
    full = fd.load_face_detector(str(files / "s3fd-619a316812.pth"),
                                 str(files / "2DFAN4-11f355bf06.pth.tar"))
    small = fd.load_face_detector(str(files / "s3fd-619a316812.pth"),
                                  str(files / "2DFAN4-11f355bf06.pth.tar"), detect_max_side=64)
    assert full.detect_max_side == 1920 and small.detect_max_side == 64
    frames = _frames(2, 96, 128)
    for det in (full, small):
        det.s3fd = _OneFaceS3FD()
    at_full, at_half = full.detect(frames), small.detect(frames)
    assert full.s3fd.seen == [(96, 128)] and small.s3fd.seen == [(48, 64)]
    # the same cell: (30, 22) +- 8 in the network's pixels, mapped back to frame pixels
    assert at_full[0][0, :4].tolist() == [22.0, 14.0, 38.0, 30.0]
    assert at_half[0][0, :4].tolist() == [44.0, 28.0, 76.0, 60.0]
    assert len(at_half) == 2 and torch.equal(at_half[0], at_half[1])
    with pytest.raises(InputError, match="detect_max_side"):
        fd.load_face_detector(str(files / "s3fd-619a316812.pth"),
                              str(files / "2DFAN4-11f355bf06.pth.tar"), detect_max_side=16)

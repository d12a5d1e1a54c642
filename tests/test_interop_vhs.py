"""Interop: IMAGE and AUDIO shaped as VideoHelperSuite's loaders emit them work with no glue.

VHS "Load Video" gives IMAGE ``[T, H, W, 3]`` float32 0..1 (built with ``np.fromiter`` and
``torch.from_numpy``) and AUDIO as a lazy ``Mapping`` (not a ``dict``) whose ``waveform`` is
``[1, C, n]`` float32 and ``sample_rate`` an int (often 44.1 or 48 kHz, stereo). The nodes are
called through the ``pack`` fixture, as the host calls them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from fractions import Fraction

import numpy as np
import pytest
import torch
from tiny_models import StandInUNet, StubVAE, npz_landmarks, write_tiny_whisper


class LazyAudio(Mapping):
    """Like VHS's ``LazyAudioMap``: decoded on first access, a read-only mapping."""

    def __init__(self, seconds: float, rate: int = 44100, channels: int = 2) -> None:
        self.rate, self.n, self.channels = rate, int(seconds * rate), channels
        self.loads = 0

    def __getitem__(self, key):
        if key == "sample_rate":
            return self.rate
        if key == "waveform":
            self.loads += 1
            t = torch.arange(self.n, dtype=torch.float32) / self.rate
            wave = 0.3 * torch.sin(2 * math.pi * 220 * t) * torch.sin(2 * math.pi * 3 * t)
            return wave.repeat(1, self.channels, 1)
        raise KeyError(key)

    def __iter__(self):
        return iter(("waveform", "sample_rate"))

    def __len__(self):
        return 2


def _vhs_frames(media, n: int) -> torch.Tensor:
    """Frames the way VHS builds them: float32 numpy from the decoder, then from_numpy."""
    import av

    out = []
    with av.open(str(media / "talk_25fps_512x512.mp4")) as c:
        for frame in c.decode(video=0):
            out.append(frame.to_ndarray(format="rgb24"))
            if len(out) == n:
                break
    arr = np.fromiter((f.astype(np.float32) / 255.0 for f in out),
                      np.dtype((np.float32, out[0].shape)))
    return torch.from_numpy(arr)


def _pose(media, n: int) -> list[dict]:
    lm = npz_landmarks(media / "talk_25fps_512x512.landmarks.npz", n)
    return [{"people": [{"face_keypoints_2d": np.concatenate(
        [f, np.ones((68, 1), np.float32)], 1).reshape(-1).tolist()}],
        "canvas_width": 512, "canvas_height": 512} for f in lm]


@pytest.fixture(scope="module")
def whisper(tmp_path_factory):
    from musetalk_core.models.whisper import load_whisper

    folder = write_tiny_whisper(tmp_path_factory.mktemp("models"))
    return load_whisper(str(folder))


def test_vhs_audio_mapping_drives_audio_features(pack, whisper):
    audio = LazyAudio(0.5)
    node = pack.nodes.audio_nodes.AUDIO_FEATURES
    feats, count = node.call(audio=audio, whisper=whisper, fps=24.0).values
    assert count == math.floor(Fraction(audio.n) * 24 / audio.rate) == 12
    assert feats.frame_count == 12 and feats.fps == Fraction(24)
    assert audio.loads >= 1


def test_vhs_frames_and_audio_through_lip_sync(pack, media, whisper):
    frames = _vhs_frames(media, 6)
    assert frames.dtype == torch.float32 and frames.shape == (6, 512, 512, 3)
    audio = LazyAudio(0.24)  # 5 frames at 25 fps: no pingpong, so frames line up
    node = pack.nodes.lipsync_nodes.LIPSYNC
    out, speech, mask, fps = node.call(
        audio=audio, model=StandInUNet("v1.5"), vae=StubVAE(), whisper=whisper, images=frames,
        pose_keypoints=_pose(media, 6), fps=25.0, parsing_mode="ellipse").values
    n = math.floor(Fraction(audio.n) * 25 / audio.rate)
    assert out.shape == (n, 512, 512, 3) and out.dtype == torch.float32
    assert mask.shape == (n, 512, 512)
    assert isinstance(speech, dict) and speech["sample_rate"] == audio.rate
    assert speech["waveform"].shape[:2] == (1, 2)
    assert fps == 25.0
    # the face changed, the corners did not (pass-through outside the blend region)
    assert torch.equal(out[:, :16, :16], frames[:n, :16, :16])
    assert not torch.equal(out, frames[:n])


def test_vhs_frames_through_face_crop(pack, media):
    frames = _vhs_frames(media, 4)
    node = pack.nodes.face_nodes.FACE_CROP
    faces, crops, box_mask = node.call(frames=frames, pose_keypoints=_pose(media, 4)).values
    assert bool(faces.has_face.all())
    assert crops.shape == (4, 256, 256, 3) and box_mask.shape == (4, 512, 512)

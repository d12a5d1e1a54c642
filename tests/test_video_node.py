"""MuseTalk Lip Sync (video): the node end to end with tiny random models and real landmarks."""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from musetalk_core.video_io import open_video, write_video

SIDE = 128
N_SRC = 24


class StandInWhisper(nn.Module):
    """``mel [B, 80, 3000] -> [B, 1500, 5, 384]`` by pooling and a fixed projection (cheap)."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.proj = nn.Parameter(torch.randn(80, 5 * 384, generator=g) * 0.05)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.avg_pool1d(mel.float(), 2).transpose(1, 2)  # [B, 1500, 80]
        return (x @ self.proj).view(mel.shape[0], 1500, 5, 384)


def pose_keypoints(landmarks: np.ndarray, side: int) -> list[dict]:
    """POSE_KEYPOINT (comfyui_controlnet_aux layout, pixels) from ``[N, 68, 2]`` landmarks."""
    out = []
    for lm in landmarks:
        pts = np.concatenate([lm, np.ones((68, 1), np.float32)], axis=1).reshape(-1).tolist()
        out.append({"people": [{"face_keypoints_2d": pts}], "canvas_width": side,
                    "canvas_height": side})
    return out


@pytest.fixture(scope="module")
def setup(media, tmp_path_factory):
    from musetalk_core.models.unet import load_unet
    from tests.tiny_models import StubVAE, write_tiny_unet

    root = tmp_path_factory.mktemp("video_node")
    unet = load_unet(str(write_tiny_unet(root)), version="v1.5")
    vae = StubVAE()
    whisper = StandInWhisper()
    # the first N_SRC frames of talk25 at SIDE x SIDE, with its landmarks scaled alike
    with open_video(media / "talk_25fps_512x512.mp4") as r:
        frames, _ = next(r.chunks(N_SRC))
        speech = r.audio()
    small = torch.nn.functional.interpolate(frames.permute(0, 3, 1, 2).float(), size=(SIDE, SIDE),
                                            mode="area").round().clamp(0, 255).to(torch.uint8)
    src = root / "src.mp4"
    write_video(src, small.permute(0, 2, 3, 1).contiguous(), Fraction(25), crf=0)
    lm = np.load(media / "talk_25fps_512x512.landmarks.npz")["landmarks"][:N_SRC, 0]
    lm = (lm * (SIDE / 512)).astype(np.float32)
    return {"unet": unet, "vae": vae, "whisper": whisper, "src": src, "speech": speech,
            "pose": pose_keypoints(lm, SIDE), "root": root}


class FileOnlyVideo:
    """A VIDEO whose ``get_components`` must never be called (spy)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.components_calls = 0

    def get_stream_source(self) -> str:
        return str(self.path)

    def get_components(self):
        self.components_calls += 1
        raise AssertionError("get_components() decodes the whole clip; the node must stream")


def _speech(setup, seconds: float) -> dict:
    wave = setup["speech"]["waveform"]
    n = int(seconds * 16000)
    reps = -(-n // wave.shape[-1])
    return {"waveform": torch.cat([wave] * reps, dim=-1)[..., :n].contiguous(),
            "sample_rate": 16000}


def _node(pack):
    return next(d for d in pack.nodes.video_nodes.NODES if d.node_id == "MuseTalkLipSyncVideo")


def _run_node(pack, setup, monkeypatch, tmp_path, *, unet, seconds, chunk, **extra):
    """Run the node with outputs in ``tmp_path`` (as the host temp); returns (VIDEO, frames)."""
    vn = pack.nodes.video_nodes
    monkeypatch.setattr(vn._host, "temp_directory", lambda: str(tmp_path))
    captured: list[torch.Tensor] = []
    monkeypatch.setattr(vn, "CAPTURE", lambda f, p: captured.append(f.clone()))
    video = FileOnlyVideo(setup["src"])
    result = _node(pack).call(video=video, audio=_speech(setup, seconds), model=unet,
                              vae=setup["vae"], whisper=setup["whisper"],
                              pose_keypoints=setup["pose"], frames_per_chunk=chunk,
                              batch_size=8, **extra)
    assert video.components_calls == 0
    return result.values[0], torch.cat(captured)


def test_node_streams_speech_length_video(pack, setup, monkeypatch, tmp_path):
    from tests.tiny_models import StandInUNet

    out, frames = _run_node(pack, setup, monkeypatch, tmp_path, unet=StandInUNet(),
                            seconds=2.3, chunk=10)
    # 2.3 s of speech at 25 fps: 57 frames; the 24-frame source is walked forward and back
    assert frames.shape == (57, SIDE, SIDE, 3) and frames.dtype == torch.float32
    path = out.get_stream_source()
    assert os.path.dirname(path) == str(tmp_path) and os.listdir(tmp_path) == [
        os.path.basename(path)]
    assert out.get_dimensions() == (SIDE, SIDE)
    with open_video(path) as r:
        assert r.fps == Fraction(25) and r.frame_count == 57
        audio = r.audio()
        decoded = torch.cat([f for f, _ in r.chunks(64)])
    assert abs(audio["waveform"].shape[-1] / 16000 - 57 / 25) <= 1 / 25
    # decoded frames equal the unencoded ones within H.264 loss (crf 18)
    ref = (frames * 255).round()
    assert (decoded.float() - ref).abs().mean() < 3.0


def test_streamed_frames_equal_the_image_path(pack, setup, monkeypatch, tmp_path):
    from tests.tiny_models import StandInUNet

    unet = StandInUNet()
    _, streamed = _run_node(pack, setup, monkeypatch, tmp_path, unet=unet, seconds=1.6,
                            chunk=7)
    # the IMAGE path: Face Crop -> Audio Features -> Inpaint -> Blend nodes on decoded frames
    with open_video(setup["src"]) as r:
        images = torch.cat([f for f, _ in r.chunks(64)]).float() / 255
    n = pack.nodes
    crop = next(d for d in n.face_nodes.NODES if d.node_id == "MuseTalkFaceCrop")
    feats = next(d for d in n.audio_nodes.NODES if d.node_id == "MuseTalkAudioFeatures")
    inp = next(d for d in n.inpaint_nodes.NODES if d.node_id == "MuseTalkInpaint")
    bl = next(d for d in n.blend_nodes.NODES if d.node_id == "MuseTalkBlend")
    faces = crop.call(frames=images, pose_keypoints=setup["pose"], version="v1.5",
                      bbox_shift=0, extra_margin=10, face_index=-1,
                      on_missing_face="passthrough", smooth_boxes=0.0).values[0]
    audio = feats.call(audio=_speech(setup, 1.6), whisper=setup["whisper"], fps=25.0,
                       ).values[0]
    gen = inp.call(model=unet, vae=setup["vae"], faces=faces, audio=audio,
                   length_policy="pingpong", batch_size=8).values[0]
    expected = bl.call(frames=images, faces=gen, mode="auto", left_cheek_width=90,
                       right_cheek_width=90, feather=0.05, batch_size=16).values[0]
    assert streamed.shape == expected.shape == (40, SIDE, SIDE, 3)
    assert torch.equal(streamed, expected)


def test_chunk_size_gives_bit_identical_frames(pack, setup, monkeypatch, tmp_path):
    runs = []
    for chunk in (16, 32, 61):
        folder = tmp_path / str(chunk)
        folder.mkdir()
        _, frames = _run_node(pack, setup, monkeypatch, folder, unet=setup["unet"],
                              seconds=1.6, chunk=chunk)
        runs.append(frames)
    assert runs[0].shape[0] == 40
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])


def test_interrupt_removes_the_partial_output(pack, setup, monkeypatch, tmp_path):
    from musetalk_core.runtime import Runtime
    from tests.tiny_models import StandInUNet

    class Interrupted(Exception):  # noqa: N818 - stands for the host's exception
        pass

    calls = {"n": 0}

    def check():
        calls["n"] += 1
        if calls["n"] > 6:
            raise Interrupted

    vn = pack.nodes.video_nodes
    monkeypatch.setattr(vn._host, "runtime", lambda dtype=None: Runtime(check_interrupt=check))
    with pytest.raises(Exception) as info:  # noqa: PT011 - the adapter may wrap it
        _run_node(pack, setup, monkeypatch, tmp_path, unet=StandInUNet(), seconds=2.0, chunk=8)
    assert isinstance(info.value, Interrupted) or isinstance(info.value.__cause__, Interrupted)
    assert calls["n"] > 6
    assert os.listdir(tmp_path) == []


def test_in_memory_source_is_spilled_and_removed(pack, setup, monkeypatch, tmp_path):
    import io

    from tests.tiny_models import StandInUNet

    class BytesVideo(FileOnlyVideo):
        def get_stream_source(self):
            return io.BytesIO(Path(self.path).read_bytes())

    vn = pack.nodes.video_nodes
    monkeypatch.setattr(vn._host, "temp_directory", lambda: str(tmp_path))
    out = _node(pack).call(video=BytesVideo(setup["src"]), audio=_speech(setup, 0.4),
                           model=StandInUNet(), vae=setup["vae"], whisper=setup["whisper"],
                           pose_keypoints=setup["pose"]).values[0]
    assert os.listdir(tmp_path) == [os.path.basename(out.get_stream_source())]


def test_missing_face_source_is_an_error(pack, setup, monkeypatch, tmp_path):
    from tests.tiny_models import StandInUNet

    errors = pack.musetalk_core.errors
    vn = pack.nodes.video_nodes
    monkeypatch.setattr(vn._host, "temp_directory", lambda: str(tmp_path))
    with pytest.raises(errors.InputError, match="detector") as got:
        _node(pack).call(video=FileOnlyVideo(setup["src"]), audio=_speech(setup, 0.4),
                         model=StandInUNet(), vae=setup["vae"], whisper=setup["whisper"])
    assert got.value.input_name == "detector"


def test_input_names_match_the_one_node_lip_sync(pack):
    """Shared workflows link by input name: the two lip-sync nodes name shared inputs alike."""
    video = {i.name: i.type for i in _node(pack).inputs}
    image = next(d for d in pack.nodes.lipsync_nodes.NODES if d.node_id == "MuseTalkLipSync")
    image = {i.name: i.type for i in image.inputs}
    assert {"detector", "parser", "pose_keypoints"} <= set(video)
    assert not {"face_detector", "face_parser"} & set(video)
    for name in set(video) & set(image):
        assert video[name] == image[name], name


def test_face_settings_reach_the_streaming_processor(pack, setup, monkeypatch, tmp_path):
    """face_index, on_missing_face, smooth_boxes and the silence gate reach the settings."""
    from tests.tiny_models import StandInUNet

    vn = pack.nodes.video_nodes
    monkeypatch.setattr(vn._host, "temp_directory", lambda: str(tmp_path))
    seen = {}

    def fake(source, audio, models, settings, runtime, **kw):
        seen["settings"] = settings
        raise pack.musetalk_core.errors.InputError("stop", input_name="video", fix="test")

    monkeypatch.setattr(pack.musetalk_core.streaming, "lipsync_video", fake)
    with pytest.raises(pack.musetalk_core.errors.InputError, match="stop"):
        _node(pack).call(video=FileOnlyVideo(setup["src"]), audio=_speech(setup, 0.4),
                         model=StandInUNet(), vae=setup["vae"], whisper=setup["whisper"],
                         pose_keypoints=setup["pose"], frames_per_chunk=5, face_index=1,
                         on_missing_face="hold_last", smooth_boxes=0.5, silence_gate_db=-40.0)
    s = seen["settings"]
    assert (s.face_index, s.on_missing_face, s.smooth_boxes, s.chunk_size) == \
        (1, "hold_last", 0.5, 5)
    assert s.silence_gate_db == -40.0


@pytest.fixture(scope="module")
def real_format(tmp_path_factory):
    """Tiny random checkpoints in their real formats, loaded by the loaders users run."""
    from musetalk_core.models.unet import load_unet
    from musetalk_core.models.vae import load_vae
    from musetalk_core.models.whisper import load_whisper
    from tests.tiny_models import write_tiny_models

    root = write_tiny_models(tmp_path_factory.mktemp("real_format"))
    return {"model": load_unet(str(root / "musetalk" / "musetalkV15" / "unet.pth"),
                               version="v1.5"),
            "vae": load_vae(str(root / "vae" / "sd-vae-ft-mse")),
            "whisper": load_whisper(str(root / "musetalk" / "whisper"))}


def _rate_source(media: Path, folder: Path, kind: str, n: int = 20):
    """``n`` frames of a real clip at SIDE x SIDE as 25 fps, 29.97 fps or variable rate
    (10 frames at 25 fps, then 10 at 10 fps), with the frames' landmarks as POSE_KEYPOINT."""
    from musetalk_core.video_io import VideoWriter

    name = "talk_29_97fps_512x512" if kind == "29.97" else "talk_25fps_512x512"
    with open_video(media / f"{name}.mp4") as r:
        frames, _ = next(r.chunks(n))
    small = torch.nn.functional.interpolate(frames.permute(0, 3, 1, 2).float(), size=(SIDE, SIDE),
                                            mode="area").round().clamp(0, 255).to(torch.uint8)
    lm = np.load(media / f"{name}.landmarks.npz")["landmarks"][:n, 0] * (SIDE / 512)
    path = folder / f"src_{kind}.mp4"
    fps = Fraction(30000, 1001) if kind == "29.97" else Fraction(25)
    tb, pts = None, None
    if kind == "vfr":
        tb = Fraction(1, 1000)
        pts = [i * 40 for i in range(10)] + [400 + i * 100 for i in range(1, n - 9)]
    with VideoWriter(path, fps, SIDE, SIDE, crf=0, time_base=tb) as w:
        w.write(small.permute(0, 2, 3, 1).contiguous(), pts)
    return path, pose_keypoints(lm.astype(np.float32), SIDE)


@pytest.mark.parametrize("kind", ["25", "29.97", "vfr"])
def test_frame_count_duration_and_audio_per_frame_rate(pack, media, real_format, setup,
                                                       monkeypatch, tmp_path, kind):
    src, pose = _rate_source(media, tmp_path, kind)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    monkeypatch.setattr(pack.nodes.video_nodes._host, "temp_directory", lambda: str(out_dir))
    with open_video(src) as r:
        fps, tb = r.fps, r.time_base
        src_times = [p * tb for _, ps in r.chunks(64) for p in ps]
    # VFR: exactly the source's 20 frames; fixed rates: the 20 frames walked to 1.3 s
    seconds = float(20 / fps) + 0.01 if kind == "vfr" else 1.3
    speech = _speech(setup, seconds)
    n_samples = speech["waveform"].shape[-1]
    expected = n_samples * fps.numerator // (16000 * fps.denominator)
    video = _node(pack).call(video=FileOnlyVideo(src), audio=speech, pose_keypoints=pose,
                             frames_per_chunk=8, batch_size=4, **real_format).values[0]
    with open_video(video.get_stream_source()) as r:
        # a VFR file's average rate is frames / duration, and the last frame's duration is not
        # in the source's timestamps: the timestamps are what must be kept
        assert r.frame_count == expected and (kind == "vfr" or r.fps == fps)
        times = [p * r.time_base for _, ps in r.chunks(64) for p in ps]
        audio = r.audio()
    assert len(times) == expected
    if kind == "vfr":
        assert expected == 20 and times == src_times  # every source timestamp kept
        end = float(src_times[-1]) + float(1 / fps)
    else:
        assert times == [i / fps for i in range(expected)]
        end = float(expected / fps)
    assert abs(video.get_duration() - end) <= float(1 / fps)
    assert abs(audio["waveform"].shape[-1] / audio["sample_rate"] - end) <= float(1 / fps)

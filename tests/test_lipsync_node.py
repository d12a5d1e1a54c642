"""MuseTalk Lip Sync vs the modular chain, and MuseTalk Inpaint, on real media (tiny models).

Frames: the first 8 frames of ``talk_25fps_512x512.mp4`` downscaled to 128x128, their ground-truth
landmarks as POSE_KEYPOINT (frame 3 without a face); speech: the first 0.48 s of
``speech_16k_mono.wav`` (12 frames at 25 fps, so the 8 frames are ping-ponged).
"""

from __future__ import annotations

import types
import wave
from fractions import Fraction

import numpy as np
import pytest
import torch

from musetalk_core import timeline

N_SRC, SIZE, FACELESS = 8, 128, 3


def _node(pack, module, node_id):
    return next(d for d in getattr(pack.nodes, module).NODES if d.node_id == node_id)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tests.tiny_models import write_tiny_models

    return write_tiny_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def models(tiny):
    from tests.conftest import load_pack

    core = load_pack().musetalk_core
    from importlib import import_module

    unet = import_module(core.__name__ + ".models.unet").load_unet(
        str(tiny / "musetalk" / "musetalkV15" / "unet.pth"), version="v1.5")
    vae = import_module(core.__name__ + ".models.vae").load_vae(
        str(tiny / "vae" / "sd-vae-ft-mse"))
    whisper = import_module(core.__name__ + ".models.whisper").load_whisper(
        str(tiny / "musetalk" / "whisper"))
    return types.SimpleNamespace(unet=unet, vae=vae, whisper=whisper)


@pytest.fixture(scope="module")
def clip(media):
    from musetalk_core.video_io import open_video

    with open_video(media / "talk_25fps_512x512.mp4") as r:
        frames, _ = next(r.chunks(N_SRC))
    small = torch.nn.functional.interpolate(frames.permute(0, 3, 1, 2).float(), size=SIZE,
                                            mode="area").permute(0, 2, 3, 1) / 255.0
    lm = np.load(media / "talk_25fps_512x512.landmarks.npz")["landmarks"][:N_SRC, 0] * SIZE / 512
    pose = []
    for i in range(N_SRC):
        people = [] if i == FACELESS else [{"face_keypoints_2d": np.concatenate(
            [lm[i], np.ones((68, 1))], 1).reshape(-1).tolist()}]
        pose.append({"people": people, "canvas_width": SIZE, "canvas_height": SIZE})
    with wave.open(str(media / "speech_16k_mono.wav")) as w:
        pcm = np.frombuffer(w.readframes(7680), np.int16)
    audio = {"waveform": torch.from_numpy(pcm.astype(np.float32) / 32768)[None, None],
             "sample_rate": 16000}
    return types.SimpleNamespace(frames=small.contiguous(), pose=pose, audio=audio)


def _chain(pack, clip, models, policy="pingpong", **face):
    faces = _node(pack, "face_nodes", "MuseTalkFaceCrop").call(
        frames=clip.frames, pose_keypoints=clip.pose, version="v1.5", **face).values[0]
    feats = _node(pack, "audio_nodes", "MuseTalkAudioFeatures").call(
        audio=clip.audio, whisper=models.whisper, fps=25.0).values[0]
    gen, preview = _node(pack, "inpaint_nodes", "MuseTalkInpaint").call(
        model=models.unet, vae=models.vae, faces=faces, audio=feats,
        length_policy=policy).values
    images, mask = _node(pack, "blend_nodes", "MuseTalkBlend").call(
        frames=clip.frames, faces=gen).values
    return faces, gen, preview, images, mask


def _one(pack, clip, models, **kw):
    kw.setdefault("fps", 25.0)
    kw.setdefault("audio", clip.audio)
    return _node(pack, "lipsync_nodes", "MuseTalkLipSync").call(
        model=models.unet, vae=models.vae, whisper=models.whisper,
        pose_keypoints=clip.pose, **kw).values


@pytest.fixture(scope="module")
def one_node(pack, clip, models):
    return _one(pack, clip, models, images=clip.frames)


def test_one_node_equals_the_modular_chain(pack, clip, models, one_node):
    faces, gen, preview, images, mask = _chain(pack, clip, models)
    out, speech, out_mask, fps = one_node
    assert out.shape == (12, SIZE, SIZE, 3) and images.shape == out.shape
    assert torch.equal(out, images) and torch.equal(out_mask, mask)
    assert fps == 25.0
    assert speech["waveform"].shape[-1] == 7680 == timeline.samples_for(12, 25, 16000)
    assert preview.shape == (12, 256, 256, 3)

    src = timeline.source_index(N_SRC, 12, "pingpong")
    assert gen.source_index.tolist() == src.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 7, 6, 5, 4]
    inp = clip.frames[src]
    outside = mask == 0
    assert torch.equal(out[outside], inp[outside])  # pixels outside the mask are the input's
    assert (out != inp).any(dim=-1)[~outside].any()  # and the face did change
    for row in (src == FACELESS).nonzero().flatten().tolist():
        assert torch.equal(out[row], clip.frames[FACELESS]) and not mask[row].any()
    assert not faces.has_face[FACELESS]


def test_face_settings_equal_the_face_crop_node(pack, clip, models, one_node):
    """face_index, on_missing_face and smooth_boxes do in the one node what they do in Face Crop."""
    face = {"face_index": 0, "on_missing_face": "hold_last", "smooth_boxes": 0.5}
    _, gen, _, images, mask = _chain(pack, clip, models, **face)
    out, _, out_mask, _ = _one(pack, clip, models, images=clip.frames, **face)
    assert torch.equal(out, images) and torch.equal(out_mask, mask)
    # hold_last gives the faceless frame the previous box, so it is lip-synced now
    assert bool(gen.has_face.all())
    rows = (timeline.source_index(N_SRC, 12, "pingpong") == FACELESS).nonzero().flatten()
    assert all(mask[r].any() for r in rows.tolist())
    assert not torch.equal(out, one_node[0])  # the settings reached the crop


def test_silence_gate_leaves_pauses_as_filmed(pack, clip, models):
    wave = clip.audio["waveform"].clone()
    wave[..., 4 * 640:7 * 640] = 0  # output frames 4, 5, 6 (source frames 4, 5, 6) are silent
    quiet = {"waveform": wave, "sample_rate": 16000}
    off, _, off_mask, _ = _one(pack, clip, models, images=clip.frames, audio=quiet)
    on, _, mask, _ = _one(pack, clip, models, images=clip.frames, audio=quiet,
                          silence_gate_db=-50.0)
    for row in (4, 5, 6):
        assert torch.equal(on[row], clip.frames[row]) and not mask[row].any()
        assert off_mask[row].any()  # without the gate these frames were lip-synced
    rest = [r for r in range(12) if r not in (4, 5, 6)]
    # the other frames are lip-synced as without the gate; their UNet batches are made up
    # differently (three rows fewer), which moves a few crop pixels by one 8-bit step
    assert torch.equal(mask[rest], off_mask[rest])
    assert (on[rest] - off[rest]).abs().max() <= 1 / 255 + 1e-6


def test_video_input_gives_the_same_frames(pack, clip, models, one_node):
    comps = types.SimpleNamespace(images=clip.frames, frame_rate=Fraction(25), audio=None,
                                  metadata=None)
    calls = []

    class FakeVideo:
        def get_components(self):
            calls.append(1)
            return comps

    b = _one(pack, clip, models, video=FakeVideo(), fps=12.0)[0]  # fps is ignored for VIDEO
    assert calls == [1] and torch.equal(one_node[0], b)


def test_trim_policy_cuts_the_audio_to_the_frames(pack, clip, models):
    out, speech, _, _ = _one(pack, clip, models, images=clip.frames, length_policy="trim")
    assert out.shape[0] == N_SRC
    assert speech["waveform"].shape[-1] == timeline.samples_for(N_SRC, 25, 16000) == 5120


def test_swapping_audio_reencodes_nothing_in_the_inpaint_node(pack, clip, models):
    faces = _node(pack, "face_nodes", "MuseTalkFaceCrop").call(
        frames=clip.frames, pose_keypoints=clip.pose, version="v1.5").values[0]
    feats_node = _node(pack, "audio_nodes", "MuseTalkAudioFeatures")
    inpaint = _node(pack, "inpaint_nodes", "MuseTalkInpaint")
    counted = {"images": 0}
    real_encode = models.vae.encode

    class CountingVAE:
        latent_channels = 4

        def encode(self, pixels):
            counted["images"] += int(pixels.shape[0])
            return real_encode(pixels)

        def decode(self, latents):
            return models.vae.decode(latents)

    vae = CountingVAE()
    a = feats_node.call(audio=clip.audio, whisper=models.whisper, fps=25.0).values[0]
    half = {"waveform": clip.audio["waveform"][..., :4000], "sample_rate": 16000}
    b = feats_node.call(audio=half, whisper=models.whisper, fps=25.0).values[0]
    first = inpaint.call(model=models.unet, vae=vae, faces=faces, audio=a).values[0]
    assert counted["images"] == 2 * (N_SRC - 1)  # masked + reference, faceless frame skipped
    second = inpaint.call(model=models.unet, vae=vae, faces=faces, audio=b).values[0]
    assert counted["images"] == 2 * (N_SRC - 1)  # avatar mode: nothing encoded again
    assert len(second) == 6 and second.info["encoded_frames"] == 0
    assert first.info["encoded_frames"] == N_SRC - 1


def test_ram_preflight_refuses_before_heavy_work(pack, models, monkeypatch):
    monkeypatch.setattr(pack.musetalk_core.pipeline, "available_ram", lambda: 2 * 10**9)
    called = []

    class NoWhisper(torch.nn.Module):
        def forward(self, mel):
            called.append(1)
            raise AssertionError("whisper must not run")

    frame = torch.zeros(1, 1080, 1920, 3)
    audio = {"waveform": torch.zeros(1, 1, 16000 * 600), "sample_rate": 16000}
    feats = types.SimpleNamespace(frame_count=15000)
    monkeypatch.setattr(pack.musetalk_core.audio, "extract_features",
                        lambda *a, **k: feats)
    with pytest.raises(pack.musetalk_core.errors.InputError) as err:
        _node(pack, "lipsync_nodes", "MuseTalkLipSync").call(
            audio=audio, model=models.unet, vae=models.vae, whisper=NoWhisper(),
            images=frame, pose_keypoints=[{"people": []}], fps=25.0)
    msg = str(err.value)
    assert "output would need about 497.7 GB of RAM as IMAGE frames" in msg
    assert "MuseTalk Lip Sync (video)" in msg and not called


def test_interrupt_stops_the_node_within_a_batch(pack, clip, models, monkeypatch):
    class Interrupted(Exception):  # noqa: N818 - stands in for the host's exception
        pass

    seen = []

    def progress(done, total, stage):
        seen.append(stage)
        if stage.startswith("UNet"):
            raise Interrupted()

    rt = pack.musetalk_core.runtime.Runtime(progress=progress)
    monkeypatch.setattr(pack.nodes._host, "runtime", lambda dtype=None: rt)
    with pytest.raises(Interrupted):
        _one(pack, clip, models, images=clip.frames, batch_size=4)
    assert seen.count("UNet + VAE decode") == 1 and "blend" not in seen

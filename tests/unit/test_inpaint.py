"""Latent inpainting with stand-in models: wiring, memo (avatar mode), pass-through, back-off."""

from __future__ import annotations

import logging

import pytest
import torch

from musetalk_core import inpaint as inp
from musetalk_core import timeline
from musetalk_core.errors import InputError
from musetalk_core.runtime import Runtime
from musetalk_core.types import MuseTalkReferences
from tests.tiny_models import StandInUNet, StubVAE, synthetic_audio, synthetic_faces


def _run(faces, audio, unet, vae, *, policy="pingpong", batch_size=4, references=None,
         runtime=None):
    idx = timeline.source_index(len(faces), audio.frame_count, policy)
    return inp.inpaint(faces, audio, unet, vae, runtime or Runtime(), source_index=idx,
                       references=references, batch_size=batch_size)


def test_masked_pixels_are_zero_in_the_lower_half():
    crops = torch.full((2, 256, 256, 3), 200, dtype=torch.uint8)
    masked, full = inp.crops_to_pixels(crops, torch.device("cpu"), torch.float32)
    assert masked.shape == (2, 3, 256, 256)
    assert torch.all(masked[:, :, 128:] == 0) and torch.all(masked[:, :, :128] == full[:, :, :128])
    assert torch.allclose(full, torch.full_like(full, 200 / 255))
    back = inp.pixels_to_crops(full)
    assert torch.equal(back, crops)


def test_latents_are_masked_first_and_decoded_per_row():
    faces = synthetic_faces(3)
    audio = synthetic_audio(7)
    vae, unet = StubVAE(), StandInUNet()
    out = _run(faces, audio, unet, vae)
    assert len(out) == 7 and out.generated
    assert out.source_index.tolist() == [0, 1, 2, 2, 1, 0, 0]
    assert torch.equal(out.boxes, faces.boxes[out.source_index])
    # Recompute row 4 by hand: source 1, its own reference, audio frame 4.
    from musetalk_core.audio import windows

    m, f = inp.crops_to_pixels(faces.crops[1:2], torch.device("cpu"), torch.float32)
    lat = unet(torch.cat([vae.encode(m), vae.encode(f)], dim=1),
               windows(audio, torch.tensor([4]), device=torch.device("cpu"), dtype=torch.float32))
    expect = inp.pixels_to_crops(vae.decode(lat))
    assert torch.equal(out.crops[4:5], expect)


def test_swapping_audio_encodes_nothing_again():
    faces = synthetic_faces(5)
    vae, unet = StubVAE(), StandInUNet()
    first = _run(faces, synthetic_audio(12, seed=1), unet, vae)
    assert vae.encoded_images == 2 * 5  # masked + unmasked, once per source frame
    calls = vae.encode_calls
    second = _run(faces, synthetic_audio(9, seed=2), unet, vae)
    assert vae.encode_calls == calls and vae.encoded_images == 10
    assert first.info["encoded_frames"] == 5 and second.info["encoded_frames"] == 0
    assert not torch.equal(first.crops[:9], second.crops)  # the audio does change the output
    # A different VAE object does not reuse another VAE's latents.
    other = StubVAE()
    _run(faces, synthetic_audio(4), unet, other)
    assert other.encoded_images == 2 * 4


def test_frames_without_a_face_skip_the_models():
    faces = synthetic_faces(4, no_face=(2,))
    vae, unet = StubVAE(), StandInUNet()
    out = _run(faces, synthetic_audio(8), unet, vae, batch_size=16)
    assert out.has_face.tolist() == [True, True, False, True, True, False, True, True]
    assert torch.equal(out.crops[2], faces.crops[2]) and torch.equal(out.crops[5], faces.crops[2])
    assert sum(unet.batches) == 6 and vae.encoded_images == 2 * 3
    assert out.info["passthrough_frames"] == 2


def test_references_pick_the_reference_latent():
    faces = synthetic_faces(3)
    audio = synthetic_audio(3)
    vae, unet = StubVAE(), StandInUNet()
    same = _run(faces, audio, unet, vae)
    refs = MuseTalkReferences(index=torch.tensor([2, 2, 2]), mode="fixed_frame")
    fixed = _run(faces, audio, unet, vae, references=refs)
    assert torch.equal(same.crops[2], fixed.crops[2])
    assert not torch.equal(same.crops[0], fixed.crops[0])
    with pytest.raises(InputError, match="references cover 2 frames but the faces have 3"):
        _run(faces, audio, unet, vae,
             references=MuseTalkReferences(index=torch.tensor([0, 1]), mode="sis"))


def test_version_mismatch_is_refused_with_a_fix():
    faces = synthetic_faces(2, version="v1")
    with pytest.raises(InputError) as err:
        _run(faces, synthetic_audio(2), StandInUNet(version="v1.5"), StubVAE())
    assert "cropped with v1 rules" in str(err.value)
    assert "Fix: set MuseTalk Face Crop's version to v1.5" in str(err.value)


def test_generated_faces_are_refused():
    out = _run(synthetic_faces(2), synthetic_audio(2), StandInUNet(), StubVAE())
    with pytest.raises(InputError, match="already hold generated crops"):
        _run(out, synthetic_audio(2), StandInUNet(), StubVAE())


def test_batch_composition_does_not_change_results():
    faces = synthetic_faces(4)
    audio = synthetic_audio(21)  # 21 is not a multiple of 8
    a = _run(faces, audio, StandInUNet(), StubVAE(), batch_size=1)
    b = _run(faces, audio, StandInUNet(), StubVAE(), batch_size=8)
    c = _run(faces, audio, StandInUNet(), StubVAE(), batch_size=256)
    assert torch.equal(a.crops, b.crops) and torch.equal(a.crops, c.crops)


def test_oom_back_off_equals_a_batch_four_run(caplog):
    class HostOOMError(RuntimeError):
        pass

    faces = synthetic_faces(6)
    audio = synthetic_audio(40)
    rt = Runtime(oom_exceptions=(HostOOMError,))
    unet = StandInUNet(fail_on_call=3, fail_above=4, oom=HostOOMError)
    with caplog.at_level(logging.WARNING):
        out = _run(faces, audio, unet, StubVAE(), batch_size=16, runtime=rt)
    ref = _run(faces, audio, StandInUNet(), StubVAE(), batch_size=4)
    assert torch.equal(out.crops, ref.crops)
    assert sum(unet.batches) == 40  # no frame duplicated or skipped
    assert unet.batches[:2] == [16, 16] and set(unet.batches[2:]) == {4}
    assert any("out of memory at batch 16; continuing at 4" in r.getMessage()
               for r in caplog.records)


def test_progress_and_interrupt_per_batch():
    class StopError(Exception):
        pass

    seen = []

    def progress(done, total, stage):
        seen.append((stage, done, total))
        if stage.startswith("UNet") and done >= 8:
            raise StopError()

    unet = StandInUNet()
    with pytest.raises(StopError):
        _run(synthetic_faces(3), synthetic_audio(20), unet, StubVAE(),
             runtime=Runtime(progress=progress))
    assert ("VAE encode", 3, 3) in seen
    assert sum(unet.batches) == 8  # stopped within one batch


def test_rerun_after_an_interrupt_equals_an_uninterrupted_run():
    class StopError(Exception):
        pass

    def progress(done, total, stage):
        if stage == "VAE encode" and done >= 2:
            raise StopError()

    faces = synthetic_faces(5)
    audio = synthetic_audio(9)
    vae, unet = StubVAE(), StandInUNet()
    with pytest.raises(StopError):
        _run(faces, audio, unet, vae, batch_size=2, runtime=Runtime(progress=progress))
    again = _run(faces, audio, unet, vae, batch_size=2)
    fresh = _run(synthetic_faces(5), audio, StandInUNet(), StubVAE(), batch_size=2)
    assert torch.equal(again.crops, fresh.crops)

"""MuseTalk audio nodes (declarations only; the work is in musetalk_core)."""

from __future__ import annotations

from typing import Any

from ..musetalk_core import audio as core_audio
from ..musetalk_core.errors import InputError
from . import _host
from ._spec import AUDIO, FLOAT, INT, MUSETALK_AUDIO, MUSETALK_WHISPER, In, NodeDef, Out, Result


def _audio_features(audio: Any, whisper: Any, fps: Any) -> Result:
    if whisper is None:
        raise InputError("no whisper model connected", input_name="whisper",
                         fix="connect MuseTalk Whisper Loader")
    rate = core_audio.to_fraction(25 if fps is None else fps)
    result = core_audio.extract_features(audio, whisper, rate, _host.runtime())
    return Result((result, result.frame_count))


AUDIO_FEATURES = NodeDef(
    node_id="MuseTalkAudioFeatures",
    display_name="MuseTalk Audio Features",
    description=(
        "Turns speech into whisper-tiny features for MuseTalk: any sample rate, mono or stereo, "
        "any "
        "length (processed in 30 s pieces). Also returns how many video frames the audio covers "
        "at the given frame rate."
    ),
    inputs=(
        In("audio", AUDIO, "The speech that drives the mouth (Load Audio, a TTS node, or the audio "
           "of Get Video Components). Any sample rate; channels are averaged to mono."),
        In("whisper", MUSETALK_WHISPER, "Whisper-tiny from MuseTalk Whisper Loader."),
        In("fps", FLOAT, "Frame rate of the video to lip-sync. Wire the video's own frame rate "
           "(e.g. the fps output of Get Video Components); 29.97 is treated as 30000/1001.",
           default=25.0, min=1.0, max=240.0, step=0.001),
    ),
    outputs=(
        Out(MUSETALK_AUDIO, "audio_features", "Compact whisper features of the speech, with its "
            "frame rate and frame count; feed MuseTalk Inpaint or MuseTalk Lip Sync."),
        Out(INT, "frame_count", "Video frames the audio covers: floor(duration x fps)."),
    ),
    run=_audio_features,
)

NODES: list[NodeDef] = [AUDIO_FEATURES]

"""The error tree: one base class, every message says what, which input and the fix."""

from __future__ import annotations

import pytest

from musetalk_core import errors


@pytest.mark.parametrize(
    "cls",
    [errors.WeightsError, errors.DownloadError, errors.AudioError, errors.FaceError,
     errors.ReferenceSelectionError, errors.InputError, errors.OutOfMemoryError,
     errors.RunInterruptedError],
)
def test_every_error_is_a_musetalk_error(cls):
    assert issubclass(cls, errors.MuseTalkError)


def test_message_format_without_and_with_node():
    err = errors.AudioError("input holds 2 clips; one face is driven by one clip.",
                            input_name="audio", fix="select one clip, or run two prompts")
    assert str(err) == ("input 'audio': input holds 2 clips; one face is driven by one clip. "
                        "Fix: select one clip, or run two prompts")
    err.for_node("MuseTalk Audio Features")
    assert str(err).startswith("[MuseTalk Audio Features] input 'audio': input holds 2 clips")
    assert err.args == (str(err),)
    # the first node to claim it wins (an inner node's name is the precise one)
    err.for_node("MuseTalk Lip Sync")
    assert str(err).startswith("[MuseTalk Audio Features]")


def test_message_without_input_or_fix():
    assert str(errors.FaceError("no face in any of the 12 frames")) == (
        "no face in any of the 12 frames.")
    assert errors.FaceError("x", fix="y").fix == "y"

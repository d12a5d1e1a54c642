"""MuseTalk Lip Sync (video): a minute-long clip streams through the node in bounded memory.

Each run is a fresh Python process (so RSS is not shared with other tests) that imports the pack
as the host does and calls the node on a generated clip (the first 24 frames of the real 25 fps
talking head, walked forward and back to the clip's length, with their real landmarks as
POSE_KEYPOINT), tiny stand-in models and speech of the same length. The process reports:

* ``before``: RSS just before the node is called;
* ``features`` / ``features_peak``: RSS and its peak when the whisper features of the whole
  speech are done (the last "whisper features" progress step). Everything allocated up to here
  scales with the *speech* by design: the waveform and ``[50 * seconds, 5, 384]`` float32
  features (23 MB a minute);
* ``peak``: the highest RSS while the frames stream (the kernel's exact high-water mark);
* ``chunks``: RSS as each chunk is handed to the encoder.

The streaming part, ``peak - features``, is what must depend on the chunk size only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from musetalk_core.video_io import open_video, write_video

ROOT = Path(__file__).resolve().parents[1]
SIDE = 128
CHUNK = 16
MiB = 2**20
ALLOCATORS = {
    # glibc as users run it: its adaptive mmap threshold keeps freed chunk buffers in the heap,
    # so the same run peaks anywhere within about 40 MiB; the bound catches what users would
    # see (small long-lived tensors per frame pinning that heap cost 0.55 MB a frame here)
    "default": ({}, 48 * MiB),
    # a fixed threshold: freed large buffers go back to the OS at once, RSS shows live memory
    # and runs repeat to within 1 MiB, so the bound is tight
    "fixed_mmap_threshold": ({"MALLOC_MMAP_THRESHOLD_": "131072"}, 12 * MiB),
}
"""``name: (environment of the child process, allowance for allocator noise)``."""


def _probe(source: str, landmarks: str, seconds: float, out_dir: str) -> None:
    """Run in the child process: call the node once, print the RSS figures as JSON.

    Peaks are the kernel's exact high-water mark (``VmHWM``), reset by writing 5 to
    ``/proc/self/clear_refs`` before the call and again when the features are done.
    """
    import os

    from musetalk_core.runtime import Runtime
    from tests.conftest import MEDIA, load_pack
    from tests.test_video_node import FileOnlyVideo, StandInWhisper, pose_keypoints
    from tests.tiny_models import StandInUNet, StubVAE

    page = os.sysconf("SC_PAGE_SIZE")

    def rss() -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * page

    def high_water(reset: bool = False) -> int:
        with open("/proc/self/status") as fh:
            kib = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))
        if reset:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
        return kib * 1024

    pack = load_pack()
    vn = pack.nodes.video_nodes
    node = next(d for d in vn.NODES if d.node_id == "MuseTalkLipSyncVideo")
    pose = pose_keypoints(np.load(landmarks), SIDE)
    with open_video(MEDIA / "talk_25fps_512x512.mp4") as r:
        wave = r.audio()["waveform"]
    n = int(seconds * 16000)
    wave = torch.cat([wave] * -(-n // wave.shape[-1]), dim=-1)[..., :n].contiguous()
    speech = {"waveform": wave, "sample_rate": 16000}
    marks: dict[str, int] = {}

    def progress(done: int, total: int, stage: str) -> None:
        if stage == "whisper features" and done == total:
            marks["features"] = rss()
            marks["features_peak"] = high_water(reset=True)

    vn._host.temp_directory = lambda: out_dir
    vn._host.runtime = lambda dtype=None: Runtime(progress=progress)
    chunks: list[int] = []
    vn.CAPTURE = lambda frames, pts: chunks.append(rss())
    models = {"model": StandInUNet(), "vae": StubVAE(), "whisper": StandInWhisper()}

    marks["before"] = rss()
    high_water(reset=True)
    video = node.call(video=FileOnlyVideo(Path(source)), audio=speech, pose_keypoints=pose,
                      frames_per_chunk=CHUNK, batch_size=8, **models).values[0]
    marks["peak"] = high_water()
    with open_video(video.get_stream_source()) as r:
        frames = r.frame_count
    print(json.dumps({**marks, "chunks": chunks, "frames": frames}))


def _generated_clip(media: Path, folder: Path, seconds: float) -> tuple[Path, Path]:
    """A ``seconds``-long 25 fps clip at SIDE x SIDE and its landmarks (``[N, 68, 2]`` .npy)."""
    n_src = 24
    with open_video(media / "talk_25fps_512x512.mp4") as r:
        frames, _ = next(r.chunks(n_src))
    small = torch.nn.functional.interpolate(frames.permute(0, 3, 1, 2).float(), size=(SIDE, SIDE),
                                            mode="area").round().clamp(0, 255).to(torch.uint8)
    small = small.permute(0, 2, 3, 1).contiguous()
    lm = np.load(media / "talk_25fps_512x512.landmarks.npz")["landmarks"][:n_src, 0]
    lm = (lm * (SIDE / 512)).astype(np.float32)
    n = int(round(seconds * 25))
    walk = np.concatenate([np.arange(n_src), np.arange(n_src - 2, 0, -1)])  # 0..23..1
    index = walk[np.arange(n) % len(walk)]
    folder.mkdir()
    clip, marks = folder / "clip.mp4", folder / "landmarks.npy"
    write_video(clip, small[torch.from_numpy(index)], Fraction(25), crf=0)
    np.save(marks, lm[index])
    return clip, marks


def _run(media: Path, tmp: Path, seconds: float, env: dict[str, str]) -> dict:
    clip, marks = _generated_clip(media, tmp / f"src{seconds:g}", seconds)
    out = tmp / f"out{seconds:g}"
    out.mkdir()
    code = ("import sys; from tests.test_video_node_memory import _probe; "
            "_probe(sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4])")
    done = subprocess.run([sys.executable, "-c", code, str(clip), str(marks), str(seconds),
                           str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, **env})
    assert done.returncode == 0, done.stderr[-3000:]
    info = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(list(out.iterdir())) == 1  # only the rendered video is left in the temp folder
    return info


def _can_reset_peak() -> bool:
    """Linux lets a process reset its own peak RSS (``VmHWM``); some sandboxes forbid it."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _can_reset_peak(), reason="needs Linux /proc/self/clear_refs (peak RSS)")
@pytest.mark.parametrize("allocator", sorted(ALLOCATORS))
def test_minute_long_clip_streams_in_memory_set_by_the_chunk(media, tmp_path, allocator):
    env, noise = ALLOCATORS[allocator]
    short = _run(media, tmp_path, 6.0, env)
    long = _run(media, tmp_path, 60.0, env)
    assert short["frames"] == 150 and long["frames"] == 1500

    stream_short = short["peak"] - short["features"]
    stream_long = long["peak"] - long["features"]
    frame_bytes = SIDE * SIDE * 3
    # the one state that grows with the clip by design: the latent memo of the last 1024 source
    # frames (2 x [4, 32, 32] float32 = 32 KiB a frame), for a ping-pong walk coming back
    def memo_bytes(frames: int) -> int:
        return min(frames, 1024) * 2 * 4 * 32 * 32 * 4

    # 1) the bound set by the chunk size: what a 6 s clip needs at the same chunk size, plus
    #    the memo's and the speech's growth and allocator noise. Ten times the frames; keeping
    #    even the uint8 output frames of the minute would add 1500 * 48 KiB = 70 MiB
    speech_copy = 2 * 4 * 16000 * (60 - 6)  # the writer's float32 copy of the speech, for AAC
    bound = stream_short + memo_bytes(1500) - memo_bytes(150) + speech_copy + noise
    assert stream_long <= bound, (stream_short / MiB, stream_long / MiB, bound / MiB)
    # 2) well under the minute as one float32 IMAGE (281 MiB at this size), which the IMAGE
    #    path must hold on top of everything else
    assert stream_long < 1500 * frame_bytes * 4, stream_long / MiB
    # 3) memory is flat along the run: the last half of the chunks is no higher than the
    #    first quarter plus what the memo filled in between, and a little allocator noise
    chunks = long["chunks"]
    assert len(chunks) == -(-1500 // CHUNK)
    quarter, half = len(chunks) // 4, len(chunks) // 2
    filled = memo_bytes(1500) - memo_bytes(quarter * CHUNK)
    assert max(chunks[half:]) <= max(chunks[:quarter]) + filled + noise
    # 4) the speech part grows with the speech only: waveform (float32, a few copies while
    #    resampling) and features [50 * s, 5, 384] float32 (kept, plus one 30 s piece and the
    #    concatenated copy while they are built)
    def speech_bytes(seconds: float) -> int:
        return int(4 * (4 * 16000 * seconds + 2 * 50 * seconds * 5 * 384 + 1500 * 5 * 384))

    for run, seconds in ((short, 6.0), (long, 60.0)):
        assert run["features_peak"] - run["before"] <= speech_bytes(seconds) + 48 * MiB, run

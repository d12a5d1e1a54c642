"""The end-to-end benchmark runs in its quick mode (tiny models) and prints every stage."""

from __future__ import annotations


def test_pipeline_benchmark_quick(capsys):
    from benchmarks import pipeline as bench

    assert bench.main(["--quick"]) == 0
    out = capsys.readouterr().out
    for stage in ("audio features", "detection (S3FD+FAN)", "crop", "encode (masked+ref)",
                  "UNet", "decode", "parsing (BiSeNet 512)", "blend (parse, cold)",
                  "blend (cached masks)", "end to end, new clip", "end to end, cached"):
        assert f"{stage} " in out, stage
    assert "ms/frame" in out and "frames/s" in out and "peak RSS" in out
    assert out.startswith("device cpu") or out.startswith("device cuda")
    assert "model maths per frame: encode" in out and "floor at the best throughput" in out


def test_flop_count_matches_the_architectures():
    """The floor's FLOPs: the full-size sd-vae decoder at 32x32 -> 256x256 is about 620 GFLOP,
    the encoder about 270 per crop, the MuseTalk UNet about 180 (musetalk.md, issue 6)."""
    from benchmarks import pipeline as bench

    gflop = bench.model_gflop(quick=False)
    assert 600 < gflop["decode"] < 650 and 520 < gflop["encode"] < 570
    assert 160 < gflop["UNet"] < 200

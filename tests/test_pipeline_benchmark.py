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

"""The pack works the same with its web extension removed (the extension only adds views)."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
KEEP_OUT = shutil.ignore_patterns(".venv", ".git", "web", "tests", "benchmarks", "workflows",
                                  "docs", "__pycache__", "*.egg-info", ".ruff_cache",
                                  ".pytest_cache", "models", "out")


def _import_copy(folder: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def _pose(lm: np.ndarray, size: int) -> dict:
    pts = np.concatenate([lm, np.ones((68, 1))], 1).reshape(-1).tolist()
    return {"people": [{"face_keypoints_2d": pts}], "canvas_width": size, "canvas_height": size}


def test_nodes_register_and_run_without_web_folder(pack, tmp_path):
    copy = tmp_path / "musetalk-no-web"
    shutil.copytree(ROOT, copy, ignore=KEEP_OUT)
    assert not (copy / "web").exists()
    bare = _import_copy(copy, "musetalk_pack_no_web")
    assert set(bare.NODE_CLASS_MAPPINGS) == set(pack.NODE_CLASS_MAPPINGS)
    assert len(bare.NODE_CLASS_MAPPINGS) == 11

    # a node whose UI payload feeds the extension gives the same values without it
    rng = np.random.default_rng(0)
    base = np.array([[x, y] for x, y in zip(np.linspace(150, 350, 68),
                                            np.linspace(180, 400, 68), strict=True)])
    lm = (base + rng.normal(0, 3, base.shape)).astype(np.float32)
    frames = torch.rand(2, 512, 512, 3)
    kwargs = dict(frames=frames, pose_keypoints=[_pose(lm, 512)] * 2, version="v1.5",
                  bbox_shift=0, extra_margin=10, face_index=-1, on_missing_face="passthrough",
                  smooth_boxes=0.0)

    def run(p):
        node = next(d for d in p.nodes.face_nodes.NODES if d.node_id == "MuseTalkFaceCrop")
        return node.call(**kwargs).values

    with_web, without_web = run(pack), run(bare)
    assert torch.equal(with_web[0].boxes, without_web[0].boxes)
    assert torch.equal(with_web[0].crops, without_web[0].crops)
    assert torch.equal(with_web[2], without_web[2])

"""The core never touches the host; importing the pack loads nothing heavy, quickly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOST_MODULES = {"comfy", "comfy_api", "folder_paths", "server", "execution", "comfy_execution"}
HEAVY_MODULES = {
    "diffusers", "whisper", "face_alignment", "transformers", "cv2", "huggingface_hub",
    "librosa", "av", "skimage", "scipy", "numba",
}


def _run(code: str, cwd: Path = ROOT) -> dict:
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_core_imports_no_host_module():
    code = (
        "import json, sys, musetalk_core, musetalk_core.errors, musetalk_core.runtime;"
        f"host = {sorted(HOST_MODULES)!r};"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in host)))"
    )
    assert _run(code) == []


def test_core_sources_never_import_the_host():
    import ast

    bad = []
    for path in (ROOT / "musetalk_core").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            bad += [f"{path.name}: {n}" for n in names if n.split(".")[0] in HOST_MODULES]
    assert bad == []


def test_only_the_adapter_imports_the_host():
    import ast

    offenders = []
    for path in (ROOT / "nodes").rglob("*.py"):
        if path.name == "_host.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in HOST_MODULES]
    assert offenders == []


IMPORT_AS_HOST = r"""
import importlib.util, json, sys, time
import torch  # the host always has torch loaded before custom nodes
before = set(sys.modules)
t0 = time.perf_counter()
spec = importlib.util.spec_from_file_location(
    "custom_nodes_x_musetalk_pack", {init!r}, submodule_search_locations=[{root!r}])
mod = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = mod
spec.loader.exec_module(mod)
dt = time.perf_counter() - t0
new = sorted(set(sys.modules) - before)
print(json.dumps({{"seconds": dt, "new": new, "names": sorted(vars(mod))}}))
"""


def test_import_as_host_is_light_and_fast():
    code = IMPORT_AS_HOST.format(init=str(ROOT / "__init__.py"), root=str(ROOT))
    # best of three: the first run pays for bytecode compilation
    runs = [_run(code) for _ in range(3)]
    loaded = {m.split(".")[0] for m in runs[0]["new"]}
    assert not (loaded & HEAVY_MODULES), sorted(loaded & HEAVY_MODULES)
    assert not (loaded & HOST_MODULES)
    assert min(r["seconds"] for r in runs) < 0.3, [r["seconds"] for r in runs]
    names = set(runs[0]["names"])
    # without comfy_api.latest: the classic mappings, and never the V3 entrypoint beside them
    assert "NODE_CLASS_MAPPINGS" in names
    assert "comfy_entrypoint" not in names
    assert "WEB_DIRECTORY" in names


def test_no_test_package_init_files():
    # the pack root is a package; pytest must not import it while collecting tests
    # (fixture custom-node folders that host tests hand to ComfyUI are not test packages)
    found = [p for p in (ROOT / "tests").rglob("__init__.py") if "fixtures" not in p.parts]
    assert found == []

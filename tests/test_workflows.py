"""The shared workflows, checked without a host.

Every UI workflow parses with the host's schema (version 0.4) and has an API twin that says the
same thing; every node is ours or a known core node; every widget value is valid for its input
(combo options, numeric ranges, types); every required input is set; every link type-checks; the
files are what ``scripts/build_workflows.py`` builds. The UI -> API conversion here is the test's
own (widgets_values mapped onto the widget inputs in order, as ``comfyui-host.md`` 6 describes),
not the generator's.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UI_DIR = ROOT / "workflows"
API_DIR = UI_DIR / "api"
EXPECTED = {"dub_a_clip", "talking_portrait", "generator_chain", "v15_sis_jaw",
            "long_clip_streaming"}


def _builder():
    spec = importlib.util.spec_from_file_location("build_workflows",
                                                  ROOT / "scripts" / "build_workflows.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("build_workflows", mod)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def builder(pack):
    return _builder()


@pytest.fixture(scope="module")
def specs(builder):
    return builder.all_specs()


def _ui(name: str) -> dict:
    return json.loads((UI_DIR / f"{name}.json").read_text())


def _api(name: str) -> dict:
    return json.loads((API_DIR / f"{name}.json").read_text())


def test_each_ui_workflow_has_an_api_twin():
    ui = {p.stem for p in UI_DIR.glob("*.json")}
    api = {p.stem for p in API_DIR.glob("*.json")}
    assert ui == api == EXPECTED


def test_files_are_what_the_generator_builds(builder):
    for path, text in builder.render().items():
        assert path.read_text() == text, f"{path.name} is stale: run scripts/build_workflows.py"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_ui_structure(name):
    wf = _ui(name)
    assert wf["version"] == 0.4
    for key in ("last_node_id", "last_link_id", "nodes", "links", "groups", "config", "extra"):
        assert key in wf, key
    ids = [n["id"] for n in wf["nodes"]]
    assert len(ids) == len(set(ids)) and max(ids) == wf["last_node_id"]
    assert max(link[0] for link in wf["links"]) == wf["last_link_id"]
    for n in wf["nodes"]:
        for key in ("id", "type", "pos", "size", "flags", "order", "mode", "inputs", "outputs",
                    "properties", "widgets_values"):
            assert key in n, (n["id"], key)
        assert n["mode"] == 0
    notes = [n for n in wf["nodes"] if n["type"] == "MarkdownNote"]
    assert notes and all(n["widgets_values"][0].strip() for n in notes)
    assert any(n["type"] == "SaveVideo" for n in wf["nodes"])


def _ui_to_api(wf: dict, specs: dict, virtual: set[str]) -> dict:
    links = {link[0]: link for link in wf["links"]}
    prompt = {}
    for n in wf["nodes"]:
        if n["type"] in virtual:
            continue
        spec = specs[n["type"]]
        linked = {i["name"]: links[i["link"]] for i in n["inputs"] if i.get("link") is not None}
        values = list(n["widgets_values"])
        inputs = {}
        for port in spec.inputs:
            if port.is_widget:
                value = values.pop(0)
                if port.type == "INT" and port.name in ("seed", "noise_seed"):
                    assert values.pop(0) in ("fixed", "increment", "decrement", "randomize")
                if port.name not in linked:
                    inputs[port.name] = value
            if port.name in linked:
                link = linked[port.name]
                inputs[port.name] = [str(link[1]), link[2]]
        assert values == list(spec.ui_tail), (n["type"], values)
        prompt[str(n["id"])] = {"class_type": n["type"], "inputs": inputs}
    return prompt


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_ui_and_api_twins_agree(name, specs, builder):
    converted = _ui_to_api(_ui(name), specs, builder.VIRTUAL)
    api = _api(name)
    assert {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in api.items()} \
        == converted


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_nodes_inputs_values_and_links_are_valid(name, specs, builder, pack):
    api = _api(name)
    ours = {d.node_id for d in pack.nodes.node_defs()}
    for node in api.values():
        kind = node["class_type"]
        assert kind in ours or kind in builder.CORE_NODES, f"{name}: unknown node {kind}"
        spec = specs[kind]
        known = {p.name for p in spec.inputs}
        assert set(node["inputs"]) <= known, (kind, set(node["inputs"]) - known)
        for port in spec.inputs:
            value = node["inputs"].get(port.name)
            if value is None:
                assert port.optional, f"{name}: {kind}.{port.name} is not set"
                continue
            if isinstance(value, list):  # a link: the source output's type must match
                src = api[value[0]]
                out_type = specs[src["class_type"]].outputs[value[1]][1]
                assert out_type == port.type, (kind, port.name, out_type, port.type)
                continue
            assert port.is_widget, (kind, port.name)
            if port.type == "COMBO" and port.options is not None:
                assert value in port.options, (kind, port.name, value, port.options)
            if port.type == "BOOLEAN":
                assert isinstance(value, bool)
            if port.type == "STRING":
                assert isinstance(value, str) and value
            if port.type in ("INT", "FLOAT"):
                assert isinstance(value, int if port.type == "INT" else (int, float))
                assert not isinstance(value, bool)
                if port.min is not None:
                    assert value >= port.min, (kind, port.name, value)
                if port.max is not None:
                    assert value <= port.max, (kind, port.name, value)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_ui_links_are_consistent(name, specs):
    wf = _ui(name)
    nodes = {n["id"]: n for n in wf["nodes"]}
    for link_id, src, slot, dst, dst_slot, typ in wf["links"]:
        out = nodes[src]["outputs"][slot]
        assert link_id in out["links"] and out["type"] == typ
        inp = nodes[dst]["inputs"][dst_slot]
        assert inp["link"] == link_id and inp["type"] == typ
        assert specs[nodes[src]["type"]].outputs[slot][1] == typ


def test_what_each_workflow_shows():
    """The graphs the issue asks for."""
    def types(name):
        return [n["class_type"] for n in _api(name).values()]

    dub = _api("dub_a_clip")
    af = next(n for n in dub.values() if n["class_type"] == "MuseTalkAudioFeatures")
    gvc = next(k for k, n in dub.items() if n["class_type"] == "GetVideoComponents")
    assert af["inputs"]["fps"] == [gvc, 2]
    create = next(n for n in dub.values() if n["class_type"] == "CreateVideo")
    assert create["inputs"]["fps"] == [gvc, 2] and "audio" in create["inputs"]
    for node in ("LoadVideo", "LoadAudio", "MuseTalkFaceCrop", "MuseTalkInpaint",
                 "MuseTalkBlend", "SaveVideo"):
        assert node in types("dub_a_clip")
    assert {"LoadImage", "LoadAudio", "MuseTalkLipSync", "CreateVideo", "SaveVideo"} <= \
        set(types("talking_portrait"))
    assert {"LoadImage", "RepeatImageBatch", "MuseTalkLipSync"} <= set(types("generator_chain"))
    sis = _api("v15_sis_jaw")
    modes = {n["class_type"]: n["inputs"].get("mode") for n in sis.values()}
    assert modes["MuseTalkReferenceSelect"] == "sis" and modes["MuseTalkBlend"] == "jaw"
    assert types("v15_sis_jaw").count("PreviewImage") == 3 and "MaskToImage" in types(
        "v15_sis_jaw")
    long = _api("long_clip_streaming")
    node = next(n for n in long.values() if n["class_type"] == "MuseTalkLipSyncVideo")
    load = next(k for k, n in long.items() if n["class_type"] == "LoadVideo")
    assert node["inputs"]["video"] == [load, 0]  # the VIDEO itself: never decoded whole
    assert "GetVideoComponents" not in types("long_clip_streaming")
    assert {"detector", "parser"} <= set(node["inputs"])
    save = next(n for n in long.values() if n["class_type"] == "SaveVideo")
    assert save["inputs"]["video"] == [next(k for k, n in long.items() if n is node), 0]

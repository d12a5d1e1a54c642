"""MuseTalk lip sync for ComfyUI.

The host imports this file from the pack's folder. It registers the ``musetalk`` model folder and
the nodes: through the V3 schema API (``comfy_entrypoint``) where the host has ``comfy_api.latest``,
otherwise through the classic ``NODE_CLASS_MAPPINGS``; never both. Nothing heavy is imported, loaded
or downloaded here.
"""

from .nodes import _host, node_defs, web_routes

WEB_DIRECTORY = "./web"

_host.register_model_folders()
_host.register_routes(web_routes.ROUTES)

if _host.HAS_V3:
    comfy_entrypoint = _host.v3_entrypoint(node_defs())
    __all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
else:
    NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = _host.v1_mappings(node_defs())
    __all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]

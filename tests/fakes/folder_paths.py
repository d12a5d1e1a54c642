"""A stand-in for ComfyUI's ``folder_paths`` with the same behaviour for what the pack uses.

Semantics follow the host (comfyui-host.md section 3): ``add_model_folder_path`` appends (or
prepends with ``is_default``) and creates an unknown folder with an empty extension set, meaning
"every file"; ``get_filename_list`` walks recursively and returns sorted relative paths with ``/``;
``get_full_path`` returns the first existing match across the folder's paths.
"""

import os

base_path = os.environ["FAKE_COMFY_BASE"]
models_dir = os.path.join(base_path, "models")
supported_pt_extensions = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}
folder_names_and_paths = {
    "vae": ([os.path.join(models_dir, "vae")], supported_pt_extensions),
}
add_calls = []


def add_model_folder_path(folder_name, full_folder_path, is_default=False):
    add_calls.append((folder_name, full_folder_path, is_default))
    paths, exts = folder_names_and_paths.setdefault(folder_name, ([], set()))
    if full_folder_path in paths:
        if is_default and paths[0] != full_folder_path:
            paths.remove(full_folder_path)
            paths.insert(0, full_folder_path)
    elif is_default:
        paths.insert(0, full_folder_path)
    else:
        paths.append(full_folder_path)


def get_folder_paths(folder_name):
    return folder_names_and_paths[folder_name][0][:]


def _filter(files, exts):
    return sorted(f for f in files if not exts or os.path.splitext(f)[1].lower() in exts)


def get_filename_list(folder_name):
    paths, exts = folder_names_and_paths[folder_name]
    found = set()
    for root in paths:
        if not os.path.isdir(root):
            continue
        for dirpath, _dirs, files in os.walk(root, followlinks=True):
            for f in files:
                found.add(os.path.relpath(os.path.join(dirpath, f), root).replace(os.sep, "/"))
    return _filter(found, exts)


def get_full_path(folder_name, filename):
    filename = os.path.relpath(os.path.join("/", filename), "/")
    for root in folder_names_and_paths[folder_name][0]:
        full = os.path.join(root, filename)
        if os.path.isfile(full):
            return full
    return None


def get_temp_directory():
    return os.path.join(base_path, "temp")

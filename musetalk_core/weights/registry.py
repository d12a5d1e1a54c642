"""Every model file the pack knows: source, name, target folder, size, licence, sha256 (data only).

Paths are relative to a host model folder: ``folder`` is the folder type (``musetalk`` is ours,
``vae`` is the host's), ``rel`` the path inside it. Under ``ComfyUI/models`` the v1.5 UNet is
therefore ``musetalk/musetalkV15/unet.pth``.

``sha256`` is filled only where the source publishes it (a Hugging Face LFS file's oid, or the
digest embedded in openai's download URL); ``None`` means "not published", and the download is
then checked by size only. ``size`` is the exact byte count where known; ``max_bytes`` caps what a
download may write when it is not. The face-alignment names end in a hash *prefix*
(``s3fd-619a316812``) that is not a sha256.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

HF_ENDPOINT = "https://huggingface.co"


@dataclass(frozen=True)
class WeightFile:
    """One downloadable file.

    Attributes:
        key: stable registry key (``unet_v15``).
        folder: host folder type (``musetalk`` or ``vae``).
        rel: path inside that folder, ``/``-separated (``musetalkV15/unet.pth``).
        url: where to fetch it (a Hugging Face ``resolve`` URL or a plain HTTPS URL).
        hf_repo: the Hugging Face repo, for messages (``None`` for non-hub files).
        size: exact size in bytes, or ``None`` if not published.
        max_bytes: the most a download may write (``size`` when known).
        sha256: published digest (lower-case hex), or ``None``.
        licence: the weights' licence as the source states it.
        mirrors: further URLs tried in order after a 404.
        manual: where a person can get it by hand, if different from ``url``.
        release: what a matching sha256 identifies (``v1`` / ``v1.5`` for the UNets).
        standalone: a complete model on its own that merely sits in a model folder's directory
            (openai's ``tiny.pt`` beside the Hugging Face whisper files); choosing the folder
            never needs it.
    """

    key: str
    folder: str
    rel: str
    url: str
    hf_repo: str | None
    size: int | None
    max_bytes: int
    sha256: str | None
    licence: str
    mirrors: tuple[str, ...] = ()
    manual: str | None = None
    release: str | None = None
    standalone: bool = False

    @property
    def filename(self) -> str:
        """The file's base name (``unet.pth``)."""
        return self.rel.rsplit("/", 1)[-1]

    @property
    def subdir(self) -> str:
        """The sub-folder inside ``folder`` (``musetalkV15``; ``""`` at the top)."""
        return self.rel.rsplit("/", 1)[0] if "/" in self.rel else ""

    @property
    def source(self) -> str:
        """Human-readable source for messages (``HF TMElyralab/MuseTalk/musetalkV15/unet.pth``)."""
        if self.hf_repo:
            path = self.url.split("/resolve/", 1)[-1].split("/", 1)[-1]
            return f"HF {self.hf_repo}/{path}"
        return self.url

    def target(self, root: str) -> str:
        """The file's absolute path under one registered folder ``root``."""
        return os.path.join(root, *self.rel.split("/"))


def _hf(repo: str, path: str) -> str:
    return f"{HF_ENDPOINT}/{repo}/resolve/main/{path}"


_MB = 1_000_000
_MUSETALK = "TMElyralab/MuseTalk"
_VAE = "stabilityai/sd-vae-ft-mse"
_WHISPER = "openai/whisper-tiny"
_BISENET = "ManyOtherFunctions/face-parse-bisent"
_WHISPER_TINY_SHA = "65147644a518d12f04e32d6f3b26facc3f8dd46e5390956a9424a650c0ce22b9"

FILES: tuple[WeightFile, ...] = (
    # MuseTalk UNets (musetalk.md 1.1). Sizes are not published exactly (~3.4 GB each, fp32).
    WeightFile("unet_v1", "musetalk", "musetalk/pytorch_model.bin",
               _hf(_MUSETALK, "musetalk/pytorch_model.bin"), _MUSETALK, None, 3_600 * _MB, None,
               "MIT", release="v1"),
    WeightFile("unet_v1_config", "musetalk", "musetalk/musetalk.json",
               _hf(_MUSETALK, "musetalk/musetalk.json"), _MUSETALK, None, _MB, None, "MIT"),
    WeightFile("unet_v15", "musetalk", "musetalkV15/unet.pth",
               _hf(_MUSETALK, "musetalkV15/unet.pth"), _MUSETALK, None, 3_600 * _MB, None,
               "MIT", release="v1.5"),
    WeightFile("unet_v15_config", "musetalk", "musetalkV15/musetalk.json",
               _hf(_MUSETALK, "musetalkV15/musetalk.json"), _MUSETALK, None, _MB, None, "MIT"),
    # sd-vae-ft-mse: a diffusers folder in models/vae that the host's VAELoader also lists
    # (its single file). sha256 and size: the HF LFS oid of the safetensors file.
    WeightFile("vae", "vae", "sd-vae-ft-mse/diffusion_pytorch_model.safetensors",
               _hf(_VAE, "diffusion_pytorch_model.safetensors"), _VAE, 334_643_276, 334_643_276,
               "a1d993488569e928462932c8c38a0760b874d166399b14414135bd9c42df5815", "MIT"),
    WeightFile("vae_config", "vae", "sd-vae-ft-mse/config.json", _hf(_VAE, "config.json"), _VAE,
               None, _MB, None, "MIT"),
    # whisper-tiny: openai's checkpoint (sha256 embedded in its URL) and the HF folder.
    WeightFile("whisper_tiny_pt", "musetalk", "whisper/tiny.pt",
               "https://openaipublic.azureedge.net/main/whisper/models/"
               f"{_WHISPER_TINY_SHA}/tiny.pt", None, None, 80 * _MB, _WHISPER_TINY_SHA, "MIT",
               standalone=True),
    WeightFile("whisper_config", "musetalk", "whisper/config.json", _hf(_WHISPER, "config.json"),
               _WHISPER, None, _MB, None, "Apache-2.0"),
    WeightFile("whisper_weights", "musetalk", "whisper/model.safetensors",
               _hf(_WHISPER, "model.safetensors"), _WHISPER, 151_061_672, 151_061_672,
               "7ebd0e69e78190ffe1438491fa05cc1f5c1aa3a4c4db3bc1723adbb551ea2395", "Apache-2.0"),
    WeightFile("whisper_preprocessor", "musetalk", "whisper/preprocessor_config.json",
               _hf(_WHISPER, "preprocessor_config.json"), _WHISPER, None, 4 * _MB, None,
               "Apache-2.0"),
    # BiSeNet (zllrunning/face-parsing.PyTorch); the original is on Google Drive, which serves
    # quota pages to scripts, so downloads use a Hugging Face mirror.
    WeightFile("face_parser", "musetalk", "face-parse-bisent/79999_iter.pth",
               _hf(_BISENET, "79999_iter.pth"), _BISENET, None, 60 * _MB, None,
               "MIT (code); trained on CelebAMask-HQ (non-commercial research data)",
               manual="https://drive.google.com/file/d/154JgKpzCPW82qINcVieuPH3fZ2e0P812"),
    # face-alignment 1.5's state-dict files (never its TorchScript 2DFAN4-cd938726ad.zip).
    WeightFile("s3fd", "musetalk", "face_alignment/s3fd-619a316812.pth",
               "https://www.adrianbulat.com/downloads/python-fan/s3fd-619a316812.pth", None, None,
               95 * _MB, None, "BSD-3-Clause"),
    WeightFile("fan2d", "musetalk", "face_alignment/2DFAN4-11f355bf06.pth.tar",
               "https://www.adrianbulat.com/downloads/python-fan/2DFAN4-11f355bf06.pth.tar", None,
               None, 105 * _MB, None, "BSD-3-Clause"),
)

BY_KEY: dict[str, WeightFile] = {f.key: f for f in FILES}


def by_rel(folder: str, rel: str) -> WeightFile | None:
    """The registered file at ``rel`` in ``folder`` (``None`` if not registered)."""
    rel = rel.replace("\\", "/").strip("/")
    return next((f for f in FILES if f.folder == folder and f.rel == rel), None)


def in_subdir(folder: str, subdir: str) -> list[WeightFile]:
    """Registered files that make up a model stored as a folder (the HF whisper folder's three
    files); standalone files that merely sit in the same directory are left out."""
    subdir = subdir.replace("\\", "/").strip("/")
    return [f for f in FILES if f.folder == folder and f.subdir == subdir and not f.standalone]


def known_releases(files: tuple[WeightFile, ...] = FILES) -> dict[str, str]:
    """``sha256 -> release`` for files whose digest identifies a release (the UNet versions)."""
    return {f.sha256: f.release for f in files if f.sha256 and f.release}

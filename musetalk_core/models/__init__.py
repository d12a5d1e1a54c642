"""The networks: MuseTalk UNet, latent VAE adapters, whisper-tiny encoder, BiSeNet, S3FD + 2D-FAN.

Import the submodule you need (``from musetalk_core.models.unet import load_unet``); this package
imports nothing itself, so importing it stays cheap (diffusers and friends load inside functions).
"""

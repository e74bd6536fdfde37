"""invedit: edit real photos with latent diffusion models through exact, deterministic DDIM inversion.

The library API lives in `invedit.api`; the command line in `invedit.cli`. Importing this package is
cheap: torch and diffusers load only when a model is used.
"""
__version__ = "0.1.0"

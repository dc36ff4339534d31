"""ldlg: latent diffusion for language generation (LD4LG) in JAX/Flax."""

__version__ = "0.1.0"

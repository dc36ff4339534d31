"""A learned compression of frozen BART latents to a fixed-size latent (LD4LG's later version)."""

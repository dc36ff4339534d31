"""The LD4LG denoiser network (flax.linen) and its layers."""
from ldlg.networks.denoiser import Denoiser
from ldlg.networks.params import count_params

__all__ = ["Denoiser", "count_params"]

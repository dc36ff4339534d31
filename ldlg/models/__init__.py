"""The LD4LG denoiser network (flax.linen) and its layers."""
from ldlg.models.denoiser import Denoiser
from ldlg.models.params import count_params

__all__ = ["Denoiser", "count_params"]

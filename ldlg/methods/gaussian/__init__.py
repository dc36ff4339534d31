"""Diffusion math as pure functions: schedules, parameterizations, losses, samplers.

Build each object from config in one place: `schedule_from_config(config.diffusion)`,
`loss_fn_from_config(...)`, `sampler_from_config(...)`; the network enters only as a `DenoiseFn`
(`denoise_fn_from_module(Denoiser(**config.model))`).
"""
from ldlg.methods.gaussian.denoise_fn import DenoiseFn, denoise_fn_from_module
from ldlg.methods.gaussian.losses import loss_fn_from_config, make_loss_fn
from ldlg.methods.gaussian.samplers import make_sampler, mask_from_lengths, sampler_from_config
from ldlg.methods.gaussian.schedules import Schedule, get_schedule, q_sample, schedule_from_config

__all__ = [
    "DenoiseFn", "Schedule", "denoise_fn_from_module", "get_schedule", "loss_fn_from_config",
    "make_loss_fn", "make_sampler", "mask_from_lengths", "q_sample", "sampler_from_config",
    "schedule_from_config",
]

"""Masked discrete diffusion over token ids (MDLM, Sahoo et al. 2024).

`schedule.py` α_t; `subs.py` the SUBS parameterization; `losses.py` the Rao-Blackwellized NELBO (continuous and
T-step); `samplers.py` ancestral, caching and semi-autoregressive samplers; `method.py` the `Method` registered
as "masked". The network enters only as a `LogitsFn` (`logits_fn.py`), so tests can use closed-form oracles.
"""
from ldlg.methods.masked.logits_fn import LogitsFn, logits_fn_from_module
from ldlg.methods.masked.losses import antithetic_times, make_loss_fn, nelbo_terms
from ldlg.methods.masked.method import MaskedDiffusion, tokenizer_info
from ldlg.methods.masked.samplers import make_sampler, make_semi_ar_sampler, nucleus_filter
from ldlg.methods.masked.schedule import MaskSchedule
from ldlg.methods.masked.subs import carry_over, denoiser_log_probs, subs_log_probs

__all__ = [
    "LogitsFn", "MaskSchedule", "MaskedDiffusion", "antithetic_times", "carry_over", "denoiser_log_probs",
    "logits_fn_from_module", "make_loss_fn", "make_sampler", "make_semi_ar_sampler", "nelbo_terms",
    "nucleus_filter", "subs_log_probs", "tokenizer_info",
]

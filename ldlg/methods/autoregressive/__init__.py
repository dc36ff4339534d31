"""Baselines that LD4LG is compared against, trained on the same tokenized data in the same framework.

`ar_model`: a GPT-2-style causal LM (Flax, Hugging Face format) sized to match the denoiser's parameter count.
`ar_train`: its pmapped training loop (`train_ar_baseline`) and loader (`load_ar_baseline`).
`ar_sample`: ancestral / nucleus sampling compiled as one `lax.while_loop` per batch shape (`sample_ar`).
"""

"""DiffuSeq (Gong et al. 2022): sequence-to-sequence diffusion over learned word embeddings.

network.py the transformer and its embedding; losses.py partial noising and the objective; importance.py
loss-aware sampling of t; samplers.py the anchored DDIM sampler; rounding.py embeddings -> tokens;
method.py the registered `Method` ("diffuseq").
"""
from ldlg.methods.seq2seq.method import DiffuSeq
from ldlg.methods.seq2seq.network import Seq2SeqDenoiser

__all__ = ["DiffuSeq", "Seq2SeqDenoiser"]

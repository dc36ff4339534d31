"""The autoregressive seq2seq baseline: a BART fine-tuned on (source -> target) pairs (see method.py)."""

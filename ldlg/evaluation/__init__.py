"""Evaluation metrics of generated text: n-gram statistics, MAUVE, perplexity, class accuracy, seq2seq scores.

`ldlg.evaluation.evaluate.evaluate_texts` combines them into the metrics.json of an evaluation run; each module can
also be used on its own (from a Colab, or for seq2seq tables).
"""

"""HardVerify-Math (TinyV, arXiv 2505.14625): the false-negative and false-positive rates of llmpost's verifiers."""

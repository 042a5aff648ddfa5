"""Pure loss functions of tensors, one file per method: each takes per-sequence or per-token log-probabilities
(never a model), holds its equation, paper and deviations in its docstring, and is tested against hand-derived values."""

"""``llmpost eval lm_eval``: lm-evaluation-harness (the optional extra ``llmpost[lm-eval]``) run on a llmpost
checkpoint, for any of its tasks."""

"""MMLU (Hendrycks et al. 2021, arXiv 2009.03300): 57 subjects of four-choice questions, scored as
lm-evaluation-harness 0.4's default ``mmlu`` tasks, zero- or five-shot (:mod:`llmpost.eval.mcq`)."""

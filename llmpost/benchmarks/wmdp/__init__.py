"""WMDP (Li et al. 2024, arXiv 2403.03218): multiple-choice questions on hazardous biology, chemistry and cybersecurity
knowledge, scored as lm-evaluation-harness 0.4's ``wmdp`` tasks (:mod:`llmpost.eval.mcq`)."""

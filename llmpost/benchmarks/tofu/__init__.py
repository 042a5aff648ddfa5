"""TOFU (arXiv 2401.06121), evaluated with open-unlearning's metrics and result files."""

"""MUSE-News (arXiv 2407.06460), with the benchmark's own metrics or open-unlearning's port."""

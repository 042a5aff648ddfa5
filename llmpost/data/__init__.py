"""Shared data plumbing: JSON/JSONL files with named errors, corpus packing, collators, prompt templates, preference
pairs, pretraining corpora and the forget/retain pairing. Benchmark-specific loading lives in :mod:`llmpost.benchmarks`."""

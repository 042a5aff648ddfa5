"""Held-out preference evaluation: implicit-reward accuracy and win rates after self-revision."""

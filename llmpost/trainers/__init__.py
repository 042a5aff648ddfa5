"""Trainers, one per family of methods that take the same inputs, on the shared base (:mod:`llmpost.trainers.base`)."""

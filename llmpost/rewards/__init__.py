"""RL reward pieces: verifiers, the verifier noise channel, the appeals estimator."""

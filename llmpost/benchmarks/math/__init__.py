"""MATH (and a synthetic arithmetic task): pass@k with math-verify grading."""

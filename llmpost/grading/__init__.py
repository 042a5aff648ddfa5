"""MATH answer grading: normalisation (:mod:`.normalize`) and the bounded math-verify worker pool (:mod:`.verify`)."""

"""One package per benchmark (tofu, muse, math, preference, verifier): each owns its data loading and recipe arguments
(``data.py``), evaluation (``evaluate.py``), command-line subcommands (``cli.py``), recipe glue (``recipe.py``) and
report (``report.py``)."""

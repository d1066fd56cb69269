"""promptopt's benchmark: `python -m bench` measures the operator and the optimizer against references in one run.

Nothing here is imported by the operator or the worker; see docs/performance.md for what each number means.
"""

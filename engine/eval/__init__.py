"""Evaluation: metrics that agree with trec_eval (pytrec_eval), on real labelled data.

Only the retrieval metrics exist yet (evaluate); datasets, runner and report arrive with issue #6.
"""

from .metrics import KNOWN_METRICS, EvalResult, evaluate

__all__ = ["KNOWN_METRICS", "EvalResult", "evaluate"]

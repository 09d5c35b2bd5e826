"""Evaluation: metrics that agree with trec_eval (pytrec_eval), datasets, the runner and its report."""

from .metrics import KNOWN_METRICS, EvalResult, evaluate, pairwise_accuracy, run_from_hits

__all__ = ["KNOWN_METRICS", "EvalResult", "evaluate", "pairwise_accuracy", "run_from_hits"]

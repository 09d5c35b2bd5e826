"""A latency budget for the cross-encoder: the cost model it measures on this machine, the depth that fits a
budget, and `Engine.search(..., rerank_budget_ms=)` end to end (no timing asserts: the depth is checked
against the cost model's own arithmetic)."""

from __future__ import annotations

import pytest

from duorank import Engine, Reranker
from duorank.rerank import RerankCost, budget_depth

TEXTS = [
    "Reset your password from the account page: choose Security, then Reset password.",
    "Parcels ship within two working days; tracking numbers arrive by email.",
    "Refunds reach the original payment method within five to ten days.",
    "Two-factor authentication uses an app or a hardware key.",
    "Our offices close on public holidays; support answers by email. " * 30,  # several windows
    "Invoices can be downloaded as PDF from the billing page.",
    "Passwords must be at least twelve characters long.",
    "You can change the email address of your account in its settings.",
]
COST = RerankCost(fixed_ms=2.0, lengths=(32, 128, 256), ms_per_window=(1.0, 3.0, 7.0))


def test_the_cost_model_interpolates_and_extrapolates() -> None:
    assert COST.estimate([]) == 0.0
    assert COST.estimate([32]) == pytest.approx(3.0)
    assert COST.estimate([80, 192]) == pytest.approx(2.0 + 2.0 + 5.0)
    assert COST.estimate([320]) == pytest.approx(2.0 + 7.0 + 64 * 4.0 / 128)  # past the last: its slope
    assert COST.estimate([8]) == pytest.approx(3.0)  # below the first: its value


@pytest.fixture(scope="module")
def reranker() -> Reranker:
    return Reranker.load("default")


def test_the_depth_is_the_deepest_that_fits(reranker: Reranker) -> None:
    tokens = reranker.tokenize([("reset password", TEXTS), ("refund", TEXTS[:3])])
    windows = [[len(w.ids) for w in [e, *e.overflowing]] for e in tokens.encodings]
    first, second = windows[: len(TEXTS)], windows[len(TEXTS) :]

    def cost(d: int) -> float:  # the cost model's own arithmetic for depth d
        picked = [n for p in first[:d] + second[:d] for n in p]
        return COST.estimate(picked)

    depths = []
    for budget in [0, 2.5, 4, 8, 15, 30, 60, 1e9]:
        d = budget_depth(COST, tokens, budget, len(TEXTS))
        depths.append(d)
        assert d == 0 or cost(d) <= budget
        assert d == len(TEXTS) or cost(d + 1) > budget
    assert depths == sorted(depths) and depths[0] == 0 and depths[-1] == len(TEXTS)
    assert budget_depth(COST, tokens, 1e9, 3) == 3  # never past the cap
    assert len(tokens.encodings[4].overflowing) >= 1  # the long text's windows count
    assert budget_depth(COST, tokens, cost(5) - 0.01, 8) == 4
    with pytest.raises(ValueError, match=r"rerank budget -1 ms: expected a number >= 0"):
        budget_depth(COST, tokens, -1, 8)


def test_measure_cost_times_this_reranker(reranker: Reranker) -> None:
    cost = reranker.measure_cost(lengths=(16, 64, 9999), pairs=4)
    assert reranker.cost is cost and cost.lengths == (16, 64, reranker.max_length)
    assert all(ms > 0 for ms in cost.ms_per_window) and cost.fixed_ms >= 0
    # reranks that ran past the prediction scale later budgets down: the 90th percentile of the ratios
    assert reranker.cost_scale == 1.0
    for ratio in [1.0] * 9 + [3.0] * 2:
        reranker.observe_cost(10.0, 10.0 * ratio)
    assert reranker.cost_scale == pytest.approx(3.0)
    reranker.observe_cost(10.0, 1.0)  # faster than predicted never raises a budget
    reranker.measure_cost(lengths=(16,), pairs=2)  # a new measurement starts afresh
    assert reranker.cost_scale == 1.0


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory, default_embedder, reranker: Reranker) -> Engine:
    eng = Engine.create(tmp_path_factory.mktemp("budget") / "kb", default_embedder, reranker)
    eng.add(TEXTS, [f"d{i}" for i in range(len(TEXTS))])
    return eng


def test_search_within_a_budget(engine: Engine) -> None:
    queries = ["how do I reset my password", "when is my refund paid"]
    plain = engine.search(queries, top_k=8, top_n=5)
    assert plain.rerank_depth == min(8, max(5, engine.reranker.defaults("dense").depth or 8))
    engine.warmup()  # measures the cost model
    assert engine.reranker.cost is not None
    ample = engine.search(queries, top_k=8, top_n=5, rerank_budget_ms=1e9)  # all of top_k fit
    deep = engine.search(queries, top_k=8, top_n=5, rerank_depth=8)
    assert ample.rerank_depth == 8 and ample.to_dict()["queries"] == deep.to_dict()["queries"]
    assert engine.search(queries, top_k=8, top_n=5, rerank_budget_ms=1e9, rerank_depth=3).rerank_depth == 3
    none = engine.search(queries, top_k=8, top_n=5, rerank_budget_ms=0)
    recall_order = engine.search(queries, top_k=8, top_n=5, rerank=None)
    assert none.rerank_depth == 0 and none.to_dict()["rerank_depth"] == 0
    assert [[h.id for h in q] for q in none] == [[h.id for h in q] for q in recall_order]
    assert all(h.rerank_score is None for q in none for h in q)
    # a budget between: whatever depth it picks, the hits are those of rerank_depth=that depth
    between = 0.5 * engine.reranker.cost.estimate([64] * 8)
    some = engine.search(queries, top_k=8, top_n=5, rerank_budget_ms=between)
    assert some.rerank_depth is not None and some.rerank_depth <= 8
    if some.rerank_depth:
        same = engine.search(queries, top_k=8, top_n=5, rerank_depth=some.rerank_depth)
        assert some.to_dict()["queries"] == same.to_dict()["queries"]
    assert engine.search(queries[0], top_k=8, top_n=5, rerank=None).rerank_depth is None
    for bad in (-1, "50", True):
        with pytest.raises(ValueError, match=r"rerank_budget_ms .*: expected a number of milliseconds >= 0"):
            engine.search(queries, rerank_budget_ms=bad)

"""Fidelity to the authors' procedure: the two redundancy rules against hand-worked cases
(docs/method.md#the-redundancy-penalty), and the documented top-k tie rule of ``explain`` (docs/explanations.md)."""

import math

import networkx  # the reference for the Ramsey recursion (a test dependency)
import numpy as np
import pytest

from qpm_sklearn.selection import _redundancy
from qpm_sklearn.selection import feature_similarity, redundancy_penalty


def _similarity(n, pairs):
    R = np.zeros((n, n))
    for (i, j), value in pairs.items():
        R[i, j] = R[j, i] = value
    return R


# Six features: {0, 1, 2, 3} are mutually dissimilar (ranks 1-6 of the 15 pairs), 4 and 5 are close
# to everything else.
SIX = _similarity(
    6,
    {
        (0, 1): 0.05, (0, 2): 0.10, (1, 2): 0.15, (0, 3): 0.20, (1, 3): 0.25, (2, 3): 0.30,
        (0, 4): 0.40, (1, 4): 0.82, (2, 4): 0.84, (3, 4): 0.86, (0, 5): 0.88, (1, 5): 0.90,
        (2, 5): 0.92, (3, 5): 0.94, (4, 5): 0.96,
    },
)  # fmt: skip


def test_paper_rule_hand_worked_descent_and_ascent():
    # The authors' search for t = 3 on C = R + R^T (36 entries, 6 zeros on the diagonal):
    #   Turan: E_T = 36 * (3-2)/(3-1) = 18, start = 18, step = (18 - 6) / 100 = 0.12.
    #   sorted C: 6 zeros, then pair rank r (1..15) at positions 6 + 2(r-1) and 7 + 2(r-1).
    #   step i uses position 18 - int(0.12 i): i = 0..8 -> 18 (rank 7, C = 0.8), i = 9..16 -> 17 (rank 6, 0.6).
    # Descent: i = 0: graph C < 0.8 = the six pairs among {0,1,2,3} (K4); estimate from node 0
    #   (degree 3 >= t): 0 -> 1 -> 2 -> 3, size 4 > t: continue. i = 1..8: same graph, skipped.
    #   i = 9: C < 0.6 drops (2,3); degree >= 3 only for 0 and 1, each start reaches size 2 < t:
    #   stop, climb from step 8.
    # Ascent: step 8 -> position 18, C < 0.8 is the K4 again: the Ramsey removal finds {0,1,2,3},
    #   so tau* = 0.8 (2R scale). Penalised: R >= 0.8 -> the 8 pairs with 0.82 .. 0.96 (not (0, 4)).
    #   R~ = (R - m) / max(R - m), m = smallest non-zero R = 0.05, max(R - m) = 0.91.
    penalty, tau = redundancy_penalty(SIX, 3, rule="paper")
    assert tau == pytest.approx(0.8)
    penalised = {(i, j) for i, j in zip(*np.nonzero(np.triu(penalty, 1)))}
    assert penalised == {(1, 4), (2, 4), (3, 4), (0, 5), (1, 5), (2, 5), (3, 5), (4, 5)}
    assert penalty[1, 4] == pytest.approx((0.82 - 0.05) / 0.91)
    assert penalty[4, 5] == pytest.approx(1.0)
    np.testing.assert_array_equal(penalty, penalty.T)


def test_consistent_rule_hand_worked_and_different_pairs_than_paper():
    # Consistent rule on the R scale: levels = distinct off-diagonal values; R < 0.15 holds only
    # (0,1), (0,2); R < 0.2 adds (1,2): triangle {0,1,2}, so tau = 0.2 and every pair with
    # R >= 0.2 (12 pairs, among them (0,3), (1,3), (2,3), (0,4)) is penalised by
    # (R - 0.05) / (0.96 - 0.05). The paper rule (above) leaves those four unpenalised.
    penalty, tau = redundancy_penalty(SIX, 3, rule="consistent")
    assert tau == pytest.approx(0.2)
    assert np.count_nonzero(np.triu(penalty, 1)) == 12
    assert penalty[0, 3] == pytest.approx((0.20 - 0.05) / 0.91)
    assert penalty[0, 4] == pytest.approx((0.40 - 0.05) / 0.91)
    paper, _ = redundancy_penalty(SIX, 3, rule="paper")
    only_consistent = (penalty > 0) & (paper == 0)
    assert {(i, j) for i, j in zip(*np.nonzero(np.triu(only_consistent, 1)))} == {(0, 3), (1, 3), (2, 3), (0, 4)}


def test_paper_rule_threshold_above_max_r_penalises_nothing():
    # Four features, t = 3: E_T = 8, start = 8, step = (8 - 4)/100 = 0.04; sorted C: 4 zeros, then
    # pair rank r at 4 + 2(r-1), 5 + 2(r-1). Step 0 -> position 8 = rank 3 (C = 0.6): C < 0.6
    # holds (0,1), (0,2), no node of degree >= 3, estimate 0 < t -> climb from step 0.
    # Ascent: positions 8 + int(0.04 i): i < 50 -> 8 or 9 (rank 3, no triangle), i = 50 -> 10 =
    # rank 4 (C = 0.8): C < 0.8 adds (1,2), triangle {0,1,2}: tau* = 0.8 > max R = 0.6.
    # Consistent: R < 0.4 holds the triangle first, tau = 0.4, pairs (0,3),(1,3),(2,3) penalised.
    R = _similarity(4, {(0, 1): 0.1, (0, 2): 0.2, (1, 2): 0.3, (0, 3): 0.4, (1, 3): 0.5, (2, 3): 0.6})
    penalty, tau = redundancy_penalty(R, 3, rule="paper")
    assert tau == pytest.approx(0.8)
    assert not penalty.any()
    penalty, tau = redundancy_penalty(R, 3, rule="consistent")
    assert tau == pytest.approx(0.4)
    np.testing.assert_allclose(penalty[3, :3], [0.6, 0.8, 1.0])


def test_paper_rule_degenerate_inputs():
    # No dissimilarity structure at all (R = 0): every level is 0 or beyond the values -> inf.
    penalty, tau = redundancy_penalty(np.zeros((5, 5)), 3, rule="paper")
    assert tau == math.inf and not penalty.any()
    # A single selected feature needs no threshold.
    penalty, tau = redundancy_penalty(SIX, 1, rule="paper")
    assert tau == math.inf and not penalty.any()


def _recounting_greedy_clique(compatible, size, n_starts=16):
    """The greedy clique search written plainly: neighbour counts recounted at every step."""
    degree = compatible.sum(1)
    eligible = degree >= size - 1
    if eligible.sum() < size:
        return None
    for start in np.argsort(-degree, kind="stable")[:n_starts]:
        clique, candidates = [start], compatible[start] & eligible
        while len(clique) < size and candidates.any():
            counts = [int((compatible[v] & candidates).sum()) if candidates[v] else -1 for v in range(len(compatible))]
            node = int(np.argmax(counts))
            clique.append(node)
            candidates = candidates & compatible[node]
        if len(clique) >= size:
            return np.array(clique)
    return None


def test_greedy_clique_with_updated_counts_equals_recounting():
    rng = np.random.default_rng(3)
    found = 0
    for _ in range(200):
        n = int(rng.integers(2, 60))
        upper = np.triu(rng.random((n, n)) < rng.random(), 1)
        compatible, size = upper | upper.T, int(rng.integers(2, max(3, n // 2)))
        ours, reference = _redundancy._greedy_clique(compatible, size), _recounting_greedy_clique(compatible, size)
        assert (ours is None) == (reference is None)
        if ours is not None:
            np.testing.assert_array_equal(ours, reference)
            assert len(ours) == size and compatible[np.ix_(ours, ours)].sum() == size * (size - 1)  # a clique
            found += 1
    assert 20 < found < 200, "both outcomes must occur"


# ------------------------------------------------------------------ the Ramsey recursion, against networkx
# networkx >= 3.3 returns non-neighbours as a set (earlier: a generator in graph order); the rule
# follows the set order, which is what the reference must produce to be one.
SET_ORDER_NETWORKX = isinstance(networkx.non_neighbors(networkx.path_graph(3), 0), set)
needs_set_order = pytest.mark.skipif(not SET_ORDER_NETWORKX, reason="networkx < 3.3 orders non-neighbours differently")


def _random_compatibility(rng, n, density):
    upper = np.triu(rng.random((n, n)) < density, 1)
    return upper | upper.T


def _networkx_clique_by_removal(compatible, target):
    """The removal loop written on networkx's own graphs and ramsey_R2 (the authors' way)."""
    from networkx.algorithms.approximation import ramsey_R2

    conflict = networkx.complement(networkx.from_numpy_array(compatible))
    clique, best = ramsey_R2(conflict)
    while conflict and len(best) < target:
        conflict.remove_nodes_from(clique)
        clique, independent = ramsey_R2(conflict)
        if len(independent) > len(best):
            best = independent
    return best


@needs_set_order
def test_ramsey_recursion_finds_the_sets_networkx_finds():
    from networkx.algorithms.approximation import ramsey_R2

    rng = np.random.default_rng(0)
    for _ in range(150):
        n, density = int(rng.integers(1, 60)), float(rng.random())
        compatible = _random_compatibility(rng, n, density)
        graph = networkx.complement(networkx.from_numpy_array(compatible))
        layout = {node: dict.fromkeys(graph.adj[node]) for node in graph}
        assert _redundancy._ramsey_r2(layout) == ramsey_R2(graph), (n, density)


@needs_set_order
def test_clique_removal_finds_the_set_networkx_finds():
    rng = np.random.default_rng(1)
    for _ in range(60):
        n, density = int(rng.integers(2, 80)), float(rng.random())
        compatible, target = _random_compatibility(rng, n, density), int(rng.integers(2, 12))
        assert _redundancy._clique_by_removal(compatible, target) == _networkx_clique_by_removal(compatible, target)


@needs_set_order
@pytest.mark.parametrize("seed", range(3))
def test_paper_threshold_equals_the_networkx_procedure(seed, monkeypatch):
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(96, 12)) + (rng.random((96, 12)) < 0.2) * 2.0
    R = feature_similarity(A)
    ours = redundancy_penalty(R, 16, rule="paper")
    monkeypatch.setattr(_redundancy, "_clique_by_removal", _networkx_clique_by_removal)
    reference = redundancy_penalty(R, 16, rule="paper")
    assert ours[1] == reference[1]
    np.testing.assert_array_equal(ours[0], reference[0])


def test_rule_is_validated():
    with pytest.raises(ValueError, match="rule must be one of"):
        redundancy_penalty(SIX, 3, rule="authors")


def _fit_tiny(**params):
    from qpm_sklearn import QPMClassifier

    rng = np.random.RandomState(0)
    y = np.repeat(np.arange(3), 12)
    X = rng.normal(size=(36, 2, 2, 6)).astype(np.float32)
    X[:, 0, 0, :3] += 2.0 * np.eye(3)[y]
    settings = dict(n_features=10, n_selected=6, n_per_class=2, hidden_size=16, n_layers=2, dense_epochs=2,
                    sparse_epochs=1, random_state=0)  # fmt: skip
    return QPMClassifier(**{**settings, **params}).fit(X, y), X


def test_classifier_passes_the_rule_and_records_it():
    clf, X = _fit_tiny(redundancy="paper")
    assert clf.selection_info_["redundancy"] == "paper"
    assert clf.get_params()["redundancy"] == "paper"
    with pytest.raises(ValueError, match="redundancy"):
        _fit_tiny(redundancy="2R")


def test_explain_orders_tied_contributions_by_feature_id():
    clf, X = _fit_tiny(n_per_class=3)
    # Standardising by the sample's own pooled values makes every contribution 0: a 3-way tie.
    clf.feature_mean_ = clf.pooled_features(X[:1])[0].astype(np.float32)
    explanation = clf.explain(X[:1])
    np.testing.assert_array_equal(explanation.contributions, 0.0)
    # Hand answer: the predicted class's features in ascending channel id.
    expected = np.sort(clf.class_features(explanation.prediction[0]))
    np.testing.assert_array_equal(explanation.features[0], expected)


# ------------------------------------------------------------------ the fast paper rule against its plain form
# The package's clique-size estimate and Ramsey recursion take exact shortcuts (docs/selection.md);
# these are the authors' procedures written plainly, kept here only as the reference.
def _plain_estimated_clique_size(compatible, target):
    degree = compatible.sum(1).tolist()
    neighbours = [np.flatnonzero(row).tolist() for row in compatible]
    best = 0
    for start, start_degree in enumerate(degree):
        if start_degree < target:
            continue
        candidates = {v for v in neighbours[start] if degree[v] >= target}
        size = 1
        while candidates:
            node = max(candidates, key=degree.__getitem__)
            candidates.remove(node)
            candidates = candidates & {v for v in neighbours[node] if degree[v] >= best}
            size += 1
        best = max(best, size)
        if best >= target:
            break
    return best


def _plain_induced_subgraph(graph, nodes):
    keep = set(nodes)
    order = [v for v in keep] if 2 * len(keep) < len(graph) else [v for v in graph if v in keep]
    induced = {v: {} for v in order}
    for u in order:
        row = induced[u]
        for v in graph[u]:
            if v in keep and v not in row:
                row[v] = None
                induced[v][u] = None
    return induced


def _plain_ramsey_r2(graph):
    if len(graph) <= 1:
        return set(graph), set(graph)
    node = next(iter(graph))
    neighbours = graph[node]
    clique_1, independent_1 = _plain_ramsey_r2(_plain_induced_subgraph(graph, [v for v in neighbours if v != node]))
    clique_2, independent_2 = _plain_ramsey_r2(
        _plain_induced_subgraph(graph, list(graph.keys() - neighbours.keys() - {node})))
    clique_1.add(node)
    independent_2.add(node)
    return max(clique_1, clique_2, key=len), max(independent_1, independent_2, key=len)


def _plain_clique_by_removal(compatible, target):
    incompatible = ~compatible
    np.fill_diagonal(incompatible, False)
    conflict = {i: dict.fromkeys(np.flatnonzero(row).tolist()) for i, row in enumerate(incompatible)}
    clique, best = _plain_ramsey_r2(conflict)
    while conflict and len(best) < target:
        for node in clique:
            for neighbour in conflict.pop(node):
                del conflict[neighbour][node]
        clique, independent = _plain_ramsey_r2(conflict)
        if len(independent) > len(best):
            best = independent
    return best


def _dense_compatibility(rng, n):
    """Graphs like the search's: dense, with degrees spread (a few hub features)."""
    scores = rng.random(n) ** 2
    upper = np.triu(rng.random((n, n)) < 0.55 + 0.45 * np.minimum.outer(scores, scores) ** 0.3, 1)
    return upper | upper.T


def test_fast_clique_size_estimate_equals_the_plain_one():
    rng = np.random.default_rng(5)
    outcomes = set()
    for trial in range(100):
        # up to 300 nodes: also sets whose ids exceed their hash table (set order not ascending)
        n = int(rng.integers(2, 300))
        compatible = _dense_compatibility(rng, n) if trial % 2 else _random_compatibility(rng, n, float(rng.random()))
        target = int(rng.integers(2, max(3, n // 3)))
        reference = _plain_estimated_clique_size(compatible, target)
        assert _redundancy._estimated_clique_size(compatible, target) == reference, (trial, n, target)
        outcomes.add((reference > target) - (reference < target))
    assert outcomes == {-1, 0, 1}, "below, at and above target must all occur"


def test_fast_ramsey_recursion_equals_the_plain_one():
    rng = np.random.default_rng(6)
    for trial in range(30):
        n = int(rng.integers(2, 200))
        compatible = _dense_compatibility(rng, n) if trial % 2 else _random_compatibility(rng, n, float(rng.random()))
        target = int(rng.integers(2, max(3, n // 4)))
        ours, reference = _redundancy._clique_by_removal(compatible, target), _plain_clique_by_removal(compatible, target)
        assert (len(ours) >= target) == (len(reference) >= target), (trial, n, target)
        if len(reference) >= target:
            assert ours == reference


@pytest.mark.parametrize("seed", range(3))
def test_fast_paper_rule_gives_the_plain_procedures_threshold_and_pairs(seed, monkeypatch):
    rng = np.random.default_rng(10 + seed)
    A = rng.normal(size=(160, 24)) + (rng.random((160, 24)) < 0.15) * 2.0
    R = feature_similarity(A)
    ours = redundancy_penalty(R, 20, rule="paper")
    monkeypatch.setattr(_redundancy, "_estimated_clique_size", _plain_estimated_clique_size)
    monkeypatch.setattr(_redundancy, "_clique_by_removal", _plain_clique_by_removal)
    reference = redundancy_penalty(R, 20, rule="paper")
    assert ours[1] == reference[1]
    np.testing.assert_array_equal(ours[0], reference[0])


def test_removal_loop_to_exhaustion_reuses_solved_subgraphs_exactly():
    # Dense compatibility (a sparse complement, as at the search's levels) and an unreachable target:
    # the loop removes clique after clique until no node is left, meeting the same hash-order
    # subgraphs again and again; every independent set found must be the plain recursion's.
    rng = np.random.default_rng(7)
    for trial in range(6):
        n = int(rng.integers(150, 320))
        compatible = _random_compatibility(rng, n, float(rng.uniform(0.9, 0.97)))
        ours, reference = _redundancy._clique_by_removal(compatible, n + 1), _plain_clique_by_removal(compatible, n + 1)
        assert ours == reference, (trial, n)


def test_clique_size_estimate_on_very_dense_graphs_equals_the_plain_one():
    # The search's last levels: nearly complete graphs, where a candidate set in hash order has many
    # times more members than the chosen node has non-neighbours (the set difference then needs its
    # padding to build the set as the authors' comprehension does) and degrees tie often.
    rng = np.random.default_rng(8)
    for trial in range(3):
        n = int(rng.integers(380, 460))
        compatible = _random_compatibility(rng, n, float(rng.uniform(0.95, 0.985)))
        target = n // 2  # out of reach: every start runs
        assert _redundancy._estimated_clique_size(compatible, target) == _plain_estimated_clique_size(
            compatible, target), (trial, n)

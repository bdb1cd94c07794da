"""DiffusionRetriever and KReciprocalRetriever against dense references; API, persistence."""

import joblib
import numpy as np
import pytest
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import make_pipeline

from skretrieval import (
    DiffusionRetriever,
    KReciprocalRetriever,
    LearnedWhitener,
    NearestNeighborRetriever,
    QueryExpansionRetriever,
    RetrievalMAP,
)
from skretrieval.persistence import load_pipeline, save_pipeline

from _helpers import assert_rankings_equivalent


def _unit(V):
    V = np.asarray(V, dtype=np.float64)
    return V / np.linalg.norm(V, axis=-1, keepdims=True)


def _clusters(n_per=12, n_classes=5, dim=16, noise=0.8, seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(n_classes), n_per)
    X = rng.normal(size=(n_classes, dim))[y] + noise * rng.normal(size=(len(y), dim))
    return X.astype(np.float32), y


# ---------------------------------------------------------------------------
# dense references
# ---------------------------------------------------------------------------
def _dense_graph(X, k, gamma):
    """Mutual k-NN affinities, neighbour lists as Python sets."""
    S = X @ X.T
    n = len(X)
    nn = []
    for i in range(n):
        others = [j for j in np.argsort(-S[i], kind="stable") if j != i]
        nn.append(set(others[:k]))
    A = np.zeros((n, n))
    for i in range(n):
        for j in nn[i]:
            if i in nn[j]:
                A[i, j] = max(S[i, j], 0.0) ** gamma
    return A


def _sym_norm(A):
    d = A.sum(axis=1)
    inv = np.where(d > 0, 1.0 / np.sqrt(np.where(d > 0, d, 1.0)), 0.0)
    return inv[:, None] * A * inv[None, :]


def _reference_cg(X, A, q, exclude, query_k, gamma, alpha, R):
    """Iscen et al. on the query's short list, solved exactly."""
    s = X @ q
    order = [j for j in np.argsort(-s, kind="stable") if j != exclude][:R]
    S_R = _sym_norm(A[np.ix_(order, order)])
    y = np.zeros(len(order))
    y[:query_k] = np.maximum(s[order[:query_k]], 0) ** gamma
    f = np.linalg.solve(np.eye(len(order)) - alpha * S_R, y)
    rank = np.argsort(-f, kind="stable")
    return -f[rank], np.asarray(order)[rank]


def test_graph_is_the_mutual_knn_graph():
    X, _ = _clusters()
    dr = DiffusionRetriever(k=6, gamma=3.0).fit(X)
    Xn = dr.retriever_.X_fit_.astype(np.float64)
    A = _dense_graph(Xn, 6, 3.0)
    np.testing.assert_allclose(dr._graph().toarray(), A, rtol=1e-5, atol=1e-7)
    assert (A > 0).sum() == dr.graph_indices_.size < 6 * len(X)  # mutual: fewer than k


@pytest.mark.parametrize("gamma, alpha", [(3.0, 0.99), (1.0, 0.8)])
def test_cg_diffusion_matches_the_dense_solution(gamma, alpha):
    X, _ = _clusters(seed=1)
    Q = np.random.default_rng(5).normal(size=(4, 16))
    R, k, qk = 30, 8, 5
    dr = DiffusionRetriever(k=k, query_k=qk, gamma=gamma, alpha=alpha, n_rerank=R,
                            maxiter=500, tol=1e-12).fit(X)
    Xn = dr.retriever_.X_fit_.astype(np.float64)
    A = _dense_graph(Xn, k, gamma)
    dist, ind = dr.kneighbors(Q, n_neighbors=R)
    for j, q in enumerate(_unit(Q)):
        ref = _reference_cg(Xn, A, q, None, qk, gamma, alpha, R)
        assert_rankings_equivalent(dist[j], ind[j], *ref, rtol=1e-4, atol=1e-5)
    # leave-one-out: the item is out of its own short list
    dist, ind = dr.kneighbors(None, n_neighbors=R)
    for i in (0, 17, 40):
        ref = _reference_cg(Xn, A, Xn[i], i, qk, gamma, alpha, R)
        assert_rankings_equivalent(dist[i], ind[i], *ref, rtol=1e-4, atol=1e-5)


def test_results_beyond_the_short_list_keep_the_first_order():
    X, _ = _clusters(seed=2)
    dr = DiffusionRetriever(k=5, query_k=3, n_rerank=10).fit(X)
    plain = NearestNeighborRetriever().fit(X)
    ind = dr.kneighbors(X[:3], n_neighbors="all", return_distance=False)
    first = plain.kneighbors(X[:3], n_neighbors=len(X), return_distance=False)
    np.testing.assert_array_equal(ind[:, 10:], first[:, 10:])
    for row, ref in zip(ind, first):
        assert set(row[:10]) == set(ref[:10])


def _reference_spectral(A, s, query_k, gamma, alpha, r, exclude=None):
    S = _sym_norm(A)
    lam, U = np.linalg.eigh(S)
    lam, U = lam[::-1][:r], U[:, ::-1][:, :r]
    order = [j for j in np.argsort(-s, kind="stable") if j != exclude][:query_k]
    y = np.zeros(len(A))
    y[order] = np.maximum(s[order], 0) ** gamma
    f = y + U @ ((1.0 / (1.0 - alpha * lam) - 1.0) * (U.T @ y))
    if exclude is not None:
        f[exclude] = -np.inf
    rank = np.argsort(-f, kind="stable")
    if exclude is not None:
        rank = rank[:-1]
    return -f[rank], rank, y, S


def test_spectral_full_rank_is_the_exact_diffusion():
    X, _ = _clusters(seed=3)
    n = len(X)
    dr = DiffusionRetriever(method="spectral", k=6, query_k=4, alpha=0.9,
                            n_components=n).fit(X)
    Xn = dr.retriever_.X_fit_.astype(np.float64)
    A = _dense_graph(Xn, 6, 3.0)
    q = _unit(np.random.default_rng(0).normal(size=16))
    dist, ind = dr.kneighbors(q[None], n_neighbors=n)
    ref_d, ref_i, y, S = _reference_spectral(A, Xn @ q, 4, 3.0, 0.9, n)
    assert_rankings_equivalent(dist[0], ind[0], ref_d, ref_i, rtol=1e-4, atol=1e-5)
    exact = np.linalg.solve(np.eye(n) - 0.9 * S, y)  # (I - alpha S)^-1 y, no truncation
    np.testing.assert_allclose(-dist[0], exact[ind[0]], rtol=1e-4, atol=1e-5)


def test_spectral_low_rank_with_lanczos():
    X, _ = _clusters(n_per=60, seed=4)  # 300 items: ARPACK, not the dense solver
    dr = DiffusionRetriever(method="spectral", k=8, query_k=5, n_components=12,
                            random_state=0).fit(X)
    Xn = dr.retriever_.X_fit_.astype(np.float64)
    A = _dense_graph(Xn, 8, 3.0)
    ref_lam = np.linalg.eigvalsh(_sym_norm(A))[::-1][:12]
    np.testing.assert_allclose(dr.eigenvalues_, ref_lam, atol=1e-5)
    U = dr.eigenvectors_.astype(np.float64)
    np.testing.assert_allclose(_sym_norm(A) @ U, U * dr.eigenvalues_, atol=1e-4)
    dist, ind = dr.kneighbors(None, n_neighbors=20)
    for i in (3, 150):
        ref_d, ref_i, _, _ = _reference_spectral(A, Xn @ Xn[i], 5, 3.0, 0.99, 12, exclude=i)
        assert_rankings_equivalent(dist[i], ind[i], ref_d[:20], ref_i[:20],
                                   rtol=1e-3, atol=1e-4)


def test_graph_from_an_approximate_backend():
    pytest.importorskip("faiss")
    X, y = _clusters(n_per=40, seed=6)
    # every list probed: the IVF search is exact, so is the graph
    faiss_nn = NearestNeighborRetriever(algorithm="faiss", random_state=0,
                                        algorithm_params={"nlist": 4, "nprobe": 4})
    approx = DiffusionRetriever(faiss_nn, k=6, n_rerank=40).fit(X, y)
    exact = DiffusionRetriever(k=6, n_rerank=40).fit(X, y)
    np.testing.assert_array_equal(approx.graph_indices_, exact.graph_indices_)
    assert approx.score(None, None, n_neighbors=40) == pytest.approx(
        exact.score(None, None, n_neighbors=40), abs=1e-6)


# ---------------------------------------------------------------------------
# k-reciprocal
# ---------------------------------------------------------------------------
def _reference_kreciprocal(V, k1, k2, lam):
    """Zhong et al. with Python sets: distances of item 0 to items 1..n-1."""
    n = len(V)
    raw = np.maximum(2 - 2 * V @ V.T, 0)
    np.fill_diagonal(raw, 0)
    d = raw / raw.max(axis=1, keepdims=True)
    rank = [list(np.argsort(d[p], kind="stable")) for p in range(n)]

    def N(p, k):
        return rank[p][: k + 1]

    def R(p, k):
        return {g for g in N(p, k) if p in N(g, k)}

    enc = np.zeros((n, n))
    for p in range(n):
        base = R(p, k1)
        star = set(base)
        for c in base:
            rc = R(c, int(round(k1 / 2)))
            if len(rc & base) > 2 / 3 * len(rc):
                star |= rc
        members = sorted(star)
        w = np.exp(-d[p, members])
        enc[p, members] = w / w.sum()
    if k2 > 1:
        enc = np.array([enc[rank[p][:k2]].mean(axis=0) for p in range(n)])
    jac = np.array([1 - np.minimum(enc[0], enc[g]).sum() / np.maximum(enc[0], enc[g]).sum()
                    for g in range(1, n)])
    return lam * d[0, 1:] + (1 - lam) * jac


@pytest.mark.parametrize("k1, k2, lam", [(6, 3, 0.3), (4, 1, 0.0), (10, 2, 0.7)])
def test_k_reciprocal_matches_the_set_reference(k1, k2, lam):
    X, _ = _clusters(seed=7)
    R = 25
    kr = KReciprocalRetriever(n_rerank=R, k1=k1, k2=k2, lambda_value=lam).fit(X)
    DB = kr.retriever_.X_fit_.astype(np.float64)
    Q = np.random.default_rng(8).normal(size=(3, 16)).astype(np.float32)
    Qn = (Q / np.linalg.norm(Q, axis=1, keepdims=True)).astype(np.float64)
    dist, ind = kr.kneighbors(Q, n_neighbors=R)
    for j in range(3):
        short = np.argsort(-(DB @ Qn[j]), kind="stable")[:R]
        final = _reference_kreciprocal(np.vstack([Qn[j], DB[short]]), k1, k2, lam)
        order = np.argsort(final, kind="stable")
        assert_rankings_equivalent(dist[j], ind[j], final[order], short[order],
                                   rtol=1e-4, atol=1e-6)
    # leave-one-out: the set is the item and its short list without it
    dist, ind = kr.kneighbors(None, n_neighbors=R)
    for i in (0, 33):
        others = [g for g in np.argsort(-(DB @ DB[i]), kind="stable") if g != i][:R]
        final = _reference_kreciprocal(np.vstack([DB[i], DB[others]]), k1, k2, lam)
        order = np.argsort(final, kind="stable")
        assert_rankings_equivalent(dist[i], ind[i], final[order], np.asarray(others)[order],
                                   rtol=1e-4, atol=1e-6)


def test_k_reciprocal_keeps_every_item_and_monotone_distances():
    X, _ = _clusters(seed=9)
    kr = KReciprocalRetriever(n_rerank=10, k1=5, k2=2).fit(X)
    dist, ind = kr.kneighbors(None, n_neighbors="all")
    assert ind.shape == (len(X), len(X) - 1)
    for q in range(len(X)):
        assert sorted(ind[q]) == sorted(set(range(len(X))) - {q})
    assert (np.diff(dist[:, 9:11], axis=1) >= -1e-6).all()  # the tail sorts after
    with_lambda_one = KReciprocalRetriever(n_rerank=10, lambda_value=1.0).fit(X)
    plain = NearestNeighborRetriever().fit(X)
    assert_rankings_equivalent(
        np.zeros((len(X), 10)), with_lambda_one.kneighbors(None, 10)[1],
        np.zeros((len(X), 10)), plain.kneighbors(None, 10)[1])


# ---------------------------------------------------------------------------
# API: pipelines, grid search, QE inside, persistence, errors
# ---------------------------------------------------------------------------
def test_grid_search_over_the_rerankers_and_lw():
    X, y = _clusters(n_per=10, n_classes=4, seed=10)
    pipe = make_pipeline(LearnedWhitener(), DiffusionRetriever(k=4, query_k=3, n_rerank=15))
    grid = GridSearchCV(pipe, {"learnedwhitener__n_components": [4, 8],
                               "diffusionretriever__method": ["cg", "spectral"],
                               "diffusionretriever__alpha": [0.5, 0.99]},
                        scoring=RetrievalMAP(), cv=StratifiedKFold(2))
    grid.fit(X, y)
    assert len(grid.cv_results_["params"]) == 8 and 0 < grid.best_score_ <= 1
    kr = GridSearchCV(make_pipeline(KReciprocalRetriever(n_rerank=12)),
                      {"kreciprocalretriever__k1": [3, 6],
                       "kreciprocalretriever__lambda_value": [0.3, 1.0]},
                      scoring=RetrievalMAP(), cv=StratifiedKFold(2)).fit(X, y)
    assert 0 < kr.best_score_ <= 1


def test_wrapping_query_expansion():
    X, y = _clusters(seed=11)
    qe = QueryExpansionRetriever(qe_k=2, dba_k=3)
    for est in (DiffusionRetriever(qe, k=5, n_rerank=20),
                KReciprocalRetriever(qe, n_rerank=20, k1=5, k2=2)):
        est.fit(X, y)
        assert isinstance(est.retriever_, QueryExpansionRetriever)
        assert 0 < est.score(None, None) <= 1
        assert est.predict(X[:2]).shape == (2, 10)


@pytest.mark.parametrize("make", [
    lambda: DiffusionRetriever(k=5, n_rerank=20),
    lambda: DiffusionRetriever(method="spectral", k=5, n_components=10),
    lambda: KReciprocalRetriever(n_rerank=15, k1=5, k2=2),
])
def test_joblib_and_save_pipeline_round_trips(tmp_path, make):
    X, y = _clusters(seed=12)
    pipe = make_pipeline(LearnedWhitener(n_components=8), make()).fit(X, y.astype(str))
    Q = X[:5] + 0.1
    before = pipe[-1].kneighbors(pipe[:-1].transform(Q), n_neighbors=10)
    loaded = joblib.load(joblib.dump(pipe, tmp_path / "p.joblib")[0])
    for other in (loaded, load_pipeline(save_pipeline(pipe, tmp_path / "m.zip"))):
        after = other[-1].kneighbors(other[:-1].transform(Q), n_neighbors=10)
        np.testing.assert_array_equal(after[1], before[1])
        np.testing.assert_allclose(after[0], before[0], rtol=0, atol=1e-6)
        assert other.score(Q, y[:5].astype(str)) == pipe.score(Q, y[:5].astype(str))


def test_errors():
    X, y = _clusters()
    euclid = NearestNeighborRetriever(metric="euclidean")
    for est in (DiffusionRetriever(euclid), KReciprocalRetriever(euclid)):
        with pytest.raises(ValueError, match="similarity search"):
            est.fit(X)
    with pytest.raises(ValueError, match="alpha"):
        DiffusionRetriever(alpha=1.0).fit(X)
    with pytest.raises(ValueError, match="method"):
        DiffusionRetriever(method="power").fit(X)
    with pytest.raises(ValueError, match="lambda_value"):
        KReciprocalRetriever(lambda_value=1.5).fit(X)
    with pytest.raises(ValueError, match="k1"):
        KReciprocalRetriever(k1=0).fit(X)
    dr = DiffusionRetriever(k=4).fit(X)
    with pytest.raises(ValueError, match="fit again"):
        dr.set_params(method="spectral").kneighbors(X[:1])
    with pytest.raises(ValueError, match="fit with y"):
        dr.score(None, None)
    with pytest.raises(ValueError, match="n_neighbors"):
        KReciprocalRetriever().fit(X).kneighbors(X[:1], n_neighbors=len(X) + 1)

"""Image-pair files for visual localization (kapture, COLMAP / hloc)."""

import json
from pathlib import PurePosixPath, PureWindowsPath

import numpy as np
import pytest
from PIL import Image
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from skretrieval import NearestNeighborRetriever
from skretrieval.cli import main
from skretrieval.pairs import (
    ImagePairs,
    pairs_from_retriever,
    read_pairs,
    scores_from_distances,
    write_pairs,
)

from _helpers import assert_rankings_equivalent

# a hand-built case: 2 queries, 3 database images, the 2nd query is also in the database
QUERIES = ["q1.jpg", "db/b.jpg"]
DATABASE = ["db/a.jpg", "db/b.jpg", "db/c.jpg"]
INDICES = [[2, 0, 1], [1, 2, 0]]
SCORES = np.array([[0.9, 0.5, 0.25], [1.0, 0.75, 0.5]], dtype=np.float32)


def _text(path):
    with open(path, encoding="utf-8", newline="") as f:
        return f.read()


# ---------------------------------------------------------------------------
# exact text
# ---------------------------------------------------------------------------
def test_kapture_exact_text_top_k_and_self_pair_excluded(tmp_path):
    path = tmp_path / "pairs.txt"
    n = write_pairs(path, QUERIES, DATABASE, INDICES, SCORES, k=2)
    assert n == 4
    assert _text(path) == (
        "# kapture format: 1.1\n"
        "# query_image, map_image, score\n"
        "q1.jpg, db/c.jpg, 0.9\n"
        "q1.jpg, db/a.jpg, 0.5\n"
        "db/b.jpg, db/c.jpg, 0.75\n"  # db/b.jpg itself left out, k counts the rest
        "db/b.jpg, db/a.jpg, 0.5\n"
    )


def test_colmap_exact_text(tmp_path):
    path = tmp_path / "pairs.txt"
    assert write_pairs(path, QUERIES, DATABASE, INDICES, SCORES, k=2, format="colmap") == 4
    assert _text(path) == (
        "q1.jpg db/c.jpg\n"
        "q1.jpg db/a.jpg\n"
        "db/b.jpg db/c.jpg\n"
        "db/b.jpg db/a.jpg\n"
    )
    # hloc is an alias; scores are optional for COLMAP
    write_pairs(tmp_path / "hloc.txt", QUERIES, DATABASE, INDICES, k=2, format="hloc")
    assert _text(tmp_path / "hloc.txt") == _text(path)


def test_keep_self_pairs_all_columns_and_decimals(tmp_path):
    path = tmp_path / "pairs.txt"
    n = write_pairs(path, QUERIES, DATABASE, INDICES, SCORES / 3, exclude_self=False,
                    decimals=3)
    assert n == 6
    lines = _text(path).splitlines()[2:]
    assert lines == [
        "q1.jpg, db/c.jpg, 0.3",
        "q1.jpg, db/a.jpg, 0.167",
        "q1.jpg, db/b.jpg, 0.083",
        "db/b.jpg, db/b.jpg, 0.333",
        "db/b.jpg, db/c.jpg, 0.25",
        "db/b.jpg, db/a.jpg, 0.167",
    ]


def test_score_formatting(tmp_path):
    path = tmp_path / "pairs.txt"
    scores = np.array([[1.0, 0.95238096, 0.0, -0.0, -2.5]], dtype=np.float32)
    write_pairs(path, ["q"], list("abcde"), [[0, 1, 2, 3, 4]], scores)
    assert [line.rsplit(", ", 1)[1] for line in _text(path).splitlines()[2:]] == [
        "1.0", "0.95238096", "0.0", "0.0", "-2.5"]
    # float64 scores keep their precision
    write_pairs(path, ["q"], ["a"], [[0]], np.array([[1 / 3]]))
    assert _text(path).splitlines()[-1] == "q, a, 0.3333333333333333"


def test_padding_indices_are_skipped_and_paths_use_forward_slashes(tmp_path):
    path = tmp_path / "pairs.txt"
    write_pairs(path, [PureWindowsPath("query\\q.jpg"), PurePosixPath("query/r.jpg")],
                [PureWindowsPath("db\\a.jpg"), "db/b.jpg"],
                [[1, -1], [-1, 0]], [[0.5, np.nan], [np.nan, 0.25]], format="colmap")
    assert _text(path) == "query/q.jpg db/b.jpg\nquery/r.jpg db/a.jpg\n"


def test_image_pairs_is_accepted_whole_or_unpacked(tmp_path):
    pairs = ImagePairs(QUERIES, DATABASE, INDICES, SCORES)
    write_pairs(tmp_path / "a.txt", pairs, k=1)
    write_pairs(tmp_path / "b.txt", *pairs, k=1)
    assert _text(tmp_path / "a.txt") == _text(tmp_path / "b.txt")
    assert pairs.to_list()[:2] == [("q1.jpg", "db/c.jpg", pytest.approx(0.9)),
                                   ("q1.jpg", "db/a.jpg", 0.5)]
    with pytest.raises(TypeError, match="not both"):
        write_pairs(tmp_path / "c.txt", pairs, DATABASE)
    with pytest.raises(TypeError, match="needs database_names and indices"):
        write_pairs(tmp_path / "c.txt", QUERIES)


# ---------------------------------------------------------------------------
# round trips
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["kapture", "colmap"])
def test_round_trip(tmp_path, fmt):
    rng = np.random.default_rng(0)
    database = [f"db/img_{i:03d}.jpg" for i in range(40)]
    queries = [f"query/seq 1/q_{i}.png" if fmt == "kapture" else f"query/q_{i}.png"
               for i in range(7)] + ["db/img_005.jpg"]
    indices = np.array([rng.permutation(40)[:6] for _ in queries])
    indices[-1, 2] = 5  # a self-pair in the middle of the last row
    scores = -np.sort(-rng.random(indices.shape, dtype=np.float32), axis=1)
    path = tmp_path / "pairs.txt"
    n = write_pairs(path, queries, database, indices, scores, k=5, format=fmt)
    read = read_pairs(path, format=fmt)
    assert len(read) == n == 8 * 5
    expected = []
    for q, row in enumerate(indices):
        kept = [(c, i) for c, i in enumerate(row) if database[i] != queries[q]][:5]
        expected += [(queries[q], database[i], scores[q, c]) for c, i in kept]
    assert [r[:2] for r in read] == [e[:2] for e in expected]
    if fmt == "kapture":
        # shortest float32 text reads back as the same float32
        assert [np.float32(r[2]) for r in read] == [e[2] for e in expected]
    else:
        assert all(r[2] is None for r in read)


def test_read_pairs_skips_comments_and_reports_bad_lines(tmp_path):
    path = tmp_path / "pairs.txt"
    path.write_text("# kapture format: 1.1\n\n# comment\n a.jpg ,b.jpg,  0.5 \n",
                    encoding="utf-8")
    assert read_pairs(path) == [("a.jpg", "b.jpg", 0.5)]
    path.write_text("# header\na.jpg, b.jpg\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 2"):
        read_pairs(path)
    path.write_text("a.jpg, b.jpg, high\n", encoding="utf-8")
    with pytest.raises(ValueError, match="'high' is not a number"):
        read_pairs(path)
    path.write_text("a.jpg b.jpg c.jpg\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 1"):
        read_pairs(path, format="colmap")
    with pytest.raises(ValueError, match="format must be"):
        read_pairs(path, format="csv")


# ---------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("fmt, query, database, message", [
    ("colmap", "my query.jpg", "a.jpg", "query image name 'my query.jpg' contains whitespace"),
    ("colmap", "q.jpg", "a\tb.jpg", "database image name 'a\\\\tb.jpg' contains whitespace"),
    ("kapture", "q.jpg", "a,b.jpg", "database image name 'a,b.jpg' contains a comma"),
    ("kapture", "q.jpg", " a.jpg", "starts or ends with whitespace"),
    ("kapture", "q\n.jpg", "a.jpg", "contains a line break"),
    ("colmap", "#q.jpg", "a.jpg", "starts with '#'"),
    ("kapture", "", "a.jpg", "empty query image name"),
])
def test_bad_names(tmp_path, fmt, query, database, message):
    with pytest.raises(ValueError, match=message):
        write_pairs(tmp_path / "p.txt", [query], [database], [[0]], [[1.0]], format=fmt)
    assert not (tmp_path / "p.txt").exists()  # nothing written


def test_only_written_names_are_checked(tmp_path):
    # a database image with a space that no query retrieves does not matter
    n = write_pairs(tmp_path / "p.txt", ["q.jpg"], ["a.jpg", "b c.jpg"], [[0, 1]], k=1,
                    format="colmap")
    assert n == 1


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(indices=[0, 1]), ValueError, "indices must be 2-D"),
    (dict(indices=[[0.0, 1.0], [1.0, 2.0]]), ValueError, "indices must be integers"),
    (dict(indices=[[0, 1]]), ValueError, "1 row\\(s\\) but there are 2 query"),
    (dict(indices=[[0, 3], [1, 2]]), ValueError, r"indices\[0, 1\] = 3"),
    (dict(indices=[[0, -2], [1, 2]]), ValueError, "out of range"),
    (dict(scores=[[0.9, 0.5], [0.2, 0.1]]), ValueError, "scores has shape"),
    (dict(scores=[[0.9, np.nan, 0.1], [0.3, 0.2, 0.1]]), ValueError,
     r"finite, got scores\[0, 1\] = nan"),
    (dict(scores=[[0.1, 0.5, 0.9], [0.3, 0.2, 0.1]]), ValueError,
     "not sorted best first.*scores_from_distances"),
    (dict(scores=None), ValueError, "kapture pairs format needs scores"),
    (dict(database_names=["a", "a", "b"]), ValueError, "'a' appears more than once"),
    (dict(database_names=[1, 2, 3]), TypeError, "image names.*got int"),
    (dict(k=0), ValueError, "k must be a positive int"),
    (dict(format="csv"), ValueError, "format must be 'kapture' or 'colmap'"),
])
def test_bad_arguments(tmp_path, kwargs, error, message):
    args = dict(query_names=QUERIES, database_names=DATABASE, indices=INDICES,
                scores=SCORES)
    args.update(kwargs)
    with pytest.raises(error, match=message):
        write_pairs(tmp_path / "p.txt", **args)


# ---------------------------------------------------------------------------
# from a retriever
# ---------------------------------------------------------------------------
def test_scores_from_distances():
    d = np.array([[0.0, 0.25, 2.0]], dtype=np.float32)
    assert scores_from_distances(d, "cosine").tolist() == [[1.0, 0.75, -1.0]]
    assert scores_from_distances(d, "cosine").dtype == np.float32
    assert scores_from_distances(d, "euclidean").tolist() == [[-0.0, -0.25, -2.0]]
    assert scores_from_distances(-d, "inner_product").tolist() == [[0.0, 0.25, 2.0]]


@pytest.fixture
def database():
    rng = np.random.default_rng(42)
    X = rng.normal(size=(30, 8))
    names = np.array([f"db/{i:02d}.jpg" for i in range(30)])
    return X, names, rng


def _cosine_top_k(Q, X, k, exclude=None):
    Qn = Q / np.linalg.norm(Q, axis=1, keepdims=True)
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    sim = Qn @ Xn.T
    if exclude is not None:
        sim[exclude] = -np.inf
    ind = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    return ind, np.take_along_axis(sim, ind, axis=1)


def test_pairs_from_retriever_matches_brute_force_cosine(database, tmp_path):
    X, names, rng = database
    Q = rng.normal(size=(5, 8))
    retriever = NearestNeighborRetriever().fit(X, names)
    pairs = pairs_from_retriever(retriever, Q, query_names=[f"q{i}.jpg" for i in range(5)],
                                 k=4)
    ind, sim = _cosine_top_k(Q, X, 4)
    assert pairs.indices.shape == (5, 4)
    # float32 against the float64 reference: near-tied images may swap
    assert_rankings_equivalent(pairs.scores, pairs.indices, sim, ind, atol=1e-5)
    assert list(pairs.database_names) == list(names)  # from the labels
    write_pairs(tmp_path / "p.txt", pairs)
    read = read_pairs(tmp_path / "p.txt")
    assert [r[:2] for r in read] == [(f"q{q}.jpg", names[i]) for q in range(5)
                                     for i in pairs.indices[q]]
    np.testing.assert_allclose([r[2] for r in read], pairs.scores.ravel(), atol=1e-5)


def test_pairs_from_retriever_database_with_itself(database):
    X, names, _ = database
    retriever = NearestNeighborRetriever().fit(X, names)
    pairs = pairs_from_retriever(retriever, k=3)  # kneighbors(X=None)
    ind, sim = _cosine_top_k(X, X, 3, exclude=np.diag_indices(30))
    assert_rankings_equivalent(pairs.scores, pairs.indices, sim, ind, atol=1e-5)
    assert list(pairs.query_names) == list(names)
    assert all(q != d for q, d, _ in pairs.to_list())
    # k beyond the database: everything but the image itself
    assert pairs_from_retriever(retriever, k=100).indices.shape == (30, 29)


def test_pairs_from_retriever_excludes_the_query_itself(database):
    X, names, rng = database
    Q = np.vstack([X[7], rng.normal(size=8)])
    retriever = NearestNeighborRetriever().fit(X, names)
    qnames = [names[7], "other.jpg"]
    pairs = pairs_from_retriever(retriever, Q, query_names=qnames, k=3)
    ind, sim = _cosine_top_k(Q, X, 4)
    assert ind[0, 0] == 7
    # itself dropped, 3 left (up to near-tied swaps against the float64 reference)
    assert_rankings_equivalent(pairs.scores[0], pairs.indices[0], sim[0, 1:], ind[0, 1:],
                               atol=1e-5)
    assert_rankings_equivalent(pairs.scores[1], pairs.indices[1], sim[1, :3], ind[1, :3],
                               atol=1e-5)
    kept = pairs_from_retriever(retriever, Q, query_names=qnames, k=3, exclude_self=False)
    assert kept.indices[0, 0] == 7 and kept.scores[0, 0] == pytest.approx(1.0, abs=1e-5)


def test_pairs_from_retriever_small_database_pads(tmp_path):
    X = np.eye(3)
    retriever = NearestNeighborRetriever().fit(X, np.array(["a", "b", "c"]))
    pairs = pairs_from_retriever(retriever, X[:2] + 0.1, query_names=["a", "z"], k=5)
    assert pairs.indices.shape == (2, 3)
    assert pairs.indices[0, -1] == -1 and np.isnan(pairs.scores[0, -1])
    assert (pairs.indices[1] >= 0).all()
    assert write_pairs(tmp_path / "p.txt", pairs) == 2 + 3


@pytest.mark.parametrize("metric", ["inner_product", "euclidean"])
def test_pairs_from_retriever_other_metrics(database, metric):
    X, names, rng = database
    Q = rng.normal(size=(4, 8))
    retriever = NearestNeighborRetriever(metric=metric).fit(X, names)
    pairs = pairs_from_retriever(retriever, Q, query_names=list("abcd"), k=5)
    if metric == "inner_product":
        expected = Q @ X.T
    else:
        expected = -np.linalg.norm(Q[:, None] - X[None], axis=2)
    ind = np.argsort(-expected, axis=1, kind="stable")[:, :5]
    assert_rankings_equivalent(pairs.scores, pairs.indices,
                               np.take_along_axis(expected, ind, axis=1), ind, atol=1e-4)


def test_pairs_from_pipeline_names_default_to_the_queries(database):
    X, names, _ = database
    lookup = {f"img{i}": X[i] for i in range(30)}
    pipe = make_pipeline(
        FunctionTransformer(lambda paths: np.array([lookup[p] for p in paths])),
        NearestNeighborRetriever(),
    ).fit(list(lookup), names)
    pairs = pairs_from_retriever(pipe, ["img3", "img4"], k=2)
    assert list(pairs.query_names) == ["img3", "img4"]
    ind, sim = _cosine_top_k(X[3:5], X, 2)
    assert_rankings_equivalent(pairs.scores, pairs.indices, sim, ind, atol=1e-5)


def test_pairs_from_retriever_errors(database):
    X, names, rng = database
    Q = rng.normal(size=(2, 8))
    with pytest.raises(ValueError, match="pass query_names"):
        pairs_from_retriever(NearestNeighborRetriever().fit(X, names), Q)
    with pytest.raises(ValueError, match="fitted without labels"):
        pairs_from_retriever(NearestNeighborRetriever().fit(X), Q, query_names=["a", "b"])
    with pytest.raises(ValueError, match="not image names"):
        pairs_from_retriever(NearestNeighborRetriever().fit(X, np.arange(30)), Q,
                             query_names=["a", "b"])
    with pytest.raises(ValueError, match="not unique"):
        pairs_from_retriever(NearestNeighborRetriever().fit(X, np.repeat(["x", "y"], 15)), Q,
                             query_names=["a", "b"])
    retriever = NearestNeighborRetriever().fit(X)
    with pytest.raises(ValueError, match="database_names has 3 name"):
        pairs_from_retriever(retriever, Q, query_names=["a", "b"],
                             database_names=["a", "b", "c"])
    with pytest.raises(ValueError, match="2 query descriptor"):
        pairs_from_retriever(retriever, Q, query_names=["a"], database_names=names)
    with pytest.raises(ValueError, match="k must be"):
        pairs_from_retriever(retriever, Q, query_names=["a", "b"], database_names=names, k=0)
    with pytest.raises(ValueError, match="not fitted"):
        pairs_from_retriever(NearestNeighborRetriever(), Q, query_names=["a", "b"])
    # database names given for a retriever fitted on class labels
    pairs = pairs_from_retriever(NearestNeighborRetriever().fit(X, np.arange(30)), Q,
                                 query_names=["a", "b"], database_names=names, k=2)
    assert pairs.indices.shape == (2, 2)


# ---------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------
FAST = ["--backbone", "resnet18", "--weights", "none", "--max-size", "32", "--device", "cpu"]


@pytest.fixture(scope="module")
def small_index(tmp_path_factory):
    """A folder of 4 small images (one in a sub-folder) and its index."""
    tmp = tmp_path_factory.mktemp("pairs_cli")
    folder = tmp / "db"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ["a.png", "b.png", "c.png", "sub/d.png"]:
        Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(folder / name)
    index = tmp / "index.joblib"
    assert main(["index", str(folder), "-o", str(index), *FAST]) == 0
    return folder, index


def test_cli_search_writes_pairs(small_index, tmp_path, capsys, monkeypatch):
    folder, index = small_index
    capsys.readouterr()
    monkeypatch.chdir(folder.parent)  # queries given as relative paths
    queries = ["db/a.png", "db/sub/d.png"]
    kapture, colmap = tmp_path / "pairs.txt", tmp_path / "pairs_colmap.txt"
    assert main(["search", str(index), *queries, "-k", "3", "--json",
                 "--pairs", str(kapture)]) == 0
    out, err = capsys.readouterr()
    assert f"wrote 6 pair(s) of 2 query image(s) to {kapture} (kapture format)" in err
    results = json.loads(out)  # stdout holds only the JSON
    lines = _text(kapture).splitlines()
    assert lines[:2] == ["# kapture format: 1.1", "# query_image, map_image, score"]
    expected = [(res["query"], hit["name"], hit["similarity"])
                for res in results for hit in res["results"]]
    read = read_pairs(kapture)
    assert [r[:2] for r in read] == [e[:2] for e in expected]
    np.testing.assert_allclose([r[2] for r in read], [e[2] for e in expected], atol=1e-5)
    assert {r[1] for r in read} <= {"a.png", "b.png", "c.png", "sub/d.png"}

    assert main(["search", str(index), *queries, "-k", "2", "--pairs", str(colmap),
                 "--pairs-format", "colmap"]) == 0
    assert "(colmap format)" in capsys.readouterr().err
    top2 = [(res["query"], hit["name"]) for res in results for hit in res["results"][:2]]
    assert _text(colmap) == "".join(f"{q} {d}\n" for q, d in top2)


def test_cli_search_pairs_errors(small_index, tmp_path, capsys):
    folder, index = small_index
    capsys.readouterr()
    code = main(["search", str(index), str(folder / "a.png"),
                 "--pairs", str(tmp_path / "missing" / "p.txt")])
    assert code == 2
    assert "folder" in capsys.readouterr().err
    spaced = tmp_path / "my query.png"
    Image.new("RGB", (8, 8)).save(spaced)
    code = main(["search", str(index), str(spaced), "--pairs", str(tmp_path / "p.txt"),
                 "--pairs-format", "colmap"])
    out, err = capsys.readouterr()
    assert code == 2 and "contains whitespace" in err and "Traceback" not in err
    assert out == "" and not (tmp_path / "p.txt").exists()

"""RetrievalDisplay: the figure of queries and their results."""

import sys

import numpy as np
import pytest
from PIL import Image

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402
from sklearn.datasets import load_sample_images  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402

from skretrieval import (  # noqa: E402
    ConvFeatureExtractor,
    Crop,
    GeMPooler,
    NearestNeighborRetriever,
    RetrievalDisplay,
)
from skretrieval.display import plot_rankings  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
GREEN, ORANGE, RED, GREY, BLUE = (
    to_hex(c) for c in ("tab:green", "tab:orange", "tab:red", "tab:gray", "tab:blue"))


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def photos():
    """china.jpg and flower.jpg of scikit-learn, 427 x 640."""
    return list(load_sample_images().images)


def _tiny(n=6, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (30 + i, 40, 3), dtype=np.uint8) for i in range(n)]


def _frame_colour(ax):
    colours = {to_hex(s.get_edgecolor()) for s in ax.spines.values()}
    assert len(colours) == 1 and all(s.get_visible() for s in ax.spines.values())
    return colours.pop()


# ---------------------------------------------------------------------------
# the constructor and plot
# ---------------------------------------------------------------------------
def test_plot_frames_titles_and_attributes():
    db = _tiny()
    rankings = np.array([[0, 4, 2], [1, 3, 5]])
    relevance = np.array([[1, -1, 0], [0, 1, 1]])
    sims = np.array([[1.0, 0.5, 0.25], [0.9, 0.8, 0.7]])
    display = RetrievalDisplay(
        rankings, [db[0], db[1]], db, relevance=relevance, similarities=sims,
        query_names=["qa", "qb"], database_names=[f"d{i}" for i in range(6)])
    assert not hasattr(display, "figure_")  # __init__ only stores the data
    assert display.plot() is display
    assert display.axes_.shape == (2, 4) == display.images_.shape
    assert display.bounding_ax_ is None
    assert len(display.figure_.get_axes()) == 2 * (3 + 1)
    expected = {1: GREEN, -1: ORANGE, 0: RED}
    for row in range(2):
        assert _frame_colour(display.axes_[row, 0]) == BLUE
        for r in range(3):
            assert _frame_colour(display.axes_[row, r + 1]) == expected[relevance[row, r]]
    assert display.axes_[0, 0].get_title() == "query\nqa"
    assert display.axes_[0, 1].get_title() == "#1  sim 1.000\nd0"
    assert display.axes_[1, 3].get_title() == "#3  sim 0.700\nd5"
    # the results drawn are the ranked database images
    for row in range(2):
        for r in range(3):
            drawn = np.asarray(display.images_[row, r + 1].get_array())
            np.testing.assert_array_equal(drawn, db[rankings[row, r]])


def test_unknown_relevance_is_grey_and_titles_are_short():
    db = _tiny(3)
    display = RetrievalDisplay([[2, 1]], [db[0]], db).plot()
    assert [_frame_colour(a) for a in display.axes_[0, 1:]] == [GREY, GREY]
    assert [a.get_title() for a in display.axes_[0]] == ["query", "#1", "#2"]


def test_crop_query_draws_the_cropped_region():
    db = _tiny(3)
    big = np.random.default_rng(1).integers(0, 256, (80, 120, 3), dtype=np.uint8)
    display = RetrievalDisplay([[0, 1]], [Crop(big, box=(10, 5, 50, 25))], db).plot()
    drawn = np.asarray(display.images_[0, 0].get_array())
    assert drawn.shape == (20, 40, 3)
    np.testing.assert_array_equal(drawn, big[5:25, 10:50])


def test_images_are_loaded_lazily_and_downsized(photos, tmp_path):
    china_path = tmp_path / "china.png"
    Image.fromarray(photos[0]).save(china_path)
    missing = tmp_path / "not-there.jpg"  # never ranked, hence never loaded
    db = [str(china_path), photos[1], missing]
    display = RetrievalDisplay([[1, 0]], [Image.fromarray(photos[0])], db)
    display.plot(image_size=100)
    shapes = [np.asarray(im.get_array()).shape for im in display.images_[0]]
    assert shapes == [(67, 100, 3)] * 3  # 427 x 640 reduced to a longest side of 100
    assert display.plot(image_size=None).images_[0, 1].get_array().shape == (427, 640, 3)


def test_plot_into_a_user_figure():
    db = _tiny(4)
    display = RetrievalDisplay([[1, 2], [3, 0]], db[:2], db, relevance=[[1, 0], [0, 1]])
    # a single subplot bounds the grid
    fig, ax = plt.subplots(figsize=(4, 3))
    display.plot(ax=ax, title="mine")
    assert display.figure_ is fig and display.bounding_ax_ is ax
    assert not ax.axison and ax.get_title() == "mine"
    assert len(fig.get_axes()) == 1 + 2 * 3
    assert all(a.figure is fig for a in display.axes_.flat)
    with pytest.raises(ValueError, match="already used"):
        display.plot(ax=ax)
    # an array of axes, in a figure of the user's: drawn into them
    fig2, axes = plt.subplots(2, 3)
    display.plot(ax=axes)
    assert display.figure_ is fig2 and display.axes_.shape == (2, 3)
    assert _frame_colour(axes[1, 2]) == GREEN and _frame_colour(axes[0, 2]) == RED
    with pytest.raises(ValueError, match="Expected ax to have 6 axes"):
        display.plot(ax=axes[:, :2])
    # a whole (sub)figure
    fig3 = plt.figure(figsize=(5, 4))
    sub = fig3.subfigures(1, 2)[1]
    display.plot(fig=sub)
    assert display.figure_ is fig3 and len(fig3.get_axes()) == 6
    assert tuple(fig3.get_size_inches()) == (5.0, 4.0)
    with pytest.raises(ValueError, match="ax or fig, not both"):
        display.plot(ax=ax, fig=fig3)


@pytest.mark.parametrize("kwargs, match", [
    ({"rankings": [[0, 1]]}, "one row per query image"),
    ({"rankings": [0, 1]}, "2-D array"),
    ({"rankings": [[0, 9], [1, 2]]}, r"in \[0, 4\); got 9"),
    ({"rankings": [[0.0, 1.0], [1.0, 2.0]]}, "integer database indices"),
    ({"rankings": np.zeros((2, 0), dtype=int)}, "nothing to draw"),
    ({"relevance": [[1, 0, 0], [0, 1, 0]]}, "relevance of shape"),
    ({"relevance": [[1, 2], [0, -1]]}, r"1 \(positive\), 0 \(negative\) or -1 \(junk\); got \[2\]"),
    ({"similarities": [[1.0, 0.5]]}, "similarities of shape"),
    ({"query_names": ["a"]}, "query_names has 1 entries for 2 images"),
    ({"database_names": ["a", "b"]}, "database_names has 2 entries for 4 images"),
])
def test_constructor_errors(kwargs, match):
    db = _tiny(4)
    args = {"rankings": [[0, 1], [2, 3]], "query_images": db[:2], "database_images": db}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        RetrievalDisplay(args.pop("rankings"), args.pop("query_images"),
                         args.pop("database_images"), **args)


def test_single_image_instead_of_a_list_is_a_type_error():
    db = _tiny(2)
    with pytest.raises(TypeError, match="list of images"):
        RetrievalDisplay([[0]], "query.jpg", db)


def test_missing_matplotlib_names_the_extra(monkeypatch):
    db = _tiny(2)
    display = RetrievalDisplay([[1]], db[:1], db)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r"pip install skretrieval\[demo\]"):
        display.plot()
    with pytest.raises(ImportError, match="from_predictions needs matplotlib"):
        RetrievalDisplay.from_predictions([[1]], db[:1], db)


# ---------------------------------------------------------------------------
# from_predictions
# ---------------------------------------------------------------------------
def test_from_predictions_positives_and_junk(photos, tmp_path):
    # an Oxford-like ground truth: positives and junk per query
    db = photos + _tiny(4)
    rankings = np.array([[0, 2, 1, 3, 4, 5], [1, 5, 4, 0, 2, 3], [2, 3, 4, 5, 0, 1]])
    positives = [[0, 3], [1], [2, 4, 5]]
    junk = [[2], [4, 0], []]
    sims = np.linspace(1, 0, 18).reshape(3, 6)
    path = tmp_path / "results.png"
    display = RetrievalDisplay.from_predictions(
        rankings, [db[0], db[1], db[2]], db, positives=positives, junk=junk,
        similarities=sims, k=4, queries=[2, 0], path=path)
    assert path.read_bytes()[:8] == PNG_SIGNATURE and path.stat().st_size > 1000
    assert display.axes_.shape == (2, 5) and len(display.figure_.get_axes()) == 10
    np.testing.assert_array_equal(display.rankings, rankings[[2, 0], :4])
    np.testing.assert_array_equal(display.relevance, [[1, 0, 1, 1], [1, -1, 0, 1]])
    colours = [[_frame_colour(a) for a in row[1:]] for row in display.axes_]
    assert colours == [[GREEN, RED, GREEN, GREEN], [GREEN, ORANGE, RED, GREEN]]
    assert display.axes_[0, 2].get_title() == f"#2  sim {sims[2, 1]:.3f}"
    # the photos were drawn reduced to the default longest side of 256
    assert np.asarray(display.images_[1, 0].get_array()).shape == (171, 256, 3)

    # default queries: the first n_queries
    display = RetrievalDisplay.from_predictions(rankings, db[:3], db, k=2, n_queries=2)
    assert display.axes_.shape == (2, 3) and display.relevance is None
    np.testing.assert_array_equal(display.rankings, rankings[:2, :2])


def test_from_predictions_labels():
    db = _tiny(6)
    labels = np.array([0, 0, 1, 1, 2, 2])
    rankings = np.array([[1, 2, 3], [0, 4, 2]])
    display = RetrievalDisplay.from_predictions(
        rankings, db[:2], db, query_labels=labels[:2], database_labels=labels, k=3,
        junk=[[3], []])
    np.testing.assert_array_equal(display.relevance, [[1, 0, -1], [1, 0, 0]])
    assert [_frame_colour(a) for a in display.axes_[0, 1:]] == [GREEN, RED, ORANGE]
    assert display.axes_[0, 1].get_title() == "#1"


@pytest.mark.parametrize("kwargs, match", [
    ({"k": 0}, "k must be at least 1"),
    ({"k": 4}, "k=4 but rankings has only 3 columns"),
    ({"queries": [0, 2]}, r"queries must be indices of the query images, in \[0, 2\); got 2"),
    ({"queries": [-1]}, "got -1"),
    ({"queries": []}, "no query to plot"),
    ({"n_queries": 0}, "n_queries must be at least 1"),
    ({"positives": [[0]]}, "positives has 1 entries for 2 query images"),
    ({"positives": [[0], [1]], "junk": [[0], []]}, "both in positives"),
    ({"positives": [[0], [1]], "query_labels": [0, 1], "database_labels": [0] * 6},
     "not both"),
    ({"query_labels": [0, 1]}, "database_labels is missing"),
    ({"query_labels": [0], "database_labels": [0] * 6}, "one label per query image"),
    ({"junk": [[0], []]}, "junk needs positives"),
    ({"similarities": np.ones((2, 2))}, "similarities of shape"),
    ({"rankings": np.zeros((3, 3), dtype=int)}, "one row per query image"),
    ({"rankings": [[0, 1, 6], [1, 2, 3]]}, r"database images, in \[0, 6\)"),
])
def test_from_predictions_errors(kwargs, match):
    db = _tiny(6)
    args = {"rankings": [[0, 1, 2], [1, 2, 3]], "k": 3}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        RetrievalDisplay.from_predictions(args.pop("rankings"), db[:2], db, **args)


# ---------------------------------------------------------------------------
# from_estimator
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fitted():
    """A cheap pipeline fitted on 6 small, distinct images of 3 labels."""
    photos = load_sample_images().images
    images = []
    for photo in photos:  # 3 crops of each photo, at a small size
        for y, x in [(0, 0), (150, 300), (300, 100)]:
            crop = photo[y:y + 120, x:x + 160]
            images.append(np.asarray(Image.fromarray(crop).resize((80, 60))))
    images = images[:6]
    labels = np.array([0, 0, 0, 1, 1, 1])
    pipe = make_pipeline(
        ConvFeatureExtractor(weights=None, backbone="mobilenet_v2", max_size=64,
                             device="cpu"),
        GeMPooler(), NearestNeighborRetriever(metric="cosine")).fit(images, labels)
    return pipe, images, labels


def test_from_estimator_uses_the_retriever(fitted, tmp_path):
    pipe, images, labels = fitted
    queries = [Crop(images[1], box=(0, 0, 60, 40)), images[4], images[5]]
    dist, ind = pipe[-1].kneighbors(pipe[:-1].transform(queries[1:]), n_neighbors=3)
    path = tmp_path / "estimator.png"
    display = RetrievalDisplay.from_estimator(
        pipe, queries, images, query_labels=[0, 1, 1], k=3, queries=[1, 2],
        database_names=[f"img{i}" for i in range(6)], path=path)
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    np.testing.assert_array_equal(display.rankings, ind)
    np.testing.assert_allclose(display.similarities, 1.0 - dist, rtol=1e-6)
    # database labels from the retriever's y_
    np.testing.assert_array_equal(display.relevance, (labels[ind] == 1).astype(int))
    expected = {1: GREEN, 0: RED}
    for row in range(2):
        for r in range(3):
            assert (_frame_colour(display.axes_[row, r + 1])
                    == expected[display.relevance[row, r]])
    assert display.axes_[0, 1].get_title() == (
        f"#1  sim {1.0 - dist[0, 0]:.3f}\nimg{ind[0, 0]}")

    # a Crop query: the cropped region is drawn
    display = RetrievalDisplay.from_estimator(pipe, queries, images, k=2, n_queries=1,
                                              positives=[[0, 1, 2], [], []])
    assert np.asarray(display.images_[0, 0].get_array()).shape == (40, 60, 3)
    assert display.axes_.shape == (1, 3)


def test_from_estimator_metrics(fitted):
    pipe, images, _ = fitted
    D = pipe[:-1].transform(images)
    X = D[:1]
    for metric, name, sign in [("inner_product", "sim", -1.0), ("euclidean", "dist", 1.0)]:
        retriever = NearestNeighborRetriever(metric=metric).fit(D)
        pipe2 = make_pipeline(*[step for _, step in pipe.steps[:-1]], retriever)
        dist, _ = retriever.kneighbors(X, n_neighbors=2)
        display = RetrievalDisplay.from_estimator(pipe2, images[:1], images, k=2)
        assert display.score_name == name and display.relevance is None
        np.testing.assert_allclose(display.similarities, sign * dist, rtol=1e-6)
        assert display.axes_[0, 1].get_title().startswith(f"#1  {name} ")


def test_from_estimator_errors(fitted):
    pipe, images, _ = fitted
    with pytest.raises(TypeError, match="Pipeline ending with a NearestNeighborRetriever"):
        RetrievalDisplay.from_estimator(GeMPooler(), images, images)
    with pytest.raises(ValueError, match="fitted on 6"):
        RetrievalDisplay.from_estimator(pipe, images, images[:5])
    with pytest.raises(ValueError, match="k=7 but the database has only 6 images"):
        RetrievalDisplay.from_estimator(pipe, images, images, k=7)
    with pytest.raises(ValueError, match="k must be at least 1"):
        RetrievalDisplay.from_estimator(pipe, images, images, k=0)
    with pytest.raises(ValueError, match="got 6"):
        RetrievalDisplay.from_estimator(pipe, images, images, queries=[6])
    unlabelled = make_pipeline(
        *[step for _, step in pipe.steps[:-1]],
        NearestNeighborRetriever().fit(pipe[:-1].transform(images)))
    with pytest.raises(ValueError, match="fitted without them; pass database_labels"):
        RetrievalDisplay.from_estimator(unlabelled, images, images, query_labels=[0] * 6)


# ---------------------------------------------------------------------------
# the demo's wrapper
# ---------------------------------------------------------------------------
def test_demo_plot_rankings_wrapper(tmp_path):
    images = _tiny(8)
    labels = np.array([0, 0, 1, 1, 2, 2, -1, -1])  # -1: distractors
    rng = np.random.default_rng(0)
    rankings = np.array([rng.permutation(np.delete(np.arange(8), i))[:5] for i in range(8)])
    names = [f"n{i}" for i in range(8)]
    path = tmp_path / "demo.png"
    fig = plot_rankings(images, labels, rankings, n_queries=3, k=4, names=names, path=path,
                        title="demo")
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    axes = fig.get_axes()
    assert len(axes) == 3 * 5
    assert fig._suptitle.get_text() == "demo"
    for row in range(3):
        q = names.index(axes[5 * row].get_title().split("\n")[1])
        assert labels[q] >= 0  # never a distractor as a query
        for r in range(4):
            relevant = labels[rankings[q, r]] == labels[q]
            assert _frame_colour(axes[5 * row + 1 + r]) == (GREEN if relevant else RED)
    with pytest.raises(ValueError, match="one row per image"):
        plot_rankings(images, labels, rankings[:3])

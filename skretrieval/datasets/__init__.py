"""Loaders for the standard instance-retrieval benchmarks and the offline demo collection.

Every loader reads a local directory in the benchmark's standard layout and
returns a :class:`RetrievalBenchmark` (database, queries, ground truth of each
protocol); :func:`load_dataset` picks one by name (:data:`DATASETS`), and
:func:`download_dataset` fetches the public archives when asked.
:func:`load_demo_dataset` builds the small offline collection of the demo
from photos shipped inside scikit-learn and scikit-image;
:func:`make_cluttered_objects` generates a cluttered object benchmark from
COIL-100 objects pasted on real photos; :func:`evaluate_benchmark` runs a
pipeline over a benchmark with its protocol.
"""

from ._demo import load_demo_dataset
from ._base import DatasetError, GroundTruth, RetrievalBenchmark
from ._cluttered import CLUTTERED_BENCHMARK, make_cluttered_objects, segment_object
from ._coil import load_coil
from ._download import CHECKSUMS, SOURCES, DownloadError, download_dataset
from ._evaluation import EvaluationReport, evaluate_benchmark, evaluate_descriptors
from ._holidays import load_holidays
from ._oxford import (
    GROUND_TRUTH_DIGESTS,
    PARIS6K_CORRUPT,
    ground_truth_digest,
    load_oxford5k,
    load_paris6k,
    load_revisited,
    read_oxford_ground_truth,
    revisited_ground_truth,
)
from ._registry import BENCHMARKS, DATASETS, DatasetSpec, load_dataset
from ._ukbench import load_ukbench

__all__ = [
    "BENCHMARKS",
    "CHECKSUMS",
    "CLUTTERED_BENCHMARK",
    "DATASETS",
    "DatasetError",
    "DatasetSpec",
    "DownloadError",
    "EvaluationReport",
    "GROUND_TRUTH_DIGESTS",
    "GroundTruth",
    "PARIS6K_CORRUPT",
    "RetrievalBenchmark",
    "SOURCES",
    "download_dataset",
    "evaluate_benchmark",
    "evaluate_descriptors",
    "ground_truth_digest",
    "load_coil",
    "load_dataset",
    "load_demo_dataset",
    "load_holidays",
    "load_oxford5k",
    "load_paris6k",
    "load_revisited",
    "load_ukbench",
    "make_cluttered_objects",
    "read_oxford_ground_truth",
    "revisited_ground_truth",
    "segment_object",
]

"""The centroid lookup and the embedding handler's ``cluster`` outputs, checked against scikit-learn."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.metrics import pairwise_distances_argmin_min

from deepserve.handlers import load_handler
from deepserve.handlers.base import InvalidInputError, ModelLoadError, PayloadRequest, TensorRequest
from deepserve.handlers.cluster import Centroids
from deepserve.handlers.embedding import EmbeddingHandler
from deepserve.store import ClusterSpec, ModelSpec
from deepserve.training.clustering import ClusterData, cluster_model
from tests.handlers.cluster_models import topic_texts, write_blob_model, write_text_model
from tests.handlers.test_classification import answer

RNG = np.random.default_rng(0)


def test_euclidean_lookup_is_kmeans_predict_and_transform() -> None:
    x = RNG.normal(size=(300, 5)).astype(np.float32)
    km = KMeans(n_clusters=6, n_init=3, random_state=0).fit(x)
    ids, distances = Centroids(km.cluster_centers_, "euclidean").assign(x)
    np.testing.assert_array_equal(ids, km.predict(x))
    np.testing.assert_allclose(distances, km.transform(x).min(axis=1), rtol=1e-5, atol=1e-6)
    assert ids.dtype == np.int64 and distances.dtype == np.float32


def test_cosine_lookup_is_nearest_unit_centroid_at_any_length() -> None:
    centroids = RNG.normal(size=(4, 7))
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    x = RNG.normal(size=(200, 7))
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    expected_ids, chord = pairwise_distances_argmin_min(unit, centroids)  # sklearn, euclidean on unit vectors
    lookup = Centroids(centroids, "cosine")
    for scale in (1.0, 0.01, 300.0):
        ids, distances = lookup.assign(x * scale)
        np.testing.assert_array_equal(ids, expected_ids)
        np.testing.assert_allclose(distances, chord**2 / 2, rtol=1e-5, atol=1e-6)  # 1 - cos = |a - b|^2 / 2
    cos = (unit * centroids[expected_ids]).sum(axis=1)
    np.testing.assert_allclose(lookup.assign(x)[1], 1 - cos, rtol=1e-5, atol=1e-6)


def _spec(k: int = 3, file: str = "clusters.npy") -> ClusterSpec:
    return ClusterSpec(file=file, output="embedding", k=k, metric="euclidean", silhouette=0.5, fitted_on="t")


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((3, 5)), r"have shape \[3, 5\], model.json says \[3, 4\]"),
        (np.zeros((2, 4)), r"have shape \[2, 4\], model.json says \[3, 4\]"),
        (np.full((3, 4), np.nan), "hold NaN or infinite values"),
        (None, "cannot be read"),
    ],
)
def test_bad_centroid_files_fail_the_load(tmp_path: Path, array: np.ndarray | None, message: str) -> None:
    if array is not None:
        np.save(tmp_path / "clusters.npy", array)
    with pytest.raises(ModelLoadError, match=message) as info:
        Centroids.load(tmp_path, _spec(), dim=4)
    assert "deepserve cluster" in str(info.value) and "\n" not in str(info.value)


@pytest.fixture(scope="module")
def blob_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    store = tmp_path_factory.mktemp("cluster-handlers")
    write_blob_model(store, "rows", dim=4)
    x = np.concatenate([RNG.normal(loc=c, size=(40, 4)) for c in (-6.0, 0.0, 6.0)]).astype(np.float32)
    cluster_model(store, "rows", data=ClusterData(x, None, "3 blobs"), k_range=range(2, 6), threads=1)
    return store, x


def test_served_clusters_over_kserve_v2(blob_store: tuple[Path, np.ndarray]) -> None:
    store, x = blob_store
    handler = load_handler(store / "rows" / "2", threads=1)
    assert [t.name for t in handler.outputs] == ["embedding", "cluster", "cluster_distance"]
    assert [t.shape for t in handler.outputs[1:]] == [[-1, 1], [-1, 1]]
    request = TensorRequest({"features": x[:50]})
    [out] = handler.predict_batch([handler.preprocess(request)])
    served = handler.postprocess(out, request)
    km = KMeans(n_clusters=3, n_init=10, random_state=0).fit(x.astype(np.float64))  # what the fit ran
    np.testing.assert_array_equal(served["cluster"][:, 0], km.predict(x[:50].astype(np.float64)))
    np.testing.assert_allclose(
        served["cluster_distance"][:, 0], km.transform(x[:50].astype(np.float64)).min(axis=1), rtol=1e-5
    )
    only = TensorRequest({"features": x[:2]}, outputs=["cluster"], parameters={"normalize": True})
    [out] = handler.predict_batch([handler.preprocess(only)])
    assert list(handler.postprocess(out, only)) == ["cluster"]


def test_version_without_clusters_says_so(blob_store: tuple[Path, np.ndarray]) -> None:
    store, x = blob_store
    handler = load_handler(store / "rows" / "1", threads=1)
    assert [t.name for t in handler.outputs] == ["embedding"]
    request = TensorRequest({"features": x[:2]}, outputs=["embedding", "cluster"])
    [out] = handler.predict_batch([handler.preprocess(request)])
    with pytest.raises(
        InvalidInputError, match=r"model 'rows' v1 has no clusters; fit them with `deepserve cl"
    ):
        handler.postprocess(out, request)
    with pytest.raises(InvalidInputError, match="has no clusters"):
        answer(handler, PayloadRequest([[0.0, 1.0, 2.0, 3.0]], parameters={"cluster": True}))


def test_json_answer_adds_clusters_on_request(tmp_path: Path) -> None:
    write_text_model(tmp_path, "words")
    texts, labels = topic_texts(per_topic=20)
    cluster_model(tmp_path, "words", data=ClusterData(texts, labels, "words"), k_range=range(3, 4), threads=1)
    handler = load_handler(tmp_path / "words" / "2", threads=1)
    assert isinstance(handler, EmbeddingHandler)
    plain = answer(handler, PayloadRequest(texts[:3]))
    assert isinstance(plain, list) and len(plain) == 3  # unchanged without the parameter
    both = answer(handler, PayloadRequest(texts[:3], parameters={"cluster": "true"}))
    ids, distances = handler.assign_clusters(np.array(plain, dtype=np.float32))
    assert both["embeddings"] == plain
    assert both["clusters"] == [
        {"id": int(i), "distance": float(d)} for i, d in zip(ids, distances, strict=True)
    ]
    unit = answer(handler, PayloadRequest(texts[:3], parameters={"cluster": True, "normalize": True}))
    assert [c["id"] for c in unit["clusters"]] == ids.tolist()  # cosine: normalising changes nothing
    assert ModelSpec.read(tmp_path / "words" / "2").clusters.metric == "cosine"  # type: ignore[union-attr]


def test_centroids_over_a_missing_output_fail_the_load(tmp_path: Path) -> None:
    vdir = write_blob_model(tmp_path, "rows", dim=2)
    np.save(vdir / "clusters.npy", np.zeros((3, 2), dtype=np.float32))
    spec = ModelSpec.read(vdir)
    wrong = _spec().model_copy(update={"output": "nope"})
    spec.model_copy(update={"clusters": wrong}).write(vdir)
    with pytest.raises(ModelLoadError, match=r"clusters are over output 'nope', which this model lacks"):
        load_handler(vdir, threads=1)

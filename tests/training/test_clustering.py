"""k-means on served embeddings: planted clusters come back, k is chosen by silhouette, and the
centroids land in a new store version while the served one stays as it was."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import make_blobs

from deepserve.store import ModelSpec
from deepserve.training.clustering import (
    MIN_WORDS,
    ClusterData,
    ClusterError,
    cluster_model,
    corpus_data,
    embed,
    fit_kmeans,
    main,
    parse_k_range,
)
from tests.handlers.cluster_models import write_blob_model, write_text_model


def blobs(k: int, *, dim: int = 8, n: int = 240, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    x, y = make_blobs(n_samples=n, centers=k, n_features=dim, cluster_std=1.0, center_box=(-10, 10),
                      random_state=seed)  # fmt: skip
    return x.astype(np.float32), y


@pytest.mark.parametrize("planted", [3, 5, 7])
def test_silhouette_picks_the_planted_k_and_recovers_the_blobs(planted: int) -> None:
    x, y = blobs(planted, seed=planted)
    fit = fit_kmeans(x, range(2, 11), labels=y)
    assert fit.k == planted
    assert fit.ari is not None and fit.ari >= 0.9
    assert max(fit.silhouette_by_k, key=lambda k: fit.silhouette_by_k[k]) == planted
    assert fit.centroids.shape == (planted, 8) and len(fit.assignments) == len(x)


def test_cosine_clusters_ignore_vector_length() -> None:
    """Blobs of directions at random lengths: cosine k-means finds the directions, unit centroids."""
    directions, y = blobs(4, dim=6, seed=1)
    lengths = np.random.default_rng(0).uniform(0.1, 50.0, size=(len(y), 1)).astype(np.float32)
    scaled = directions * lengths
    fit = fit_kmeans(scaled, range(2, 8), metric="cosine", labels=y)
    assert fit.k == 4 and fit.ari is not None and fit.ari >= 0.9
    np.testing.assert_allclose(np.linalg.norm(fit.centroids, axis=1), 1.0, rtol=1e-5)
    euclidean = fit_kmeans(scaled, range(4, 5), labels=y)  # the lengths dominate without normalising
    assert euclidean.ari is not None and euclidean.ari < fit.ari


def test_cluster_model_writes_a_new_version_and_leaves_the_served_one(tmp_path: Path) -> None:
    v1 = write_blob_model(tmp_path, "blobs", dim=8)
    before = {p.name: p.read_bytes() for p in v1.iterdir()}
    x, y = blobs(4)
    v2, fit = cluster_model(
        tmp_path, "blobs", data=ClusterData(x, y, "4 blobs"), k_range=range(2, 9), threads=1
    )
    assert v2 == tmp_path / "blobs" / "2"
    assert {p.name: p.read_bytes() for p in v1.iterdir()} == before  # v1 untouched
    spec = ModelSpec.read(v2)
    assert spec.version == 2 and spec.clusters is not None
    c = spec.clusters
    assert (c.k, c.metric, c.output, c.fitted_on) == (4, "euclidean", "embedding", "4 blobs")
    assert c.ari == fit.ari and c.ari is not None and c.ari >= 0.9
    assert c.silhouette == c.silhouette_by_k[4] == max(c.silhouette_by_k.values())
    np.testing.assert_array_equal(np.load(v2 / c.file), fit.centroids)
    graph = next(v.file for v in spec.variants if v.usable)
    assert (v2 / graph).read_bytes() == (v1 / graph).read_bytes()
    assert not [p for p in (tmp_path / "blobs").iterdir() if p.name.startswith(".")]  # no staging left
    # refitting a clustered version makes version 3 from version 2, with its own centroids
    v3, _ = cluster_model(tmp_path, "blobs", data=ClusterData(x, y, "again"), k_range=range(3, 4), threads=1)
    assert ModelSpec.read(v3).clusters.k == 3  # type: ignore[union-attr]
    assert np.load(v2 / c.file).shape == (4, 8)


def test_text_models_default_to_cosine(tmp_path: Path) -> None:
    write_text_model(tmp_path, "words")
    texts = ["abc abc", "abd abd", "xyz xyz", "xyy xyz", "cab bac", "zyx yxz"]
    path, fit = cluster_model(tmp_path, "words", data=ClusterData(texts, None, "six texts"),
                              k_range=range(2, 4), threads=1)  # fmt: skip
    clusters = ModelSpec.read(path).clusters
    assert fit.metric == "cosine" and clusters is not None and clusters.ari is None


def test_texts_are_embedded_in_length_order_and_answered_in_theirs(tmp_path: Path) -> None:
    from deepserve.handlers import load_handler
    from deepserve.handlers.embedding import EmbeddingHandler

    handler = load_handler(write_text_model(tmp_path, "words"), threads=1)
    assert isinstance(handler, EmbeddingHandler)
    texts = [
        "a much longer text than the others",
        "b",
        "medium text",
        "cc",
        "the longest text of them all, by far",
    ]
    together = embed(handler, ClusterData(texts, None, "five"), batch_size=2)
    alone = np.concatenate([embed(handler, ClusterData([t], None, "one")) for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-6)


def test_topic_corpus_is_balanced_paragraphs() -> None:
    data = corpus_data(per_topic=20)
    assert isinstance(data.inputs, list) and data.labels is not None
    assert np.bincount(data.labels).tolist() == [20] * 6
    assert all(len(t.split()) >= MIN_WORDS for t in data.inputs)
    assert len(set(data.inputs)) == len(data.inputs)


def test_k_ranges() -> None:
    assert parse_k_range("2..12") == range(2, 13) and parse_k_range("5") == range(5, 6)
    for bad in ("1..4", "6..3", "two", "2..x"):
        with pytest.raises(ClusterError, match="--k"):
            parse_k_range(bad)
    with pytest.raises(ClusterError, match=r"5 vectors cannot be split into 6\.\.8 clusters"):
        fit_kmeans(np.zeros((5, 2)), range(6, 9))


@pytest.fixture(scope="module")
def cli_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("cluster-cli")
    write_blob_model(store, "rows", dim=3)
    write_text_model(store, "words")
    spec = ModelSpec.read(store / "words" / "1")
    (store / "not-emb" / "1").mkdir(parents=True)
    os.link(store / "words" / "1" / "model.pt", store / "not-emb" / "1" / "model.pt")
    spec.model_copy(update={"name": "not-emb", "task": "classification"}).write(store / "not-emb" / "1")
    return store


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "nope"], "model 'nope' is not in the store"),
        (["--model", "rows", "--version", "4"], "model 'rows' has no version 4"),
        (["--model", "not-emb"], "model 'not-emb' is not an embedding model (its task: classification)"),
        (["--model", "rows"], "model 'rows' takes neither text nor images"),
        (["--model", "words", "--data", "digits"], "--data digits is 1x8x8 images, but model 'words'"),
        (["--model", "rows", "--data", "corpus"], "--data corpus is text, but model 'rows'"),
        (["--model", "words", "--k", "0..3"], "--k needs 2 <= low <= high"),
    ],
)
def test_cli_bad_input_is_one_line(
    cli_store: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*args, "--store", str(cli_store)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("deepserve cluster: error: ") and message in err and err.count("\n") == 1
    assert sorted(p.name for p in (cli_store / "rows").iterdir()) == ["1"]  # nothing written


def test_cli_fits_a_text_model_on_the_topic_corpus(
    cli_store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--model", "words", "--store", str(cli_store), "--k", "2..4", "--threads", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("silhouette by k (cosine): 2: ") and len(out) == 2
    clusters = ModelSpec.read(cli_store / "words" / "2").clusters
    assert clusters is not None and clusters.fitted_on.startswith(
        "pydoc_data.topics paragraphs (360 of topics"
    )
    scores = f"k {clusters.k}, silhouette {clusters.silhouette:.3f}, ARI {clusters.ari:.3f}"
    assert out[1] == f"wrote {cli_store / 'words' / '2'}: {scores} against the labels"

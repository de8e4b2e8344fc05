"""Clusters served over HTTP: KServe v2 ``cluster`` outputs and the ``/v1/embeddings`` ``cluster`` field
match scikit-learn on the same inputs; asking a model without clusters gets a one-line 400."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import pytest_asyncio
from sklearn.cluster import KMeans
from sklearn.metrics import pairwise_distances_argmin_min

from deepserve.service.dataplane import DataPlane
from deepserve.service.settings import Settings
from deepserve.store import ModelSpec
from deepserve.training.clustering import ClusterData, cluster_model
from tests.handlers.cluster_models import topic_texts, write_blob_model, write_text_model
from tests.service.fakes import asgi_client

SEED = 0


def planted_blobs() -> np.ndarray:
    rng = np.random.default_rng(3)
    return np.concatenate([rng.normal(loc=c, size=(30, 3)) for c in (-5.0, 0.0, 5.0, 10.0)]).astype(
        np.float32
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cluster-api")
    write_blob_model(root, "rows", dim=3)
    cluster_model(
        root, "rows", data=ClusterData(planted_blobs(), None, "blobs"), k_range=range(2, 7), threads=1
    )
    write_text_model(root, "words")
    texts, labels = topic_texts(per_topic=25, seed=SEED)
    cluster_model(root, "words", data=ClusterData(texts, labels, "words"), k_range=range(2, 6), threads=1)
    write_text_model(root, "plain-words")
    return root


@pytest_asyncio.fixture(loop_scope="function")
async def client(store: Path) -> AsyncIterator[httpx.AsyncClient]:
    plane = DataPlane(Settings(model_store=store, threads=1, request_timeout_s=10.0))
    async with asgi_client(plane) as (c, _):
        yield c


def _v2(rows: np.ndarray, outputs: list[str] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "inputs": [
            {"name": "features", "datatype": "FP32", "shape": list(rows.shape), "data": rows.ravel().tolist()}
        ]
    }
    if outputs is not None:
        body["outputs"] = [{"name": n} for n in outputs]
    return body


def _tensor(response: httpx.Response, name: str) -> np.ndarray:
    out = next(o for o in response.json()["outputs"] if o["name"] == name)
    return np.asarray(out["data"]).reshape(out["shape"])


async def test_v2_cluster_outputs_match_sklearn(client: httpx.AsyncClient, store: Path) -> None:
    meta = (await client.get("/v2/models/rows")).json()
    assert meta["outputs"][1:] == [
        {"name": "cluster", "datatype": "INT64", "shape": [-1, 1]},
        {"name": "cluster_distance", "datatype": "FP32", "shape": [-1, 1]},
    ]
    config = (await client.get("/v2/models/rows/config")).json()
    assert [o["dims"] for o in config["output"][1:]] == [[1], [1]]
    x = planted_blobs().astype(np.float64)
    km = KMeans(n_clusters=4, n_init=10, random_state=SEED).fit(x)  # the planted k, chosen by silhouette
    assert ModelSpec.read(store / "rows" / "2").clusters.k == 4  # type: ignore[union-attr]
    queries = (x[::8] + 0.3).astype(np.float32).astype(np.float64)  # not the fitted points; 15 rows
    r = await client.post("/v2/models/rows/infer", json=_v2(queries.astype(np.float32)))
    assert r.status_code == 200, r.text
    assert [o["name"] for o in r.json()["outputs"]] == ["embedding", "cluster", "cluster_distance"]
    np.testing.assert_array_equal(_tensor(r, "cluster")[:, 0], km.predict(queries))
    np.testing.assert_allclose(
        _tensor(r, "cluster_distance")[:, 0], km.transform(queries).min(axis=1), rtol=1e-5
    )
    assert next(o for o in r.json()["outputs"] if o["name"] == "cluster")["datatype"] == "INT64"
    r = await client.post("/v2/models/rows/infer", json=_v2(queries[:2].astype(np.float32), ["cluster"]))
    assert [o["name"] for o in r.json()["outputs"]] == ["cluster"]


async def _embeddings(
    client: httpx.AsyncClient, model: str, texts: list[str], **extra: Any
) -> httpx.Response:
    return await client.post("/v1/embeddings", json={"model": model, "input": texts, **extra})


async def test_openai_cluster_field_matches_sklearn(client: httpx.AsyncClient, store: Path) -> None:
    fitted, _ = topic_texts(per_topic=25, seed=SEED)
    queries, _ = topic_texts(per_topic=4, seed=99)
    plain = [item for i in range(0, len(fitted), 15)  # a request takes at most 16 inputs
             for item in (await _embeddings(client, "words", fitted[i : i + 15])).json()["data"]]  # fmt: skip
    assert all("cluster" not in item for item in plain)  # only on request
    vectors = np.array([item["embedding"] for item in plain])
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    km = KMeans(n_clusters=3, n_init=10, random_state=SEED).fit(unit)  # cosine: k-means on unit vectors
    centroids = np.load(store / "words" / "2" / "clusters.npy")
    unit_centers = km.cluster_centers_ / np.linalg.norm(km.cluster_centers_, axis=1, keepdims=True)
    np.testing.assert_allclose(centroids, unit_centers, atol=1e-5)
    body = (await _embeddings(client, "words", queries, cluster=True, dimensions=2)).json()
    q = np.array([item["embedding"] for item in (await _embeddings(client, "words", queries)).json()["data"]])
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    ids, chord = pairwise_distances_argmin_min(q, centroids)
    assert [item["cluster"]["id"] for item in body["data"]] == ids.tolist() == km.predict(q).tolist()
    np.testing.assert_allclose(
        [item["cluster"]["distance"] for item in body["data"]], chord**2 / 2, atol=1e-5
    )
    assert len(body["data"][0]["embedding"]) == 2  # ``dimensions`` cuts the vector, not the clustering


async def test_openai_sdk_keeps_the_cluster_field(client: httpx.AsyncClient) -> None:
    sdk = openai.AsyncOpenAI(base_url="http://test/v1", api_key="none", http_client=client)
    result = await sdk.embeddings.create(
        model="words", input=["abcde abc", "vwxyz"], extra_body={"cluster": True}
    )
    clusters = [item.model_extra["cluster"] for item in result.data]  # type: ignore[index]
    assert [set(c) for c in clusters] == [{"id", "distance"}] * 2 and len(result.data[0].embedding) == 6


@pytest.mark.parametrize(
    ("request_args", "message"),
    [
        (("/v1/embeddings", {"model": "plain-words", "input": ["a"], "cluster": True}),
         "model 'plain-words' v1 has no clusters; fit them with `deepserve cluster --model plain-words"),
        (("/v2/models/rows/versions/1/infer", _v2(np.zeros((1, 3), np.float32), ["cluster"])),
         "model 'rows' v1 has no clusters"),
    ],
)  # fmt: skip
async def test_asking_a_model_without_clusters_is_a_clear_400(
    client: httpx.AsyncClient, request_args: tuple[str, dict[str, Any]], message: str
) -> None:
    path, body = request_args
    r = await client.post(path, json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    text = error["message"] if isinstance(error, dict) else error
    assert message in text and "\n" not in text

"""``deepserve cluster``: k-means on a served embedding model's vectors, served as a new version.

    deepserve cluster --model minilm --store model_store                  (topic corpus, cosine)
    deepserve cluster --model digits-vae --store model_store --k 5..15    (sklearn digits, euclidean)

The data is embedded by the handler the server runs (its tokenizer, graph file and runtime), so
the centroids live in the space the server answers in. k-means (scikit-learn, ``n_init`` restarts,
a fixed seed) runs for every k of the range; the k with the highest mean silhouette is kept, and
the adjusted Rand index of its clusters against the data's known labels (the topic of a
paragraph, the digit of an image) says how far they match. Metric: ``cosine`` for text models
(sentence embeddings are compared by angle; k-means then runs on unit vectors and the centroids
are re-normalised), ``euclidean`` otherwise (a VAE's latent means).

The centroids, k, the metric, the silhouettes and the ARI go into a NEW version of the model
(``clusters.npy`` + model.json ``clusters``); the served version is never changed in place.
Bad input exits with code 2 and one line saying what is wrong.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deepserve.handlers.base import HandlerError, PayloadRequest, TensorRequest
from deepserve.handlers.cluster import Centroids, unit_rows
from deepserve.handlers.embedding import EmbeddingHandler
from deepserve.store import ClusterMetric, ClusterSpec, ImagePreprocessing, ModelSpec, TextPreprocessing
from deepserve.version_dir import versions

EXIT_BAD_INPUT = 2
DEFAULT_K = range(2, 13)
N_INIT = 10
PARAGRAPHS_PER_TOPIC = 60
MIN_WORDS = 8  # shorter "paragraphs" of the reference topics are headings and code fragments
DATA_SETS = ("corpus", "digits")


class ClusterError(ValueError):
    """The model, the data or the options cannot be clustered (one line for the user)."""


@dataclass(frozen=True)
class ClusterData:
    """Inputs to embed (texts, or rows of the graph's input tensor) and their known labels."""

    inputs: list[str] | np.ndarray
    labels: np.ndarray | None
    description: str


@dataclass
class ClusterFit:
    centroids: np.ndarray  # (k, D): unit rows for cosine
    metric: ClusterMetric
    silhouette_by_k: dict[int, float]
    assignments: np.ndarray  # (n,) the served nearest-centroid ids of the fitted vectors
    ari: float | None = None
    seed: int = 0

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])

    def spec(self, file: str, output: str, fitted_on: str) -> ClusterSpec:
        return ClusterSpec(
            file=file, output=output, k=self.k, metric=self.metric,
            silhouette=self.silhouette_by_k[self.k], ari=self.ari, silhouette_by_k=self.silhouette_by_k,
            fitted_on=fitted_on, seed=self.seed,
        )  # fmt: skip


# -- data ------------------------------------------------------------------------------------
def corpus_data(per_topic: int = PARAGRAPHS_PER_TOPIC) -> ClusterData:
    """Paragraphs of the docs-classifier's reference topics (``pydoc_data.topics``), by topic.

    Up to ``per_topic`` paragraphs of at least ``MIN_WORDS`` words each, evenly spaced through
    the topic, so no topic outweighs the others.
    """
    from pydoc_data.topics import topics

    from deepserve.training.recipes import DOCS_TOPICS

    texts: list[str] = []
    labels: list[int] = []
    for label, topic in enumerate(DOCS_TOPICS):
        paragraphs = [p.strip() for p in topics[topic].split("\n\n") if len(p.split()) >= MIN_WORDS]
        picks = np.linspace(0, len(paragraphs) - 1, min(per_topic, len(paragraphs))).round().astype(int)
        texts += [paragraphs[i] for i in picks]
        labels += [label] * len(picks)
    described = f"pydoc_data.topics paragraphs ({len(texts)} of topics {', '.join(DOCS_TOPICS)})"
    return ClusterData(texts, np.array(labels), described)


def digits_data() -> ClusterData:
    """sklearn's 1,797 digits as pixels (N, 1, 8, 8) in [0, 1], labelled by digit."""
    from sklearn.datasets import load_digits

    d = load_digits()
    pixels = (d.images[:, None, :, :] / 16.0).astype(np.float32)  # (N, 1, 8, 8)
    return ClusterData(pixels, d.target.astype(np.int64), f"sklearn digits ({len(pixels)} images)")


def data_for(spec: ModelSpec, name: str | None) -> ClusterData:
    """``name`` (``corpus`` / ``digits``), or the one that fits the model's inputs."""
    text = isinstance(spec.preprocessing, TextPreprocessing)
    image = isinstance(spec.preprocessing, ImagePreprocessing)
    if name is None:
        if not (text or image):
            raise ClusterError(f"model {spec.name!r} takes neither text nor images; no built-in data fits it")
        name = "corpus" if text else "digits"
    if name == "corpus" and not text:
        raise ClusterError(f"--data corpus is text, but model {spec.name!r} does not take text")
    if name == "digits":
        pre = spec.preprocessing
        if not isinstance(pre, ImagePreprocessing) or (pre.channels, pre.height, pre.width) != (1, 8, 8):
            raise ClusterError(f"--data digits is 1x8x8 images, but model {spec.name!r} does not take them")
        return digits_data()
    if name != "corpus":
        raise ClusterError(f"unknown data {name!r}; choose one of {', '.join(DATA_SETS)}")
    return corpus_data()


# -- embedding through the served handler ----------------------------------------------------
def embed(handler: EmbeddingHandler, data: ClusterData, batch_size: int = 64) -> np.ndarray:
    """The model's embedding output (n, D) for ``data.inputs``, as the server computes it.

    Texts go in order of length, so a batch pads little (3x faster for MiniLM on the corpus; the
    vectors do not depend on the padding), and come back in the order given.
    """
    size = max(1, min(batch_size, handler.spec.max_batch_size or 1))
    inputs, starts = data.inputs, range(0, len(data.inputs), size)
    order: np.ndarray | None = None
    requests: list[PayloadRequest | TensorRequest]
    if isinstance(inputs, list):
        order = np.argsort([len(t) for t in inputs], kind="stable")
        requests = [PayloadRequest([inputs[i] for i in order[s : s + size]]) for s in starts]
    else:
        requests = [TensorRequest({handler.spec.inputs[0].name: inputs[s : s + size]}) for s in starts]
    parts = []
    for request in requests:
        [outputs] = handler.predict_batch([handler.preprocess(request)])
        parts.append(np.asarray(outputs[handler.output_name], dtype=np.float32))
    vectors = np.concatenate(parts)  # (n, D)
    if order is None:
        return vectors
    restored = np.empty_like(vectors)
    restored[order] = vectors
    return restored


# -- k-means ---------------------------------------------------------------------------------
def fit_kmeans(
    vectors: np.ndarray,
    k_range: range = DEFAULT_K,
    *,
    metric: ClusterMetric = "euclidean",
    labels: np.ndarray | None = None,
    seed: int = 0,
) -> ClusterFit:
    """k-means for every k of ``k_range``; the k with the best silhouette wins (ties: the smaller)."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score, silhouette_score

    x = np.asarray(vectors, dtype=np.float64)  # (n, D)
    if metric == "cosine":
        x = unit_rows(x)
    ks = [k for k in k_range if 2 <= k < len(x)]
    if not ks:
        raise ClusterError(f"{len(x)} vectors cannot be split into {_span(k_range)} clusters (need k < n)")
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    scores: dict[int, float] = {}
    for k in ks:
        centers = KMeans(n_clusters=k, n_init=N_INIT, random_state=seed).fit(x).cluster_centers_
        if metric == "cosine":
            centers = unit_rows(centers)
        ids, _ = Centroids(centers, metric).assign(x)  # the server's assignment, which the scores judge
        score = float(silhouette_score(x, ids, metric=metric)) if len(set(ids.tolist())) > 1 else -1.0
        scores[k] = round(score, 6)
        if best is None or score > best[0]:
            best = (score, centers, ids)
    assert best is not None
    _, centers, ids = best
    ari = round(float(adjusted_rand_score(labels, ids)), 6) if labels is not None else None
    return ClusterFit(centers.astype(np.float32), metric, scores, ids, ari, seed)


def _span(k_range: range) -> str:
    return f"{k_range.start}..{k_range.stop - 1}"


def parse_k_range(text: str) -> range:
    """``"2..12"`` (inclusive) or one number."""
    low, _, high = text.partition("..")
    try:
        start, stop = int(low), int(high or low)
    except ValueError:
        raise ClusterError(f"--k must be a number or a range like 2..12, got {text!r}") from None
    if start < 2 or stop < start:
        raise ClusterError(f"--k needs 2 <= low <= high, got {text!r}")
    return range(start, stop + 1)


# -- the command -----------------------------------------------------------------------------
def source_version(store: Path, model: str, version: int | None) -> Path:
    have = versions(store / model)
    if not have:
        raise ClusterError(f"model {model!r} is not in the store {store} (no versions under {store / model})")
    chosen = version if version is not None else have[-1]
    if chosen not in have:
        raise ClusterError(f"model {model!r} has no version {chosen} in {store}; it has {have}")
    return store / model / str(chosen)


def cluster_model(
    store: Path,
    model: str,
    *,
    version: int | None = None,
    data: str | ClusterData | None = None,
    k_range: range = DEFAULT_K,
    metric: ClusterMetric | None = None,
    seed: int = 0,
    threads: int | None = None,
) -> tuple[Path, ClusterFit]:
    """Fit clusters on ``model``'s latest (or given) version; returns the new version's dir and the fit."""
    from deepserve.export.centroids import CENTROIDS_FILE, write_clustered_version
    from deepserve.handlers import load_handler

    src = source_version(Path(store), model, version)
    try:
        handler = load_handler(src, threads=threads)
    except HandlerError as exc:
        raise ClusterError(f"cannot load {src}: {exc}") from exc
    if handler.spec.task != "embedding":
        raise ClusterError(f"model {model!r} is not an embedding model (its task: {handler.spec.task})")
    if not isinstance(handler, EmbeddingHandler):
        raise ClusterError(f"model {model!r} is served by its own handler, which cannot hold clusters")
    dataset = data if isinstance(data, ClusterData) else data_for(handler.spec, data)
    metric = metric or (
        "cosine" if isinstance(handler.spec.preprocessing, TextPreprocessing) else "euclidean"
    )
    try:
        vectors = embed(handler, dataset)
    except HandlerError as exc:
        raise ClusterError(f"embedding {dataset.description} with {src} failed: {exc}") from exc
    fit = fit_kmeans(vectors, k_range, metric=metric, labels=dataset.labels, seed=seed)
    output = handler.spec.outputs[0].name
    spec = fit.spec(CENTROIDS_FILE, output, dataset.description)
    return write_clustered_version(src, fit.centroids, spec), fit


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="deepserve cluster", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", required=True, help="an embedding model in the store (minilm, digits-vae, ...)")
    p.add_argument("--store", type=Path, default=Path("model_store"), help="model store directory")
    p.add_argument("--version", type=int, help="version to embed with (default: the latest)")
    p.add_argument("--data", choices=DATA_SETS, help="default: corpus for text models, digits for images")
    p.add_argument("--k", default="2..12", help="k or a range low..high to choose from (default 2..12)")
    p.add_argument("--metric", choices=("cosine", "euclidean"), help="default: cosine for text models")
    p.add_argument("--seed", type=int, default=0, help="k-means seed")
    p.add_argument("--threads", type=int, help="runtime threads while embedding")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        path, fit = cluster_model(
            args.store, args.model, version=args.version, data=args.data, k_range=parse_k_range(args.k),
            metric=args.metric, seed=args.seed, threads=args.threads,
        )  # fmt: skip
    except ClusterError as exc:
        print(f"deepserve cluster: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    tried = ", ".join(f"{k}: {s:.3f}" for k, s in fit.silhouette_by_k.items())
    ari = f", ARI {fit.ari:.3f} against the labels" if fit.ari is not None else ""
    print(f"silhouette by k ({fit.metric}): {tried}")
    print(f"wrote {path}: k {fit.k}, silhouette {fit.silhouette_by_k[fit.k]:.3f}{ari}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

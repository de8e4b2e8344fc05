"""A tiny model store made once per session: one version per task and input kind."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from deepserve.store import (
    ImagePreprocessing,
    LatentPreprocessing,
    TabularPreprocessing,
    TensorSpec,
    TextPreprocessing,
)
from tests.handlers.tiny import BagOfTokens, Generator, PixelNet, RowNet, write_version

ALL_FORMATS = [
    ("onnx", "fp32", True),
    ("onnx", "fp16", True),
    ("torchscript", "fp32", True),
    ("pt2", "fp32", True),
    ("torchscript", "fp16", False),
]
TORCH_ONLY = [("pt2", "fp32", True)]
WORDPIECE_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "hello", "world", "serve", "##s", "model", "fast", "a"]


def spec(name: str, datatype: str, shape: list[int]) -> TensorSpec:
    return TensorSpec(name=name, datatype=datatype, shape=shape)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("store")


@pytest.fixture(scope="session")
def image_cls(store: Path) -> Path:
    torch.manual_seed(0)
    return write_version(
        store,
        "img-cls",
        PixelNet(1, 3),
        (torch.rand(2, 1, 8, 8),),
        task="classification",
        inputs=[spec("pixels", "FP32", [-1, 1, 8, 8])],
        outputs=[spec("logits", "FP32", [-1, 3])],
        files=ALL_FORMATS,
        labels=["zero", "one", "two"],
        preprocessing=ImagePreprocessing(channels=1, height=8, width=8, mean=[0.5], std=[0.25]),
    )


@pytest.fixture(scope="session")
def tabular_cls(store: Path) -> Path:
    torch.manual_seed(1)
    return write_version(
        store,
        "tab-cls",
        RowNet(3, 2),
        (torch.randn(2, 3),),
        task="classification",
        inputs=[spec("features", "FP32", [-1, 3])],
        outputs=[spec("logits", "FP32", [-1, 2])],
        files=TORCH_ONLY,
        labels=["benign", "malignant"],
        preprocessing=TabularPreprocessing(features=["age", "size", "depth"], mean=[0.0] * 3, std=[1.0] * 3),
    )


@pytest.fixture(scope="session")
def regression(store: Path) -> Path:
    torch.manual_seed(2)
    return write_version(
        store,
        "reg",
        RowNet(3, 2),
        (torch.randn(2, 3),),
        task="regression",
        inputs=[spec("features", "FP32", [-1, 3])],
        outputs=[spec("predictions", "FP32", [-1, 2])],
        files=TORCH_ONLY,
        preprocessing=TabularPreprocessing(
            features=["a", "b", "c"], mean=[0.0] * 3, std=[1.0] * 3, targets=["price", "volume"]
        ),
    )


def _text_io(out: str, width: int) -> dict[str, list[TensorSpec]]:
    ids = [spec("input_ids", "INT64", [-1, -1]), spec("attention_mask", "INT64", [-1, -1])]
    return {"inputs": ids, "outputs": [spec(out, "FP32", [-1, width])]}


def _text_example(vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randint(1, vocab, (2, 5)), torch.ones(2, 5, dtype=torch.int64)


@pytest.fixture(scope="session")
def text_cls(store: Path) -> Path:
    torch.manual_seed(3)
    return write_version(
        store,
        "text-cls",
        BagOfTokens(256, 3),
        _text_example(256),
        task="classification",
        files=[("onnx", "fp32", True), ("torchscript", "fp32", True), ("pt2", "fp32", True)],
        labels=["howto", "api", "faq"],
        **_text_io("logits", 3),
        preprocessing=TextPreprocessing(tokenizer="bytes", max_length=32, vocab_size=256),
    )


@pytest.fixture(scope="session")
def text_embedding(store: Path) -> Path:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    torch.manual_seed(4)
    vdir = write_version(
        store,
        "text-emb",
        BagOfTokens(len(WORDPIECE_VOCAB), 6),
        _text_example(len(WORDPIECE_VOCAB)),
        task="embedding",
        files=TORCH_ONLY,
        **_text_io("sentence_embedding", 6),
        preprocessing=TextPreprocessing(
            tokenizer="wordpiece",
            tokenizer_file="tokenizer.json",
            max_length=8,
            vocab_size=len(WORDPIECE_VOCAB),
        ),
    )
    tok = Tokenizer(models.WordPiece({w: i for i, w in enumerate(WORDPIECE_VOCAB)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tok.save(str(vdir / "tokenizer.json"))
    return vdir


@pytest.fixture(scope="session")
def image_embedding(store: Path) -> Path:
    torch.manual_seed(5)
    return write_version(
        store,
        "vae-enc",
        PixelNet(1, 4),
        (torch.rand(2, 1, 8, 8),),
        task="embedding",
        inputs=[spec("pixels", "FP32", [-1, 1, 8, 8])],
        outputs=[spec("latent_mean", "FP32", [-1, 4])],
        files=TORCH_ONLY,
        preprocessing=ImagePreprocessing(channels=1, height=8, width=8, mean=[0.5], std=[0.25]),
    )


@pytest.fixture(scope="session")
def generator(store: Path) -> Path:
    torch.manual_seed(6)
    return write_version(
        store,
        "gen",
        Generator(4, 1, 8),
        (torch.randn(2, 4),),
        task="image-generation",
        inputs=[spec("latent", "FP32", [-1, 4])],
        outputs=[spec("images", "FP32", [-1, 1, 8, 8])],
        files=TORCH_ONLY,
        preprocessing=LatentPreprocessing(latent_dim=4),
    )

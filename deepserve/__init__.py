"""deepserve: train, export and serve the models of a practical deep-learning guide, and your own.

Stages, one subpackage each: ``models`` and ``training`` (the zoo and its loop), ``export``
(checkpoints to TorchScript / torch.export / ONNX, parity-checked), ``handlers`` (task logic over a
runtime), ``service`` (the data plane and its HTTP and gRPC transports), ``bench`` (load tests).
``store`` is the model-store contract (model.json) that export writes and serving reads.
"""

__version__ = "0.1.0"

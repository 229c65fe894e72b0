"""GSPO training with TRL's ``GRPOTrainer``: LoRA adapter, resumable checkpoints, curves, train metrics.

One job per module:

- :mod:`~vlrl.training.trainer`: the data set, the ``GRPOConfig`` built from the typed params, the one
  :func:`train`, and ``train.json``;
- :mod:`~vlrl.training.checkpoints`: the setup fingerprint, the completeness marker, resume;
- :mod:`~vlrl.training.callbacks`: the divergence guard, the curve writer, the checkpoint marker;
- :mod:`~vlrl.training.trl_cpu_shim`: the plain-torch log-prob path TRL 1.15 lacks on CPU.

Importing this package imports trl: on the unsloth backend call :func:`vlrl.modeling.prepare_backend`
first (see :mod:`vlrl.modeling`).
"""

from vlrl.training.trainer import TrainingDivergedError, train

__all__ = ["TrainingDivergedError", "train"]

"""The shape of a runtime: load a version folder under its config, predict on ndarrays, unload."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from tritonflow.serving.model_config import ModelConfig


class Backend(ABC):
    """One loaded model version. `predict` is the hot path: ndarrays in, ndarrays out, no I/O."""

    #: what actually runs the model, shown in metadata and logs (e.g. "nvforest-cpu", "treelite-gtil")
    engine: str
    #: the fewest rows a chunk of a large request should have: below it the engine's own cost per call
    #: outweighs the rows (a batch engine's, serving/backends/forest_engines.py); 0: the batcher's floor
    batch_rows: int = 0

    @abstractmethod
    def __init__(self, version_dir: Path, config: ModelConfig, engine: str = "auto") -> None:
        """Load the model file(s) in `version_dir` as `config` says; raise BackendError if broken."""

    @abstractmethod
    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Batched inputs by config input name -> every config output by name, batch first."""

    def input_dims(self) -> dict[str, tuple[int, ...]]:
        """Input name -> the dims the model itself reads, where they fix what its config leaves
        variable (-1: a forest step of an ensemble, its width); the default: the config's."""
        return {}

    def unload(self) -> None:  # noqa: B027 (optional hook: most runtimes hold nothing to free)
        """Release what `__init__` took (GPU memory, sessions); the default keeps nothing."""

"""Batch engines for a forest beside FIL's: the fastest engine per batch size, measured at load.

On CPU, nvForest is the quickest engine for a few rows, but not for a batch: on XGBoost 500 rounds x
depth 8 and 1,024 rows, XGBoost's own predictor ran 4.4x and ONNX Runtime 1.8x nvForest's rows/s on
these 2-core machines (LightGBM: ONNX Runtime 1.5x; a random forest: 2x). @deploy publishes the
forest a second time, in the format of one such engine, as a file beside the Treelite checkpoint
(ENGINE_FILES), once the parity gate has passed it; Triton's FIL backend never reads that file.

With engine "auto" the node loads it too, checks that it answers as FIL's engine does on generated
rows (and on them with missing values), times both at a few batch sizes and sends each batch to the
faster one for its size. The choice is in the model's `engine` (metadata, log). A file that
disagrees, or whose library is not installed, is left unused with a warning: the version still
serves on FIL's engine.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tritonflow.serving.backends import BackendError
from tritonflow.serving.backends.missing_values import missing_value_rows

log = logging.getLogger(__name__)

# engine -> the file @deploy writes for it in the version folder
ENGINE_FILES = {"xgboost": "engine.xgboost.ubj", "onnxruntime": "engine.onnx"}
# Batch sizes timed at load; a batch runs on the engine fastest at the largest size not above its
# rows. Up to 4,096: the node's chunks of large requests are 1 ms of FIL's engine (serving/batcher.py),
# more than 1,024 rows on a shallow forest, and nvForest's rows/s still grows there (the starter
# model, quiet machine: 1.6M at 1,024 rows, 2.9M at 4,096).
SIZES = (1, 16, 64, 256, 1024, 4096)
ROUNDS = 3  # timed calls per engine and size, engines alternating: the fastest call counts
# A size's rounds stop once its calls (warm-up included) took this long, after the first round: a
# deep forest's largest batches are timed once, not three times (XGBoost 500x8, nvForest and XGBoost:
# 85 ms a round at 4,096 rows; its load went from 0.43 s to 0.25-0.31 s)
SIZE_BUDGET_S = 0.1
GAIN = 1.2  # a batch engine takes a size only when this much faster: timing noise never flips it
PAYS = 0.75  # the share of its largest batch's rows/s from which a batch engine's chunk pays
AGREE_ROWS = 64
THREADS = os.cpu_count() or 1

Raw = Callable[[np.ndarray], np.ndarray]  # (rows, n_features) float32 -> (rows, width)


@dataclass(frozen=True)
class Engine:
    name: str  # as the node shows it, e.g. "xgboost-cpu"
    run: Raw
    batch_rows: int = 0  # Backend.batch_rows: the chunk size from which its batch engine pays


def open_engine(engine: str, version_dir: Path, width: int) -> Engine:
    """A batch engine on its file in `version_dir`; BackendError when the file or library is missing."""
    path = Path(version_dir) / ENGINE_FILES[engine]
    if not path.is_file():
        raise BackendError(
            f"engine {engine!r} reads {path.name}, which {version_dir} does not hold: "
            "deploy the model again with this tritonflow (it publishes the file), or use engine 'auto'"
        )
    try:
        run = _OPENERS[engine](path)
    except ImportError as exc:
        raise BackendError(f"engine {engine!r} needs {exc.name or engine}: pip install {engine}") from None
    except Exception as exc:  # the library's own error on a file it cannot read
        raise BackendError(f"{engine} cannot load {path}: {type(exc).__name__}: {exc}") from None
    return Engine(f"{engine}-cpu", _widened(run, width))


def batch_engines(version_dir: Path, width: int) -> list[Engine]:
    """Every batch engine whose file the version holds and that loads here (the others: a warning)."""
    found = []
    for engine, file in ENGINE_FILES.items():
        if (Path(version_dir) / file).is_file():
            try:
                found.append(open_engine(engine, version_dir, width))
            except BackendError as exc:
                log.warning("%s: serving without it (%s)", file, exc)
    return found


def fastest(fil: Engine, others: list[Engine], n_features: int) -> Engine:
    """`fil`, or one engine that sends batches from some size on to the fastest of the `others` that
    agree with it: the one fastest on the largest batch, from the smallest size where it, and at
    every larger size, runs GAIN times FIL's engine's rows/s (one crossover: noise never interleaves)."""
    rows = _generated(n_features)
    checked = np.concatenate([rows[:AGREE_ROWS], missing_value_rows(rows[:AGREE_ROWS])])
    expected = fil.run(checked)
    agreeing = [e for e in others if _agrees(e, checked, expected)]
    if not agreeing:
        return fil
    speeds = _speeds([fil, *agreeing], rows)
    best = max(agreeing, key=lambda e: speeds[e.name][-1])
    wins = [rate >= GAIN * base for rate, base in zip(speeds[best.name], speeds[fil.name], strict=True)]
    if not wins[-1]:
        return fil
    start = len(wins) - wins[::-1].index(False) if False in wins else 0
    paying = _paying(speeds[best.name], start)
    if start == 0:
        return dataclasses.replace(best, batch_rows=paying)
    crossover = SIZES[start]
    name = f"{fil.name}; {best.name} from {crossover} rows"
    return Engine(name, _dispatch(fil.run, best.run, crossover), paying)


def with_batch_rows(engine: Engine, n_features: int) -> Engine:
    """A batch engine run alone (forced), with the chunk size from which it pays, measured."""
    rates = _speeds([engine], _generated(n_features))[engine.name]
    return dataclasses.replace(engine, batch_rows=_paying(rates, 0))


def _generated(n_features: int) -> np.ndarray:
    """The rows engines are checked and timed on: no request's, the same at every load."""
    return np.random.default_rng(0).standard_normal((max(SIZES), n_features), dtype=np.float32)


def _speeds(engines: list[Engine], rows: np.ndarray) -> dict[str, list[float]]:
    """Each engine's rows/s at each size: its fastest of ROUNDS calls, the engines taking turns, so a
    burst of load on the machine (other models loading, a neighbour) slows one call, not one engine.
    (Timed one engine after the other, with a dozen servers starting beside the node, XGBoost 500x8's
    crossover moved from 64 rows to 1,024.) A size gets fewer rounds past SIZE_BUDGET_S."""
    best = {e.name: [0.0] * len(SIZES) for e in engines}
    for i, size in enumerate(SIZES):
        batch = rows[:size]
        started = time.perf_counter()
        for engine in engines:
            engine.run(batch)  # NOTE: warm-up: first-call allocations
        for round_ in range(ROUNDS):
            if round_ and time.perf_counter() - started > SIZE_BUDGET_S:
                break
            for engine in engines:
                start = time.perf_counter()
                engine.run(batch)
                rate = size / max(time.perf_counter() - start, 1e-9)
                best[engine.name][i] = max(best[engine.name][i], rate)
    return best


def _paying(rates: list[float], start: int) -> int:
    """Chunks of large requests as big as it takes the batch engine to reach PAYS of its rows/s on
    the largest batch (from SIZES[start] on)."""
    return next(s for s, rate in zip(SIZES[start:], rates[start:], strict=True) if rate >= PAYS * rates[-1])


def _agrees(engine: Engine, rows: np.ndarray, expected: np.ndarray) -> bool:
    try:
        answer = engine.run(rows)
    except Exception as exc:  # noqa: BLE001 (a library's error on generated rows: not this engine)
        log.warning("%s fails on generated rows (%s): serving without it", engine.name, exc)
        return False
    scale = max(1.0, float(np.nanmax(np.abs(expected), initial=0.0)))
    if answer.shape == expected.shape and np.allclose(
        answer, expected, rtol=0, atol=1e-4 * scale, equal_nan=True
    ):
        return True
    log.warning(
        "%s answers differently from FIL's engine on generated rows (shapes %s, %s): serving without it",
        engine.name,
        list(answer.shape),
        list(expected.shape),
    )
    return False


def _dispatch(small: Raw, large: Raw, crossover: int) -> Raw:
    return lambda x: small(x) if x.shape[0] < crossover else large(x)


def _widened(run: Callable[[np.ndarray], Any], width: int) -> Raw:
    """The engine's scores as FIL's engines give them: (rows, width), float32. Binary boosters and
    classifiers converted to ONNX answer both classes' probabilities where FIL gives P(class 1)."""

    def scores(x: np.ndarray) -> np.ndarray:
        out = np.asarray(run(x), dtype=np.float32).reshape(x.shape[0], -1)
        return out[:, 1:] if width == 1 and out.shape[1] == 2 else out

    return scores


def _open_xgboost(path: Path) -> Callable[[np.ndarray], Any]:
    import xgboost

    booster = xgboost.Booster(params={"nthread": THREADS}, model_file=str(path))
    # NOTE: strict_shape: (rows, groups) for every objective; validate_features: the rows are unnamed
    return lambda x: booster.inplace_predict(x, validate_features=False, strict_shape=True)


def _open_onnxruntime(path: Path) -> Callable[[np.ndarray], Any]:
    import onnxruntime as ort

    from tritonflow.serving.backends.onnx import session_options

    options = session_options()
    options.log_severity_level = 3  # NOTE: skl2onnx's `label` [1] warns on every batch otherwise
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0].name
    outputs = [o.name for o in session.get_outputs()]
    # classifiers: (label, probabilities); regressors: one output of values
    fetch = "probabilities" if "probabilities" in outputs else outputs[-1]
    return lambda x: session.run([fetch], {feed: x})[0]


_OPENERS: dict[str, Callable[[Path], Callable[[np.ndarray], Any]]] = {
    "xgboost": _open_xgboost,
    "onnxruntime": _open_onnxruntime,
}

"""The peers as serving.py's contenders: environments made once per run, model folders per model,
answers checked against the native model before any timing (a peer that answers wrong is not timed).
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
from serving_contenders import Contender
from serving_models import BenchModel

from . import environment
from .forms import JSON

CHECKED_ROWS = 8
TOLERANCE = 1e-5  # float32 answers against float64 predict_proba


def environments(names: tuple[str, ...], skipped: dict[str, str]) -> dict[str, Path]:
    """name -> the Python of its environment, made or reused; a peer that cannot be installed is skipped."""
    pythons = {}
    for name in names:
        try:
            pythons[name] = environment.ensure(name, importlib.import_module(f"peers.{name}").REQUIREMENTS)
        except environment.PeerUnavailable as exc:
            skipped[f"peer {name}"] = str(exc)
            print(f"peer {name} skipped: {exc}", flush=True)
    return pythons


def peer_contenders(
    pythons: dict[str, Path], model: BenchModel, model_pickle: Path, folder: Path, skipped: dict[str, str]
) -> list[Contender]:
    """One contender per installed peer, each with its model folder written under `folder`."""
    found = []
    for name, python in pythons.items():
        try:
            found.append(
                importlib.import_module(f"peers.{name}").contender(model, model_pickle, folder, python)
            )
        except environment.PeerUnavailable as exc:
            skipped[f"peer {name} on {model.name}"] = str(exc)
            print(f"peer {name} skipped on {model.name}: {exc}", flush=True)
    return found


def wrong_answer(contender: Contender, model: BenchModel) -> str:
    """Why the peer's probabilities on a few rows differ from the native model's; "" when they agree."""
    assert contender.form is not None
    rows = model.rows[:CHECKED_ROWS]
    connection = contender.connect(timeout=60)
    try:
        connection.request("POST", contender.form.path, contender.form.encode(rows), JSON)
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    if response.status != 200:
        return f"HTTP {response.status}: {body[:300]!r}"
    try:
        answer = contender.form.decode(body)
    except (KeyError, ValueError, TypeError) as exc:
        return f"an answer the peer's form cannot read ({exc!r}): {body[:300]!r}"
    expected = model.estimator.predict_proba(rows)
    if answer.shape != expected.shape:
        return f"answered shape {answer.shape}, predict_proba gives {expected.shape}"
    worst = float(np.max(np.abs(answer - expected)))
    return "" if worst <= TOLERANCE else f"probabilities differ from predict_proba by up to {worst:.3g}"


def left_out(contenders: list[Contender], model: BenchModel) -> list[Contender]:
    """The peers not to time: each that did not start, or whose answers differ (`problem` says why)."""
    for peer in (c for c in contenders if c.protocol == "peer" and not c.problem):
        peer.problem = wrong_answer(peer, model)
    dropped = [c for c in contenders if c.problem]
    for peer in dropped:
        print(f"peer {peer.label} on {model.name}, not timed: {peer.problem[:2000]}", flush=True)
    return dropped

"""The baseline of Outerbounds' triton-metaflow-starter-pack, rebuilt: a pickled model behind FastAPI.

    BASELINE_MODEL=model.pkl uvicorn fastapi_baseline:app --app-dir benchmarks --port 8000

As in the starter pack: uvicorn with its default settings, the model unpickled at startup, and
`GET /predict?data=<json list of features>` calling `model.predict` on one row per request, in
the event loop (an `async def` endpoint). `POST /predict_batch` is not in the starter pack: its
GET cannot carry thousands of rows, so batch scoring uses this JSON POST variant, same model call.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
from fastapi import FastAPI, Request


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    with open(os.environ["BASELINE_MODEL"], "rb") as file:
        app.state.model = pickle.load(file)
    yield


app = FastAPI(title="starter-pack sklearn API", lifespan=lifespan)


@app.get("/predict")
async def predict(data: str) -> dict[str, Any]:
    row = np.asarray(json.loads(data)).reshape(1, -1)
    return {"prediction": app.state.model.predict(row)[0].item()}


@app.post("/predict_batch")
async def predict_batch(request: Request) -> dict[str, Any]:
    # NOTE: json.loads, not a pydantic list[list[float]] body: validating 65,536 rows would dominate.
    rows = np.asarray(json.loads(await request.body()))
    return {"predictions": app.state.model.predict(rows).tolist()}

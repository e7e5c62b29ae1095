"""Ask a tritonflow node (or Triton) for fraud scores, then trace the answer back to its run.

python client.py [--url 127.0.0.1:8000] [--model fraud-classifier] [--rows 5]
"""

from __future__ import annotations

import argparse
import subprocess
import sys

import numpy as np
import tritonclient.http as httpclient


def predict(url: str, model: str, rows: np.ndarray) -> tuple[np.ndarray, str]:
    """Class probabilities for `rows` and the deployment that answered.

    tritonflow stamps the full deployment ID; stock Triton only names the model and version,
    which `tritonflow lineage` also resolves.
    """
    client = httpclient.InferenceServerClient(url)
    try:
        x = httpclient.InferInput("input__0", list(rows.shape), "FP32")
        x.set_data_from_numpy(np.ascontiguousarray(rows, dtype=np.float32))
        result = client.infer(model, [x])
    finally:
        client.close()
    response = result.get_response()
    stamp = (response.get("parameters") or {}).get("deployment_id")
    return result.as_numpy("output__0"), stamp or f"{response['model_name']}:{response['model_version']}"


def _rows(text: str) -> int:
    """1-200: the client scores rows of a 200-row synthetic sample."""
    if not text.isdigit() or not 1 <= int(text) <= 200:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number in 1-200")
    return int(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="127.0.0.1:8000")
    parser.add_argument("--model", default="fraud-classifier")
    parser.add_argument("--rows", type=_rows, default=5, help="transactions to score (1-200)")
    parser.add_argument("--repository", help="for the lineage lookup (default $TRITONFLOW_REPOSITORY)")
    args = parser.parse_args()

    from fraud_data import synthetic_transactions

    rows = synthetic_transactions(200, seed=42).drop(columns=["Class"]).to_numpy()[: args.rows]
    scores, deployment_id = predict(args.url, args.model, rows)
    for i, p in enumerate(scores):
        print(f"row {i}: P(fraud) = {p[-1]:.4f}")
    print(f"answered by {deployment_id}\n")
    lookup = [sys.executable, "-m", "tritonflow", "lineage", deployment_id]
    lookup += ["--repository", args.repository] if args.repository else []
    return subprocess.run(lookup).returncode


if __name__ == "__main__":
    raise SystemExit(main())

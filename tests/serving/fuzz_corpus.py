"""The fuzz test's corpus: seeded mutations of valid KServe v2 requests to the two models it serves.

Families (a Corpus method each, weighted by FAMILIES): valid JSON requests, the seeds of every
mutation; JSON trees with a hostile value put anywhere; byte-level damage; the binary extension with
wrong sizes, shapes and framing; content encodings (a gzip bomb among them); Content-Length beyond
the node's limit; hostile URLs (model names, versions, routes, methods). Every choice comes from one
random.Random(seed), so a seed names the same requests on every machine.
"""

from __future__ import annotations

import gzip
import json
import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from conftest import Trained, data, forest, onnx_forest

MAX_BYTES = 1 << 20  # NOTE: the node's --max-request-bytes: the bomb and Content-Length families exceed it
MODELS: dict[str, tuple[Callable[[], Trained], str]] = {
    "fraud-classifier": (forest, "output__0"),
    "fraud-onnx": (onnx_forest, "probabilities"),
}
OUTPUTS = {"fraud-classifier": ["output__0"], "fraud-onnx": ["label", "probabilities"]}
# family of requests (a Corpus method) -> its weight in the corpus
FAMILIES = {
    "valid": 1,
    "json-tree": 5,
    "json-bytes": 3,
    "binary": 4,
    "encoding": 2,
    "content-length": 1,
    "url": 5,
}

# -- what the corpus is made of ----------------------------------------------------------------
HOSTILE_NAMES = [
    *("..", "%2e%2e", ".%2e", "%2e.", ".", "%2e", "...", "..%2F..%2Fetc", "%2F", "%2Fetc%2Fpasswd"),
    *("..%5C..%5Cwindows", "%00", "a%00b", "fraud-classifier%00", "fraud-classifier%2F..%2F..", "%00%2e%2e"),
    *("a" * 300, "x" * 256, "%C3%A9" * 150, "%FF%FE", "%", "%zz", "%25", "%20", "~root", ".hidden"),
    *("fraud-classifier%0A", "%0d%0aX-Injected:%201", "%09", "CON", "nul"),
]
HOSTILE_VERSIONS = [
    *("0", "-1", "01", "+1", "1.0", "1e3", "0x1", "1_0", "%C2%B2", "%201", "%00", "1%00", "..", "%2e%2e"),
    *("9" * 5000, "9" * 19, "9" * 20, "18446744073709551616", "one", "1" * 300),
]
# (the method the route takes, the URL): {m} a model name, {v} a version
ROUTES = [
    *(("POST", "/v2/models/{m}/infer"), ("POST", "/v2/models/{m}/versions/{v}/infer")),
    *(("GET", "/v2/models/{m}"), ("GET", "/v2/models/{m}/versions/{v}"), ("GET", "/v2/models/{m}/ready")),
    *(("GET", "/v2/models/{m}/versions/{v}/ready"), ("GET", "/v2/models/{m}/config")),
    *(("GET", "/v2/models/{m}/versions/{v}/config"), ("GET", "/v2/models/{m}/stats")),
    *(("GET", "/v2/models/{m}/versions/{v}/stats"), ("GET", "/v2/models/{m}/versions/{v}/lineage")),
    *(("POST", "/v2/repository/models/{m}/load"), ("POST", "/v2/repository/models/{m}/unload")),
    *(("POST", "/v2/repository/index"), ("GET", "/v2/health/live"), ("GET", "/v2/health/ready")),
    *(("GET", "/v2"), ("GET", "/metrics"), ("GET", "/v2/models/stats")),
    # no such routes
    *(("POST", "/v2/models/{m}/versions/{v}/infer/extra"), ("POST", "//v2//models//{m}//infer")),
    *(("POST", "/v2/models/{m}/versions//infer"), ("GET", "/"), ("GET", "/v2/"), ("GET", "/v2/models")),
    *(("POST", "/v2/models//infer"), ("POST", "/v2/models/{m}/infer?x=%00&y=%zz"), ("GET", "/%")),
    ("GET", "/%C3%A9"),
]
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]
DATATYPES = ["FP32", "FP64", "FP16", "INT8", "INT64", "UINT64", "BOOL", "BYTES", "fp32", "", "FP32 ", "FLOAT"]
RAW_LITERALS = [  # JSON text no Python value dumps to: put in place of a placeholder string
    *("1e400", "-1e400", "NaN", "Infinity", "-Infinity", "1" + "0" * 5000, "-" + "9" * 5000),
    *("0." + "0" * 3000 + "1", "[" * 3000 + "]" * 3000, '{"a":' * 2000 + "1" + "}" * 2000),
    *('"\\ud800"', '"\\u0000"', "tru", "01", "1.", ".5", "+1", "0x10"),
]
SHAPES: list[Any] = [
    *([1] * 65, [1] * 64 + [8], [-1, 8], [10**12, 10**12], [2**63 - 1, 8], [2**62, 2**62], [2**64, 8]),
    *([0, 8], [1, 8], [8], [1, 1, 8], [1.5, 8], ["1", "8"], [True, 8], [], None, "1,8"),
]
VALUES: list[Any] = [
    *(None, True, False, 0, -1, 1, 1.5, -0.0, 2**31, 2**63, 2**64 - 1, -(2**63), 1e308, -1e308, 1e39),
    *("", "1.5", "x" * 5000, "\u00fc\u2202\u00df\U0001f600\u202e", "\x00", "input__0", "FP32"),
    *([], {}, [None], [[]], {"a": {}}),
    *SHAPES,
]


def deep_list(depth: int) -> Any:
    value: Any = 0.5
    for _ in range(depth):
        value = [value]
    return value


@dataclass
class Fuzzed:
    """One request of the corpus; `hostile_url`: it must not be answered 2xx."""

    family: str
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    hostile_url: bool = False

    def __str__(self) -> str:
        path = self.path if len(self.path) <= 120 else f"{self.path[:117]}..."
        body = repr(self.body[:160]) + (f"... ({len(self.body)} bytes)" if len(self.body) > 160 else "")
        headers = {k: v if len(v) <= 40 else f"{v[:37]}..." for k, v in self.headers.items()}
        return f"[{self.family}] {self.method} {path} {headers} {body}"


class Corpus:
    """The seeded request generator: every choice comes from one random.Random(SEED)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.bomb = gzip.compress(b"0" * (32 * MAX_BYTES))  # NOTE: a few kB that inflate to 32 MB

    def next(self) -> Fuzzed:
        family = self.rng.choices(list(FAMILIES), weights=list(FAMILIES.values()))[0]
        return getattr(self, family.replace("-", "_"))()

    # -- valid requests, the seeds of every mutation ----------------------------------------------
    def rows(self) -> np.ndarray:
        n = self.rng.randint(1, 4)
        start = self.rng.randrange(len(data()[0]) - n)
        return data()[0][start : start + n]

    def document(self, model: str, x: np.ndarray, binary_input: bool = False) -> dict[str, Any]:
        tensor: dict[str, Any] = {"name": "input__0", "shape": list(x.shape), "datatype": "FP32"}
        if binary_input:
            tensor["parameters"] = {"binary_data_size": x.nbytes}
        else:
            tensor["data"] = x.ravel().tolist() if self.rng.random() < 0.5 else x.tolist()
        doc: dict[str, Any] = {"inputs": [tensor]}
        if self.rng.random() < 0.3:
            doc["id"] = self.rng.choice(["req-1", "", "\u00e9\u00e8", "x" * 200])
        if self.rng.random() < 0.3:
            doc["parameters"] = {"binary_data_output": self.rng.random() < 0.5}
        if self.rng.random() < 0.3:
            names = self.rng.sample(OUTPUTS[model], self.rng.randint(1, len(OUTPUTS[model])))
            doc["outputs"] = [
                {"name": n, "parameters": {"binary_data": self.rng.random() < 0.5}} for n in names
            ]
        return doc

    def infer_path(self, model: str) -> str:
        return (
            f"/v2/models/{model}/infer" if self.rng.random() < 0.7 else f"/v2/models/{model}/versions/1/infer"
        )

    def valid(self) -> Fuzzed:
        model = self.rng.choice(list(MODELS))
        body = json.dumps(self.document(model, self.rows())).encode()
        return Fuzzed("valid", "POST", self.infer_path(model), body=body)

    # -- mutations ---------------------------------------------------------------------------------
    def hostile_value(self) -> Any:
        pick = self.rng.random()
        if pick < 0.15:
            return f"@@raw{self.rng.randrange(len(RAW_LITERALS))}@@"
        if pick < 0.25:
            return deep_list(self.rng.choice([50, 300, 700]))  # NOTE: deeper ones are raw literals
        if pick < 0.35:
            return self.rng.choice(DATATYPES)
        return self.rng.choice(VALUES)

    def dumps(self, doc: Any) -> bytes:
        """JSON text, with each raw placeholder replaced by its literal (deep values dumped by hand)."""
        text = json.dumps(doc, ensure_ascii=self.rng.random() < 0.5)
        for i, literal in enumerate(RAW_LITERALS):
            text = text.replace(f'"@@raw{i}@@"', literal)
        return text.encode("utf-8", "surrogatepass")

    def mutate_tree(self, doc: Any) -> None:
        """Replace, delete, add or wrap one value somewhere in the document."""
        slots: list[tuple[Any, Any]] = []

        def walk(node: Any, depth: int) -> None:
            if depth > 6:
                return
            items = (
                node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
            )
            for key, child in list(items)[:12]:
                slots.append((node, key))
                walk(child, depth + 1)

        walk(doc, 0)
        if not slots:  # NOTE: earlier mutations may have left {} (or a scalar in a list)
            doc["inputs"] = self.hostile_value()
            return
        node, key = self.rng.choice(slots)
        action = self.rng.random()
        if action < 0.6:
            node[key] = self.hostile_value()
        elif action < 0.75 and isinstance(node, dict):
            del node[key]
        elif action < 0.9 and isinstance(node, dict):
            node[self.rng.choice(["shape", "datatype", "data", "parameters", "name", "zzz", ""])] = (
                self.hostile_value()
            )
        else:
            node[key] = [node[key]] * self.rng.randint(1, 3)

    def json_tree(self) -> Fuzzed:
        model = self.rng.choice(list(MODELS))
        doc = self.document(model, self.rows())
        for _ in range(self.rng.randint(1, 3)):
            self.mutate_tree(doc)
        return Fuzzed("json-tree", "POST", self.infer_path(model), body=self.dumps(doc))

    def mutate_bytes(self, raw: bytes) -> bytes:
        body = bytearray(raw)
        for _ in range(self.rng.randint(1, 4)):
            if not body:
                break
            at = self.rng.randrange(len(body))
            action = self.rng.random()
            if action < 0.35:
                body[at] = self.rng.randrange(256)
            elif action < 0.5:
                del body[at:]
            elif action < 0.65:
                body[at:at] = bytes(self.rng.randrange(256) for _ in range(self.rng.randint(1, 8)))
            elif action < 0.8:
                body[at:at] = body[at : at + self.rng.randint(1, 64)]
            else:
                del body[at : at + self.rng.randint(1, 16)]
        return bytes(body)

    def json_bytes(self) -> Fuzzed:
        valid = self.valid()
        return Fuzzed("json-bytes", "POST", valid.path, body=self.mutate_bytes(valid.body))

    def binary(self) -> Fuzzed:
        model = self.rng.choice(list(MODELS))
        x = self.rows()
        doc = self.document(model, x, binary_input=True)
        payload = x.tobytes()
        pick = self.rng.random()
        if pick < 0.3:
            doc["inputs"][0]["parameters"]["binary_data_size"] = self.rng.choice(
                [-1, 0, x.nbytes - 1, x.nbytes + 4, 2**63, 2**64, 1.5, "32", None, True, x.nbytes * 2]
            )
        elif pick < 0.45:
            doc["inputs"][0]["shape"] = self.rng.choice(SHAPES)
        elif pick < 0.55:
            self.mutate_tree(doc)
        header = self.dumps(doc)
        n, pick = len(header), self.rng.random()
        length = str(n)
        if pick < 0.3:
            length = str(self.rng.choice([n - 1, n + 1, 0, -1, -n, 10**20, n + len(payload) + 1]))
        elif pick < 0.4:
            length = self.rng.choice(["abc", "", " 12", "1e3", "9" * 5000, "0x10", "\u00b2", "-0", "+5"])
        body = header + payload
        if self.rng.random() < 0.3:
            body = self.mutate_bytes(body)
        return Fuzzed(
            "binary", "POST", self.infer_path(model), {"Inference-Header-Content-Length": length}, body
        )

    def encoding(self) -> Fuzzed:
        valid = self.valid()
        encoding = self.rng.choice(
            ["gzip", "deflate", "GZIP", "br", "gzip, gzip", "x" * 300, "identity", "zstd"]
        )
        pick = self.rng.random()
        if pick < 0.3:
            body = valid.body  # NOTE: declared compressed, sent as is
        elif pick < 0.5:
            body = gzip.compress(valid.body)[: self.rng.randint(0, 40)]
        elif pick < 0.6:
            body = self.bomb
        elif pick < 0.75:
            body = zlib.compress(self.mutate_bytes(valid.body))
        else:
            body = self.mutate_bytes(gzip.compress(valid.body))
        return Fuzzed("encoding", "POST", valid.path, {"Content-Encoding": encoding}, body)

    def content_length(self) -> Fuzzed:
        valid = self.valid()
        # NOTE: past 2**64 - 1 it is no number to the HTTP parser: uvicorn answers it, not the node
        declared = str(self.rng.randint(MAX_BYTES + 1, 2**64 - 1))
        return Fuzzed("content-length", "POST", valid.path, {"Content-Length": declared}, valid.body)

    def url(self) -> Fuzzed:
        method, template = self.rng.choice(ROUTES)
        if self.rng.random() < 0.25:
            method = self.rng.choice(METHODS)
        hostile = False
        model = self.rng.choice([*MODELS, "nope"])
        if "{m}" in template and (self.rng.random() < 0.6 or "/repository/models/" in template):
            # NOTE: never a real model's load or unload: the checks need both models served
            model, hostile = self.rng.choice(HOSTILE_NAMES), True
        version = "1"
        if "{v}" in template and self.rng.random() < 0.6:
            version, hostile = self.rng.choice(HOSTILE_VERSIONS), True
        path = template.replace("{m}", model).replace("{v}", version)
        body = b""
        if method in ("POST", "PUT", "PATCH") and self.rng.random() < 0.8:
            body = self.valid().body if self.rng.random() < 0.8 else self.mutate_bytes(self.valid().body)
        return Fuzzed("url", method, path, {}, body, hostile)

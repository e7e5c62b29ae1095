"""A ServingError's gRPC status: the code Triton 24.10's gRPC answers for the same case.

Measured on real Triton (tests/triton/test_triton_grpc.py): a client's mistake is INVALID_ARGUMENT,
an unknown model or version NOT_FOUND, a load or unload the model control mode refuses UNAVAILABLE,
a restricted API called without its header UNAVAILABLE ("This protocol is restricted..."). Other
errors follow their HTTP status.
"""

from __future__ import annotations

import grpc

from tritonflow.serving.errors import Forbidden, ModelControlDisabled, ServingError

# NOTE: Triton answers these two with UNAVAILABLE where its HTTP answers a 4xx; clients match the codes
BY_CLASS: dict[type[ServingError], grpc.StatusCode] = {
    Forbidden: grpc.StatusCode.UNAVAILABLE,
    ModelControlDisabled: grpc.StatusCode.UNAVAILABLE,
}
BY_HTTP_STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ALREADY_EXISTS,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.UNAVAILABLE,
    501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,
}


def status_code(exc: ServingError) -> grpc.StatusCode:
    code = BY_CLASS.get(type(exc))
    if code is not None:
        return code
    return BY_HTTP_STATUS.get(exc.status, grpc.StatusCode.INTERNAL)


def trailing_metadata(exc: ServingError) -> tuple[tuple[str, str], ...]:
    """The stamp of the version that refused the call, once it was resolved."""
    return () if exc.stamp is None else (("x-deployment-id", exc.stamp["deployment_id"]),)

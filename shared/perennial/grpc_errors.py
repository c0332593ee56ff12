"""gRPC plumbing both services share: one interceptor maps domain errors to status
codes, and one function sets the standard health status.

Handlers raise `perennial.errors` exceptions; nothing else in a service picks
status codes. Anything that is not a domain error is a bug: the reply says
INTERNAL with a generic message, and the details go to the log only.
"""

from __future__ import annotations

import logging

import grpc
from grpc_health.v1 import health, health_pb2

from perennial.errors import (
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidInput,
    NotFound,
    NotReady,
    ResourceExhausted,
    Unauthenticated,
)

log = logging.getLogger(__name__)
STATUS = {
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    NotReady: grpc.StatusCode.UNAVAILABLE,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    DataLoss: grpc.StatusCode.DATA_LOSS,
}
INTERNAL_MESSAGE = "internal error; the server log has the details"
HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.DATA_LOSS: 500,  # as google.rpc maps it: the server's data, not the request
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


def status_of(error: BaseException | None) -> grpc.StatusCode:
    """The status code an exception becomes (OK for None)."""
    if error is None:
        return grpc.StatusCode.OK
    for kind, code in STATUS.items():
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.INTERNAL


def http_status_of(error: BaseException | None) -> int:
    """The HTTP status an exception becomes (200 for None): its gRPC code's HTTP twin."""
    return HTTP_STATUS.get(status_of(error), 500)


class DomainErrorInterceptor(grpc.ServerInterceptor):
    """Wraps every unary-unary handler: domain error → its status and message; else INTERNAL."""

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler.request_streaming or handler.response_streaming:
            return handler  # health Watch and reflection streams raise no domain errors
        behaviour, method = handler.unary_unary, handler_call_details.method

        def guarded(request, context):
            try:
                return behaviour(request, context)
            except tuple(STATUS) as error:
                context.abort(status_of(error), str(error))
            except Exception as error:
                code = context.code()
                if code not in (None, grpc.StatusCode.OK):
                    # the handler chose a status (an abort, or UNIMPLEMENTED from a generated
                    # base class): answer it, without the traceback an escaping exception logs
                    context.abort(code, context.details() or str(error))
                log.exception("internal error", extra={"fields": {"method": method}})
                context.abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)

        return handler._replace(unary_unary=guarded)


def set_health(health_servicer: health.HealthServicer, service_name: str, serving: bool) -> None:
    """Report SERVING or NOT_SERVING for the server as a whole ("") and for `service_name`."""
    status = (
        health_pb2.HealthCheckResponse.SERVING
        if serving
        else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    for name in ("", service_name):
        health_servicer.set(name, status)

"""Domain errors raised by the data planes; the gRPC layer maps each to one status code."""


class InvalidInput(ValueError):
    """The request is malformed; the message says what to fix (INVALID_ARGUMENT)."""


class NotFound(LookupError):
    """No such adapter or version (NOT_FOUND)."""


class NotReady(RuntimeError):
    """The service cannot answer yet, e.g. the backbone is still loading (UNAVAILABLE)."""

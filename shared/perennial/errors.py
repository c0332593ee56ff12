"""Domain errors raised by the data planes; the gRPC layer maps each to one status code."""


class InvalidInput(ValueError):
    """The request is malformed; the message says what to fix (INVALID_ARGUMENT)."""


class NotFound(LookupError):
    """No such adapter or version (NOT_FOUND)."""


class NotReady(RuntimeError):
    """The service cannot answer yet, e.g. the backbone is still loading (UNAVAILABLE)."""


class ResourceExhausted(RuntimeError):
    """The server is at a limit, e.g. its request queue is full; retry later (RESOURCE_EXHAUSTED)."""


class DeadlineExceeded(RuntimeError):
    """The caller's deadline passed before the work was done; the work was skipped (DEADLINE_EXCEEDED)."""


class Unauthenticated(PermissionError):
    """The caller did not present valid credentials (UNAUTHENTICATED)."""


class FailedPrecondition(RuntimeError):
    """The request is valid but the system is not in a state to answer it, e.g. a snapshot made
    with another backbone runtime than this replica's (FAILED_PRECONDITION)."""


class DataLoss(RuntimeError):
    """Stored data is corrupted, e.g. a snapshot version fails verification (DATA_LOSS).

    Not retryable and not the caller's mistake: the bytes will not heal by asking again.
    """

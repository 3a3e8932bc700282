"""A small network of "hosts" made of Linux network namespaces, for the multi-host test.

A namespace ``<prefix>-sw`` holds a bridge (the switch); each host is a namespace with one
veth pair, ``eth0`` inside the host, the other end on the switch, and an address in
:data:`SUBNET`.  Nothing is added to the namespace the test runs in: every address and link
lives inside namespaces this module creates, and :meth:`Network.close` deletes them.
"""

from __future__ import annotations

import subprocess
import uuid
from dataclasses import dataclass, field

#: Private addresses of the hosts (inside the namespaces only).
SUBNET = "10.77.0"


def _ip(*args: str, netns: str | None = None) -> None:
    command = ["ip", *(["-n", netns] if netns else []), *args]
    subprocess.run(command, check=True, capture_output=True, text=True)


def netns_permitted() -> str | None:
    """``None`` if this process may create network namespaces, else why not."""
    name = f"tfprobe-{uuid.uuid4().hex[:6]}"
    try:
        _ip("netns", "add", name)
    except FileNotFoundError:
        return "the ip command is missing (apt-get install iproute2)"
    except subprocess.CalledProcessError as exc:
        return f"ip netns is not permitted here: {exc.stderr.strip()}"
    _ip("netns", "del", name)
    return None


@dataclass
class Network:
    """Hosts on one switch.

    Parameters:
      prefix(str): Start of every namespace and link name (unique per test run).
    """

    prefix: str = field(default_factory=lambda: f"tf{uuid.uuid4().hex[:5]}")
    hosts: dict[str, str] = field(default_factory=dict)  # host name -> address

    def __post_init__(self) -> None:
        self.switch = f"{self.prefix}-sw"
        _ip("netns", "add", self.switch)
        _ip("link", "add", "br0", "type", "bridge", netns=self.switch)
        _ip("link", "set", "br0", "up", netns=self.switch)

    def netns(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    def add_host(self, host: str, number: int) -> str:
        """A host with address ``SUBNET.number``; returns the address."""
        netns, address = self.netns(host), f"{SUBNET}.{number}"
        _ip("netns", "add", netns)
        _ip("link", "set", "lo", "up", netns=netns)
        port = f"p{number}"  # the switch side
        _ip("link", "add", "eth0", "type", "veth", "peer", "name", port, "netns", self.switch, netns=netns)
        _ip("addr", "add", f"{address}/24", "dev", "eth0", netns=netns)
        _ip("link", "set", "eth0", "up", netns=netns)
        _ip("link", "set", port, "master", "br0", netns=self.switch)
        _ip("link", "set", port, "up", netns=self.switch)
        self.hosts[host] = address
        return address

    def cut(self, host: str) -> None:
        """``ip link set eth0 down`` on ``host``: it is off the network."""
        _ip("link", "set", "eth0", "down", netns=self.netns(host))

    def command(self, host: str, *command: str, hostname: str | None = None) -> list[str]:
        """``command`` run on ``host`` (with ``hostname`` as its host name: own UTS namespace)."""
        prefix = ["ip", "netns", "exec", self.netns(host)]
        if hostname is None:
            return [*prefix, *command]
        script = 'hostname "$0" && exec "$@"'
        return [*prefix, "unshare", "--uts", "sh", "-c", script, hostname, *command]

    def close(self) -> None:
        for netns in [*(self.netns(host) for host in self.hosts), self.switch]:
            subprocess.run(["ip", "netns", "del", netns], capture_output=True)

"""Connection attempts of a process tree, read from `strace -f` output.

Inside a network namespace with only loopback up, a connection to any other address fails with
ENETUNREACH before a packet exists, so nothing but the system call shows it. strace sees the call
from every process and thread of the tree, native code and forked children included; this module
turns its log into the attempts that left loopback, each named by its process and command line.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass

# What `strace` is asked to show: process creation (to name every thread's process and command)
# and every call that can carry a destination address.
TRACED_CALLS = ("execve", "clone", "clone3", "fork", "vfork", "connect", "sendto", "sendmsg",
                "sendmmsg")  # fmt: skip
DNS_PORT = 53

_LINE = re.compile(r"^(\d+)\s+(.*)$")
_RESUMED = re.compile(r"^<\.\.\. (\w+) resumed>(.*)$")
_CALL = re.compile(r"^(\w+)\((.*)\)\s+=\s+(.*)$")
_INET = re.compile(r'sa_family=AF_INET, sin_port=htons\((\d+)\), sin_addr=inet_addr\("([^"]+)"\)')
_INET6 = re.compile(
    r'sa_family=AF_INET6, sin6_port=htons\((\d+)\),.*?inet_pton\(AF_INET6, "([^"]+)"'
)
_ARGV = re.compile(r'^"(?:[^"\\]|\\.)*", \[(.*?)\](?:\.\.\.)?, ')
_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"(\.\.\.)?')


@dataclass(frozen=True)
class Connection:
    """One system call that addressed a host outside loopback (or DNS anywhere)."""

    pid: int  # the process (thread group) that made the call
    command: str  # its command line at the time, as far as the trace shows it
    call: str  # connect, sendto, sendmsg, sendmmsg
    address: str
    port: int
    result: str  # what the call returned, e.g. "-1 ENETUNREACH (Network is unreachable)"

    def asdict(self) -> dict[str, object]:
        return asdict(self)


def is_loopback(address: str) -> bool:
    """127.0.0.0/8, ::1, IPv4-mapped loopback, or the unspecified address (Linux sends it to lo)."""
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback or ip.is_unspecified


def _argv(arguments: str) -> str:
    """The command line of an execve call's arguments, as strace printed them."""
    match = _ARGV.match(arguments)
    if not match:
        return ""
    parts = []
    for text, cut in _STRING.findall(match.group(1)):
        parts.append(text.encode().decode("unicode_escape", "replace") + ("..." if cut else ""))
    return " ".join(parts)


def _destinations(call: str, arguments: str) -> list[tuple[str, int]]:
    if call not in ("connect", "sendto", "sendmsg", "sendmmsg"):
        return []
    found = [(address, int(port)) for port, address in _INET.findall(arguments)]
    found += [(address, int(port)) for port, address in _INET6.findall(arguments)]
    return found


class _Processes:
    """Which process each thread belongs to, and each process's command line over time.

    Built from the whole log first: with `-f`, a new thread or child can log its own calls before
    the call that created it returns in its parent's line.
    """

    def __init__(self) -> None:
        self.leader: dict[int, int] = {}  # thread id -> process id (thread group)
        self.parent: dict[int, int] = {}  # process id -> the process that forked it
        self.execs: dict[int, list[tuple[int, str]]] = {}  # process id -> (line, command line)

    def process(self, tid: int) -> int:
        seen = set()
        while tid in self.leader and self.leader[tid] != tid and tid not in seen:
            seen.add(tid)
            tid = self.leader[tid]
        return tid

    def command(self, pid: int, at: int) -> str:
        """The command line of process `pid` at line `at` (its parent's before it executes)."""
        seen = set()
        while pid not in seen:
            seen.add(pid)
            execs = self.execs.get(pid, [])
            before = [command for line, command in execs if line <= at]
            if before:
                return before[-1]
            if execs and pid not in self.parent:
                return execs[0][1]
            if pid not in self.parent:
                return ""
            pid = self.process(self.parent[pid])
        return ""


def _complete_calls(lines: Iterable[str]) -> Iterable[tuple[int, str]]:
    """(thread id, whole call) for each line, joining `<unfinished ...>` with its resumption."""
    pending: dict[int, str] = {}
    for raw in lines:
        match = _LINE.match(raw.rstrip("\n"))
        if not match:
            continue
        tid, rest = int(match.group(1)), match.group(2)
        if rest.endswith("<unfinished ...>"):
            pending[tid] = rest[: -len("<unfinished ...>")].rstrip()
            continue
        resumed = _RESUMED.match(rest)
        if resumed:
            rest = pending.pop(tid, resumed.group(1) + "(") + resumed.group(2)
        yield tid, rest


@dataclass(frozen=True)
class TraceSummary:
    """What a trace shows: the attempts that left loopback, and how many processes ran."""

    connections: list[Connection]
    processes: int


def read_trace(lines: Iterable[str], allowed_dns: tuple[str, int] | None = None) -> TraceSummary:
    """Every call in the log that addressed a non-loopback host, or port 53 other than
    `allowed_dns` (the recorder, whose queries it reports itself)."""
    processes = _Processes()
    attempts: list[tuple[int, int, str, str, int, str]] = []
    for index, (tid, text) in enumerate(_complete_calls(lines)):
        call = _CALL.match(text)
        if not call:
            continue
        name, arguments, result = call.groups()
        failed = result.startswith(("-1 ", "?"))
        if name == "execve":
            if not failed:
                processes.execs.setdefault(tid, []).append((index, _argv(arguments)))
        elif name in ("clone", "clone3", "fork", "vfork"):
            child = re.match(r"^(\d+)", result)
            if child and not failed:
                if "CLONE_THREAD" in arguments:
                    processes.leader[int(child.group(1))] = tid
                else:
                    processes.parent[int(child.group(1))] = tid
        else:
            for address, port in _destinations(name, arguments):
                dns_elsewhere = port == DNS_PORT and (address, port) != allowed_dns
                if not is_loopback(address) or dns_elsewhere:
                    attempts.append((index, tid, name, address, port, result))
    found = []
    for index, tid, name, address, port, result in attempts:
        pid = processes.process(tid)
        found.append(Connection(pid, processes.command(pid, index), name, address, port, result))
    return TraceSummary(found, processes=1 + len(processes.parent))

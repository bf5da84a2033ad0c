"""A DNS server that answers every question with NXDOMAIN and records who asked what.

`visionops doctor offline` points `/etc/resolv.conf` at it inside a network namespace, so any
name lookup of the process tree under test (Python, a native library, a forked child, a Go
binary) lands here, as it would land at a plant's own DNS server on an air-gapped network. NXDOMAIN
is that server's honest answer for an internet name, and it makes the resolver give up at once.

The asking process is found while it still waits for the answer: its socket's inode from
`/proc/net/{udp,tcp}[6]` (this process shares the namespace), then the process holding that inode.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import socket
import struct
import sys
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

NXDOMAIN = 3
_QTYPES = {1: "A", 2: "NS", 5: "CNAME", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA", 33: "SRV",
           64: "SVCB", 65: "HTTPS"}  # fmt: skip


@dataclass(frozen=True)
class DnsQuery:
    """One question the recorder received."""

    name: str
    qtype: str
    transport: str  # udp or tcp
    pid: int | None  # the process that asked, when it could be found
    command: str  # its command line ("" when it could not be found)

    def asdict(self) -> dict[str, object]:
        return asdict(self)


def parse_question(message: bytes) -> tuple[int, str, str, int]:
    """(id, name, qtype, end of the question) of a DNS query; ValueError if it is not one."""
    if len(message) < 12:
        raise ValueError("shorter than a DNS header")
    query_id, _flags, qdcount = struct.unpack("!HHH", message[:6])
    if qdcount < 1:
        raise ValueError("no question")
    labels, at = [], 12
    while True:
        if at >= len(message):
            raise ValueError("truncated name")
        length = message[at]
        at += 1
        if length == 0:
            break
        if length & 0xC0:
            raise ValueError("compressed name in a question")
        labels.append(message[at : at + length].decode("ascii", "replace"))
        at += length
    if at + 4 > len(message):
        raise ValueError("truncated question")
    qtype = struct.unpack("!H", message[at : at + 2])[0]
    return query_id, ".".join(labels), _QTYPES.get(qtype, str(qtype)), at + 4


def nxdomain_reply(message: bytes, question_end: int) -> bytes:
    """The answer to `message`: same id and question, NXDOMAIN, no records."""
    query_id, flags = struct.unpack("!HH", message[:4])
    # QR=1, the query's opcode and RD bit, RA=1, RCODE=NXDOMAIN
    reply_flags = 0x8000 | (flags & 0x7900) | 0x0080 | NXDOMAIN
    header = struct.pack("!HHHHHH", query_id, reply_flags, 1, 0, 0, 0)
    return header + message[12:question_end]


def _hex_address(address: str, family: int) -> str:
    """An address as `/proc/net/*` writes it (32-bit words in host byte order)."""
    words = struct.unpack(
        "<4I" if family == socket.AF_INET6 else "<I", socket.inet_pton(family, address)
    )
    return "".join(f"{word:08X}" for word in words)


def socket_inode(protocol: str, address: str, port: int) -> int | None:
    """The inode of the local socket of `protocol` bound to (`address` or any address, `port`)
    in this network namespace: the socket a query came from."""
    hosts = {
        protocol: {_hex_address(address, socket.AF_INET), _hex_address("0.0.0.0", socket.AF_INET)},
        f"{protocol}6": {
            _hex_address(f"::ffff:{address}", socket.AF_INET6),
            _hex_address("::", socket.AF_INET6),
        },
    }
    for table, wanted in hosts.items():
        try:
            lines = Path(f"/proc/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) <= 9:
                continue
            host, _, hex_port = fields[1].partition(":")
            if int(hex_port, 16) == port and host in wanted:
                return int(fields[9])
    return None


def process_of_inode(inode: int) -> int | None:
    """The process that holds the socket `inode` open (a scan of /proc/*/fd)."""
    target = f"socket:[{inode}]"
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            for fd in os.scandir(f"/proc/{entry.name}/fd"):
                with contextlib.suppress(OSError):
                    if str(Path(fd.path).readlink()) == target:
                        return int(entry.name)
    return None


def command_line(pid: int | None) -> str:
    """A process's command line, as `ps` shows it ("" when it is gone)."""
    if pid is None:
        return ""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return " ".join(part.decode(errors="replace") for part in raw.split(b"\0") if part)


class DnsRecorder:
    """UDP and TCP DNS on `host`:`port`; `queries` holds what arrived, in order."""

    def __init__(self, host: str = "127.0.0.53", port: int = 53) -> None:
        self.host, self.port = host, port
        self.queries: list[DnsQuery] = []
        self._lock = threading.Lock()
        self._udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._udp.bind((host, port))
        self._tcp.bind((host, port))
        self._tcp.listen(16)
        self._stopping = threading.Event()
        self._threads = [
            threading.Thread(target=self._serve_udp, name="dns-udp", daemon=True),
            threading.Thread(target=self._serve_tcp, name="dns-tcp", daemon=True),
        ]

    def __enter__(self) -> DnsRecorder:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        for sock in (self._udp, self._tcp):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def save(self, path: Path) -> None:
        """What arrived, as a JSON list of queries (what `read_report` reads)."""
        with self._lock:
            queries = [query.asdict() for query in self.queries]
        path.write_text(json.dumps(queries, indent=1))

    def _record(self, message: bytes, transport: str, peer: tuple[str, int]) -> bytes | None:
        try:
            _, name, qtype, end = parse_question(message)
        except ValueError as error:
            log.warning("not a DNS query from %s:%s (%s)", peer[0], peer[1], error)
            return None
        inode = socket_inode(transport, peer[0], peer[1])
        pid = process_of_inode(inode) if inode is not None else None
        query = DnsQuery(name, qtype, transport, pid, command_line(pid))
        with self._lock:
            self.queries.append(query)
        log.info("DNS %s %s from process %s (%s)", qtype, name, pid, query.command or "?")
        return nxdomain_reply(message, end)

    def _serve_udp(self) -> None:
        while not self._stopping.is_set():
            try:
                message, peer = self._udp.recvfrom(4096)
            except OSError:
                return
            if self._stopping.is_set() or not peer:
                return  # woken by the shutdown in __exit__
            reply = self._record(message, "udp", peer)
            if reply is not None:
                with contextlib.suppress(OSError):
                    self._udp.sendto(reply, peer)

    def _serve_tcp(self) -> None:
        while not self._stopping.is_set():
            try:
                connection, peer = self._tcp.accept()
            except OSError:
                return
            with connection:
                connection.settimeout(5)
                with contextlib.suppress(OSError, struct.error):
                    (length,) = struct.unpack("!H", _read_exactly(connection, 2))
                    reply = self._record(_read_exactly(connection, length), "tcp", peer)
                    if reply is not None:
                        connection.sendall(struct.pack("!H", len(reply)) + reply)


def _read_exactly(connection: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = connection.recv(count - len(data))
        if not chunk:
            raise OSError("connection closed mid-message")
        data += chunk
    return data


def main(argv: Sequence[str] | None = None) -> int:
    """Record until SIGTERM, then write the queries to `--queries`: the recorder of a container's
    network namespace, started in it with `nsenter --net` (visionops/offline/containers.py).
    Prints `ready` once it listens."""
    parser = argparse.ArgumentParser(description="A DNS recorder that answers NXDOMAIN.")
    parser.add_argument("--host", default="127.0.0.53")
    parser.add_argument("--port", type=int, default=53)
    parser.add_argument("--queries", type=Path, required=True)
    arguments = parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with DnsRecorder(arguments.host, arguments.port) as recorder:
        print("ready", flush=True)
        while not stop.wait(0.5):
            pass
    recorder.save(arguments.queries)
    return 0


if __name__ == "__main__":
    sys.exit(main())

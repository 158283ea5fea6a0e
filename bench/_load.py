"""The load generator of the serving benchmark, run in a process of its own, the same for every server.

    echo '{"url": "http://127.0.0.1:8000/predict", "bodies": [...], "concurrency": 32, "requests": 20000}' \
        | python bench/_load.py
    echo '{..., "rate": 200, "seconds": 10}' | python bench/_load.py

Closed loop (no "rate"): `concurrency` keep-alive connections each send the next request as soon
as the last is answered, until `requests` are answered: the throughput. Open loop ("rate"):
requests are due at a steady rate and each one's latency counts from when it was due, so a
server that falls behind is charged for the wait (no coordinated omission). HTTP/1.1 over raw
asyncio streams with TCP_NODELAY, so the client costs little next to any server.
Prints one JSON line: requests, errors (non-200 or broken), statuses, seconds, rps, p50/p99 ms.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import sys
import time
from typing import Any
from urllib.parse import urlsplit


async def _response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one response; (status, keep the connection)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    if "content-length" in headers:
        await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return status, headers.get("connection", "").lower() != "close"


async def _run(spec: dict[str, Any]) -> dict[str, Any]:
    url = urlsplit(spec["url"])
    host, port, path = url.hostname or "127.0.0.1", url.port or 80, url.path or "/"
    payloads = [
        (
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body.encode())}\r\n\r\n{body}"
        ).encode()
        for body in (json.dumps(b) if not isinstance(b, str) else b for b in spec["bodies"])
    ]
    rate = spec.get("rate")
    total = int(spec["rate"] * spec["seconds"]) if rate else int(spec["requests"])
    concurrency = int(spec.get("concurrency", 32))
    counter = itertools.count()
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    broken = 0
    start = time.perf_counter() + 0.2

    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection(host, port)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return reader, writer

    async def worker() -> None:
        nonlocal broken
        reader, writer = await connect()
        while (i := next(counter)) < total:
            due = start + i / rate if rate else None
            if due is not None and (wait := due - time.perf_counter()) > 0:
                await asyncio.sleep(wait)
            sent = time.perf_counter()
            try:
                writer.write(payloads[i % len(payloads)])
                status, keep = await _response(reader)
            except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
                broken += 1
                writer.close()
                reader, writer = await connect()
                continue
            done = time.perf_counter()
            latencies.append(done - (due if due is not None else sent))
            statuses[status] = statuses.get(status, 0) + 1
            if not keep:
                writer.close()
                reader, writer = await connect()
        writer.close()

    await asyncio.sleep(max(0.0, start - time.perf_counter()))
    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds = time.perf_counter() - began
    ordered = sorted(latencies)

    def pct(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else float("nan")

    answered = sum(statuses.values())
    return {
        "requests": answered,
        "errors": broken + sum(n for s, n in statuses.items() if s != 200),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "seconds": seconds,
        "rps": answered / seconds if seconds else 0.0,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
    }


def main() -> None:
    spec = json.loads(sys.argv[1] if len(sys.argv) > 1 else sys.stdin.read())
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    print(json.dumps(asyncio.run(_run(spec))))


if __name__ == "__main__":
    main()

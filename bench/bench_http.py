"""HTTP on the binary port: requests/s per route and parser (in-process).

One server (``running_server``, memory store, ``--http-writes``) and one
client on the same event loop; the client writes ``--batch`` pipelined
keep-alive requests, then reads the responses, ``--requests`` in all per
scenario, ``--rounds`` times; the figure is the median of the rounds.  Server
and client share one core, so read the figures side by side (parser against
parser, route against route), not as absolute capacity.

    .venv/bin/python bench/bench_http.py [--requests 10000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from periodic_fast.job import Job
from periodic_fast.server.app import new_event_loop, parse_address
from periodic_fast.testing import running_server


async def _scenario(address: str, request: bytes, total: int, batch: int) -> float:
    addr = parse_address(address)
    reader, writer = await asyncio.open_connection(addr.host, addr.port)
    start = time.perf_counter()
    done = 0
    while done < total:
        n = min(batch, total - done)
        writer.write(request * n)
        for _ in range(n):
            head = await reader.readuntil(b"\r\n\r\n")
            i = head.index(b"Content-Length: ") + 16
            length = int(head[i : head.index(b"\r\n", i)])
            await reader.readexactly(length)
        done += n
    elapsed = time.perf_counter() - start
    writer.close()
    return total / elapsed


def _requests(funcs: int) -> dict[str, bytes]:
    host = b"Host: localhost\r\n"
    body = b"name=j&args=payload"
    return {
        "GET /healthz": b"GET /healthz HTTP/1.1\r\n" + host + b"\r\n",
        "GET /FUNC": b"GET /f1 HTTP/1.1\r\n" + host + b"\r\n",
        f"GET / ({funcs} funcs)": b"GET / HTTP/1.1\r\n" + host + b"\r\n",
        "POST /FUNC (submit)": (
            b"POST /f1 HTTP/1.1\r\n" + host + b"Content-Length: %d\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n\r\n%s"
        )
        % (len(body), body),
        f"GET /metrics ({funcs} funcs)": b"GET /metrics HTTP/1.1\r\n" + host + b"\r\n",
    }


async def _main(args: argparse.Namespace) -> None:
    for parser in ("httptools", "h11"):
        async with running_server(
            unix=False, http_writes=True, http_options={"parser": parser}
        ) as srv:
            sched = srv.scheduler
            for i in range(args.funcs):
                sched.submit(Job(b"f%d" % i, b"x"), time.time())  # type: ignore[attr-defined]
            for name, req in _requests(args.funcs).items():
                heavy = "metrics" in name or name.startswith("GET / (")
                total = max(args.requests // 50, 50) if heavy else args.requests
                rates = [
                    await _scenario(srv.addresses[0], req, total, args.batch)
                    for _ in range(args.rounds)
                ]
                print(
                    f"{parser:9s}  {name:26s} {statistics.median(rates):>10,.0f} req/s"
                    f"  (min {min(rates):,.0f}, max {max(rates):,.0f})"
                )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--funcs", type=int, default=100)
    ap.add_argument("--loop", default="auto")
    args = ap.parse_args()
    loop = new_event_loop(args.loop)
    try:
        loop.run_until_complete(_main(args))
    finally:
        loop.close()


if __name__ == "__main__":
    main()

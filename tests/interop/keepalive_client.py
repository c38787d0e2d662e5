"""The Loosh validator's connection pool against a miner, at the edge of its keep-alive expiry.

The validator (1.2.8, availability_worker.py and main.py) talks to miners through one
``httpx.AsyncClient(timeout=..., limits=httpx.Limits(max_connections=100,
max_keepalive_connections=50))``, whose pool drops a connection idle for 5 s (httpx's default
``keepalive_expiry``). A request that reuses a connection the server closed at that same moment
fails with ``RemoteProtocolError``; the validator records no answer and does not retry.

Each task here sends ``GET /availability`` (with the ``validator-hotkey`` header), then idles a
random 4.9-5.1 s and sends again on whatever connection the pool hands it, for ``--seconds``.
The last line printed is JSON: requests, failed (with the first errors), and how many requests
reused a pooled connection (counted with httpcore's trace hook: a request that opened no TCP
connection reused one).
"""

import argparse
import asyncio
import json
import random
import sys
import time

import httpx


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--hotkey", required=True)
    parser.add_argument("--seconds", type=float, default=180.0)
    parser.add_argument("--tasks", type=int, default=16)
    args = parser.parse_args()

    counts = {"requests": 0, "failed": 0, "reused": 0, "connections": 0}
    errors: list[str] = []
    rng = random.Random(78)
    end = time.monotonic() + args.seconds

    async with httpx.AsyncClient(
        timeout=3.0, limits=httpx.Limits(max_connections=100, max_keepalive_connections=50)
    ) as client:

        async def one_task() -> None:
            while time.monotonic() < end:
                opened = []

                async def trace(event: str, info: dict) -> None:
                    if event == "connection.connect_tcp.complete":
                        opened.append(event)

                counts["requests"] += 1
                try:
                    res = await client.get(
                        f"{args.url}/availability",
                        headers={"validator-hotkey": args.hotkey},
                        extensions={"trace": trace},
                    )
                    if res.status_code != 200 or res.json().get("available") is not True:
                        counts["failed"] += 1
                        errors.append(f"{res.status_code} {res.text[:200]}")
                except httpx.HTTPError as e:
                    counts["failed"] += 1
                    errors.append(f"{type(e).__name__}: {e}")
                if opened:
                    counts["connections"] += 1
                else:
                    counts["reused"] += 1
                await asyncio.sleep(rng.uniform(4.9, 5.1))

        await asyncio.gather(*(one_task() for _ in range(args.tasks)))

    print(json.dumps({**counts, "errors": errors[:5]}))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

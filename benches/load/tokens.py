#!/usr/bin/env python3
"""Mint N distinct valid UC tokens (HS256, the claims ucgate signs, each of its own session) and
present each one once to a protected route of a running ucgate, over a few keep-alive HTTP/1.1
connections.

Used by benches/load.sh to measure ucgate's memory with N tokens in its validation cache.
Standard library only. The secret is read from the environment variable named by --key-env.
Prints one line: TOKENS_RESULT minted=N sent=N ok=N other=N seconds=S
"""

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import os
import sys
import time


def b64url(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def mint(secret: bytes, count: int, issuer: str, ttl: int) -> list[bytes]:
    header = b64url(json.dumps({"typ": "JWT", "alg": "HS256"}, separators=(",", ":")).encode())
    now = int(time.time())
    tokens = []
    for i in range(count):
        claims = {
            "iss": issuer,
            "sub": f"user{i}",
            "profile": "agent",
            "method": "password",
            "iat": now,
            "exp": now + ttl,
            "jti": os.urandom(16).hex(),
            "auth_time": now,
            "sid": os.urandom(16).hex(),
        }
        signing_input = header + b"." + b64url(json.dumps(claims, separators=(",", ":")).encode())
        signature = hmac.new(secret, signing_input, hashlib.sha256).digest()
        tokens.append(signing_input + b"." + b64url(signature))
    return tokens


async def read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length, chunked = 0, False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status


async def client(host, port, path, tokens, next_index, counts):
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while next_index[0] < len(tokens):
            token = tokens[next_index[0]]
            next_index[0] += 1
            writer.write(
                b"GET " + path + b" HTTP/1.1\r\nHost: " + host.encode()
                + b"\r\nX-Auth-Token: " + token + b"\r\n\r\n"
            )
            status = await read_response(reader)
            counts["ok" if 200 <= status < 300 else "other"] += 1
    finally:
        writer.close()


async def present(host, port, path, tokens, connections):
    next_index, counts = [0], {"ok": 0, "other": 0}
    await asyncio.gather(
        *(client(host, port, path.encode(), tokens, next_index, counts) for _ in range(connections))
    )
    return counts


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--path", default="/api/bench")
    p.add_argument("--count", type=int, default=100_000)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--key-env", default="UCGATE_SIGNING_KEY")
    p.add_argument("--issuer", default="ucgate")
    p.add_argument("--ttl", type=int, default=3600)
    args = p.parse_args()
    secret = os.environ.get(args.key_env, "").encode()
    if len(secret) < 32:
        print(f"tokens.py: {args.key_env} must hold the ucgate HS256 secret", file=sys.stderr)
        return 2
    tokens = mint(secret, args.count, args.issuer, args.ttl)
    start = time.monotonic()
    counts = asyncio.run(present(args.host, args.port, args.path, tokens, args.connections))
    seconds = time.monotonic() - start
    print(
        f"TOKENS_RESULT minted={len(tokens)} sent={counts['ok'] + counts['other']} "
        f"ok={counts['ok']} other={counts['other']} seconds={seconds:.1f}"
    )
    return 0 if counts["ok"] == len(tokens) else 1


if __name__ == "__main__":
    sys.exit(main())

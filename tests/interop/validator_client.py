#!/usr/bin/env python3
"""Validator-side interop client for the SN78 ("Loosh") miner.

This is NOT the Loosh validator's code. It is an independent client written from
the wire contract in ``shared/spec/PROTOCOL.md`` ("Fiber MLTS", Loosh dialect) that
talks to a running miner the way the Loosh validator (release 1.2.8) does:

* JSON bodies are produced with ``json.dumps`` (so ``timestamp`` is a Python float
  from ``time.time()`` and is rendered with ``repr``);
* the key-exchange signature is ``"0x" + sr25519_sign(f"{timestamp}.{nonce}.{hotkey}")``;
* ``encrypted_symmetric_key`` is lowercase hex of RSA-OAEP(SHA-256, MGF1-SHA-256) over
  the 44-byte Fernet key *text*;
* a challenge is a Fernet token of the challenge JSON with every key present, sent with
  ``x-fiber-validator-hotkey-ss58``, ``x-fiber-symmetric-key-uuid`` and
  ``Content-Type: application/octet-stream``.

Only the Python stdlib plus ``cryptography`` and ``substrate-interface`` are used.

Usage::

    python3 validator_client.py --url http://127.0.0.1:PORT --seed 0x<64 hex> \
        [--other-seed 0x<64 hex>] [--key-ttl 3] [--grace 1]

``--seed`` is the mini-secret of a validator hotkey the miner lets in; ``--other-seed``
(optional) one it must refuse. ``--key-ttl``/``--grace`` must match the miner's symmetric
key TTL and grace period. The miner must already be answering (``/availability`` true);
its model may emit gibberish, so only the structure of replies is checked. Each case
uses its own fresh handshake (the key TTL used under test is a few seconds), so the
miner's per-IP/per-hotkey rate limits must allow a few dozen key exchanges and
challenges per minute.

Output: one ``PASS name`` / ``FAIL name: reason`` line per case, then
``N passed, M failed``; the exit status is 0 only when nothing failed.
"""

import argparse
import concurrent.futures
import datetime
import http.client
import json
import os
import select
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from substrateinterface import Keypair, KeypairType

TIMEOUT_S = 60.0
FERNET_TTL_S = 3600
OVERSIZE_BYTES = 3 * 1024 * 1024
DEFAULT_MODEL = "Qwen/Qwen2.5-32B-Instruct"
FINISH_REASONS = ("stop", "length", "tool_calls")

KEY_EXCHANGE_OK = {"success": True, "message": "Symmetric key exchanged"}
RSA_FAILURE = {"detail": "Failed to exchange symmetric key"}
NOT_RECOGNIZED = {"detail": "Validator hotkey not recognized."}

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}


class CaseFailure(Exception):
    """A check inside a case did not hold."""


class Skip(Exception):
    """The case cannot run with the given arguments."""


def check(condition, message):
    if not condition:
        raise CaseFailure(message)


def is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def utc_iso(ts=None):
    """Naive ISO-8601 UTC, like the validator's datetime.utcnow().isoformat()."""
    moment = datetime.datetime.fromtimestamp(time.time() if ts is None else ts, datetime.timezone.utc)
    return moment.replace(tzinfo=None).isoformat()


# --------------------------------------------------------------------------- HTTP

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _lower(headers):
    return {k.lower(): v for k, v in headers.items()} if headers is not None else {}


def request(method, url, body=None, headers=None):
    """One HTTP exchange; error statuses are returned, not raised."""
    req = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
    try:
        with _OPENER.open(req, timeout=TIMEOUT_S) as resp:
            return resp.status, _lower(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        try:
            data = err.read()
        except (OSError, http.client.HTTPException):
            data = b""
        return err.code, _lower(err.headers), data


def get(url, headers=None):
    return request("GET", url, None, headers)


def post(url, body_bytes, headers):
    return request("POST", url, body_bytes, headers)


def post_streaming(url, body_bytes, headers):
    """POST a large body over a raw socket, stopping early if the server answers.

    Returns (status, headers, body, error). status is None when no status line could
    be read (the connection was reset); error is the send/receive error, if any.
    """
    parts = urllib.parse.urlsplit(url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    head = [
        f"POST {path} HTTP/1.1",
        f"Host: {parts.netloc}",
        f"Content-Length: {len(body_bytes)}",
        "Connection: close",
    ] + [f"{k}: {v}" for k, v in headers.items()]
    sock = socket.create_connection((parts.hostname, parts.port or 80), timeout=TIMEOUT_S)
    error = None
    try:
        try:
            sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
            view = memoryview(body_bytes)
            sent = 0
            while sent < len(body_bytes):
                readable, _, _ = select.select([sock], [], [], 0)
                if readable:
                    break  # the server answered (or closed) before taking the whole body
                _, writable, _ = select.select([], [sock], [], TIMEOUT_S)
                if not writable:
                    raise TimeoutError("server stopped reading the body")
                sent += sock.send(view[sent:sent + 65536])
        except (BrokenPipeError, ConnectionResetError) as err:
            error = err
        resp = http.client.HTTPResponse(sock, method="POST")
        try:
            resp.begin()
        except (OSError, http.client.HTTPException) as err:
            return None, {}, b"", error or err
        try:
            data = resp.read()
        except http.client.IncompleteRead as err:
            data = err.partial
        except OSError as err:
            data, error = b"", error or err
        return resp.status, _lower(resp.headers), data, error
    finally:
        sock.close()


def describe(status, body):
    text = body[:300].decode("utf-8", "replace") if isinstance(body, bytes) else str(body)[:300]
    return f"status {status}, body {text!r}"


def json_object(status, body):
    """Parse a JSON-object body or fail the case."""
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise CaseFailure(f"body is not JSON ({describe(status, body)})")
    check(isinstance(value, dict), f"body is not a JSON object ({describe(status, body)})")
    return value


def expect_status(resp, expected):
    status, _, body = resp[:3]
    allowed = expected if isinstance(expected, tuple) else (expected,)
    check(status in allowed, f"expected {' or '.join(map(str, allowed))}, got {describe(status, body)}")


def expect_detail(resp, expected):
    """Status must match and the body must be JSON with a string `detail`."""
    expect_status(resp, expected)
    body = json_object(resp[0], resp[2])
    check(isinstance(body.get("detail"), str) and body["detail"],
          f"no string `detail` in {describe(resp[0], resp[2])}")
    return body


def expect_exact(resp, status, expected_body):
    expect_status(resp, status)
    body = json_object(resp[0], resp[2])
    check(body == expected_body, f"expected body {expected_body!r}, got {body!r}")
    return body


# ----------------------------------------------------------------------- protocol

def rsa_encrypt_hex(pem, fernet_key_text):
    public_key = serialization.load_pem_public_key(pem.encode("ascii"))
    ciphertext = public_key.encrypt(
        fernet_key_text,
        padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None),
    )
    return ciphertext.hex()


class Session:
    """A symmetric key the validator believes it shares with the miner."""

    def __init__(self, sym_uuid, key):
        self.uuid = sym_uuid
        self.key = key
        self.fernet = Fernet(key)


def key_exchange_payload(kp, pem, *, timestamp=None, nonce=None, signed_message=None,
                         signature_prefix="0x", encrypted_hex=None):
    """Body for POST /fiber/key-exchange, as the validator builds it, plus its Session."""
    session = Session(str(uuid.uuid4()), Fernet.generate_key())
    timestamp = time.time() if timestamp is None else timestamp
    nonce = str(uuid.uuid4()) if nonce is None else nonce
    hotkey = kp.ss58_address
    message = f"{timestamp}.{nonce}.{hotkey}" if signed_message is None else signed_message
    body = {
        "encrypted_symmetric_key": rsa_encrypt_hex(pem, session.key) if encrypted_hex is None else encrypted_hex,
        "symmetric_key_uuid": session.uuid,
        "timestamp": timestamp,
        "nonce": nonce,
        "signature": signature_prefix + kp.sign(message).hex(),
        "validator_hotkey_ss58": hotkey,
    }
    return json.dumps(body).encode("utf-8"), session


def build_challenge(*, messages=None, prompt=None, tools=None, tool_choice=None, max_tokens=16,
                    temperature=0.7, top_p=0.95, correlation_id=None, metadata=None):
    """Challenge JSON with every key present, in the validator's order."""
    if messages and prompt is None:
        users = [m.get("content") for m in messages if m.get("role") == "user"]
        prompt = users[-1] if users else None
    challenge = {
        "prompt": prompt,
        "messages": messages,
        "tools": tools,
        "tool_choice": tool_choice if tools else None,
        "model": DEFAULT_MODEL,
        "max_tokens": max_tokens,
        "temperature": temperature,
        "top_p": top_p,
        "correlation_id": correlation_id,
        "created_at": utc_iso(),
    }
    if metadata is not None:
        challenge["metadata"] = metadata
    return challenge


def encode(challenge):
    return challenge if isinstance(challenge, bytes) else json.dumps(challenge).encode("utf-8")


def check_tool_calls(tool_calls):
    if tool_calls is None:
        return
    check(isinstance(tool_calls, list), f"tool_calls is neither null nor a list: {tool_calls!r}")
    for call in tool_calls:
        check(isinstance(call, dict), f"tool call is not an object: {call!r}")
        check(isinstance(call.get("id"), str), f"tool call without string id: {call!r}")
        check(call.get("type") == "function", f"tool call type is not 'function': {call!r}")
        function = call.get("function")
        check(isinstance(function, dict), f"tool call without function object: {call!r}")
        check(isinstance(function.get("name"), str), f"tool call function without name: {call!r}")
        check(isinstance(function.get("arguments"), str), f"tool call arguments not a string: {call!r}")


def check_reply(reply, challenge):
    """Structure of the decrypted reply JSON (never its text)."""
    check(isinstance(reply.get("response_text"), str), f"response_text is not a string: {reply.get('response_text')!r}")
    check(reply.get("finish_reason") in FINISH_REASONS, f"bad finish_reason {reply.get('finish_reason')!r}")
    usage = reply.get("usage")
    check(isinstance(usage, dict), f"usage is not an object: {usage!r}")
    for field in ("prompt_tokens", "completion_tokens", "total_tokens"):
        check(is_int(usage.get(field)), f"usage.{field} is not an int: {usage!r}")
    check(usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"],
          f"usage total != prompt + completion: {usage!r}")
    check(usage["completion_tokens"] <= challenge["max_tokens"],
          f"completion_tokens {usage['completion_tokens']} > max_tokens {challenge['max_tokens']}")
    check(reply.get("correlation_id") == challenge["correlation_id"],
          f"correlation_id not echoed: sent {challenge['correlation_id']!r}, got {reply.get('correlation_id')!r}")
    check(is_int(reply.get("response_time_ms")), f"response_time_ms is not an int: {reply.get('response_time_ms')!r}")
    check_tool_calls(reply.get("tool_calls"))


class Context:
    def __init__(self, args):
        self.base = args.url.rstrip("/")
        self.ops_base = (args.ops_url or args.url).rstrip("/")
        self.kp = Keypair.create_from_seed(args.seed, crypto_type=KeypairType.SR25519)
        self.other = (Keypair.create_from_seed(args.other_seed, crypto_type=KeypairType.SR25519)
                      if args.other_seed else None)
        self.key_ttl = args.key_ttl
        self.grace = args.grace
        self._pem = None

    def url(self, path):
        return self.base + path

    def pem(self):
        """The miner's public key PEM (fetched once, as the validator caches it)."""
        if self._pem is None:
            status, _, body = get(self.url("/fiber/public-key"))
            check(status == 200, f"GET /fiber/public-key: {describe(status, body)}")
            self._pem = json_object(status, body).get("public_key")
            check(isinstance(self._pem, str), "public_key missing from /fiber/public-key")
        return self._pem

    def post_key_exchange(self, body):
        return post(self.url("/fiber/key-exchange"), body, {"Content-Type": "application/json"})

    def handshake(self, pem=None, kp=None):
        body, session = key_exchange_payload(kp or self.kp, pem or self.pem())
        resp = self.post_key_exchange(body)
        check(resp[0] == 200, f"key exchange failed: {describe(resp[0], resp[2])}")
        got = json_object(resp[0], resp[2])
        check(got == KEY_EXCHANGE_OK, f"key exchange reply {got!r} != {KEY_EXCHANGE_OK!r}")
        return session

    def challenge_headers(self, sym_uuid, hotkey=None):
        return {
            "x-fiber-validator-hotkey-ss58": hotkey or self.kp.ss58_address,
            "x-fiber-symmetric-key-uuid": sym_uuid,
            "Content-Type": "application/octet-stream",
        }

    def post_challenge(self, sym_uuid, token, hotkey=None):
        return post(self.url("/fiber/challenge"), token, self.challenge_headers(sym_uuid, hotkey))

    def challenge(self, session, challenge):
        return self.post_challenge(session.uuid, session.fernet.encrypt(encode(challenge)))

    def expect_reply(self, session, resp, challenge):
        """A reply the validator accepts; returns the decrypted reply JSON."""
        status, headers, body = resp
        check(status == 200, f"challenge: expected exactly 200, got {describe(status, body)}")
        content_type = headers.get("content-type", "")
        check(content_type.split(";")[0].strip().lower() == "application/octet-stream",
              f"reply Content-Type is {content_type!r}")
        check(headers.get("x-fiber-symmetric-key-uuid") == session.uuid,
              f"x-fiber-symmetric-key-uuid {headers.get('x-fiber-symmetric-key-uuid')!r} != {session.uuid!r}")
        miner_hotkey = headers.get("x-fiber-miner-hotkey-ss58")
        check(miner_hotkey, "x-fiber-miner-hotkey-ss58 missing")
        try:
            Keypair(ss58_address=miner_hotkey)
        except Exception as err:
            raise CaseFailure(f"x-fiber-miner-hotkey-ss58 {miner_hotkey!r} is not SS58: {err}")
        token = body.strip()
        check(len(token) % 4 == 0, f"reply token is not padded base64 (length {len(token)})")
        try:
            plaintext = session.fernet.decrypt(token, ttl=FERNET_TTL_S)
        except InvalidToken:
            raise CaseFailure(f"reply does not decrypt with our Fernet key ({describe(status, body)})")
        reply = json_object(status, plaintext)
        check_reply(reply, challenge)
        return reply

    def expect_requires_handshake(self, resp):
        """The 401 for an unknown/expired key: carries the PEM to re-handshake with."""
        body = expect_detail(resp, 401)
        check(body.get("requires_handshake") is True, f"requires_handshake is not true: {body!r}")
        check(body.get("public_key") == self.pem(), "public_key in 401 differs from GET /fiber/public-key")
        return body


def simple_messages(text="Reply with one word."):
    return [{"role": "system", "content": "You are terse."}, {"role": "user", "content": text}]


# -------------------------------------------------------------------------- cases

def case_availability(ctx):
    status, _, body = get(ctx.url("/availability"), {"validator-hotkey": ctx.kp.ss58_address})
    check(status == 200, f"expected 200, got {describe(status, body)}")
    got = json_object(status, body)
    check(got.get("available") is True, f"available is not true: {got!r}")


def case_public_key(ctx):
    status, _, body = get(ctx.url("/fiber/public-key"))
    check(status == 200, f"expected 200, got {describe(status, body)}")
    pem = json_object(status, body).get("public_key")
    check(isinstance(pem, str) and pem.startswith("-----BEGIN PUBLIC KEY-----"),
          f"public_key is not an SPKI PEM: {str(pem)[:60]!r}")
    check(pem.endswith("-----END PUBLIC KEY-----\n"), "PEM lacks END line with trailing newline")
    check(all(len(line) <= 64 for line in pem.splitlines()), "PEM lines longer than 64 columns")
    key = serialization.load_pem_public_key(pem.encode("ascii"))
    check(isinstance(key, rsa.RSAPublicKey), f"not an RSA key: {type(key).__name__}")
    check(key.key_size == 2048, f"RSA key size {key.key_size}")
    check(key.public_numbers().e == 65537, f"RSA exponent {key.public_numbers().e}")
    ctx._pem = pem


def case_handshake(ctx):
    ctx.handshake()


def case_challenge_messages(ctx):
    session = ctx.handshake()
    challenge = build_challenge(
        messages=[
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": "Paris."},
            {"role": "user", "content": "And of Italy?"},
        ],
        max_tokens=16, temperature=0.7, top_p=0.95, correlation_id=f"interop-{uuid.uuid4()}",
    )
    ctx.expect_reply(session, ctx.challenge(session, challenge), challenge)


def case_challenge_prompt_only(ctx):
    session = ctx.handshake()
    challenge = build_challenge(prompt="Say hi", messages=None, correlation_id="prompt-only")
    ctx.expect_reply(session, ctx.challenge(session, challenge), challenge)


def case_challenge_tools(ctx):
    session = ctx.handshake()
    challenge = build_challenge(
        messages=simple_messages("What is the weather in Paris? Use the tool."),
        tools=[WEATHER_TOOL], tool_choice="auto", correlation_id="tools",
    )
    reply = ctx.expect_reply(session, ctx.challenge(session, challenge), challenge)
    check(reply.get("response_text") is not None, "response_text is null")


def case_challenge_timing_metadata(ctx):
    session = ctx.handshake()
    correlation_id = f"timing-{uuid.uuid4()}"
    start = time.time() - 0.25
    sent = time.time()
    original_stage = {"stage_name": "validator_send", "start_timestamp": sent, "start_datetime": utc_iso(sent)}
    timing = {
        "correlation_id": correlation_id,
        "request_start_timestamp": start,
        "request_start_datetime": utc_iso(start),
        "stages": [dict(original_stage)],
        "extra_field": "keep-me",
    }
    challenge = build_challenge(
        messages=[{"role": "user", "content": "Grüße, 東京 ☃"}],
        correlation_id=correlation_id, metadata={"timing_data": timing},
    )
    reply = ctx.expect_reply(session, ctx.challenge(session, challenge), challenge)
    metadata = reply.get("metadata")
    check(isinstance(metadata, dict), f"reply metadata is not an object: {metadata!r}")
    got = metadata.get("timing_data")
    check(isinstance(got, dict), f"reply metadata.timing_data is not an object: {got!r}")
    check(got.get("extra_field") == "keep-me", f"extra_field lost: {got!r}")
    for field in ("correlation_id", "request_start_timestamp", "request_start_datetime"):
        check(got.get(field) == timing[field], f"timing_data.{field} changed: {got.get(field)!r}")
    stages = got.get("stages")
    check(isinstance(stages, list) and len(stages) == 3, f"expected 3 stages, got {stages!r}")
    first = stages[0]
    check(isinstance(first, dict) and all(first.get(k) == v for k, v in original_stage.items()),
          f"original stage changed: {first!r}")
    names = [s.get("stage_name") if isinstance(s, dict) else None for s in stages[1:]]
    check(names == ["miner_inference", "miner_response"], f"appended stages are {names!r}")
    inference = stages[1]
    check(is_number(inference.get("end_timestamp")), f"miner_inference end_timestamp missing: {inference!r}")
    check(is_number(inference.get("elapsed_ms")), f"miner_inference elapsed_ms not numeric: {inference!r}")


def case_challenge_unpadded_token(ctx):
    session = ctx.handshake()
    for extra in range(3):  # each 16 plaintext bytes shift the token length; one of three has padding
        challenge = build_challenge(messages=simple_messages(), correlation_id="unpadded-" + "x" * (16 * extra))
        token = session.fernet.encrypt(encode(challenge))
        if token.endswith(b"="):
            break
    check(token.endswith(b"="), "could not produce a padded token to strip")
    resp = ctx.post_challenge(session.uuid, token.rstrip(b"="))
    ctx.expect_reply(session, resp, challenge)


def case_unknown_uuid(ctx):
    stranger = Session(str(uuid.uuid4()), Fernet.generate_key())
    challenge = build_challenge(messages=simple_messages(), correlation_id="unknown-uuid")
    body = ctx.expect_requires_handshake(ctx.challenge(stranger, challenge))
    session = ctx.handshake(pem=body["public_key"])  # the validator skips the GET here
    ctx.expect_reply(session, ctx.challenge(session, challenge), challenge)


def case_bad_fernet_token(ctx):
    session = ctx.handshake()
    challenge = build_challenge(messages=simple_messages(), correlation_id="bad-token")
    wrong = Fernet(Fernet.generate_key()).encrypt(encode(challenge))
    resp = ctx.post_challenge(session.uuid, wrong)
    body = expect_detail(resp, 401)
    check("public_key" not in body, f"decrypt failure must not carry public_key: {body!r}")


def case_garbage_body(ctx):
    session = ctx.handshake()
    expect_status(ctx.post_challenge(session.uuid, b"not-a-token"), 401)


def case_replayed_nonce(ctx):
    body, session = key_exchange_payload(ctx.kp, ctx.pem())
    expect_exact(ctx.post_key_exchange(body), 200, KEY_EXCHANGE_OK)
    expect_detail(ctx.post_key_exchange(body), 400)
    challenge = build_challenge(messages=simple_messages(), correlation_id="after-replay")
    ctx.expect_reply(session, ctx.challenge(session, challenge), challenge)


def case_bad_signature(ctx):
    nonce = str(uuid.uuid4())
    body, session = key_exchange_payload(
        ctx.kp, ctx.pem(), nonce=nonce,
        signed_message=f"{time.time()}.{uuid.uuid4()}.{ctx.kp.ss58_address}",
    )
    expect_detail(ctx.post_key_exchange(body), 400)
    challenge = build_challenge(messages=simple_messages(), correlation_id="bad-sig")
    ctx.expect_requires_handshake(ctx.challenge(session, challenge))


def case_signature_without_0x(ctx):
    body, session = key_exchange_payload(ctx.kp, ctx.pem(), signature_prefix="")
    check(not json.loads(body)["signature"].startswith("0x"), "test bug: signature has 0x")
    expect_detail(ctx.post_key_exchange(body), 400)
    challenge = build_challenge(messages=simple_messages(), correlation_id="no-0x")
    ctx.expect_requires_handshake(ctx.challenge(session, challenge))


def case_stale_timestamp(ctx):
    body, session = key_exchange_payload(ctx.kp, ctx.pem(), timestamp=time.time() - 3600)
    got = expect_detail(ctx.post_key_exchange(body), 400)
    check("timestamp" in got["detail"].lower(), f"detail does not mention the timestamp: {got['detail']!r}")
    challenge = build_challenge(messages=simple_messages(), correlation_id="stale")
    ctx.expect_requires_handshake(ctx.challenge(session, challenge))


def case_bad_rsa(ctx):
    body, session = key_exchange_payload(ctx.kp, ctx.pem(), encrypted_hex=os.urandom(256).hex())
    check(len(json.loads(body)["encrypted_symmetric_key"]) == 512, "test bug: ciphertext length")
    expect_exact(ctx.post_key_exchange(body), 400, RSA_FAILURE)
    challenge = build_challenge(messages=simple_messages(), correlation_id="bad-rsa")
    ctx.expect_requires_handshake(ctx.challenge(session, challenge))


def case_missing_messages_and_prompt(ctx):
    session = ctx.handshake()
    challenge = build_challenge(messages=None, prompt=None, correlation_id="empty")
    expect_detail(ctx.challenge(session, challenge), 422)


def case_malformed_challenge_json(ctx):
    session = ctx.handshake()
    expect_detail(ctx.challenge(session, b"{not json"), 422)


def _expect_413(result, what):
    status, _, body, error = result
    if status is None:
        # Accepted only because no status line could be read at all.
        print(f"note: {what}: connection reset before a status could be read ({error!r})", file=sys.stderr)
        return
    check(status == 413, f"{what}: expected 413, got {describe(status, body)}")


def case_oversized_body(ctx):
    session = ctx.handshake()
    big = b"A" * OVERSIZE_BYTES
    _expect_413(post_streaming(ctx.url("/fiber/challenge"), big, ctx.challenge_headers(session.uuid)),
                "/fiber/challenge")
    big_json = b'{"nonce": "' + b"a" * (OVERSIZE_BYTES - 13) + b'"}'
    _expect_413(post_streaming(ctx.url("/fiber/key-exchange"), big_json, {"Content-Type": "application/json"}),
                "/fiber/key-exchange")


def case_malformed_key_exchange_json(ctx):
    expect_detail(ctx.post_key_exchange(b'{"nonce": 1'), (400, 422))


def case_not_whitelisted(ctx):
    if ctx.other is None:
        raise Skip("no --other-seed given")
    body, session = key_exchange_payload(ctx.other, ctx.pem())
    expect_exact(ctx.post_key_exchange(body), 403, NOT_RECOGNIZED)
    challenge = build_challenge(messages=simple_messages(), correlation_id="outsider")
    resp = ctx.post_challenge(session.uuid, session.fernet.encrypt(encode(challenge)), hotkey=ctx.other.ss58_address)
    expect_status(resp, 403)


def case_concurrent_challenges(ctx):
    session = ctx.handshake()
    challenges = [build_challenge(messages=simple_messages(f"Count to {i}."), max_tokens=8,
                                  correlation_id=f"concurrent-{i}") for i in range(8)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(lambda c: ctx.challenge(session, c), challenges))
    problems = []
    for i, (challenge, resp) in enumerate(zip(challenges, responses)):
        try:
            ctx.expect_reply(session, resp, challenge)
        except CaseFailure as err:
            problems.append(f"#{i}: {err}")
    check(not problems, f"{len(problems)}/8 failed: " + "; ".join(problems))


def case_health_and_metrics(ctx):
    if ctx.ops_base != ctx.base:
        # The operator's routes are not served to the internet.
        status, _, body = get(ctx.url("/metrics"))
        check(status == 404, f"public /metrics: expected 404, got {describe(status, body)}")
    status, _, body = get(ctx.ops_base + "/health")
    check(status == 200, f"/health: expected 200, got {describe(status, body)}")
    status, _, body = get(ctx.ops_base + "/metrics")
    check(status == 200, f"/metrics: expected 200, got {describe(status, body)}")
    check(b"loosh_challenges_total" in body, "/metrics lacks loosh_challenges_total")


def case_key_expiry(ctx):
    session = ctx.handshake()
    challenge = build_challenge(messages=simple_messages(), correlation_id="expiry")
    ctx.expect_reply(session, ctx.challenge(session, challenge), challenge)
    time.sleep(ctx.key_ttl + ctx.grace + 1.5)  # protocol wait: let the key pass TTL + grace
    body = ctx.expect_requires_handshake(ctx.challenge(session, challenge))
    fresh = ctx.handshake(pem=body["public_key"])
    ctx.expect_reply(fresh, ctx.challenge(fresh, challenge), challenge)


CASES = [
    ("availability", case_availability),
    ("public_key", case_public_key),
    ("handshake", case_handshake),
    ("challenge_messages", case_challenge_messages),
    ("challenge_prompt_only", case_challenge_prompt_only),
    ("challenge_tools", case_challenge_tools),
    ("challenge_timing_metadata", case_challenge_timing_metadata),
    ("challenge_unpadded_token", case_challenge_unpadded_token),
    ("unknown_uuid", case_unknown_uuid),
    ("bad_fernet_token", case_bad_fernet_token),
    ("garbage_body", case_garbage_body),
    ("replayed_nonce", case_replayed_nonce),
    ("bad_signature", case_bad_signature),
    ("signature_without_0x", case_signature_without_0x),
    ("stale_timestamp", case_stale_timestamp),
    ("bad_rsa", case_bad_rsa),
    ("missing_messages_and_prompt", case_missing_messages_and_prompt),
    ("malformed_challenge_json", case_malformed_challenge_json),
    ("oversized_body", case_oversized_body),
    ("malformed_key_exchange_json", case_malformed_key_exchange_json),
    ("not_whitelisted", case_not_whitelisted),
    ("concurrent_challenges", case_concurrent_challenges),
    ("health_and_metrics", case_health_and_metrics),
    ("key_expiry", case_key_expiry),  # last: it sleeps past the key TTL
]


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="miner base URL, e.g. http://127.0.0.1:8100")
    parser.add_argument("--ops-url", help="where /health and /metrics are served (default: --url)")
    parser.add_argument("--seed", required=True, help="0x-hex mini-secret of a whitelisted validator hotkey")
    parser.add_argument("--other-seed", help="0x-hex mini-secret of a hotkey the miner must refuse")
    parser.add_argument("--key-ttl", type=float, default=3.0, help="miner symmetric key TTL, seconds (default 3)")
    parser.add_argument("--grace", type=float, default=1.0, help="miner key grace period, seconds (default 1)")
    parser.add_argument("--only", action="append", metavar="CASE", help="run only the named case(s)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    ctx = Context(args)
    known = {name for name, _ in CASES}
    unknown = set(args.only or ()) - known
    if unknown:
        print(f"unknown case(s): {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    passed = failed = 0
    for name, run in CASES:
        if args.only and name not in args.only:
            continue
        try:
            run(ctx)
        except Skip as err:
            print(f"skip {name}: {err}", file=sys.stderr)
            continue
        except CaseFailure as err:
            failed += 1
            reason = str(err)
        except Exception as err:  # an unexpected error is a failure of this case only
            failed += 1
            reason = f"{type(err).__name__}: {err}"
        else:
            passed += 1
            print(f"PASS {name}", flush=True)
            continue
        print(f"FAIL {name}: {' '.join(reason.split())}", flush=True)
    print(f"{passed} passed, {failed} failed", flush=True)
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

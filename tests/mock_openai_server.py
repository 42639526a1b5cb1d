"""OpenAI-compatible mock chat-completions server for offline tests, dry runs and benchmarks.

Standard library only. Start it on a free local port and point any OpenAI client at it::

    with MockOpenAIServer(rules=[Rule(r"capital of France", "Paris")]) as base_url:
        model = ChatOpenAI(model="mock-model", base_url=base_url, api_key="test")

or from a shell (replies and faults from a JSON script, see `load_script`)::

    python tests/mock_openai_server.py --port 8000 --latency-ms 200 --script script.json

Endpoints: `POST /v1/chat/completions` (plain and streaming SSE, with `usage` and OpenAI tool
calls) and `GET /v1/models`.

Replies follow rules, as `tests/fakes.py` does: each rule is a regex searched in the request's
transcript, the first rule that matches answers, else the default reply. The transcript has one
line per message, `[role] text` (`[system]`, `[user]`, `[assistant]`, `[tool]`), a line
`[tool_call] name {json args}` per tool call in the history and, when the request offers tools,
a last line `[tools] name, name` (so a rule can answer a `with_structured_output` call by the
schema's name).

Faults are deterministic: a `FaultPlan` names faults by chat request number (1-based, in order
of arrival) and/or gives each fault a rate drawn from `(seed, request number)`, so a run with the
same requests sees the same faults; a rule can also reply with a fault (a permanent failure for
the prompts it matches).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import re
import socket
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class Fault(Enum):
    """A failure the server can inject instead of a reply."""

    RATE_LIMIT = "rate_limit"  # 429 with Retry-After
    SERVER_ERROR = "server_error"  # 500
    UNAVAILABLE = "unavailable"  # 503 with Retry-After
    TIMEOUT = "timeout"  # answers only after `timeout_delay_s`, longer than a client's timeout
    MALFORMED_JSON = "malformed_json"  # 200 with a truncated JSON body
    DROP_CONNECTION = "drop_connection"  # closes the socket without any reply

    @classmethod
    def parse(cls, name: str | Fault) -> Fault:
        """A fault from its name or an alias (`429`, `500`, `503`, `drop`, `malformed`)."""
        if isinstance(name, Fault):
            return name
        aliases = {
            "429": cls.RATE_LIMIT,
            "500": cls.SERVER_ERROR,
            "503": cls.UNAVAILABLE,
            "drop": cls.DROP_CONNECTION,
            "malformed": cls.MALFORMED_JSON,
        }
        key = str(name).strip().lower()
        return aliases.get(key) or cls(key)


@dataclass(frozen=True)
class ToolCall:
    """One tool call in a reply: the function name and its JSON arguments."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Reply:
    """An assistant reply: text, tool calls, or both."""

    text: str = ""
    tool_calls: tuple[ToolCall, ...] = ()


def tool_call(name: str, **arguments: Any) -> Reply:
    """A reply calling one tool (or answering a `with_structured_output` schema named `name`)."""
    return Reply(tool_calls=(ToolCall(name, arguments),))


ReplySpec = str | Reply | Fault | Callable[[dict[str, Any]], "str | Reply | Fault"]


@dataclass
class Rule:
    """Answer with `reply` when `pattern` (a regex, case-insensitive) is found in the transcript.

    `after_tool`: None matches any request; True only requests whose history holds a tool result;
    False only requests without one. `times`: how often the rule may fire (None: always).
    `reply` may be a callable taking the request body.
    """

    pattern: str
    reply: ReplySpec
    after_tool: bool | None = None
    times: int | None = None
    fired: int = field(default=0, init=False)

    def matches(self, transcript: str, has_tool_result: bool) -> bool:
        """Whether this rule answers a request with this transcript."""
        if self.times is not None and self.fired >= self.times:
            return False
        if self.after_tool is not None and self.after_tool != has_tool_result:
            return False
        return re.search(self.pattern, transcript, flags=re.S | re.I) is not None


@dataclass
class FaultPlan:
    """Which chat requests fail, deterministically.

    `schedule` maps a request number (1-based, chat completions only, in order of arrival) to a
    fault. `rates` gives each fault a probability; the draw for request `n` comes from a random
    generator seeded with `(seed, n)`, so it does not depend on timing or thread scheduling.
    """

    schedule: dict[int, Fault] = field(default_factory=dict)
    rates: dict[Fault, float] = field(default_factory=dict)
    seed: int = 0

    def fault_for(self, request_number: int) -> Fault | None:
        """The fault injected into request `request_number`, if any."""
        if request_number in self.schedule:
            return self.schedule[request_number]
        if not self.rates:
            return None
        draw = random.Random(f"{self.seed}:{request_number}").random()
        threshold = 0.0
        for fault, rate in self.rates.items():
            threshold += rate
            if draw < threshold:
                return fault
        return None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FaultPlan:
        """Build from `{"schedule": {"3": "rate_limit"}, "rates": {"500": 0.1}, "seed": 1}`."""
        return cls(
            schedule={int(n): Fault.parse(f) for n, f in (data.get("schedule") or {}).items()},
            rates={Fault.parse(f): float(r) for f, r in (data.get("rates") or {}).items()},
            seed=int(data.get("seed", 0)),
        )


def count_tokens(text: str) -> int:
    """A rough token count (words and punctuation marks), enough for usage accounting."""
    return len(re.findall(r"\w+|[^\w\s]", text))


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: keep the text ones
        return " ".join(
            str(part.get("text", "")) for part in content if isinstance(part, dict)
        ).strip()
    return ""


def transcript_of(body: Mapping[str, Any]) -> str:
    """The text that rules are matched against (see the module docstring)."""
    lines = []
    for message in body.get("messages") or []:
        lines.append(f"[{message.get('role', '')}] {_content_text(message.get('content'))}")
        for call in message.get("tool_calls") or []:
            function = call.get("function") or {}
            lines.append(f"[tool_call] {function.get('name', '')} {function.get('arguments', '')}")
    tool_names = [
        str((tool.get("function") or {}).get("name", ""))
        for tool in body.get("tools") or []
        if isinstance(tool, dict)
    ]
    if tool_names:
        lines.append("[tools] " + ", ".join(tool_names))
    return "\n".join(lines)


def _as_reply(value: str | Reply) -> Reply:
    return Reply(text=value) if isinstance(value, str) else value


@dataclass
class _Counters:
    requests: int = 0
    chat_requests: int = 0
    model_requests: int = 0
    replies: int = 0
    streamed: int = 0
    unmatched: int = 0
    faults: Counter[str] = field(default_factory=Counter)


class MockOpenAIServer:
    """A scripted OpenAI-compatible server on a local port (0: a free one).

    Use it as a context manager (`with MockOpenAIServer(...) as base_url`) or call `start()` and
    `stop()`. `stats()` returns the counters; `requests` the last request bodies received.

    Args:
        rules: first matching rule answers (see `Rule`).
        default: reply when no rule matches; None answers 400 `no scripted reply` instead.
        faults: deterministic fault injection (see `FaultPlan`).
        latency_ms: delay before every chat reply (throughput benchmarks).
        timeout_delay_s: how long a `Fault.TIMEOUT` request hangs before it is answered.
        retry_after_s: the Retry-After sent with 429 and 503 (also as `retry-after-ms`).
        models: ids listed by `GET /v1/models`.
        keep_requests: how many request bodies `requests` keeps.
    """

    def __init__(
        self,
        rules: Sequence[Rule] = (),
        *,
        default: str | Reply | None = "OK",
        faults: FaultPlan | None = None,
        latency_ms: float = 0.0,
        timeout_delay_s: float = 30.0,
        retry_after_s: float = 0.05,
        models: Sequence[str] = ("mock-model",),
        host: str = "127.0.0.1",
        port: int = 0,
        keep_requests: int = 1000,
    ) -> None:
        self.rules = list(rules)
        self.default = default
        self.faults = faults or FaultPlan()
        self.latency_ms = latency_ms
        self.timeout_delay_s = timeout_delay_s
        self.retry_after_s = retry_after_s
        self.models = list(models)
        self.host = host
        self.port = port
        self._received: deque[dict[str, Any]] = deque(maxlen=keep_requests)
        self._counters = _Counters()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def from_script(cls, path: str | Path, **overrides: Any) -> MockOpenAIServer:
        """A server configured by a JSON script file (see `load_script`); keywords override it."""
        return cls(**{**load_script(path), **overrides})

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:PORT/v1` (valid once started)."""
        return f"http://{self.host}:{self.port}/v1"

    @property
    def requests(self) -> list[dict[str, Any]]:
        """The last chat request bodies received, oldest first."""
        with self._lock:
            return list(self._received)

    def stats(self) -> dict[str, Any]:
        """Counters: requests, chat requests, replies served, streamed, unmatched, faults."""
        with self._lock:
            counters = self._counters
            return {
                "requests": counters.requests,
                "chat_requests": counters.chat_requests,
                "model_requests": counters.model_requests,
                "replies": counters.replies,
                "streamed": counters.streamed,
                "unmatched": counters.unmatched,
                "faults": dict(counters.faults),
            }

    def start(self) -> str:
        """Start serving in a background thread; return the base URL."""
        if self._httpd is not None:
            return self.base_url
        self._stopping.clear()
        httpd = _HTTPServer((self.host, self.port), _Handler)
        httpd.mock = self
        self.port = int(httpd.server_address[1])
        self._httpd = httpd
        # A short poll interval so that `stop()` returns at once.
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="mock-openai",
            daemon=True,
        )
        self._thread.start()
        return self.base_url

    def stop(self) -> None:
        """Stop serving; requests hanging in latency or a timeout fault are released."""
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def serve_forever(self) -> None:
        """Serve in the calling thread until interrupted (the command-line mode)."""
        self.start()
        try:
            while self._thread is not None and self._thread.is_alive():
                self._thread.join(timeout=0.5)
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    # Internals used by the request handler.

    def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            self._stopping.wait(seconds)

    def _count(self, **increments: int) -> None:
        with self._lock:
            for name, value in increments.items():
                setattr(self._counters, name, getattr(self._counters, name) + value)

    def _count_fault(self, fault: Fault) -> None:
        with self._lock:
            self._counters.faults[fault.value] += 1

    def _decide(self, body: dict[str, Any]) -> Reply | Fault | None:
        """The fault or reply for a chat request (None: nothing matched and no default)."""
        with self._lock:
            self._counters.requests += 1
            self._counters.chat_requests += 1
            request_number = self._counters.chat_requests
            self._received.append(body)
            fault = self.faults.fault_for(request_number)
            if fault is not None:
                return fault
            transcript = transcript_of(body)
            has_tool_result = any(m.get("role") == "tool" for m in body.get("messages") or [])
            spec: ReplySpec | None = self.default
            for rule in self.rules:
                if rule.matches(transcript, has_tool_result):
                    rule.fired += 1
                    spec = rule.reply
                    break
        if callable(spec) and not isinstance(spec, Reply | Fault):
            spec = spec(body)
        if spec is None or isinstance(spec, Fault):
            return spec
        return _as_reply(spec)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # benchmarks open many connections at once
    mock: MockOpenAIServer


def _error_body(message: str, error_type: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": None, "code": code}}


class _Handler(BaseHTTPRequestHandler):
    # Reply at once: with Nagle's algorithm and delayed ACKs each request waits ~40 ms.
    disable_nagle_algorithm = True
    protocol_version = "HTTP/1.1"  # keep-alive, as real endpoints; every reply has a length
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Stay quiet: tests and benchmarks do not want a line per request."""

    @property
    def mock(self) -> MockOpenAIServer:
        return self.server.mock

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        path = self.path.split("?", 1)[0].rstrip("/")
        if path == "/v1/models":
            self.mock._count(requests=1, model_requests=1)
            created = int(time.time())
            data = [
                {"id": model, "object": "model", "created": created, "owned_by": "mock"}
                for model in self.mock.models
            ]
            self._send_json(200, {"object": "list", "data": data})
            return
        self.mock._count(requests=1)
        self._send_json(404, _error_body(f"no route GET {path}", "invalid_request_error"))

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        path = self.path.split("?", 1)[0].rstrip("/")
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if path != "/v1/chat/completions":
            self.mock._count(requests=1)
            self._send_json(404, _error_body(f"no route POST {path}", "invalid_request_error"))
            return
        try:
            body = json.loads(raw or b"{}")
            if not isinstance(body, dict):
                raise ValueError("the request body is not a JSON object")
        except ValueError as exc:
            self.mock._count(requests=1)
            self._send_json(400, _error_body(f"invalid JSON body: {exc}", "invalid_request_error"))
            return
        decision = self.mock._decide(body)
        self.mock._sleep(self.mock.latency_ms / 1000.0)
        if isinstance(decision, Fault):
            self.mock._count_fault(decision)
            self._send_fault(decision, body)
            return
        if decision is None:
            self.mock._count(unmatched=1)
            message = "no scripted reply for this prompt"
            self._send_json(400, _error_body(message, "invalid_request_error", "no_rule"))
            return
        self._send_reply(body, decision)

    def _send_reply(self, body: dict[str, Any], reply: Reply) -> None:
        model = str(body.get("model") or (self.mock.models or ["mock-model"])[0])
        prompt_tokens = count_tokens(transcript_of(body))
        calls: list[dict[str, Any]] = [
            {
                "id": f"call_{uuid.uuid4().hex[:24]}",
                "type": "function",
                "function": {"name": call.name, "arguments": json.dumps(call.arguments)},
            }
            for call in reply.tool_calls
        ]
        argument_tokens = sum(count_tokens(json.dumps(c.arguments)) for c in reply.tool_calls)
        completion_tokens = max(1, count_tokens(reply.text) + argument_tokens)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        finish_reason = "tool_calls" if calls else "stop"
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            self._send_stream(
                completion_id, model, reply.text, calls, finish_reason, usage, include_usage
            )
            self.mock._count(replies=1, streamed=1)
            return
        message: dict[str, Any] = {"role": "assistant", "content": reply.text or None}
        if calls:
            message["tool_calls"] = calls
        elif not reply.text:
            message["content"] = ""
        payload = {
            "id": completion_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": None}
            ],
            "usage": usage,
        }
        self._send_json(200, payload)
        self.mock._count(replies=1)

    def _send_stream(
        self,
        completion_id: str,
        model: str,
        text: str,
        calls: list[dict[str, Any]],
        finish_reason: str,
        usage: dict[str, int],
        include_usage: bool,
    ) -> None:
        created = int(time.time())

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }

        events = [chunk({"role": "assistant", "content": ""})]
        # A few words per chunk, so clients really have to assemble the text.
        for piece in re.findall(r"(?:\S+\s*){1,3}", text):
            events.append(chunk({"content": piece}))
        for index, call in enumerate(calls):
            head = {"index": index, "id": call["id"], "type": "function"}
            head["function"] = {"name": call["function"]["name"], "arguments": ""}
            events.append(chunk({"tool_calls": [head]}))
            arguments = {"index": index, "function": {"arguments": call["function"]["arguments"]}}
            events.append(chunk({"tool_calls": [arguments]}))
        events.append(chunk({}, finish_reason))
        if include_usage:
            events.append({**chunk({}), "choices": [], "usage": usage})
        self.close_connection = True  # the stream ends when the connection closes
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        try:
            for event in events:
                self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _send_fault(self, fault: Fault, body: dict[str, Any]) -> None:
        retry_after = self.mock.retry_after_s
        retry_headers = {
            "Retry-After": str(max(1, math.ceil(retry_after))),
            "retry-after-ms": str(int(retry_after * 1000)),
        }
        if fault is Fault.RATE_LIMIT:
            error = _error_body("Rate limit reached (injected)", "rate_limit_exceeded", "429")
            self._send_json(429, error, retry_headers)
        elif fault is Fault.SERVER_ERROR:
            self._send_json(500, _error_body("Internal server error (injected)", "server_error"))
        elif fault is Fault.UNAVAILABLE:
            error = _error_body("Service unavailable (injected)", "server_error")
            self._send_json(503, error, retry_headers)
        elif fault is Fault.TIMEOUT:
            self.mock._sleep(self.mock.timeout_delay_s)
            self._send_reply(body, Reply(text="late reply"))
        elif fault is Fault.MALFORMED_JSON:
            self._send_raw(200, b'{"id": "chatcmpl-malformed", "object": "chat.completion", "cho')
        elif fault is Fault.DROP_CONNECTION:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)

    def _send_json(
        self, status: int, payload: dict[str, Any], headers: Mapping[str, str] | None = None
    ) -> None:
        self._send_raw(status, json.dumps(payload).encode(), headers)

    def _send_raw(self, status: int, data: bytes, headers: Mapping[str, str] | None = None) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up (its timeout fired); nothing left to answer.
            self.close_connection = True


def _parse_reply(data: Any) -> str | Reply | Fault | None:
    """A reply from a script entry: a string, or `{"reply"|"text", "tool_calls", "fault"}`."""
    if data is None or isinstance(data, str):
        return data
    if not isinstance(data, Mapping):
        raise ValueError(f"a reply must be a string or an object, not {data!r}")
    if data.get("fault"):
        return Fault.parse(data["fault"])
    calls = tuple(
        ToolCall(str(call["name"]), dict(call.get("arguments") or call.get("args") or {}))
        for call in data.get("tool_calls") or []
    )
    return Reply(text=str(data.get("reply", data.get("text", "")) or ""), tool_calls=calls)


def load_script(path: str | Path) -> dict[str, Any]:
    """Read a JSON script into `MockOpenAIServer` keyword arguments.

    Format::

        {"default": "OK",
         "rules": [{"pattern": "capital of France", "reply": "Paris"},
                   {"pattern": "find it", "after_tool": false,
                    "tool_calls": [{"name": "search", "arguments": {"query": "x"}}]},
                   {"pattern": "poison", "fault": "server_error"}],
         "faults": {"schedule": {"3": "rate_limit"}, "rates": {"500": 0.02}, "seed": 7},
         "latency_ms": 200, "timeout_delay_s": 30, "models": ["mock-model"]}
    """
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    options: dict[str, Any] = {}
    rules = []
    for entry in data.get("rules") or []:
        reply = _parse_reply(entry)
        if reply is None:
            raise ValueError(f"rule {entry!r} has no reply")
        rules.append(
            Rule(
                str(entry["pattern"]),
                reply,
                after_tool=entry.get("after_tool"),
                times=entry.get("times"),
            )
        )
    options["rules"] = rules
    if "default" in data:
        default = _parse_reply(data["default"])
        if isinstance(default, Fault):
            raise ValueError("the default reply cannot be a fault; use `faults.rates` instead")
        options["default"] = default
    if data.get("faults"):
        options["faults"] = FaultPlan.from_dict(data["faults"])
    for name in ("latency_ms", "timeout_delay_s", "retry_after_s"):
        if name in data:
            options[name] = float(data[name])
    if data.get("models"):
        options["models"] = [str(model) for model in data["models"]]
    return options


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: serve until interrupted; prints the base URL first."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--script", help="JSON script of rules, default reply and faults")
    parser.add_argument("--latency-ms", type=float, help="delay before every chat reply")
    parser.add_argument("--timeout-delay-s", type=float, help="hang time of a `timeout` fault")
    parser.add_argument(
        "--fault-rate",
        action="append",
        default=[],
        metavar="FAULT=P",
        help="inject a fault with probability P, e.g. rate_limit=0.05 (repeatable)",
    )
    parser.add_argument("--seed", type=int, help="seed of the fault draws")
    args = parser.parse_args(argv)
    options: dict[str, Any] = load_script(args.script) if args.script else {}
    if args.latency_ms is not None:
        options["latency_ms"] = args.latency_ms
    if args.timeout_delay_s is not None:
        options["timeout_delay_s"] = args.timeout_delay_s
    plan: FaultPlan = options.get("faults") or FaultPlan()
    for item in args.fault_rate:
        name, _, rate = item.partition("=")
        plan.rates[Fault.parse(name)] = float(rate)
    if args.seed is not None:
        plan.seed = args.seed
    options["faults"] = plan
    server = MockOpenAIServer(host=args.host, port=args.port, **options)
    server.start()
    print(f"mock OpenAI server at {server.base_url}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()

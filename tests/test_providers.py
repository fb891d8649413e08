"""§8 Providers: the live clients (SPEC §6) against byte-exact transcripts served by a loopback
server (tests/loopback.py), the SSE and NDJSON decoders on adversarial chunkings, and injected
faults: rate limits, billing errors, server errors, cut and stalled streams, refused
connections, proxies, TLS. Nothing leaves 127.0.0.1; retry waits are recorded, not slept."""
from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import time

import pytest
from conftest import DATA
from loopback import LoopbackServer, Reply, dead_port

import aethr

TRANSCRIPTS = DATA / "transcripts"
INDEX = json.loads((TRANSCRIPTS / "index.json").read_text(encoding="utf-8"))
NATIVE = json.loads((TRANSCRIPTS / "ollama-native" / "index.json").read_text(encoding="utf-8"))
USER_AGENT = f"aethr/{aethr.__version__}"

WORKFLOW = """\
workflow: providers
roles:
  reviewer: Review the change and list findings.
models:
  default: openai:gpt-5.5
steps:
  - id: review
    role: reviewer
"""

#: provider -> (model, key variable, key value)
MODELS = {
    "openai": ("openai:gpt-5.5", "OPENAI_API_KEY", "sk-test-openai-0123456789"),
    "anthropic": ("anthropic:claude-sonnet-5", "ANTHROPIC_API_KEY", "sk-ant-test-0123456789"),
    "gemini": ("gemini:gemini-3.5-flash", "GOOGLE_API_KEY", "AIza-test-0123456789"),
    "openrouter": ("openrouter:openai/gpt-5.5", "OPENROUTER_API_KEY", "sk-or-test-0123456789"),
    "xai": ("xai:grok-4.6", "XAI_API_KEY", "xai-test-0123456789"),
    "ollama": ("ollama:llama3.2", None, None),
}
#: provider -> (base URL variable, path of the server's URL it takes, request path)
PATHS = {
    "openai": ("OPENAI_BASE_URL", "/v1", "/v1/chat/completions"),
    "anthropic": ("ANTHROPIC_BASE_URL", "", "/v1/messages"),
    "gemini": ("GOOGLE_GEMINI_BASE_URL", "",
               "/v1beta/models/gemini-3.5-flash:streamGenerateContent?alt=sse"),
    "openrouter": ("OPENROUTER_BASE_URL", "/api/v1", "/api/v1/chat/completions"),
    "xai": ("XAI_BASE_URL", "/v1", "/v1/chat/completions"),
    "ollama": ("OLLAMA_HOST", "", "/api/chat"),
}


# -- helpers ----------------------------------------------------------------------------------

class DotEnv(dict):
    """An environment whose `.dotenv` names came from the project's .env (as aethr.Env)."""

    def __init__(self, values: dict[str, str], dotenv: set[str]) -> None:
        super().__init__(values)
        self.dotenv = dotenv


class Outcome:
    """What a stream produced: events, joined text and reasoning, warnings, usage, the error."""

    def __init__(self, events: list[tuple[str, object]], error: Exception | None) -> None:
        self.events = events
        self.error = error
        self.text = "".join(v for k, v in events if k == "text")
        self.reasoning = "".join(v for k, v in events if k == "reasoning")
        self.warnings = [v for k, v in events if k == "warning"]
        usages = [v for k, v in events if k == "usage"]
        self.usage = usages[-1] if usages else None
        assert len(usages) <= 1 and (not usages or events[-1][0] == "usage"), events

    def __repr__(self) -> str:
        return f"Outcome(text={self.text!r}, error={self.error!r}, usage={self.usage!r})"


def make_prompt(task: str = "review my change", max_tokens: int | None = None) -> aethr.Prompt:
    workflow = aethr.load_workflow(text=WORKFLOW)
    step = workflow.steps[0]
    step.max_tokens = max_tokens
    return aethr.build_prompt(workflow, task, step)


def env_for(provider: str, server: LoopbackServer | None = None, *, key: bool = True,
            **extra: str) -> dict[str, str]:
    """An environment pointing `provider` at the loopback server, with a test key."""
    _, var, value = MODELS[provider]
    env: dict[str, str] = {}
    if key and var:
        env[var] = value
    if server is not None:
        base_var, suffix, _ = PATHS[provider]
        env[base_var] = server.url + suffix
    env.update(extra)
    return env


def client(provider: str, env: dict[str, str], model: str | None = None) -> aethr.Provider:
    model = model or MODELS[provider][0]
    return aethr.PROVIDERS[aethr.split_model(model)[0]](model, env)


def run(provider: aethr.Provider, prompt: aethr.Prompt | None = None,
        max_tokens: int | None = None) -> Outcome:
    events: list[tuple[str, object]] = []
    try:
        for event in provider.stream(prompt or make_prompt(), max_tokens=max_tokens):
            events.append(event)
    except aethr.ProviderError as exc:
        return Outcome(events, exc)
    return Outcome(events, None)


def parse(provider: aethr.Provider, chunks: list[bytes]) -> tuple[list, str | None]:
    """The provider's reading of a body given as `chunks`: (events, error message)."""
    events: list = []
    try:
        for event in provider.parse(chunks):
            events.append(event)
    except aethr.ProviderError as exc:
        return events, exc.message
    return events, None


def sse(*objects: object, done: bool = True, events: list[str] | None = None) -> bytes:
    """An SSE body: one `data:` event per object (optionally named), then [DONE]."""
    out = []
    for i, obj in enumerate(objects):
        name = f"event: {events[i]}\n" if events else ""
        out.append(f"{name}data: {json.dumps(obj)}\n\n")
    if done:
        out.append("data: [DONE]\n\n")
    return "".join(out).encode()


def chat_chunk(content: str | None = None, finish: str | None = None, **delta: object) -> dict:
    if content is not None:
        delta["content"] = content
    return {"object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


USAGE_CHUNK = {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 3}}


def chat_body(*texts: str, finish: str = "stop") -> bytes:
    return sse(*[chat_chunk(t) for t in texts], chat_chunk(finish=finish), USAGE_CHUNK)


def transcript(name: str) -> bytes:
    return (TRANSCRIPTS / name).read_bytes()


def reply_for(entry: dict, base: str = "") -> Reply:
    body = (TRANSCRIPTS / base / entry["file"]).read_bytes()
    framing = "length" if entry["kind"] == "json_error" else "chunked"
    return Reply(entry["status"], entry["headers"], body, plan=entry.get("write_plan"),
                 framing=framing)


def check_usage(provider: str, got: dict, want: dict) -> None:
    for field in ("input", "output", "reasoning", "cost"):
        if want.get(field) is not None:
            assert got[field] == want[field], (field, got, want)
    if want.get("total") is not None:
        # xAI and Gemini count reasoning apart from the output; OpenAI's output includes it.
        apart = got.get("reasoning", 0) if provider in ("xai", "gemini") else 0
        assert got["input"] + got["output"] + apart == want["total"], (got, want)


@pytest.fixture
def sleeps(monkeypatch):
    """Retry waits, recorded instead of slept."""
    waits: list[float] = []
    monkeypatch.setattr(aethr, "_retry_sleep", waits.append)
    return waits


# -- transcripts, replayed against each provider class -----------------------------------------

def _client_for(entry: dict, server: LoopbackServer) -> tuple[str, aethr.Provider]:
    name = entry["provider"]
    if name == "ollama":
        # Ollama's OpenAI-compatible /v1, reached as a self-hosted server: no key, no header.
        env = {"OPENAI_BASE_URL": server.url + "/v1"}
        return "openai", client("openai", env, "openai:qwen3:8b")
    return name, client(name, env_for(name, server))


@pytest.mark.parametrize("entry", INDEX, ids=[e["file"] for e in INDEX])
def test_transcript_replay(entry, server, sleeps):
    expect = entry["expect"]
    retry = entry["kind"] == "json_error" and expect.get("retry")
    server.add(*[reply_for(entry)] * (3 if retry else 1))
    name, provider = _client_for(entry, server)
    out = run(provider)

    # What the client sent.
    request = server.requests[0]
    assert request.method == "POST"
    assert request.path == PATHS[name][2]
    assert request.headers["user-agent"] == USER_AGENT
    assert request.headers["content-type"] == "application/json"
    key = MODELS[name][2]
    auth = {"openai": "authorization", "openrouter": "authorization", "xai": "authorization",
            "anthropic": "x-api-key", "gemini": "x-goog-api-key"}[name]
    if entry["provider"] == "ollama":
        assert "authorization" not in request.headers
    else:
        assert request.headers[auth] == (f"Bearer {key}" if auth == "authorization" else key)
    if name == "anthropic":
        assert request.headers["anthropic-version"] == "2023-06-01"
        assert "authorization" not in request.headers
    if name == "gemini":
        assert "authorization" not in request.headers and key not in request.path
    if name != "gemini":
        assert request.json["stream"] is True

    # What it made of the answer.
    if entry["kind"] == "sse" and expect["error"] is None:
        assert out.error is None, out
        assert out.text == expect["text"]
        assert out.reasoning == expect.get("reasoning", "")
        assert out.warnings == []
        check_usage(name, out.usage, expect["usage"])
        assert len(server.requests) == 1
    elif entry["kind"] == "sse":
        # An error inside a 200 stream: the step fails, the text shown is kept, no retry.
        assert out.text == expect["text"]
        assert isinstance(out.error, aethr.ProviderError)
        assert expect["error"]["message"] in out.error.message
        assert out.error.message.startswith(f"{name}: ")
        assert out.usage is None
        assert len(server.requests) == 1 and sleeps == []
    else:
        err = out.error
        assert isinstance(err, aethr.ProviderError) and out.events == []
        assert err.status == entry["status"] and err.provider == name
        assert err.message.startswith(f"{name}: HTTP {entry['status']}: "
                                      f"{expect['error']['message_prefix']}")
        assert err.retryable is bool(expect["retry"])
        assert err.exit_code == 3
        billing = entry["file"] in ("openrouter_error_402.json", "xai_error_403_credits.json")
        assert err.billing is billing
        assert ("out of credits or over a spending limit" in err.message) is billing
        if retry:
            assert len(server.requests) == 3
            assert len(sleeps) == 2
            if "retry_delay_s" in expect:
                assert sleeps == [pytest.approx(expect["retry_delay_s"])] * 2
            else:
                assert 0.375 <= sleeps[0] <= 0.5 and 0.75 <= sleeps[1] <= 1.0
        else:
            assert len(server.requests) == 1 and sleeps == []


@pytest.mark.parametrize("entry", NATIVE, ids=[e["file"] for e in NATIVE])
def test_ollama_native_replay(entry, server, sleeps):
    expect = entry["expect"]
    server.add(reply_for(entry, "ollama-native"))
    model = "ollama:llama9:70b" if entry["kind"] == "json_error" else "ollama:llama3.2"
    out = run(client("ollama", env_for("ollama", server), model))
    request = server.requests[0]
    assert request.path == "/api/chat" and request.headers["user-agent"] == USER_AGENT
    assert "authorization" not in request.headers
    assert request.json["model"] == aethr.split_model(model)[1]
    assert request.json["stream"] is True and request.json["think"] is False
    assert request.json["options"] == {"num_ctx": 8192}
    if entry["kind"] == "json_error":
        assert out.error.message == "ollama: HTTP 404: model 'llama9:70b' not found"
        assert "ollama pull" in out.error.hint and not out.error.retryable
    elif expect["error"]:
        assert out.text == expect["text"]
        assert out.error.message == f"ollama: error in the stream: {expect['error']['message']}"
        assert len(server.requests) == 1
    else:
        assert out.error is None and out.text == expect["text"]
        assert out.usage == expect["usage"] and out.warnings == []
    assert sleeps == []


# -- what the clients send --------------------------------------------------------------------

@pytest.mark.parametrize(("provider", "url"), [
    ("openai", "https://api.openai.com/v1/chat/completions"),
    ("anthropic", "https://api.anthropic.com/v1/messages"),
    ("gemini", "https://generativelanguage.googleapis.com/v1beta/models/gemini-3.5-flash"
               ":streamGenerateContent?alt=sse"),
    ("openrouter", "https://openrouter.ai/api/v1/chat/completions"),
    ("xai", "https://api.x.ai/v1/chat/completions"),
    ("ollama", "http://127.0.0.1:11434/api/chat"),
])
def test_default_and_replaced_bases(provider, url):
    assert client(provider, env_for(provider)).build_request(make_prompt())[0] == url
    # The variable replaces exactly the default base, whatever path that base has.
    var, base_path, path = PATHS[provider]
    env = env_for(provider, **{var: "http://127.0.0.1:8080/prefix/"})
    assert client(provider, env).build_request(make_prompt())[0] == \
        "http://127.0.0.1:8080/prefix" + path.removeprefix(base_path)


def test_openai_request_body_and_headers():
    prompt = make_prompt()
    env = env_for("openai", OPENAI_ORG_ID="org-1", OPENAI_PROJECT_ID="proj_2")
    url, headers, body = client("openai", env).build_request(prompt)
    data = json.loads(body)
    assert data == {"model": "gpt-5.5",
                    "messages": [{"role": "system", "content": prompt.system},
                                 {"role": "user", "content": prompt.user}],
                    "stream": True, "stream_options": {"include_usage": True}}
    assert headers["Authorization"] == "Bearer sk-test-openai-0123456789"
    assert headers["OpenAI-Organization"] == "org-1" and headers["OpenAI-Project"] == "proj_2"
    data = json.loads(client("openai", env).build_request(prompt, 123)[2])
    assert data["max_completion_tokens"] == 123 and "max_tokens" not in data


def test_openai_self_hosted_sends_no_authorization_without_a_key():
    env = {"OPENAI_BASE_URL": "http://127.0.0.1:8080/v1"}
    assert "Authorization" not in client("openai", env).build_request(make_prompt())[1]
    env["OPENAI_API_KEY"] = "local-key-123"
    assert client("openai", env).build_request(make_prompt())[1]["Authorization"] == \
        "Bearer local-key-123"


def test_openrouter_and_xai_requests():
    data = json.loads(client("openrouter", env_for("openrouter")).build_request(
        make_prompt(), 50)[2])
    assert data["model"] == "openai/gpt-5.5" and data["max_tokens"] == 50
    headers = client("openrouter", env_for("openrouter", OPENAI_ORG_ID="org-1")).build_request(
        make_prompt())[1]
    assert "OpenAI-Organization" not in headers
    data = json.loads(client("xai", env_for("xai")).build_request(make_prompt(), 50)[2])
    assert data["model"] == "grok-4.6" and data["max_completion_tokens"] == 50


def test_anthropic_request():
    prompt = make_prompt()
    url, headers, body = client("anthropic", env_for("anthropic")).build_request(prompt)
    data = json.loads(body)
    assert data == {"model": "claude-sonnet-5", "max_tokens": 8192, "system": prompt.system,
                    "messages": [{"role": "user", "content": prompt.user}], "stream": True}
    assert headers["x-api-key"] == "sk-ant-test-0123456789"
    assert headers["anthropic-version"] == "2023-06-01" and "Authorization" not in headers
    assert json.loads(client("anthropic", env_for("anthropic")).build_request(
        prompt, 64)[2])["max_tokens"] == 64
    # ANTHROPIC_AUTH_TOKEN is a Bearer token; ANTHROPIC_API_KEY wins when both are set.
    headers = client("anthropic", {"ANTHROPIC_AUTH_TOKEN": "tok-123456789"}).build_request(
        prompt)[1]
    assert headers["Authorization"] == "Bearer tok-123456789" and "x-api-key" not in headers
    headers = client("anthropic", {"ANTHROPIC_AUTH_TOKEN": "tok-123456789",
                                   "ANTHROPIC_API_KEY": "sk-ant-1"}).build_request(prompt)[1]
    assert headers["x-api-key"] == "sk-ant-1" and "Authorization" not in headers


def test_gemini_request():
    prompt = make_prompt()
    url, headers, body = client("gemini", env_for("gemini")).build_request(prompt)
    assert json.loads(body) == {"contents": [{"role": "user", "parts": [{"text": prompt.user}]}],
                                "systemInstruction": {"parts": [{"text": prompt.system}]}}
    assert headers["x-goog-api-key"] == "AIza-test-0123456789" and "key=" not in url
    data = json.loads(client("gemini", env_for("gemini")).build_request(prompt, 77)[2])
    assert data["generationConfig"] == {"maxOutputTokens": 77}
    # GEMINI_API_KEY is the fallback; `google:` is the same client.
    headers = client("gemini", {"GEMINI_API_KEY": "g-2"}, "google:gemini-x").build_request(
        prompt)[1]
    assert headers["x-goog-api-key"] == "g-2"
    assert aethr.PROVIDERS["google"] is aethr.PROVIDERS["gemini"]


def test_ollama_request_and_num_ctx():
    small = make_prompt()
    data = json.loads(client("ollama", {}, "ollama:qwen3:8b").build_request(small)[2])
    assert data["model"] == "qwen3:8b"    # split at the first colon only
    assert data["think"] is False and data["stream"] is True
    assert data["options"] == {"num_ctx": 8192}
    assert [m["role"] for m in data["messages"]] == ["system", "user"]
    data = json.loads(client("ollama", {}).build_request(small, 300)[2])
    assert data["options"] == {"num_ctx": 8192, "num_predict": 300}
    # About 3 characters a token plus the output allowance, rounded up to a fixed size.
    big = make_prompt("x" * 60_000)
    data = json.loads(client("ollama", {}).build_request(big)[2])
    assert data["options"]["num_ctx"] == 32768
    assert aethr._ollama_num_ctx(30_000, 1000) == 16384
    assert aethr._ollama_num_ctx(10**7, None) == 131072


@pytest.mark.parametrize(("value", "base"), [
    ("", "http://127.0.0.1:11434"),
    ("0.0.0.0", "http://127.0.0.1:11434"),
    ("0.0.0.0:9000", "http://127.0.0.1:9000"),
    ("gpu-box", "http://gpu-box:11434"),
    ("gpu-box:8000", "http://gpu-box:8000"),
    ("http://gpu-box:8000/", "http://gpu-box:8000"),
    ("https://ollama.example.com", "https://ollama.example.com:443"),
    ("http://proxy.local/ollama", "http://proxy.local:80/ollama"),
    ("[::1]:11434", "http://[::1]:11434"),
    (":11500", "http://127.0.0.1:11500"),
])
def test_ollama_host(value, base):
    assert client("ollama", {"OLLAMA_HOST": value}).base_url() == base


def test_bad_base_urls_are_usage_errors():
    for env in ({"OPENAI_BASE_URL": "127.0.0.1:8080/v1"}, {"OLLAMA_HOST": "ftp://h"},
                {"OPENAI_BASE_URL": "http://h:80x/v1"}, {"OPENAI_BASE_URL": "https:///v1"},
                {"OLLAMA_HOST": "h:notaport"}):
        provider = "ollama" if "OLLAMA_HOST" in env else "openai"
        with pytest.raises(aethr.UsageError) as info:
            client(provider, {**env_for(provider), **env}).base_url()
        assert next(iter(env)) in info.value.message


# -- keys, preflight problems, settings -------------------------------------------------------

def test_provider_key_and_source():
    assert aethr.provider_key("openai", {}) is None
    assert aethr.provider_key("openai", {"OPENAI_API_KEY": "  "}) is None
    assert aethr.provider_key("openai", {"OPENAI_API_KEY": " sk-1\n"}) == ("OPENAI_API_KEY",
                                                                             "sk-1")
    env = {"GEMINI_API_KEY": "g", "GOOGLE_API_KEY": "o"}
    assert aethr.provider_key("gemini", env) == ("GOOGLE_API_KEY", "o")
    assert aethr.provider_key("google", {"GEMINI_API_KEY": "g"}) == ("GEMINI_API_KEY", "g")
    assert aethr.provider_key("ollama", env) is None
    assert aethr.key_source({"X": "1"}, "X") == "the environment"
    assert aethr.key_source(DotEnv({"X": "1"}, {"X"}), "X") == ".env"


def test_provider_problems():
    problems = aethr.provider_problems("openai:gpt-5.5", {})
    assert len(problems) == 1
    message, hint = problems[0]
    assert "OPENAI_API_KEY" in message and hint == "run: aethr auth login openai"
    message = aethr.provider_problems("anthropic:claude", {})[0][0]
    assert "ANTHROPIC_API_KEY" in message and "ANTHROPIC_AUTH_TOKEN" in message
    assert "GEMINI_API_KEY" in aethr.provider_problems("google:g", {})[0][0]
    assert "aethr auth login google" in aethr.provider_problems("google:g", {})[0][1]
    assert aethr.provider_problems("openai:gpt-5.5", env_for("openai")) == []
    assert aethr.provider_problems("ollama:qwen3:8b", {}) == []
    # A self-hosted OpenAI-compatible server needs no key; OpenAI's own host does.
    assert aethr.provider_problems("openai:m", {"OPENAI_BASE_URL": "http://127.0.0.1:1/v1"}) == []
    assert aethr.provider_problems("openai:m", {"OPENAI_BASE_URL":
                                                "https://api.openai.com/v1"}) != []
    assert "unknown provider 'mistral'" in aethr.provider_problems("mistral:large", {})[0][0]
    assert "names no model" in aethr.provider_problems("openai:", env_for("openai"))[0][0]
    bad = aethr.provider_problems("openai:m", {"OPENAI_BASE_URL": "localhost:8080"})
    assert [m for m, _ in bad if "OPENAI_BASE_URL must be" in m]


def test_provider_problems_with_any_registered_provider(monkeypatch):
    class Fake(aethr.Provider):
        pass

    monkeypatch.setitem(aethr.PROVIDERS, "openai", Fake)
    monkeypatch.setitem(aethr.PROVIDERS, "fake", Fake)
    assert aethr.provider_problems("openai:m", env_for("openai")) == []
    assert "OPENAI_API_KEY" in aethr.provider_problems("openai:m", {})[0][0]
    assert aethr.provider_problems("fake:m", {}) == []


def test_missing_key_fails_before_any_request(server):
    with pytest.raises(aethr.UsageError) as info:
        run(client("openai", {"OPENAI_BASE_URL": "https://api.openai.com/v1",
                              "HTTPS_PROXY": server.url}))
    assert "OPENAI_API_KEY" in info.value.message
    assert server.requests == []


@pytest.mark.parametrize(("name", "value"), [
    ("AETHR_TIMEOUT", "soon"), ("AETHR_TIMEOUT", "0"), ("AETHR_TIMEOUT", "-3"),
    ("AETHR_TIMEOUT", "nan"), ("AETHR_TIMEOUT", "inf"), ("AETHR_MAX_RETRIES", "-1"),
    ("AETHR_MAX_RETRIES", "two"), ("AETHR_MAX_RETRIES", "1.5"),
])
def test_settings_are_parsed_strictly(name, value):
    with pytest.raises(aethr.UsageError) as info:
        aethr.http_settings({name: value})
    assert name in info.value.message and info.value.exit_code == 2
    with pytest.raises(aethr.UsageError):
        run(client("openai", env_for("openai", **{name: value})))


def test_settings_defaults_and_values():
    assert aethr.http_settings({}) == (600.0, 2)
    assert aethr.http_settings({"AETHR_TIMEOUT": "", "AETHR_MAX_RETRIES": ""}) == (600.0, 2)
    assert aethr.http_settings({"AETHR_TIMEOUT": " 2.5 ", "AETHR_MAX_RETRIES": "0"}) == (2.5, 0)


# -- decoders ---------------------------------------------------------------------------------

def events(chunks: list[bytes]) -> list[tuple[str, str]]:
    return list(aethr._sse_events(chunks))


def test_sse_line_endings():
    want = [("message", "a\nb"), ("x", "c")]
    for body in (b"data: a\ndata: b\n\nevent: x\ndata: c\n\n",
                 b"data: a\r\ndata: b\r\n\r\nevent: x\r\ndata: c\r\n\r\n",
                 b"data: a\rdata: b\r\revent: x\rdata: c\r\r",
                 b"data: a\r\ndata: b\r\revent: x\ndata: c\r\n\n"):
        assert events([body]) == want
        assert events([bytes([b]) for b in body]) == want


def test_sse_cr_at_a_chunk_end_waits_for_the_next_chunk():
    # Read as two line ends, the CR and the LF would dispatch "a" and "b" apart.
    assert events([b"data: a\r", b"\ndata: b\r\n\r\n"]) == [("message", "a\nb")]
    assert events([b"data: a\r", b"data: b\r", b"\r"]) == [("message", "a\nb")]
    # A lone CR at the very end still ends its line.
    assert events([b"data: a\r\rdata: b\r"]) == [("message", "a"), ("message", "b")]


def test_sse_utf8_split_across_chunks():
    body = "data: caf\u00e9 \U0001F44B\n\n".encode()
    for i in range(1, len(body)):
        assert events([body[:i], body[i:]]) == [("message", "caf\u00e9 \U0001F44B")]


def test_sse_fields():
    assert events([b"\xef\xbb", b"\xbfdata: x\n\n"]) == [("message", "x")]   # a BOM
    body = (b": comment\n\nretry: 10\nid: 7\ndata:no space\ndata\n\n"
            b"event: ping\ndata: {}\n\nevent: lost\n\ndata:  two spaces\n\n")
    assert events([body]) == [("message", "no space\n"), ("ping", "{}"),
                              ("message", " two spaces")]


def test_sse_end_of_body():
    # Complete lines without the final blank line still make an event; an unfinished line
    # (the body was cut inside it) does not.
    assert events([b"data: a\n\ndata: b\n"]) == [("message", "a"), ("message", "b")]
    assert events([b"data: a\n\ndata: {\"cut"]) == [("message", "a")]
    assert events([]) == []


def test_ndjson_lines():
    body = '{"a": 1}\r\n\n{"b": "\u00e9"}\n{"c": 3}'.encode()
    want = ['{"a": 1}', '{"b": "\u00e9"}', '{"c": 3}']
    assert list(aethr._ndjson_events([body])) == want
    for i in range(1, len(body)):
        assert list(aethr._ndjson_events([body[:i], body[i:]])) == want


SSE_ENTRIES = [e for e in INDEX if e["kind"] == "sse"]


def _parser_for(entry: dict) -> aethr.Provider:
    name = entry["provider"]
    if name in ("ollama", "ollama-native"):
        return client("ollama" if name == "ollama-native" else "openai", {},
                      "ollama:m" if name == "ollama-native" else "openai:m")
    return client(name, {})


@pytest.mark.parametrize("entry", SSE_ENTRIES + [dict(e, base="ollama-native") for e in NATIVE
                                                 if e["kind"] == "ndjson"],
                         ids=[e["file"] for e in SSE_ENTRIES + NATIVE if e["kind"] != "json_error"])
def test_every_split_point(entry):
    body = (TRANSCRIPTS / entry.get("base", "") / entry["file"]).read_bytes()
    provider = _parser_for(entry)
    whole = parse(provider, [body])
    assert "".join(v for k, v in whole[0] if k == "text") == entry["expect"]["text"]
    assert parse(provider, [bytes([b]) for b in body]) == whole
    for i in range(1, len(body)):
        assert parse(provider, [body[:i], body[i:]]) == whole, i


def test_random_chunkings():
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies
    bodies = [(_parser_for(e), (TRANSCRIPTS / e["file"]).read_bytes()) for e in SSE_ENTRIES]

    @hypothesis.settings(max_examples=60, deadline=None, derandomize=True)
    @hypothesis.given(st.sampled_from(bodies), st.lists(st.floats(0, 1), max_size=30))
    def check(item, cuts):
        provider, body = item
        points = sorted({int(c * len(body)) for c in cuts} | {0, len(body)})
        chunks = [body[a:b] for a, b in zip(points[:-1], points[1:], strict=True)]
        assert parse(provider, chunks) == parse(provider, [body])

    check()


# -- stream semantics: finish reasons, errors in the stream, reasoning, usage ------------------

def body_outcome(provider: str, body: bytes, server: LoopbackServer, **env: str) -> Outcome:
    server.add(Reply.sse(body))
    return run(client(provider, env_for(provider, server, AETHR_MAX_RETRIES="0", **env)))


def test_text_is_yielded_as_it_arrives(server):
    first = sse(chat_chunk("first"), done=False)
    body = first + sse(chat_chunk(" second"), chat_chunk(finish="stop"), USAGE_CHUNK)
    server.add(Reply.sse(body, stall_after=len(first), stall=0.8))
    started = time.monotonic()
    stream = client("openai", env_for("openai", server)).stream(make_prompt())
    assert next(stream) == ("text", "first")
    assert time.monotonic() - started < 0.6
    assert [v for k, v in stream if k == "text"] == [" second"]
    assert time.monotonic() - started >= 0.7


def test_length_is_a_warning_not_an_error(server):
    out = body_outcome("openai", chat_body("partial", finish="length"), server)
    assert out.error is None and out.text == "partial"
    assert out.warnings == ["the output was cut: the model hit its token limit"]
    assert out.usage == {"input": 5, "output": 3}


def test_error_chunk_fails_even_when_done_follows(server):
    body = sse(chat_chunk("Hi"), {"error": {"message": "boom", "type": "server_error"}})
    out = body_outcome("openai", body, server)
    assert out.text == "Hi" and out.error.message == "openai: error in the stream: boom"


def test_stream_without_done_is_cut_short(server):
    out = body_outcome("openai", sse(chat_chunk("Hi"), chat_chunk(finish="stop"), USAGE_CHUNK,
                                     done=False), server)
    assert out.text == "Hi" and "ended before [DONE]" in out.error.message
    out = body_outcome("openai", sse(chat_chunk("Hi")), server)   # [DONE] but no finish
    assert "ended before [DONE]" in out.error.message


def test_openrouter_finish_reason_error_alone_fails(server):
    out = body_outcome("openrouter", sse(chat_chunk("Hi"), chat_chunk(finish="error")), server)
    assert out.text == "Hi" and "finish_reason error" in out.error.message


def test_refusals_and_filters_fail_naming_the_reason(server, sleeps):
    out = body_outcome("openai", chat_body("", finish="content_filter"), server)
    assert "content filter" in out.error.message and "content_filter" in out.error.message
    assert not out.error.retryable
    body = sse(chat_chunk(refusal="I can't help with that."), chat_chunk(finish="stop"),
               USAGE_CHUNK)
    out = body_outcome("openai", body, server)
    assert out.error.message == "openai: the model refused: I can't help with that."
    out = body_outcome("anthropic", anthropic_body(["No."], stop="refusal"), server)
    assert out.text == "No." and "stop_reason refusal" in out.error.message
    out = body_outcome("gemini", gemini_body(["Once"], finish="SAFETY"), server)
    assert out.text == "Once" and "finishReason SAFETY" in out.error.message
    blocked = sse({"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}}, done=False)
    out = body_outcome("gemini", blocked, server)
    assert "prompt was blocked (blockReason PROHIBITED_CONTENT)" in out.error.message
    assert sleeps == [] and len(server.requests) == 5


def anthropic_body(texts: list[str], *, stop: str = "end_turn", thinking: str = "",
                   output: int = 9) -> bytes:
    objs, names = [], []

    def add(name: str, obj: dict) -> None:
        names.append(name)
        objs.append({"type": name, **obj})

    add("message_start", {"message": {"usage": {"input_tokens": 11, "output_tokens": 1}}})
    if thinking:
        add("content_block_delta", {"index": 0, "delta": {"type": "thinking_delta",
                                                          "thinking": thinking}})
        add("content_block_delta", {"index": 0, "delta": {"type": "signature_delta",
                                                          "signature": "sig"}})
    add("ping", {})
    add("content_block_start", {"index": 1, "content_block": {"type": "text", "text": ""}})
    for text in texts:
        add("content_block_delta", {"index": 1, "delta": {"type": "text_delta", "text": text}})
    add("message_delta", {"delta": {"stop_reason": None}, "usage": {"output_tokens": 4}})
    add("message_delta", {"delta": {"stop_reason": stop}, "usage": {"output_tokens": output}})
    add("message_stop", {})
    return sse(*objs, done=False, events=names)


def gemini_body(texts: list[str], *, finish: str = "STOP", thought: str = "") -> bytes:
    chunks = []
    if thought:
        part = {"text": thought, "thought": True}
        chunks.append({"candidates": [{"content": {"parts": [part]}}]})
    for i, text in enumerate(texts):
        chunk: dict = {"candidates": [{"content": {"parts": [{"text": text}]}}],
                       "usageMetadata": {"promptTokenCount": 4, "totalTokenCount": 4}}
        if i == len(texts) - 1:
            chunk["candidates"][0]["finishReason"] = finish
            chunk["usageMetadata"] = {"promptTokenCount": 4, "candidatesTokenCount": 2,
                                      "thoughtsTokenCount": 6, "totalTokenCount": 12}
        chunks.append(chunk)
    return sse(*chunks, done=False).replace(b"\n", b"\r\n")


def test_anthropic_thinking_usage_and_max_tokens(server):
    out = body_outcome("anthropic", anthropic_body(["Hel", "lo"], thinking="Hmm.",
                                                   stop="max_tokens"), server)
    assert out.error is None and out.text == "Hello" and out.reasoning == "Hmm."
    assert out.usage == {"input": 11, "output": 9}
    assert out.warnings == ["the output was cut: the model hit its token limit"]


def test_anthropic_error_event_and_cut_stream(server):
    body = anthropic_body(["Hi"]).split(b"event: message_delta")[0]
    out = body_outcome("anthropic", body, server)
    assert out.text == "Hi" and "ended before message_stop" in out.error.message
    body = sse({"type": "error", "error": {"type": "api_error", "message": "Internal"}},
               done=False, events=["error"])
    out = body_outcome("anthropic", body, server)
    assert out.error.message == "anthropic: error in the stream: Internal"


def test_gemini_thoughts_and_max_tokens(server):
    out = body_outcome("gemini", gemini_body(["A", "B"], thought="plan", finish="MAX_TOKENS"),
                       server)
    assert out.error is None and out.text == "AB" and out.reasoning == "plan"
    assert out.usage == {"input": 4, "output": 2, "reasoning": 6}
    assert out.warnings == ["the output was cut: the model hit its token limit"]
    out = body_outcome("gemini", gemini_body(["A"]).rsplit(b"data:", 1)[0], server)
    assert "ended before a chunk with finishReason" in out.error.message


def ndjson(*objs: dict) -> bytes:
    return b"".join(json.dumps(o).encode() + b"\n" for o in objs)


def test_ollama_native_thinking_length_and_cut(server):
    msg = {"role": "assistant", "content": ""}
    body = ndjson({"message": {**msg, "thinking": "Let me see."}, "done": False},
                  {"message": {**msg, "content": "Forty"}, "done": False},
                  {"message": {**msg, "content": "-two"}, "done": True, "done_reason": "length",
                   "prompt_eval_count": 8, "eval_count": 2})
    server.add(Reply(200, {"Content-Type": "application/x-ndjson"}, body, plan="bytes:5"))
    out = run(client("ollama", env_for("ollama", server)))
    assert out.error is None and out.text == "Forty-two" and out.reasoning == "Let me see."
    assert out.warnings == ["the output was cut: the model hit its token limit"]
    assert out.usage == {"input": 8, "output": 2}
    # A body that stops before done: true is cut short; the text shown stays.
    server.add(Reply(200, {"Content-Type": "application/x-ndjson"}, body.rsplit(b"{", 1)[0]))
    out = run(client("ollama", env_for("ollama", server, AETHR_MAX_RETRIES="0")))
    assert out.text == "Forty" and "the stream ended before" in out.error.message


def test_json_body_where_a_stream_was_expected(server):
    server.add(Reply.json(200, {"error": {"message": "model is loading"}}))
    out = run(client("openai", env_for("openai", server)))
    assert out.error.message == ("openai: expected a stream, got application/json (HTTP 200): "
                                 "model is loading")
    assert len(server.requests) == 1
    server.add(Reply(200, {"Content-Type": "text/html"}, b"<html>login</html>"))
    out = run(client("openai", env_for("openai", server)))
    assert "got text/html" in out.error.message and "OPENAI_BASE_URL" in out.error.hint


@pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini"])
def test_json_body_without_content_type_is_told_as_json(provider, server):
    # Some gateways send no Content-Type at all: a body that opens with "{" is not a stream,
    # and its message is what the user needs (not "the stream ended before ...").
    body = b'  {"error": {"message": "model is loading"}}'
    # Whole, chunked, and in 2-byte pieces (the first ones only white space).
    for reply in (Reply(200, {}, body, framing="length"), Reply(200, {}, body),
                  Reply(200, {}, body, plan="bytes:2", gap=0.005)):
        server.add(reply)
        out = run(client(provider, env_for(provider, server, AETHR_MAX_RETRIES="0")))
        assert out.error.message == (f"{provider}: expected a stream, got a JSON body without "
                                     "a Content-Type (HTTP 200): model is loading")
        assert out.text == ""


def test_stream_without_content_type_still_streams(server):
    # Without a Content-Type, a body that is an event stream is read as one, chunk by chunk.
    server.add(Reply(200, {}, chat_body("Hello", " world"), plan="bytes:7"))
    out = run(client("openai", env_for("openai", server)))
    assert out.error is None and out.text == "Hello world"
    server.add(Reply(200, {}, b""))
    out = run(client("openai", env_for("openai", server, AETHR_MAX_RETRIES="0")))
    assert "the stream ended before [DONE]" in out.error.message


# -- faults and retries -----------------------------------------------------------------------

def test_429_then_success_waits_as_told(server, sleeps):
    entry = next(e for e in INDEX if e["file"] == "openai_error_429.json")
    server.add(reply_for(entry), Reply.sse(transcript("openai_basic.sse")))
    out = run(client("openai", env_for("openai", server)))
    assert out.error is None and out.text == "The quick brown fox jumps over the lazy dog."
    assert sleeps == [pytest.approx(1.324)]      # retry-after-ms wins over retry-after
    assert len(server.requests) == 2


def test_retry_after_seconds_and_dates(server, sleeps):
    server.add(Reply.json(503, {"error": {"message": "busy"}}, {"Retry-After": "3"}),
               Reply.json(503, {"error": {"message": "busy"}},
                          {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}),
               Reply.sse(chat_body("ok")))
    out = run(client("openai", env_for("openai", server)))
    assert out.text == "ok" and sleeps == [3.0, 0.0]    # a date in the past: no wait


def test_a_wait_over_a_minute_is_not_waited_for(server, sleeps):
    server.add(Reply.json(429, {"error": {"message": "Slow down"}}, {"retry-after": "120"}))
    out = run(client("openai", env_for("openai", server)))
    assert out.error.message == "openai: HTTP 429: Slow down"
    assert "120 s" in out.error.hint
    assert sleeps == [] and len(server.requests) == 1


def test_billing_errors_are_never_retried(server, sleeps):
    quota = {"error": {"message": "You exceeded your current quota, please check your plan.",
                       "type": "insufficient_quota", "code": "insufficient_quota"}}
    per_day = {"error": {"code": 429, "message": "Quota exceeded", "status":
                         "RESOURCE_EXHAUSTED", "details": [
                             {"@type": "type.googleapis.com/google.rpc.QuotaFailure",
                              "violations": [{"quotaId": "GenerateRequestsPerDayPerProject"}]},
                             {"@type": "type.googleapis.com/google.rpc.RetryInfo",
                              "retryDelay": "3s"}]}}
    spend = {"type": "error", "error": {"type": "billing_error",
                                        "message": "Your credit balance is too low"}}
    for provider, status, body in (("openai", 429, quota), ("gemini", 429, per_day),
                                   ("anthropic", 400, spend),
                                   ("xai", 429, {"error": "You have run out of credits"})):
        server.add(Reply.json(status, body))
        out = run(client(provider, env_for(provider, server)))
        assert out.error.billing and not out.error.retryable, provider
        assert "out of credits or over a spending limit" in out.error.message
        assert "rejected" not in out.error.message
    assert sleeps == [] and len(server.requests) == 4


def test_billing_error_inside_a_stream(server, sleeps):
    body = sse({"error": {"code": 402, "message": "Insufficient credits"},
                "choices": [{"index": 0, "delta": {}, "finish_reason": "error"}]}, done=False)
    server.add(Reply.sse(body))
    out = run(client("openrouter", env_for("openrouter", server)))
    assert out.error.billing and not out.error.retryable
    assert "out of credits or over a spending limit" in out.error.message
    assert len(server.requests) == 1 and sleeps == []


def test_server_errors_give_up_after_the_retries(server, sleeps):
    server.add(*[Reply.json(500, {"error": {"message": "Internal error"}})] * 3)
    out = run(client("openai", env_for("openai", server)))
    assert out.error.message == "openai: HTTP 500: Internal error" and out.error.status == 500
    assert len(server.requests) == 3
    assert 0.375 <= sleeps[0] <= 0.5 and 0.75 <= sleeps[1] <= 1.0


def test_max_retries_setting(server, sleeps):
    server.add(*[Reply.json(502, {"error": {"message": "Bad gateway"}})] * 5)
    out = run(client("openai", env_for("openai", server, AETHR_MAX_RETRIES="4")))
    assert len(server.requests) == 5 and len(sleeps) == 4 and sleeps[-1] <= 8
    server.requests.clear()
    server.add(Reply.json(502, {"error": {"message": "Bad gateway"}}))
    out = run(client("openai", env_for("openai", server, AETHR_MAX_RETRIES="0")))
    assert out.error.status == 502 and len(server.requests) == 1


def test_overloaded_529_is_retried(server, sleeps):
    entry = next(e for e in INDEX if e["file"] == "anthropic_error_529.json")
    server.add(reply_for(entry), Reply.sse(transcript("anthropic_basic.sse")))
    out = run(client("anthropic", env_for("anthropic", server)))
    assert out.error is None and out.text == "Hello! How can I help you today?"
    assert len(sleeps) == 1


def test_an_error_event_before_any_text_is_retried(server, sleeps):
    server.add(Reply.sse(sse({"error": {"message": "overloaded"}}, done=False)),
               Reply.sse(sse({"type": "error", "error": {"type": "overloaded_error",
                                                         "message": "Overloaded"}},
                             done=False, events=["error"])),
               Reply.sse(chat_body("fine")))
    out = run(client("openai", env_for("openai", server)))
    assert out.error is None and out.text == "fine" and len(server.requests) == 3
    server.add(Reply.sse(sse({"type": "error", "error": {"type": "overloaded_error",
                                                         "message": "Overloaded"}},
                             done=False, events=["error"])),
               Reply.sse(transcript("anthropic_basic.sse")))
    out = run(client("anthropic", env_for("anthropic", server)))
    assert out.error is None and out.text == "Hello! How can I help you today?"


def test_connection_closed_mid_stream(server, sleeps):
    body = transcript("openai_basic.sse")
    cut = body.index(b" lazy")
    server.add(Reply.sse(body, close_after=cut, plan="bytes:200"))
    out = run(client("openai", env_for("openai", server)))
    assert out.text == "The quick brown fox jumps over the"
    assert "connection was lost mid-stream" in out.error.message
    assert out.error.retryable and len(server.requests) == 1 and sleeps == []
    # Without chunked framing the end of the body looks normal: the missing [DONE] tells.
    server.add(Reply.sse(body, close_after=cut, framing="close"))
    out = run(client("openai", env_for("openai", server)))
    assert out.text == "The quick brown fox jumps over the"
    assert "ended before [DONE]" in out.error.message


def test_connection_closed_before_any_text_is_retried(server, sleeps):
    body = transcript("openai_basic.sse")
    server.add(Reply.sse(body, close_after=40), Reply.sse(body))
    out = run(client("openai", env_for("openai", server)))
    assert out.error is None and out.text.startswith("The quick") and len(sleeps) == 1


def test_a_stalled_stream_times_out(server, sleeps):
    body = transcript("openai_basic.sse")
    server.add(Reply.sse(body, stall_after=body.index(b" brown"), stall=5))
    started = time.monotonic()
    out = run(client("openai", env_for("openai", server, AETHR_TIMEOUT="0.5",
                                       AETHR_MAX_RETRIES="0")))
    assert time.monotonic() - started < 3
    assert out.text == "The quick"
    assert out.error.message == "openai: the stream stalled: no data for 0.5 s"
    assert "AETHR_TIMEOUT" in out.error.hint


def test_no_response_times_out_and_is_retried(server, sleeps):
    server.add(Reply.sse(chat_body("late"), delay=5), Reply.sse(chat_body("ok")))
    started = time.monotonic()
    out = run(client("openai", env_for("openai", server, AETHR_TIMEOUT="0.5")))
    assert time.monotonic() - started < 3
    assert out.error is None and out.text == "ok" and len(sleeps) == 1
    server.add(Reply.sse(chat_body("late"), delay=5))
    out = run(client("openai", env_for("openai", server, AETHR_TIMEOUT="0.5",
                                       AETHR_MAX_RETRIES="0")))
    assert out.error.message == f"openai: no response from 127.0.0.1:{server.port} within 0.5 s"


def test_connection_refused(sleeps):
    port = dead_port()
    out = run(client("openai", {"OPENAI_BASE_URL": f"http://127.0.0.1:{port}/v1"}))
    assert out.error.message == f"openai: connection refused by 127.0.0.1:{port}"
    assert "OPENAI_BASE_URL" in out.error.hint
    assert out.error.retryable and len(sleeps) == 2
    out = run(client("ollama", {"OLLAMA_HOST": f"127.0.0.1:{port}", "AETHR_MAX_RETRIES": "0"}))
    assert "ollama serve" in out.error.hint


def test_loopback_never_goes_through_a_proxy(server, sleeps):
    dead = f"http://127.0.0.1:{dead_port()}"
    proxies = {v: dead for v in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "https_proxy",
                                 "http_proxy", "all_proxy")}
    for host in ("127.0.0.1", "localhost"):
        server.add(Reply.sse(chat_body("direct")))
        env = {"OPENAI_BASE_URL": f"http://{host}:{server.port}/v1", **proxies}
        out = run(client("openai", env))
        assert out.error is None and out.text == "direct", host
    assert sleeps == []


def test_other_hosts_go_through_the_proxy(server, sleeps):
    # The loopback server plays the proxy: it sees the absolute URL, and no DNS is needed.
    server.add(Reply.sse(chat_body("proxied")))
    env = {"OPENAI_BASE_URL": "http://llm.example.invalid/v1", "HTTP_PROXY": server.url}
    out = run(client("openai", env))
    assert out.error is None and out.text == "proxied"
    assert server.requests[0].path == "http://llm.example.invalid/v1/chat/completions"
    # A dead proxy is named as such (without its credentials).
    env["HTTP_PROXY"] = f"http://user:secret@127.0.0.1:{dead_port()}"
    out = run(client("openai", {**env, "AETHR_MAX_RETRIES": "0"}))
    assert "connection refused by the proxy 127.0.0.1:" in out.error.message
    assert "secret" not in out.error.message


def test_proxy_choice():
    proxy = aethr._http_proxy
    env = {"HTTPS_PROXY": "http://big:3128", "https_proxy": "http://small:3128",
           "HTTP_PROXY": "http://plain:3128"}
    assert proxy("https://api.openai.com/v1", env) == "http://small:3128"
    assert proxy("http://gpu-box:11434", env) == "http://plain:3128"
    for url in ("https://127.0.0.1/v1", "http://localhost:1/", "http://[::1]:8/", "http://127.9.9.9/"):
        assert proxy(url, env) is None, url
    assert proxy("https://api.openai.com/v1", {**env, "NO_PROXY": "example.com,openai.com"}) \
        is None
    assert proxy("https://api.openai.com/v1", {**env, "no_proxy": "*"}) is None
    assert proxy("https://api.x.ai/v1", {**env, "NO_PROXY": "openai.com"}) == "http://small:3128"
    assert proxy("https://api.x.ai/v1", {}) is None


# -- rejected keys ----------------------------------------------------------------------------

def test_401_names_the_variable_and_where_it_came_from(server, sleeps):
    entry = next(e for e in INDEX if e["file"] == "openai_error_401.json")
    key = "sk-test-secret-value-987654321"
    for env, source in ((DotEnv({"OPENAI_API_KEY": key}, {"OPENAI_API_KEY"}), ".env"),
                        ({"OPENAI_API_KEY": key}, "the environment")):
        server.add(reply_for(entry))
        env["OPENAI_BASE_URL"] = server.url + "/v1"
        out = run(client("openai", env))
        assert f"the key in OPENAI_API_KEY (from {source}) was rejected" in out.error.message
        assert "aethr auth login openai" in out.error.hint
        assert key not in out.error.message + out.error.hint and not out.error.retryable
    # A server that echoes the key back does not get it printed.
    server.add(Reply.json(401, {"error": {"message": f"Bad key {key}"}}))
    out = run(client("openai", {"OPENAI_API_KEY": key, "OPENAI_BASE_URL": server.url + "/v1"}))
    assert key not in out.error.message and "[redacted]" in out.error.message
    assert sleeps == []


@pytest.mark.parametrize(("file", "var"), [("gemini_error_400_badkey.json", "GOOGLE_API_KEY"),
                                           ("xai_error_400_badkey.json", "XAI_API_KEY"),
                                           ("anthropic_error_401.json", "ANTHROPIC_API_KEY"),
                                           ("openrouter_error_401.json", "OPENROUTER_API_KEY")])
def test_bad_key_statuses(file, var, server):
    entry = next(e for e in INDEX if e["file"] == file)
    server.add(reply_for(entry))
    out = run(client(entry["provider"], env_for(entry["provider"], server)))
    assert f"the key in {var} (from the environment) was rejected" in out.error.message
    assert MODELS[entry["provider"]][2] not in out.error.message


def test_xai_credits_403_is_billing_not_a_bad_key(server):
    entry = next(e for e in INDEX if e["file"] == "xai_error_403_credits.json")
    server.add(reply_for(entry))
    out = run(client("xai", env_for("xai", server)))
    assert out.error.billing and "rejected" not in out.error.message
    assert "out of credits or over a spending limit" in out.error.message


def test_a_gemini_400_that_is_not_about_the_key(server):
    server.add(Reply.json(400, {"error": {"code": 400, "status": "INVALID_ARGUMENT",
                                          "message": "Invalid value at 'contents'"}}))
    out = run(client("gemini", env_for("gemini", server)))
    assert out.error.message == "gemini: HTTP 400: Invalid value at 'contents'"


# -- network failures explained ---------------------------------------------------------------

def test_dns_failures():
    fail = aethr._http_net_error
    exc = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    err = fail("openai", "https://api.openai.com/v1/chat/completions", exc, "connect", 600, None,
               "the system's CA certificates")
    assert err.message == ("openai: cannot resolve api.openai.com: DNS lookup failed (Name or "
                           "service not known)")
    assert not err.retryable and "OPENAI_BASE_URL" in err.hint and "network" in err.hint
    again = socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
    assert fail("xai", "https://api.x.ai/v1", again, "connect", 600, None, None).retryable


def test_certificate_error_names_the_bundle():
    exc = ssl.SSLCertVerificationError(1, "certificate verify failed")
    exc.verify_message = "self-signed certificate"
    exc.reason = "CERTIFICATE_VERIFY_FAILED"
    err = aethr._http_net_error("anthropic", "https://api.anthropic.com/v1/messages", exc,
                                "connect", 600, None, "/etc/corp.pem (SSL_CERT_FILE)")
    assert err.message == ("anthropic: the TLS certificate of api.anthropic.com could not be "
                           "verified (self-signed certificate); CA bundle used: /etc/corp.pem "
                           "(SSL_CERT_FILE)")
    assert "SSL_CERT_FILE" in err.hint and not err.retryable


def test_tls_to_a_plain_http_server(server, sleeps):
    out = run(client("openai", {"OPENAI_BASE_URL": f"https://127.0.0.1:{server.port}/v1"}))
    assert out.error.message.startswith(f"openai: TLS error with 127.0.0.1:{server.port}")
    assert sleeps == []


def test_unreadable_ca_bundle(tmp_path):
    missing = str(tmp_path / "nope.pem")
    for var in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"):
        out = run(client("openai", env_for("openai", **{var: missing})))
        assert f"cannot load the CA bundle {missing} ({var})" in out.error.message


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    if not shutil.which("openssl"):
        pytest.skip("openssl is needed to make a test certificate")
    where = tmp_path_factory.mktemp("tls")
    cert, key = where / "cert.pem", where / "key.pem"
    proc = subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                           "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
                           "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                           "-keyout", str(key), "-out", str(cert)],
                          capture_output=True, timeout=20)
    if proc.returncode != 0:
        pytest.skip(f"openssl cannot make a test certificate: {proc.stderr[-200:]!r}")
    return str(cert), str(key)


def test_https_with_a_private_ca(certificate, sleeps):
    cert, key = certificate
    with LoopbackServer(certfile=cert, keyfile=key) as tls:
        base = tls.url + "/v1"
        out = run(client("openai", {"OPENAI_BASE_URL": base}))
        assert "could not be verified" in out.error.message
        assert "the system's CA certificates" in out.error.message and sleeps == []
        for var in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"):
            tls.add(Reply.sse(chat_body("secure")))
            out = run(client("openai", {"OPENAI_BASE_URL": base, var: cert}))
            assert out.error is None and out.text == "secure", var


def test_redirects_are_errors_not_silent_gets(server, sleeps):
    # urllib would follow a 302 with a GET and no body; an API that moved must say so.
    server.add(Reply(302, {"Location": "https://elsewhere.example/v1/chat/completions"}, b""))
    out = run(client("openai", env_for("openai", server)))
    assert out.error.message == ("openai: HTTP 302: no message; the server redirects to "
                                 "https://elsewhere.example/v1/chat/completions")
    assert "OPENAI_BASE_URL" in out.error.hint
    assert len(server.requests) == 1 and sleeps == []


@pytest.mark.parametrize("host, loopback", [
    ("127.0.0.1", True), ("127.9.9.9", True), ("[::1]", True), ("localhost", True),
    ("0.0.0.0", True), ("[::]", True), ("10.0.0.1", False), ("example.com", False),
])
def test_loopback_hosts_never_go_through_a_proxy(host, loopback):
    assert aethr._http_is_loopback(host) is loopback

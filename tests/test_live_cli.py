"""§12 with §8: `aethr run` in live mode against a loopback OpenAI-compatible server (SPEC §2,
§6): the streamed answer on stdout, a mid-stream error failing the step with exit 3 while the
partial text stays, and a missing key stopping the preflight (exit 2) before any request."""
from __future__ import annotations

import json

import pytest
from conftest import DATA
from loopback import LoopbackServer, Reply

KEY = "sk-test-123456789"
ANSWER = "No findings.\n\nReview status: pass\n"


def answer_body(text: str) -> bytes:
    chunks = [{"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
              for piece in text.split(" ")[:1] + [" " + p for p in text.split(" ")[1:]]]
    chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    chunks.append({"choices": [], "usage": {"prompt_tokens": 120, "completion_tokens": 9}})
    return ("".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n").encode()


@pytest.fixture
def changed_repo(git_repo):
    (git_repo / "src" / "app.py").write_text("def add(a, b):\n    return a + b + 0\n")
    return git_repo


def live_env(server: LoopbackServer, **extra: str) -> dict[str, str]:
    return {"AETHR_LIVE": "1", "OPENAI_BASE_URL": server.url + "/v1", "OPENAI_API_KEY": KEY,
            **extra}


def test_live_run_streams_the_answer(changed_repo, server, run_aethr):
    server.add(Reply.sse(answer_body(ANSWER), plan="bytes:7"))
    res = run_aethr("run", "review", cwd=changed_repo, env=live_env(server))
    assert res.code == 0, res
    assert ANSWER.strip() in res.out
    assert "openai:gpt-5.5" in res.err and "mock" not in res.err
    assert KEY not in res.out + res.err
    [request] = server.requests
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["user-agent"].startswith("aethr/")
    assert request.json["model"] == "gpt-5.5" and request.json["stream"] is True
    system, user = request.json["messages"]
    assert system["role"] == "system" and user["role"] == "user"
    assert "review" in user["content"] and "return a + b + 0" in user["content"]


def test_live_run_mid_stream_error_keeps_the_partial_text(changed_repo, server, run_aethr):
    body = (DATA / "transcripts" / "openai_midstream_error.sse").read_bytes()
    server.add(Reply.sse(body))
    res = run_aethr("run", "review", cwd=changed_repo, env=live_env(server))
    assert res.code == 3, res
    assert "Sure, here is the" in res.out
    assert ("aethr: error: step 'review' failed: openai: error in the stream: The server had an "
            "error while processing your request. Sorry about that!") in res.err
    assert len(server.requests) == 1      # text was shown: no retry


def test_live_run_without_a_key_stops_before_any_request(changed_repo, server, cli):
    # OpenAI's own host needs a key; the loopback server stands in as the HTTPS proxy, so
    # any request that slipped through would reach it.
    env = {"AETHR_LIVE": "1", "HTTPS_PROXY": server.url, "HTTP_PROXY": server.url}
    res = cli("run", "review", env=env)
    assert res.code == 2, res
    assert "OPENAI_API_KEY" in res.err and "aethr auth login openai" in res.err
    assert res.out == ""
    assert server.requests == []


# -- loops in live mode (SPEC §8), against the scripted loopback provider -------------------------

LOOP = """\
roles:
  writer: Write the change.
  reviewer: Review the change.
models:
  default: openai:gpt-5.5
steps:
  - id: write
    role: writer
  - id: review
    role: reviewer
    repeat: {back_to: write, %s, max_iterations: 3}
"""


def loop_run(repo, server, cli, until, answers):
    (repo / ".aethr.yaml").write_text(LOOP % until)
    for text in answers:
        server.add(Reply.sse(answer_body(text)))
    return cli("run", "loop it", env=live_env(server))


def test_live_loop_revise_then_pass(changed_repo, server, cli):
    r = loop_run(changed_repo, server, cli, "until_review_pass: true",
                 ["draft one", "Review status: revise", "draft two", "Review status: pass"])
    assert r.code == 0, r
    assert len(server.requests) == 4
    assert "iteration 2/3" in r.err and "verdict pass" in r.err
    # The second review sees the second draft (history), and the loop protocol is appended.
    second_review = server.requests[3].json["messages"]
    assert "draft two" in second_review[1]["content"]
    assert "Review status: pass" in second_review[0]["content"]


def test_live_loop_always_revise_runs_out(changed_repo, server, cli):
    r = loop_run(changed_repo, server, cli, "until_review_pass: true",
                 ["d1", "Review status: revise"] * 3)
    assert r.code == 1, r
    assert len(server.requests) == 6
    assert "did not pass after 3 iterations" in r.err and "verdict revise" in r.err


def test_live_loop_until_contains(changed_repo, server, cli):
    r = loop_run(changed_repo, server, cli, "until_contains: SHIPPED",
                 ["d1", "not yet", "d2", "all good, SHIPPED"])
    assert r.code == 0, r
    assert len(server.requests) == 4
    assert "Include the exact text SHIPPED" in server.requests[1].json["messages"][0]["content"]

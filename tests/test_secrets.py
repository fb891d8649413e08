"""Issue 5, secrets: key values seeded everywhere a user keeps them — the environment, `.env`, a
committed file read through file: and glob:, an untracked `.env.local`, the task, a cmd:
context's output, and provider error bodies served by the loopback server — and every command
run, failing ones included. No seeded value may appear in stdout, stderr, the prompts the
server received, `--show-prompt`, `--json`, or any file left in the temp directory
(checkpoints). SPEC §4 (never-read files, `[redacted]` in prompts), §6 (a rejected key names
its variable and where it came from, never its value), §10 (no secret in a checkpoint), §11
(.env, auth status masks)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import git
from loopback import LoopbackServer, Reply

import aethr

#: One distinct value per place (all 8+ characters, so all are redacted where known).
OPENAI = "sk-env-openai-4f9a2c7e1b"          # environment: OPENAI_API_KEY
ANTHROPIC = "sk-ant-env-8d3b6e0a5c"         # environment: ANTHROPIC_API_KEY (cmd: prints it)
GH = "ghp_envtoken_2c5e8a1f7d"              # environment: GH_TOKEN (the task holds it)
DB = "db-env-secret-9e1c4b7a3f"             # environment: DB_SECRET (a committed file holds it)
XAI = "xai-dotenv-key-6b2d9f4e8a"           # .env: XAI_API_KEY (the worktree holds it)
MINE = "mine-dotenv-key-3a7c1e5b9d"         # .env: MY_API_KEY (committed file, cmd: stderr)
LOCAL = "local-untracked-5e8b2a6c0f"        # .env.local, never read: known to nobody
LOGIN = "sk-login-stdin-7a1f3d9c5e"         # given to auth login --key-stdin
REFUSED = "sk-refused-2b6e0c4a8d"           # a key auth login refuses (it has a space)
SECRETS = {"OPENAI": OPENAI, "ANTHROPIC": ANTHROPIC, "GH": GH, "DB": DB, "XAI": XAI,
           "MINE": MINE, "LOCAL": LOCAL, "LOGIN": LOGIN, "REFUSED": REFUSED}

WORKFLOW = """\
workflow: secrets
roles:
  reviewer: |
    Review the change. End with the line "Review status: pass" or "Review status: revise".
  writer: Summarise the review in two lines.
models:
  reviewer: openai:gpt-5.5
  writer: xai:grok-4
steps:
  - id: review
    role: reviewer
    context:
      - git_diff
      - file:config/settings.py
      - glob:config/*
      - glob:**
      - file:.env
      - file:.env.local
      - 'cmd:echo "out $ANTHROPIC_API_KEY"; echo "err $MY_API_KEY" >&2'
  - id: summary
    role: writer
    context: [latest_diff]
"""
TASK = f"review the change; the token {GH} and the key {OPENAI} were pasted here by mistake"
REVIEW_ANSWER = "No findings.\n\nReview status: pass\n"
SUMMARY_ANSWER = "The change is fine.\nNothing to do.\n"

BAD_KEY_401 = {"error": {
    "message": f"Incorrect API key provided: {OPENAI}. You can find your API key at "
               "https://platform.openai.com/account/api-keys.",
    "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}}
REJECTED_401 = ("aethr: error: step 'review' failed: openai: HTTP 401: Incorrect API key "
                "provided: [redacted]. You can find your API key at "
                "https://platform.openai.com/account/api-keys.; the key in OPENAI_API_KEY (from "
                "the environment) was rejected")
#: xAI answers a bad key with a 400 and a flat body (tests/data/transcripts).
BAD_KEY_XAI = {"code": "Client specified an invalid argument",
               "error": f"Incorrect API key provided: {XAI}. You can obtain an API key from "
                        "https://console.x.ai."}
REJECTED_XAI = ("aethr: error: step 'summary' failed: xai: HTTP 400: Incorrect API key "
                "provided: [redacted]. You can obtain an API key from https://console.x.ai.; "
                "the key in XAI_API_KEY (from .env) was rejected")
MID_STREAM_ERROR = ("aethr: error: step 'review' failed: openai: error in the stream: the "
                    "session for [redacted] was closed")


def sse_answer(text: str) -> bytes:
    chunks = [{"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
              for piece in text.splitlines(keepends=True)]
    chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    chunks.append({"choices": [], "usage": {"prompt_tokens": 100, "completion_tokens": 9}})
    return ("".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n").encode()


def sse_mid_stream_error(message: str) -> bytes:
    text = {"choices": [{"index": 0, "delta": {"content": "Sure, here is"},
                         "finish_reason": None}]}
    error = {"error": {"message": message, "type": "server_error", "param": None,
                       "code": None}}
    return f"data: {json.dumps(text)}\n\ndata: {json.dumps(error)}\n\n".encode()


@pytest.fixture
def seeded(git_repo, server):
    """The repository with every secret in its place; returns the environment to run with."""
    (git_repo / ".aethr.yaml").write_text(WORKFLOW)
    (git_repo / "config").mkdir()
    (git_repo / "config" / "settings.py").write_text(
        f'DB_PASSWORD = "{DB}"\nMY_KEY = "{MINE}"\n')
    git(git_repo, "add", "-A")
    git(git_repo, "commit", "-q", "-m", "settings")
    # The working tree changes: the diff holds a key from .env.
    (git_repo / "config" / "settings.py").write_text(
        f'DB_PASSWORD = "{DB}"\nMY_KEY = "{MINE}"\nXAI_KEY = "{XAI}"\n')
    # Untracked and not ignored: git_diff lists them as new files; never read.
    (git_repo / ".env").write_text(f"XAI_API_KEY={XAI}\nexport MY_API_KEY='{MINE}'\n")
    (git_repo / ".env.local").write_text(f"LOCAL_TOKEN={LOCAL}\nOPENAI_API_KEY={OPENAI}\n")
    return {"OPENAI_API_KEY": OPENAI, "ANTHROPIC_API_KEY": ANTHROPIC, "GH_TOKEN": GH,
            "DB_SECRET": DB, "OPENAI_BASE_URL": server.url + "/v1",
            "XAI_BASE_URL": server.url + "/v1", "AETHR_MAX_RETRIES": "0"}


def leaks(text: str) -> list[str]:
    """The names of the seeded values that appear in `text`."""
    return [name for name, value in SECRETS.items() if value in text]


class Runner:
    """Runs aethr in-process or as a subprocess and checks every output for seeded values."""

    def __init__(self, how: str, cli, run_aethr, server: LoopbackServer, env: dict,
                 root: Path, monkeypatch) -> None:
        self.how, self.cli, self.run_aethr = how, cli, run_aethr
        self.server, self.env, self.root, self.monkeypatch = server, env, root, monkeypatch
        self.tmp = Path(os.environ["TMPDIR"])
        self.seen: list[str] = []       # every output, prompt and temp file, for the record

    def __call__(self, *argv: str, stdin: str = "", cwd: Path | None = None, **extra: str):
        env = dict(self.env, **extra)
        sent = len(self.server.requests)
        before = set(self.tmp.rglob("*"))
        if self.how == "subprocess":
            res = self.run_aethr(*argv, cwd=cwd or self.root, env=env, input=stdin)
        else:
            self.monkeypatch.chdir(cwd or self.root)
            res = self.cli(*argv, env=env, stdin=stdin)
            self.monkeypatch.chdir(self.root)
        where = {"stdout": res.out, "stderr": res.err}
        for i, request in enumerate(self.server.requests[sent:]):
            where[f"request {i + 1} body"] = request.body.decode("utf-8", "replace")
        for path in sorted(self.tmp.rglob("*")):
            if path.is_file():
                where[f"temp file {path.name}" + (" (new)" if path not in before else "")] = \
                    path.read_bytes().decode("utf-8", "replace")
        found = {place: leaks(text) for place, text in where.items() if leaks(text)}
        assert found == {}, f"aethr {' '.join(argv)}: seeded values leaked: {found}\n{res!r}"
        self.seen.extend(where.values())
        res.bodies = [r.json for r in self.server.requests[sent:]]
        res.new_files = sorted(set(self.tmp.rglob("aethr-checkpoint-*")) - before)
        return res


@pytest.fixture(params=["in-process", "subprocess"])
def aethr_run(request, seeded, server, git_repo, cli, run_aethr, monkeypatch):
    return Runner(request.param, cli, run_aethr, server, seeded, git_repo, monkeypatch)


def prompt_of(body: dict) -> str:
    return "\n".join(m["content"] for m in body["messages"])


def test_no_seeded_value_leaks_from_any_command(aethr_run, server, git_repo):
    run = aethr_run

    # 1. Commands that read no secret at all.
    res = run("version")
    assert res.code == 0 and res.out == f"aethr {aethr.__version__}\n"
    assert run("init", "--list").code == 0
    (git_repo / "fresh").mkdir()
    res = run("init", "plan-implement-review", cwd=git_repo / "fresh")
    assert res.code == 0, res
    res = run("check")
    assert res.code == 0, res
    assert "aethr: .aethr.yaml is valid" in res.err
    res = run("check", "--live")
    assert res.code == 0, res

    # 2. Mock runs and --show-prompt: the secrets reach the prompt only as [redacted].
    res = run("run", TASK, "--show-prompt")
    assert res.code == 0, res
    shown = res.out
    assert "# Task\n\nreview the change; the token [redacted] and the key [redacted] were " \
           "pasted here by mistake\n" in shown
    assert 'DB_PASSWORD = "[redacted]"\nMY_KEY = "[redacted]"\nXAI_KEY = "[redacted]"' in shown
    assert '+XAI_KEY = "[redacted]"' in shown                       # git_diff
    assert "out [redacted]" in shown and "err [redacted]" in shown  # cmd: stdout, stderr
    assert "[file:.env \u2014 may hold secrets, never read]" in shown
    assert "[file:.env.local \u2014 may hold secrets, never read]" in shown
    assert "[.env.local \u2014 may hold secrets, never read]" in shown   # glob:**
    assert "patch of .env.local not shown" in shown                 # git_diff
    res = run("run", TASK)
    assert res.code == 0, res
    res = run("run", "--json", TASK)
    assert res.code == 0, res
    events = [json.loads(line) for line in res.out.splitlines()]
    assert events[0]["event"] == "run_start" and events[-1]["event"] == "run_end"

    # 3. Live against the loopback server: the prompts it receives are redacted.
    server.add(Reply.sse(sse_answer(REVIEW_ANSWER)), Reply.sse(sse_answer(SUMMARY_ANSWER)))
    res = run("run", TASK, AETHR_LIVE="1")
    assert res.code == 0, res
    assert REVIEW_ANSWER.strip() in res.out and SUMMARY_ANSWER.strip() in res.out
    review, summary = res.bodies
    assert review["model"] == "gpt-5.5" and summary["model"] == "grok-4"
    prompt = prompt_of(review)
    assert "the token [redacted] and the key [redacted]" in prompt
    assert 'XAI_KEY = "[redacted]"' in prompt and "out [redacted]" in prompt
    assert "the token [redacted]" in prompt_of(summary)

    # 4. A 401 that echoes the key: the variable and its source, never the value.
    server.add(Reply.json(401, BAD_KEY_401))
    res = run("run", TASK, AETHR_LIVE="1")
    assert res.code == 3, res
    lines = res.err.splitlines()
    assert REJECTED_401 in lines, res
    [hint] = [x for x in lines if x.startswith("aethr: hint: ")]
    assert "OPENAI_API_KEY" in hint and "aethr auth login openai" in hint, res
    assert len(res.new_files) == 1
    # The same with --json and with AETHR_DEBUG's tracebacks.
    server.add(Reply.json(401, BAD_KEY_401))
    res = run("run", "--json", TASK, AETHR_LIVE="1")
    assert res.code == 3, res
    end = json.loads(res.out.splitlines()[-1])
    assert end["event"] == "run_end" and end["error"] == REJECTED_401.removeprefix(
        "aethr: error: ")
    server.add(Reply.json(401, BAD_KEY_401))
    res = run("run", TASK, AETHR_LIVE="1", AETHR_DEBUG="1")
    assert res.code == 3 and "Traceback (most recent call last)" in res.err, res

    # 5. The key in .env, rejected by xAI in the second step: ".env" is named as its source.
    server.add(Reply.sse(sse_answer(REVIEW_ANSWER)), Reply.json(400, BAD_KEY_XAI))
    res = run("run", TASK, AETHR_LIVE="1")
    assert res.code == 3, res
    assert REJECTED_XAI in res.err.splitlines(), res
    [hint] = [x for x in res.err.splitlines() if x.startswith("aethr: hint: ")]
    assert "XAI_API_KEY" in hint and "aethr auth login xai" in hint, res

    # 6. A mid-stream error that echoes the key; the checkpoint (shown raw by --verbose),
    # then the resume, which calls the server for the failed step on.
    server.add(Reply.sse(sse_mid_stream_error(f"the session for {OPENAI} was closed")))
    res = run("run", TASK, "--verbose", AETHR_LIVE="1")
    assert res.code == 3, res
    assert MID_STREAM_ERROR in res.err.splitlines(), res
    assert "Sure, here is" in res.out
    [checkpoint] = res.new_files
    saved = json.loads(checkpoint.read_text())
    assert saved["task"] == ("review the change; the token [redacted] and the key [redacted] "
                             "were pasted here by mistake")
    assert saved["state"]["partial"]["output"] == "Sure, here is"
    server.add(Reply.sse(sse_answer(REVIEW_ANSWER)), Reply.sse(sse_answer(SUMMARY_ANSWER)))
    res = run("run", "--resume-checkpoint", str(checkpoint))
    assert res.code == 0, res
    assert len(res.bodies) == 2 and "the token [redacted]" in prompt_of(res.bodies[0])
    assert not checkpoint.exists()

    # 7. auth: status masks, login takes a key from stdin, logout removes it.
    res = run("auth", "status")
    assert res.code == 0, res
    assert f"openai      {'OPENAI_API_KEY':<21} set in the environment: " \
           f"{OPENAI[:3]}\u2026{OPENAI[-4:]}\n" in res.out
    assert f"xai         {'XAI_API_KEY':<21} set in .env: {XAI[:3]}\u2026{XAI[-4:]}\n" in res.out
    res = run("auth", "login", "openai", "--key-stdin", stdin=LOGIN + "\n")
    assert res.code == 0, res
    assert LOGIN in (git_repo / ".env").read_text()
    res = run("auth", "login", "xai", "--key-stdin", stdin=f"{REFUSED} and more\n")
    assert res.code == 2, res
    res = run("auth", "logout", "openai")
    assert res.code == 0, res
    assert LOGIN not in (git_repo / ".env").read_text()

    # 8. Failing commands: a bad workflow, a bad flag, a bad checkpoint.
    (git_repo / "bad.yaml").write_text("roles:\n  r: x\nsteps:\n  - id: s\n    role: nobody\n"
                                       "    context: [bogus]\n")
    res = run("run", "--workflow", "bad.yaml", TASK)
    assert res.code == 2 and "aethr: error: 2 problems in bad.yaml" in res.err, res
    res = run("run", "--bogus", TASK)
    assert res.code == 2 and "--bogus" in res.err, res
    res = run("check", "--live", "--workflow", "bad.yaml")
    assert res.code == 2, res
    (git_repo / "broken.json").write_text('{"aethr_checkpoint": 1, "task": "x"')
    res = run("run", "--resume-checkpoint", "broken.json")
    assert res.code == 2, res

    # Everything above was looked at.
    assert len(run.seen) > 40 and not leaks("\n".join(run.seen))


@pytest.mark.parametrize("kind", ["401", "mid-stream", "html-401"])
def test_a_key_cut_by_the_message_limit_is_not_shown_in_part(seeded, server, cli, kind):
    # The provider's message is cut to one line of limited length; a key that straddles the
    # cut must not leave its first characters behind (SPEC §6: never its value).
    key = "sk-straddle-" + "0123456789abcdef" * 3
    filler = "Rejected. " + "x" * 560 + " "
    if kind == "401":
        server.add(Reply.json(401, {"error": {"message": filler + key + " end"}}))
    elif kind == "mid-stream":
        server.add(Reply.sse(sse_mid_stream_error(filler + key + " end")))
    else:
        server.add(Reply(401, {"Content-Type": "text/html"},
                         f"<html>{filler[:270]}{key} end</html>", framing="length"))
    res = cli("run", "review", env=dict(seeded, AETHR_LIVE="1", OPENAI_API_KEY=key))
    assert res.code == 3, res
    pieces = {key[i:i + 12] for i in range(len(key) - 11)}
    shown = [p for p in pieces if p in res.out + res.err]
    assert shown == [], res
    assert "aethr: error: step 'review' failed: openai: " in res.err

"""The real OpenCode CLI (opencode-ai@1.18.33), end to end and offline (SPEC §7).

A loopback OpenAI-compatible server on 127.0.0.1 plays the model: OpenCode's title request (no
tools) gets a short title; its agent requests get an `edit` tool call, then a `write` tool call,
then a final text. OpenCode is configured through OPENCODE_CONFIG_CONTENT with a custom provider
(@ai-sdk/openai-compatible, bundled in the binary), in isolated HOME/XDG folders, with every
proxy variable pointing at a dead loopback port so that nothing can leave the machine.

OpenCode comes from AETHR_OPENCODE_BIN or <repo>/.cache/opencode (`.ci/run` installs it with
`npm install --prefix .cache/opencode opencode-ai@1.18.33`). Without it the tests skip, except
under CI=true, where they fail.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import ROOT, git

import aethr

OPENCODE_VERSION = "1.18.33"
#: Read at import: the autouse fixture removes AETHR_* variables before each test.
_BIN = os.environ.get("AETHR_OPENCODE_BIN") or str(
    ROOT / ".cache" / "opencode" / "node_modules" / ".bin" /
    ("opencode.cmd" if os.name == "nt" else "opencode"))
_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes", "on")
#: The model OpenCode is given, and the one Aethr's own steps use through OPENAI_BASE_URL.
OC_PROVIDER, OC_MODEL = "loopback", "oc-model"
AETHR_MODEL = "gpt-5.5"

EDIT_OLD = "A small project."
EDIT_NEW = "A small project, edited by OpenCode."
WRITTEN = "# Added\n\nWritten by OpenCode.\n"
FINAL = "Edited README.md and added docs/added.md."


@pytest.fixture
def opencode_bin():
    if not (os.path.isfile(_BIN) and os.access(_BIN, os.X_OK)):
        why = (f"the real OpenCode CLI is not installed ({_BIN} not found); install it with "
               f"`npm install --prefix .cache/opencode --no-audit --no-fund "
               f"opencode-ai@{OPENCODE_VERSION}` or set AETHR_OPENCODE_BIN")
        if _CI:
            pytest.fail("CI=true: " + why)
        pytest.skip(why)
    return _BIN


class ModelServer:
    """A threaded OpenAI-compatible chat-completions server (streaming SSE) on 127.0.0.1.

    Requests for OC_MODEL are OpenCode's: without tools, the title request; with tools, the
    agent loop, answered by how many tool results the conversation already holds. Any other
    model is one of Aethr's own steps: the reviewer passes, the planner gives a plan.
    """

    def __init__(self, root: Path, *, fail: bool = False) -> None:
        self.root = root
        self.fail = fail
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 30

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                with owner.lock:
                    owner.requests.append({"method": "GET", "path": self.path})
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                with owner.lock:
                    owner.requests.append({"method": "POST", "path": self.path, "body": body})
                if owner.fail and body.get("model") == OC_MODEL and body.get("tools"):
                    self.send_json(401, {"error": {"message": "Invalid loopback key",
                                                   "type": "invalid_request_error"}})
                    return
                deltas, finish = owner.answer(body)
                if not body.get("stream"):
                    text = "".join(d.get("content") or "" for d in deltas)
                    self.send_json(200, {
                        "id": "cmpl-1", "object": "chat.completion", "created": 1,
                        "model": body.get("model"), "choices": [{
                            "index": 0, "finish_reason": finish,
                            "message": {"role": "assistant", "content": text}}],
                        "usage": {"prompt_tokens": 10, "completion_tokens": 5,
                                  "total_tokens": 15}})
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                base = {"id": "cmpl-1", "object": "chat.completion.chunk", "created": 1,
                        "model": body.get("model")}
                for delta in deltas:
                    self.event({**base, "choices": [{"index": 0, "delta": delta,
                                                     "finish_reason": None}]})
                self.event({**base, "choices": [{"index": 0, "delta": {},
                                                 "finish_reason": finish}],
                            "usage": {"prompt_tokens": 100, "completion_tokens": 20,
                                      "total_tokens": 120}})
                self.event("[DONE]")
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()

            def send_json(self, status: int, obj: object) -> None:
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def event(self, obj: object) -> None:
                data = b"data: " + (obj.encode() if isinstance(obj, str)
                                    else json.dumps(obj).encode()) + b"\n\n"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            block_on_close = False

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)

    def answer(self, body: dict) -> tuple[list[dict], str]:
        messages = body.get("messages") or []
        if body.get("model") != OC_MODEL:
            user = "\n".join(str(m.get("content")) for m in messages if m.get("role") == "user")
            if "(role: reviewer" in user:
                return [{"role": "assistant", "content": "No findings.\n"},
                        {"content": "Review status: pass\n"}], "stop"
            return [{"role": "assistant", "content": "1. Goal: edit the README and add a "
                     "docs page.\n"}], "stop"
        if not body.get("tools"):
            return [{"role": "assistant", "content": "Edit the README"}], "stop"
        done = sum(1 for m in messages if m.get("role") == "tool")
        if done == 0:
            call = ("edit", {"filePath": str(self.root / "README.md"), "oldString": EDIT_OLD,
                             "newString": EDIT_NEW})
        elif done == 1:
            call = ("write", {"filePath": str(self.root / "docs" / "added.md"),
                              "content": WRITTEN})
        else:
            return [{"role": "assistant", "content": FINAL}], "stop"
        return [{"role": "assistant", "tool_calls": [{
            "index": 0, "id": f"call_{done + 1}", "type": "function",
            "function": {"name": call[0], "arguments": json.dumps(call[1])}}]}], "tool_calls"

    def posts(self, model: str) -> list[dict]:
        with self.lock:
            return [r["body"] for r in self.requests
                    if r["method"] == "POST" and r["body"].get("model") == model]

    def __enter__(self) -> ModelServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def _dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def opencode_env(opencode: str, server: ModelServer, home: Path,
                 permission: dict | None = None) -> dict[str, str]:
    """OpenCode's configuration and an isolated, offline environment for it."""
    config = {
        "$schema": "https://opencode.ai/config.json",
        "provider": {OC_PROVIDER: {
            "npm": "@ai-sdk/openai-compatible", "name": "Loopback",
            "options": {"baseURL": server.url, "apiKey": "loopback-key"},
            "models": {OC_MODEL: {"name": "Loopback model", "tool_call": True}}}},
        "model": f"{OC_PROVIDER}/{OC_MODEL}",
        "small_model": f"{OC_PROVIDER}/{OC_MODEL}",
        "autoupdate": False, "share": "disabled", "lsp": False, "formatter": False,
    }
    if permission:
        config["permission"] = permission
    dead = f"http://127.0.0.1:{_dead_port()}"
    env = {
        "PATH": os.path.dirname(opencode) + os.pathsep + os.environ.get("PATH", ""),
        "HOME": str(home), "USERPROFILE": str(home),
        "XDG_CONFIG_HOME": str(home / "config"), "XDG_DATA_HOME": str(home / "data"),
        "XDG_CACHE_HOME": str(home / "cache"), "XDG_STATE_HOME": str(home / "state"),
        "OPENCODE_CONFIG_CONTENT": json.dumps(config),
        "OPENCODE_DISABLE_MODELS_FETCH": "1", "OPENCODE_DISABLE_DEFAULT_PLUGINS": "1",
        "OPENCODE_DISABLE_LSP_DOWNLOAD": "1", "OPENCODE_DISABLE_CLAUDE_CODE": "1",
        # Anything that tries to leave the machine fails at once.
        "HTTP_PROXY": dead, "HTTPS_PROXY": dead, "http_proxy": dead, "https_proxy": dead,
        "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
    }
    for key in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME", "XDG_STATE_HOME"):
        os.makedirs(env[key], exist_ok=True)
    return env


def user_state(repo: Path) -> tuple:
    return ((repo / ".git" / "index").read_bytes(), git(repo, "rev-parse", "HEAD"),
            git(repo, "stash", "list"))


def test_real_opencode_through_the_backend(git_repo, opencode_bin, tmp_path):
    with ModelServer(git_repo) as server:
        env = dict(os.environ, **opencode_env(opencode_bin, server, tmp_path / "ochome"))
        state = user_state(git_repo)
        project = aethr.Project(str(git_repo), env)
        workflow = aethr.load_workflow(text=(
            "workflow: real\nroles:\n  implementer: Implement the change.\nsteps:\n"
            "  - id: implement\n    role: implementer\n    backend: opencode\n"
            "    timeout: 240\n"))
        prompt = aethr.build_prompt(workflow, "edit the README and add a docs page",
                                    workflow.steps[0])
        events: list[dict] = []
        t0 = time.monotonic()
        text, usage, artifact = aethr.OpenCodeBackend(env, live=True, project=project).run(
            prompt, f"{OC_PROVIDER}:{OC_MODEL}", "", events.append)
        wall = time.monotonic() - t0
        print(f"\nreal OpenCode {OPENCODE_VERSION} through the backend: {wall:.1f} s")
        for e in events:
            print("  ", e["event"], e.get("message") or e.get("text", "").rstrip())
        oc_requests = server.posts(OC_MODEL)
    assert text == FINAL + "\n"
    assert artifact.files == [("M", "README.md", None), ("A", "docs/added.md", None)]
    assert f"-{EDIT_OLD}\n+{EDIT_NEW}\n" in artifact.patch
    assert "+Written by OpenCode." in artifact.patch
    progress = [e["message"] for e in events if e["event"] == "progress"]
    assert progress[:2] == ["edit README.md", "write docs/added.md"]
    assert progress[2].startswith("OpenCode: 3 model steps, 2 tool calls")
    assert [e for e in events if e["event"] == "warning"] == []
    assert usage["input"] >= 300 and usage["output"] >= 60
    assert user_state(git_repo) == state
    # The prompt reached OpenCode's model whole, through stdin.
    agent = [r for r in oc_requests if r.get("tools")]
    assert len(agent) == 3
    first_user = "\n".join(str(m.get("content")) for m in agent[0]["messages"]
                           if m.get("role") == "user")
    assert "edit the README and add a docs page" in first_user
    assert prompt.system.splitlines()[0] in first_user


@pytest.mark.parametrize("unsafe", [False, True])
def test_real_opencode_permission_rules(git_repo, opencode_bin, tmp_path, unsafe):
    """An `ask` rule: `opencode run` rejects the edit, unless unsafe_permissions approves it."""
    with ModelServer(git_repo) as server:
        env = dict(os.environ, **opencode_env(opencode_bin, server, tmp_path / "ochome",
                                              permission={"edit": "ask"}))
        workflow = aethr.load_workflow(text=(
            "workflow: real\nroles:\n  implementer: Implement the change.\nsteps:\n"
            "  - id: implement\n    role: implementer\n    backend: opencode\n"
            f"    timeout: 240\n    unsafe_permissions: {'true' if unsafe else 'false'}\n"))
        events: list[dict] = []
        backend = aethr.OpenCodeBackend(env, live=True,
                                        project=aethr.Project(str(git_repo), env))
        _, _, artifact = backend.run(
            aethr.build_prompt(workflow, "edit the README", workflow.steps[0]),
            f"{OC_PROVIDER}:{OC_MODEL}", "", events.append)
    warnings = [e["message"] for e in events if e["event"] == "warning"]
    if unsafe:
        assert warnings == []
        assert [p for _, p, _ in artifact.files] == ["README.md", "docs/added.md"]
    else:
        assert len(warnings) == 2, warnings
        assert warnings[0].startswith("OpenCode was not allowed to edit README.md: permission "
                                      "rejected")
        assert "unsafe_permissions: true on step 'implement'" in warnings[0]
        assert warnings[1] == "OpenCode changed no file (1 tool rejected: edit)"
        assert artifact.files == []


def test_real_opencode_model_error_fails_the_step(git_repo, opencode_bin, tmp_path):
    """OpenCode's `error` event (here its model's 401) fails the step with OpenCode's message."""
    with ModelServer(git_repo, fail=True) as server:
        env = dict(os.environ, **opencode_env(opencode_bin, server, tmp_path / "ochome"))
        workflow = aethr.load_workflow(text=(
            "workflow: real\nroles:\n  implementer: Implement the change.\nsteps:\n"
            "  - id: implement\n    role: implementer\n    backend: opencode\n"
            "    timeout: 240\n"))
        backend = aethr.OpenCodeBackend(env, live=True,
                                        project=aethr.Project(str(git_repo), env))
        with pytest.raises(aethr.BackendError) as info:
            backend.run(aethr.build_prompt(workflow, "edit the README", workflow.steps[0]),
                        f"{OC_PROVIDER}:{OC_MODEL}", "", lambda e: None)
    print("\n" + info.value.message)
    assert info.value.message.startswith("OpenCode failed: ")
    assert "Invalid loopback key" in info.value.message
    assert info.value.exit_code == 3


def test_real_opencode_in_the_preset_run(git_repo, opencode_bin, tmp_path, run_aethr):
    """plan-implement-review, live, from a subdirectory of a repo with unrelated changes."""
    repo = git_repo
    (repo / "src" / "app.py").write_text("def add(a, b):\n    return a + b  # UNRELATED-STAGED\n")
    git(repo, "add", "src/app.py")
    (repo / "src" / "util.py").write_text("UNRELATED_UNTRACKED = 1\n")
    (repo / "src" / "app.py").write_text("def add(a, b):\n    return a + b  # UNRELATED-UNSTAGED\n")
    state = user_state(repo)
    with ModelServer(repo) as server:
        env = opencode_env(opencode_bin, server, tmp_path / "ochome")
        env.update({"OPENAI_BASE_URL": server.url, "OPENAI_API_KEY": "sk-loopback-test-key"})
        t0 = time.monotonic()
        res = run_aethr("run", "--live", "--preset", "plan-implement-review", "--model",
                        f"implementer={OC_PROVIDER}:{OC_MODEL}",
                        "edit the README and add a docs page", cwd=repo / "src", env=env,
                        timeout=300)
        wall = time.monotonic() - t0
        print(f"\nplan-implement-review with the real OpenCode: {wall:.1f} s, exit {res.code}")
        print(res.err)
        reviews = [b for b in server.posts(AETHR_MODEL)
                   if "(role: reviewer" in json.dumps(b["messages"])]
    assert res.code == 0, res
    assert len(reviews) == 1
    prompt = "\n".join(str(m.get("content")) for m in reviews[0]["messages"])
    assert "diff --git a/README.md b/README.md" in prompt
    assert f"-{EDIT_OLD}\n+{EDIT_NEW}\n" in prompt
    assert "diff --git a/docs/added.md b/docs/added.md" in prompt
    assert "+Written by OpenCode." in prompt
    for unrelated in ("UNRELATED-STAGED", "UNRELATED-UNSTAGED", "UNRELATED_UNTRACKED",
                      "src/util.py", "src/app.py"):
        assert unrelated not in prompt
    assert user_state(repo) == state
    assert (repo / "docs" / "added.md").read_text() == WRITTEN
    assert EDIT_NEW in (repo / "README.md").read_text()

"""Section 9: the OpenCode backend and step artifacts (SPEC §7), against a stand-in `opencode`
and real git.

The stand-in is a small Python script, first on PATH, that records its argv, stdin, working
directory and environment, then plays a scenario: JSON events and raw lines on stdout, text on
stderr, file edits, a grandchild process, a hang, an exit status."""
from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import git, wait_gone

import aethr

pytestmark = pytest.mark.skipif(os.name == "nt", reason="the stand-in opencode is a POSIX script")

MODEL = "openai:gpt-5.5"
KEY = "sk-test-secret-value-1234567890"

STAND_IN = """\
#!{python}
import json, os, subprocess, sys, time

here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, "scenario.json")) as f:
    scenario = json.load(f)
record = {{"argv": sys.argv[1:], "cwd": os.getcwd(), "env": dict(os.environ), "stdin": None}}


def save():
    with open(os.path.join(here, "record.json"), "w") as f:
        json.dump(record, f)


def read_stdin():
    # Reads to the end, as `opencode run` does: it hangs if the pipe is never closed.
    record["stdin"] = sys.stdin.buffer.read().decode("utf-8", "replace")
    save()


if not any(a[0] == "read_stdin" for a in scenario):
    read_stdin()
save()
for action in scenario:
    kind, args = action[0], action[1:]
    if kind == "read_stdin":
        read_stdin()
    elif kind == "event":
        sys.stdout.write(json.dumps(args[0]) + "\\n")
        sys.stdout.flush()
    elif kind == "raw":
        sys.stdout.buffer.write(bytes.fromhex(args[0]))
        sys.stdout.flush()
    elif kind == "stderr":
        sys.stderr.write(args[0])
        sys.stderr.flush()
    elif kind == "write":
        os.makedirs(os.path.dirname(os.path.abspath(args[0])), exist_ok=True)
        with open(args[0], "w") as f:
            f.write(args[1])
    elif kind == "delete":
        os.remove(args[0])
    elif kind == "rename":
        os.makedirs(os.path.dirname(os.path.abspath(args[1])), exist_ok=True)
        os.rename(args[0], args[1])
    elif kind == "grandchild":
        # A process OpenCode starts (a tool's shell command, a server); it inherits stdout
        # when asked to, as a background job would.
        out = None if args[1] else subprocess.DEVNULL
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                                 stdout=out, stderr=subprocess.DEVNULL)
        with open(args[0], "w") as f:
            f.write(str(child.pid))
    elif kind == "sleep":
        time.sleep(args[0])
    elif kind == "exit":
        sys.stdout.flush()
        os._exit(args[0])
"""


class StandIn:
    """The stand-in `opencode`: `play(...)` sets its scenario, `record()` reads what it saw."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.exe = bindir / "opencode"
        self.exe.write_text(STAND_IN.format(python=sys.executable))
        self.exe.chmod(self.exe.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        self.path = str(bindir) + os.pathsep + os.environ.get("PATH", "")
        self.play()

    def play(self, *actions: list) -> None:
        (self.bindir / "scenario.json").write_text(json.dumps([list(a) for a in actions]))
        record = self.bindir / "record.json"
        if record.exists():
            record.unlink()

    def record(self) -> dict:
        return json.loads((self.bindir / "record.json").read_text())

    def ran(self) -> bool:
        return (self.bindir / "record.json").exists()


@pytest.fixture
def opencode(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    return StandIn(bindir)


# -- helpers ----------------------------------------------------------------------------------

def workflow(*extra: str, model: str | None = None) -> aethr.Workflow:
    lines = "".join(f"    {e}\n" for e in extra)
    models = f"models:\n  default: {model}\n" if model else ""
    return aethr.load_workflow(text=(
        "workflow: oc\nroles:\n  implementer: Implement the change.\n" + models +
        "steps:\n  - id: implement\n    role: implementer\n    backend: opencode\n" + lines))


def prompt_for(wf: aethr.Workflow, task: str = "make the change") -> aethr.Prompt:
    return aethr.build_prompt(wf, task, wf.steps[0])


class Run:
    """The outcome of one backend run: text, usage, artifact and the events it emitted."""

    def __init__(self, text, usage, artifact, events):
        self.text, self.usage, self.artifact, self.events = text, usage, artifact, events

    def of(self, kind: str) -> list:
        key = "text" if kind == "text" else "message"
        return [e[key] for e in self.events if e["event"] == kind]


def run_backend(repo, opencode, *extra, model=None, env=None, prompt=None, emit=None):
    """Run OpenCodeBackend live in `repo` with the stand-in first on PATH."""
    environ = dict(os.environ, PATH=opencode.path, **(env or {}))
    project = aethr.Project(str(repo), environ)
    wf = workflow(*extra)
    events: list[dict] = []

    def collect(event: dict) -> None:
        events.append(event)
        if emit:
            emit(event)

    backend = aethr.OpenCodeBackend(environ, live=True, project=project)
    text, usage, artifact = backend.run(prompt or prompt_for(wf), model, "", collect)
    return Run(text, usage, artifact, events)


def ev(kind: str, **fields) -> list:
    """A stand-in action that prints one OpenCode JSON event."""
    return ["event", {"type": kind, "timestamp": 1, "sessionID": "ses_test", **fields}]


def tool(name: str, status: str = "completed", error: str | None = None, **inp) -> list:
    state = {"status": status, "input": inp}
    if status == "completed":
        state["output"] = "ok"
    if error is not None:
        state["error"] = error
    return ev("tool_use", part={"type": "tool", "tool": name, "callID": "c1", "state": state})


def text(value: str) -> list:
    return ev("text", part={"type": "text", "text": value, "time": {"start": 1, "end": 2}})


def finish(inp: int = 0, out: int = 0, cost: float = 0.0, reasoning: int = 0,
           cache_read: int = 0) -> list:
    return ev("step_finish", part={"type": "step-finish", "reason": "stop", "cost": cost,
                                   "tokens": {"input": inp, "output": out, "reasoning": reasoning,
                                              "cache": {"read": cache_read, "write": 0}}})


START = ev("step_start", part={"type": "step-start"})


def index_state(repo: Path) -> tuple:
    """The user's git state that no step may touch: index bytes, HEAD, stash."""
    index = repo / ".git" / "index"
    return (index.read_bytes() if index.exists() else None,
            git(repo, "rev-parse", "-q", "--verify", "HEAD", check=False),
            git(repo, "stash", "list"), git(repo, "rev-parse", "-q", "--verify", "refs/stash",
                                               check=False))


@pytest.fixture
def dirty_repo(git_repo):
    """git_repo plus the user's own work: a staged edit, an unstaged edit, an untracked file,
    a stash, and files to delete and rename."""
    (git_repo / "old_name.txt").write_text("".join(f"line {i}\n" for i in range(40)))
    (git_repo / "doomed.txt").write_text("to be deleted\n")
    git(git_repo, "add", "-A")
    git(git_repo, "commit", "-q", "-m", "more files")
    (git_repo / "src" / "app.py").write_text("def add(a, b):\n    return a + b  # stashed\n")
    git(git_repo, "stash", "-q")
    (git_repo / "README.md").write_text("# Demo\n\nA small project, staged edit.\n")
    git(git_repo, "add", "README.md")
    (git_repo / "src" / "app.py").write_text("def add(a, b):\n    return a + b  # unstaged\n")
    (git_repo / "notes.txt").write_text("the user's own notes\n")
    return git_repo


# -- the command line OpenCode gets -----------------------------------------------------------

def test_argv_stdin_cwd_and_environment(git_repo, opencode):
    opencode.play(START, text("Done."), finish())
    wf = workflow()
    prompt = prompt_for(wf)
    env = {"GIT_INDEX_FILE": str(git_repo / "elsewhere"), "AETHR_LIVE": "1", "PWD": "/nowhere"}
    run_backend(git_repo, opencode, model=MODEL, env=env, prompt=prompt)
    rec = opencode.record()
    assert rec["argv"] == ["run", "--format", "json", "-m", "openai/gpt-5.5"]
    assert rec["stdin"] == prompt.system + "\n\n" + prompt.user
    assert os.path.samefile(rec["cwd"], git_repo)
    assert rec["env"]["PWD"] == str(git_repo)
    assert "GIT_INDEX_FILE" not in rec["env"]
    assert rec["env"]["OPENCODE_DISABLE_AUTOUPDATE"] == "1"
    assert rec["env"]["PATH"] == opencode.path


def test_cwd_is_the_project_root_in_a_subdirectory(git_repo, opencode):
    sub = git_repo / "src"
    opencode.play(START, ["write", "made-here.txt", "x\n"], text("ok"), finish())
    environ = dict(os.environ, PATH=opencode.path)
    backend = aethr.OpenCodeBackend(environ, live=True, project=aethr.Project(str(sub), environ))
    _, _, artifact = backend.run(prompt_for(workflow()), None, "", lambda e: None)
    rec = opencode.record()
    assert os.path.samefile(rec["cwd"], sub) and rec["env"]["PWD"] == str(sub)
    # Artifact paths are relative to the repository root, like every diff.
    assert artifact.files == [("A", "src/made-here.txt", None)]


@pytest.mark.parametrize("model, expect", [
    ("gemini:gemini-3-pro", "google/gemini-3-pro"),
    ("google:x", "google/x"),
    ("ollama:qwen3:8b", "ollama/qwen3:8b"),
    ("anthropic:claude-sonnet-5", "anthropic/claude-sonnet-5"),
    ("mycorp:big-model", "mycorp/big-model"),     # custom providers pass through
])
def test_model_mapping(git_repo, opencode, model, expect):
    opencode.play(START, text("ok"), finish())
    run_backend(git_repo, opencode, model=model)
    assert opencode.record()["argv"] == ["run", "--format", "json", "-m", expect]


def test_no_model_means_no_m_flag(git_repo, opencode):
    opencode.play(START, text("ok"), finish())
    run_backend(git_repo, opencode, model=None)
    assert opencode.record()["argv"] == ["run", "--format", "json"]


def test_unsafe_permissions_adds_the_flag_only_when_true(git_repo, opencode):
    opencode.play(START, text("ok"), finish())
    run_backend(git_repo, opencode, "unsafe_permissions: true", model="xai:grok-4")
    assert opencode.record()["argv"] == ["run", "--format", "json", "-m", "xai/grok-4",
                                         "--dangerously-skip-permissions"]
    run_backend(git_repo, opencode, "unsafe_permissions: false", model="xai:grok-4")
    assert "--dangerously-skip-permissions" not in opencode.record()["argv"]


def test_missing_binary(git_repo, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    environ = dict(os.environ, PATH=str(empty))
    backend = aethr.OpenCodeBackend(environ, live=True,
                                    project=aethr.Project(str(git_repo), environ))
    with pytest.raises(aethr.BackendError) as info:
        backend.run(prompt_for(workflow()), None, "", lambda e: None)
    assert "opencode" in info.value.message and "not installed" in info.value.message
    assert info.value.hint == "npm install -g opencode-ai"
    assert info.value.exit_code == 3


def test_mock_mode_runs_nothing(git_repo, opencode):
    environ = dict(os.environ, PATH=opencode.path)
    backend = aethr.OpenCodeBackend(environ, live=False,
                                    project=aethr.Project(str(git_repo), environ))
    text_, usage, artifact = backend.run(prompt_for(workflow()), MODEL, "", lambda e: None)
    assert text_.startswith("[mock]") and usage == {}
    assert artifact.files == [] and "mock" in artifact.note
    assert not opencode.ran()


def test_a_huge_prompt_and_a_chatty_opencode_do_not_deadlock(git_repo, opencode):
    # OpenCode writes ~1 MB before it reads its stdin: a writer that blocked on the stdin pipe
    # while nobody read stdout would hang both processes.
    chatter = [text("x" * 1000) for _ in range(1000)]
    opencode.play(START, *chatter, ["read_stdin"], finish(), START, text("Done."), finish())
    wf = workflow("timeout: 60")
    base = prompt_for(wf)
    huge = aethr.Prompt(base.system, "u" * (3 << 20), [], base.step, [])
    t0 = time.monotonic()
    run = run_backend(git_repo, opencode, prompt=huge)
    assert time.monotonic() - t0 < 30
    assert opencode.record()["stdin"] == base.system + "\n\n" + "u" * (3 << 20)
    assert run.text == "Done.\n"


# -- events: progress, text, usage --------------------------------------------------------------

def test_events_become_progress_text_and_usage(git_repo, opencode):
    root = str(git_repo)
    opencode.play(
        START,
        text("I will fix it."),
        tool("read", filePath=f"{root}/src/app.py"),
        tool("edit", filePath=f"{root}/README.md", oldString="A small", newString="A tiny"),
        ["write", "README.md", "# Demo\n\nA tiny project.\n"],
        tool("bash", command="pytest -q\necho done", description="run the tests"),
        tool("write", filePath=f"{root}/docs/new.md", content="new\n"),
        ["write", "docs/new.md", "new\n"],
        tool("grep", pattern="def add"),
        tool("webfetch", url="https://example.invalid/x"),
        tool("todowrite", todos=[]),
        finish(inp=100, out=20, cost=0.0125, cache_read=50),
        START,
        text("Fixed README.md."),
        text("All tests pass."),
        finish(inp=200, out=30, cost=0.0025, reasoning=5),
    )
    run = run_backend(git_repo, opencode, model=MODEL)
    progress = run.of("progress")
    assert progress[:7] == ["read src/app.py", "edit README.md", "bash: pytest -q \u2026",
                            "write docs/new.md", "grep def add",
                            "webfetch https://example.invalid/x", "todowrite"]
    assert progress[7].startswith("OpenCode: 2 model steps, 7 tool calls, tokens 350 in / "
                                  "55 out, cost $0.0150")
    assert len(progress) == 8
    assert "".join(run.of("text")) == ("I will fix it.\n\nFixed README.md.\n\nAll tests pass.\n")
    # The step's answer is the final text, not the running commentary.
    assert run.text == "Fixed README.md.\n\nAll tests pass.\n"
    assert run.usage == {"input": 350, "output": 55, "cost": pytest.approx(0.015)}
    assert run.of("warning") == []
    assert [(s, p) for s, p, _ in run.artifact.files] == [("M", "README.md"),
                                                          ("A", "docs/new.md")]
    assert all(e["step"] == "implement" for e in run.events)


def test_unknown_events_and_junk_lines_are_ignored(git_repo, opencode):
    opencode.play(
        ["raw", b"not json at all\n".hex()],
        ["raw", b"\xff\xfe{\"type\": \"text\"}\n".hex()],             # not UTF-8
        ["raw", b"[1, 2, 3]\n".hex()],
        ["raw", b"\"a string\"\n".hex()],
        ["raw", b"\n".hex()],
        ev("session.mystery", part={"x": 1}),
        ev("reasoning", part={"type": "reasoning", "text": "hmm"}),
        ev("tool_use", part="not a dict"),
        ev("step_finish", part={"tokens": "many", "cost": "free"}),
        START, text("ok"), finish(inp=1, out=2),
        ["raw", b"{\"type\": \"text\", \"part\": {\"text\": \"cut off".hex()],   # no newline
    )
    run = run_backend(git_repo, opencode)
    assert run.text == "ok\n"
    assert run.usage == {"input": 1, "output": 2, "cost": 0.0}
    assert run.of("warning") == ["OpenCode changed no file"]


def test_no_text_at_all(git_repo, opencode):
    opencode.play(START, ["write", "f.txt", "x\n"], finish())
    run = run_backend(git_repo, opencode)
    assert run.text == "[OpenCode ended without a final message]\n"
    assert run.of("text") == []


# -- warnings: permissions, tool errors, no change ------------------------------------------------

def test_permission_rejected_is_a_warning_naming_the_tool_and_the_fix(git_repo, opencode):
    # What OpenCode 1.18 prints when an `ask` rule is auto-rejected in `opencode run`.
    opencode.play(
        START,
        tool("edit", "error", "The user rejected permission to use this specific tool call.",
             filePath=f"{git_repo}/README.md", oldString="a", newString="b"),
        ["stderr", "\x1b[93m\x1b[1m! \x1b[0mpermission requested: edit (README.md); "
                   "auto-rejecting\n"],
        finish(),
    )
    run = run_backend(git_repo, opencode)
    warnings = run.of("warning")
    assert len(warnings) == 2
    assert warnings[0].startswith("OpenCode was not allowed to edit README.md: permission "
                                  "rejected")
    assert "unsafe_permissions: true on step 'implement'" in warnings[0]
    assert "allow edit in OpenCode's permission config" in warnings[0]
    assert warnings[1] == "OpenCode changed no file (1 tool rejected: edit)"
    assert run.artifact.files == []


def test_permission_rejected_with_feedback_and_error_class_names(git_repo, opencode):
    opencode.play(
        START,
        tool("bash", "error", "PermissionRejectedError: rejected", command="rm -rf build"),
        tool("write", "error", "The user rejected permission to use this specific tool call "
             "with the following feedback: no", filePath=f"{git_repo}/x.txt", content=""),
        finish(),
    )
    warnings = run_backend(git_repo, opencode).of("warning")
    assert warnings[0].startswith("OpenCode was not allowed to bash: rm -rf build: permission "
                                  "rejected")
    assert warnings[1].startswith("OpenCode was not allowed to write x.txt: permission rejected")
    assert warnings[2] == "OpenCode changed no file (2 tools rejected: bash, write)"


def test_denied_by_a_rule_is_a_warning_that_unsafe_permissions_does_not_help(git_repo,
                                                                             opencode):
    opencode.play(
        START,
        tool("bash", "error", "The user has specified a rule which prevents you from using "
             "this specific tool call. Here are some of the relevant rules [...]",
             command="git push"),
        finish(),
    )
    warnings = run_backend(git_repo, opencode, "unsafe_permissions: true").of("warning")
    assert warnings[0].startswith("OpenCode was not allowed to bash: git push: a deny rule")
    assert "does not override deny rules" in warnings[0]


def test_a_tool_removed_by_a_deny_rule(git_repo, opencode):
    # With `"edit": "deny"` OpenCode 1.18 offers no edit tool; the model's call becomes `invalid`.
    opencode.play(
        START,
        ev("tool_use", part={"type": "tool", "tool": "invalid", "state": {
            "status": "completed", "title": "Invalid Tool",
            "input": {"tool": "edit", "error": "Model tried to call unavailable tool 'edit'."},
            "output": "The arguments provided to the tool are invalid"}}),
        finish(),
    )
    warnings = run_backend(git_repo, opencode).of("warning")
    assert warnings[0].startswith("OpenCode's model asked for the tool edit, which OpenCode "
                                  "does not offer here; a deny rule")


def test_other_tool_errors_are_listed(git_repo, opencode):
    opencode.play(
        START,
        tool("edit", "error", "Error: oldString not found in content\nmore detail",
             filePath=f"{git_repo}/src/app.py"),
        tool("read", "error", "File not found: /nope", filePath="/nope"),
        tool("read", "error", "File not found: /nope", filePath="/nope"),    # said once
        ["write", "ok.txt", "ok\n"],
        text("partly done"), finish(),
    )
    run = run_backend(git_repo, opencode)
    assert run.of("warning") == [
        "tool error: edit src/app.py: Error: oldString not found in content",
        "tool error: read /nope: File not found: /nope",
    ]
    assert run.of("progress")[0].startswith("OpenCode: ")


def test_a_final_rejected_list(git_repo, opencode):
    # Newer OpenCode versions end with a `done` event listing the rejected permissions.
    opencode.play(START, text("could not"), finish(),
                  ev("done", reason="idle", rejected=["bash", "edit", 7]))
    warnings = run_backend(git_repo, opencode).of("warning")
    assert warnings[0].startswith("OpenCode's request to use bash was rejected: ")
    assert warnings[1].startswith("OpenCode's request to use edit was rejected: ")
    assert warnings[2] == "OpenCode changed no file (2 tools rejected: bash, edit)"


def test_no_change_warns(git_repo, opencode):
    opencode.play(START, text("Nothing to do."), finish())
    run = run_backend(git_repo, opencode)
    assert run.of("warning") == ["OpenCode changed no file"]
    assert run.artifact.files == [] and run.artifact.patch == ""
    assert run.text == "Nothing to do.\n"


def test_a_change_undone_in_the_same_step_is_no_change(git_repo, opencode):
    opencode.play(START, ["write", "README.md", "changed\n"],
                  ["write", "README.md", "# Demo\n\nA small project.\n"], finish())
    assert run_backend(git_repo, opencode).of("warning") == ["OpenCode changed no file"]


# -- failures -------------------------------------------------------------------------------------

def test_error_event_fails_with_opencodes_message(git_repo, opencode):
    opencode.play(
        START,
        ["stderr", "some log line\n\x1b[91mError: \x1b[0mInvalid API key\n"],
        ev("error", error={"name": "ProviderAuthError",
                           "data": {"providerID": "openai", "message": "Invalid API key"}}),
        ["exit", 1],
    )
    with pytest.raises(aethr.BackendError) as info:
        run_backend(git_repo, opencode, model=MODEL)
    exc = info.value
    assert exc.message.startswith("OpenCode failed: Invalid API key")
    assert "(its stderr ends: some log line | Error: Invalid API key)" in exc.message
    assert exc.exit_code == 3 and exc.returncode == 1


def test_error_event_fails_even_with_exit_status_0(git_repo, opencode):
    opencode.play(START, ev("error", error={"name": "UnknownError"}), ["exit", 0])
    with pytest.raises(aethr.BackendError, match="^OpenCode failed: UnknownError$"):
        run_backend(git_repo, opencode)


def test_progress_and_warnings_are_redacted(git_repo, opencode):
    opencode.play(START, tool("bash", command=f"curl -H 'key: {KEY}' x"),
                  tool("bash", "error", f"bad {KEY}", command="env"), finish())
    run = run_backend(git_repo, opencode, env={"OPENAI_API_KEY": KEY})
    assert run.of("progress")[0] == "bash: curl -H 'key: [redacted]' x"
    assert run.of("warning")[0] == "tool error: bash: env: bad [redacted]"


def test_error_messages_are_redacted(git_repo, opencode):
    opencode.play(ev("error", error={"name": "APIError", "data": {
        "message": f"bad key {KEY}"}}), ["stderr", f"key={KEY}\n"], ["exit", 1])
    with pytest.raises(aethr.BackendError) as info:
        run_backend(git_repo, opencode, env={"OPENAI_API_KEY": KEY})
    assert KEY not in info.value.message and "[redacted]" in info.value.message


def test_nonzero_exit_fails_with_the_tail_of_stderr(git_repo, opencode):
    opencode.play(["stderr", "line 1\nline 2\nline 3\nError: boom\n"], ["exit", 7])
    with pytest.raises(aethr.BackendError) as info:
        run_backend(git_repo, opencode)
    assert info.value.message == ("OpenCode exited with status 7 (its stderr ends: line 2 | "
                                  "line 3 | Error: boom)")
    assert info.value.returncode == 7


def test_a_failure_after_edits_says_they_are_left_in_place(git_repo, opencode):
    opencode.play(START, ["write", "half.txt", "half done\n"], ["exit", 2])
    with pytest.raises(aethr.BackendError) as info:
        run_backend(git_repo, opencode)
    assert "OpenCode had already changed 1 file (half.txt); they are left as they are" in \
        info.value.hint
    assert (git_repo / "half.txt").exists()


def test_timeout_stops_the_whole_process_tree(git_repo, opencode, tmp_path):
    pidfile = tmp_path / "grandchild.pid"
    opencode.play(START, ["grandchild", str(pidfile), False], text("working"),
                  ["sleep", 60])
    t0 = time.monotonic()
    with pytest.raises(aethr.BackendError) as info:
        run_backend(git_repo, opencode, "timeout: 2")
    elapsed = time.monotonic() - t0
    assert "did not finish within 2 s and was stopped" in info.value.message
    assert "timeout" in info.value.hint
    assert elapsed < 15
    assert wait_gone(int(pidfile.read_text())), "the grandchild outlived the step"


def test_ctrl_c_stops_the_whole_process_tree(git_repo, opencode, tmp_path):
    pidfile = tmp_path / "grandchild.pid"
    opencode.play(START, ["grandchild", str(pidfile), False], text("working"), ["sleep", 60])

    def interrupt(event):
        if event["event"] == "text":
            raise KeyboardInterrupt

    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_backend(git_repo, opencode, emit=interrupt)
    assert time.monotonic() - t0 < 15
    assert wait_gone(int(pidfile.read_text())), "the grandchild outlived Ctrl-C"


def test_a_leftover_process_holding_stdout_does_not_hang_the_step(git_repo, opencode, tmp_path):
    # OpenCode exits, but a process it started keeps its stdout open: the step ends anyway,
    # and the leftover is stopped.
    pidfile = tmp_path / "grandchild.pid"
    opencode.play(START, ["grandchild", str(pidfile), True], text("done"), finish(),
                  ["write", "x.txt", "x\n"], ["exit", 0])
    t0 = time.monotonic()
    run = run_backend(git_repo, opencode, "timeout: 60")
    assert time.monotonic() - t0 < 20
    assert run.text == "done\n"
    assert wait_gone(int(pidfile.read_text()))


# -- artifacts ------------------------------------------------------------------------------------

def test_artifact_is_exactly_what_the_step_changed(dirty_repo, opencode):
    repo = dirty_repo
    state = index_state(repo)
    status = git(repo, "status", "--porcelain")
    opencode.play(
        START,
        ["write", "src/app.py", "def add(a, b):\n    return a + b  # unstaged\n\n\n"
                                "def sub(a, b):\n    return a - b\n"],
        ["write", "src/new_module.py", "X = 1\n"],
        ["delete", "doomed.txt"],
        ["rename", "old_name.txt", "new_name.txt"],
        text("done"), finish(),
    )
    run = run_backend(repo, opencode)
    art = run.artifact
    assert art.files == [("D", "doomed.txt", None), ("R", "new_name.txt", "old_name.txt"),
                         ("M", "src/app.py", None), ("A", "src/new_module.py", None)]
    # Only this step's own change of src/app.py, against the user's unstaged edit.
    assert "+def sub(a, b):" in art.patch
    assert "-    return a + b\n" not in art.patch and "+    return a + b  # unstaged" not in \
        art.patch
    # The user's staged README edit, untracked notes and stash are not part of it.
    assert "README.md" not in art.patch and "notes.txt" not in art.patch
    assert "stashed" not in art.patch
    assert "rename from old_name.txt" in art.patch and "rename to new_name.txt" in art.patch
    assert "4 files changed" in art.stat
    assert art.note is None
    # Nothing of the user's git state moved: the README edit is still staged, nothing else is.
    assert index_state(repo) == state
    assert git(repo, "diff", "--cached", "--name-status") == "M\tREADME.md\n"
    assert status.splitlines()[0] == "M  README.md"


def test_snapshot_never_touches_the_users_index_head_stash_or_files(dirty_repo):
    repo = dirty_repo
    state = index_state(repo)
    index = repo / ".git" / "index"
    mtime = index.stat().st_mtime_ns
    files = {p: p.read_bytes() for p in repo.rglob("*") if p.is_file() and ".git" not in p.parts}
    tmpdir = Path(os.environ["TMPDIR"])
    before_tmp = set(tmpdir.iterdir())
    project = aethr.Project(str(repo), dict(os.environ))
    tree = aethr.snapshot_tree(project)
    assert tree == aethr.snapshot_tree(project)            # deterministic
    assert git(repo, "cat-file", "-t", tree).strip() == "tree"
    listing = git(repo, "ls-tree", "-r", "--name-only", tree).split()
    assert "notes.txt" in listing and "doomed.txt" in listing
    assert index_state(repo) == state and index.stat().st_mtime_ns == mtime
    assert files == {p: p.read_bytes() for p in repo.rglob("*")
                     if p.is_file() and ".git" not in p.parts}
    assert set(tmpdir.iterdir()) == before_tmp             # temporary index removed
    # The snapshot holds the working tree content, the user's unstaged edit included.
    assert "# unstaged" in git(repo, "show", f"{tree}:src/app.py")


def test_snapshot_ignores_a_leaked_git_index_file(git_repo, tmp_path):
    env = dict(os.environ, GIT_INDEX_FILE=str(tmp_path / "bogus-index"))
    project = aethr.Project(str(git_repo), env)
    tree = aethr.snapshot_tree(project)
    assert tree == git(git_repo, "rev-parse", "HEAD^{tree}").strip()
    assert not (tmp_path / "bogus-index").exists()


def test_ignored_files_are_not_in_the_artifact(git_repo, opencode):
    (git_repo / ".gitignore").write_text("build/\n*.log\n")
    git(git_repo, "add", ".gitignore")
    git(git_repo, "commit", "-q", "-m", "ignore")
    opencode.play(START, ["write", "build/out.bin", "x"], ["write", "debug.log", "x"],
                  ["write", "kept.txt", "x\n"], finish())
    assert run_backend(git_repo, opencode).artifact.files == [("A", "kept.txt", None)]


def test_rename_with_edit_is_detected(git_repo, opencode):
    body = "".join(f"line {i}\n" for i in range(30))
    (git_repo / "a.txt").write_text(body)
    git(git_repo, "add", "a.txt")
    git(git_repo, "commit", "-q", "-m", "a")
    opencode.play(START, ["rename", "a.txt", "docs/b.txt"],
                  ["write", "docs/b.txt", body + "one more\n"], finish())
    art = run_backend(git_repo, opencode).artifact
    assert art.files == [("R", "docs/b.txt", "a.txt")]
    assert "+one more" in art.patch
    assert "Changed files:\n  R a.txt -> docs/b.txt" in art.describe()


def test_repo_without_a_commit(tmp_path, opencode, monkeypatch):
    repo = tmp_path / "fresh"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "existing.txt").write_text("already here\n")
    monkeypatch.chdir(repo)
    assert not (repo / ".git" / "index").exists()
    opencode.play(START, ["write", "created.txt", "new\n"],
                  ["write", "existing.txt", "changed\n"], finish())
    art = run_backend(repo, opencode).artifact
    assert art.files == [("A", "created.txt", None), ("M", "existing.txt", None)]
    assert not (repo / ".git" / "index").exists()
    assert git(repo, "status", "--porcelain") == "?? created.txt\n?? existing.txt\n"


def test_repo_without_a_commit_but_a_staged_file(tmp_path, opencode):
    repo = tmp_path / "fresh"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "staged.txt").write_text("staged\n")
    git(repo, "add", "staged.txt")
    state = index_state(repo)
    opencode.play(START, ["delete", "staged.txt"], finish())
    art = run_backend(repo, opencode).artifact
    assert art.files == [("D", "staged.txt", None)]
    assert index_state(repo) == state


def add_submodule(repo, tmp_path) -> None:
    """A committed submodule at vendor/lib (one file, lib.txt: v1)."""
    upstream = tmp_path / "upstream"
    upstream.mkdir()
    git(upstream, "init", "-q", "-b", "main")
    (upstream / "lib.txt").write_text("v1\n")
    git(upstream, "add", "-A")
    git(upstream, "commit", "-q", "-m", "v1")
    git(repo, "-c", "protocol.file.allow=always", "submodule", "add", "-q", str(upstream),
        "vendor/lib")
    git(repo, "commit", "-q", "-m", "submodule")


def test_submodule_commit_change_is_noted(git_repo, tmp_path):
    add_submodule(git_repo, tmp_path)
    project = aethr.Project(str(git_repo), dict(os.environ))
    before = aethr.snapshot_tree(project)
    sub = git_repo / "vendor" / "lib"
    # An uncommitted change inside the submodule is not part of the parent's tree...
    (sub / "lib.txt").write_text("v2\n")
    assert aethr.snapshot_tree(project) == before
    # ...a new submodule commit is, as a gitlink change.
    git(sub, "commit", "-q", "-am", "v2")
    art = aethr.artifact_between(project, before, aethr.snapshot_tree(project))
    assert art.files == [("M", "vendor/lib", None)]
    assert art.note.startswith("submodule commit changed: vendor/lib")
    assert "Subproject commit" in art.patch


def test_outside_git_the_artifact_is_a_note(tmp_path, opencode, monkeypatch):
    plain = tmp_path / "plain"
    plain.mkdir()
    monkeypatch.chdir(plain)
    project = aethr.Project(str(plain), dict(os.environ))
    art = aethr.artifact_between(project, None, None)
    assert art.files == [] and "needs git" in art.note
    opencode.play(START, ["write", "made.txt", "x\n"], text("ok"), finish())
    run = run_backend(plain, opencode)
    assert run.artifact.files == [] and "needs git" in run.artifact.note
    assert "OpenCode changed no file" not in run.of("warning")
    assert (plain / "made.txt").exists()


def test_secrets_are_redacted_and_secret_files_hidden(git_repo, opencode):
    opencode.play(START, ["write", "config.py", f"KEY = '{KEY}'\n"],
                  ["write", ".env", "OTHER=plain-value\n"], finish())
    art = run_backend(git_repo, opencode, env={"OPENAI_API_KEY": KEY}).artifact
    assert [p for _, p, _ in art.files] == [".env", "config.py"]
    assert KEY not in art.patch and "KEY = '[redacted]'" in art.patch
    assert "plain-value" not in art.patch and "patch of .env not shown" in art.patch


def test_a_big_patch_is_capped_with_a_note(git_repo, opencode):
    big = "".join(f"{i:07d} {'x' * 90}\n" for i in range(4000))        # ~400 KB
    opencode.play(START, ["write", "big.txt", big], ["write", "small.txt", "s\n"], finish())
    art = run_backend(git_repo, opencode).artifact
    assert [p for _, p, _ in art.files] == ["big.txt", "small.txt"]
    assert len(art.patch.encode()) < aethr.DIFF_CAP + 200
    assert art.patch.rstrip().endswith("[\u2026 patch: more than 256 KiB, first 256 KiB shown]")
    assert "big.txt" in art.stat and "small.txt" in art.stat


def test_a_binary_file(git_repo, opencode):
    opencode.play(START, ["write", "blob.bin", "\x00\x01\x02" * 10], finish())
    art = run_backend(git_repo, opencode).artifact
    assert art.files == [("A", "blob.bin", None)]
    assert "Binary files" in art.patch


def test_unusual_paths(git_repo, opencode):
    names = ["with space.txt", "ünïcode.txt", "tab\there.txt", "quote\"s.txt", "-dash.txt"]
    opencode.play(START, *[["write", n, "x\n"] for n in names], finish())
    art = run_backend(git_repo, opencode).artifact
    assert sorted(p for _, p, _ in art.files) == sorted(names)


def test_snapshot_of_a_30000_file_repository(tmp_path):
    """Timing only (printed): a snapshot must complete and be right on a big tree."""
    repo = tmp_path / "big"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    for d in range(300):
        folder = repo / f"pkg{d:03d}"
        folder.mkdir()
        for f in range(100):
            (folder / f"mod{f:03d}.py").write_text(f"VALUE = {d * 100 + f}\n")
    t0 = time.monotonic()
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "big")
    setup = time.monotonic() - t0
    project = aethr.Project(str(repo), dict(os.environ))
    t0 = time.monotonic()
    before = aethr.snapshot_tree(project)
    first = time.monotonic() - t0
    assert before == git(repo, "rev-parse", "HEAD^{tree}").strip()
    (repo / "pkg007" / "mod042.py").write_text("VALUE = -1\n")
    (repo / "pkg299" / "extra.py").write_text("NEW = 1\n")
    t0 = time.monotonic()
    after = aethr.snapshot_tree(project)
    second = time.monotonic() - t0
    art = aethr.artifact_between(project, before, after)
    assert art.files == [("M", "pkg007/mod042.py", None), ("A", "pkg299/extra.py", None)]
    print(f"\n30,000-file repository: git add+commit {setup:.2f} s; snapshot {first:.3f} s "
          f"(clean), {second:.3f} s (2 changes)")


# -- the preflight and the runner -----------------------------------------------------------------

def test_opencode_problems(git_repo, tmp_path, opencode):
    env = dict(os.environ, PATH=opencode.path)
    assert aethr.opencode_problems(aethr.Project(str(git_repo), env)) == []
    empty = tmp_path / "nothing"
    empty.mkdir()
    plain = tmp_path / "plain"
    plain.mkdir()
    problems = aethr.opencode_problems(aethr.Project(str(plain), dict(env, PATH=str(empty))))
    assert problems[0] == ("the opencode CLI is not installed", "npm install -g opencode-ai")
    assert "git repository" in problems[1][0] and len(problems) == 2


def test_run_workflow_carries_the_artifact_and_warnings(dirty_repo, opencode):
    state = index_state(dirty_repo)
    opencode.play(START, tool("edit", "error", "The user rejected permission to use this "
                              "specific tool call.", filePath=f"{dirty_repo}/README.md"),
                  ["write", "added.txt", "x\n"], text("Added it."), finish(inp=5, out=6))
    events: list[dict] = []
    result = aethr.run_workflow(workflow(), "add a file", root=str(dirty_repo), live=True,
                                env=dict(os.environ, PATH=opencode.path),
                                on_event=events.append)
    step = result.steps[0]
    assert step.artifact.files == [("A", "added.txt", None)]
    assert step.text == "Added it.\n"
    assert step.usage == {"input": 5, "output": 6, "cost": 0.0}
    assert len(step.warnings) == 1 and "permission rejected" in step.warnings[0]
    end = next(e for e in events if e["event"] == "step_end")
    # Events carry plain data (what --json prints): files, stat and note, no patch.
    assert end["artifact"]["files"] == [{"status": "A", "path": "added.txt", "old_path": None}]
    assert end["artifact"]["stat"] == step.artifact.stat and "patch" not in end["artifact"]
    assert index_state(dirty_repo) == state


def test_run_workflow_failure_is_step_failed(git_repo, opencode):
    opencode.play(START, ev("error", error={"name": "APIError", "data": {"message": "quota"}}),
                  ["exit", 1])
    with pytest.raises(aethr.StepFailed) as info:
        aethr.run_workflow(workflow(), "x", root=str(git_repo), live=True,
                           env=dict(os.environ, PATH=opencode.path))
    assert info.value.message.startswith("step 'implement' failed: OpenCode failed: quota")


OC_WORKFLOW = textwrap.dedent("""\
    workflow: oc
    roles:
      implementer: Implement the change.
    steps:
      - id: implement
        role: implementer
        backend: opencode
    """)


def test_cli_live_run(git_repo, opencode, cli):
    (git_repo / ".aethr.yaml").write_text(OC_WORKFLOW)
    opencode.play(START, tool("write", filePath=f"{git_repo}/hello.txt", content="hi\n"),
                  ["write", "hello.txt", "hi\n"], text("Wrote hello.txt."), finish(inp=3, out=4))
    r = cli("run", "--live", "add hello", env={"PATH": opencode.path})
    assert r.code == 0, r
    assert "Wrote hello.txt." in r.out
    assert "write hello.txt" in r.err
    assert "1 file changed: A hello.txt" in r.err
    assert opencode.record()["argv"] == ["run", "--format", "json"]


def test_cli_live_failure_exits_3(git_repo, opencode, cli):
    (git_repo / ".aethr.yaml").write_text(OC_WORKFLOW)
    opencode.play(ev("error", error={"name": "APIError", "data": {"message": "no credit"}}),
                  ["exit", 1])
    r = cli("run", "--live", "x", env={"PATH": opencode.path})
    assert r.code == 3, r
    assert "step 'implement' failed: OpenCode failed: no credit" in r.err


def test_cli_live_preflight_without_opencode_exits_2(git_repo, cli, tmp_path):
    (git_repo / ".aethr.yaml").write_text(OC_WORKFLOW)
    gitonly = tmp_path / "gitonly"
    gitonly.mkdir()
    (gitonly / "git").symlink_to(shutil.which("git"))
    r = cli("run", "--live", "x", env={"PATH": str(gitonly)})
    assert r.code == 2, r
    assert "the opencode CLI is not installed" in r.err
    assert "npm install -g opencode-ai" in r.err


def test_cli_ctrl_c_in_a_real_process_leaves_no_orphan(git_repo, opencode, tmp_path):
    """SIGINT to `python3 aethr.py run --live`: exit 130 and OpenCode's tree is gone."""
    from conftest import AETHR_PY

    (git_repo / ".aethr.yaml").write_text(OC_WORKFLOW)
    pidfile = tmp_path / "grandchild.pid"
    opencode.play(START, ["grandchild", str(pidfile), False], text("working"), ["sleep", 60])
    proc = subprocess.Popen([sys.executable, str(AETHR_PY), "run", "--live", "x"],
                            cwd=git_repo, env=dict(os.environ, PATH=opencode.path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        end = time.monotonic() + 20
        while not pidfile.exists() and time.monotonic() < end:
            time.sleep(0.05)
        assert pidfile.exists(), proc.communicate(timeout=5)
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert wait_gone(int(pidfile.read_text()))


def test_uncommitted_edits_inside_a_submodule_are_noted(git_repo, opencode, tmp_path):
    add_submodule(git_repo, tmp_path)
    # OpenCode edits a file inside the submodule and commits nothing.
    opencode.play(START, ["write", "vendor/lib/lib.txt", "v2\n"], text("done"), finish())
    run = run_backend(git_repo, opencode)
    artifact, events = run.artifact, run.events
    assert artifact.files == []
    assert "uncommitted changes inside submodules: vendor/lib" in artifact.note
    warnings = [e["message"] for e in events if e["event"] == "warning"]
    assert any("vendor/lib" in w for w in warnings), warnings
    assert not any("changed no file" in w for w in warnings), warnings

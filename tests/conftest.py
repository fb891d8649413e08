"""Shared fixtures: an isolated environment, real git repositories, the CLI in-process and as a
subprocess. Every test runs with its own HOME and TMPDIR, no proxy variables, no global or system
git config, and none of the user's AETHR_* / provider variables."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
AETHR_PY = ROOT / "aethr.py"
DATA = Path(__file__).resolve().parent / "data"

sys.path.insert(0, str(ROOT))
from loopback import LoopbackServer  # noqa: E402

import aethr  # noqa: E402

try:
    from hypothesis import HealthCheck, settings

    settings.register_profile("ci", max_examples=200, derandomize=True, deadline=None,
                              suppress_health_check=[HealthCheck.too_slow])
    settings.register_profile("long", max_examples=20000, deadline=None,
                              suppress_health_check=[HealthCheck.too_slow])
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
except ImportError:  # hypothesis is a dev dependency; the fuzz tests import it themselves
    pass

_DROP_PREFIXES = ("AETHR_", "OPENAI_", "ANTHROPIC_", "GOOGLE_", "GEMINI_", "OPENROUTER_", "XAI_",
                  "OLLAMA_", "GIT_")
_DROP = {"NO_COLOR", "FORCE_COLOR", "EDITOR", "VISUAL", "TERM", "COLUMNS", "PYTHONSTARTUP",
         "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "PYTHONDONTWRITEBYTECODE"}


@pytest.fixture(autouse=True)
def isolated_env(tmp_path_factory, monkeypatch):
    """Own HOME/TMPDIR, no proxies, no machine git config, no user variables."""
    base = tmp_path_factory.mktemp("env")
    home, tmp = base / "home", base / "tmp"
    home.mkdir()
    tmp.mkdir()
    for name in list(os.environ):
        if name.upper().endswith("_PROXY") or name.startswith(_DROP_PREFIXES) or name in _DROP:
            monkeypatch.delenv(name, raising=False)
    gitconfig = base / "gitconfig"
    gitconfig.write_text("")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(gitconfig))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GIT_AUTHOR_NAME", "Test")
    monkeypatch.setenv("GIT_AUTHOR_EMAIL", "test@example.invalid")
    monkeypatch.setenv("GIT_COMMITTER_NAME", "Test")
    monkeypatch.setenv("GIT_COMMITTER_EMAIL", "test@example.invalid")
    monkeypatch.setattr(tempfile, "tempdir", None)   # re-read TMPDIR
    monkeypatch.chdir(base)
    return base


def git(cwd, *args, check=True) -> str:
    """Run real git in `cwd`; returns stdout."""
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {proc.stderr}")
    return proc.stdout


def make_repo(repo: Path) -> Path:
    """Create `repo` as a real git repository with one commit (README.md, src/app.py)."""
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "README.md").write_text("# Demo\n\nA small project.\n")
    (repo / "src").mkdir()
    (repo / "src" / "app.py").write_text("def add(a, b):\n    return a + b\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "initial")
    return repo


@pytest.fixture
def git_repo(tmp_path, monkeypatch):
    """A real git repository with one commit (README.md, src/app.py); the cwd is its root."""
    repo = make_repo(tmp_path / "repo")
    monkeypatch.chdir(repo)
    return repo


#: plan -> implement (OpenCode) -> review, looping back to implement (at most 3 passes); one
#: model for every role.
PIR_WORKFLOW = """\
workflow: pir
roles:
  planner: Break the task into a short plan.
  implementer: Implement the plan.
  reviewer: Review the change.
models:
  default: openai:gpt-5.5
steps:
  - id: plan
    role: planner
    context: [file:README.md]
  - id: implement
    role: implementer
    backend: opencode
  - id: review
    role: reviewer
    context: [latest_diff]
    repeat: {back_to: implement, until_review_pass: true, max_iterations: 3}
"""


def reader_workflow(name: str, source: str = "file:notes.md",
                    model: str = "openai:gpt-5.5") -> str:
    """A one-step workflow whose only context is `source` (relative to the project root)."""
    return textwrap.dedent(f"""\
        workflow: {name}
        roles:
          reader: Read the context.
        models:
          default: {model}
        steps:
          - id: read
            role: reader
            context: [{source}]
        """)


def pid_alive(pid: int) -> bool:
    """True while `pid` is a live process; a zombie (killed, not yet reaped) is not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is gone for our purpose.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def wait_gone(pid: int, seconds: float = 5.0) -> bool:
    """Poll until `pid` is gone (see pid_alive), for at most `seconds`; whether it went."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    return not pid_alive(pid)


def mutate(text: str, edits: list[tuple[str, float, str]]) -> str:
    """`text` after each (op, where, piece) edit in turn, `where` a fraction of its length:
    insert `piece`, delete as many characters as `piece` has, replace one character with `piece`,
    or swap-lines (the line there with the next; `piece` unused). For fuzzing a valid config."""
    for op, where, piece in edits:
        at = int(where * (len(text) + 1))
        if op == "insert":
            text = text[:at] + piece + text[at:]
        elif op == "delete":
            text = text[:at] + text[at + len(piece):]
        elif op == "replace":
            text = text[:at] + piece + text[at + 1:]
        elif op == "swap-lines":
            lines = text.split("\n")
            n = min(int(where * len(lines)), len(lines) - 2)
            if n >= 0:
                lines[n], lines[n + 1] = lines[n + 1], lines[n]
            text = "\n".join(lines)
        else:
            raise ValueError(f"unknown edit {op!r}")
    return text


class Result:
    def __init__(self, code, out, err):
        self.code, self.out, self.err = code, out, err

    def __repr__(self):
        return f"Result(code={self.code!r}, out={self.out!r}, err={self.err!r})"


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture
def cli():
    """Call aethr.main() in-process: cli("run", "task", env={...}, stdin="...") -> Result."""

    def run(*argv, env=None, stdin="", tty=False):
        environ = dict(os.environ)
        environ.update(env or {})
        cls = FakeTTY if tty else io.StringIO
        out, err, inp = cls(), cls(), cls(stdin)
        term = aethr.Term(out, err, environ=environ, inp=inp)
        code = aethr.main(list(argv), term=term)
        return Result(code, out.getvalue(), err.getvalue())

    return run


@pytest.fixture
def server():
    """A LoopbackServer (tests/loopback.py) on 127.0.0.1, stopped after the test."""
    with LoopbackServer() as srv:
        yield srv


@pytest.fixture
def run_aethr():
    """Run `python3 aethr.py ...` as a real subprocess: run_aethr(*argv, cwd=, env=, input=)."""

    def run(*argv, cwd=None, env=None, input=None, timeout=60):
        environ = dict(os.environ)
        environ.update(env or {})
        proc = subprocess.run([sys.executable, str(AETHR_PY), *argv], cwd=cwd, env=environ,
                              input=input, capture_output=True, text=True, timeout=timeout,
                              encoding="utf-8")
        return Result(proc.returncode, proc.stdout, proc.stderr)

    return run

"""SPEC §10 checkpoints and resume, §2 `--json`, `--verbose` and exit codes 3/130/141, §13
`run_workflow(..., resume=)` / `StepFailed.checkpoint`.

Steps fail or stop through a scripted stand-in for the mock provider (in-process), or through a
small `python -c` wrapper that installs the same script and calls `aethr.main()` (subprocess); a
real Ctrl-C and a real closed pipe go to the real `python3 aethr.py`."""
from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shlex
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections import Counter

import pytest
from conftest import AETHR_PY, ROOT

import aethr

MODEL = "openai:gpt-5.5"
SECRET = "sk-secret-value-123456"
NAME_RE = re.compile(r"aethr-checkpoint-[A-Za-z0-9_]{8}\.json\Z")

#: plan -> implement -> review (loops back to implement, at most 2 passes) -> summary.
LOOP_WF = f"""\
workflow: ckpt
roles:
  planner: Plan it.
  implementer: Implement it.
  reviewer: Review it.
  writer: Write it up.
models:
  default: {MODEL}
steps:
  - id: plan
    role: planner
  - id: implement
    role: implementer
  - id: review
    role: reviewer
    repeat: {{back_to: implement, until_review_pass: true, max_iterations: 2}}
  - id: summary
    role: writer
"""

#: plan -> build (OpenCode, a mock artifact) -> review.
OPENCODE_WF = f"""\
workflow: withcode
roles:
  planner: Plan it.
  implementer: Implement it.
  reviewer: Review it.
models:
  default: {MODEL}
steps:
  - id: plan
    role: planner
  - id: build
    role: implementer
    backend: opencode
  - id: review
    role: reviewer
    context: [latest_diff]
"""


# -- helpers ------------------------------------------------------------------------------------


def answer(sid: str, n: int) -> str:
    return f"{sid} answer {n}\nsecond line of {sid}\n"


def usage_of(sid: str, n: int) -> dict:
    return {"input": 10 * len(sid) + n, "output": len(sid) + n}


class Fail:
    """A call that streams `partial`, then raises `exc`."""

    def __init__(self, exc: BaseException, partial: str = "") -> None:
        self.exc, self.partial = exc, partial


class Script:
    """Stands in for the provider: per step id, what each call does, in order. A call with no
    entry (or None) answers `answer(sid, n)` (plus `Review status: pass` for a loop controller);
    a str entry is the answer; a Fail streams its partial text and raises; a callable is called
    with (provider, prompt) and its result used as the entry."""

    def __init__(self, monkeypatch, plan: dict | None = None) -> None:
        self.plan = {k: list(v) for k, v in (plan or {}).items()}
        self.calls: Counter = Counter()
        self.prompts: dict[str, list] = {}
        self.models: dict[str, list] = {}
        self.kinds: list[str] = []
        script = self

        def stream(provider, prompt, *, max_tokens=None):
            sid = prompt.step.id
            script.calls[sid] += 1
            n = script.calls[sid]
            script.prompts.setdefault(sid, []).append(prompt)
            script.models.setdefault(sid, []).append(provider.model)
            script.kinds.append(type(provider).__name__)
            steps = script.plan.get(sid, [])
            entry = steps[n - 1] if n <= len(steps) else None
            if callable(entry) and not isinstance(entry, Fail):
                entry = entry(provider, prompt)
            if isinstance(entry, Fail):
                if entry.partial:
                    yield "text", entry.partial
                raise entry.exc
            if entry is None:
                entry = answer(sid, n)
                if prompt.step.repeat:
                    entry += "Review status: pass\n"
            for line in entry.splitlines(keepends=True):
                yield "text", line
            yield "usage", usage_of(sid, n)

        self.stream = stream
        monkeypatch.setattr(aethr.MockProvider, "stream", stream)

    def reset(self, plan: dict | None = None) -> None:
        """Forget the calls so far; the next calls follow `plan`."""
        self.plan = {k: list(v) for k, v in (plan or {}).items()}
        self.calls.clear()
        self.prompts.clear()
        self.models.clear()
        self.kinds.clear()


def backend_error(message="the server hung up"):
    return aethr.BackendError(message)


def checkpoints() -> list[str]:
    return sorted(glob.glob(os.path.join(tempfile.gettempdir(), "aethr-checkpoint-*")))


def only_checkpoint() -> str:
    found = checkpoints()
    assert len(found) == 1, found
    return found[0]


def load_cp(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def resume_line(path: str) -> str:
    return f"aethr: to resume: aethr run --resume-checkpoint {shlex.quote(path)}"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def write_wf(repo, text=LOOP_WF) -> str:
    (repo / ".aethr.yaml").write_text(text)
    return str(repo / ".aethr.yaml")


def plan_review_wf(name: str, plan_context: str = "", review_context: str = "") -> str:
    """plan (planner) -> review (reviewer); a context, where given, is a YAML flow list."""

    def step(sid: str, role: str, context: str) -> str:
        lines = f"  - id: {sid}\n    role: {role}\n"
        return lines + (f"    context: {context}\n" if context else "")

    return (f"workflow: {name}\nroles:\n  planner: Plan it.\n  reviewer: Review it.\n"
            f"models:\n  default: {MODEL}\nsteps:\n"
            + step("plan", "planner", plan_context) + step("review", "reviewer", review_context))


def fail_review_first(monkeypatch, cli, repo, *extra, partial="half of the rev", env=None):
    """A run of LOOP_WF whose review fails on its first call: (script, result, checkpoint path)."""
    write_wf(repo)
    script = Script(monkeypatch, {"review": [Fail(backend_error(), partial)]})
    res = cli("run", "fix the bug", *extra, env=env)
    assert res.code == 3, res
    return script, res, only_checkpoint()


def verbose_json(err: str) -> dict:
    """The raw checkpoint JSON that --verbose prints: a `{` line through the next `}` line."""
    lines = err.splitlines()
    start = lines.index("{")
    end = lines.index("}", start)
    return json.loads("\n".join(lines[start:end + 1]))


#: `python -c` wrapper for subprocess runs: installs a scripted provider from $T_PLAN (JSON:
#: step id -> list of null | "answer" | {"partial": str, "error": str} |
#: {"partial": str, "interrupt": true} | {"echo_env": VAR, "error": str}), appends each call's step
#: id to $T_LOG, then runs aethr.main(argv).
WRAPPER = r"""
import json, os, sys
sys.path.insert(0, sys.argv[1])
import aethr
plan = json.loads(os.environ.get("T_PLAN") or "{}")
log = os.environ.get("T_LOG")
calls = {}
def stream(self, prompt, *, max_tokens=None):
    sid = prompt.step.id
    calls[sid] = n = calls.get(sid, 0) + 1
    if log:
        with open(log, "a") as f:
            f.write(sid + "\n")
    steps = plan.get(sid, [])
    entry = steps[n - 1] if n <= len(steps) else None
    if isinstance(entry, dict):
        partial = entry.get("partial", "")
        if "echo_env" in entry:
            partial += "echo: " + self.environ[entry["echo_env"]] + "\n"
        if partial:
            yield "text", partial
        if entry.get("interrupt"):
            raise KeyboardInterrupt
        raise aethr.BackendError(entry["error"])
    if entry is None:
        entry = "%s answer %d\n" % (sid, n)
        if prompt.step.repeat:
            entry += "Review status: pass\n"
    for line in entry.splitlines(True):
        yield "text", line
    yield "usage", {"input": 7, "output": 3}
aethr.MockProvider.stream = stream
sys.exit(aethr.main(sys.argv[2:]))
"""


def run_wrapped(*argv, cwd, plan=None, log=None, env=None, timeout=60):
    environ = dict(os.environ)
    environ.update(env or {})
    environ["T_PLAN"] = json.dumps(plan or {})
    if log is not None:
        environ["T_LOG"] = str(log)
    proc = subprocess.run([sys.executable, "-c", WRAPPER, str(ROOT), *argv], cwd=cwd,
                          env=environ, capture_output=True, text=True, timeout=timeout,
                          encoding="utf-8")

    class R:
        code, out, err = proc.returncode, proc.stdout, proc.stderr

        def __repr__(self):
            return f"R(code={self.code!r}, out={self.out!r}, err={self.err!r})"

    return R()


def no_traceback(err: str) -> None:
    assert "Traceback" not in err
    assert "Exception ignored" not in err


# -- a failing step: the checkpoint file --------------------------------------------------------


def test_step_failure_exits_3_with_checkpoint_and_resume_line(git_repo, cli, monkeypatch):
    _, res, path = fail_review_first(monkeypatch, cli, git_repo)
    assert NAME_RE.match(os.path.basename(path))
    assert os.path.dirname(path) == os.path.realpath(tempfile.gettempdir())
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    lines = res.err.splitlines()
    assert lines[-1] == resume_line(path)
    assert lines[-2] == "aethr: error: step 'review' failed: the server hung up"
    no_traceback(res.err)
    # The completed steps' output is on stdout, as in any run.
    assert "plan answer 1\n" in res.out and "implement answer 1\n" in res.out


def test_checkpoint_contents(git_repo, cli, monkeypatch):
    path_wf = write_wf(git_repo)
    _, _, path = fail_review_first(monkeypatch, cli, git_repo)
    cp = load_cp(path)
    assert cp["aethr_checkpoint"] == 1                       # the format marker / version
    assert cp["task"] == "fix the bug"
    assert cp["mode"] == "mock"
    assert cp["models"] == {}
    assert cp["workflow"] == {"path": os.path.abspath(path_wf), "preset": None,
                              "sha256": sha(LOOP_WF)}
    assert os.path.realpath(cp["root"]) == os.path.realpath(git_repo)
    state = cp["state"]
    assert state["next_step"] == 2
    assert [(r["step"], r["iteration"]) for r in state["results"]] == [("plan", 1),
                                                                     ("implement", 1)]
    assert [r["output"] for r in state["results"]] == [answer("plan", 1),
                                                       answer("implement", 1)]
    assert [r["usage"] for r in state["results"]] == [usage_of("plan", 1),
                                                      usage_of("implement", 1)]
    assert all("artifact" in r and r["artifact"] is None for r in state["results"])
    assert state["loop_passes"] == {}
    assert state["partial"] == {"step": "review", "output": "half of the rev", "incomplete": True}


def test_checkpoint_keeps_artifacts_and_the_preset(git_repo, cli, monkeypatch):
    Script(monkeypatch, {"review": [Fail(backend_error())]})
    res = cli("run", "add a flag", "--preset", "plan-implement-review")
    assert res.code == 3, res
    cp = load_cp(only_checkpoint())
    assert cp["workflow"] == {"path": None, "preset": "plan-implement-review",
                              "sha256": sha(aethr.PRESETS["plan-implement-review"])}
    build = cp["state"]["results"][1]
    assert build["step"] == "implement" and build["backend"] == "opencode"
    assert build["artifact"] == {"files": [], "stat": "", "patch": "",
                                 "note": "mock mode: OpenCode was not run"}
    assert build["output"].startswith("[mock] OpenCode was not run.")


def test_checkpoint_keeps_loop_counters(git_repo, cli, monkeypatch):
    write_wf(git_repo)
    Script(monkeypatch, {"review": ["looked\nReview status: revise\n"],
                         "implement": [None, Fail(backend_error(), "second try, half")]})
    res = cli("run", "fix the bug")
    assert res.code == 3, res
    state = load_cp(only_checkpoint())["state"]
    assert state["next_step"] == 1                           # back at implement
    assert state["loop_passes"] == {"2": 1}                  # one pass of review's loop done
    assert [(r["step"], r["iteration"]) for r in state["results"]] == [
        ("plan", 1), ("implement", 1), ("review", 1)]
    assert state["results"][2]["review_status"] == "revise"
    assert state["partial"] == {"step": "implement", "output": "second try, half",
                                "incomplete": True}


class FakeLive(aethr.Provider):
    """A live provider registered under `openai` (live calls are another helper's work)."""

    name = "openai"


def test_checkpoint_keeps_live_mode_and_model_overrides(git_repo, cli, monkeypatch):
    write_wf(git_repo)
    script = Script(monkeypatch, {"review": [Fail(backend_error())]})
    monkeypatch.setattr(FakeLive, "stream", script.stream, raising=False)
    monkeypatch.setitem(aethr.PROVIDERS, "openai", FakeLive)
    env = {"OPENAI_API_KEY": SECRET}
    res = cli("run", "fix it", "--live", "--model", "openai:gpt-test",
              "--model", "reviewer=openai:gpt-review", env=env)
    assert res.code == 3, res
    path = only_checkpoint()
    cp = load_cp(path)
    assert cp["mode"] == "live"
    assert cp["models"] == {"*": "openai:gpt-test", "reviewer": "openai:gpt-review"}
    # Resuming restores the mode and the overrides: the live provider, the same models.
    script.reset()
    res = cli("run", "--resume-checkpoint", path, env=env)
    assert res.code == 0, res
    assert dict(script.calls) == {"review": 1, "summary": 1}
    assert script.models == {"review": ["openai:gpt-review"], "summary": ["openai:gpt-test"]}
    assert set(script.kinds) == {"FakeLive"}
    assert not os.path.exists(path)


@pytest.mark.parametrize("dirname", ["with space", "it's here", "a b'c \"d\" $HOME"])
def test_resume_line_quotes_the_real_path(git_repo, cli, monkeypatch, tmp_path, dirname):
    real = tmp_path / dirname
    real.mkdir()
    link = tmp_path / "link-to-tmp"
    link.symlink_to(real)
    monkeypatch.setenv("TMPDIR", str(link))                 # a symlink: the real path is shown
    monkeypatch.setattr(tempfile, "tempdir", None)
    _, res, _ = fail_review_first(monkeypatch, cli, git_repo)
    (path,) = glob.glob(os.path.join(str(real), "aethr-checkpoint-*.json"))
    last = res.err.splitlines()[-1]
    words = shlex.split(last)
    assert words[:6] == ["aethr:", "to", "resume:", "aethr", "run", "--resume-checkpoint"]
    assert words[6:] == [os.path.realpath(path)]
    assert os.path.isabs(words[6]) and os.path.isfile(words[6])
    assert last == resume_line(os.path.realpath(path))


def test_verbose_prints_the_raw_checkpoint_json(git_repo, cli, monkeypatch):
    long_task = "fix the bug " + "word " * 60              # longer than any terminal line
    write_wf(git_repo)
    Script(monkeypatch, {"review": [Fail(backend_error(), "partial text")]})
    res = cli("run", long_task.strip(), "--verbose")
    assert res.code == 3, res
    path = only_checkpoint()
    shown = verbose_json(res.err)
    assert shown == load_cp(path)
    assert shown["task"] == long_task.strip()                # not wrapped, not cut
    assert res.err.splitlines()[-1] == resume_line(path)
    no_traceback(res.err)


def test_without_verbose_no_checkpoint_json_on_stderr(git_repo, cli, monkeypatch):
    _, res, _ = fail_review_first(monkeypatch, cli, git_repo)
    assert '"aethr_checkpoint"' not in res.err and '"next_step"' not in res.err


def test_step_failure_subprocess(git_repo, tmp_path):
    write_wf(git_repo)
    tmpdir = tmp_path / "odd tmp 'dir'"
    tmpdir.mkdir()
    plan = {"review": [{"partial": "half a review", "error": "the server hung up"}]}
    res = run_wrapped("run", "fix the bug", "--verbose", cwd=git_repo, plan=plan,
                      env={"TMPDIR": str(tmpdir)})
    assert res.code == 3, res
    (path,) = glob.glob(os.path.join(str(tmpdir), "aethr-checkpoint-*.json"))
    path = os.path.realpath(path)
    assert NAME_RE.match(os.path.basename(path))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    lines = res.err.splitlines()
    assert lines[-1] == resume_line(path)
    assert shlex.split(lines[-1])[-1] == path
    assert "aethr: error: step 'review' failed: the server hung up" in lines
    cp = load_cp(path)
    assert verbose_json(res.err) == cp
    assert cp["state"]["next_step"] == 2
    assert cp["state"]["partial"] == {"step": "review", "output": "half a review",
                                      "incomplete": True}
    no_traceback(res.err)


# -- no secret in a checkpoint ------------------------------------------------------------------


def echo_secret(provider, prompt):
    """A provider that repeats the prompt and the key it was given, then fails."""
    return Fail(backend_error(), "echo: " + prompt.user + "\nkey: "
                + provider.environ["OPENAI_API_KEY"] + "\n")


SECRET_WF = plan_review_wf("secrets", "[file:notes.txt]", "[file:notes.txt]")


@pytest.mark.parametrize("where", ["environment", ".env"])
def test_no_secret_in_the_checkpoint(git_repo, cli, monkeypatch, where):
    write_wf(git_repo, SECRET_WF)
    (git_repo / "notes.txt").write_text(f"the key is {SECRET}\n")
    env = {}
    if where == "environment":
        env["OPENAI_API_KEY"] = SECRET
    else:
        (git_repo / ".env").write_text(f"OPENAI_API_KEY={SECRET}\n")
    script = Script(monkeypatch, {
        "plan": [lambda provider, prompt: "plan saw " + prompt.user + "\nkey: "
                 + provider.environ["OPENAI_API_KEY"] + "\n"],
        "review": [echo_secret]})
    res = cli("run", "fix the bug", "--verbose", env=env)
    assert res.code == 3, res
    assert script.calls == Counter({"plan": 1, "review": 1})
    path = only_checkpoint()
    with open(path, "rb") as f:
        raw = f.read()
    assert SECRET.encode() not in raw
    assert SECRET not in res.err
    cp = load_cp(path)
    # The echoes did reach the checkpoint, redacted.
    assert "key: [redacted]" in cp["state"]["results"][0]["output"]
    assert "key: [redacted]" in cp["state"]["partial"]["output"]
    assert "the key is [redacted]" in cp["state"]["partial"]["output"]


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


@pytest.mark.parametrize("secret", ['pa"ss-word-9876', "back\\slash-secret-42",
                                    "tab\tinside-secret-7"])
def test_no_secret_in_the_checkpoint_even_with_json_escapes(git_repo, cli, monkeypatch, secret):
    # SPEC §10: never a secret value; §4: *_SECRET variables of 8+ characters are secrets.
    # The value must not come back out of the file once its JSON is read.
    write_wf(git_repo)
    Script(monkeypatch, {"review": [lambda provider, prompt: Fail(
        backend_error(), "db: " + provider.environ["DB_SECRET"] + "\n")]})
    res = cli("run", "fix the bug", env={"DB_SECRET": secret})
    assert res.code == 3, res
    cp = load_cp(only_checkpoint())
    leaked = [s for s in _strings(cp) if secret in s]
    assert leaked == []
    assert "db: [redacted]" in cp["state"]["partial"]["output"]


def test_no_secret_in_the_checkpoint_subprocess(git_repo, tmp_path):
    write_wf(git_repo, SECRET_WF)
    (git_repo / "notes.txt").write_text(f"the key is {SECRET}\n")
    plan = {"review": [{"partial": "half\n", "echo_env": "OPENAI_API_KEY", "error": "gone"}]}
    res = run_wrapped("run", "fix the bug", "--verbose", cwd=git_repo, plan=plan,
                      env={"OPENAI_API_KEY": SECRET})
    assert res.code == 3, res
    path = only_checkpoint()
    with open(path, "rb") as f:
        raw = f.read()
    assert SECRET.encode() not in raw
    assert SECRET not in res.err
    assert "echo: [redacted]" in load_cp(path)["state"]["partial"]["output"]


# -- resume -------------------------------------------------------------------------------------


def test_resume_continues_at_the_failed_step(git_repo, cli, monkeypatch):
    script, _, path = fail_review_first(monkeypatch, cli, git_repo)
    assert script.calls == Counter({"plan": 1, "implement": 1, "review": 1})
    res = cli("run", "--resume-checkpoint", path)
    assert res.code == 0, res
    # Earlier steps are not rerun; the failed one runs again, then the rest.
    assert script.calls == Counter({"plan": 1, "implement": 1, "review": 2, "summary": 1})
    assert "aethr: note: resuming" in res.err
    assert "## plan" not in res.out and "## implement" not in res.out
    assert "## review\n" in res.out and "## summary\n" in res.out
    # The resumed step sees the real earlier outputs and the original task.
    prompt = script.prompts["review"][-1]
    assert "plan answer 1" in prompt.user and "implement answer 1" in prompt.user
    assert "fix the bug" in prompt.user
    # Completed: the checkpoint is deleted and no other one appears.
    assert not os.path.exists(path)
    assert checkpoints() == []
    no_traceback(res.err)


def test_resume_counts_loop_passes_from_before(git_repo, cli, monkeypatch):
    # review (max 2 passes) said revise once, then implement failed in pass 2.
    write_wf(git_repo)
    revise = "looked\nReview status: revise\n"
    script = Script(monkeypatch, {"review": [revise, revise],
                                  "implement": [None, Fail(backend_error())]})
    assert cli("run", "fix the bug").code == 3
    path = only_checkpoint()
    res = cli("run", "--resume-checkpoint", path)
    # Only one more pass: implement and review once each, then the loop has run out.
    assert script.calls == Counter({"plan": 1, "implement": 3, "review": 2, "summary": 1})
    assert res.code == 1, res                                # verdict revise
    assert "iteration 2/2" in res.err and "iteration 1/2" not in res.err
    assert "did not pass after 2 iterations" in res.err
    assert not os.path.exists(path)


def test_resume_loop_that_passes_goes_on(git_repo, cli, monkeypatch):
    write_wf(git_repo)
    script = Script(monkeypatch, {"review": ["looked\nReview status: revise\n"],
                                  "implement": [None, Fail(backend_error())]})
    assert cli("run", "fix the bug").code == 3
    path = only_checkpoint()
    res = cli("run", "--resume-checkpoint", path, "--json")
    assert res.code == 0, res
    events = [json.loads(line) for line in res.out.splitlines()]
    starts = [(e["step"], e["iteration"]) for e in events if e["event"] == "step_start"]
    assert starts == [("implement", 2), ("review", 2), ("summary", 1)]
    assert events[-1]["verdict"] == "pass"
    assert script.calls == Counter({"plan": 1, "implement": 3, "review": 2, "summary": 1})


@pytest.mark.parametrize("extra, names", [
    (["fix", "it"], "task"),
    (["--live"], "--live"),
    (["--model", "openai:gpt-5.5"], "--model"),
    (["--workflow", ".aethr.yaml"], "--workflow"),
    (["--preset", "custom"], "--preset"),
])
def test_resume_refuses_what_the_checkpoint_holds(git_repo, cli, monkeypatch, extra, names):
    script, _, path = fail_review_first(monkeypatch, cli, git_repo)
    with open(path, "rb") as f:
        before = f.read()
    script.reset()
    res = cli("run", "--resume-checkpoint", path, *extra)
    assert res.code == 2, res
    assert res.out == ""
    (error,) = [line for line in res.err.splitlines() if line.startswith("aethr: error: ")]
    assert "--resume-checkpoint" in error and names in error
    assert not script.calls
    with open(path, "rb") as f:
        assert f.read() == before
    no_traceback(res.err)


def test_force_without_resume_is_a_usage_error(git_repo, cli):
    write_wf(git_repo)
    res = cli("run", "fix it", "--force")
    assert res.code == 2
    assert "aethr: error: --force goes with --resume-checkpoint" in res.err


def test_resume_refuses_a_changed_workflow_unless_forced(git_repo, cli, monkeypatch):
    script, _, path = fail_review_first(monkeypatch, cli, git_repo)
    with open(path, "rb") as f:
        before = f.read()
    write_wf(git_repo, LOOP_WF.replace("Write it up.", "Write a short summary."))
    script.reset()
    res = cli("run", "--resume-checkpoint", path)
    assert res.code == 2, res
    lines = res.err.splitlines()
    assert any(line.startswith("aethr: error: ") and "changed" in line for line in lines)
    assert lines[-1].startswith("aethr: hint: ") and "--force" in lines[-1]
    assert not script.calls
    with open(path, "rb") as f:
        assert f.read() == before
    res = cli("run", "--resume-checkpoint", path, "--force")
    assert res.code == 0, res
    assert script.calls == Counter({"review": 1, "summary": 1})
    assert "Write a short summary." in script.prompts["summary"][0].system
    assert not os.path.exists(path)


def test_forced_resume_that_fails_again_needs_no_second_force(git_repo, cli, monkeypatch):
    # The rewritten checkpoint was written with the workflow as it is now: it has not changed
    # since (SPEC §10), so resuming it again needs no --force.
    script, _, path = fail_review_first(monkeypatch, cli, git_repo)
    changed = LOOP_WF.replace("Write it up.", "Write a short summary.")
    write_wf(git_repo, changed)
    script.reset({"summary": [Fail(backend_error())]})
    assert cli("run", "--resume-checkpoint", path, "--force").code == 3
    assert load_cp(path)["workflow"]["sha256"] == sha(changed)
    res = cli("run", "--resume-checkpoint", path)
    assert res.code == 0, res
    assert not os.path.exists(path)


def _bad_file(kind, tmp_path):
    target = tmp_path / "bad-checkpoint.json"
    if kind == "missing":
        pass
    elif kind == "directory":
        target.mkdir()
    elif kind == "corrupt":
        target.write_text('{"aethr_checkpoint": 1, "task": "x", ')
    elif kind == "not utf-8":
        target.write_bytes(b'{"task": "\xff\xfe"}')
    elif kind == "empty":
        target.write_text("")
    elif kind == "foreign":
        target.write_text('{"hello": 1}')
    elif kind == "a list":
        target.write_text("[1, 2, 3]")
    elif kind == "no state":
        target.write_text(json.dumps({"aethr_checkpoint": 1, "task": "x", "mode": "mock",
                                      "models": {}, "workflow": {"preset": "custom"},
                                      "root": str(tmp_path)}))
    elif kind == "state of another shape":
        target.write_text(json.dumps({"aethr_checkpoint": 1, "task": "x", "mode": "mock",
                                      "models": {}, "root": str(tmp_path), "state": [],
                                      "workflow": {"preset": "custom",
                                                   "sha256": sha(aethr.PRESETS["custom"])}}))
    return str(target)


BAD_KINDS = ["missing", "directory", "corrupt", "not utf-8", "empty", "foreign", "a list",
             "no state", "state of another shape"]


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_resume_rejects_a_bad_file(git_repo, cli, monkeypatch, tmp_path, kind):
    script = Script(monkeypatch)
    path = _bad_file(kind, tmp_path)
    res = cli("run", "--resume-checkpoint", path)
    assert res.code == 2, res
    assert res.out == ""
    lines = res.err.splitlines()
    assert lines and lines[0].startswith("aethr: error: ") and path in lines[0]
    assert len(lines) <= 2
    assert not script.calls
    no_traceback(res.err)


def test_resume_rejects_a_checkpoint_that_does_not_fit(git_repo, cli, monkeypatch):
    _, _, path = fail_review_first(monkeypatch, cli, git_repo)
    cp = load_cp(path)
    cp["state"]["next_step"] = 99
    with open(path, "w", encoding="utf-8") as f:
        json.dump(cp, f)
    res = cli("run", "--resume-checkpoint", path)
    assert res.code == 2, res
    assert f"aethr: error: {path} does not fit" in res.err
    no_traceback(res.err)


def test_resumed_run_that_fails_again_rewrites_the_same_file(git_repo, cli, monkeypatch):
    script, _, path = fail_review_first(monkeypatch, cli, git_repo)
    first = load_cp(path)
    script.reset({"summary": [Fail(backend_error("the second outage"), "half a summary")]})
    relative = os.path.relpath(path)                         # a relative name works as well
    res = cli("run", "--resume-checkpoint", relative)
    assert res.code == 3, res
    assert checkpoints() == [path]                           # the same file, no new one
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert res.err.splitlines()[-1] == resume_line(path)
    second = load_cp(path)
    assert second != first
    assert second["task"] == "fix the bug"
    assert second["state"]["next_step"] == 3
    assert [r["step"] for r in second["state"]["results"]] == ["plan", "implement", "review"]
    assert second["state"]["partial"] == {"step": "summary", "output": "half a summary",
                                          "incomplete": True}
    # And it resumes from there.
    script.reset()
    assert cli("run", "--resume-checkpoint", path).code == 0
    assert script.calls == Counter({"summary": 1})
    assert checkpoints() == []


def test_show_prompt_with_a_checkpoint(git_repo, cli, monkeypatch):
    script, _, path = fail_review_first(monkeypatch, cli, git_repo)
    with open(path, "rb") as f:
        before = f.read()
    mtime = os.stat(path).st_mtime_ns
    script.reset()
    res = cli("run", "--resume-checkpoint", path, "--show-prompt")
    assert res.code == 0, res
    assert not script.calls
    headers = [line for line in res.out.splitlines() if line.startswith("=== step ")]
    assert [h.split(":")[0] for h in headers] == ["=== step 3/4", "=== step 4/4"]
    assert headers[0].startswith("=== step 3/4: review (reviewer) -> ")
    # The real earlier outputs, not placeholders, and the original task.
    assert "plan answer 1" in res.out and "implement answer 1" in res.out
    assert "fix the bug" in res.out
    with open(path, "rb") as f:
        assert f.read() == before
    assert os.stat(path).st_mtime_ns == mtime
    assert checkpoints() == [path]


def test_resume_subprocess(git_repo, tmp_path, run_aethr):
    write_wf(git_repo)
    log = tmp_path / "calls.log"
    res = run_wrapped("run", "fix the bug", cwd=git_repo, log=log,
                      plan={"review": [{"partial": "x", "error": "down"}]})
    assert res.code == 3, res
    path = only_checkpoint()
    # Show the remaining prompts (the file stays), then resume with the real aethr.py.
    shown = run_aethr("run", "--resume-checkpoint", path, "--show-prompt", cwd=git_repo)
    assert shown.code == 0, shown
    assert "=== step 3/4: review" in shown.out and "plan answer 1" in shown.out
    assert "=== step 1/4" not in shown.out
    assert os.path.exists(path)
    res = run_wrapped("run", "--resume-checkpoint", path, cwd=git_repo, log=log)
    assert res.code == 0, res
    assert Counter(log.read_text().split()) == Counter(
        {"plan": 1, "implement": 1, "review": 2, "summary": 1})
    assert not os.path.exists(path)
    no_traceback(res.err)


def test_resume_refusals_subprocess(git_repo, tmp_path, run_aethr):
    write_wf(git_repo)
    res = run_wrapped("run", "fix the bug", cwd=git_repo,
                      plan={"review": [{"partial": "x", "error": "down"}]})
    assert res.code == 3, res
    path = only_checkpoint()
    with open(path, "rb") as f:
        before = f.read()
    for extra in (["a", "task"], ["--live"], ["--model", MODEL], ["--preset", "custom"]):
        res = run_aethr("run", "--resume-checkpoint", path, *extra, cwd=git_repo)
        assert res.code == 2, (extra, res)
        assert "aethr: error: --resume-checkpoint" in res.err
        no_traceback(res.err)
    write_wf(git_repo, LOOP_WF + "description: changed\n")
    res = run_aethr("run", "--resume-checkpoint", path, cwd=git_repo)
    assert res.code == 2, res
    assert "--force" in res.err
    with open(path, "rb") as f:
        assert f.read() == before
    for kind in ("missing", "directory", "corrupt", "foreign"):
        d = tmp_path / kind
        d.mkdir()
        bad = _bad_file(kind, d)
        res = run_aethr("run", "--resume-checkpoint", bad, cwd=git_repo)
        assert res.code == 2, (kind, res)
        assert res.out == ""
        assert res.err.startswith("aethr: error: ") and bad in res.err
        no_traceback(res.err)
    res = run_aethr("run", "--resume-checkpoint", path, "--force", cwd=git_repo)
    assert res.code == 0, res
    assert not os.path.exists(path)


# -- Ctrl-C -------------------------------------------------------------------------------------


def test_ctrl_c_in_a_step_exits_130_with_a_checkpoint(git_repo, cli, monkeypatch):
    write_wf(git_repo)
    script = Script(monkeypatch, {"review": [Fail(KeyboardInterrupt(), "half a review\n")]})
    res = cli("run", "fix the bug")
    assert res.code == 130, res
    path = only_checkpoint()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    lines = res.err.splitlines()
    assert lines[-1] == resume_line(path)
    assert lines[-2] == "aethr: interrupted"
    no_traceback(res.err)
    state = load_cp(path)["state"]
    assert state["next_step"] == 2
    assert state["partial"] == {"step": "review", "output": "half a review\n",
                                "incomplete": True}
    script.reset()
    res = cli("run", "--resume-checkpoint", path)
    assert res.code == 0, res
    assert script.calls == Counter({"review": 1, "summary": 1})
    assert not os.path.exists(path)


def test_ctrl_c_with_json_names_the_checkpoint(git_repo, cli, monkeypatch):
    # SPEC §2: run_end carries the checkpoint path when one was written.
    write_wf(git_repo)
    Script(monkeypatch, {"review": [Fail(KeyboardInterrupt(), "half")]})
    res = cli("run", "fix the bug", "--json")
    assert res.code == 130, res
    path = only_checkpoint()
    events = [json.loads(line) for line in res.out.splitlines()]
    assert events[-1]["event"] == "run_end"
    assert events[-1]["checkpoint"] == path
    assert events[-1]["verdict"] != "pass"


def test_ctrl_c_as_a_cmd_context_ends(git_repo, cli, monkeypatch):
    # Ctrl-C lands while aethr waits for a `cmd:` context whose shell has just exited: still
    # exit 130 with a checkpoint, never a crash (exit 70).
    write_wf(git_repo, f"""\
workflow: c
roles:
  planner: Plan it.
models:
  default: {MODEL}
steps:
  - id: plan
    role: planner
    context: ['cmd:echo ctrl-c-here']
""")
    Script(monkeypatch)
    real_wait = subprocess.Popen.wait

    def wait(self, timeout=None):
        status = real_wait(self, timeout)
        if isinstance(self.args, str) and "ctrl-c-here" in self.args and timeout is not None:
            raise KeyboardInterrupt
        return status

    monkeypatch.setattr(subprocess.Popen, "wait", wait)
    res = cli("run", "fix the bug")
    assert res.code == 130, res
    no_traceback(res.err)
    path = only_checkpoint()
    assert res.err.splitlines()[-1] == resume_line(path)
    assert load_cp(path)["state"]["partial"] == {"step": "plan", "output": "",
                                                 "incomplete": True}


def _pgroup_alive(pgid: int) -> bool:
    """True while a live (non-zombie) process of group `pgid` exists."""
    if os.path.isdir("/proc/self"):
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
        return False
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


CTRL_C_WF = plan_review_wf(
    "slow", review_context="""['cmd:echo $$ > "$MARK.tmp"; mv "$MARK.tmp" "$MARK"; sleep 30']""")


def test_ctrl_c_subprocess(git_repo, tmp_path):
    write_wf(git_repo, CTRL_C_WF)
    mark = tmp_path / "cmd-started"
    env = dict(os.environ, MARK=str(mark))
    proc = subprocess.Popen([sys.executable, str(AETHR_PY), "run", "fix the bug"], cwd=git_repo,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, encoding="utf-8")
    try:
        deadline = time.monotonic() + 20
        while not mark.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the cmd: context never started"
            time.sleep(0.02)
        pgid = int(mark.read_text())
        assert _pgroup_alive(pgid)
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, (out, err)
    assert took < 5
    deadline = time.monotonic() + 3
    while _pgroup_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _pgroup_alive(pgid), "the cmd: context's sleep was left running"
    path = only_checkpoint()
    lines = err.splitlines()
    assert lines[-1] == resume_line(path)
    assert "aethr: interrupted" in lines
    no_traceback(err)
    cp = load_cp(path)
    assert cp["state"]["next_step"] == 1
    assert [r["step"] for r in cp["state"]["results"]] == ["plan"]
    assert cp["state"]["partial"]["step"] == "review"
    assert cp["state"]["partial"]["incomplete"] is True
    assert "## plan" in out


# -- closed stdout ------------------------------------------------------------------------------


def test_closed_stdout_in_a_step_exits_141(git_repo, cli, monkeypatch):
    write_wf(git_repo)
    Script(monkeypatch, {"review": [Fail(BrokenPipeError(32, "Broken pipe"), "half")]})
    res = cli("run", "fix the bug")
    assert res.code == 141, res
    path = only_checkpoint()
    lines = res.err.splitlines()
    assert lines[-1] == resume_line(path)
    assert not any("error" in line.lower() for line in lines[:-1])
    no_traceback(res.err)
    assert load_cp(path)["state"]["partial"] == {"step": "review", "output": "half",
                                                 "incomplete": True}


class BreakingOut:
    """A stdout whose next write after `after` raises `exc`: `| head -1`, or a Ctrl-C that
    lands between two writes."""

    def __init__(self, after: str, exc: type[BaseException]) -> None:
        self.after, self.exc, self.text, self.broken = after, exc, "", False

    def write(self, s):
        if self.broken:
            raise self.exc(32, "Broken pipe") if self.exc is BrokenPipeError else self.exc()
        self.text += s
        if self.after in self.text:
            self.broken = True
        return len(s)

    def flush(self):
        pass

    def isatty(self):
        return False


@pytest.mark.parametrize("after, exc, code, done", [
    ("## plan\n\n", BrokenPipeError, 141, []),                  # next: the step's text
    ("second line of plan\n", BrokenPipeError, 141, ["plan"]),   # next: the blank line after
    ("second line of plan\n\n", BrokenPipeError, 141, ["plan"]),  # next: `## implement`
    ("second line of plan\n\n", KeyboardInterrupt, 130, ["plan"]),  # Ctrl-C between steps
])
def test_stopped_between_writes_still_writes_the_checkpoint(git_repo, monkeypatch, after, exc,
                                                            code, done):
    # The run stops on the next write, whichever it is (a step's `## ID` line, its text, the
    # blank line after it): exit 141 or 130, and a checkpoint is written (SPEC §2 exit status).
    import io

    write_wf(git_repo)
    Script(monkeypatch)
    out, err = BreakingOut(after, exc), io.StringIO()
    rc = aethr.main(["run", "fix the bug"], term=aethr.Term(out, err, environ=dict(os.environ),
                                                            inp=io.StringIO()))
    assert rc == code, err.getvalue()
    no_traceback(err.getvalue())
    found = checkpoints()
    assert len(found) == 1, err.getvalue()
    assert err.getvalue().splitlines()[-1] == resume_line(found[0])
    state = load_cp(found[0])["state"]
    assert [r["step"] for r in state["results"]] == done
    assert state["next_step"] == len(done)


def test_closed_stdout_subprocess(git_repo, tmp_path):
    # `aethr run … | head -1`: the reader takes the first line and goes away.
    go = tmp_path / "go"
    write_wf(git_repo, plan_review_wf(
        "piped", plan_context="""['cmd:while [ ! -e "$GO" ]; do sleep 0.02; done']"""))
    env = dict(os.environ, GO=str(go))
    proc = subprocess.Popen([sys.executable, str(AETHR_PY), "run", "fix the bug"], cwd=git_repo,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        first = proc.stdout.readline()
        proc.stdout.close()
        go.write_text("go")
        err = proc.stderr.read().decode("utf-8")
        proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert first == b"## plan\n"
    assert proc.returncode == 141, err
    no_traceback(err)
    path = only_checkpoint()
    lines = err.splitlines()
    assert lines[-1] == resume_line(path)
    assert not any("error" in line.lower() for line in lines[:-1]), err
    assert load_cp(path)["state"]["next_step"] == 0


# -- --json -------------------------------------------------------------------------------------


def json_events(out: str) -> list[dict]:
    assert out.endswith("\n")
    return [json.loads(line) for line in out.splitlines()]


def check_json_run(events, steps, *, artifact_step=None):
    names = [e["event"] for e in events]
    assert names == ["run_start"] + ["step_start", "step_end"] * len(steps) + ["run_end"]
    start = events[0]
    assert start["schema"] == 1 and start["mode"] == "mock"
    assert start["steps"] == steps
    for s, e in zip(steps, events[1:-1:2], strict=True):
        assert e["step"] == s
    for s, e in zip(steps, events[2:-1:2], strict=True):
        assert e["step"] == s
        for key in ("output", "usage", "duration", "review_status", "artifact", "warnings"):
            assert key in e, (key, e)
        assert isinstance(e["duration"], (int, float)) and e["duration"] >= 0
        assert isinstance(e["warnings"], list)
        if s == artifact_step:
            assert e["artifact"]["files"] == [] and e["artifact"]["stat"] == ""
    end = events[-1]
    assert end["mode"] == "mock"
    total = {}
    for e in events[2:-1:2]:
        for k, v in e["usage"].items():
            total[k] = total.get(k, 0) + v
    assert end["usage"] == total
    return end


def test_json_events(git_repo, cli, monkeypatch):
    write_wf(git_repo, OPENCODE_WF)
    Script(monkeypatch, {"review": ["fine\nReview status: pass\n"]})
    res = cli("run", "fix the bug", "--json")
    assert res.code == 0, res
    events = json_events(res.out)
    end = check_json_run(events, ["plan", "build", "review"], artifact_step="build")
    assert events[0]["workflow"] == "withcode"
    assert end["verdict"] == "pass" and "checkpoint" not in end
    ends = {e["step"]: e for e in events if e["event"] == "step_end"}
    assert ends["plan"]["output"] == answer("plan", 1)
    assert ends["plan"]["usage"] == usage_of("plan", 1)
    assert ends["review"]["review_status"] == "pass"
    assert ends["build"]["artifact"]["note"] == "mock mode: OpenCode was not run"
    assert "## " not in res.out
    assert "aethr init" not in res.out


def test_json_step_end_carries_warnings_and_revise(git_repo, cli, monkeypatch):
    write_wf(git_repo)
    Script(monkeypatch, {"review": ["no status here\n", "still none\n"]})
    res = cli("run", "fix the bug", "--json")
    assert res.code == 1, res
    events = json_events(res.out)
    reviews = [e for e in events if e["event"] == "step_end" and e["step"] == "review"]
    assert len(reviews) == 2
    assert any("gave no 'Review status:' line" in w for w in reviews[0]["warnings"])
    assert any("did not pass after 2 iterations" in w for w in reviews[1]["warnings"])
    assert events[-1]["event"] == "run_end" and events[-1]["verdict"] == "revise"
    assert "gave no 'Review status:' line" in res.err     # warnings are shown on stderr


def test_json_has_no_colour_even_when_forced(git_repo, cli, monkeypatch):
    write_wf(git_repo, OPENCODE_WF)
    Script(monkeypatch)
    res = cli("run", "fix [the] *bug*", "--json", env={"FORCE_COLOR": "1"}, tty=True)
    assert res.code == 0, res
    assert "\x1b" not in res.out
    events = json_events(res.out)
    check_json_run(events, ["plan", "build", "review"], artifact_step="build")
    assert all(isinstance(e, dict) for e in events)


def test_json_failure_ends_with_the_checkpoint(git_repo, cli, monkeypatch):
    write_wf(git_repo)
    Script(monkeypatch, {"review": [Fail(backend_error(), "half")]})
    res = cli("run", "fix the bug", "--json", "--verbose")
    assert res.code == 3, res
    path = only_checkpoint()
    events = json_events(res.out)                          # the --verbose JSON is on stderr
    assert [e["event"] for e in events] == ["run_start", "step_start", "step_end", "step_start",
                                            "step_end", "step_start", "run_end"]
    end = events[-1]
    assert end["verdict"] == "failed" and end["mode"] == "mock"
    assert end["checkpoint"] == path
    assert verbose_json(res.err) == load_cp(path)
    assert res.err.splitlines()[-1] == resume_line(path)


@pytest.mark.parametrize("bad", [
    "workflow: x\nroles:\n  a: A.\nsteps:\n  - id: s\n    role: a\n    contxt: []\n",
    "workflow: x\nroles:\n  a: A.\nsteps: []\n",
])
def test_json_errors_before_run_start_go_to_stderr(git_repo, cli, bad):
    (git_repo / ".aethr.yaml").write_text(bad)
    res = cli("run", "fix it", "--json")
    assert res.code == 2, res
    assert res.out == ""
    assert "aethr: error: " in res.err
    assert checkpoints() == []


def test_json_subprocess(git_repo, run_aethr):
    write_wf(git_repo, OPENCODE_WF)
    res = run_aethr("run", "fix the bug", "--json", cwd=git_repo, env={"FORCE_COLOR": "1"})
    assert res.code == 0, res
    assert "\x1b" not in res.out
    events = json_events(res.out)
    names = [e["event"] for e in events]
    assert names == ["run_start"] + ["step_start", "step_end"] * 3 + ["run_end"]
    assert events[0]["schema"] == 1 and events[0]["mode"] == "mock"
    assert events[-1]["verdict"] == "pass"
    build = [e for e in events if e["event"] == "step_end" and e["step"] == "build"][0]
    assert build["artifact"]["files"] == [] and build["artifact"]["stat"] == ""
    # A failing run, then a bad workflow.
    res = run_wrapped("run", "fix the bug", "--json", cwd=git_repo,
                      plan={"review": [{"partial": "x", "error": "down"}]})
    assert res.code == 3, res
    events = json_events(res.out)
    assert events[-1]["event"] == "run_end" and events[-1]["verdict"] == "failed"
    assert events[-1]["checkpoint"] == only_checkpoint()
    (git_repo / ".aethr.yaml").write_text("workflow: x\nsteps: []\n")
    res = run_aethr("run", "fix it", "--json", cwd=git_repo)
    assert res.code == 2 and res.out == "" and "aethr: error: " in res.err


# -- the Python API -----------------------------------------------------------------------------


def test_api_resume_continues_a_failed_run(git_repo, monkeypatch):
    workflow = aethr.load_workflow(text=LOOP_WF)
    script = Script(monkeypatch, {"review": [Fail(backend_error(), "half")]})
    env = dict(os.environ)
    with pytest.raises(aethr.StepFailed) as info:
        aethr.run_workflow(workflow, "fix the bug", root=git_repo, env=env)
    cp = info.value.checkpoint
    assert json.loads(json.dumps(cp)) == cp                 # plain data: the CLI writes it
    assert checkpoints() == []                              # the API writes no file
    events: list[dict] = []
    result = aethr.run_workflow(workflow, "fix the bug", root=git_repo, env=env,
                                on_event=events.append, resume=cp)
    assert result.verdict == "pass"
    assert [r.step for r in result.steps] == ["plan", "implement", "review", "summary"]
    assert result.steps[0].text == answer("plan", 1)
    assert script.calls == Counter({"plan": 1, "implement": 1, "review": 2, "summary": 1})
    assert [e["step"] for e in events if e["event"] == "step_start"] == ["review", "summary"]
    assert result.usage["input"] == sum(usage_of(s, n)["input"] for s, n in
                                        [("plan", 1), ("implement", 1), ("review", 2),
                                         ("summary", 1)])
    assert checkpoints() == []


def test_api_ctrl_c_leaves_a_checkpoint_on_the_exception(git_repo, monkeypatch):
    workflow = aethr.load_workflow(text=LOOP_WF)
    script = Script(monkeypatch, {"implement": [Fail(KeyboardInterrupt(), "half")]})
    env = dict(os.environ)
    with pytest.raises(KeyboardInterrupt) as info:
        aethr.run_workflow(workflow, "fix the bug", root=git_repo, env=env)
    cp = info.value.checkpoint
    assert cp["state"]["next_step"] == 1
    assert cp["state"]["partial"] == {"step": "implement", "output": "half", "incomplete": True}
    result = aethr.run_workflow(workflow, "fix the bug", root=git_repo, env=env, resume=cp)
    assert [r.step for r in result.steps] == ["plan", "implement", "review", "summary"]
    assert script.calls == Counter({"plan": 1, "implement": 2, "review": 1, "summary": 1})


# -- found in review: AETHR_MODEL is an override too; damaged state sections ----------------------

def test_checkpoint_keeps_the_aethr_model_override(git_repo, cli, monkeypatch):
    write_wf(git_repo)
    script = Script(monkeypatch, {"review": [Fail(backend_error())]})
    monkeypatch.setattr(FakeLive, "stream", script.stream, raising=False)
    monkeypatch.setitem(aethr.PROVIDERS, "openai", FakeLive)
    res = cli("run", "fix it", env={"OPENAI_API_KEY": SECRET,
                                    "AETHR_MODEL": "openai:special-model"})
    assert res.code == 3, res
    path = only_checkpoint()
    assert load_cp(path)["models"] == {"*": "openai:special-model"}
    # Resumed without AETHR_MODEL (or with another one): the checkpoint's model is used.
    script.reset()
    res = cli("run", "--resume-checkpoint", path,
              env={"OPENAI_API_KEY": SECRET, "AETHR_MODEL": "openai:other-model"})
    assert res.code == 0, res
    assert script.models == {"review": ["openai:special-model"],
                             "summary": ["openai:special-model"]}


@pytest.mark.parametrize("damage", [
    {"results": [{"foo": 1}]}, {"results": "zz"}, {"loop_passes": {"a": 1}},
    {"loop_passes": {"0": "x"}}, {"next_step": "1"},
], ids=["result without fields", "results a string", "loop key", "loop count", "next as text"])
def test_resume_rejects_a_damaged_state(git_repo, cli, monkeypatch, damage):
    _, _, path = fail_review_first(monkeypatch, cli, git_repo)
    data = load_cp(path)
    data["state"].update(damage)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f)
    res = cli("run", "--resume-checkpoint", path, "--force")
    assert res.code == 2, res
    assert "is not a valid checkpoint" in res.err
    no_traceback(res.err)


@pytest.mark.parametrize("field, value", [("task", 5), ("mode", "weird"), ("models", ["a"])])
def test_resume_rejects_damaged_top_fields(git_repo, cli, monkeypatch, field, value):
    _, _, path = fail_review_first(monkeypatch, cli, git_repo)
    data = load_cp(path)
    data[field] = value
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f)
    res = cli("run", "--resume-checkpoint", path)
    assert res.code == 2, res
    assert res.out == ""
    no_traceback(res.err)

"""Issue 6, automation: `--json` in live mode (SPEC §2) against a loopback server, the CI review
gate (`examples/ci-review.yaml`, a reviewer over `git_diff:origin/main`) in a repository with a
branch and a fake `origin`, workflow promotion (§9: the printed `aethr init …` really saves the
setup), the Python API (§13) and the README's vendoring example, run as a script next to a copy
of aethr.py."""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
from conftest import AETHR_PY, DATA, ROOT, git
from loopback import LoopbackServer, Reply

import aethr

KEY = "sk-test-automation-0123456789"
TASK = "review this pull request"
MIDSTREAM = DATA / "transcripts" / "openai_midstream_error.sse"
CI_EXAMPLE = ROOT / "examples" / "ci-review.yaml"
PROMOTE = "aethr: to save this setup as .aethr.yaml: "
CHECKPOINT_NAME = re.compile(r"aethr-checkpoint-[A-Za-z0-9_]{8}\.json\Z")

#: Two model steps on OpenAI, so usage adds up across steps and a second step can fail.
TWO_STEP = """\
workflow: two-step
roles:
  planner: Plan the change in a few lines. Do not write code.
  reviewer: |
    Review the change. Finish with "Review status: pass" or "Review status: revise".
models:
  planner: openai:gpt-5.4-mini
  reviewer: openai:gpt-5.5
steps:
  - id: plan
    role: planner
    context: [git_diff]
  - id: review
    role: reviewer
    context: [git_diff]
"""
PLAN = "1. Check the new branch.\n2. Add a test for it.\n"
REVISE = "- [medium] src/app.py:2: no test for the new branch\n\nReview status: revise\n"
PASS = "No findings.\n\nReview status: pass\n"


# -- helpers ------------------------------------------------------------------------------------

def openai_sse(text: str, usage: tuple[int, int]) -> bytes:
    """An OpenAI chat-completions stream: the text in small deltas, stop, usage, [DONE]."""
    pieces = [text[i:i + 9] for i in range(0, len(text), 9)]
    chunks = [{"choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]}
              for p in pieces]
    chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    chunks.append({"choices": [], "usage": {"prompt_tokens": usage[0],
                                            "completion_tokens": usage[1]}})
    return ("".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n").encode()


def anthropic_sse(text: str, usage: tuple[int, int]) -> bytes:
    """An Anthropic messages stream, shaped like tests/data/transcripts/anthropic_basic.sse."""
    events = [("message_start", {"type": "message_start", "message": {
        "model": "claude-sonnet-5", "type": "message", "role": "assistant", "content": [],
        "usage": {"input_tokens": usage[0], "output_tokens": 1}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "text", "text": ""}}),
        ("ping", {"type": "ping"})]
    events += [("content_block_delta", {"type": "content_block_delta", "index": 0,
                                        "delta": {"type": "text_delta", "text": text[i:i + 9]}})
               for i in range(0, len(text), 9)]
    events += [("content_block_stop", {"type": "content_block_stop", "index": 0}),
               ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                                  "usage": {"output_tokens": usage[1]}}),
               ("message_stop", {"type": "message_stop"})]
    return "".join(f"event: {e}\ndata: {json.dumps(d)}\n\n" for e, d in events).encode()


#: provider -> (base URL variable, the path under the server, stream builder)
STREAMS = {"openai": ("OPENAI_BASE_URL", "/v1", openai_sse),
           "anthropic": ("ANTHROPIC_BASE_URL", "", anthropic_sse)}


def openai_env(server: LoopbackServer, **extra: str) -> dict[str, str]:
    return {"OPENAI_BASE_URL": server.url + "/v1", "OPENAI_API_KEY": KEY, **extra}


def anthropic_env(server: LoopbackServer, **extra: str) -> dict[str, str]:
    return {"ANTHROPIC_BASE_URL": server.url, "ANTHROPIC_API_KEY": KEY, **extra}


def json_events(out: str) -> list[dict]:
    """Every stdout line is one JSON object with an "event": nothing else is there."""
    assert out.endswith("\n"), out
    events = []
    for line in out.splitlines():
        obj = json.loads(line)
        assert isinstance(obj, dict) and isinstance(obj.get("event"), str), line
        events.append(obj)
    return events


def kinds(events: list[dict]) -> list[str]:
    return [e["event"] for e in events]


def tmp_files() -> list[str]:
    return sorted(os.listdir(tempfile.gettempdir()))


@pytest.fixture
def two_step(tmp_path) -> Path:
    """The two-step workflow, outside the repository (so it is not part of any diff)."""
    path = tmp_path / "flows" / "two-step.yaml"
    path.parent.mkdir()
    path.write_text(TWO_STEP)
    return path


@pytest.fixture
def changed_repo(git_repo):
    (git_repo / "src" / "app.py").write_text(
        "def add(a, b):\n    if a is None:\n        return b\n    return a + b\n")
    return git_repo


# -- --json in live mode (SPEC §2) --------------------------------------------------------------

@pytest.mark.parametrize("answer, verdict, code, how", [
    (REVISE, "revise", 1, "in-process"),
    (PASS, "pass", 0, "subprocess"),
], ids=["revise-in-process", "pass-subprocess"])
def test_json_live_run_events(changed_repo, server, two_step, cli, run_aethr,
                              answer, verdict, code, how):
    server.add(Reply.sse(openai_sse(PLAN, (100, 7)), plan="bytes:11"),
               Reply.sse(openai_sse(answer, (200, 11)), plan="bytes:11"))
    argv = ("run", "--json", "--live", "--workflow", str(two_step), TASK)
    env = openai_env(server)
    res = cli(*argv, env=env) if how == "in-process" else run_aethr(*argv, cwd=changed_repo,
                                                                    env=env)
    assert res.code == code, res
    events = json_events(res.out)
    assert kinds(events) == ["run_start", "step_start", "step_end", "step_start", "step_end",
                             "run_end"]
    start, plan_start, plan_end, review_start, review_end, end = events
    assert start["schema"] == 1 and start["mode"] == "live"
    assert start["workflow"] == "two-step" and start["steps"] == ["plan", "review"]
    assert (plan_start["step"], plan_start["model"]) == ("plan", "openai:gpt-5.4-mini")
    assert (review_start["step"], review_start["model"]) == ("review", "openai:gpt-5.5")
    assert "mock" not in plan_start["where"] + review_start["where"]
    # The streamed text is the output, and the usage is the stream's own numbers.
    assert plan_end["step"] == "plan" and plan_end["output"] == PLAN
    assert (plan_end["usage"]["input"], plan_end["usage"]["output"]) == (100, 7)
    assert review_end["output"] == answer and review_end["review_status"] == verdict
    assert (review_end["usage"]["input"], review_end["usage"]["output"]) == (200, 11)
    assert plan_end["duration"] >= 0 and review_end["warnings"] == []
    assert end["verdict"] == verdict and end["mode"] == "live" and end["steps_run"] == 2
    assert (end["usage"]["input"], end["usage"]["output"]) == (300, 18)
    assert end.get("checkpoint") is None            # nothing failed: no checkpoint
    assert tmp_files() == []
    # No streamed text and no panel on stdout: the answers only inside JSON strings.
    assert "## review" not in res.out and "Review status" not in res.out.replace(
        json.dumps(answer)[1:-1], "")
    assert KEY not in res.out + res.err
    assert [r.json["model"] for r in server.requests] == ["gpt-5.4-mini", "gpt-5.5"]
    assert all(r.json["stream"] is True for r in server.requests)


def test_json_failed_live_run_ends_with_run_end_naming_the_checkpoint(changed_repo, server,
                                                                      two_step, cli):
    server.add(Reply.sse(openai_sse(PLAN, (100, 7))), Reply.sse(MIDSTREAM.read_bytes()))
    res = cli("run", "--json", "--live", "--workflow", str(two_step), TASK,
              env=openai_env(server))
    assert res.code == 3, res
    events = json_events(res.out)
    assert kinds(events) == ["run_start", "step_start", "step_end", "step_start", "run_end"]
    end = events[-1]
    assert end["verdict"] == "failed" and end["mode"] == "live" and end["steps_run"] == 1
    assert (end["usage"]["input"], end["usage"]["output"]) == (100, 7)
    path = end["checkpoint"]
    assert os.path.isabs(path) and path == os.path.realpath(path) and os.path.isfile(path)
    assert CHECKPOINT_NAME.search(path)
    assert os.path.dirname(path) == os.path.realpath(tempfile.gettempdir())
    with open(path, encoding="utf-8") as f:
        saved = json.load(f)
    assert [r["step"] for r in saved["state"]["results"]] == ["plan"]
    assert saved["state"]["results"][0]["output"] == PLAN
    # The partial text streamed before the error is not on stdout (--json streams no text).
    assert "Sure, here is the" not in res.out
    assert ("aethr: error: step 'review' failed: openai: error in the stream: The server had "
            "an error while processing your request. Sorry about that!") in res.err
    assert f"aethr: to resume: aethr run --resume-checkpoint {shlex.quote(path)}" in res.err
    assert len(server.requests) == 2


def test_json_error_before_run_start_is_on_stderr_only(changed_repo, server, two_step, cli):
    res = cli("run", "--json", "--live", "--workflow", str(two_step), TASK,
              env={"OPENAI_BASE_URL": "https://api.openai.com/v1", "HTTPS_PROXY": server.url})
    assert res.code == 2, res
    assert res.out == ""
    assert "OPENAI_API_KEY" in res.err and "aethr auth login openai" in res.err
    assert server.requests == []


# -- the CI review gate: examples/ci-review.yaml -------------------------------------------------

@pytest.fixture
def pr_repo(git_repo, tmp_path):
    """A pull-request checkout: `main` pushed to a bare `origin`, a `feature` branch with a
    commit, staged, unstaged and untracked changes, and a later commit on origin/main that the
    review must not see (the diff is against the merge base)."""
    repo = git_repo
    (repo / "examples").mkdir()
    shutil.copyfile(CI_EXAMPLE, repo / "examples" / "ci-review.yaml")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "add the CI review workflow")
    origin = tmp_path / "origin.git"
    git(tmp_path, "clone", "-q", "--bare", str(repo), str(origin))
    git(repo, "remote", "add", "origin", str(origin))
    git(repo, "fetch", "-q", "origin")
    git(repo, "checkout", "-q", "-b", "feature")
    (repo / "src" / "app.py").write_text(
        "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):  # BRANCH_COMMITTED\n"
        "    return a - b\n")
    git(repo, "commit", "-q", "-am", "add sub")
    # Someone else pushes to main after the branch was made.
    upstream = tmp_path / "upstream"
    git(tmp_path, "clone", "-q", str(origin), str(upstream))
    (upstream / "README.md").write_text("# Demo\n\nMAIN_LATER_CHANGE\n")
    (upstream / "later.py").write_text("MAIN_LATER_FILE = 1\n")
    git(upstream, "add", "-A")
    git(upstream, "commit", "-q", "-m", "later work on main")
    git(upstream, "push", "-q", "origin", "main")
    git(repo, "fetch", "-q", "origin")
    base = git(repo, "merge-base", "origin/main", "HEAD").strip()
    assert base != git(repo, "rev-parse", "origin/main").strip()
    # Uncommitted work on the branch: unstaged, staged and untracked.
    with open(repo / "src" / "app.py", "a") as f:
        f.write("\n\ndef mul(a, b):  # UNSTAGED_CHANGE\n    return a * b\n")
    (repo / "src" / "staged.py").write_text("STAGED_CHANGE = True\n")
    git(repo, "add", "src/staged.py")
    (repo / "notes.txt").write_text("UNTRACKED_CHANGE\n")
    return repo


GATE = ("run", "--live", "--workflow", "examples/ci-review.yaml", TASK)
BRANCH_MARKERS = ("BRANCH_COMMITTED", "UNSTAGED_CHANGE", "STAGED_CHANGE", "UNTRACKED_CHANGE")


def check_gate_request(server: LoopbackServer) -> None:
    [request] = server.requests
    assert request.path == "/v1/messages"
    assert request.headers["x-api-key"] == KEY
    body = request.json
    assert body["model"] == "claude-sonnet-5" and body["max_tokens"] == 4096
    assert "You review a pull request" in body["system"]
    [message] = body["messages"]
    prompt = message["content"]
    assert TASK in prompt and "git_diff:origin/main" in prompt
    for marker in BRANCH_MARKERS:
        assert marker in prompt, marker
    assert "MAIN_LATER_CHANGE" not in prompt and "MAIN_LATER_FILE" not in prompt
    assert "later.py" not in prompt


@pytest.mark.parametrize("answer, verdict, code", [(REVISE, "revise", 1), (PASS, "pass", 0)],
                         ids=["revise", "pass"])
def test_ci_gate_exit_status_is_the_verdict(pr_repo, server, cli, answer, verdict, code):
    server.add(Reply.sse(anthropic_sse(answer, (1500, 42)), plan="bytes:13"))
    res = cli(*GATE, env=anthropic_env(server))
    assert res.code == code, res
    check_gate_request(server)
    assert answer.strip() in res.out
    assert "anthropic:claude-sonnet-5" in res.err and "mock" not in res.err
    assert f"verdict {verdict}" in res.err
    assert PROMOTE not in res.err              # a --workflow file: nothing to promote
    assert tmp_files() == []


def test_ci_gate_subprocess_writes_a_clean_review_document(pr_repo, server, run_aethr):
    server.add(Reply.sse(anthropic_sse(REVISE, (1500, 42))))
    res = run_aethr(*GATE, cwd=pr_repo, env=anthropic_env(server))
    assert res.code == 1, res
    assert res.out == "## review\n\n" + REVISE + "\n"       # `> review.md` is a clean document
    check_gate_request(server)
    assert "verdict revise" in res.err


@pytest.mark.parametrize("json_flag", [(), ("--json",)], ids=["text", "json"])
def test_ci_gate_without_a_key_fails_instead_of_passing_in_mock_mode(pr_repo, server, cli,
                                                                     json_flag):
    res = cli(*GATE, *json_flag, env={"ANTHROPIC_BASE_URL": server.url})
    assert res.code == 2, res
    assert res.out == ""
    assert "ANTHROPIC_API_KEY" in res.err and "aethr auth login anthropic" in res.err
    assert "verdict" not in res.err and "mock" not in res.err
    assert server.requests == []


def context_position(text: str, needle: str) -> tuple[int, int]:
    for number, line in enumerate(text.splitlines(), 1):
        if "context:" in line and needle in line:
            return number, line.index(needle) + 1
    raise AssertionError(f"{needle} not in a context line")


@pytest.mark.parametrize("live", [True, False], ids=["live", "mock"])
def test_ci_gate_without_origin_main_is_a_preflight_error(git_repo, server, cli, live):
    (git_repo / "examples").mkdir()
    shutil.copyfile(CI_EXAMPLE, git_repo / "examples" / "ci-review.yaml")
    argv = GATE if live else tuple(a for a in GATE if a != "--live")
    res = cli(*argv, env=anthropic_env(server))
    assert res.code == 2, res
    line, column = context_position(CI_EXAMPLE.read_text(), "git_diff:origin/main")
    problems = [x for x in res.err.splitlines() if x.startswith("examples/ci-review.yaml:")]
    assert len(problems) == 1, res.err
    assert problems[0].startswith(f"examples/ci-review.yaml:{line}:{column}: ")
    assert "origin/main" in problems[0]
    assert "aethr: error: 1 problem in examples/ci-review.yaml" in res.err
    assert res.out == "" and server.requests == []


def test_ci_gate_preflight_lists_a_missing_key_and_origin_main_together(git_repo, server, cli):
    (git_repo / "examples").mkdir()
    shutil.copyfile(CI_EXAMPLE, git_repo / "examples" / "ci-review.yaml")
    res = cli(*GATE, env={"ANTHROPIC_BASE_URL": server.url})
    assert res.code == 2, res
    assert "ANTHROPIC_API_KEY" in res.err and "origin/main" in res.err
    assert "aethr: error: 2 problems in examples/ci-review.yaml" in res.err
    assert server.requests == []


def readme_ci_job(text: str) -> tuple[list[str], list[str]]:
    """(the `run:` command, the env variable names) of the README's GitHub Actions job."""
    section = text.split("\n## CI review gate", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```ya?ml\n(.*?)```", section, re.S).group(1)
    run = re.search(r"^\s*- run: (.+)$", block, re.M).group(1)
    env = re.search(r"^(\s*)env:\n((?:\1\s+\S.*\n)+)", block, re.M).group(2)
    names = [m.group(1) for m in re.finditer(r"^\s*([A-Z][A-Z0-9_]*):", env, re.M)]
    return shlex.split(run), names


def test_readme_ci_job_passes_with_the_key_it_sets(pr_repo, server, run_aethr):
    # The README's job, run as written, with exactly the variables its `env:` sets (the
    # secret's value faked) and the example's provider pointed at the loopback server.
    argv, names = readme_ci_job((ROOT / "README.md").read_text(encoding="utf-8"))
    assert argv[:2] == ["python3", "aethr.py"] and argv[2] == "run" and "--live" in argv
    assert names, "the job sets no key from a secret"
    [step] = aethr.load_workflow(CI_EXAMPLE).steps
    model = aethr.resolve_model(aethr.load_workflow(CI_EXAMPLE), step)
    base_var, prefix, stream = STREAMS[aethr.split_model(model)[0]]
    server.add(Reply.sse(stream(PASS, (900, 12))))
    env = {name: KEY for name in names}
    env[base_var] = server.url + prefix
    res = run_aethr(*argv[2:], cwd=pr_repo, env=env)
    assert res.code == 0, res
    assert len(server.requests) == 1


# -- workflow promotion (SPEC §9) ---------------------------------------------------------------

def promotion(err: str, live: bool) -> list[str]:
    """The one printed `aethr init …` command, as argv; checks the live note."""
    lines = err.splitlines()
    found = [i for i, line in enumerate(lines) if line.startswith(PROMOTE)]
    assert len(found) == 1, err
    after = lines[found[0] + 1:]
    if live:
        assert after and "--live" in after[0] and "AETHR_LIVE=1" in after[0], err
    else:
        assert not any("AETHR_LIVE" in line for line in after), err
    argv = shlex.split(lines[found[0]][len(PROMOTE):])
    assert argv[:2] == ["aethr", "init"], argv
    return argv


def prompt_parts(out: str) -> list[tuple[str, str, str]]:
    """`--show-prompt` output as (header, system, user) per step."""
    parts = re.split(r"^(=== step .* ===)\n", out, flags=re.M)
    assert parts[0] == "" and len(parts) > 1, out
    steps = []
    for header, body in zip(parts[1::2], parts[2::2], strict=True):
        system, sep, user = body.partition("--- user ---\n")
        assert sep and "--- system ---\n" in system, body
        steps.append((header, system.split("--- system ---\n", 1)[1], user))
    return steps


def promote_and_compare(repo: Path, before: str, argv: list[str], run_aethr, cli,
                        *show_flags: str) -> str:
    """Run the printed command; `run --show-prompt TASK` must then show `before` again."""
    res = run_aethr(*argv[1:], cwd=repo)
    assert res.code == 0, res
    assert (repo / ".aethr.yaml").is_file()
    # Commit the saved setup, as a user would, so that it is not itself an uncommitted
    # change in the git_diff context the comparison looks at.
    git(repo, "add", ".aethr.yaml")
    git(repo, "commit", "-q", "-m", "save the aethr setup", "--", ".aethr.yaml")
    after = cli("run", "--show-prompt", *show_flags, TASK)
    assert after.code == 0, after
    assert "using the built-in" not in after.err          # it read .aethr.yaml
    assert prompt_parts(after.out) == prompt_parts(before)
    return (repo / ".aethr.yaml").read_text()


def test_promotion_after_a_mock_preset_run(changed_repo, cli, run_aethr):
    preset = ("--preset", "plan-implement-review")
    before = cli("run", "--show-prompt", *preset, TASK)
    assert before.code == 0 and len(prompt_parts(before.out)) == 3, before
    res = cli("run", *preset, TASK)
    assert res.code == 0, res
    argv = promotion(res.err, live=False)
    assert argv == ["aethr", "init", "plan-implement-review"]
    promote_and_compare(changed_repo, before.out, argv, run_aethr, cli)


def test_promotion_after_a_live_preset_run_with_a_model(changed_repo, server, cli, run_aethr):
    flags = ("--preset", "review-existing-diff", "--model", "reviewer=openai:gpt-x")
    before = cli("run", "--show-prompt", *flags, TASK)
    assert before.code == 0, before
    assert prompt_parts(before.out)[0][0] == \
        "=== step 1/1: review (reviewer) -> openai:gpt-x ==="
    server.add(Reply.sse(openai_sse(PASS, (300, 5))))
    res = cli("run", *flags, TASK, env=openai_env(server))
    assert res.code == 0, res
    assert server.requests[0].json["model"] == "gpt-x"
    argv = promotion(res.err, live=True)
    assert argv == ["aethr", "init", "review-existing-diff", "--model", "reviewer=openai:gpt-x"]
    promote_and_compare(changed_repo, before.out, argv, run_aethr, cli, "--live")
    # AETHR_LIVE=1 keeps it live just as well; without either, the mock header names it.
    assert prompt_parts(cli("run", "--show-prompt", TASK, env={"AETHR_LIVE": "1"}).out) == \
        prompt_parts(before.out)
    mock = cli("run", "--show-prompt", TASK)
    assert prompt_parts(mock.out)[0][0] == \
        "=== step 1/1: review (reviewer) -> mock (would call openai:gpt-x) ==="


def test_promotion_after_a_model_override_of_the_default_preset(changed_repo, server, cli,
                                                                run_aethr):
    # No --preset: the built-in default ran, with --model; the command saves exactly that.
    before = cli("run", "--show-prompt", "--model", "openai:gpt-x", TASK)
    assert before.code == 0, before
    server.add(Reply.sse(openai_sse(PASS, (300, 5))))
    res = run_aethr("run", "--model", "openai:gpt-x", TASK, cwd=changed_repo,
                    env=openai_env(server))
    assert res.code == 0, res
    argv = promotion(res.err, live=True)
    assert argv == ["aethr", "init", "review-existing-diff", "--model", "openai:gpt-x"]
    promote_and_compare(changed_repo, before.out, argv, run_aethr, cli, "--live")


def test_promotion_with_an_existing_aethr_yaml_adds_force(changed_repo, cli, run_aethr):
    assert cli("init", "custom").code == 0
    git(changed_repo, "add", ".aethr.yaml")
    git(changed_repo, "commit", "-q", "-m", "custom setup", "--", ".aethr.yaml")
    before = cli("run", "--show-prompt", "--preset", "review-existing-diff", TASK)
    res = cli("run", "--preset", "review-existing-diff", TASK)
    assert res.code == 0, res
    argv = promotion(res.err, live=False)
    assert argv == ["aethr", "init", "review-existing-diff", "--force"]
    text = promote_and_compare(changed_repo, before.out, argv, run_aethr, cli)
    assert text == aethr.PRESETS["review-existing-diff"]


def test_no_promotion_for_a_run_from_aethr_yaml(changed_repo, cli):
    assert cli("init", "review-existing-diff").code == 0
    res = cli("run", TASK)
    assert res.code == 0, res
    assert "verdict pass" in res.err
    assert PROMOTE not in res.err and "aethr init" not in res.err


def test_no_promotion_after_a_failed_run(changed_repo, server, cli):
    server.add(Reply.sse(MIDSTREAM.read_bytes()))
    res = cli("run", "--preset", "review-existing-diff", "--model", "openai:gpt-x", TASK,
              env=openai_env(server))
    assert res.code == 3, res
    assert "aethr: to resume:" in res.err
    assert PROMOTE not in res.err and "aethr init" not in res.err


def test_no_promotion_with_json(changed_repo, cli):
    res = cli("run", "--json", "--preset", "plan-implement-review", TASK)
    assert res.code == 0, res
    assert kinds(json_events(res.out))[-1] == "run_end"
    assert PROMOTE not in res.err and "aethr init" not in res.err


# -- the Python API (SPEC §13) ------------------------------------------------------------------

def test_all_names_resolve():
    expected = {"parse_yaml", "load_workflow", "run_workflow", "RunResult", "StepFailed",
                "AethrError", "ConfigError", "YAMLError", "Workflow"}
    assert expected <= set(aethr.__all__)
    for name in aethr.__all__:
        assert hasattr(aethr, name), name
    for name in ("ConfigError", "YAMLError", "StepFailed"):
        assert issubclass(getattr(aethr, name), aethr.AethrError)
    assert issubclass(aethr.YAMLError, aethr.ConfigError)


def test_parse_yaml_data_and_errors():
    assert aethr.parse_yaml("a: [1, 'two']\nb:\n  c: true\n") == {"a": [1, "two"],
                                                                  "b": {"c": True}}
    # Positions only: the wording of YAML syntax errors is not part of this contract.
    for text, line, column in [("workflow: x\nsteps:\n\t- id: a\n", 3, 1),
                               ("a: 1\nb: 2\na: 3\n", 3, 1)]:
        with pytest.raises(aethr.YAMLError) as info:
            aethr.parse_yaml(text)
        assert (info.value.line, info.value.column) == (line, column), info.value
        assert isinstance(info.value, aethr.ConfigError) and info.value.exit_code == 2


BROKEN = TWO_STEP.replace("    context: [git_diff]\n  - id: review",
                          "    histroy_visibility: latest\n  - id: review") + \
    "    repeat:\n      back_to: plan\n      until_review_pass: true\n      max_iterations: 99\n"


def test_load_workflow_from_a_path_text_and_preset(tmp_path):
    path = tmp_path / "two-step.yaml"
    path.write_text(TWO_STEP)
    for wf in (aethr.load_workflow(path), aethr.load_workflow(str(path)),
               aethr.load_workflow(text=TWO_STEP)):
        assert isinstance(wf, aethr.Workflow) and wf.name == "two-step"
        assert [s.id for s in wf.steps] == ["plan", "review"]
        assert wf.models["reviewer"] == "openai:gpt-5.5"
    preset = aethr.load_workflow(preset="plan-implement-review")
    assert preset.name == "plan-implement-review" and preset.preset == "plan-implement-review"
    assert [s.id for s in preset.steps] == ["plan", "implement", "review"]


def test_load_workflow_raises_config_error_with_every_problem(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text(BROKEN)
    for kwargs, display in (({"path": path}, str(path)), ({"text": BROKEN}, "<string>")):
        with pytest.raises(aethr.ConfigError) as info:
            aethr.load_workflow(**kwargs)
        exc = info.value
        assert exc.exit_code == 2 and exc.message == f"2 problems in {display}"
        assert exc.problems == [
            (display, 12, 5, "unknown key 'histroy_visibility' in step 1",
             "did you mean 'history_visibility'?"),
            (display, 19, 23, "max_iterations must be a whole number from 1 to 50, not the "
             "number 99", None)]
    with pytest.raises(aethr.ConfigError) as info:
        aethr.load_workflow(text="workflow: x\nsteps:\n\t- id: a\n")
    [(display, line, column, _, _)] = info.value.problems
    assert (display, line, column) == ("<string>", 3, 1)


def test_load_workflow_unknown_preset_is_a_config_error():
    # SPEC §13: load_workflow raises ConfigError; callers catch that one class.
    with pytest.raises(aethr.ConfigError) as info:
        aethr.load_workflow(preset="plan-implement-reveiw")
    assert info.value.exit_code == 2
    assert "plan-implement-review" in (info.value.hint or "")


def repo_state(repo: Path) -> tuple[dict, str]:
    """Every file of the repository (git's object store aside) and git's own view of it."""
    status = git(repo, "status", "--porcelain=v1", "--ignored", "-uall")
    files = {}
    for p in sorted(repo.rglob("*")):
        rel = p.relative_to(repo).as_posix()
        if p.is_file() and not rel.startswith(".git/objects/"):
            files[rel] = p.read_bytes()
    return files, status


def test_run_workflow_mock_prints_nothing_and_writes_nothing(changed_repo, capsys):
    wf = aethr.load_workflow(preset="plan-implement-review")
    state, temp = repo_state(changed_repo), tmp_files()
    events: list[dict] = []
    result = aethr.run_workflow(wf, TASK, root=changed_repo, live=False, models=None,
                                env=dict(os.environ), on_event=events.append)
    assert isinstance(result, aethr.RunResult)
    assert result.verdict == "pass"
    assert [r.step for r in result.steps] == ["plan", "implement", "review"]
    assert all(r.text.startswith("[mock]") for r in result.steps)
    assert isinstance(result.usage, dict)
    assert kinds(events)[0] == "run_start" and events[0]["mode"] == "mock"
    assert kinds(events)[-1] == "run_end" and events[-1]["verdict"] == "pass"
    assert events[-1]["mode"] == "mock"
    assert capsys.readouterr() == ("", "")
    assert repo_state(changed_repo) == state
    assert tmp_files() == temp == []


def test_run_workflow_live_failure_raises_step_failed_with_the_checkpoint(changed_repo, server,
                                                                        two_step, capsys):
    wf = aethr.load_workflow(two_step)
    server.add(Reply.sse(openai_sse(PLAN, (100, 7))), Reply.sse(MIDSTREAM.read_bytes()))
    env = dict(os.environ, **openai_env(server))
    state = repo_state(changed_repo)
    events: list[dict] = []
    with pytest.raises(aethr.StepFailed) as info:
        aethr.run_workflow(wf, TASK, root=changed_repo, live=True, env=env,
                           on_event=events.append)
    exc = info.value
    assert exc.exit_code == 3 and exc.step == "review"
    assert "The server had an error while processing your request" in exc.message
    cp = exc.checkpoint["state"]
    assert exc.checkpoint["mode"] == "live" and exc.checkpoint["task"]
    assert isinstance(cp, dict)
    assert json.loads(json.dumps(cp)) == cp                 # plain data: the CLI writes it
    assert [r["step"] for r in cp["results"]] == ["plan"]
    assert cp["results"][0]["output"] == PLAN
    assert (cp["results"][0]["usage"]["input"], cp["results"][0]["usage"]["output"]) == (100, 7)
    assert cp["next_step"] == 1
    assert cp["partial"]["step"] == "review" and cp["partial"]["incomplete"] is True
    assert cp["partial"]["output"] == "Sure, here is the"
    assert events[-1]["event"] == "run_end" and events[-1]["verdict"] == "failed"
    assert capsys.readouterr() == ("", "")
    assert tmp_files() == []                                # the API writes no checkpoint
    assert repo_state(changed_repo) == state
    # The checkpoint data resumes the run: the plan step is not called again.
    server.add(Reply.sse(openai_sse(PASS, (200, 11))))
    result = aethr.run_workflow(wf, TASK, root=changed_repo, live=True, env=env,
                                resume=exc.checkpoint)
    assert result.verdict == "pass" and [r.step for r in result.steps] == ["plan", "review"]
    assert len(server.requests) == 3
    assert (result.usage["input"], result.usage["output"]) == (300, 18)


def comparable(event: dict) -> dict:
    """An event with its artifact as --json writes it, and no duration."""
    event = {k: v for k, v in event.items() if k != "duration"}
    art = event.get("artifact")
    if art is not None and not isinstance(art, dict):
        event["artifact"] = {"files": [{"status": st, "path": p, "old_path": old}
                                       for st, p, old in art.files],
                             "stat": art.stat, "note": art.note}
    return json.loads(json.dumps(event, ensure_ascii=False))


def test_on_event_receives_what_json_prints(changed_repo, cli):
    res = cli("run", "--json", "--preset", "plan-implement-review", TASK)
    assert res.code == 0, res
    printed = json_events(res.out)
    received: list[dict] = []
    aethr.run_workflow(aethr.load_workflow(preset="plan-implement-review"), TASK,
                       root=changed_repo, env=dict(os.environ), on_event=received.append)
    # --json prints no streamed text (SPEC §2); everything else is the same, in order.
    streamed = [e for e in received if e["event"] in ("text", "reasoning", "progress")]
    assert streamed and all("step" in e or "text" in e for e in streamed)
    rest = [e for e in received if e["event"] not in ("text", "reasoning", "progress",
                                                      "warning")]
    assert kinds(rest) == kinds(printed) == ["run_start"] + ["step_start", "step_end"] * 3 + \
        ["run_end"]
    assert [comparable(e) for e in rest] == [comparable(e) for e in printed]
    assert printed[0]["mode"] == printed[-1]["mode"] == "mock"


# -- the README's vendoring example -------------------------------------------------------------

def python_api_example(text: str) -> str | None:
    """The first ```python block under a heading that contains "Python API", or None."""
    level = None                    # the level of the "Python API" heading we are under
    fence = None                    # the info string of the open fence, None outside one
    body: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if fence is not None:
            if stripped.startswith("```") and not stripped.strip("`"):
                if level is not None and fence == "python":
                    return textwrap.dedent("\n".join(body)) + "\n"
                fence = None
            else:
                body.append(line)
            continue
        if stripped.startswith("```"):
            info = stripped.strip("`").strip()
            fence, body = (info.split()[0].lower() if info else ""), []
            continue
        heading = re.match(r"(#{1,6})\s+(.*)", line)
        if heading:
            n = len(heading.group(1))
            if "Python API" in heading.group(2):
                level = n
            elif level is not None and n <= level:
                level = None
    return None


def run_vendored_example(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """`code` as a script next to a copy of aethr.py in a fresh repository with a change."""
    repo = tmp_path / "vendored"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    shutil.copyfile(AETHR_PY, repo / "aethr.py")
    (repo / "example.py").write_text(code)
    (repo / "app.py").write_text("def greet(name):\n    return 'hi ' + name\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "vendor aethr")
    (repo / "app.py").write_text("def greet(name):\n    return f'hi {name}'\n")
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run([sys.executable, "example.py"], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=60)


def test_readme_python_api_example_runs_vendored(tmp_path):
    code = python_api_example((ROOT / "README.md").read_text(encoding="utf-8"))
    assert code, "README.md has no ```python block under a 'Python API' heading"
    assert "import aethr" in code
    proc = run_vendored_example(code, tmp_path)
    assert proc.returncode == 0, proc
    assert proc.stdout.strip(), proc
    assert "Traceback" not in proc.stderr, proc.stderr


def test_python_api_example_is_found_only_under_its_heading():
    text = ("# T\n\n```python\nwrong = 1\n```\n\n## Python API\n\nText.\n\n```sh\nx\n```\n\n"
            "```python\n# ## not a heading\nright = 1\n```\n\n```python\nsecond = 1\n```\n"
            "## Next\n")
    assert python_api_example(text) == "# ## not a heading\nright = 1\n"
    assert python_api_example("## Python API\n\nNo code.\n## Next\n```python\nx\n```\n") is None


# -- issue 5's "done when": a live stream cut mid-way, then a resume with no other flag -----------

def test_live_stream_cut_then_resume_continues_live_and_cleans_up(git_repo, run_aethr):
    (git_repo / "src" / "app.py").write_text("def add(a, b):\n    return a + b + 0\n")
    (git_repo / ".aethr.yaml").write_text(TWO_STEP)
    git(git_repo, "add", ".aethr.yaml")
    git(git_repo, "commit", "-q", "-m", "workflow")
    cut = openai_sse(PASS, (50, 5))
    cut = cut[:cut.index(b"finish_reason\": \"stop")]          # the body ends mid-stream
    cut = cut[:cut.rindex(b"\n\n") + 2]
    with LoopbackServer() as server:
        server.add(Reply.sse(openai_sse(PLAN, (100, 10))), Reply.sse(cut))
        env = {"AETHR_LIVE": "1", "OPENAI_BASE_URL": server.url + "/v1", "OPENAI_API_KEY": KEY,
               "AETHR_MAX_RETRIES": "0"}
        first = run_aethr("run", TASK, cwd=git_repo, env=env)
        assert first.code == 3, first
        resume = first.err.strip().splitlines()[-1]
        assert resume.startswith("aethr: to resume: aethr run --resume-checkpoint "), first.err
        path = shlex.split(resume.split(": ", 2)[2])[-1]
        assert os.path.isabs(path) and os.path.exists(path)
        assert len(server.requests) == 2
        # Resume with no other flag: live again (from the checkpoint), only the review step.
        server.add(Reply.sse(openai_sse(PASS, (60, 6))))
        env_resume = {"OPENAI_BASE_URL": server.url + "/v1", "OPENAI_API_KEY": KEY}
        second = run_aethr("run", "--resume-checkpoint", path, cwd=git_repo, env=env_resume)
        assert second.code == 0, second
        assert len(server.requests) == 3
        assert server.requests[2].json["model"] == "gpt-5.5"           # the review step
        # ... which sees the plan step's real answer from before the cut.
        assert "Check the new branch" in server.requests[2].json["messages"][1]["content"]
        assert "Review status: pass" in second.out
        assert "plan" not in [line[3:] for line in second.out.splitlines()
                              if line.startswith("## ")]
        assert not os.path.exists(path)
        assert "openai:gpt-5.5" in second.err and "would call" not in second.err


def test_promotion_from_a_subdirectory_goes_to_the_root_first(changed_repo, cli, run_aethr,
                                                             monkeypatch):
    sub = changed_repo / "src"
    monkeypatch.chdir(sub)
    preset = ("--preset", "docs-sync")
    before = cli("run", "--show-prompt", *preset, TASK)
    assert before.code == 0, before
    res = cli("run", *preset, TASK)
    assert res.code == 0, res
    line = next(x for x in res.err.splitlines() if x.startswith(PROMOTE))
    command = line[len(PROMOTE):]
    assert command == "cd .. && aethr init docs-sync", command
    # Run it as a shell would, from the subdirectory: the file lands in the project root.
    proc = subprocess.run(command.replace("aethr init", f"{sys.executable} {AETHR_PY} init"),
                          shell=True, cwd=sub, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert (changed_repo / ".aethr.yaml").is_file() and not (sub / ".aethr.yaml").exists()
    git(changed_repo, "add", ".aethr.yaml")
    git(changed_repo, "commit", "-q", "-m", "save", "--", ".aethr.yaml")
    after = cli("run", "--show-prompt", TASK)
    assert after.code == 0, after
    assert prompt_parts(after.out) == prompt_parts(before.out)

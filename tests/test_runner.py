"""Sections 8-10: the mock provider, the backends in mock mode and the runner (SPEC §2 verdict and
exit codes, §4 context per run of a step, §6 mock mode, §8 loops)."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap

import pytest
from conftest import AETHR_PY, PIR_WORKFLOW, git

import aethr

MODEL = "openai:gpt-5.5"


def loop_workflow(*, repeat: str = "{back_to: implement, until_review_pass: true, "
                  "max_iterations: 3}", implement_context: str = "[]",
                  review_context: str = "[]", history: str = "all",
                  implement_backend: str = "model") -> str:
    """plan, implement, review (the loop controller), after: all model steps by default."""
    return textwrap.dedent(f"""\
        workflow: loop
        roles:
          planner: Plan it.
          implementer: Implement it.
          reviewer: Review it.
          writer: Write the summary.
        models:
          default: {MODEL}
        steps:
          - id: plan
            role: planner
          - id: implement
            role: implementer
            backend: {implement_backend}
            context: {implement_context}
          - id: review
            role: reviewer
            context: {review_context}
            history_visibility: {history}
            repeat: {repeat}
          - id: after
            role: writer
        """)


def load(text: str) -> aethr.Workflow:
    return aethr.load_workflow(text=text)


def run(workflow, repo, task="fix the bug", env=None):
    """run_workflow with an event list; returns (result, events)."""
    events: list[dict] = []
    result = aethr.run_workflow(workflow, task, root=repo, env=dict(os.environ, **(env or {})),
                                on_event=events.append)
    return result, events


def starts(events):
    return [(e["step"], e["iteration"]) for e in events if e["event"] == "step_start"]


def ends(events, step=None):
    return [e for e in events if e["event"] == "step_end" and (step is None or e["step"] == step)]


def warnings(events):
    return [e["message"] for e in events if e["event"] == "warning"]


class Script:
    """A scripted provider: each step id maps to the answers its calls give, in order (the last
    one repeats). Records every prompt it is sent."""

    def __init__(self, monkeypatch, answers: dict, usage: dict | None = None, on_call=None):
        self.queues = {k: list(v) for k, v in answers.items()}
        self.calls: list[tuple[str, aethr.Prompt]] = []
        script = self

        def stream(provider, prompt, *, max_tokens=None):
            sid = prompt.step.id
            script.calls.append((sid, prompt))
            if on_call:
                on_call(sid, len(script.prompts(sid)))
            queue = script.queues.get(sid, [f"{sid} done\n"])
            answer = queue.pop(0) if len(queue) > 1 else queue[0]
            if isinstance(answer, BaseException):
                raise answer
            for line in answer.splitlines(keepends=True):
                yield "text", line
            yield "usage", dict(usage or {})

        monkeypatch.setattr(aethr.MockProvider, "stream", stream)

    def prompts(self, step_id):
        return [p for sid, p in self.calls if sid == step_id]


@pytest.fixture
def fake_opencode(tmp_path):
    """A stand-in `opencode` first on PATH that leaves a marker file when it is run."""
    bindir = tmp_path / "fakebin"
    bindir.mkdir()
    marker = tmp_path / "opencode-was-run"
    exe = bindir / "opencode"
    exe.write_text(f"#!/bin/sh\necho run > '{marker}'\ncat >/dev/null\necho '{{}}'\n")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    path = str(bindir) + os.pathsep + os.environ.get("PATH", "")
    return marker, path


# -- the event stream ---------------------------------------------------------------------------


def test_event_stream_shape(git_repo):
    result, events = run(load(PIR_WORKFLOW), git_repo)
    assert events[0] == {"event": "run_start", "schema": 1, "workflow": "pir",
                         "source": "<string>", "steps": ["plan", "implement", "review"],
                         "mode": "mock"}
    assert events[-1]["event"] == "run_end"
    assert events[-1]["verdict"] == "pass" == result.verdict
    assert events[-1]["mode"] == "mock"
    assert events[-1]["steps_run"] == 3
    # Per step: step_start, then text, then step_end.
    kinds = [e["event"] for e in events[1:-1]]
    assert kinds.count("step_start") == kinds.count("step_end") == 3
    current = None
    for e in events[1:-1]:
        if e["event"] == "step_start":
            assert current is None
            current, texts = e["step"], []
        elif e["event"] == "text":
            assert e["step"] == current
            texts.append(e["text"])
        elif e["event"] == "step_end":
            assert e["step"] == current
            assert texts and "".join(texts) == e["output"]
            current = None
    assert [e["step"] for e in ends(events)] == ["plan", "implement", "review"]


def test_step_start_event_fields(git_repo):
    _, events = run(load(PIR_WORKFLOW), git_repo)
    plan, implement, review = [e for e in events if e["event"] == "step_start"]
    assert plan["number"] == 1 and plan["total"] == 3 and plan["role"] == "planner"
    assert plan["model"] == MODEL and plan["backend"] == "model"
    assert plan["where"] == "mock (would call openai:gpt-5.5)"
    assert plan["max_iterations"] is None
    assert implement["where"] == "mock (would call opencode openai/gpt-5.5)"
    assert implement["backend"] == "opencode"
    assert (implement["iteration"], implement["max_iterations"]) == (1, 3)
    assert (review["iteration"], review["max_iterations"]) == (1, 3)


def test_run_workflow_prints_nothing_and_writes_nothing(git_repo, capfd, isolated_env):
    before = git(git_repo, "status", "--porcelain", "--ignored", "--untracked-files=all")
    tmpdir = isolated_env / "tmp"
    before_tmp = sorted(os.listdir(tmpdir))
    wf = load(loop_workflow(implement_context="[git_diff, 'cmd:echo hello; echo oops >&2']",
                            review_context="[git_diff, latest_diff, 'glob:**/*.py']"))
    result, events = run(wf, git_repo)
    assert result.verdict == "pass"
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert git(git_repo, "status", "--porcelain", "--ignored", "--untracked-files=all") == before
    assert sorted(os.listdir(tmpdir)) == before_tmp


def test_run_result(git_repo):
    result, events = run(load(PIR_WORKFLOW), git_repo)
    assert [(r.step, r.iteration) for r in result.steps] == [
        ("plan", 1), ("implement", 1), ("review", 1)]
    assert [r.text for r in result.steps] == [e["output"] for e in ends(events)]
    assert result.steps[2].review_status == "pass"
    assert isinstance(result.usage, dict)


# -- mock answers -------------------------------------------------------------------------------


def test_mock_answers_are_deterministic(git_repo):
    wf = load(PIR_WORKFLOW)
    _, first = run(wf, git_repo)
    _, second = run(wf, git_repo)
    assert [e["output"] for e in ends(first)] == [e["output"] for e in ends(second)]
    assert len(ends(first)) == 3


def test_mock_answers_depend_on_the_prompt(git_repo):
    _, a = run(load(PIR_WORKFLOW), git_repo, task="fix the bug")
    _, b = run(load(PIR_WORKFLOW), git_repo, task="add a feature")
    assert ends(a)[0]["output"] != ends(b)[0]["output"]


def test_mock_answers_are_marked(git_repo):
    _, events = run(load(PIR_WORKFLOW), git_repo)
    for e in ends(events):
        assert e["output"].startswith("[mock]")
    plan = ends(events, "plan")[0]["output"]
    assert "No model was called" in plan
    assert MODEL in plan


def test_until_review_pass_controller_ends_with_pass(git_repo):
    _, events = run(load(PIR_WORKFLOW), git_repo)
    review = ends(events, "review")
    assert len(review) == 1
    assert review[0]["output"].rstrip().endswith("Review status: pass")
    assert review[0]["review_status"] == "pass"
    # Steps that neither control a review loop nor mention the status give none.
    assert "Review status" not in ends(events, "plan")[0]["output"]
    assert ends(events, "plan")[0]["review_status"] is None


def test_role_mentioning_review_status_ends_with_pass(git_repo):
    wf = load(f"""\
workflow: check
roles:
  reviewer: |
    Review the diff. End with "Review status: pass" or "Review status: revise".
models:
  default: {MODEL}
steps:
  - id: review
    role: reviewer
""")
    result, events = run(wf, git_repo)
    assert ends(events)[0]["output"].rstrip().endswith("Review status: pass")
    assert result.verdict == "pass"


def test_until_contains_controller_includes_its_text(git_repo):
    wf = load(loop_workflow(repeat="{back_to: implement, until_contains: 'ALL DONE', "
                            "max_iterations: 4}"))
    result, events = run(wf, git_repo)
    review = ends(events, "review")
    assert len(review) == 1                     # the text was there: no second pass
    assert "ALL DONE" in review[0]["output"]
    assert review[0]["output"].startswith("[mock]")
    assert result.verdict == "pass"
    assert warnings(events) == []


def test_opencode_step_runs_nothing_in_mock_mode(git_repo, fake_opencode):
    marker, path = fake_opencode
    assert subprocess.run(["opencode"], env=dict(os.environ, PATH=path), input=b"",
                          capture_output=True).returncode == 0
    marker.unlink()                             # the stand-in works when it is run
    result, events = run(load(PIR_WORKFLOW), git_repo, env={"PATH": path})
    implement = ends(events, "implement")[0]
    artifact = implement["artifact"]         # plain data, as --json prints it
    assert artifact["files"] == [] and "patch" not in artifact
    assert artifact["note"] and "mock" in artifact["note"]
    assert implement["output"].startswith("[mock]")
    assert not marker.exists()
    assert result.verdict == "pass"
    assert git(git_repo, "status", "--porcelain") == ""


def test_opencode_step_runs_nothing_via_the_command(git_repo, fake_opencode, run_aethr):
    marker, path = fake_opencode
    (git_repo / ".aethr.yaml").write_text(PIR_WORKFLOW)
    res = run_aethr("run", "fix the bug", cwd=git_repo, env={"PATH": path})
    assert res.code == 0, res
    assert not marker.exists()
    assert "## implement\n\n[mock]" in res.out
    assert "mock (would call opencode openai/gpt-5.5)" in res.err


def test_mock_where_without_a_model(git_repo):
    wf = load("""\
workflow: nomodel
roles:
  planner: Plan.
steps:
  - id: plan
    role: planner
""")
    result, events = run(wf, git_repo)
    start = next(e for e in events if e["event"] == "step_start")
    assert start["where"].startswith("mock (")
    assert "would call openai" not in start["where"]
    assert ends(events)[0]["output"].startswith("[mock]")
    assert result.verdict == "pass"


# -- loops with a scripted provider -------------------------------------------------------------


def test_revise_then_pass(git_repo, monkeypatch):
    Script(monkeypatch, {"review": ["two findings\nReview status: revise\n",
                                    "all good\nReview status: pass\n"]})
    result, events = run(load(loop_workflow()), git_repo)
    assert starts(events) == [("plan", 1), ("implement", 1), ("review", 1), ("implement", 2),
                              ("review", 2), ("after", 1)]
    assert [(r.step, r.iteration) for r in result.steps] == starts(events)
    assert [e["review_status"] for e in ends(events, "review")] == ["revise", "pass"]
    assert result.verdict == "pass"
    assert events[-1]["verdict"] == "pass"
    assert warnings(events) == []


def test_revise_then_pass_via_cli(git_repo, monkeypatch, cli):
    Script(monkeypatch, {"review": ["Review status: revise\n", "Review status: pass\n"]})
    (git_repo / ".aethr.yaml").write_text(loop_workflow())
    res = cli("run", "fix the bug")
    assert res.code == 0, res
    assert "iteration 2/3" in res.err
    assert "verdict pass" in res.err
    assert "warning" not in res.err


def test_always_revise_runs_out(git_repo, monkeypatch):
    script = Script(monkeypatch, {"review": ["still broken\nReview status: revise\n"]})
    result, events = run(load(loop_workflow()), git_repo)
    assert starts(events) == [("plan", 1), ("implement", 1), ("review", 1), ("implement", 2),
                              ("review", 2), ("implement", 3), ("review", 3), ("after", 1)]
    assert len(script.prompts("review")) == 3
    found = warnings(events)
    assert len(found) == 1
    assert "'review'" in found[0] and "3 iterations" in found[0]
    assert result.verdict == "revise"
    assert events[-1]["verdict"] == "revise"
    assert found == result.warnings


def test_always_revise_via_cli_exits_1(git_repo, monkeypatch, cli):
    Script(monkeypatch, {"review": ["Review status: revise\n"]})
    (git_repo / ".aethr.yaml").write_text(loop_workflow())
    res = cli("run", "fix the bug")
    assert res.code == 1, res
    warning = [line for line in res.err.splitlines() if line.startswith("aethr: warning: ")]
    assert len(warning) == 1 and "'review'" in warning[0] and "3 iterations" in warning[0]
    assert "verdict revise" in res.err
    assert "iteration 3/3" in res.err and "iteration 4/3" not in res.err
    assert "## after" in res.out                # the workflow went on after the loop


def test_max_iterations_one(git_repo, monkeypatch):
    Script(monkeypatch, {"review": ["Review status: revise\n"]})
    wf = load(loop_workflow(repeat="{back_to: implement, until_review_pass: true, "
                            "max_iterations: 1}"))
    result, events = run(wf, git_repo)
    assert starts(events) == [("plan", 1), ("implement", 1), ("review", 1), ("after", 1)]
    assert result.verdict == "revise"
    assert len(warnings(events)) == 1


def test_no_status_line_is_a_warning_and_revise(git_repo, monkeypatch):
    Script(monkeypatch, {"review": ["looks fine to me\n", "ok\nReview status: pass\n"]})
    result, events = run(load(loop_workflow()), git_repo)
    assert starts(events)[2:5] == [("review", 1), ("implement", 2), ("review", 2)]
    found = warnings(events)
    assert len(found) == 1 and "'review'" in found[0] and "Review status" in found[0]
    assert ends(events, "review")[0]["warnings"] == found
    assert ends(events, "review")[0]["review_status"] is None
    assert result.verdict == "pass"


def test_no_status_line_ever_runs_out(git_repo, monkeypatch):
    Script(monkeypatch, {"review": ["no verdict here\n"]})
    result, events = run(load(loop_workflow()), git_repo)
    assert [s for s in starts(events) if s[0] == "review"] == [("review", 1), ("review", 2),
                                                               ("review", 3)]
    assert result.verdict == "revise"
    assert len(warnings(events)) == 4           # three without a status, one for running out


@pytest.mark.parametrize("line, status", [
    ("Review status: pass", "pass"),
    ("REVIEW STATUS: PASS", "pass"),
    ("**Review status:** revise", "revise"),
    ("> Review status: `pass`", "pass"),
    ("## Review Status: Revise", "revise"),
    ("- review status:   pass.", "pass"),
])
def test_status_line_forms(git_repo, monkeypatch, line, status):
    Script(monkeypatch, {"review": [f"findings\n{line}\n", "Review status: pass\n"]})
    _, events = run(load(loop_workflow()), git_repo)
    assert ends(events, "review")[0]["review_status"] == status
    assert len(ends(events, "review")) == (1 if status == "pass" else 2)


def test_the_last_status_line_counts(git_repo, monkeypatch):
    Script(monkeypatch, {"review": ["Review status: pass\n...\nReview status: revise\n",
                                    "Review status: revise\nthen\nReview status: pass\n"]})
    result, events = run(load(loop_workflow()), git_repo)
    assert [e["review_status"] for e in ends(events, "review")] == ["revise", "pass"]
    assert result.verdict == "pass"


def test_until_contains_repeats_until_the_text_appears(git_repo, monkeypatch):
    Script(monkeypatch, {"review": ["not finished\n", "almost done\n", "Work is DONE.\n"]})
    wf = load(loop_workflow(repeat="{back_to: implement, until_contains: DONE, "
                            "max_iterations: 5}"))
    result, events = run(wf, git_repo)
    # "done" in lower case does not count: the match is case-sensitive.
    assert [s for s in starts(events) if s[0] == "review"] == [("review", 1), ("review", 2),
                                                               ("review", 3)]
    assert starts(events)[-1] == ("after", 1)
    assert result.verdict == "pass"
    assert warnings(events) == []


def test_until_contains_runs_out(git_repo, monkeypatch, cli):
    Script(monkeypatch, {"review": ["done, in lower case\n"]})
    text = loop_workflow(repeat="{back_to: implement, until_contains: DONE, max_iterations: 2}")
    result, events = run(load(text), git_repo)
    assert len(ends(events, "review")) == 2
    assert result.verdict == "revise"
    assert len(warnings(events)) == 1
    (git_repo / ".aethr.yaml").write_text(text)
    assert cli("run", "fix the bug").code == 1


def test_back_to_the_controller_itself(git_repo, monkeypatch):
    Script(monkeypatch, {"review": ["Review status: revise\n", "Review status: revise\n",
                                    "Review status: pass\n"]})
    wf = load(loop_workflow(repeat="{back_to: review, until_review_pass: true, "
                            "max_iterations: 5}"))
    result, events = run(wf, git_repo)
    assert starts(events) == [("plan", 1), ("implement", 1), ("review", 1), ("review", 2),
                              ("review", 3), ("after", 1)]
    assert result.verdict == "pass"


def test_steps_after_an_exhausted_loop_still_run(git_repo, monkeypatch):
    script = Script(monkeypatch, {"review": ["Review status: revise\n"],
                                  "after": ["summary written\n"]})
    result, events = run(load(loop_workflow()), git_repo)
    assert starts(events)[-1] == ("after", 1)
    assert ends(events, "after")[0]["output"] == "summary written\n"
    # `after` sees every earlier result, the loop's three passes included.
    user = script.prompts("after")[0].user
    assert "review (reviewer, iteration 3)" in user
    assert result.verdict == "revise"


def test_later_iterations_see_newer_history(git_repo, monkeypatch):
    script = Script(monkeypatch, {"implement": ["implementation v1\n", "implementation v2\n"],
                                  "review": ["Review status: revise\n", "Review status: pass\n"]})
    run(load(loop_workflow()), git_repo)
    first, second = script.prompts("review")
    assert "implementation v1" in first.user and "implementation v2" not in first.user
    assert "implementation v2" in second.user
    assert "implement (implementer, iteration 2)" in second.user
    assert "iteration 2/3" in second.user


def test_later_iterations_with_latest_history_see_only_the_newest(git_repo, monkeypatch):
    script = Script(monkeypatch, {"implement": ["implementation v1\n", "implementation v2\n"],
                                  "review": ["Review status: revise\n", "Review status: pass\n"]})
    run(load(loop_workflow(history="latest")), git_repo)
    second = script.prompts("review")[1]
    assert "implementation v2" in second.user
    assert "implementation v1" not in second.user


def test_later_iterations_see_the_newer_latest_diff(git_repo, monkeypatch):
    Script(monkeypatch, {"review": ["Review status: revise\n", "Review status: pass\n"]})
    seen: list[str] = []
    count = {"n": 0}

    def fake_opencode_run(self, prompt, model, role_text, emit):
        count["n"] += 1
        n = count["n"]
        text = f"implemented pass {n}\n"
        emit({"event": "text", "step": prompt.step.id, "text": text})
        return text, {}, aethr.Artifact(
            files=[("M", f"src/file{n}.py", None)], stat=f" src/file{n}.py | 1 +\n",
            patch=f"diff --git a/src/file{n}.py b/src/file{n}.py\n+pass {n}\n")

    monkeypatch.setattr(aethr.OpenCodeBackend, "run", fake_opencode_run)
    original = aethr.collect_context

    def spy(step, project, artifact=None):
        blocks = original(step, project, artifact)
        if step.id == "review":
            seen.append("".join(b.body for b in blocks))
        return blocks

    monkeypatch.setattr(aethr, "collect_context", spy)
    wf = load(loop_workflow(implement_backend="opencode", review_context="[latest_diff]"))
    result, events = run(wf, git_repo)
    assert len(seen) == 2
    assert "src/file1.py" in seen[0] and "src/file2.py" not in seen[0]
    assert "src/file2.py" in seen[1] and "src/file1.py" not in seen[1]
    assert result.verdict == "pass"


# -- the verdict --------------------------------------------------------------------------------


def _two_steps(first_role: str = "Review it.", second_role: str = "Review it too.") -> str:
    return f"""\
workflow: two
roles:
  a: {first_role}
  b: {second_role}
models:
  default: {MODEL}
steps:
  - id: one
    role: a
  - id: two
    role: b
"""


@pytest.mark.parametrize("answers, verdict", [
    (("Review status: revise\n", "Review status: pass\n"), "pass"),
    (("Review status: pass\n", "Review status: revise\n"), "revise"),
    (("Review status: revise\n", "no status here\n"), "revise"),
    (("no status\n", "none either\n"), "pass"),
    (("Review status: pass\n", "nothing\n"), "pass"),
])
def test_verdict_is_the_last_status_given(git_repo, monkeypatch, answers, verdict):
    Script(monkeypatch, {"one": [answers[0]], "two": [answers[1]]})
    result, events = run(load(_two_steps()), git_repo)
    assert result.verdict == verdict
    assert events[-1]["verdict"] == verdict


def test_verdict_revise_exits_1_and_pass_exits_0(git_repo, monkeypatch, cli):
    (git_repo / ".aethr.yaml").write_text(_two_steps())
    Script(monkeypatch, {"one": ["Review status: pass\n"], "two": ["Review status: revise\n"]})
    res = cli("run", "fix it")
    assert res.code == 1, res
    assert "verdict revise" in res.err
    Script(monkeypatch, {"one": ["Review status: revise\n"], "two": ["Review status: pass\n"]})
    res = cli("run", "fix it")
    assert res.code == 0, res
    assert "verdict pass" in res.err


def test_exhausted_loop_makes_the_verdict_revise_despite_a_later_pass(git_repo, monkeypatch):
    Script(monkeypatch, {"review": ["Review status: revise\n"],
                         "after": ["Review status: pass\n"]})
    result, events = run(load(loop_workflow()), git_repo)
    assert ends(events, "after")[0]["review_status"] == "pass"
    assert result.verdict == "revise"


def test_usage_is_summed(git_repo, monkeypatch):
    Script(monkeypatch, {"review": ["Review status: revise\n", "Review status: pass\n"]},
           usage={"input": 100, "output": 7})
    result, events = run(load(loop_workflow()), git_repo)
    assert len(ends(events)) == 6
    assert result.usage == {"input": 600, "output": 42}
    assert events[-1]["usage"] == {"input": 600, "output": 42}
    assert ends(events)[0]["usage"] == {"input": 100, "output": 7}


# -- context is collected each time a step runs --------------------------------------------------


def test_cmd_context_runs_once_per_iteration(git_repo, monkeypatch, tmp_path):
    counter = tmp_path / "counter.txt"
    Script(monkeypatch, {"review": ["Review status: revise\n"]})
    wf = load(loop_workflow(implement_context="['cmd:echo ran >> \"$COUNTER\"']"))
    result, _ = run(wf, git_repo, env={"COUNTER": str(counter)})
    assert counter.read_text().splitlines() == ["ran"] * 3
    assert result.verdict == "revise"


def test_each_iteration_sees_the_tree_as_it_is_then(git_repo, monkeypatch):
    notes = git_repo / "notes.txt"

    def on_call(step_id, n):
        if step_id == "implement":          # stands in for an implementer editing the tree
            notes.write_text(f"notes version {n}\n")

    script = Script(monkeypatch, {"review": ["Review status: revise\n", "Review status: pass\n"]},
                    on_call=on_call)
    run(load(loop_workflow(review_context="[file:notes.txt, git_diff]")), git_repo)
    first, second = script.prompts("review")
    assert "notes version 1" in first.user and "notes version 2" not in first.user
    assert "notes version 2" in second.user and "notes version 1" not in second.user


# -- a failing step -----------------------------------------------------------------------------


def test_failing_step_raises_step_failed(git_repo, monkeypatch):
    Script(monkeypatch, {"review": [aethr.BackendError("the server said no",
                                                       hint="try again later")]})
    events: list[dict] = []
    with pytest.raises(aethr.StepFailed) as info:
        aethr.run_workflow(load(loop_workflow()), "fix it", root=git_repo,
                           env=dict(os.environ), on_event=events.append)
    exc = info.value
    assert exc.message == "step 'review' failed: the server said no"
    assert exc.hint == "try again later"
    assert exc.step == "review"
    assert exc.exit_code == 3
    assert isinstance(exc, aethr.AethrError)
    # The run still ends with run_end (verdict failed), for --json consumers.
    assert [e["event"] for e in events].count("run_end") == 1
    assert events[-1]["event"] == "run_end" and events[-1]["verdict"] == "failed"
    assert events[-1]["error"] == exc.message
    assert [e["step"] for e in ends(events)] == ["plan", "implement"]
    # The checkpoint data: the completed steps and where to resume.
    data = exc.checkpoint                    # the whole checkpoint (SPEC §10, §13)
    assert data["aethr_checkpoint"] == 1 and data["task"] == "fix it" and data["mode"] == "mock"
    assert data["root"] == str(git_repo) and len(data["workflow"]["sha256"]) == 64
    assert data["state"]["next_step"] == 2
    assert [r["step"] for r in data["state"]["results"]] == ["plan", "implement"]
    assert data["state"]["partial"] == {"step": "review", "output": "", "incomplete": True}


def test_failing_step_via_cli_exits_3(git_repo, monkeypatch, cli):
    Script(monkeypatch, {"implement": [aethr.BackendError("connection refused")]})
    (git_repo / ".aethr.yaml").write_text(loop_workflow())
    res = cli("run", "fix it")
    assert res.code == 3, res
    assert "aethr: error: step 'implement' failed: connection refused\n" in res.err
    assert "Traceback" not in res.err
    assert "## plan" in res.out and "## review" not in res.out


_DRIVER = """\
import sys
sys.path.insert(0, {root!r})
import aethr

answers = {answers!r}

def stream(self, prompt, *, max_tokens=None):
    answer = answers.get(prompt.step.id, "done\\n")
    if answer == "FAIL":
        raise aethr.BackendError("the provider is down")
    yield "text", answer
    yield "usage", {{}}

aethr.MockProvider.stream = stream
sys.exit(aethr.main())
"""


@pytest.mark.parametrize("answers, code, expect", [
    ({"review": "Review status: revise\n"}, 1, "verdict revise"),
    ({"review": "Review status: pass\n"}, 0, "verdict pass"),
    ({"review": "FAIL"}, 3, "aethr: error: step 'review' failed: the provider is down"),
])
def test_exit_codes_in_a_real_process(git_repo, tmp_path, answers, code, expect):
    (git_repo / ".aethr.yaml").write_text(loop_workflow())
    driver = tmp_path / "driver.py"
    driver.write_text(_DRIVER.format(root=str(AETHR_PY.parent), answers=answers))
    proc = subprocess.run([sys.executable, str(driver), "run", "fix it"], cwd=git_repo,
                          capture_output=True, text=True, encoding="utf-8", timeout=60)
    assert proc.returncode == code, proc.stderr
    assert expect in proc.stderr
    assert "Traceback" not in proc.stderr


def test_loop_workflow_via_the_real_command(git_repo, run_aethr):
    (git_repo / ".aethr.yaml").write_text(PIR_WORKFLOW)
    res = run_aethr("run", "fix the bug", cwd=git_repo)
    assert res.code == 0, res
    assert [line for line in res.out.splitlines() if line.startswith("## ")] == [
        "## plan", "## implement", "## review"]
    assert "iteration 1/3" in res.err and "verdict pass" in res.err
    assert git(git_repo, "status", "--porcelain") == "?? .aethr.yaml\n"


def test_mock_opencode_controller_includes_its_until_contains_text(git_repo, cli):
    (git_repo / ".aethr.yaml").write_text(textwrap.dedent("""\
        roles:
          impl: Implement it; say DONE when finished.
        steps:
          - id: implement
            role: impl
            backend: opencode
            repeat: {back_to: implement, until_contains: DONE, max_iterations: 2}
        """))
    r = cli("run", "do it")
    assert r.code == 0, r
    assert "verdict pass" in r.err
    assert "iteration 2/2" not in r.err


def test_a_file_name_cannot_fake_a_review_status_in_mock_mode(git_repo, cli):
    (git_repo / "review status: revise").write_text("x\n")
    (git_repo / ".aethr.yaml").write_text(textwrap.dedent("""\
        roles:
          reader: Read the diff.
        steps:
          - id: read
            role: reader
            context: [git_diff]
        """))
    r = cli("run", "read it")
    assert r.code == 0, r
    assert "verdict pass" in r.err

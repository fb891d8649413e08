"""Section 7, prompts (SPEC §5 and the loop protocol of §8): system and user parts, section
order, determinism, history_visibility, the prompt budget, --show-prompt, review_status."""
from __future__ import annotations

import io
import os
import re
import stat

import pytest
from conftest import git

import aethr

DASH = "\u2014"
ELL = "\u2026"
TASK = "fix [/x] and arr[i] # *not* markup"

WORKFLOW = """\
workflow: demo
roles:
  planner: PLANNER-INSTRUCTION. Plan the change.
  implementer: IMPLEMENTER-INSTRUCTION. Change the code.
  reviewer: REVIEWER-INSTRUCTION. Review the change.
models:
  planner: openai:gpt-5.5
  reviewer: anthropic:claude-sonnet-5
steps:
  - id: plan
    role: planner
    context: [file:b.txt, file:a.txt, git_diff]
  - id: implement
    role: implementer
    backend: opencode
  - id: review
    role: reviewer
    history_visibility: {history}
    context: [latest_diff]
    repeat: {{back_to: implement, until_review_pass: true, max_iterations: 3}}
"""


def workflow(history="all"):
    return aethr.load_workflow(text=WORKFLOW.format(history=history))


def step(wf, step_id):
    return next(s for s in wf.steps if s.id == step_id)


def section_starts(user):
    """Line index of each top-level section heading, by the names SPEC §5 gives them."""
    lines = user.splitlines()
    found = {}
    for i, line in enumerate(lines):
        m = re.match(r"#+ (Task|Step|Previous steps)\s*$", line)
        if m and m.group(1) not in found:
            found[m.group(1)] = i
    return found, lines


def prompt_for(wf, step_id, **kw):
    kw.setdefault("history", [])
    return aethr.build_prompt(wf, TASK, step(wf, step_id), **kw)


# -- system part -----------------------------------------------------------------------------

def test_system_is_preamble_plus_role_instruction():
    wf = workflow()
    plan = prompt_for(wf, "plan").system
    impl = prompt_for(wf, "implement").system
    assert aethr.PREAMBLE.strip()
    assert plan.startswith(aethr.PREAMBLE) and impl.startswith(aethr.PREAMBLE)
    assert "PLANNER-INSTRUCTION. Plan the change." in plan
    assert "IMPLEMENTER-INSTRUCTION" in impl and "PLANNER-INSTRUCTION" not in impl
    # Not a loop controller: no protocol, even inside the loop's slice.
    assert "Review status" not in plan and "Review status" not in impl
    assert "TASK" not in plan and TASK not in plan


def test_system_of_a_review_controller_carries_the_loop_protocol():
    wf = workflow()
    system = prompt_for(wf, "review").system
    assert system.startswith(aethr.PREAMBLE)
    assert "REVIEWER-INSTRUCTION. Review the change." in system
    assert system.index("REVIEWER-INSTRUCTION") < system.index("Review status: pass")
    lines = system.splitlines()
    assert "Review status: pass" in lines and "Review status: revise" in lines
    for word in ("high", "medium", "low"):
        assert word in system.lower()


PASS_LOOP = "{back_to: work, until_review_pass: true, max_iterations: 2}"
CONTAINS_LOOP = "{back_to: work, until_contains: ALL-DONE-7, max_iterations: 2}"


def _judge_systems(role_text, repeat):
    """The system prompts of one judge role as a plain step and as the loop controller."""
    wf = aethr.load_workflow(text=f"""\
roles:
  worker: Do the work.
  judge: {role_text}
steps:
  - id: work
    role: worker
  - id: plain
    role: judge
  - id: judge
    role: judge
    repeat: {repeat}
""")
    return (aethr.build_prompt(wf, TASK, wf.steps[1]).system,
            aethr.build_prompt(wf, TASK, wf.steps[2]).system)


def test_loop_protocol_omitted_when_the_role_already_states_it():
    plain, ctl = _judge_systems(
        "'Judge it. End with \"Review status: pass\" or \"Review status: revise\".'", PASS_LOOP)
    assert ctl == plain
    assert ctl.count("Review status: revise") == 1


def test_loop_protocol_appended_when_the_role_does_not_state_it():
    plain, ctl = _judge_systems("Judge it.", PASS_LOOP)
    assert ctl.startswith(plain.rstrip("\n"))
    assert "Review status: revise" in ctl[len(plain.rstrip()):]
    assert "Review status" not in plain


def test_until_contains_protocol_names_the_text():
    plain, ctl = _judge_systems("Judge it.", CONTAINS_LOOP)
    assert ctl.startswith(plain.rstrip("\n"))
    assert "include the exact text all-done-7 when the work is complete" in ctl.lower()
    assert "ALL-DONE-7" in ctl and "ALL-DONE-7" not in plain
    assert "Review status" not in ctl


def test_until_contains_protocol_omitted_when_the_role_contains_the_text():
    plain, ctl = _judge_systems("Judge it; say ALL-DONE-7 when finished.", CONTAINS_LOOP)
    assert ctl == plain
    assert ctl.count("ALL-DONE-7") == 1


# -- user part -------------------------------------------------------------------------------

def _blocks_for(repo, wf, step_id):
    project = aethr.Project(str(repo), dict(os.environ))
    return aethr.collect_context(step(wf, step_id), project, None)


def _prepare(repo):
    (repo / "a.txt").write_text("CONTENT-OF-A\n")
    (repo / "b.txt").write_text("CONTENT-OF-B\n")


def test_user_sections_in_order_with_context_in_declared_order(git_repo):
    _prepare(git_repo)
    wf = workflow()
    history = [aethr.StepResult(step="earlier", role="planner", backend="model", iteration=1,
                                text="EARLIER-RESULT", review_status=None, artifact=None)]
    user = prompt_for(wf, "plan", history=history, blocks=_blocks_for(git_repo, wf, "plan")).user
    found, lines = section_starts(user)
    assert list(found) == ["Task", "Step", "Previous steps"], found
    assert found["Task"] == 0
    assert lines[found["Task"] + 1:found["Step"]] == ["", TASK, ""]
    step_text = "\n".join(lines[found["Step"]:found["Previous steps"]])
    assert "plan" in step_text and "planner" in step_text and "iteration" not in step_text
    prev = user.index("EARLIER-RESULT")
    assert prev > user.index(lines[found["Previous steps"]])
    heads = [next(i for i, ln in enumerate(lines) if ln.startswith("#") and src in ln)
             for src in ("file:b.txt", "file:a.txt", "git_diff")]
    assert found["Previous steps"] < heads[0] < heads[1] < heads[2]
    b_at, a_at = lines.index("CONTENT-OF-B"), lines.index("CONTENT-OF-A")
    assert heads[0] < b_at < heads[1] < a_at < heads[2]


def test_no_previous_steps_section_without_history():
    found, _ = section_starts(prompt_for(workflow(), "plan").user)
    assert list(found) == ["Task", "Step"]


@pytest.mark.parametrize("step_id", ["implement", "review"])
def test_step_section_says_the_iteration_inside_a_loop(step_id):
    wf = workflow()
    user = prompt_for(wf, step_id, iteration=2).user
    found, lines = section_starts(user)
    step_text = "\n".join(lines[found["Step"]:])
    assert "iteration 2/3" in step_text and step_id in step_text
    assert "iteration 1/3" in prompt_for(wf, step_id).user


def test_task_is_sent_literally():
    assert f"\n{TASK}\n" in prompt_for(workflow(), "plan").user
    weird = "<b>bold</b> `code` {braces} \\n \\\\ $HOME %s {0} [red]x[/red]"
    assert f"\n{weird}\n" in aethr.build_prompt(workflow(), weird, workflow().steps[0]).user


def test_rendering_is_deterministic(git_repo):
    _prepare(git_repo)
    (git_repo / "README.md").write_text("changed\n")
    wf1, wf2 = workflow(), workflow()
    p1 = prompt_for(wf1, "plan", blocks=_blocks_for(git_repo, wf1, "plan"),
                    history=_history())
    p2 = prompt_for(wf2, "plan", blocks=_blocks_for(git_repo, wf2, "plan"),
                    history=_history())
    assert p1.system.encode() == p2.system.encode()
    assert p1.user.encode() == p2.user.encode()


# -- history_visibility ----------------------------------------------------------------------

def _history():
    art1 = aethr.Artifact(files=[("M", "first_file.py", None)],
                          stat=" first_file.py | 1 +\n 1 file changed, 1 insertion(+)\n",
                          patch="diff --git a/first_file.py b/first_file.py\n+PATCH-ONE\n")
    art2 = aethr.Artifact(files=[("A", "second_file.py", None)],
                          stat=" second_file.py | 2 ++\n 1 file changed, 2 insertions(+)\n",
                          patch="diff --git a/second_file.py b/second_file.py\n+PATCH-TWO\n")
    return [
        aethr.StepResult(step="plan", role="planner", backend="model", iteration=1,
                         text="PLAN-START " + "p" * 589 + "PLAN-BEYOND-600", review_status=None,
                         artifact=None),
        aethr.StepResult(step="implement", role="implementer", backend="opencode", iteration=1,
                         text="IMPL-ONE", review_status=None, artifact=art1),
        aethr.StepResult(step="review", role="reviewer", backend="model", iteration=1,
                         text="REVIEW-ONE " + "r" * 700 + "\nReview status: revise",
                         review_status="revise", artifact=None),
        aethr.StepResult(step="implement", role="implementer", backend="opencode", iteration=2,
                         text="IMPL-TWO", review_status=None, artifact=art2),
    ]


def _review_user(mode, history=None):
    wf = workflow(mode)
    return prompt_for(wf, "review", iteration=2,
                      history=_history() if history is None else history).user


def test_history_all_shows_every_result_in_order_and_only_the_newest_patch():
    user = _review_user("all")
    order = ["PLAN-START", "IMPL-ONE", "REVIEW-ONE", "IMPL-TWO"]
    positions = [user.index(m) for m in order]
    assert positions == sorted(positions)
    assert "PLAN-BEYOND-600" in user and "r" * 700 in user
    assert "+PATCH-TWO" in user and "PATCH-ONE" not in user
    assert "first_file.py" in user and " first_file.py | 1 +" in user
    assert " second_file.py | 2 ++" in user
    assert user.index("Previous steps") < positions[0]


def test_history_latest_shows_only_the_most_recent_result():
    user = _review_user("latest")
    assert "IMPL-TWO" in user and "+PATCH-TWO" in user
    for gone in ("PLAN-START", "IMPL-ONE", "REVIEW-ONE", "first_file.py"):
        assert gone not in user


def test_history_summary_cuts_each_result_and_keeps_status_files_and_stat():
    user = _review_user("summary")
    assert "PLAN-START " + "p" * 589 in user
    assert "PLAN-BEYOND-600" not in user
    assert "r" * 589 in user and "r" * 700 not in user
    review_entry = user[user.index("REVIEW-ONE"):user.index("IMPL-TWO")]
    assert re.search(r"review status\W*revise", review_entry, re.I), review_entry
    assert " first_file.py | 1 +" in user and " second_file.py | 2 ++" in user
    assert "PATCH-ONE" not in user and "PATCH-TWO" not in user
    assert "IMPL-ONE" in user and "IMPL-TWO" in user


def test_history_none_shows_no_earlier_result():
    user = _review_user("none")
    for gone in ("PLAN-START", "IMPL-ONE", "REVIEW-ONE", "IMPL-TWO", "PATCH", "first_file.py"):
        assert gone not in user
    found, _ = section_starts(user)
    assert "Previous steps" not in found
    assert f"\n{TASK}\n" in user


def test_prompt_budget_trims_the_oldest_history_first():
    big = 200 * 1024
    history = [aethr.StepResult(step=f"s{i}", role="planner", backend="model", iteration=1,
                                text=f"OLD-{i}-MARK " + "z" * big, review_status=None,
                                artifact=None) for i in range(5)]
    wf = workflow()
    p = prompt_for(wf, "plan", history=history)
    size = len(p.system.encode("utf-8")) + len(p.user.encode("utf-8"))
    assert size <= 512 * 1024
    assert "OLD-4-MARK" in p.user and "OLD-3-MARK" in p.user
    assert "OLD-0-MARK" not in p.user and "OLD-1-MARK" not in p.user
    assert "512 KiB" in p.user
    assert f"\n{TASK}\n" in p.user
    # The trimmed entries are still named, oldest first.
    assert p.user.index("s0") < p.user.index("OLD-4-MARK")


def test_prompt_budget_cuts_oversized_context_with_a_note():
    wf = workflow()
    base = "path relative to the project root"
    blocks = [aethr.Block("file:one.txt", "1" * (300 * 1024), base=base),
              aethr.Block("file:two.txt", "2" * (300 * 1024), base=base)]
    p = prompt_for(wf, "plan", blocks=blocks)
    assert len(p.system.encode("utf-8")) + len(p.user.encode("utf-8")) <= 512 * 1024
    assert "512 KiB" in p.user.rstrip("\n").splitlines()[-1]
    assert f"\n{TASK}\n" in p.user


def test_prompt_budget_holds_after_redaction():
    """`[redacted]` is longer than an 8-character secret: the prompt must still fit."""
    secret = "tok12345"
    wf = workflow()
    blocks = [aethr.Block("file:keys.txt", f"{secret} " * 70000, base="path relative to the "
                          "project root")]                                    # ~615 KiB
    p = prompt_for(wf, "plan", blocks=blocks, secrets=[secret])
    assert secret not in p.user
    size = len(p.system.encode("utf-8")) + len(p.user.encode("utf-8"))
    assert size <= 512 * 1024, size


def test_secrets_are_redacted_in_the_system_part_too():
    wf = aethr.load_workflow(text="roles:\n  r: Use token tok-1234567890 carefully.\n"
                             "steps:\n  - id: s\n    role: r\n")
    p = aethr.build_prompt(wf, "task tok-1234567890", wf.steps[0], secrets=["tok-1234567890"])
    assert "tok-1234567890" not in p.system + p.user
    assert "Use token [redacted] carefully." in p.system and "task [redacted]" in p.user


def test_placeholders_for_earlier_outputs_follow_history_visibility():
    pending = ["plan (planner)", "implement (implementer)"]
    none = prompt_for(workflow("none"), "review", pending=pending).user
    assert "plan (planner)" not in none and "implement (implementer)" not in none
    latest = prompt_for(workflow("latest"), "review", pending=pending).user
    assert re.search(r"^\[[^\n]*implement[^\n]*\]$", latest, re.M)
    assert "plan (planner)" not in latest
    every = prompt_for(workflow("all"), "review", pending=pending).user
    assert re.search(r"^\[[^\n]*\bplan\b[^\n]*\]$", every, re.M)
    assert re.search(r"^\[[^\n]*\bimplement\b[^\n]*\]$", every, re.M)


# -- --show-prompt ---------------------------------------------------------------------------

SHOW_WF = """\
workflow: show
roles:
  planner: PLANNER-INSTRUCTION.
  implementer: IMPLEMENTER-INSTRUCTION.
  reviewer: REVIEWER-INSTRUCTION.
models:
  planner: openai:gpt-5.5
  reviewer: anthropic:claude-sonnet-5
steps:
  - id: plan
    role: planner
    context: [git_diff, "cmd:echo CMD-RAN-OUTPUT"]
  - id: implement
    role: implementer
    backend: opencode
  - id: review
    role: reviewer
    context: [latest_diff]
    repeat: {back_to: implement, until_review_pass: true, max_iterations: 3}
"""


@pytest.fixture
def show_repo(git_repo, tmp_path):
    (git_repo / "wf.yaml").write_text(SHOW_WF)
    git(git_repo, "add", "wf.yaml")
    git(git_repo, "commit", "-q", "-m", "workflow")
    (git_repo / "README.md").write_text("# Demo\n\nWORKTREE-CHANGE\n")
    # An `opencode` that would leave a trace if anything ran it.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "opencode"
    fake.write_text(f"#!/bin/sh\ntouch '{tmp_path}/opencode.ran'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    env = {"PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}
    return git_repo, env, tmp_path / "opencode.ran"


def _parts(out, total=3):
    """stdout of --show-prompt split per step, at each step's header (`step N/M`)."""
    lines = out.splitlines(keepends=True)
    starts = [next(i for i, ln in enumerate(lines) if re.search(rf"\bstep {n}/{total}\b", ln))
              for n in range(1, total + 1)]
    assert starts == sorted(starts), starts
    return ["".join(lines[a:b]) for a, b in zip(starts, starts[1:] + [len(lines)], strict=True)]


def _check_show_prompt(res, repo, opencode_ran):
    assert res.code == 0, res
    out = res.out
    parts = _parts(out)
    assert len(parts) == 3, out[:3000]
    plan, impl, review = parts
    assert "plan" in plan.splitlines()[0] and "openai:gpt-5.5" in plan.splitlines()[0]
    assert "review" in review.splitlines()[0]
    assert "anthropic:claude-sonnet-5" in review.splitlines()[0]
    for part, instruction in ((plan, "PLANNER-INSTRUCTION."), (impl, "IMPLEMENTER-INSTRUCTION."),
                              (review, "REVIEWER-INSTRUCTION.")):
        assert aethr.PREAMBLE in part and instruction in part
        assert f"\n{TASK}\n" in part
        assert part.index(aethr.PREAMBLE) < part.index(instruction) < part.index(TASK)
    # Context is collected: the diff and the command's output are there.
    assert "+WORKTREE-CHANGE" in plan and "CMD-RAN-OUTPUT" in plan
    # Earlier outputs are placeholders; the loop is shown once, with a note.
    assert re.search(r"^\[[^\n]*\bplan\b[^\n]*\]$", impl, re.M), impl
    assert re.search(r"^\[[^\n]*\bimplement\b[^\n]*\]$", review, re.M), review
    assert re.search(rf"^\[latest_diff {DASH} [^\n]+\]$", review, re.M), review
    assert "iteration 1/3" in review
    assert re.search(r"loop", impl + review, re.I)
    assert "Review status: revise" in review          # the protocol is shown
    # Commands are listed on stderr; nothing was called and nothing written.
    assert "echo CMD-RAN-OUTPUT" in res.err
    assert not opencode_ran.exists()
    assert git(repo, "status", "--porcelain").splitlines() == [" M README.md"]
    assert [n for n in os.listdir(os.environ["TMPDIR"]) if "aethr" in n] == []


def test_show_prompt_in_process(show_repo, cli):
    repo, env, ran = show_repo
    res = cli("run", TASK, "--show-prompt", "--workflow", "wf.yaml", env=env)
    _check_show_prompt(res, repo, ran)


def test_show_prompt_subprocess(show_repo, run_aethr):
    repo, env, ran = show_repo
    res = run_aethr("run", "--workflow", "wf.yaml", TASK, "--show-prompt", cwd=repo, env=env)
    _check_show_prompt(res, repo, ran)


def test_show_prompt_twice_gives_identical_output(show_repo, cli):
    repo, env, _ = show_repo
    first = cli("run", TASK, "--show-prompt", "--workflow", "wf.yaml", env=env)
    second = cli("run", TASK, "--show-prompt", "--workflow", "wf.yaml", env=env)
    assert first.code == second.code == 0
    assert first.out == second.out and len(first.out) > 1000


def test_show_prompt_lists_commands_before_any_prompt(show_repo):
    repo, env, _ = show_repo
    both = io.StringIO()
    term = aethr.Term(both, both, environ=dict(os.environ, **env), inp=io.StringIO(""))
    code = aethr.main(["run", TASK, "--show-prompt", "--workflow", "wf.yaml"], term=term)
    text = both.getvalue()
    assert code == 0, text
    listed = text.index("echo CMD-RAN-OUTPUT")
    assert listed < text.index(aethr.PREAMBLE) and listed < text.index("CMD-RAN-OUTPUT\n")


def test_show_prompt_collects_context_once_per_step_and_shows_a_loop_once(git_repo, cli,
                                                                          tmp_path):
    log = tmp_path / "calls.log"
    (git_repo / "wf.yaml").write_text(SHOW_WF.replace(
        "context: [latest_diff]", f"context: [latest_diff, \"cmd:echo review >> {log}\"]").replace(
        "\"cmd:echo CMD-RAN-OUTPUT\"", f"\"cmd:echo plan >> {log}\""))
    res = cli("run", "x", "--show-prompt", "--workflow", "wf.yaml")
    assert res.code == 0, res
    assert log.read_text().splitlines() == ["plan", "review"]
    assert len(_parts(res.out)) == 3
    assert len(re.findall(r"\bstep \d/3\b", res.out)) == 3


def test_show_prompt_shows_the_resolved_model_and_needs_no_key_or_opencode(git_repo, cli):
    (git_repo / "wf.yaml").write_text(SHOW_WF)
    env = {"PATH": os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                                   if not os.path.exists(os.path.join(p, "opencode")))}
    res = cli("run", "x", "--show-prompt", "--workflow", "wf.yaml",
              "--model", "reviewer=xai:grok-4.6", "--live", env=env)
    assert res.code == 0, res
    plan, impl, review = _parts(res.out)
    assert "xai:grok-4.6" in review.splitlines()[0]
    assert "openai:gpt-5.5" in plan.splitlines()[0]
    assert "mock" not in review.splitlines()[0]


def test_show_prompt_without_workflow_uses_the_default_preset(git_repo, cli):
    (git_repo / "src" / "app.py").write_text("def add(a, b):\n    return a - b  # BUG\n")
    res = cli("run", TASK, "--show-prompt")
    assert res.code == 0, res
    assert "# BUG" in res.out and f"\n{TASK}\n" in res.out
    assert "review-existing-diff" in res.err


# -- review_status ---------------------------------------------------------------------------

SPEC_RE = re.compile(r"^[\s>#*_`-]*review status\s*:\s*[*_`]*\s*(pass|revise)\b",
                     re.IGNORECASE | re.MULTILINE)


@pytest.mark.parametrize("text,expected", [
    ("Review status: pass", "pass"),
    ("Review status: revise", "revise"),
    ("> **Review status:** pass", "pass"),
    ("## review status: REVISE", "revise"),
    ("- Review Status: pass.", "pass"),
    ("**Review status**: revise", None),           # `**` before the colon: not the spec's form
    ("*Review status:* revise", "revise"),
    ("Review status: `revise`", "revise"),
    ("*Review status:* `revise`", None),          # `*` then `` ` ``: the spec's regex stops
    ("  __Review status:__ pass", "pass"),
    ("The review status: pass", None),
    ("Review status: passing", None),
    ("Review status - pass", None),
    ("Review: pass", None),
    ("", None),
    ("no status here\nat all", None),
    ("Review status: revise\nfixed it\nReview status: pass", "pass"),
    ("Review status: pass\n\n- [high] a.py:1: bug\nReview status: revise\n", "revise"),
    ("Findings.\r\nReview status: PASS\r\n", "pass"),
    ("text before Review status: pass\nReview status: revise", "revise"),
])
def test_review_status(text, expected):
    assert aethr.review_status(text) == expected
    found = SPEC_RE.findall(text)
    assert (found[-1].lower() if found else None) == expected


def test_review_status_matches_the_spec_regex_on_generated_answers():
    import hypothesis
    from hypothesis import strategies as st

    prefix = st.sampled_from(["", " ", "> ", "## ", "- ", "**", "_", "`", "\t", "x ", "> **"])
    label = st.sampled_from(["Review status", "review STATUS", "Review  status", "Reviewstatus",
                             "Review status*"])
    sep = st.sampled_from([":", " :", ": ", ":**", ":** ", ": `", " - ", ""])
    word = st.sampled_from(["pass", "revise", "PASS", "Revise", "passed", "revised", "ok"])
    tail = st.sampled_from(["", ".", "!", " now", "ing", "`", "**"])
    line = st.builds(lambda a, b, c, d, e: a + b + c + d + e, prefix, label, sep, word, tail)
    filler = st.sampled_from(["Some findings.", "", "- [low] x.py:1: naming", "Review it"])
    text = st.lists(st.one_of(line, filler), max_size=6).map("\n".join)

    @hypothesis.given(text)
    def check(answer):
        found = SPEC_RE.findall(answer)
        assert aethr.review_status(answer) == (found[-1].lower() if found else None)

    check()

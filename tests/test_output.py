"""Section 3, terminal output (SPEC §9): the colour decision, box characters vs ASCII, results on
stdout and status on stderr, the summary line, and text shown literally."""
from __future__ import annotations

import io
import os
import re
import subprocess
import sys

import pytest
from conftest import AETHR_PY, PIR_WORKFLOW, FakeTTY, git

import aethr

ESC = "\x1b["

WORKFLOW_1 = """\
workflow: solo
roles:
  planner: Break the task into a short plan.
models:
  default: openai:gpt-5.5
steps:
  - id: plan
    role: planner
    context: [file:README.md]
"""

HEADERS_3 = [
    "\u256d\u2500 step 1/3 \u00b7 plan \u00b7 planner \u00b7 mock (would call openai:gpt-5.5)",
    "\u256d\u2500 step 2/3 \u00b7 implement \u00b7 implementer \u00b7 "
    "mock (would call opencode openai/gpt-5.5) \u00b7 iteration 1/3",
    "\u256d\u2500 step 3/3 \u00b7 review \u00b7 reviewer \u00b7 mock (would call openai:gpt-5.5) "
    "\u00b7 iteration 1/3",
]

SUMMARY1 = "aethr: 1 step run \u00b7 T \u00b7 0 tokens \u00b7 mock mode \u00b7 verdict pass"
SUMMARY3 = "aethr: 3 steps run \u00b7 T \u00b7 0 tokens \u00b7 mock mode \u00b7 verdict pass"


@pytest.fixture
def repo3(git_repo):
    (git_repo / ".aethr.yaml").write_text(PIR_WORKFLOW, encoding="utf-8")
    return git_repo


@pytest.fixture
def repo1(git_repo):
    (git_repo / ".aethr.yaml").write_text(WORKFLOW_1, encoding="utf-8")
    return git_repo


def _times(text: str) -> str:
    """Durations vary from run to run: `0.0 s`, `12 s`, `3 min 05 s` become `T`."""
    return re.sub(r"\d+ min \d\d s|\d+(?:\.\d)? s\b", "T", text)


def _document(workflow_text: str, task: str, root) -> str:
    """The stdout a redirected run must produce: `## STEP-ID`, blank line, the text, per step."""
    events = []
    aethr.run_workflow(aethr.load_workflow(".aethr.yaml", text=workflow_text), task, root=root,
                       env=dict(os.environ), on_event=events.append)
    return "".join(f"## {e['step']}\n\n{e['output']}\n" for e in events
                   if e["event"] == "step_end")


def _bytes_stream(encoding: str) -> io.TextIOWrapper:
    return io.TextIOWrapper(io.BytesIO(), encoding=encoding, errors="strict", newline="\n")


def _contents(stream: io.TextIOWrapper, encoding: str) -> str:
    stream.flush()
    return stream.buffer.getvalue().decode(encoding)


def _scripted(monkeypatch, answers: dict, usage: dict | None = None) -> None:
    """Replace the mock answer: step id -> the list of answers its calls give, in order."""
    queues = {k: list(v) for k, v in answers.items()}

    def stream(self, prompt, *, max_tokens=None):
        queue = queues[prompt.step.id]
        text = queue.pop(0) if len(queue) > 1 else queue[0]
        yield "text", text
        yield "usage", dict(usage or {})

    monkeypatch.setattr(aethr.MockProvider, "stream", stream)


# -- the colour decision (per stream, in SPEC §9's order) ------------------------------------


@pytest.mark.parametrize("argv", [["--no-color", "run", "fix it"], ["run", "fix it", "--no-color"]])
def test_no_color_flag_beats_force_color_on_a_terminal(repo1, cli, argv):
    res = cli(*argv, tty=True, env={"FORCE_COLOR": "1", "TERM": "xterm"})
    assert res.code == 0, res
    assert ESC not in res.err and ESC not in res.out
    assert "\u256d\u2500 step 1/1 \u00b7 plan" in res.err     # NO colour is not no boxes


def test_no_color_env_beats_force_color(repo1, cli):
    res = cli("run", "fix it", tty=True, env={"NO_COLOR": "1", "FORCE_COLOR": "1",
                                              "TERM": "xterm"})
    assert res.code == 0, res
    assert ESC not in res.err and ESC not in res.out
    # NO_COLOR removes colour only: the panel keeps its box characters.
    assert "\u256d\u2500 step 1/1 \u00b7 plan \u00b7 planner" in res.err
    assert "\u2570\u2500 " in res.err


def test_empty_no_color_does_not_count(repo1, cli):
    res = cli("run", "fix it", tty=True, env={"NO_COLOR": "", "TERM": "xterm"})
    assert res.code == 0, res
    assert ESC in res.err


@pytest.mark.parametrize("value", ["1", "true", "yes", "anything"])
def test_force_color_colours_a_non_terminal(repo1, cli, value):
    res = cli("run", "fix it", tty=False, env={"FORCE_COLOR": value})
    assert res.code == 0, res
    assert ESC in res.err


@pytest.mark.parametrize("value", ["", "0"])
def test_force_color_empty_or_zero_does_not_colour_a_non_terminal(repo1, cli, value):
    res = cli("run", "fix it", tty=False, env={"FORCE_COLOR": value})
    assert res.code == 0, res
    assert ESC not in res.err and ESC not in res.out


def test_force_color_zero_falls_back_to_the_terminal_rule(repo1, cli):
    res = cli("run", "fix it", tty=True, env={"FORCE_COLOR": "0", "TERM": "xterm"})
    assert ESC in res.err


def test_force_color_beats_term_dumb(repo1, cli):
    res = cli("run", "fix it", tty=True, env={"FORCE_COLOR": "1", "TERM": "dumb"})
    assert ESC in res.err


def test_terminal_with_term_dumb_gets_no_colour(repo1, cli):
    res = cli("run", "fix it", tty=True, env={"TERM": "dumb"})
    assert res.code == 0, res
    assert ESC not in res.err and ESC not in res.out


@pytest.mark.parametrize("env", [{"TERM": "xterm"}, {"TERM": "xterm-256color"}, {}])
def test_terminal_gets_colour(repo1, cli, env):
    res = cli("run", "fix it", tty=True, env=env)
    assert res.code == 0, res
    assert ESC in res.err
    # The colour sits around the status text; stripped, the header is the plain one.
    plain = re.sub(r"\x1b\[[0-9;]*m", "", res.err)
    assert "\u256d\u2500 step 1/1 \u00b7 plan \u00b7 planner \u00b7 mock (would call " \
        "openai:gpt-5.5)" in plain


def test_non_terminal_gets_no_colour(repo1, cli):
    res = cli("run", "fix it", tty=False, env={"TERM": "xterm"})
    assert res.code == 0, res
    assert ESC not in res.err and ESC not in res.out


def test_errors_are_coloured_by_the_same_rule(repo1, cli):
    coloured = cli("run", "--preset", "nope", "x", tty=True, env={"TERM": "xterm"})
    plain = cli("run", "--preset", "nope", "x", tty=True, env={"NO_COLOR": "1"})
    assert coloured.code == plain.code == 2
    assert ESC in coloured.err
    assert ESC not in plain.err
    assert plain.err.startswith("aethr: error: unknown preset 'nope'\n")
    assert re.sub(r"\x1b\[[0-9;]*m", "", coloured.err) == plain.err


def test_colour_is_decided_per_stream_in_a_run(repo1):
    # stdout is a terminal, stderr is not: the status on stderr stays plain.
    out, err = FakeTTY(), io.StringIO()
    term = aethr.Term(out, err, environ={**os.environ, "TERM": "xterm"})
    assert aethr.main(["run", "fix it"], term=term) == 0
    assert ESC not in err.getvalue()
    assert "step 1/1" in err.getvalue()
    # ... and the other way round: stderr is a terminal, stdout a file.
    out, err = io.StringIO(), FakeTTY()
    term = aethr.Term(out, err, environ={**os.environ, "TERM": "xterm"})
    assert aethr.main(["run", "fix it"], term=term) == 0
    assert ESC in err.getvalue()
    assert ESC not in out.getvalue()


@pytest.mark.parametrize("environ, out_tty, expected", [
    ({}, True, True),
    ({"TERM": "xterm"}, True, True),
    ({"TERM": "dumb"}, True, False),
    ({}, False, False),
    ({"FORCE_COLOR": "1"}, False, True),
    ({"FORCE_COLOR": "0"}, False, False),
    ({"FORCE_COLOR": ""}, False, False),
    ({"FORCE_COLOR": "1", "TERM": "dumb"}, True, True),
    ({"NO_COLOR": "1"}, True, False),
    ({"NO_COLOR": "1", "FORCE_COLOR": "1"}, False, False),
    ({"NO_COLOR": ""}, True, True),
    ({"NO_COLOR": "", "FORCE_COLOR": "1"}, False, True),
])
def test_term_color_decision(environ, out_tty, expected):
    stream = FakeTTY() if out_tty else io.StringIO()
    term = aethr.Term(stream, io.StringIO(), environ=environ)
    assert term.color(stream) is expected


def test_term_color_per_stream():
    out, err = FakeTTY(), io.StringIO()
    term = aethr.Term(out, err, environ={"TERM": "xterm"})
    assert term.color(out) is True
    assert term.color(err) is False
    term = aethr.Term(io.StringIO(), FakeTTY(), environ={"TERM": "xterm"})
    assert term.color(term.out) is False
    assert term.color(term.err) is True


def test_term_no_color_attribute_wins():
    out = FakeTTY()
    term = aethr.Term(out, FakeTTY(), environ={"FORCE_COLOR": "1"})
    term.no_color = True
    assert term.color(out) is False
    assert term.paint("x", "red", out) == "x"


def test_paint_wraps_only_when_the_stream_gets_colour():
    tty = FakeTTY()
    term = aethr.Term(tty, io.StringIO(), environ={})
    painted = term.paint("hello", "red", tty)
    assert painted.startswith(ESC) and painted.endswith("\x1b[0m") and "hello" in painted
    assert term.paint("hello", "red", term.err) == "hello"


# -- box characters vs ASCII --------------------------------------------------------------------


def test_glyphs_follow_the_stream_encoding():
    utf8, cp1252, ascii_ = _bytes_stream("utf-8"), _bytes_stream("cp1252"), _bytes_stream("ascii")
    term = aethr.Term(utf8, cp1252, environ={})
    assert term.glyph("top", utf8) == "\u256d\u2500 "
    assert term.glyph("bottom", utf8) == "\u2570\u2500 "
    assert term.glyph("top", cp1252) == "+- "
    assert term.glyph("top", ascii_) == "+- "
    assert term.glyph("top") == "+- "                  # the default stream is stderr
    # A stream without an encoding (StringIO) is text in memory: boxes.
    assert aethr.Term(io.StringIO(), io.StringIO(), environ={}).glyph("top") == "\u256d\u2500 "


def test_cp1252_console_gets_ascii_panels_and_does_not_crash(git_repo):
    (git_repo / ".aethr.yaml").write_text(PIR_WORKFLOW, encoding="utf-8")
    # Content cp1252 cannot encode, in the task and in a context file.
    (git_repo / "README.md").write_text("snowman \u2603, rocket \U0001f680, check \u2713\n",
                                        encoding="utf-8")
    out, err = _bytes_stream("cp1252"), _bytes_stream("cp1252")
    term = aethr.Term(out, err, environ=dict(os.environ))
    code = aethr.main(["run", "fix \u2603 and \U0001f680 \u2713"], term=term)
    status, result = _contents(err, "cp1252"), _contents(out, "cp1252")
    assert code == 0, status
    lines = status.splitlines()
    assert "+- step 1/3 - plan - planner - mock (would call openai:gpt-5.5)" in lines
    assert ("+- step 3/3 - review - reviewer - mock (would call openai:gpt-5.5) - iteration 1/3"
            in lines)
    assert any(line.startswith("+- ") and "review status: pass" in line for line in lines)
    assert "\u256d" not in status and "\u2570" not in status
    assert "Traceback" not in status
    assert result.startswith("## plan\n\n[mock]")
    assert "## review\n\n" in result


def test_utf8_console_gets_box_panels(repo3):
    out, err = _bytes_stream("utf-8"), _bytes_stream("utf-8")
    term = aethr.Term(out, err, environ=dict(os.environ))
    assert aethr.main(["run", "fix it"], term=term) == 0
    lines = _contents(err, "utf-8").splitlines()
    for header in HEADERS_3:
        assert header in lines
    assert any(line.startswith("\u2570\u2500 ") for line in lines)


def test_redirected_stdout_is_utf8_whatever_pythonioencoding_says(repo3, tmp_path):
    (repo3 / "README.md").write_text("snowman \u2603 rocket \U0001f680\n", encoding="utf-8")
    env = {**os.environ, "PYTHONIOENCODING": "cp1252"}
    for extra in ([], ["--show-prompt"]):
        target = tmp_path / "out.md"
        with open(target, "wb") as f:
            proc = subprocess.run([sys.executable, str(AETHR_PY), "run", *extra,
                                   "fix \u2603 \U0001f680"], cwd=repo3, env=env, stdout=f,
                                  stderr=subprocess.PIPE, timeout=60)
        err = proc.stderr.decode("utf-8", "replace")
        assert proc.returncode == 0, err
        assert "Traceback" not in err
        text = target.read_bytes().decode("utf-8")       # valid UTF-8, or this raises
        if extra:
            # --show-prompt puts the task and the file on stdout: written as UTF-8, unchanged.
            assert "# Task\n\nfix \u2603 \U0001f680\n" in text
            assert "snowman \u2603 rocket \U0001f680" in text
        else:
            assert text.startswith("## plan\n\n[mock]")


# -- results on stdout, status on stderr --------------------------------------------------------


def test_redirected_stdout_is_a_markdown_document(repo3, cli):
    res = cli("run", "fix the bug")
    assert res.code == 0, res
    assert res.out == _document(PIR_WORKFLOW, "fix the bug", repo3)
    for header in HEADERS_3:
        assert header not in res.out
    assert "aethr:" not in res.out and "\u256d" not in res.out and "\u2570" not in res.out


def test_status_goes_to_stderr(repo3, cli):
    res = cli("run", "fix the bug")
    assert res.code == 0, res
    lines = _times(res.err).splitlines()
    headers = [line for line in lines if line.startswith("\u256d\u2500 ")]
    footers = [line for line in lines if line.startswith("\u2570\u2500 ")]
    assert headers == HEADERS_3
    assert footers[0] == "\u2570\u2500 T"
    assert footers[1].startswith("\u2570\u2500 T \u00b7 ") and "no files changed" in footers[1]
    assert footers[2] == "\u2570\u2500 T \u00b7 review status: pass"
    assert SUMMARY3 in lines
    # Step text is the result: it is not on stderr.
    assert "[mock]" not in res.err
    assert "## plan" not in res.err


def test_headers_and_footers_pair_up_in_order(repo3, cli):
    res = cli("run", "fix the bug")
    panel = [line[:2] for line in res.err.splitlines() if line[:2] in ("\u256d\u2500",
                                                                      "\u2570\u2500")]
    assert panel == ["\u256d\u2500", "\u2570\u2500"] * 3


def test_loop_iterations_show_in_headers_and_document(repo3, cli, monkeypatch):
    _scripted(monkeypatch, {"plan": ["the plan\n"],
                            "review": ["needs work\nReview status: revise\n",
                                       "fine now\nReview status: pass\n"]})
    res = cli("run", "fix the bug")
    assert res.code == 0, res
    lines = res.err.splitlines()
    assert ("\u256d\u2500 step 3/3 \u00b7 review \u00b7 reviewer \u00b7 mock (would call "
            "openai:gpt-5.5) \u00b7 iteration 2/3") in lines
    assert ("\u256d\u2500 step 2/3 \u00b7 implement \u00b7 implementer \u00b7 mock (would call "
            "opencode openai/gpt-5.5) \u00b7 iteration 2/3") in lines
    assert [line for line in res.out.splitlines() if line.startswith("## ")] == [
        "## plan", "## implement", "## review", "## implement", "## review"]
    assert "## review\n\nneeds work\nReview status: revise\n\n" in res.out
    assert res.out.endswith("## review\n\nfine now\nReview status: pass\n\n")


def test_terminal_stdout_has_no_markdown_headings(repo3, cli):
    res = cli("run", "fix the bug", tty=True, env={"NO_COLOR": "1"})
    assert res.code == 0, res
    assert "## plan" not in res.out and "## review" not in res.out
    assert res.out.startswith("[mock]")
    # On a terminal the panels are there, around the text.
    assert HEADERS_3[0] in res.err.splitlines()


def test_run_redirected_to_a_file_is_a_clean_document(repo3, tmp_path):
    target = tmp_path / "review.md"
    with open(target, "w", encoding="utf-8") as f:
        proc = subprocess.run([sys.executable, str(AETHR_PY), "run", "fix the bug"], cwd=repo3,
                              env=dict(os.environ), stdout=f, stderr=subprocess.PIPE,
                              timeout=60)
    err = proc.stderr.decode("utf-8")
    assert proc.returncode == 0, err
    document = target.read_text(encoding="utf-8")
    assert document == _document(PIR_WORKFLOW, "fix the bug", repo3)
    assert ESC not in document
    lines = _times(err).splitlines()
    assert [line for line in lines if line.startswith("\u256d\u2500 ")] == HEADERS_3
    assert SUMMARY3 in lines
    assert git(repo3, "status", "--porcelain") == "?? .aethr.yaml\n"


# -- the summary line ---------------------------------------------------------------------------


def test_summary_one_step(repo1, cli):
    res = cli("run", "fix it")
    assert res.code == 0, res
    lines = _times(res.err).splitlines()
    assert SUMMARY1 in lines
    assert lines[-2].startswith("aethr: mock mode: no model was called")
    assert lines[-1].startswith("aethr: hint: go live with --live")


def test_summary_three_steps_and_mock_note(repo3, cli):
    res = cli("run", "fix it")
    lines = _times(res.err).splitlines()
    summary = lines.index(SUMMARY3)
    assert lines[summary + 1].startswith("aethr: mock mode: no model was called")
    assert lines[summary + 2].startswith("aethr: hint: go live with --live")
    assert summary + 3 == len(lines)


def test_summary_counts_loop_passes_and_shows_revise(repo3, cli, monkeypatch):
    _scripted(monkeypatch, {"plan": ["p\n"], "review": ["Review status: revise\n"]})
    res = cli("run", "fix it")
    assert res.code == 1, res
    assert "aethr: 7 steps run \u00b7 T \u00b7 0 tokens \u00b7 mock mode \u00b7 verdict revise" in \
        _times(res.err).splitlines()


def test_summary_and_footer_tokens_read_naturally(repo1, cli, monkeypatch):
    _scripted(monkeypatch, {"plan": ["the plan\n"]}, usage={"input": 1000, "output": 234})
    res = cli("run", "fix it")
    assert res.code == 0, res
    lines = _times(res.err).splitlines()
    assert "\u2570\u2500 T \u00b7 tokens 1,000 in / 234 out" in lines
    assert SUMMARY1.replace(" 0 tokens", " 1,234 tokens") in lines


@pytest.mark.parametrize("n, word, plural, expected", [
    (0, "step", None, "0 steps"),
    (1, "step", None, "1 step"),
    (3, "step", None, "3 steps"),
    (1, "token", None, "1 token"),
    (1234, "token", None, "1,234 tokens"),
    (12431, "token", None, "12,431 tokens"),
    (1000000, "byte", None, "1,000,000 bytes"),
    (1, "pass", "passes", "1 pass"),
    (2, "pass", "passes", "2 passes"),
])
def test_plural(n, word, plural, expected):
    assert aethr._plural(n, word, plural) == expected


@pytest.mark.parametrize("seconds, expected", [
    (0.0, "0.0 s"),
    (0.44, "0.4 s"),
    (9.2, "9.2 s"),
    (12.0, "12 s"),
    (12.4, "12 s"),
    (59.0, "59 s"),
    (60.0, "1 min 00 s"),
    (185.0, "3 min 05 s"),
    (3600.0, "60 min 00 s"),
])
def test_seconds(seconds, expected):
    assert aethr._seconds(seconds) == expected


# -- text is shown literally --------------------------------------------------------------------


def test_task_is_printed_literally_in_show_prompt(repo1, cli):
    (repo1 / "README.md").write_text("[red]alert[/red] *star* #hash `code`\n", encoding="utf-8")
    res = cli("run", "--show-prompt", "fix [/x] and arr[i]", "[bold]x[/bold]", "#12", "*now*",
              tty=True, env={"FORCE_COLOR": "1", "TERM": "xterm"})
    assert res.code == 0, res
    assert "# Task\n\nfix [/x] and arr[i] [bold]x[/bold] #12 *now*\n" in res.out
    assert "[red]alert[/red] *star* #hash `code`" in res.out
    assert ESC not in res.out


def test_task_is_printed_literally_by_the_real_command(repo1, run_aethr):
    res = run_aethr("run", "--show-prompt", "fix [/x] and arr[i]", "[bold]x[/bold]", cwd=repo1,
                    env={"FORCE_COLOR": "1"})
    assert res.code == 0, res
    assert "# Task\n\nfix [/x] and arr[i] [bold]x[/bold]\n" in res.out


def test_markup_in_errors_is_printed_literally(repo1, cli):
    res = cli("run", "--preset", "[bold]x[/bold]", "task", tty=True, env={"NO_COLOR": "1"})
    assert res.code == 2
    assert res.err.startswith("aethr: error: unknown preset '[bold]x[/bold]'\n")


def test_term_writes_text_unchanged():
    out, err = FakeTTY(), FakeTTY()
    term = aethr.Term(out, err, environ={"FORCE_COLOR": "1"})
    term.write("[bold]x[/bold] arr[i] \\[esc]\n")
    term.status("[/x] status")
    assert out.getvalue() == "[bold]x[/bold] arr[i] \\[esc]\n"
    assert err.getvalue() == "[/x] status\n"

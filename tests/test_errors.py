"""Section 2, errors (STYLE §3, SPEC §2 exit status): the hierarchy, the one reporter
(`Term.error`), the boolean parser, main()'s mapping of exceptions to exit codes, AETHR_DEBUG."""
from __future__ import annotations

import io
import re
import subprocess
import sys

import pytest
from conftest import AETHR_PY, FakeTTY

import aethr

# -- the hierarchy ------------------------------------------------------------------------------

ALL_ERRORS = [aethr.AethrError, aethr.UsageError, aethr.ConfigError, aethr.YAMLError,
              aethr.StepFailed, aethr.GitError, aethr.BackendError]


@pytest.mark.parametrize("cls, code", [
    (aethr.UsageError, 2),
    (aethr.ConfigError, 2),
    (aethr.YAMLError, 2),
    (aethr.StepFailed, 3),
    (aethr.GitError, 3),
    (aethr.BackendError, 3),
    (aethr.AethrError, 3),
])
def test_exit_codes(cls, code):
    assert cls.exit_code == code


@pytest.mark.parametrize("cls", ALL_ERRORS)
def test_every_error_is_an_aethr_error(cls):
    assert issubclass(cls, aethr.AethrError)
    assert issubclass(cls, Exception)


def test_public_errors_are_exported():
    for name in ("AethrError", "ConfigError", "YAMLError", "StepFailed"):
        assert name in aethr.__all__
        assert getattr(aethr, name) in ALL_ERRORS


def test_yaml_error_is_a_config_error_with_a_position():
    assert issubclass(aethr.YAMLError, aethr.ConfigError)
    exc = aethr.YAMLError("tabs are not allowed in indentation", line=3, column=7,
                          hint="use spaces")
    assert (exc.line, exc.column) == (3, 7)
    assert exc.message == "tabs are not allowed in indentation"
    assert exc.hint == "use spaces"
    assert exc.exit_code == 2
    with pytest.raises(aethr.ConfigError):
        raise exc


def test_parse_yaml_raises_yaml_error_with_one_based_position():
    with pytest.raises(aethr.YAMLError) as info:
        aethr.parse_yaml("steps:\n  - id: a\n    role: [b, c\n")
    exc = info.value
    assert isinstance(exc, aethr.ConfigError)
    assert isinstance(exc.line, int) and isinstance(exc.column, int)
    assert exc.line >= 1 and exc.column >= 1
    assert exc.exit_code == 2


def test_message_and_hint():
    exc = aethr.AethrError("something broke", hint="do this")
    assert str(exc) == "something broke"
    assert exc.message == "something broke"
    assert exc.hint == "do this"
    assert aethr.UsageError("no hint").hint is None


def test_config_error_problems():
    assert aethr.ConfigError("bad").problems == []
    problems = [("wf.yaml", 1, 2, "oops", None)]
    assert aethr.ConfigError("1 problem in wf.yaml", problems=problems).problems == problems


def test_step_failed_carries_the_step():
    exc = aethr.StepFailed("step 'x' failed: boom", step="x", hint="h")
    assert exc.step == "x" and exc.hint == "h" and exc.exit_code == 3


def test_load_workflow_raises_config_error_with_every_problem():
    text = ("workflow: demo\nroles:\n  planner: Plan.\nsteps:\n  - id: plan\n    role: planner\n"
            "    histroy_visibility: all\n  - id: review\n    role: reviewr\n")
    with pytest.raises(aethr.ConfigError) as info:
        aethr.load_workflow("wf.yaml", text=text)
    exc = info.value
    assert exc.exit_code == 2
    assert exc.message == "2 problems in wf.yaml"
    assert [(p[0], p[1], p[2]) for p in exc.problems] == [("wf.yaml", 7, 5), ("wf.yaml", 9, 11)]
    assert exc.problems[0][4] == "did you mean 'history_visibility'?"


# -- Term.error: the one reporter ---------------------------------------------------------------


def _term(tty=False, environ=None):
    out, err = (FakeTTY(), FakeTTY()) if tty else (io.StringIO(), io.StringIO())
    return aethr.Term(out, err, environ=environ or {}), err


def test_error_one_line():
    term, err = _term()
    term.error(aethr.UsageError("the task is empty; nothing was run"))
    assert err.getvalue() == "aethr: error: the task is empty; nothing was run\n"


def test_error_with_hint():
    term, err = _term()
    term.error(aethr.UsageError("unknown preset 'x'", hint="aethr init --list shows them"))
    assert err.getvalue() == ("aethr: error: unknown preset 'x'\n"
                              "aethr: hint: aethr init --list shows them\n")


def test_error_lists_problems_first():
    problems = [(".aethr.yaml", 3, 5, "unknown key 'stpes'", "did you mean 'steps'?"),
                (".aethr.yaml", 9, 11, "step 'review' uses role 'x', which has no instruction",
                 None)]
    term, err = _term()
    term.error(aethr.ConfigError("2 problems in .aethr.yaml", problems=problems))
    assert err.getvalue() == (
        ".aethr.yaml:3:5: unknown key 'stpes'\n"
        "    hint: did you mean 'steps'?\n"
        ".aethr.yaml:9:11: step 'review' uses role 'x', which has no instruction\n"
        "aethr: error: 2 problems in .aethr.yaml\n")


def test_error_problems_and_a_hint():
    term, err = _term()
    term.error(aethr.ConfigError("1 problem in wf.yaml", hint="see the docs",
                                 problems=[("wf.yaml", 1, 1, "msg", "fix it")]))
    assert err.getvalue() == ("wf.yaml:1:1: msg\n    hint: fix it\n"
                              "aethr: error: 1 problem in wf.yaml\naethr: hint: see the docs\n")


def test_error_coloured_on_a_terminal():
    term, err = _term(tty=True, environ={"TERM": "xterm"})
    term.error(aethr.UsageError("boom", hint="h"))
    text = err.getvalue()
    assert "\x1b[" in text
    assert re.sub(r"\x1b\[[0-9;]*m", "", text) == "aethr: error: boom\naethr: hint: h\n"


def test_error_with_traceback():
    term, err = _term()
    try:
        raise aethr.GitError("git diff failed: bad object")
    except aethr.GitError as exc:
        term.error(exc, traceback=True)
    text = err.getvalue()
    assert text.startswith("Traceback (most recent call last):\n")
    assert "GitError: git diff failed: bad object" in text
    assert text.endswith("aethr: error: git diff failed: bad object\n")


def test_error_never_prints_to_stdout():
    out, err = io.StringIO(), io.StringIO()
    aethr.Term(out, err, environ={}).error(aethr.UsageError("x", hint="y"))
    assert out.getvalue() == ""


# -- the one boolean parser ---------------------------------------------------------------------


@pytest.mark.parametrize("value", ["1", "true", "True", "TRUE", "yes", "Yes", "YES", "on", "On",
                                   "ON", "tRuE"])
def test_env_bool_true(value):
    assert aethr.env_bool({"AETHR_LIVE": value}, "AETHR_LIVE") is True


@pytest.mark.parametrize("value", ["", "0", "false", "False", "FALSE", "no", "No", "NO", "off",
                                   "Off", "OFF"])
def test_env_bool_false(value):
    assert aethr.env_bool({"AETHR_LIVE": value}, "AETHR_LIVE") is False


def test_env_bool_unset_is_false():
    assert aethr.env_bool({}, "AETHR_DEBUG") is False
    assert aethr.env_bool({"OTHER": "1"}, "AETHR_DEBUG") is False


@pytest.mark.parametrize("value", ["maybe", "2", "y", "n", "t", "enable", "-1", "truee", "null"])
def test_env_bool_anything_else_is_a_usage_error(value):
    with pytest.raises(aethr.UsageError) as info:
        aethr.env_bool({"AETHR_DEBUG": value}, "AETHR_DEBUG")
    exc = info.value
    assert exc.exit_code == 2
    assert "AETHR_DEBUG" in exc.message
    assert repr(value) in exc.message
    assert exc.hint


def test_invalid_boolean_variable_via_cli(git_repo, cli):
    res = cli("run", "fix it", env={"AETHR_LIVE": "maybe"})
    assert res.code == 2
    assert res.err.startswith("aethr: error: AETHR_LIVE must be a boolean, not 'maybe'\n")
    assert "aethr: hint: " in res.err
    assert res.out == ""
    assert "Traceback" not in res.err


def test_invalid_boolean_variable_via_the_real_command(git_repo, run_aethr):
    res = run_aethr("run", "fix it", cwd=git_repo, env={"AETHR_LIVE": "perhaps"})
    assert res.code == 2, res
    assert "aethr: error: AETHR_LIVE must be a boolean, not 'perhaps'" in res.err
    assert res.out == ""


# -- main(): exceptions to exit codes -----------------------------------------------------------


def _raising(exc):
    def cmd(args, term):
        raise exc
    return cmd


@pytest.mark.parametrize("exc, code", [
    (aethr.UsageError("u"), 2),
    (aethr.ConfigError("c"), 2),
    (aethr.YAMLError("y", line=1, column=1), 2),
    (aethr.GitError("g"), 3),
    (aethr.BackendError("b"), 3),
    (aethr.StepFailed("s"), 3),
    (aethr.AethrError("a"), 3),
])
def test_main_maps_aethr_errors_to_their_codes(monkeypatch, cli, exc, code):
    monkeypatch.setattr(aethr, "cmd_check", _raising(exc))
    res = cli("check")
    assert res.code == code
    assert "Traceback" not in res.err
    assert res.err.splitlines()[-1] == f"aethr: error: {exc.message}"


def test_main_prints_message_and_hint(monkeypatch, cli):
    monkeypatch.setattr(aethr, "cmd_check",
                        _raising(aethr.GitError("git failed: bad revision", hint="fetch it")))
    res = cli("check")
    assert res.code == 3
    assert res.err == "aethr: error: git failed: bad revision\naethr: hint: fetch it\n"
    assert res.out == ""


def test_main_keyboard_interrupt_is_130(monkeypatch, cli):
    monkeypatch.setattr(aethr, "cmd_check", _raising(KeyboardInterrupt()))
    res = cli("check")
    assert res.code == 130
    assert "Traceback" not in res.err


def test_main_broken_pipe_is_141_and_quiet(monkeypatch, cli):
    monkeypatch.setattr(aethr, "cmd_check", _raising(BrokenPipeError()))
    res = cli("check")
    assert res.code == 141
    assert "error" not in res.err and "Traceback" not in res.err


def test_main_unexpected_exception_is_a_bug(monkeypatch, cli):
    monkeypatch.setattr(aethr, "cmd_check", _raising(ValueError("kaboom")))
    res = cli("check")
    assert res.code == 70
    assert res.err.startswith("Traceback (most recent call last):\n")
    assert "ValueError: kaboom" in res.err
    last = res.err.splitlines()[-1]
    assert last.startswith("aethr: error: ")
    assert "bug" in last and "report" in last and aethr.__version__ in last
    assert res.code != 1          # 1 means a revise verdict, never a crash


def test_main_bug_in_a_real_process(tmp_path):
    driver = tmp_path / "driver.py"
    driver.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(AETHR_PY.parent)!r})\n"
        "import aethr\n"
        "def broken(args, term):\n"
        "    return {}['missing']\n"
        "aethr.cmd_check = broken\n"
        "sys.exit(aethr.main())\n")
    proc = subprocess.run([sys.executable, str(driver), "check"], capture_output=True,
                          text=True, encoding="utf-8", timeout=60)
    assert proc.returncode == 70, proc.stderr
    assert "Traceback (most recent call last):" in proc.stderr
    assert "KeyError: 'missing'" in proc.stderr
    assert "please report" in proc.stderr.splitlines()[-1]
    assert proc.stdout == ""


def test_user_mistakes_print_no_traceback(git_repo, cli):
    (git_repo / ".aethr.yaml").write_text("workflow: x\nroles:\n  a: A.\nsteps:\n"
                                          "  - id: s\n    role: b\n")
    for argv, env in [(("run", "--preset", "nope", "x"), {}),
                      (("run", "x"), {}),
                      (("check",), {}),
                      (("run", "x"), {"AETHR_LIVE": "sometimes"}),
                      (("run", "--bogus", "x"), {})]:
        res = cli(*argv, env=env)
        assert res.code == 2, (argv, res)
        assert "Traceback" not in res.err, (argv, res)


def test_config_error_report_via_cli(git_repo, cli):
    (git_repo / ".aethr.yaml").write_text(
        "workflow: demo\nroles:\n  planner: Plan.\nsteps:\n  - id: plan\n    role: planner\n"
        "    histroy_visibility: all\n  - id: review\n    role: reviewr\n")
    res = cli("run", "fix it")
    assert res.code == 2
    lines = res.err.splitlines()
    assert lines[0].startswith(".aethr.yaml:7:5: unknown key 'histroy_visibility'")
    assert lines[1] == "    hint: did you mean 'history_visibility'?"
    assert lines[2].startswith(".aethr.yaml:9:11: ")
    assert lines[-1] == "aethr: error: 2 problems in .aethr.yaml"
    assert res.out == ""


def test_one_problem_is_singular(git_repo, cli):
    (git_repo / ".aethr.yaml").write_text(
        "workflow: demo\nroles:\n  planner: Plan.\nsteps:\n  - id: plan\n    role: planner\n"
        "    histroy_visibility: all\n")
    res = cli("check")
    assert res.code == 2
    assert res.err.splitlines()[-1] == "aethr: error: 1 problem in .aethr.yaml"


def test_expected_error_via_the_real_command(git_repo, run_aethr):
    res = run_aethr("run", "--preset", "plan-implement-reveiw", "x", cwd=git_repo)
    assert res.code == 2
    assert res.err == ("aethr: error: unknown preset 'plan-implement-reveiw'\n"
                       "aethr: hint: did you mean 'plan-implement-review'?\n")
    assert res.out == ""


# -- AETHR_DEBUG --------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["1", "true", "YES", "on"])
def test_debug_shows_the_traceback_of_expected_errors(git_repo, cli, value):
    res = cli("run", "--preset", "nope", "x", env={"AETHR_DEBUG": value})
    assert res.code == 2                         # the exit code is kept
    assert res.err.startswith("Traceback (most recent call last):\n")
    assert "ConfigError: unknown preset 'nope'" in res.err
    assert "aethr: error: unknown preset 'nope'\n" in res.err


@pytest.mark.parametrize("value", ["", "0", "false", "off", "No"])
def test_debug_off_shows_no_traceback(git_repo, cli, value):
    res = cli("run", "--preset", "nope", "x", env={"AETHR_DEBUG": value})
    assert res.code == 2
    assert "Traceback" not in res.err
    assert res.err.startswith("aethr: error: unknown preset 'nope'\n")


def test_debug_keeps_step_failure_exit_code(git_repo, cli, monkeypatch):
    def stream(self, prompt, *, max_tokens=None):
        raise aethr.BackendError("the provider is down")
        yield  # pragma: no cover

    monkeypatch.setattr(aethr.MockProvider, "stream", stream)
    (git_repo / ".aethr.yaml").write_text("workflow: x\nroles:\n  a: A.\nsteps:\n"
                                          "  - id: s\n    role: a\n")
    res = cli("run", "x", env={"AETHR_DEBUG": "1"})
    assert res.code == 3
    assert "Traceback (most recent call last):" in res.err
    lines = res.err.splitlines()
    assert lines[-2] == "aethr: error: step 's' failed: the provider is down"
    assert lines[-1].startswith("aethr: to resume: aethr run --resume-checkpoint ")


def test_debug_does_not_change_a_success(git_repo, cli):
    res = cli("version", env={"AETHR_DEBUG": "1"})
    assert res.code == 0
    assert res.out == f"aethr {aethr.__version__}\n"
    assert res.err == ""


def test_debug_via_the_real_command(git_repo, run_aethr):
    res = run_aethr("run", "--preset", "nope", "x", cwd=git_repo, env={"AETHR_DEBUG": "1"})
    assert res.code == 2
    assert res.err.startswith("Traceback (most recent call last):\n")
    lines = res.err.splitlines()
    assert lines[-2] == "aethr: error: unknown preset 'nope'"
    assert lines[-1].startswith("aethr: hint: ")


def test_invalid_debug_value_is_a_usage_error(git_repo, cli):
    # SPEC §2: one parser reads every boolean variable; anything else is a usage error (exit 2).
    res = cli("run", "fix it", env={"AETHR_DEBUG": "maybe"})
    assert res.code == 2, res
    assert "aethr: error: AETHR_DEBUG must be a boolean, not 'maybe'" in res.err
    assert "## " not in res.out


def test_invalid_debug_value_is_reported_before_the_command_runs(git_repo, cli):
    # The bad variable is the first usage error: the command itself never starts.
    res = cli("run", "--preset", "nope", "x", env={"AETHR_DEBUG": "maybe"})
    assert res.code == 2
    assert "aethr: error: AETHR_DEBUG must be a boolean, not 'maybe'" in res.err
    assert "unknown preset" not in res.err
    assert "Traceback" not in res.err


def test_main_without_a_term_uses_sys_streams(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["aethr", "version"])
    assert aethr.main() == 0
    assert capsys.readouterr().out == f"aethr {aethr.__version__}\n"

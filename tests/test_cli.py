"""§12 Commands and CLI: argument parsing, workflow discovery, task entry, run, init, check,
version and main()'s error handling (SPEC §2, mock mode only).

Most tests call main() in-process through the `cli` fixture; every flow also runs once as a
real `python3 aethr.py …` subprocess (`run_aethr`)."""
from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import AETHR_PY, ROOT, git, reader_workflow

import aethr

VERSION_LINE = f"aethr {aethr.__version__}\n"
COMMANDS = ("init", "run", "check", "version")
PRESET_NAMES = ("add-tests", "custom", "debug-failing-test", "docs-sync",
                "plan-implement-review", "review-existing-diff")
LIVE_REFUSED = "no API key for"  # live mode without a key: the preflight stops, exit 2


# -- helpers ----------------------------------------------------------------------------------

def make_changes(repo: Path) -> None:
    """Uncommitted changes: one modified tracked file and one new untracked file."""
    (repo / "src" / "app.py").write_text("def add(a, b):\n    return a + b + 0\n")
    (repo / "notes.txt").write_text("remember the milk\n")


def task_of(prompt_output: str) -> str:
    """The text of the first `# Task` section of --show-prompt output."""
    found = re.search(r"^# Task\n\n(.*?)\n\n# Step\n", prompt_output, re.MULTILINE | re.DOTALL)
    assert found, prompt_output
    return found.group(1)


def step_sections(out: str) -> list[str]:
    """The `## STEP-ID` headings of a redirected run, in order."""
    return re.findall(r"^## (\S+)$", out, re.MULTILINE)


def root_line(check_out: str) -> str:
    found = re.search(r"^root\s+(.+)$", check_out, re.MULTILINE)
    assert found, check_out
    return os.path.realpath(found.group(1).strip())


def write_editor(path: Path, body: str) -> Path:
    """A tiny editor: a shell script that gets the task file as $1."""
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def assert_usage_error(r) -> None:
    assert r.code == 2, r
    assert r.out == "", r
    assert "usage: aethr" in r.err, r
    assert "error:" in r.err, r
    assert "Traceback" not in r.err, r


def assert_nothing_ran(r) -> None:
    assert r.code == 2, r
    assert r.out == "", r
    assert "step 1/" not in r.err, r
    assert "Traceback" not in r.err, r


# -- build_parser / _parse_args: help, version, usage errors ----------------------------------

def test_help_prints_usage_to_stdout(cli):
    r = cli("--help")
    assert r.code == 0, r
    assert r.out.startswith("usage: aethr"), r
    for name in COMMANDS:
        assert re.search(rf"^\s+{name}\s", r.out, re.MULTILINE), (name, r.out)
    assert r.err == ""


@pytest.mark.parametrize("name", COMMANDS)
def test_command_help_prints_its_usage_to_stdout(cli, name):
    r = cli(name, "--help")
    assert r.code == 0, r
    assert r.out.startswith(f"usage: aethr {name}"), r
    assert r.err == ""


@pytest.mark.parametrize("name, options", [
    ("init", ["--force", "--list", "--model"]),
    ("run", ["--show-prompt", "--live", "--workflow", "--preset", "--model"]),
    ("check", ["--workflow", "--preset"]),
])
def test_command_help_lists_its_options(cli, name, options):
    r = cli(name, "--help")
    assert r.code == 0
    for option in options + ["--no-color"]:
        assert option in r.out, (option, r.out)


def test_help_subprocess(run_aethr, tmp_path):
    r = run_aethr("--help", cwd=tmp_path)
    assert r.code == 0 and r.out.startswith("usage: aethr"), r
    r = run_aethr("run", "--help", cwd=tmp_path)
    assert r.code == 0 and r.out.startswith("usage: aethr run"), r
    assert "--show-prompt" in r.out


def test_no_arguments_prints_help_to_stderr_and_exits_2(cli):
    # like git with no command: the help goes to stderr, and it is not a success
    for argv in ([], ["--no-color"]):
        r = cli(*argv)
        assert r.code == 2, r
        assert r.out == ""
        assert r.err.startswith("usage: aethr"), r
        assert "Traceback" not in r.err


@pytest.mark.parametrize("argv", [
    ["bogus"],                          # unknown command
    ["--bogus"],                        # unknown top-level option
    ["--vers"],                         # abbreviated --version
    ["--no-col", "version"],            # abbreviated --no-color
    ["run", "x", "--show"],             # must NOT mean --show-prompt
    ["run", "x", "--show-p"],
    ["run", "--bogus", "x"],
    ["init", "--for"],                  # must NOT mean --force
    ["init", "--li"],
    ["check", "--work", "wf.yaml"],     # must NOT mean --workflow
    ["version", "extra"],
], ids=lambda argv: " ".join(argv))
def test_usage_errors_exit_2_with_usage_on_stderr(cli, argv):
    r = cli(*argv)
    assert_usage_error(r)


def test_abbreviated_option_subprocess(run_aethr, git_repo):
    make_changes(git_repo)
    r = run_aethr("run", "x", "--show", cwd=git_repo)
    assert_usage_error(r)
    assert "--show" in r.err
    r = run_aethr("init", "--for", cwd=git_repo)
    assert_usage_error(r)
    assert not (git_repo / ".aethr.yaml").exists()
    r = run_aethr("frobnicate", cwd=git_repo)
    assert_usage_error(r)


@pytest.mark.parametrize("command", ["run", "check"])
def test_workflow_and_preset_are_mutually_exclusive(cli, command):
    Path("wf.yaml").write_text(reader_workflow("wf"))
    argv = [command, "--workflow", "wf.yaml", "--preset", "custom"]
    r = cli(*argv, *(["a task"] if command == "run" else []))
    assert_usage_error(r)
    assert "--preset" in r.err and "--workflow" in r.err


def test_options_anywhere_and_words_joined(cli, git_repo):
    make_changes(git_repo)
    r = cli("run", "fix", "--show-prompt", "the", "bug")
    assert r.code == 0, r
    assert task_of(r.out) == "fix the bug"


def test_task_is_sent_exactly_as_typed(cli, git_repo):
    r = cli("run", "--show-prompt", "fix [/x] and arr[i] *now* # really")
    assert r.code == 0, r
    assert task_of(r.out) == "fix [/x] and arr[i] *now* # really"


def test_double_dash_ends_options(cli, git_repo):
    r = cli("run", "--show-prompt", "--", "add", "a", "--json", "flag")
    assert r.code == 0, r
    assert task_of(r.out) == "add a --json flag"


def test_double_dash_keeps_option_lookalikes_in_the_task(cli, git_repo):
    # After `--`, even --show-prompt is task text: this is a (mock) run, not a prompt dump.
    r = cli("run", "--", "add", "--show-prompt")
    assert r.code == 0, r
    assert "=== step" not in r.out
    assert step_sections(r.out) == ["review"]


def test_task_words_subprocess(run_aethr, git_repo):
    make_changes(git_repo)
    r = run_aethr("run", "fix", "--show-prompt", "the", "bug", cwd=git_repo)
    assert r.code == 0, r
    assert task_of(r.out) == "fix the bug"
    r = run_aethr("run", "--show-prompt", "--", "add", "a", "--json", "flag", cwd=git_repo)
    assert r.code == 0, r
    assert task_of(r.out) == "add a --json flag"


@pytest.mark.parametrize("argv", [
    ["--no-color", "run", "x"],
    ["run", "x", "--no-color"],
    ["check", "--no-color"],
], ids=lambda argv: " ".join(argv))
def test_no_color_before_or_after_the_command(cli, git_repo, argv):
    make_changes(git_repo)
    colored = cli(*[a for a in argv if a != "--no-color"], env={"FORCE_COLOR": "1"})
    assert colored.code == 0, colored
    assert "\x1b[" in colored.err, colored      # the control: FORCE_COLOR does colour
    r = cli(*argv, env={"FORCE_COLOR": "1"})
    assert r.code == 0, r
    assert "\x1b[" not in r.err + r.out, r


def test_no_color_subprocess(run_aethr, git_repo):
    make_changes(git_repo)
    for argv in (["--no-color", "run", "x"], ["run", "x", "--no-color"]):
        r = run_aethr(*argv, cwd=git_repo, env={"FORCE_COLOR": "1"})
        assert r.code == 0, r
        assert "\x1b[" not in r.err + r.out, r
    r = run_aethr("run", "x", cwd=git_repo, env={"FORCE_COLOR": "1"})
    assert "\x1b[" in r.err, r


# -- _locate: workflow discovery and the project root ----------------------------------------

def test_workflow_found_in_a_parent_directory(cli, git_repo, monkeypatch):
    (git_repo / ".aethr.yaml").write_text(reader_workflow("from-top"))
    (git_repo / "notes.md").write_text("NOTES AT THE PROJECT ROOT\n")
    (git_repo / "src" / "notes.md").write_text("NOTES IN SRC\n")
    deep = git_repo / "src" / "deep"
    deep.mkdir()
    monkeypatch.chdir(deep)
    r = cli("run", "--show-prompt", "read it")
    assert r.code == 0, r
    assert "NOTES AT THE PROJECT ROOT" in r.out
    assert "NOTES IN SRC" not in r.out
    assert "review-existing-diff" not in r.err
    r = cli("check")
    assert r.code == 0, r
    assert "from-top" in r.out
    assert root_line(r.out) == os.path.realpath(git_repo)


def test_project_root_is_the_directory_holding_the_workflow(cli, git_repo, monkeypatch):
    sub = git_repo / "pkg"
    (sub / "inner").mkdir(parents=True)
    (sub / ".aethr.yaml").write_text(reader_workflow("pkg-flow"))
    (sub / "notes.md").write_text("NOTES OF PKG\n")
    (git_repo / "notes.md").write_text("NOTES AT THE TOP\n")
    monkeypatch.chdir(sub / "inner")
    r = cli("run", "--show-prompt", "read it")
    assert r.code == 0, r
    assert "NOTES OF PKG" in r.out
    assert "NOTES AT THE TOP" not in r.out
    r = cli("check")
    assert root_line(r.out) == os.path.realpath(sub)


def test_workflow_discovery_subprocess(run_aethr, git_repo):
    (git_repo / ".aethr.yaml").write_text(reader_workflow("from-top"))
    (git_repo / "notes.md").write_text("NOTES AT THE PROJECT ROOT\n")
    r = run_aethr("run", "--show-prompt", "read it", cwd=git_repo / "src")
    assert r.code == 0, r
    assert "NOTES AT THE PROJECT ROOT" in r.out
    r = run_aethr("check", cwd=git_repo / "src")
    assert r.code == 0, r
    assert root_line(r.out) == os.path.realpath(git_repo)


def test_not_looked_for_above_the_git_top_level(cli, git_repo, tmp_path, run_aethr):
    assert git_repo.parent == tmp_path
    (tmp_path / ".aethr.yaml").write_text(reader_workflow("outside-the-repo"))
    make_changes(git_repo)
    for r in (cli("run", "review"), run_aethr("run", "review", cwd=git_repo)):
        assert r.code == 0, r
        assert "outside-the-repo" not in r.err + r.out
        assert "review-existing-diff" in r.err
        assert step_sections(r.out) == ["review"]


def test_outside_a_repo_only_the_current_directory(cli, tmp_path, monkeypatch):
    plain = tmp_path / "plain"
    (plain / "child").mkdir(parents=True)
    assert subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=plain,
                          capture_output=True).returncode != 0
    (plain / ".aethr.yaml").write_text(reader_workflow("plain-flow"))
    (plain / "notes.md").write_text("PLAIN NOTES\n")
    monkeypatch.chdir(plain)
    r = cli("check")
    assert r.code == 0, r
    assert "plain-flow" in r.out
    r = cli("run", "--show-prompt", "read it")
    assert r.code == 0, r
    assert "PLAIN NOTES" in r.out
    monkeypatch.chdir(plain / "child")
    r = cli("check")
    assert r.code == 0, r
    assert "plain-flow" not in r.out
    assert "review-existing-diff" in r.out


def test_no_workflow_uses_the_default_preset_and_says_so(cli, git_repo):
    make_changes(git_repo)
    r = cli("run", "look")
    assert r.code == 0, r
    note = [line for line in r.err.splitlines() if "no .aethr.yaml found" in line]
    assert len(note) == 1, r.err
    assert "review-existing-diff" in note[0]
    assert "no .aethr.yaml found" not in r.out


def test_aethr_yml_is_an_error_with_a_rename_hint(cli, git_repo, monkeypatch, run_aethr):
    (git_repo / ".aethr.yml").write_text(reader_workflow("wrong-extension"))
    monkeypatch.chdir(git_repo / "src")
    for r in (cli("run", "x"), cli("check"), run_aethr("run", "x", cwd=git_repo / "src")):
        assert_nothing_ran(r)
        assert ".aethr.yml" in r.err
        hint = [line for line in r.err.splitlines() if line.startswith("aethr: hint:")]
        assert hint and ".aethr.yaml" in hint[0] and ("mv" in hint[0] or "rename" in hint[0]), r


def test_workflow_option_project_root_is_the_git_top_level(cli, git_repo, monkeypatch):
    (git_repo / "flows").mkdir()
    (git_repo / "flows" / "reader.yaml").write_text(reader_workflow("chosen"))
    (git_repo / "notes.md").write_text("NOTES AT THE GIT TOP\n")
    (git_repo / "flows" / "notes.md").write_text("NOTES NEXT TO THE WORKFLOW\n")
    (git_repo / "src" / "notes.md").write_text("NOTES IN THE CWD\n")
    (git_repo / ".aethr.yaml").write_text(reader_workflow("discovered"))
    monkeypatch.chdir(git_repo / "src")
    r = cli("run", "--workflow", "../flows/reader.yaml", "--show-prompt", "read it")
    assert r.code == 0, r
    assert "NOTES AT THE GIT TOP" in r.out
    assert "NOTES NEXT TO THE WORKFLOW" not in r.out and "NOTES IN THE CWD" not in r.out
    r = cli("check", "--workflow", "../flows/reader.yaml")
    assert r.code == 0, r
    assert "chosen" in r.out and "discovered" not in r.out
    assert root_line(r.out) == os.path.realpath(git_repo)


def test_preset_option_beats_the_discovered_file(cli, git_repo, monkeypatch):
    (git_repo / ".aethr.yaml").write_text(reader_workflow("discovered"))
    monkeypatch.chdir(git_repo / "src")
    r = cli("check", "--preset", "docs-sync")
    assert r.code == 0, r
    assert "docs-sync" in r.out and "discovered" not in r.out
    assert root_line(r.out) == os.path.realpath(git_repo)
    r = cli("run", "--preset", "plan-implement-review", "go")
    assert r.code == 0, r
    assert step_sections(r.out) == ["plan", "implement", "review"]


def test_workflow_and_preset_options_subprocess(run_aethr, git_repo):
    (git_repo / "flows").mkdir()
    (git_repo / "flows" / "reader.yaml").write_text(reader_workflow("chosen"))
    (git_repo / "notes.md").write_text("NOTES AT THE GIT TOP\n")
    r = run_aethr("run", "--show-prompt", "--workflow", "../flows/reader.yaml", "x",
                  cwd=git_repo / "src")
    assert r.code == 0, r
    assert "NOTES AT THE GIT TOP" in r.out
    r = run_aethr("check", "--preset", "add-tests", cwd=git_repo / "src")
    assert r.code == 0, r
    assert "add-tests" in r.out
    r = run_aethr("check", "--preset", "add-tests", "--workflow", "flows/reader.yaml",
                  cwd=git_repo)
    assert_usage_error(r)


def test_missing_workflow_file_and_unknown_preset(cli, git_repo):
    r = cli("run", "--workflow", "nowhere.yaml", "x")
    assert_nothing_ran(r)
    assert "nowhere.yaml" in r.err
    r = cli("check", "--preset", "plan-implement-reveiw")
    assert r.code == 2 and r.out == "", r
    assert "did you mean 'plan-implement-review'?" in r.err


# -- _task_from_editor / _read_task: task entry ---------------------------------------------

def test_run_dash_reads_the_task_from_stdin(cli, git_repo):
    r = cli("run", "-", "--show-prompt", stdin="  fix the parser\nand its tests\n\n")
    assert r.code == 0, r
    assert task_of(r.out) == "fix the parser\nand its tests"


def test_run_dash_subprocess(run_aethr, git_repo):
    r = run_aethr("run", "--show-prompt", "-", cwd=git_repo, input="task from a pipe\n")
    assert r.code == 0, r
    assert task_of(r.out) == "task from a pipe"


@pytest.mark.parametrize("argv, stdin", [
    (["run", ""], ""),
    (["run", "  "], ""),
    (["run", "-"], ""),
    (["run", "-"], " \n\n\t\n"),
], ids=["empty-word", "blank-word", "empty-stdin", "blank-stdin"])
def test_empty_task_runs_nothing(cli, git_repo, argv, stdin):
    make_changes(git_repo)
    r = cli(*argv, stdin=stdin)
    assert_nothing_ran(r)
    assert "aethr: error: the task is empty" in r.err


def test_empty_task_subprocess(run_aethr, git_repo):
    r = run_aethr("run", "-", cwd=git_repo, input="\n  \n")
    assert_nothing_ran(r)
    assert "empty" in r.err
    r = run_aethr("run", "", cwd=git_repo)
    assert_nothing_ran(r)


def test_no_task_and_no_terminal_exits_2_with_a_hint(cli, git_repo):
    r = cli("run", env={"AETHR_EDITOR": "false"})
    assert_nothing_ran(r)
    assert "no terminal" in r.err
    hint = [line for line in r.err.splitlines() if line.startswith("aethr: hint:")]
    assert hint and "aethr run -" in hint[0], r.err


def test_no_task_and_no_terminal_subprocess_does_not_hang(run_aethr, git_repo, tmp_path):
    marker = tmp_path / "editor-ran"
    editor = write_editor(tmp_path / "ed.sh", f'touch "{marker}"; sleep 30')
    started = time.monotonic()
    r = run_aethr("run", cwd=git_repo, input="", env={"AETHR_EDITOR": str(editor)},
                  timeout=20)
    assert time.monotonic() - started < 10
    assert_nothing_ran(r)
    assert "aethr: hint:" in r.err
    assert not marker.exists()


def test_editor_line_is_the_task(cli, git_repo, tmp_path):
    editor = write_editor(tmp_path / "ed.sh", "printf '%s\\n' 'fix the editor bug' >> \"$1\"")
    r = cli("run", "--show-prompt", "--no-color", env={"AETHR_EDITOR": str(editor)}, tty=True)
    assert r.code == 0, r
    assert task_of(r.out) == "fix the editor bug"
    assert "Write the task" not in r.out


def test_editor_keeps_user_hash_lines_and_drops_the_template(cli, git_repo, tmp_path):
    editor = write_editor(tmp_path / "ed.sh",
                          "printf '%s\\n' '# Heading the user wrote' 'do the thing' >> \"$1\"")
    r = cli("run", "--show-prompt", "--no-color", env={"AETHR_EDITOR": str(editor)}, tty=True)
    assert r.code == 0, r
    assert task_of(r.out) == "# Heading the user wrote\ndo the thing"
    for line in aethr._TASK_TEMPLATE:
        if line:
            assert line not in r.out


def test_editor_gets_a_commented_template(cli, git_repo, tmp_path):
    seen = tmp_path / "template-seen.txt"
    editor = write_editor(tmp_path / "ed.sh", f'cp "$1" "{seen}"; echo task >> "$1"')
    r = cli("run", "--show-prompt", env={"AETHR_EDITOR": str(editor)}, tty=True)
    assert r.code == 0, r
    template = seen.read_text()
    assert template.strip() and all(line.startswith("#")
                                    for line in template.splitlines() if line.strip())


def test_editor_variable_order(cli, git_repo, tmp_path):
    good = write_editor(tmp_path / "good.sh", "echo 'from the right editor' >> \"$1\"")
    bad = write_editor(tmp_path / "bad.sh", "echo 'from the wrong editor' >> \"$1\"")
    for env in ({"AETHR_EDITOR": str(good), "VISUAL": str(bad), "EDITOR": str(bad)},
                {"VISUAL": str(good), "EDITOR": str(bad)},
                {"EDITOR": str(good)}):
        r = cli("run", "--show-prompt", env=env, tty=True)
        assert r.code == 0, (env, r)
        assert task_of(r.out) == "from the right editor", env


def test_editor_runs_through_the_shell(cli, git_repo, tmp_path):
    # Like git: the variable is a shell command, so it may carry its own arguments
    # (`code --wait`); the file comes after them.
    editor = write_editor(tmp_path / "ed.sh", 'echo "got $1" >> "$2"')
    r = cli("run", "--show-prompt", env={"AETHR_EDITOR": f"{editor} --wait"}, tty=True)
    assert r.code == 0, r
    assert task_of(r.out) == "got --wait"


def test_failing_editor_runs_nothing(cli, git_repo, tmp_path):
    editor = write_editor(tmp_path / "ed.sh", "echo 'half a task' >> \"$1\"; exit 1")
    r = cli("run", env={"AETHR_EDITOR": str(editor)}, tty=True)
    assert_nothing_ran(r)
    assert "editor" in r.err


def test_editor_that_writes_nothing_runs_nothing(cli, git_repo, tmp_path):
    editor = write_editor(tmp_path / "ed.sh", "true")
    r = cli("run", env={"AETHR_EDITOR": str(editor)}, tty=True)
    assert_nothing_ran(r)
    assert "empty" in r.err


def test_editor_temp_file_is_removed(cli, git_repo, tmp_path):
    editor = write_editor(tmp_path / "ed.sh", "echo task >> \"$1\"")
    before = set(os.listdir(os.environ["TMPDIR"]))
    r = cli("run", "--show-prompt", env={"AETHR_EDITOR": str(editor)}, tty=True)
    assert r.code == 0, r
    assert set(os.listdir(os.environ["TMPDIR"])) == before


def test_editor_subprocess_on_a_terminal(git_repo, tmp_path):
    """The real editor flow needs a terminal: stdin and stderr on a pseudo-terminal."""
    import pty

    editor = write_editor(tmp_path / "ed.sh",
                          "printf '%s\\n' '# my note' 'task typed in the editor' >> \"$1\"")
    master, slave = pty.openpty()
    try:
        env = dict(os.environ, AETHR_EDITOR=str(editor), TERM="dumb")
        proc = subprocess.run([sys.executable, str(AETHR_PY), "run", "--show-prompt"],
                              cwd=git_repo, env=env, stdin=slave, stderr=slave,
                              stdout=subprocess.PIPE, timeout=30)
    finally:
        os.close(slave)
        os.close(master)
    out = proc.stdout.decode("utf-8")
    assert proc.returncode == 0, out
    assert task_of(out) == "# my note\ntask typed in the editor"


# -- cmd_run ------------------------------------------------------------------------------------

def test_readme_first_command(cli, git_repo):
    make_changes(git_repo)
    r = cli("run", "review my current changes")
    assert r.code == 0, r
    assert "no .aethr.yaml found" in r.err and "review-existing-diff" in r.err
    assert step_sections(r.out) == ["review"]
    assert "src/app.py" in r.out and "notes.txt" in r.out
    assert "mock (would call openai:gpt-5.5)" in r.err
    assert "mock mode" in r.err
    assert "Traceback" not in r.err


def test_readme_first_command_subprocess(run_aethr, git_repo):
    make_changes(git_repo)
    r = run_aethr("run", "review my current changes", cwd=git_repo)
    assert r.code == 0, r
    assert "no .aethr.yaml found" in r.err and "review-existing-diff" in r.err
    assert step_sections(r.out) == ["review"]
    assert "src/app.py" in r.out and "notes.txt" in r.out
    assert "mock" in r.err


def test_run_leaves_the_tree_alone(cli, git_repo):
    make_changes(git_repo)
    before = git(git_repo, "status", "--porcelain"), git(git_repo, "diff")
    assert cli("run", "review").code == 0
    assert (git(git_repo, "status", "--porcelain"), git(git_repo, "diff")) == before


def test_init_then_run_every_step(cli, git_repo):
    make_changes(git_repo)
    assert cli("init", "plan-implement-review").code == 0
    r = cli("run", "add .env support")
    assert r.code == 0, r
    assert step_sections(r.out) == ["plan", "implement", "review"]
    assert "no .aethr.yaml found" not in r.err
    for n, step in enumerate(("plan", "implement", "review"), 1):
        assert f"step {n}/3" in r.err and step in r.err


def test_init_then_run_subprocess(run_aethr, git_repo):
    make_changes(git_repo)
    r = run_aethr("init", "plan-implement-review", cwd=git_repo)
    assert r.code == 0, r
    r = run_aethr("run", "add .env support", cwd=git_repo)
    assert r.code == 0, r
    assert step_sections(r.out) == ["plan", "implement", "review"]


def test_show_prompt_calls_nothing_and_shows_every_step(cli, git_repo):
    assert cli("init", "plan-implement-review").code == 0
    r = cli("run", "--show-prompt", "add .env support")
    assert r.code == 0, r
    assert re.findall(r"^=== step (\d)/3: (\S+)", r.out, re.MULTILINE) == [
        ("1", "plan"), ("2", "implement"), ("3", "review")]
    assert step_sections(r.out) == []
    assert r.out.count("add .env support") == 3


@pytest.mark.parametrize("argv, env", [
    (["--live"], {}),
    (["--model", "openai:gpt-5.5"], {}),
    (["--model", "reviewer=openai:gpt-5.5"], {}),
    ([], {"AETHR_LIVE": "1"}),
    ([], {"AETHR_LIVE": "On"}),
    ([], {"AETHR_MODEL": "xai:grok-x"}),
], ids=["--live", "--model", "--model-role", "LIVE=1", "LIVE=On", "MODEL=x:y"])
def test_live_mode_without_a_key_stops_in_the_preflight(cli, git_repo, argv, env):
    make_changes(git_repo)
    r = cli("run", *argv, "review it", env=env)
    assert_nothing_ran(r)
    assert LIVE_REFUSED in r.err
    provider = "xai" if "AETHR_MODEL" in env else "openai"
    assert f"set {provider.upper()}_API_KEY" in r.err
    assert f"aethr auth login {provider}" in r.err


def test_live_mode_without_a_key_subprocess(run_aethr, git_repo):
    make_changes(git_repo)
    r = run_aethr("run", "--live", "review it", cwd=git_repo)
    assert_nothing_ran(r)
    assert LIVE_REFUSED in r.err
    r = run_aethr("run", "review it", cwd=git_repo, env={"AETHR_MODEL": "xai:grok-x"})
    assert_nothing_ran(r)
    assert LIVE_REFUSED in r.err


def test_live_show_prompt_is_allowed(cli, git_repo):
    r = cli("run", "--live", "--show-prompt", "x")
    assert r.code == 0, r
    assert "=== step 1/1: review (reviewer) -> openai:gpt-5.5 ===" in r.out
    r = cli("run", "--show-prompt", "x", env={"AETHR_MODEL": "anthropic:claude-sonnet-5"})
    assert r.code == 0, r
    assert "-> anthropic:claude-sonnet-5 ===" in r.out
    r = cli("run", "--show-prompt", "x")
    assert "-> mock (would call openai:gpt-5.5) ===" in r.out


@pytest.mark.parametrize("value", ["maybe", "2"])
def test_bad_aethr_live_names_the_variable(cli, git_repo, value):
    r = cli("run", "x", env={"AETHR_LIVE": value})
    assert_nothing_ran(r)
    error = [line for line in r.err.splitlines() if line.startswith("aethr: error:")]
    assert error and "AETHR_LIVE" in error[0], r


def test_bad_aethr_live_subprocess(run_aethr, git_repo):
    r = run_aethr("run", "x", cwd=git_repo, env={"AETHR_LIVE": "maybe"})
    assert_nothing_ran(r)
    assert "AETHR_LIVE" in r.err


@pytest.mark.parametrize("value", ["0", "No", ""])
def test_false_aethr_live_is_mock(cli, git_repo, value):
    make_changes(git_repo)
    r = cli("run", "x", env={"AETHR_LIVE": value})
    assert r.code == 0, r
    assert step_sections(r.out) == ["review"]
    assert "mock (would call" in r.err


def test_bad_aethr_debug_is_a_usage_error(cli, git_repo):
    # SPEC §2: one parser reads every boolean variable (AETHR_LIVE, AETHR_DEBUG, …);
    # anything but the listed values is a usage error (exit 2).
    make_changes(git_repo)
    r = cli("run", "x", env={"AETHR_DEBUG": "maybe"})
    assert_nothing_ran(r)
    assert "AETHR_DEBUG" in r.err


def test_preset_run_shows_the_init_command_that_saves_it(cli, git_repo):
    # SPEC §9 (workflow promotion): a successful run started with --preset shows the one
    # `aethr init …` command that saves that setup as .aethr.yaml.
    make_changes(git_repo)
    r = cli("run", "--preset", "docs-sync", "sync the docs")
    assert r.code == 0, r
    assert "aethr init docs-sync" in r.err


# -- cmd_init -------------------------------------------------------------------------------

def test_init_list_shows_every_preset_with_its_description(cli):
    r = cli("init", "--list")
    assert r.code == 0, r
    lines = r.out.splitlines()
    assert len(lines) == len(PRESET_NAMES), r.out
    for name in PRESET_NAMES:
        description = aethr.load_workflow(preset=name).description
        assert description, name
        row = [line for line in lines if line.split()[0] == name]
        assert len(row) == 1, (name, r.out)
        assert row[0].split(None, 1)[1].strip() == description.strip()
    assert not Path(".aethr.yaml").exists()


def test_init_list_subprocess(run_aethr, tmp_path):
    r = run_aethr("init", "--list", cwd=tmp_path)
    assert r.code == 0, r
    assert [line.split()[0] for line in r.out.splitlines()] == sorted(PRESET_NAMES)


def test_init_without_preset_lists_them_and_exits_2(cli):
    r = cli("init")
    assert r.code == 2, r
    assert r.out == ""
    for name in PRESET_NAMES:
        assert name in r.err
    hint = [line for line in r.err.splitlines() if line.startswith("aethr: hint:")]
    assert hint and "aethr init NAME" in hint[0], r.err
    assert not Path(".aethr.yaml").exists()


def test_init_without_preset_subprocess(run_aethr, tmp_path):
    r = run_aethr("init", cwd=tmp_path)
    assert r.code == 2 and r.out == "", r
    assert "aethr init NAME" in r.err and "plan-implement-review" in r.err


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_init_writes_the_preset(cli, tmp_path, monkeypatch, name):
    where = tmp_path / "project"
    where.mkdir()
    monkeypatch.chdir(where)
    r = cli("init", name)
    assert r.code == 0, r
    assert r.out == ""
    written = (where / ".aethr.yaml").read_bytes()
    assert written == (ROOT / "presets" / f"{name}.yaml").read_bytes()
    assert written.decode("utf-8") == aethr.PRESETS[name]
    assert sorted(os.listdir(where)) == [".aethr.yaml"]


def test_init_writes_in_the_current_directory(cli, git_repo, monkeypatch):
    monkeypatch.chdir(git_repo / "src")
    r = cli("init", "custom")
    assert r.code == 0, r
    assert (git_repo / "src" / ".aethr.yaml").exists()
    assert not (git_repo / ".aethr.yaml").exists()


def test_init_subprocess(run_aethr, tmp_path):
    r = run_aethr("init", "docs-sync", cwd=tmp_path)
    assert r.code == 0, r
    assert (tmp_path / ".aethr.yaml").read_bytes() == (ROOT / "presets" /
                                                       "docs-sync.yaml").read_bytes()


def test_init_refuses_to_overwrite(cli, tmp_path):
    target = Path(".aethr.yaml")
    original = b"# mine, hand-written\r\nworkflow: mine\r\n\xc3\xa9\r\n"
    target.write_bytes(original)
    os.utime(target, (1_000_000_000, 1_000_000_000))
    r = cli("init", "custom")
    assert r.code == 2, r
    assert r.out == ""
    hint = [line for line in r.err.splitlines() if line.startswith("aethr: hint:")]
    assert hint and "--force" in hint[0], r.err
    assert target.read_bytes() == original
    assert target.stat().st_mtime == 1_000_000_000


def test_init_force_overwrites(cli):
    Path(".aethr.yaml").write_text("workflow: mine\n")
    r = cli("init", "custom", "--force")
    assert r.code == 0, r
    assert Path(".aethr.yaml").read_text() == aethr.PRESETS["custom"]


def test_init_overwrite_subprocess(run_aethr, tmp_path):
    (tmp_path / ".aethr.yaml").write_text("workflow: mine\n")
    r = run_aethr("init", "custom", cwd=tmp_path)
    assert r.code == 2 and r.out == "", r
    assert "--force" in r.err
    assert (tmp_path / ".aethr.yaml").read_text() == "workflow: mine\n"
    r = run_aethr("init", "--force", "custom", cwd=tmp_path)
    assert r.code == 0, r
    assert (tmp_path / ".aethr.yaml").read_text() == aethr.PRESETS["custom"]


def test_init_unknown_preset_did_you_mean(cli, run_aethr, tmp_path):
    for r in (cli("init", "plan-implement-reveiw"),
              run_aethr("init", "plan-implement-reveiw", cwd=tmp_path)):
        assert r.code == 2 and r.out == "", r
        assert "did you mean 'plan-implement-review'?" in r.err
        assert "Traceback" not in r.err
    assert not Path(".aethr.yaml").exists()
    assert not (tmp_path / ".aethr.yaml").exists()


def _models_of_written(path: str = ".aethr.yaml") -> dict[str, str | None]:
    workflow = aethr.load_workflow(path)
    return {step.id: aethr.resolve_model(workflow, step) for step in workflow.steps}


def test_init_model_pins_every_role(cli):
    assert aethr.load_workflow(preset="custom").steps[1].model    # a step with its own model:
    r = cli("init", "custom", "--model", "openai:x")
    assert r.code == 0, r
    assert _models_of_written() == {"work": "openai:x", "review": "openai:x"}
    workflow = aethr.load_workflow(".aethr.yaml")
    for role in workflow.roles:
        assert workflow.models.get(role) == "openai:x", role


def test_init_model_for_one_role(cli):
    original = _models_of_preset("custom")
    r = cli("init", "custom", "--model", "reviewer=anthropic:claude-sonnet-5")
    assert r.code == 0, r
    assert _models_of_written() == dict(original, review="anthropic:claude-sonnet-5")
    assert original["work"] != "anthropic:claude-sonnet-5"


def _models_of_preset(name: str) -> dict[str, str | None]:
    workflow = aethr.load_workflow(preset=name)
    return {step.id: aethr.resolve_model(workflow, step) for step in workflow.steps}


def test_init_model_all_then_one_role(cli):
    r = cli("init", "plan-implement-review", "--model", "openai:x",
            "--model", "reviewer=xai:grok-4.6")
    assert r.code == 0, r
    assert _models_of_written() == {"plan": "openai:x", "implement": "openai:x",
                                    "review": "xai:grok-4.6"}


def test_init_model_with_a_colon_in_the_name(cli):
    r = cli("init", "custom", "--model", "ollama:qwen3:8b")
    assert r.code == 0, r
    assert set(_models_of_written().values()) == {"ollama:qwen3:8b"}


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_init_with_models_still_passes_check(cli, tmp_path, monkeypatch, name):
    where = tmp_path / name
    where.mkdir()
    monkeypatch.chdir(where)
    r = cli("init", name, "--model", "anthropic:claude-sonnet-5")
    assert r.code == 0, r
    r = cli("check")
    assert r.code == 0, r
    assert "Traceback" not in r.err
    # every model step now resolves to the pinned model
    workflow = aethr.load_workflow(".aethr.yaml")
    for step in workflow.steps:
        assert aethr.resolve_model(workflow, step) == "anthropic:claude-sonnet-5"


def test_init_model_unknown_role(cli):
    r = cli("init", "custom", "--model", "nobody=x:y")
    assert r.code == 2 and r.out == "", r
    assert "nobody" in r.err
    assert any(line.startswith("aethr: hint:") for line in r.err.splitlines()), r.err
    assert not Path(".aethr.yaml").exists()
    r = cli("init", "custom", "--model", "reviwer=openai:x")
    assert r.code == 2, r
    assert "did you mean 'reviewer'?" in r.err
    assert not Path(".aethr.yaml").exists()


@pytest.mark.parametrize("value", ["gpt-5.5", "openai:", ":gpt", "=openai:x"])
def test_init_model_malformed(cli, value):
    r = cli("init", "custom", "--model", value)
    assert r.code == 2 and r.out == "", r
    assert "Traceback" not in r.err
    assert not Path(".aethr.yaml").exists()


def test_init_model_subprocess(run_aethr, tmp_path):
    r = run_aethr("init", "custom", "--model", "reviewer=anthropic:claude-sonnet-5",
                  cwd=tmp_path)
    assert r.code == 0, r
    assert _models_of_written(str(tmp_path / ".aethr.yaml"))["review"] == \
        "anthropic:claude-sonnet-5"
    r = run_aethr("check", cwd=tmp_path)
    assert r.code == 0, r
    assert "anthropic:claude-sonnet-5" in r.out
    r = run_aethr("init", "custom", "--force", "--model", "nobody=x:y", cwd=tmp_path)
    assert r.code == 2 and "aethr: hint:" in r.err, r


# -- cmd_check --------------------------------------------------------------------------------

def test_check_prints_the_summary(cli, git_repo):
    assert cli("init", "plan-implement-review").code == 0
    r = cli("check")
    assert r.code == 0, r
    assert "Traceback" not in r.err
    lines = r.out.splitlines()
    assert any("plan-implement-review" in line for line in lines[:1]), r.out
    workflow = aethr.load_workflow(".aethr.yaml")
    for step in workflow.steps:
        model = aethr.resolve_model(workflow, step)
        # an OpenCode step may show the model in OpenCode's form (provider/model)
        shown = (model, model.replace(":", "/", 1))
        context = ", ".join(step.context) or "no context"
        row = [line for line in lines
               if re.search(rf"\b{re.escape(step.id)}\b", line) and step.role in line
               and any(form in line for form in shown)]
        assert len(row) == 1, (step.id, r.out)
        assert context in row[0], (step.id, row[0])
    loop = [line for line in lines if "repeat" in line]
    assert len(loop) == 1, r.out
    assert "implement" in loop[0] and "3" in loop[0] and "review status" in loop[0]
    assert any(line.startswith("mode") and "mock" in line for line in lines), r.out


def test_check_until_contains_loop_line(cli, git_repo):
    (git_repo / ".aethr.yaml").write_bytes((ROOT / "examples" / "docs-sync.yaml").read_bytes())
    r = cli("check")
    assert r.code == 0, r
    loop = [line for line in r.out.splitlines() if "repeat" in line]
    assert len(loop) == 1 and "DOCS-OK" in loop[0] and "update-docs" in loop[0], r.out
    assert "ollama:qwen3:8b" in r.out and "xai:grok-4.6" in r.out


def test_check_subprocess(run_aethr, git_repo):
    r = run_aethr("init", "plan-implement-review", cwd=git_repo)
    assert r.code == 0, r
    r = run_aethr("check", cwd=git_repo)
    assert r.code == 0, r
    for word in ("plan-implement-review", "plan", "implement", "review", "planner",
                 "implementer", "reviewer", "openai:gpt-5.5", "latest_diff", "mock"):
        assert word in r.out, word


BAD_WORKFLOW = """\
workflow: broken
roles:
  reviewer: Review it.
steps:
  - id: review
    role: reviewer
    histroy_visibility: all
  - id: second
    role: nobody
"""


def test_check_invalid_workflow(cli, git_repo):
    (git_repo / ".aethr.yaml").write_text(BAD_WORKFLOW)
    r = cli("check")
    assert r.code == 2, r
    assert r.out == ""
    problems = [line for line in r.err.splitlines() if re.match(r"\.aethr\.yaml:\d+:\d+: ", line)]
    assert len(problems) == 2, r.err
    unknown = [line for line in problems if line.startswith(".aethr.yaml:7:5: ")]
    assert unknown and "histroy_visibility" in unknown[0], r.err
    assert "did you mean 'history_visibility'?" in r.err
    assert any("nobody" in line for line in problems), r.err
    assert r.err.rstrip("\n").splitlines()[-1] == "aethr: error: 2 problems in .aethr.yaml"
    assert "Traceback" not in r.err


def test_invalid_workflow_runs_nothing(cli, git_repo, run_aethr):
    (git_repo / ".aethr.yaml").write_text(BAD_WORKFLOW)
    for r in (cli("run", "x"), run_aethr("check", cwd=git_repo)):
        assert_nothing_ran(r)
        assert "aethr: error: 2 problems in .aethr.yaml" in r.err


def test_check_preflight_unknown_revision(cli, git_repo):
    (git_repo / ".aethr.yaml").write_text(reader_workflow("pr", "git_diff:origin/main"))
    r = cli("check")
    assert r.code == 2 and r.out == "", r
    assert "origin/main" in r.err
    assert "Traceback" not in r.err


# -- cmd_version --------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [["version"], ["--version"], ["--no-color", "version"],
                                  ["version", "--no-color"]])
def test_version(cli, argv):
    r = cli(*argv)
    assert r.code == 0, r
    assert r.out == VERSION_LINE
    assert re.fullmatch(r"aethr \d+\.\d+\.\d+\n", r.out)
    assert r.err == ""


def test_version_subprocess(run_aethr, tmp_path):
    for argv in (["version"], ["--version"]):
        r = run_aethr(*argv, cwd=tmp_path)
        assert (r.code, r.out, r.err) == (0, VERSION_LINE, ""), r


# -- main: errors and bugs ------------------------------------------------------------------

MISTAKES = {
    "unknown command": (["frobnicate"], {}),
    "unknown preset": (["init", "nope"], {}),
    "bad AETHR_LIVE": (["run", "x"], {"AETHR_LIVE": "maybe"}),
    "live mode": (["run", "--live", "x"], {}),
    "empty task": (["run", ""], {}),
    "missing workflow": (["check", "--workflow", "missing.yaml"], {}),
    "unknown role": (["init", "custom", "--model", "nobody=x:y"], {}),
}


@pytest.mark.parametrize("argv, env", MISTAKES.values(), ids=list(MISTAKES))
def test_mistakes_never_print_a_traceback(cli, git_repo, argv, env):
    r = cli(*argv, env=env)
    assert r.code == 2, r
    assert "Traceback" not in r.err
    assert "aethr: error:" in r.err or "error:" in r.err


def test_mistake_error_lines(cli, git_repo):
    r = cli("init", "nope")
    assert r.err.splitlines()[0] == "aethr: error: unknown preset 'nope'"
    assert all(line.startswith(("aethr: error: ", "aethr: hint: "))
               for line in r.err.splitlines()), r.err


def test_aethr_debug_shows_the_traceback_of_an_expected_error(cli, git_repo):
    r = cli("init", "nope", env={"AETHR_DEBUG": "1"})
    assert r.code == 2, r
    assert "Traceback (most recent call last)" in r.err
    assert "aethr: error: unknown preset 'nope'" in r.err
    r = cli("run", "x", env={"AETHR_DEBUG": "yes", "AETHR_LIVE": "maybe"})
    assert r.code == 2, r
    assert "Traceback" in r.err
    r = cli("init", "nope", env={"AETHR_DEBUG": "0"})
    assert r.code == 2 and "Traceback" not in r.err, r


def test_expected_errors_subprocess(run_aethr, git_repo):
    r = run_aethr("init", "nope", cwd=git_repo)
    assert r.code == 2 and "Traceback" not in r.err, r
    r = run_aethr("init", "nope", cwd=git_repo, env={"AETHR_DEBUG": "1"})
    assert r.code == 2, r
    assert "Traceback (most recent call last)" in r.err
    assert "aethr: error: unknown preset 'nope'" in r.err


def test_unexpected_exception_is_a_bug(cli, monkeypatch):
    calls = []

    def broken(args, term):
        calls.append(args)
        raise RuntimeError("kaboom in the version command")

    monkeypatch.setattr(aethr, "cmd_check", broken)
    r = cli("check")
    assert calls, "the patched command was not the one run"
    assert r.code == 70, r
    assert "Traceback (most recent call last)" in r.err
    assert "RuntimeError: kaboom in the version command" in r.err
    last = r.err.rstrip("\n").splitlines()[-1]
    assert "bug" in last and "report" in last, r.err
    assert r.out == ""


def test_unexpected_exception_subprocess(tmp_path):
    code = textwrap.dedent(f"""\
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        import aethr
        def broken(args, term):
            raise RuntimeError("kaboom in a subprocess")
        aethr.cmd_check = broken
        sys.exit(aethr.main(["check"]))
        """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 70, proc
    assert "Traceback (most recent call last)" in proc.stderr
    assert "RuntimeError: kaboom in a subprocess" in proc.stderr
    assert "report" in proc.stderr.rstrip("\n").splitlines()[-1]
    assert proc.stdout == ""


# -- hostile or mistaken input found in review ----------------------------------------------

def test_task_bytes_that_are_not_utf8_never_crash(run_aethr, git_repo):
    make_changes(git_repo)
    proc = subprocess.run([sys.executable, str(AETHR_PY), "run", "--show-prompt", b"fix \xff it"],
                          cwd=git_repo, capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert b"Traceback" not in proc.stderr
    assert "fix \ufffd it" in proc.stdout.decode("utf-8")
    proc = subprocess.run([sys.executable, str(AETHR_PY), "run", "-"], cwd=git_repo,
                          input=b"review \xff\xfe this\n", capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert b"Traceback" not in proc.stderr


def test_file_names_that_are_not_utf8_never_crash(cli, git_repo):
    name = os.fsdecode(b"n\xffame.py")
    (git_repo / name).write_text("x = 1\n")
    (git_repo / ".aethr.yaml").write_text(reader_workflow("g", "glob:*.py"))
    r = cli("run", "--show-prompt", "look")
    assert r.code == 0, r
    assert "n\ufffdame.py" in r.out


@pytest.mark.parametrize("argv, env, where", [
    (["--model", "bogus:m"], {}, "--model"),
    (["--model", "reviewer=bogus:m"], {}, "--model"),
    ([], {"AETHR_MODEL": "bogus:z"}, "AETHR_MODEL"),
], ids=["--model", "--model-role", "AETHR_MODEL"])
def test_unknown_provider_in_an_override_is_always_an_error(cli, git_repo, argv, env, where):
    make_changes(git_repo)
    r = cli("run", "--show-prompt", *argv, "review it", env=env)
    assert_nothing_ran(r)
    assert f"aethr: error: {where}: unknown provider 'bogus'" in r.err


def test_model_env_without_provider_and_check(cli, git_repo):
    r = cli("check", env={"AETHR_MODEL": "garbage"})
    assert r.code == 2 and "AETHR_MODEL='garbage' is not provider:model" in r.err, r
    r = cli("check", env={"AETHR_MODEL": "bogus:z"})
    assert r.code == 2 and "unknown provider 'bogus'" in r.err, r


def test_init_with_an_unknown_provider_writes_nothing(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = cli("init", "review-existing-diff", "--model", "bogus:m")
    assert r.code == 2, r
    assert "--model: unknown provider 'bogus'" in r.err
    assert not (tmp_path / ".aethr.yaml").exists()


def test_a_deleted_current_directory_is_a_usage_error(cli, tmp_path, monkeypatch):
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    for argv in (["run", "x"], ["check"]):
        r = cli(*argv)
        assert r.code == 2, r
        assert "the current directory no longer exists" in r.err
        assert "Traceback" not in r.err


# -- closed standard descriptors (`2>&-`, `<&-`, `>&-`) --------------------------------------

@pytest.mark.parametrize("closed", ["2>&-", "<&- 2>&-", "<&- >/dev/null 2>&-"])
def test_closed_standard_descriptors_are_dev_null(git_repo, closed):
    """As in git: a closed 0, 1 or 2 is /dev/null, so the run neither fails nor loses its git
    output (a pipe opened for git must not land on the child's stdout or stderr)."""
    make_changes(git_repo)
    script = f'"{sys.executable}" "{AETHR_PY}" run --show-prompt review {closed}; echo "rc=$?"'
    proc = subprocess.run(["sh", "-c", script], cwd=git_repo, capture_output=True, text=True,
                          timeout=60)
    assert proc.stdout.rstrip().endswith("rc=0"), proc.stdout
    if ">/dev/null" not in closed:
        assert "src/app.py" in proc.stdout and "notes.txt" in proc.stdout


@pytest.mark.parametrize("closed", [(2,), (0, 1), (0, 1, 2)], ids=repr)
def test_git_with_closed_descriptors_in_the_caller(git_repo, tmp_path, closed):
    """Through the Python API, in a process whose standard descriptors are closed (so the
    pipes for git would get their numbers): git's output and its error message still come
    back through their own pipes."""
    report = tmp_path / "report.txt"
    code = (
        "import os, sys\n"
        f"for fd in {closed!r}:\n"
        "    os.close(fd)\n"
        "import aethr\n"
        "env = dict(os.environ)\n"
        "out = aethr._git(['rev-parse', '--show-toplevel'], os.getcwd(), env)[0]\n"
        "try:\n"
        "    aethr._git(['rev-parse', '--verify', 'no-such-rev'], os.getcwd(), env)\n"
        "except aethr.GitError as exc:\n"
        "    message = exc.message\n"
        "with open(sys.argv[1], 'w') as f:\n"
        "    f.write(out.decode().strip() + '\\n' + message + '\\n')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(report)], cwd=git_repo,
                          capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 0, proc.stderr
    top, message = report.read_text().splitlines()
    assert os.path.samefile(top, git_repo)
    assert message == "git rev-parse failed: fatal: Needed a single revision"

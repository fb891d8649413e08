"""The fast path of the command line (SPEC §12): plain `run` and `check` command lines are
parsed without argparse. argparse stays the definition and the judge: whatever the fast path
accepts must mean exactly what argparse makes of it, and whatever argparse would refuse (or
answer with help) must go to argparse."""
from __future__ import annotations

import io
import random

import pytest

import aethr

#: Words a command line is made of in the equivalence test: every option of run and check,
#: in both spellings, values (also ones that start with '-'), help, '--' and strays.
WORDS = (
    "--show-prompt", "--live", "--json", "--verbose", "--force", "--workflow", "--preset",
    "--resume-checkpoint", "--model", "--no-color", "--workflow=w.yaml", "--preset=custom",
    "--model=reviewer=openai:m", "--model=", "--resume-checkpoint=cp.json", "--live=1",
    "--show", "--list", "-h", "--help", "--", "-", "-1", "-x y", "", "x", "fix the bug",
    "openai:gpt-5.5", "w.yaml", "--bogus", "run", "check", "login",
)

#: Everyday command lines: the fast path must take each of them.
EVERYDAY = (
    ["run", "review my current changes"],
    ["run", "--show-prompt", "review", "my", "changes"],
    ["run", "fix", "--live", "it", "--model", "openai:gpt-5.5"],
    ["--no-color", "run", "--preset", "plan-implement-review", "add", "tests"],
    ["run", "--json", "--verbose", "--workflow=ci.yaml", "-"],
    ["run", "--resume-checkpoint", ".aethr/checkpoint.json", "--force"],
    ["run"],
    ["check"],
    ["check", "--live", "--workflow", "other.yaml"],
    ["check", "--preset", "custom", "--no-color"],
)


def _argparse(argv: list[str]):
    """What argparse makes of argv: its namespace as a dict, or "exit STATUS"."""
    term = aethr.Term(out=io.StringIO(), err=io.StringIO(), environ={})
    saved = aethr._quick_args
    aethr._quick_args = lambda argv: None
    try:
        return vars(aethr._parse_args(list(argv), term))
    except aethr._Exit as exc:
        return f"exit {exc.status}"
    finally:
        aethr._quick_args = saved


@pytest.mark.parametrize("name", sorted(aethr._QUICK))
def test_quick_table_is_build_parser(name):
    """Each option of the command, its kind and its positional, as argparse defines them."""
    kinds = {"_StoreTrueAction": "flag", "_StoreAction": "value", "_AppendAction": "append"}
    _, subs = aethr.build_parser(aethr.Term(out=io.StringIO(), err=io.StringIO(), environ={}))
    options, positionals = {}, []
    for action in subs[name]._actions:
        if not action.option_strings:
            positionals.append((action.dest, action.nargs))
        elif action.dest not in ("help", "no_color"):
            (option,) = action.option_strings
            options[option] = kinds[type(action).__name__]
    table, positional = aethr._QUICK[name]
    assert table == options
    assert positionals == ([(positional, "*")] if positional else [])


@pytest.mark.parametrize("argv", EVERYDAY, ids=" ".join)
def test_everyday_command_lines_take_the_fast_path(argv):
    quick = aethr._quick_args(list(argv))
    assert quick is not None
    assert vars(quick) == _argparse(argv)


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--help"],
        ["run", "--", "-not-an-option"],
        ["run", "--workflow", "a.yaml", "--preset", "custom"],
        ["run", "--workflow"],
        ["run", "--workflow", "--no-color"],
        ["run", "--live=yes"],
        ["run", "--show", "x"],
        ["run", "-1"],
        ["check", "extra"],
        ["init", "custom"],
        ["auth", "status"],
        ["--help"],
        [],
    ],
    ids=repr,
)
def test_anything_else_goes_to_argparse(argv):
    assert aethr._quick_args(list(argv)) is None


def test_fast_path_means_what_argparse_means():
    """20,000 random command lines: each one the fast path takes, argparse parses the same."""
    rng = random.Random(20261127)
    taken = 0
    for _ in range(20_000):
        argv = [rng.choice(["run", "run", "check", "--no-color", "init", "auth"])]
        argv += [rng.choice(WORDS) for _ in range(rng.randint(0, 6))]
        quick = aethr._quick_args(list(argv))
        if quick is not None:
            taken += 1
            assert vars(quick) == _argparse(argv), argv
    assert taken > 2_000    # the comparison really ran, on many command lines


def test_fast_path_result_runs(cli, git_repo):
    """The fast path's result drives the command like argparse's (cmd_check here)."""
    proc = cli("check", "--preset", "review-existing-diff", "--no-color")
    assert proc.code == 0, proc.err
    assert "review-existing-diff" in proc.out

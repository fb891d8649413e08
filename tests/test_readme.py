"""The README's commands work: every `aethr …` / `python3 aethr.py …` command shown in README.md
runs for real (`python3 aethr.py` in place of `aethr`) in a temporary git repository with
uncommitted changes, and exits with the status the README gives it.

Fenced code blocks are run block by block, each in a fresh repository, commands in order (the
quick start's `init` is what its `check` and `run` see). Inline code spans that are commands run
on their own. Synopsis lines (`aethr [--no-color] init [PRESET] …`) are checked against the
command's --help: exit 0, and every option the synopsis names is in the help."""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import AETHR_PY, ROOT, make_repo

README = ROOT / "README.md"
PROGS = (("python3", "aethr.py"), ("aethr",))
FIRST_SCREEN = 25
SETUP_COMMANDS = ('python3 aethr.py run "review my current changes"', "make test")

#: Commands the README says do not exit 0: (predicate on the arguments, status, the README's
#: own words for it, what stderr then says). The README's words are checked, so a rule goes
#: when the README stops saying so; the stderr text makes sure it is that refusal, not a typo.
DOCUMENTED_STATUS = [
    (lambda a: a[:1] == ["init"] and all(w in ("--force", "--no-color") for w in a[1:]),
     2, "`init` with no preset lists them and exits 2", "aethr init NAME"),
    (lambda a: a[:1] == ["run"] and "--show-prompt" not in a and "--help" not in a
     and "--" not in a and ("--live" in a or "--model" in a),
     2, "Without a key, a live run stops before the first step (exit 2)", "no API key for"),
    (lambda a: a[:2] == ["auth", "login"] and "--key-stdin" not in a and "--help" not in a,
     2, "without a terminal and without `--key-stdin` it refuses (exit 2)",
     "no terminal to ask for the key"),
]


# -- reading the README ---------------------------------------------------------------------

def fenced_blocks(text: str) -> list[tuple[int, str, list[tuple[int, str]]]]:
    """(first line number, info string, [(line number, line)]) for each ``` block."""
    blocks, current = [], None
    for number, line in enumerate(text.splitlines(), 1):
        if current is None and line.lstrip().startswith("```"):
            current = (number, line.strip().strip("`").strip(), [])
        elif current is not None and line.strip() == "```":
            blocks.append(current)
            current = None
        elif current is not None:
            current[2].append((number, line))
    assert current is None, f"README.md: unclosed code block at line {current[0]}"
    return blocks


def inline_spans(text: str) -> list[tuple[int, str]]:
    """(line number, code) for each `inline code` span outside fenced blocks."""
    fenced = {n for _, _, lines in fenced_blocks(text) for n, _ in lines}
    spans = []
    for number, line in enumerate(text.splitlines(), 1):
        if number in fenced or line.lstrip().startswith("```"):
            continue
        for found in re.finditer(r"(`+)(.+?)\1", line):
            spans.append((number, found.group(2).strip()))
    return spans


def is_aethr(command: str) -> bool:
    return command.startswith(("aethr ", "python3 aethr.py ")) or command in (
        "aethr", "python3 aethr.py")


def logical_lines(lines: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Join continuation lines (indented, or after a trailing backslash) to their command."""
    out: list[list] = []
    joining = False
    for number, line in lines:
        if out and (joining or (line[:1].isspace() and line.strip() and is_aethr(out[-1][1]))):
            out[-1][1] = out[-1][1].rstrip("\\").rstrip() + " " + line.strip()
        else:
            out.append([number, line.strip()])
        joining = line.rstrip().endswith("\\")
    return [(n, s) for n, s in out]


#: A metavariable of a synopsis: PRESET, TASK, ROLE=MODEL, `...]`.
METAVAR = re.compile(r"^[A-Z][A-Z_]+(=[A-Z_]+)?\]?$|\.\.\.")


def is_placeholder(command: str) -> bool:
    """`python3 aethr.py …`, `aethr run … > review.md`, `aethr X.Y.Z`: text, not a command."""
    return "…" in command or bool(re.search(r"\b[A-Z]\.[A-Z]\.[A-Z]\b", command))


def alternatives(command: str) -> list[str]:
    """`aethr version (also: aethr --version)` and `aethr --help, aethr COMMAND --help` are
    each two commands."""
    also = re.search(r"\(also:\s*(.+?)\)", command)
    if also:
        return alternatives(command[:also.start()].strip()) + alternatives(also.group(1))
    return [part.strip() for part in re.split(r",\s+(?=aethr |python3 aethr\.py )", command)]


def split_prog(command: str) -> list[str]:
    words = shlex.split(command, comments=True)
    for prog in PROGS:
        if tuple(words[:len(prog)]) == prog:
            return words[len(prog):]
    raise AssertionError(f"not an aethr command: {command!r}")


def is_synopsis(args: list[str]) -> bool:
    """`aethr [--no-color] init [PRESET] …`: a grammar, not a command (a `|` outside brackets
    is a pipe, and a command with a pipe must fail below rather than pass as a synopsis)."""
    return any(w.startswith("[") or METAVAR.search(w) for w in args)


def synopsis_name(args: list[str]) -> str:
    """The command a synopsis describes: the first word that is not an option or in []."""
    depth = 0
    for word in args:
        if depth == 0 and not word.startswith(("-", "[")):
            return word
        depth += word.count("[") - word.count("]")
    return ""


def readme_units() -> list[tuple[str, list[tuple[int, str]]]]:
    """Groups of (line number, command) to run in one fresh repository, in order."""
    text = README.read_text(encoding="utf-8")
    units = []
    for start, info, lines in fenced_blocks(text):
        if info.lower() in ("yaml", "yml", "json", "toml"):
            continue
        commands = [(n, c) for n, c in logical_lines(lines)
                    if is_aethr(c) and not is_placeholder(c)]
        if commands:
            units.append((f"block@{start}", commands))
    for number, code in inline_spans(text):
        if is_aethr(code) and not is_placeholder(code):
            units.append((f"inline@{number}", [(number, code)]))
    return units


def synopsis_commands() -> list[str]:
    """The commands the README's synopsis block names (for `aethr COMMAND --help`)."""
    names = []
    for _, commands in readme_units():
        alts = [split_prog(alt) for _, command in commands for alt in alternatives(command)]
        if not any(is_synopsis(args) for args in alts):
            continue
        for args in alts:
            name = synopsis_name(args)
            if name and not METAVAR.search(name) and name not in names:
                names.append(name)
    return names


# -- running the commands -------------------------------------------------------------------

def fresh_repo(base: Path) -> Path:
    """A git repository with one commit and uncommitted changes (modified, new)."""
    repo = make_repo(base / f"repo{len(list(base.glob('repo*')))}")
    (repo / "src" / "app.py").write_text("def add(a, b):\n    return a + b + 0\n")
    (repo / "src" / "util.py").write_text("def sub(a, b):\n    return a - b\n")
    return repo


def expected_status(args: list[str], readme_words: str) -> tuple[int, str]:
    """The exit status the README gives these arguments, and a text stderr must then hold."""
    for applies, status, words, says in DOCUMENTED_STATUS:
        if applies(args):
            assert words in readme_words, f"the README no longer says {words!r}"
            return status, says
    return 0, ""


def run_cli(args: list[str], repo: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(AETHR_PY), *args], cwd=repo, input="",
                          capture_output=True, text=True, encoding="utf-8", timeout=60)


def plan(command: str) -> list[tuple[list[str], int, str]]:
    """What running one README command means: [(argv, expected status, what to check)]."""
    steps = []
    for alt in alternatives(command):
        args = split_prog(alt)
        if not is_synopsis(args):
            bad = [w for w in args if w in ("|", "<", ";", "&&", "||", "&")]
            assert not bad, f"{command!r}: shell syntax {bad} that this test cannot run"
            if ">" in args:                     # `> review.md`: stdout is captured anyway
                at = args.index(">")
                args = args[:at] + args[at + 2:]
            steps.append((args, None, "run"))
            continue
        name = synopsis_name(args)
        names = synopsis_commands() if METAVAR.search(name) else [name]
        options = sorted(set(re.findall(r"--[a-z][a-z-]*", alt)) - {"--help"})
        for n in names:
            steps.append(([n, "--help"], 0, "help:" + " ".join(options)))
            if "[--no-color]" in alt.split(n)[0]:
                steps.append((["--no-color", n, "--help"], 0, "help:"))
    return steps


UNITS = readme_units()


@pytest.mark.parametrize("commands", [c for _, c in UNITS], ids=[name for name, _ in UNITS])
def test_readme_command_works(commands, tmp_path):
    readme_words = " ".join(README.read_text(encoding="utf-8").split())
    repo = fresh_repo(tmp_path)
    ran = 0
    for line, command in commands:
        if "examples/" in command and not (repo / "examples").exists():
            shutil.copytree(ROOT / "examples", repo / "examples")
        for args, status, what in plan(command):
            says = ""
            if status is None:
                status, says = expected_status(args, readme_words)
            proc = run_cli(args, repo)
            where = f"README.md:{line}: {command}\n  ran: aethr {shlex.join(args)}"
            assert proc.returncode == status, (
                f"{where}\n  exit {proc.returncode}, the README implies {status}\n"
                f"  stdout: {proc.stdout[-1500:]}\n  stderr: {proc.stderr[-1500:]}")
            assert "Traceback" not in proc.stderr, f"{where}\n{proc.stderr}"
            assert says in proc.stderr, f"{where}\n  stderr lacks {says!r}: {proc.stderr}"
            if what.startswith("help:"):
                assert proc.stdout.startswith("usage: aethr"), f"{where}\n{proc.stdout}"
                missing = [o for o in what[5:].split() if o not in proc.stdout]
                assert not missing, f"{where}\n  the help does not know {missing}"
            ran += 1
    assert ran, f"nothing to run in {commands}"


def test_readme_commands_were_found():
    """The extraction sees the README's commands (a broken parser would test nothing)."""
    found = [c for _, commands in UNITS for _, c in commands]
    for expected in (["python3", "aethr.py", "run", "review my current changes"],
                     ["python3", "aethr.py", "init", "--list"],
                     ["python3", "aethr.py", "init", "plan-implement-review"],
                     ["python3", "aethr.py", "check"],
                     ["aethr", "check", "--workflow", "examples/add-tests.yaml"]):
        assert any(shlex.split(c, comments=True) == expected for c in found), expected
    assert synopsis_commands() == ["init", "run", "check", "auth", "version"]
    # the quick start runs in one repository, in order: init before check and run
    quick = [commands for _, commands in UNITS
             if any("init plan-implement-review" in c for _, c in commands)]
    assert len(quick) == 1
    order = [split_prog(c)[0] for _, c in quick[0]]
    assert order.index("init") < order.index("check") < order.index("run")


def test_readme_first_screen_has_the_setup_commands():
    lines = README.read_text(encoding="utf-8").splitlines()[:FIRST_SCREEN]
    in_block, commands = False, []
    for line in lines:
        if line.strip().startswith("```"):
            in_block = not in_block
        elif in_block and line.strip():
            commands.append(shlex.split(line, comments=True))
    for setup in SETUP_COMMANDS:
        assert any(line.lstrip().startswith(setup) for line in lines), setup
        assert shlex.split(setup) in commands, (setup, commands)


def test_readme_first_command_reviews_the_changes(tmp_path):
    """The first thing a reader runs does what the README promises: a mock review of the
    uncommitted changes, no .aethr.yaml needed."""
    repo = fresh_repo(tmp_path)
    proc = run_cli(["run", "review my current changes"], repo)
    assert proc.returncode == 0, proc
    assert "## review" in proc.stdout
    assert "src/app.py" in proc.stdout and "src/util.py" in proc.stdout
    assert "mock" in proc.stderr and "review-existing-diff" in proc.stderr

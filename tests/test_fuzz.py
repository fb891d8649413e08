"""Issue 5, hostile input: no traceback anywhere (SPEC §2 "a user mistake never prints a Python
traceback"), §3 (validation before anything runs, every problem at PATH:LINE:COL), §4 (context
safety: paths, symlinks, FIFOs, caps, binary and non-UTF-8 files), §10 (a checkpoint that
cannot be written is a warning; the step's own error and exit 3 are kept).

Property tests use the conftest's Hypothesis profile: "ci" (fixed seed, bounded examples) by
default, "long" under `make fuzz` (HYPOTHESIS_PROFILE=long). Every test here is named
test_fuzz_* so that `make fuzz` (pytest -k fuzz) runs all of them, and each property test prints
how many inputs it tried (`pytest -s tests/test_fuzz.py`)."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import pytest
import yaml
from conftest import AETHR_PY, ROOT, git, mutate
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from loopback import LoopbackServer, Reply

import aethr

#: The profile conftest loaded ("ci" unless HYPOTHESIS_PROFILE names another).
PROFILE = settings()


HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
          HealthCheck.large_base_example]


def budget(share: float) -> settings:
    """The loaded profile with `share` of its examples: CLI-heavy tests run fewer."""
    return settings(PROFILE, max_examples=max(5, int(PROFILE.max_examples * share)),
                    suppress_health_check=HEALTH)


class Tally:
    """Counts the inputs a property test tried and prints the count, pass or fail."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.n = 0

    def __enter__(self) -> Tally:
        return self

    def __exit__(self, kind: object, *rest: object) -> None:
        outcome = "none produced a traceback" if kind is None else "FAILED"
        print(f"\n[fuzz] {self.name}: {self.n} inputs tried; {outcome}")


def no_traceback(res) -> None:
    """A user mistake never prints a traceback (SPEC §2): no exit 70, no bug report."""
    assert res.code != 70, res
    assert "Traceback (most recent call last)" not in res.err, res
    assert "this is a bug in aethr" not in res.err, res


def lone_surrogates(text: str) -> list[str]:
    return [c for c in text if 0xD800 <= ord(c) <= 0xDFFF]


def shown(task: str) -> str:
    """The task as the prompt shows it: bytes escaped from argv decoded as UTF-8 with
    replacement, any other lone surrogate as U+FFFD, stripped (SPEC §2: the words joined by
    spaces, never interpreted; issue 5: undecodable bytes shown as U+FFFD)."""
    raw = bytearray()
    for ch in task.strip():
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:
            raw.append(code - 0xDC00)
        elif 0xD800 <= code <= 0xDFFF:
            raw += "\ufffd".encode()
        else:
            raw += ch.encode("utf-8")
    return raw.decode("utf-8", "replace").strip()


def yaml_str(text: str) -> str:
    """`text` as a YAML double-quoted scalar (JSON's escapes are YAML's too)."""
    return json.dumps(text)


def reader_workflow(sources: list[str], model: str = "openai:gpt-5.5") -> str:
    items = "".join(f"      - {yaml_str(s)}\n" for s in sources)
    context = f"    context:\n{items}" if sources else ""
    return (f"workflow: fuzz\nroles:\n  reader: Read the context.\nmodels:\n  default: {model}\n"
            f"steps:\n  - id: read\n    role: reader\n{context}")


def run_subprocess(argv: list, *, cwd, env: dict | None = None, stdin: bytes = b"",
                   timeout: float = 30) -> tuple[int, bytes, bytes]:
    """`python3 aethr.py ARGV` with bytes in and out (argv may hold undecodable bytes)."""
    environ = dict(os.environ, LC_ALL="C.UTF-8")
    environ.update(env or {})
    proc = subprocess.run([sys.executable, str(AETHR_PY), *argv], cwd=cwd, env=environ,
                          input=stdin, capture_output=True, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


class Res:
    """A subprocess result shaped like conftest's Result (text decoded strictly)."""

    def __init__(self, code: int, out: bytes, err: bytes) -> None:
        self.code = code
        self.out = out.decode("utf-8")      # stdout is written as UTF-8 (SPEC §1)
        self.err = err.decode("utf-8")

    def __repr__(self) -> str:
        return f"Res(code={self.code!r}, out={self.out[-2000:]!r}, err={self.err[-2000:]!r})"


# == The workflow file: random YAML-ish text ===================================================

TOKENS = [
    "workflow", "roles", "models", "steps", "id", "role", "backend", "model", "context",
    "repeat", "back_to", "until_review_pass", "until_contains", "max_iterations", "reviewer",
    "openai:gpt-5.5", "git_diff", "file:README.md", "glob:**/*.py", "cmd:", ":", ": ", "- ",
    "-", "\n", "\n  ", "\n    ", "\n  - ", "  ", " ", "#", " # c", "[", "]", "{", "}", ",", "'",
    '"', "|", "|-", ">+", "&a", "*a", "!t", "? ", "%YAML 1.2", "---", "...", "<<", "\t", "\r",
    "\r\n", "\ufeff", "\\", "\\x4", "\\u00e9", "\\ud800", "~", "null", "true", "yes", "1",
    "3.10", "0x1F", "0o7", ".inf", "1e999", "9" * 4400, "\x00", "\x85", "\u2028", "\u00e9",
    "\U0001F600", "\ud800", "\udcff",
]
YAMLISH = st.lists(st.sampled_from(TOKENS) | st.integers(0, 0x10FFFF).map(chr),
                   max_size=80).map("".join)
CONFIGS = [text for _, text in sorted(aethr.PRESETS.items())] + [
    p.read_text(encoding="utf-8") for p in sorted((ROOT / "examples").glob("*.yaml"))]


MUTATED = st.builds(mutate, st.sampled_from(CONFIGS),
                    st.lists(st.tuples(st.sampled_from(["insert", "delete", "replace"]),
                                       st.floats(0, 1, exclude_max=True),
                                       st.sampled_from(TOKENS)), min_size=1, max_size=5))


def check_problems(exc: aethr.ConfigError, text: str, display: str) -> None:
    """Every problem has a path, a position inside the text and a message (SPEC §3)."""
    assert exc.problems, exc
    body = text[1:] if text.startswith("\ufeff") else text
    lines = body.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    for path, line, column, message, hint in exc.problems:
        assert path == display
        assert isinstance(line, int) and isinstance(column, int)
        assert 1 <= line <= len(lines), (line, column, message)
        assert column >= 1, (line, column, message)
        assert isinstance(message, str) and message.strip()
        assert hint is None or (isinstance(hint, str) and hint.strip())
    n = len(exc.problems)
    assert exc.message == f"{n} problem{'s' if n != 1 else ''} in {display}"


def check_workflow(wf: aethr.Workflow) -> None:
    """A Workflow that loaded is whole: what validation promises holds (SPEC §3)."""
    assert wf.steps
    ids = [s.id for s in wf.steps]
    assert len(set(ids)) == len(ids) and all(isinstance(i, str) and i for i in ids)
    for i, step in enumerate(wf.steps):
        assert step.index == i
        assert step.role in wf.roles and wf.roles[step.role].strip()
        assert step.backend in ("model", "opencode")
        assert step.history_visibility in ("all", "latest", "summary", "none")
        assert isinstance(step.timeout, int) and step.timeout >= 1
        assert all(isinstance(c, str) and c == c.strip() and c for c in step.context)
        if step.repeat is not None:
            assert ids.index(step.repeat.back_to) <= i
            assert 1 <= step.repeat.max_iterations <= 50
            assert step.repeat.until_review_pass != (step.repeat.until_contains is not None)
    for role, model in wf.models.items():
        assert role == "default" or role in wf.roles
        provider, name = aethr.split_model(model)
        assert provider and name


def load_or_config_error(text: str, display: str = ".aethr.yaml") -> aethr.Workflow | None:
    try:
        wf = aethr.load_workflow(display, text=text)
    except aethr.ConfigError as exc:    # YAMLError included
        check_problems(exc, text, display)
        return None
    check_workflow(wf)
    return wf


def test_fuzz_yaml_text_loads_or_raises_config_error():
    with Tally("test_fuzz_yaml_text_loads_or_raises_config_error") as tally:

        @budget(1)
        @given(YAMLISH | MUTATED)
        def check(text):
            tally.n += 1
            load_or_config_error(text)

        check()


def splice(text: str, junk: bytes, where: float) -> bytes:
    data = text.encode("utf-8")
    at = int(where * len(data))
    return data[:at] + junk + data[at:]


def test_fuzz_workflow_file_bytes(tmp_path):
    # The same, from a file's raw bytes: any bytes are a ConfigError or a Workflow.
    path = tmp_path / ".aethr.yaml"
    raw = (st.binary(max_size=200)
           | MUTATED.map(lambda t: t.encode("utf-8", "surrogatepass"))
           | st.builds(splice, st.sampled_from(CONFIGS), st.binary(min_size=1, max_size=4),
                       st.floats(0, 1, exclude_max=True)))
    with Tally("test_fuzz_workflow_file_bytes") as tally:

        @budget(1)
        @given(raw)
        def check(data):
            tally.n += 1
            path.write_bytes(data)
            try:
                wf = aethr.load_workflow(path)
            except aethr.ConfigError as exc:
                for _, line, column, message, _ in exc.problems:
                    assert line >= 1 and column >= 1 and message
                assert exc.message
            else:
                check_workflow(wf)

        check()


# == The workflow file: well-formed structures through validation ===============================

KEYS = ["workflow", "description", "roles", "models", "steps", "id", "role", "backend", "model",
        "context", "repeat", "back_to", "until_review_pass", "until_contains", "max_iterations",
        "history_visibility", "timeout", "max_tokens", "unsafe_permissions", "default",
        "planner", "reviewer", "implementer", "histroy_visibility", "step"]
VALUES = ["model", "opencode", "agent", "planner", "reviewer", "implementer", "ghost",
          "openai:gpt-5.5", "anthropic:claude-sonnet-5", "ollama:qwen3:8b", "nosuch:model",
          "gpt-5", "openai:", "all", "latest", "summary", "none", "everything", "git_diff",
          "latest_diff", "latest_diff:x", "file:README.md", "file:missing.md", "glob:**/*.md",
          "glob:src/*.py", "glob:[", "glob:**a", "git_diff:HEAD", "git_diff:", "file:",
          "file:../x", "file:/etc/passwd", "glob:C:/x", "cmd:", "bogus", "plan", "build",
          "review", "DONE", "Review status: pass", "yes", "3.10", "", " ", "two words",
          "Review status: revise"]
KEY = st.sampled_from(KEYS) | st.text("abcdefgh_", min_size=1, max_size=6)
SCALAR = (st.none() | st.booleans() | st.integers(-3, 60) | st.integers()
          | st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(VALUES)
          | st.text("abc:/*.- _\u00e9", max_size=10))
TREE = st.recursive(SCALAR, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(KEY, inner, max_size=5), max_leaves=20)


def either(good: st.SearchStrategy) -> st.SearchStrategy:
    """Mostly plausible values, sometimes anything."""
    return good | good | TREE


ROLE = st.sampled_from(["planner", "reviewer", "implementer", "default", "ghost"])
STEP_ID = st.sampled_from(["plan", "build", "review", "two words", "a\tb"])
REPEAT = st.fixed_dictionaries({}, optional={
    "back_to": either(STEP_ID),
    "until_review_pass": either(st.booleans()),
    "until_contains": either(st.sampled_from(["DONE", "", "Review status: revise"])),
    "max_iterations": either(st.integers(-1, 60)),
    "maxiterations": st.integers(1, 3)})
STEP = st.fixed_dictionaries({"id": either(STEP_ID), "role": either(ROLE)}, optional={
    "backend": either(st.sampled_from(["model", "opencode", "agent"])),
    "model": either(st.sampled_from(VALUES[7:13])),
    "context": either(st.lists(st.sampled_from(VALUES[17:37]) | SCALAR, max_size=4)),
    "repeat": either(REPEAT),
    "history_visibility": either(st.sampled_from(VALUES[13:18])),
    "timeout": either(st.integers(-1, 4000)),
    "max_tokens": either(st.integers(-1, 9000)),
    "unsafe_permissions": either(st.booleans() | st.just("yes"))})
WORKFLOW = st.tuples(
    st.fixed_dictionaries({"steps": either(st.lists(STEP, max_size=4))}, optional={
        "workflow": either(st.text("abc-", min_size=1, max_size=8)),
        "description": SCALAR,
        "roles": either(st.dictionaries(ROLE, either(st.sampled_from(
            ["Plan it.", "Review it. End with Review status: pass or revise.", "Build it.",
             "", None])), max_size=4)),
        "models": either(st.dictionaries(ROLE, either(st.sampled_from(VALUES[7:13])),
                                         max_size=3))}),
    st.dictionaries(KEY, TREE, max_size=2)).map(lambda t: {**t[0], **t[1]} if t[1] else t[0])
SAFE_SOURCES = ["git_diff", "git_diff:HEAD", "latest_diff", "file:README.md", "file:missing.md",
                "glob:**/*.md", "glob:src/*.py", "glob:nothing/*"]
GOOD_MODELS = ["openai:gpt-5.5", "anthropic:claude-sonnet-5", "ollama:qwen3:8b", "xai:grok-4"]


@st.composite
def plausible_workflow(draw) -> dict:
    """A workflow as people write them: valid more often than not (loops may overlap)."""
    roles = draw(st.lists(st.sampled_from(["planner", "reviewer", "implementer"]), min_size=1,
                          max_size=3, unique=True))
    doc: dict = {"workflow": draw(st.sampled_from(["fz", "review-flow"])), "roles": {
        r: draw(st.sampled_from(["Plan it.", "Build it.", "Review it. End with Review status: "
                                 "pass or revise."])) for r in roles}}
    if draw(st.booleans()):
        doc["models"] = draw(st.dictionaries(st.sampled_from(roles + ["default"]),
                                             st.sampled_from(GOOD_MODELS), max_size=2))
    ids = draw(st.lists(st.sampled_from(["plan", "build", "review", "check", "fix"]),
                        min_size=1, max_size=4, unique=True))
    steps = []
    for i, sid in enumerate(ids):
        step: dict = {"id": sid, "role": draw(st.sampled_from(roles))}
        backend = draw(st.sampled_from([None, "model", "opencode"]))
        if backend:
            step["backend"] = backend
        maybe = lambda: draw(st.integers(0, 3)) == 0  # noqa: E731
        if maybe():
            step["model"] = draw(st.sampled_from(GOOD_MODELS))
        if draw(st.booleans()):
            step["context"] = draw(st.lists(st.sampled_from(SAFE_SOURCES), max_size=3))
        if maybe():
            step["history_visibility"] = draw(st.sampled_from(["all", "latest", "summary",
                                                               "none"]))
        if maybe():
            step["timeout"] = draw(st.integers(1, 4000))
        if maybe() and backend != "opencode":
            step["max_tokens"] = draw(st.integers(1, 9000))
        if maybe() and backend == "opencode":
            step["unsafe_permissions"] = draw(st.booleans())
        if draw(st.integers(0, 2)) == 0:
            until = draw(st.sampled_from([{"until_review_pass": True},
                                          {"until_contains": "DONE"}]))
            step["repeat"] = {"back_to": draw(st.sampled_from(ids[:i + 1])), **until,
                              "max_iterations": draw(st.integers(1, 50))}
        steps.append(step)
    doc["steps"] = steps
    return doc


def _places(node: object, out: list) -> list:
    """Every (container, key or index) in a document, depth first."""
    if isinstance(node, dict):
        for key in list(node):
            out.append((node, key))
            _places(node[key], out)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            out.append((node, i))
            _places(item, out)
    return out


def poke(doc: dict, where: list[int], junk: object, op: str) -> dict:
    """`doc` with one place changed: a value replaced by junk, a key dropped or added."""
    for w in where:
        places = _places(doc, [])
        if not places:
            return doc
        node, key = places[w % len(places)]
        if op == "replace" or isinstance(node, list):
            node[key] = junk
        elif op == "delete":
            del node[key]
        elif isinstance(node[key], dict):
            node[key][str(junk)[:12] or "x"] = junk
    return doc


POKED = st.builds(poke, plausible_workflow(), st.lists(st.integers(0, 10 ** 6), min_size=1,
                                                       max_size=2),
                  SCALAR | TREE, st.sampled_from(["replace", "delete", "add"]))
DOCUMENT = plausible_workflow() | POKED | POKED | WORKFLOW | TREE


def test_fuzz_structures_dumped_by_pyyaml(git_repo):
    # A workflow that validates also runs (mock mode): every step once, since the mock
    # answers whatever a loop asks for (SPEC §6).
    env = dict(os.environ)
    valid = 0
    with Tally("test_fuzz_structures_dumped_by_pyyaml") as tally:

        @budget(1)
        @given(DOCUMENT)
        @example({"workflow": "a", "roles": True, "models": {"planner": "openai:gpt-5.5"},
                  "steps": []})         # found by `make fuzz`
        def check(doc):
            nonlocal valid
            tally.n += 1
            text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=2 ** 30,
                                  default_flow_style=False)
            wf = load_or_config_error(text)
            if wf is None:
                return
            valid += 1
            if any(c.startswith("cmd:") for s in wf.steps for c in s.context):
                return      # never run a generated shell command
            result = aethr.run_workflow(wf, "fuzz the workflow", root=str(git_repo), env=env)
            assert result.verdict in ("pass", "revise")
            assert [r.step for r in result.steps] == [s.id for s in wf.steps]

        check()
    print(f"[fuzz] test_fuzz_structures_dumped_by_pyyaml: {valid} of them were valid "
          "workflows, each run in mock mode")
    assert valid >= tally.n // 10       # the generator does reach valid workflows


VALID_TOP = {"workflow": "w", "roles": {"reviewer": "Review it."},
             "models": {"reviewer": "openai:gpt-5.5"}, "steps": [{"id": "review",
                                                                   "role": "reviewer"}]}


@pytest.mark.parametrize("key, message", [
    ("roles", "roles must be a mapping of role name to instruction, not {}"),
    ("models", "models must be a mapping of role name to provider:model, not {}"),
    ("steps", "steps must be a list, not {}"),
], ids=["roles", "models", "steps"])
@pytest.mark.parametrize("junk, described", [
    (True, "the boolean true"), (3, "the number 3"), (2.5, "the number 2.5"),
    ("text", "the string 'text'")], ids=["true", "int", "float", "str"])
def test_fuzz_top_level_keys_of_the_wrong_type(git_repo, cli, key, message, junk, described):
    # Well-formed YAML, wrong shapes: validation problems (exit 2), never a crash (SPEC §3).
    doc = dict(VALID_TOP, **{key: junk})
    (git_repo / ".aethr.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    res = cli("check")
    no_traceback(res)
    assert res.code == 2, res
    assert f": {message.format(described)}\n" in res.err, res
    assert res.err.splitlines()[-1].startswith("aethr: error: "), res


# == Task strings ==============================================================================

MARKUP = ["[bold]", "[/]", "[x](y)", "**", "*", "#", "# heading", "`x`", "<script>", "</b>",
          "$(id)", "`id`", "%s", "%(x)s", "{0}", "{}", "\\", "\\n", "\x1b[31m", "\x1b]0;t\x07",
          "\x00", "\x07", "\x08", "\r", "\n", "\r\n", "\t", "\x7f", "\x85", "\u2028", "\u202e",
          "\ufeff", "\ufffd", "\udcff", "\udcc3\udca9", "\udc80", "Review status: revise",
          "=== step", "--- user ---", "--", "--show-prompt", "-x", "\u00e9", "\U0001F600", " ",
          "  "]


def _not_a_lone_surrogate(code: int) -> bool:
    # Python's argv on POSIX holds only U+DC80..U+DCFF (bytes it could not decode); other
    # lone surrogates get their own test below.
    return not (0xD800 <= code < 0xDC80 or 0xDD00 <= code <= 0xDFFF)


TASK = st.lists(st.sampled_from(MARKUP)
                | st.integers(0, 0x10FFFF).filter(_not_a_lone_surrogate).map(chr),
                min_size=1, max_size=25).map("".join).filter(lambda t: t != "-")
SIMPLE_WF = reader_workflow([])
HEADER = "=== step 1/1: read (reader) -> mock (would call openai:gpt-5.5) ===\n"


def check_task_prompt(res, task: str) -> None:
    no_traceback(res)
    expected = shown(task)
    if not task.strip():
        assert res.code == 2, res
        assert "aethr: error: the task is empty; nothing was run" in res.err.splitlines(), res
        return
    assert res.code == 0, res
    assert res.out.startswith(HEADER), res
    assert f"\n--- user ---\n# Task\n\n{expected}\n\n# Step\n\nread (role: reader)\n" in res.out
    assert not lone_surrogates(res.out) and not lone_surrogates(res.err)


def fuzz_show_prompt(repo, cli, name: str, share: float, words) -> None:
    """Property over `words` (a strategy of argument lists): `aethr run --show-prompt -- WORDS`
    in `repo` shows them, joined by spaces, as the task (check_task_prompt)."""
    (repo / ".aethr.yaml").write_text(SIMPLE_WF)
    with Tally(name) as tally:

        @budget(share)
        @given(words)
        def check(argv):
            tally.n += 1
            check_task_prompt(cli("run", "--show-prompt", "--", *argv), " ".join(argv))

        check()


def test_fuzz_task_strings_show_prompt(git_repo, cli):
    fuzz_show_prompt(git_repo, cli, "test_fuzz_task_strings_show_prompt", 1,
                     TASK.map(lambda task: [task]))


def test_fuzz_task_with_lone_surrogates(git_repo, cli):
    # A Windows argv (UTF-16) can hold a lone surrogate: shown as U+FFFD, never a crash.
    piece = st.tuples(st.integers(0xD800, 0xDFFF).map(chr), st.text("ab [*]#", min_size=1,
                                                                     max_size=3))
    fuzz_show_prompt(git_repo, cli, "test_fuzz_task_with_lone_surrogates", 0.25,
                     st.lists(piece, min_size=1, max_size=5).map(
                         lambda ps: ["fix " + "".join(a + b for a, b in ps)]))


def test_fuzz_task_words_are_joined_by_spaces(git_repo, cli):
    fuzz_show_prompt(git_repo, cli, "test_fuzz_task_words_are_joined_by_spaces", 0.25,
                     st.lists(TASK, min_size=2, max_size=4))


ARG_BYTES = [b"\xff", b"\xfe", b"\xc3", b"\xa9", b"\xed\xa0\x80", b"\xf4\x90\x80\x80",
             b"\xc0\xaf", b"\x80", b"caf\xe9", b"\x1b[2J", b"\r", b"\n", b"[x]", b"*", b"#",
             b"a", b" ", b"\xe2\x80\xae", b"\xef\xbb\xbf"]
ARG = (st.lists(st.sampled_from(ARG_BYTES), min_size=1, max_size=12).map(b"".join)
       | st.binary(min_size=1, max_size=30).map(lambda b: b.replace(b"\0", b"0"))
       ).filter(lambda b: b != b"-")


def test_fuzz_task_bytes_in_argv_subprocess(git_repo):
    # Undecodable bytes in argv (surrogate-escaped by Python) are shown as U+FFFD.
    (git_repo / ".aethr.yaml").write_text(SIMPLE_WF)
    with Tally("test_fuzz_task_bytes_in_argv_subprocess") as tally:

        @budget(0.06)
        @given(ARG)
        def check(arg):
            tally.n += 1
            res = Res(*run_subprocess(["run", "--show-prompt", "--", arg], cwd=git_repo))
            check_task_prompt(res, arg.decode("utf-8", "surrogateescape"))

        check()


def test_fuzz_task_of_100k_characters(git_repo, cli):
    (git_repo / ".aethr.yaml").write_text(SIMPLE_WF)
    with Tally("test_fuzz_task_of_100k_characters") as tally:

        @budget(0.03)
        @given(TASK.filter(lambda t: t.strip()))
        def check(unit):
            tally.n += 1
            task = (unit * (100_000 // len(unit) + 1))[:100_000]
            check_task_prompt(cli("run", "--show-prompt", "--", task), task)

        check()
    arg = (b"long task \xff [x] " * 7000)[:100_000]
    res = Res(*run_subprocess(["run", "--show-prompt", "--", arg], cwd=git_repo))
    check_task_prompt(res, arg.decode("utf-8", "surrogateescape"))


HOSTILE_TASKS = {
    "markup": "[bold]fix[/bold] the **parser** # now `rm -rf /` $(id) <b>x</b> {0} %s",
    "control": "fix\x00 the\x07 bug\x1b[31m red\x1b[0m\r\nnext\x08\x7f line\u202e",
    "escaped-bytes": "fix \udcff\udcfe and caf\udce9 here",
    "long": ("fix it " * 15000)[:100_000],
}


@pytest.mark.parametrize("kind", sorted(HOSTILE_TASKS))
def test_fuzz_hostile_tasks_in_full_mock_runs(git_repo, cli, kind):
    (git_repo / ".aethr.yaml").write_text(SIMPLE_WF)
    task = HOSTILE_TASKS[kind]
    res = cli("run", "--", task)
    no_traceback(res)
    assert res.code == 0, res
    assert res.out.startswith("## read\n\n[mock] No model was called."), res
    assert "aethr: 1 step run" in res.err and "verdict pass" in res.err
    assert not lone_surrogates(res.out + res.err)
    res = cli("run", "--json", "--", task)
    assert res.code == 0, res
    events = [json.loads(line) for line in res.out.splitlines()]
    assert [e["event"] for e in events] == ["run_start", "step_start", "step_end", "run_end"]


def test_fuzz_hostile_task_bytes_in_a_mock_run_subprocess(git_repo):
    (git_repo / ".aethr.yaml").write_text(SIMPLE_WF)
    code, out, err = run_subprocess(["run", "--", b"fix \xff\xfe [x] \x1b[2J # *b*"],
                                    cwd=git_repo)
    res = Res(code, out, err)
    no_traceback(res)
    assert res.code == 0, res
    assert res.out.startswith("## read\n\n[mock] No model was called."), res
    code, out, err = run_subprocess(["run", "--show-prompt", "-"], cwd=git_repo,
                                    stdin=b"fix \xff\xfe from stdin\n")
    res = Res(code, out, err)
    no_traceback(res)
    assert res.code == 0, res
    assert "# Task\n\nfix \ufffd\ufffd from stdin\n\n# Step" in res.out


# == Context sources: hostile trees ============================================================

#: File names made of the glob alphabet, so that generated patterns match something.
GLOB_NAMES = ["a", ".a", "a-a", "[a]", "!a", "-", "a.a", "aa/a", "aa/.a/a", "aa/-/a.a", "?"]


def hostile_tree(root: Path, outside: Path, *, repo: bool) -> Path:
    """A project holding every kind of file a context source must survive."""
    root.mkdir()
    (root / "README.md").write_text("# Demo\n")
    for name in GLOB_NAMES:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(f"content of {name}\n")
    (root / "big.txt").write_bytes(b"0123456789abcde\n" * 312_500)      # 5,000,000 bytes
    (root / "bin.dat").write_bytes(b"\x00\x01\x02binary\x00" * 100)
    (root / "latin1.txt").write_bytes(b"caf\xe9 cr\xe8me\n")
    (root / "empty.txt").write_bytes(b"")
    (root / "dir").mkdir()
    (root / "dir" / "inner.md").write_text("inner\n")
    (root / ".env").write_text("HIDDEN_VALUE=never-shown-value\n")
    (root / os.fsdecode(b"n\xffm.txt")).write_text("non-UTF-8 name\n")
    os.symlink(outside, root / "out.txt")
    os.symlink("loop", root / "loop")
    os.symlink(".env", root / "env-link.txt")
    os.symlink(outside.parent, root / "outdir")
    os.mkfifo(root / "fifo")
    if repo:
        git(root, "init", "-q", "-b", "main")
        (root / ".gitignore").write_text(".env\n")
        git(root, "add", "-A")
        git(root, "commit", "-q", "-m", "hostile")
    return root


@pytest.fixture
def outside(tmp_path):
    path = tmp_path / "elsewhere" / "outside.txt"
    path.parent.mkdir()
    path.write_text("OUTSIDE-THE-ROOT-CONTENT\n")
    return path


@pytest.fixture
def trees(tmp_path, outside):
    return {True: hostile_tree(tmp_path / "repo", outside, repo=True),
            False: hostile_tree(tmp_path / "plain", outside, repo=False)}


FILE_CASES = [
    ("file:out.txt", "[file:out.txt \u2014 outside the project root, not read]"),
    ("file:outdir/outside.txt", "[file:outdir/outside.txt \u2014 outside the project root, "
                                "not read]"),
    ("file:fifo", "[file:fifo \u2014 not a regular file, not read]"),
    ("file:loop", "[file:loop \u2014 not a regular file, not read]"),
    ("file:bin.dat", "[file:bin.dat \u2014 binary file, not shown]"),
    ("file:latin1.txt", "[file:latin1.txt \u2014 not UTF-8 text, not shown]"),
    ("file:empty.txt", "[file:empty.txt \u2014 empty file]"),
    ("file:dir", "[file:dir \u2014 a directory, not a file]"),
    ("file:.env", "[file:.env \u2014 may hold secrets, never read]"),
    ("file:env-link.txt", "[file:env-link.txt \u2014 may hold secrets, never read]"),
    ("file:nope.md", "[file:nope.md \u2014 not found]"),
    ("file:big.txt", "[\u2026 big.txt: 5.0 MB, first 64 KiB shown]"),
]


@pytest.mark.parametrize("repo", [True, False], ids=["repo", "plain-dir"])
def test_fuzz_file_sources_on_a_hostile_tree(trees, repo):
    # A subprocess with a timeout: a FIFO that were opened would block forever.
    root = trees[repo]
    (root / "wf.yaml").write_text(reader_workflow([src for src, _ in FILE_CASES]
                                                  + ["glob:**", "glob:*.txt"]))
    res = Res(*run_subprocess(["run", "--show-prompt", "--workflow", "wf.yaml", "t"], cwd=root,
                              timeout=20))
    no_traceback(res)
    assert res.code == 0, res
    for _, line in FILE_CASES:
        assert line in res.out, line
    big = res.out.split("# Context: file:big.txt")[1].split("# Context:")[0]
    assert 64 * 1024 <= len(big.encode()) < 66 * 1024
    assert "OUTSIDE-THE-ROOT-CONTENT" not in res.out
    assert "never-shown-value" not in res.out
    glob_all = res.out.split("# Context: glob:**")[1].split("# Context:")[0]
    assert "### README.md\n\n# Demo\n" in glob_all
    assert "[out.txt \u2014 outside the project root, not read]" in glob_all
    assert "### n\ufffdm.txt\n\nnon-UTF-8 name\n" in glob_all
    assert "[bin.dat \u2014 binary file, not shown]" in glob_all
    if not repo:        # git does not list FIFOs; a directory walk does
        assert "[fifo \u2014 not a regular file, not read]" in glob_all
    assert "[\u2026 big.txt: 5.0 MB, first 64 KiB shown]" in glob_all


@pytest.mark.parametrize("source, message", [
    ("file:../x", "file: path must stay inside the project root: '../x'"),
    ("file:a/../../x", "file: path must stay inside the project root: 'a/../../x'"),
    ("file:/etc/passwd", "file: path must be relative to the project root: '/etc/passwd'"),
    ("glob:/etc/*", "glob: path must be relative to the project root: '/etc/*'"),
    ("glob:../*", "glob: path must stay inside the project root: '../*'"),
    ("glob:**a", "bad glob pattern '**a': '**' must be a whole path component, as in "
                 "'src/**/x.py'"),
])
def test_fuzz_paths_out_of_the_root_are_validation_errors(git_repo, cli, source, message):
    (git_repo / ".aethr.yaml").write_text(reader_workflow([source]))
    res = cli("run", "--show-prompt", "t")
    no_traceback(res)
    assert res.code == 2, res
    assert res.err == (f".aethr.yaml:10:9: {message}\n"
                       "aethr: error: 1 problem in .aethr.yaml\n"), res
    assert res.out == ""


PATH_PARTS = ["..", ".", "a", "aa", "out.txt", "outdir", "fifo", "loop", "big.txt", "bin.dat",
              "dir", ".env", "env-link.txt", ".git", "", "~", "\\", "C:", " ", "\t", "\u00e9",
              "*", "n\ufffdm.txt", "#", ":", "HEAD"]


def test_fuzz_file_paths(trees, cli, monkeypatch):
    # file:PATH from hostile parts: a validation error, or a run that shows a block for it.
    with Tally("test_fuzz_file_paths") as tally:

        @budget(0.25)
        @given(st.booleans(), st.lists(st.sampled_from(PATH_PARTS), min_size=1, max_size=4))
        def check(repo, parts):
            tally.n += 1
            path = "/".join(parts)
            root = trees[repo]
            monkeypatch.chdir(root)
            text = reader_workflow([f"file:{path}"])
            try:
                aethr.load_workflow(".aethr.yaml", text=text)
            except aethr.ConfigError as exc:
                check_problems(exc, text, ".aethr.yaml")
                return
            (root / "fuzz.yaml").write_text(text)
            res = cli("run", "--show-prompt", "--workflow", "fuzz.yaml", "t")
            no_traceback(res)
            assert res.code == 0, res
            assert f"# Context: file:{path.rstrip()}" in res.out
            assert "OUTSIDE-THE-ROOT-CONTENT" not in res.out
            assert "never-shown-value" not in res.out

        check()


GLOB_ALPHABET = ["*", "**", "?", "[", "]", "!", "/", ".", "a", "-"]
#: A bracket expression from the same alphabet: `[!-a]`, `[]a]`, `[a--]`, `[!]`...
BRACKET = st.builds(lambda neg, body: f"[{neg}{body}]", st.sampled_from(["", "!"]),
                    st.lists(st.sampled_from(["a", "-", "]", "[", "!", ".", "*", "?", "--",
                                              "a-", "-a"]), max_size=4).map("".join))
PATTERN = st.lists(st.sampled_from(GLOB_ALPHABET) | BRACKET, max_size=8).map("".join)


def test_fuzz_glob_patterns(trees, cli, monkeypatch):
    # glob:PATTERN: validation rejects it (ConfigError), or the run succeeds (SPEC §4).
    ran = 0
    with Tally("test_fuzz_glob_patterns") as tally:

        @budget(0.5)
        @given(st.booleans(), PATTERN)
        def check(repo, pattern):
            nonlocal ran
            tally.n += 1
            root = trees[repo]
            monkeypatch.chdir(root)
            text = reader_workflow([f"glob:{pattern}"])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")     # test_fuzz_glob_patterns_warn_nothing
                try:
                    aethr.load_workflow(".aethr.yaml", text=text)
                except aethr.ConfigError as exc:
                    check_problems(exc, text, ".aethr.yaml")
                    assert all(p[3].startswith(("bad glob pattern", "glob: "))
                               for p in exc.problems), exc.problems
                    return
                ran += 1
                (root / "fuzz.yaml").write_text(text)
                res = cli("run", "--show-prompt", "--workflow", "fuzz.yaml", "t")
            no_traceback(res)
            assert res.code == 0, res
            block = res.out.split(f"# Context: glob:{pattern}", 1)[1]
            assert block.startswith((" (paths relative to the project root)\n\n",
                                     f"\n\n[glob:{pattern} \u2014 no file matches]"))
            assert "OUTSIDE-THE-ROOT-CONTENT" not in res.out
            assert "never-shown-value" not in res.out
            assert not lone_surrogates(res.out)

        check()
    print(f"[fuzz] test_fuzz_glob_patterns: {ran} patterns passed validation and ran")


def test_fuzz_glob_patterns_warn_nothing():
    # A pattern is either accepted or a validation error; Python's own warnings (re's
    # FutureWarning for "--" or "[[" in a class) are not Aethr's output (SPEC §2 errors).
    with Tally("test_fuzz_glob_patterns_warn_nothing") as tally:

        @budget(1)
        @given(PATTERN)
        @example("[*--?]")
        def check(pattern):
            tally.n += 1
            re.purge()      # re caches compiled patterns, and warns only when compiling
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    aethr.load_workflow(text=reader_workflow([f"glob:{pattern}"]))
                except aethr.ConfigError:
                    pass
            assert [str(w.message) for w in caught] == []

        check()


def test_fuzz_glob_pattern_warnings_reach_no_user_subprocess(git_repo):
    (git_repo / ".aethr.yaml").write_text(reader_workflow(["glob:[--a]*", "glob:[a--a]"]))
    res = Res(*run_subprocess(["check"], cwd=git_repo))
    no_traceback(res)
    assert "Warning" not in res.err, res
    assert all(line.startswith(("aethr: ", ".aethr.yaml:", "    hint: "))
               for line in res.err.splitlines()), res


COMPONENT = st.lists(st.sampled_from(["*", "?", "[", "]", "!", ".", "a", "-", "b"]) | BRACKET,
                     min_size=1, max_size=5).map("".join)
NAME_CHARS = ["a", "b", "-", ".", "!", "[", "]", "*", "?", "R", "0", "/", ",", "^", "~"]
NAME = st.lists(st.sampled_from(NAME_CHARS), min_size=1, max_size=5).map("".join)


def test_fuzz_glob_brackets_match_like_fnmatch():
    # Inside one path component, an accepted pattern means what fnmatch (POSIX glob) says:
    # `[!-a]` is "not - or a", `[a-]` is "a or -" (SPEC §4: *, ? and [...] in one component).
    with Tally("test_fuzz_glob_brackets_match_like_fnmatch") as tally:

        @budget(1)
        @given(COMPONENT, st.lists(NAME, min_size=1, max_size=8))
        @example("[!-a]*", ["README.md"])       # the cases people write, always tried
        @example("[!]]", ["]"])
        @example("[a-]", ["-"])
        def check(pattern, names):
            tally.n += 1
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    rx = aethr._glob_regex(pattern)
                except ValueError:
                    return
            for name in names + [c * k for c in NAME_CHARS if c != "/" for k in (1, 2)]:
                if "/" in name:
                    continue        # one path component
                assert bool(rx.match(name)) == fnmatch.fnmatchcase(name, pattern), (
                    pattern, name)

        check()


def test_fuzz_non_utf8_name_of_a_big_file_in_a_glob(git_repo, cli):
    # A file past the 64 KiB cap whose name is not UTF-8: the cut note names it with U+FFFD.
    (git_repo / os.fsdecode(b"big\xff.txt")).write_bytes(b"line\n" * 20_000)
    (git_repo / ".aethr.yaml").write_text(reader_workflow(["glob:*.txt"]))
    res = cli("run", "--show-prompt", "t")
    no_traceback(res)
    assert res.code == 0, res
    assert "### big\ufffd.txt\n\nline\n" in res.out
    assert "[\u2026 big\ufffd.txt: 98 KiB, first 64 KiB shown]" in res.out   # 100,000 bytes
    assert not lone_surrogates(res.out)
    res = Res(*run_subprocess(["run", "--show-prompt", "t"], cwd=git_repo))
    no_traceback(res)
    assert res.code == 0, res
    assert "[\u2026 big\ufffd.txt: 98 KiB, first 64 KiB shown]" in res.out   # 100,000 bytes


@pytest.mark.parametrize("source", ["file:a\x00b", "glob:a\x00b", "cmd:echo a\x00b",
                                    "git_diff:ma\x00in"])
def test_fuzz_nul_in_a_context_source(git_repo, cli, source):
    # A NUL cannot be in a path, an argument or a command line: a validation error or a
    # placeholder, never a crash.
    (git_repo / ".aethr.yaml").write_text(reader_workflow([source]))
    for argv in (("run", "--show-prompt", "t"), ("run", "t"), ("check",)):
        res = cli(*argv)
        no_traceback(res)
        assert res.code in (0, 2), res
        if res.code == 2:
            assert res.err.endswith(" in .aethr.yaml\n") or "nothing was run" in res.err, res


# == The workflow file itself: a directory, empty, binary, not UTF-8, a FIFO, a loop ===========

WORKFLOW_FILES = {
    "directory": (lambda p: p.mkdir(), ["aethr: error: .aethr.yaml is a directory, not a "
                                        "workflow file"]),
    "empty": (lambda p: p.write_bytes(b""), [".aethr.yaml:1:1: the workflow has no steps",
                                             "aethr: error: 1 problem in .aethr.yaml"]),
    "binary": (lambda p: p.write_bytes(b"\x00\x01\x02steps\x00"),
               ["aethr: error: 1 problem in .aethr.yaml"]),
    "not-utf8": (lambda p: p.write_bytes(b"workflow: caf\xe9\n"),
                 ["aethr: error: .aethr.yaml is not UTF-8 text (byte 14, line 1)"]),
    "symlink-loop": (lambda p: os.symlink(p.name, p), None),
    "dangling-symlink": (lambda p: os.symlink("nowhere.yaml", p),
                         ["aethr: error: workflow file not found: .aethr.yaml"]),
}


@pytest.mark.parametrize("kind", sorted(WORKFLOW_FILES))
def test_fuzz_hostile_workflow_file(git_repo, cli, kind):
    make, expected = WORKFLOW_FILES[kind]
    make(git_repo / ".aethr.yaml")
    results = [cli("run", "--show-prompt", "t"), cli("check"), cli("run", "t"),
               Res(*run_subprocess(["run", "--show-prompt", "t"], cwd=git_repo, timeout=15))]
    for res in results:
        no_traceback(res)
        assert res.code == 2, res
        assert res.out == ""
        # Hints are advice, worded freely; the problem and error lines are the contract.
        lines = [x for x in res.err.splitlines() if not x.startswith(("aethr: hint: ",
                                                                      "    hint: "))]
        if expected is not None:
            assert lines[-len(expected):] == expected, res
        else:
            assert lines[-1].startswith("aethr: error: cannot read .aethr.yaml: "), res


def feed_fifo(path: Path, data: bytes, deadline: float = 10.0) -> threading.Thread:
    """Write `data` into the FIFO once a reader opens it (gives up after `deadline` s)."""

    def write() -> None:
        stop = time.monotonic() + deadline
        while time.monotonic() < stop:
            try:
                fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:         # ENXIO: no reader yet
                time.sleep(0.01)
                continue
            os.set_blocking(fd, True)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread


def test_fuzz_workflow_file_that_is_a_fifo_does_not_hang(git_repo):
    # Nobody writes to these FIFOs: every command must answer (exit 2) within a bound.
    os.mkfifo(git_repo / ".aethr.yaml")
    os.mkfifo(git_repo / "pipe.yaml")
    commands = [["run", "--show-prompt", "t"], ["check"], ["run", "t"],
                ["check", "--workflow", "pipe.yaml"]]
    env = dict(os.environ, LC_ALL="C.UTF-8")
    procs = [subprocess.Popen([sys.executable, str(AETHR_PY), *argv], cwd=git_repo, env=env,
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) for argv in commands]
    deadline = time.monotonic() + 5
    hung = []
    for argv, proc in zip(commands, procs, strict=True):
        try:
            out, err = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            hung.append(" ".join(argv))
            continue
        res = Res(proc.returncode, out, err)
        no_traceback(res)
        assert res.code == 2, res
        [error] = [x for x in res.err.splitlines() if x.startswith("aethr: error: ")]
        assert ".aethr.yaml" in error or "pipe.yaml" in error, res
    assert hung == [], f"these hung on a FIFO nobody writes to: {hung}"


def test_fuzz_workflow_flag_on_a_written_fifo_and_a_directory(git_repo, cli):
    # A FIFO that is written to (as `--workflow <(generate-workflow)` gives) is read like a
    # file; a directory is a clear error.
    os.mkfifo(git_repo / "fed.yaml")
    writer = feed_fifo(git_repo / "fed.yaml", SIMPLE_WF.encode())
    res = Res(*run_subprocess(["check", "--workflow", "fed.yaml"], cwd=git_repo, timeout=15))
    writer.join(timeout=10)
    assert res.code == 0, res
    assert res.err.endswith("aethr: fed.yaml is valid\n"), res
    (git_repo / "dir.yaml").mkdir()
    res = cli("check", "--workflow", "dir.yaml")
    assert res.code == 2
    assert res.err == "aethr: error: dir.yaml is a directory, not a workflow file\n"


# == Checkpoints that cannot be written ========================================================

FAIL_WF = reader_workflow(["git_diff", "file:README.md"])
BOOM = {"error": {"message": "boom: the upstream failed", "type": "server_error"}}
STEP_ERROR = "aethr: error: step 'read' failed: openai: HTTP 500: boom: the upstream failed"


def live_env(server: LoopbackServer, **extra: str) -> dict[str, str]:
    return {"AETHR_LIVE": "1", "OPENAI_BASE_URL": server.url + "/v1",
            "OPENAI_API_KEY": "sk-fuzz-0123456789", "AETHR_MAX_RETRIES": "0", **extra}


def check_unwritten_checkpoint(res, tmpdir: Path) -> None:
    """Exit 3 with the step's own error, one warning about the checkpoint, no resume line,
    and no checkpoint file (not even an empty one) left behind (SPEC §10, issue 5)."""
    no_traceback(res)
    assert res.code == 3, res
    lines = res.err.splitlines()
    warning = [x for x in lines if x.startswith("aethr: warning: ") and "checkpoint" in x]
    assert len(warning) == 1, res
    assert STEP_ERROR in lines, res
    assert lines.index(warning[0]) < lines.index(STEP_ERROR)
    assert "to resume" not in res.err
    assert list(tmpdir.rglob("aethr-checkpoint-*")) == []


@pytest.mark.parametrize("json_mode", [False, True], ids=["text", "json"])
def test_fuzz_unusable_temp_dir_keeps_the_step_error(git_repo, cli, tmp_path, monkeypatch,
                                                     json_mode):
    # The temp directory is a regular file (what Python would fall back to is gone too).
    (git_repo / ".aethr.yaml").write_text(FAIL_WF)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file, not a directory\n")
    monkeypatch.setattr(tempfile, "tempdir", str(blocker))
    with LoopbackServer() as server:
        server.add(Reply.json(500, BOOM))
        res = cli("run", *(["--json"] if json_mode else []), "review", env=live_env(server))
    assert len(server.requests) == 1
    check_unwritten_checkpoint(res, tmp_path)
    assert str(blocker) in res.err
    if json_mode:
        end = json.loads(res.out.splitlines()[-1])
        assert end["event"] == "run_end" and end["verdict"] == "failed"
        assert end["checkpoint"] is None


def _small_files() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64))


def test_fuzz_full_temp_dir_subprocess(git_repo, tmp_path):
    # A temp directory that takes no more bytes (a full disk; RLIMIT_FSIZE stands in, since
    # root writes to read-only directories): the checkpoint fails, the step error stays.
    (git_repo / ".aethr.yaml").write_text(reader_workflow(["file:README.md"]))
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    environ = dict(os.environ, LC_ALL="C.UTF-8", PYTHONDONTWRITEBYTECODE="1", TMPDIR=str(tmpdir))
    with LoopbackServer() as server:
        server.add(Reply.json(500, BOOM))
        environ.update(live_env(server))
        proc = subprocess.run([sys.executable, str(AETHR_PY), "run", "review"], cwd=git_repo,
                              env=environ, capture_output=True, timeout=30,
                              preexec_fn=_small_files)
    assert len(server.requests) == 1
    check_unwritten_checkpoint(Res(proc.returncode, proc.stdout, proc.stderr), tmpdir)


def test_fuzz_non_utf8_project_root_checkpoint_and_resume(tmp_path):
    # A project directory whose name is not UTF-8: the checkpoint is written and resumes.
    root = Path(os.fsdecode(os.fsencode(str(tmp_path)) + b"/proj\xff"))
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    (root / "README.md").write_text("# Demo\n")
    (root / ".aethr.yaml").write_text(FAIL_WF)
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "initial")
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    answer = ('data: {"choices":[{"index":0,"delta":{"content":"Fine."},"finish_reason":null}]}'
              '\n\ndata: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
              "data: [DONE]\n\n")
    with LoopbackServer() as server:
        server.add(Reply.json(500, BOOM), Reply.sse(answer))
        env = live_env(server, TMPDIR=str(tmpdir))
        res = Res(*run_subprocess(["run", "review"], cwd=root, env=env))
        no_traceback(res)
        assert res.code == 3, res
        assert STEP_ERROR in res.err.splitlines()
        [checkpoint] = tmpdir.glob("aethr-checkpoint-*.json")
        assert f"aethr: to resume: aethr run --resume-checkpoint {checkpoint}" in res.err
        res = Res(*run_subprocess(["run", "--resume-checkpoint", str(checkpoint)], cwd=root,
                                  env=env))
        no_traceback(res)
        assert res.code == 0, res
        assert "Fine." in res.out
        assert not checkpoint.exists()

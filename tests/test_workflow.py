"""Section 5 of aethr.py: load and validate a workflow (SPEC §3, and the Models paragraph of §2).

Every validation rule is checked twice: through `aethr.load_workflow(text=...)` (the problem
tuples) and through `aethr check` on a `.aethr.yaml` in a real git repository (the exact
`PATH:LINE:COL: message` lines, the indented hints and the `N problems` summary, exit 2).
Positions are those of the offending key or value in the file.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
from conftest import ROOT, git

import aethr

WORKFLOW = ".aethr.yaml"
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
SIX_PRESETS = {
    "plan-implement-review",
    "review-existing-diff",
    "debug-failing-test",
    "add-tests",
    "docs-sync",
    "custom",
}


# -- helpers ----------------------------------------------------------------------------------

#: A valid workflow; `wf(...)` appends keys to its last step (`review`), from line 10 on, at
#: column 5 (so a value starts at column 5 + len(key) + 2).
HEAD = """\
workflow: demo
roles:
  planner: Plan it.
  reviewer: Review it.
steps:
  - id: plan
    role: planner
  - id: review
    role: reviewer
"""


def wf(*lines: str) -> str:
    """HEAD plus `lines` as keys of the `review` step (the first one on line 10)."""
    return HEAD + "".join(f"    {line}\n" for line in lines)


class Has:
    """A hint that must be present and contain every one of `parts`."""

    def __init__(self, *parts: str) -> None:
        self.parts = parts

    def check(self, hint: str | None) -> None:
        assert hint, f"expected a hint containing {self.parts!r}, got none"
        for part in self.parts:
            assert part in hint, f"hint {hint!r} lacks {part!r}"

    def __repr__(self) -> str:
        return f"Has{self.parts!r}"


def did_you_mean(word: str) -> Has:
    return Has("did you mean", f"'{word}'")


def load_problems(text: str, path: str = WORKFLOW) -> list[tuple]:
    with pytest.raises(aethr.ConfigError) as info:
        aethr.load_workflow(path, text=text)
    exc = info.value
    n = len(exc.problems)
    assert exc.message == f"{n} problem{'' if n == 1 else 's'} in {path}"
    assert exc.exit_code == 2
    return exc.problems


_PROBLEM_LINE = re.compile(r"(?P<path>.+?):(?P<line>\d+):(?P<col>\d+): (?P<msg>.*)\Z")


def parse_report(err: str) -> tuple[list[tuple], str]:
    """stderr of a failed check -> ([(path, line, col, message, hint)], last line)."""
    lines = err.splitlines()
    assert lines, "nothing on stderr"
    problems: list[list] = []
    for text in lines[:-1]:
        if text.startswith("    hint: "):
            assert problems and problems[-1][4] is None, f"stray hint line {text!r} in {err!r}"
            problems[-1][4] = text[len("    hint: ") :]
            continue
        m = _PROBLEM_LINE.match(text)
        assert m, f"not a PATH:LINE:COL: message line: {text!r}\n{err}"
        problems.append([m["path"], int(m["line"]), int(m["col"]), m["msg"], None])
    return [tuple(p) for p in problems], lines[-1]


def assert_problems(got: list[tuple], expected: list[tuple], path: str = WORKFLOW) -> None:
    """`expected`: (line, column, message, hint); hint None = not checked, a Has = must hold.

    A column of None is not checked (used where the offending value is absent)."""
    assert [(p[0], p[1], p[3]) for p in got] == [(path, e[0], e[2]) for e in expected], got
    for problem, (_, col, _, hint) in zip(got, expected, strict=True):
        if col is not None:
            assert problem[2] == col, f"column of {problem}: expected {col}"
        if hint is not None:
            hint.check(problem[4])


# -- the rules of SPEC §3, one case each -------------------------------------------------------

CONTEXT_CASES = [
    # (source, message, hint)
    ("git_dif", "unknown context source 'git_dif'", did_you_mean("git_diff")),
    ("lates_diff", "unknown context source 'lates_diff'", did_you_mean("latest_diff")),
    ("fle:README.md", "unknown context source 'fle:README.md'", did_you_mean("file")),
    ("file:", "file: needs an argument", None),
    ("file:/etc/passwd", "file: path must be relative to the project root: '/etc/passwd'", None),
    ("file:../secret.txt", "file: path must stay inside the project root: '../secret.txt'", None),
    (
        "file:docs/../../x.md",
        "file: path must stay inside the project root: 'docs/../../x.md'",
        None,
    ),
    ("glob:/etc/*", "glob: path must be relative to the project root: '/etc/*'", None),
    ("glob:../*.md", "glob: path must stay inside the project root: '../*.md'", None),
    (
        "glob:**a",
        "bad glob pattern '**a': '**' must be a whole path component, as in 'src/**/x.py'",
        None,
    ),
    (
        "glob:src/**a/*.py",
        "bad glob pattern 'src/**a/*.py': '**' must be a whole path component, as in 'src/**/x.py'",
        None,
    ),
    ("glob:[abc", "bad glob pattern '[abc': '[' without a closing ']'", None),
    ("latest_diff:x", "latest_diff takes no argument", None),
]

CASES = [
    # id, text, [(line, column, message, hint)]
    # -- unknown keys at every level, with did-you-mean
    (
        "top-key-misspelt",
        HEAD + "descripton: Demo.\n",
        [(10, 1, "unknown key 'descripton' in the workflow", did_you_mean("description"))],
    ),
    (
        "top-key-unknown",
        HEAD + "colour: red\n",
        [(10, 1, "unknown key 'colour' in the workflow", Has("workflow", "steps"))],
    ),
    (
        "step-key-misspelt",
        wf("histroy_visibility: all"),
        [(10, 5, "unknown key 'histroy_visibility' in step 2", did_you_mean("history_visibility"))],
    ),
    (
        "step-key-misspelt-2",
        wf("contxt: [git_diff]"),
        [(10, 5, "unknown key 'contxt' in step 2", did_you_mean("context"))],
    ),
    (
        "repeat-key-misspelt",
        wf("repeat:", "  back_to: plan", "  until_review_pass: true", "  max_iteration: 3"),
        [
            (
                13,
                7,
                "unknown key 'max_iteration' in repeat of step 'review'",
                did_you_mean("max_iterations"),
            )
        ],
    ),
    # -- missing or empty steps
    (
        "steps-missing",
        "workflow: demo\nroles:\n  reviewer: Review it.\n",
        [(1, 1, "the workflow has no steps", None)],
    ),
    (
        "steps-empty",
        "workflow: demo\nroles:\n  reviewer: Review it.\nsteps: []\n",
        [(4, 1, "the workflow has no steps", None)],
    ),
    (
        "steps-null",
        "workflow: demo\nroles:\n  reviewer: Review it.\nsteps:\n",
        [(4, 1, "the workflow has no steps", None)],
    ),
    (
        "steps-not-a-list",
        "workflow: demo\nroles:\n  reviewer: Review it.\nsteps: review\n",
        [(4, 8, "steps must be a list, not the string 'review'", None)],
    ),
    (
        "step-not-a-mapping",
        "workflow: demo\nroles:\n  reviewer: Review it.\nsteps:\n  - review\n",
        [(5, 5, "step 1 must be a mapping with id and role, not the string 'review'", None)],
    ),
    # -- ids
    ("step-without-id", HEAD + "  - role: reviewer\n", [(10, 5, "step 3 has no id", None)]),
    (
        "step-id-bad-characters",
        HEAD.replace("id: review", "id: my review"),
        [(8, 9, "step id 'my review' must be one word, without spaces or control characters",
          Has("review-2"))],
    ),
    (
        "duplicate-step-id",
        HEAD.replace("id: review", "id: plan"),
        [(8, 9, "duplicate step id 'plan' (first used by step 1)", None)],
    ),
    # -- roles
    (
        "step-role-without-instruction",
        HEAD.replace("role: reviewer", "role: tester"),
        [(9, 11, "step 'review' uses role 'tester', which has no instruction under roles", None)],
    ),
    (
        "step-role-misspelt",
        HEAD.replace("role: reviewer", "role: reviwer"),
        [
            (
                9,
                11,
                "step 'review' uses role 'reviwer', which has no instruction under roles",
                did_you_mean("reviewer"),
            )
        ],
    ),
    ("step-without-role", HEAD + "  - id: lint\n", [(10, 5, "step 'lint' has no role", None)]),
    (
        "role-instruction-empty",
        HEAD.replace("planner: Plan it.", 'planner: ""'),
        [(3, 12, "instruction of role 'planner' must not be empty", None)],
    ),
    (
        "role-instruction-null",
        HEAD.replace("planner: Plan it.", "planner:"),
        [(3, None, "role 'planner' has no instruction", None)],
    ),
    (
        "roles-not-a-mapping",
        HEAD.replace(
            "roles:\n  planner: Plan it.\n  reviewer: Review it.\n", "roles: [planner, reviewer]\n"
        ),
        [
            (2, 8, "roles must be a mapping of role name to instruction, not a list", None),
            (5, 11, "step 'plan' uses role 'planner', which has no instruction under roles", None),
            (
                7,
                11,
                "step 'review' uses role 'reviewer', which has no instruction under roles",
                None,
            ),
        ],
    ),
    # -- models
    (
        "models-key-names-no-role",
        HEAD + "models:\n  reviewr: openai:gpt-5.5\n",
        [(11, 3, "models names 'reviewr', which is not a role", did_you_mean("reviewer"))],
    ),
    (
        "models-role-unknown-provider",
        HEAD + "models:\n  reviewer: opnai:gpt-5.5\n",
        [(11, 13, "unknown provider 'opnai' in model 'opnai:gpt-5.5'", did_you_mean("openai"))],
    ),
    (
        "models-default-unknown-provider",
        HEAD + "models:\n  default: foo:bar\n",
        [(11, 12, "unknown provider 'foo' in model 'foo:bar'", Has("openai", "anthropic"))],
    ),
    (
        "step-model-unknown-provider",
        wf("model: antropic:claude-sonnet-5"),
        [
            (
                10,
                12,
                "unknown provider 'antropic' in model 'antropic:claude-sonnet-5'",
                did_you_mean("anthropic"),
            )
        ],
    ),
    (
        "step-model-not-provider-model",
        wf("model: gpt-5.5"),
        [(10, 12, "model of step 'review' must look like provider:model, not 'gpt-5.5'", None)],
    ),
    (
        "step-model-float",
        wf("model: 3.10"),
        [(10, 12, "model of step 'review' must be a string, not the number 3.1", Has("quote"))],
    ),
    # -- repeat
    (
        "back-to-misspelt",
        wf("repeat:", "  back_to: pln", "  until_review_pass: true"),
        [(11, 16, "back_to names no step: 'pln'", did_you_mean("plan"))],
    ),
    (
        "back-to-unknown",
        wf("repeat:", "  back_to: deploy", "  until_review_pass: true"),
        [(11, 16, "back_to names no step: 'deploy'", None)],
    ),
    (
        "back-to-later",
        HEAD.replace(
            "    role: planner\n",
            "    role: planner\n    repeat:\n"
            "      back_to: review\n      until_review_pass: true\n",
        ),
        [(9, 16, "back_to must name this step or an earlier one; 'review' comes later", None)],
    ),
    (
        "repeat-without-back-to",
        wf("repeat:", "  until_review_pass: true"),
        [(10, 5, "repeat of step 'review' has no back_to", None)],
    ),
    (
        "repeat-not-a-mapping",
        wf("repeat: 3"),
        [(10, 13, "repeat of step 'review' must be a mapping, not the number 3", None)],
    ),
    (
        "until-neither",
        wf("repeat:", "  back_to: plan"),
        [
            (
                10,
                5,
                "repeat of step 'review' needs exactly one of until_review_pass: true and "
                "until_contains: TEXT",
                None,
            )
        ],
    ),
    (
        "until-both",
        wf("repeat:", "  back_to: plan", "  until_review_pass: true", "  until_contains: DONE"),
        [
            (
                10,
                5,
                "repeat of step 'review' needs exactly one of until_review_pass: true and "
                "until_contains: TEXT",
                None,
            )
        ],
    ),
    (
        "until-review-pass-false",
        wf("repeat:", "  back_to: plan", "  until_review_pass: false"),
        [
            (
                10,
                5,
                "repeat of step 'review' needs exactly one of until_review_pass: true and "
                "until_contains: TEXT",
                None,
            )
        ],
    ),
    (
        "max-iterations-0",
        wf("repeat:", "  back_to: plan", "  until_review_pass: true", "  max_iterations: 0"),
        [(13, 23, "max_iterations must be a whole number from 1 to 50, not the number 0", None)],
    ),
    (
        "max-iterations-51",
        wf("repeat:", "  back_to: plan", "  until_review_pass: true", "  max_iterations: 51"),
        [(13, 23, "max_iterations must be a whole number from 1 to 50, not the number 51", None)],
    ),
    (
        "max-iterations-string",
        wf("repeat:", "  back_to: plan", "  until_review_pass: true", '  max_iterations: "3"'),
        [(13, 23, "max_iterations must be a whole number from 1 to 50, not the string '3'", None)],
    ),
    (
        "overlapping-slices",
        "workflow: demo\nroles:\n  worker: Work.\nsteps:\n"
        "  - id: a\n    role: worker\n"
        "  - id: b\n    role: worker\n    repeat:\n      back_to: a\n      until_contains: DONE\n"
        "  - id: c\n    role: worker\n    repeat:\n      back_to: b\n      until_contains: DONE\n",
        [(15, 16, "the repeat of step 'c' overlaps the repeat of step 'b'", None)],
    ),
    # -- backend-specific keys
    (
        "unsafe-permissions-on-model-step",
        wf("unsafe_permissions: true"),
        [
            (
                10,
                5,
                "unsafe_permissions applies to OpenCode steps only (step 'review' is a model step)",
                None,
            )
        ],
    ),
    (
        "max-tokens-on-opencode-step",
        wf("backend: opencode", "max_tokens: 4096"),
        [(11, 5, "max_tokens applies to model steps only (step 'review' uses OpenCode)", None)],
    ),
    (
        "backend-misspelt",
        wf("backend: opencod"),
        [
            (
                10,
                14,
                "backend of step 'review' must be one of model, opencode, not the string 'opencod'",
                did_you_mean("opencode"),
            )
        ],
    ),
    (
        "history-visibility-misspelt",
        wf("history_visibility: lastest"),
        [
            (
                10,
                25,
                "history_visibility of step 'review' must be one of all, latest, summary, none, "
                "not the string 'lastest'",
                did_you_mean("latest"),
            )
        ],
    ),
    # -- wrong types
    (
        "unsafe-permissions-quoted-yes",
        wf("backend: opencode", 'unsafe_permissions: "yes"'),
        [
            (
                11,
                25,
                "unsafe_permissions of step 'review' must be true or false, not the string 'yes'",
                Has("use true or false"),
            )
        ],
    ),
    (
        "unsafe-permissions-plain-yes",
        wf("backend: opencode", "unsafe_permissions: yes"),
        [
            (
                11,
                25,
                "unsafe_permissions of step 'review' must be true or false, not the string 'yes'",
                Has("use true or false"),
            )
        ],
    ),
    (
        "step-id-float",
        HEAD.replace("id: plan", "id: 3.10"),
        [(6, 9, "step id must be a string, not the number 3.1", Has("quote"))],
    ),
    (
        "timeout-boolean",
        wf("timeout: true"),
        [
            (
                10,
                14,
                "timeout of step 'review' must be a whole number of at least 1, not the "
                "boolean true",
                None,
            )
        ],
    ),
    (
        "max-tokens-string",
        wf('max_tokens: "4096"'),
        [
            (
                10,
                17,
                "max_tokens of step 'review' must be a whole number of at least 1, not the "
                "string '4096'",
                None,
            )
        ],
    ),
    (
        "context-a-string",
        wf("context: git_diff"),
        [
            (
                10,
                14,
                "context of step 'review' must be a list, not the string 'git_diff'",
                Has("git_diff"),
            )
        ],
    ),
    (
        "workflow-name-a-number",
        HEAD.replace("workflow: demo", "workflow: 3.10"),
        [(1, 11, "workflow must be a string, not the number 3.1", Has("quote"))],
    ),
] + [
    (f"context-{source}", wf("context:", f"  - '{source}'"), [(11, 9, message, hint)])
    for source, message, hint in CONTEXT_CASES
]


@pytest.mark.parametrize("text,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_rule_load_workflow(text, expected):
    assert_problems(load_problems(text), expected)


@pytest.fixture(scope="module")
def _module_repo(tmp_path_factory):
    """One real git repository (one commit) for the many `check` cases of this module."""
    repo = tmp_path_factory.mktemp("rules") / "repo"
    repo.mkdir()
    config = repo.parent / "gitconfig"
    config.write_text("")
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(repo.parent),
        "GIT_CONFIG_GLOBAL": str(config),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "Test",
        "GIT_AUTHOR_EMAIL": "test@example.invalid",
        "GIT_COMMITTER_NAME": "Test",
        "GIT_COMMITTER_EMAIL": "test@example.invalid",
    }
    (repo / "README.md").write_text("# Demo\n")
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "initial"]):
        subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True)
    return repo


@pytest.fixture
def rules_repo(_module_repo, monkeypatch):
    """The module's git repository as the cwd, without a workflow file."""
    (_module_repo / WORKFLOW).unlink(missing_ok=True)
    monkeypatch.chdir(_module_repo)
    return _module_repo


@pytest.mark.parametrize("text,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_rule_cli_check(rules_repo, cli, text, expected):
    (rules_repo / WORKFLOW).write_text(text, encoding="utf-8")
    r = cli("check")
    assert r.code == 2, r
    assert r.out == ""
    assert "Traceback" not in r.err
    problems, last = parse_report(r.err)
    assert_problems(problems, expected)
    n = len(expected)
    assert last == f"aethr: error: {n} problem{'' if n == 1 else 's'} in {WORKFLOW}"


# -- what stays valid --------------------------------------------------------------------------

VALID = [
    ("minimal", HEAD),
    ("models-default-is-not-a-role", HEAD + "models:\n  default: openai:gpt-5.4-mini\n"),
    ("back-to-itself", wf("repeat:", "  back_to: review", "  until_review_pass: true")),
    (
        "max-iterations-1",
        wf("repeat:", "  back_to: plan", "  until_review_pass: true", "  max_iterations: 1"),
    ),
    (
        "max-iterations-50",
        wf("repeat:", "  back_to: plan", "  until_contains: DONE", "  max_iterations: 50"),
    ),
    (
        "adjacent-slices",
        HEAD.replace(
            "    role: planner\n",
            "    role: planner\n    repeat:\n      back_to: plan\n      until_contains: PLANNED\n",
        )
        + "    repeat:\n      back_to: review\n      until_review_pass: true\n",
    ),
    ("opencode-step-keys", wf("backend: opencode", "unsafe_permissions: true", "timeout: 60")),
    (
        "model-step-keys",
        wf("model: ollama:qwen3:8b", "max_tokens: 4096", "timeout: 60", "history_visibility: none"),
    ),
    ("quoted-float-model", wf('model: "openai:3.10"')),
    ("quoted-id", HEAD.replace("id: plan", 'id: "3.10"')),
]


@pytest.mark.parametrize("text", [v[1] for v in VALID], ids=[v[0] for v in VALID])
def test_valid_workflows_load(text):
    workflow = aethr.load_workflow(WORKFLOW, text=text)
    assert isinstance(workflow, aethr.Workflow)
    assert workflow.name == "demo"
    assert [s.id for s in workflow.steps][-1] == "review"


def test_valid_context_sources_are_kept_in_order():
    sources = [
        "git_diff",
        "git_diff:origin/main",
        "latest_diff",
        "file:README.md",
        "file:docs/a b.md",
        "glob:**/*.py",
        "glob:src/[ab]?.py",
        "glob:.github/**",
        "cmd:pytest -x -q",
    ]
    text = wf("context:", *[f"  - '{s}'" for s in sources])
    workflow = aethr.load_workflow(WORKFLOW, text=text)
    assert workflow.steps[1].context == sources


def test_opencode_step_takes_any_provider():
    """Provider validation does not apply to OpenCode steps (SPEC §7): any provider id passes."""
    text = (
        "workflow: demo\nroles:\n  implementer: Implement it.\n"
        "models:\n  implementer: mycorp:coder-1\n  default: localco:big\n"
        "steps:\n  - id: build\n    role: implementer\n    backend: opencode\n"
        "  - id: again\n    role: implementer\n    backend: opencode\n"
        "    model: acme:weird-model\n"
    )
    workflow = aethr.load_workflow(WORKFLOW, text=text)
    assert [s.backend for s in workflow.steps] == ["opencode", "opencode"]
    assert workflow.steps[1].model == "acme:weird-model"


def test_unknown_provider_of_a_shared_model_is_reported_for_the_model_step_only():
    """models.default with an unknown provider: fine for an OpenCode step, an error as soon as
    a model step uses it."""
    text = (
        "workflow: demo\nroles:\n  implementer: Implement it.\n  reviewer: Review it.\n"
        "models:\n  default: mycorp:coder-1\n"
        "steps:\n  - id: build\n    role: implementer\n    backend: opencode\n"
        "  - id: review\n    role: reviewer\n"
    )
    assert_problems(
        load_problems(text), [(6, 12, "unknown provider 'mycorp' in model 'mycorp:coder-1'", None)]
    )
    opencode_only = text.replace("  - id: review\n    role: reviewer\n", "")
    assert aethr.load_workflow(WORKFLOW, text=opencode_only).steps[0].backend == "opencode"


# -- strict YAML 1.2 typing through validation ------------------------------------------------


def test_workflow_yes_is_the_string_yes():
    workflow = aethr.load_workflow(WORKFLOW, text=HEAD.replace("workflow: demo", "workflow: yes"))
    assert workflow.name == "yes"


def test_role_named_on_and_instruction_no_are_strings():
    text = (
        "workflow: demo\nroles:\n  on: no\nmodels:\n  on: openai:gpt-5.5\n"
        "steps:\n  - id: s\n    role: on\n"
    )
    workflow = aethr.load_workflow(WORKFLOW, text=text)
    assert workflow.roles == {"on": "no"}
    assert workflow.steps[0].role == "on"
    assert workflow.models == {"on": "openai:gpt-5.5"}


# -- every problem in one pass -----------------------------------------------------------------

FIVE_PROBLEMS = """\
workflow: demo
descripton: Five problems, reported together.
roles:
  reviewer: Review it.
models:
  default: opnai:gpt-5.5
steps:
  - id: review
    role: reviewer
    histroy_visibility: all
    context: ["cmd:touch ran.txt"]
  - id: review
    role: reviwer
"""

FIVE_EXPECTED = [
    (2, 1, "unknown key 'descripton' in the workflow", did_you_mean("description")),
    (6, 12, "unknown provider 'opnai' in model 'opnai:gpt-5.5'", did_you_mean("openai")),
    (10, 5, "unknown key 'histroy_visibility' in step 1", did_you_mean("history_visibility")),
    (12, 9, "duplicate step id 'review' (first used by step 1)", None),
    (
        13,
        11,
        "step 'review' uses role 'reviwer', which has no instruction under roles",
        did_you_mean("reviewer"),
    ),
]


def test_every_problem_is_reported_in_file_order():
    problems = load_problems(FIVE_PROBLEMS)
    assert_problems(problems, FIVE_EXPECTED)


def test_check_reports_five_problems_and_exits_2(git_repo, cli):
    (git_repo / WORKFLOW).write_text(FIVE_PROBLEMS)
    r = cli("check")
    assert r.code == 2
    assert r.out == ""
    problems, last = parse_report(r.err)
    assert_problems(problems, FIVE_EXPECTED)
    assert last == "aethr: error: 5 problems in .aethr.yaml"


def test_one_problem_is_singular(git_repo, cli):
    (git_repo / WORKFLOW).write_text(wf("histroy_visibility: all"))
    r = cli("check")
    assert r.code == 2
    assert r.err == (
        ".aethr.yaml:10:5: unknown key 'histroy_visibility' in step 2\n"
        "    hint: did you mean 'history_visibility'?\n"
        "aethr: error: 1 problem in .aethr.yaml\n"
    )


def test_run_with_problems_runs_no_step(git_repo, cli):
    (git_repo / WORKFLOW).write_text(FIVE_PROBLEMS)
    r = cli("run", "x")
    assert r.code == 2
    assert r.out == ""
    assert r.err.splitlines()[-1] == "aethr: error: 5 problems in .aethr.yaml"
    assert not (git_repo / "ran.txt").exists(), "a cmd: context ran before validation stopped"


def test_check_problems_subprocess(git_repo, run_aethr):
    (git_repo / WORKFLOW).write_text(FIVE_PROBLEMS)
    r = run_aethr("check", cwd=git_repo)
    assert r.code == 2
    assert r.out == ""
    assert "Traceback" not in r.err
    problems, last = parse_report(r.err)
    assert_problems(problems, FIVE_EXPECTED)
    assert last == "aethr: error: 5 problems in .aethr.yaml"
    r = run_aethr("run", "x", cwd=git_repo)
    assert (r.code, r.out) == (2, "")
    assert not (git_repo / "ran.txt").exists()


# -- split_model and resolve_model (SPEC §2, Models) -------------------------------------------


def test_split_model_at_the_first_colon():
    assert aethr.split_model("ollama:qwen3:8b") == ("ollama", "qwen3:8b")
    assert aethr.split_model("openrouter:qwen/qwen3-coder") == ("openrouter", "qwen/qwen3-coder")


ROUTING = """\
workflow: routing
roles:
  reviewer: Review it.
  planner: Plan it.
models:
  reviewer: anthropic:claude-sonnet-5
  default: openai:gpt-5.4-mini
steps:
  - id: review
    role: reviewer
    model: xai:grok-4.6
  - id: second
    role: reviewer
  - id: plan
    role: planner
  - id: build
    role: planner
    backend: opencode
"""


@pytest.fixture
def routing():
    workflow = aethr.load_workflow(WORKFLOW, text=ROUTING)
    return workflow, {s.id: s for s in workflow.steps}


ENV = {"AETHR_MODEL": "openrouter:qwen/qwen3-coder"}


def test_model_role_override_wins(routing):
    workflow, steps = routing
    overrides = {"reviewer": "gemini:gemini-3.5-pro", "*": "ollama:qwen3:8b"}
    assert aethr.resolve_model(workflow, steps["review"], overrides, ENV) == "gemini:gemini-3.5-pro"


def test_model_all_roles_override_beats_environment(routing):
    workflow, steps = routing
    overrides = {"*": "ollama:qwen3:8b", "planner": "gemini:gemini-3.5-pro"}
    assert aethr.resolve_model(workflow, steps["review"], overrides, ENV) == "ollama:qwen3:8b"
    assert aethr.resolve_model(workflow, steps["plan"], overrides, ENV) == "gemini:gemini-3.5-pro"


def test_aethr_model_beats_step_model(routing):
    workflow, steps = routing
    assert aethr.resolve_model(workflow, steps["review"], {}, ENV) == "openrouter:qwen/qwen3-coder"
    assert aethr.resolve_model(workflow, steps["review"], {}, {"AETHR_MODEL": ""}) == "xai:grok-4.6"


def test_step_model_beats_models_role(routing):
    workflow, steps = routing
    assert aethr.resolve_model(workflow, steps["review"], {}, {}) == "xai:grok-4.6"


def test_models_role_beats_default(routing):
    workflow, steps = routing
    assert aethr.resolve_model(workflow, steps["second"], {}, {}) == "anthropic:claude-sonnet-5"


def test_models_default_last(routing):
    workflow, steps = routing
    assert aethr.resolve_model(workflow, steps["plan"], {}, {}) == "openai:gpt-5.4-mini"


def test_no_model_at_all_is_none():
    workflow = aethr.load_workflow(WORKFLOW, text=HEAD)
    assert aethr.resolve_model(workflow, workflow.steps[0], {}, {}) is None


def test_overrides_apply_to_opencode_steps(routing):
    workflow, steps = routing
    assert aethr.resolve_model(workflow, steps["build"], {}, {}) == "openai:gpt-5.4-mini"
    assert (
        aethr.resolve_model(workflow, steps["build"], {"planner": "xai:grok-4.6"}, ENV)
        == "xai:grok-4.6"
    )
    assert (
        aethr.resolve_model(workflow, steps["build"], {"*": "ollama:qwen3:8b"}, ENV)
        == "ollama:qwen3:8b"
    )
    assert aethr.resolve_model(workflow, steps["build"], {}, ENV) == "openrouter:qwen/qwen3-coder"


def test_show_prompt_uses_the_role_override(git_repo, cli):
    (git_repo / WORKFLOW).write_text(ROUTING)
    r = cli("run", "--show-prompt", "--model", "reviewer=anthropic:claude-opus-5", "task")
    assert r.code == 0, r
    headers = [line for line in r.out.splitlines() if line.startswith("=== step ")]
    assert headers[0] == "=== step 1/4: review (reviewer) -> anthropic:claude-opus-5 ==="
    assert headers[1] == "=== step 2/4: second (reviewer) -> anthropic:claude-opus-5 ==="
    assert headers[2] == "=== step 3/4: plan (planner) -> openai:gpt-5.4-mini ==="


def test_model_override_for_an_unknown_role_exits_2(git_repo, cli):
    (git_repo / WORKFLOW).write_text(ROUTING)
    r = cli("run", "--show-prompt", "--model", "reviwer=anthropic:claude-opus-5", "task")
    assert r.code == 2
    assert r.out == ""
    assert "aethr: error: " in r.err and "'reviwer'" in r.err
    assert "aethr: hint: did you mean 'reviewer'?" in r.err.splitlines()


# -- load_workflow: path=, text=, preset= ------------------------------------------------------


def test_load_workflow_from_a_path(tmp_path):
    path = tmp_path / "flow.yaml"
    path.write_text(HEAD)
    workflow = aethr.load_workflow(path)
    assert workflow.path == str(path)
    assert workflow.text == HEAD
    assert [(s.id, s.role) for s in workflow.steps] == [("plan", "planner"), ("review", "reviewer")]


def test_load_workflow_problems_carry_the_path(tmp_path):
    path = tmp_path / "flow.yaml"
    path.write_text(wf("histroy_visibility: all"))
    with pytest.raises(aethr.ConfigError) as info:
        aethr.load_workflow(str(path))
    assert info.value.problems[0][:4] == (
        str(path),
        10,
        5,
        "unknown key 'histroy_visibility' in step 2",
    )
    assert info.value.message == f"1 problem in {path}"


def test_load_workflow_unknown_preset_suggests_one():
    with pytest.raises(aethr.AethrError) as info:
        aethr.load_workflow(preset="plan-implement-reveiw")
    assert info.value.exit_code == 2
    did_you_mean("plan-implement-review").check(info.value.hint)


# -- the workflow file itself: directory, empty, not UTF-8, missing ----------------------------


def test_workflow_file_that_is_a_directory(git_repo, cli):
    (git_repo / WORKFLOW).mkdir()
    r = cli("check")
    assert r.code == 2
    assert "Traceback" not in r.err
    assert r.err.startswith("aethr: error: .aethr.yaml is a directory")


@pytest.mark.parametrize(
    "text", ["", "\n\n", "# only a comment\n"], ids=["empty", "blank", "comment"]
)
def test_empty_workflow_file_has_no_steps(git_repo, cli, text):
    (git_repo / WORKFLOW).write_text(text)
    r = cli("check")
    assert r.code == 2
    problems, last = parse_report(r.err)
    assert [(p[0], p[3]) for p in problems] == [(WORKFLOW, "the workflow has no steps")]
    assert last == "aethr: error: 1 problem in .aethr.yaml"


@pytest.mark.parametrize(
    "data",
    [b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "workflow: caf\u00e9\n".encode("latin-1")],
    ids=["binary", "latin-1"],
)
def test_workflow_file_not_utf8(git_repo, cli, data):
    (git_repo / WORKFLOW).write_bytes(data)
    r = cli("check")
    assert r.code == 2
    assert "Traceback" not in r.err
    assert r.err.startswith("aethr: error: .aethr.yaml is not UTF-8")
    r = cli("run", "x")
    assert (r.code, r.out) == (2, "")
    assert r.err.startswith("aethr: error: .aethr.yaml is not UTF-8")


def test_workflow_file_not_utf8_subprocess(git_repo, run_aethr):
    (git_repo / WORKFLOW).write_bytes(b"workflow: \xff\xfe\x00binary\n")
    r = run_aethr("check", cwd=git_repo)
    assert r.code == 2
    assert "Traceback" not in r.err
    assert r.err.startswith("aethr: error: .aethr.yaml is not UTF-8")


@pytest.mark.parametrize("command", [("check",), ("run", "x")])
def test_missing_workflow_option_file(git_repo, cli, command):
    r = cli(*command, "--workflow", "nope.yaml")
    assert r.code == 2
    assert r.out == ""
    assert "Traceback" not in r.err
    assert r.err.splitlines()[0] == "aethr: error: workflow file not found: nope.yaml"


# -- presets and examples ----------------------------------------------------------------------


def test_the_six_presets_exist():
    assert set(aethr.PRESETS) == SIX_PRESETS


@pytest.mark.parametrize("name", sorted(SIX_PRESETS))
def test_preset_loads_and_checks(git_repo, cli, name):
    workflow = aethr.load_workflow(preset=name)
    assert workflow.name == name
    assert workflow.preset == name
    r = cli("check", "--preset", name)
    assert r.code == 0, r
    assert r.err.splitlines()[-1] == f"aethr: preset {name} is valid"
    for step in workflow.steps:
        assert re.search(rf"^\s+{step.index + 1}\.\s+{re.escape(step.id)}\s", r.out, re.M), r.out
    # The same text as the project's .aethr.yaml (what `aethr init NAME` writes).
    (git_repo / WORKFLOW).write_text(aethr.PRESETS[name], encoding="utf-8")
    r = cli("check")
    assert r.code == 0, r
    assert r.err.splitlines()[-1] == "aethr: .aethr.yaml is valid"


def test_there_are_examples():
    assert EXAMPLES, "examples/*.yaml is empty"


@pytest.fixture
def repo_with_origin(git_repo):
    """git_repo with an origin/main ref (examples/ci-review.yaml uses git_diff:origin/main)."""
    git(git_repo, "update-ref", "refs/remotes/origin/main", "HEAD")
    return git_repo


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_loads_and_checks(repo_with_origin, cli, path):
    workflow = aethr.load_workflow(path)
    assert workflow.steps
    r = cli("check", "--workflow", str(path))
    assert r.code == 0, r
    assert r.err.splitlines()[-1] == f"aethr: {path} is valid"
    shutil.copy(path, repo_with_origin / WORKFLOW)
    r = cli("check")
    assert r.code == 0, r
    assert r.err.splitlines()[-1] == "aethr: .aethr.yaml is valid"


def test_example_checks_subprocess(repo_with_origin, run_aethr):
    path = ROOT / "examples" / "ci-review.yaml"
    r = run_aethr("check", "--workflow", str(path), cwd=repo_with_origin)
    assert r.code == 0, r
    assert "git_diff:origin/main" in r.out
    assert r.err.splitlines()[-1] == f"aethr: {path} is valid"


def test_debug_failing_test_runs_the_tests_as_context():
    workflow = aethr.load_workflow(preset="debug-failing-test")
    assert any(src.startswith("cmd:") for step in workflow.steps for src in step.context)


def _workflows():
    for name in sorted(aethr.PRESETS):
        yield f"preset:{name}", aethr.load_workflow(preset=name)
    for path in EXAMPLES:
        yield f"examples/{path.name}", aethr.load_workflow(path)


def test_reviewer_roles_state_the_review_status_protocol():
    """Every role that gives a review status — a step controlling an until_review_pass loop, or
    the last step (the verdict) when no until_contains loop decides — states the exact lines."""
    checked = 0
    for where, workflow in _workflows():
        controllers = [s for s in workflow.steps if s.repeat]
        roles = {s.role for s in controllers if s.repeat.until_review_pass}
        if not any(s.repeat.until_contains for s in controllers):
            roles.add(workflow.steps[-1].role)
        for role in roles:
            lines = [line.strip() for line in workflow.roles[role].splitlines()]
            assert "Review status: pass" in lines, (where, role)
            assert "Review status: revise" in lines, (where, role)
            checked += 1
        for step in controllers:
            if step.repeat.until_contains:
                assert step.repeat.until_contains in workflow.roles[step.role], (where, step.id)
    assert checked >= len(SIX_PRESETS)


def test_repeat_problems_are_all_reported_together():
    text = HEAD.replace("history_visibility: latest\n", "") + (
        "    repeat: {back_to: ghost, until_review_pass: true, max_iterations: 0}\n")
    with pytest.raises(aethr.ConfigError) as info:
        aethr.load_workflow(".aethr.yaml", text=text)
    messages = " | ".join(p[3] for p in info.value.problems)
    assert "max_iterations must be a whole number from 1 to 50" in messages
    assert "back_to names no step: 'ghost'" in messages


def test_a_mistyped_until_flag_gets_one_problem_not_two():
    text = HEAD + "    repeat: {back_to: review, until_review_pass: maybe}\n"
    with pytest.raises(aethr.ConfigError) as info:
        aethr.load_workflow(".aethr.yaml", text=text)
    messages = [p[3] for p in info.value.problems]
    assert any("until_review_pass must be true or false" in m for m in messages), messages
    assert not any("exactly one" in m for m in messages), messages

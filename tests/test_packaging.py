"""Packaging: the public API (`__all__`), the embedded presets, a light start-up path, the
version command, pyproject.toml, standard-library-only imports and `.env.example` (SPEC §1, §2,
§11, §12, §13). Nothing is built or installed here: `make test` installs the package (see the
Makefile test below)."""

from __future__ import annotations

import ast
import importlib
import io
import os
import re
import subprocess
import sys

import pytest
from conftest import AETHR_PY, ROOT

import aethr

sys.path.insert(0, str(ROOT / "tests"))
from presets_sync import BEGIN, END, render  # noqa: E402

PYPROJECT = ROOT / "pyproject.toml"

#: SPEC §13: the documented API.
SPEC_API = [
    "parse_yaml",
    "load_workflow",
    "run_workflow",
    "RunResult",
    "StepFailed",
    "AethrError",
    "YAMLError",
    "ConfigError",
    "Workflow",
    "main",
    "__version__",
]

#: SPEC §12: never imported by `import aethr`, `version`, `init --list` or `--help`.
HEAVY = [
    "urllib",
    "urllib.request",
    "http",
    "http.client",
    "ssl",
    "email",
    "json",
    "tempfile",
    "hashlib",
    "dataclasses",
    "subprocess",
    "difflib",
]

#: SPEC §6's provider table, and the Aethr variables of §2/§6.
PROVIDER_VARIABLES = [
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "OPENAI_ORG_ID",
    "OPENAI_PROJECT_ID",
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_AUTH_TOKEN",
    "ANTHROPIC_BASE_URL",
    "GOOGLE_API_KEY",
    "GEMINI_API_KEY",
    "GOOGLE_GEMINI_BASE_URL",
    "OPENROUTER_API_KEY",
    "OPENROUTER_BASE_URL",
    "XAI_API_KEY",
    "XAI_BASE_URL",
    "OLLAMA_HOST",
]
AETHR_VARIABLES = [
    "AETHR_LIVE",
    "AETHR_MODEL",
    "AETHR_DEBUG",
    "AETHR_EDITOR",
    "AETHR_TIMEOUT",
    "AETHR_MAX_RETRIES",
]


def _python(*args, cwd=None, env=None):
    environ = dict(os.environ)
    environ.pop("PYTHONPATH", None)
    environ["PYTHONDONTWRITEBYTECODE"] = "1"  # write no __pycache__ into the repository
    environ.update(env or {})
    proc = subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=60,
    )
    return proc


# -- __all__ (SPEC §13) ------------------------------------------------------------------------


def test_all_names_exist():
    missing = [name for name in aethr.__all__ if not hasattr(aethr, name)]
    assert not missing


def test_all_covers_the_spec_api():
    assert set(SPEC_API) <= set(aethr.__all__)
    assert len(aethr.__all__) == len(set(aethr.__all__))


def test_star_import_gives_the_api():
    namespace: dict = {}
    exec("from aethr import *", namespace)
    for name in SPEC_API:
        assert namespace[name] is getattr(aethr, name)


def test_error_hierarchy_and_exit_codes():
    assert issubclass(aethr.ConfigError, aethr.AethrError)
    assert issubclass(aethr.YAMLError, aethr.ConfigError)
    assert issubclass(aethr.StepFailed, aethr.AethrError)
    assert aethr.ConfigError("x").exit_code == 2
    assert aethr.YAMLError("x", line=1, column=1).exit_code == 2
    assert isinstance(aethr.StepFailed("x").exit_code, int)


def test_version_is_a_release_number():
    assert re.fullmatch(r"\d+\.\d+\.\d+", aethr.__version__)


# -- the embedded presets equal presets/*.yaml (SPEC §1) ----------------------------------------


def _embedded_block() -> str:
    source = AETHR_PY.read_text(encoding="utf-8")
    lines = source.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.rstrip("\r\n") == BEGIN]
    ends = [i for i, line in enumerate(lines) if line.rstrip("\r\n") == END]
    assert len(starts) == 1 and len(ends) == 1 and starts[0] < ends[0], (
        "aethr.py must hold exactly one BEGIN PRESETS ... END PRESETS block"
    )
    return "".join(lines[starts[0] : ends[0] + 1])


def test_presets_block_is_generated_from_presets_dir():
    assert _embedded_block() == render(ROOT / "presets"), (
        "the PRESETS block in aethr.py differs from presets/*.yaml; run `make presets`"
    )


def test_presets_have_the_same_names_as_the_files():
    files = {p.stem for p in (ROOT / "presets").glob("*.yaml")}
    assert set(aethr.PRESETS) == files
    assert len(files) == 6


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "presets").glob("*.yaml")))
def test_preset_text_equals_its_file(name):
    assert aethr.PRESETS[name] == (ROOT / "presets" / f"{name}.yaml").read_text(encoding="utf-8")


# -- import stays light (SPEC §12) -------------------------------------------------------------

_MODULES = "import sys; print('\\n'.join(sorted(sys.modules)))"


def _modules_after(code: str, cwd) -> set[str]:
    proc = _python("-c", f"{code}\n{_MODULES}", cwd=cwd, env={"PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    return set(proc.stdout.split())


def test_import_aethr_is_light(tmp_path):
    baseline = _modules_after("pass", tmp_path)
    after = _modules_after("import aethr", tmp_path)
    assert "aethr" in after
    assert sorted((after - baseline) & set(HEAVY)) == []


_IMPORT_LINE = re.compile(r"import time:\s+\d+ \|\s+\d+ \|( *)(\S+)\s*$")


def _imported(*args: str, cwd) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run `python -X importtime ARGS`; the modules it imported (from importtime's report)."""
    proc = _python("-X", "importtime", *args, cwd=cwd)
    names = set()
    other = []
    for line in proc.stderr.splitlines():
        m = _IMPORT_LINE.match(line)
        if m:
            names.add(m.group(2))
        elif not line.startswith("import time:"):
            other.append(line)
    proc.stderr = "\n".join(other)
    return proc, names


def _baseline(cwd) -> set[str]:
    proc, names = _imported("-c", "pass", cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    assert "site" in names or "encodings" in names or names, "importtime reported nothing"
    return names


@pytest.mark.parametrize(
    "argv,expected_out",
    [
        (["version"], "aethr {version}\n"),
        (["init", "--list"], None),
        (["--help"], None),
    ],
    ids=["version", "init-list", "help"],
)
def test_commands_import_nothing_heavy(tmp_path, argv, expected_out):
    baseline = _baseline(tmp_path)
    proc, names = _imported(str(AETHR_PY), *argv, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    if expected_out:
        assert proc.stdout == expected_out.format(version=aethr.__version__)
    else:
        assert proc.stdout.strip()
    assert sorted((names - baseline) & set(HEAVY)) == []
    assert list(tmp_path.iterdir()) == [], "the command wrote a file"


def test_importtime_measurement_sees_lazy_imports(git_repo):
    """Control for the test above: `check` parses YAML and runs git, so the same measurement
    sees select (git runs through posix_spawn and poll, not subprocess)."""
    baseline = _baseline(git_repo)
    assert "select" not in baseline
    proc, names = _imported(
        str(AETHR_PY), "check", "--preset", "review-existing-diff", cwd=git_repo
    )
    assert proc.returncode == 0, proc.stderr
    assert "select" in names - baseline


def test_show_prompt_imports_only_what_it_needs(git_repo):
    """`run --show-prompt` with the default preset (SPEC §12): git runs through posix_spawn
    (no subprocess, threading, signal), a plain command line needs no argparse, and the YAML
    parser and the context code need no re. -S keeps site's own imports out of both sides."""
    (git_repo / "new.txt").write_text("new\n")
    (git_repo / ".env").write_text("NOT_A_KEY=1\n")  # never read, and its diff hidden
    proc, baseline = _imported("-S", "-c", "pass", cwd=git_repo)
    assert proc.returncode == 0, proc.stderr
    proc, names = _imported("-S", str(AETHR_PY), "run", "--show-prompt", "review", cwd=git_repo)
    assert proc.returncode == 0, proc.stderr
    assert "new.txt" in proc.stdout and "patch of .env not shown" in proc.stdout
    heavy = {"subprocess", "threading", "signal", "argparse", "gettext", "locale", "re", "enum",
             "fnmatch"}
    assert sorted((names - baseline) & heavy) == []
    assert "select" in names


# -- version and the ways to start it (SPEC §1, §2) ----------------------------------------------


@pytest.mark.parametrize("argv", [["version"], ["--version"]])
def test_script_version(tmp_path, argv):
    proc = _python(str(AETHR_PY), *argv, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"aethr {aethr.__version__}\n"
    assert proc.stderr == ""


def test_python_dash_m_aethr(tmp_path):
    proc = _python("-m", "aethr", "version", cwd=tmp_path, env={"PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"aethr {aethr.__version__}\n"


def test_copied_alone_into_a_directory(tmp_path):
    copy = tmp_path / "aethr.py"
    copy.write_bytes(AETHR_PY.read_bytes())
    proc = _python(str(copy), "init", "--list", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for name in aethr.PRESETS:
        assert re.search(rf"^\s+{re.escape(name)}\s", proc.stdout, re.M), proc.stdout


# -- pyproject.toml (read without tomllib: 3.10 has none) ----------------------------------------


def _strip_comment(line: str) -> str:
    quote = None
    for i, c in enumerate(line):
        if quote:
            if c == quote:
                quote = None
        elif c in "\"'":
            quote = c
        elif c == "#":
            return line[:i]
    return line


def _toml_value(text: str):
    text = text.strip()
    if "{" in text:  # inline tables: key = value -> "key": value
        text = re.sub(r"([A-Za-z_][\w.-]*)\s*=(?!=)", r'"\1":', text)
    text = re.sub(r"\btrue\b", "True", re.sub(r"\bfalse\b", "False", text))
    return ast.literal_eval(text)


def read_pyproject(text: str) -> dict:
    """The subset of TOML pyproject.toml uses: [tables], key = string/array/inline table."""
    data: dict = {}
    table = data
    lines = iter(text.splitlines())
    for raw in lines:
        line = _strip_comment(raw).strip()
        if not line:
            continue
        header = re.fullmatch(r"\[([^\[\]]+)\]", line)
        if header:
            table = data
            for part in header.group(1).strip().split("."):
                table = table.setdefault(part.strip().strip('"'), {})
            continue
        key, eq, value = line.partition("=")
        assert eq, f"cannot read pyproject line {raw!r}"
        while value.count("[") > value.count("]") or value.count("{") > value.count("}"):
            value += " " + _strip_comment(next(lines))
        table[key.strip().strip('"')] = _toml_value(value)
    return data


@pytest.fixture(scope="module")
def pyproject():
    data = read_pyproject(PYPROJECT.read_text(encoding="utf-8"))
    try:
        import tomllib
    except ImportError:  # Python 3.10
        return data
    with open(PYPROJECT, "rb") as f:
        assert data == tomllib.load(f), "the small TOML reader misread pyproject.toml"
    return data


def test_pyproject_single_module(pyproject):
    assert pyproject["tool"]["setuptools"]["py-modules"] == ["aethr"]


def test_pyproject_console_script(pyproject):
    assert pyproject["project"]["scripts"] == {"aethr": "aethr:main"}


def test_pyproject_no_runtime_dependencies(pyproject):
    assert pyproject["project"].get("dependencies", []) == []


def test_pyproject_dynamic_version(pyproject):
    project = pyproject["project"]
    assert "version" not in project
    assert "version" in project["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "aethr.__version__"}


def test_pyproject_python_versions(pyproject):
    assert pyproject["project"]["requires-python"] == ">=3.10"


def test_pyproject_dev_extra(pyproject):
    dev = pyproject["project"]["optional-dependencies"]["dev"]
    names = {re.match(r"[A-Za-z0-9._-]+", req).group(0).lower() for req in dev}
    assert {"pytest", "pyyaml", "hypothesis", "ruff"} <= names


def test_console_script_entry_point_resolves(pyproject):
    module, _, func = pyproject["project"]["scripts"]["aethr"].partition(":")
    main = getattr(importlib.import_module(module), func)
    assert main is aethr.main
    out, err = io.StringIO(), io.StringIO()
    assert main(["version"], aethr.Term(out, err, environ={})) == 0
    assert out.getvalue() == f"aethr {aethr.__version__}\n"
    assert err.getvalue() == ""


def test_makefile_installs_the_package_for_the_tests():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^\t.*-m pip install .*-e '?\.\[dev\]'?", makefile, re.M)
    test_rule = re.search(r"^test:(.*)$", makefile, re.M)
    assert test_rule and "$(STAMP)" in test_rule.group(1)


# -- standard library only (SPEC §1) -----------------------------------------------------------


def test_aethr_imports_only_the_standard_library():
    tree = ast.parse(AETHR_PY.read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert {"os", "re", "sys", "argparse"} <= imported
    assert sorted(imported - set(sys.stdlib_module_names)) == []


# -- .env.example (SPEC §11) -------------------------------------------------------------------


@pytest.fixture(scope="module")
def env_example():
    return (ROOT / ".env.example").read_text(encoding="utf-8")


def test_env_example_is_all_commented_out(env_example):
    bad = [line for line in env_example.splitlines() if line.strip() and not line.startswith("#")]
    assert bad == []


@pytest.mark.parametrize("name", PROVIDER_VARIABLES + AETHR_VARIABLES)
def test_env_example_lists_variable(env_example, name):
    assert re.search(rf"^#\s*(export\s+)?{name}=", env_example, re.M), name


def test_env_example_lists_every_key_variable(env_example):
    for names in aethr.PROVIDER_KEYS.values():
        for name in names:
            assert re.search(rf"^#\s*{name}=", env_example, re.M), name

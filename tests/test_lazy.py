"""Section 13, compiled on first use: which commands compile it, its line numbers in aethr.py
(code objects and tracebacks), the boundary (the sections above reach it only through
`_lazy()`, checked with symtable), ruff on the file as if the string's two quote lines were not
there, the module `__getattr__` (PEP 562) and one compile under eight racing threads. What
compiles section 13 is watched in a fresh interpreter each time, since the test process
compiles it early on. Script mode (`python3 aethr.py run`, `auth status`, `--help`) is covered by
test_cli.py and test_env.py, through the run_aethr fixture."""

from __future__ import annotations

import ast
import builtins
import json
import os
import subprocess
import symtable
import sys
import textwrap
import traceback
from pathlib import Path

import pytest
from conftest import AETHR_PY, ROOT

import aethr

SOURCE = AETHR_PY.read_text(encoding="utf-8")
#: aethr.py's lines; LINES[n - 1] is line n (split on "\n" only, as Python counts lines).
LINES = SOURCE.split("\n")
OPEN_QUOTE, CLOSE_QUOTE = "_LAZY = r'''", "'''"


def _fresh(code: str, cwd: Path) -> tuple[dict, subprocess.CompletedProcess]:
    """Run `code` in a new interpreter that has imported aethr from this repository and nothing
    else of it; returns the dict `code` filled in as `out` (printed as JSON on the last line of
    stdout) and the process."""
    script = (f"import json, sys\nsys.path.insert(0, {str(ROOT)!r})\nimport aethr\n"
              "out = {'file': aethr.__file__}\n" + textwrap.dedent(code)
              + "\nsys.stdout.write('\\n' + json.dumps(out) + '\\n')\n")
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([sys.executable, "-B", "-c", script], cwd=cwd, env=env,
                          capture_output=True, text=True, encoding="utf-8", timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.splitlines()[-1])
    assert Path(out.pop("file")).resolve() == AETHR_PY
    return out, proc


# -- which commands compile section 13 ------------------------------------------------------------


def _case(*argv: str, code: int = 0, workflow: str | None = None, stderr: str = "") -> tuple:
    """One command line; its exit status, the preset written as .aethr.yaml before it, a piece of
    what it must print on stderr."""
    return list(argv), code, workflow, stderr


NOT_COMPILED = [
    _case("version"),
    _case("init", "--list"),
    _case("check"),
    _case("run", "--show-prompt", "review it"),
    _case("run", "review it"),                                    # the default preset, mock
    _case("run", "--json", "review it"),
    _case("run", "review it", workflow="plan-implement-review"),  # its OpenCode step mocked
    _case("run", "--json", "--preset", "plan-implement-review", "review it"),
    _case("run", "--preset", "plan-implement-review", "review it"),  # and the promotion hint
]

COMPILED = [
    _case("--help"),                                              # argparse is in section 13
    _case("run", "--", "review it"),                              # through argparse
    _case("init", "plan-implement-review"),                       # argparse
    _case("auth", "status"),
    _case("init", "plan-implement-review", "--model", "openai:gpt-5.5"),  # pin_models
    _case("run", "--resume-checkpoint", "missing.json", code=2,
          stderr="checkpoint not found: missing.json"),
    # No key in the environment (isolated_env) and the default preset has no OpenCode step, so
    # the result does not depend on the machine: one problem, exit 2.
    _case("check", "--live", code=2,
          stderr="no API key for openai:gpt-5.5: set OPENAI_API_KEY"),
]


@pytest.mark.parametrize(
    "argv,code,workflow,stderr,compiled",
    [pytest.param(*case, compiled, id=("compiled: " if compiled else "not compiled: ")
                  + " ".join(case[0]) + (f" ({case[2]} as .aethr.yaml)" if case[2] else ""))
     for cases, compiled in ((NOT_COMPILED, False), (COMPILED, True)) for case in cases],
)
def test_which_commands_compile_section_13(git_repo, argv, code, workflow, stderr, compiled):
    """In a fresh interpreter, the command's exit status and whether it compiled section 13;
    the second group shows that the probe does see a compile."""
    if workflow:
        (git_repo / aethr.WORKFLOW_FILE).write_text(aethr.PRESETS[workflow], encoding="utf-8")
    out, proc = _fresh(f"""
        out["code"] = aethr.main({argv!r})
        out["compiled"] = aethr._lazy_done
    """, cwd=git_repo)
    assert out == {"code": code, "compiled": compiled}, proc.stderr
    if stderr:
        assert stderr in proc.stderr


# -- line numbers ---------------------------------------------------------------------------------


def _first_line(node: ast.AST) -> int:
    """The line a def's code object starts on, in the string: its first decorator's, if any."""
    return min([d.lineno for d in getattr(node, "decorator_list", [])] + [node.lineno])


def _code_lines(value: object) -> set[int]:
    """co_firstlineno of the functions behind a class attribute (plain, static or class method,
    property, a functools.wraps wrapper)."""
    found = set()
    for part in (value, getattr(value, "__func__", None), getattr(value, "fget", None),
                 getattr(value, "fset", None), getattr(value, "fdel", None)):
        code = getattr(getattr(part, "__wrapped__", part), "__code__", None)
        if code is not None:
            found.add(code.co_firstlineno)
    return found


def test_section_13_keeps_its_line_numbers():
    """Each top-level def and class of section 13, live, starts on the line of aethr.py where
    it stands (a class: its __firstlineno__ from 3.13 on, and its methods' code everywhere)."""
    module = aethr._lazy()
    assert LINES[aethr._LAZY_LINE - 1] == OPEN_QUOTE
    end = aethr._LAZY_LINE + aethr._LAZY.count("\n")
    assert LINES[end - 1] == CLOSE_QUOTE
    offset = aethr._LAZY_LINE - 1           # line n of the string is line offset + n of the file
    wrong, checked = [], 0
    for node in ast.parse(aethr._LAZY).body:
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        keyword = "class" if isinstance(node, ast.ClassDef) else "def"
        # Found in the file's text, not from the offset: exactly one line inside the string.
        stands = [n for n in range(aethr._LAZY_LINE + 1, end)
                  if LINES[n - 1].startswith((f"{keyword} {node.name}(", f"{keyword} {node.name}:",
                                              f"async def {node.name}("))]
        assert stands == [node.lineno + offset], node.name
        obj = getattr(module, node.name)
        if keyword == "def":
            live = {getattr(obj, "__wrapped__", obj).__code__.co_firstlineno}
            if live != {_first_line(node) + offset}:
                wrong.append(f"{node.name}: at line {_first_line(node) + offset}, code says {live}")
            checked += 1
            continue
        first = getattr(obj, "__firstlineno__", None)   # Python 3.13+
        if first is not None and first != _first_line(node) + offset:
            wrong.append(f"class {node.name}: at line {node.lineno + offset}, says {first}")
        for method in node.body:
            if isinstance(method, (ast.FunctionDef, ast.AsyncFunctionDef)):
                line = _first_line(method) + offset
                assert LINES[method.lineno + offset - 1].lstrip().startswith(
                    (f"def {method.name}(", f"async def {method.name}("))
                if line not in _code_lines(vars(obj)[method.name]):
                    wrong.append(f"{node.name}.{method.name}: at line {line}, code says "
                                 f"{_code_lines(vars(obj)[method.name])}")
                checked += 1
    assert wrong == []
    assert checked > 50     # the walk did find section 13's functions and methods


def test_traceback_shows_the_line_in_aethr_py(tmp_path):
    with pytest.raises(aethr.UsageError) as info:
        aethr._load_checkpoint(str(tmp_path / "missing.json"))
    last = traceback.extract_tb(info.value.__traceback__)[-1]
    assert Path(last.filename).resolve() == AETHR_PY
    assert last.name == "_load_checkpoint"
    assert aethr._LAZY_LINE < last.lineno < aethr._LAZY_LINE + aethr._LAZY.count("\n")
    assert last.line == LINES[last.lineno - 1].strip()
    assert last.line.startswith('raise UsageError(f"checkpoint not found: ')


# -- the boundary, statically ---------------------------------------------------------------------


def _scopes(table: symtable.SymbolTable, qualname: str = ""):
    """(description, table) for `table` and every table inside it; the module's is ""."""
    yield (f"{getattr(table.get_type(), 'value', table.get_type())} {qualname}"  # 3.13: an enum
           if qualname else ""), table
    for child in table.get_children():
        yield from _scopes(child, f"{qualname}.{child.get_name()}" if qualname
                           else child.get_name())


def _globals_used(table: symtable.SymbolTable, offset: int):
    """(name, where) for every global name a scope of `table` reads, or a function or class
    assigns; `offset` turns the table's line numbers into lines of the file."""
    for scope, t in _scopes(table):
        where = f"{scope} (line {t.get_lineno() + offset})" if scope else "module level"
        for sym in t.get_symbols():
            if sym.is_referenced() if not scope else \
                    sym.is_global() and (sym.is_referenced() or sym.is_assigned()):
                yield sym.get_name(), where


def _defined(table: symtable.SymbolTable) -> set[str]:
    """The names a module defines: bound at its top level, or assigned under `global`."""
    return {sym.get_name() for scope, t in _scopes(table) for sym in t.get_symbols()
            if (not scope and (sym.is_assigned() or sym.is_imported()))
            or (sym.is_declared_global() and sym.is_assigned())}


def boundary_problems(source: str, filename: str = "aethr.py") -> list[str]:
    """Where the code of `source` and the code in its `_LAZY = r'''...'''` string meet other
    than through `_lazy()`: a name of the string's code used directly outside it, a global name
    the string's code uses that is defined nowhere at run time, a name both define, a
    `_lazy().name` that the string does not define, a `_QUICK` command whose cmd_ function
    (looked up by name) is not outside it."""
    tree = ast.parse(source, filename)
    (lazy,) = [n.value for n in tree.body if isinstance(n, ast.Assign)
               and [getattr(t, "id", None) for t in n.targets] == ["_LAZY"]]
    # compile() in _lazy() inherits aethr.py's `from __future__ import annotations`:
    # annotations are never evaluated, and with the same line symtable skips them too.
    inner = symtable.symtable("from __future__ import annotations" + lazy.value, filename, "exec")
    outer = symtable.symtable(source, filename, "exec")   # the string is a constant here
    lazy_names = _defined(inner) - {"annotations"}
    # What `if TYPE_CHECKING:` imports exists for type checkers (and annotations) only.
    checking_only = {alias.asname or alias.name.split(".")[0]
                     for node in tree.body if isinstance(node, ast.If)
                     and getattr(node.test, "id", None) == "TYPE_CHECKING"
                     for stmt in node.body if isinstance(stmt, (ast.Import, ast.ImportFrom))
                     for alias in stmt.names}
    known = (_defined(outer) - checking_only) | lazy_names | set(dir(builtins)) | {"__file__"}
    problems = [f"{name!r} is defined both in and outside _LAZY"
                for name in sorted(_defined(outer) & lazy_names)]
    problems += [f"{name!r} of _LAZY is used directly at {where}: use _lazy().{name}"
                 for name, where in _globals_used(outer, 0) if name in lazy_names]
    problems += [f"{name!r} used in _LAZY at {where} is defined nowhere at run time"
                 for name, where in _globals_used(inner, lazy.lineno - 1) if name not in known]
    problems += [f"_lazy().{node.attr} at line {node.lineno}: _LAZY does not define it"
                 for node in ast.walk(tree) if isinstance(node, ast.Attribute)
                 and isinstance(node.value, ast.Call) and getattr(node.value.func, "id", None)
                 == "_lazy" and node.attr not in lazy_names]
    quick = [n.value for n in tree.body if isinstance(n, ast.Assign)
             and [getattr(t, "id", None) for t in n.targets] == ["_QUICK"]]
    problems += [f"_QUICK's {key.value!r} needs cmd_{key.value} outside _LAZY"
                 for table in quick for key in table.keys
                 if f"cmd_{key.value}" not in _defined(outer)]
    return problems


def test_sections_above_reach_section_13_only_through_lazy():
    assert boundary_problems(SOURCE) == []


def test_section_13_annotations_are_not_evaluated():
    """What boundary_problems assumes: compiled by _lazy(), section 13 has aethr.py's
    `from __future__ import annotations` (else a TYPE_CHECKING name in one would be a NameError)."""
    assert aethr._lazy().mask.__annotations__ == {"value": "str", "return": "str"}


def test_boundary_check_finds_each_kind_of_crossing():
    """Control: the checker run on a small file that crosses the boundary every way."""
    source = textwrap.dedent('''\
        from __future__ import annotations

        TYPE_CHECKING = False
        if TYPE_CHECKING:
            import re


        def core(x: Helper) -> int:
            return helper()


        class Core:
            limit = LIMIT


        print(helper)
        _LAZY = r"""
        LIMIT = 3


        def helper(text: re.Pattern) -> None:
            return re.compile(missing)


        def core():
            pass
        """
        print(_lazy().helper, _lazy().nothing)
        _QUICK = {"run": (), "auth": ()}


        def cmd_run():
            pass
        ''')
    assert boundary_problems(source) == [
        "'core' is defined both in and outside _LAZY",
        "'helper' of _LAZY is used directly at module level: use _lazy().helper",
        "'helper' of _LAZY is used directly at function core (line 8): use _lazy().helper",
        "'LIMIT' of _LAZY is used directly at class Core (line 12): use _lazy().LIMIT",
        "'re' used in _LAZY at function helper (line 21) is defined nowhere at run time",
        "'missing' used in _LAZY at function helper (line 21) is defined nowhere at run time",
        "_lazy().nothing at line 28: _LAZY does not define it",
        "_QUICK's 'auth' needs cmd_auth outside _LAZY",
    ]


# -- lint as if unwrapped -------------------------------------------------------------------------


def _unwrapped() -> str:
    """aethr.py with section 13 as ordinary module code, on the same lines: `_LAZY = r'''`
    becomes `_LAZY = ""`, the closing quotes an empty line."""
    lines = list(LINES)
    start = lines.index(OPEN_QUOTE)
    end = lines.index(CLOSE_QUOTE, start)
    assert (start + 1, end + 1) == (aethr._LAZY_LINE, aethr._LAZY_LINE + aethr._LAZY.count("\n"))
    lines[start], lines[end] = '_LAZY = ""', ""
    return "\n".join(lines)


def _ruff(text: str) -> subprocess.CompletedProcess:
    """ruff (a dev dependency) on `text` as aethr.py, with pyproject.toml's settings."""
    return subprocess.run([sys.executable, "-m", "ruff", "check", "--output-format", "concise",
                           "--stdin-filename", "aethr.py", "-"], cwd=ROOT, input=text,
                          capture_output=True, text=True, encoding="utf-8", timeout=60)


def test_ruff_passes_with_section_13_unwrapped():
    text = _unwrapped()
    compile(text, str(AETHR_PY), "exec")
    proc = _ruff(text)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # Control: ruff does read section 13 there, on its own lines.
    lines = text.split("\n")
    lines[aethr._LAZY_LINE] = "undefined_in_section_13()"
    proc = _ruff("\n".join(lines))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"aethr.py:{aethr._LAZY_LINE + 1}:1: F821 " in proc.stdout, proc.stdout


# -- the module __getattr__ (PEP 562) and threads -------------------------------------------------


def test_module_getattr(tmp_path):
    out, _ = _fresh("""
        out["__path__"] = hasattr(aethr, "__path__")
        out["__wrapped__"] = getattr(aethr, "__wrapped__", None)
        out["_fields"] = hasattr(aethr, "_fields")      # what pydoc asks
        out["compiled by probes"] = aethr._lazy_done
        from aethr import OpenAIProvider
        out["compiled by import"] = aethr._lazy_done
        out["same class"] = OpenAIProvider is aethr.OpenAIProvider is aethr.PROVIDERS["openai"]
        try:
            aethr.no_such_name
        except AttributeError as exc:
            out["error"] = str(exc)
    """, cwd=tmp_path)
    assert out == {"__path__": False, "__wrapped__": None, "_fields": False,
                   "compiled by probes": False,
                   "compiled by import": True, "same class": True,
                   "error": "module 'aethr' has no attribute 'no_such_name'"}


def test_a_copy_loaded_under_another_name_compiles_into_itself(git_repo):
    """A copy of aethr.py loaded under another name and never registered in sys.modules (a
    plugin loader, runpy.run_path) compiles section 13 into its own globals and uses it."""
    out, proc = _fresh(f"""
        import importlib.util
        spec = importlib.util.spec_from_file_location("aethr_copy", {str(AETHR_PY)!r})
        copy = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(copy)
        out["registered"] = "aethr_copy" in sys.modules
        out["code"] = copy.main(["auth", "status"])
        out["compiled"] = [copy._lazy_done, aethr._lazy_done]
        out["own class"] = copy.OpenAIProvider is copy.PROVIDERS["openai"] \\
            and copy.ProviderError.__mro__[1] is copy.AethrError
    """, cwd=git_repo)
    assert out == {"registered": False, "code": 0, "compiled": [True, False],
                   "own class": True}, proc.stderr
    assert "OPENAI_API_KEY" in proc.stdout


def test_source_run_without_a_file_name(git_repo):
    """aethr.py's text exec'd in a bare namespace (no __file__, nothing in sys.modules), as a
    vendoring script may do: section 13 compiles under the name that text was compiled with."""
    out, proc = _fresh(f"""
        namespace = {{"__name__": "aethr_text"}}
        with open({str(AETHR_PY)!r}, encoding="utf-8") as f:
            exec(compile(f.read(), "<aethr text>", "exec"), namespace)
        out["code"] = namespace["main"](["auth", "status"])
        out["compiled as"] = namespace["_lazy"]().cmd_auth.__code__.co_filename
    """, cwd=git_repo)
    assert out == {"code": 0, "compiled as": "<aethr text>"}, proc.stderr


def test_threads_compile_section_13_once(tmp_path):
    """Eight threads call _lazy() at once: one exec, and all get the module.

    The exec that _lazy() calls is replaced (a module global shadows the builtin) by one that
    counts its calls and sleeps 0.2 s before the real exec. Without the lock every thread
    released by the barrier finds _lazy_done still False in that window and execs too (8 calls);
    with a lock but no second look at _lazy_done inside it, the threads that waited exec in
    turn (8 calls). Without the sleep, whether a second thread gets in before _lazy_done is set
    would depend on the machine's speed and the interpreter's thread switch interval."""
    out, _ = _fresh("""
        import builtins, threading, time

        calls, got = [], []

        def slow_counting_exec(code, namespace):
            calls.append(namespace is vars(aethr))
            time.sleep(0.2)
            builtins.exec(code, namespace)

        aethr.exec = slow_counting_exec
        barrier = threading.Barrier(8)

        def call():
            barrier.wait()
            got.append(aethr._lazy())

        threads = [threading.Thread(target=call) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        out["exec calls"] = calls
        out["got the module"] = [module.OpenAIProvider is aethr.OpenAIProvider
                                 for module in got]
        out["compiled"] = aethr._lazy_done and "OpenAIProvider" in vars(aethr)
    """, cwd=tmp_path)
    assert out == {"exec calls": [True], "got the module": [True] * 8, "compiled": True}

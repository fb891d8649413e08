#!/usr/bin/env python3
"""aethr - run explicit AI coding workflows: plan, implement, review, iterate.

A run is task + workflow + explicit context + model routing. The workflow is
one YAML file, .aethr.yaml; each step has a role, a model (provider:model) and
the context it declares. Mock mode (the default) calls no model.

    aethr run "review my current changes"      # mock mode, no key needed
    aethr init plan-implement-review           # write .aethr.yaml from a preset
    aethr check                                # validate and summarise it

Standard library only: works copied alone (python3 aethr.py ...), installed
(aethr ...), as python3 -m aethr, and vendored (import aethr).

Sections (grep "# == N." to jump). Code in a section uses only the sections
above it, reaches section 13 (source text, compiled on first use) through
_lazy(), and may read section 14 data at call time:
  1. Version and constants        8. Providers (mock; live ones in 13)
  2. Errors                       9. Backends (model, OpenCode) and artifacts
  3. Terminal output             10. Runner (steps, loops, events)
  4. YAML-subset parser          11. Environment (booleans, secrets)
  5. Workflow: load and validate 12. Commands and CLI (main)
  6. Context sources             13. Compiled on first use: live runs, auth,
  7. Prompts                         resume, argparse
                                 14. Built-in data (presets)
"""
from __future__ import annotations

import _thread
import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    import re
    from collections.abc import Callable, Iterable, Iterator  # noqa: F401 (section 13)
    from typing import IO, Any

__all__ = [
    "__version__",
    "AethrError",
    "ConfigError",
    "YAMLError",
    "StepFailed",
    "Workflow",
    "RunResult",
    "parse_yaml",
    "load_workflow",
    "run_workflow",
    "main",
]

# == 1. Version and constants =================================================


class _Regex:
    """A regex compiled on first use: `aethr version` must not pay for importing re."""

    __slots__ = ("_pattern", "_rx")

    def __init__(self, pattern: str) -> None:
        self._pattern = pattern
        self._rx: Any = None

    def _get(self) -> Any:
        if self._rx is None:
            import re

            self._rx = re.compile(self._pattern)
        return self._rx

    def match(self, text: str, pos: int = 0) -> Any:
        return self._get().match(text, pos)

    def fullmatch(self, text: str, pos: int = 0) -> Any:
        return self._get().fullmatch(text, pos)

    def search(self, text: str, pos: int = 0) -> Any:
        return self._get().search(text, pos)

    def findall(self, text: str) -> list:
        return self._get().findall(text)


_LAZY_LOCK = _thread.allocate_lock()
_lazy_done = False


class _Globals:
    """This module's globals as attributes, whatever name the module was loaded under."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        try:
            return globals()[name]
        except KeyError:
            raise AttributeError(name) from None


def _lazy() -> Any:
    """This module's globals, section 13 compiled into them on first use: `_lazy().name`."""
    global _lazy_done
    if not _lazy_done:
        with _LAZY_LOCK:    # threads of an API user must not define its classes twice
            if not _lazy_done:
                # This file's name as Python knows it: also "<stdin>" for `python3 - < aethr.py`.
                code = compile("\n" * (_LAZY_LINE - 1) + _LAZY, _lazy.__code__.co_filename,
                               "exec")
                exec(code, globals())
                _lazy_done = True
    return _Globals()


def __getattr__(name: str) -> Any:
    """`aethr.OpenAIProvider` and every other name of section 13 (PEP 562)."""
    # A dunder or a probe (pydoc asks for _fields) is no reason to compile it.
    defines = ("\n" + name, "\ndef " + name, "\nclass " + name)
    if not name.startswith("__") and any(d in _LAZY for d in defines):
        _lazy()
        if name in globals():
            return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__version__ = "0.1.0"

#: The workflow file `run` and `check` look for, and `init` writes.
WORKFLOW_FILE = ".aethr.yaml"
#: The workflow used when there is no .aethr.yaml and no --workflow/--preset.
DEFAULT_PRESET = "review-existing-diff"

#: Known providers -> the variables that may hold their key, in the order tried.
PROVIDER_KEYS = {
    "openai": ("OPENAI_API_KEY",),
    "anthropic": ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN"),
    "gemini": ("GOOGLE_API_KEY", "GEMINI_API_KEY"),
    "google": ("GOOGLE_API_KEY", "GEMINI_API_KEY"),
    "openrouter": ("OPENROUTER_API_KEY",),
    "xai": ("XAI_API_KEY",),
    "ollama": (),
}

KIB = 1024
#: Caps of SPEC §4, stated in the prompt wherever one is hit.
FILE_CAP = 64 * KIB
GLOB_MAX_FILES = 40
GLOB_CAP = 160 * KIB
DIFF_CAP = 256 * KIB
CMD_CAP = 64 * KIB
PROMPT_CAP = 512 * KIB
#: `summary` history keeps this many characters of each earlier result.
SUMMARY_CHARS = 600
#: Seconds: a step (default), a cmd: context (at most), one git command.
STEP_TIMEOUT = 1800
CMD_TIMEOUT = 300
GIT_TIMEOUT = 120

#: Files never read as context, matched case-insensitively against each path
#: component (SPEC §4); `.env.example` is the one .env* file that may be read. Each is a
#: NAME, a PREFIX* or a *SUFFIX (_never_read matches nothing else).
NEVER_READ = (".env*", "*.pem", "*.key", "*.p12", "*.pfx", "id_rsa*", "id_ed25519*",
              ".netrc", ".npmrc", ".pypirc")

#: The review-status line of SPEC §8 (the last matching line counts).
REVIEW_STATUS_RE = _Regex(
    r"(?im)^[\s>#*_`-]*review status\s*:\s*[*_`]*\s*(pass|revise)\b")

# == 2. Errors ================================================================


class AethrError(Exception):
    """An expected failure: reported as one line, without a traceback."""

    exit_code = 3

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(AethrError):
    """A command line or environment the user must fix; nothing was run."""

    exit_code = 2


class ConfigError(AethrError):
    """A workflow that cannot be used; `.problems` holds (path, line, column, message, hint)."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None,
                 problems: list[tuple[str, int, int, str, str | None]] | None = None) -> None:
        super().__init__(message, hint=hint)
        self.problems = problems or []


class YAMLError(ConfigError):
    """Text outside the YAML subset; `.line` and `.column` are 1-based."""

    def __init__(self, message: str, *, line: int, column: int, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.line = line
        self.column = column
        self.problems = [("<string>", line, column, message, hint)]

    def __str__(self) -> str:
        return f"{self.line}:{self.column}: {self.message}"


class GitError(AethrError):
    """A git command failed; the message carries git's own stderr."""


class BackendError(AethrError):
    """A step backend (a model provider or OpenCode) failed."""


class StepFailed(AethrError):
    """A step failed; `.checkpoint` holds what is needed to resume the run."""

    def __init__(self, message: str, *, hint: str | None = None, step: str = "",
                 checkpoint: dict | None = None) -> None:
        super().__init__(message, hint=hint)
        self.step = step
        self.checkpoint = checkpoint


# == 3. Terminal output =======================================================

_BOX = {"top": "\u256d\u2500 ", "bottom": "\u2570\u2500 ", "dot": " \u00b7 ", "dash": "\u2014"}
_ASCII = {"top": "+- ", "bottom": "+- ", "dot": " - ", "dash": "-"}
_STYLES = {"bold": "1", "dim": "2", "red": "31", "green": "32", "yellow": "33", "cyan": "36",
           "head": "1;36"}


def _windows_vt(stream: Any) -> bool:
    """Switch a Windows console to virtual-terminal mode (ANSI colour); False if it can't."""
    try:
        import ctypes
        import msvcrt

        handle = msvcrt.get_osfhandle(stream.fileno())
        kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
        mode = ctypes.c_uint32()
        if not kernel32.GetConsoleMode(handle, ctypes.byref(mode)):
            return False
        return bool(kernel32.SetConsoleMode(handle, mode.value | 0x0004))
    except (ImportError, AttributeError, OSError, ValueError):
        return False


class Term:
    """Every write goes through here: stdout for results, stderr for status.

    Tests build one with StringIO streams and a dict for the environment.
    """

    def __init__(self, out: IO[str] | None = None, err: IO[str] | None = None,
                 environ: dict[str, str] | None = None, inp: IO[str] | None = None) -> None:
        self.out = out if out is not None else sys.stdout
        self.err = err if err is not None else sys.stderr
        self.inp = inp if inp is not None else sys.stdin
        self.environ = os.environ if environ is None else environ
        self.no_color = False
        self.debug = False          # AETHR_DEBUG, from the environment or the project's .env
        self._decided: dict[int, tuple[bool, bool]] = {}

    @staticmethod
    def isatty(stream: Any) -> bool:
        """True when `stream` is an interactive terminal."""
        try:
            return bool(stream.isatty())
        except (AttributeError, ValueError, OSError):
            return False

    def _decide(self, stream: Any) -> tuple[bool, bool]:
        # Colour per stream, in rich's order (SPEC §9); box characters when the
        # stream's encoding can show them (a cp1252 console cannot).
        key = id(stream)
        if key not in self._decided:
            env = self.environ
            if self.no_color or env.get("NO_COLOR"):
                color = False
            elif env.get("FORCE_COLOR") not in (None, "", "0"):
                color = True
            else:                       # a Windows console needs VT mode switched on
                color = self.isatty(stream) and env.get("TERM") != "dumb" and (
                    os.name != "nt" or _windows_vt(stream))
            encoding = getattr(stream, "encoding", None) or "utf-8"
            try:
                "".join(_BOX.values()).encode(encoding)
                boxes = True
            except (LookupError, UnicodeEncodeError):
                boxes = False
            self._decided[key] = (color, boxes)
        return self._decided[key]

    def color(self, stream: Any) -> bool:
        """Whether ANSI colour goes to `stream`."""
        return self._decide(stream)[0]

    def glyph(self, name: str, stream: Any = None) -> str:
        """A box-drawing glyph, or its ASCII stand-in."""
        boxes = self._decide(self.err if stream is None else stream)[1]
        return (_BOX if boxes else _ASCII)[name]

    def paint(self, text: str, style: str, stream: Any = None) -> str:
        """`text` in `style` when the stream gets colour."""
        if not self.color(self.err if stream is None else stream):
            return text
        return f"\x1b[{_STYLES[style]}m{text}\x1b[0m"

    def write(self, text: str) -> None:
        """Result text to stdout, flushed at once (streamed output)."""
        self.out.write(text)
        self.out.flush()

    def status(self, text: str) -> None:
        """One line of status on stderr."""
        self.err.write(text + "\n")
        self.err.flush()

    def note(self, text: str) -> None:
        """A note on stderr."""
        self.status(f"aethr: {self.paint('note', 'cyan')}: {text}")

    def warn(self, text: str) -> None:
        """A warning on stderr."""
        self.status(f"aethr: {self.paint('warning', 'yellow')}: {text}")

    def error(self, exc: AethrError, *, traceback: bool = False) -> None:
        """Report an expected error: problems, `aethr: error: …`, `aethr: hint: …`."""
        if traceback:
            import traceback as tb

            self.err.write("".join(tb.format_exception(exc)))
        for path, line, column, message, hint in getattr(exc, "problems", ()):
            self.status(f"{path}:{line}:{column}: {message}")
            if hint:
                self.status(f"    hint: {hint}")
        self.status(f"aethr: {self.paint('error', 'red')}: {exc.message}")
        if exc.hint:
            self.status(f"aethr: hint: {exc.hint}")

    def bug(self) -> None:
        """Report an unexpected exception: the traceback and a request to report it."""
        import traceback

        self.err.write(traceback.format_exc())
        self.status(f"aethr: {self.paint('error', 'red')}: this is a bug in aethr {__version__}; "
                    "please report it with the traceback above")


def _plural(n: int, word: str, plural: str | None = None) -> str:
    """`1 step`, `3 steps`, `12,431 tokens`."""
    return f"{n:,} {word if n == 1 else (plural or word + 's')}"


def _seconds(s: float) -> str:
    """A duration as people read it: `0.4 s`, `12 s`, `3 min 05 s`."""
    if s < 10:
        return f"{s:.1f} s"
    if s < 59.5:
        return f"{s:.0f} s"
    return f"{int(s // 60)} min {int(s % 60):02d} s"


def _changed(names: list[str]) -> str:
    """`2 files changed: M a.py, A b.py` (at most five names), or `no files changed`."""
    if not names:
        return "no files changed"
    more = f", +{len(names) - 5} more" if len(names) > 5 else ""
    return f"{_plural(len(names), 'file')} changed: {', '.join(names[:5])}{more}"


def _usage_parts(usage: dict, *, tokens: bool = True) -> list[str]:
    """Usage as the footer shows it: tokens in/out, reasoning apart, cost when reported."""
    parts = []
    if tokens and (usage.get("input") or usage.get("output")):
        parts.append(f"tokens {usage.get('input', 0):,} in / {usage.get('output', 0):,} out")
    if usage.get("reasoning"):
        parts.append(f"reasoning {usage['reasoning']:,}")
    if usage.get("cost"):
        parts.append(f"cost ${usage['cost']:.4f}")
    return parts


class TermView:
    """Shows runner events: panels on the terminal, `## STEP-ID` documents when redirected."""

    def __init__(self, term: Term) -> None:
        self.term = term
        self.out_tty = term.isatty(term.out)
        self._at_line_start = True

    def __call__(self, event: dict) -> None:
        getattr(self, "_on_" + event["event"], lambda e: None)(event)

    def _on_run_start(self, e: dict) -> None:
        mode = "mock mode: no model is called" if e["mode"] == "mock" else "live mode"
        dot = self.term.glyph("dot").strip()
        self.term.status(self.term.paint(f"aethr: workflow {e['workflow']} ({e['source']}) {dot} "
                                         f"{_plural(len(e['steps']), 'step')} {dot} {mode}", "dim"))

    def _on_step_start(self, e: dict) -> None:
        t = self.term
        if not self.out_tty:
            t.write(f"## {e['step']}\n\n")
        parts = [f"step {e['number']}/{e['total']}", e["step"], e["role"], e["where"]]
        if e.get("max_iterations"):
            parts.append(f"iteration {e['iteration']}/{e['max_iterations']}")
        t.status(t.glyph("top") + t.paint(t.glyph("dot").join(parts), "head"))
        self._at_line_start = True

    def _on_text(self, e: dict) -> None:
        if e["text"]:
            self.term.write(e["text"])
            self._at_line_start = e["text"].endswith("\n")

    def _on_warning(self, e: dict) -> None:
        self.term.warn(e["message"])

    def _on_reasoning(self, e: dict) -> None:
        # Thinking is not the answer (SPEC §6): dimmed on stderr, and only on a terminal.
        if self.term.isatty(self.term.err):
            self.term.err.write(self.term.paint(e["text"], "dim"))
            self.term.err.flush()

    def _end_line(self) -> None:
        """End the answer's open line on stdout, if there is one."""
        if not self._at_line_start:
            self.term.write("\n")
            self._at_line_start = True

    def _on_progress(self, e: dict) -> None:
        self._end_line()
        self.term.status(self.term.paint(f"  {e['message']}", "dim"))

    def _on_step_end(self, e: dict) -> None:
        t = self.term
        self._end_line()
        if not self.out_tty:
            t.write("\n")
        parts = [_seconds(e["duration"])] + _usage_parts(e.get("usage") or {})
        if e.get("review_status"):
            parts.append(f"review status: {e['review_status']}")
        art = e.get("artifact")
        if art is not None:
            parts.append(_changed([f"{f['status']} {f['path']}" for f in art["files"]]))
            if art.get("note"):
                parts.append(art["note"])
        t.status(t.glyph("bottom") + t.paint(t.glyph("dot").join(parts), "dim"))

    def _on_run_end(self, e: dict) -> None:
        verdict = e["verdict"]
        if verdict in ("failed", "interrupted"):
            return                      # main() reports the failure itself
        t, dot = self.term, self.term.glyph("dot")
        total = e.get("usage") or {}
        tokens = total.get("input", 0) + total.get("output", 0)
        parts = [_plural(e["steps_run"], "step") + " run", _seconds(e["duration"]),
                 _plural(tokens, "token")] + _usage_parts(total, tokens=False) + [
                 f"{e['mode']} mode",
                 "verdict " + t.paint(verdict, "green" if verdict == "pass" else "yellow")]
        t.status("aethr: " + dot.join(parts))
        if e["mode"] == "mock":
            t.status("aethr: mock mode: no model was called; the answers above are stand-ins "
                     "built from the real prompts")
            t.status("aethr: hint: go live with --live (or AETHR_LIVE=1) once the keys are set: "
                     "aethr auth login PROVIDER")


class JsonView:
    """`--json`: one JSON object per line on stdout (SPEC §2); no text stream, no colour."""

    _QUIET = ("text", "reasoning", "progress", "warning")

    def __init__(self, term: Term) -> None:
        self.term = term
        self._end: dict | None = None

    def __call__(self, event: dict) -> None:
        kind = event["event"]
        if kind == "warning":
            self.term.warn(event["message"])
        if kind in self._QUIET:
            return
        if kind == "run_end" and event["verdict"] in ("failed", "interrupted"):
            self._end = event           # written once the checkpoint path is known
            return
        self._write(event)

    def _write(self, event: dict) -> None:
        import json

        self.term.write(json.dumps(event, ensure_ascii=False) + "\n")

    def checkpoint(self, path: str | None) -> None:
        """The run failed: its run_end names the checkpoint."""
        if self._end is not None:
            self._write(dict(self._end, checkpoint=path))
            self._end = None


# == 4. YAML-subset parser ====================================================

# The accepted subset (SUBSET.md in the YAML conformance cases is the full definition):
#   * one document: blank and comment lines and at most one "---" line come first;
#   * block mappings and sequences (a sequence may sit at its key's column), single-line plain
#     and quoted scalars, literal (|) and folded (>) block scalars with chomping (- +), and
#     single-line flow collections ([a, b], {k: v}, trailing comma, {k: } as null);
#   * everything accepted means what YAML 1.2.2 says, except that keys are always strings and a
#     missing final line break changes nothing. Values get core-schema typing (null ~ true
#     false ints 0o 0x floats .inf .nan, three spellings each); yes/no/on/off stay strings.
# Everything else is an error with a position, never a guess: tabs outside quotes, comments
# and block-scalar text; anchors, aliases and tags; directives, "...", a second "---" and
# text after "---"; "? " keys, collection, empty and "<<" keys, duplicate keys; multi-line
# plain, quoted and flow scalars; a value on the line after its key or dash; "- - x";
# "|2" indentation indicators; "{a, b}", "[a: b]" and '{"a":1}' (SUBSET.md section 8, all
# rejected). Rules take (lines, i, ...) and return (next line index, value); the flow rules
# work inside one line and take and return a column instead, like tomllib's (src, pos).

#: Characters outside YAML's printable set (line breaks are all "\n" by now). A BOM is
#: printable but not allowed inside a document (YAML 1.2 nb-char), only at its start. The bad
#: ranges are listed, not the complement of the good ones: that class took 6 ms to compile.
_YAML_BAD_CHAR = _Regex(r"[\x00-\x08\x0b-\x1f\x7f-\x84\x86-\x9f\ud800-\udfff\ufeff\ufffe\uffff]")
#: Characters that cannot start a plain scalar (YAML 1.2 c-indicator minus "-?:").
_YAML_INDICATORS = frozenset("[]{},#&*!|>'\"%@`")
_YAML_START_ERRORS = {
    "&": "anchors ('&') are not supported",
    "*": "aliases ('*') are not supported",
    "!": "tags ('!') are not supported",
    "?": "explicit keys ('? ') are not supported",
}
_YAML_ESCAPES = {
    "0": "\0", "a": "\a", "b": "\b", "t": "\t", "\t": "\t", "n": "\n", "v": "\v", "f": "\f",
    "r": "\r", "e": "\x1b", " ": " ", '"': '"', "/": "/", "\\": "\\", "N": "\x85", "_": "\xa0",
    "L": "\u2028", "P": "\u2029",
}
_YAML_HEX_ESCAPES = {"x": 2, "u": 4, "U": 8}
_YAML_HEX = frozenset("0123456789abcdefABCDEF")
_YAML_NULLS = frozenset(("~", "null", "Null", "NULL"))
_YAML_BOOLS = {"true": True, "True": True, "TRUE": True,
               "false": False, "False": False, "FALSE": False}
#: YAML 1.2.2 core schema (section 10.3.2): the plain scalars that are numbers. Only those
#: that start like one are matched (and plain integers never): most scalars are words, and
#: re costs more to import than a whole small workflow costs to parse.
_YAML_NUMBER = _Regex(
    r"(?P<int>[-+]?[0-9]+)|0o(?P<oct>[0-7]+)|0x(?P<hex>[0-9a-fA-F]+)"
    r"|(?P<float>[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?)"
    r"|(?P<inf>[-+]?\.(?:inf|Inf|INF))|(?P<nan>\.(?:nan|NaN|NAN))")
#: Nested collections allowed; deeper input is an error rather than a RecursionError (each
#: level costs two Python frames).
_YAML_MAX_DEPTH = 200
#: YAML limits implicit keys to 1024 characters.
_YAML_MAX_KEY = 1024
_YAML_TAB = "tab character not allowed here, use spaces"
_YAML_INDENT_HINT = "entries of one block start at the same column; multi-line text needs '|'"


def parse_yaml(text: str) -> object:
    """Parse a document of the config YAML subset into dicts, lists and scalars."""
    return _yaml_load_marked(text)[0]


def _yaml_load_marked(text: str) -> tuple[object, dict, dict]:
    """Parse text; also return {path: (line, column)} for every key and every value."""
    key_marks: dict = {}
    value_marks: dict = {(): (1, 1)}
    marks = (key_marks, value_marks)
    lines = _yaml_lines(text)
    n = len(lines)
    # 1. Blank and comment lines, then at most one "---" line (with only a comment after it).
    i = 0
    while i < n and _yaml_blank(lines[i]):
        i += 1
    if i < n and lines[i].startswith("%"):
        raise _yaml_err(i, 0, "directives ('%...') are not supported")
    if i < n and lines[i].startswith("---") and _yaml_marker(lines[i]):
        pos = _yaml_spaces(lines[i], i, 3)
        if pos < len(lines[i]) and lines[i][pos] != "#":
            raise _yaml_err(i, pos, "content on the '---' line is not supported",
                            hint="start the document on the next line")
        i += 1
    i = _yaml_skip(lines, i)
    if i == n:
        return None, key_marks, value_marks
    # 2. The root node: a block collection, or a value on its own line (root only).
    line = lines[i]
    col = _yaml_indent(line)
    try:
        if _yaml_is_dash(line, col):
            i, value = _yaml_seq(lines, i, col, -1, (), marks, 0)
        elif _yaml_key(line, i, col) is not None:
            i, value = _yaml_map(lines, i, col, (), marks, 0)
        else:
            i, value = _yaml_inline(lines, i, col, -1, (), marks, 0)
    except RecursionError:
        # Only reachable when the caller's own stack is already deep.
        raise _yaml_err(i, col, "document nested too deeply") from None
    # 3. Nothing may follow it.
    i = _yaml_skip(lines, i)
    if i < n:
        ind = _yaml_indent(lines[i])
        if ind < col:
            raise _yaml_err(i, ind, "inconsistent indentation", _YAML_INDENT_HINT)
        raise _yaml_err(i, ind, "unexpected content after the document's root value")
    return value, key_marks, value_marks


def _yaml_err(i: int, col: int, msg: str, hint: str | None = None) -> YAMLError:
    """The error for 0-based line i and column col, to be raised by the caller."""
    return YAMLError(msg, line=i + 1, column=col + 1, hint=hint)


def _yaml_lines(text: str) -> list[str]:
    """Split text into lines, dropping a BOM and rejecting characters YAML cannot hold."""
    if text.startswith("\ufeff"):
        text = text[1:]
    # \r\n, \r and \n are all line breaks (YAML 1.2 b-break); block scalars get "\n".
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    # Printable text holds none of them; only other text pays for the regex.
    bad = (None if text.replace("\t", "").replace("\n", "").isprintable()
           else _YAML_BAD_CHAR.search(text))
    if bad:
        pos = bad.start()
        raise _yaml_err(text.count("\n", 0, pos), pos - text.rfind("\n", 0, pos) - 1,
                        f"character U+{ord(text[pos]):04X} is not allowed in YAML")
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines


def _yaml_indent(line: str, pos: int = 0) -> int:
    """The column of the first non-space at or after pos (len(line) if none)."""
    return len(line) - len(line[pos:].lstrip(" "))


def _yaml_blank(line: str) -> bool:
    """Whether a line holds nothing: spaces, then maybe a comment."""
    rest = line.lstrip(" ")
    return not rest or rest[0] == "#"


def _yaml_marker(line: str) -> bool:
    """Whether a document marker ("---" or "...") starts the line."""
    return line[:3] in ("---", "...") and line[3:4] in ("", " ", "\t")


def _yaml_is_dash(line: str, col: int) -> bool:
    """Whether a block sequence entry ("- " or a lone "-") starts at col."""
    return line.startswith("-", col) and (col + 1 == len(line) or line[col + 1] in " \t")


def _yaml_spaces(line: str, i: int, pos: int) -> int:
    """Skip spaces from pos; a tab there is an error (the subset's one rule for tabs)."""
    pos = _yaml_indent(line, pos)
    if line.startswith("\t", pos):
        raise _yaml_err(i, pos, _YAML_TAB)
    return pos


def _yaml_eol(line: str, i: int, pos: int, what: str = "the value", hint: str | None = None
              ) -> None:
    """Check that only spaces and a comment follow pos (the end of `what`)."""
    pos = _yaml_spaces(line, i, pos)
    if pos < len(line) and not (line[pos] == "#" and line[pos - 1] == " "):
        if line[pos] == "#":
            # YAML needs white space before a comment: 'key: "v"# c' is an error
            # (yaml-test-suite SU5Z, 9JBA, CVW2), although PyYAML accepts it.
            raise _yaml_err(i, pos, "a comment needs a space before '#'")
        raise _yaml_err(i, pos, f"unexpected text after {what}", hint)


def _yaml_skip(lines: list[str], i: int) -> int:
    """Index of the first line at or after i that holds content (not blank or a comment)."""
    while i < len(lines):
        line = lines[i]
        if not _yaml_blank(line):
            if _yaml_marker(line):
                if line[0] == "-":
                    raise _yaml_err(i, 0, "only one document is allowed",
                                    hint="remove this '---' line or split the file")
                raise _yaml_err(i, 0, "the document end marker '...' is not supported")
            col = _yaml_indent(line)
            if line[col] == "\t":
                raise _yaml_err(i, col, _YAML_TAB)
            return i
        i += 1
    return i


def _yaml_map(lines: list[str], i: int, col: int, path: tuple, marks: tuple[dict, dict],
              depth: int) -> tuple[int, dict]:
    """Parse a block mapping whose first key starts at column col of line i."""
    key_marks, value_marks = marks
    value_marks[path] = (i + 1, col + 1)
    result: dict = {}
    while True:
        line = lines[i]
        if _yaml_is_dash(line, col):
            raise _yaml_err(i, col, "sequence item where a key is expected")
        found = _yaml_key(line, i, col)
        if found is None:
            raise _yaml_err(i, col, "expected 'key: value'",
                            hint="put a space after the ':'" if ":" in line and ": " not in line
                            else None)
        key, pos = found
        kpath = path + (key,)
        if key in result:
            raise _yaml_err(i, col, f"duplicate key {key!r} (first defined at line "
                                    f"{key_marks[kpath][0]})")
        key_marks[kpath] = (i + 1, col + 1)
        i, result[key] = _yaml_value(lines, i, pos, col, kpath, marks, depth, True)
        i = _yaml_skip(lines, i)
        if i == len(lines):
            return i, result
        ind = _yaml_indent(lines[i])
        if ind < col:
            return i, result
        if ind > col:
            raise _yaml_err(i, ind, "inconsistent indentation", _YAML_INDENT_HINT)


def _yaml_seq(lines: list[str], i: int, col: int, parent: int, path: tuple,
              marks: tuple[dict, dict], depth: int) -> tuple[int, list]:
    """Parse a block sequence with its dashes at column col (== parent: a key's own column)."""
    marks[1][path] = (i + 1, col + 1)
    items: list = []
    while True:
        line = lines[i]
        ipath = path + (len(items),)
        pos = _yaml_spaces(line, i, col + 1)
        if pos == len(line) or line[pos] == "#":
            i, item = _yaml_value(lines, i, pos, col, ipath, marks, depth, False)
        elif _yaml_is_dash(line, pos):
            raise _yaml_err(i, pos, "compact nested sequences ('- - x') are not supported",
                            hint="start the inner sequence on the next line, indented")
        elif _yaml_key(line, i, pos) is not None:
            # A compact mapping "- key: v": its further keys line up with the first one.
            i, item = _yaml_map(lines, i, pos, ipath, marks, depth + 1)
        else:
            i, item = _yaml_inline(lines, i, pos, col, ipath, marks, depth)
        items.append(item)
        i = _yaml_skip(lines, i)
        if i == len(lines):
            return i, items
        line = lines[i]
        ind = _yaml_indent(line)
        if ind < col or (ind == col == parent and not _yaml_is_dash(line, col)):
            return i, items
        if ind > col:
            raise _yaml_err(i, ind, "inconsistent indentation", _YAML_INDENT_HINT)
        if not _yaml_is_dash(line, col):
            raise _yaml_err(i, col, "expected a sequence item ('- ')")


def _yaml_value(lines: list[str], i: int, pos: int, col: int, path: tuple,
                marks: tuple[dict, dict], depth: int, in_map: bool) -> tuple[int, object]:
    """Parse what follows a key's ':' (or a '-') at column col: a value, a nested block or null."""
    line = lines[i]
    pos = _yaml_spaces(line, i, pos)
    if pos < len(line) and line[pos] != "#":
        return _yaml_inline(lines, i, pos, col, path, marks, depth)
    j = _yaml_skip(lines, i + 1)
    if j < len(lines):
        ind = _yaml_indent(lines[j])
        dash = _yaml_is_dash(lines[j], ind)
        # A sequence may sit at its key's column ("steps:\n- id: a"), a mapping may not.
        if ind > col or (ind == col and dash and in_map):
            if depth >= _YAML_MAX_DEPTH:
                raise _yaml_err(j, ind, "document nested too deeply")
            if dash:
                return _yaml_seq(lines, j, ind, col, path, marks, depth + 1)
            if _yaml_key(lines[j], j, ind) is not None:
                return _yaml_map(lines, j, ind, path, marks, depth + 1)
            raise _yaml_err(j, ind, "a value must start on the line of its key or '-'",
                            hint="move it up, or use '|' and indent it for multi-line text")
    marks[1][path] = (i + 1, col + 1)
    return i + 1, None


def _yaml_inline(lines: list[str], i: int, pos: int, col: int, path: tuple,
                 marks: tuple[dict, dict], depth: int) -> tuple[int, object]:
    """Parse the value starting at column pos; only a block scalar goes past line i."""
    line = lines[i]
    marks[1][path] = (i + 1, pos + 1)
    ch = line[pos]
    if ch in "|>":
        return _yaml_block_scalar(lines, i, pos, col)
    if ch in "[{":
        end, value = _yaml_flow(line, i, pos, path, marks, depth + 1)
        if line.startswith(":", _yaml_spaces(line, i, end)):
            raise _yaml_err(i, pos, "a flow collection cannot be a mapping key")
        _yaml_eol(line, i, end)
        return i + 1, value
    if _yaml_is_dash(line, pos):
        raise _yaml_err(i, pos, "a block sequence cannot start on this line",
                        hint="start it on the next line")
    end, text, plain = _yaml_token(line, i, pos, False)
    after = _yaml_spaces(line, i, end)
    if line.startswith(":", after):
        raise _yaml_err(i, after, "mapping values are not allowed here",
                        hint=_yaml_quote_hint(line, pos) if plain else None)
    _yaml_eol(line, i, after)
    return i + 1, _yaml_typed(text, i, pos) if plain else text


def _yaml_key(line: str, i: int, pos: int) -> tuple[str, int] | None:
    """(key, column after its ':') if a "key:" entry starts at pos, else None."""
    ch = line[pos]
    if ch in "[{|>":
        return None
    if ch == ":" and line[pos + 1:pos + 2] in ("", " ", "\t"):
        raise _yaml_err(i, pos, "empty key")
    end, key, plain = _yaml_token(line, i, pos, False)
    colon = _yaml_spaces(line, i, end)
    if not line.startswith(":", colon) or line[colon + 1:colon + 2] not in ("", " ", "\t"):
        return None
    if plain and key == "<<":
        raise _yaml_err(i, pos, "merge keys ('<<') are not supported",
                        hint='write the entries out, or quote the key: "<<"')
    if end - pos > _YAML_MAX_KEY:
        raise _yaml_err(i, pos, f"key longer than {_YAML_MAX_KEY} characters")
    return key, colon + 1


def _yaml_token(line: str, i: int, pos: int, flow: bool) -> tuple[int, str, bool]:
    """Scan the quoted or plain scalar at pos: (end column, text, whether it was plain)."""
    ch = line[pos]
    if ch == "'":
        end = _yaml_single_end(line, pos)
        if end < 0:
            raise _yaml_err(i, pos, "single-quoted scalar not closed on its line",
                            hint="multi-line quoted scalars are not supported; use '|'")
        return end, line[pos + 1:end - 1].replace("''", "'"), False
    if ch == '"':
        end = _yaml_double_end(line, pos)
        if end == len(line):
            raise _yaml_err(i, pos, "double-quoted scalar not closed on its line",
                            hint="multi-line quoted scalars are not supported; use '|'")
        if line[end] == "\\":
            raise _yaml_err(i, end, "'\\' at the end of a line",
                            hint="multi-line quoted scalars are not supported; use '|'")
        return end + 1, _yaml_unescape(line, i, pos + 1, end), False
    nxt = line[pos + 1:pos + 2]
    if ch in _YAML_INDICATORS or (
            ch in "-?:" and (nxt in ("", " ", "\t") or (flow and nxt in ",[]{}"))):
        raise _yaml_err(i, pos, _YAML_START_ERRORS.get(ch, f"{ch!r} cannot start a plain scalar"),
                        hint=None if ch == "?" else _yaml_quote_hint(line, pos, flow))
    end = _yaml_plain_end(line, pos + 1, flow)
    if line.startswith("\t", end):
        raise _yaml_err(i, end, _YAML_TAB)
    return end, line[pos:end], True


def _yaml_single_end(line: str, pos: int) -> int:
    """The end of the single-quoted scalar that opens at pos ('' is a quote), or -1."""
    pair = -1
    while True:
        k = line.find("'", pos + 1)
        if k < 0:   # not closed, unless the last '' was a closing quote and an opening one
            return pair + 1 if pair >= 0 else -1
        if not line.startswith("'", k + 1):
            return k + 1
        pair, pos = k, k + 1


def _yaml_double_end(line: str, pos: int) -> int:
    """Where the double-quoted scalar that opens at pos stops: its closing quote, a
    backslash that ends the line, or the end of the line."""
    n = len(line)
    pos += 1
    while pos < n and line[pos] != '"':
        if line[pos] == "\\":
            if pos + 1 == n:
                break
            pos += 1
        pos += 1
    return pos


def _yaml_plain_end(line: str, pos: int, flow: bool) -> int:
    """The end of a plain scalar whose rest starts at pos (YAML 1.2 ns-plain-char plus inner
    spaces): ": " and a ":" that ends the line stop it, and so does " #"; in flow context the
    flow indicators stop it too. Tabs stop it as well, and are then reported."""
    stops, after_colon = (" \t:#,[]{}", " \t,[]{}") if flow else (" \t:#", " \t")
    n = len(line)
    while pos < n:
        ch = line[pos]
        if ch == " ":   # spaces belong to the scalar only when more of it follows them
            nxt = _yaml_indent(line, pos)
            if nxt == n or (line[nxt] in stops and not (
                    line[nxt] == ":" and nxt + 1 < n and line[nxt + 1] not in after_colon)):
                return pos
            pos = nxt
        elif ch == ":":
            if pos + 1 == n or line[pos + 1] in after_colon:
                return pos
            pos += 1
        elif ch in stops and (ch != "#" or line[pos - 1:pos] == " "):
            return pos
        else:
            pos += 1
    return pos


def _yaml_quote_hint(line: str, pos: int, flow: bool = False) -> str:
    """A hint that shows the value from pos to the end of the line double-quoted."""
    if flow:
        return "quote the value"
    text = line[pos:].split(" #")[0].rstrip(" ").replace("\\", "\\\\").replace('"', '\\"')
    return f'quote the value: "{text}"'


def _yaml_unescape(line: str, i: int, start: int, end: int) -> str:
    """The text of line[start:end], a double-quoted body, with its escapes replaced."""
    out = []
    pos = start
    while True:
        k = line.find("\\", pos, end)
        if k < 0:
            out.append(line[pos:end])
            return "".join(out)
        out.append(line[pos:k])
        ch = line[k + 1]
        if ch in _YAML_ESCAPES:
            out.append(_YAML_ESCAPES[ch])
            pos = k + 2
            continue
        size = _YAML_HEX_ESCAPES.get(ch, 0)
        digits = line[k + 2:k + 2 + size]
        if not size or len(digits) != size or not _YAML_HEX.issuperset(digits):
            raise _yaml_err(i, k, f"invalid escape '\\{ch}'",
                            hint="write '\\\\' for a backslash, or use single quotes")
        code = int(digits, 16)
        pos = k + 2 + size
        low = line[pos + 2:pos + 6]
        if (0xD800 <= code < 0xDC00 and line.startswith("\\u", pos) and len(low) == 4
                and _YAML_HEX.issuperset(low) and 0xDC00 <= int(low, 16) < 0xE000):
            # A UTF-16 surrogate pair, as JSON writes characters outside the BMP.
            code = 0x10000 + ((code - 0xD800) << 10) + int(low, 16) - 0xDC00
            pos += 6
        elif 0xD800 <= code < 0xE000 or code > 0x10FFFF:
            raise _yaml_err(i, k, f"escape '\\{ch}{digits}' is not a character")
        out.append(chr(code))


def _yaml_typed(text: str, i: int, pos: int) -> object:
    """The core-schema value of a plain scalar (YAML 1.2.2 section 10.3.2)."""
    if text in _YAML_NULLS:
        return None
    if text in _YAML_BOOLS:
        return _YAML_BOOLS[text]
    digits = text[1:] if text[0] in "+-" else text
    if digits.isascii() and digits.isdigit():
        kind = "int"
    else:
        m = _YAML_NUMBER.fullmatch(text) if text[0] in "0123456789+-." else None
        if m is None:
            return text
        kind = m.lastgroup
    try:
        if kind == "int":
            return int(text)
        if kind in ("oct", "hex"):
            return int(text, 0)     # the pattern allows only 0o17 and 0x1F, as Python writes them
    except ValueError:
        # Python 3.11+ refuses to convert more than 4300 decimal digits.
        raise _yaml_err(i, pos, "integer has too many digits", hint="quote it") from None
    if kind in ("inf", "nan"):
        return float(text.replace(".", ""))  # Python spells them inf and nan
    return float(text)


def _yaml_flow(line: str, i: int, pos: int, path: tuple, marks: tuple[dict, dict],
               depth: int) -> tuple[int, list | dict]:
    """Parse the flow collection that opens at column pos; it must close on the same line."""
    if depth > _YAML_MAX_DEPTH:
        raise _yaml_err(i, pos, "document nested too deeply")
    key_marks, value_marks = marks
    value_marks[path] = (i + 1, pos + 1)
    close = "}" if line[pos] == "{" else "]"
    result: list | dict = {} if close == "}" else []
    p = pos + 1
    while True:
        p = _yaml_spaces(line, i, p)
        if _yaml_flow_cut(line, p):
            raise _yaml_err(i, pos, f"'{line[pos]}' not closed on its line",
                            hint="multi-line flow collections are not supported")
        if line[p] == close:
            return p + 1, result
        if line[p] == ",":
            raise _yaml_err(i, p, "empty entry in a flow collection")
        start = p
        if isinstance(result, dict):
            if line[p] in "[{":
                raise _yaml_err(i, p, "a flow collection cannot be a mapping key")
            p, key, _ = _yaml_token(line, i, p, True)
            p = _yaml_spaces(line, i, p)
            if _yaml_flow_cut(line, p):
                continue  # the check at the top of the loop reports the open bracket
            if not line.startswith(":", p):
                raise _yaml_err(i, p, "expected ':' after a flow mapping key",
                                hint="write entries as 'key: value'")
            if line[p + 1:p + 2] != " ":
                raise _yaml_err(i, p, "expected a space after ':'")
            kpath = path + (key,)
            if key in result:
                raise _yaml_err(i, start, f"duplicate key {key!r} (first defined at column "
                                          f"{key_marks[kpath][1]})")
            key_marks[kpath] = (i + 1, start + 1)
            p = _yaml_spaces(line, i, p + 1)
            if p == len(line) or line[p] in ",}#":
                value_marks[kpath] = (i + 1, start + 1)
                result[key] = None
            else:
                p, result[key] = _yaml_flow_node(line, i, p, kpath, marks, depth)
        else:
            p, item = _yaml_flow_node(line, i, p, path + (len(result),), marks, depth)
            result.append(item)
        p = _yaml_spaces(line, i, p)
        if line.startswith(",", p):
            p += 1
        elif line.startswith(":", p):
            raise _yaml_err(i, p, "mapping values are not allowed here" if close == "}"
                            else "a 'key: value' pair inside '[...]' is not supported",
                            hint=None if close == "}" else "use a flow mapping: {key: value}")
        elif line[p:p + 1] != close and not _yaml_flow_cut(line, p):
            raise _yaml_err(i, p, f"expected ',' or '{close}'")


def _yaml_flow_cut(line: str, p: int) -> bool:
    """Whether a flow collection is cut off at p by the end of the line or a comment."""
    return p == len(line) or (line[p] == "#" and line[p - 1] == " ")


def _yaml_flow_node(line: str, i: int, pos: int, path: tuple, marks: tuple[dict, dict],
                    depth: int) -> tuple[int, object]:
    """Parse one entry of a flow collection: a nested collection or a scalar."""
    if line[pos] in "[{":
        return _yaml_flow(line, i, pos, path, marks, depth + 1)
    marks[1][path] = (i + 1, pos + 1)
    end, text, plain = _yaml_token(line, i, pos, True)
    return end, _yaml_typed(text, i, pos) if plain else text


def _yaml_block_scalar(lines: list[str], i: int, pos: int, parent: int) -> tuple[int, str]:
    """Parse the literal (|) or folded (>) scalar whose header is at column pos."""
    line = lines[i]
    # 1. The header: indicator, optional chomping, then only spaces and a comment.
    chomp = line[pos + 1:pos + 2]
    if chomp not in ("+", "-"):
        chomp = ""
    p = pos + 1 + len(chomp)
    if p < len(line) and line[p] in "0123456789":
        raise _yaml_err(i, p, "block scalar indentation indicators are not supported",
                        hint="remove the digit; the first line sets the indentation")
    _yaml_eol(line, i, p, "a block scalar header", "start the text on the next line, indented")
    # 2. The first line with a non-space character sets the indentation.
    n = len(lines)
    j = i + 1
    indent = -1
    while j < n:
        sp = _yaml_indent(lines[j])
        if sp < len(lines[j]):
            if sp > parent and not (sp == 0 and _yaml_marker(lines[j])):
                indent = sp
            break
        j += 1
    if indent < 0:
        return j, "\n" * (j - i - 1) if chomp == "+" else ""
    for k in range(i + 1, j):
        if len(lines[k]) > indent:
            # YAML 1.2 forbids leading blank lines deeper than the text (suite 5LLU, S98Z).
            raise _yaml_err(k, indent, "blank line indented deeper than the first line "
                                       "of its block scalar")
    # 3. The text ends at the first non-blank line that is indented less.
    while j < n:
        sp = _yaml_indent(lines[j])
        if sp < len(lines[j]) and (sp < indent or (sp == 0 and _yaml_marker(lines[j]))):
            break
        j += 1
    body = [text[indent:] for text in lines[i + 1:j]]
    last = len(body)
    while not body[last - 1]:
        last -= 1
    text = "\n".join(body[:last]) if line[pos] == "|" else _yaml_fold(body[:last])
    # 4. Chomping: strip drops the final break and trailing blank lines, keep keeps them all.
    if chomp == "-":
        return j, text
    return j, text + "\n" * (len(body) - last + 1 if chomp == "+" else 1)


def _yaml_fold(body: list[str]) -> str:
    """Fold block-scalar lines (YAML 1.2 section 8.1.3); "" entries are blank lines."""
    out = []
    prev = ""
    blanks = 0
    for text in body:
        if not text:
            blanks += 1
            continue
        # Lines starting with white space are "more indented": their breaks are kept.
        kind = "spaced" if text[0] in " \t" else "normal"
        if not prev:
            out.append("\n" * blanks)
        elif prev == kind == "normal":
            out.append("\n" * blanks if blanks else " ")
        else:
            out.append("\n" * (blanks + 1))
        out.append(text)
        prev, blanks = kind, 0
    return "".join(out)


# == 5. Workflow: load and validate ===========================================

_TOP_KEYS = ("workflow", "description", "roles", "models", "steps")
_STEP_KEYS = ("id", "role", "backend", "model", "max_tokens", "unsafe_permissions", "timeout",
              "history_visibility", "context", "repeat")
_REPEAT_KEYS = ("back_to", "until_review_pass", "until_contains", "max_iterations")
_BACKENDS = ("model", "opencode")
_HISTORY = ("all", "latest", "summary", "none")
_SOURCES = ("git_diff", "latest_diff", "file", "glob", "cmd")
#: A step id is one word: it names the step in headers and `## STEP-ID` lines.
_STEP_ID_RE = _Regex(r"[^\s\x00-\x1f\x7f-\x9f]+\Z")


def _one_word(sid: str) -> bool:
    """Whether a step id is one word: no white space, no control characters. Printable ids
    without a space (nearly all) are, without importing re."""
    return (sid.isprintable() and " " not in sid) or bool(_STEP_ID_RE.match(sid))


class _Record:
    """A small record: fields by keyword, missing ones None (dataclasses cost start-up time)."""

    __slots__ = ()

    def __init__(self, **fields: Any) -> None:
        for name in self.__slots__:
            setattr(self, name, fields.get(name))


class Repeat(_Record):
    """A loop: run again from `back_to` through the controller step."""

    __slots__ = _REPEAT_KEYS


class Step(_Record):
    """One step of a workflow."""

    __slots__ = _STEP_KEYS + ("index",)


class Workflow(_Record):
    """A validated workflow: roles, models and steps, plus where it came from."""

    __slots__ = ("name", "description", "roles", "models", "steps", "path", "preset", "text",
                 "marks")

    @property
    def source(self) -> str:
        """`preset NAME` or the file's path, for messages."""
        return f"preset {self.preset}" if self.preset else str(self.path)

    def step_index(self, step_id: str) -> int:
        """The index of the step called `step_id`."""
        return next(s.index for s in self.steps if s.id == step_id)

    def controller_of(self, index: int) -> Step | None:
        """The step whose repeat slice contains step `index`, if any."""
        for s in self.steps:
            if s.repeat and self.step_index(s.repeat.back_to) <= index <= s.index:
                return s
        return None


def split_model(model: str) -> tuple[str, str]:
    """`provider:model` split at the first colon (`ollama:qwen3:8b` -> ollama, qwen3:8b)."""
    provider, _, name = model.partition(":")
    return provider.strip().lower(), name.strip()


def resolve_model(workflow: Workflow, step: Step, overrides: dict[str, str] | None = None,
                  environ: dict[str, str] | None = None) -> str | None:
    """The model a step uses (SPEC §2): --model ROLE=, --model, AETHR_MODEL, step, role, default."""
    overrides = overrides or {}
    env_model = (environ or {}).get("AETHR_MODEL", "").strip()
    return (overrides.get(step.role) or overrides.get("*") or env_model or step.model
            or workflow.models.get(step.role) or workflow.models.get("default"))


def _did_you_mean(word: str, choices: Any) -> str | None:
    import difflib

    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None


def _describe(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {value!r}"
    return "a list" if isinstance(value, list) else "a mapping"


def _source_problem(text: str) -> tuple[str, str | None] | None:
    """What is wrong with a context source, as (message, hint), or None."""
    kind, colon, arg = text.partition(":")
    arg = arg.strip()
    if "\0" in text:
        return "a context source may not contain a NUL character", None
    if kind not in _SOURCES:
        return (f"unknown context source {text!r}",
                _did_you_mean(kind, _SOURCES) or "use git_diff, git_diff:REV, latest_diff, "
                "file:PATH, glob:PATTERN or cmd:COMMAND")
    if kind == "latest_diff" and colon:
        return "latest_diff takes no argument", "write latest_diff"
    if kind in ("file", "glob", "cmd") and not arg:
        return f"{kind}: needs an argument", f"for example {kind}:" + {
            "file": "README.md", "glob": "src/**/*.py", "cmd": "pytest -x -q"}[kind]
    if kind == "git_diff" and colon and not arg:
        return "git_diff: needs a revision", "write git_diff for uncommitted changes"
    if kind in ("file", "glob"):
        if arg.startswith(("/", "\\")) or (arg[1:2] == ":" and arg[0].isascii()
                                            and arg[0].isalpha()):
            return f"{kind}: path must be relative to the project root: {arg!r}", None
        if ".." in arg.replace("\\", "/").split("/"):
            return f"{kind}: path must stay inside the project root: {arg!r}", None
        if kind == "glob":
            try:
                _glob_regex(arg)
            except ValueError as exc:
                return f"bad glob pattern {arg!r}: {exc}", None
    return None


def _glob_class(body: str, *, negate: bool) -> str:
    """A `[…]` glob class as a regex class: ranges as fnmatch reads them, every character
    escaped (so `--`, `&&` and `^` mean themselves), never matching `/`."""
    import re

    items, i = [], 0
    while i < len(body):
        if i + 2 < len(body) and body[i + 1] == "-":
            low, high = body[i], body[i + 2]
            if low <= high:             # fnmatch drops an empty range such as z-a
                items.append(f"{re.escape(low)}-{re.escape(high)}")
            i += 3
        else:
            items.append(re.escape(body[i]))
            i += 1
    if negate:
        return "[^/" + "".join(items) + "]"
    return "(?!/)[" + "".join(items) + "]" if items else "(?!)"


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """Translate a glob (SPEC §4) into a regex over whole `/`-separated paths.

    Aethr's own translation: pathlib's matching differs between Python versions.
    """
    import re

    while pattern.startswith("./"):
        pattern = pattern[2:]
    parts = pattern.split("/")
    out = []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part == "**":
            out.append(".*" if last else "(?:[^/]+/)*")
            continue
        if not part:
            raise ValueError("empty path component")
        if "**" in part:
            raise ValueError("'**' must be a whole path component, as in 'src/**/x.py'")
        j, piece = 0, []
        while j < len(part):
            c = part[j]
            if c == "[":
                # As in fnmatch: "!" or "^" negates, and a "]" right after them is literal.
                start = j + 2 if part[j + 1:j + 2] in ("!", "^") else j + 1
                end = part.find("]", start + 1 if part[start:start + 1] == "]" else start)
                if end < 0:
                    raise ValueError("'[' without a closing ']'")
                piece.append(_glob_class(part[start:end], negate=start == j + 2))
                j = end
            else:
                piece.append({"*": "[^/]*", "?": "[^/]"}.get(c) or re.escape(c))
            j += 1
        out.append("".join(piece) + ("" if last else "/"))
    try:
        return re.compile("".join(out) + r"\Z")
    except re.error as exc:
        raise ValueError(str(exc)) from None


class _Checker:
    """Collects every problem of a workflow with its position, before anything runs."""

    def __init__(self, display: str, keys: dict, values: dict) -> None:
        self.display = display
        self.keys = keys
        self.values = values
        self.problems: list[tuple[str, int, int, str, str | None]] = []

    def add(self, path: tuple, message: str, hint: str | None = None, *, at_key: bool = False
            ) -> None:
        first, second = (self.keys, self.values) if at_key else (self.values, self.keys)
        line, column = first.get(path) or second.get(path) or (1, 1)
        self.problems.append((self.display, line, column, message, hint))

    def mapping(self, value: object, path: tuple, what: str, known: tuple[str, ...]) -> dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.add(path, f"{what} must be a mapping, not {_describe(value)}")
            return {}
        for key in value:
            if key not in known:
                self.add(path + (key,), f"unknown key {key!r} in {what}",
                         _did_you_mean(key, known) or "known keys: " + ", ".join(known),
                         at_key=True)
        return value

    def table(self, value: object, key: str, what: str) -> dict:
        """The top-level mapping `key` of role name to `what`; {} when absent or not a mapping."""
        if isinstance(value, dict):
            return value
        if value is not None:
            self.add((key,), f"{key} must be a mapping of role name to {what}, not "
                     f"{_describe(value)}")
        return {}

    def string(self, value: object, path: tuple, what: str, *, empty: bool = False) -> str | None:
        if isinstance(value, str):
            if empty or value.strip():
                return value
            self.add(path, f"{what} must not be empty")
            return None
        hint = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            hint = ("quote it, as YAML reads an unquoted 3.10 as the number 3.1"
                    if isinstance(value, float) else f'quote it: "{value}"')
        self.add(path, f"{what} must be a string, not {_describe(value)}", hint)
        return None

    def boolean(self, value: object, path: tuple, what: str) -> bool | None:
        if isinstance(value, bool):
            return value
        self.add(path, f"{what} must be true or false, not {_describe(value)}",
                 "use true or false")
        return None

    def integer(self, value: object, path: tuple, what: str, low: int, high: int | None = None
                ) -> int | None:
        if isinstance(value, int) and not isinstance(value, bool) and value >= low and (
                high is None or value <= high):
            return value
        limits = f"from {low} to {high}" if high is not None else f"of at least {low}"
        self.add(path, f"{what} must be a whole number {limits}, not {_describe(value)}")
        return None

    def choice(self, value: object, path: tuple, what: str, choices: tuple[str, ...]
               ) -> str | None:
        if isinstance(value, str) and value in choices:
            return value
        hint = _did_you_mean(value, choices) if isinstance(value, str) else None
        self.add(path, f"{what} must be one of {', '.join(choices)}, not {_describe(value)}", hint)
        return None

    def model(self, value: object, path: tuple, what: str) -> str | None:
        text = self.string(value, path, what)
        if text is not None and not all(split_model(text)):
            self.add(path, f"{what} must look like provider:model, not {text!r}",
                     "for example openai:gpt-5.5 or anthropic:claude-sonnet-5")
            return None
        return text


def _check_step(ck: _Checker, raw: object, i: int, roles: dict, declared: Any) -> Step | None:
    path = ("steps", i)
    if not isinstance(raw, dict):
        ck.add(path, f"step {i + 1} must be a mapping with id and role, not {_describe(raw)}")
        return None
    ck.mapping(raw, path, f"step {i + 1}", _STEP_KEYS)
    sid = ck.string(raw["id"], path + ("id",), "step id") if "id" in raw \
        else ck.add(path, f"step {i + 1} has no id", "add id: NAME")
    if sid is not None and not _one_word(sid):
        ck.add(path + ("id",), f"step id {sid!r} must be one word, without spaces or control "
               "characters", "for example review-2 or fix_tests")
        sid = None
    label = f"step {sid!r}" if sid else f"step {i + 1}"
    role = ck.string(raw.get("role"), path + ("role",), f"role of {label}") if "role" in raw \
        else ck.add(path, f"{label} has no role", "add role: NAME (a key under roles)")
    if role is not None and role not in declared:
        ck.add(path + ("role",), f"{label} uses role {role!r}, which has no instruction under "
               "roles", _did_you_mean(role, roles) or f"add it under roles: {role}: …")
    backend = ck.choice(raw.get("backend", "model"), path + ("backend",), f"backend of {label}",
                        _BACKENDS)
    step = Step(id=sid, role=role, backend=backend, index=i, history_visibility="all",
                timeout=STEP_TIMEOUT, unsafe_permissions=False, context=[])
    # The optional fields: each key, its check and the check's limits or choices.
    for key, check, *extra in (("model", ck.model), ("max_tokens", ck.integer, 1),
                               ("unsafe_permissions", ck.boolean), ("timeout", ck.integer, 1),
                               ("history_visibility", ck.choice, _HISTORY)):
        if key in raw:
            setattr(step, key, check(raw[key], path + (key,), f"{key} of {label}", *extra))
    if "max_tokens" in raw and backend == "opencode":
        ck.add(path + ("max_tokens",), f"max_tokens applies to model steps only ({label} "
               "uses OpenCode)", "remove it", at_key=True)
    if "unsafe_permissions" in raw and backend == "model":
        ck.add(path + ("unsafe_permissions",), f"unsafe_permissions applies to OpenCode "
               f"steps only ({label} is a model step)", "remove it, or add backend: opencode",
               at_key=True)
    context = raw.get("context")
    if context is not None and not isinstance(context, list):
        ck.add(path + ("context",), f"context of {label} must be a list, not "
               f"{_describe(context)}", "write it as a list: [git_diff, file:README.md]")
    for j, item in enumerate(context if isinstance(context, list) else []):
        text = ck.string(item, path + ("context", j), f"context source of {label}")
        if text is not None:
            problem = _source_problem(text.strip())
            if problem:
                ck.add(path + ("context", j), *problem)
            else:
                step.context.append(text.strip())
    if "repeat" in raw:
        step.repeat = _check_repeat(ck, raw["repeat"], path + ("repeat",), label)
    return step


def _check_repeat(ck: _Checker, raw: object, path: tuple, label: str) -> Repeat | None:
    if not isinstance(raw, dict):
        ck.add(path, f"repeat of {label} must be a mapping, not {_describe(raw)}",
               "repeat: {back_to: implement, until_review_pass: true, max_iterations: 3}")
        return None
    ck.mapping(raw, path, f"repeat of {label}", _REPEAT_KEYS)
    back_to = ck.string(raw.get("back_to"), path + ("back_to",), "back_to") \
        if "back_to" in raw else ck.add(path, f"repeat of {label} has no back_to", at_key=True)
    until_pass = ck.boolean(raw["until_review_pass"], path + ("until_review_pass",),
                            "until_review_pass") if "until_review_pass" in raw else False
    until_contains = ck.string(raw["until_contains"], path + ("until_contains",),
                               "until_contains") if "until_contains" in raw else None
    # A mistyped field was reported already; "exactly one" would only add noise.
    if until_pass is not None and (until_contains is not None or "until_contains" not in raw) \
            and bool(until_pass) == (until_contains is not None):
        ck.add(path, f"repeat of {label} needs exactly one of until_review_pass: true and "
               "until_contains: TEXT", at_key=True)
    iterations = ck.integer(raw.get("max_iterations", 3), path + ("max_iterations",),
                            "max_iterations", 1, 50)
    if back_to is None:
        return None
    # Even with a bad max_iterations the loop is kept, so back_to and overlaps get checked.
    return Repeat(back_to=back_to, until_review_pass=bool(until_pass),
                  until_contains=until_contains, max_iterations=iterations or 1)


def _check_workflow(data: object, ck: _Checker) -> dict:
    """Validate parsed YAML; returns the fields of a Workflow (problems go to `ck`)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        ck.add((), f"a workflow must be a mapping of workflow, roles, models and steps, not "
               f"{_describe(data)}")
        return {}
    ck.mapping(data, (), "the workflow", _TOP_KEYS)
    name = ck.string(data["workflow"], ("workflow",), "workflow") if "workflow" in data else None
    desc = ck.string(data["description"], ("description",), "description", empty=True) \
        if "description" in data else None
    raw_roles = ck.table(data.get("roles"), "roles", "instruction")
    roles: dict[str, str] = {}
    for role, text in raw_roles.items():
        if text is None:
            ck.add(("roles", role), f"role {role!r} has no instruction",
                   "write what this role should do, e.g. a | block of text")
        elif ck.string(text, ("roles", role), f"instruction of role {role!r}") is not None:
            roles[role] = text
    models: dict[str, str] = {}
    for role, value in ck.table(data.get("models"), "models", "provider:model").items():
        if role != "default" and role not in raw_roles:
            ck.add(("models", role), f"models names {role!r}, which is not a role",
                   _did_you_mean(role, list(roles) + ["default"])
                   or "keys under models are role names or default", at_key=True)
        if ck.model(value, ("models", role), f"model of role {role!r}") is not None:
            models[role] = value
    raw_steps = data.get("steps")
    steps: list[Step] = []
    if not isinstance(raw_steps, list) or not raw_steps:
        ck.add(("steps",) if "steps" in data else (),
               "the workflow has no steps" if not raw_steps else
               f"steps must be a list, not {_describe(raw_steps)}",
               "add steps: a list of {id, role, ...} mappings", at_key=not raw_steps)
    for i, raw in enumerate(raw_steps if isinstance(raw_steps, list) else ()):
        step = _check_step(ck, raw, i, roles, raw_roles)
        if step is not None:
            steps.append(step)
    _check_steps_together(ck, steps, models)
    return {"name": name, "description": desc, "roles": roles, "models": models, "steps": steps}


def _check_steps_together(ck: _Checker, steps: list[Step], models: dict[str, str]) -> None:
    ids: dict[str, int] = {}
    for step in steps:
        if step.id in ids:
            ck.add(("steps", step.index, "id"), f"duplicate step id {step.id!r} (first used by "
                   f"step {ids[step.id] + 1})")
        elif step.id is not None:
            ids[step.id] = step.index
    slices: list[tuple[int, int, Step]] = []
    for step in steps:
        rep = step.repeat
        if rep is None or step.id is None:
            continue
        start = ids.get(rep.back_to)
        where = ("steps", step.index, "repeat", "back_to")
        if start is None:
            ck.add(where, f"back_to names no step: {rep.back_to!r}",
                   _did_you_mean(rep.back_to, ids) or "use the id of this step or an earlier one")
        elif start > step.index:
            ck.add(where, f"back_to must name this step or an earlier one; {rep.back_to!r} "
                   f"comes later")
        else:
            for other_start, other_end, other in slices:
                if start <= other_end and other_start <= step.index:
                    ck.add(where, f"the repeat of step {step.id!r} overlaps the repeat of step "
                           f"{other.id!r}", "loops may not share steps")
            slices.append((start, step.index, step))
    # An unknown provider is always an error for model steps; OpenCode takes any provider id.
    reported = set()
    for step in steps:
        if step.backend != "model" or step.role is None:
            continue
        for path, model in ((("steps", step.index, "model"), step.model),
                            (("models", step.role), models.get(step.role)),
                            (("models", "default"), models.get("default"))):
            if model:
                provider = split_model(model)[0]
                if provider not in PROVIDER_KEYS and path not in reported:
                    reported.add(path)
                    ck.add(path, f"unknown provider {provider!r} in model {model!r}",
                           _did_you_mean(provider, PROVIDER_KEYS)
                           or "providers: " + ", ".join(PROVIDER_KEYS))
                break


def load_workflow(path: str | os.PathLike | None = None, *, text: str | None = None,
                  preset: str | None = None) -> Workflow:
    """Parse and validate a workflow file, text or built-in preset.

    Raises ConfigError carrying every problem (`.problems`); nothing is half-loaded.
    """
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}",
                             hint=_did_you_mean(preset, PRESETS)
                             or "presets: " + ", ".join(sorted(PRESETS)))
        text, display = PRESETS[preset], f"preset:{preset}"
    elif text is None:
        if path is None:
            raise UsageError("load_workflow needs a path, text= or preset=")
        display = os.fspath(path)
        text = _read_workflow_file(display)
    else:
        display = os.fspath(path) if path is not None else "<string>"
    try:
        data, keys, values = _yaml_load_marked(text)
    except YAMLError as exc:
        raise ConfigError(f"1 problem in {display}", problems=[
            (display, exc.line, exc.column, exc.message, exc.hint)]) from None
    ck = _Checker(display, keys, values)
    fields = _check_workflow(data, ck)
    if ck.problems:
        ck.problems.sort(key=lambda p: (p[1], p[2]))     # file order; stable for one spot
        raise ConfigError(f"{_plural(len(ck.problems), 'problem')} in {display}",
                          problems=ck.problems)
    name = fields["name"] or (preset or os.path.splitext(os.path.basename(display))[0]
                              .lstrip(".") or "workflow")
    return Workflow(path=None if preset else display, preset=preset, text=text, marks=values,
                    **dict(fields, name=name))


def _read_maybe_fifo(path: str, wait: float = 2.0) -> bytes:
    """A file's bytes. A FIFO (`--workflow <(…)`) is opened on a thread: one that no writer
    opens within `wait` seconds is an error instead of a hang; once open, it is read to EOF."""
    import stat

    if not stat.S_ISFIFO(os.stat(path).st_mode):
        with open(path, "rb") as f:
            return f.read()
    import threading

    opened = threading.Event()
    got: list = []

    def read() -> None:
        try:
            with open(path, "rb") as f:
                opened.set()
                got.append(f.read())
        except OSError as exc:
            got.append(exc)
        opened.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    if not opened.wait(wait):
        raise ConfigError(f"{path} is a FIFO that nothing writes to (waited {wait:g} s)")
    reader.join()
    if isinstance(got[0], OSError):
        raise got[0]
    return got[0]


def _read_workflow_file(path: str) -> str:
    try:
        data = _read_maybe_fifo(path)
    except FileNotFoundError:
        raise ConfigError(f"workflow file not found: {path}",
                          hint="aethr init --list shows the presets to start from") from None
    except IsADirectoryError:
        raise ConfigError(f"{path} is a directory, not a workflow file") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise ConfigError(f"{path} is not UTF-8 text (byte {exc.start + 1}, line {line})",
                          hint="save the file as UTF-8") from None


# == 6. Context sources =======================================================

_GIT_FLAGS = ("-c", "core.quotepath=off", "-c", "color.ui=never")
_DIFF_FLAGS = ("--no-ext-diff", "--no-textconv", "--no-color", "--no-relative",
               "--src-prefix=a/", "--dst-prefix=b/")
#: Variables of Aethr's own that must never leak into a child process.
_PRIVATE_VARS = ("GIT_INDEX_FILE",)


def printable(text: str) -> str:
    """`text` with bytes that were not UTF-8 (surrogate escapes) and lone surrogates as U+FFFD."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    # Escaped bytes (U+DC80..U+DCFF) may still spell UTF-8 together; other lone surrogates
    # (a Windows argv can hold them) cannot.
    text = "".join("\ufffd" if "\ud800" <= c <= "\udfff" and not "\udc80" <= c <= "\udcff"
                   else c for c in text)
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _relative(path: str) -> str:
    """`path` relative to the current directory, unless that climbs out twice or more."""
    rel = os.path.relpath(path)
    return path if rel.startswith(".." + os.sep + "..") else rel


def _size(n: int) -> str:
    """A byte count as people read it: `812 bytes`, `64 KiB`, `1.2 MB`."""
    if n < KIB:
        return _plural(n, "byte")
    if n < 1000 * KIB:
        return f"{n / KIB:.0f} KiB"
    return f"{n / 1e6:.1f} MB"


def secret_values(environ: dict[str, str]) -> list[str]:
    """Values to redact: provider keys and `*_API_KEY`/`*_TOKEN`/`*_SECRET` of 8+ characters."""
    names = {v for keys in PROVIDER_KEYS.values() for v in keys}
    found = {value for name, value in environ.items()
             if (name in names or name.endswith(("_API_KEY", "_TOKEN", "_SECRET")))
             and len(value) >= 8}
    return sorted(found, key=len, reverse=True)


def redact(text: str, secrets: list[str]) -> str:
    """`text` with every secret value replaced by `[redacted]`."""
    for value in secrets:
        if value in text:
            text = text.replace(value, "[redacted]")
    return text


def _redact_cut(data: bytes, cap: int, secrets: list[str], *, keep_end: bool = False) -> bytes:
    """Redact whole secrets, then keep `cap` bytes (the head, or the end).

    Callers read a little past the cap (the longest secret's length), so a secret that
    straddles the cut is replaced whole instead of leaving a prefix in the prompt.
    """
    for value in secrets:
        data = data.replace(value.encode("utf-8", "surrogateescape"), b"[redacted]")
    return data[-cap:] if keep_end else data[:cap]


def _slack(secrets: list[str]) -> int:
    return max((len(value.encode("utf-8", "surrogateescape")) for value in secrets), default=0)


def _child_env(environ: dict[str, str], **extra: str) -> dict[str, str]:
    env = {k: v for k, v in environ.items() if k not in _PRIVATE_VARS}
    env.update(extra)
    return env


def _git(args: list[str], cwd: str, environ: dict[str, str], *, limit: int | None = None,
         check: bool = True, timeout: float = GIT_TIMEOUT, index: str | None = None
         ) -> tuple[bytes, bool, int]:
    """Run git; returns (stdout bytes, cut at `limit` while streaming, truncated?, exit status).

    Raises GitError with git's own stderr when `check` and git fails.
    """
    extra = {"GIT_TERMINAL_PROMPT": "0", "GIT_OPTIONAL_LOCKS": "0"}
    if index:
        extra["GIT_INDEX_FILE"] = index
    errors = _Capped(2 * KIB, [])
    try:
        # -C, not a working directory for the child: posix_spawn cannot set one (before 3.13).
        data, truncated, status, expired = _capture(
            ["git", "-C", cwd, *_GIT_FLAGS, *args], _child_env(environ, **extra),
            limit=limit, timeout=timeout, errors=errors)
    except FileNotFoundError:
        raise GitError("git is not installed (or not on PATH)",
                       hint="install git to use git context sources") from None
    if expired:
        raise GitError(f"git {args[0]} did not finish within {timeout:g} s")
    if check and status != 0 and not truncated:
        message = errors.text("git's stderr").strip().splitlines()
        raise GitError(f"git {args[0]} failed: " + (message[-1] if message else
                                                    f"exit status {status}"))
    return data, truncated, status


def _capture(argv: list[str], env: dict[str, str], *, limit: int | None, timeout: float,
             errors: _Capped) -> tuple[bytes, bool, int, bool]:
    """Run argv (stdin /dev/null) to its end: (stdout cut at `limit`, truncated?, exit status,
    timed out?); stderr goes to `errors`.

    On POSIX this is posix_spawn and poll, not subprocess: every run calls git, and importing
    subprocess (with locale, signal, threading, selectors) would cost more than git itself.
    """
    if not hasattr(os, "posix_spawnp"):     # Windows
        import subprocess

        try:
            proc = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL,
                                  capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return b"", False, -1, True
        errors.feed(proc.stderr)
        cut = limit is not None and len(proc.stdout) > limit
        return proc.stdout[:limit], cut, proc.returncode, False
    import select
    import time

    try:    # the C module: signal.py would import enum (several ms) to wrap these numbers
        from _signal import SIGKILL, SIGPIPE, SIGXFSZ
    except ImportError:
        from signal import SIGKILL, SIGPIPE, SIGXFSZ

    # With 0, 1 or 2 closed a pipe may take that number: the dup2 below then clears its
    # close-on-exec flag (POSIX 2018; glibc and musl), so the child still gets it.
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        # The pipes are close-on-exec; dup2 gives the child its own inheritable copies.
        pid = os.posix_spawnp(argv[0], argv, env, setsigdef=(SIGPIPE, SIGXFSZ),
                              file_actions=[(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                                            (os.POSIX_SPAWN_DUP2, out_w, 1),
                                            (os.POSIX_SPAWN_DUP2, err_w, 2)])
    except BaseException:
        os.close(out_r)
        os.close(err_r)
        raise
    finally:
        os.close(out_w)
        os.close(err_w)
    data = bytearray()
    truncated, expired, status = False, False, None
    poller = select.poll()
    poller.register(out_r, select.POLLIN)
    poller.register(err_r, select.POLLIN)
    reading = 2
    deadline = time.monotonic() + timeout
    try:
        while reading and not truncated:
            left = deadline - time.monotonic()
            if left <= 0:
                expired = True
                break
            for fd, _ in poller.poll(left * 1000):
                chunk = os.read(fd, 65536)
                if not chunk:
                    poller.unregister(fd)
                    reading -= 1
                elif fd == err_r:
                    errors.feed(chunk)
                else:
                    data += chunk
                    truncated = limit is not None and len(data) > limit
        if reading:     # cut short (limit or timeout): git must not outlive the call
            os.kill(pid, SIGKILL)
        status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    finally:
        if status is None:
            os.kill(pid, SIGKILL)
            os.waitpid(pid, 0)
        os.close(out_r)
        os.close(err_r)
    return bytes(data[:limit]), truncated, status, expired


class Project:
    """Where a run happens: the project root and the git repository around it, if any."""

    def __init__(self, root: str, environ: dict[str, str],
                 probe: tuple[str | None, str | None, str | None] | None = None) -> None:
        self.root = os.path.abspath(root)
        self.environ = environ
        self.top, self.gitdir, self.head = probe or git_probe(self.root, environ)
        self.secrets = secret_values(environ)
        self._files: list[str] | None = None

    def git(self, *args: str, **kw: Any) -> str:
        """Run git in the repository's top level; stdout decoded (with replacement)."""
        out = _git(list(args), self.top or self.root, self.environ, **kw)[0]
        return out.decode("utf-8", "replace")

    def where(self) -> str:
        """The base of diff paths, for a context block's header."""
        sub = os.path.relpath(self.root, self.top).replace(os.sep, "/") if self.top else "."
        if sub == ".":
            return "paths relative to the repository root"
        return f"paths relative to the repository root; the project root is {sub}/"

    def base(self, rev: str | None) -> str:
        """The tree a diff is taken against: HEAD, merge-base(REV, HEAD) or the empty tree."""
        if rev:
            if not self.head:
                raise GitError(f"git_diff:{rev} needs a commit on the current branch")
            return self.git("merge-base", rev, "HEAD").strip()
        # The empty tree is computed, not hard-coded: SHA-256 repositories differ.
        return self.head or self.git("hash-object", "-t", "tree", "--stdin").strip()

    def temp_index(self) -> str:
        """A copy of the real index in a temporary file; the caller removes it.

        Like git's own temporary indexes it sits in the git directory (falling back to the
        temp directory), so no tempfile/shutil import is paid on every run.
        """
        real = os.path.join(self.gitdir or "", "index")
        try:
            with open(real, "rb") as f:
                data: bytes | None = f.read()
        except FileNotFoundError:
            data = None         # no index yet: git makes its own (an empty file is invalid)
        for folder in (self.gitdir, None):
            if folder is None:
                import tempfile

                folder = tempfile.gettempdir()
            path = os.path.join(folder, f"aethr-index.{os.getpid()}.{id(self):x}")
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except OSError:
                continue
            with os.fdopen(fd, "wb") as f:
                f.write(data or b"")
            if data is None:
                os.unlink(path)
            return path
        raise GitError("cannot create a temporary index (git directory and temp directory)")

    def diff_worktree(self, base: str, limit: int) -> tuple[str, bool]:
        """The working tree (tracked and untracked, not ignored) against `base`."""
        index = self.temp_index()
        try:
            self.git("add", "-A", "--ignore-errors", index=index, check=False)
            out, truncated, _ = _git(["diff", "--cached", "-M", "--stat=120", "--patch",
                                      *_DIFF_FLAGS, base, "--"], self.top, self.environ,
                                     limit=limit + _slack(self.secrets), index=index)
        finally:
            for p in (index, index + ".lock"):
                if os.path.exists(p):
                    os.unlink(p)
        truncated = truncated or len(out) > limit
        return _redact_cut(out, limit, self.secrets).decode("utf-8", "replace"), truncated

    def files(self) -> list[str]:
        """Candidate files for glob:, relative to the project root, `/`-separated."""
        if self._files is None:
            if self.top:
                out = _git(["ls-files", "-co", "--exclude-standard", "-z"], self.root,
                           self.environ)[0]
                self._files = [p for p in out.decode("utf-8", "surrogateescape").split("\0")
                               if p]
            else:
                self._files = []
                for dirpath, dirnames, filenames in os.walk(self.root):
                    dirnames[:] = sorted(d for d in dirnames if d != ".git")
                    rel = os.path.relpath(dirpath, self.root)
                    prefix = "" if rel == "." else rel.replace(os.sep, "/") + "/"
                    self._files.extend(prefix + f for f in filenames)
        return self._files

    def ignored(self, rel: str) -> bool:
        """Whether git ignores the (untracked) file `rel`."""
        if not self.top:
            return False
        return _git(["check-ignore", "-q", "--", rel], self.root, self.environ,
                    check=False)[2] == 0


def git_probe(cwd: str, environ: dict[str, str]) -> tuple[str | None, str | None, str | None]:
    """(top level, git dir, HEAD commit) of the repository around `cwd`, in one git call.

    All None outside a repository (or without git); HEAD is None before the first commit.
    """
    try:
        out = _git(["rev-parse", "--show-toplevel", "--absolute-git-dir", "HEAD"], cwd, environ,
                   check=False)[0]
    except GitError:
        return None, None, None
    lines = out.decode("utf-8", "surrogateescape").splitlines()
    if len(lines) < 2 or not lines[0]:
        return None, None, None
    head = lines[2] if len(lines) > 2 and 40 <= len(lines[2]) <= 64 and not lines[2].strip(
        "0123456789abcdef") else None
    return os.path.abspath(lines[0]), lines[1], head


class Artifact:
    """What an implementation step changed: files (status, path, old path), stat, patch."""

    __slots__ = ("files", "stat", "patch", "note")

    def __init__(self, files: list | None = None, stat: str = "", patch: str = "",
                 note: str | None = None) -> None:
        self.files = files or []
        self.stat = stat
        self.patch = patch
        self.note = note

    def summary(self) -> str:
        """One line for a step footer."""
        if not self.files:
            return "no files changed" + (f" ({self.note})" if self.note else "")
        return _changed([f"{status} {path}" for status, path, _ in self.files])

    def describe(self, *, patch: bool = True) -> str:
        """Changed files and diff stat, and the raw patch when `patch`."""
        lines = ["Changed files:"]
        for status, path, old in self.files:
            lines.append(f"  {status} {old} -> {path}" if old else f"  {status} {path}")
        if self.note:
            lines.append(f"Note: {self.note}")
        text = "\n".join(lines) + "\n\nDiff stat:\n" + self.stat.rstrip() + "\n"
        return text + ("\nPatch:\n" + self.patch if patch and self.patch else "")


class Block:
    """One context source as the prompt shows it: a header, a body, a short summary."""

    __slots__ = ("source", "base", "body", "summary")

    def __init__(self, source: str, body: str, *, base: str | None = None,
                 summary: str | None = None) -> None:
        self.source = source
        self.base = base
        self.body = body
        self.summary = summary if summary is not None else body.split("\n", 1)[0]


def _placeholder(source: str, why: str) -> Block:
    return Block(source, f"[{source} \u2014 {why}]")


def collect_context(step: Step, project: Project, artifact: Artifact | str | None = None
                    ) -> list[Block]:
    """Collect a step's declared context, in order, as the tree is now (SPEC §4).

    `artifact` is the latest implementation artifact, or a note saying where it will come from.
    """
    blocks = []
    for source in step.context:
        kind, _, arg = source.partition(":")
        arg = arg.strip()           # as validation reads it (_source_problem)
        try:
            if kind == "git_diff":
                block = _ctx_git_diff(project, source, arg or None)
            elif kind == "latest_diff":
                block = _ctx_latest_diff(source, artifact)
            elif kind == "file":
                block = _ctx_file(project, source, arg)
            elif kind == "glob":
                block = _ctx_glob(project, source, arg)
            else:
                block = _ctx_cmd(project, source, arg, min(CMD_TIMEOUT, step.timeout))
        except GitError as exc:
            block = _placeholder(source, f"git failed: {exc.message}")
        except OSError as exc:
            block = _placeholder(source, f"could not be collected: {exc.strerror or exc}")
        blocks.append(block)
    return blocks


def _ctx_git_diff(project: Project, source: str, rev: str | None) -> Block:
    if not project.top:
        return _placeholder(source, "the project is not in a git repository")
    text, truncated = project.diff_worktree(project.base(rev), DIFF_CAP)
    text = _hide_secret_files(text)
    if not text.strip():
        return _placeholder(source, "no uncommitted changes" if not rev else
                            f"no changes against merge-base({rev}, HEAD)")
    stat_lines = text.partition("\n\n")[0].strip("\n").splitlines()
    if truncated:
        text = text.rstrip("\n") + (f"\n[\u2026 {source}: more than {_size(DIFF_CAP)}, "
                                    f"first {_size(DIFF_CAP)} shown]\n")
    what = "uncommitted changes against HEAD" if not rev else \
        f"the working tree against merge-base({rev}, HEAD)"
    summary = (stat_lines[-1].strip() if stat_lines else "changes") + "".join(
        "\n    " + line.strip() for line in stat_lines[:-1][:12])
    return Block(source, text, base=f"{what}; {project.where()}", summary=summary)


def _ctx_latest_diff(source: str, artifact: Artifact | str | None) -> Block:
    if isinstance(artifact, str):
        return _placeholder(source, artifact)
    if artifact is None:
        return _placeholder(source, "no implementation artifact yet")
    if not artifact.files:
        return _placeholder(source, "the last implementation step changed no files"
                            + (f" ({artifact.note})" if artifact.note else ""))
    return Block(source, artifact.describe(), base="paths relative to the repository root",
                 summary=artifact.summary())


def _never_read(rel: str) -> bool:
    """Whether a path (any component) is on the never-read list of SPEC §4."""
    for part in rel.replace(os.sep, "/").lower().split("/"):
        if part == ".git" or (part != ".env.example" and any(
                part.startswith(p[:-1]) if p[-1] == "*" else
                part.endswith(p[1:]) if p[0] == "*" else part == p for p in NEVER_READ)):
            return True
    return False


def _hide_secret_files(diff: str) -> str:
    """A diff with the patches of never-read files replaced by a note (the stat keeps names)."""
    out, hiding = [], False
    for line in diff.split("\n"):
        if line.startswith("diff --git "):
            old, sep, new = line.removeprefix("diff --git a/").rpartition(" b/")
            hiding = (line.startswith("diff --git a/") and bool(sep)
                      and (_never_read(old.strip('"')) or _never_read(new.strip('"'))))
            if hiding:
                out.append(line)
                out.append(f"[\u2026 patch of {new} not shown: the file may hold secrets]")
                continue
        if not hiding:
            out.append(line)
    return "\n".join(out)


def _refusal(project: Project, rel: str) -> str | None:
    """Why `rel` (relative to the project root) must not be read, or None."""
    root = os.path.realpath(project.root)
    real = os.path.realpath(os.path.join(root, rel))
    if real != root and not real.startswith(root.rstrip(os.sep) + os.sep):
        return "outside the project root, not read"
    if _never_read(os.path.relpath(real, root)):
        return "may hold secrets, never read"
    if not os.path.lexists(real):
        return "not found"
    if os.path.isdir(real):
        return "a directory, not a file"
    if not os.path.isfile(real):
        return "not a regular file, not read"
    return None


def _read_text(path: str, cap: int, secrets: list[str]) -> tuple[str | None, str, int]:
    """(text or None, why not, size): at most `cap` bytes of a UTF-8 file, secrets redacted."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            data = f.read(cap + _slack(secrets))
    except OSError as exc:
        return None, f"unreadable: {exc.strerror or exc}", 0
    if b"\0" in data[:8192]:
        return None, "binary file, not shown", size
    data = _redact_cut(data, cap, secrets)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A cap can cut a character in two; anything else means the file is not UTF-8.
        if size <= cap or exc.start < len(data) - 3:
            return None, "not UTF-8 text, not shown", size
        text = data[:exc.start].decode("utf-8")
    if not text:
        return None, "empty file", size
    return text, "", size


def _file_body(project: Project, rel: str, *, listed: bool = False) -> tuple[str | None, str, int]:
    # `listed`: the path came from `git ls-files --exclude-standard`, so git does not ignore it
    # (asking again would cost one git process per file of a glob).
    ignored = not listed and project.ignored(rel)
    why = _refusal(project, rel) or ("ignored by git, not read" if ignored else "")
    if why:
        return None, why, 0
    text, why, size = _read_text(os.path.join(project.root, rel), FILE_CAP, project.secrets)
    if text is not None and size > FILE_CAP:
        cut = f"\n[\u2026 {printable(rel)}: {_size(size)}, first {_size(FILE_CAP)} shown]"
        text = text.rstrip("\n") + cut
    return text, why, size


def _ctx_file(project: Project, source: str, rel: str) -> Block:
    text, why, size = _file_body(project, rel)
    if text is None:
        return _placeholder(source, why)
    lines = text.count("\n") + (not text.endswith("\n"))
    return Block(source, text, base="path relative to the project root",
                 summary=f"{_plural(lines, 'line')}, {_size(size)}")


def _ctx_glob(project: Project, source: str, pattern: str) -> Block:
    rx = _glob_regex(pattern)
    matches = sorted(p for p in project.files() if rx.match(p))
    if not matches:
        return _placeholder(source, "no file matches")
    parts, shown, total = [], 0, 0
    for i, rel in enumerate(matches):
        if shown == GLOB_MAX_FILES or total >= GLOB_CAP:
            rest = len(matches) - i
            parts.append(f"[\u2026 {_plural(rest, 'more file')} not shown: a glob shows at most "
                         f"{GLOB_MAX_FILES} files and {_size(GLOB_CAP)}]")
            break
        text, why, _ = _file_body(project, rel, listed=True)
        if text is None:
            if why != "not found":      # tracked but deleted: nothing to show
                parts.append(f"[{printable(rel)} \u2014 {why}]")
            continue
        room = GLOB_CAP - total
        if len(text.encode("utf-8")) > room:
            text = text.encode("utf-8")[:room].decode("utf-8", "ignore") + (
                f"\n[\u2026 {printable(rel)}: cut at the glob's {_size(GLOB_CAP)} limit]")
        parts.append(f"### {printable(rel)}\n\n{text.rstrip(chr(10))}\n")
        shown += 1
        total += len(text.encode("utf-8"))
    if not shown and not parts:
        return _placeholder(source, "no file matches")
    return Block(source, "\n".join(parts), base="paths relative to the project root",
                 summary=f"{_plural(shown, 'file')} of {len(matches)} matching")


class _Capped:
    """Keeps the head and the tail of a byte stream: a command's output can be huge."""

    def __init__(self, cap: int, secrets: list[str]) -> None:
        self.half = cap // 2
        self.keep = self.half + _slack(secrets)     # a straddling secret is redacted whole
        self.secrets = secrets
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        take = max(0, self.keep - len(self.head))
        self.head += chunk[:take]
        self.tail += chunk[take:]
        if len(self.tail) > self.keep:
            del self.tail[:len(self.tail) - self.keep]

    def text(self, label: str) -> str:
        if self.total <= 2 * self.half:
            return redact(bytes(self.head + self.tail).decode("utf-8", "replace"), self.secrets)
        head = _redact_cut(bytes(self.head), self.half, self.secrets).decode("utf-8", "replace")
        tail = _redact_cut(bytes(self.tail), self.half, self.secrets, keep_end=True)
        return (f"{head}\n[\u2026 {label}: {_size(self.total)} in all, first and last "
                f"{_size(self.half)} shown]\n{tail.decode('utf-8', 'replace')}")


def _own_group() -> dict[str, Any]:
    """Popen arguments that start a child in its own process group, so _kill_tree reaches
    everything it starts."""
    if os.name == "nt":
        import subprocess

        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
    return {"start_new_session": True}


def _kill_tree(proc: Any) -> None:
    """Stop a child and everything it started (its own process group)."""
    import signal
    import subprocess

    try:
        if os.name == "nt":
            subprocess.run(["taskkill", "/T", "/F", "/PID", str(proc.pid)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        else:
            os.killpg(proc.pid, signal.SIGKILL)
    except OSError:                 # ProcessLookupError included: it has ended already
        pass


def run_shell(command: str, cwd: str, environ: dict[str, str], timeout: float
              ) -> tuple[int | None, _Capped, _Capped]:
    """Run a shell command in its own process group: (status or None on timeout, out, err)."""
    import subprocess
    import threading

    proc = subprocess.Popen(command, shell=True, cwd=cwd, env=_child_env(environ),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, **_own_group())
    # stdout and stderr share the command's cap (SPEC §4: 64 KiB of output in all).
    secrets = secret_values(environ)
    out, err = _Capped(CMD_CAP // 2, secrets), _Capped(CMD_CAP // 2, secrets)

    def pump(stream: Any, sink: _Capped) -> None:
        for chunk in iter(lambda: stream.read1(65536), b""):
            sink.feed(chunk)

    threads = [threading.Thread(target=pump, args=a, daemon=True)
               for a in ((proc.stdout, out), (proc.stderr, err))]
    for t in threads:
        t.start()
    status: int | None = None
    try:
        status = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    finally:
        if status is None:          # timed out, or Ctrl-C: no orphan left behind
            _kill_tree(proc)
        for t in threads:
            t.join(timeout=5)
        proc.wait()
    return status, out, err


def _ctx_cmd(project: Project, source: str, command: str, timeout: float) -> Block:
    status, out, err = run_shell(command, project.root, project.environ, timeout)
    if status is None:
        head = f"$ {command}\n[{source} \u2014 timed out after {timeout:g} s; stopped]"
    else:
        head = f"$ {command}\nexit status {status}"
    body = (f"{head}\n--- stdout ---\n{out.text('stdout').rstrip(chr(10))}\n"
            f"--- stderr ---\n{err.text('stderr').rstrip(chr(10))}\n")
    summary = "timed out" if status is None else f"exit status {status}, " + \
        f"{_size(out.total)} of output"
    return Block(source, body, base="run in the project root", summary=summary)


# == 7. Prompts ===============================================================

#: The fixed start of every system prompt.
PREAMBLE = (
    "You are one step of an Aethr workflow: a fixed sequence of steps that plan, implement and "
    "review a change to a software project. Work only from the task, the results of earlier "
    "steps and the context below; when something you need is missing, say so instead of "
    "guessing.")


def loop_protocol(step: Step) -> str | None:
    """The loop rule appended to a controller's system prompt (SPEC §8), if any."""
    rep = step.repeat
    if rep is None:
        return None
    if rep.until_review_pass:
        return ("This step decides whether the workflow loops back to step "
                f"'{rep.back_to}'. Give each finding a severity: high, medium or low. End your "
                "answer with exactly one of these lines:\nReview status: pass\n(when there are "
                "no high or medium findings), or\nReview status: revise\n(otherwise).")
    return (f"This step decides whether the workflow loops back to step '{rep.back_to}'. "
            f"Include the exact text {rep.until_contains} when the work is complete, and "
            "only then.")


class StepResult(_Record):
    """What one run of a step produced."""

    __slots__ = ("step", "role", "backend", "iteration", "text", "review_status", "artifact",
                 "usage", "duration", "model", "warnings")

    def title(self) -> str:
        """`review (reviewer, iteration 2)`."""
        it = f", iteration {self.iteration}" if self.iteration and self.iteration > 1 else ""
        return f"{self.step} ({self.role}{it})"


class Prompt:
    """A rendered prompt: the exact system and user text, plus what went into it."""

    __slots__ = ("system", "user", "blocks", "step", "history")

    def __init__(self, system: str, user: str, blocks: list[Block], step: Step,
                 history: list[StepResult]) -> None:
        self.system = system
        self.user = user
        self.blocks = blocks
        self.step = step
        self.history = history


def build_system(workflow: Workflow, step: Step) -> str:
    """Preamble + role instruction (+ loop protocol unless the role already states it)."""
    role_text = workflow.roles.get(step.role, "").strip()
    parts = [PREAMBLE, f"Your role: {step.role}.\n\n{role_text}"]
    rule = loop_protocol(step)
    rep = step.repeat
    if rule and not (("Review status:" in role_text) if rep.until_review_pass
                     else (rep.until_contains in role_text)):
        parts.append(rule)
    return "\n\n".join(parts) + "\n"


def _history_text(results: list[StepResult], mode: str, pending: list[str]) -> list[str]:
    """The `Previous steps` entries: `results` are those the step may see (SPEC §5)."""
    newest_patch = next((r for r in reversed(results) if r.artifact is not None
                         and r.artifact.files), None)
    summary = mode == "summary"
    entries = []
    for r in results:
        text = r.text.strip() or "(no text)"
        if summary and len(text) > SUMMARY_CHARS:
            text = text[:SUMMARY_CHARS].rstrip() + f"\n[\u2026 cut to its first {SUMMARY_CHARS} " \
                "characters]"
        parts = [f"## {r.title()}\n\n{text}"]
        if summary and r.review_status:
            parts.append(f"Review status: {r.review_status}")
        if r.artifact is not None:
            parts.append(r.artifact.describe(patch=not summary and r is newest_patch)
                         if r.artifact.files else f"[{r.artifact.summary()}]")
        entries.append("\n\n".join(parts))
    return entries + [f"## {title}\n\n[output of step {title} \u2014 shown here when the run "
                      "happens; --show-prompt calls no model]" for title in pending]


def build_prompt(workflow: Workflow, task: str, step: Step, *, iteration: int = 1,
                 history: list[StepResult] | None = None, blocks: list[Block] | None = None,
                 pending: list[str] | None = None, secrets: list[str] | None = None) -> Prompt:
    """Render a step's prompt: deterministic, redacted, within the prompt budget (SPEC §5)."""
    blocks = blocks or []
    secrets = secrets or []
    # Secrets are redacted piece by piece, before the budget is measured.
    system = redact(build_system(workflow, step), secrets)
    # A step inside a loop (the controller too) shows which pass this is.
    ctl = workflow.controller_of(step.index)
    it = f", iteration {iteration}/{ctl.repeat.max_iterations}" if ctl else ""
    head = redact(f"# Task\n\n{task.strip()}\n\n# Step\n\n{step.id} (role: {step.role}{it})\n",
                  secrets)
    ctx = "".join("\n" + redact(f"# Context: {b.source}" + (f" ({b.base})" if b.base else "")
                                + f"\n\n{b.body.rstrip(chr(10))}\n", secrets) for b in blocks)
    # What this step may see of earlier results (SPEC §5 history_visibility).
    mode = step.history_visibility
    history, pending = list(history or []), pending or []
    if mode == "none":
        history, pending = [], []
    elif mode == "latest":
        history, pending = history[-1:], ([] if history else pending[-1:])
    entries = [redact(e, secrets) for e in _history_text(history, mode, pending)]
    # The whole prompt stays within PROMPT_CAP: the oldest history goes first.
    budget = PROMPT_CAP - len(system.encode("utf-8"))
    for trimmed in range(len(entries) + 1):
        prev = ("\n# Previous steps\n\n" + "\n\n".join(entries).rstrip("\n") + "\n") \
            if entries else ""
        user = head + prev + ctx
        raw = user.encode("utf-8")
        if len(raw) <= budget or trimmed == len(entries):
            break
        title = entries[trimmed].split("\n", 1)[0][3:]
        entries[trimmed] = (f"## {title}\n\n[\u2026 trimmed: the prompt is limited to "
                            f"{_size(PROMPT_CAP)}, oldest results first]")
    if len(raw) > budget:
        note = f"\n[\u2026 prompt cut at {_size(PROMPT_CAP)}]\n"
        user = raw[:max(0, budget - len(note.encode()))].decode("utf-8", "ignore") + note
    return Prompt(system, user, blocks, step, history)


def review_status(text: str) -> str | None:
    """`pass` or `revise` from the last review-status line of an answer (SPEC §8)."""
    found = REVIEW_STATUS_RE.findall(text)
    return found[-1].lower() if found else None


# == 8. Providers (mock; live ones in 13) =====================================


class Provider:
    """A model endpoint: `stream()` yields ("text", str), ("warning", str), ("usage", dict)."""

    name = "provider"

    def __init__(self, model: str | None, environ: dict[str, str]) -> None:
        self.model = model
        self.environ = environ

    def stream(self, prompt: Prompt, *, max_tokens: int | None = None
               ) -> Iterator[tuple[str, Any]]:
        """Yield the answer as it arrives; raise an AethrError subclass on failure."""
        raise NotImplementedError


def _needs_status(step: Step, role_text: str) -> bool:
    return bool(step.repeat and step.repeat.until_review_pass) or \
        "review status" in role_text.lower()


def mock_answer(prompt: Prompt, model: str | None, role_text: str = "") -> str:
    """A deterministic stand-in answer, derived from the step and its prompt (SPEC §6)."""
    import hashlib

    step = prompt.step
    digest = hashlib.sha256(f"{prompt.system}\0{prompt.user}".encode("utf-8", "replace"))
    size = len(prompt.system) + len(prompt.user)
    target = model or "the model set for this role"
    lines = [f"[mock] No model was called. This is a stand-in answer for step '{step.id}' "
             f"(role {step.role}).",
             f"Live mode would send a prompt of {size:,} characters (sha256 "
             f"{digest.hexdigest()[:12]}) to {target}.", ""]
    if prompt.blocks:
        lines.append("Context the step saw:")
        # Summary lines are prefixed so that no file name can pass for a review status.
        lines.extend(f"- {b.source}: " + b.summary.replace("\n", "\n  | ")
                     for b in prompt.blocks)
    else:
        lines.append("The step declares no context.")
    if prompt.history:
        lines.append("Earlier results it saw: " + ", ".join(r.title() for r in prompt.history)
                     + f" (history: {step.history_visibility}).")
    if step.repeat and step.repeat.until_contains:
        lines += ["", step.repeat.until_contains]
    if _needs_status(step, role_text):
        lines += ["", "Review status: pass"]
    return "\n".join(lines) + "\n"


class MockProvider(Provider):
    """Mock mode: no network, a deterministic answer streamed line by line."""

    name = "mock"

    def __init__(self, model: str | None, environ: dict[str, str], role_text: str = "") -> None:
        super().__init__(model, environ)
        self.role_text = role_text

    def stream(self, prompt: Prompt, *, max_tokens: int | None = None
               ) -> Iterator[tuple[str, Any]]:
        for line in mock_answer(prompt, self.model, self.role_text).splitlines(keepends=True):
            yield "text", line
        yield "usage", {}


def make_provider(model: str | None, environ: dict[str, str], *, live: bool,
                  role_text: str = "") -> Provider:
    """The provider for `model`: the mock in mock mode, else the live client."""
    if not live:
        return MockProvider(model, environ, role_text)
    if not model:
        raise UsageError("no model set for this step", hint="set models.ROLE or --model")
    provider = split_model(model)[0]
    providers = _lazy().PROVIDERS
    if provider not in providers:
        raise UsageError(f"live calls to {provider} are not available in aethr {__version__}",
                         hint="run without --live for a mock run")
    return providers[provider](model, environ)


# == 9. Backends (model, OpenCode) and artifacts ==============================


def opencode_model(model: str | None) -> str | None:
    """A model in OpenCode's form: `provider/model`; gemini and google become google."""
    if not model:
        return None
    provider, name = model.split(":", 1) if ":" in model else ("", model)
    provider = "google" if provider.strip().lower() in ("gemini", "google") else provider.strip()
    return f"{provider}/{name.strip()}"


#: Stream kinds a model step passes on as events -> the event's field for the value.
_MODEL_EVENTS = {"text": "text", "reasoning": "text", "warning": "message"}


class _Backend:
    """Runs a step: `run(prompt, model, role_text, emit) -> (text, usage, artifact)`."""

    def __init__(self, environ: dict[str, str], *, live: bool,
                 project: Project | None = None) -> None:
        self.environ = environ
        self.live = live
        self.project = project


class ModelBackend(_Backend):
    """Runs a model step: the prompt goes to a provider, the answer streams back."""

    def run(self, prompt: Prompt, model: str | None, role_text: str,
            emit: Callable[[dict], None]) -> tuple[str, dict, Artifact | None]:
        """Returns (answer, usage, no artifact); emits text and warning events."""
        provider = make_provider(model, self.environ, live=self.live, role_text=role_text)
        parts, usage = [], {}
        for kind, value in provider.stream(prompt, max_tokens=prompt.step.max_tokens):
            if kind == "usage":
                usage = value
            elif kind in _MODEL_EVENTS:
                if kind == "text":
                    parts.append(value)
                emit({"event": kind, "step": prompt.step.id, _MODEL_EVENTS[kind]: value})
        return "".join(parts), usage, None


class OpenCodeBackend(_Backend):
    """Runs an implementation step with the OpenCode CLI (mock mode runs nothing)."""

    def run(self, prompt: Prompt, model: str | None, role_text: str,
            emit: Callable[[dict], None]) -> tuple[str, dict, Artifact | None]:
        """Returns (OpenCode's final text, usage, the artifact of this step)."""
        if self.live:
            return _lazy().opencode_run(self.environ, self.project, prompt, model, emit)
        who = opencode_model(model) or "OpenCode's default model"
        text = (f"[mock] OpenCode was not run. In live mode it would carry out step "
                f"'{prompt.step.id}' in the project with {who}, and the files it changed would "
                "become this step's artifact.\nNo file was changed.\n")
        rep = prompt.step.repeat
        if rep and rep.until_contains is not None and not rep.until_review_pass:
            text += f"\n{rep.until_contains}\n"
        if _needs_status(prompt.step, role_text):
            text += "\nReview status: pass\n"
        emit({"event": "text", "step": prompt.step.id, "text": text})
        return text, {}, Artifact(note="mock mode: OpenCode was not run")


# == 10. Runner (steps, loops, events) ========================================


class RunResult:
    """The outcome of a completed run: verdict (pass | revise), step results, usage."""

    __slots__ = ("verdict", "steps", "usage", "duration", "warnings")

    def __init__(self, verdict: str, steps: list[StepResult], usage: dict, duration: float,
                 warnings: list[str]) -> None:
        self.verdict = verdict
        self.steps = steps
        self.usage = usage
        self.duration = duration
        self.warnings = warnings


def _total_usage(results: list[StepResult]) -> dict:
    total: dict = {}
    for result in results:
        for key, value in result.usage.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                total[key] = total.get(key, 0) + value
    return total


def step_target(step: Step, model: str | None, live: bool) -> str:
    """What a step header says it calls: the live model, or `mock (would call …)`."""
    if step.backend == "opencode":
        who = f"opencode {opencode_model(model)}" if model else "opencode (its default model)"
    elif model:
        who = model
    else:
        return "no model set" if live else "mock (no model set)"
    return who if live else f"mock (would call {who})"


def _loop_verdict(step: Step, result: StepResult) -> tuple[bool, str | None]:
    """(done?, warning) for a loop controller's answer (SPEC §8)."""
    rep = step.repeat
    if rep.until_contains is not None and not rep.until_review_pass:
        return rep.until_contains in result.text, None
    if result.review_status == "pass":
        return True, None
    if result.review_status is None:
        return False, f"step '{step.id}' gave no 'Review status:' line; treating it as revise"
    return False, None


def _artifact_dict(art: Artifact | None, *, patch: bool = True) -> dict | None:
    """An artifact as plain data; events leave the patch out (`patch=False`)."""
    if art is None:
        return None
    data = {"files": [{"status": st, "path": p, "old_path": old} for st, p, old in art.files],
            "stat": art.stat, "patch": art.patch, "note": art.note}
    if not patch:
        del data["patch"]
    return data


def result_dict(r: StepResult) -> dict:
    """A step result as plain data (checkpoints, --json)."""
    return {"step": r.step, "role": r.role, "backend": r.backend, "iteration": r.iteration,
            "output": r.text, "review_status": r.review_status,
            "artifact": _artifact_dict(r.artifact), "usage": r.usage, "duration": r.duration,
            "model": r.model, "warnings": r.warnings}


class _RunState:
    """What a run has done so far: where it goes next and everything needed to resume."""

    __slots__ = ("next", "results", "passes", "exhausted", "partial")

    def __init__(self, resume: dict | None = None) -> None:
        resume = resume or {}
        self.next: int = resume.get("next_step", 0)
        self.results = [_lazy().result_from(r) for r in resume.get("results", [])]
        self.passes = {int(k): v for k, v in resume.get("loop_passes", {}).items()}
        self.exhausted: bool = resume.get("loop_ran_out", False)
        self.partial: list[str] = []

    def latest(self) -> Artifact | None:
        return next((r.artifact for r in reversed(self.results) if r.artifact is not None), None)

    def checkpoint(self, step: Step | None) -> dict:
        """The run's state where it stopped (SPEC §10; the CLI adds the rest).

        `step` is the step that did not complete, if the run stopped inside one.
        """
        partial = None if step is None else {"step": step.id, "output": "".join(self.partial),
                                             "incomplete": True}
        return {"next_step": self.next, "results": [result_dict(r) for r in self.results],
                "loop_passes": {str(k): v for k, v in self.passes.items()},
                "loop_ran_out": self.exhausted, "partial": partial}


def _workflow_ref(workflow: Workflow) -> dict:
    """Where a workflow came from, and a hash of its text (checkpoints compare it)."""
    import hashlib

    return {"path": os.path.abspath(workflow.path) if workflow.path else None,
            "preset": workflow.preset,
            "sha256": hashlib.sha256(workflow.text.encode("utf-8")).hexdigest()}


def _redact_data(obj: Any, secrets: list[str]) -> Any:
    """Every string in `obj` redacted: before JSON escaping could hide a secret's text."""
    if isinstance(obj, str):
        return redact(obj, secrets)
    if isinstance(obj, dict):
        return {k: _redact_data(v, secrets) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_redact_data(v, secrets) for v in obj]
    return obj


def run_workflow(workflow: Workflow, task: str, *, root: str | Project = ".", live: bool = False,
                 models: dict[str, str] | None = None, env: dict[str, str] | None = None,
                 on_event: Callable[[dict], None] | None = None,
                 resume: dict | None = None) -> RunResult:
    """Run every step in order with its loops; prints nothing, writes no file.

    `on_event` receives the run's events (run_start, step_start, text, warning,
    step_end, run_end). A failing step raises StepFailed whose `.checkpoint` is the
    checkpoint data (SPEC §10: task, mode, models, workflow, root, state), secrets
    redacted; `resume=` takes it back. Ctrl-C leaves the same on the exception.
    """
    import time

    environ = os.environ if env is None else env
    emit = on_event or (lambda event: None)
    project = root if isinstance(root, Project) else Project(os.fspath(root), environ)
    overrides, steps = models or {}, workflow.steps
    mode = "live" if live else "mock"
    state = _RunState(resume["state"] if resume and "state" in resume else resume)
    # AETHR_MODEL is an override too: the checkpoint keeps it, so a resume calls the same.
    env_model = environ.get("AETHR_MODEL", "").strip()
    saved_models = {**overrides, "*": overrides.get("*", env_model)} if env_model else overrides

    def checkpoint(step: Step | None) -> dict:
        return _redact_data({"aethr_checkpoint": 1, "aethr_version": __version__, "task": task,
                             "mode": mode, "models": saved_models,
                             "workflow": _workflow_ref(workflow), "root": project.root,
                             "state": state.checkpoint(step)}, project.secrets)

    started = time.monotonic()

    def end(verdict: str, **extra: Any) -> None:
        emit({"event": "run_end", "verdict": verdict, "mode": mode,
              "steps_run": len(state.results), "usage": _total_usage(state.results),
              "duration": time.monotonic() - started, **extra})

    running: Step | None = None        # the step under way, for the checkpoint
    try:
        emit({"event": "run_start", "schema": 1, "workflow": workflow.name,
              "source": workflow.source, "steps": [s.id for s in steps], "mode": mode})
        # 1. One loop over the steps; a loop controller may send it back to `back_to`.
        while state.next < len(steps):
            running = step = steps[state.next]
            state.partial = []
            result = _run_step(workflow, task, step, state, project, overrides, live, emit)
            running = None
            emit({"event": "step_end", "step": step.id, "role": step.role,
                  "iteration": result.iteration, "output": result.text, "usage": result.usage,
                  "duration": result.duration, "review_status": result.review_status,
                  "artifact": _artifact_dict(result.artifact, patch=False),
                  "warnings": result.warnings})
        # 4. The verdict: revise if a loop ran out, else the last review status given.
        statuses = [r.review_status for r in state.results if r.review_status]
        verdict = "revise" if state.exhausted else (statuses[-1] if statuses else "pass")
        end(verdict)
    except AethrError as exc:
        failed = StepFailed(f"step '{running.id}' failed: {exc.message}" if running else
                            exc.message, hint=exc.hint, step=running.id if running else "",
                            checkpoint=checkpoint(running))
        end("failed", error=failed.message)
        raise failed from exc
    except BaseException as exc:        # Ctrl-C, a closed stdout: keep what was done
        exc.checkpoint = checkpoint(running)  # type: ignore[attr-defined]
        if isinstance(exc, KeyboardInterrupt):
            try:
                end("interrupted")
            except Exception:           # noqa: BLE001 (the interruption is what matters)
                pass
        raise
    warnings = [w for r in state.results for w in r.warnings]
    return RunResult(verdict, state.results, _total_usage(state.results),
                     time.monotonic() - started, warnings)


def _run_step(workflow: Workflow, task: str, step: Step, state: _RunState, project: Project,
              overrides: dict[str, str], live: bool, emit: Callable[[dict], None]) -> StepResult:
    """Run one step, record it in `state` and decide where the run goes next."""
    import time

    i = step.index
    ctl = workflow.controller_of(i)
    iteration = state.passes.get(ctl.index, 0) + 1 if ctl else 1
    model = resolve_model(workflow, step, overrides, project.environ)
    emit({"event": "step_start", "step": step.id, "role": step.role, "number": i + 1,
          "total": len(workflow.steps), "model": model, "backend": step.backend,
          "where": step_target(step, model, live), "iteration": iteration,
          "max_iterations": ctl.repeat.max_iterations if ctl else None})
    warnings: list[str] = []

    def step_emit(event: dict) -> None:
        if event["event"] == "warning":
            warnings.append(event["message"])
        elif event["event"] == "text":
            state.partial.append(event["text"])
        emit(event)

    t0 = time.monotonic()
    # 2. Context is collected each time a step runs: the tree as it is now.
    prompt = build_prompt(workflow, task, step, iteration=iteration, history=state.results,
                          blocks=collect_context(step, project, state.latest()),
                          secrets=project.secrets)
    backend = (OpenCodeBackend if step.backend == "opencode" else ModelBackend)(
        project.environ, live=live, project=project)
    text, usage, artifact = backend.run(prompt, model, workflow.roles.get(step.role, ""),
                                        step_emit)
    result = StepResult(step=step.id, role=step.role, backend=step.backend,
                        iteration=iteration, text=text, review_status=review_status(text),
                        artifact=artifact, usage=usage, model=model,
                        duration=time.monotonic() - t0, warnings=warnings)
    # 3. A loop controller decides: go on, go back, or give up with a warning.
    again = False
    if step.repeat:
        passes = state.passes[i] = state.passes.get(i, 0) + 1
        done, warning = _loop_verdict(step, result)
        if warning:
            step_emit({"event": "warning", "step": step.id, "message": warning})
        again = not done and passes < step.repeat.max_iterations
        if not done and not again:
            state.exhausted = True
            step_emit({"event": "warning", "step": step.id, "message":
                       f"step '{step.id}' did not pass after "
                       f"{_plural(step.repeat.max_iterations, 'iteration')}; continuing, "
                       "and the verdict is revise"})
    state.results.append(result)
    state.next = workflow.step_index(step.repeat.back_to) if again else i + 1
    return result


def render_prompts(workflow: Workflow, task: str, project: Project, *,
                   models: dict[str, str] | None = None, resume: dict | None = None
                   ) -> Iterator[tuple[Step, str | None, Prompt]]:
    """Every step's prompt as it would be sent, each step once (for --show-prompt).

    With `resume` (a checkpoint), only the remaining steps, with the real earlier results.
    """
    state = _RunState(resume)
    pending: list[str] = []
    implementer = None
    for step in workflow.steps[state.next:]:
        model = resolve_model(workflow, step, models, project.environ)
        latest: Artifact | str | None = state.latest() if implementer is None else (
            f"the artifact of step '{implementer}' appears here when the run happens")
        blocks = collect_context(step, project, latest)
        ctl = workflow.controller_of(step.index)
        iteration = state.passes.get(ctl.index, 0) + 1 if ctl else 1
        yield step, model, build_prompt(workflow, task, step, iteration=iteration,
                                        history=state.results, blocks=blocks,
                                        pending=list(pending), secrets=project.secrets)
        pending.append(f"{step.id} ({step.role})")
        if step.backend == "opencode":
            implementer = step.id


# == 11. Environment ==========================================================


def env_bool(environ: dict[str, str], name: str) -> bool:
    """The one boolean parser (SPEC §2): 1/true/yes/on, 0/false/no/off/empty; else an error."""
    value = environ.get(name, "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise UsageError(f"{name} must be a boolean, not {environ[name]!r}",
                     hint="use 1, true, yes or on; or 0, false, no or off")


def wants_live(flag: bool, overrides: dict[str, str], environ: dict[str, str]) -> bool:
    """Live mode (SPEC §2): --live, a true AETHR_LIVE, or a non-empty model override."""
    # env_bool comes first: a bad AETHR_LIVE is an error even with --live.
    return env_bool(environ, "AETHR_LIVE") or flag or bool(overrides) or bool(
        environ.get("AETHR_MODEL", "").strip())


#: Where `aethr auth login PROVIDER` keeps each provider's key.
AUTH_VARS = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY",
             "gemini": "GOOGLE_API_KEY", "google": "GOOGLE_API_KEY",
             "openrouter": "OPENROUTER_API_KEY", "xai": "XAI_API_KEY"}
_DOTENV_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "$": "$"}


class Env(dict):
    """The environment a run sees: the process's, plus the project's .env (`.dotenv` names)."""

    def __init__(self, base: dict[str, str]) -> None:
        super().__init__(base)
        self.dotenv: set[str] = set()


def parse_dotenv(text: str) -> tuple[dict[str, str], list[int]]:
    """`.env` text -> (variables, numbers of the lines that are not KEY=VALUE)."""
    values: dict[str, str] = {}
    bad: list[int] = []
    # Only real line breaks count (str.splitlines() also breaks at U+2028 and friends).
    for number, line in enumerate(text.lstrip("\ufeff").split("\n"), 1):
        line = line.rstrip("\r")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        found = _dotenv_line(line)
        value = _dotenv_value(found[1]) if found else None
        if value is None:
            bad.append(number)
        else:
            values[found[0]] = value
    return values, bad


def _dotenv_line(line: str) -> tuple[str, str] | None:
    """`[export ]KEY=VALUE`, spaces and tabs allowed around each part: (KEY, raw VALUE)."""
    rest = line.lstrip(" \t")
    tries = [rest]
    if rest.startswith(("export ", "export\t")):   # "export =1" sets a variable named export
        tries.insert(0, rest[7:].lstrip(" \t"))
    for text in tries:
        name, eq, raw = text.partition("=")
        name = name.rstrip(" \t")
        if eq and name.isascii() and name.isidentifier():
            return name, raw.lstrip(" \t")
    return None


def _dotenv_value(raw: str) -> str | None:
    quote = raw[:1]
    if quote not in ("'", '"'):
        cuts = [k for k in (raw.find(" #"), raw.find("\t#")) if k >= 0]
        return raw[:min(cuts, default=len(raw))].strip()
    # Quoted: up to the closing quote, then nothing but a comment. Only "…" has escapes.
    out, i = [], 1
    while i < len(raw) and raw[i] != quote:
        if quote == '"' and raw[i] == "\\" and i + 1 < len(raw):
            i += 1                      # an escape: the next character, translated
            out.append(_DOTENV_ESCAPES.get(raw[i], "\\" + raw[i]))
        else:
            out.append(raw[i])
        i += 1
    rest = raw[i + 1:].strip()
    return "".join(out) if i < len(raw) and (not rest or rest.startswith("#")) else None


def dotenv_tracked(project: Project) -> bool:
    """Whether git tracks the project's .env (then it is neither loaded nor written)."""
    return bool(project.top) and bool(_git(["ls-files", "-z", "--", ".env"], project.root,
                                           project.environ, check=False)[0])


def load_dotenv(project: Project) -> tuple[Env, list[str]]:
    """The project's `.env` merged under the environment (SPEC §11): (env, warnings)."""
    env = Env(project.environ)
    path = os.path.join(project.root, ".env")
    if not os.path.isfile(path):
        return env, []
    if dotenv_tracked(project):
        return env, [".env is tracked by git, so it was not loaded: a committed .env could "
                     "point a base URL elsewhere and receive your key (git rm --cached .env)"]
    try:
        with open(path, encoding="utf-8") as f:
            values, bad = parse_dotenv(f.read())
    except (OSError, UnicodeDecodeError) as exc:
        return env, [f"cannot read .env, so it was not loaded: {exc}"]
    for name, value in values.items():
        if not env.get(name):           # variables already set in the environment win
            env[name] = value
            env.dotenv.add(name)
    return env, [f"{_relative(path)}:{n}: not KEY=VALUE; the line was ignored" for n in bad]


# == 12. Commands and CLI =====================================================

_TASK_TEMPLATE = (
    "",
    "# Write the task for this aethr run above these lines, then save and close the file.",
    "# These two template lines are removed; an empty task aborts the run.",
)


class _Exit(Exception):
    """argparse wants to exit (help, version, usage error): unwinds to main()."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


#: What the fast path knows of `run` and `check`: their options by kind ("flag", "value",
#: "append") and their positional ("*": any number of words, or None). build_parser is the
#: definition; a test holds this table to it.
_QUICK = {
    "run": ({"--show-prompt": "flag", "--live": "flag", "--workflow": "value",
             "--preset": "value", "--model": "append", "--json": "flag", "--verbose": "flag",
             "--resume-checkpoint": "value", "--force": "flag"}, "task"),
    "check": ({"--workflow": "value", "--preset": "value", "--live": "flag"}, None),
}


class _Args:
    """The fast path's result: the attributes argparse's Namespace would have."""

    def __init__(self, **kw: Any) -> None:
        self.__dict__.update(kw)


def _quick_args(argv: list[str]) -> _Args | None:
    """Parse a plain `run` or `check` command line without argparse, whose import and parser
    cost more than the rest of `aethr run --show-prompt` (SPEC §12).

    None for anything else (help, '--', a word or value starting with '-', an unknown option,
    --workflow with --preset): argparse then parses it, and judges it.
    """
    i = 0
    while i < len(argv) and argv[i] == "--no-color":
        i += 1
    if i == len(argv) or argv[i] not in _QUICK or "--" in argv:
        return None
    options, positional = _QUICK[argv[i]]
    options = {**options, "--no-color": "flag"}
    dests = {option: option[2:].replace("-", "_") for option in options}
    args = {"command": argv[i], "func": globals()["cmd_" + argv[i]]}
    for option, kind in options.items():
        args[dests[option]] = [] if kind == "append" else (False if kind == "flag" else None)
    rest: list[str] = []
    it = iter(argv[i + 1:])
    for word in it:
        if not word.startswith("-") or word == "-":
            rest.append(word)
            continue
        option, eq, value = word.partition("=")
        kind = options.get(option)
        if kind is None or (kind == "flag" and eq):
            return None
        dest = dests[option]
        if kind == "flag":
            args[dest] = True
            continue
        if not eq:
            value = next(it, "-")
            if value.startswith("-"):
                return None
        if kind == "append":
            args[dest].append(value)
        else:
            args[dest] = value
    if (rest and not positional) or (args["workflow"] is not None and args["preset"] is not None):
        return None
    if positional:
        args[positional] = rest
    args["no_color"] = args["no_color"] or i > 0
    return _Args(**args)


def _parse_args(argv: list[str], term: Term) -> argparse.Namespace:
    term.no_color = "--no-color" in argv[:argv.index("--") if "--" in argv else len(argv)]
    quick = _quick_args(argv)
    if quick is not None:
        return quick
    top, subs = _lazy().build_parser(term)
    i = 0
    while i < len(argv) and argv[i] == "--no-color":
        i += 1
    if i == len(argv):
        top.print_help(sys.stderr)
        raise _Exit(2)
    if argv[i] not in subs:
        return top.parse_args(argv)     # --help, --version, or a usage error
    name, rest = argv[i], argv[i + 1:]
    if name == "run":
        # Options anywhere (SPEC §2): intermixed parsing; '--' ends the options for good.
        cut = rest.index("--") if "--" in rest else len(rest)
        args = subs[name].parse_intermixed_args(rest[:cut])
        args.task = args.task + rest[cut + 1:]
    else:
        args = subs[name].parse_args(rest)
    args.command = name
    args.no_color = args.no_color or i > 0
    return args


def _model_flags(values: list[str]) -> dict[str, str]:
    """--model MODEL / --model ROLE=MODEL -> {"*": MODEL, ROLE: MODEL}."""
    out: dict[str, str] = {}
    for value in values:
        role, eq, model = value.partition("=")
        if not eq or ":" in role:
            role, model = "*", value
        role, model = role.strip(), model.strip()
        if not role or not all(split_model(model)):
            raise UsageError(f"--model {value!r}: expected MODEL or ROLE=MODEL, with MODEL as "
                             "provider:model", hint="for example --model openai:gpt-5.5 or "
                             "--model reviewer=anthropic:claude-sonnet-5")
        out[role] = model
    return out


def _check_overrides(overrides: dict[str, str], workflow: Workflow, environ: dict[str, str]
                     ) -> None:
    """--model ROLE= must name a role; an override's provider must be known (SPEC §2, §3)."""
    for role in overrides:
        if role != "*" and role not in workflow.roles:
            raise UsageError(f"--model {role}=…: {workflow.source} has no role {role!r}",
                             hint=_did_you_mean(role, workflow.roles)
                             or "roles: " + ", ".join(workflow.roles))
    env_model = environ.get("AETHR_MODEL", "").strip()
    if env_model and not all(split_model(env_model)):
        raise UsageError(f"AETHR_MODEL={env_model!r} is not provider:model",
                         hint="for example AETHR_MODEL=openai:gpt-5.5")
    # OpenCode takes any provider id (SPEC §7): only model steps are checked.
    for step in workflow.steps:
        model = overrides.get(step.role) or overrides.get("*") or env_model
        provider = split_model(model)[0]
        if step.backend == "model" and model and provider not in PROVIDER_KEYS:
            where = ("AETHR_MODEL" if model == env_model and not overrides else "--model")
            raise UsageError(f"{where}: unknown provider {provider!r} in model {model!r}",
                             hint=_did_you_mean(provider, PROVIDER_KEYS)
                             or "providers: " + ", ".join(PROVIDER_KEYS))


def _find_root(args: argparse.Namespace, term: Term
               ) -> tuple[str, tuple[str | None, str | None, str | None], str | None]:
    """(project root, git probe, the .aethr.yaml found or None), per SPEC §2."""
    try:
        cwd = os.getcwd()
    except FileNotFoundError:
        raise UsageError("the current directory no longer exists",
                         hint="cd to an existing directory and run again") from None
    probe = git_probe(cwd, term.environ)
    top = probe[0]
    if getattr(args, "workflow", None) or getattr(args, "preset", None):
        return top or cwd, probe, None
    here = cwd
    while True:
        candidate = os.path.join(here, WORKFLOW_FILE)
        if os.path.lexists(candidate):
            return here, probe, candidate
        wrong = os.path.join(here, ".aethr.yml")
        if os.path.lexists(wrong):
            raise ConfigError(f"found {_relative(wrong)}, but aethr reads {WORKFLOW_FILE}",
                              hint=f"rename it: mv {_relative(wrong)} {_relative(candidate)}")
        parent = os.path.dirname(here)
        if top is None or os.path.normcase(here) == os.path.normcase(top) or parent == here:
            return top or cwd, probe, None
        here = parent


def _open_project(args: argparse.Namespace | None, term: Term, root: str | None = None
                  ) -> tuple[Project, str | None]:
    """The project (with its .env loaded, SPEC §11) and the .aethr.yaml found, if any."""
    if root is None:
        root, probe, found = _find_root(args, term)
    else:
        probe, found = git_probe(root, term.environ), None
    project = Project(root, term.environ, probe)
    env, warnings = load_dotenv(project)
    for warning in warnings:
        term.warn(warning)
    project.environ, project.secrets = env, secret_values(env)
    term.debug = env_bool(env, "AETHR_DEBUG")        # .env may set it too
    return project, found


def _locate(args: argparse.Namespace, term: Term) -> tuple[Project, Workflow]:
    """The project and its workflow: --workflow, --preset, .aethr.yaml, or the default preset."""
    project, found = _open_project(args, term)
    if args.workflow:
        return project, load_workflow(args.workflow)
    if args.preset:
        return project, load_workflow(preset=args.preset)
    if found:
        return project, load_workflow(_relative(found))
    term.note(f"no {WORKFLOW_FILE} found; using the built-in {DEFAULT_PRESET} preset "
              "(aethr init --list shows the others)")
    return project, load_workflow(preset=DEFAULT_PRESET)


def preflight(workflow: Workflow, project: Project, *, live: bool = False,
              overrides: dict[str, str] | None = None) -> None:
    """Check what the run will need before the first step (SPEC §2); exit 2 on problems.

    Always: every git_diff:REV resolves. Live mode: every model step has a model, a known
    provider and its key; OpenCode steps have the opencode binary and a git repository.
    """
    problems: list[tuple[str, int, int, str, str | None]] = []
    display = workflow.path or f"preset:{workflow.preset}"
    if live:
        problems += _lazy()._live_problems(workflow, project, overrides or {}, display)
    for step in workflow.steps:
        for j, source in enumerate(step.context):
            if not source.startswith("git_diff:"):
                continue
            rev = source.partition(":")[2].strip()
            line, column = workflow.marks.get(("steps", step.index, "context", j), (1, 1))
            why = None
            if not project.top:
                why = f"{source} needs a git repository; {project.root} is not in one"
            elif not project.head:
                why = f"{source} needs a commit on the current branch"
            elif project.git("rev-parse", "--verify", "-q", rev + "^{commit}",
                             check=False) == "":
                why = f"{source}: unknown revision {rev!r}"
            elif _git(["merge-base", rev, "HEAD"], project.top, project.environ,
                      check=False)[2] != 0:
                why = f"{source}: {rev!r} has no common ancestor with HEAD"
            if why:
                problems.append((display, line, column, why,
                                 "check the name, or fetch it first (git fetch)"
                                 if "unknown" in why else None))
    if problems:
        problems.sort(key=lambda p: (p[1], p[2]))
        raise ConfigError(f"{_plural(len(problems), 'problem')} in {display}; nothing was run",
                          problems=problems)


def _read_task(args: argparse.Namespace, term: Term) -> str:
    if args.task == ["-"]:
        try:
            text = term.inp.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read the task from standard input: {exc}") from None
    elif args.task:
        text = " ".join(args.task)
    else:
        text = _lazy()._task_from_editor(term)
    if not text.strip():
        raise UsageError("the task is empty; nothing was run",
                         hint='aethr run "what you want done"')
    # Bytes that are not UTF-8 (in argv or on stdin) become U+FFFD, never a crash.
    return printable(text.strip())


def _show_prompts(workflow: Workflow, task: str, project: Project, overrides: dict[str, str],
                  live: bool, term: Term, resume: dict | None = None) -> int:
    for step in workflow.steps:
        for source in step.context:
            if source.startswith("cmd:"):
                term.note(f"--show-prompt runs the cmd: context of step '{step.id}': "
                          f"{source[4:].strip()}")
    total = len(workflow.steps)
    for step, model, prompt in render_prompts(workflow, task, project, models=overrides,
                                              resume=resume):
        term.write(f"=== step {step.index + 1}/{total}: {step.id} ({step.role}) -> "
                   f"{step_target(step, model, live)} ===\n")
        ctl = workflow.controller_of(step.index)
        if ctl is not None:
            term.write(f"(in a loop back to '{ctl.repeat.back_to}', at most "
                       f"{_plural(ctl.repeat.max_iterations, 'pass', 'passes')}: shown once, "
                       "as the first iteration)\n")
        term.write(f"--- system ---\n{prompt.system}--- user ---\n{prompt.user}\n")
    term.status("aethr: --show-prompt printed the prompts; no model or OpenCode was called")
    return 0


def cmd_run(args: argparse.Namespace, term: Term) -> int:
    """aethr run: locate and validate the workflow, preflight, then run it."""
    if args.resume_checkpoint:
        return _lazy()._resume(args, term)
    if args.force:
        raise UsageError("--force goes with --resume-checkpoint")
    overrides = _model_flags(args.model)
    env_bool(term.environ, "AETHR_LIVE")        # a bad value fails before anything else
    project, workflow = _locate(args, term)
    # .env is loaded by now, so it may set AETHR_LIVE (SPEC §11).
    live = wants_live(args.live, overrides, project.environ)
    _check_overrides(overrides, workflow, project.environ)
    preflight(workflow, project, live=live and not args.show_prompt, overrides=overrides)
    task = _read_task(args, term)
    if args.show_prompt:
        return _show_prompts(workflow, task, project, overrides, live, term)
    # run_workflow builds the checkpoint itself (AETHR_MODEL folded in as an override).
    saved = {"task": task, "mode": "live" if live else "mock", "models": overrides}
    result = _run_saving(args, term, workflow, project, saved, None)
    if (args.preset or args.model) and workflow.preset and not args.json:
        _promote(workflow.preset, args.model, live, project.root, term)
    return 1 if result.verdict == "revise" else 0


def _promote(preset: str, model_flags: list[str], live: bool, root: str, term: Term) -> None:
    """Workflow promotion (SPEC §9): the one `aethr init` command that saves this setup.

    `init` writes in the current directory, which becomes the project root: from a
    subdirectory the command first goes to the root this run used.
    """
    import shlex

    words = ["aethr", "init", preset] + [w for m in model_flags for w in ("--model", m)]
    if os.path.lexists(os.path.join(root, WORKFLOW_FILE)):
        words.append("--force")
    command = shlex.join(words)
    if os.path.realpath(root) != os.path.realpath(os.getcwd()):
        command = f"cd {shlex.quote(_relative(root))} && {command}"
    term.status(f"aethr: to save this setup as {WORKFLOW_FILE}: {command}")
    if live:
        term.status("aethr: then run with --live (or AETHR_LIVE=1) to keep it live")


def _run_saving(args: argparse.Namespace, term: Term, workflow: Workflow, project: Project,
                saved: dict, path: str | None) -> RunResult:
    """Run; when a step fails or the run is stopped, write the checkpoint (SPEC §10)."""
    view = JsonView(term) if args.json else TermView(term)
    if args.verbose:
        term.status(f"aethr: root {project.root}; workflow {workflow.source}; mode "
                    f"{saved['mode']}")
    try:
        return run_workflow(workflow, saved["task"], root=project, live=saved["mode"] == "live",
                            models=saved["models"], env=project.environ, on_event=view,
                            resume=saved if "state" in saved else None)
    except (StepFailed, KeyboardInterrupt, BrokenPipeError) as exc:
        data = getattr(exc, "checkpoint", None)
        if data is not None:
            exc.checkpoint_path = _lazy()._write_checkpoint(  # type: ignore[union-attr]
                data, path, term, verbose=args.verbose,
                json_view=view if args.json else None)
        raise


def _resume_line(exc: BaseException, term: Term) -> None:
    path = getattr(exc, "checkpoint_path", None)
    if path:
        import shlex

        term.status(f"aethr: to resume: aethr run --resume-checkpoint {shlex.quote(path)}")


def _preset_description(text: str) -> str:
    # A plain scan, not a regex: `init --list` must not import re (SPEC §12).
    for line in text.split("\n"):
        if line.startswith("description:"):
            return line[len("description:"):].strip().strip("'\"")
    return ""


def _list_presets(stream: Any) -> None:
    width = max(map(len, PRESETS))
    for name in sorted(PRESETS):
        stream.write(f"  {name:<{width}}  {_preset_description(PRESETS[name])}\n")
    stream.flush()


def _check_summary(workflow: Workflow, project: Project, live: bool) -> list[str]:
    rows = []
    for step in workflow.steps:
        model = resolve_model(workflow, step, {}, project.environ)
        target = step_target(step, model, live=True)
        extra = ", ".join(step.context) or "no context"
        if step.history_visibility != "all":
            extra += f"; history {step.history_visibility}"
        rows.append((f"{step.index + 1}.", step.id, step.role, target, extra, step))
    widths = [max(len(r[k]) for r in rows) for k in range(4)]
    out = [f"workflow  {workflow.name} ({workflow.source})"]
    if workflow.description:
        out.append(f"          {workflow.description.strip()}")
    out += [f"root      {project.root}",
            "mode      " + ("live: each model step calls its model" if live else
                             "mock: no model is called (the default; --live calls them)"),
            f"steps     {len(rows)}"]
    for *cols, extra, step in rows:
        cells = "  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))
        out.append(f"  {cells}  {extra}")
        if step.repeat:
            until = ("the review status is pass" if step.repeat.until_review_pass
                     else f"the answer contains {step.repeat.until_contains!r}")
            out.append(" " * (4 + widths[0]) + f"repeat: back to {step.repeat.back_to} until "
                       f"{until}, at most {_plural(step.repeat.max_iterations, 'pass', 'passes')}")
    return out


def cmd_check(args: argparse.Namespace, term: Term) -> int:
    """aethr check: validate the workflow and print a one-screen summary."""
    project, workflow = _locate(args, term)
    live = wants_live(args.live, {}, project.environ)
    _check_overrides({}, workflow, project.environ)
    preflight(workflow, project, live=args.live)
    for line in _check_summary(workflow, project, live):
        term.write(line + "\n")
    term.status(f"aethr: {workflow.source} is valid")
    return 0


def _setup_streams() -> None:
    # A closed standard descriptor (`2>&-`) becomes /dev/null, as git does: what is written to
    # it is dropped instead of failing the run, and no pipe or file aethr opens can land on it.
    for fd, name in enumerate(("stdin", "stdout", "stderr")):
        try:
            os.fstat(fd)
        except OSError:
            os.set_inheritable(os.open(os.devnull, os.O_RDWR), True)  # the lowest free: fd
        if getattr(sys, name) is None:
            setattr(sys, name, open(fd, "r" if fd == 0 else "w", encoding="utf-8",
                                    errors="replace", closefd=False))
    # A redirected stdout is written as UTF-8 (SPEC §1); a console whose encoding cannot
    # show a character gets a replacement instead of a crash (cp1252).
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream.isatty():
                stream.reconfigure(errors="replace")
            else:
                stream.reconfigure(encoding="utf-8", errors="replace")
        except (AttributeError, ValueError, OSError):
            pass


def main(argv: list[str] | None = None, term: Term | None = None) -> int:
    """The command line: returns the exit status (SPEC §2)."""
    if term is None:
        _setup_streams()
        term = Term()
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        # `version` and `init --list` answer before argparse is even imported (SPEC §12).
        words = [a for a in argv if a != "--no-color"]
        if words in (["version"], ["--version"]):
            term.write(f"aethr {__version__}\n")
            return 0
        if words == ["init", "--list"]:
            _list_presets(term.out)
            return 0
        args = _parse_args(argv, term)
        term.no_color = args.no_color
        term.debug = env_bool(term.environ, "AETHR_DEBUG")
        return args.func(args, term)
    except _Exit as exc:
        return exc.status
    except AethrError as exc:
        term.error(exc, traceback=term.debug)
        _resume_line(exc, term)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        term.status("aethr: interrupted")
        _resume_line(exc, term)
        return 130
    except BrokenPipeError as exc:
        # `aethr run … | head -1`: stop quietly; keep Python from complaining at exit.
        if term.out is sys.stdout:
            try:
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            except (OSError, ValueError):
                pass
        _resume_line(exc, term)
        return 141
    except Exception:
        term.bug()
        return 70


# == 13. Compiled on first use: live runs, auth, resume, argparse =============
# The code that `version`, `init --list`, `check`, `run --show-prompt` and a
# mock run that succeeds never need: the HTTP client and the live providers,
# OpenCode's live run, checkpoints and resume, `auth`, the task editor,
# `init --model`, and argparse (help, usage errors, `init NAME`, `run -- ...`).
# Run as a script, Python compiles the whole file before it runs a line, and
# compile time grows with the code's tokens: with this third of them compiled
# as well, `python3 aethr.py version` took 6.6x `python3 -c pass` (SPEC §12: at
# most 5x). As source text it costs next to nothing until `_lazy()` (section 1)
# compiles it, once, into this module's globals: a lazy import of our own code.
# Otherwise it is ordinary code (but no `'''` in it). It keeps its line numbers
# in this file, for tracebacks and debuggers, and tests/test_lazy.py lints it
# with ruff as if the quotes were not there and checks that the other sections
# reach it only as `_lazy().name`. Compiling it takes 15-30 ms, once per
# process, in the commands that need it.

#: The line of this file on which `_LAZY = r'''` stands: compiled, its code keeps its lines.
_LAZY_LINE = sys._getframe().f_lineno + 1
_LAZY = r'''
# Section 8's live half: the HTTP client, SSE streaming and the live providers.


#: Provider -> (the variable that replaces its base URL, the default base) (SPEC §6).
PROVIDER_BASES = {
    "openai": ("OPENAI_BASE_URL", "https://api.openai.com/v1"),
    "anthropic": ("ANTHROPIC_BASE_URL", "https://api.anthropic.com"),
    "gemini": ("GOOGLE_GEMINI_BASE_URL", "https://generativelanguage.googleapis.com"),
    "openrouter": ("OPENROUTER_BASE_URL", "https://openrouter.ai/api/v1"),
    "xai": ("XAI_BASE_URL", "https://api.x.ai/v1"),
    "ollama": ("OLLAMA_HOST", "http://127.0.0.1:11434"),
}


#: Seconds to open a connection: TCP, a proxy's tunnel and the TLS handshake.
CONNECT_TIMEOUT = 10.0


#: Default AETHR_TIMEOUT: seconds for a response to start and between two chunks; a local
#: model can take minutes to load before its first token.
READ_TIMEOUT = 600.0


#: Default AETHR_MAX_RETRIES.
MAX_RETRIES = 2


#: A server that asks to wait longer than this (seconds) before a retry is not waited for.
MAX_RETRY_WAIT = 60.0


#: Statuses worth retrying (SPEC §6); 529 is Anthropic's "overloaded".
RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504, 529})


#: Ollama context sizes: num_ctx is rounded up to one of these, since every new value
#: makes Ollama reload the model.
OLLAMA_CONTEXTS = (8192, 16384, 32768, 65536, 131072)


#: Output tokens to leave room for in num_ctx when a step sets no max_tokens.
OLLAMA_OUTPUT_ALLOWANCE = 4096


#: Bytes of an error body kept: enough for any provider's message, never a whole page.
_HTTP_ERROR_BODY = 64 * 1024


#: The media type of the streams asked for, except Ollama's NDJSON.
_SSE_TYPE = "text/event-stream"


#: Provider error ids meaning "pay first" (OpenAI, Anthropic): retrying cannot help.
_BILLING_IDS = ("insufficient_quota", "billing_error", "enforced_spend_limit_reached")


class ProviderError(AethrError):
    """A model provider failed: `.provider`, `.status` (HTTP, or None), `.retryable`, `.billing`.

    `.retry_after` is the wait in seconds the server asked for, when it asked.
    """

    exit_code = 3

    def __init__(self, message: str, *, hint: str | None = None, provider: str = "",
                 status: int | None = None, retryable: bool = False, billing: bool = False,
                 retry_after: float | None = None) -> None:
        super().__init__(message, hint=hint)
        self.provider = provider
        self.status = status
        self.retryable = retryable
        self.billing = billing
        self.retry_after = retry_after


def key_source(environ: dict[str, str], name: str) -> str:
    """Where variable `name` came from: ".env" or "the environment"."""
    return ".env" if name in getattr(environ, "dotenv", ()) else "the environment"


def provider_key(provider: str, environ: dict[str, str]) -> tuple[str, str] | None:
    """(variable, value) of the provider's first non-empty key variable, or None."""
    for name in PROVIDER_KEYS.get(provider, ()):
        value = environ.get(name, "").strip()
        if value:
            return name, value
    return None


def provider_problems(model: str, environ: dict[str, str]) -> list[tuple[str, str | None]]:
    """What stops a live call to `model` before any request: (message, hint) pairs."""
    provider, name = split_model(model)
    cls = PROVIDERS.get(provider)
    if cls is None:
        return [(f"unknown provider {provider!r} in model {model!r}",
                 "providers: " + ", ".join(PROVIDERS))]
    if not name:
        return [(f"model {model!r} names no model after '{provider}:'",
                 f"write it as {provider}:MODEL")]
    problems: list[tuple[str, str | None]] = []
    client = cls(model, environ)
    # Any Provider may be registered (tests do); only HTTP clients have a base URL to check.
    optional = not PROVIDER_KEYS.get(provider)
    if isinstance(client, _HTTPProvider):
        try:
            client.base_url()
        except UsageError as exc:
            problems.append((exc.message, exc.hint))
        optional = client.key_optional()
    if not optional and provider_key(provider, environ) is None:
        names = PROVIDER_KEYS[provider]
        wanted = names[0] + "".join(f" (or {n})" for n in names[1:])
        problems.append((f"no API key for {model}: set {wanted}",
                         f"run: aethr auth login {provider}"))
    return problems


def http_settings(environ: dict[str, str]) -> tuple[float, int]:
    """(AETHR_TIMEOUT seconds, AETHR_MAX_RETRIES), read strictly: a bad value is a UsageError."""
    timeout, retries = READ_TIMEOUT, MAX_RETRIES
    raw = environ.get("AETHR_TIMEOUT", "").strip()
    if raw:
        try:
            timeout = float(raw)
        except ValueError:
            timeout = -1.0
        # `not 0 < x < inf` also refuses nan.
        if not 0 < timeout < float("inf"):
            raise UsageError(f"AETHR_TIMEOUT must be a number of seconds above 0, not {raw!r}",
                             hint="for example AETHR_TIMEOUT=600 (the default)")
    raw = environ.get("AETHR_MAX_RETRIES", "").strip()
    if raw:
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 3):
            raise UsageError(f"AETHR_MAX_RETRIES must be a whole number, 0 or more, not {raw!r}",
                             hint="for example AETHR_MAX_RETRIES=2 (the default); 0 turns "
                             "retries off")
        retries = int(raw)
    return timeout, retries


def _retry_sleep(seconds: float) -> None:
    """Wait before a retry (the one place that sleeps, so tests can record the waits)."""
    import time

    time.sleep(seconds)


def _http_is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1, localhost, and 0.0.0.0 / :: (which connect to this host): never
    reached through a proxy."""
    import ipaddress

    host = host.strip("[]").lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


def _http_proxy(url: str, environ: dict[str, str]) -> str | None:
    """The proxy for `url` from `environ` (lower-case names first, as urllib), or None."""
    import urllib.request
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if _http_is_loopback(parts.hostname or ""):
        return None
    scheme = parts.scheme.lower()
    proxy = (environ.get(f"{scheme}_proxy") or environ.get(f"{scheme.upper()}_PROXY") or "").strip()
    if not proxy:
        return None
    no_proxy = (environ.get("no_proxy") or environ.get("NO_PROXY") or "").strip()
    # urllib reads NO_PROXY from os.environ only; the CLI's environment may hold more (.env).
    if no_proxy and urllib.request.proxy_bypass_environment(parts.netloc.rpartition("@")[2],
                                                            {"no": no_proxy}):
        return None
    return proxy


def _http_ssl_context(provider: str, environ: dict[str, str]) -> tuple[Any, str]:
    """(verifying SSL context, the CA bundle it uses in words) from SSL_CERT_* or REQUESTS_CA_*."""
    import ssl

    cafile = environ.get("SSL_CERT_FILE", "").strip() or None
    capath = environ.get("SSL_CERT_DIR", "").strip() or None
    if cafile or capath:
        bundle = " and ".join(f"{path} ({var})" for path, var in
                              ((cafile, "SSL_CERT_FILE"), (capath, "SSL_CERT_DIR")) if path)
    elif environ.get("REQUESTS_CA_BUNDLE", "").strip():
        cafile = environ["REQUESTS_CA_BUNDLE"].strip()
        bundle = f"{cafile} (REQUESTS_CA_BUNDLE)"
    else:
        bundle = "the system's CA certificates"
    try:
        context = ssl.create_default_context(cafile=cafile, capath=capath)
    except (OSError, ssl.SSLError) as exc:
        raise ProviderError(f"{provider}: cannot load the CA bundle {bundle}: "
                            f"{getattr(exc, 'strerror', None) or exc}",
                            hint="point SSL_CERT_FILE at a PEM file of CA certificates",
                            provider=provider) from None
    return context, bundle


def _http_opener(url: str, proxy: str | None, timeout: float, context: Any) -> Any:
    """A urllib opener: 10 s to connect, then `timeout` for every read; no redirects."""
    import http.client
    import urllib.request

    # urlopen's one timeout would bound the connect and every read alike; these connections
    # connect within CONNECT_TIMEOUT (the value urllib passes them), then wait longer.
    class Connection(http.client.HTTPConnection):
        def connect(self) -> None:
            super().connect()
            self.sock.settimeout(timeout)

    class TLSConnection(http.client.HTTPSConnection):
        def connect(self) -> None:
            super().connect()
            self.sock.settimeout(timeout)

    class Handler(urllib.request.HTTPHandler):
        def http_open(self, req: Any) -> Any:
            return self.do_open(Connection, req)

    class TLSHandler(urllib.request.HTTPSHandler):
        def https_open(self, req: Any) -> Any:
            return self.do_open(TLSConnection, req, context=context)

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        # urllib would turn a redirected POST into a GET; an API that moved is an error.
        def redirect_request(self, *args: Any) -> None:
            return None

    scheme = url.partition(":")[0].lower()
    handlers = [urllib.request.ProxyHandler({scheme: proxy} if proxy else {}), Handler(),
                NoRedirect()]
    if context is not None:
        handlers.append(TLSHandler(context=context))
    opener = urllib.request.build_opener(*handlers)
    opener.addheaders = []
    return opener


def _http_stream(provider: str, url: str, headers: dict[str, str], body: bytes,
                 environ: dict[str, str]) -> Iterator[bytes]:
    """POST `body` to `url`; yield the response body in raw chunks as they arrive.

    Raises ProviderError for an error status, a JSON body where a stream was expected,
    and each network failure (DNS, refused, TLS, timeouts), explained in one line.
    """
    import http.client
    import urllib.error
    import urllib.request

    timeout, _ = http_settings(environ)
    proxy = _http_proxy(url, environ)
    context, bundle = (_http_ssl_context(provider, environ) if url[:6].lower() == "https:"
                       else (None, None))
    opener = _http_opener(url, proxy, timeout, context)
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    # urllib's own agent is blocked by some gateways (SPEC §6).
    request.add_header("User-Agent", f"aethr/{__version__}")
    if not request.has_header("Content-type"):
        request.add_header("Content-Type", "application/json")
    failure = None
    # 1. Connect and send; the status line and headers come within `timeout`.
    try:
        response = opener.open(request, timeout=CONNECT_TIMEOUT)
    except urllib.error.HTTPError as exc:
        try:
            data = exc.read(_HTTP_ERROR_BODY) or b""
        except (OSError, http.client.HTTPException, AttributeError, ValueError):
            data = b""
        exc.close()
        failure = _http_status_error(provider, exc.code, exc.headers, data, environ)
    except urllib.error.URLError as exc:
        # urllib wraps what happens before the request is sent: DNS, connect, TLS.
        failure = _http_net_error(provider, url, exc.reason, "connect", timeout, proxy, bundle)
    except (OSError, http.client.HTTPException) as exc:
        failure = _http_net_error(provider, url, exc, "response", timeout, proxy, bundle)
    if failure is not None:
        raise failure
    with response:
        # 2. A 200 with a JSON body is an error told as one (SPEC §6), not an empty answer.
        ctype = response.headers.get_content_type()
        is_json, first = ctype == "application/json", b""
        if "Content-Type" not in response.headers and headers.get("Accept") == _SSE_TYPE:
            # No Content-Type at all (some gateways): an event stream never opens with "{".
            while not first.strip():
                chunk = _http_read(response, provider, timeout)
                if not chunk:
                    break
                first += chunk
            if first.lstrip()[:1] == b"{":
                ctype, is_json = "a JSON body without a Content-Type", True
        if is_json or ctype == "text/html":
            try:
                data = first + response.read(max(0, _HTTP_ERROR_BODY - len(first)))
            except (OSError, http.client.HTTPException):
                data = first
            message = _http_message(data)[0] if is_json else ""
            var = PROVIDER_BASES.get(provider, ("", ""))[0]
            raise ProviderError(f"{provider}: expected a stream, got {ctype} (HTTP "
                                f"{response.status})" + (f": {message}" if message else ""),
                                hint=f"check {var}" if var in environ else None,
                                provider=provider, status=response.status)
        # 3. Raw chunks as they arrive.
        chunk = first or _http_read(response, provider, timeout)
        while chunk:
            yield chunk
            chunk = _http_read(response, provider, timeout)


def _http_read(response: Any, provider: str, timeout: float) -> bytes:
    """The next chunk of a response body (b"" at its end), as soon as one read gets it: never
    waiting for a full buffer or a line end. Raises ProviderError for a stall or a lost link."""
    import http.client

    try:
        return response.read1(65536)
    except TimeoutError:
        raise ProviderError(f"{provider}: the stream stalled: no data for {timeout:g} s",
                            hint="AETHR_TIMEOUT sets how long to wait (seconds)",
                            provider=provider, retryable=True) from None
    except (OSError, http.client.HTTPException) as exc:
        raise ProviderError(f"{provider}: the connection was lost mid-stream "
                            f"({_http_describe(exc)})", provider=provider,
                            retryable=True) from None


def _http_describe(exc: BaseException) -> str:
    """A short description of a network exception."""
    import http.client

    if isinstance(exc, http.client.IncompleteRead):
        return "the server closed it before the end of the body"
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _http_clean(text: str, limit: int = 600) -> str:
    """`text` on one line, at most `limit` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "\u2026"


def _http_message(body: bytes) -> tuple[str, dict]:
    """(the provider's message, its error object) from an error body of any provider."""
    import json

    text = body.decode("utf-8", "replace")
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    # Google's older endpoints answer with a list of one error object.
    if isinstance(data, list) and data and isinstance(data[0], dict):
        data = data[0]
    if not isinstance(data, dict):
        return _http_clean(text, 300), {}
    error = data.get("error")
    if isinstance(error, dict):
        # OpenAI, OpenRouter, Anthropic and Gemini: {"error": {"message": ...}}.
        message = error.get("message") or error.get("status") or error.get("type") or ""
        return _http_clean(str(message)), error
    if isinstance(error, str):
        # xAI and Ollama: a flat {"error": "..."} (xAI adds "code": a gRPC status phrase).
        return _http_clean(error), data
    message = data.get("message") or data.get("detail") or ""
    return _http_clean(str(message) if message else text, 300), data


def _http_retry_after(found: dict[str, str], info: dict) -> float | None:
    """Seconds the server asks to wait: retry-after-ms, retry-after, Gemini's RetryInfo.

    `found` holds the response headers under lower-case names.
    """
    import email.utils
    import time

    try:
        return max(0.0, float(found["retry-after-ms"]) / 1000)
    except (KeyError, ValueError):
        pass
    value = found.get("retry-after", "").strip()
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            pass
        try:
            when = email.utils.parsedate_to_datetime(value)
            return max(0.0, when.timestamp() - time.time())
        except (TypeError, ValueError, IndexError):
            pass
    for detail in info.get("details") or ():
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("RetryInfo"):
            delay = str(detail.get("retryDelay", "")).strip()
            try:
                return max(0.0, float(delay[:-1] if delay.endswith("s") else delay))
            except ValueError:
                pass
    return None


def _http_billing(provider: str, status: int | None, info: dict, message: str) -> bool:
    """True for an error that means "pay first": never retried (SPEC §6)."""
    if status == 402:
        return True
    ids = f"{info.get('code')} {info.get('type')} {message}"
    if any(billing_id in ids for billing_id in _BILLING_IDS):
        return True
    # Gemini: a quota counted per day will not come back within any retry.
    for detail in info.get("details") or ():
        for violation in (detail.get("violations") or ()) if isinstance(detail, dict) else ():
            if isinstance(violation, dict) and "PerDay" in str(violation.get("quotaId", "")):
                return True
    # xAI has no code for it: its 403/429 messages speak of credits or a spending limit.
    lower = message.lower()
    return provider == "xai" and status in (403, 429) and (
        "credit" in lower or "spending limit" in lower)


def _http_bad_key(provider: str, status: int, info: dict, message: str) -> bool:
    """True when the status says the key was rejected (Gemini and xAI use 400 for it)."""
    if status in (401, 403):
        return True
    if status != 400 or provider not in ("gemini", "xai"):
        return False
    reasons = [d.get("reason") for d in info.get("details") or () if isinstance(d, dict)]
    lower = message.lower()
    return "API_KEY_INVALID" in reasons or ("api key" in lower and any(
        word in lower for word in ("invalid", "incorrect", "not valid")))


def _http_status_error(provider: str, status: int, headers: Any, body: bytes,
                       environ: dict[str, str]) -> ProviderError:
    """The ProviderError for an HTTP error status, with the provider's own message."""
    # Secrets go before the message is shortened: a cut must not leave part of a key.
    for value in secret_values(environ):
        body = body.replace(value.encode("utf-8", "surrogateescape"), b"[redacted]")
    message, info = _http_message(body)
    found = {k.lower(): v for k, v in (headers.items() if headers is not None else ())}
    key = provider_key(provider, environ)
    text = f"{provider}: HTTP {status}: {message or 'no message'}"
    hint = None
    billing = _http_billing(provider, status, info, message)
    var = PROVIDER_BASES.get(provider, ("", ""))[0]
    if billing:
        text += "; the account is out of credits or over a spending limit"
        hint = f"add credits or raise the limit in your {provider} account; a retry cannot help"
    elif _http_bad_key(provider, status, info, message):
        if key is not None:
            text += f"; the key in {key[0]} (from {key_source(environ, key[0])}) was rejected"
            hint = (f"check {key[0]}, or store a new key with: aethr auth login {provider}"
                    if key_source(environ, key[0]) == ".env" else
                    f"check {key[0]} in your environment (it wins over .env), or unset it "
                    f"and run: aethr auth login {provider}")
        elif PROVIDER_KEYS.get(provider):
            text += f"; no key was sent ({PROVIDER_KEYS[provider][0]} is not set)"
            hint = f"run: aethr auth login {provider}"
    elif 300 <= status < 400:
        text += f"; the server redirects to {found.get('location', 'another address')}"
        hint = f"point {var} at the new address" if var else None
    elif status == 404 and provider == "ollama":
        hint = "is the model pulled? ollama list shows the models; ollama pull MODEL gets one"
    elif status == 404 and var in environ:
        hint = f"check {var}: it replaces {PROVIDER_BASES[provider][1]} exactly"
    return ProviderError(text, hint=hint, provider=provider, status=status,
                         retryable=status in RETRY_STATUSES and not billing, billing=billing,
                         retry_after=_http_retry_after(found, info))


def _http_net_error(provider: str, url: str, exc: BaseException | str, phase: str,
                    timeout: float, proxy: str | None, bundle: str | None) -> ProviderError:
    """One clear line for a failure below HTTP: DNS, refused, TLS, timeout, reset."""
    import http.client
    import socket
    import ssl
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host = parts.hostname or "?"
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        port = "?"
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    var = PROVIDER_BASES.get(provider, ("", ""))[0]
    via = proxy_at = ""
    if proxy:
        shown = urlsplit(proxy if "://" in proxy else "http://" + proxy)
        # Never show a proxy's user name or password.
        proxy_at = f"{shown.hostname}:{shown.port or 80}"
        via = f" through the proxy {proxy_at}"

    def fail(message: str, hint: str | None = None, retryable: bool = True) -> ProviderError:
        return ProviderError(f"{provider}: {message}", hint=hint, provider=provider,
                             retryable=retryable)

    if isinstance(exc, str):
        return fail(f"cannot reach {where}{via}: {exc}", retryable=False)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return fail(f"the TLS certificate of {host} could not be verified "
                    f"({exc.verify_message or exc.reason}); CA bundle used: {bundle}",
                    "if a proxy or company CA signs this traffic, point SSL_CERT_FILE (or "
                    "REQUESTS_CA_BUNDLE) at its CA bundle", retryable=False)
    if isinstance(exc, ssl.SSLError):
        return fail(f"TLS error with {where}{via}: {exc.reason or exc}",
                    f"does {var} point at a TLS (https://) server?" if var else None,
                    retryable=False)
    if isinstance(exc, socket.gaierror):
        # A name that does not exist will not appear on a retry; a resolver hiccup may.
        return fail(f"cannot resolve {host}{via}: DNS lookup failed ({exc.strerror or exc})",
                    f"check your network, and {var} if you set it" if var else
                    "check your network",
                    retryable=exc.errno == getattr(socket, "EAI_AGAIN", None))
    if isinstance(exc, ConnectionRefusedError):
        target = f"the proxy {proxy_at}" if proxy else where
        hint = ("is Ollama running? (ollama serve)" if provider == "ollama" else
                f"is the server running, and is {var} right?" if var and not proxy else None)
        return fail(f"connection refused by {target}", hint)
    if isinstance(exc, TimeoutError):
        if phase == "connect":
            return fail(f"could not connect to {where}{via} within {CONNECT_TIMEOUT:g} s")
        return fail(f"no response from {where} within {timeout:g} s",
                    "AETHR_TIMEOUT sets how long to wait (seconds)")
    if isinstance(exc, (ConnectionError, http.client.HTTPException)):
        return fail(f"the connection to {where}{via} was closed before a response "
                    f"({_http_describe(exc)})")
    return fail(f"cannot connect to {where}{via}: {_http_describe(exc)}")


def _sse_lines(chunks: Iterable[bytes]) -> Iterator[str]:
    """Lines ended by CRLF, LF or a lone CR, split as bytes and decoded whole as UTF-8.

    A line still open at the end of the body is dropped: it may be cut short.
    """
    # bytes.splitlines breaks at exactly these three endings (str.splitlines also breaks at
    # U+2028, \x85 and more, which JSON strings may hold raw); its last piece may be unended.
    rest = b""
    for chunk in chunks:
        lines = (rest + chunk).splitlines(keepends=True)
        # The last line may be unended, or end in a CR that is the first half of a CRLF.
        rest = lines.pop() if lines and not lines[-1].endswith(b"\n") else b""
        for line in lines:
            # Only the line's own ending can be a CR or LF: splitlines broke at all others.
            yield line.rstrip(b"\r\n").decode("utf-8", "replace")
    if rest.endswith(b"\r"):
        yield rest[:-1].decode("utf-8", "replace")


def _sse_events(chunks: Iterable[bytes]) -> Iterator[tuple[str, str]]:
    """(event name, data) pairs of a text/event-stream body (WHATWG HTML, server-sent events).

    Comment lines are skipped; `data:` lines join with LF; a blank line dispatches. An event
    whose lines all arrived but whose blank line did not is dispatched at the end.
    """
    event, data = "", []
    first = True
    for line in _sse_lines(chunks):
        if first:
            line = line.removeprefix("\ufeff")
            first = False
        if not line:
            if data:
                yield event or "message", "\n".join(data)
            event, data = "", []
            continue
        if line.startswith(":"):
            continue
        field, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if field == "data":
            data.append(value)
        elif field == "event":
            event = value
        # `id` and `retry` serve reconnection, which a POST stream never does.
    if data:
        yield event or "message", "\n".join(data)


def _ndjson_events(chunks: Iterable[bytes]) -> Iterator[str]:
    """The non-blank lines of an NDJSON body, split on raw LF bytes and decoded whole."""
    buf = b""
    for chunk in chunks:
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for line in lines:
            text = line.decode("utf-8", "replace").strip()
            if text:
                yield text
    text = buf.decode("utf-8", "replace").strip()
    if text:
        yield text


def _int(value: Any) -> int:
    """`value` if it is an int (not a bool), else 0: usage fields may be null or absent."""
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


class _HTTPProvider(Provider):
    """A live provider over HTTP: subclasses build the request and read its stream.

    Each subclass defines `build_request(prompt, max_tokens=None) -> (url, headers, body)`,
    which does no I/O, and `parse(chunks)`, which turns the response body into events and
    raises ProviderError on an error or a cut stream.
    """

    #: What ends a complete stream, for the message when it never came.
    terminator = "the end of the stream"

    def __init__(self, model: str | None, environ: dict[str, str]) -> None:
        super().__init__(model, environ)
        self.model_id = split_model(model or "")[1]

    def base_url(self) -> str:
        """The base URL: its variable when set (checked), else the default (SPEC §6)."""
        from urllib.parse import urlsplit

        var, default = PROVIDER_BASES[self.name]
        value = self.environ.get(var, "").strip()
        if not value:
            return default
        parts = urlsplit(value)
        try:
            # A bad port fails here, in words, not deep inside http.client.
            port_ok = parts.port != 0
        except ValueError:
            port_ok = False
        if not port_ok or parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise UsageError(f"{var} must be an http:// or https:// URL, not {value!r}",
                             hint=f"the default is {default}")
        return value.rstrip("/")

    def key_optional(self) -> bool:
        """True when requests may go without a key."""
        return False

    def stream(self, prompt: Prompt, *, max_tokens: int | None = None
               ) -> Iterator[tuple[str, Any]]:
        """Yield ("text" | "reasoning" | "warning", str) as they arrive, then ("usage", dict).

        Raises ProviderError. Transient failures are retried (SPEC §6), never once text was
        yielded; text already yielded stays yielded when a later failure is raised.
        """
        import random

        _, retries = http_settings(self.environ)
        problems = provider_problems(self.model or "", self.environ)
        if problems:
            raise UsageError(problems[0][0], hint=problems[0][1])
        url, headers, body = self.build_request(prompt, max_tokens)
        attempt = 0
        while True:
            shown = False
            chunks = _http_stream(self.name, url, headers, body, self.environ)
            try:
                for kind, value in self.parse(chunks):
                    shown = shown or kind == "text"
                    yield kind, value
                return
            except ProviderError as exc:
                if shown or not exc.retryable or attempt >= retries:
                    raise
                wait = exc.retry_after
                if wait is None:
                    # Exponential backoff with jitter, so clients that failed together do
                    # not all come back at the same moment.
                    wait = min(0.5 * 2 ** attempt, 8.0) * (1 - 0.25 * random.random())
                elif wait > MAX_RETRY_WAIT:
                    exc.hint = (f"the server asked to wait {wait:g} s before a retry; aethr "
                                f"waits at most {MAX_RETRY_WAIT:g} s; try again later")
                    raise
            finally:
                chunks.close()
            attempt += 1
            _retry_sleep(wait)

    def _json(self, data: str) -> dict:
        """One event's JSON object."""
        import json

        try:
            obj = json.loads(data)
        except ValueError:
            obj = None
        if not isinstance(obj, dict):
            raise ProviderError(f"{self.name}: the stream sent something that is not a JSON "
                                f"object: {_http_clean(data, 80)!r}", provider=self.name)
        return obj

    def _stream_error(self, error: Any) -> ProviderError:
        """The ProviderError for an error that arrived inside a 200 stream."""
        info = error if isinstance(error, dict) else {}
        message = str(info.get("message") or info.get("type") or "") if info else str(error)
        # Secrets go before the message is shortened: a cut must not leave part of a key.
        message = _http_clean(redact(message, secret_values(self.environ)) or "no message")
        # OpenRouter puts the HTTP status it would have sent in `code` (402: out of credits).
        code = info.get("code")
        status = code if isinstance(code, int) and not isinstance(code, bool) else None
        billing = _http_billing(self.name, status, info, message)
        # Before any text it is retried like a failed request (SPEC §6); after, it is not.
        return ProviderError(f"{self.name}: error in the stream: {message}" + (
            "; the account is out of credits or over a spending limit" if billing else ""),
            provider=self.name, retryable=not billing, billing=billing)

    def _cut_short(self) -> ProviderError:
        """The ProviderError for a stream that ended before its terminator."""
        return ProviderError(f"{self.name}: the stream ended before {self.terminator}; the "
                             "answer is incomplete", provider=self.name, retryable=True)

    def _refused(self, what: str) -> ProviderError:
        """The ProviderError for a refusal or a content filter (never retried)."""
        return ProviderError(f"{self.name}: {what}", provider=self.name,
                             hint="rephrase the task or the context, or try another model")


def _json_body(body: dict) -> bytes:
    """A request body: compact UTF-8 JSON."""
    import json

    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "replace")


class OpenAIProvider(_HTTPProvider):
    """OpenAI chat completions (and OpenAI-compatible servers via OPENAI_BASE_URL)."""

    name = "openai"
    terminator = "[DONE]"
    #: The body field that caps the answer (OpenAI deprecated max_tokens for it).
    max_tokens_field = "max_completion_tokens"
    #: Variables sent as headers when set.
    header_vars = (("OPENAI_ORG_ID", "OpenAI-Organization"),
                   ("OPENAI_PROJECT_ID", "OpenAI-Project"))

    def key_optional(self) -> bool:
        """Self-hosted servers (llama.cpp, vLLM, LM Studio) usually take no key: true when
        OPENAI_BASE_URL points at another host than OpenAI's."""
        from urllib.parse import urlsplit

        base = self.environ.get("OPENAI_BASE_URL", "").strip()
        default = urlsplit(PROVIDER_BASES["openai"][1]).hostname
        return bool(base) and (urlsplit(base).hostname or "").lower() != default

    def headers(self) -> dict[str, str]:
        """Authorization (none without a key) plus the provider's own headers."""
        headers = {"Accept": _SSE_TYPE}
        key = provider_key(self.name, self.environ)
        if key is not None:
            headers["Authorization"] = f"Bearer {key[1]}"
        for var, header in self.header_vars:
            value = self.environ.get(var, "").strip()
            if value:
                headers[header] = value
        return headers

    def build_request(self, prompt: Prompt, max_tokens: int | None = None
                      ) -> tuple[str, dict[str, str], bytes]:
        body: dict[str, Any] = {
            "model": self.model_id,
            "messages": [{"role": "system", "content": prompt.system},
                         {"role": "user", "content": prompt.user}],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if max_tokens:
            body[self.max_tokens_field] = max_tokens
        return self.base_url() + "/chat/completions", self.headers(), _json_body(body)

    def parse(self, chunks: Iterable[bytes]) -> Iterator[tuple[str, Any]]:
        finish, usage, refusal, done = None, {}, [], False
        for _, data in _sse_events(chunks):
            if data.strip() == "[DONE]":
                done = True
                break
            obj = self._json(data)
            # An error chunk fails the step even when [DONE] follows it.
            if obj.get("error"):
                raise self._stream_error(obj["error"])
            for choice in obj.get("choices") or ():
                if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                    continue
                delta = choice.get("delta") or {}
                # reasoning_content: xAI, DeepSeek, vLLM; reasoning: OpenRouter, Ollama.
                thought = delta.get("reasoning_content") or delta.get("reasoning")
                if isinstance(thought, str) and thought:
                    yield "reasoning", thought
                text = delta.get("content")
                if isinstance(text, str) and text:
                    yield "text", text
                if isinstance(delta.get("refusal"), str):
                    refusal.append(delta["refusal"])
                if choice.get("finish_reason"):
                    finish = choice["finish_reason"]
                    if finish == "error":
                        raise self._stream_error("the provider stopped with finish_reason error")
            if isinstance(obj.get("usage"), dict):
                usage = self._usage(obj["usage"])
        if not done or finish is None:
            raise self._cut_short()
        if "".join(refusal).strip():
            raise self._refused(f"the model refused: {_http_clean(''.join(refusal), 300)}")
        if finish == "content_filter":
            raise self._refused("the answer was stopped by the content filter "
                                "(finish_reason content_filter)")
        if finish == "length":
            yield "warning", "the output was cut: the model hit its token limit"
        yield "usage", usage

    def _usage(self, raw: dict) -> dict:
        """input/output as reported, reasoning where reported, OpenRouter's cost when given."""
        usage = {"input": _int(raw.get("prompt_tokens")),
                 "output": _int(raw.get("completion_tokens"))}
        details = raw.get("completion_tokens_details")
        if isinstance(details, dict) and isinstance(details.get("reasoning_tokens"), int):
            usage["reasoning"] = details["reasoning_tokens"]
        cost = raw.get("cost")
        if isinstance(cost, (int, float)) and not isinstance(cost, bool):
            usage["cost"] = cost
        return usage


class OpenRouterProvider(OpenAIProvider):
    """OpenRouter: OpenAI-compatible; usage carries the cost."""

    name = "openrouter"
    #: OpenRouter documents max_tokens and maps it for each upstream provider.
    max_tokens_field = "max_tokens"
    header_vars = ()

    def key_optional(self) -> bool:
        return False


class XAIProvider(OpenAIProvider):
    """xAI: OpenAI-compatible; reasoning_content deltas, reasoning tokens counted apart."""

    name = "xai"
    header_vars = ()

    def key_optional(self) -> bool:
        return False


class AnthropicProvider(_HTTPProvider):
    """Anthropic messages API."""

    name = "anthropic"
    terminator = "message_stop"
    #: max_tokens is required by the API; this applies when the step sets none.
    default_max_tokens = 8192

    def build_request(self, prompt: Prompt, max_tokens: int | None = None
                      ) -> tuple[str, dict[str, str], bytes]:
        headers = {"anthropic-version": "2023-06-01", "Accept": _SSE_TYPE}
        key = provider_key(self.name, self.environ)
        if key is not None and key[0] == "ANTHROPIC_AUTH_TOKEN":
            headers["Authorization"] = f"Bearer {key[1]}"
        elif key is not None:
            headers["x-api-key"] = key[1]
        body: dict[str, Any] = {"model": self.model_id,
                                "max_tokens": max_tokens or self.default_max_tokens}
        if prompt.system:
            body["system"] = prompt.system
        body["messages"] = [{"role": "user", "content": prompt.user}]
        body["stream"] = True
        return self.base_url() + "/v1/messages", headers, _json_body(body)

    def parse(self, chunks: Iterable[bytes]) -> Iterator[tuple[str, Any]]:
        usage: dict[str, int] = {}
        stop, done = None, False
        for event, data in _sse_events(chunks):
            if event == "ping":
                continue
            obj = self._json(data)
            kind = obj.get("type") or event
            if event == "error" or kind == "error":
                raise self._stream_error(obj.get("error") or obj)
            if kind == "message_start":
                raw = (obj.get("message") or {}).get("usage") or {}
                usage = {"input": _int(raw.get("input_tokens")),
                         "output": _int(raw.get("output_tokens"))}
            elif kind == "content_block_start":
                block = obj.get("content_block") or {}
                if block.get("type") == "text" and block.get("text"):
                    yield "text", block["text"]
            elif kind == "content_block_delta":
                delta = obj.get("delta") or {}
                if delta.get("type") == "text_delta" and delta.get("text"):
                    yield "text", delta["text"]
                elif delta.get("type") == "thinking_delta" and delta.get("thinking"):
                    yield "reasoning", delta["thinking"]
            elif kind == "message_delta":
                stop = (obj.get("delta") or {}).get("stop_reason") or stop
                # Counts in message_delta are totals so far: the last one wins.
                raw = obj.get("usage") or {}
                for field, name in (("input_tokens", "input"), ("output_tokens", "output")):
                    if isinstance(raw.get(field), int) and raw[field]:
                        usage[name] = raw[field]
            elif kind == "message_stop":
                done = True
                break
        if not done:
            raise self._cut_short()
        if stop == "refusal":
            raise self._refused("the model refused to answer (stop_reason refusal)")
        if stop == "max_tokens":
            yield "warning", "the output was cut: the model hit its token limit"
        elif stop == "model_context_window_exceeded":
            yield "warning", "the output was cut: the model's context window is full"
        yield "usage", usage


class GeminiProvider(_HTTPProvider):
    """Google Gemini streamGenerateContent (SSE)."""

    name = "gemini"
    terminator = "a chunk with finishReason"

    def build_request(self, prompt: Prompt, max_tokens: int | None = None
                      ) -> tuple[str, dict[str, str], bytes]:
        from urllib.parse import quote

        headers = {"Accept": _SSE_TYPE}
        key = provider_key(self.name, self.environ)
        if key is not None:
            headers["x-goog-api-key"] = key[1]
        body: dict[str, Any] = {"contents": [{"role": "user", "parts": [{"text": prompt.user}]}]}
        if prompt.system:
            body["systemInstruction"] = {"parts": [{"text": prompt.system}]}
        if max_tokens:
            body["generationConfig"] = {"maxOutputTokens": max_tokens}
        model = quote(self.model_id.removeprefix("models/"), safe="-._~/")
        url = f"{self.base_url()}/v1beta/models/{model}:streamGenerateContent?alt=sse"
        return url, headers, _json_body(body)

    def parse(self, chunks: Iterable[bytes]) -> Iterator[tuple[str, Any]]:
        usage: dict[str, int] = {}
        finish = None
        for _, data in _sse_events(chunks):
            obj = self._json(data)
            if obj.get("error"):
                raise self._stream_error(obj["error"])
            blocked = (obj.get("promptFeedback") or {}).get("blockReason")
            if blocked:
                raise self._refused(f"the prompt was blocked (blockReason {blocked})")
            meta = obj.get("usageMetadata")
            if isinstance(meta, dict):
                usage = {"input": _int(meta.get("promptTokenCount")),
                         "output": _int(meta.get("candidatesTokenCount"))}
                if "thoughtsTokenCount" in meta:
                    usage["reasoning"] = _int(meta["thoughtsTokenCount"])
            for candidate in (obj.get("candidates") or ())[:1]:
                for part in (candidate.get("content") or {}).get("parts") or ():
                    text = part.get("text") if isinstance(part, dict) else None
                    if isinstance(text, str) and text:
                        yield "reasoning" if part.get("thought") else "text", text
                finish = candidate.get("finishReason") or finish
        # Gemini sends no [DONE]: a chunk with finishReason is the clean end.
        if finish is None:
            raise self._cut_short()
        if finish == "MAX_TOKENS":
            yield "warning", "the output was cut: the model hit its token limit"
        elif finish not in ("STOP", "FINISH_REASON_UNSPECIFIED"):
            raise self._refused(f"the answer was blocked or stopped early (finishReason "
                                f"{finish})")
        yield "usage", usage


def _ollama_base(value: str) -> str:
    """OLLAMA_HOST as Ollama reads it: host, host:port or URL; 0.0.0.0 means this machine."""
    from urllib.parse import urlsplit

    value = value.strip()
    if not value:
        return PROVIDER_BASES["ollama"][1]
    scheme, sep, rest = value.partition("://")
    scheme = scheme.lower() if sep else "http"
    # As Ollama's own client: a URL with a scheme but no port means that scheme's port.
    default_port = {"http": 80, "https": 443}.get(scheme) if sep else 11434
    parts = urlsplit(f"{scheme}://{rest if sep else value}")
    try:
        port = parts.port
    except ValueError:
        port = -1
    if default_port is None or port == -1:
        raise UsageError(f"OLLAMA_HOST must be a host, host:port or http(s) URL, not {value!r}",
                         hint="for example OLLAMA_HOST=127.0.0.1:11434")
    host = parts.hostname or ""
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}:{port or default_port}{parts.path.rstrip('/')}"


def _ollama_num_ctx(chars: int, max_tokens: int | None) -> int:
    """The context to ask for: the prompt at ~3 characters a token plus the output, rounded up."""
    need = -(-chars // 3) + (max_tokens or OLLAMA_OUTPUT_ALLOWANCE)
    return next((size for size in OLLAMA_CONTEXTS if size >= need), OLLAMA_CONTEXTS[-1])


class OllamaProvider(_HTTPProvider):
    """Ollama's native /api/chat (NDJSON), so that num_ctx can be set."""

    name = "ollama"
    terminator = '"done": true'

    def base_url(self) -> str:
        """From OLLAMA_HOST (host, host:port or URL), default http://127.0.0.1:11434."""
        return _ollama_base(self.environ.get("OLLAMA_HOST", ""))

    def key_optional(self) -> bool:
        return True

    def build_request(self, prompt: Prompt, max_tokens: int | None = None
                      ) -> tuple[str, dict[str, str], bytes]:
        # Ollama's default context silently drops the start of a long prompt (SPEC §6).
        options: dict[str, int] = {
            "num_ctx": _ollama_num_ctx(len(prompt.system) + len(prompt.user), max_tokens)}
        if max_tokens:
            options["num_predict"] = max_tokens
        body = {"model": self.model_id,
                "messages": [{"role": "system", "content": prompt.system},
                             {"role": "user", "content": prompt.user}],
                "stream": True,
                # Thinking models think unless told not to; the answer is what is wanted.
                "think": False,
                "options": options}
        return self.base_url() + "/api/chat", {"Accept": "application/x-ndjson"}, \
            _json_body(body)

    def parse(self, chunks: Iterable[bytes]) -> Iterator[tuple[str, Any]]:
        usage: dict[str, int] = {}
        reason, done, broken = None, False, None
        for line in _ndjson_events(chunks):
            if broken is not None:
                raise broken
            try:
                obj = self._json(line)
            except ProviderError as exc:
                # Half an object is what the last line of a cut body looks like: only a line
                # that more lines follow is malformed.
                broken = exc
                continue
            if obj.get("error"):
                raise self._stream_error(obj["error"])
            message = obj.get("message") or {}
            if isinstance(message.get("thinking"), str) and message["thinking"]:
                yield "reasoning", message["thinking"]
            # The final done object may still carry text.
            if isinstance(message.get("content"), str) and message["content"]:
                yield "text", message["content"]
            if obj.get("done"):
                done, reason = True, obj.get("done_reason")
                usage = {"input": _int(obj.get("prompt_eval_count")),
                         "output": _int(obj.get("eval_count"))}
                break
        if not done:
            raise self._cut_short()
        if reason == "length":
            yield "warning", "the output was cut: the model hit its token limit"
        yield "usage", usage


#: Live providers by name; `google` is Gemini under Google's name.
PROVIDERS: dict[str, type[Provider]] = {
    "openai": OpenAIProvider,
    "anthropic": AnthropicProvider,
    "gemini": GeminiProvider,
    "google": GeminiProvider,
    "openrouter": OpenRouterProvider,
    "xai": XAIProvider,
    "ollama": OllamaProvider,
}


# Section 9's: OpenCode's live run and its artifacts.


def snapshot_tree(project: Project) -> str:
    """The working tree (tracked and untracked, not ignored) as a git tree id (SPEC §7).

    Built in a temporary index seeded from a copy of the real one, so git reuses the stat
    data it already has; the user's index, HEAD, stash and files are never touched.
    """
    index = project.temp_index()
    try:
        # --ignore-errors: an unreadable file is left out instead of failing the snapshot.
        _git(["add", "-A", "--ignore-errors"], project.top, project.environ, index=index,
             check=False)
        out = _git(["write-tree"], project.top, project.environ, index=index)[0]
    finally:
        for path in (index, index + ".lock"):
            if os.path.exists(path):
                os.unlink(path)
    return out.decode("ascii", "replace").strip()


#: git's one-letter change kinds -> the artifact's: type changes count as modifications.
_ART_STATUS = {"A": "A", "M": "M", "D": "D", "R": "R", "T": "M", "C": "A"}


def _submodule_dirt(project: Project) -> dict[str, str]:
    """Submodules with uncommitted work: path -> git's porcelain v2 state (`S.M.` …)."""
    out = _git(["status", "--porcelain=2", "-z", "--ignore-submodules=none",
                "--untracked-files=no"], project.top, project.environ, check=False)[0]
    dirt = {}
    for entry in out.decode("utf-8", "surrogateescape").split("\0"):
        fields = entry.split(" ", 8)        # "1 XY sub mH mI mW hH hI path"
        if fields[0] == "1" and len(fields) == 9 and fields[2][:1] == "S" \
                and fields[2] != "S...":
            dirt[printable(fields[8])] = fields[2]
    return dirt


def artifact_between(project: Project, before: str | None, after: str | None) -> Artifact:
    """What changed from tree `before` to tree `after`: files, diff stat and patch."""
    if not project.top or not before or not after:
        return Artifact(note="no artifact: it needs git, and the project is not in a git "
                        "repository")
    if before == after:
        return Artifact()
    top, environ, secrets = project.top, project.environ, project.secrets
    # 1. The files, from the raw diff: NUL-separated, so any path survives.
    raw = _git(["diff", "--raw", "-z", "-M", *_DIFF_FLAGS, before, after, "--"], top,
               environ)[0]
    files, gitlinks = [], []
    # Each entry is ":MODES IDS KIND", then its path; renames and copies put the old path first.
    parts = iter(raw.decode("utf-8", "surrogateescape").split("\0"))
    for head in parts:
        if not head.startswith(":"):
            continue
        old_mode, new_mode, _, _, kind = head[1:].split(" ")[:5]
        old = next(parts) if kind[:1] in ("R", "C") else None
        path = printable(next(parts))
        status = _ART_STATUS.get(kind[:1], "M")
        files.append((status, path, printable(old) if status == "R" else None))
        if "160000" in (old_mode, new_mode):
            gitlinks.append(path)
    # 2. The stat and the patch, cut at the diff cap while git streams them.
    stat = _git(["diff", "--stat=120", "-M", *_DIFF_FLAGS, before, after, "--"], top, environ,
                limit=DIFF_CAP)[0]
    out, truncated, _ = _git(["diff", "--patch", "-M", *_DIFF_FLAGS, before, after, "--"], top,
                             environ, limit=DIFF_CAP + _slack(secrets))
    truncated = truncated or len(out) > DIFF_CAP
    patch = _hide_secret_files(_redact_cut(out, DIFF_CAP, secrets).decode("utf-8", "replace"))
    if truncated:
        patch = patch.rstrip("\n") + (f"\n[\u2026 patch: more than {_size(DIFF_CAP)}, first "
                                      f"{_size(DIFF_CAP)} shown]\n")
    note = None
    if gitlinks:
        note = (f"submodule commit changed: {', '.join(gitlinks)} (changes inside a submodule "
                "show only as its new commit)")
    return Artifact(files, redact(stat.decode("utf-8", "replace"), secrets), patch, note)


def opencode_problems(project: Project) -> list[tuple[str, str | None]]:
    """What a live OpenCode step lacks (SPEC §2 preflight): (problem, hint) pairs."""
    import shutil

    problems: list[tuple[str, str | None]] = []
    if not shutil.which("opencode", path=project.environ.get("PATH", os.defpath)):
        problems.append(("the opencode CLI is not installed", "npm install -g opencode-ai"))
    if not project.top:
        problems.append((f"OpenCode steps need a git repository; {project.root} is not in one",
                         "git init, or run from inside a repository"))
    return problems


#: Tool errors that mean "not permitted", as OpenCode 1.18.33 words them: PermissionRejectedError
#: "The user rejected permission to use this specific tool call." (an `ask` rule, which
#: `opencode run` auto-rejects), PermissionCorrectedError "...rejected permission ... with the
#: following feedback", PermissionDeniedError "The user has specified a rule which prevents you
#: from using this specific tool call." (a `deny` rule with a pattern). A `deny` for a whole
#: tool removes it: the model's call then comes back as the tool `invalid`.
_OC_REJECTED = ("rejected permission", "permissionrejectederror")


_OC_DENIED = ("specified a rule which prevents", "permissiondeniederror")


#: Colour codes OpenCode writes to stderr even into a pipe (a pattern: `re` loads lazily).
_OC_ANSI = r"\x1b\[[0-9;?]*[A-Za-z]"


class _OpenCodeEvents:
    """Reads `opencode run --format json` events: progress, text, warnings, usage, errors.

    Each event is one JSON object per line: {"type", "timestamp", "sessionID", "part" | "error"}
    (cli/cmd/run.ts). `step_start` opens a model step; `text` is a finished text part;
    `tool_use` a finished tool call (`part.state.status` completed or error, with `input` and
    `error`); `step_finish` carries `tokens` {input, output, reasoning, cache {read, write}} and
    `cost`; `error` a session error {name, data: {message}}. Newer versions end with `done`
    and a `rejected` list. Anything else is ignored.
    """

    def __init__(self, step: Any, root: str, emit: Callable[[dict], None],
                 secrets: list[str] | None = None) -> None:
        self.step = step
        self.root = root
        self.emit = emit
        self.secrets = secrets or []
        self.steps = 0
        self.texts: list[tuple[int, str]] = []
        self.tools = 0
        self.usage = {"input": 0, "output": 0, "cost": 0.0}
        self.errors: list[str] = []
        self.rejected: set[str] = set()
        self._warned: set[str] = set()

    def feed(self, line: bytes) -> None:
        """One line of OpenCode's stdout; lines that are not JSON objects are ignored."""
        import json

        try:
            event = json.loads(line.decode("utf-8"))
        except ValueError:                  # also UnicodeDecodeError
            return
        if not isinstance(event, dict):
            return
        part = _oc_dict(event, "part")
        kind = event.get("type")
        if kind == "step_start":
            self.steps += 1
        elif kind == "text":
            self._text(part.get("text"))
        elif kind == "tool_use":
            self._tool(part)
        elif kind == "step_finish":
            self._usage(part)
        elif kind == "error":
            self.errors.append(_oc_error_text(event.get("error")))
        elif kind == "done" and isinstance(event.get("rejected"), list):
            for name in event["rejected"]:
                if isinstance(name, str) and name not in self.rejected:
                    self.rejected.add(name)
                    self._warn(f"OpenCode's request to use {name} was rejected: "
                               + self._allow(name))

    def final_text(self) -> str:
        """The assistant's text from the last model step that wrote any."""
        if not self.texts:
            return ""
        last = self.texts[-1][0]
        return "\n\n".join(t for n, t in self.texts if n == last) + "\n"

    def summary(self) -> str:
        u = self.usage
        text = (f"OpenCode: {_plural(self.steps, 'model step')}, "
                f"{_plural(self.tools, 'tool call')}, tokens {u['input']:,} in / "
                f"{u['output']:,} out")
        return text + (f", cost ${u['cost']:.4f}" if u["cost"] else "")

    def _text(self, text: object) -> None:
        if not isinstance(text, str) or not text.strip():
            return
        text = text.strip("\n")
        sep = "\n" if self.texts else ""
        self.texts.append((self.steps, text))
        self.emit({"event": "text", "step": self.step.id, "text": sep + text + "\n"})

    def _tool(self, part: dict) -> None:
        state = _oc_dict(part, "state")
        tool = str(part.get("tool") or "tool")
        what = self._describe(tool, state)
        self.tools += 1
        if tool == "invalid":
            # A call to a tool OpenCode does not offer, e.g. one a `deny` rule removed.
            inp = _oc_dict(state, "input")
            name = str(inp.get("tool") or "a tool")
            self._warn(f"OpenCode's model asked for the tool {name}, which OpenCode does not "
                       "offer here; a deny rule in OpenCode's permission config removes a tool "
                       "entirely (unsafe_permissions does not override deny rules)")
            return
        if state.get("status") != "error":
            self.emit({"event": "progress", "step": self.step.id,
                       "message": redact(what, self.secrets)})
            return
        error = _oc_plain(str(state.get("error") or "failed")).strip()
        low = error.lower()
        if any(s in low for s in _OC_DENIED):
            self._warn(f"OpenCode was not allowed to {what}: a deny rule in OpenCode's permission "
                       "config forbids it (unsafe_permissions does not override deny rules); "
                       "change that rule to allow it")
        elif any(s in low for s in _OC_REJECTED):
            self.rejected.add(tool)
            self._warn(f"OpenCode was not allowed to {what}: permission rejected; "
                       + self._allow(tool))
        else:
            first = error.splitlines()[0] if error else "failed"
            self._warn(f"tool error: {what}: {first[:300]}")

    def _allow(self, tool: str) -> str:
        return (f"`opencode run` rejects what OpenCode's rules would ask about. To allow it, set "
                f"unsafe_permissions: true on step '{self.step.id}', or allow {tool} in "
                "OpenCode's permission config")

    def _warn(self, message: str) -> None:
        message = redact(message, self.secrets)
        if message not in self._warned:
            self._warned.add(message)
            self.emit({"event": "warning", "step": self.step.id, "message": message})

    def _usage(self, part: dict) -> None:
        tokens = _oc_dict(part, "tokens")
        cache = _oc_dict(tokens, "cache")
        # OpenCode counts cached prompt tokens apart and reasoning apart from output;
        # Aethr's input and output are what the model read and wrote in all.
        self.usage["input"] += sum(_int(v) for v in (tokens.get("input"), cache.get("read"),
                                                      cache.get("write")))
        self.usage["output"] += _int(tokens.get("output")) + _int(tokens.get("reasoning"))
        cost = part.get("cost")
        if isinstance(cost, (int, float)) and not isinstance(cost, bool):
            self.usage["cost"] += cost

    def _describe(self, tool: str, state: dict) -> str:
        """`edit README.md`, `bash: pytest -q`: one line for a tool call."""
        inp = _oc_dict(state, "input")
        if tool == "bash" and isinstance(inp.get("command"), str):
            command = inp["command"].strip().splitlines() or [""]
            more = " \u2026" if len(command) > 1 or len(command[0]) > 120 else ""
            return f"bash: {command[0][:120]}{more}"
        for key in ("filePath", "path", "pattern", "url", "description", "query", "name"):
            value = inp.get(key)
            if isinstance(value, str) and value:
                if key in ("filePath", "path"):
                    value = self._relative(value)
                return f"{tool} {value[:160]}"
        title = state.get("title")
        return f"{tool} {title[:160]}" if isinstance(title, str) and title else tool

    def _relative(self, path: str) -> str:
        try:
            rel = os.path.relpath(path, self.root)
        except ValueError:                  # another drive on Windows
            rel = os.pardir
        if rel == os.curdir or rel.startswith(os.pardir):
            rel = path
        return rel.replace(os.sep, "/")


def _oc_dict(obj: dict, key: str) -> dict:
    """`obj[key]` when it is a JSON object, else {}: events may lack any field."""
    value = obj.get(key)
    return value if isinstance(value, dict) else {}


def _oc_plain(text: str) -> str:
    import re

    return re.sub(_OC_ANSI, "", text)


def _oc_error_text(error: object) -> str:
    """OpenCode's message from an `error` event's {name, data: {message}}."""
    import json

    if isinstance(error, dict):
        data = _oc_dict(error, "data")
        for value in (data.get("message"), error.get("message"), error.get("name")):
            if isinstance(value, str) and value.strip():
                return value.strip()
        return json.dumps(error)[:300]
    return str(error or "unknown error").strip()


def _oc_tail(data: bytes, secrets: list[str]) -> str:
    """The last few lines of OpenCode's stderr, one line, for an error message."""
    text = _oc_plain(redact(data.decode("utf-8", "replace"), secrets))
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    tail = " | ".join(lines[-3:])
    return tail if len(tail) <= 500 else "\u2026" + tail[-500:]


def opencode_run(environ: dict[str, str], project: Project | None, prompt: Prompt,
                 model: str | None, emit: Callable[[dict], None]) -> tuple[str, dict, Artifact]:
    """OpenCodeBackend.run in live mode: OpenCode carries out the step (SPEC §7)."""
    import shutil

    project = project or Project(os.getcwd(), environ)
    step = prompt.step
    exe = shutil.which("opencode", path=environ.get("PATH", os.defpath))
    if not exe:
        raise BackendError("the opencode CLI is not installed (or not on PATH)",
                           hint="npm install -g opencode-ai")
    argv = [exe, "run", "--format", "json"]
    if model:
        argv += ["-m", opencode_model(model)]
    if step.unsafe_permissions:
        argv.append("--dangerously-skip-permissions")
    # 1. The tree before, so the artifact is what this step changed and nothing else.
    before = snapshot_tree(project) if project.top else None
    dirt = _submodule_dirt(project) if before else {}
    events = _OpenCodeEvents(step, project.root, emit, project.secrets)
    try:
        _opencode_spawn(environ, argv, project, prompt, events)
    except BackendError as exc:
        # What OpenCode changed before it failed stays in the tree: say so.
        if before:
            try:
                files = artifact_between(project, before, snapshot_tree(project)).files
            except GitError:
                files = []
            if files:
                names = ", ".join(p for _, p, _ in files[:5])
                more = f", +{len(files) - 5} more" if len(files) > 5 else ""
                exc.hint = (exc.hint + "; " if exc.hint else "") + (
                    f"OpenCode had already changed {_plural(len(files), 'file')} "
                    f"({names}{more}); they are left as they are")
        raise
    emit({"event": "progress", "step": step.id, "message": events.summary()})
    # 2. The tree after: the difference is the step's artifact.
    if before:
        artifact = artifact_between(project, before, snapshot_tree(project))
        after = _submodule_dirt(project)
        moved = sorted(p for p in set(dirt) | set(after) if dirt.get(p) != after.get(p))
        if moved:
            # Edits inside a submodule are not in the superproject's trees (SPEC §7).
            note = (f"uncommitted changes inside submodules: {', '.join(moved)} (not part "
                    "of this artifact)")
            artifact.note = f"{artifact.note}; {note}" if artifact.note else note
            emit({"event": "warning", "step": step.id, "message": note})
        elif not artifact.files:
            emit({"event": "warning", "step": step.id, "message":
                  "OpenCode changed no file" + (
                      f" ({_plural(len(events.rejected), 'tool')} rejected: "
                      f"{', '.join(sorted(events.rejected))})" if events.rejected else "")})
    else:
        artifact = artifact_between(project, None, None)
    text = events.final_text() or "[OpenCode ended without a final message]\n"
    return text, dict(events.usage), artifact


def _opencode_spawn(environ: dict[str, str], argv: list[str], project: Project, prompt: Prompt,
                    events: _OpenCodeEvents) -> None:
    """Run OpenCode to its end, feeding its events; raises BackendError when it fails."""
    import queue
    import subprocess
    import threading
    import time

    step = prompt.step
    env = _child_env(environ, PWD=project.root, OPENCODE_DISABLE_AUTOUPDATE="1")
    try:
        proc = subprocess.Popen(argv, cwd=project.root, env=env, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                **_own_group())
    except OSError as exc:
        raise BackendError(f"could not start OpenCode ({argv[0]}): {exc.strerror or exc}",
                           hint="npm install -g opencode-ai") from exc
    data = (prompt.system + "\n\n" + prompt.user).encode("utf-8", "replace")
    lines: queue.Queue[bytes | None] = queue.Queue()
    err_tail = bytearray()

    def feed() -> None:             # a thread: a huge prompt cannot deadlock the pipes
        try:
            with proc.stdin:
                proc.stdin.write(data)
        except OSError:             # OpenCode exited without reading it all
            pass

    def read_out() -> None:
        try:
            for line in proc.stdout:
                lines.put(line)
        except (OSError, ValueError):
            pass
        finally:
            lines.put(None)

    def read_err() -> None:
        try:
            for chunk in iter(lambda: proc.stderr.read1(65536), b""):
                err_tail.extend(chunk)
                del err_tail[:-8192]
        except (OSError, ValueError):
            pass

    threads = [threading.Thread(target=f, daemon=True) for f in (feed, read_out, read_err)]
    for t in threads:
        t.start()
    timeout = step.timeout or STEP_TIMEOUT
    deadline = time.monotonic() + timeout
    expired, exited_at = False, None
    try:
        # 1. Events until OpenCode closes its stdout, the timeout, or Ctrl-C.
        while True:
            try:
                line = lines.get(timeout=0.1)
            except queue.Empty:
                now = time.monotonic()
                if now >= deadline:
                    expired = True
                    break
                # Exited, but something it started still holds the pipe: stop waiting.
                if proc.poll() is not None:
                    exited_at = exited_at or now
                    if now - exited_at > 2:
                        break
                continue
            if line is None:
                break
            events.feed(line)
        if not expired:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                expired = True
    finally:
        # 2. Whatever happened, nothing OpenCode started outlives the step.
        _kill_tree(proc)
        proc.wait()
        for t in threads:
            t.join(timeout=5)
        # A reader still blocked (a process that escaped the group holds the pipe) keeps
        # its stream: closing it under the reader could block.
        for t, stream in ((threads[1], proc.stdout), (threads[2], proc.stderr)):
            if not t.is_alive():
                stream.close()
    # 3. Drain what was read before the end (after the timeout or a stuck pipe).
    while not lines.empty():        # the only reader: get_nowait cannot find it empty
        line = lines.get_nowait()
        if line is not None:
            events.feed(line)
    tail = _oc_tail(bytes(err_tail), project.secrets)
    if expired:
        raise _oc_failure(f"OpenCode did not finish within {timeout:g} s and was "
                          "stopped", None, tail,
                          hint="raise the step's timeout: (seconds) in the workflow")
    if events.errors:
        message = "OpenCode failed: " + "; ".join(dict.fromkeys(events.errors))
        raise _oc_failure(redact(message, project.secrets), proc.returncode, tail)
    if proc.returncode != 0:
        how = (f"was stopped by signal {-proc.returncode}" if proc.returncode < 0
               else f"exited with status {proc.returncode}")
        raise _oc_failure(f"OpenCode {how}", proc.returncode, tail)


def _oc_failure(message: str, returncode: int | None, tail: str,
                hint: str | None = None) -> BackendError:
    exc = BackendError(message + (f" (its stderr ends: {tail})" if tail else ""), hint=hint)
    exc.returncode = returncode     # type: ignore[attr-defined]
    exc.stderr = tail               # type: ignore[attr-defined]
    return exc


# Section 10's: a resumed run's results.


def _artifact_from(data: dict | None) -> Artifact | None:
    if data is None:
        return None
    return Artifact([(f["status"], f["path"], f.get("old_path")) for f in data["files"]],
                    data.get("stat", ""), data.get("patch", ""), data.get("note"))


def result_from(data: dict) -> StepResult:
    """The inverse of result_dict."""
    return StepResult(step=data["step"], role=data["role"], backend=data["backend"],
                      iteration=data["iteration"], text=data["output"],
                      review_status=data["review_status"],
                      artifact=_artifact_from(data["artifact"]), usage=data["usage"] or {},
                      duration=data["duration"], model=data["model"],
                      warnings=data.get("warnings") or [])


# Section 11's: writing .env.


def mask(value: str) -> str:
    """A key as `sk-…a1b2`: never whole."""
    return f"{value[:3]}\u2026{value[-4:]}" if len(value) >= 12 else "\u2026"


def write_dotenv_var(path: str, name: str, value: str | None) -> bool:
    """Set (or, with None, remove) `name` in the .env at `path` (mode 0600); True if it changed."""
    import re

    lines: list[str] = []
    if os.path.exists(path):
        # Lines that are not UTF-8 are kept byte for byte (surrogateescape).
        with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
            lines = [line.rstrip("\r") for line in f.read().split("\n")]
        while lines and not lines[-1]:
            lines.pop()
    pattern = re.compile(rf"[ \t]*(?:export[ \t]+)?{name}[ \t]*=")
    kept = [line for line in lines if not pattern.match(line)]
    if value is not None:
        quoted = value if re.fullmatch(r"[A-Za-z0-9_./:+=@,-]*", value) else "'" + value + "'"
        kept.append(f"{name}={quoted}")
    elif len(kept) == len(lines):
        return False                    # nothing to remove
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape", newline="\n") as f:
        f.write("\n".join(kept) + ("\n" if kept else ""))
    os.chmod(path, 0o600)
    return True


# Section 12's: argparse, auth, live preflight, the task editor, checkpoints, resume,
# init --model.


def _parser_class() -> type:
    """argparse, subclassed to write through a Term and never call sys.exit.

    Built on first use: `aethr version` and `init --list` must not import argparse.
    """
    global _ARGPARSER
    if _ARGPARSER is not None:
        return _ARGPARSER
    import argparse

    def width() -> int:
        # argparse would ask shutil (which imports bz2, lzma and zlib) on every parser.
        try:
            return int(os.environ["COLUMNS"]) - 2
        except (KeyError, ValueError):
            pass
        try:
            return os.get_terminal_size(sys.__stdout__.fileno()).columns - 2
        except (AttributeError, OSError, ValueError):
            return 78

    class _Help(argparse.HelpFormatter):
        def __init__(self, prog: str, **kw: Any) -> None:
            super().__init__(prog, **dict(kw, width=kw.get("width") or width()))

    class _RawHelp(_Help, argparse.RawDescriptionHelpFormatter):
        pass

    class _ArgParser(argparse.ArgumentParser):
        """argparse that writes through a Term and never calls sys.exit."""

        def __init__(self, *args: Any, term: Term | None = None, **kw: Any) -> None:
            kw.setdefault("allow_abbrev", False)    # run x --show must not mean --show-prompt
            kw.setdefault("formatter_class", _Help)
            self.term = term or Term()
            try:    # Python 3.14+ colours help and errors: same decision as ours (SPEC §9)
                super().__init__(*args, color=self.term.color(self.term.err), **kw)
            except TypeError:
                super().__init__(*args, **kw)

        def _print_message(self, message: str, file: Any = None) -> None:
            if message:
                stream = self.term.err if file is sys.stderr else self.term.out
                stream.write(message)
                stream.flush()

        def exit(self, status: int = 0, message: str | None = None) -> None:  # type: ignore
            if message:
                self._print_message(message, sys.stderr)
            raise _Exit(status)

    _ArgParser.raw_help = _RawHelp     # the top parser's epilog keeps its line breaks
    _ARGPARSER = _ArgParser
    return _ArgParser


_ARGPARSER: type | None = None


def build_parser(term: Term | None = None) -> tuple[Any, dict[str, Any]]:
    """The top-level parser and one parser per command."""
    _ArgParser = _parser_class()
    common = _ArgParser(add_help=False, term=term)
    common.add_argument("--no-color", action="store_true", help="no colour in the output")
    top = _ArgParser(prog="aethr", parents=[common], term=term,
                     formatter_class=_ArgParser.raw_help,
                     description="Run explicit AI coding workflows: plan, implement, review, "
                     "iterate.",
                     epilog="Mock mode (the default) calls no model.\n"
                     "Examples:\n  aethr run \"review my current changes\"\n"
                     "  aethr init plan-implement-review\n  aethr check\n"
                     "Run 'aethr COMMAND --help' for a command's options.")
    top.add_argument("--version", action="version", version=f"aethr {__version__}")
    sub = top.add_subparsers(dest="command", metavar="COMMAND", parser_class=_ArgParser)
    subs: dict[str, _ArgParser] = {}

    def add(name: str, helptext: str, func: Callable, description: str = "") -> _ArgParser:
        p = sub.add_parser(name, parents=[common], help=helptext, term=term,
                           description=description or helptext)
        p.set_defaults(func=func)
        subs[name] = p
        return p

    def add_workflow_options(p: _ArgParser, verb: str) -> None:
        group = p.add_mutually_exclusive_group()
        group.add_argument("--workflow", metavar="FILE", help=f"the workflow file to {verb}")
        group.add_argument("--preset", metavar="NAME", help=f"{verb} a built-in preset")

    model_help = ("MODEL (provider:model) for every role, or ROLE=MODEL for one role; "
                  "repeatable")
    p = add("init", "write .aethr.yaml from a preset", cmd_init,
            "Write .aethr.yaml in the current directory from a built-in preset.")
    p.add_argument("preset", nargs="?", metavar="PRESET", help="the preset to start from")
    p.add_argument("--list", action="store_true", help="list the presets and exit")
    p.add_argument("--force", action="store_true", help="overwrite an existing .aethr.yaml")
    p.add_argument("--model", action="append", default=[], metavar="MODEL", help=model_help)

    p = add("run", "run the workflow on a task", cmd_run,
            "Run the workflow on a task. Options may come anywhere; '--' ends them. "
            "'-' reads the task from standard input; no task opens $AETHR_EDITOR, $VISUAL "
            "or $EDITOR.")
    p.add_argument("task", nargs="*", metavar="TASK", help="the task, as words")
    p.add_argument("--show-prompt", action="store_true",
                   help="print every step's prompt as it would be sent; call nothing")
    p.add_argument("--live", action="store_true", help="call the real models (live mode)")
    add_workflow_options(p, "run")
    p.add_argument("--model", action="append", default=[], metavar="MODEL", help=model_help)
    p.add_argument("--json", action="store_true",
                   help="one JSON event per line on stdout (run_start … run_end)")
    p.add_argument("--verbose", action="store_true", help="diagnostics on stderr")
    p.add_argument("--resume-checkpoint", metavar="FILE",
                   help="continue a failed or interrupted run from its checkpoint")
    p.add_argument("--force", action="store_true",
                   help="with --resume-checkpoint: accept a workflow that changed since")

    p = add("check", "validate the workflow and summarise it", cmd_check)
    add_workflow_options(p, "check")
    p.add_argument("--live", action="store_true",
                   help="also check what live mode needs: models, keys, binaries")

    p = add("auth", "manage provider keys in the project's .env", cmd_auth,
            "Manage provider keys in the project's .env (mode 0600).")
    p.add_argument("action", choices=("login", "status", "logout"), metavar="ACTION",
                   help="login PROVIDER, status, or logout PROVIDER")
    p.add_argument("provider", nargs="?", metavar="PROVIDER",
                   help="openai, anthropic, gemini (or google), openrouter or xai")
    p.add_argument("--key-stdin", action="store_true",
                   help="login: read the key from standard input instead of a prompt")

    add("version", "print the version", cmd_version)
    return top, subs


def cmd_init(args: argparse.Namespace, term: Term) -> int:
    """aethr init: write .aethr.yaml from a preset."""
    if args.list:
        _list_presets(term.out)
        return 0
    if not args.preset:
        term.status("presets:")
        _list_presets(term.err)
        raise UsageError("no preset given", hint="pick one: aethr init NAME, for example "
                         "aethr init plan-implement-review")
    if args.preset not in PRESETS:
        raise UsageError(f"unknown preset {args.preset!r}",
                         hint=_did_you_mean(args.preset, PRESETS) or "aethr init --list shows "
                         "the presets")
    target = WORKFLOW_FILE
    if os.path.isdir(target):
        raise UsageError(f"{target} is a directory; nothing was written")
    if os.path.lexists(target) and not args.force:
        raise UsageError(f"{target} already exists; it was left as it is",
                         hint="use --force to overwrite it")
    text = PRESETS[args.preset]
    overrides = _model_flags(args.model)
    if overrides:
        _check_overrides(overrides, load_workflow(preset=args.preset), {})
        text = pin_models(text, overrides)
        load_workflow(WORKFLOW_FILE, text=text)
    try:
        with open(target, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
    except OSError as exc:
        raise UsageError(f"cannot write {target}: {exc.strerror or exc}") from None
    term.status(f"aethr: wrote {target} from preset {args.preset}")
    term.status('aethr: next: aethr check, then aethr run "your task" (mock mode calls no model)')
    return 0


def cmd_version(args: argparse.Namespace, term: Term) -> int:
    """aethr version: `aethr X.Y.Z`."""
    term.write(f"aethr {__version__}\n")
    return 0


def _live_problems(workflow: Workflow, project: Project, overrides: dict[str, str],
                   display: str) -> list[tuple[str, int, int, str, str | None]]:
    problems, seen = [], set()
    try:
        http_settings(project.environ)      # AETHR_TIMEOUT, AETHR_MAX_RETRIES
    except UsageError as exc:
        problems.append((display, 1, 1, exc.message, exc.hint))
    for step in workflow.steps:
        line, column = workflow.marks.get(("steps", step.index), (1, 1))
        model = resolve_model(workflow, step, overrides, project.environ)
        found: list[tuple[str, str | None]] = []
        if step.backend == "opencode":
            found += opencode_problems(project)
        elif not model:
            found.append((f"step '{step.id}' (role {step.role}) has no model",
                          f"set models.{step.role} or models.default, or pass --model"))
        else:
            found += provider_problems(model, project.environ)
        for message, hint in found:
            if message not in seen:
                seen.add(message)
                problems.append((display, line, column, message, hint))
    return problems


def _task_from_editor(term: Term) -> str:
    """Open the user's editor on a template, as git does; the text written is the task."""
    import subprocess
    import tempfile

    if not (term.isatty(term.inp) and term.isatty(term.err)):
        raise UsageError("no task given, and no terminal to open an editor on",
                         hint='give the task as words (aethr run "fix the login bug") '
                         "or on standard input (echo TASK | aethr run -)")
    env = term.environ
    editor = (env.get("AETHR_EDITOR") or env.get("VISUAL") or env.get("EDITOR") or
              ("notepad" if os.name == "nt" else "vi"))
    fd, path = tempfile.mkstemp(prefix="aethr-task-", suffix=".md")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("\n".join(_TASK_TEMPLATE) + "\n")
        cmd = f'{editor} "{path}"' if os.name == "nt" else ["/bin/sh", "-c", editor + ' "$@"',
                                                             editor, path]
        try:
            status = subprocess.run(cmd, shell=os.name == "nt", env=_child_env(env)).returncode
        except OSError as exc:
            raise UsageError(f"cannot run the editor {editor!r}: {exc.strerror or exc}") from None
        if status != 0:
            raise UsageError(f"the editor ({editor}) exited with status {status}; nothing was "
                             "run")
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read the task the editor wrote: {exc}") from None
    finally:
        if os.path.exists(path):
            os.unlink(path)
    template = set(_TASK_TEMPLATE[1:])
    return "\n".join(line for line in text.splitlines() if line not in template)


def _write_checkpoint(data: dict, path: str | None, term: Term, *,
                      verbose: bool, json_view: Any) -> str | None:
    """Write a checkpoint (mode 0600, temp directory) and print the resume command."""
    import json
    import tempfile

    # The runner redacted the data already. ASCII JSON: a path that is not UTF-8 (surrogate
    # escapes) survives as \udcXX.
    text = json.dumps(data, ensure_ascii=True, indent=1)
    created = path is None
    try:
        if path is None:
            fd, path = tempfile.mkstemp(prefix="aethr-checkpoint-", suffix=".json")
        else:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(text + "\n")
        os.chmod(path, 0o600)
    except OSError as exc:
        if created and path and os.path.exists(path):
            os.unlink(path)             # no empty checkpoint left behind
        term.warn(f"could not write a checkpoint: {exc.strerror or exc} "
                  f"({exc.filename or tempfile.gettempdir()})")
        if json_view is not None:
            json_view.checkpoint(None)
        return None
    path = os.path.realpath(path)
    if json_view is not None:
        json_view.checkpoint(path)
    if verbose:
        term.status(text)
    return path


def _load_checkpoint(path: str) -> dict:
    import json

    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise UsageError(f"checkpoint not found: {path}") from None
    except IsADirectoryError:
        raise UsageError(f"{path} is a directory, not a checkpoint") from None
    except OSError as exc:
        raise UsageError(f"cannot read the checkpoint {path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, ValueError):
        raise UsageError(f"{path} is not a valid checkpoint (corrupt JSON)") from None
    keys = ("task", "mode", "models", "workflow", "root", "state")
    if not isinstance(data, dict) or data.get("aethr_checkpoint") != 1 or \
            any(k not in data for k in keys):
        raise UsageError(f"{path} is not an aethr checkpoint")
    return data


def _resume(args: argparse.Namespace, term: Term) -> int:
    """aethr run --resume-checkpoint FILE: continue where the failed run stopped."""
    given = [name for name, value in (("a task", args.task), ("--live", args.live),
                                      ("--model", args.model), ("--workflow", args.workflow),
                                      ("--preset", args.preset)) if value]
    if given:
        raise UsageError(f"--resume-checkpoint cannot be combined with {given[0]}: the "
                         "checkpoint holds it")
    path = args.resume_checkpoint
    saved = _load_checkpoint(path)
    ref = saved["workflow"]
    try:
        root = saved["root"]
        if not os.path.isdir(root):
            raise UsageError(f"the checkpoint's project root is gone: {root}")
        workflow = load_workflow(preset=ref["preset"]) if ref.get("preset") else \
            load_workflow(ref["path"])
        if _workflow_ref(workflow)["sha256"] != ref.get("sha256") and not args.force:
            raise UsageError(f"{workflow.source} changed since the checkpoint was written",
                             hint="--force resumes with the workflow as it is now")
        if not isinstance(saved["state"], dict):
            raise ValueError
        state = _RunState(saved["state"])         # every field read once, types checked
        models = saved["models"]
        if not (isinstance(saved["task"], str) and saved["mode"] in ("mock", "live")
                and isinstance(models, dict)
                and all(isinstance(k, str) and isinstance(v, str) for k, v in models.items())
                and isinstance(state.next, int)
                and all(isinstance(v, int) for v in state.passes.values())):
            raise ValueError
        if not 0 <= state.next <= len(workflow.steps):
            raise UsageError(f"{path} does not fit {workflow.source}")
    except (KeyError, TypeError, AttributeError, ValueError, IndexError):
        raise UsageError(f"{path} is not a valid checkpoint (damaged or missing fields)",
                         hint="start the run again without --resume-checkpoint") from None
    project, _ = _open_project(None, term, root)
    project.environ.pop("AETHR_MODEL", None)       # the overrides come from the checkpoint
    live = saved["mode"] == "live"
    preflight(workflow, project, live=live and not args.show_prompt, overrides=models)
    if args.show_prompt:
        return _show_prompts(workflow, saved["task"], project, models, live, term,
                             resume=saved["state"])
    term.note(f"resuming {workflow.source} at step {state.next + 1}")
    result = _run_saving(args, term, workflow, project, saved, path)
    os.unlink(path)                     # completed: nothing is left behind
    return 1 if result.verdict == "revise" else 0


def _model_scalar(text: str) -> str:
    """`text` as a YAML scalar: plain when that reads back the same, else double-quoted."""
    import json

    try:
        if parse_yaml(f"k: {text}\n") == {"k": text}:
            return text
    except YAMLError:
        pass
    return json.dumps(text)


def pin_models(text: str, overrides: dict[str, str]) -> str:
    """Preset text with --model overrides written into `models:` (and step `model:` lines)."""
    data, keys, values = _yaml_load_marked(text)
    lines = text.splitlines()
    pinned = {role: overrides.get(role) or overrides.get("*") for role in data.get("roles") or {}}
    pinned = {role: model for role, model in pinned.items() if model}
    models = {**(data.get("models") or {}), **pinned}
    # A step's own model: would beat models.ROLE, so pinned roles rewrite it too.
    for i, step in enumerate(data.get("steps") or []):
        if isinstance(step, dict) and "model" in step and step.get("role") in pinned:
            line, column = values[("steps", i, "model")]
            lines[line - 1] = lines[line - 1][:column - 1] + _model_scalar(pinned[step["role"]])
    block = ["models:"] + [f"  {k}: {_model_scalar(v)}" for k, v in models.items()]
    tops = sorted(keys[p][0] for p in keys if len(p) == 1)
    if ("models",) in keys:
        start = keys[("models",)][0]
        end = next((n for n in tops if n > start), len(lines) + 1) - 1
        while end > start and (not lines[end - 1].strip() or lines[end - 1].lstrip()
                               .startswith("#")):
            end -= 1
        lines[start - 1:end] = block
    else:
        at = keys[("steps",)][0] - 1 if ("steps",) in keys else len(lines)
        lines[at:at] = block
    return "\n".join(lines) + "\n"


def _read_key(args: argparse.Namespace, term: Term, var: str) -> str:
    import re

    if args.key_stdin:
        try:
            key = term.inp.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read the key from standard input: {exc}") from None
    elif term.isatty(term.inp):
        import getpass

        key = getpass.getpass(f"{var} (input is hidden): ", stream=term.err)
    else:
        raise UsageError("no terminal to ask for the key on, and no --key-stdin",
                         hint=f"pipe it in: aethr auth login {args.provider} --key-stdin < key.txt")
    key = key.strip()
    if not key:
        raise UsageError("no key given; .env was left as it is")
    if re.search(r"[\s'\"\\]", key):
        raise UsageError("the key contains spaces, quotes or backslashes; .env was left as it is",
                         hint="paste the key alone, exactly as the provider shows it")
    return key


def cmd_auth(args: argparse.Namespace, term: Term) -> int:
    """aethr auth login|status|logout: provider keys in the project's .env (SPEC §11)."""
    project, _ = _open_project(args, term)
    path = os.path.join(project.root, ".env")
    env = project.environ
    if args.action == "status":
        for provider in ("openai", "anthropic", "gemini", "openrouter", "xai"):
            var = next((v for v in PROVIDER_KEYS[provider] if env.get(v)), None)
            if var is None:
                state = f"{PROVIDER_KEYS[provider][0]:<21} not set"
            else:
                where = ".env" if var in env.dotenv else "the environment"
                state = f"{var:<21} set in {where}: {mask(env[var])}"
            term.write(f"{provider:<11} {state}\n")
        term.write(f"{'ollama':<11} no key needed\n")
        return 0
    provider = (args.provider or "").strip().lower()
    if not provider:
        raise UsageError(f"auth {args.action} needs a provider",
                         hint=f"aethr auth {args.action} openai (or anthropic, gemini, "
                         "openrouter, xai)")
    if provider not in AUTH_VARS:
        raise UsageError(f"unknown provider {args.provider!r}",
                         hint=_did_you_mean(provider, AUTH_VARS)
                         or "providers: " + ", ".join(AUTH_VARS))
    var = AUTH_VARS[provider]
    if args.action == "logout":
        try:
            changed = write_dotenv_var(path, var, None)
        except OSError as exc:
            raise UsageError(f"cannot change {path}: {exc.strerror or exc}") from None
        term.status(f"aethr: removed {var} from {path}" if changed else
                    f"aethr: {var} was not in {path}; nothing changed")
        if term.environ.get(var):
            term.note(f"{var} is still set in the environment")
        return 0
    if dotenv_tracked(project):
        raise UsageError(f"{path} is tracked by git: a key written there would be committed "
                         "(and aethr does not load a tracked .env)",
                         hint="git rm --cached .env, add .env to .gitignore, then log in again")
    key = _read_key(args, term, var)
    try:
        write_dotenv_var(path, var, key)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None
    term.status(f"aethr: saved {var} in {path} ({mask(key)})")
    if project.top and not project.ignored(".env"):
        term.warn(".env is not ignored by git: add it to .gitignore so the key is never "
                  "committed")
    if term.environ.get(var):
        term.warn(f"{var} is also set in the environment, and that value wins over .env")
    return 0
'''


# == 14. Built-in data (presets) ==============================================

# BEGIN PRESETS (generated by make presets from presets/*.yaml; do not edit)
PRESETS = {
    "add-tests": (
        "# Find behaviour that the tests do not cover yet, write tests for it with OpenCode, then\n"
        "# review the new tests (with a fresh test run) until the reviewer passes them.\n"
        "#\n"
        "# Adapt the globs and the test command to your project's layout and test runner.\n"
        "workflow: add-tests\n"
        "description: Find untested behaviour, write tests with OpenCode, review them\n"
        "roles:\n"
        "  analyst: |\n"
        "    You find behaviour that the existing tests do not cover. Do not write the tests.\n"
        "    Compare the code in the context (and the uncommitted diff, if any) with the tests.\n"
        "    List the gaps, most valuable first, at most ten. For each give:\n"
        "    - the function or code path (path:line) and the behaviour to pin down;\n"
        "    - the cases to test: normal input, edge cases, errors, and any bug you suspect;\n"
        "    - which existing test file it belongs in, following the suite's conventions.\n"
        "    Prefer behaviour a user relies on and code that changed recently over trivia.\n"
        "    Do not propose tests of private details that would break on a harmless refactor.\n"
        "  test_writer: |\n"
        "    You add tests to the working tree for the gaps listed by the analyst.\n"
        "    Follow the existing suite: its framework, fixtures, file layout and naming.\n"
        "    Each test checks one behaviour and has a name that says which. Assert on results,\n"
        "    not on implementation details; no sleeps, no network, no dependence on test order.\n"
        "    Do not change the code under test. If a test exposes a real bug, keep the test,\n"
        "    mark it as an expected failure the way the suite does, and report the bug.\n"
        "    If a reviewer has listed findings, fix the high and medium ones first.\n"
        "    Run the new tests, then the whole suite. Reply with a short summary: the tests you\n"
        "    added, the results, and any bug you found.\n"
        "  reviewer: |\n"
        "    You review newly added tests: their diff is in the history, a fresh test run in\n"
        "    the context.\n"
        "    Check: that each test would fail if the behaviour it names broke (no assertion-free\n"
        "    or tautological tests, no mocks that replace the code under test); that the listed\n"
        "    gaps are covered; that tests are deterministic and independent; that they follow the\n"
        "    suite's conventions; that the code under test was not changed; that the run passes.\n"
        "    List each finding on its own line as:\n"
        "    - [high|medium|low] path:line: the problem, and the fix you suggest\n"
        "    high: a failing or flaky test, a test that cannot fail, or changed production code.\n"
        "    medium: a listed gap left uncovered, a missing edge case, or a brittle assertion.\n"
        "    low: naming, style, duplication or small simplifications.\n"
        '    Write "No findings." when there are none.\n'
        "    Finish with a last line that is exactly one of these two, with nothing after it:\n"
        "    Review status: pass\n"
        "    Review status: revise\n"
        "    Use pass only when there are no high and no medium findings; otherwise use revise.\n"
        "models:\n"
        "  default: openai:gpt-5.4-mini      # roles without an entry (here the test_writer)\n"
        "  analyst: openai:gpt-5.5\n"
        "  reviewer: openai:gpt-5.5\n"
        "steps:\n"
        "  - id: find-gaps\n"
        "    role: analyst\n"
        "    context: [git_diff, glob:src/**/*.py, glob:*.py, glob:tests/**/*.py]\n"
        "  - id: write-tests\n"
        "    role: test_writer\n"
        "    backend: opencode\n"
        "  - id: review\n"
        "    role: reviewer\n"
        "    # The history (default: all) holds the analyst's list and the newest test diff\n"
        "    # with its patch, so latest_diff would only repeat it.\n"
        '    context: ["cmd:python3 -m pytest -q"]\n'
        "    repeat:\n"
        "      back_to: write-tests\n"
        "      until_review_pass: true\n"
        "      max_iterations: 3\n"
    ),
    "custom": (
        "# A starting point for your own workflow. Every key is shown once; delete what you do\n"
        "# not need. `aethr check` validates this file and summarises it; `aethr run\n"
        '# --show-prompt "TASK"` prints each step\'s prompt without calling a model.\n'
        "#\n"
        "# A run is: task + these steps, in order. Each step sees only the task, what\n"
        "# history_visibility lets through from earlier steps, and the context it lists.\n"
        "\n"
        "# Name shown in the output.\n"
        "workflow: custom\n"
        "# One line, shown by `aethr init --list`.\n"
        "description: A commented starting point showing every key\n"
        "# Role name -> instruction (the system prompt of every step with that role).\n"
        "roles:\n"
        "  worker: |\n"
        "    Do the task in the working tree. Keep the change small and focused, follow the\n"
        "    code's existing conventions, and add or update tests for what you change. If a\n"
        "    reviewer has listed findings, fix the high and medium ones first. Reply with a\n"
        "    short summary of what you changed and how you checked it.\n"
        "  reviewer: |\n"
        "    Review the latest change against the task. List each finding on its own line as:\n"
        "    - [high|medium|low] path:line: the problem, and the fix you suggest\n"
        "    high: a bug, a security hole, or part of the task left undone.\n"
        "    medium: a missing test, an unhandled edge case, or a maintenance problem.\n"
        "    low: naming, style, wording or small simplifications.\n"
        '    Write "No findings." when there are none.\n'
        "    Finish with a last line that is exactly one of these two, with nothing after it:\n"
        "    Review status: pass\n"
        "    Review status: revise\n"
        "    Use pass only when there are no high and no medium findings; otherwise use revise.\n"
        "# Role name -> model as provider:model (openai, anthropic, gemini, openrouter, xai,\n"
        '# ollama). "default" covers roles without an entry. `--model` and AETHR_MODEL override.\n'
        "models:\n"
        "  default: openai:gpt-5.4-mini\n"
        "  worker: openai:gpt-5.5\n"
        "steps:\n"
        "  - id: work                      # unique step id, used by repeat.back_to\n"
        "    role: worker                  # a key of roles\n"
        "    backend: opencode             # model (default, one model call) | opencode (edits)\n"
        "    unsafe_permissions: false     # opencode only: true skips OpenCode's permission asks\n"
        "    timeout: 1800                 # seconds before the step is stopped (default 1800)\n"
        "    # Context sources, shown in this order: git_diff, git_diff:REV, latest_diff,\n"
        "    # file:PATH, glob:PATTERN, cmd:COMMAND (a shell command run in the project root;\n"
        '    # quote an entry that holds ": ", " #" or a comma).\n'
        "    context: [git_diff, file:README.md]\n"
        "  - id: review\n"
        "    role: reviewer\n"
        "    model: openai:gpt-5.5         # this step only; wins over models.reviewer\n"
        "    max_tokens: 4096              # model steps only: cap on the answer's length\n"
        "    history_visibility: latest    # all (default) | latest | summary | none\n"
        "    context: [latest_diff]\n"
        "    repeat:                       # after this step, maybe go back\n"
        "      back_to: work               # first step of the repeated slice (this or earlier)\n"
        '      until_review_pass: true     # stop at "Review status: pass"\n'
        '      # until_contains: "DONE"    # or: stop once the answer contains this text\n'
        "      max_iterations: 3           # passes through the slice, 1..50\n"
    ),
    "debug-failing-test": (
        "# Diagnose a failing test, fix it with OpenCode, then re-run the tests and review the\n"
        "# fix, going back to the fix until the tests pass and the reviewer agrees (at most 3\n"
        "# passes).\n"
        "#\n"
        "# Adapt the test command to your project: both the diagnose and the verify step run it\n"
        '# in the project root (e.g. "cmd:npm test", "cmd:go test ./...", "cmd:cargo test",\n'
        '# "cmd:py -m pytest -x -q" on Windows). Aethr records its exit status and its stdout\n'
        '# and stderr, keeping the head and the tail of long output, so no "| tail" is needed\n'
        "# (a pipe would also hide the test runner's exit status). A command is stopped after\n"
        "# 300 s, or after the step's timeout if that is shorter.\n"
        "workflow: debug-failing-test\n"
        "description: Diagnose a failing test, fix it with OpenCode, re-run and review\n"
        "roles:\n"
        "  diagnoser: |\n"
        "    You diagnose a failing test. Do not write the fix.\n"
        "    From the test output, the uncommitted diff and the task, answer with:\n"
        "    1. Failure: which test fails, and the exact assertion or error quoted from the\n"
        "       output.\n"
        "    2. Cause: the root cause in the code under test (path and function), with the\n"
        "       evidence for it. Separate what the output shows from what you infer.\n"
        "    3. Fix: the smallest change that removes the cause, file by file. Say whether the\n"
        "       test itself is wrong instead, and why, before proposing to change a test.\n"
        "    4. Check: how to confirm the fix, and which other tests could be affected.\n"
        "    If the output shows no failure, say so and stop.\n"
        "  fixer: |\n"
        "    You fix the failing test in the working tree, following the diagnosis.\n"
        "    Change the code under test, not the test, unless the diagnosis shows the test is\n"
        "    wrong. Make the smallest change that fixes the root cause; do not silence the error,\n"
        "    skip the test or loosen its assertion. If a reviewer has listed findings, fix the\n"
        "    high and medium ones first. Run the failing test, then the whole suite.\n"
        "    Reply with a short summary: the cause, what you changed, and the test results.\n"
        "  verifier: |\n"
        "    You verify a fix for a failing test. The context holds the fresh test output and\n"
        "    the diff of the fix. Check: that the originally failing test now passes and no\n"
        "    other test fails; that the fix addresses the root cause rather than the symptom;\n"
        "    that no test was skipped, deleted or weakened to make it pass; and that the diff\n"
        "    has no unrelated changes. Quote the test summary line.\n"
        "    List each finding on its own line as:\n"
        "    - [high|medium|low] path:line: the problem, and the fix you suggest\n"
        "    high: a test still fails, a test was weakened, or the fix is wrong.\n"
        "    medium: the fix treats a symptom, misses a similar case, or lacks a regression test.\n"
        "    low: naming, style, wording or small simplifications.\n"
        '    Write "No findings." when there are none.\n'
        "    Finish with a last line that is exactly one of these two, with nothing after it:\n"
        "    Review status: pass\n"
        "    Review status: revise\n"
        "    Use pass only when there are no high and no medium findings; otherwise use revise.\n"
        "models:\n"
        "  default: openai:gpt-5.4-mini      # roles without an entry (here the fixer)\n"
        "  diagnoser: openai:gpt-5.5\n"
        "  verifier: openai:gpt-5.5\n"
        "steps:\n"
        "  - id: diagnose\n"
        "    role: diagnoser\n"
        "    context:\n"
        '      - "cmd:python3 -m pytest -x -q"\n'
        "      - git_diff\n"
        "  - id: fix\n"
        "    role: fixer\n"
        "    backend: opencode\n"
        "  - id: verify\n"
        "    role: verifier\n"
        "    history_visibility: summary\n"
        "    context:\n"
        '      - "cmd:python3 -m pytest -x -q"\n'
        "      - latest_diff\n"
        "    repeat:\n"
        "      back_to: fix\n"
        "      until_review_pass: true\n"
        "      max_iterations: 3\n"
    ),
    "docs-sync": (
        "# Bring the documentation in line with the code: find what the uncommitted changes made\n"
        "# stale or left undocumented, update the docs with OpenCode, then review the update.\n"
        "workflow: docs-sync\n"
        "description: Update the docs to match the uncommitted code changes\n"
        "roles:\n"
        "  auditor: |\n"
        "    You compare documentation with the code changes in the diff. Do not edit anything.\n"
        "    List every place where the docs in the context are now wrong, stale or silent:\n"
        "    - renamed or removed commands, options, functions, settings or files;\n"
        "    - changed defaults, behaviour, output or error messages;\n"
        "    - new features, options or requirements that no doc mentions;\n"
        "    - examples and code blocks that would no longer run as written.\n"
        "    For each: the doc (path and heading), what it says now, what it should say, and the\n"
        "    code (path:line) that shows it. Say plainly when the docs need no change.\n"
        "  doc_writer: |\n"
        "    You update the documentation in the working tree, following the auditor's list.\n"
        "    Edit only documentation files (*.md and similar), not code. Match each document's\n"
        "    existing tone, structure and formatting; change what is wrong rather than rewriting\n"
        "    whole sections. Keep examples runnable and consistent with the code. If a reviewer\n"
        "    has listed findings, fix the high and medium ones first.\n"
        "    Reply with a short summary of what you changed, file by file.\n"
        "  reviewer: |\n"
        "    You review a documentation update against the code changes it describes.\n"
        "    Check: every statement is true of the code as it is now; nothing the auditor listed\n"
        "    was missed; examples and commands would work as written; no code file was changed;\n"
        "    the style matches the surrounding docs; links and headings still resolve.\n"
        "    List each finding on its own line as:\n"
        "    - [high|medium|low] path:line: the problem, and the fix you suggest\n"
        "    high: a false statement, a broken example, or a changed code file.\n"
        "    medium: a listed item left out, or an unclear or misleading explanation.\n"
        "    low: wording, typos, formatting or small simplifications.\n"
        '    Write "No findings." when there are none.\n'
        "    Finish with a last line that is exactly one of these two, with nothing after it:\n"
        "    Review status: pass\n"
        "    Review status: revise\n"
        "    Use pass only when there are no high and no medium findings; otherwise use revise.\n"
        "models:\n"
        "  default: openai:gpt-5.4-mini      # roles without an entry (auditor, doc_writer)\n"
        "  reviewer: openai:gpt-5.5\n"
        "steps:\n"
        "  - id: audit\n"
        "    role: auditor\n"
        "    # A glob shows at most 40 files (160 KiB); narrow it (e.g. glob:docs/**/*.md) if\n"
        "    # your docs are larger.\n"
        "    context: [git_diff, file:README.md, glob:**/*.md]\n"
        "  - id: update-docs\n"
        "    role: doc_writer\n"
        "    backend: opencode\n"
        "  - id: review\n"
        "    role: reviewer\n"
        "    history_visibility: summary\n"
        "    context: [git_diff, latest_diff]\n"
        "    repeat:\n"
        "      back_to: update-docs\n"
        "      until_review_pass: true\n"
        "      max_iterations: 2\n"
    ),
    "plan-implement-review": (
        "# Plan a change, implement it with OpenCode, then review the implementation and send\n"
        "# it back to OpenCode until the reviewer passes it (at most 3 passes through implement\n"
        "# and review).\n"
        "workflow: plan-implement-review\n"
        "description: Plan a change, implement it with OpenCode, review until it passes\n"
        "roles:\n"
        "  planner: |\n"
        "    You plan a code change that another engineer will implement. Do not write the code.\n"
        "    Read the task, the uncommitted diff and the README, then answer with:\n"
        "    1. Goal: one or two sentences on what must be true when the work is done.\n"
        "    2. Files: each file to change or create, what changes in it and why.\n"
        "    3. Steps: a short numbered list in the order to do them, each small enough to check.\n"
        "    4. Tests: the tests to add or update, each with the behaviour it proves.\n"
        "    5. Risks: edge cases, compatibility concerns and anything the task leaves open,\n"
        "       with the assumption you made for each.\n"
        "    Keep to what the task asks: no unrelated refactoring, no new dependencies unless the\n"
        "    task needs them. Follow the conventions the existing code already uses.\n"
        "  implementer: |\n"
        "    You implement a planned change directly in the working tree.\n"
        "    Follow the plan from the previous step. If a reviewer has already listed findings,\n"
        "    fix every high and medium finding first, then the low ones that are cheap to fix.\n"
        "    Add or update tests for the behaviour you change and run them. Keep the diff\n"
        "    focused: no unrelated edits, no reformatting of untouched code, no new dependencies\n"
        "    unless the plan calls for them. When you finish, reply with a short summary: what\n"
        "    you changed, which tests you ran and their result, and anything you could not do\n"
        "    and why.\n"
        "  reviewer: |\n"
        "    You review the latest implementation (its diff is in the context) against the task\n"
        "    and the plan. Check, in order: correctness and edge cases; that the task and the\n"
        "    plan are fully done; tests that would fail if the change broke; error handling;\n"
        "    security (injection, secrets, unsafe file or shell use); readability and\n"
        "    consistency with the surrounding code. Do not restate the diff and do not praise it.\n"
        "    List each finding on its own line as:\n"
        "    - [high|medium|low] path:line: the problem, and the fix you suggest\n"
        "    high: a bug, data loss, a security hole, or a part of the task left undone.\n"
        "    medium: a missing test, an unhandled edge case, or a likely maintenance problem.\n"
        "    low: naming, style, wording or small simplifications.\n"
        '    Write "No findings." when there are none.\n'
        "    Finish with a last line that is exactly one of these two, with nothing after it:\n"
        "    Review status: pass\n"
        "    Review status: revise\n"
        "    Use pass only when there are no high and no medium findings; otherwise use revise.\n"
        "models:\n"
        "  default: openai:gpt-5.4-mini      # roles without an entry (here the implementer)\n"
        "  planner: openai:gpt-5.5\n"
        "  reviewer: openai:gpt-5.5\n"
        "steps:\n"
        "  - id: plan\n"
        "    role: planner\n"
        "    context: [git_diff, file:README.md]\n"
        "  - id: implement\n"
        "    role: implementer\n"
        "    backend: opencode\n"
        "  - id: review\n"
        "    role: reviewer\n"
        "    history_visibility: latest\n"
        "    context: [latest_diff]\n"
        "    repeat:\n"
        "      back_to: implement\n"
        "      until_review_pass: true\n"
        "      max_iterations: 3\n"
    ),
    "review-existing-diff": (
        "# Review the uncommitted changes in this repository (staged, unstaged and new files).\n"
        "# This is the workflow `aethr run` uses when a repository has no .aethr.yaml.\n"
        "workflow: review-existing-diff\n"
        "description: Review the uncommitted changes in the working tree\n"
        "roles:\n"
        "  reviewer: |\n"
        "    You review uncommitted changes to a code base before they are committed. The diff\n"
        "    against HEAD is in the context; new files appear as added in full. Use the task, if\n"
        "    given, as the intent of the change.\n"
        "    Check, in order: correctness and edge cases; that the change does what it sets out\n"
        "    to do; tests that cover it (and would fail if it broke); error handling; security\n"
        "    (injection, secrets committed by mistake, unsafe file or shell use); readability\n"
        "    and consistency with the surrounding code; leftovers such as debug prints,\n"
        "    commented-out code or stray files. Do not restate the diff and do not praise it.\n"
        "    List each finding on its own line as:\n"
        "    - [high|medium|low] path:line: the problem, and the fix you suggest\n"
        "    high: a bug, data loss, a security hole, or a change that cannot work as intended.\n"
        "    medium: a missing test, an unhandled edge case, or a likely maintenance problem.\n"
        "    low: naming, style, wording or small simplifications.\n"
        '    Write "No findings." when there are none. If the diff is empty, say so.\n'
        "    Finish with a last line that is exactly one of these two, with nothing after it:\n"
        "    Review status: pass\n"
        "    Review status: revise\n"
        "    Use pass only when there are no high and no medium findings; otherwise use revise.\n"
        "models:\n"
        "  default: openai:gpt-5.4-mini      # roles without an entry\n"
        "  reviewer: openai:gpt-5.5\n"
        "steps:\n"
        "  - id: review\n"
        "    role: reviewer\n"
        "    context: [git_diff]\n"
    ),
}
# END PRESETS

if __name__ == "__main__":
    sys.modules.setdefault("aethr", sys.modules[__name__])
    sys.exit(main())

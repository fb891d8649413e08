"""Section 4, the YAML-subset parser.

The conformance data in tests/data/yaml/ (yaml-test-suite cases sorted into valid / error /
outside, plus config-file cases in extra/) drives most of it; SUBSET.md defines the subset.
Then: marks, the typing table, keys, line breaks and BOM, error positions, agreement with
PyYAML where YAML 1.1 and 1.2 agree, and fuzzing (nothing but YAMLError ever escapes).
"""

from __future__ import annotations

import json
import math
import random
import sys
from pathlib import Path

import pytest
import yaml
from conftest import mutate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import aethr
from aethr import YAMLError, parse_yaml

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data" / "yaml"
SUITE = DATA / "suite"
EXTRA = DATA / "extra"
#: How many cases each set holds, so that a lost data file fails the run.
COUNTS = {"valid": 85, "error": 94, "outside": 223, "extra": 50}

FUZZ = settings(max_examples=300, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


def read_yaml(path: Path) -> str:
    """The file as the loader sees it: UTF-8, with any BOM and CR characters left in."""
    return path.read_bytes().decode("utf-8")


def json_docs(path: Path) -> list:
    """Every JSON value in a file (yaml-test-suite's in.json holds one per document)."""
    text, dec, out, pos = path.read_text(encoding="utf-8"), json.JSONDecoder(), [], 0
    while True:
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        if pos == len(text):
            return out
        value, pos = dec.raw_decode(text, pos)
        out.append(value)


def same(a: object, b: object) -> bool:
    """Equality that tells bool, int and float apart (True != 1 != 1.0) and lets nan == nan."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return a == b


def check_error(exc: YAMLError, text: str) -> None:
    """An error carries a 1-based position inside (or just after) the text."""
    assert type(exc.line) is int and type(exc.column) is int
    assert exc.line >= 1 and exc.column >= 1
    text = text[1:] if text.startswith("\ufeff") else text
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    assert exc.line <= len(lines)
    assert exc.column <= len(lines[exc.line - 1]) + 1
    assert str(exc) == f"{exc.line}:{exc.column}: {exc.message}"


def suite_ids(kind: str) -> list[str]:
    return sorted(p.name for p in (SUITE / kind).iterdir() if (p / "in.yaml").is_file())


def extra_ids() -> list[str]:
    return sorted(p.stem for p in EXTRA.glob("*.yaml"))


# -- conformance data ---------------------------------------------------------


def test_case_counts():
    counts = {kind: len(suite_ids(kind)) for kind in ("valid", "error", "outside")}
    counts["extra"] = len(extra_ids())
    assert counts == COUNTS
    manifest = json.loads((SUITE / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["counts"]["in_subset"] == COUNTS["valid"]
    assert manifest["counts"]["error"] == COUNTS["error"]
    assert manifest["counts"]["outside"] == COUNTS["outside"]


@pytest.mark.parametrize("case", suite_ids("valid"))
def test_suite_valid(case):
    text = read_yaml(SUITE / "valid" / case / "in.yaml")
    docs = json_docs(SUITE / "valid" / case / "in.json")
    want = docs[0] if docs else None
    got = parse_yaml(text)
    assert same(got, want), f"{got!r} != {want!r}"


@pytest.mark.parametrize("case", suite_ids("error"))
def test_suite_error(case):
    text = read_yaml(SUITE / "error" / case / "in.yaml")
    with pytest.raises(YAMLError) as info:
        parse_yaml(text)
    check_error(info.value, text)


@pytest.mark.parametrize("case", suite_ids("outside"))
def test_suite_outside(case):
    folder = SUITE / "outside" / case
    text = read_yaml(folder / "in.yaml")
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    docs = json_docs(folder / "in.json") if (folder / "in.json").is_file() else None
    try:
        got = parse_yaml(text)
    except YAMLError as exc:
        check_error(exc, text)
        return
    # Accepting a document outside the subset is allowed only when it is read exactly right.
    assert not meta.get("must_reject"), f"accepted, but it uses {meta['must_reject']}"
    assert docs is not None and len(docs) <= 1, "accepted, and there is no value to check"
    want = docs[0] if docs else None
    assert same(got, want), f"silent misparse: {got!r} != {want!r}"


def _kv_file(path: Path) -> dict[str, str]:
    """The "name: value" lines of an extra case's .error file."""
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        name, sep, value = line.partition(":")
        if sep:
            out[name.strip()] = value.strip()
    return out


@pytest.mark.parametrize("case", extra_ids())
def test_extra(case):
    text = read_yaml(EXTRA / f"{case}.yaml")
    expected, error = EXTRA / f"{case}.json", EXTRA / f"{case}.error"
    assert expected.is_file() != error.is_file(), "needs exactly one of .json and .error"
    if error.is_file():
        with pytest.raises(YAMLError) as info:
            parse_yaml(text)
        check_error(info.value, text)
        want = _kv_file(error)
        if "line" in want:
            assert info.value.line == int(want["line"]), info.value
        if "column" in want:
            assert info.value.column == int(want["column"]), info.value
        return
    (want,) = json_docs(expected)
    try:
        got = parse_yaml(text)
    except YAMLError as exc:
        assert (EXTRA / f"{case}.optional").is_file(), f"rejected a valid config: {exc}"
        check_error(exc, text)
        return
    assert same(got, want), f"{got!r} != {want!r}"


# -- marks --------------------------------------------------------------------

MARKED = (
    "# header\n"  # 1
    "workflow: demo\n"  # 2
    "steps:\n"  # 3
    "- id: plan\n"  # 4
    "  context: [git_diff, bogus]\n"  # 5
    "  note:\n"  # 6
    "  repeat: {back_to: plan, n: 3}\n"  # 7
    "-\n"  # 8
    "  id: review\n"  # 9
    "roles:\n"  # 10
    "    planner: |\n"  # 11
    "      text\n"  # 12
    "    quoted : 'it''s'\n"  # 13
    "list:\n"  # 14
    "  - a\n"  # 15
    "  -\n"  # 16
    "  - [x, {k: v}]\n"  # 17
)


def _walk(node: object, path: tuple, nodes: set, entries: set) -> None:
    nodes.add(path)
    if isinstance(node, dict):
        for key, value in node.items():
            entries.add(path + (key,))
            _walk(value, path + (key,), nodes, entries)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            _walk(value, path + (index,), nodes, entries)


def _at(text: str, mark: tuple[int, int]) -> str:
    line, column = mark
    return text.split("\n")[line - 1][column - 1:]


def test_marks_keys():
    _, keys, _ = aethr._yaml_load_marked(MARKED)
    assert keys[("workflow",)] == (2, 1)
    assert keys[("steps",)] == (3, 1)
    assert keys[("steps", 0, "id")] == (4, 3)
    assert keys[("steps", 0, "context")] == (5, 3)
    assert keys[("steps", 0, "note")] == (6, 3)
    assert keys[("steps", 0, "repeat", "back_to")] == (7, 12)
    assert keys[("steps", 0, "repeat", "n")] == (7, 27)
    assert keys[("steps", 1, "id")] == (9, 3)
    assert keys[("roles", "planner")] == (11, 5)
    assert keys[("roles", "quoted")] == (13, 5)
    assert keys[("list", 2, 1, "k")] == (17, 10)


def test_marks_values():
    data, _, values = aethr._yaml_load_marked(MARKED)
    assert values[()] == (2, 1)
    assert values[("workflow",)] == (2, 11)
    # A sequence at its key's column starts at its first dash.
    assert values[("steps",)] == (4, 1)
    assert values[("steps", 0)] == (4, 3)
    assert values[("steps", 0, "context")] == (5, 12)
    assert values[("steps", 0, "context", 0)] == (5, 13)
    assert values[("steps", 0, "context", 1)] == (5, 23)
    assert _at(MARKED, values[("steps", 0, "context", 1)]).startswith("bogus")
    assert values[("steps", 0, "repeat", "n")] == (7, 30)
    assert values[("steps", 1)] == (9, 3)
    assert values[("roles",)] == (11, 5)
    assert values[("roles", "planner")] == (11, 14)
    assert values[("roles", "quoted")] == (13, 14)
    assert values[("list",)] == (15, 3)
    assert values[("list", 2, 1, "k")] == (17, 13)
    assert data["roles"] == {"planner": "text\n", "quoted": "it's"}


def test_marks_of_empty_values_point_at_key_or_dash():
    data, _, values = aethr._yaml_load_marked(MARKED)
    assert data["steps"][0]["note"] is None and data["list"][1] is None
    assert values[("steps", 0, "note")] == (6, 3)
    assert values[("list", 1)] == (16, 3)


def test_marks_cover_every_node():
    data, keys, values = aethr._yaml_load_marked(MARKED)
    nodes, entries = set(), set()
    _walk(data, (), nodes, entries)
    assert set(values) == nodes
    assert set(keys) == entries


def test_marks_of_scalars_point_at_their_text():
    text = "a: 1\nb:   'q'\nc: [x,   y]\nd:\n  - \"z\"\n  - k:  v\n"
    data, keys, values = aethr._yaml_load_marked(text)
    assert _at(text, values[("a",)]) == "1"
    assert _at(text, values[("b",)]) == "'q'"
    assert _at(text, values[("c", 1)]) == "y]"
    assert _at(text, values[("d", 0)]) == '"z"'
    assert _at(text, values[("d", 1)]) == "k:  v"
    assert _at(text, values[("d", 1, "k")]) == "v"
    assert _at(text, keys[("d", 1, "k")]) == "k:  v"


def test_parse_yaml_is_the_data_of_load_marked():
    assert parse_yaml(MARKED) == aethr._yaml_load_marked(MARKED)[0]


def test_empty_streams_are_none():
    for text in ("", "\n\n", "# only a comment\n", "---\n", "--- # c\n# more\n", "\ufeff"):
        assert parse_yaml(text) is None


# -- typing (SUBSET 5.5: YAML 1.2.2 core schema) ------------------------------

TYPED = [
    ("null", None), ("Null", None), ("NULL", None), ("~", None), ("", None),
    ("true", True), ("True", True), ("TRUE", True),
    ("false", False), ("False", False), ("FALSE", False),
    ("0", 0), ("42", 42), ("-7", -7), ("+3", 3), ("0755", 755), ("0o14", 12), ("0x1F", 31),
    ("0xff", 255), ("12345678901234567890", 12345678901234567890),
    ("3.14", 3.14), ("-0.5", -0.5), (".5", 0.5), ("+.5", 0.5), ("1.", 1.0), ("0.0", 0.0),
    ("1e3", 1000.0), ("6.02E+23", 6.02e23), ("1.5e-3", 0.0015),
    (".inf", math.inf), ("-.Inf", -math.inf), ("+.INF", math.inf), (".nan", math.nan),
    (".NaN", math.nan), (".NAN", math.nan),
    # Everything else is a string: YAML 1.1's booleans, sexagesimals, dates, ...
    ("yes", "yes"), ("no", "no"), ("on", "on"), ("off", "off"), ("y", "y"), ("n", "n"),
    ("Yes", "Yes"), ("NO", "NO"), ("tRUE", "tRUE"), ("nULL", "nULL"),
    ("1_000", "1_000"), ("0b101", "0b101"), ("1:30", "1:30"), ("2024-01-15", "2024-01-15"),
    ("=", "="), ("0o8", "0o8"), ("0x", "0x"), ("-0x1F", "-0x1F"), ("0X1F", "0X1F"),
    ("1e", "1e"), ("e3", "e3"), (".", "."), ("+", "+"), ("-1-", "-1-"), ("inf", "inf"),
    ("nan", "nan"), ("-.nan", "-.nan"), ("1.2.3", "1.2.3"), ("--1", "--1"), ("~~", "~~"),
    ("٣", "٣"), ("1 000", "1 000"), ("3.10", 3.1),
]


@pytest.mark.parametrize(("text", "want"), TYPED, ids=[t or "<empty>" for t, _ in TYPED])
def test_typing_table(text, want):
    assert same(parse_yaml(f"v: {text}\n")["v"], want)
    # Flow collections type the same way.
    if text:
        assert same(parse_yaml(f"v: [{text}]\n")["v"][0], want)


def test_quoted_and_block_scalars_are_never_typed():
    data = parse_yaml("a: 'true'\nb: \"1\"\nc: |-\n  null\nd: >-\n  3.5\ne: ['0x1F', \"~\"]\n")
    assert data == {"a": "true", "b": "1", "c": "null", "d": "3.5", "e": ["0x1F", "~"]}


def test_keys_are_always_strings():
    text = "1: a\ntrue: b\nnull: c\n~: d\n1.5: e\nyes: f\n'2': g\n0x1F: h\n"
    data = parse_yaml(text)
    assert data == {"1": "a", "true": "b", "null": "c", "~": "d", "1.5": "e", "yes": "f",
                    "2": "g", "0x1F": "h"}
    assert all(type(k) is str for k in data)
    assert parse_yaml("{1: a, true: b, null: c}") == {"1": "a", "true": "b", "null": "c"}


def test_keys_compare_after_unquoting():
    for text in ("1: a\n'1': b\n", 'a: 1\n"\\x61": 2\n', "{true: 1, 'true': 2}\n"):
        with pytest.raises(YAMLError, match="duplicate key"):
            parse_yaml(text)


# -- line breaks and BOM -------------------------------------------------------


def test_crlf_and_cr_line_breaks():
    want = {"a": 1, "b": "x\ny\n", "c": ["p", "q"]}
    assert parse_yaml("a: 1\r\nb: |\r\n  x\r\n  y\r\nc: [p, q]\r\n") == want
    assert parse_yaml("a: 1\rb: |\r  x\r  y\rc: [p, q]\r") == want
    assert parse_yaml("a: 1\r\nb: |\r  x\n  y\r\nc: [p, q]") == want


def test_bom_is_dropped_once():
    assert parse_yaml("\ufeffa: 1\n") == {"a": 1}
    assert parse_yaml("\ufeff---\na: 1\r\n") == {"a": 1}
    with pytest.raises(YAMLError) as info:
        parse_yaml("a: x\ufeffy\n")
    assert (info.value.line, info.value.column) == (1, 5)


def test_missing_final_line_break_changes_nothing():
    for text in ("a: |\n  x\n", "a: |+\n  x\n", "a: >\n  x\n", "- |-\n  x\n"):
        assert parse_yaml(text) == parse_yaml(text[:-1])


# -- errors ---------------------------------------------------------------------

ERRORS = [
    ("a: 1\nb: 2\na: 3\n", 3, 1, "duplicate key 'a' (first defined at line 1)"),
    ("title: Fix: bug\n", 1, 11, "mapping values are not allowed here"),
    ("note: see below:\n", 1, 16, "mapping values are not allowed here"),
    ("a: b: c\n", 1, 5, "mapping values are not allowed here"),
    ("a:\n\tb: 1\n", 2, 1, "tab character not allowed here, use spaces"),
    ("a:\t1\n", 1, 3, "tab character not allowed here, use spaces"),
    ("a: 1 \t\n", 1, 6, "tab character not allowed here, use spaces"),
    ("a: b\tc\n", 1, 5, "tab character not allowed here, use spaces"),
    ("a: 'unterminated\nb: 1\n", 1, 4, "single-quoted scalar not closed on its line"),
    ('a: "x\\qy"\n', 1, 6, "invalid escape '\\q'"),
    ('a: "\\ud800"\n', 1, 5, "escape '\\ud800' is not a character"),
    ("a: [1, 2\n", 1, 4, "'[' not closed on its line"),
    ("a: {b: 1, b: 2}\n", 1, 11, "duplicate key 'b' (first defined at column 5)"),
    ("a: [x, , y]\n", 1, 8, "empty entry in a flow collection"),
    ("a: [x]#c\n", 1, 7, "a comment needs a space before '#'"),
    ('a: "v" junk\n', 1, 8, "unexpected text after the value"),
    ("a:\n  b: 1\n   c: 2\n", 3, 4, "inconsistent indentation"),
    ("a:\n  b: 1\n c: 2\n", 3, 2, "inconsistent indentation"),
    ("a: 1\r\nb: 2\r\n  c: 3\r\n", 3, 3, "inconsistent indentation"),
    ("a: 1\n- b\n", 2, 1, "sequence item where a key is expected"),
    ("- a\nb: 1\n", 2, 1, "expected a sequence item ('- ')"),
    ("a: 1\nb:2\n", 2, 1, "expected 'key: value'"),
    ("k:\n  just text\n", 2, 3, "a value must start on the line of its key or '-'"),
    ("glob: *.md\n", 1, 7, "aliases ('*') are not supported"),
    ("a: &x 1\n", 1, 4, "anchors ('&') are not supported"),
    ("a: !!str 1\n", 1, 4, "tags ('!') are not supported"),
    ("cmd: `ls`\n", 1, 6, "'`' cannot start a plain scalar"),
    ("? a\n: b\n", 1, 1, "explicit keys ('? ') are not supported"),
    (": v\n", 1, 1, "empty key"),
    ("[a, b]: c\n", 1, 1, "a flow collection cannot be a mapping key"),
    ("<<: {a: 1}\n", 1, 1, "merge keys ('<<') are not supported"),
    ("- - x\n", 1, 3, "compact nested sequences ('- - x') are not supported"),
    ("%YAML 1.2\n---\na: 1\n", 1, 1, "directives ('%...') are not supported"),
    ("a: 1\n---\nb: 2\n", 2, 1, "only one document is allowed"),
    ("a: 1\n...\n", 2, 1, "the document end marker '...' is not supported"),
    ("--- a: 1\n", 1, 5, "content on the '---' line is not supported"),
    ("a: |2\n  x\n", 1, 5, "block scalar indentation indicators are not supported"),
    ("a: > text\n", 1, 6, "unexpected text after a block scalar header"),
    ("a: |\n    \n  x\n", 2, 3, "blank line indented deeper than the first line of its block "
                              "scalar"),
    ("a: b\x7f\n", 1, 5, "character U+007F is not allowed in YAML"),
    ("\ufeffa: b: c\n", 1, 5, "mapping values are not allowed here"),
    ("a: 1\n" + "k" * 1100 + ": 2\n", 2, 1, "key longer than 1024 characters"),
]


@pytest.mark.parametrize(("text", "line", "column", "message"), ERRORS,
                         ids=[repr(t[:20]) for t, *_ in ERRORS])
def test_error_positions(text, line, column, message):
    with pytest.raises(YAMLError) as info:
        parse_yaml(text)
    exc = info.value
    assert (exc.line, exc.column, exc.message) == (line, column, message)
    check_error(exc, text)


def test_error_hints():
    hints = {
        "title: Fix: bug\n": 'quote the value: "Fix: bug"',
        "glob: *.md  # docs\n": 'quote the value: "*.md"',
        'a: x: "y"\n': 'quote the value: "x: \\"y\\""',
        "a: |1\n  x\n": "remove the digit; the first line sets the indentation",
    }
    for text, hint in hints.items():
        with pytest.raises(YAMLError) as info:
            parse_yaml(text)
        assert info.value.hint == hint


@pytest.mark.parametrize("text", [
    "[" * 100_000,
    "a: " + "{a: " * 1000 + "}" * 1000,
    "".join("  " * n + f"k{n}:\n" for n in range(1000)),
    "".join("  " * n + "-\n" for n in range(1000)),
    "".join("  " * n + "- a:\n" for n in range(1000)),
], ids=["flow-seq", "flow-map", "block-map", "block-seq", "compact-map"])
def test_absurd_nesting_is_an_error(text):
    with pytest.raises(YAMLError, match="nested too deeply"):
        parse_yaml(text)


def test_deep_nesting_within_the_limit():
    text = "".join("  " * n + f"k{n}:\n" for n in range(150)) + "  " * 150 + "leaf: 1\n"
    node = parse_yaml(text)
    for n in range(150):
        node = node[f"k{n}"]
    assert node == {"leaf": 1}
    assert parse_yaml("[" * 150 + "]" * 150) is not None


def test_recursion_error_becomes_yamlerror():
    # The depth limit is what normally stops deep input; this is the fallback for a caller
    # whose own stack is already deep.
    frame, depth = sys._getframe(), 0
    while frame is not None:
        frame, depth = frame.f_back, depth + 1
    text = "".join("  " * n + f"k{n}:\n" for n in range(150))
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(depth + 80)
    try:
        with pytest.raises(YAMLError) as info:
            parse_yaml(text)
    finally:
        sys.setrecursionlimit(limit)
    assert info.value.message == "document nested too deeply"


def test_huge_integer_is_an_error_not_a_crash():
    try:
        value = parse_yaml("n: " + "9" * 5000 + "\n")
    except YAMLError as exc:  # Python 3.11+ limits int() to 4300 digits
        assert (exc.line, exc.column) == (1, 4)
    else:
        assert value == {"n": int("9" * 5000)}


# -- agreement with PyYAML where YAML 1.1 and 1.2 agree -------------------------
#
# PyYAML implements YAML 1.1, so the documents here avoid what the two versions read
# differently: yes/no/on/off/y/n, leading zeros and 0o, sexagesimal 1:30, dates, floats
# without a dot (1e3), duplicate keys, "<<", and plain ":"/"?" in flow collections.
# Every document also ends with a line break (PyYAML chomps differently at the end of a
# stream, see yaml-test-suite L24T/01 and JEF9/02).

HANDWRITTEN = [
    "a: 1\nb: -2\nc: 3.5\nd: -0.25\ne: true\nf: False\ng: null\nh: ~\ni:\nj: text\n",
    "key   : value\n'q' : 1\n\"dq\": 2\n",
    "title: \"Fix: the bug\"\nnote: 'see below:'\nurl: http://example.com:8080/x#frag\n",
    "color: red#blue\ntag: v1.0#beta # comment\npath: C:\\Users\\me\n",
    "cmd: a | b\ncmp: x > y\nq: what?\nidx: foo[0]\nmail: me@example.com\ndash: -foo\n",
    "steps:\n- id: a\n  role: r\n- id: b\n  context: [git_diff, 'file:x']\nnext: 1\n",
    "a:\n    - x\n    - y\nb:\n - z\nc:\n        - deep\n",
    "# head\na:\n  b: 1\n# column 0 inside\n  c: 2\n      # deeper comment\n  d: 3\n\ne: 4\n",
    "---\n- [a, b, []]\n- {a: 1, b: {}, c: [x, {y: z}]}\n- {}\n- []\n",
    "- {a: 1, }\n- [a, b, ]\n- { one : two , three: four }\n",
    "strip: |-\n  x\n\nkeep: |+\n  y\n\nclip: |\n  z\n\n\nfolded: >-\n  a\n  b\nlast: 1\n",
    "a: >\n  one\n  two\n\n  three\n    more\n    indented\n  back\n",
    "code: |\n  def f():\n      return 1\n\n  print(f())\n",
    "a: | # comment\n  text\nb: >- # c\n  t\n",
    "prompt: |\n  line\n# a real comment at lower indentation\nnext: x\n",
    "e: \"\\x41\\u00e9\\t\\n\\\\ \\\" \\0 \\e\"\nf: 'it''s'\ng: ''\nh: \"\"\n",
    "unicode: caf\u00e9 \u2603\nkey \u00fc: \u65e5\u672c\u8a9e\n",
    "- a\n-\n- c\n",
    "nested:\n  - name: x\n    items:\n      - 1\n      - 2.5\n    flags: {on_: true}\n",
    "-\n  a: 1\n  b: 2\n-\n  - 1\n  - 2\n",
    "a: [1, -2, 3.0, true, null, ~, text, 'q', \"d\"]\n",
    "multi word key: multi word value\nanother: a b  c   d\n",
    "a: '# not a comment'\nb: \"#nor this\"\nc: x # but this is\n",
    "literal: |\n  a\n\n  b\n\n\nafter: 1\n",
    "list:\n- |\n  block in seq\n- >-\n  folded\n  in seq\n- plain\n",
]


def _gen_word(rnd: random.Random) -> str:
    return rnd.choice(["alpha", "beta", "gamma", "plan", "review", "x", "node_1", "file.txt",
                       "a-b", "CamelCase", "caf\u00e9", "\u65e5\u672c", "under_score", "v2"])


def _gen_scalar(rnd: random.Random, flow: bool) -> str:
    kind = rnd.randrange(9)
    if kind == 0:
        return str(rnd.randint(-10**12, 10**12))
    if kind == 1:
        return f"{rnd.choice(['', '-'])}{rnd.randint(0, 999)}.{rnd.randint(0, 999)}"
    if kind == 2:
        return rnd.choice(["true", "false", "True", "FALSE", "null", "~", "Null"])
    if kind == 3:
        chars = [rnd.choice("ab \"'\\\t\u00e9:#,[]{}") for _ in range(rnd.randint(0, 8))]
        body = "".join(chars).replace("\\", "\\\\").replace('"', '\\"')
        return f'"{body}"'
    if kind == 4:
        chars = [rnd.choice("ab \"'\\\u00e9:#,[]{}") for _ in range(rnd.randint(0, 8))]
        return "'" + "".join(chars).replace("'", "''") + "'"
    if flow:
        return " ".join(_gen_word(rnd) for _ in range(rnd.randint(1, 3)))
    return rnd.choice([_gen_word(rnd), "hello world", "a:b", "http://h.example/p#f", "a#b",
                       "x=y", "100%", "a, b", "it's", 'say "hi"', "x [y] {z}", "-dash",
                       "what?", "C:\\dir\\f", "two  spaces"])


def _gen_flow(rnd: random.Random, depth: int) -> str:
    items = []
    for _ in range(rnd.randint(0, 3)):
        nested = depth < 3 and rnd.random() < 0.25
        items.append(_gen_flow(rnd, depth + 1) if nested else _gen_scalar(rnd, True))
    if rnd.random() < 0.5:
        return "[" + ", ".join(items) + (", " if items and rnd.random() < 0.2 else "") + "]"
    keys = list(dict.fromkeys(_gen_word(rnd) for _ in items))
    return "{" + ", ".join(f"{k}: {v}" for k, v in zip(keys, items, strict=False)) + "}"


def _gen_block_scalar(rnd: random.Random, indent: int) -> list[str]:
    header = rnd.choice("|>") + rnd.choice(["", "-", "+"])
    body = []
    for _ in range(rnd.randint(1, 4)):
        if rnd.random() < 0.2:
            body.append("")
        else:
            extra = " " * rnd.choice([0, 0, 0, 2])
            body.append(" " * indent + extra + " ".join(_gen_word(rnd) for _ in range(2)))
    # The first line sets the indentation, so it carries no extra spaces.
    body[0] = " " * indent + "first"
    return [header] + body + [""] * rnd.randint(0, 2)


def _gen_map(rnd: random.Random, indent: int, depth: int) -> list[str]:
    lines: list[str] = []
    keys = dict.fromkeys(_gen_word(rnd) if rnd.random() < 0.8 else
                         rnd.choice(["'quoted key'", '"a: b"', "with space", "k2 "])
                         for _ in range(rnd.randint(1, 4)))
    for key in keys:
        if rnd.random() < 0.15:
            lines.append(" " * rnd.choice([0, indent]) + "# comment")
        lines.extend(_gen_entry(rnd, " " * indent + key + ":", indent, depth, True))
    return lines


def _gen_seq(rnd: random.Random, indent: int, depth: int) -> list[str]:
    lines: list[str] = []
    for _ in range(rnd.randint(1, 4)):
        if depth < 4 and rnd.random() < 0.25:
            # A compact mapping: "- key: v" with its further keys under the first one.
            sub = _gen_map(rnd, indent + 2, depth + 1)
            first = next(n for n, line in enumerate(sub) if not line.lstrip().startswith("#"))
            sub[first] = " " * indent + "- " + sub[first][indent + 2:]
            lines.extend(sub[first:])
        else:
            lines.extend(_gen_entry(rnd, " " * indent + "-", indent, depth, False))
    return lines


def _gen_entry(rnd: random.Random, head: str, indent: int, depth: int,
               in_map: bool) -> list[str]:
    kind = rnd.randrange(10) if depth < 4 else rnd.randrange(5)
    step = rnd.choice([1, 2, 2, 4])
    if kind <= 2:
        comment = "  # note" if rnd.random() < 0.2 else ""
        return [f"{head} {_gen_scalar(rnd, False)}{comment}"]
    if kind == 3:
        return [f"{head} {_gen_flow(rnd, 0)}"]
    if kind == 4:
        header, *body = _gen_block_scalar(rnd, indent + step)
        return [f"{head} {header}", *body]
    if kind == 5:
        return [head]
    if kind <= 7:
        return [head, *_gen_map(rnd, indent + step, depth + 1)]
    seq_indent = indent if in_map and rnd.random() < 0.4 else indent + step
    return [head, *_gen_seq(rnd, seq_indent, depth + 1)]


def generated_docs(count: int) -> list[str]:
    docs = []
    for seed in range(count):
        rnd = random.Random(seed)
        root = _gen_map(rnd, 0, 0) if seed % 3 else _gen_seq(rnd, rnd.choice([0, 1]), 0)
        prefix = rnd.choice(["", "---\n", "# top\n\n", "--- # start\n"])
        docs.append(prefix + "\n".join(root) + "\n")
    return docs


def _normalise(value: object) -> object:
    """PyYAML's result with keys as strings, the way JSON (and this loader) has them."""
    if isinstance(value, dict):
        return {(k if isinstance(k, str) else json.dumps(k)): _normalise(v)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_normalise(v) for v in value]
    return value


def _agrees_with_pyyaml(text: str) -> None:
    want = _normalise(yaml.safe_load(text))
    got = parse_yaml(text)
    assert same(got, want), f"\n{text}\nparse_yaml: {got!r}\nPyYAML:     {want!r}"


@pytest.mark.parametrize("text", HANDWRITTEN, ids=range(len(HANDWRITTEN)))
def test_agrees_with_pyyaml_handwritten(text):
    _agrees_with_pyyaml(text)


def test_agrees_with_pyyaml_presets_and_examples():
    files = sorted((ROOT / "presets").glob("*.yaml")) + sorted((ROOT / "examples").glob("*.yaml"))
    assert files
    for path in files:
        _agrees_with_pyyaml(read_yaml(path))


def test_agrees_with_pyyaml_generated():
    for text in generated_docs(600):
        _agrees_with_pyyaml(text)


def _gen_data(rnd: random.Random, depth: int, in_list: bool = False) -> object:
    kind = rnd.randrange(6 if depth < 4 else 3)
    if kind == 0:
        return rnd.choice([rnd.randint(-999, 999), rnd.random() * 100, True, False, None])
    if kind <= 2:
        return rnd.choice([_gen_word(rnd), "two words", "yes", "No", "on", "1.5.2", "", "#x",
                           "a: b", "- x", "[x]", "it's", 'q"q', "true", "12", "~", "caf\u00e9"])
    if kind == 3 and not in_list:
        # No list directly inside a list: PyYAML writes those as "- - x", which is MAY.
        return [_gen_data(rnd, depth + 1, True) for _ in range(rnd.randint(0, 3))]
    return {_gen_word(rnd): _gen_data(rnd, depth + 1) for _ in range(rnd.randint(0, 3))}


def test_reads_what_pyyaml_writes():
    for seed in range(300):
        rnd = random.Random(seed)
        data = {_gen_word(rnd): _gen_data(rnd, 0) for _ in range(rnd.randint(1, 4))}
        for flow in (False, True, None):
            text = yaml.safe_dump(data, default_flow_style=flow, width=10_000,
                                  allow_unicode=True, sort_keys=False)
            got = parse_yaml(text)
            assert same(got, data), f"\n{text}\nparse_yaml: {got!r}\nwritten:    {data!r}"


# -- fuzzing: nothing but YAMLError, and only plain data, ever comes out ---------


def _plain_data(value: object) -> bool:
    if value is None or type(value) in (str, int, float, bool):
        return True
    if type(value) is list:
        return all(_plain_data(v) for v in value)
    if type(value) is dict:
        return all(type(k) is str and _plain_data(v) for k, v in value.items())
    return False


def _load_or_error(text: str) -> None:
    try:
        data, keys, values = aethr._yaml_load_marked(text)
    except YAMLError as exc:
        check_error(exc, text)
        return
    assert _plain_data(data)
    nodes, entries = set(), set()
    _walk(data, (), nodes, entries)
    assert nodes <= set(values) and entries <= set(keys)


ALPHABET = st.sampled_from(list("ab:- #\n\n'\"[]{},|>+0123&*!?%@`\t\\.~\r\ufeff\x00\x85\u00e9")
                           + ["  ", "- ", ": ", "---", "...", "\\u", "\\x4", "true", "1e3",
                              "\n  ", "\n- ", "# c\n"])
CONFIGS = [read_yaml(p) for p in sorted((ROOT / "presets").glob("*.yaml"))] + HANDWRITTEN[:12]


@FUZZ
@given(st.lists(ALPHABET, max_size=60).map("".join))
def test_fuzz_random_text(text):
    _load_or_error(text)


@FUZZ
@given(st.lists(ALPHABET | st.integers(0, 0x10FFFF).map(chr), max_size=100).map("".join))
def test_fuzz_any_code_point(text):
    # chr() of any code point, lone surrogates included (st.text() would first build a
    # Unicode table, which takes seconds when Hypothesis cannot cache it between runs).
    _load_or_error(text)


@FUZZ
@given(st.sampled_from(CONFIGS),
       st.lists(st.tuples(st.sampled_from(["insert", "delete", "replace", "swap-lines"]),
                          st.floats(0, 1, exclude_max=True), ALPHABET), min_size=1, max_size=5))
def test_fuzz_mutated_configs(text, edits):
    _load_or_error(mutate(text, edits))

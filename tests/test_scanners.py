"""The hand-written scanners that keep `re` off the common path (SPEC §12), each held to the
regular expression it replaced: YAML plain, single- and double-quoted scalars, document
markers, blank lines, integers and printable text; .env lines and values; the never-read
names (fnmatch); the paths of a `diff --git` line; a step id; the HEAD of git_probe.

The regexes live here, as the definition; random inputs over the characters that matter
must give the same answer from both."""
from __future__ import annotations

import fnmatch
import random
import re

import pytest

import aethr

RUNS = 40_000

PLAIN = re.compile(r"(?:[^ \t:#]|:(?=[^ \t])|(?<! )#| +(?=[^ \t:#]|:[^ \t]))*")
PLAIN_FLOW = re.compile(
    r"(?:[^ \t:#,\[\]{}]|:(?=[^ \t,\[\]{}])|(?<! )#| +(?=[^ \t:#,\[\]{}]|:[^ \t,\[\]{}]))*")
SINGLE = re.compile(r"'(?:[^']|'')*'")
DOUBLE = re.compile(r'"(?:[^"\\]|\\.)*')
BLANK = re.compile(r" *(?:#.*)?")
MARKER = re.compile(r"(?:---|\.\.\.)(?:[ \t]|\Z)")
BAD_CHAR = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x84\x86-\x9f\ud800-\udfff\ufeff\ufffe\uffff]")
DOTENV_LINE = re.compile(r"[ \t]*(?:export[ \t]+)?([A-Za-z_][A-Za-z0-9_]*)[ \t]*=[ \t]*(.*)\Z")
DIFF_GIT = re.compile(r"diff --git a/(.*) b/(.*)\Z")
STEP_ID = re.compile(r"[^\s\x00-\x1f\x7f-\x9f]+\Z")
HEAD = re.compile(r"[0-9a-f]{40,64}")


def _texts(seed: int, alphabet: str | list[str], longest: int = 12):
    rng = random.Random(seed)
    for _ in range(RUNS):
        yield rng, "".join(rng.choice(alphabet) for _ in range(rng.randint(0, longest)))


def test_plain_scalar_end():
    for rng, line in _texts(1, " \t:#,[]{}'\"\\ab-"):
        pos = rng.randint(0, len(line))
        assert aethr._yaml_plain_end(line, pos, False) == PLAIN.match(line, pos).end(), line
        assert aethr._yaml_plain_end(line, pos, True) == PLAIN_FLOW.match(line, pos).end(), line


def test_quoted_scalar_ends():
    for _, text in _texts(2, " '\"\\a#:"):
        line = "'" + text
        m = SINGLE.match(line)
        assert aethr._yaml_single_end(line, 0) == (m.end() if m else -1), line
        line = '"' + text
        assert aethr._yaml_double_end(line, 0) == DOUBLE.match(line).end(), line


def test_blank_lines_and_document_markers():
    for _, line in _texts(3, " \t#-.ab"):
        assert aethr._yaml_blank(line) == bool(BLANK.fullmatch(line)), line
        assert aethr._yaml_marker(line) == bool(MARKER.match(line)), line


def test_printable_text_needs_no_search():
    """The shortcut of _yaml_lines: printable text (tabs and line breaks aside) holds no
    character YAML forbids, so the regex search is only for the rest."""
    alphabet = ["a", " ", "\t", "\n", "\x85", "\xa0", "\u2028", "\ufeff", "\ufffe", "\x7f",
                "\x01", "\ud800", "\U0001f600", "\u200b", "\xad", "é"]
    for _, text in _texts(4, alphabet, 6):
        if text.replace("\t", "").replace("\n", "").isprintable():
            assert BAD_CHAR.search(text) is None, repr(text)
    with pytest.raises(aethr.YAMLError, match="U\\+0001"):
        aethr.parse_yaml("a: b\x01\n")
    assert aethr.parse_yaml("a: b\x85c\n") == {"a": "b\x85c"}


@pytest.mark.parametrize("text,value", [
    ("12", 12), ("+7", 7), ("-0", 0), ("0x1F", 31), ("0o17", 15), ("1.5", 1.5), ("-.5", -0.5),
    ("1e3", 1000.0), (".inf", float("inf")), ("-.Inf", float("-inf")), ("١٢", "١٢"),
    ("12a", "12a"), ("+", "+"), ("-x", "-x"), ("0x", "0x"), ("1_000", "1_000"), ("²", "²"),
    ("openai:gpt-5.5", "openai:gpt-5.5"),
])
def test_plain_scalar_types(text, value):
    assert aethr.parse_yaml(f"k: {text}\n") == {"k": value}


def test_nan_is_a_float():
    value = aethr.parse_yaml("k: .nan\n")["k"]
    assert value != value


def test_dotenv_lines_and_values():
    tokens = [" ", "\t", "export", "=", "A", "b_1", "9", "#", " #", "x", "é", "\r", "'", '"']
    for _, line in _texts(5, tokens, 7):
        m = DOTENV_LINE.match(line)
        assert aethr._dotenv_line(line) == (m.groups() if m else None), line
        if line[:1] not in ("'", '"'):
            expected = re.split(r"[ \t]#", line, maxsplit=1)[0].strip()
            assert aethr._dotenv_value(line) == expected, line


def test_never_read_is_fnmatch():
    names = [".env", ".env.local", ".ENV", "x.pem", ".pem", "key", "a.key.txt", "id_rsa.pub",
             "my_id_rsa", "id_ed25519", ".netrc", "netrc", ".npmrc.bak", ".pypirc", "p12",
             "x.p12", "cert.pfx", ".env.example", "readme.md", ".git"]
    for name in names:
        for path in (name, f"dir/{name}", f"{name}/inner.txt", name.upper()):
            expected = any(
                part == ".git" or (part != ".env.example"
                                   and any(fnmatch.fnmatchcase(part, p) for p in aethr.NEVER_READ))
                for part in path.lower().split("/"))
            assert aethr._never_read(path) == expected, path


def test_hidden_patch_paths_are_the_regex_groups():
    rng = random.Random(6)
    for _ in range(RUNS // 4):
        parts = [rng.choice(["a/", " b/", ".env", "x", " ", '"', "id_rsa", "b/"])
                 for _ in range(rng.randint(0, 6))]
        line = "diff --git " + "".join(parts)
        diff = f"{line}\n--- body\n+secret\n"
        m = DIFF_GIT.match(line)
        hidden = bool(m) and any(aethr._never_read(p.strip('"')) for p in m.groups())
        out = aethr._hide_secret_files(diff)
        assert ("+secret" not in out) == hidden, line
        if hidden:
            assert f"patch of {m.group(2)} not shown" in out


def test_step_ids():
    """Validation accepts a step id exactly when the regex does (the shortcut is for the
    printable ids without spaces, which the regex accepts too)."""
    alphabet = ["a", " ", "\t", "\x01", "\x1f", "\x7f", "\x9f", "\xa0", "\u200b", "\xad", "é",
                "-", "\u3000", "\U0001f600"]
    for _, sid in _texts(7, alphabet, 4):
        if not sid.strip():
            continue
        escaped = sid.encode("unicode_escape").decode("ascii")
        doc = ("workflow: w\nroles:\n  r: x\nmodels:\n  default: openai:m\n"
               f'steps:\n  - id: "{escaped}"\n    role: r\n')
        try:
            aethr.load_workflow(text=doc)
            accepted = True
        except aethr.ConfigError as exc:
            assert "must be one word" in str(exc.problems), (sid, exc.problems)
            accepted = False
        assert accepted == bool(STEP_ID.match(sid)), repr(sid)


def test_probe_head_is_a_hex_object_name(git_repo):
    top, gitdir, head = aethr.git_probe(str(git_repo), {"PATH": aethr.os.environ["PATH"]})
    assert head is not None and HEAD.fullmatch(head)
    assert top == str(git_repo) and gitdir.endswith(".git")

"""Section 6, context sources (SPEC §4): git_diff, git_diff:REV, latest_diff, file:, glob:, cmd:,
caps, placeholders, safety and redaction. Real git in temporary repositories."""
from __future__ import annotations

import json
import os
import re
import signal
import sys
import tempfile
import threading
import time

import pytest
from conftest import git, pid_alive, wait_gone

import aethr

DASH = "\u2014"
ELL = "\u2026"


# -- helpers ---------------------------------------------------------------------------------

def make_workflow(*sources, **step_fields):
    """A one-step workflow whose step declares `sources` (loaded through load_workflow)."""
    lines = ["workflow: ctx", "roles:", "  r: Do the thing.", "steps:", "  - id: s",
             "    role: r", "    context:"]
    lines += [f"      - {json.dumps(s)}" for s in sources]
    lines += [f"    {k}: {v}" for k, v in step_fields.items()]
    return aethr.load_workflow(text="\n".join(lines) + "\n")


def make_step(*sources, **step_fields):
    return make_workflow(*sources, **step_fields).steps[0]


def collect(root, *sources, artifact=None, environ=None, **step_fields):
    project = aethr.Project(str(root), dict(os.environ if environ is None else environ))
    return aethr.collect_context(make_step(*sources, **step_fields), project, artifact)


def body(root, source, **kw):
    (block,) = collect(root, source, **kw)
    assert block.source == source
    return block.body


def user_prompt(root, *sources, artifact=None, environ=None):
    """The rendered user part of a one-step prompt with these context sources."""
    environ = dict(os.environ if environ is None else environ)
    wf = make_workflow(*sources)
    project = aethr.Project(str(root), environ)
    blocks = aethr.collect_context(wf.steps[0], project, artifact)
    return aethr.build_prompt(wf, "the task", wf.steps[0], blocks=blocks,
                              secrets=aethr.secret_values(environ)).user


def heading(user, source):
    """The heading line of the context block for `source` in a rendered prompt."""
    found = [ln for ln in user.splitlines() if ln.startswith("#") and source in ln]
    assert len(found) == 1, (source, found)
    return found[0]


def assert_placeholder(text, source):
    """A one-line note on the source's own line: `[SOURCE — why]`."""
    assert "\n" not in text.strip("\n"), text
    assert re.fullmatch(re.escape(f"[{source} {DASH} ") + r"[^\n]+\]", text.strip("\n")), text


def index_state(repo):
    return (repo / ".git" / "index").read_bytes(), git(repo, "diff", "--cached", "--name-only")


def leftover_indexes():
    tmp = tempfile.gettempdir()
    return [n for n in os.listdir(tmp) if "index" in n]


# -- git_diff --------------------------------------------------------------------------------

def test_git_diff_shows_staged_unstaged_and_untracked_but_not_ignored(git_repo):
    (git_repo / ".gitignore").write_text("*.log\nbuild/\n")
    git(git_repo, "add", ".gitignore")
    git(git_repo, "commit", "-q", "-m", "ignore logs")
    (git_repo / "README.md").write_text("# Demo\n\nA small project.\nUNSTAGED-LINE\n")
    (git_repo / "src" / "app.py").write_text("def add(a, b):\n    return a + b  # STAGED-EDIT\n")
    (git_repo / "staged_new.txt").write_text("STAGED-NEW\n")
    git(git_repo, "add", "src/app.py", "staged_new.txt")
    (git_repo / "untracked.txt").write_text("UNTRACKED-CONTENT\n")
    (git_repo / "debug.log").write_text("IGNORED-LOG\n")
    (git_repo / "build").mkdir()
    (git_repo / "build" / "out.txt").write_text("IGNORED-BUILD\n")
    before = index_state(git_repo)

    text = body(git_repo, "git_diff")

    assert "diff --git a/README.md b/README.md" in text and "+UNSTAGED-LINE" in text
    assert "diff --git a/src/app.py b/src/app.py" in text and "# STAGED-EDIT" in text
    assert "diff --git a/staged_new.txt b/staged_new.txt" in text and "+STAGED-NEW" in text
    untracked = text[text.index("diff --git a/untracked.txt b/untracked.txt"):]
    assert untracked.splitlines()[1].startswith("new file mode"), untracked
    assert "+UNTRACKED-CONTENT" in untracked
    assert "debug.log" not in text and "IGNORED-LOG" not in text
    assert "IGNORED-BUILD" not in text and "build/out.txt" not in text
    # The user's index is untouched, byte for byte; nothing of Aethr's leaks or is left behind.
    assert index_state(git_repo) == before
    assert git(git_repo, "status", "--porcelain").splitlines() == [
        " M README.md", "M  src/app.py", "A  staged_new.txt", "?? untracked.txt"]
    assert "GIT_INDEX_FILE" not in os.environ
    assert leftover_indexes() == []


def test_git_diff_temporary_index_never_reaches_cmd_children(git_repo):
    (git_repo / "new.txt").write_text("x\n")
    blocks = collect(git_repo, "git_diff", 'cmd:echo "idx=[${GIT_INDEX_FILE-unset}]"')
    assert "new.txt" in blocks[0].body
    assert "idx=[unset]" in blocks[1].body


def test_git_diff_repo_without_commit_shows_everything_as_new(tmp_path):
    repo = tmp_path / "fresh"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / ".gitignore").write_text("secret.txt\n")
    (repo / "a.txt").write_text("ALPHA\n")
    (repo / "sub").mkdir()
    (repo / "sub" / "b.txt").write_text("BETA\n")
    (repo / "secret.txt").write_text("HIDDEN\n")
    git(repo, "add", "a.txt")
    before = (repo / ".git" / "index").read_bytes()

    text = body(repo, "git_diff")

    for name, content in (("a.txt", "ALPHA"), ("sub/b.txt", "BETA"), (".gitignore", "secret")):
        part = text[text.index(f"diff --git a/{name} b/{name}"):]
        assert part.splitlines()[1].startswith("new file mode"), part
        assert f"+{content}" in part
    assert "HIDDEN" not in text
    assert (repo / ".git" / "index").read_bytes() == before
    assert leftover_indexes() == []


def test_git_diff_repo_without_commit_and_without_index(tmp_path):
    repo = tmp_path / "fresh"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "only.txt").write_text("ONLY\n")
    text = body(repo, "git_diff")
    assert "diff --git a/only.txt b/only.txt" in text and "+ONLY" in text
    assert not (repo / ".git" / "index").exists()


def test_git_diff_clean_tree_is_the_exact_placeholder(git_repo):
    assert body(git_repo, "git_diff") == f"[git_diff {DASH} no uncommitted changes]"
    user = user_prompt(git_repo, "git_diff")
    assert f"\n[git_diff {DASH} no uncommitted changes]\n" in user


def test_git_diff_outside_git_is_a_placeholder(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "a.txt").write_text("hello\n")
    assert aethr.Project(str(plain), dict(os.environ)).top is None
    text = body(plain, "git_diff")
    assert_placeholder(text, "git_diff")
    assert "git" in text.split(DASH, 1)[1]


def test_git_diff_header_names_the_repository_root(git_repo):
    (git_repo / "README.md").write_text("changed\n")
    line = heading(user_prompt(git_repo, "git_diff"), "git_diff")
    assert "repository root" in line


def test_git_diff_from_a_subdirectory_root_keeps_top_level_paths(git_repo):
    pkg = git_repo / "pkg"
    pkg.mkdir()
    (pkg / "mod.py").write_text("X = 1\n")
    git(git_repo, "add", "pkg")
    git(git_repo, "commit", "-q", "-m", "pkg")
    (pkg / "mod.py").write_text("X = 2\n")
    (git_repo / "README.md").write_text("top-level change\n")

    user = user_prompt(pkg, "git_diff")

    line = heading(user, "git_diff")
    assert "repository root" in line and "pkg/" in line
    assert "diff --git a/pkg/mod.py b/pkg/mod.py" in user
    assert "diff --git a/README.md b/README.md" in user
    assert "a/mod.py" not in user


def test_git_diff_detects_renames(git_repo):
    content = "".join(f"line {i} of a module that moves\n" for i in range(40))
    (git_repo / "old_name.py").write_text(content)
    git(git_repo, "add", "old_name.py")
    git(git_repo, "commit", "-q", "-m", "add")
    os.rename(git_repo / "old_name.py", git_repo / "new_name.py")   # not staged: plain mv
    text = body(git_repo, "git_diff")
    assert "rename from old_name.py" in text and "rename to new_name.py" in text
    assert "deleted file mode" not in text


def test_git_diff_paths_with_spaces_and_non_ascii_are_not_quoted(git_repo):
    (git_repo / "dir with space").mkdir()
    (git_repo / "dir with space" / "naïve ü.txt").write_text("unicode path\n")
    text = body(git_repo, "git_diff")
    assert "+++ b/dir with space/naïve ü.txt" in text
    assert "dir with space/naïve ü.txt | 1 +" in text
    assert '"' not in text and "\\303" not in text


def test_git_diff_ignores_the_users_diff_configuration(git_repo):
    for key, value in (("color.ui", "always"), ("color.diff", "always"),
                       ("diff.noprefix", "true"), ("diff.mnemonicPrefix", "true"),
                       ("core.quotepath", "true"), ("diff.relative", "true"),
                       ("diff.external", "sh -c 'echo EXTERNAL-DIFF-RAN'")):
        git(git_repo, "config", key, value)
    (git_repo / "src" / "app.py").write_text("changed = 'é'\n")
    (git_repo / "ö.txt").write_text("x\n")
    text = body(git_repo, "git_diff")
    assert "diff --git a/src/app.py b/src/app.py" in text
    assert "+++ b/ö.txt" in text
    assert "\x1b[" not in text and "EXTERNAL-DIFF-RAN" not in text


def test_git_diff_over_256_kib_is_cut_with_a_note(git_repo):
    (git_repo / "big.txt").write_text("".join(f"row {i:07d} of a large file\n"
                                              for i in range(20000)))     # ~500 KiB
    text = body(git_repo, "git_diff")
    assert len(text.encode("utf-8")) <= 256 * 1024 + 512
    assert len(text.encode("utf-8")) > 200 * 1024
    note = text.rstrip("\n").splitlines()[-1]
    assert note.startswith(f"[{ELL}") and "git_diff" in note and "256 KiB" in note, note
    assert "row 0000000" in text and "row 0019999" not in text


# -- git_diff:REV ----------------------------------------------------------------------------

def test_git_diff_rev_is_against_the_merge_base(git_repo):
    git(git_repo, "checkout", "-q", "-b", "feature")
    (git_repo / "feature.txt").write_text("FEATURE-COMMITTED\n")
    git(git_repo, "add", "feature.txt")
    git(git_repo, "commit", "-q", "-m", "feature work")
    git(git_repo, "checkout", "-q", "main")
    (git_repo / "main_only.txt").write_text("MAIN-AFTER-BRANCH\n")
    (git_repo / "README.md").write_text("# Demo\n\nMAIN-EDIT\n")
    git(git_repo, "add", "-A")
    git(git_repo, "commit", "-q", "-m", "main moves on")
    git(git_repo, "checkout", "-q", "feature")
    (git_repo / "src" / "app.py").write_text("WORKTREE-EDIT\n")
    (git_repo / "wip.txt").write_text("UNTRACKED-WIP\n")

    user = user_prompt(git_repo, "git_diff:main")
    text = user[user.index(heading(user, "git_diff:main")):]

    assert "+FEATURE-COMMITTED" in text
    assert "+WORKTREE-EDIT" in text and "+UNTRACKED-WIP" in text
    assert "main_only.txt" not in text and "MAIN-EDIT" not in text
    assert "README.md" not in text
    assert "merge-base" in heading(user, "git_diff:main")


def test_git_diff_rev_with_spaces_means_the_same_revision(git_repo, cli):
    # Validation strips the revision ("git_diff: main" is valid); preflight and the context
    # must then look up the same revision, not " main".
    git(git_repo, "checkout", "-q", "-b", "feature")
    (git_repo / "feature.txt").write_text("FEATURE-COMMITTED\n")
    git(git_repo, "add", "feature.txt")
    git(git_repo, "commit", "-q", "-m", "feature work")
    user = user_prompt(git_repo, "git_diff: main ")
    assert "+FEATURE-COMMITTED" in user and "git failed" not in user
    (git_repo / "wf.yaml").write_text("roles:\n  r: Do it.\nsteps:\n  - id: s\n    role: r\n"
                                      "    context: [\"git_diff: main\"]\n")
    res = cli("run", "x", "--workflow", "wf.yaml", "--show-prompt")
    assert res.code == 0, res
    assert "+FEATURE-COMMITTED" in res.out


def test_git_diff_rev_unknown_revision_is_a_preflight_error(git_repo, cli):
    wf = git_repo / "wf.yaml"
    wf.write_text("roles:\n  r: Do it.\nsteps:\n  - id: s\n    role: r\n"
                  "    context: [\"cmd:touch ran.marker\", \"git_diff:no-such-branch\"]\n")
    res = cli("run", "x", "--workflow", "wf.yaml")
    assert res.code == 2, res
    assert "no-such-branch" in res.err
    assert res.err.rstrip("\n").splitlines()[-1].startswith("aethr: error: ")
    assert res.out == ""
    assert not (git_repo / "ran.marker").exists()
    assert "Traceback" not in res.err


def test_git_diff_rev_unknown_revision_subprocess(git_repo, run_aethr):
    (git_repo / "wf.yaml").write_text("roles:\n  r: Do it.\nsteps:\n  - id: s\n    role: r\n"
                                      "    context: [\"git_diff:origin/nope\"]\n")
    res = run_aethr("run", "x", "--workflow", "wf.yaml", cwd=git_repo)
    assert res.code == 2, res
    assert "origin/nope" in res.err and res.out == ""
    assert "Traceback" not in res.err


# -- latest_diff -----------------------------------------------------------------------------

def test_latest_diff_without_artifact_is_the_exact_placeholder(git_repo):
    assert body(git_repo, "latest_diff") == f"[latest_diff {DASH} no implementation artifact yet]"


def test_latest_diff_shows_files_stat_and_patch(git_repo):
    art = aethr.Artifact(
        files=[("M", "src/app.py", None), ("A", "docs/new.md", None),
               ("R", "lib/renamed.py", "lib/original.py")],
        stat=" src/app.py | 2 +-\n docs/new.md | 1 +\n 3 files changed, 2 insertions(+)\n",
        patch="diff --git a/src/app.py b/src/app.py\n--- a/src/app.py\n+++ b/src/app.py\n"
              "@@ -1 +1 @@\n-old\n+PATCH-MARKER\n")
    text = body(git_repo, "latest_diff", artifact=art)
    for name in ("src/app.py", "docs/new.md", "lib/renamed.py", "lib/original.py"):
        assert name in text
    assert " src/app.py | 2 +-" in text and "3 files changed, 2 insertions(+)" in text
    assert "+PATCH-MARKER" in text
    assert text.index("docs/new.md") < text.index("3 files changed") < text.index("+PATCH-MARKER")


# -- file: -----------------------------------------------------------------------------------

def test_file_reads_utf8_relative_to_the_project_root(git_repo):
    (git_repo / "docs").mkdir()
    (git_repo / "docs" / "guide.md").write_text("Grüße ✓ 你好\nsecond line\n", encoding="utf-8")
    text = body(git_repo, "file:docs/guide.md")
    assert text.rstrip("\n") == "Grüße ✓ 你好\nsecond line"
    assert "relative to the project root" in heading(user_prompt(git_repo, "file:docs/guide.md"),
                                                     "file:docs/guide.md")


def test_file_is_relative_to_a_subdirectory_project_root(git_repo):
    (git_repo / "notes.txt").write_text("TOP-LEVEL NOTES\n")
    (git_repo / "pkg").mkdir()
    (git_repo / "pkg" / "notes.txt").write_text("PACKAGE NOTES\n")
    assert body(git_repo / "pkg", "file:notes.txt").rstrip("\n") == "PACKAGE NOTES"


def test_file_not_found_is_the_exact_placeholder(git_repo):
    assert body(git_repo, "file:docs/x.md") == f"[file:docs/x.md {DASH} not found]"


@pytest.mark.parametrize("name,data", [
    ("blob.bin", b"BINARY-SENTINEL\x00\x01\x02 more"),
    ("latin1.txt", b"caf\xe9 LATIN1-SENTINEL\n"),
    ("empty.txt", b""),
])
def test_file_unreadable_kinds_are_placeholders(git_repo, name, data):
    (git_repo / name).write_bytes(data)
    text = body(git_repo, f"file:{name}")
    assert_placeholder(text, f"file:{name}")
    assert "SENTINEL" not in text


def test_file_kinds_get_distinct_notes(git_repo):
    (git_repo / "blob.bin").write_bytes(b"\x00\x01")
    (git_repo / "latin1.txt").write_bytes(b"caf\xe9\n")
    (git_repo / "empty.txt").write_bytes(b"")
    notes = {body(git_repo, f"file:{n}") for n in ("blob.bin", "latin1.txt", "empty.txt", "src",
                                                    "missing.txt")}
    whys = {n.split(DASH, 1)[1] for n in notes}
    assert len(whys) == 5, notes


def test_file_directory_is_a_placeholder(git_repo):
    assert_placeholder(body(git_repo, "file:src"), "file:src")


def test_file_fifo_is_refused_without_hanging(git_repo):
    fifo = git_repo / "pipe"
    os.mkfifo(fifo)
    result = []
    worker = threading.Thread(target=lambda: result.append(body(git_repo, "file:pipe")),
                              daemon=True)
    worker.start()
    worker.join(10)
    if worker.is_alive():       # unblock a reader stuck in open() before failing
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        worker.join(5)
        pytest.fail("file: on a FIFO blocked")
    assert_placeholder(result[0], "file:pipe")


def test_file_symlink_outside_the_root_is_refused(git_repo, tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("OUTSIDE-SECRET\n")
    os.symlink(outside, git_repo / "link.txt")
    text = body(git_repo, "file:link.txt")
    assert_placeholder(text, "file:link.txt")
    assert "OUTSIDE-SECRET" not in text


def test_file_through_a_symlinked_directory_outside_the_root_is_refused(git_repo, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "notes.txt").write_text("OUTSIDE-DIR-SECRET\n")
    os.symlink(outside, git_repo / "linked")
    text = body(git_repo, "file:linked/notes.txt")
    assert_placeholder(text, "file:linked/notes.txt")
    assert "OUTSIDE-DIR-SECRET" not in text


def test_file_symlink_to_a_never_read_file_is_refused(git_repo):
    (git_repo / ".env").write_text("API=ENV-SENTINEL\n")
    os.symlink(".env", git_repo / "innocent.txt")
    text = body(git_repo, "file:innocent.txt")
    assert_placeholder(text, "file:innocent.txt")
    assert "ENV-SENTINEL" not in text


def test_file_ignored_by_git_is_refused(git_repo):
    (git_repo / ".gitignore").write_text("local-notes.txt\n")
    (git_repo / "local-notes.txt").write_text("IGNORED-SENTINEL\n")
    text = body(git_repo, "file:local-notes.txt")
    assert_placeholder(text, "file:local-notes.txt")
    assert "IGNORED-SENTINEL" not in text


NEVER_READ = [".env", ".env.local", ".ENV", "x.pem", "server.key", "id_rsa", "id_ed25519.pub",
              ".netrc", ".npmrc", ".pypirc", "cert.P12", "store.pfx", "config/.env.production"]


@pytest.mark.parametrize("name", NEVER_READ)
def test_file_never_reads_secret_files(git_repo, name):
    path = git_repo / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"NEVER-READ-SENTINEL {name}\n")
    git(git_repo, "add", "-f", name)       # tracked, so git's ignore rules play no part
    text = body(git_repo, f"file:{name}")
    assert_placeholder(text, f"file:{name}")
    assert "SENTINEL" not in text


def test_file_never_reads_inside_dot_git(git_repo):
    git(git_repo, "config", "user.signingkey", "GITCONFIG-SENTINEL")
    text = body(git_repo, "file:.git/config")
    assert_placeholder(text, "file:.git/config")
    assert "GITCONFIG-SENTINEL" not in text


def test_file_env_example_is_read(git_repo):
    (git_repo / ".env.example").write_text("# OPENAI_API_KEY=\n")
    assert body(git_repo, "file:.env.example").rstrip("\n") == "# OPENAI_API_KEY="


def test_file_over_64_kib_is_cut_with_a_note_naming_file_and_size(git_repo):
    line = "0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstu\n"   # 70 bytes
    data = (line * (1_200_000 // 70 + 1))[:1_200_000]
    (git_repo / "big.txt").write_text(data)
    text = body(git_repo, "file:big.txt")
    assert text.rstrip("\n").endswith(f"[{ELL} big.txt: 1.2 MB, first 64 KiB shown]"), text[-200:]
    shown = text.rstrip("\n").rsplit("\n", 1)[0]
    assert data.startswith(shown)
    assert 60 * 1024 < len(shown.encode()) <= 64 * 1024


@pytest.mark.parametrize("char", ["é", "€", "😀"])
def test_file_multibyte_character_cut_at_the_cap_is_still_utf8(git_repo, char):
    data = "a" * (64 * 1024 - 1) + char * 200
    (git_repo / "wide.txt").write_text(data, encoding="utf-8")
    text = body(git_repo, "file:wide.txt")
    assert text.startswith("a" * 1000), text[:100]
    assert "wide.txt" in text.rstrip("\n").splitlines()[-1]
    assert "\ufffd" not in text


# -- glob: -----------------------------------------------------------------------------------

GLOB_TABLE = [
    ("*.py", "a.py", True),
    ("*.py", "src/a.py", False),
    ("src/*.py", "src/a.py", True),
    ("src/*.py", "src/sub/a.py", False),
    ("*", "a/b", False),
    ("*", ".hidden", True),
    ("?.py", "a.py", True),
    ("?.py", "ab.py", False),
    ("a?c", "a/c", False),
    ("a?c", "abc", True),
    ("[ab].txt", "a.txt", True),
    ("[ab].txt", "c.txt", False),
    ("[!ab].txt", "c.txt", True),
    ("[!ab].txt", "a.txt", False),
    ("x[!a]y", "x/y", False),
    ("[a-c]?.md", "b1.md", True),
    ("[a-c]?.md", "d1.md", False),
    ("**/*.py", "a.py", True),
    ("**/*.py", "src/a.py", True),
    ("**/*.py", "src/deep/er/a.py", True),
    ("**/*.py", "src/a.pyc", False),
    ("src/**/*.py", "src/a.py", True),
    ("src/**/*.py", "src/x/y/a.py", True),
    ("src/**/*.py", "lib/src/a.py", False),
    ("a/**/b", "a/b", True),
    ("a/**/b", "a/x/y/b", True),
    ("a/**/b", "a/xb", False),
    ("src/**", "src/a/b.txt", True),
    ("src/**", "lib/a.txt", False),
    ("**", "a/b/c", True),
    ("**/*.md", ".github/x.md", True),
    (".github/*", ".github/ci.yml", True),
    ("*.PY", "a.py", False),
    ("*.py", "A.PY", False),
    ("README.md", "readme.md", False),
    ("{a,b}.txt", "a.txt", False),
    ("{a,b}.txt", "{a,b}.txt", True),
    ("a.b", "axb", False),
    ("a+b(1).txt", "a+b(1).txt", True),
    ("docs/*.md", "docs/x.md/extra", False),
    ("docs", "docs/x.md", False),
]


@pytest.mark.parametrize("pattern,path,expected", GLOB_TABLE)
def test_glob_translation(pattern, path, expected):
    assert bool(aethr._glob_regex(pattern).fullmatch(path)) is expected


@pytest.mark.parametrize("pattern", ["**a", "src/**.py", "a**/b"])
def test_glob_double_star_inside_a_component_is_rejected(pattern):
    with pytest.raises(ValueError):
        aethr._glob_regex(pattern)
    with pytest.raises(aethr.ConfigError) as info:
        make_step(f"glob:{pattern}")
    assert len(info.value.problems) == 1


def test_glob_candidates_come_from_git(git_repo):
    (git_repo / ".gitignore").write_text("data/skip.txt\n")
    (git_repo / "data").mkdir()
    (git_repo / "data" / "keep.txt").write_text("KEEP-TRACKED\n")
    git(git_repo, "add", "-A")
    git(git_repo, "commit", "-q", "-m", "data")
    (git_repo / "data" / "new.txt").write_text("NEW-UNTRACKED\n")
    (git_repo / "data" / "skip.txt").write_text("SKIP-IGNORED\n")
    text = body(git_repo, "glob:data/*.txt")
    assert "KEEP-TRACKED" in text and "NEW-UNTRACKED" in text
    assert "SKIP-IGNORED" not in text and "skip.txt" not in text


def test_glob_relative_to_a_subdirectory_project_root(git_repo):
    (git_repo / "pkg").mkdir()
    (git_repo / "pkg" / "mod.py").write_text("PKG-MOD\n")
    (git_repo / "pkg" / "sub").mkdir()
    (git_repo / "pkg" / "sub" / "deep.py").write_text("PKG-DEEP\n")
    text = body(git_repo / "pkg", "glob:*.py")
    assert "PKG-MOD" in text and "mod.py" in text
    assert "PKG-DEEP" not in text and "return a + b" not in text     # src/app.py is outside
    assert "PKG-DEEP" in body(git_repo / "pkg", "glob:**/*.py")
    user = user_prompt(git_repo / "pkg", "glob:*.py")
    assert "relative to the project root" in heading(user, "glob:*.py")


def test_glob_outside_git_walks_the_directory_skipping_dot_git(tmp_path):
    root = tmp_path / "plain"
    (root / "sub").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / ".git" / "notes.txt").write_text("DOT-GIT-SENTINEL\n")
    (root / "a.txt").write_text("PLAIN-A\n")
    (root / "sub" / "b.txt").write_text("PLAIN-B\n")
    (root / ".hidden.txt").write_text("PLAIN-HIDDEN\n")
    assert aethr.Project(str(root), dict(os.environ)).top is None
    text = body(root, "glob:**/*.txt")
    assert "PLAIN-A" in text and "PLAIN-B" in text and "PLAIN-HIDDEN" in text
    assert "DOT-GIT-SENTINEL" not in text


def test_glob_results_are_sorted_by_path(git_repo):
    for name in ("c.txt", "a.txt", "b/x.txt", "B.txt", "a-b.txt"):
        (git_repo / name).parent.mkdir(exist_ok=True)
        (git_repo / name).write_text(f"content of {name}\n")
    text = body(git_repo, "glob:**/*.txt")
    order = ["c.txt", "a.txt", "b/x.txt", "B.txt", "a-b.txt"]
    positions = {n: text.index(f"content of {n}") for n in order}
    assert sorted(order, key=positions.get) == sorted(order)


def test_glob_shows_at_most_40_files_and_says_how_many_were_left_out(git_repo):
    (git_repo / "many").mkdir()
    for i in range(45):
        (git_repo / "many" / f"f{i:02d}.txt").write_text(f"FILE-{i:02d}\n")
    text = body(git_repo, "glob:many/*.txt")
    shown = re.findall(r"FILE-(\d\d)", text)
    assert shown == [f"{i:02d}" for i in range(40)]
    notes = [ln for ln in text.splitlines() if ln.startswith(f"[{ELL}")]
    assert len(notes) == 1 and re.search(r"(?<![\d.])5(?![\d.])", notes[0]), notes


def test_glob_shows_at_most_160_kib(git_repo):
    (git_repo / "big").mkdir()
    chunk = "y" * 99 + "\n"
    for i in range(5):
        (git_repo / "big" / f"part{i}.txt").write_text(f"PART-{i}\n" + chunk * 600)   # ~60 KiB
    text = body(git_repo, "glob:big/*.txt")
    assert len(text.encode("utf-8")) <= 160 * 1024 + 1024
    assert "PART-0" in text and "PART-1" in text
    assert "PART-3" not in text and "PART-4" not in text
    notes = [ln for ln in text.splitlines() if ln.startswith(f"[{ELL}")]
    assert any("160 KiB" in n for n in notes), notes
    assert any(re.search(r"(?<![\d.])2(?![\d.])", n) for n in notes), notes


def test_glob_without_match_is_a_placeholder(git_repo):
    assert_placeholder(body(git_repo, "glob:*.nothing"), "glob:*.nothing")


def test_glob_notes_binary_and_never_read_files_instead_of_showing_them(git_repo, tmp_path):
    (git_repo / "assets").mkdir()
    (git_repo / "assets" / "a.txt").write_text("TEXT-A\n")
    (git_repo / "assets" / "b.bin").write_bytes(b"BIN-SENTINEL\x00\x00\x01")
    (git_repo / "assets" / ".env").write_text("ENV-SENTINEL\n")
    outside = tmp_path / "outside.txt"
    outside.write_text("OUTSIDE-SENTINEL\n")
    os.symlink(outside, git_repo / "assets" / "link.txt")
    text = body(git_repo, "glob:assets/*")
    assert "TEXT-A" in text
    assert "SENTINEL" not in text
    assert any("b.bin" in ln and ln.startswith("[") for ln in text.splitlines()), text


# -- cmd: ------------------------------------------------------------------------------------

def test_cmd_captures_exit_status_stdout_and_stderr(git_repo):
    text = body(git_repo, "cmd:printf 'OUT-LINE\\n'; printf 'ERR-LINE\\n' >&2; exit 3")
    assert "OUT-LINE" in text and "ERR-LINE" in text
    assert re.search(r"exit status:? 3\b", text), text


def test_cmd_runs_in_the_project_root(git_repo):
    (git_repo / "pkg").mkdir()
    text = body(git_repo / "pkg", "cmd:pwd -P")
    assert os.path.realpath(git_repo / "pkg") in text.splitlines()


def test_cmd_output_is_decoded_with_replacement(git_repo):
    text = body(git_repo, "cmd:printf 'caf\\351 ok\\n'")
    assert "caf\ufffd ok" in text


def test_cmd_output_over_64_kib_keeps_head_and_tail(git_repo):
    text = body(git_repo, "cmd:seq 1 100000")          # ~575 KiB on stdout
    lines = text.splitlines()
    assert "1" in lines and "2" in lines and "100000" in lines
    assert "50000" not in lines
    assert any(ln.startswith(f"[{ELL}") for ln in lines), text[:2000]
    assert len(text.encode("utf-8")) <= 64 * 1024 + 2048


def test_cmd_timeout_kills_the_whole_process_group(git_repo):
    pidfile = git_repo / "grandchild.pid"
    started = time.monotonic()
    text = body(git_repo, "cmd:sleep 30 & echo $! > grandchild.pid; sleep 30", timeout=2)
    elapsed = time.monotonic() - started
    pid = int(pidfile.read_text())
    try:
        assert wait_gone(pid), "the background grandchild survived the timeout"
    finally:
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
    assert elapsed < 10
    source = "cmd:sleep 30 & echo $! > grandchild.pid; sleep 30"
    notes = [ln for ln in text.splitlines() if ln.startswith(f"[{source} {DASH} ")]
    assert len(notes) == 1 and "timed out" in notes[0] and notes[0].endswith("]"), text


# -- redaction -------------------------------------------------------------------------------

SECRETS = {
    "OPENAI_API_KEY": "sk-openai-0123456789",
    "FOO_API_KEY": "foo-key-abcdefgh",
    "GH_TOKEN": "ghp_tokentokentoken",
    "APP_SECRET": "app-secret-value-42",
    "EXACT_TOKEN": "8charsXX",              # exactly 8 characters: redacted
}
SHORT = {"SHORT_TOKEN": "short7x", "TINY_SECRET": "1234567"}


def test_secret_values():
    found = aethr.secret_values({**SECRETS, **SHORT, "HOME": "/home/somebody/long",
                                 "ANTHROPIC_AUTH_TOKEN": "anthropic-bearer"})
    assert set(found) == set(SECRETS.values()) | {"anthropic-bearer"}


def _secret_repo(repo):
    (repo / "config.txt").write_text(
        "".join(f"{k}={v}\n" for k, v in {**SECRETS, **SHORT}.items()))
    git(repo, "add", "config.txt")
    git(repo, "commit", "-q", "-m", "config")
    (repo / "wf.yaml").write_text(
        "roles:\n  r: Use the keys.\nsteps:\n  - id: s\n    role: r\n"
        "    context: [\"file:config.txt\", \"cmd:echo cmd-saw-$GH_TOKEN\"]\n")
    return "use " + " and ".join(list(SECRETS.values()) + list(SHORT.values()))


def _assert_redacted(out):
    for value in SECRETS.values():
        assert value not in out
    for value in SHORT.values():
        assert value in out
    assert out.count("[redacted]") >= 2 * len(SECRETS) + 1
    assert "cmd-saw-[redacted]" in out
    assert "FOO_API_KEY=[redacted]" in out


def test_secret_values_are_redacted_in_prompts(git_repo, cli):
    task = _secret_repo(git_repo)
    res = cli("run", task, "--show-prompt", "--workflow", "wf.yaml", env={**SECRETS, **SHORT})
    assert res.code == 0, res
    _assert_redacted(res.out)
    for value in SECRETS.values():
        assert value not in res.err


def test_secret_values_are_redacted_subprocess(git_repo, run_aethr):
    task = _secret_repo(git_repo)
    res = run_aethr("run", task, "--show-prompt", "--workflow", "wf.yaml", cwd=git_repo,
                    env={**SECRETS, **SHORT})
    assert res.code == 0, res
    _assert_redacted(res.out)


def test_redaction_of_overlapping_values_leaves_no_residue(git_repo):
    environ = dict(os.environ, SHORTER_TOKEN="abcdefgh", LONGER_TOKEN="abcdefgh-tail-999")
    (git_repo / "notes.md").write_text("a=abcdefgh-tail-999 b=abcdefgh\n")
    user = user_prompt(git_repo, "file:notes.md", environ=environ)
    assert "a=[redacted] b=[redacted]" in user
    assert "tail-999" not in user and "abcdefgh" not in user


def test_redaction_in_build_prompt(git_repo):
    environ = dict(os.environ, **SECRETS)
    (git_repo / "notes.md").write_text(f"token {SECRETS['GH_TOKEN']} inside\n")
    user = user_prompt(git_repo, "file:notes.md", "git_diff", environ=environ)
    assert SECRETS["GH_TOKEN"] not in user
    assert "token [redacted] inside" in user
    assert "+token [redacted] inside" in user         # the untracked file in git_diff too


# -- secrets that straddle a cap are redacted whole ------------------------------------------

SECRET = "sk-straddle-0123456789abcdef"


def _straddling_step(source, timeout=None):
    extra = f"\n    timeout: {timeout}" if timeout else ""
    wf = aethr.load_workflow(text=(
        "roles:\n  r: x\nsteps:\n  - id: s\n    role: r\n"
        f"    context: [\"{source}\"]{extra}\n"))
    return wf.steps[0]


def test_file_cut_at_the_cap_never_leaves_part_of_a_secret(git_repo):
    # The secret starts 10 bytes before the 64 KiB cap: no prefix of it may reach the prompt.
    cap = aethr.FILE_CAP
    (git_repo / "big.txt").write_text("a" * (cap - 10) + SECRET + "b" * 100)
    env = dict(os.environ, OPENAI_API_KEY=SECRET)
    project = aethr.Project(str(git_repo), env)
    body = aethr.collect_context(_straddling_step("file:big.txt"), project)[0].body
    assert SECRET[:10] not in body
    assert "[redacted]"[:10] in body or "[redac" in body


def test_cmd_output_head_and_tail_never_leave_part_of_a_secret(git_repo):
    half = aethr.CMD_CAP // 4      # stdout gets half the command's cap, split into head and tail
    script = git_repo / "emit.py"
    script.write_text(
        "import sys\n"
        f"sys.stdout.write('a' * {half - 5} + {SECRET!r} + 'b' * 200000 + {SECRET!r} + 'c' * 7)\n")
    env = dict(os.environ, XAI_API_KEY=SECRET)
    project = aethr.Project(str(git_repo), env)
    step = _straddling_step(f"cmd:{sys.executable} emit.py")
    body = aethr.collect_context(step, project)[0].body
    assert "first and last" in body
    for n in (6, 8, 12):
        assert SECRET[:n] not in body and SECRET[-n:] not in body


def test_cmd_output_cap_is_shared_by_stdout_and_stderr(git_repo):
    script = git_repo / "both.py"
    script.write_text("import sys\n"
                      "sys.stdout.write('o' * 200000)\nsys.stderr.write('e' * 200000)\n")
    project = aethr.Project(str(git_repo), dict(os.environ))
    step = _straddling_step(f"cmd:{sys.executable} both.py")
    body = aethr.collect_context(step, project)[0].body
    assert body.count("o") + body.count("e") <= aethr.CMD_CAP + 64
    assert body.count("o") > 1000 and body.count("e") > 1000


@pytest.mark.parametrize("pattern, path, expected", [
    ("src/[!]]", "src/a", True),
    ("src/[!]]", "src/]", False),
    ("src/[]]", "src/]", True),
    ("[]a]", "a", True),
    ("./src/*.py", "src/x.py", True),
    ("x[\\]", "x\\", True),
])
def test_glob_brackets_and_leading_dot_slash(pattern, path, expected):
    assert bool(aethr._glob_regex(pattern).match(path)) is expected


def test_glob_unclosed_bracket_is_rejected():
    for pattern in ("src/[!]", "["):
        with pytest.raises(ValueError, match="without a closing"):
            aethr._glob_regex(pattern)


def test_git_diff_never_shows_the_patch_of_a_secret_file(git_repo):
    (git_repo / ".env").write_text("DB_PASSWORD=plainsecretvalue\n")
    (git_repo / "server.pem").write_text("-----BEGIN PRIVATE KEY-----\nabc\n")
    (git_repo / ".env.example").write_text("DB_PASSWORD=changeme\n")
    (git_repo / "ok.txt").write_text("fine\n")
    wf = aethr.load_workflow(text="roles:\n  r: x\nsteps:\n  - id: s\n    role: r\n"
                                  "    context: [git_diff]\n")
    project = aethr.Project(str(git_repo), dict(os.environ))
    body = aethr.collect_context(wf.steps[0], project)[0].body
    assert "plainsecretvalue" not in body
    assert "BEGIN PRIVATE KEY" not in body
    assert "patch of .env not shown" in body and "patch of server.pem not shown" in body
    assert "DB_PASSWORD=changeme" in body and "+fine" in body

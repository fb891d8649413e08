"""§11 Environment: `.env` parsing and loading, key masking, the `.env` writer, and the
`auth login|status|logout` commands and live preflight that use them (SPEC §2, §4, §11).

Live model calls are not testable yet: the live tests assert only the key-related preflight
problems, never the "not available yet" text. Most CLI tests run main() in-process through the
`cli` fixture; every flow also runs once as a real `python3 aethr.py …` subprocess (`run_aethr`)."""
from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

import pytest
from conftest import DATA, git, reader_workflow
from loopback import Reply

import aethr

KEY = "sk-test-abcdefghijkl"
MASKED = "sk-\u2026ijkl"
OTHER_KEY = "sk-other-zyxwvutsrq9876"
PROVIDERS = ("openai", "anthropic", "gemini", "openrouter", "xai")
READER = reader_workflow("reader")


# -- helpers ----------------------------------------------------------------------------------

def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def warnings_in(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("aethr: warning: ")]


def project_at(root: Path, **environ: str) -> aethr.Project:
    env = dict(os.environ)
    env.update(environ)
    return aethr.Project(str(root), env)


def status_lines(out: str) -> dict[str, str]:
    """`auth status` output -> {provider: the rest of its line}; asserts one line each."""
    rows = {}
    for line in out.splitlines():
        name, _, rest = line.partition(" ")
        assert name not in rows, out
        rows[name] = rest.strip()
    assert list(rows) == [*PROVIDERS, "ollama"], out
    return rows


def nested_project(git_repo: Path) -> tuple[Path, Path]:
    """repo/pkg holds .aethr.yaml and the .env that counts; decoys at repo/ and repo/pkg/sub."""
    pkg = git_repo / "pkg"
    sub = pkg / "sub"
    sub.mkdir(parents=True)
    (pkg / ".aethr.yaml").write_text(READER)
    (pkg / "notes.md").write_text("notes\n")
    (git_repo / ".gitignore").write_text(".env\n")
    (git_repo / ".env").write_text("AETHR_MODEL=anthropic:decoy-repo-top\n")
    (sub / ".env").write_text("AETHR_MODEL=openrouter:decoy-cwd\n")
    (pkg / ".env").write_text("AETHR_MODEL=xai:grok-from-dotenv\n")
    return pkg, sub


def assert_no_decoy(text: str) -> None:
    assert "decoy" not in text, text


# == env_bool, wants_live, AUTH_VARS ==========================================================

def test_wants_live_reads_the_merged_environment():
    env = aethr.Env({"AETHR_LIVE": "1"})
    assert aethr.wants_live(False, {}, env) is True
    assert aethr.wants_live(False, {}, aethr.Env({"AETHR_MODEL": "openai:gpt-5.5"})) is True
    assert aethr.wants_live(False, {}, aethr.Env({"AETHR_LIVE": "off"})) is False
    with pytest.raises(aethr.UsageError, match="AETHR_LIVE must be a boolean"):
        aethr.wants_live(False, {}, aethr.Env({"AETHR_LIVE": "maybe"}))


def test_auth_vars_name_one_variable_per_provider():
    assert aethr.AUTH_VARS == {
        "openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY",
        "gemini": "GOOGLE_API_KEY", "google": "GOOGLE_API_KEY",
        "openrouter": "OPENROUTER_API_KEY", "xai": "XAI_API_KEY"}


# == Env, parse_dotenv ========================================================================

def test_env_is_a_dict_that_remembers_dotenv_names():
    env = aethr.Env({"A": "1"})
    assert env == {"A": "1"} and env.dotenv == set()


def test_parse_key_value_and_export():
    assert aethr.parse_dotenv("A=1\nexport B=two\nexport\tC=3\n") == (
        {"A": "1", "B": "two", "C": "3"}, [])


def test_parse_spaces_around_equals():
    text = "A = 1\n  export   B\t=\tx y  \nC=a=b\nD=\n"
    assert aethr.parse_dotenv(text) == ({"A": "1", "B": "x y", "C": "a=b", "D": ""}, [])


def test_parse_single_quotes_are_literal():
    text = ("A='x # y'\n"
            "B='a\\nb'\n"
            "C='$HOME \"q\"'\n"
            "D='v' # a comment after the quote\n"
            "E=''\n")
    assert aethr.parse_dotenv(text) == (
        {"A": "x # y", "B": "a\\nb", "C": '$HOME "q"', "D": "v", "E": ""}, [])


def test_parse_double_quotes_take_escapes():
    text = ('A="l1\\nl2"\n'
            'B="say \\"hi\\""\n'
            'C="back\\\\slash"\n'
            'D="a # b"\n'
            'E="v"   # a comment after the quote\n'
            "F=\"it's\"\n")
    assert aethr.parse_dotenv(text) == (
        {"A": "l1\nl2", "B": 'say "hi"', "C": "back\\slash", "D": "a # b", "E": "v",
         "F": "it's"}, [])


def test_parse_unquoted_values_drop_a_spaced_comment_only():
    text = ("A=value # comment\n"
            "B=a#b\n"
            "C=http://host/path#frag\n"
            "D=v\t# after a tab\n"
            "E=   padded   \n"
            "F=it's\n")
    assert aethr.parse_dotenv(text) == (
        {"A": "value", "B": "a#b", "C": "http://host/path#frag", "D": "v", "E": "padded",
         "F": "it's"}, [])


def test_parse_skips_blank_and_comment_lines():
    text = "\n   \n# a comment\n   # indented = comment\n#X=1\nA=1\n\t\n"
    assert aethr.parse_dotenv(text) == ({"A": "1"}, [])


def test_parse_crlf():
    text = "A=1\r\nB='two'\r\nC=\"3\" # c\r\n\r\nbad line\r\nD=x # y\r\n"
    assert aethr.parse_dotenv(text) == ({"A": "1", "B": "two", "C": "3", "D": "x"}, [5])


def test_parse_reports_invalid_lines_by_number():
    text = ("OK=1\n"
            "no equals sign\n"
            "A='unclosed\n"
            'B="unclosed\n'
            "C='x' trailing\n"
            'D="x"y\n'
            "1BAD=1\n"
            "A.B=1\n"
            "export\n"
            "LAST=2\n")
    values, bad = aethr.parse_dotenv(text)
    assert values == {"OK": "1", "LAST": "2"}
    assert bad == [2, 3, 4, 5, 6, 7, 8, 9]


def test_parse_counts_lines_by_line_breaks_only():
    # U+2028 inside a quoted value is part of the value, not a line break: line 3 is the bad one.
    text = "A='x\u2028y'\nB=2\nbad\n"
    assert aethr.parse_dotenv(text) == ({"A": "x\u2028y", "B": "2"}, [3])


# == load_dotenv ==============================================================================

def test_load_dotenv_merges_under_the_environment(tmp_path):
    (tmp_path / ".env").write_text("A=from-dotenv\nB=only-in-dotenv\n")
    env, warnings = aethr.load_dotenv(project_at(tmp_path, A="from-environment"))
    assert warnings == []
    assert env["A"] == "from-environment"
    assert env["B"] == "only-in-dotenv"
    assert env.dotenv == {"B"}
    assert "B" not in os.environ          # the process environment is never changed


def test_load_dotenv_without_a_file(tmp_path):
    env, warnings = aethr.load_dotenv(project_at(tmp_path, A="1"))
    assert warnings == [] and env.dotenv == set()
    assert env == dict(os.environ, A="1")


def test_load_dotenv_untracked_file_in_a_repo_is_loaded(git_repo):
    (git_repo / ".gitignore").write_text(".env\n")
    (git_repo / ".env").write_text("AETHR_LIVE=1\n")
    env, warnings = aethr.load_dotenv(project_at(git_repo))
    assert warnings == [] and env["AETHR_LIVE"] == "1" and env.dotenv == {"AETHR_LIVE"}


@pytest.mark.parametrize("commit", [True, False], ids=["committed", "staged"])
def test_load_dotenv_skips_a_tracked_file(git_repo, commit):
    (git_repo / ".env").write_text("AETHR_LIVE=1\nOPENAI_BASE_URL=https://attacker.invalid\n")
    git(git_repo, "add", ".env")
    if commit:
        git(git_repo, "commit", "-q", "-m", "oops")
    env, warnings = aethr.load_dotenv(project_at(git_repo))
    assert "AETHR_LIVE" not in env and "OPENAI_BASE_URL" not in env and env.dotenv == set()
    assert len(warnings) == 1
    assert "tracked" in warnings[0] and "not loaded" in warnings[0]


def test_load_dotenv_names_bad_lines_never_their_content(tmp_path):
    (tmp_path / ".env").write_text("A=1\nsk-secret-zzzzzzzz pasted alone\nB='open\n")
    env, warnings = aethr.load_dotenv(project_at(tmp_path))
    assert env["A"] == "1" and env.dotenv == {"A"}
    assert len(warnings) == 2
    # The .env is named relative to the current directory, so it is clear which one it is.
    shown = os.path.relpath(tmp_path / ".env")
    assert warnings[0].startswith(f"{shown}:2:") and warnings[1].startswith(f"{shown}:3:")
    joined = "\n".join(warnings)
    assert "sk-secret" not in joined and "pasted" not in joined and "open" not in joined


def test_load_dotenv_that_is_not_utf8_is_skipped_with_a_warning(tmp_path):
    (tmp_path / ".env").write_bytes(b"# caf\xe9\nA=1\n")
    env, warnings = aethr.load_dotenv(project_at(tmp_path))
    assert "A" not in env and len(warnings) == 1 and "not loaded" in warnings[0]


# == mask =====================================================================================

def test_mask_keeps_three_leading_and_four_trailing_characters():
    assert aethr.mask(KEY) == MASKED
    assert aethr.mask("sk-ant-api03-0123456789abcd") == "sk-\u2026abcd"


@pytest.mark.parametrize("value", ["", "Q", "QRSTUVW", "QRSTUVWXYZ"])
def test_mask_hides_short_values_entirely(value):
    masked = aethr.mask(value)
    assert not any(c in masked for c in value), masked


def test_mask_never_shows_the_whole_value():
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    for n in range(1, len(alphabet) + 1):
        value = alphabet[:n]
        masked = aethr.mask(value)
        assert value not in masked
        assert sum(c in alphabet for c in masked) <= 7


# == write_dotenv_var =========================================================================

def test_write_creates_the_file_with_mode_0600(tmp_path):
    path = tmp_path / ".env"
    assert aethr.write_dotenv_var(str(path), "OPENAI_API_KEY", KEY) is True
    assert path.read_text() == f"OPENAI_API_KEY={KEY}\n"
    assert mode_of(path) == 0o600


def test_write_replaces_every_line_of_the_variable_and_keeps_the_rest(tmp_path):
    path = tmp_path / ".env"
    others = ["# my keys", "", "OPENAI_API_KEY_OLD=keep-me", "# OPENAI_API_KEY=commented",
              "ANTHROPIC_API_KEY='sk-ant-xyz'", "export XAI_API_KEY=xai-123"]
    path.write_text("\n".join([others[0], "OPENAI_API_KEY=old-one", *others[1:4],
                               "export OPENAI_API_KEY=old-two", others[4],
                               "  OPENAI_API_KEY = old-three", others[5]]) + "\n")
    assert aethr.write_dotenv_var(str(path), "OPENAI_API_KEY", KEY) is True
    lines = path.read_text().splitlines()
    assert [line for line in lines if not line.startswith("OPENAI_API_KEY=")] == others
    assert lines.count(f"OPENAI_API_KEY={KEY}") == 1
    assert "old-" not in path.read_text()
    assert aethr.parse_dotenv(path.read_text())[0]["OPENAI_API_KEY"] == KEY


def test_write_none_removes_the_variable(tmp_path):
    path = tmp_path / ".env"
    path.write_text("A=1\nexport OPENAI_API_KEY=x\nB=2\n")
    os.chmod(path, 0o600)
    assert aethr.write_dotenv_var(str(path), "OPENAI_API_KEY", None) is True
    assert path.read_text() == "A=1\nB=2\n"
    assert mode_of(path) == 0o600
    before = path.read_bytes()
    assert aethr.write_dotenv_var(str(path), "OPENAI_API_KEY", None) is False
    assert path.read_bytes() == before


def test_write_then_parse_round_trips_any_acceptable_key():
    from hypothesis import given
    from hypothesis import strategies as st

    # What _read_key accepts: no whitespace, no quotes, no backslash.
    chars = st.characters(blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp"),
                          blacklist_characters="'\"\\\x1c\x1d\x1e\x1f\x85")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, ".env")

        @given(st.text(chars, min_size=1, max_size=40))
        def check(key):
            with open(path, "w", encoding="utf-8") as f:
                f.write("BEFORE=1\n")
            aethr.write_dotenv_var(path, "OPENAI_API_KEY", key)
            with open(path, encoding="utf-8") as f:
                assert aethr.parse_dotenv(f.read()) == (
                    {"BEFORE": "1", "OPENAI_API_KEY": key}, [])

        check()


# == preflight(live=True): the key problems ===================================================

def live_workflow(model: str) -> aethr.Workflow:
    return aethr.load_workflow(aethr.WORKFLOW_FILE, text=reader_workflow("reader", model=model))


def preflight_problems(workflow: aethr.Workflow, project: aethr.Project) -> str:
    """Every problem message and hint of a live preflight, one per line ('' when none)."""
    try:
        aethr.preflight(workflow, project, live=True)
    except aethr.ConfigError as exc:
        return "\n".join(f"{message} | {hint}" for *_, message, hint in exc.problems)
    return ""


@pytest.mark.parametrize("model, var, provider", [
    ("openai:gpt-5.5", "OPENAI_API_KEY", "openai"),
    ("anthropic:claude-sonnet-5", "ANTHROPIC_API_KEY", "anthropic"),
    ("gemini:gemini-3-pro", "GOOGLE_API_KEY", "gemini"),
    ("openrouter:some/model", "OPENROUTER_API_KEY", "openrouter"),
    ("xai:grok-5", "XAI_API_KEY", "xai"),
])
def test_live_preflight_names_the_missing_key_and_the_login_hint(tmp_path, model, var,
                                                                  provider):
    text = preflight_problems(live_workflow(model), project_at(tmp_path))
    assert var in text
    assert f"aethr auth login {provider}" in text


@pytest.mark.parametrize("model, environ", [
    ("openai:gpt-5.5", {"OPENAI_API_KEY": KEY}),
    ("openai:local", {"OPENAI_BASE_URL": "http://127.0.0.1:8080/v1"}),
    ("anthropic:claude-sonnet-5", {"ANTHROPIC_AUTH_TOKEN": KEY}),
    ("gemini:gemini-3-pro", {"GEMINI_API_KEY": KEY}),
    ("ollama:qwen3:8b", {}),
])
def test_live_preflight_accepts_a_present_or_unneeded_key(tmp_path, model, environ):
    text = preflight_problems(live_workflow(model), project_at(tmp_path, **environ))
    assert "_API_KEY" not in text and "auth login" not in text and KEY not in text


def test_live_preflight_sees_a_key_loaded_from_dotenv(tmp_path):
    (tmp_path / ".env").write_text(f"OPENAI_API_KEY={KEY}\n")
    project = project_at(tmp_path)
    project.environ, _ = aethr.load_dotenv(project)
    assert "auth login" not in preflight_problems(live_workflow("openai:gpt-5.5"), project)
    bare = preflight_problems(live_workflow("openai:gpt-5.5"), project_at(tmp_path))
    assert "OPENAI_API_KEY" in bare        # the same project without .env loaded lacks it


# == run: .env decides the mode ===============================================================

@pytest.mark.parametrize("line", ["AETHR_LIVE=1", "export AETHR_LIVE=yes",
                                  "AETHR_MODEL=openai:gpt-5.5"])
def test_run_goes_live_from_dotenv(cli, git_repo, line):
    (git_repo / ".gitignore").write_text(".env\n")
    (git_repo / ".env").write_text(line + "\n")
    r = cli("run", "review it")
    assert r.code == 2, r
    assert r.out == ""
    assert "nothing was run" in r.err
    assert "mock (would call" not in r.err and "mock mode" not in r.err
    assert "step 1/1" not in r.err


def test_run_live_from_dotenv_names_the_missing_key(cli, git_repo):
    (git_repo / ".gitignore").write_text(".env\n")
    (git_repo / ".env").write_text("AETHR_LIVE=1\n")
    r = cli("run", "review it")
    assert r.code == 2 and r.out == ""
    assert "OPENAI_API_KEY" in r.err
    assert "aethr auth login openai" in r.err


def test_run_live_from_dotenv_subprocess(run_aethr, git_repo):
    (git_repo / ".gitignore").write_text(".env\n")
    (git_repo / ".env").write_text("AETHR_LIVE=1\n")
    r = run_aethr("run", "review it", cwd=git_repo)
    assert r.code == 2, r
    assert r.out == "" and "nothing was run" in r.err
    assert "OPENAI_API_KEY" in r.err and "aethr auth login openai" in r.err


def test_run_key_in_dotenv_is_not_reported_missing(cli, git_repo):
    from loopback import LoopbackServer

    (git_repo / ".gitignore").write_text(".env\n")
    with LoopbackServer() as server:
        server.add(Reply.sse((DATA / "transcripts" / "openai_basic.sse").read_bytes()))
        (git_repo / ".env").write_text(f"AETHR_LIVE=1\nOPENAI_API_KEY={KEY}\n"
                                       f"OPENAI_BASE_URL={server.url}/v1\n")
        r = cli("run", "review it")
        # The key from .env went to the (loopback) server, and never to the output.
        assert r.code == 0, r
        assert "The quick brown fox" in r.out
        assert server.requests[0].headers["authorization"] == f"Bearer {KEY}"
    assert "auth login" not in r.err
    assert KEY not in r.err + r.out


def test_run_rejects_a_bad_boolean_from_dotenv(cli, git_repo):
    (git_repo / ".gitignore").write_text(".env\n")
    (git_repo / ".env").write_text("AETHR_LIVE=maybe\n")
    r = cli("run", "review it")
    assert r.code == 2 and r.out == ""
    assert "aethr: error: AETHR_LIVE must be a boolean" in r.err


def test_run_environment_wins_over_dotenv(cli, run_aethr, git_repo):
    (git_repo / ".gitignore").write_text(".env\n")
    (git_repo / ".env").write_text("AETHR_LIVE=1\n")
    for r in (cli("run", "review it", env={"AETHR_LIVE": "0"}),
              run_aethr("run", "review it", cwd=git_repo, env={"AETHR_LIVE": "0"})):
        assert r.code == 0, r
        assert "mock (would call openai:gpt-5.5)" in r.err
        assert "## review" in r.out


def test_run_ignores_a_tracked_dotenv(cli, run_aethr, git_repo):
    (git_repo / ".env").write_text("AETHR_LIVE=1\n")
    git(git_repo, "add", ".env")
    git(git_repo, "commit", "-q", "-m", "commit the .env by mistake")
    for r in (cli("run", "review it"), run_aethr("run", "review it", cwd=git_repo)):
        assert r.code == 0, r
        assert "mock (would call openai:gpt-5.5)" in r.err
        found = warnings_in(r.err)
        assert len(found) == 1 and ".env" in found[0]
        assert "tracked" in found[0] and "not loaded" in found[0]


def test_run_warns_about_bad_dotenv_lines_without_their_content(cli, run_aethr, git_repo):
    (git_repo / ".gitignore").write_text(".env\n")
    (git_repo / ".env").write_text("# keys\nsk-secret-zzzzzzzz\nAETHR_LIVE=0\n")
    for r in (cli("run", "review it"), run_aethr("run", "review it", cwd=git_repo)):
        assert r.code == 0, r
        found = warnings_in(r.err)
        assert len(found) == 1 and ".env:2:" in found[0]
        assert "sk-secret" not in r.err and "sk-secret" not in r.out


# == run, check, auth: the same project root and .env =========================================

def test_check_from_a_subdirectory_loads_the_project_dotenv(cli, run_aethr, git_repo,
                                                            monkeypatch):
    pkg, sub = nested_project(git_repo)
    monkeypatch.chdir(sub)
    for r in (cli("check"), run_aethr("check", cwd=sub)):
        assert r.code == 0, r
        assert f"root      {pkg}" in r.out
        assert "xai:grok-from-dotenv" in r.out
        assert_no_decoy(r.out + r.err)


def test_run_from_a_subdirectory_loads_the_project_dotenv(cli, git_repo, monkeypatch):
    pkg, sub = nested_project(git_repo)
    monkeypatch.chdir(sub)
    r = cli("run", "--show-prompt", "read")
    assert r.code == 0, r
    assert "=== step 1/1: read (reader) -> xai:grok-from-dotenv ===" in r.out
    assert_no_decoy(r.out + r.err)


def test_auth_from_a_subdirectory_uses_the_project_dotenv(cli, run_aethr, git_repo,
                                                          monkeypatch):
    pkg, sub = nested_project(git_repo)
    monkeypatch.chdir(sub)
    r = cli("auth", "login", "xai", "--key-stdin", stdin=KEY + "\n")
    assert r.code == 0, r
    assert (pkg / ".env").read_text() == f"AETHR_MODEL=xai:grok-from-dotenv\nXAI_API_KEY={KEY}\n"
    assert (sub / ".env").read_text() == "AETHR_MODEL=openrouter:decoy-cwd\n"
    assert (git_repo / ".env").read_text() == "AETHR_MODEL=anthropic:decoy-repo-top\n"
    r = run_aethr("auth", "status", cwd=sub)
    assert r.code == 0, r
    assert status_lines(r.out)["xai"].endswith(f"set in .env: {MASKED}")


def test_auth_without_a_workflow_uses_the_git_top_level(cli, git_repo, monkeypatch):
    monkeypatch.chdir(git_repo / "src")
    r = cli("auth", "login", "openai", "--key-stdin", stdin=KEY)
    assert r.code == 0, r
    assert (git_repo / ".env").read_text() == f"OPENAI_API_KEY={KEY}\n"
    assert not (git_repo / "src" / ".env").exists()


# == run: values from .env are redacted =======================================================

def redaction_project(repo: Path) -> dict[str, str]:
    secrets = {"OPENAI_API_KEY": "sk-proj-0123456789", "BILLING_API_KEY": "bill-8chr",
               "DEPLOY_TOKEN": "tok_abcdefgh", "HOOK_SECRET": "whsec-12345678"}
    (repo / ".gitignore").write_text(".env\n")
    (repo / ".aethr.yaml").write_text(READER)
    (repo / ".env").write_text("".join(f"{k}={v}\n" for k, v in secrets.items())
                               + "SHORT_TOKEN=abc1234\n")
    (repo / "notes.md").write_text("".join(f"{k} is {v}\n" for k, v in secrets.items())
                                   + "SHORT_TOKEN is abc1234\n")
    return secrets


def test_show_prompt_redacts_values_loaded_from_dotenv(cli, run_aethr, git_repo):
    secrets = redaction_project(git_repo)
    for r in (cli("run", "--show-prompt", "read"),
              run_aethr("run", "--show-prompt", "read", cwd=git_repo)):
        assert r.code == 0, r
        for name, value in secrets.items():
            assert f"{name} is [redacted]\n" in r.out
            assert value not in r.out and value not in r.err
        assert "SHORT_TOKEN is abc1234\n" in r.out      # shorter than 8: not a secret


# == auth login ===============================================================================

def test_login_writes_the_key_to_a_new_0600_dotenv(cli, git_repo):
    (git_repo / ".gitignore").write_text(".env\n")
    r = cli("auth", "login", "openai", "--key-stdin", stdin=KEY + "\n")
    assert r.code == 0, r
    path = git_repo / ".env"
    assert path.read_text() == f"OPENAI_API_KEY={KEY}\n"
    assert mode_of(path) == 0o600
    assert MASKED in r.err
    assert KEY not in r.out and KEY not in r.err
    assert warnings_in(r.err) == []     # .gitignore has .env; nothing exported


def test_login_replaces_the_variable_and_keeps_other_lines(cli, git_repo):
    (git_repo / ".gitignore").write_text(".env\n")
    path = git_repo / ".env"
    path.write_text("# project keys\nANTHROPIC_API_KEY=sk-ant-keepme\n\n"
                    "export OPENAI_API_KEY=sk-old-0000000000\nXAI_API_KEY='xai-keep'\n"
                    "OPENAI_API_KEY=sk-older-111111111\n")
    os.chmod(path, 0o600)
    r = cli("auth", "login", "openai", "--key-stdin", stdin=KEY + "\n")
    assert r.code == 0, r
    lines = path.read_text().splitlines()
    assert [line for line in lines if "OPENAI_API_KEY" not in line] == [
        "# project keys", "ANTHROPIC_API_KEY=sk-ant-keepme", "", "XAI_API_KEY='xai-keep'"]
    assert [line for line in lines if "OPENAI_API_KEY" in line] == [f"OPENAI_API_KEY={KEY}"]
    assert mode_of(path) == 0o600
    assert "sk-old" not in r.err + r.out and "sk-older" not in r.err + r.out


@pytest.mark.parametrize("provider", ["gemini", "google"])
def test_login_gemini_and_google_write_google_api_key(cli, tmp_path, monkeypatch, provider):
    monkeypatch.chdir(tmp_path)
    r = cli("auth", "login", provider, "--key-stdin", stdin="AIzaSyExample-123456\n")
    assert r.code == 0, r
    assert (tmp_path / ".env").read_text() == "GOOGLE_API_KEY=AIzaSyExample-123456\n"


def test_login_key_with_shell_characters_reads_back_the_same(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    key = "sk-ab#cd$ef!gh&ij=="
    r = cli("auth", "login", "openrouter", "--key-stdin", stdin=key)
    assert r.code == 0, r
    values, bad = aethr.parse_dotenv((tmp_path / ".env").read_text())
    assert values == {"OPENROUTER_API_KEY": key} and bad == []
    assert key not in r.err and key not in r.out


def test_login_unknown_provider(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = cli("auth", "login", "opnai", "--key-stdin", stdin=KEY)
    assert r.code == 2
    assert r.err.splitlines()[-2:] == ["aethr: error: unknown provider 'opnai'",
                                       "aethr: hint: did you mean 'openai'?"]
    assert not (tmp_path / ".env").exists()
    assert KEY not in r.err


def test_login_needs_a_provider(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = cli("auth", "login", "--key-stdin", stdin=KEY)
    assert r.code == 2 and "aethr: error: auth login needs a provider" in r.err
    assert not (tmp_path / ".env").exists()


def test_login_refuses_without_a_terminal_or_key_stdin(cli, run_aethr, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / ".env"
    path.write_text("A=1\n")
    before = path.read_bytes()
    for r in (cli("auth", "login", "openai", stdin=KEY),
              run_aethr("auth", "login", "openai", cwd=tmp_path, input=KEY + "\n")):
        assert r.code == 2, r
        assert "aethr: error:" in r.err and "--key-stdin" in r.err
        assert path.read_bytes() == before
        assert KEY not in r.err + r.out


@pytest.mark.parametrize("stdin", ["", "\n", "   \n\n"])
def test_login_empty_key(cli, tmp_path, monkeypatch, stdin):
    monkeypatch.chdir(tmp_path)
    r = cli("auth", "login", "openai", "--key-stdin", stdin=stdin)
    assert r.code == 2 and "aethr: error:" in r.err
    assert not (tmp_path / ".env").exists()


@pytest.mark.parametrize("key", ["sk-abc def-123456", "sk-abc'def-123456", 'sk-"abcdef"-1234',
                                 "sk-abc\\def-123456", "sk-first-123456\nsk-second-123456"])
def test_login_rejects_keys_with_spaces_or_quotes(cli, tmp_path, monkeypatch, key):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / ".env"
    path.write_text("OPENAI_API_KEY=sk-keep-000000000\n")
    before = path.read_bytes()
    r = cli("auth", "login", "openai", "--key-stdin", stdin=key + "\n")
    assert r.code == 2 and "aethr: error:" in r.err
    assert path.read_bytes() == before
    assert "abc" not in r.err and "first" not in r.err


def test_login_warns_when_git_does_not_ignore_dotenv(cli, git_repo):
    r = cli("auth", "login", "openai", "--key-stdin", stdin=KEY)
    assert r.code == 0, r
    found = warnings_in(r.err)
    assert len(found) == 1 and ".env" in found[0] and "ignore" in found[0]
    assert (git_repo / ".env").read_text() == f"OPENAI_API_KEY={KEY}\n"


def test_login_does_not_warn_outside_git(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = cli("auth", "login", "openai", "--key-stdin", stdin=KEY)
    assert r.code == 0 and warnings_in(r.err) == []


def test_login_warns_when_the_environment_shadows_the_key(cli, run_aethr, git_repo):
    (git_repo / ".gitignore").write_text(".env\n")
    env = {"OPENAI_API_KEY": OTHER_KEY}
    for r in (cli("auth", "login", "openai", "--key-stdin", stdin=KEY, env=env),
              run_aethr("auth", "login", "openai", "--key-stdin", cwd=git_repo, env=env,
                        input=KEY)):
        assert r.code == 0, r
        found = warnings_in(r.err)
        assert len(found) == 1
        assert "OPENAI_API_KEY" in found[0] and "environment" in found[0]
        for secret in (KEY, OTHER_KEY):
            assert secret not in r.err and secret not in r.out
    assert (git_repo / ".env").read_text() == f"OPENAI_API_KEY={KEY}\n"


def test_login_into_a_dotenv_that_is_not_utf8(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / ".env"
    path.write_bytes(b"# caf\xe9\nOTHER=1\n")
    r = cli("auth", "login", "openai", "--key-stdin", stdin=KEY)
    assert r.code != 70 and "Traceback" not in r.err, r
    assert b"# caf\xe9\n" in path.read_bytes() and b"OTHER=1\n" in path.read_bytes()
    assert KEY not in r.err


# == auth status ==============================================================================

def test_status_one_line_per_provider(cli, git_repo):
    (git_repo / ".gitignore").write_text(".env\n")
    (git_repo / ".env").write_text(f"OPENAI_API_KEY={KEY}\nXAI_API_KEY=xai-short\n")
    r = cli("auth", "status", env={"ANTHROPIC_API_KEY": OTHER_KEY})
    assert r.code == 0, r
    rows = status_lines(r.out)
    assert rows["openai"].split() == ["OPENAI_API_KEY", "set", "in", ".env:", MASKED]
    assert rows["anthropic"].split() == ["ANTHROPIC_API_KEY", "set", "in", "the",
                                         "environment:", "sk-\u20269876"]
    assert rows["gemini"].split() == ["GOOGLE_API_KEY", "not", "set"]
    assert rows["openrouter"].split() == ["OPENROUTER_API_KEY", "not", "set"]
    assert rows["xai"].startswith("XAI_API_KEY") and "set in .env" in rows["xai"]
    assert "xai-short" not in r.out and "xai" not in rows["xai"].split(":", 1)[1]
    assert rows["ollama"] == "no key needed"
    for secret in (KEY, OTHER_KEY):
        assert secret not in r.out and secret not in r.err


def test_status_environment_wins_over_dotenv(cli, git_repo):
    (git_repo / ".gitignore").write_text(".env\n")
    (git_repo / ".env").write_text(f"OPENAI_API_KEY={KEY}\n")
    r = cli("auth", "status", env={"OPENAI_API_KEY": OTHER_KEY})
    assert r.code == 0, r
    assert status_lines(r.out)["openai"].endswith("set in the environment: sk-\u20269876")
    assert MASKED not in r.out


def test_status_reads_the_other_gemini_and_anthropic_variables(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = cli("auth", "status", env={"GEMINI_API_KEY": "AIzaSyExample-123456",
                                   "ANTHROPIC_AUTH_TOKEN": OTHER_KEY})
    rows = status_lines(r.out)
    assert rows["gemini"].split()[0] == "GEMINI_API_KEY"
    assert rows["gemini"].endswith("set in the environment: AIz\u20263456")
    assert rows["anthropic"].split()[0] == "ANTHROPIC_AUTH_TOKEN"


def test_status_does_not_read_a_tracked_dotenv(cli, git_repo):
    (git_repo / ".env").write_text(f"OPENAI_API_KEY={KEY}\n")
    git(git_repo, "add", ".env")
    r = cli("auth", "status")
    assert r.code == 0
    assert status_lines(r.out)["openai"].endswith("not set")
    assert len(warnings_in(r.err)) == 1 and "tracked" in r.err


# == auth logout ==============================================================================

def test_logout_removes_the_line_and_keeps_the_rest(cli, git_repo):
    (git_repo / ".gitignore").write_text(".env\n")
    path = git_repo / ".env"
    cli("auth", "login", "openai", "--key-stdin", stdin=KEY)
    with open(path, "a") as f:
        f.write("# keep\nANTHROPIC_API_KEY=sk-ant-keepme\n")
    r = cli("auth", "logout", "openai")
    assert r.code == 0, r
    assert path.read_text() == "# keep\nANTHROPIC_API_KEY=sk-ant-keepme\n"
    assert mode_of(path) == 0o600
    assert "removed OPENAI_API_KEY" in r.err
    assert KEY not in r.err + r.out


def test_logout_removes_an_export_line(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / ".env"
    path.write_text(f"A=1\nexport GOOGLE_API_KEY={KEY}\n")
    r = cli("auth", "logout", "google")
    assert r.code == 0 and path.read_text() == "A=1\n"


def test_logout_when_the_variable_is_not_there(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = cli("auth", "logout", "openai")
    assert r.code == 0, r
    assert "OPENAI_API_KEY was not in" in r.err
    assert not (tmp_path / ".env").exists()
    (tmp_path / ".env").write_text("A=1\n")
    r = cli("auth", "logout", "openai")
    assert r.code == 0 and "OPENAI_API_KEY was not in" in r.err
    assert (tmp_path / ".env").read_text() == "A=1\n"


def test_logout_notes_a_variable_still_in_the_environment(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(f"OPENAI_API_KEY={KEY}\n")
    r = cli("auth", "logout", "openai", env={"OPENAI_API_KEY": OTHER_KEY})
    assert r.code == 0, r
    assert (tmp_path / ".env").read_text() == ""
    notes = [line for line in r.err.splitlines() if line.startswith("aethr: note: ")]
    assert len(notes) == 1 and "OPENAI_API_KEY" in notes[0] and "environment" in notes[0]
    assert OTHER_KEY not in r.err and KEY not in r.err


def test_logout_unknown_provider(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(f"OPENAI_API_KEY={KEY}\n")
    r = cli("auth", "logout", "antropic")
    assert r.code == 2
    assert "aethr: hint: did you mean 'anthropic'?" in r.err
    assert (tmp_path / ".env").read_text() == f"OPENAI_API_KEY={KEY}\n"


def test_logout_when_dotenv_is_a_directory(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").mkdir()
    r = cli("auth", "logout", "openai")
    assert r.code == 2, r
    assert "Traceback" not in r.err and "aethr: error:" in r.err


def test_logout_from_a_dotenv_that_is_not_utf8(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / ".env"
    path.write_bytes(b"# caf\xe9\nOPENAI_API_KEY=" + KEY.encode() + b"\n")
    r = cli("auth", "logout", "openai")
    assert r.code != 70 and "Traceback" not in r.err, r
    assert b"# caf\xe9\n" in path.read_bytes()


# == the whole round trip, as real processes ==================================================

def test_login_status_logout_round_trip(run_aethr, git_repo):
    (git_repo / ".gitignore").write_text(".env\n")
    path = git_repo / ".env"
    path.write_text("# mine\nOTHER=1\n")
    r = run_aethr("auth", "login", "openai", "--key-stdin", cwd=git_repo,
                  input="sk-test-abcdefghijkl\n")
    assert r.code == 0, r
    assert MASKED in r.err and KEY not in r.err + r.out
    assert warnings_in(r.err) == []
    assert path.read_text() == f"# mine\nOTHER=1\nOPENAI_API_KEY={KEY}\n"
    assert mode_of(path) == 0o600

    r = run_aethr("auth", "status", cwd=git_repo)
    assert r.code == 0, r
    rows = status_lines(r.out)
    assert rows["openai"].endswith(f"set in .env: {MASKED}")
    assert all(rows[p].endswith("not set") for p in PROVIDERS[1:])
    assert KEY not in r.out + r.err

    r = run_aethr("auth", "logout", "openai", cwd=git_repo)
    assert r.code == 0, r
    assert path.read_text() == "# mine\nOTHER=1\n"
    assert mode_of(path) == 0o600

    r = run_aethr("auth", "status", cwd=git_repo)
    assert status_lines(r.out)["openai"].endswith("not set")
    r = run_aethr("auth", "logout", "openai", cwd=git_repo)
    assert r.code == 0 and "OPENAI_API_KEY was not in" in r.err


def test_login_refuses_a_tracked_dotenv(cli, git_repo):
    (git_repo / ".env").write_text("OTHER=1\n")
    git(git_repo, "add", ".env")
    r = cli("auth", "login", "openai", "--key-stdin", stdin=KEY + "\n")
    assert r.code == 2, r
    assert "tracked by git" in r.err and "git rm --cached .env" in r.err
    assert (git_repo / ".env").read_text() == "OTHER=1\n"
    assert KEY not in r.err + r.out


def test_an_empty_exported_variable_does_not_hide_the_dotenv_value(cli, git_repo):
    (git_repo / ".gitignore").write_text(".env\n")
    (git_repo / ".env").write_text(f"OPENAI_API_KEY={KEY}\n")
    r = cli("auth", "status", env={"OPENAI_API_KEY": ""})
    assert r.code == 0, r
    openai = next(line for line in r.out.splitlines() if line.startswith("openai"))
    assert "set in .env" in openai


def test_aethr_debug_from_dotenv_shows_tracebacks(cli, git_repo):
    (git_repo / ".gitignore").write_text(".env\n")
    (git_repo / ".env").write_text("AETHR_DEBUG=1\n")
    r = cli("run", "--preset", "nope", "x")
    assert r.code == 2, r
    assert r.err.startswith("Traceback (most recent call last):")
    assert "aethr: error: unknown preset 'nope'" in r.err

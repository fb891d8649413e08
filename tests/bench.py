#!/usr/bin/env python3
"""Aethr benchmark: the performance figures of SPEC §12 (`make bench`; not part of `make test`).

    python3.12 tests/bench.py [--python /path/to/python3.X] [--runs N | --quick] [--keep]

Standard library only; POSIX (it times console scripts and reads peak RSS). Everything it runs
lives in a temporary directory ($TMPDIR): a venv with aethr installed, a small git repository
with uncommitted changes, and a 50,000-file repository for the glob figure; the stream figure
runs `aethr.py run --live` against an OpenAI-style server on 127.0.0.1 in this process (nothing
goes further). It prints a Markdown table (median and min over N runs, the baseline, the
ratio, the target and PASS/FAIL) for the README's "Performance" section. It exits 1 when a
target is missed, 2 when it cannot run.

Use a clean interpreter such as 3.12: on these machines the default python3 (3.11) carries
extra start-up work from its site-packages, which inflates every baseline and every ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "aethr.py")
#: What setuptools needs to build the distribution (pyproject.toml names the other three).
DIST_FILES = ("pyproject.toml", "aethr.py", "README.md", "LICENSE")
TASK = "review my current changes"
BIG_FILES = 50_000
RECOMMENDED = "3.12"
#: Names the live streaming code is expected to have; until one exists, figure 4 is n/a.
STREAM_ATTRS = ("_sse_events", "_http_stream")
#: Figure 4: content chunks per streamed answer, the pause before each (so that each one
#: arrives alone), at most this many runs, and the seconds the whole figure may take.
STREAM_CHUNKS = 50
STREAM_GAP = 0.020
STREAM_RUNS = 5
STREAM_BUDGET = 15.0
#: A fake key for the loopback server (aethr masks keys; the server never checks it).
STREAM_KEY = "sk-bench-0123456789abcdef"
STREAM_WORKFLOW = """\
workflow: bench-stream
roles:
  writer: Answer the task.
models:
  writer: openai:gpt-bench
steps:
  - id: answer
    role: writer
"""

#: The console script pip 25 and later write (pip 26.3's template, byte for byte but the
#: shebang): since pypa/pip#13166 it no longer imports `re`. The fallback install must start
#: up exactly like a real one.
CONSOLE_SCRIPT = """\
#!{python}
import sys
from aethr import main
if __name__ == '__main__':
    sys.argv[0] = sys.argv[0].removesuffix('.exe')
    sys.exit(main())
"""
#: What pip 24 and older write (distlib's template): it imports `re` before aethr starts.
#: Timed for information, as `aethr-pip24`.
OLD_CONSOLE_SCRIPT = """\
#!{python}
# -*- coding: utf-8 -*-
import re
import sys
from aethr import main
if __name__ == '__main__':
    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])
    sys.exit(main())
"""

#: Run by the venv's interpreter, so the in-process glob figure uses the interpreter under test
#: (not the one running this file) and the installed, byte-compiled aethr.
GLOB_HELPER = r"""
import builtins, json, os, sys, time
import aethr

root, runs, text = sys.argv[1], int(sys.argv[2]), sys.argv[3]
step = aethr.load_workflow(text=text).steps[0]
env = dict(os.environ)

def once():
    # A fresh Project each time: it caches the file list, and a run builds one Project.
    return aethr.collect_context(step, aethr.Project(root, env))

once()                                   # page cache and git's index, as the CLI warm-up
times = []
for _ in range(runs):
    t0 = time.perf_counter()
    once()
    times.append(time.perf_counter() - t0)

# One more, untimed, counting the files opened under the root: "caps applied before reading"
# means a 50,000-file match reads only the files it shows.
opened = []
real_open = builtins.open
prefix = os.path.realpath(root) + os.sep
def counting_open(file, *args, **kw):
    if isinstance(file, (str, bytes, os.PathLike)):
        path = os.path.realpath(os.fsdecode(file))
        if path.startswith(prefix) and os.sep + ".git" + os.sep not in path[len(prefix) - 1:]:
            opened.append(path)
    return real_open(file, *args, **kw)
builtins.open = counting_open
try:
    block = once()[0]
finally:
    builtins.open = real_open
print(json.dumps({
    "times": times, "opened": len(opened), "summary": block.summary, "body": block.body,
    "max_files": getattr(aethr, "GLOB_MAX_FILES", None),
}))
"""

#: Runs exactly one child and reports the peak RSS (KiB) of it and its descendants. A fresh
#: process, because RUSAGE_CHILDREN keeps the maximum over every child ever waited for.
RSS_HELPER = r"""
import resource, subprocess, sys
subprocess.run(sys.argv[2:], cwd=sys.argv[1], stdin=subprocess.DEVNULL,
               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(kib // 1024 if sys.platform == "darwin" else kib)   # macOS reports bytes
"""


class BenchError(Exception):
    """The benchmark cannot run (as opposed to a target being missed)."""


# -- Child processes -------------------------------------------------------------------------


def child_env() -> dict[str, str]:
    """The environment of everything the benchmark runs: a user's, not this machine's CI's.

    PYTHONDONTWRITEBYTECODE is set on these machines; a user's installed aethr imports from
    cached bytecode, so it goes. AETHR_* could switch on live mode or change the workflow, and
    PYTHONPATH/PYTHONHOME would add start-up work to one side of a ratio.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("AETHR_")
        and k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")
    }
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", NO_COLOR="1")
    return env


def run_captured(argv: list[str], cwd: str, env: dict[str, str], timeout: float):
    """One run of `argv` with no stdin, its output captured as text."""
    return subprocess.run(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, errors="replace", timeout=timeout)


def run_silent(argv: list[str], cwd: str, env: dict[str, str]):
    """One run of `argv` with no stdin, its output discarded (a terminal would time the tty)."""
    return subprocess.run(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def check(argv: list[str], cwd: str, env: dict[str, str], ok=(0,), timeout: float = 300) -> str:
    """Run a set-up or warm-up command; its stdout, or BenchError with what it printed."""
    r = run_captured(argv, cwd, env, timeout)
    if r.returncode not in ok:
        tail = (r.stderr or r.stdout).strip().splitlines()[-5:]
        raise BenchError(f"{' '.join(argv)} exited {r.returncode}:\n  " + "\n  ".join(tail))
    return r.stdout


def timed(cmds: list[list[str]], cwd: str, env: dict[str, str]) -> float:
    """Seconds to run `cmds` back to back, output discarded (a terminal would time the tty)."""
    t0 = time.perf_counter()
    for argv in cmds:
        r = run_silent(argv, cwd, env)
        if r.returncode != 0:
            raise BenchError(f"{' '.join(argv)} exited {r.returncode} during timing")
    return time.perf_counter() - t0


def measure(cmd, base, runs: int, cwd: str, env: dict[str, str]):
    """Times of `cmd` and of `base`, alternated (and their order flipped each round).

    Both see the same noise (another process, a CPU frequency change), so the ratio of their
    medians is steadier than either number alone.
    """
    a: list[float] = []
    b: list[float] = []
    timed(cmd, cwd, env)  # warm-up: .pyc files, page cache
    timed(base, cwd, env)
    for i in range(runs):
        pair = ((cmd, a), (base, b)) if i % 2 == 0 else ((base, b), (cmd, a))
        for cmds, sink in pair:
            sink.append(timed(cmds, cwd, env))
    return a, b


# -- Fixtures --------------------------------------------------------------------------------


#: Commits must not depend on (or fail for lack of) the user's git identity and signing setup.
GIT_CONFIG = ["-c", "user.name=Bench", "-c", "user.email=bench@example.invalid"]
GIT_CONFIG += ["-c", "commit.gpgsign=false"]


def git(args: list[str], cwd: str, env: dict[str, str]) -> str:
    return check(["git", *GIT_CONFIG, *args], cwd, env)


def write(path: str, text: str) -> None:
    if not os.path.isdir(os.path.dirname(path)):
        os.makedirs(os.path.dirname(path))
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)


def small_repo(path: str, env: dict[str, str]) -> None:
    """One commit, then what a user reviews: an edit, a new file, a deletion."""
    files = {
        "README.md": "# demo\n\nA small project for the benchmark.\n",
        "src/demo/__init__.py": '"""Demo package."""\n',
        "src/demo/core.py": "".join(
            f"def f{i}(x):\n    return x * {i} + 1\n\n\n" for i in range(40)
        ),
        "src/demo/util.py": "def clamp(x, lo, hi):\n    return max(lo, min(x, hi))\n",
        "tests/test_core.py": "from demo.core import f1\n\n\ndef test():\n    assert f1(1) == 2\n",
    }
    for rel, text in files.items():
        write(os.path.join(path, rel), text)
    git(["init", "-q"], path, env)
    git(["add", "-A"], path, env)
    git(["commit", "-q", "-m", "initial"], path, env)
    core = os.path.join(path, "src/demo/core.py")
    with open(core, encoding="utf-8") as f:
        text = f.read()
    write(core, text.replace("return x * 3 + 1", "return x * 3 - 1  # off by two?"))
    write(os.path.join(path, "src/demo/cli.py"), "import sys\n\nprint(sys.argv)\n")
    os.unlink(os.path.join(path, "src/demo/util.py"))


def big_repo(path: str, n: int, env: dict[str, str]) -> int:
    """`n` committed files in 10 packages of 50 folders, 3 in 5 of them .py; the .py count.

    One commit streamed to `git fast-import` (a single pack, no loose objects), then checked
    out with parallel workers: creating 50,000 files is most of the cost, and git does it
    faster than a Python loop followed by `git add -A`.
    """
    exts = (".py", ".py", ".md", ".py", ".txt")
    per_dir = max(1, n // 500)
    py = 0
    stream = [
        b"commit refs/heads/main\ncommitter Bench <bench@example.invalid> 0 +0000\n"
        b"data 10\nmany files\n"
    ]
    for i in range(n):
        d, k = divmod(i, per_dir)
        ext = exts[i % len(exts)]
        py += ext == ".py"
        body = f"# {d}/{k}\n" + "".join(f"value_{j} = {i * 31 + j}\n" for j in range(i % 12 + 4))
        rel = f"pkg{d // 50:02d}/mod{d:03d}/f{k:03d}{ext}"
        stream.append(
            b"M 100644 inline %s\ndata %d\n%s\n" % (rel.encode(), len(body), body.encode())
        )
    os.makedirs(path)
    git(["init", "-q"], path, env)
    r = subprocess.run(
        ["git", "fast-import", "--quiet"],
        cwd=path,
        env=env,
        input=b"".join(stream),
        capture_output=True,
    )
    if r.returncode != 0:
        raise BenchError("git fast-import failed: " + r.stderr.decode(errors="replace"))
    git(["symbolic-ref", "HEAD", "refs/heads/main"], path, env)
    git(["-c", "checkout.workers=0", "reset", "-q", "--hard"], path, env)
    return py


def install(python: str, tmp: str, env: dict[str, str], online: bool):
    """A venv with aethr installed the way a user installs it: (venv python, bin/aethr, how).

    pip builds from a copy of the distribution's files, so nothing is written into the work
    tree (an in-tree build would leave build/ and egg-info behind). Offline, and with no
    setuptools>=77 in the venv, pip cannot build; then aethr.py goes into site-packages with a
    console script identical to pip's, which starts up the same way.
    """
    venv = os.path.join(tmp, "venv")
    vpy = os.path.join(venv, "bin", "python")
    entry = os.path.join(venv, "bin", "aethr")
    src = os.path.join(tmp, "dist-src")
    os.makedirs(src)
    for name in DIST_FILES:
        shutil.copy2(os.path.join(ROOT, name), src)

    tried = []
    try:
        check([python, "-m", "venv", venv], tmp, env)
        if online:  # a user's pip is current: its console script imports less
            try:
                check([vpy, "-m", "pip", "install", "-q", "--upgrade", "pip"], tmp, env)
            except (BenchError, subprocess.TimeoutExpired) as exc:
                tried.append(f"pip install --upgrade pip: {str(exc).splitlines()[-1]}")
        attempts = [
            ("pip install --no-deps --no-build-isolation", ["--no-build-isolation"]),
            ("pip install --no-deps --no-index (isolated build, local wheels)", ["--no-index"]),
        ]
        if online:
            attempts.append(("pip install --no-deps (isolated build, package index)", []))
    except BenchError as exc:  # no ensurepip (some distributions' pythons)
        tried.append(f"venv with pip: {str(exc).splitlines()[0]}")
        shutil.rmtree(venv, ignore_errors=True)
        check([python, "-m", "venv", "--without-pip", venv], tmp, env)
        attempts = []
    for label, extra in attempts:
        argv = [vpy, "-m", "pip", "install", "-q", "--no-deps", *extra, src]
        try:
            r = run_captured(argv, tmp, env, 120)
        except subprocess.TimeoutExpired:
            tried.append(f"{label}: timed out")
            continue
        if r.returncode == 0 and os.path.exists(entry):
            pip = check([vpy, "-m", "pip", "--version"], tmp, env).split()[1]
            return vpy, entry, f"{label} (pip {pip})", tried
        # pip ends with generic notes; the line saying what was missing is an ERROR/Error one.
        lines = [ln.strip() for ln in r.stderr.splitlines() if ln.strip()] or ["no bin/aethr"]
        reason = [ln for ln in lines if "ERROR:" in ln or "Error:" in ln] or lines
        tried.append(f"{label}: failed ({reason[-1]})")

    purelib = check(
        [vpy, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp, env
    ).strip()
    shutil.copy2(os.path.join(ROOT, "aethr.py"), purelib)
    write_script(entry, CONSOLE_SCRIPT.format(python=vpy))
    return vpy, entry, "aethr.py copied into site-packages + pip 25+'s console script", tried


def write_script(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(path, 0o755)


def console_scripts(vpy: str, entry: str) -> tuple[str, str, str]:
    """(the console script to time, pip 24's for information, a note on what was done).

    An installed script that imports `re` came from a pip older than 25: the figure is for
    what current pip writes, so a copy with that template is timed instead.
    """
    old = entry + "-pip24"
    write_script(old, OLD_CONSOLE_SCRIPT.format(python=vpy))
    with open(entry, encoding="utf-8") as f:
        installed = f.read()
    if "import re\n" not in installed:
        return entry, old, "console script: pip 25+'s (no `import re`)"
    current = entry + "-pip25"
    write_script(current, CONSOLE_SCRIPT.format(python=vpy))
    return current, old, (
        "console script: the installing pip (older than 25) wrote one that imports `re`; the "
        "figures time pip 25+'s template (`bin/aethr-pip25`), pip 24's is timed for information"
        " (`--online` upgrades pip first)"
    )


# -- Stream latency --------------------------------------------------------------------------


def _sse_frame(obj: dict) -> bytes:
    """One `data:` event as one HTTP/1.1 chunk."""
    event = b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(event), event)


def _delta(content: str | None, finish: str | None = None) -> dict:
    """An OpenAI chat.completion.chunk carrying `content` (as a real server sends it)."""
    delta = {} if content is None else {"content": content}
    return {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "gpt-bench",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def _stream_end() -> bytes:
    """The end of the answer: finish_reason, usage, [DONE] and the last (empty) chunk."""
    usage = {"prompt_tokens": 40, "completion_tokens": STREAM_CHUNKS}
    done = b"data: [DONE]\n\n"
    return (
        _sse_frame(_delta(None, "stop"))
        + _sse_frame({**_delta(None), "choices": [], "usage": usage})
        + b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done)
    )


def stream_marker(i: int) -> bytes:
    """Chunk i's text: fixed width, so no marker is a prefix of another."""
    return b"<c%03d> " % i


def stream_once(argv: list[str], cwd: str, env: dict[str, str], deadline: float) -> list[int]:
    """One `run --live` against a loopback OpenAI server; each chunk's latency (ns).

    Single-threaded, so no lock or GIL hand-off sits between the two clocks: one selector
    serves the listening socket, the connection (reading the request) and the child's stdout.
    The server sends STREAM_CHUNKS content chunks, each in its own sendall after a pause of
    STREAM_GAP, timestamping (perf_counter_ns) just before the sendall; the child's stdout is
    read without blocking as it becomes readable, and the read that completes a chunk's
    marker timestamps its arrival. Latency = seen - sent, both on this process's clock.
    """
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    port = listener.getsockname()[1]
    env = {**env, "OPENAI_BASE_URL": f"http://127.0.0.1:{port}/v1"}
    sel = selectors.DefaultSelector()
    errors = tempfile.TemporaryFile()
    conn = None
    proc = None
    sent: list[int] = []
    seen: list[int] = []
    request = b""
    out = b""
    try:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=errors,
        )
        stdout = proc.stdout.fileno()
        os.set_blocking(stdout, False)
        sel.register(listener, selectors.EVENT_READ, "accept")
        sel.register(stdout, selectors.EVENT_READ, "stdout")
        next_send = None  # monotonic time of the next chunk, once the request is in
        stdout_open = True
        while stdout_open:
            now = time.monotonic()
            if now >= deadline:
                raise BenchError(
                    f"timed out: {len(sent)} of {STREAM_CHUNKS} chunks sent, {len(seen)} seen "
                    "on stdout"
                )
            wait = deadline - now
            if next_send is not None:
                if now >= next_send:
                    if len(sent) < STREAM_CHUNKS:
                        frame = _sse_frame(_delta(stream_marker(len(sent)).decode()))
                        sent.append(time.perf_counter_ns())
                        conn.sendall(frame)
                        next_send = time.monotonic() + STREAM_GAP
                    else:
                        conn.sendall(_stream_end())
                        conn.close()
                        conn = next_send = None
                    continue
                wait = min(wait, next_send - now)
            for key, _ in sel.select(max(0.0, wait)):
                if key.data == "stdout":
                    try:
                        data = os.read(stdout, 65536)
                    except BlockingIOError:
                        continue
                    t = time.perf_counter_ns()
                    if not data:
                        stdout_open = False
                        break
                    out += data
                    # Markers in order; one split across two reads is seen at the second.
                    while len(seen) < len(sent) and stream_marker(len(seen)) in out:
                        seen.append(t)
                elif key.data == "accept":
                    conn, _ = listener.accept()
                    sel.unregister(listener)
                    listener.close()  # one request: a retry would be refused, not served
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    conn.setblocking(False)
                    sel.register(conn, selectors.EVENT_READ, "request")
                elif key.data == "request":
                    data = conn.recv(65536)
                    request += data
                    head, ended, body = request.partition(b"\r\n\r\n")
                    length = 0
                    for line in head.split(b"\r\n")[1:]:
                        name, _, value = line.partition(b":")
                        if name.strip().lower() == b"content-length":
                            length = int(value)
                    if not data:
                        raise BenchError("the client hung up before its request ended")
                    if ended and len(body) >= length:
                        sel.unregister(conn)
                        conn.setblocking(True)
                        conn.settimeout(5)
                        if not request.startswith(b"POST /v1/chat/completions "):
                            raise BenchError(f"unexpected request: {head[:80]!r}")
                        conn.sendall(
                            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                            b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n"
                            b"Connection: close\r\n\r\n" + _sse_frame(_delta(""))
                        )
                        next_send = time.monotonic() + STREAM_GAP
        code = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        if code != 0 or len(seen) < STREAM_CHUNKS:
            raise BenchError(f"exit {code}, {len(seen)} of {STREAM_CHUNKS} chunks seen on stdout")
        return [b - a for a, b in zip(sent, seen, strict=True)]
    except (BenchError, OSError, subprocess.TimeoutExpired) as exc:
        # What the child said is the likeliest explanation (its last lines on stderr).
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        errors.seek(0)
        said = errors.read().decode(errors="replace").strip().splitlines()[-3:]
        raise BenchError(" / ".join([str(exc), *said])) from None
    finally:
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
        if conn is not None:
            conn.close()
        listener.close()
        sel.close()
        errors.close()


def stream_latency(python: str, tmp: str, env: dict[str, str], runs: int):
    """Figure 4: (latencies in ns over every chunk of every run, runs done).

    The real CLI in script mode, `run --live` with a one-step workflow in a fresh git
    repository, streaming from a loopback server in this process. Nothing may leave
    127.0.0.1: the proxy variables go (aethr never proxies loopback anyway), and so does
    every OPENAI_* variable but the base URL and a fake key. AETHR_TIMEOUT and no retries
    bound a stalled run. At most STREAM_RUNS runs, all within STREAM_BUDGET seconds.
    """
    deadline = time.monotonic() + STREAM_BUDGET
    repo = os.path.join(tmp, "stream")
    write(os.path.join(repo, "README.md"), "# stream\n")
    git(["init", "-q"], repo, env)
    git(["add", "-A"], repo, env)
    git(["commit", "-q", "-m", "initial"], repo, env)
    wf_path = os.path.join(tmp, "stream.aethr.yaml")
    write(wf_path, STREAM_WORKFLOW)
    cenv = {
        k: v
        for k, v in env.items()
        if not k.upper().endswith("_PROXY") and not k.upper().startswith("OPENAI_")
    }
    cenv.update(OPENAI_API_KEY=STREAM_KEY, AETHR_TIMEOUT="10", AETHR_MAX_RETRIES="0")
    argv = [python, SCRIPT, "run", "--live", "--workflow", wf_path, "stream the answer"]
    latencies: list[int] = []
    done = 0
    longest = 0.0
    for _ in range(min(runs, STREAM_RUNS)):
        t0 = time.monotonic()
        if done and t0 + longest * 1.5 > deadline:
            break  # another run would not fit in the budget
        latencies += stream_once(argv, repo, cenv, deadline)
        done += 1
        longest = max(longest, time.monotonic() - t0)
    return latencies, done


# -- Figures ---------------------------------------------------------------------------------


def ms(s: float) -> str:
    return f"{s * 1000:.1f} ms"


def ms3(s: float) -> str:
    return f"{s * 1000:.3f} ms"


def mb(kib: float) -> str:
    return f"{kib / 1024:.1f} MB"


class Table:
    """The Markdown table; `failed` when any target is missed."""

    HEAD = ("figure", "median", "min", "baseline (median)", "ratio", "target", "result")

    def __init__(self) -> None:
        self.rows: list[tuple[str, ...]] = []
        self.failed = False

    def ratio(self, figure, times, base_times, base_label, limit):
        med, bmed = statistics.median(times), statistics.median(base_times)
        r = med / bmed
        ok = r <= limit
        self.failed |= not ok
        self.rows.append(
            (
                figure,
                ms(med),
                ms(min(times)),
                f"{ms(bmed)} ({base_label})",
                f"{r:.2f}×",
                f"≤ {limit:g}×",
                "PASS" if ok else "FAIL",
            )
        )

    def info(self, figure, times, base_times, base_label):
        med, bmed = statistics.median(times), statistics.median(base_times)
        self.rows.append(
            (
                figure,
                ms(med),
                ms(min(times)),
                f"{ms(bmed)} ({base_label})",
                f"{med / bmed:.2f}×",
                "—",
                "info",
            )
        )

    def absolute(self, figure, med, low, baseline, target, ok, unit=ms):
        self.failed |= not ok
        self.rows.append(
            (figure, unit(med), unit(low), baseline, "—", target, "PASS" if ok else "FAIL")
        )

    def na(self, figure, why, target):
        self.rows.append((figure, why, "—", "—", "—", target, "n/a"))

    def missed(self, figure, why, target):
        """A figure that could not be measured because the thing measured failed."""
        self.failed = True
        self.rows.append((figure, why, "—", "—", "—", target, "FAIL"))

    def markdown(self) -> str:
        lines = ["| " + " | ".join(self.HEAD) + " |", "|" + "---|" * len(self.HEAD)]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines)


def peak_rss_kib(python: str, argv: list[str], cwd: str, env: dict[str, str]) -> tuple[int, str]:
    """Peak RSS of one run of `argv`, and how it was measured.

    GNU time is preferred: a tiny C parent. The Python helper is the fallback; a subprocess
    child can inherit the parent's high-water mark across vfork/exec, so the helper is a
    bare interpreter whose own RSS is below anything aethr could use.
    """
    gnu_time = "/usr/bin/time"
    if os.path.exists(gnu_time):
        fd, out = tempfile.mkstemp(prefix="rss-")
        os.close(fd)
        try:
            r = run_silent([gnu_time, "-f", "%M", "-o", out, *argv], cwd, env)
            with open(out, encoding="utf-8") as f:
                last = (f.read().strip().splitlines() or [""])[-1]
            if r.returncode in (0, 1) and last.isdigit():
                return int(last), "/usr/bin/time -f %M"
        finally:
            os.unlink(out)
    got = check([python, "-c", RSS_HELPER, cwd, *argv], cwd, env).strip()
    return int(got), "getrusage(RUSAGE_CHILDREN) in a one-child helper"


def interpreter(python: str) -> tuple[str, str]:
    """(real executable, version) of `python`: a pyenv shim is a shell script, not Python."""
    out = check(
        [python, "-c", "import sys; print(sys.executable); print(sys.version.split()[0])"],
        os.getcwd(),
        child_env(),
    ).splitlines()
    return out[0], out[1]


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    env = child_env()
    python, version = interpreter(args.python)
    runs = args.runs or (5 if args.quick else 20)
    tmp = tempfile.mkdtemp(prefix="aethr-bench-")
    notes: list[str] = []
    table = Table()
    try:
        print(f"Setting up in {tmp} ...", file=sys.stderr, flush=True)
        vpy, entry, method, tried = install(python, tmp, env, args.online)
        small = os.path.join(tmp, "small")
        small_repo(small, env)
        big = os.path.join(tmp, "big")
        t0 = time.perf_counter()
        n_py = big_repo(big, args.files, env)
        build_s = time.perf_counter() - t0

        # 1. Installed entry point vs the venv's own `-c pass`.
        print("Timing start-up ...", file=sys.stderr, flush=True)
        vpass = [[vpy, "-c", "pass"]]
        entry, old_entry, script_note = console_scripts(vpy, entry)
        notes.append(script_note)
        for words in (["version"], ["init", "--list"]):
            check([entry, *words], tmp, env)
            a, b = measure([[entry, *words]], vpass, runs, tmp, env)
            table.ratio(
                f"`aethr {' '.join(words)}` (installed entry point)", a, b, "`-c pass`, venv", 1.5
            )
        a, b = measure([[old_entry, "version"]], vpass, runs, tmp, env)
        table.info("same, pip 24's console script (imports `re`)", a, b, "`-c pass`, venv")
        cached = any(
            name.startswith("aethr.") and name.endswith(".pyc")
            for dirpath, _, names in os.walk(os.path.dirname(os.path.dirname(entry)))
            for name in names
        )
        if not cached:
            notes.append(
                "WARNING: no aethr .pyc in the venv after the warm-up: the installed "
                "figures include compiling aethr.py"
            )

        # 2. Script mode: aethr.py is compiled on every run.
        bpass = [[python, "-c", "pass"]]
        a, b = measure([[python, SCRIPT, "version"]], bpass, runs, tmp, env)
        table.ratio("`python aethr.py version` (script, compiled every run)", a, b, "`-c pass`", 5)

        # 3. --show-prompt, default preset, vs the two processes it cannot avoid.
        print("Timing run --show-prompt ...", file=sys.stderr, flush=True)
        shown = check([entry, "run", "--show-prompt", TASK], small, env)
        if "src/demo/core.py" not in shown or "src/demo/cli.py" not in shown:
            raise BenchError("--show-prompt in the small repository shows no diff:\n" + shown)
        a, b = measure(
            [[entry, "run", "--show-prompt", TASK]], [*vpass, ["git", "diff"]], runs, small, env
        )
        table.ratio(
            "`aethr run --show-prompt`, default preset, small repo (installed)",
            a,
            b,
            "`-c pass` + `git diff`",
            2.5,
        )
        a, b = measure(
            [[python, SCRIPT, "run", "--show-prompt", TASK]],
            [*bpass, ["git", "diff"]],
            runs,
            small,
            env,
        )
        table.info("same, script mode (for information)", a, b, "`-c pass` + `git diff`")

        # 4. Stream latency: one chunk from a loopback socket to the CLI's stdout.
        figure = "stream: one chunk, socket to stdout (`python aethr.py run --live`)"
        probe = f"import aethr; print(*[a for a in {STREAM_ATTRS!r} if hasattr(aethr, a)])"
        if not check([vpy, "-c", probe], tmp, env).split():
            table.na(figure, "n/a (live clients not implemented yet)", "< 1 ms")
        else:
            print("Timing stream latency ...", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            try:
                lat, stream_runs = stream_latency(python, tmp, env, runs)
            except (BenchError, OSError) as exc:
                table.missed(figure, "the live run failed", "< 1 ms")
                notes.append(f"stream: the live run failed: {exc}")
            else:
                secs = sorted(ns / 1e9 for ns in lat)
                med = statistics.median(secs)
                p95 = secs[max(0, -(-len(secs) * 95 // 100) - 1)]  # nearest rank
                table.absolute(
                    figure, med, secs[0], f"— (p95 {ms3(p95)})", "< 1 ms", med < 0.001, unit=ms3
                )
                notes.append(
                    f"stream: {len(secs)} chunks ({stream_runs} runs × {STREAM_CHUNKS}, one "
                    f"`sendall` each, {STREAM_GAP * 1000:g} ms apart) from a loopback OpenAI SSE "
                    "server in the benchmark process to `python aethr.py run --live`; latency = "
                    "the read of the child's stdout pipe that completes a chunk's marker − just "
                    "before the chunk's `sendall`, one perf_counter_ns clock. It includes the "
                    "benchmark's own pipe read (selector wake-up + os.read); "
                    f"median {ms3(med)}, p95 {ms3(p95)}, max {ms3(secs[-1])} "
                    f"({time.perf_counter() - t0:.1f} s)"
                )

        # 5. glob:**/*.py over the big repository: in-process, then through the CLI.
        print(f"Timing glob over {args.files:,} files ...", file=sys.stderr, flush=True)
        wf_text = (
            "workflow: bench-glob\nroles:\n  reader: Read the code.\nsteps:\n"
            "  - id: read\n    role: reader\n    context: [glob:**/*.py]\n"
        )
        got = json.loads(check([vpy, "-c", GLOB_HELPER, big, str(runs), wf_text], big, env))
        max_files = got["max_files"] or 40
        shown_files = got["body"].count("\n### ") + got["body"].startswith("### ")
        capped = (
            got["opened"] <= max_files
            and shown_files == max_files
            and f"at most {max_files} files" in got["body"]
        )
        notes.append(
            f"glob fixture: {args.files:,} committed files, {n_py:,} matching `**/*.py` (built in "
            f'{build_s:.1f} s); block summary "{got["summary"]}", {shown_files} files shown, '
            f"{got['opened']} files opened under the root: caps "
            + ("applied before reading" if capped else "NOT applied before reading")
        )
        table.absolute(
            f"`glob:**/*.py`, {args.files:,}-file repo, `collect_context` in-process",
            statistics.median(got["times"]),
            min(got["times"]),
            "—",
            "< 1 s, caps before reading",
            capped and statistics.median(got["times"]) < 1,
        )
        wf_path = os.path.join(tmp, "glob.aethr.yaml")
        write(wf_path, wf_text)
        cli = [entry, "run", "--show-prompt", "--workflow", wf_path, TASK]
        out = check(cli, big, env)
        cli_capped = f"at most {max_files} files" in out
        times = [timed([cli], big, env) for _ in range(runs)]
        table.absolute(
            f"`glob:**/*.py`, {args.files:,}-file repo, CLI `run --show-prompt`",
            statistics.median(times),
            min(times),
            "—",
            "< 1 s, caps applied",
            cli_capped and statistics.median(times) < 1,
        )

        # 6. Peak RSS of a mock run, installed and as the README's script: both are figures.
        # Script mode also pays for compiling the file (not section 13: a mock run never
        # compiles it), which is what keeps it the larger of the two.
        print("Measuring peak RSS ...", file=sys.stderr, flush=True)
        rss_runs = min(runs, 5)  # RSS barely varies; a few runs show that it does not
        base_rss = statistics.median(
            peak_rss_kib(python, bpass[0], small, env)[0] for _ in range(rss_runs)
        )
        for label, mock in (
            ("peak RSS, mock `aethr run` (installed), small repo", [entry, "run", TASK]),
            ("peak RSS, mock `python aethr.py run` (script), small repo",
             [python, SCRIPT, "run", TASK]),
        ):
            check(mock, small, env, ok=(0, 1))  # 1: the mock verdict is "revise"
            measured = [peak_rss_kib(python, mock, small, env) for _ in range(rss_runs)]
            rss, how = [kib for kib, _ in measured], measured[0][1]
            table.absolute(label, statistics.median(rss), min(rss),
                           f"{mb(base_rss)} (`-c pass`)", "< 30 MB",
                           statistics.median(rss) / 1024 < 30, unit=mb)
        notes.append(f"peak RSS: {how}, median of {rss_runs} runs; 1 MB = 1024 KiB")
        if git(["status", "--porcelain"], small, env).count("\n") != 3:
            notes.append("WARNING: the runs changed the small repository's status")
    finally:
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    aethr_version = check([python, SCRIPT, "version"], ROOT, env).strip()
    git_version = check(["git", "--version"], ROOT, env).strip()
    print(f"## Aethr benchmark ({aethr_version})\n")
    print(f"- interpreter: Python {version}, `{python}`")
    if not version.startswith(RECOMMENDED + "."):
        print(
            f"- note: SPEC §12 recommends a clean interpreter such as {RECOMMENDED}; this "
            "machine's default python3 (3.11) carries extra site-packages start-up work"
        )
    print(
        f"- machine: {platform.system()} {platform.release()} {platform.machine()}, "
        f"{os.cpu_count()} CPUs; {git_version}"
    )
    print(f"- runs: {runs} per figure (median and min); command and baseline alternate")
    print(f"- installed entry point: {method}")
    for line in tried:
        print(f"  - tried first: {line}")
    for line in notes:
        print(f"- {line}")
    print()
    print(table.markdown())
    print(f"\nTotal benchmark time: {time.perf_counter() - started:.1f} s")
    return 1 if table.failed else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--python",
        default=sys.executable,
        help="the interpreter to benchmark (default: the one running this script)",
    )
    p.add_argument("--runs", type=int, default=0, metavar="N", help="runs per figure (20)")
    p.add_argument("--quick", action="store_true", help="5 runs per figure")
    p.add_argument(
        "--files",
        type=int,
        default=BIG_FILES,
        metavar="N",
        help=f"files in the glob repository ({BIG_FILES:,}; SPEC §12 is for that)",
    )
    p.add_argument(
        "--online",
        action="store_true",
        help="let pip fetch setuptools from the package index to build aethr",
    )
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = p.parse_args(argv)
    try:
        return run(args)
    except (BenchError, subprocess.TimeoutExpired, OSError) as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

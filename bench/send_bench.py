"""End to end sending speed: store, ledger and SMTP into Postfix's smtp-sink on loopback.

Run from the repository root:

    .venv/bin/python bench/send_bench.py [--subscribers N] [--quick] [--profile]
                                         [--profile-only] [--repeat N] [--no-mailmerge]

Needs `smtp-sink` (Debian package postfix). Everything happens in a temporary
folder and on 127.0.0.1: a throwaway publication (copies of newsletter.toml,
templates/ and issues/, a SQLite ledger), N subscribers, the sample issue built
once, a campaign created and run with `newsletter.campaign`. Prints:

- the message size of the sample issue, and of a copy padded to about 27 KiB
  (the size the speed targets are stated for) when the sample is smaller;
- end to end messages/s, client CPU µs per message and peak RSS at concurrency
  1, 2 and 4, each measured configuration in a fresh subprocess so the peaks are
  per run;
- Postfix's own smtp-source into the same sink, as the ceiling of this machine, and
  smtplib alone sending the same prebuilt message on one connection: the
  calibration for the targets scaled to this machine;
- baselines on the same sink and message: mailmerge (its CLI, from a separate
  venv in bench/.venv-mailmerge, created on first use) and the naive Python
  path (Jinja2 + EmailMessage per recipient + smtplib on one connection);
- how [smtp] concurrency scales the rate against a sink that answers every
  command after ~20 ms (smtp-sink's own delays are whole seconds, so a small
  proxy in a subprocess holds each reply for 20 ms);
- peak RSS at 10,000 subscribers beside the --subscribers count;
- where the CPU goes per message: thread CPU time around each per-message step
  (exclusive of the steps it calls), and with --profile a cProfile over every
  thread (thread CPU clock);
- the issue's targets, as stated and scaled to this machine.

The newsletter package is copied once at start and every process imports that
copy, so one run measures one version of the code even while the working tree
changes.

Figures only; nothing is asserted. Exit status 2 when smtp-sink is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import io
import json
import os
import platform
import pstats
import pwd
import re
import resource
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from newsletter.ledger import lifecycle
from newsletter.send import campaign, runner

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "issues" / "2024-11-25-motivated-biden-authorize-ukraines-use-atacms.md"
SECRET = "bench-secret-not-for-production-0123456789"
MAILMERGE_VENV = ROOT / "bench" / ".venv-mailmerge"
PAD_TARGET = 27 * 1024  # bytes: the issue's "27 KB messages"
REPLY_DELAY = 0.020  # seconds: the slow sink's answer time for every command
SLOT_MARKER = re.compile(r"__nlslot_([a-z_]+?)__")
INSTALL_HINT = (
    "smtp-sink not found: it is Postfix's test server (Debian package postfix). Install it with\n"
    "    apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y postfix\n"
    "then make sure no Postfix daemon is left listening on port 25: postfix stop"
)


# --- helpers ----------------------------------------------------------------------------


def find_tool(name: str) -> str | None:
    """A Postfix tool on PATH or in the sbin folders a non-root PATH may lack."""
    return shutil.which(name) or next(
        (str(p) for d in ("/usr/sbin", "/usr/local/sbin") if (p := Path(d) / name).is_file()),
        None,
    )


def code_version() -> str:
    """The commit measured, and whether newsletter/ had uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "newsletter"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "not a git checkout"
    return f"commit {head}" + (" + uncommitted changes in newsletter/" if dirty else "")


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, proc: subprocess.Popen[Any], what: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with status {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.recv(512)  # the greeting: the server is ready
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{what} is not listening on 127.0.0.1:{port} after 10 s")


def peak_rss_mb() -> float:
    """This process's peak RSS since it started its program.

    Linux carries ru_maxrss over exec: a measurement child would report at least
    the bench's own RSS when it was forked. VmHWM belongs to the new program only.
    """
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child_env() -> dict[str, str]:
    """The environment for subprocesses: no NEWSLETTER_* from the caller's shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    env["NEWSLETTER_SECRET"] = SECRET
    if CODE_SNAPSHOT:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [CODE_SNAPSHOT, env.get("PYTHONPATH")]))
    return env


CODE_SNAPSHOT = ""  # set by snapshot_code(): the folder every process imports newsletter from


def snapshot_code(tmp: Path) -> None:
    """Copy newsletter/ once, so that every run of this bench measures the same code even
    while someone edits the working tree (and a seeded ledger keeps matching its schema)."""
    global CODE_SNAPSHOT
    folder = tmp / "code"
    shutil.copytree(
        ROOT / "newsletter", folder / "newsletter", ignore=shutil.ignore_patterns("__pycache__")
    )
    CODE_SNAPSHOT = str(folder)
    sys.path.insert(0, CODE_SNAPSHOT)


def overrides(db: Path, port: int, concurrency: int = 1) -> dict[str, str]:
    """NEWSLETTER_* values for config.load(path, environ): the temp ledger and the sink."""
    return {
        "NEWSLETTER_DATABASE_URL": f"sqlite:///{db}",
        "NEWSLETTER_SMTP_HOST": "127.0.0.1",
        "NEWSLETTER_SMTP_PORT": str(port),
        "NEWSLETTER_SMTP_SECURITY": "none",
        "NEWSLETTER_SMTP_USERNAME": "",
        "NEWSLETTER_SMTP_TIMEOUT": "30",
        "NEWSLETTER_SMTP_RATE": "0",
        "NEWSLETTER_SMTP_CONCURRENCY": str(concurrency),
    }


class ChildFailed(Exception):
    """A measurement subprocess did not report a result."""


def run_child(spec: dict[str, Any], timeout: float = 1800) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter; its last stdout line is a JSON result."""
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=timeout,
        check=False,
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines or not lines[-1].startswith("RESULT "):
        log = Path(tempfile.mkstemp(prefix="send-bench-failure-", suffix=".log")[1])
        log.write_text(proc.stdout + proc.stderr, encoding="utf-8")
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ChildFailed(
            f"{spec['mode']} run failed (exit {proc.returncode}): {last[:300]}"
            f" (full output in {log})"
        )
    for line in lines[:-1]:
        print(line)
    return dict(json.loads(lines[-1][len("RESULT ") :]))


# --- the sink and the slow proxy ----------------------------------------------------------


class Sink:
    """smtp-sink on 127.0.0.1 with running counters (-c) written to a file."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.port = free_port()
        self.log = workdir / "smtp-sink.out"
        cmd = [binary, "-c"]
        if os.geteuid() == 0:  # smtp-sink refuses to run as root without -u
            cmd += ["-u", "nobody" if _has_user("nobody") else "root"]
        cmd += [f"127.0.0.1:{self.port}", "1000"]
        self.cmd = cmd
        self._out = self.log.open("wb")
        self.proc = subprocess.Popen(cmd, stdout=self._out, stderr=subprocess.STDOUT)
        wait_listening(self.port, self.proc, "smtp-sink")

    def messages(self) -> int:
        """Messages received so far (the sink's own counter)."""
        time.sleep(0.05)
        found = re.findall(rb"mesg=(\d+)", self.log.read_bytes()[-200:])
        return int(found[-1]) if found else 0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


class SlowProxy:
    """A subprocess that forwards to the sink and holds each reply for REPLY_DELAY."""

    def __init__(self, target_port: int) -> None:
        self.port = free_port()
        spec = {"mode": "proxy", "port": self.port, "target": target_port, "delay": REPLY_DELAY}
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)],
            env=child_env(),
        )
        wait_listening(self.port, self.proc, "the 20 ms proxy")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def serve_proxy(port: int, target: int, delay: float) -> None:
    async def pipe_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    async def pipe_down(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Every chunk the server sends reaches the client `delay` after it was sent.
        loop = asyncio.get_running_loop()
        pending: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def pump() -> None:
            while data := await reader.read(65536):
                pending.put_nowait((loop.time() + delay, data))
            pending.put_nowait((0.0, b""))

        task = asyncio.create_task(pump())
        while True:
            due, data = await pending.get()
            if not data:
                break
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()
        await task
        writer.close()

    async def handle(c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        try:
            s_reader, s_writer = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            c_writer.close()
            return
        await asyncio.gather(
            pipe_up(c_reader, s_writer), pipe_down(s_reader, c_writer), return_exceptions=True
        )

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1000)
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        async with server:
            await stop.wait()

    asyncio.run(main())


# --- the publication ----------------------------------------------------------------------


@dataclass
class Publication:
    root: Path
    config_path: Path
    issue: Path  # the sample issue, as shipped
    padded: Path | None  # a copy padded to ~27 KiB, when the sample is smaller
    sizes: dict[str, int]  # issue label -> message bytes for the sample subscriber


def make_publication(tmp: Path) -> Publication:
    from newsletter import config as config_mod
    from newsletter.issue import publish

    root = tmp / "pub"
    root.mkdir()
    shutil.copy(ROOT / "newsletter.toml", root / "newsletter.toml")
    shutil.copytree(ROOT / "templates", root / "templates")
    shutil.copytree(ROOT / "issues", root / "issues")
    os.environ["NEWSLETTER_SECRET"] = SECRET  # tokens.load_secret reads the process env
    config = config_mod.load(root / "newsletter.toml", overrides(tmp / "unused.db", 25))
    issue = root / "issues" / SAMPLE.name

    def size(path: Path) -> int:
        built = publish.build_issue(config, publish.load_issue(path))
        return len(publish.sample(config, built).message)

    sizes = {"sample": size(issue)}
    padded = None
    if sizes["sample"] < PAD_TARGET:
        padded = issue.with_name(f"{issue.stem}-padded.md")
        text = issue.read_text(encoding="utf-8")
        body = text.split("\n---\n", 1)[1]
        paragraphs = [p for p in body.split("\n\n") if p.strip() and not p.startswith("#")]
        extra = ["", "## Further reading", ""]
        for n in range(500):
            extra.append(paragraphs[n % len(paragraphs)] + "\n")
            padded.write_text(text.rstrip("\n") + "\n" + "\n".join(extra), encoding="utf-8")
            sizes["padded"] = size(padded)
            if sizes["padded"] >= PAD_TARGET:
                break
    return Publication(root, root / "newsletter.toml", issue, padded, sizes)


def seed_database(path: Path, n: int, attributes: bool = False) -> None:
    """N active subscribers through the store's own import path, in chunks; with
    `attributes`, each has the two the merge-field runs use (company, city)."""
    from newsletter.ledger.store import Store, SubscriberRow

    store = Store.open(f"sqlite:///{path}")
    try:
        for start in range(0, n, 5000):
            rows = [
                SubscriberRow(
                    f"reader{i:06d}@example.com",
                    f"Reader {i}",
                    {"company": f"Company {i}", "city": "Irvine"} if attributes else {},
                )
                for i in range(start, min(n, start + 5000))
            ]
            store.upsert_subscribers(rows)
    finally:
        store.close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


class Databases:
    """One seeded ledger per subscriber count; every run gets its own copy."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.seeded: dict[tuple[int, bool], Path] = {}
        self.runs = 0

    def fresh(self, n: int, attributes: bool = False) -> Path:
        if (n, attributes) not in self.seeded:
            path = self.tmp / f"seed-{n}{'-attributes' if attributes else ''}.db"
            t0 = time.perf_counter()
            seed_database(path, n, attributes)
            print(f"  (seeded {n:,} subscribers in {time.perf_counter() - t0:.1f} s)")
            self.seeded[(n, attributes)] = path
        self.runs += 1
        run = self.tmp / f"run-{self.runs}.db"
        shutil.copy(self.seeded[(n, attributes)], run)
        return run


# --- measurements, child side -------------------------------------------------------------


def child_ours(spec: dict[str, Any]) -> dict[str, Any]:
    """Create and run a campaign end to end: store, ledger, SMTP."""

    from newsletter import config as config_mod
    from newsletter.issue import publish
    from newsletter.ledger.store import Store

    n = spec["n"]
    config = config_mod.load(spec["config"], spec["env"])
    if spec.get("pool"):
        # Bench-only workaround, labelled as such in the report: a connection pool large
        # enough for one writer connection per SMTP worker plus the reader and heartbeat.
        import sqlalchemy as sa

        create_engine = sa.create_engine

        def roomy_engine(url: str, **kw: Any) -> Any:
            return create_engine(url, pool_size=spec["pool"], max_overflow=10, **kw)

        sa.create_engine = roomy_engine  # type: ignore[assignment]
    store = Store.open(config.database_url)
    built = publish.build_issue(config, publish.load_issue(spec["issue"]))
    size = len(publish.sample(config, built).message)
    t0 = time.perf_counter()
    campaign_id = lifecycle.create(store, built)
    create_s = time.perf_counter() - t0
    rss_before = peak_rss_mb()

    phases: dict[str, float] = {}
    calls: dict[str, int] = {}
    if spec.get("phases"):
        from newsletter.mail import message, transport
        from newsletter.send import tracking

        # Exclusive times: SmtpConnection.send runs `meanwhile` between writing a message
        # and reading its reply, and the runner's takes the next row there (_take, which
        # may _fetch) and makes its message (_message: slot values, click-link values
        # when [tracking] clicks is on, render). Each step's figure leaves out the
        # wrapped steps it calls, so nothing is counted twice.
        nested = threading.local()
        for cls, name, key in (
            (publish.Personalizer, "values", "slot values (signed token)"),
            (tracking.LinkSlots, "values", "click-link slot values (LinkSlots.values)"),
            (message.MessageTemplate, "render", "MessageTemplate.render"),
            (runner.Runner, "_commit", "ledger transaction (_commit)"),
            (
                transport.SmtpConnection,
                "send",
                "SMTP transaction (send), without the next message made meanwhile",
            ),
            (runner.Runner, "_fetch", "fetching rows (skip + select, per 500)"),
            (runner.Runner, "_take", "taking a row (_take), without fetching"),
            (runner.Runner, "_message", "_message itself, without the slot values and render"),
        ):
            phases[key] = 0.0
            calls[key] = 0
            setattr(cls, name, _thread_cpu(getattr(cls, name), phases, key, nested, calls))

    profiles: list[Any] = []
    if spec.get("profile"):
        import cProfile

        work = runner.Runner.work

        def profiled_work(self: Any) -> None:
            prof = cProfile.Profile(time.thread_time)  # CPU time, not time spent waiting
            profiles.append(prof)
            prof.enable()
            try:
                work(self)
            finally:
                prof.disable()

        runner.Runner.work = profiled_work  # type: ignore[method-assign]
        main_prof = cProfile.Profile(time.thread_time)
        profiles.append(main_prof)
        main_prof.enable()

    cpu0, wall0 = time.process_time(), time.perf_counter()
    result = campaign.run(store, config, campaign_id)
    wall = time.perf_counter() - wall0
    cpu = time.process_time() - cpu0
    if spec.get("profile"):
        main_prof.disable()
    store.close()
    out = {
        "n": n,
        "sent": result.sent,
        "status": result.status,
        "error": result.error,
        "wall": wall,
        "cpu": cpu,
        "create_s": create_s,
        "rss_before_mb": rss_before,
        "rss_peak_mb": peak_rss_mb(),
        "size": size,
    }
    if phases:
        out["phases"] = phases
        out["phase_calls"] = calls
        out["wrap_cost"] = _wrap_cost()
    if profiles:
        out["profile"] = profile_report(profiles, n, spec.get("top", 15))
    return out


def _thread_cpu(
    fn: Any,
    into: dict[str, float],
    key: str,
    nested: threading.local,
    calls: dict[str, int] | None = None,
) -> Any:
    """`fn`, adding the calling thread's CPU time spent in it to into[key], less the time
    spent in other wrapped functions it calls on the same thread (`nested.inner` holds
    that time for the call in progress): every step is counted once. Counts the calls
    in calls[key] when given."""
    clock = time.thread_time

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if calls is not None:
            calls[key] += 1
        outer = getattr(nested, "inner", 0.0)  # the enclosing wrapped call's nested time
        nested.inner = 0.0
        start = clock()
        try:
            return fn(*args, **kwargs)
        finally:
            spent = clock() - start
            into[key] += spent - nested.inner
            nested.inner = outer + spent

    return wrapper


def _wrap_cost(n: int = 20_000) -> float:
    """Thread CPU seconds one wrapped call adds (two clock reads and the bookkeeping)."""

    def noop() -> None:
        pass

    wrapped = _thread_cpu(noop, {"x": 0.0}, "x", threading.local(), {"x": 0})
    t0 = time.thread_time()
    for _ in range(n):
        noop()
    t1 = time.thread_time()
    for _ in range(n):
        wrapped()
    t2 = time.thread_time()
    return max(0.0, ((t2 - t1) - (t1 - t0)) / n)


def profile_report(profiles: list[Any], n: int, top: int) -> str:
    stats = pstats.Stats(profiles[0])
    for prof in profiles[1:]:
        stats.add(prof)
    rows = []
    for (path, line, func), (_cc, ncalls, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        where = func if path == "~" else f"{_short(path)}:{line}({func})"
        rows.append((where, ncalls, tt, ct))
    out = io.StringIO()
    total = sum(r[2] for r in rows)
    out.write(
        f"  profiled thread CPU {total / n * 1e6:.0f} µs per message, all threads"
        " (cProfile's own overhead inflates it)\n"
    )
    for key, label in ((3, "cumulative"), (2, "tottime")):
        out.write(f"\n  top {top} by {label} (µs per message; calls per message)\n")
        out.write(f"  {'tottime':>8} {'cumtime':>8} {'calls':>7}  function\n")
        for where, ncalls, tt, ct in sorted(rows, key=lambda r: -r[key])[:top]:
            out.write(f"  {tt / n * 1e6:8.1f} {ct / n * 1e6:8.1f} {ncalls / n:7.2f}  {where}\n")
    return out.getvalue()


def _short(path: str) -> str:
    for marker in ("site-packages/", "/lib/python3", "/code/"):
        if marker in path:
            return path.split(marker, 1)[1]
    try:
        return str(Path(path).relative_to(ROOT))
    except ValueError:
        return path


def child_naive(spec: dict[str, Any]) -> dict[str, Any]:
    """Per recipient: Jinja2 render, an EmailMessage from scratch, smtplib.sendmail."""
    import email.policy
    import smtplib
    from email.message import EmailMessage
    from email.utils import formataddr, formatdate, make_msgid

    import jinja2

    from newsletter import config as config_mod
    from newsletter.issue import publish

    config = config_mod.load(spec["config"], spec["env"])
    built = publish.build_issue(config, publish.load_issue(spec["issue"]))
    pub = config.publication
    personalizer = publish.Personalizer(config, built.issue.slug)
    to_jinja = {"name": "{{ name }}", "email": "{{ email }}"}

    def jinja_source(source: str) -> str:
        return SLOT_MARKER.sub(lambda m: to_jinja.get(m[1], "{{ " + m[1] + " }}"), source)

    html_t = jinja2.Environment(autoescape=True).from_string(jinja_source(built.html.source))
    text_t = jinja2.Environment(autoescape=False).from_string(jinja_source(built.text.source))
    domain = pub.from_addr.rpartition("@")[2].rstrip(">")
    sender = pub.from_addr.rpartition("<")[2].rstrip(">")
    with contextlib.closing(sqlite3.connect(spec["db"])) as db:
        recipients = db.execute(
            "SELECT email, name FROM subscribers ORDER BY id LIMIT ?", (spec["n"],)
        ).fetchall()
    smtp = smtplib.SMTP("127.0.0.1", spec["port"], timeout=30)
    smtp.ehlo()
    size = 0
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for address, name in recipients:
        values, _token = personalizer.values(address, name)
        msg = EmailMessage(policy=email.policy.SMTP)
        msg["From"] = pub.from_addr
        msg["To"] = formataddr((name, address))
        msg["Subject"] = built.issue.subject
        msg["Date"] = formatdate(usegmt=True)
        msg["Message-ID"] = make_msgid(domain=domain)
        msg["Reply-To"] = pub.reply_to
        msg["List-Id"] = f"{pub.name} <{pub.list_id}>"
        msg["List-Unsubscribe"] = f"<{values['unsubscribe_url']}>"
        msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        msg.set_content(text_t.render(values))
        msg.add_alternative(html_t.render(values), subtype="html")
        data = msg.as_bytes()
        size += len(data)
        smtp.sendmail(sender, [address], data)
    wall = time.perf_counter() - wall0
    cpu = time.process_time() - cpu0
    smtp.quit()
    n = len(recipients)
    return {
        "n": n,
        "wall": wall,
        "cpu": cpu,
        "size": size // max(n, 1),
        "rss_peak_mb": peak_rss_mb(),
    }


def child_smtplib(spec: dict[str, Any]) -> dict[str, Any]:
    """smtplib alone: one connection, the same prebuilt message bytes sent N times."""
    import smtplib

    data = Path(spec["message"]).read_bytes()
    sender = spec["sender"]
    n = spec["n"]
    smtp = smtplib.SMTP("127.0.0.1", spec["port"], timeout=30)
    smtp.ehlo()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for i in range(n):
        smtp.sendmail(sender, [f"reader{i}@example.com"], data)
    wall = time.perf_counter() - wall0
    cpu = time.process_time() - cpu0
    smtp.quit()
    return {"n": n, "wall": wall, "cpu": cpu, "size": len(data), "rss_peak_mb": peak_rss_mb()}


def child_main(raw: str) -> None:
    spec = json.loads(raw)
    if spec["mode"] == "proxy":
        serve_proxy(spec["port"], spec["target"], spec["delay"])
        return
    os.environ["NEWSLETTER_SECRET"] = SECRET
    modes = {"ours": child_ours, "naive": child_naive, "smtplib": child_smtplib}
    result = modes[spec["mode"]](spec)
    print("RESULT " + json.dumps(result), flush=True)


# --- baselines, parent side ---------------------------------------------------------------


def mailmerge_binary(explicit: str | None) -> str | None:
    """mailmerge from its own venv (never the project's), created on first use."""
    if explicit:
        return explicit
    binary = MAILMERGE_VENV / "bin" / "mailmerge"
    if binary.exists():
        return str(binary)
    print(f"  creating {MAILMERGE_VENV.relative_to(ROOT)} and installing mailmerge into it")
    try:
        subprocess.run([sys.executable, "-m", "venv", str(MAILMERGE_VENV)], check=True)
        subprocess.run(
            [str(MAILMERGE_VENV / "bin" / "pip"), "install", "-q", "mailmerge"], check=True
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"  cannot install mailmerge ({exc}); skipping that baseline. By hand:")
        venv = MAILMERGE_VENV
        print(f"    python3 -m venv {venv} && {venv}/bin/pip install mailmerge")
        return None
    return str(binary)


def mailmerge_files(
    pub: Publication, issue: Path, db: Path, n: int, port: int, folder: Path
) -> list[str]:
    """Template, database and config for mailmerge: the same issue, slots as Jinja2."""
    from newsletter import config as config_mod
    from newsletter.issue import publish

    folder.mkdir()
    config = config_mod.load(pub.config_path, overrides(db, port))
    built = publish.build_issue(config, publish.load_issue(issue))
    sample = publish.sample(config, built).message.decode("ascii")
    head = sample.split("\r\n\r\n", 1)[0].replace("\r\n ", " ")
    subject = next(h for h in head.split("\r\n") if h.startswith("Subject: "))
    pubcfg = config.publication

    def jinja(source: str) -> str:
        out = []
        for i, piece in enumerate(SLOT_MARKER.split(source)):
            if i % 2:
                out.append("{{ " + piece + " }}")
            elif "{" in piece:
                out.append("{% raw %}" + piece + "{% endraw %}")
            else:
                out.append(piece)
        return "".join(out)

    boundary = "==bench-boundary=="
    template = "\n".join(
        [
            "TO: {{ name }} <{{ email }}>",
            f"FROM: {pubcfg.from_addr}",
            subject,
            f"Reply-To: {pubcfg.reply_to}",
            f"List-Id: {pubcfg.name} <{pubcfg.list_id}>",
            "List-Unsubscribe: <{{ unsubscribe_url }}>",
            "List-Unsubscribe-Post: List-Unsubscribe=One-Click",
            "MIME-Version: 1.0",
            f'Content-Type: multipart/alternative; boundary="{boundary}"',
            "",
            f"--{boundary}",
            "Content-Type: text/plain; charset=utf-8",
            "",
            jinja(built.text.source),
            f"--{boundary}",
            "Content-Type: text/html; charset=utf-8",
            "",
            jinja(built.html.source),
            f"--{boundary}--",
            "",
        ]
    )
    (folder / "template.txt").write_text(template, encoding="utf-8")
    personalizer = publish.Personalizer(config, built.issue.slug)
    with (folder / "database.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["email", "name", "unsubscribe_url", "view_online_url"])
        with contextlib.closing(sqlite3.connect(db)) as conn:
            for address, name in conn.execute(
                "SELECT email, name FROM subscribers ORDER BY id LIMIT ?", (n,)
            ):
                values, _ = personalizer.values(address, name)
                writer.writerow(
                    [address, name, values["unsubscribe_url"], values["view_online_url"]]
                )
    (folder / "server.conf").write_text(
        f"[smtp_server]\nhost = 127.0.0.1\nport = {port}\nratelimit = 0\n", encoding="utf-8"
    )
    return [
        "--template",
        str(folder / "template.txt"),
        "--database",
        str(folder / "database.csv"),
        "--config",
        str(folder / "server.conf"),
    ]


def run_mailmerge(binary: str, files: list[str], n: int) -> dict[str, Any]:
    # The size of what it sends: one dry-run message, printed raw.
    dry = subprocess.run(
        [binary, "--dry-run", "--limit", "1", "--output-format", "raw", *files],
        capture_output=True,
        check=True,
    ).stdout
    body = dry.split(b"\n", 1)[1].rsplit(b">>> ", 1)[0]
    size = len(body.rstrip(b"\n").replace(b"\n", b"\r\n")) + 2
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(
        [binary, "--no-dry-run", "--no-limit", "--output-format", "raw", *files],
        stdout=subprocess.DEVNULL,
        check=True,
    )
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {"n": n, "wall": wall, "cpu": cpu, "size": size}


def run_smtp_source(binary: str, port: int, message: bytes, n: int, sessions: int) -> float:
    """Postfix's own client into the same sink, reusing connections (-d): messages/s."""
    with tempfile.NamedTemporaryFile("wb", suffix=".eml") as fh:
        fh.write(message.replace(b"\r\n", b"\n"))
        fh.flush()
        t0 = time.perf_counter()
        subprocess.run(
            [binary, "-d", "-s", str(sessions), "-m", str(n), "-F", fh.name, f"127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL,
            check=True,
        )
        return n / (time.perf_counter() - t0)


# --- the report ---------------------------------------------------------------------------

Result = dict[str, Any]


def rate(r: Result) -> float:
    return float(r["n"] / r["wall"])


def cpu_us(r: Result) -> float:
    return float(r["cpu"] / r["n"] * 1e6)


def kib(size: int) -> str:
    return f"{size / 1024:.1f} KiB ({size:,} bytes)"


def problems(r: Result) -> str:
    found = []
    if "sent" in r and (r["sent"] != r["n"] or r["status"] != "done"):
        found.append(f"sent {r['sent']} of {r['n']}, status {r['status']} {r['error']}")
    if r.get("sink") is not None and r["sink"] != r["n"]:
        found.append(f"the sink counted {r['sink']}")
    return "  !! " + "; ".join(found) if found else ""


def line(label: str, r: Result | None, error: str = "", rss: bool = True) -> None:
    if r is None:
        print(f"  {label:<27} FAILED: {error}")
        return
    mem = f"  peak RSS {r['rss_peak_mb']:5.1f} MB" if rss and "rss_peak_mb" in r else ""
    print(
        f"  {label:<27} {rate(r):7,.0f} msg/s {cpu_us(r):7,.0f} µs CPU/msg{mem}"
        f"  ({r['n']:,} in {r['wall']:.1f} s){problems(r)}"
    )


@dataclass
class Counts:
    main: int
    baseline_naive: int
    baseline_mailmerge: int
    scaling: int
    reference: int


def counts_for(args: argparse.Namespace) -> Counts:
    n = args.subscribers or (2000 if args.quick else 10_000)
    if args.quick:
        return Counts(n, min(n, 1000), min(n, 300), 200, min(n, 5000))
    return Counts(n, min(n, 10_000), min(n, 2000), 1000, min(n, 20_000))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--subscribers", type=int, help="subscribers (default 10,000)")
    parser.add_argument("--quick", action="store_true", help="small counts, a fast check")
    parser.add_argument("--profile", action="store_true", help="add a cProfile of our path")
    parser.add_argument(
        "--repeat", type=int, help="runs of the headline figure, median kept (default 3)"
    )
    parser.add_argument("--profile-only", action="store_true", help="only the cProfile run")
    parser.add_argument(
        "--fields-only", action="store_true", help="only the merge-field comparison"
    )
    parser.add_argument("--no-mailmerge", action="store_true", help="skip that baseline")
    parser.add_argument("--mailmerge", help="a mailmerge executable (default: its own venv)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args.child)
        return
    if args.repeat is None:
        args.repeat = 3 if not args.quick and (args.subscribers or 10_000) <= 10_000 else 1

    sink_bin = find_tool("smtp-sink")
    if sink_bin is None:
        print(INSTALL_HINT, file=sys.stderr)
        sys.exit(2)
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="send-bench-")))
        snapshot_code(tmp)
        sink = Sink(sink_bin, tmp)
        stack.callback(sink.stop)
        bench = Bench(args, counts_for(args), make_publication(tmp), sink, stack, tmp)
        print(
            f"send_bench: {platform.python_implementation()} {platform.python_version()},"
            f" {os.cpu_count()} CPUs, {bench.counts.main:,} subscribers"
        )
        print(f"  code: {code_version()}, copied at start; load average {load_average()}")
        print(f"  sink: {' '.join(sink.cmd)}")
        bench.run()
    bench.summary()
    dkim_cost()
    print(
        f"\ntotal bench time {time.perf_counter() - started:.0f} s; load average now"
        f" {load_average()} (other work on the machine lowers every figure)"
    )


class Bench:
    def __init__(
        self,
        args: argparse.Namespace,
        counts: Counts,
        pub: Publication,
        sink: Sink,
        stack: contextlib.ExitStack,
        tmp: Path,
    ) -> None:
        self.args = args
        self.counts = counts
        self.pub = pub
        self.sink = sink
        self.stack = stack
        self.tmp = tmp
        self.dbs = Databases(tmp)
        self.issue = pub.padded or pub.issue  # the ~27 KiB message every comparison uses
        self.label = "padded ~27 KiB" if pub.padded else "sample"
        self.main: Result | None = None
        self.best: Result | None = None
        self.naive: Result | None = None
        self.mailmerge: Result | None = None
        self.memory: dict[int, Result | None] = {}
        # Calibration measured by reference(), for the targets scaled to this machine.
        self.source_rate: dict[int, float] = {}  # smtp-source msg/s by connections
        self.smtplib: Result | None = None  # smtplib alone, the prebuilt message

    def ours(
        self,
        issue: Path,
        n: int,
        concurrency: int,
        port: int,
        attributes: bool = False,
        **extra: Any,
    ) -> Result:
        db = self.dbs.fresh(n, attributes)
        before = self.sink.messages()
        spec = {
            "mode": "ours",
            "n": n,
            "config": str(self.pub.config_path),
            "env": overrides(db, port, concurrency),
            "issue": str(issue),
            **extra,
        }
        r = run_child(spec)
        r["sink"] = self.sink.messages() - before
        return r

    def try_ours(self, label: str, *a: Any, **kw: Any) -> Result | None:
        try:
            r = self.ours(*a, **kw)
        except ChildFailed as exc:
            line(label, None, str(exc))
            return None
        line(label, r)
        return r

    def run(self) -> None:
        if self.args.profile_only:
            self.sizes()
            self.phases()
            self.profile()
            return
        self.sizes()
        if self.args.fields_only:
            self.merge_fields()
            return
        self.end_to_end()
        self.merge_fields()
        self.reference()
        self.baselines()
        self.scaling()
        self.memory_runs()
        self.phases()
        if self.args.profile:
            self.profile()

    def sizes(self) -> None:
        pub = self.pub
        print("\nmessage size (the complete message for the sample subscriber):")
        print(f"  sample issue {pub.issue.name}: {kib(pub.sizes['sample'])}")
        if pub.padded:
            print(f"  padded copy  {pub.padded.name}: {kib(pub.sizes['padded'])}")
            print("  the sample is under 27 KiB: the padded copy is the comparable figure,")
            print("  and the one every comparison below sends")

    def merge_fields(self) -> None:
        """Issue 19's promise: two merge fields cost within 10% of the CPU per message of
        an issue without, both sent to the same list (subscribers with the attributes),
        taking turns in this run, median of the repeats."""
        c = self.counts
        fields = self.issue.with_name(f"{self.issue.stem}-fields.md")
        head, sep, body = self.issue.read_text(encoding="utf-8").partition("\n---\n")
        line = (
            'Hello {{ subscriber.company | default("friend") }} in {{ subscriber.city | upper }}.'
        )
        fields.write_text(f"{head}{sep}\n{line}\n\n{body}", encoding="utf-8")
        print(
            f"\nmerge fields ({self.label}, concurrency 1, {c.main:,} subscribers with two"
            " attributes; the runs take turns):"
        )
        found: dict[str, list[Result]] = {"no fields": [], "two fields": []}
        for k in range(max(self.args.repeat, 3)):
            for label, issue in (("no fields", self.issue), ("two fields", fields)):
                r = self.try_ours(
                    f"{label} ({k + 1})", issue, c.main, 1, self.sink.port, attributes=True
                )
                if r:
                    found[label].append(r)
        if not all(found.values()):
            return
        cpu = {label: sorted(cpu_us(r) for r in rs)[len(rs) // 2] for label, rs in found.items()}
        ratio = cpu["two fields"] / cpu["no fields"]
        print(
            f"  median CPU/msg: no fields {cpu['no fields']:,.0f} µs, two fields"
            f" {cpu['two fields']:,.0f} µs: {ratio:.2f}x (promise: within 1.10x)"
        )

    def end_to_end(self) -> None:
        c = self.counts
        print(
            "\nend to end (lifecycle.create + campaign.run: store, ledger, SMTP), fast sink,"
            f" {c.main:,} subscribers:"
        )
        runs = [("sample", self.pub.issue, 1)]
        if self.pub.padded:
            runs.append((self.label, self.issue, 1))
        runs += [(self.label, self.issue, 2), (self.label, self.issue, 4)]
        found: dict[tuple[str, int], Result | None] = {}
        for label, issue, conc in runs:
            r = self.try_ours(f"{label}, concurrency {conc}", issue, c.main, conc, self.sink.port)
            found[(label, conc)] = r
            if (label, conc) == (self.label, 1) and r and self.args.repeat > 1:
                # The headline figure: repeat it and keep the median run (shared machines).
                again = [r]
                for k in range(2, self.args.repeat + 1):
                    more = self.try_ours(
                        f"  again ({k} of {self.args.repeat})", issue, c.main, 1, self.sink.port
                    )
                    if more:
                        again.append(more)
                again.sort(key=rate)
                median = again[len(again) // 2]
                found[(label, conc)] = median
                print(
                    f"  {'  median of ' + str(len(again)):<27} {rate(median):7,.0f} msg/s"
                    f" {cpu_us(median):7,.0f} µs CPU/msg"
                    f"  (range {rate(again[0]):,.0f}-{rate(again[-1]):,.0f} msg/s)"
                )
        self.main = found[(self.label, 1)]
        done = [found[(self.label, conc)] for conc in (1, 2, 4)]
        done = [r for r in done if r]
        self.best = max(done, key=rate) if done else None
        if self.main:
            print(
                f"  peak RSS before sending {self.main['rss_before_mb']:.1f} MB;"
                f" lifecycle.create took {self.main['create_s']:.2f} s"
                f" for {self.main['n']:,} deliveries (not in the rate)"
            )

    def reference(self) -> None:
        from email.utils import parseaddr

        from newsletter import config as config_mod
        from newsletter.issue import publish

        config = config_mod.load(self.pub.config_path, overrides(self.tmp / "x.db", 25))
        built = publish.build_issue(config, publish.load_issue(self.issue))
        message = publish.sample(config, built).message
        n = self.counts.reference
        print(
            f"\nreference: Postfix's smtp-source -d into the same sink, the same message"
            f" ({n:,} messages):"
        )
        source_bin = find_tool("smtp-source")
        if source_bin:
            for sessions, repeat in ((1, 3), (20, 1)):
                # The calibration is as noisy as the machine: the median of 3 on one
                # connection (the rate target is scaled by it).
                runs = sorted(
                    run_smtp_source(source_bin, self.sink.port, message, n, sessions)
                    for _ in range(repeat)
                )
                r = runs[len(runs) // 2]
                self.source_rate[sessions] = r
                spread = f"  (median of 3: {runs[0]:,.0f}-{runs[-1]:,.0f})" if repeat > 1 else ""
                print(f"  {sessions:>2} connection(s) {r:8,.0f} msg/s{spread}")
        else:
            print("  smtp-source not found (Debian package postfix); skipped")
        # Calibration: what Python's smtplib alone costs here, for the CPU target scaled.
        path = self.tmp / "reference.eml"
        path.write_bytes(message)
        spec = {
            "mode": "smtplib",
            "n": n,
            "port": self.sink.port,
            "message": str(path),
            "sender": parseaddr(config.publication.from_addr)[1],
        }
        label = "smtplib alone, 1 connection, prebuilt message"
        results = []
        for _ in range(3):  # the median of 3 by CPU, as above
            before = self.sink.messages()
            try:
                r = run_child(spec)
            except ChildFailed as exc:
                print(f"  {label}: FAILED: {exc}")
                return
            r["sink"] = self.sink.messages() - before
            results.append(r)
        results.sort(key=cpu_us)
        r = results[1]
        print(
            f"  {label}: {rate(r):,.0f} msg/s, {cpu_us(r):,.0f} µs CPU/msg"
            f"  ({r['n']:,} in {r['wall']:.1f} s; median of 3 by CPU:"
            f" {cpu_us(results[0]):,.0f}-{cpu_us(results[-1]):,.0f} µs){problems(r)}"
        )
        self.smtplib = r

    def baselines(self) -> None:
        c = self.counts
        print(f"\nbaselines, same sink, same {self.label} message:")
        db = self.dbs.fresh(c.main)
        before = self.sink.messages()
        spec = {
            "mode": "naive",
            "n": c.baseline_naive,
            "config": str(self.pub.config_path),
            "env": overrides(db, self.sink.port),
            "issue": str(self.issue),
            "db": str(db),
            "port": self.sink.port,
        }
        try:
            naive = run_child(spec)
            naive["sink"] = self.sink.messages() - before
            line("naive Python path", naive)
            print(
                f"  {'':<27} Jinja2 + EmailMessage per recipient + smtplib.sendmail, one"
                f" connection, no ledger; {kib(naive['size'])} a message"
            )
            self.naive = naive
        except ChildFailed as exc:
            line("naive Python path", None, str(exc))

        if self.args.no_mailmerge:
            return
        binary = mailmerge_binary(self.args.mailmerge)
        if not binary:
            return
        n = c.baseline_mailmerge
        files = mailmerge_files(self.pub, self.issue, db, n, self.sink.port, self.tmp / "mm")
        before = self.sink.messages()
        try:
            mm = run_mailmerge(binary, files, n)
        except subprocess.CalledProcessError as exc:
            line("mailmerge (CLI)", None, str(exc))
            return
        mm["sink"] = self.sink.messages() - before
        line("mailmerge (CLI)", mm, rss=False)
        print(
            f"  {'':<27} its CLI, --no-dry-run --no-limit; one connection per message;"
            f" {kib(mm['size'])} a message (base64 parts)"
        )
        self.mailmerge = mm

    def scaling(self) -> None:
        n = self.counts.scaling
        print(
            f"\nconcurrency, against a sink answering every command after"
            f" {REPLY_DELAY * 1e3:.0f} ms ({n:,} subscribers, {self.label}):"
        )
        print(
            "  (CPU per message is not comparable here: the client mostly sleeps, and each of"
            " its\n   wake-ups costs CPU on this VM; a bare SMTP loop shows the same rise)"
        )
        proxy = SlowProxy(self.sink.port)
        self.stack.callback(proxy.stop)
        # With PIPELINING a message costs one round trip: its envelope went out with the
        # previous message's final dot, so only the reply to DATA's content is waited for.
        per_connection = 1 / REPLY_DELAY
        base: tuple[int, Result] | None = None
        for conc in (1, 4, 10, 20):
            label = f"concurrency {conc}"
            try:
                r = self.ours(self.issue, n, conc, proxy.port)
            except ChildFailed as exc:
                line(label, None, str(exc))
                if "QueuePool" not in str(exc):
                    continue
                # One SQLAlchemy connection per worker exhausts the default pool (5 + 10):
                # measure again with a bigger pool so the scaling is still visible.
                label = f"{conc} (bench pool={conc + 5})"
                try:
                    r = self.ours(self.issue, n, conc, proxy.port, pool=conc + 5)
                except ChildFailed as exc2:
                    line(label, None, str(exc2))
                    continue
            base = base or (conc, r)
            print(
                f"  {label:<27} {rate(r):7,.0f} msg/s {cpu_us(r):7,.0f} µs CPU/msg"
                f"  {rate(r) / rate(base[1]):4.1f}x concurrency {base[0]},"
                f" ceiling {conc * per_connection:,.0f} msg/s (a round trip each){problems(r)}"
            )
        proxy.stop()

    def memory_runs(self) -> None:
        c = self.counts
        print(f"\nmemory, peak RSS of a whole run ({self.label}, concurrency 1):")
        self.memory = {c.main: self.main}
        for n in sorted({10_000, c.main} - {c.main}):
            self.memory[n] = self.try_ours(f"{n:,} subscribers", self.issue, n, 1, self.sink.port)
        for n in sorted(self.memory):
            r = self.memory[n]
            if r:
                print(
                    f"  {n:>9,} subscribers: peak {r['rss_peak_mb']:6.1f} MB"
                    f" (before sending {r['rss_before_mb']:.1f} MB)"
                )

    def phases(self) -> None:
        n = min(self.counts.main, 10_000)
        print(
            f"\nwhere the CPU goes per message (thread CPU clock around each step, no profiler;"
            f" {self.label}, concurrency 1, {n:,} subscribers):"
        )
        r = self.try_ours("timed run", self.issue, n, 1, self.sink.port, phases=True)
        if not r:
            return
        total = cpu_us(r)
        steps = {k: v / n * 1e6 for k, v in r["phases"].items()}
        print("  (exclusive: a step called inside another is counted in itself only)")
        for key, us in steps.items():
            print(f"  {us:7.1f} µs  {key}")
        rest = total - sum(steps.values())
        print(f"  {rest:7.1f} µs  the rest: in no step above (sender loop, threads, GC, startup)")
        print(f"  {total:7.1f} µs  process CPU per message")
        per_msg = sum(r["phase_calls"].values()) / n
        cost = r["wrap_cost"] * 1e6
        print(
            f"  (the timing itself: {per_msg:.1f} wrapped calls per message at ~{cost:.1f} µs"
            f" each,\n   ~{per_msg * cost:.0f} µs of the total, spread over the lines above)"
        )

    def profile(self) -> None:
        n = self.counts.main
        print(f"\ncProfile of our path ({self.label}, concurrency 1, {n:,} subscribers):")
        r = self.try_ours("under the profiler", self.issue, n, 1, self.sink.port, profile=True)
        if r:
            print(r["profile"])

    def summary(self) -> None:
        main, best, mm = self.main, self.best, self.mailmerge
        mem = {n: r for n, r in self.memory.items() if r}
        rows: list[tuple[str, str, bool | None, str]] = []  # target, got, met, a note
        if main and best:
            rows.append(
                (
                    ">= 2,000 msg/s end to end",
                    f"{rate(main):,.0f} msg/s at concurrency 1, best {rate(best):,.0f}",
                    rate(best) >= 2000,
                    "",
                )
            )
            rows.append(
                (
                    "client CPU < 500 µs/message",
                    f"{cpu_us(main):,.0f} µs",
                    cpu_us(main) < 500,
                    "",
                )
            )
            # The issue's machine: smtp-source ~2,600 msg/s on one connection, smtplib alone
            # ~320 µs a 27 KB prebuilt message. The same targets on this run's machine:
            source = self.source_rate.get(1)
            if source:
                want = 2000 * source / 2600
                rows.append(
                    (
                        ">= 2,000 msg/s, scaled to this run",
                        f">= {want:,.0f} msg/s; best {rate(best):,.0f}",
                        rate(best) >= want,
                        f"(smtp-source 1 conn here: {source:,.0f} msg/s vs 2,600 in the issue)",
                    )
                )
            if self.smtplib:
                alone = cpu_us(self.smtplib)
                want = 500 * alone / 320
                rows.append(
                    (
                        "CPU < 500 µs, scaled to this run",
                        f"< {want:,.0f} µs; {cpu_us(main):,.0f} µs",
                        cpu_us(main) < want,
                        f"(smtplib alone here: {alone:,.0f} µs/msg vs 320 in the issue)",
                    )
                )
        if main and mm:
            ratio = rate(main) / rate(mm)
            rows.append(("over 15x mailmerge", f"{ratio:.1f}x", ratio > 15, ""))
        if main and self.naive:
            ratio = rate(main) / rate(self.naive)
            rows.append(("(ours / naive Python path)", f"{ratio:.1f}x", None, ""))
        if mem:
            big = max(mem)
            flat = ", ".join(f"{mem[n]['rss_peak_mb']:.1f} MB at {n:,}" for n in sorted(mem))
            hint = "" if big >= 100_000 else "; run --subscribers 100000"
            rows.append(
                ("< 150 MB peak RSS at 100,000", flat + hint, mem[big]["rss_peak_mb"] < 150, "")
            )
        if not rows:
            return
        print("\ntargets (issue 3, Speed):")
        for target, got, ok, note in rows:
            verdict = "" if ok is None else ("met" if ok else "NOT met")
            print(f"  {target:<34} {got:<52} {verdict}".rstrip())
            if note:
                print(f"  {'':<34} {note}")


def dkim_cost(n: int = 300) -> None:
    """What DKIM signing adds per message ([dkim] set): our signer, and dkimpy's own."""
    import statistics

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    from newsletter import config as config_mod
    from newsletter.issue import publish
    from newsletter.mail.dkim import DkimSigner

    config = config_mod.load(ROOT / "newsletter.toml", {"NEWSLETTER_SECRET": "bench"})
    built = publish.build_issue(config, publish.load_issue(SAMPLE))
    message = publish.sample(config, built).message
    print(f"\nDKIM signing cost per message ({kib(len(message))} message, median of {n}):")
    keys = {
        "rsa-sha256 (2048 bit)": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ed25519-sha256": ed25519.Ed25519PrivateKey.generate(),
    }
    for label, key in keys.items():
        algorithm = "rsa-sha256" if label.startswith("rsa") else "ed25519-sha256"
        signer = DkimSigner("helloshuttle.com", "s1", algorithm, key)
        times = []
        for _ in range(n):
            t = time.perf_counter()
            signer.sign(message)
            times.append(time.perf_counter() - t)
        print(f"  {label:<24} {statistics.median(times) * 1e6:8.0f} µs  (newsletter.mail.dkim)")
    try:
        import dkim
    except ImportError:
        return
    pem = keys["rsa-sha256 (2048 bit)"].private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    times = []
    for _ in range(min(n, 50)):
        t = time.perf_counter()
        dkim.sign(message, b"s1", b"helloshuttle.com", pem)
        times.append(time.perf_counter() - t)
    print(f"  {'rsa-sha256 (2048 bit)':<24} {statistics.median(times) * 1e6:8.0f} µs  (dkimpy)")


if __name__ == "__main__":
    main()

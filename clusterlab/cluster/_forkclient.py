"""The primary's side of start method ``"forkserver"``: its handle on a template process.

`ForkServer` starts one template (`_forkserver.template_main`), asks it for each worker and reads
its exit reports; each fork returns a `TemplateChild`, the `worker.process` of a worker the
template forked. Which modules a template preloads is decided here (`program_imports`). The
template's side, the protocol and the trade-offs of the start method are in `_forkserver.py`.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from ._forkserver import LEN, STATUS, ForkServerError, recv_exact

#: Modules every template imports: the worker side of clusterlab.
BASE_PRELOAD = ("clusterlab.cluster", "clusterlab.cluster._boot")


# --- which modules to preload -----------------------------------------------------------------


def program_imports(exec_: str) -> list[str]:
    """The absolute modules a worker program imports at its top level (best effort, no import).

    For ``-m module`` the module's source is read through its spec (its package is imported to
    find it, as ``python -m`` would); a program that cannot be read gives an empty list.
    """
    path: str | None
    if exec_.startswith("-m "):
        try:
            spec = importlib.util.find_spec(exec_[3:].strip())
        except (ImportError, ValueError):
            return []
        path = spec.origin if spec is not None else None
    else:
        path = exec_
    if path is None or not path.endswith(".py"):
        return []
    try:
        with open(path, "rb") as f:
            tree = ast.parse(f.read(), path)
    except (OSError, SyntaxError, ValueError):
        return []
    names: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return list(dict.fromkeys(names))


# --- the primary's side -----------------------------------------------------------------------


class TemplateChild:
    """`worker.process` for a worker forked by the template: the parts of `Popen` that apply."""

    def __init__(self, pid: int, args: list[str], stdio: tuple[Any, Any, Any]) -> None:
        self.pid = pid
        self.args = args
        self.stdin, self.stdout, self.stderr = stdio
        self.returncode: int | None = None
        #: Set by the primary's link: called once the template has reported the exit.
        self.on_exit: Callable[[], Any] | None = None
        self._done = threading.Event()
        self._server: ForkServer | None = None

    def poll(self) -> int | None:
        return self.returncode

    @property
    def finished(self) -> bool:
        """True once the exit was reported (``returncode`` None then means: status unknown)."""
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> int:
        """Block until the template reported the exit (reads its reports if the loop does not)."""
        server = self._server
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.returncode is None and not self._done.is_set():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
            if server is not None:
                server.read_reports(min(0.05, left) if left is not None else 0.05)
            else:
                self._done.wait(left)
        return self.returncode if self.returncode is not None else -1

    def send_signal(self, sig: int) -> None:
        if self.returncode is None and not self._done.is_set():
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def _finish(self, code: int | None) -> None:
        self.returncode = code
        self._done.set()
        if self.on_exit is not None:
            self.on_exit()

    def __repr__(self) -> str:
        return f"<TemplateChild pid={self.pid} returncode={self.returncode}>"


class ForkServer:
    """The primary's handle on one template process."""

    def __init__(
        self,
        key: tuple[Any, ...],
        exec_argv: list[str],
        cwd: str | None,
        preload: list[str],
        path0: str | None,
    ) -> None:
        self.key = key
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        ev_ours, ev_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        boot = (
            f"import sys;sys.path.insert(0,{package_root!r});"
            "from clusterlab.cluster._forkserver import template_main;template_main()"
        )
        spec = json.dumps(
            {
                "preload": preload,
                "path0": path0,
                "ctl": theirs.fileno(),
                "events": ev_theirs.fileno(),
            }
        )
        try:
            self.process = subprocess.Popen(
                [sys.executable, *exec_argv, "-c", boot, spec],
                cwd=cwd,
                pass_fds=(theirs.fileno(), ev_theirs.fileno()),
                process_group=0,
            )
        finally:
            theirs.close()
            ev_theirs.close()
        self._ctl = ours
        self._events = ev_ours
        self._events.setblocking(False)
        self._buffer = b""
        self._children: dict[int, TemplateChild] = {}
        self._early: dict[int, int] = {}  # reports read before their spawn() answer was handled
        self._lock = threading.RLock()
        self._loop: Any = None
        self.closed = False
        try:
            ready = self._answer()
        except (OSError, ForkServerError) as exc:
            self.close()
            raise ForkServerError(f"the fork server did not start: {exc}") from exc
        self.preloaded: list[str] = ready.get("preloaded", [])

    # requests

    def spawn(
        self,
        env: dict[str, str],
        argv: list[str],
        cwd: str | None,
        uid: int | None,
        gid: int | None,
        channel_fd: int,
        stdio: tuple[Any, Any, Any],
    ) -> TemplateChild:
        """Fork a worker running `argv` (exec, *args) with `env`; raises OSError as Popen would."""
        ends, parent_ends, close_after = _stdio_fds(stdio)
        body = json.dumps({"env": env, "argv": argv, "cwd": cwd, "uid": uid, "gid": gid}).encode()
        try:
            with self._lock:
                fds = [channel_fd, *ends]
                socket.send_fds(self._ctl, [LEN.pack(len(body))], fds)
                self._ctl.sendall(body)
                answer = self._answer()
        except BaseException:
            for f in parent_ends:
                if f is not None:
                    f.close()
            raise
        finally:
            for fd in close_after:
                os.close(fd)
        if "error" in answer:
            for f in parent_ends:
                if f is not None:
                    f.close()
            err = answer["error"]
            raise OSError(
                err.get("errno", 0), err.get("message", "fork failed"), err.get("filename")
            )
        child = TemplateChild(answer["pid"], argv, parent_ends)
        child._server = self
        with self._lock:
            early = self._early.pop(child.pid, None)
            if early is None:
                self._children[child.pid] = child
        if early is not None:
            child._finish(early)
        return child

    def _answer(self) -> dict[str, Any]:
        head = recv_exact(self._ctl, LEN.size)
        result: dict[str, Any] = json.loads(recv_exact(self._ctl, LEN.unpack(head)[0]))
        return result

    # exit reports

    def attach(self, loop: Any, guard: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
        """Read the template's exit reports on `loop` from now on."""
        self._loop = loop
        loop.add_reader(self._events.fileno(), guard(self.read_reports))

    def read_reports(self, timeout: float = 0.0) -> None:
        with self._lock:
            if self._events.fileno() < 0:
                return
            if timeout > 0:
                select.select([self._events], [], [], timeout)
            try:
                data = self._events.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:
                self._template_gone()
                return
            self._buffer += data
            done: list[tuple[TemplateChild, int]] = []
            while len(self._buffer) >= STATUS.size:
                pid, status = STATUS.unpack_from(self._buffer)
                self._buffer = self._buffer[STATUS.size :]
                child = self._children.pop(pid, None)
                if child is not None:
                    done.append((child, os.waitstatus_to_exitcode(status)))
                else:
                    self._early[pid] = os.waitstatus_to_exitcode(status)
            if self.closed and not self._children:
                self._close_events()
        for child, code in done:
            child._finish(code)

    def _template_gone(self) -> None:
        """The template exited: workers it still had report an unknown status when they end."""
        self._close_events()
        orphans = list(self._children.values())
        self._children.clear()
        for child in orphans:
            _when_gone(child)

    def _close_events(self) -> None:
        if self._events.fileno() >= 0:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._events.fileno())
            self._events.close()
            self._reap_template()

    def _reap_template(self) -> None:
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def close(self) -> None:
        """No more forks: the template exits once the workers it started are gone."""
        if self.closed:
            return
        self.closed = True
        self._ctl.close()
        with self._lock:
            if not self._children:
                self._close_events()

    def kill(self) -> None:
        """Stop the template now (its workers keep running until their channel closes)."""
        self.closed = True
        if self._ctl.fileno() >= 0:
            self._ctl.close()
        if self.process.poll() is None:
            self.process.kill()
        self._close_events()

    def alive(self) -> bool:
        return not self.closed and self.process.poll() is None


def _when_gone(child: TemplateChild) -> None:
    """Report `child`'s exit (status unknown) once the process is gone."""
    try:
        pidfd = os.pidfd_open(child.pid)
    except ProcessLookupError:
        child._finish(None)
        return
    except OSError:
        pidfd = -1

    def watch() -> None:
        try:
            if pidfd >= 0:
                select.select([pidfd], [], [])
            else:
                while _pid_exists(child.pid):
                    threading.Event().wait(0.05)
        finally:
            if pidfd >= 0:
                os.close(pidfd)
        server_loop = child._server._loop if child._server is not None else None
        if server_loop is not None and not server_loop.is_closed():
            server_loop.call_soon_threadsafe(child._finish, None)
        else:
            child._finish(None)

    threading.Thread(target=watch, name=f"forkserver-orphan-{child.pid}", daemon=True).start()


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stdio_fds(stdio: tuple[Any, Any, Any]) -> tuple[list[int], tuple[Any, Any, Any], list[int]]:
    """(child descriptors to send, the parent's pipe files, descriptors to close once sent).

    Each entry is as for Popen: None (inherit ours), PIPE, DEVNULL, a descriptor or a file.
    """
    ends: list[int] = []
    parents: list[Any] = []
    close_after: list[int] = []
    for index, spec in enumerate(stdio):
        parent = None
        if spec is None:
            fd = index
        elif spec == subprocess.PIPE:
            r, w = os.pipe2(os.O_CLOEXEC)
            fd, mine = (r, w) if index == 0 else (w, r)
            parent = open(mine, "wb" if index == 0 else "rb")  # noqa: SIM115 - the caller's pipe
            close_after.append(fd)
        elif spec == subprocess.DEVNULL:
            fd = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
            close_after.append(fd)
        elif spec == subprocess.STDOUT and index == 2:
            fd = ends[1]
        elif isinstance(spec, int):
            fd = spec
        else:
            fd = spec.fileno()
        ends.append(fd)
        parents.append(parent)
    return ends, (parents[0], parents[1], parents[2]), close_after

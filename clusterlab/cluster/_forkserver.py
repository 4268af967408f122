"""Start method ``"forkserver"``: workers forked from a pre-started template process.

The default start method (``"exec"``) starts every worker as a fresh interpreter, which pays
Python's start-up and every import of the worker program again (~80 ms on the project's
machine). With ``setup_primary(start_method="forkserver")`` the primary starts one *template*
process per set of start settings; it imports clusterlab's worker side, the modules named in
``settings["preload"]`` (by default, the modules the worker program imports at its top level)
and then waits. Each ``fork()`` asks it for a child: it forks, and the child becomes the worker
and runs the program, whose imports are already done.

Trade-offs (also in the README):

* the worker is the template's child, not the primary's: the template reaps it and reports the
  exit status; if the template itself is killed, the exit status of workers it started is
  unknown (reported as code ``None`` and signal ``None``);
* modules are imported once, in the template, with the template's environment: a module that
  reads ``os.environ`` at import time sees the primary's environment of that moment, not the
  ``fork(env)`` of each worker (the worker's ``os.environ`` is right once the program runs);
* code changed on disk after the template started is not seen until the template is replaced,
  which happens when ``exec``, ``exec_argv``, ``cwd`` or ``preload`` change;
* a preloaded module must be safe to fork: one that starts threads at import time is not.

Protocol. The primary talks to the template over two socket pairs: *control* (requests, each a
4-byte length plus the descriptors of the channel and stdio, then a JSON body; answered with a
length-prefixed JSON body) and *events* (the template's reports ``(pid, wait status)``, 8 bytes
each). The template exits once the control pair closes and no child of its own is left.
"""

from __future__ import annotations

import ast
import atexit
import importlib
import importlib.util
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any, NoReturn

_LEN = struct.Struct("<I")
_STATUS = struct.Struct("<ii")
#: Modules every template imports: the worker side of clusterlab.
BASE_PRELOAD = ("clusterlab.cluster", "clusterlab.cluster._boot")


class ForkServerError(RuntimeError):
    """The template process could not be started or broke its protocol."""


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
                socket.send_fds(self._ctl, [_LEN.pack(len(body))], fds)
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
        head = _recv_exact(self._ctl, _LEN.size)
        result: dict[str, Any] = json.loads(_recv_exact(self._ctl, _LEN.unpack(head)[0]))
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
            while len(self._buffer) >= _STATUS.size:
                pid, status = _STATUS.unpack_from(self._buffer)
                self._buffer = self._buffer[_STATUS.size :]
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


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    parts: list[bytes] = []
    while size:
        data = sock.recv(size)
        if not data:
            raise ForkServerError("the fork server closed its control channel")
        parts.append(data)
        size -= len(data)
    return b"".join(parts)


# --- the template's side ----------------------------------------------------------------------


def template_main() -> None:
    """Entry point of the template process: preload, then fork workers on request."""
    if sys.path and sys.path[0] != "" and os.path.isdir(os.path.join(sys.path[0], "clusterlab")):
        del sys.path[0]  # the entry the boot line added to find this package
    spec = json.loads(sys.argv[1])
    if spec.get("path0"):
        # Where the worker program's own modules are, in the place `python script.py` puts it.
        if sys.path and sys.path[0] == "":
            sys.path[0] = spec["path0"]
        else:
            sys.path.insert(0, spec["path0"])
    ctl = socket.socket(fileno=spec["ctl"])
    events = socket.socket(fileno=spec["events"])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the primary decides when we go
    preloaded = _preload(spec["preload"])
    _send_answer(ctl, {"ready": True, "preloaded": preloaded})
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    children: set[int] = set()
    open_ctl = True
    while open_ctl or children:
        watched = [wake_r] + ([ctl.fileno()] if open_ctl else [])
        try:
            readable, _, _ = select.select(watched, [], [], 1.0)
        except InterruptedError:
            readable = []
        if wake_r in readable:
            while True:
                try:
                    if not os.read(wake_r, 512):
                        break
                except BlockingIOError:
                    break
        _reap(children, events)
        if open_ctl and ctl.fileno() in readable:
            request = _read_request(ctl)
            if request is None:
                open_ctl = False
                ctl.close()
                continue
            body, fds = request
            pid = _fork_worker(body, fds, ctl, events, (wake_r, wake_w))
            if pid is not None:
                children.add(pid)
    os._exit(0)


def _preload(names: list[str]) -> list[str]:
    done: list[str] = []
    for name in names:
        try:
            importlib.import_module(name)
        except BaseException:  # noqa: BLE001 - the worker will meet the error itself, in context
            continue
        done.append(name)
    return done


def _reap(children: set[int], events: socket.socket) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            children.clear()
            return
        if pid == 0:
            return
        children.discard(pid)
        try:
            events.sendall(_STATUS.pack(pid, status))
        except OSError:
            pass  # the primary is gone; its workers follow it


def _read_request(ctl: socket.socket) -> tuple[dict[str, Any], list[int]] | None:
    try:
        head, fds, _, _ = socket.recv_fds(ctl, _LEN.size, 4, socket.MSG_CMSG_CLOEXEC)
    except OSError:
        return None
    if not head:
        return None
    if len(head) < _LEN.size:
        head += _recv_exact(ctl, _LEN.size - len(head))
    body = json.loads(_recv_exact(ctl, _LEN.unpack(head)[0]))
    return body, fds


def _send_answer(ctl: socket.socket, answer: dict[str, Any]) -> None:
    data = json.dumps(answer).encode()
    ctl.sendall(_LEN.pack(len(data)) + data)


def _fork_worker(
    body: dict[str, Any],
    fds: list[int],
    ctl: socket.socket,
    events: socket.socket,
    wake: tuple[int, int],
) -> int | None:
    cwd = body.get("cwd")
    try:
        if cwd is not None:
            os.close(os.open(cwd, os.O_RDONLY | os.O_DIRECTORY))
        pid = os.fork()
    except OSError as exc:
        for fd in fds:
            os.close(fd)
        _send_answer(
            ctl, {"error": {"errno": exc.errno, "message": exc.strerror, "filename": exc.filename}}
        )
        return None
    if pid == 0:
        _become_worker(body, fds, (ctl, events), wake)  # never returns
    for fd in fds:
        os.close(fd)
    _send_answer(ctl, {"pid": pid})
    return pid


def _become_worker(
    body: dict[str, Any], fds: list[int], sockets: tuple[socket.socket, ...], wake: tuple[int, int]
) -> None:
    code = 1
    try:
        _leave_template(sockets, wake)
        channel_fd = _take_fds(fds)
        _take_identity(body)
        env = dict(body["env"])
        env["CLUSTERLAB_CHANNEL_FD"] = str(channel_fd)
        os.environ.clear()
        os.environ.update(env)
        sys.argv = ["-c", *body["argv"]]
        from . import _boot

        _boot.main()
        code = 0
    except SystemExit as exc:
        code = _exit_code(exc.code)
    except KeyboardInterrupt:
        # As the interpreter does since 3.8: die of SIGINT, so the parent sees the signal.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        flush_stdio()
        os.kill(os.getpid(), signal.SIGINT)
    except BaseException:  # noqa: BLE001 - as the interpreter would: print it, exit 1
        sys.excepthook(*sys.exc_info())
        code = 1
    finally:
        _end_as_interpreter(code)


def _leave_template(sockets: tuple[socket.socket, ...], wake: tuple[int, int]) -> None:
    """In a forked worker: drop the template's signal handling, its sockets to the primary, its
    wake-up pipe and its exit handlers, and lead a process group of its own."""
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGCHLD, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sock in sockets:
        sock.close()
    for fd in wake:
        os.close(fd)
    atexit._clear()  # the template's exit handlers are not this worker's
    os.setpgid(0, 0)


def _take_fds(fds: list[int]) -> int:
    """Make `fds[1:4]` this process's stdin, stdout and stderr; return the channel, `fds[0]`
    (made inheritable, for a program the worker execs)."""
    channel_fd, stdio = fds[0], fds[1:4]
    for target, fd in enumerate(stdio):
        if fd != target:
            os.dup2(fd, target)
    for fd in stdio:
        if fd > 2:
            os.close(fd)
    os.set_inheritable(channel_fd, True)
    return channel_fd


def _take_identity(body: dict[str, Any]) -> None:
    """The worker's cwd, then its gid and uid (as root, with no supplementary groups)."""
    if body.get("cwd") is not None:
        os.chdir(body["cwd"])
    uid, gid = body.get("uid"), body.get("gid")
    if (uid is not None or gid is not None) and os.geteuid() == 0:
        os.setgroups([])
    if gid is not None:
        os.setgid(gid)
    if uid is not None:
        os.setuid(uid)


def flush_stdio() -> None:
    """Flush stdout and stderr, best effort (on the way out of a process)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - best effort on the way out
            pass


def _end_as_interpreter(code: int) -> NoReturn:
    """As an interpreter that ends: join non-daemon threads, run exit handlers, flush; exit
    with `code`."""
    try:
        threading._shutdown()  # type: ignore[attr-defined]
        atexit._run_exitfuncs()
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
    flush_stdio()
    os._exit(code)


def _exit_code(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, int):
        return value & 0xFF
    print(value, file=sys.stderr)
    return 1

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

This module is the template's side and the protocol both sides share; the primary's side (its
handle on a template, `ForkServer`, and the `TemplateChild` each fork returns) is
`_forkclient.py`.

Protocol. The primary talks to the template over two socket pairs: *control* (requests, each a
4-byte length plus the descriptors of the channel and stdio, then a JSON body; answered with a
length-prefixed JSON body) and *events* (the template's reports ``(pid, wait status)``, 8 bytes
each). The template exits once the control pair closes and no child of its own is left.
"""

from __future__ import annotations

import atexit
import importlib
import json
import os
import select
import signal
import socket
import struct
import sys
import threading
import traceback
from typing import Any, NoReturn

#: A control message's length prefix.
LEN = struct.Struct("<I")
#: One exit report on the events pair: (pid, wait status).
STATUS = struct.Struct("<ii")


class ForkServerError(RuntimeError):
    """The template process could not be started or broke its protocol."""


def recv_exact(sock: socket.socket, size: int) -> bytes:
    """Exactly `size` bytes from `sock` (blocking); ForkServerError if it closes first."""
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
            events.sendall(STATUS.pack(pid, status))
        except OSError:
            pass  # the primary is gone; its workers follow it


def _read_request(ctl: socket.socket) -> tuple[dict[str, Any], list[int]] | None:
    try:
        head, fds, _, _ = socket.recv_fds(ctl, LEN.size, 4, socket.MSG_CMSG_CLOEXEC)
    except OSError:
        return None
    if not head:
        return None
    if len(head) < LEN.size:
        head += recv_exact(ctl, LEN.size - len(head))
    body = json.loads(recv_exact(ctl, LEN.unpack(head)[0]))
    return body, fds


def _send_answer(ctl: socket.socket, answer: dict[str, Any]) -> None:
    data = json.dumps(answer).encode()
    ctl.sendall(LEN.pack(len(data)) + data)


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

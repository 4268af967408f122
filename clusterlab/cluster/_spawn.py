"""Start methods as objects: how a worker process is started from the settings.

`ExecSpawner` runs a fresh interpreter per worker (Node's way); `ForkServerSpawner` asks a
template process that has the program's imports loaded to fork one. Both hand the worker its
channel's descriptor and the environment its boot reads.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any, Protocol

from ._forkclient import (
    BASE_PRELOAD,
    ForkServer,
    ForkServerError,
    TemplateChild,
    program_imports,
)
from ._settings import Settings

Stdio = tuple[Any, Any, Any]


class Spawner(Protocol):
    def spawn(
        self, settings: Settings, env: dict[str, str], fd: int, stdio: Stdio
    ) -> subprocess.Popen[bytes] | TemplateChild: ...

    def close(self) -> None: ...


def worker_stdio(settings: Settings) -> Stdio:
    """A worker's stdin, stdout and stderr: settings' stdio, pipes when silent, else ours."""
    stdio = settings.stdio
    if stdio is not None:
        stdin, stdout, stderr = stdio
    elif settings.silent:
        stdin, stdout, stderr = subprocess.PIPE, subprocess.PIPE, subprocess.PIPE
    else:
        stdin = stdout = stderr = None
    return stdin, stdout, stderr


class ExecSpawner:
    """`start_method="exec"`: a fresh interpreter that boots the worker, in its own process
    group, as settings' uid and gid."""

    def spawn(
        self, settings: Settings, env: dict[str, str], fd: int, stdio: Stdio
    ) -> subprocess.Popen[bytes]:
        stdin, stdout, stderr = stdio
        package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        boot = (
            f"import sys;sys.path.insert(0,{package_root!r});"
            "from clusterlab.cluster._boot import main;main()"
        )
        cmd = [sys.executable, *settings.exec_argv, "-c", boot, settings.program()]
        switching = settings.uid is not None or settings.gid is not None
        return subprocess.Popen(
            [*cmd, *settings.args],
            env=env,
            cwd=settings.cwd,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            pass_fds=(fd,),
            user=settings.uid,
            group=settings.gid,
            # As libuv does: a worker switched to another user keeps none of our groups.
            extra_groups=[] if switching and os.geteuid() == 0 else None,
            process_group=0,
        )

    def close(self) -> None:
        """Nothing to close: each worker is its own interpreter."""


class ForkServerSpawner:
    """`start_method="forkserver"`: workers forked by a template process, one per set of
    (exec, exec_argv, cwd, preload); a template that died is replaced once."""

    def __init__(
        self,
        loop: Callable[[], asyncio.AbstractEventLoop],
        guard: Callable[[Callable[..., Any]], Callable[..., Any]],
    ) -> None:
        self._loop = loop
        self._guard = guard
        self._server: ForkServer | None = None

    def spawn(
        self, settings: Settings, env: dict[str, str], fd: int, stdio: Stdio
    ) -> TemplateChild:
        argv = [settings.program(), *settings.args]
        attempts = 2
        while True:
            server = self._server_for(settings)
            try:
                return server.spawn(env, argv, settings.cwd, settings.uid, settings.gid, fd, stdio)
            except (ForkServerError, ConnectionError):
                server.kill()  # it died: start another once
                attempts -= 1
                if not attempts:
                    raise

    def _server_for(self, settings: Settings) -> ForkServer:
        """The template process for these settings; a new one when they changed."""
        exec_ = settings.program()
        preload = settings.preload
        key = (
            exec_,
            tuple(settings.exec_argv),
            settings.cwd,
            None if preload is None else tuple(preload),
        )
        current = self._server
        if current is not None and current.key == key and current.alive():
            return current
        if current is not None:
            current.close()  # it stays until the workers it started are gone
        script = None if exec_.startswith("-m ") else os.path.join(settings.cwd or "", exec_)
        modules = list(preload) if preload is not None else program_imports(script or exec_)
        path0 = None if script is None else os.path.dirname(os.path.abspath(script))
        server = ForkServer(
            key, list(settings.exec_argv), settings.cwd, [*BASE_PRELOAD, *modules], path0
        )
        server.attach(self._loop(), self._guard)
        self._server = server
        return server

    def close(self) -> None:
        """No more forks from the template (it exits once its workers are gone)."""
        if self._server is not None:
            self._server.close()
            self._server = None

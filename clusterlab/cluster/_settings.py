"""`cluster.settings`: defaults taken from how the primary was started, and validation."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

KEYS = (
    "exec",
    "args",
    "exec_argv",
    "cwd",
    "serialization",
    "silent",
    "stdio",
    "uid",
    "gid",
    "inspect_port",
    "windows_hide",
    "start_method",
    "preload",
)
START_METHODS = ("exec", "forkserver")


def primary_invocation(orig_argv: list[str] | None = None) -> tuple[str | None, list[str]]:
    """(exec, exec_argv) of the running interpreter: its script or "-m module", and its options.

    exec is None when the primary runs code with no file to re-run (``-c``, stdin, REPL).
    """
    argv = list(sys.orig_argv if orig_argv is None else orig_argv)[1:]
    options: list[str] = []
    i = 0
    takes_value = {"-X", "-W", "--check-hash-based-pycs"}
    while i < len(argv):
        arg = argv[i]
        if arg == "-m" and i + 1 < len(argv):
            return f"-m {argv[i + 1]}", options
        if arg.startswith("-m") and len(arg) > 2:
            return f"-m {arg[2:]}", options
        if arg in ("-c", "-") or arg.startswith("-c"):
            return None, options
        if arg in takes_value and i + 1 < len(argv):
            options += [arg, argv[i + 1]]
            i += 2
            continue
        if arg.startswith("-") and arg != "--":
            options.append(arg)
            i += 1
            continue
        if arg == "--":
            i += 1
            continue
        return os.path.abspath(arg), options
    return None, options


def start_method_from_env() -> str:
    value = os.environ.get("CLUSTERLAB_START_METHOD") or "exec"
    if value not in START_METHODS:
        raise ValueError(f"CLUSTERLAB_START_METHOD must be 'exec' or 'forkserver', got {value!r}")
    return value


def defaults() -> dict[str, Any]:
    exec_, exec_argv = primary_invocation()
    return {
        "exec": exec_,
        "args": list(sys.argv[1:]),
        "exec_argv": exec_argv,
        "cwd": None,
        "serialization": "json",
        "silent": False,
        "stdio": None,
        "uid": None,
        "gid": None,
        "inspect_port": None,
        "windows_hide": False,
        "start_method": start_method_from_env(),
        "preload": None,
    }


def _str_list(key: str, value: Any) -> list[str]:
    if isinstance(value, str | bytes) or not isinstance(value, list | tuple):
        raise TypeError(f"settings[{key!r}] must be a list of strings, got {value!r}")
    if not all(isinstance(v, str) for v in value):
        raise TypeError(f"settings[{key!r}] must be a list of strings, got {value!r}")
    return list(value)


def _id(key: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TypeError(f"settings[{key!r}] must be an int, a name or None, got {value!r}")
    if isinstance(value, str):
        import grp
        import pwd

        try:
            return pwd.getpwnam(value).pw_uid if key == "uid" else grp.getgrnam(value).gr_gid
        except KeyError:
            raise ValueError(
                f"settings[{key!r}]: no such {'user' if key == 'uid' else 'group'} {value!r}"
            ) from None
    if value < 0:
        raise ValueError(f"settings[{key!r}] must be ≥ 0, got {value!r}")
    return value


def validate(key: str, value: Any) -> Any:
    """The value to store for `key`; TypeError/ValueError naming the key when it is bad."""
    if key == "exec":
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise TypeError(f"settings['exec'] must be a script path or '-m module', got {value!r}")
        return value
    if key in ("args", "exec_argv"):
        return _str_list(key, value)
    if key == "cwd":
        if value is not None and not isinstance(value, str | os.PathLike):
            raise TypeError(f"settings['cwd'] must be a path or None, got {value!r}")
        return None if value is None else os.fspath(value)
    if key == "serialization":
        if value not in ("json", "advanced"):
            raise ValueError(
                f"settings['serialization'] must be 'json' or 'advanced', got {value!r}"
            )
        return value
    if key in ("silent", "windows_hide"):
        if not isinstance(value, bool):
            raise TypeError(f"settings[{key!r}] must be a bool, got {value!r}")
        return value
    if key == "stdio":
        if value is None:
            return None
        if isinstance(value, str | bytes) or not isinstance(value, list | tuple) or len(value) != 3:
            raise TypeError(
                f"settings['stdio'] must be (stdin, stdout, stderr) or None, got {value!r}"
            )
        return tuple(value)
    if key in ("uid", "gid"):
        return _id(key, value)
    if key == "inspect_port":
        if value is None or callable(value):
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(
                f"settings['inspect_port'] must be an int, a callable or None, got {value!r}"
            )
        if not 0 <= value <= 65535:
            raise ValueError(f"settings['inspect_port'] must be a port number, got {value!r}")
        return value
    if key == "start_method":
        if value not in START_METHODS:
            raise ValueError(
                f"settings['start_method'] must be 'exec' or 'forkserver', got {value!r}"
            )
        return value
    if key == "preload":
        return None if value is None else _str_list(key, value)
    raise TypeError(f"unknown cluster setting {key!r} (known: {', '.join(KEYS)})")


def merge(current: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults, then the current settings, then the given keys (all validated first)."""
    checked = {key: validate(key, value) for key, value in given.items()}
    merged = defaults()
    merged.update(current)
    merged.update(checked)
    return merged


def inspect_port_for(setting: int | Callable[[], int] | None, offset: int, base: int = 9229) -> int:
    """The debugger port of the worker forked `offset`-th: as Node, base + offset when not given."""
    if callable(setting):
        port = setting()
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"settings['inspect_port'] callable returned {port!r}, not a port")
        return port
    if setting is not None:
        return setting
    port = base + offset
    return port if port <= 65535 else 1024 + (port - 1024) % (65536 - 1024)


@dataclass(frozen=True)
class Settings:
    """The settings the primary forks with, typed and frozen; `cluster.settings` stays the dict
    (Node's shape) they are made from."""

    exec: str | None
    args: tuple[str, ...]
    exec_argv: tuple[str, ...]
    cwd: str | None
    serialization: str
    silent: bool
    stdio: tuple[Any, Any, Any] | None
    uid: int | None
    gid: int | None
    inspect_port: int | Callable[[], int] | None
    windows_hide: bool
    start_method: str
    preload: tuple[str, ...] | None

    def program(self) -> str:
        """`exec`: what workers run; RuntimeError when the primary did not say."""
        if self.exec is None:
            raise RuntimeError(
                "cannot tell what workers should run (the primary was not started from a file): "
                "call cluster.setup_primary(exec='path/to/script.py') first"
            )
        return self.exec

    @classmethod
    def of(cls, merged: Mapping[str, Any]) -> Settings:
        """From a merged (validated, complete) settings dict."""
        preload = merged["preload"]
        return cls(
            exec=merged["exec"],
            args=tuple(merged["args"]),
            exec_argv=tuple(merged["exec_argv"]),
            cwd=merged["cwd"],
            serialization=merged["serialization"],
            silent=merged["silent"],
            stdio=merged["stdio"],
            uid=merged["uid"],
            gid=merged["gid"],
            inspect_port=merged["inspect_port"],
            windows_hide=merged["windows_hide"],
            start_method=merged["start_method"],
            preload=None if preload is None else tuple(preload),
        )

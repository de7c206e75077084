"""Loading the operator's policy file, and reloading it without a restart.

A policy file is plain Python defining ``async def decide(ctx) -> Decision``. A file that
does not compile, fails while executing, lacks ``decide`` or breaks the table contract is
refused with a :class:`PolicyError`, and the policy already loaded keeps serving.
"""
from __future__ import annotations

import inspect
import os
import types
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from checkid.errors import PolicyError

DEFAULT_PATH = Path(__file__).resolve().parent.parent / "policy" / "default.py"


@dataclass(frozen=True, slots=True)
class Policy:
    path: str
    decide: Callable[[Any], Awaitable[Any]]
    module: types.ModuleType
    #: (mtime_ns, size) of the file as loaded, to notice edits
    stamp: tuple[int, int]


_loaded = 0


def load(path: str | Path) -> Policy:
    """Compile and run a policy file, then check its contract. :raises PolicyError:"""
    global _loaded
    path = str(path)
    try:
        st = os.stat(path)
        source = Path(path).read_bytes()
    except OSError as e:
        raise PolicyError(f"{path}: cannot read: {e.strerror}") from None
    _loaded += 1
    module = types.ModuleType(f"checkid_policy_{_loaded}")
    module.__file__ = path
    try:
        code = compile(source, path, "exec")
        exec(code, module.__dict__)
    except SyntaxError as e:
        raise PolicyError(f"{path}:{e.lineno}: syntax error: {e.msg}") from None
    except BaseException as e:  # whatever the file raised while loading, it is refused
        raise PolicyError(f"{path}: failed to load: {type(e).__name__}: {e}") from None
    decide = getattr(module, "decide", None)
    if decide is None:
        raise PolicyError(f"{path}: no decide() defined")
    if not inspect.iscoroutinefunction(decide):
        raise PolicyError(f"{path}: decide must be 'async def decide(ctx)'")
    _check_tables(module, path)
    return Policy(path, decide, module, (st.st_mtime_ns, st.st_size))


def _check_tables(module: types.ModuleType, path: str) -> None:
    methods = getattr(module, "METHOD_LIST", None)
    if methods is not None:
        if not isinstance(methods, dict) or not all(
            isinstance(k, str) and isinstance(v, tuple) and len(v) == 2 and all(isinstance(i, int) for i in v)
            for k, v in methods.items()
        ):
            raise PolicyError(f"{path}: METHOD_LIST must map a method to (order, max queries)")
    trusted = getattr(module, "TRUSTED_SERVICES", None)
    if trusted is not None:
        if not isinstance(trusted, dict) or not all(
            isinstance(k, str) and isinstance(v, dict)
            and all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in v.values())
            for k, v in trusted.items()
        ):
            raise PolicyError(f"{path}: TRUSTED_SERVICES must map a service to {{grade: score, 'Wt': weight}}")


class PolicyHolder:
    """The live policy of one process; :meth:`reload` swaps it only for a good file."""

    def __init__(self, path: str | Path) -> None:
        self.current = load(path)
        self.failures = 0
        #: (mtime_ns, size) of the last file refused, so an unchanged bad file is not retried
        self.refused: tuple[int, int] | None = None

    def reload(self) -> Policy:
        """Load the file again. :raises PolicyError: and keeps the current policy"""
        try:
            self.current = load(self.current.path)
        except PolicyError:
            self.failures += 1
            self.refused = _stamp(self.current.path)
            raise
        self.refused = None
        return self.current

    def changed(self) -> bool:
        """Whether the file on disk differs from the one loaded and the one last refused."""
        stamp = _stamp(self.current.path)
        return stamp is not None and stamp != self.current.stamp and stamp != self.refused


def _stamp(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)

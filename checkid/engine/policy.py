"""Loading the operator's policy file, and reloading it without a restart.

A policy file is plain Python defining ``async def decide(ctx) -> Decision``. A file that
does not compile, fails while executing, lacks ``decide`` or breaks the table contract
(:mod:`checkid.engine.policytables`) is refused with a :class:`PolicyError`, and the policy
already loaded keeps serving.

A policy that defines ``DECISION_INPUTS`` (the envelope inputs it reads, names from
:data:`checkid.engine.memo.INPUTS`) opts in to the decision memo (:mod:`checkid.engine.memo`);
an unknown name is refused like a broken table.

A policy remembers the text it was compiled from (:attr:`Policy.source`): a process that
starts while the file on disk is broken can start on the last good text instead
(:class:`PolicyHolder`'s ``fallback``), so a refused edit never turns a restart into an outage.
"""
from __future__ import annotations

import inspect
import logging
import os
import types
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from checkid.engine import memo, policytables
from checkid.errors import PolicyError

DEFAULT_PATH = Path(__file__).resolve().parent.parent / "policy" / "default.py"

log = logging.getLogger(__name__)

#: the stamp of a policy compiled from text rather than read from its file
NO_STAMP = (0, 0)


@dataclass(frozen=True, slots=True)
class Policy:
    path: str
    decide: Callable[[Any], Awaitable[Any]]
    module: types.ModuleType
    #: (mtime_ns, size) of the file as loaded, to notice edits (:data:`NO_STAMP` when
    #: compiled from text)
    stamp: tuple[int, int]
    #: the text that was compiled
    source: bytes
    #: the inputs the policy declares it reads (``DECISION_INPUTS``): its decisions may be
    #: memoized by them. None: it declares nothing, and every decision runs it
    inputs: frozenset[str] | None = None


_loaded = 0


def load(path: str | Path) -> Policy:
    """Read, compile and run a policy file, then check its contract. :raises PolicyError:"""
    path = str(path)
    try:
        st = os.stat(path)
        source = Path(path).read_bytes()
    except OSError as e:
        raise PolicyError(f"{path}: cannot read: {e.strerror}") from None
    return compile_policy(path, source, (st.st_mtime_ns, st.st_size))


def compile_policy(path: str | Path, source: bytes, stamp: tuple[int, int] = NO_STAMP) -> Policy:
    """Compile and run ``source`` as the policy file ``path``, then check its contract.

    :param stamp: the file's (mtime_ns, size) when ``source`` was just read from it
    :raises PolicyError: naming ``path`` (and the line or the table at fault)
    """
    global _loaded
    path = str(path)
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
    problems = policytables.problems(module.__dict__)
    inputs: frozenset[str] | None = None
    if "DECISION_INPUTS" in module.__dict__:
        checked = memo.check_inputs(module.__dict__["DECISION_INPUTS"])
        if isinstance(checked, str):
            problems.append(checked)
        else:
            inputs = checked
    if problems:
        raise PolicyError(f"{path}: {'; '.join(problems)}")
    return Policy(path, decide, module, stamp, source, inputs)


class PolicyHolder:
    """The live policy of one process; :meth:`reload` swaps it only for a good file.

    :param fallback: the text of the last good policy, to start on when the file at
        ``path`` does not load (logged as a warning; the file is watched for a good edit).
        Without it, a file that does not load raises :class:`PolicyError`.
    """

    def __init__(self, path: str | Path, fallback: bytes | None = None) -> None:
        self.failures = 0
        #: (mtime_ns, size) of the last file refused, so an unchanged bad file is not retried
        self.refused: tuple[int, int] | None = None
        #: why the file on disk is not the policy serving (None when it is)
        self.error: PolicyError | None = None
        try:
            self.current = load(path)
        except PolicyError as e:
            if fallback is None:
                raise
            try:
                self.current = compile_policy(path, fallback)
            except PolicyError:
                raise e from None
            log.warning("policy %s refused, starting on the last good policy: %s", path, e)
            self.error = e
            self.refused = _stamp(str(path))

    def reload(self) -> Policy:
        """Load the file again. :raises PolicyError: and keeps the current policy"""
        try:
            self.current = load(self.current.path)
        except PolicyError as e:
            self.failures += 1
            self.refused = _stamp(self.current.path)
            self.error = e
            raise
        self.refused = None
        self.error = None
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

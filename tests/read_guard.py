"""A pytest plugin that fails a test which opens a file beside the repository instead of inside it.

The repository must carry everything its tests read (``tests/fixtures``): a fresh clone has no
``../shared`` or sibling checkout. :class:`ReadGuard` watches ``open``/``os.listdir``/``os.scandir``
audit events (:func:`sys.addaudithook`) for paths under a *watched root* (the repository's parent
folder) and records those outside the repository and outside the allowed folders (virtual
environment, temporary folders, an explicit fixtures override). Entries of the watched root
named like tool caches or temporary files (``.cache``, ``.config``, ``tmpXXXX``,
``pytest-of-USER``) are ignored too: a clone in the home or temp folder sits beside them. A test
that caused such an open gets an error naming the path; opens outside any test (collection) fail
the session.

Subprocesses the tests start are not watched (an audit hook lives in one interpreter).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest

_EVENTS = {"open", "os.listdir", "os.scandir"}
_GUARDS: list[ReadGuard] = []  # active guards; one process-wide hook dispatches to them
_HOOKS: list = []  # sys.addaudithook cannot be undone: the dispatcher is installed once
_IGNORED_NAMES = (".", "tmp", "pytest-of-")  # hidden config/cache folders, tempfile/pytest temps


def _audit(event: str, args: tuple) -> None:
    if event in _EVENTS and _GUARDS and args and isinstance(args[0], str | bytes | os.PathLike):
        for guard in _GUARDS:
            guard.observe(args[0])


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder + os.sep)


class ReadGuard:
    """Records opens of paths under ``watched`` that are neither in ``repo`` nor in ``allowed``.

    An allowed folder that contains the repository (``/tmp`` for a clone in ``/tmp/x/repo``) is
    ignored, otherwise it would allow every sibling of the repository.
    """

    def __init__(self, repo: Path, watched: Path, allowed: Iterable[Path] = ()) -> None:
        self.repo = os.path.realpath(repo)
        self.watched = os.path.abspath(watched)
        self.allowed = [a for a in {os.path.realpath(p) for p in allowed}
                        if not _inside(self.repo, a)]
        self.current = "<collection>"
        self.offences: dict[str, list[str]] = {}

    def observe(self, raw: str | bytes | os.PathLike) -> None:
        path = os.fsdecode(raw)
        if not path:
            return
        path = os.path.abspath(path)
        if not _inside(path, self.watched):
            return
        real = os.path.realpath(path)
        if _inside(real, self.repo) or any(_inside(real, a) for a in self.allowed):
            return
        entry = os.path.relpath(path, self.watched)
        if entry != "." and entry.startswith(_IGNORED_NAMES):
            return
        found = self.offences.setdefault(self.current, [])
        if real not in found:
            found.append(real)

    def __enter__(self) -> ReadGuard:
        if not _HOOKS:
            sys.addaudithook(_audit)
            _HOOKS.append(_audit)
        _GUARDS.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        _GUARDS.remove(self)


def _message(paths: list[str], guard: ReadGuard) -> str:
    return (f"opened {len(paths)} path(s) outside the repository {guard.repo}: "
            f"{', '.join(paths[:5])}. Tests may only read files inside the repository (put data "
            "in tests/fixtures) or in temporary folders")


class ReadGuardPlugin:
    """Attributes each recorded open to the running test and fails it."""

    def __init__(self, guard: ReadGuard) -> None:
        self.guard = guard

    def pytest_configure(self, config: pytest.Config) -> None:
        self.guard.__enter__()

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        self.guard.__exit__()

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None):
        self.guard.current = item.nodeid
        try:
            return (yield)
        finally:
            self.guard.current = "<collection>"

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo):
        report = yield
        paths = self.guard.offences.get(item.nodeid)
        if call.when == "teardown" and paths and report.passed:
            report.outcome = "failed"
            report.longrepr = f"{item.nodeid} {_message(paths, self.guard)}"
        return report

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        paths = self.guard.offences.get("<collection>")
        if paths:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
            reporter = session.config.pluginmanager.get_plugin("terminalreporter")
            if reporter is not None:
                reporter.write_line(f"ERROR: outside any test (collection): "
                                    f"{_message(paths, self.guard)}", red=True)

"""The guard that fails tests reading files beside the repository (tests/read_guard.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from read_guard import ReadGuard

INNER_CONFTEST = """
from pathlib import Path

from read_guard import ReadGuard, ReadGuardPlugin

REPO = Path(__file__).resolve().parent


def pytest_configure(config):
    guard = ReadGuard(REPO, REPO.parent, allowed=[REPO.parent / "venv"])
    config.pluginmanager.register(ReadGuardPlugin(guard), "inner_read_guard")
"""

INNER_TESTS = """
from pathlib import Path

REPO = Path(__file__).resolve().parent


def test_reads_inside():
    assert (REPO / "data.txt").read_text() == "inside"
    assert (REPO.parent / "venv" / "lib.txt").read_text() == "allowed"


def test_reads_beside():
    assert (REPO / ".." / "shared" / "data.txt").read_text() == "beside"


def test_lists_beside():
    assert [p.name for p in (REPO.parent / "shared").iterdir()] == ["data.txt"]
"""


def _layout(root: Path) -> Path:
    repo = root / "repo"
    for path, text in ((repo / "data.txt", "inside"), (root / "shared" / "data.txt", "beside"),
                       (root / "venv" / "lib.txt", "allowed")):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (repo / "conftest.py").write_text(INNER_CONFTEST)
    return repo


def _run_in(repo: Path, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
            ) -> pytest.RunResult:
    """Run the inner session from inside the inner repository, as a user does."""
    monkeypatch.chdir(repo)
    return pytester.runpytest("-p", "no:cacheprovider")


def test_guard_fails_tests_that_read_beside_the_repo(pytester: pytest.Pytester,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    repo = _layout(pytester.path)
    (repo / "test_inner.py").write_text(INNER_TESTS)
    result = _run_in(repo, pytester, monkeypatch)
    result.assert_outcomes(passed=3, errors=2)
    shared = str((pytester.path / "shared").resolve())
    result.stdout.fnmatch_lines([
        f"*test_inner.py::test_reads_beside opened 1 path(s) outside the repository*"
        f"{shared}/data.txt*tests/fixtures*",
        f"*test_inner.py::test_lists_beside opened 1 path(s) outside the repository*{shared}*",
    ])
    assert "test_reads_inside opened" not in result.stdout.str()


def test_guard_fails_the_session_for_reads_during_collection(pytester: pytest.Pytester,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    repo = _layout(pytester.path)
    (repo / "test_collect.py").write_text(
        "from pathlib import Path\n"
        "DATA = (Path(__file__).resolve().parents[1] / 'shared' / 'data.txt').read_text()\n"
        "def test_data():\n    assert DATA == 'beside'\n")
    result = _run_in(repo, pytester, monkeypatch)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*outside any test (collection): opened 1 path(s)*shared/data.txt*"])


def test_allowed_folder_containing_the_repo_is_not_a_loophole(tmp_path: Path) -> None:
    """A clone in the temp (or home) folder: that folder's allowance does not extend to the
    repository's siblings, apart from caches and temporary files."""
    repo = _layout(tmp_path)
    for name in (".cache", "tmpk2j4", "pytest-of-me"):  # tool caches, tempfile and pytest temps
        (tmp_path / name).mkdir()
        (tmp_path / name / "x.txt").write_text("")
    with ReadGuard(repo, tmp_path, allowed=[tmp_path.parent, tmp_path / "venv"]) as guard:
        (repo / "data.txt").read_text()
        (tmp_path / "venv" / "lib.txt").read_text()
        for name in (".cache", "tmpk2j4", "pytest-of-me"):
            (tmp_path / name / "x.txt").read_text()
        (tmp_path / "shared" / "data.txt").read_text()
        sorted(tmp_path.iterdir())  # looking around beside the repository counts too
    assert guard.offences == {"<collection>": [str((tmp_path / "shared" / "data.txt").resolve()),
                                               str(tmp_path.resolve())]}

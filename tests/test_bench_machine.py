"""Result files record vitkit's commit even from a copy without .git (the GPU machine's)."""

import subprocess

import pytest

from vitkit.bench import machine
from vitkit.bench.machine import GIT_COMMIT_ENV, versions

SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def no_git(monkeypatch):
    monkeypatch.setattr(machine, "_git_commit", lambda: None)
    monkeypatch.delenv(GIT_COMMIT_ENV, raising=False)
    return monkeypatch


def test_checkout_commit_comes_from_git():
    root = machine.__file__.rsplit("/vitkit/", 1)[0]
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=root)
    v = versions()
    assert v["vitkit_git_source"] == "git" and v["vitkit_git"].removesuffix("-dirty") == head.stdout.strip()


def test_without_git_the_environment_variable_is_recorded(no_git):
    assert versions()["vitkit_git"] is None and versions()["vitkit_git_source"] is None
    no_git.setenv(GIT_COMMIT_ENV, SHA.upper() + "\n")
    assert (versions()["vitkit_git"], versions()["vitkit_git_source"]) == (SHA, "env")


def test_the_environment_overrides_a_checkout(monkeypatch):
    # The GPU machine's copy carried a stale .git (the session's first commit): the variable wins.
    monkeypatch.setattr(machine, "_git_commit", lambda: SHA)
    monkeypatch.setenv(GIT_COMMIT_ENV, "def5678")
    got = versions()
    assert got["vitkit_git"] == "def5678" and got["vitkit_git_source"] == "env"
    monkeypatch.delenv(GIT_COMMIT_ENV)
    assert versions()["vitkit_git"] == SHA and versions()["vitkit_git_source"] == "git"


@pytest.mark.parametrize("bad", ["main", "12345", "xyz1234567", SHA + "0"])
def test_a_bad_commit_is_refused_by_name(no_git, bad):
    no_git.setenv(GIT_COMMIT_ENV, bad)
    with pytest.raises(ValueError, match=f"{GIT_COMMIT_ENV} must be a git commit .* got '{bad.lower()}'"):
        versions()

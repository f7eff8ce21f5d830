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
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=machine.__file__.rsplit("/vitkit/", 1)[0])
    v = versions()
    assert v["vitkit_git_source"] == "git" and v["vitkit_git"].removesuffix("-dirty") == head.stdout.strip()


def test_without_git_the_environment_variable_is_recorded(no_git):
    assert versions()["vitkit_git"] is None and versions()["vitkit_git_source"] is None
    no_git.setenv(GIT_COMMIT_ENV, SHA.upper() + "\n")
    assert (versions()["vitkit_git"], versions()["vitkit_git_source"]) == (SHA, "env")


def test_without_git_the_option_wins_over_the_environment(no_git):
    no_git.setenv(GIT_COMMIT_ENV, SHA)
    v = versions(git_commit="abc1234-dirty")
    assert (v["vitkit_git"], v["vitkit_git_source"]) == ("abc1234-dirty", "option")


def test_an_explicit_commit_overrides_a_checkout(monkeypatch):
    # The GPU machine's copy carried a stale .git (the session's first commit): explicit wins.
    monkeypatch.setattr(machine, "_git_commit", lambda: SHA)
    assert versions(git_commit="abc1234")["vitkit_git"] == "abc1234"
    monkeypatch.setenv("VITKIT_GIT_COMMIT", "def5678")
    got = versions()
    assert got["vitkit_git"] == "def5678" and got["vitkit_git_source"] == "env"
    monkeypatch.delenv("VITKIT_GIT_COMMIT")
    assert versions()["vitkit_git"] == SHA and versions()["vitkit_git_source"] == "git"


@pytest.mark.parametrize("bad", ["main", "12345", "xyz1234567", SHA + "0"])
def test_a_bad_commit_is_refused_by_name(no_git, bad):
    no_git.setenv(GIT_COMMIT_ENV, bad)
    with pytest.raises(ValueError, match=f"{GIT_COMMIT_ENV} must be a git commit .* got '{bad.lower()}'"):
        versions()
    with pytest.raises(ValueError, match=f"git_commit must be a git commit .* got '{bad.lower()}'"):
        versions(git_commit=bad)

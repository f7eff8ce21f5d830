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


def test_out_for_decides_the_folder_before_a_run_and_refuses_another_cards(tmp_path, monkeypatch):
    import json

    from vitkit.bench.machine import out_for
    from vitkit.costs import results

    root = tmp_path / "results"
    root.mkdir()
    monkeypatch.setattr(results, "RESULTS", root)
    assert out_for(None, "cpu", "cpu-smoke") == results.results_folder("cpu-smoke")  # a smoke run's own folder
    assert out_for(tmp_path / "mine", "cpu", "cpu-smoke") == tmp_path / "mine"
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "prefill-20990101T000000Z.json").write_text(json.dumps({"machine": {"slug": "h100"}}))
    with pytest.raises(results.Refused, match="holds results of another card: prefill-20990101T000000Z.json"):
        out_for(theirs, "cpu", "cpu-smoke")
    with pytest.raises(results.Refused, match="is the results folder of card 'h200'"):
        out_for(root / "h200", "cpu", "cpu-smoke")

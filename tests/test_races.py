"""Runs racing for one output: a commit never replaces what it did not find, unless --overwrite."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from ccup_cli.errors import OutputError
from ccup_cli.output import atomic
from ccup_cli.output import cache as cache_mod
from ccup_cli.output.atomic import CommitReceipt, atomic_dir, atomic_path, no_replace_rename

ROOT = Path(__file__).resolve().parents[1]
COMPLETE = ["README.md", "model.safetensors", "open_clip_config.json", "per_class_top1.png", "report.json",
            "spec.yaml"]


@pytest.fixture(params=["native", "fallback"])
def rename_kind(request, monkeypatch):
    """Run a test with the C library's no-replace rename, and with the portable fallback."""
    if request.param == "fallback":
        monkeypatch.setattr(atomic, "_libc_rename_noreplace", lambda: None)
    elif atomic._libc_rename_noreplace() is None:
        pytest.skip("no renameat2 / renamex_np here")
    return request.param


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_no_replace_rename_keeps_an_existing_file_and_folder(tmp_path, rename_kind):
    (tmp_path / "src").write_text("new")
    (tmp_path / "dst").write_text("old")
    assert no_replace_rename(tmp_path / "src", tmp_path / "dst") is False
    assert (tmp_path / "dst").read_text() == "old" and (tmp_path / "src").exists()
    assert no_replace_rename(tmp_path / "src", tmp_path / "free") is True
    assert (tmp_path / "free").read_text() == "new" and not (tmp_path / "src").exists()
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f").write_text("a")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "f").write_text("b")
    assert no_replace_rename(tmp_path / "a", tmp_path / "b") is False
    assert (tmp_path / "b" / "f").read_text() == "b"
    assert no_replace_rename(tmp_path / "a", tmp_path / "c") is True
    assert (tmp_path / "c" / "f").read_text() == "a"


def test_commit_never_replaces_a_folder_that_appeared_meanwhile(tmp_path, rename_kind):
    out = tmp_path / "out"
    with pytest.raises(OutputError, match=f"{out} was written by another run"):
        with atomic_dir(out, overwrite=False) as tmp:
            (tmp / "mine.txt").write_text("mine")
            out.mkdir()  # another run commits first
            (out / "theirs.txt").write_text("theirs")
    assert names(out) == ["theirs.txt"]
    assert names(tmp_path) == ["out"]  # this run's folder is gone


def test_overwrite_lets_the_last_writer_win_and_says_what_it_replaced(tmp_path, rename_kind):
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.json").write_text(json.dumps({"command": "unlearn", "created_at": "2026-01-01T00:00:00Z",
                                                 "spec": {"forget": ["bag"]}}))
    receipt = CommitReceipt()
    with atomic_dir(out, overwrite=True, receipt=receipt) as tmp:
        (tmp / "mine.txt").write_text("mine")
    assert names(out) == ["mine.txt"] and names(tmp_path) == ["out"]
    assert receipt.replaced == [{"folder": str(out), "command": "unlearn", "created_at": "2026-01-01T00:00:00Z",
                                 "forget": ["bag"]}]
    assert "replaced the existing" in atomic.replaced_warning(receipt.replaced[0])
    assert receipt.write_text("report.json", "{}") and (out / "report.json").read_text() == "{}"
    later = CommitReceipt()
    with atomic_dir(out, overwrite=True, receipt=later) as tmp:
        (tmp / "later.txt").write_text("later")
    assert later.replaced == [{"folder": str(out), "files": 2}]
    assert not receipt.still_ours()
    assert receipt.write_text("report.json", "{}") is False  # never into the later run's folder
    assert names(out) == ["later.txt"]


def test_interrupted_overwrite_puts_the_old_folder_back(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    real = atomic.no_replace_rename
    calls = []

    def interrupted_once(src, dst):
        calls.append(src)
        if len(calls) == 2:  # the rename of the new folder, after the old one was moved aside
            raise KeyboardInterrupt
        return real(src, dst)

    monkeypatch.setattr(atomic, "no_replace_rename", interrupted_once)
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(out, overwrite=True) as tmp:
            (tmp / "new.txt").write_text("new")
    assert names(out) == ["old.txt"] and names(tmp_path) == ["out"]


def test_a_file_commit_never_replaces_a_file_that_appeared(tmp_path, rename_kind):
    target = tmp_path / "report.json"
    with pytest.raises(OutputError, match="was written by another run"):
        with atomic_path(target, overwrite=False, what="report") as tmp:
            tmp.write_text("mine")
            target.write_text("theirs")
    assert target.read_text() == "theirs" and names(tmp_path) == ["report.json"]


def test_a_cache_entry_written_meanwhile_is_kept_and_a_corrupt_one_replaced(tmp_path, monkeypatch):
    monkeypatch.setenv("CCUP_CACHE_DIR", str(tmp_path))
    entry = tmp_path / "features" / "k.safetensors"

    def compute_while_another_run_stores():
        cache_mod.store_cached("features", "k", torch.ones(3, 2))
        return torch.zeros(3, 2)

    value, hit = cache_mod.cached_tensor("features", "k", 3, compute_while_another_run_stores)
    assert not hit and torch.equal(value, torch.zeros(3, 2))
    assert torch.equal(cache_mod.load_cached("features", "k", 3), torch.ones(3, 2))  # the first writer's
    entry.write_bytes(b"not safetensors")
    value, hit = cache_mod.cached_tensor("features", "k", 3, lambda: torch.full((3, 2), 2.0))
    assert not hit and torch.equal(cache_mod.load_cached("features", "k", 3), torch.full((3, 2), 2.0))


# --- real processes --------------------------------------------------------------------------

_COMMITTER = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from ccup_cli.errors import OutputError
    from ccup_cli.output.atomic import CommitReceipt, atomic_dir
    out, me, overwrite = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"
    receipt = CommitReceipt()
    try:
        with atomic_dir(out, overwrite, receipt) as tmp:
            for k in range(20):
                (tmp / f"part-{k}").write_text(me)
            (tmp / "report.json").write_text(json.dumps({"command": "test", "spec": {"forget": [me]}}))
            (out.parent / f"ready-{me}").touch()
            while not (out.parent / "go").exists():
                time.sleep(0.002)
    except OutputError as err:
        print(err.one_line(), file=sys.stderr)
        sys.exit(2)
    print(json.dumps(receipt.replaced))
""")


def _race_committers(folder: Path, overwrite: bool):
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    procs = [subprocess.Popen([sys.executable, "-c", _COMMITTER, str(folder / "out"), me, "1" if overwrite else "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for me in ("a", "b")]
    deadline = time.monotonic() + 60
    while not all((folder / f"ready-{me}").exists() for me in ("a", "b")):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "committers did not start"
        time.sleep(0.005)
    (folder / "go").touch()  # both commit at once
    return [(p.wait(60), *p.communicate()) for p in procs]


@pytest.mark.parametrize("round_", range(3))
def test_two_processes_committing_at_once_leave_one_complete_folder(tmp_path, round_):
    results = _race_committers(tmp_path, overwrite=False)
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], results
    out = tmp_path / "out"
    winner = next(me for me, (code, _, _) in zip("ab", results) if code == 0)
    loser_err = next(err for code, _, err in results if code == 2).strip()
    assert len(loser_err.splitlines()) == 1 and str(out) in loser_err and "another run" in loser_err
    assert {(out / f"part-{k}").read_text() for k in range(20)} == {winner}
    assert names(tmp_path) == ["go", "out", "ready-a", "ready-b"]  # no partial folder left


def test_two_overwriting_processes_each_report_what_they_replaced(tmp_path):
    results = _race_committers(tmp_path, overwrite=True)
    assert [code for code, _, _ in results] == [0, 0], results
    out = tmp_path / "out"
    final = (out / "part-0").read_text()
    assert {(out / f"part-{k}").read_text() for k in range(20)} == {final}  # one complete folder
    replaced = {me: json.loads(stdout) for me, (_, stdout, _) in zip("ab", results)}
    other = "b" if final == "a" else "a"
    # the last writer replaced the other's folder, which replaced nothing (the folder was new)
    assert [r.get("forget") for r in replaced[final]] == [[other]] and replaced[other] == []
    assert sorted(names(tmp_path)) == ["go", "out", "ready-a", "ready-b"]


def test_two_ccup_runs_racing_for_one_out(tmp_path):
    """Two real ``ccup unlearn`` runs started together on one --out: one folder, one exit 2 naming it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = tmp_path / "o"
    procs = {forget: subprocess.Popen([sys.executable, "-m", "ccup_cli.cli", "unlearn", "--forget", forget,
                                       "--eval-limit", "2", "--out", str(out), "-q"],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for forget in ("bag", "coat")}
    results = {forget: (p.wait(300), *p.communicate()) for forget, p in procs.items()}
    assert sorted(code for code, _, _ in results.values()) == [0, 2], results
    winner = next(f for f, (code, _, _) in results.items() if code == 0)
    _, _, err = next(r for r in results.values() if r[0] == 2)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and str(out) in lines[0] and "Traceback" not in err, err
    assert names(out) == COMPLETE and names(tmp_path) == ["o"]
    report = json.loads((out / "report.json").read_text())
    assert report["spec"]["forget"] == [winner]

"""`inttower train` runs on jemalloc where it is installed: the plan, and the real re-execution."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from inttower.allocator import REEXEC_MARK, find_jemalloc, plan, use_configured_allocator
from inttower.cli import launched_as_command
from inttower.errors import UserError
from monitoring.memory import loaded_allocator
from stream.broker import free_port
from tests.conftest import REPO_ROOT, missing_system_package



@pytest.fixture
def jemalloc() -> str:
    """The installed jemalloc; CI must have it (`make setup` installs libjemalloc2)."""
    found = find_jemalloc(None)
    if found is None:
        missing_system_package("jemalloc not found (apt install libjemalloc2)")
    return found


def test_plan_preloads_jemalloc_once_after_other_preloads():
    decided = plan("auto", "/lib/libjemalloc.so.2", "glibc", {"PATH": "/bin"})
    assert decided.env == {"LD_PRELOAD": "/lib/libjemalloc.so.2", "PATH": "/bin", REEXEC_MARK: "1"}
    # Re-executed and loaded: run on. Asked for glibc: never preload.
    assert plan("auto", "/lib/libjemalloc.so.2", "jemalloc", decided.env).env is None
    assert plan("glibc", "/lib/libjemalloc.so.2", "glibc", {}).env is None
    # The user's own preloads (a sanitizer that must come first, another allocator): "auto" leaves
    # them alone, "jemalloc" comes after them.
    theirs = {"LD_PRELOAD": "/lib/libasan.so.8"}
    assert plan("auto", "/lib/libjemalloc.so.2", "glibc", theirs).env is None
    insisted = plan("jemalloc", "/lib/libjemalloc.so.2", "glibc", theirs).env
    assert insisted["LD_PRELOAD"] == "/lib/libasan.so.8:/lib/libjemalloc.so.2"


def test_only_the_command_line_process_restarts_itself():
    assert launched_as_command(["/venv/bin/python", "-m", "inttower.cli", "train"])
    assert launched_as_command(["/venv/bin/python", "-X", "faulthandler", "-u", "/venv/bin/inttower", "train"])
    assert launched_as_command(["python", "-u", "-minttower.cli", "train"])
    assert launched_as_command(["/venv/bin/python", "/venv/bin/inttower", "train"])
    assert not launched_as_command(["/venv/bin/python", "-m", "pytest", "tests"])
    assert not launched_as_command(["/usr/bin/python3", "wrapper.py", "train"])
    assert not launched_as_command(["python", "-c", "import inttower.cli; inttower.cli.main()"])


def test_auto_preloads_for_joined_feedback_only_and_jemalloc_insists_in_either_mode():
    labelled = plan("auto", "/lib/libjemalloc.so.2", "glibc", {}, joined=False)
    assert labelled.env is None and "labelled events" in labelled.reason
    assert plan("jemalloc", "/lib/libjemalloc.so.2", "glibc", {}, joined=False).env is not None
    assert plan("auto", "/lib/libjemalloc.so.2", "glibc", {}, joined=True).env is not None


def test_plan_without_jemalloc_runs_on_glibc_under_auto_and_is_one_clear_error_when_insisted_on():
    decided = plan("auto", None, "glibc", {})
    assert decided.env is None and "apt install libjemalloc2" in decided.reason
    with pytest.raises(UserError, match="libjemalloc.so.2 not found.*apt install libjemalloc2"):
        plan("jemalloc", None, "glibc", {})
    # A preload that did not take is not retried (no exec loop).
    failed = {REEXEC_MARK: "1", "LD_PRELOAD": "/lib/broken.so"}
    fallback = plan("auto", "/lib/broken.so", "glibc", failed)
    assert fallback.env is None and fallback.warn
    with pytest.raises(UserError, match="did not load jemalloc"):
        plan("jemalloc", "/lib/broken.so", "glibc", failed)


def test_a_configured_library_must_exist(tmp_path):
    with pytest.raises(UserError, match="allocator_library .*nowhere.so: no such file"):
        find_jemalloc(str(tmp_path / "nowhere.so"))


def test_loaded_allocator_reads_the_process_maps(tmp_path):
    maps = tmp_path / "maps"
    maps.write_text("7f0-7f1 r-xp 0 fe:00 1 /usr/lib/x86_64-linux-gnu/libc.so.6\n")
    assert loaded_allocator(str(maps)) == "glibc"
    maps.write_text(maps.read_text() + "7f2-7f3 r-xp 0 fe:00 2 /usr/lib/x86_64-linux-gnu/libjemalloc.so.2\n")
    assert loaded_allocator(str(maps)) == "jemalloc"
    assert loaded_allocator(str(tmp_path / "missing")) == "glibc"


def test_in_someone_elses_process_it_never_restarts(monkeypatch, jemalloc):
    """`inttower.cli.main([...])` inside another program: "auto" runs on; "jemalloc" says how to preload."""
    monkeypatch.delenv(REEXEC_MARK, raising=False)
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.setattr("inttower.allocator.loaded_allocator", lambda: "glibc")
    use_configured_allocator("auto", None, joined=True, may_restart=False)  # returns: this pytest process goes on
    with pytest.raises(UserError, match="cannot restart itself; start it with LD_PRELOAD=.*jemalloc"):
        use_configured_allocator("jemalloc", None, joined=False, may_restart=False)


def _train_unreachable(tmp_path: Path, daemon_lines: str, more: str = "") -> subprocess.CompletedProcess:
    config = tmp_path / "c.toml"
    config.write_text(f'[stream]\nbootstrap_servers = ["127.0.0.1:{free_port()}"]\nstartup_timeout_s = 1.0\n'
                      f'[daemon]\ncheckpoint_dir = "{tmp_path / "ckpt"}"\n{daemon_lines}\n{more}')
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", REEXEC_MARK)}
    return subprocess.run([sys.executable, "-m", "inttower.cli", "--verbose", "train", "--config", str(config)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, env=env)


def test_train_reexecutes_itself_under_jemalloc(tmp_path, jemalloc):
    result = _train_unreachable(tmp_path, 'allocator = "jemalloc"')
    assert result.returncode == 3, result.stderr  # got as far as the broker: the preloaded process ran on
    assert "restarting this process with it preloaded" in result.stderr
    assert "allocator jemalloc (preloaded)" in result.stderr
    assert result.stderr.count("restarting this process") == 1


def test_auto_reexecutes_in_joined_mode_and_not_for_labelled_events(tmp_path, jemalloc):
    joined = _train_unreachable(tmp_path, "", '[feedback]\nmode = "joined"\n')
    assert joined.returncode == 3 and "allocator jemalloc (preloaded)" in joined.stderr, joined.stderr
    labelled = _train_unreachable(tmp_path, "")
    assert labelled.returncode == 3 and "allocator glibc (auto, labelled events)" in labelled.stderr, labelled.stderr


def test_train_on_glibc_does_not_reexecute(tmp_path):
    result = _train_unreachable(tmp_path, 'allocator = "glibc"')
    assert result.returncode == 3, result.stderr
    assert "restarting" not in result.stderr and "allocator glibc ([daemon] allocator)" in result.stderr


def test_a_missing_library_is_one_line(tmp_path):
    result = _train_unreachable(tmp_path, f'allocator = "jemalloc"\nallocator_library = "{tmp_path / "no.so"}"')
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("inttower: error: [daemon] allocator_library")


def test_jemalloc_heap_is_read_from_its_own_statistics(tmp_path, jemalloc):
    """Under jemalloc the memory report's malloc layer is jemalloc's (glibc's arenas sit unused)."""
    script = """
from monitoring.memory import MIB, read_memory, write_malloc_info
assert not write_malloc_info("malloc.xml")  # glibc's arenas sit unused: nothing to write
before = read_memory()
block = bytearray(64 * MIB)
after = read_memory()
assert before.malloc.allocator == "jemalloc", before.malloc
assert after.malloc.in_use_bytes - before.malloc.in_use_bytes >= 60 * MIB, (before.malloc, after.malloc)
print(after.line())
"""
    env = {**os.environ, "LD_PRELOAD": jemalloc}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120, env={**env, "PYTHONPATH": str(REPO_ROOT)})
    assert result.returncode == 0, result.stderr
    assert "malloc (jemalloc) in use" in result.stdout and not (tmp_path / "malloc.xml").exists()

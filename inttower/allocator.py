"""Which C allocator the training process runs on: glibc's, or jemalloc preloaded.

Why (README "Memory over weeks"): in joined-feedback mode every step's buffers have a
different size (what the watermark releases varies from batch to batch), and glibc keeps
the freed blocks as free chunks of 0.6-6 MiB between live ones; its free heap crept
about 1 MiB per 1M events over 20M. jemalloc sorts blocks into size classes and hands
unused pages back on a timer, and measured in joined mode it trained faster with RSS
medians flat after warm-up. Labelled events stay on glibc by default (its tuned
settings measured flat, and faster there). An allocator can only be chosen before the
process starts, so `inttower train` re-executes itself once with the library in
``LD_PRELOAD`` (the PID stays: torchrun and process supervisors see the same process).
"""

from __future__ import annotations

import ctypes.util
import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from inttower.errors import UserError
from monitoring.memory import loaded_allocator

log = logging.getLogger(__name__)

Allocator = Literal["auto", "jemalloc", "glibc"]
#: Set in the environment of the re-executed process: a preload that did not take is not retried.
REEXEC_MARK = "INTTOWER_ALLOCATOR_PRELOADED"
JEMALLOC_SONAME = "libjemalloc.so.2"
INSTALL_HINT = "Debian/Ubuntu: apt install libjemalloc2; Fedora/RHEL: dnf install jemalloc"


def find_jemalloc(library: str | None) -> str | None:
    """The library to preload: ``library`` (which must exist), else jemalloc where the dynamic linker finds it."""
    if library is not None:
        if not Path(library).is_file():
            raise UserError(f"[daemon] allocator_library {library}: no such file")
        return library
    return ctypes.util.find_library("jemalloc")


@dataclass(frozen=True)
class Plan:
    """What to do at start: re-execute with ``env`` (None: run on as we are), and why (``warn``: loudly)."""

    env: dict[str, str] | None
    reason: str
    warn: bool = False


def plan(choice: Allocator, library: str | None, loaded: str, env: Mapping[str, str], joined: bool = True) -> Plan:
    """Decide (no side effects): `use_configured_allocator` carries it out.

    ``library``: what `find_jemalloc` found (None: nothing). "jemalloc" insists (a clear
    error when it cannot be had); "auto" takes it in joined-feedback mode (``joined``)
    where installed, and otherwise runs on glibc with the tuned settings of
    `monitoring.memory.tune_malloc`, which bench.soak measured flat for labelled events.
    """
    if choice == "glibc":
        return Plan(None, "allocator glibc ([daemon] allocator)")
    if choice == "auto" and not joined and loaded != "jemalloc":
        return Plan(None, "allocator glibc (auto, labelled events)")
    if loaded == "jemalloc":
        return Plan(None, "allocator jemalloc (preloaded)")
    if env.get(REEXEC_MARK):
        why = f"preloading {env.get('LD_PRELOAD', '')!r} did not load jemalloc"
        if choice == "jemalloc":
            raise UserError(f"[daemon] allocator = \"jemalloc\": {why}")
        return Plan(None, f"allocator glibc: {why}", warn=True)
    if choice == "auto" and env.get("LD_PRELOAD"):  # the user's own preloads (a sanitizer, another allocator)
        return Plan(None, f"allocator left to LD_PRELOAD={env['LD_PRELOAD']} (allocator = \"jemalloc\" adds it after)")
    if library is None:
        if choice == "jemalloc":
            raise UserError(f"[daemon] allocator = \"jemalloc\": {JEMALLOC_SONAME} not found ({INSTALL_HINT}; "
                            "or set [daemon] allocator_library to its path)")
        return Plan(None, f"allocator glibc: jemalloc not found ({INSTALL_HINT} for flatter memory over weeks)")
    preload = ":".join(p for p in (env.get("LD_PRELOAD", ""), library) if p)  # after any other: ASan must come first
    return Plan({**env, "LD_PRELOAD": preload, REEXEC_MARK: "1"}, f"allocator jemalloc ({library})")


def use_configured_allocator(choice: Allocator, library: str | None, joined: bool, may_restart: bool = True) -> None:
    """Re-execute this process under jemalloc when the plan says so (does not return then).

    ``may_restart``: False when the command runs inside someone else's process
    (`inttower.cli.main` called with arguments), which a re-execution would start over:
    then "auto" runs on as it is, and "jemalloc" is an error saying how to preload it.
    Logged on ``--verbose`` (`inttower.cli.configure_logging`); the memory reports name
    the allocator in use ("malloc (jemalloc) in use ...").
    """
    wanted = choice == "jemalloc" or (choice == "auto" and joined)
    decided = plan(choice, find_jemalloc(library) if wanted else None, loaded_allocator(), os.environ, joined)
    if decided.env is None:
        log.log(logging.WARNING if decided.warn else logging.INFO, decided.reason)
        return
    if not may_restart:
        if choice == "jemalloc":
            raise UserError(f"[daemon] allocator = \"jemalloc\": this process cannot restart itself; "
                            f"start it with LD_PRELOAD={decided.env['LD_PRELOAD']}")
        log.info("allocator glibc: called in-process, so jemalloc cannot be preloaded")
        return
    log.info("%s: restarting this process with it preloaded", decided.reason)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], decided.env)

"""Training runs of a benchmark: what state each one is in, and getting it finished - across interruptions.

A run is one ``nnUNetv2_train DATASET CONFIG FOLD -tr TRAINER -p PLANS`` in its usual folder
``$nnUNet_results/DatasetXXX/TRAINER__PLANS__CONFIG/fold_F``. Its state decides what the benchmark does:

=============  ==========================================================  ======================================
state          what is on disk                                             action
=============  ==========================================================  ======================================
``done``       ``checkpoint_final.pth`` and ``validation/summary.json``    reused, nothing is trained
``validate``   ``checkpoint_final.pth`` without a finished validation      ``nnUNetv2_train ... --val``
``continue``   ``checkpoint_latest.pth`` or ``checkpoint_best.pth``        ``nnUNetv2_train ... --c``
``restart``    a fold folder without any usable checkpoint                 the folder is removed, trained anew
``new``        nothing                                                     ``nnUNetv2_train ...``
=============  ==========================================================  ======================================

A checkpoint cut short by a kill is not a zip archive; it is deleted before continuing (nnU-Net would crash on
it), so the run continues from the next older checkpoint. The benchmark's variants save ``checkpoint_latest``
every epoch, so a run stopped by a time limit loses at most one epoch: re-running the same benchmark command
continues it.

Next to the fold folder, ``fold_F_benchmark.json`` (the run-info) records every ``nnUNetv2_train`` session the
benchmark started - command, device, host, start, end, seconds, exit code - and the labelled cases the run
trains with. Its ``wall_seconds`` (the sum over sessions, nnU-Net's final validation included) is the run's real
cost, also when the run is reused later. A session whose end was never recorded (the benchmark itself was
killed) is closed with the time of the newest file in the fold folder. Runs that predate the run-info take their
wall time from nnU-Net's logs (first to last line of each log file).

``fold_F_benchmark.lock`` is locked (``flock``) while a session runs, and the training process inherits the lock,
so two benchmark commands never train the same run at once; the second waits. Each training process leads its own
process group (its data-augmentation workers are forked into it). When the benchmark is interrupted
(SIGTERM/SIGINT/SIGHUP) the whole group gets ``SIGTERM``; when the benchmark is killed outright, the training
process still gets ``SIGTERM`` (Linux ``PR_SET_PDEATHSIG``), and worker processes it leaves behind - which would
hold the lock forever - are terminated by the next benchmark command, after checking that they belong to that
run's group and command line.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from nnunet_llmseg.benchmark.training_logs import parse_logs

DONE, VALIDATE, CONTINUE, RESTART, NEW = "done", "validate", "continue", "restart", "new"
CHECKPOINTS = ("checkpoint_final.pth", "checkpoint_latest.pth", "checkpoint_best.pth")


class RunError(RuntimeError):
    """A run that cannot be reused or trained as asked (the message names the folder and what to do)."""


class Interrupted(Exception):  # noqa: N818 - a signal, not an error
    """The benchmark received SIGTERM / SIGINT / SIGHUP; running sessions were stopped and recorded."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by signal {signum}")
        self.signum = signum


@dataclass
class Run:
    """One method of a benchmark: a trainer variant trained on one fold with one plans."""

    method: str
    base_trainer: str
    trainer: str
    dataset_name: str
    configuration: str
    plans: str
    fold: int
    results_root: Path
    subset_dependent: bool = True

    @property
    def trainer_dir(self) -> Path:
        return Path(self.results_root) / self.dataset_name / f"{self.trainer}__{self.plans}__{self.configuration}"

    @property
    def fold_dir(self) -> Path:
        return self.trainer_dir / f"fold_{self.fold}"

    @property
    def info_path(self) -> Path:
        return self.trainer_dir / f"fold_{self.fold}_benchmark.json"

    @property
    def lock_path(self) -> Path:
        return self.trainer_dir / f"fold_{self.fold}_benchmark.lock"

    def train_command(self, dataset: str, device: str, mode: str) -> list[str]:
        cmd = ["nnUNetv2_train", dataset, self.configuration, str(self.fold), "-tr", self.trainer, "-p", self.plans,
               "-device", device]
        if mode == CONTINUE:
            cmd.append("--c")
        elif mode == VALIDATE:
            cmd.append("--val")
        return cmd


# ----------------------------------------------------------------------------------------------- state
def checkpoint_usable(path: Path) -> bool:
    """A checkpoint torch can open: a complete zip archive (a write cut short lacks the central directory)."""
    return path.is_file() and zipfile.is_zipfile(path)


def run_state(run: Run) -> str:
    """One of ``done``, ``validate``, ``continue``, ``restart``, ``new`` (see the module docstring)."""
    fd = run.fold_dir
    if checkpoint_usable(fd / "checkpoint_final.pth"):
        return DONE if (fd / "validation" / "summary.json").is_file() else VALIDATE
    if any(checkpoint_usable(fd / n) for n in CHECKPOINTS[1:]):
        return CONTINUE
    return RESTART if fd.exists() else NEW


def remove_broken_checkpoints(run: Run, say: Callable[[str], None]) -> None:
    for name in CHECKPOINTS:
        path = run.fold_dir / name
        if path.exists() and not checkpoint_usable(path):
            say(f"[{run.method}] {path} is incomplete (interrupted while saving): removed")
            path.unlink()


# ----------------------------------------------------------------------------------------------- run-info
def _now() -> tuple[float, str]:
    t = time.time()
    return t, datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


def read_info(run: Run) -> dict | None:
    """The run-info record, or None. A damaged file is kept aside (``.corrupt``) and ignored."""
    path = run.info_path
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text())
        if not isinstance(info, dict):
            raise ValueError("not a JSON object")
        return info
    except (json.JSONDecodeError, ValueError) as e:
        aside = path.with_name(path.name + f".corrupt-{int(time.time())}")
        os.replace(path, aside)
        print(f"warning: {path} was unreadable ({e}); moved to {aside}", file=sys.stderr)
        return None


def write_info(run: Run, info: dict) -> None:
    run.trainer_dir.mkdir(parents=True, exist_ok=True)
    tmp = run.info_path.with_name(f".{run.info_path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(info, indent=2))
    os.replace(tmp, run.info_path)


def _newest_mtime(folder: Path) -> float | None:
    times = [p.stat().st_mtime for p in folder.rglob("*") if p.is_file()] if folder.is_dir() else []
    return max(times) if times else None


def close_open_sessions(run: Run, info: dict) -> bool:
    """Give sessions without an end (the benchmark was killed) the time of the newest file in the fold folder."""
    changed = False
    for s in info.get("sessions", []):
        if s.get("end_ts") is None:
            newest = _newest_mtime(run.fold_dir)
            end = max(s["start_ts"], newest if newest is not None else s["start_ts"])
            s.update(end_ts=end, end=datetime.fromtimestamp(end, timezone.utc).isoformat(timespec="seconds"),
                     seconds=end - s["start_ts"], end_estimated=True, returncode=None)
            changed = True
    return changed


def wall_seconds(run: Run) -> tuple[float | None, str]:
    """(seconds, source) of all training sessions of a run (see the module docstring)."""
    info = read_info(run)
    if info and info.get("sessions"):
        info = json.loads(json.dumps(info))  # a copy: estimating an open session must not write anything
        estimated = close_open_sessions(run, info)
        total = sum(float(s.get("seconds") or 0.0) for s in info["sessions"])
        return total, "run-info" + (" (a session cut off without record, ended at its newest file)" if estimated
                                    else "")
    logs = parse_logs(run.fold_dir)
    if logs.session_seconds:
        return sum(logs.session_seconds), "nnU-Net training logs (first to last line of each log)"
    return None, "unknown"


def recorded_labelled(run: Run) -> tuple[list[str] | None, str] | None:
    """(labelled cases, source) the run trained with; None when nothing tells (no run-info, no logs).

    A labelled list of None means the trainer used every training case of the fold (no subset file).
    """
    info = read_info(run)
    if info is not None and "labelled" in info:
        return info["labelled"], str(run.info_path)
    logs = parse_logs(run.fold_dir)
    if logs.n_files:
        return logs.labelled, f"training log in {run.fold_dir}"
    return None


def check_subset(run: Run, state: str, labelled: list[str] | None, subset_file: Path | None) -> None:
    """Refuse to reuse or continue a run trained on another labelled subset than the current one."""
    if not run.subset_dependent or state in (NEW, RESTART):
        return
    found = recorded_labelled(run)
    if found is None:
        return
    recorded, source = found
    if (sorted(recorded) if recorded is not None else None) == (sorted(labelled) if labelled is not None else None):
        return

    def describe(x: list[str] | None) -> str:
        return "every training case of the fold" if x is None else f"{len(x)} labelled cases"

    raise RunError(
        f"{run.fold_dir} was trained with {describe(recorded)} (per {source}), but the current labelled subset "
        f"({subset_file or 'none: every training case labelled'}) has {describe(labelled)}. Results of different "
        "subsets must not be mixed: give this benchmark its own results folder (--results DIR), or remove "
        f"{run.trainer_dir} to retrain it.")


# ----------------------------------------------------------------------------------------------- processes
def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: SIGTERM to the training process when the benchmark process dies (e.g. killed by a time limit)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _try_lock(path: Path) -> int | None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _terminate_group(pgid: int, sig: int = signal.SIGTERM) -> None:
    """Signal a training process group that we started (no-op when it is gone)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _group_members(pgid: int, must_contain: str) -> list[int]:
    """Live processes of group ``pgid`` whose command line contains ``must_contain`` (Linux /proc; else [])."""
    members = []
    proc = Path("/proc")
    if not proc.is_dir():
        return members
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state ppid pgrp ...
            if int(fields[2]) != pgid:
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
        if must_contain in cmdline:
            members.append(int(entry.name))
    return members


def reap_orphans(run: Run, say: Callable[[str], None]) -> bool:
    """Terminate processes left from a session whose benchmark was killed (they hold the run's lock).

    Only processes of the last session's process group whose command line names this run's trainer are touched,
    and only when the session's own training process is gone. Returns whether any were found.
    """
    info = read_info(run) or {}
    sessions = info.get("sessions") or []
    pid = sessions[-1].get("pid") if sessions else None
    if not pid or sessions[-1].get("end_ts") is not None:
        return False
    orphans = _group_members(pid, run.trainer)
    if not orphans or pid in orphans:  # nothing left, or the training process itself still runs: wait for it
        return False
    say(f"[{run.method}] terminating {len(orphans)} process(es) left by an interrupted session: {orphans}")
    for o in orphans:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(o, signal.SIGTERM)
    deadline = time.time() + 30
    while time.time() < deadline and _group_members(pid, run.trainer):
        time.sleep(0.5)
    for o in _group_members(pid, run.trainer):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(o, signal.SIGKILL)
    return True


def _bin(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


@dataclass
class _Session:
    run: Run
    mode: str
    proc: subprocess.Popen
    lock_fd: int
    info: dict
    log_path: Path
    log_handle: object
    record: dict = field(default_factory=dict)


@dataclass
class RunSpec:
    """What a benchmark asks of its runs (identical for every method)."""

    dataset: str  # as given to nnUNetv2_train (id or name)
    device: str
    labelled: list[str] | None
    subset_rule: str | None
    epochs: int
    iterations: int


def _start(run: Run, spec: RunSpec, env: dict, log_dir: Path, lock_fd: int,
           say: Callable[[str], None]) -> _Session | None:
    """Start the session a run needs, or None when it turned out to be done."""
    state = run_state(run)
    if state == DONE:
        return None
    info = read_info(run) or {}
    if close_open_sessions(run, info):
        say(f"[{run.method}] an earlier session ended without record; its end was estimated from file times")
    if state in (NEW, RESTART):
        if run.fold_dir.exists():
            say(f"[{run.method}] {run.fold_dir} has no usable checkpoint: training it from the start")
            shutil.rmtree(run.fold_dir)
        if info.get("sessions"):  # attempts that left nothing to continue from are not part of this run's cost
            info["discarded_sessions"] = info.get("discarded_sessions", 0) + len(info["sessions"])
            info["discarded_seconds"] = info.get("discarded_seconds", 0.0) + sum(
                float(x.get("seconds") or 0.0) for x in info["sessions"])
        info["sessions"] = []
    else:
        remove_broken_checkpoints(run, say)
        state = run_state(run)  # a broken final/latest checkpoint changes what is left to do
        if state in (NEW, RESTART):
            return _start(run, spec, env, log_dir, lock_fd, say)
    mode = {NEW: "train", RESTART: "train"}.get(state, state)
    cmd = run.train_command(spec.dataset, spec.device, state)
    start_ts, start = _now()
    record = {"mode": mode, "command": " ".join(cmd), "start": start, "start_ts": start_ts, "end": None,
              "end_ts": None, "seconds": None, "returncode": None, "host": socket.gethostname(), "pid": None}
    info.update(tool="nnunet-llmseg benchmark", method=run.method, trainer=run.trainer, base_trainer=run.base_trainer,
                dataset=run.dataset_name, configuration=run.configuration, plans=run.plans, fold=run.fold,
                device=spec.device, epochs=spec.epochs, iterations=spec.iterations, status="running",
                command=record["command"], subset_rule=spec.subset_rule if run.subset_dependent else None,
                labelled=spec.labelled if run.subset_dependent else None,
                subset_dependent=run.subset_dependent,
                n_labelled=len(spec.labelled) if spec.labelled is not None and run.subset_dependent else None)
    info.setdefault("sessions", []).append(record)
    info.setdefault("started", start)
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{run.method}.log"
    handle = open(log_path, "a")  # noqa: SIM115 - closed when the session ends
    handle.write(f"\n===== {start} {mode}: {record['command']}\n")
    handle.flush()
    env = {**env, "nnUNet_results": str(run.results_root)}
    proc = subprocess.Popen([_bin(cmd[0]), *cmd[1:]], env=env, stdout=handle, stderr=subprocess.STDOUT,
                            pass_fds=(lock_fd,), start_new_session=True,
                            preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    record["pid"] = proc.pid
    write_info(run, info)
    say(f"[{run.method}] {mode}: {record['command']} (pid {proc.pid}, log {log_path})")
    return _Session(run, mode, proc, lock_fd, info, log_path, handle, record)


def _finish(session: _Session, returncode: int | None, say: Callable[[str], None], interrupted: bool = False) -> str:
    # workers of a training process that died without cleaning up (signal, crash) would live on and keep the lock
    _terminate_group(session.proc.pid)
    end_ts, end = _now()
    rec = session.record
    rec.update(end=end, end_ts=end_ts, seconds=end_ts - rec["start_ts"], returncode=returncode)
    state = run_state(session.run)
    status = "finished" if state == DONE else ("interrupted" if interrupted else "failed")
    info = session.info
    info.update(status=status, ended=end,
                wall_seconds=sum(float(s.get("seconds") or 0.0) for s in info.get("sessions", [])))
    write_info(session.run, info)
    session.log_handle.close()
    os.close(session.lock_fd)
    if status == "failed":
        tail = session.log_path.read_text(errors="replace").splitlines()[-25:]
        say(f"[{session.run.method}] FAILED (exit code {returncode}); last lines of {session.log_path}:\n    "
            + "\n    ".join(tail))
    else:
        say(f"[{session.run.method}] {status} after {rec['seconds']:.0f} s (state now: {state})")
    return status


def execute(runs: list[Run], spec: RunSpec, env: dict, log_dir: Path, parallel: int = 1, poll_seconds: float = 2.0,
            say: Callable[[str], None] = print) -> dict[str, str]:
    """Bring every run to ``done`` (at most ``parallel`` training processes at a time); return method -> status.

    Status: ``reused`` (nothing to do), ``finished``, ``failed``. SIGTERM/SIGINT/SIGHUP stop the running
    sessions (their checkpoints stay), record them, and raise :class:`Interrupted`.
    """
    statuses: dict[str, str] = {}
    pending: list[Run] = []
    for run in runs:
        if run_state(run) == DONE:
            statuses[run.method] = "reused"
        else:
            pending.append(run)
    active: list[_Session] = []
    waiting_said: set[str] = set()

    def on_signal(signum, frame):
        raise Interrupted(signum)

    handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    previous = {s: signal.signal(s, on_signal) for s in handled}
    try:
        while pending or active:
            for run in list(pending):
                if len(active) >= max(1, parallel):
                    break
                lock_fd = _try_lock(run.lock_path)
                if lock_fd is None and reap_orphans(run, say):
                    lock_fd = _try_lock(run.lock_path)
                if lock_fd is None:
                    if run.method not in waiting_said:
                        info = read_info(run) or {}
                        pid = (info.get("sessions") or [{}])[-1].get("pid")
                        say(f"[{run.method}] being trained by another process (lock {run.lock_path}"
                            + (f", pid {pid}" if pid else "") + "); waiting for it")
                        waiting_said.add(run.method)
                    continue
                pending.remove(run)
                try:
                    session = _start(run, spec, env, log_dir, lock_fd, say)
                except BaseException:
                    os.close(lock_fd)
                    raise
                if session is None:  # finished by the process we waited for
                    os.close(lock_fd)
                    statuses[run.method] = "reused" if run.method not in waiting_said else "finished"
                else:
                    active.append(session)
            for session in list(active):
                rc = session.proc.poll()
                if rc is not None:
                    active.remove(session)
                    statuses[session.run.method] = _finish(session, rc, say)
            if pending or active:
                time.sleep(poll_seconds)
    except BaseException as exc:  # interrupted, or an error: stop the sessions and record them
        for s in active:
            _terminate_group(s.proc.pid)
        deadline = time.time() + 60
        for s in active:
            try:
                rc = s.proc.wait(timeout=max(1.0, deadline - time.time()))
            except subprocess.TimeoutExpired:
                s.proc.kill()
                rc = s.proc.wait()
            _finish(s, rc, say, interrupted=True)
        if isinstance(exc, (Interrupted, KeyboardInterrupt)):
            say("interrupted: the runs keep their checkpoints; run the same command again to continue")
        raise
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return statuses

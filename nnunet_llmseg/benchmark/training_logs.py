"""What nnU-Net's training logs say about a run: pseudo-Dice per epoch, epoch times, wall time, labelled subset.

``nnUNetv2_train`` writes ``training_log_Y_M_D_hh_mm_ss.txt`` into the fold folder, one file per start (a run
continued with ``--c`` gets a second file that starts at the resumed epoch). Every line is
``YYYY-mm-dd HH:MM:SS.ffffff: message``. The logs are plain text, so reading them never unpickles anything,
and they exist for runs the benchmark did not start itself. When epochs repeat across files (a run resumed
from an older checkpoint) the later file wins.

Per epoch nnU-Net logs ``Pseudo dice [..]`` (per class, on the validation iterations of that epoch) and
``Epoch time: X s``; ``mean_fg_dice`` is the nan-mean of the per-class list and its exponential moving average
``ema = 0.9 ema + 0.1 mean`` is what nnU-Net plots and uses for ``checkpoint_best`` - both are rebuilt here.
TAK also logs ``class weights a [..] b [..]`` per epoch (both networks' class-balance weights).
"""

from __future__ import annotations

import ast
import contextlib
import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

_LINE = re.compile(r"^(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(?:\.\d+)?): ?(.*)$")
_EPOCH = re.compile(r"^Epoch (\d+)\s*$")
_EPOCH_TIME = re.compile(r"^Epoch time: ([-+0-9.eE]+|nan) s")
_PSEUDO = re.compile(r"^Pseudo dice \[(.*)\]")
_WEIGHTS = re.compile(r"^class weights (.*)$")
_NET_WEIGHTS = re.compile(r"(\w+) \[([^\]]*)\]")
_LABELLED = re.compile(r"^Labelled subset .*?Labelled: (\[.*\])\s*$")
_NUMBER = re.compile(r"nan|[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_LOG_NAME = re.compile(r"^training_log_(\d+)_(\d+)_(\d+)_(\d+)_(\d+)_(\d+)\.txt$")


@dataclass
class LogSummary:
    """Everything the benchmark reads from one run's logs."""

    epochs: list[int] = field(default_factory=list)
    pseudo_dice: list[list[float]] = field(default_factory=list)  # per epoch, per class
    epoch_seconds: list[float | None] = field(default_factory=list)
    #: per epoch, TAK's class-balance weights by network (``{"a": [..], "b": [..]}``; empty for other trainers)
    class_weights: list[dict[str, list[float]]] = field(default_factory=list)
    #: seconds between the first and the last line of each log file (one per nnUNetv2_train start)
    session_seconds: list[float] = field(default_factory=list)
    #: the labelled cases the trainer logged (None: it logged no subset, i.e. it trained on every training case)
    labelled: list[str] | None = None
    n_files: int = 0

    @property
    def mean_pseudo_dice(self) -> list[float | None]:
        """nnU-Net's ``mean_fg_dice`` per epoch: nan-mean over classes (None when every class is nan)."""
        out = []
        for values in self.pseudo_dice:
            finite = [v for v in values if not math.isnan(v)]
            out.append(sum(finite) / len(finite) if finite else None)
        return out

    @property
    def ema_pseudo_dice(self) -> list[float | None]:
        """nnU-Net's ``ema_fg_dice``: 0.9 * previous + 0.1 * current, starting at the first epoch's value."""
        out: list[float | None] = []
        ema = None
        for v in self.mean_pseudo_dice:
            if v is not None:
                ema = v if ema is None else 0.9 * ema + 0.1 * v
            out.append(ema)
        return out

    def mean_epoch_seconds(self) -> float | None:
        """Mean epoch time without the first epoch (warm-up) when there are several."""
        times = [t for e, t in zip(self.epochs, self.epoch_seconds)
                 if t is not None and (e > 0 or len(self.epochs) == 1)]
        return sum(times) / len(times) if times else None


def log_files(fold_dir: str | Path) -> list[Path]:
    """nnU-Net's training logs of a fold folder, oldest first (by the time in their names)."""
    files = []
    for f in Path(fold_dir).glob("training_log_*.txt"):
        m = _LOG_NAME.match(f.name)
        if m:
            files.append((tuple(int(x) for x in m.groups()), f))
    return [f for _, f in sorted(files)]


def _floats(text: str) -> list[float]:
    text = re.sub(r"np\.float\d+\(", "", text)  # nnU-Net prints [np.float32(0.5), ...] with numpy >= 2
    return [float(x) for x in _NUMBER.findall(text.replace(")", ""))]


def parse_logs(fold_dir: str | Path) -> LogSummary:
    """Read every training log of ``fold_dir`` (see the module docstring)."""
    per_epoch: dict[int, dict] = {}
    summary = LogSummary()
    for path in log_files(fold_dir):
        summary.n_files += 1
        first = last = None
        epoch = None
        for raw in path.read_text(errors="replace").splitlines():
            m = _LINE.match(raw.strip())
            if not m:
                continue
            stamp = datetime.strptime(m.group(1)[:26], "%Y-%m-%d %H:%M:%S.%f" if "." in m.group(1)
                                      else "%Y-%m-%d %H:%M:%S")
            first = first or stamp
            last = stamp
            msg = m.group(2).strip()
            if (e := _EPOCH.match(msg)) is not None:
                epoch = int(e.group(1))
                per_epoch[epoch] = {}
            elif epoch is not None and (p := _PSEUDO.match(msg)) is not None:
                per_epoch[epoch]["dice"] = _floats(p.group(1))
            elif epoch is not None and (t := _EPOCH_TIME.match(msg)) is not None:
                per_epoch[epoch]["time"] = float(t.group(1))
            elif epoch is not None and (w := _WEIGHTS.match(msg)) is not None:
                per_epoch[epoch]["weights"] = {net: _floats(v) for net, v in _NET_WEIGHTS.findall(w.group(1))}
            elif (lab := _LABELLED.match(msg)) is not None:
                with contextlib.suppress(ValueError, SyntaxError):  # a damaged line tells nothing
                    summary.labelled = sorted(str(c) for c in ast.literal_eval(lab.group(1)))
        if first is not None and last is not None:
            summary.session_seconds.append((last - first).total_seconds())
    for e in sorted(per_epoch):
        if "dice" in per_epoch[e]:  # an epoch cut off before its end is left out
            summary.epochs.append(e)
            summary.pseudo_dice.append(per_epoch[e]["dice"])
            summary.epoch_seconds.append(per_epoch[e].get("time"))
            summary.class_weights.append(per_epoch[e].get("weights", {}))
    return summary

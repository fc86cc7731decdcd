"""nnU-Net's per-epoch logger, extended with the semi-supervised curves.

nnU-Net's ``LocalLogger`` accepts only the keys it knows and draws three panels. This subclass adds our keys
(supervised and unsupervised loss, share of confident voxels, fusion gate, per-class weights) and draws a fourth
panel, so ``progress.png`` shows them; everything is stored in the checkpoint like nnU-Net's own values, so a
resumed run continues the same curves.
"""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from nnunetv2.training.logging.nnunet_logger import LocalLogger

SEMI_KEYS = ("sup_losses", "unsup_losses", "unsup_weight", "reliability", "confident_fraction", "gate",
             "text_share", "class_weights")


class SemiSupervisedLocalLogger(LocalLogger):
    """``LocalLogger`` with the extra per-epoch keys of our trainers (one value per epoch, like nnU-Net's)."""

    def __init__(self, verbose: bool = False) -> None:
        super().__init__(verbose)
        for k in SEMI_KEYS:
            self.my_fantastic_logging[k] = []

    def load_checkpoint(self, checkpoint: dict) -> None:
        # checkpoints of plain nnU-Net runs lack our keys; keep them present so logging continues
        for k in SEMI_KEYS:
            checkpoint.setdefault(k, [])
        super().load_checkpoint(checkpoint)

    def plot_progress_png(self, output_folder: str) -> None:
        log = self.my_fantastic_logging
        n = min(len(log[k]) for k in ("train_losses", "val_losses", "mean_fg_dice", "ema_fg_dice", "lrs",
                                       "epoch_start_timestamps", "epoch_end_timestamps"))
        if n == 0:
            return
        x = list(range(n))
        fig, axes = plt.subplots(4, 1, figsize=(16, 24))
        ax = axes[0]
        ax.plot(x, log["train_losses"][:n], "b-", label="loss_tr (total)")
        ax.plot(x, log["val_losses"][:n], "r-", label="loss_val")
        for key, style in (("sup_losses", "c--"), ("unsup_losses", "m--")):
            if len(log[key]) >= n:
                ax.plot(x, log[key][:n], style, label=key.replace("_losses", " loss"))
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax.legend(loc="upper left")
        ax2 = ax.twinx()
        ax2.plot(x, log["mean_fg_dice"][:n], "g:", label="pseudo dice")
        ax2.plot(x, log["ema_fg_dice"][:n], "g-", label="pseudo dice (mov. avg.)")
        ax2.set_ylabel("pseudo dice")
        ax2.legend(loc="upper right")

        ax = axes[1]
        ax.plot(x, [e - s for e, s in zip(log["epoch_end_timestamps"][:n], log["epoch_start_timestamps"][:n])],
                "b-", label="epoch duration")
        ax.set_ylim(bottom=0)
        ax.set_ylabel("time [s]")
        ax.legend(loc="upper left")

        ax = axes[2]
        ax.plot(x, log["lrs"][:n], "b-", label="learning rate")
        if len(log["unsup_weight"]) >= n:
            ax.plot(x, log["unsup_weight"][:n], "m-", label="unsupervised weight")
        if len(log["reliability"]) >= n:
            ax.plot(x, log["reliability"][:n], "m--", label="teacher reliability")
        ax.legend(loc="upper left")

        ax = axes[3]
        for key, style in (("confident_fraction", "k-"), ("gate", "y-"), ("text_share", "y--")):
            if len(log[key]) >= n:
                ax.plot(x, log[key][:n], style, label=key.replace("_", " "))
        if len(log["class_weights"]) >= n and log["class_weights"] and log["class_weights"][0] is not None:
            for c in range(len(log["class_weights"][0])):
                ax.plot(x, [w[c] for w in log["class_weights"][:n]], ":", label=f"class weight {c}")
        ax.set_xlabel("epoch")
        ax.legend(loc="upper left")
        plt.tight_layout()
        fig.savefig(os.path.join(output_folder, "progress.png"))
        plt.close(fig)

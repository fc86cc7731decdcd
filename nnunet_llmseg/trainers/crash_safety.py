"""Training that survives ``kill -9``: a checkpoint after every epoch, written atomically, and
data-augmentation workers that do not outlive the trainer.

nnU-Net writes ``checkpoint_latest.pth`` every 50 epochs (``save_every``). After a crash, ``nnUNetv2_train
--c`` falls back to ``checkpoint_best.pth`` and silently loses every epoch since - on a short or CPU schedule,
all of them. Our trainers write ``checkpoint_latest.pth`` at the end of every epoch, after nnU-Net's own
end-of-epoch work (logging, EMA Dice, best checkpoint), so the file holds exactly the state the next epoch
starts from and ``--c`` continues with the epoch after the last finished one. A checkpoint is written under a
temporary name, flushed to disk and renamed over the old one: a kill during the write leaves the previous
checkpoint intact.

The cost is one checkpoint write per epoch (nnU-Net's own epochs are 250 iterations); set
:attr:`CrashSafeTraining.checkpoint_every_epoch` to False on a subclass to get nnU-Net's behaviour back.
"""

from __future__ import annotations

import os

from batchgenerators.utilities.file_and_folder_operations import join

from nnunet_llmseg.data.worker_guard import ExitWithParent

LATEST = "checkpoint_latest.pth"


def _fsync(path: str, directory: bool = False) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    except OSError:  # e.g. directories cannot be opened on Windows
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class CrashSafeTraining:
    """Mixin for ``nnUNetTrainer`` subclasses (put it first among the bases): per-epoch atomic checkpoints and
    augmentation workers that exit with the trainer (see the module docstring)."""

    #: write checkpoint_latest.pth after every epoch (nnU-Net: every ``save_every`` = 50 epochs)
    checkpoint_every_epoch: bool = True

    def on_epoch_end(self) -> None:
        super().on_epoch_end()  # nnU-Net: logging, periodic latest, best checkpoint; then current_epoch += 1
        finished = self.current_epoch  # epochs done
        if self.checkpoint_every_epoch and finished < self.num_epochs and not self.disable_checkpointing:
            # save_checkpoint stores current_epoch + 1 as the epoch to continue with (nnU-Net's convention)
            self.current_epoch = finished - 1
            try:
                self.save_checkpoint(join(self.output_folder, LATEST))
            finally:
                self.current_epoch = finished

    def save_checkpoint(self, filename: str) -> None:
        """nnU-Net's checkpoint, written to ``<filename>.part``, flushed, then renamed over ``filename``."""
        if self.local_rank != 0 or self.disable_checkpointing:
            super().save_checkpoint(filename)  # rank > 0 writes nothing; disabled: nnU-Net's message
            return
        part = filename + ".part"
        super().save_checkpoint(part)
        _fsync(part)
        os.replace(part, filename)
        _fsync(os.path.dirname(os.path.abspath(filename)), directory=True)

    @classmethod
    def get_training_transforms(cls, *args, **kwargs):
        """nnU-Net's training transforms, wrapped so the augmenter workers applying them exit with us."""
        return ExitWithParent(super().get_training_transforms(*args, **kwargs))

    @classmethod
    def get_validation_transforms(cls, *args, **kwargs):
        """nnU-Net's validation transforms, wrapped like :meth:`get_training_transforms`."""
        return ExitWithParent(super().get_validation_transforms(*args, **kwargs))

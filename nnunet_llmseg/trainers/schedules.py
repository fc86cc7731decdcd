"""Short-schedule variants, named the way nnU-Net names its own (``nnUNetTrainer_5epochs``).

``{Trainer}_{E}epochs`` keeps nnU-Net's 250 iterations per epoch; ``{Trainer}_{E}epochs_{I}it`` also sets the
iterations per epoch (and at most ``I`` validation iterations), for CPU benchmarks and tests. Any other
schedule: call :func:`make_schedule_variant` in a module of your own on ``nnUNet_extTrainer`` (the benchmark
scripts do exactly that).
"""

from __future__ import annotations

import torch

STANDARD_EPOCHS: tuple[int, ...] = (1, 2, 5, 10, 20, 50, 100, 250, 500)
#: (epochs, iterations per epoch) pairs pre-registered for tests, the demo and CPU benchmarks
SHORT_SCHEDULES: tuple[tuple[int, int], ...] = ((2, 3), (5, 10), (10, 10), (10, 25), (20, 25), (50, 25))


def schedule_name(base: type, epochs: int, iterations: int | None = None) -> str:
    return f"{base.__name__}_{epochs}epochs" + (f"_{iterations}it" if iterations is not None else "")


def make_schedule_variant(base: type, epochs: int, iterations: int | None = None) -> type:
    """A subclass of ``base`` that only changes the number of epochs (and iterations per epoch)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        base.__init__(self, plans, configuration, fold, dataset_json, device)
        self.num_epochs = epochs
        if iterations is not None:
            self.num_iterations_per_epoch = iterations
            self.num_val_iterations_per_epoch = min(self.num_val_iterations_per_epoch, iterations)

    name = schedule_name(base, epochs, iterations)
    doc = f"{base.__name__} with {epochs} epochs" + (f" of {iterations} iterations" if iterations else "") + "."
    return type(name, (base,), {"__init__": __init__, "__doc__": doc, "__module__": base.__module__})


def register_schedules(bases: list[type], namespace: dict) -> list[str]:
    """Create the standard short-schedule variants of ``bases`` in ``namespace``; return their names."""
    names = []
    for base in bases:
        for e in STANDARD_EPOCHS:
            cls = make_schedule_variant(base, e)
            namespace[cls.__name__] = cls
            names.append(cls.__name__)
        for e, it in SHORT_SCHEDULES:
            cls = make_schedule_variant(base, e, it)
            namespace[cls.__name__] = cls
            names.append(cls.__name__)
    return names

"""Our nnU-Net trainers. The shim module that nnU-Net imports re-exports everything in ``__all__``."""

__all__: list[str] = []

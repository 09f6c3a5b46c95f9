"""Early stopping and the best epoch of an adaptation run with a validation set.

With ``early_stop=N`` (``zoo adapt --early-stop N``) the run watches the validation loss (lower
is better; an equal loss is no improvement): after ``N`` epochs in a row without a new best it
stops, and the model it returns and saves is the one of the best epoch — its weights and
buffers as they were right after that epoch's validation. The loss, not the accuracy, decides:
on the small validation sets of transfer learning the accuracy moves in steps of one image and
ties often, where the loss still tells the epochs apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass
class EarlyStop:
    """The patience counter and the best epoch's state (kept on the CPU)."""

    patience: int
    best_epoch: int | None = None
    best_loss: float | None = None
    bad_epochs: int = 0
    best_state: dict[str, torch.Tensor] | None = field(default=None, repr=False)

    def update(self, epoch: int, val_loss: float | None, model: nn.Module) -> bool:
        """Record epoch ``epoch``; True when this epoch is the new best (its state is kept)."""
        new_best = self.count(epoch, val_loss)
        if new_best:
            self.best_state = {
                k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()
            }
        return new_best

    def count(self, epoch: int, val_loss: float | None) -> bool:
        """The counters of :meth:`update` alone (no state kept): True for a new best."""
        finite = val_loss is not None and math.isfinite(val_loss)
        if finite and (self.best_loss is None or val_loss < self.best_loss):  # type: ignore[operator]
            self.best_epoch, self.best_loss, self.bad_epochs = epoch, val_loss, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.bad_epochs >= self.patience

    def restore_best(self, model: nn.Module) -> None:
        """Put the best epoch's weights and buffers back into ``model``."""
        if self.best_state is not None:
            model.load_state_dict(self.best_state)

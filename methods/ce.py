"""Cross-entropy: the plain objective every method is compared against."""
from dataclasses import dataclass

import torch.nn.functional as F

from kebench.plugin import Objective


class CrossEntropy(Objective):
    @dataclass
    class Params:
        """No parameters: the loss is the plain cross-entropy."""

    def loss(self, model, x, y):
        logits = model(x)
        return F.cross_entropy(logits, y), logits

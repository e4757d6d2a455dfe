"""Label smoothing (Szegedy et al. 2016): (1-a)*NLL(y) + a*mean_k(-log p_k)."""
from dataclasses import dataclass

import torch.nn.functional as F

from kebench.plugin import Objective, param


class LabelSmoothing(Objective):
    @dataclass
    class Params:
        alpha: float = param("share of the target spread uniformly over all classes", ge=0, lt=1)

    def loss(self, model, x, y):
        logits = model(x)
        # PyTorch's label_smoothing spreads alpha uniformly over all classes: exactly the formula above.
        return F.cross_entropy(logits, y, label_smoothing=self.params.alpha), logits

"""Label smoothing (Szegedy et al. 2016): (1-a)*NLL(y) + a*mean_k(-log p_k)."""
import torch.nn.functional as F

from kebench.errors import UserError
from kebench.plugin import Objective


class LabelSmoothing(Objective):
    def __init__(self, params, run):
        super().__init__(params, run)
        if not 0 <= self.params.alpha < 1:
            raise UserError(f"smooth: alpha must be in [0, 1), got {self.params.alpha}.")

    def loss(self, model, x, y):
        logits = model(x)
        # PyTorch's label_smoothing spreads alpha uniformly over all classes: exactly the formula above.
        return F.cross_entropy(logits, y, label_smoothing=self.params.alpha), logits

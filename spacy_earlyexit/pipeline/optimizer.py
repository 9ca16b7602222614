"""The optimizer step of the shim: PyTorch's fused AdamW following a Thinc
optimizer's settings, in two parameter groups (the backbone's weights, and
the added ones at their learning-rate scale), with moving averages of the
weights published where Thinc's `use_params` reads them."""

from typing import Callable, Dict, List, Optional

import torch

from ..core.encoder import MultiExitEncoder


def is_plain_adamw(optimizer, mixed_precision: bool) -> bool:
    """Whether the Thinc optimizer's update is Adam with decoupled weight
    decay (`L2_is_weight_decay`), which the fused step reproduces."""
    decoupled = bool(getattr(optimizer, "L2_is_weight_decay", True)) or not getattr(optimizer, "L2", 0.0)
    return (
        decoupled
        and getattr(optimizer, "b1", 0) > 0
        and getattr(optimizer, "b2", 0) > 0
        and not getattr(optimizer, "use_radam", False)
        and not mixed_precision
    )


def parameter_groups(model: torch.nn.Module, added_learn_rate_scale: float) -> List[dict]:
    """The trainable weights, the backbone's and the added ones (with
    their learning-rate scale) in groups of their own."""
    added = set(model.added_parameter_names()) if isinstance(model, MultiExitEncoder) else set()
    groups = {True: [], False: []}
    for name, param in model.named_parameters():
        if param.requires_grad:
            groups[name in added].append(param)
    return [
        {"params": params, "lr_scale": scale}
        for params, scale in ((groups[False], 1.0), (groups[True], added_learn_rate_scale))
        if params
    ]


class FusedAdamW:
    """The torch optimizer and the moving averages of one shim's weights,
    both keyed to the Thinc optimizer and the model they were made for (a
    new pair starts them afresh)."""

    def __init__(self) -> None:
        self.torch_optimizer: Optional[torch.optim.Optimizer] = None
        self.owner: Optional[tuple] = None
        # moving averages of the weights (the optimizer's `use_averages`), by parameter name
        self.averages: Dict[str, torch.Tensor] = {}
        self.averages_owner: Optional[tuple] = None

    def forget_averages(self) -> None:
        self.averages = {}
        self.averages_owner = None

    def step(
        self,
        model: torch.nn.Module,
        optimizer,
        added_learn_rate_scale: float,
        average_key: Callable[[str], str],
        counter: tuple,
    ) -> None:
        """One fused AdamW step on `model`'s gradients with `optimizer`'s
        current settings (learning rate, betas, eps, weight decay, gradient
        clipping as a global norm); then, with `use_averages`, the averages
        (published in `optimizer.averages` under `average_key(name)`)."""
        owner = (id(optimizer), id(model))
        if self.torch_optimizer is None or self.owner != owner:
            groups = parameter_groups(model, added_learn_rate_scale)
            self.torch_optimizer = torch.optim.AdamW(groups, lr=float(optimizer.learn_rate), fused=True)
            self.owner = owner
        params = [p for group in self.torch_optimizer.param_groups for p in group["params"]]
        decay = float(optimizer.L2) if optimizer.L2_is_weight_decay else 0.0
        for group in self.torch_optimizer.param_groups:
            group.update(
                lr=float(optimizer.learn_rate) * group["lr_scale"],
                betas=(float(optimizer.b1), float(optimizer.b2)),
                eps=float(optimizer.eps),
                weight_decay=decay,
            )
        if optimizer.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, float(optimizer.grad_clip))
        self.torch_optimizer.step()
        self.torch_optimizer.zero_grad(set_to_none=True)
        if getattr(optimizer, "averages", None) is not None:
            self.update_averages(model, optimizer, average_key, counter)

    @torch.no_grad()
    def update_averages(self, model: torch.nn.Module, optimizer, average_key: Callable[[str], str], counter) -> None:
        """Thinc's decay schedule (min((1 + t) / (10 + t), 0.9999) at update
        t, `optimizer.nr_update[counter]`), started from the weights."""
        named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        owner = (id(optimizer), id(model))
        if self.averages_owner != owner:
            self.averages = {}
            self.averages_owner = owner
        optimizer.nr_update[counter] += 1
        t = optimizer.nr_update[counter]
        weight = 1.0 - min((1.0 + t) / (10.0 + t), 0.9999)
        stale, fresh = [], []
        for name, param in named:
            average = self.averages.get(name)
            if average is None or average.shape != param.shape or average.device != param.device:
                average = self.averages[name] = param.detach().clone()
            else:
                stale.append(average)
                fresh.append(param.detach())
            # the tensor itself (on the weights' device; no CuPy needed)
            optimizer.averages[average_key(name)] = average
        if stale:
            torch._foreach_lerp_(stale, fresh, weight)

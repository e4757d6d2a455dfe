"""The device policy: every decision about how a run uses its device, made in one place.

`DevicePolicy.for_run(cfg, device)` turns the run's settings (`--amp`, `--channels-last`,
`--compile`) and the device into concrete choices; the engine (`Run`) and the batch pipeline
(`data.pipeline.BatchStream`) only ask the policy. None of these choices changes a run's id: they
change speed, and (AMP, compile) the rounding of the numbers, never the recipe.

Defaults on CUDA: bf16 autocast, channels-last models and batches, cuDNN autotuning, the whole
batch augmented on the GPU with one `grid_sample` (`augment="batched"`), and every split that fits
the residency budget copied to the GPU once as uint8 (a 224-px image is 150 KB: the paper datasets
take 0.1-2 GB). A split over the budget (or decoded on demand) streams: the next batch is gathered
in a background thread, pinned and copied on a side CUDA stream while the current one trains.

Defaults on CPU: fp32, no channels-last, per-image uint8 crops read straight out of the (possibly
memory-mapped) source (`augment="per_image"`, several times cheaper than float `grid_sample` on a
CPU). A test builds the policy by hand to drive the CUDA code paths (batched augmentation,
streaming with prefetch, bf16 autocast, compile) on a CPU.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, replace

import torch
from torch import nn

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}
RESIDENT_SHARE = 0.25  # of the GPU's memory (and at most half of what is free) for one run's data


@dataclass(frozen=True)
class DevicePolicy:
    device: torch.device
    amp_dtype: torch.dtype | None = None  # autocast dtype; None: fp32
    channels_last: bool = False  # models and batches in NHWC memory layout
    compile: bool = False  # torch.compile the training forward/backward
    compile_backend: str = "inductor"  # tests use aot_eager: graph capture without minutes of C++ builds
    augment: str = "per_image"  # batched: one grid_sample on the device | per_image: uint8 crops on the CPU
    resident_bytes: float = math.inf  # a split up to this size lives on the device (uint8); larger ones stream
    prefetch: bool = True  # streamed splits: gather (pin, copy) the next batch while the current one trains
    cudnn_benchmark: bool = False

    @classmethod
    def for_run(cls, cfg, device: torch.device, **overrides) -> "DevicePolicy":
        """The policy for a run config on `device`; keyword overrides replace single choices."""
        cuda = device.type == "cuda"
        amp = (torch.bfloat16 if cuda else None) if cfg.amp == "auto" else AMP_DTYPES[cfg.amp]
        policy = cls(device=device, amp_dtype=amp,
                     channels_last=cuda if cfg.channels_last is None else bool(cfg.channels_last),
                     compile=bool(cfg.compile), augment="batched" if cuda else "per_image",
                     resident_bytes=resident_budget(device), cudnn_benchmark=cuda)
        return replace(policy, **overrides)

    # ------------------------------------------------------------------ the model
    def place(self, model: nn.Module) -> nn.Module:
        """Move a model to the device, in the policy's memory layout."""
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def compiled(self, model: nn.Module) -> nn.Module:
        """The model to train with: torch.compile'd (sharing its parameters) or the model itself."""
        return torch.compile(model, backend=self.compile_backend) if self.compile else model

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """fp16 needs loss scaling (its range underflows small gradients); bf16 and fp32 do not."""
        return torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

    def apply_backend(self) -> None:
        """Process-wide backend switches (cuDNN autotuning picks the fastest conv kernels per shape)."""
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = self.cudnn_benchmark

    # ------------------------------------------------------------------ the data
    def keeps_resident(self, images) -> bool:
        """Whether a split's uint8 images are copied to the device once (else they stream by batch).
        On-demand decoders (not tensors) always stream; on a CPU a memory-mapped file is read in
        place (copying it into RAM only duplicates the page cache)."""
        if not torch.is_tensor(images) or images.numel() * images.element_size() > self.resident_bytes:
            return False
        return self.device.type != "cpu" or not is_memmapped(images)

    def describe(self) -> dict:
        """The policy as plain values (for logs and benchmark reports)."""
        return {"amp": str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else "off",
                "channels_last": self.channels_last, "compile": self.compile, "augment": self.augment,
                "resident_bytes": None if math.isinf(self.resident_bytes) else int(self.resident_bytes),
                "prefetch": self.prefetch, "cudnn_benchmark": self.cudnn_benchmark}


def resident_budget(device: torch.device) -> float:
    if device.type != "cuda":
        return math.inf
    free, total = torch.cuda.mem_get_info(device)
    return min(RESIDENT_SHARE * total, 0.5 * free)


def is_memmapped(t: torch.Tensor) -> bool:
    try:
        return t.untyped_storage().filename is not None
    except (AttributeError, RuntimeError):
        return False

"""The run core: one config trained end to end.

engine (the `Run` façade plugins see, `execute`), state (`RunState`: what a run accumulates, shared
by engine, loop, checkpoint and record), loop (THE training loop), checkpoint, record (result.json),
results (run folders, atomic writes), metrics (evaluation), monitor, progress, distributed (DDP),
launch (processes), device (the device policy), guard (locks, signals), distill (the distillation
loss and the teacher handling plugins share).
"""

"""A CUDA out-of-memory error: the rank dies with torch's own traceback and message.

No mainstream framework retries a micro-batch after an OOM: the exception ends
the worker, torchrun sees exit code 1 and fails the group over. The message
is the caching allocator's (torch >= 2.4, ``c10/cuda/CUDACachingAllocator.cpp``;
``torch.OutOfMemoryError`` from 2.5, ``torch.cuda.OutOfMemoryError`` before),
with sizes printed as its ``format_size`` does, and figures that agree with
the plan and the rank's telemetry: the process holds what nvidia-smi showed,
most of it allocated by PyTorch, some reserved but fragmented; the failing
allocation is the gradient of the fp32 logits in the backward pass, or on a
card with room to spare (an injected OOM) a tensor larger than what is left.
"""

from __future__ import annotations

import math

from llmcluster.sim import hardware
from llmcluster.sim.gpu import init_rank_state
from llmcluster.sim.rng import Stream, generator
from llmcluster.sim.runplan import Event, RunPlan

MIB = 1024.0**2
DRIVER_RESERVED_MIB = 551  # H100 80GB: nvidia-smi 81559 MiB, torch's total 79.11 GiB
MEGATRON = "/workspace/Megatron-LM"
SCHEDULES = f"{MEGATRON}/megatron/core/pipeline_parallel/schedules.py"
TRAINING = f"{MEGATRON}/megatron/training/training.py"


def fatal_event(plan: RunPlan, rank: int, step: int) -> Event | None:
    """The event that kills ``rank`` in ``step``, if any (an OOM)."""
    for event in plan.events:
        if event.kind == "oom" and event.rank == rank and event.step == step:
            return event
    return None


def format_size(nbytes: float) -> str:
    """Sizes as the caching allocator prints them."""
    if nbytes <= 1024:
        return f"{int(nbytes)} bytes"
    for unit, scale in (("KiB", 1024.0), ("MiB", 1024.0**2)):
        if nbytes <= scale * 1024:
            return f"{nbytes / scale:.2f} {unit}"
    return f"{nbytes / 1024.0**3:.2f} GiB"


def oom_message(plan: RunPlan, event: Event) -> str:
    """The exception line torch prints for ``event``."""
    gpu, layout = plan.gpu, plan.layout
    rng = generator(plan.seed, Stream.EVENTS, 4, event.step, event.rank)
    total = (gpu.memory_mib - DRIVER_RESERVED_MIB) * MIB
    offset = init_rank_state(plan, event.rank).mem_offset
    in_use = min(total - 2 * MIB, plan.memory.total_gb * (1.0 + offset) * hardware.GIB)
    free = total - in_use
    outside = (hardware.CUDA_CONTEXT_GIB + hardware.NCCL_BUFFERS_GIB) * hardware.GIB
    fragmented = min(float(rng.uniform(0.2, 1.8)) * hardware.GIB, 0.3 * (in_use - outside))
    allocated = in_use - outside - fragmented
    logits = 4.0 * layout.seq_len * layout.micro_batch * plan.model.vocab / layout.tp
    needed = free + fragmented  # more than the allocator could find, even defragmented
    tried = logits if logits > needed else needed + float(rng.uniform(0.25, 2.0)) * hardware.GIB
    tried = math.ceil(tried / (2 * MIB)) * 2 * MIB  # the allocator rounds to 2 MiB blocks
    device = event.rank % plan.nproc_per_node
    name = "torch.OutOfMemoryError" if plan.versions["torch"] >= "2.5" else (
        "torch.cuda.OutOfMemoryError")  # fmt: skip
    backend = "HIP" if gpu.vendor == "AMD" else "CUDA"
    return (
        f"{name}: {backend} out of memory. Tried to allocate {format_size(tried)}. "
        f"GPU {device} has a total capacity of {format_size(total)} of which "
        f"{format_size(free)} is free. Including non-PyTorch memory, this process has "
        f"{format_size(in_use)} memory in use. Of the allocated memory "
        f"{format_size(allocated)} is allocated by PyTorch, and {format_size(fragmented)} is "
        "reserved by PyTorch but unallocated. If reserved but unallocated memory is large try "
        "setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.  "
        "See documentation for Memory Management  "
        "(https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)"
    )


def oom_traceback(plan: RunPlan, event: Event) -> tuple[str, ...]:
    """The lines the dying rank writes to stderr: Megatron's backward pass, then the message."""
    if plan.layout.pp > 1:
        schedule = ("forward_backward_pipelining_without_interleaving", 1865,
                    "input_tensor_grad = backward_step(")  # fmt: skip
    else:
        schedule = ("forward_backward_no_pipelining", 471,
                    "backward_step(input_tensor, output_tensor, output_tensor_grad, model_type, "
                    "config)")  # fmt: skip
    return (
        "Traceback (most recent call last):",
        f'  File "{MEGATRON}/pretrain_gpt.py", line 296, in <module>',
        "    pretrain(",
        f'  File "{TRAINING}", line 386, in pretrain',
        "    iteration, num_floating_point_operations_so_far = train(",
        f'  File "{TRAINING}", line 1436, in train',
        "    train_step(forward_step_func,",
        f'  File "{TRAINING}", line 754, in train_step',
        "    losses_reduced = forward_backward_func(",
        f'  File "{SCHEDULES}", line {schedule[1]}, in {schedule[0]}',
        f"    {schedule[2]}",
        f'  File "{SCHEDULES}", line 370, in backward_step',
        "    custom_backward(output_tensor[0], output_tensor_grad[0])",
        f'  File "{SCHEDULES}", line 156, in custom_backward',
        "    Variable._execution_engine.run_backward(",
        oom_message(plan, event),
    )

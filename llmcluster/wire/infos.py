"""What the ``run`` record says of the model, the GPU, the data and the derived plan."""

from __future__ import annotations

from dataclasses import dataclass

from llmcluster.wire.schema import num


@dataclass(frozen=True, kw_only=True)
class ModelInfo:
    """The model's published architecture."""

    name: str
    family: str
    hf_id: str
    params: int = num(1)
    active_params: int = num(1)
    layers: int = num(1)
    hidden: int = num(1)
    ffn: int = num(1)
    heads: int = num(1)
    kv_heads: int = num(1)
    vocab: int = num(1)
    context: int = num(1)
    tied_embeddings: bool = False
    moe_experts: int = num(0, default=0)
    moe_active: int = num(0, default=0)
    activation: str = ""
    norm: str = ""
    tokenizer: str = ""
    release: int = num(0, default=0)
    humorous: bool = False
    domain: str = ""  # what the model is for: text, code, ...


@dataclass(frozen=True, kw_only=True)
class GpuInfo:
    """The accelerator's datasheet figures."""

    name: str
    aliases: tuple[str, ...]
    vendor: str
    arch: str
    smi_name: str
    memory_gb: float = num(0)
    memory_mib: int = num(1)
    mem_bw_gbs: float = num(0)
    bf16_tflops: float = num(0)
    bf16_supported: bool = True
    tdp_w: float = num(1)
    idle_w: float = num(0)
    nvlink_gbs: float = num(0)
    intra_node_link: str = ""
    nic_gbs: float = num(0)
    nic_name: str = ""
    max_operating_c: float = num(0)
    slowdown_c: float = num(0)
    shutdown_c: float = num(0)
    max_clock_mhz: int = num(1)
    base_clock_mhz: int = num(1)
    sm_count: int = num(1)
    cuda_cc: str = ""
    gpus_per_node: int = num(1)
    precision: str = ""


@dataclass(frozen=True, kw_only=True)
class DatasetInfo:
    """The training corpus."""

    name: str
    hf_id: str
    tokens: int = num(0)
    documents: int = num(0)
    languages: str = ""
    license: str = ""
    humorous: bool = False
    description: str = ""
    kind: str = ""  # web, code, books, synthetic stories, ...


@dataclass(frozen=True, kw_only=True)
class MemoryInfo:
    """Per-GPU memory in GiB."""

    weights_gb: float = num(0)
    grads_gb: float = num(0)
    optimizer_gb: float = num(0)
    activations_gb: float = num(0)
    overhead_gb: float = num(0)
    total_gb: float = num(0)


@dataclass(frozen=True, kw_only=True)
class PlanInfo:
    """Every derived figure of the training setup, for auditing."""

    total_steps: int = num(1)
    seq_len: int = num(1)
    micro_batch: int = num(1)
    grad_accum: int = num(1)
    global_batch: int = num(1)
    tokens_per_step: int = num(1)
    dp: int = num(1)
    tp: int = num(1)
    pp: int = num(1)
    strategy: str = ""
    zero_stage: int = num(0, 3)
    recompute: str = ""
    precision: str = ""
    peak_lr: float = num(0)
    min_lr: float = num(0)
    warmup_steps: int = num(0)
    schedule: str = ""
    decay_start: int = num(0)
    weight_decay: float = num(0)
    grad_clip: float = num(0)
    adam_beta1: float = num(0, 1)
    adam_beta2: float = num(0, 1)
    adam_eps: float = num(0)
    eval_interval: int = num(1)
    eval_iters: int = num(1)
    checkpoint_interval: int = num(1)
    checkpoint_dir: str = ""
    export_dir: str = ""
    total_tokens: int = num(0)
    flops_per_token: float = num(0)
    mfu_target: float = num(0, 1)
    init_s: float = num(0)
    step_time_model_s: float = num(0)
    eval_s: float = num(0)
    memory: MemoryInfo
    mem_spread: float = num(0)
    grad_bucket_bytes: int = num(0)
    versions: dict[str, str]
    node_names: tuple[str, ...] = ()
    events_planned: int = num(0, default=0)
    samples_per_epoch: int = num(0, default=0)  # packed sequences in one pass over the data
    epochs: float = num(0, default=0.0)  # passes over the data the whole run makes

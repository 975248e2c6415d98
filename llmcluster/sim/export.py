"""The final Hugging Face export: what ``save_pretrained(safe_serialization=True)`` writes.

``huggingface_hub.split_torch_state_dict_into_shards`` walks the state dict in
module order and starts a new shard whenever the next tensor would overflow
``max_shard_size`` ("5GB" = 5 x 10^9 bytes), so shards are filled close to 5 GB
and the last one is small; with more than one shard it writes
``model.safetensors.index.json`` (total size and the tensor -> file map), and
always ``config.json`` and ``generation_config.json``. Each ``.safetensors`` file
is an 8-byte header length, a JSON header (dtype, shape, offsets per tensor)
and the bf16 data. Llama-3-70B comes out as 30 shards, as on the Hub.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache

from llmcluster.sim.catalog import ModelSpec
from llmcluster.sim.runplan import RunPlan

MAX_SHARD_BYTES = 5_000_000_000  # transformers' default max_shard_size "5GB"
BF16_BYTES = 2
STORAGE_GBS = 1.2  # one writer (rank 0) at a node's storage bandwidth (phases.py)
EXPORT_FIXED_S = 4.0  # gather to rank 0, dtype conversion


@dataclass(frozen=True)
class ExportInfo:
    """The final SafeTensors export."""

    path: str
    files: tuple[tuple[str, int], ...]  # (name, bytes) as ``ls -l`` would list them
    weights_bytes: int  # the bf16 tensor data, 2 bytes per parameter
    bytes_total: int  # every file
    export_s: float


def _tensors(model: ModelSpec) -> list[tuple[str, tuple[int, ...]]]:
    """The state dict in module order (Llama naming), with shapes."""
    h, ffn, vocab = model.hidden, model.ffn, model.vocab
    kv = h * model.kv_heads // model.heads
    tensors: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (vocab, h))]
    gated = model.activation in ("swiglu", "geglu")
    for i in range(model.layers):
        p = f"model.layers.{i}."
        shapes = {"q_proj": (h, h), "k_proj": (kv, h), "v_proj": (kv, h), "o_proj": (h, h)}
        tensors += [(f"{p}self_attn.{n}.weight", shape) for n, shape in shapes.items()]
        experts = [f"mlp.experts.{e}." for e in range(model.moe_experts)] or ["mlp."]
        if model.moe_experts:
            tensors.append((p + "mlp.gate.weight", (model.moe_experts, h)))
        for e in experts:
            if gated:
                tensors.append((p + e + "gate_proj.weight", (ffn, h)))
            tensors += [
                (p + e + "up_proj.weight", (ffn, h)),
                (p + e + "down_proj.weight", (h, ffn)),
            ]
        tensors += [
            (p + "input_layernorm.weight", (h,)),
            (p + "post_attention_layernorm.weight", (h,)),
        ]
    tensors.append(("model.norm.weight", (h,)))
    if not model.tied_embeddings:
        tensors.append(("lm_head.weight", (vocab, h)))
    return tensors


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _safetensors_size(entries: list[tuple[str, tuple[int, ...], int]]) -> int:
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape, nbytes in entries:
        header[name] = {
            "dtype": "BF16",
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    text = json.dumps(header, separators=(",", ":"))
    return 8 + len(text) + (-len(text)) % 8 + offset  # the header is padded to 8 bytes


def _config_json(model: ModelSpec) -> str:
    config = {
        "architectures": ["LlamaForCausalLM"], "bos_token_id": 1, "eos_token_id": 2,
        "hidden_act": "silu" if model.activation == "swiglu" else "gelu",
        "hidden_size": model.hidden, "intermediate_size": model.ffn,
        "max_position_embeddings": model.context, "model_type": model.family,
        "num_attention_heads": model.heads, "num_hidden_layers": model.layers,
        "num_key_value_heads": model.kv_heads, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
        "tie_word_embeddings": model.tied_embeddings, "torch_dtype": "bfloat16",
        "transformers_version": "4.46.3", "use_cache": True, "vocab_size": model.vocab,
    }  # fmt: skip
    return json.dumps(config, indent=2, sort_keys=True) + "\n"


GENERATION_CONFIG = json.dumps(
    {"_from_model_config": True, "bos_token_id": 1, "eos_token_id": 2,
     "transformers_version": "4.46.3"}, indent=2,
) + "\n"  # fmt: skip


@cache
def export_files(model: ModelSpec) -> tuple[tuple[str, int], ...]:
    """The files ``save_pretrained`` writes for ``model`` in bf16, in ``ls`` order."""
    tensors = _tensors(model)
    counted = sum(_numel(s) for _, s in tensors)
    scale = model.params / counted  # the catalog's count is the truth; shapes approximate it
    sizes = [BF16_BYTES * round(_numel(s) * scale) for _, s in tensors]
    sizes[0] += BF16_BYTES * model.params - sum(sizes)
    shards: list[list[tuple[str, tuple[int, ...], int]]] = [[]]
    filled = 0
    for (name, shape), nbytes in zip(tensors, sizes, strict=True):
        if shards[-1] and filled + nbytes > MAX_SHARD_BYTES:
            shards.append([])
            filled = 0
        shards[-1].append((name, shape, nbytes))
        filled += nbytes
    files = [("config.json", len(_config_json(model))),
             ("generation_config.json", len(GENERATION_CONFIG))]  # fmt: skip
    if len(shards) == 1:
        return (*files, ("model.safetensors", _safetensors_size(shards[0])))
    count = len(shards)
    names = [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]
    weight_map = {t: names[i] for i, shard in enumerate(shards) for t, _, _ in shard}
    index = {"metadata": {"total_size": BF16_BYTES * model.params}, "weight_map": weight_map}
    files += [(n, _safetensors_size(s)) for n, s in zip(names, shards, strict=True)]
    files.append(
        ("model.safetensors.index.json", len(json.dumps(index, indent=2, sort_keys=True)) + 1)
    )
    return tuple(files)


def export_info(plan: RunPlan) -> ExportInfo:
    """Files and duration of the bf16 SafeTensors export of the final weights."""
    files = export_files(plan.model)
    total = sum(size for _, size in files)
    return ExportInfo(
        path=plan.export_dir,
        files=files,
        weights_bytes=BF16_BYTES * plan.model.params,
        bytes_total=total,
        export_s=EXPORT_FIXED_S + total / (STORAGE_GBS * 1e9),
    )

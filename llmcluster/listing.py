"""``llmcluster --list``: the models, GPUs, datasets and log styles a run can use."""

from __future__ import annotations

from typing import Any

from llmcluster.render.fmt import human_count
from llmcluster.render.styles import STYLES


def listing_lines(catalog: Any) -> list[str]:
    """One line per entry, grouped under ``Models:``, ``GPUs:``, ``Datasets:``, ``Styles:``."""
    lines = ["Models:"]
    for model in catalog.models:
        joke = "  [joke]" if model.humorous else ""
        moe = f"  MoE {model.moe_active}/{model.moe_experts}" if model.moe_experts else ""
        lines.append(
            f"  {model.name:<26}{model.params / 1e9:9.2f}B params  {model.layers:3d} layers  "
            f"hidden {model.hidden:6d}  vocab {model.vocab:6d}{moe}{joke}"
        )
    lines.append("GPUs:")
    for gpu in catalog.gpus:
        precision = "BF16" if gpu.bf16_supported else "FP16"
        lines.append(
            f"  {gpu.name:<16} {gpu.memory_gb:5.0f} GB  {gpu.bf16_tflops:6.0f} {precision} "
            f"TFLOPs  {gpu.tdp_w:5.0f} W TDP  {gpu.intra_node_link}  "
            f"(aliases: {', '.join(gpu.aliases)})"
        )
    lines.append("Datasets:")
    for data in catalog.datasets:
        joke = "  [joke]" if data.humorous else ""
        lines.append(f"  {data.name:<36} {human_count(data.tokens):>8} tokens{joke}")
    lines.append("Styles:")
    for name, style in STYLES.items():
        lines.append(f"  {name:<10} {style.example}")
    return lines


def print_listing(catalog: Any = None) -> None:
    """Print the listing of ``catalog`` (the shipped one by default) to stdout."""
    if catalog is None:
        from llmcluster import sim

        catalog = sim.load_catalog()
    print("\n".join(listing_lines(catalog)))

"""``llmcluster --list``: the models, GPUs, datasets and log styles a run can use."""

from __future__ import annotations

from llmcluster.render.fmt import human_count
from llmcluster.render.styles import STYLES
from llmcluster.sim import Catalog, load_catalog


def listing_lines(catalog: Catalog) -> list[str]:
    """One line per entry, grouped by kind."""
    lines = ["Models:"]
    for model in catalog.models:
        joke = "  [joke]" if model.humorous else ""
        moe = f" MoE {model.moe_experts}x" if model.moe_experts else ""
        lines.append(
            f"  {model.name:<26} {human_count(model.params):>8} params  {model.layers:3d} layers  "
            f"hidden {model.hidden:6d}  vocab {model.vocab:6d}{moe}{joke}"
        )
    lines.append("GPUs:")
    for gpu in catalog.gpus:
        lines.append(
            f"  {gpu.name:<16} {gpu.memory_gb:5.0f} GB  {gpu.bf16_tflops:6.0f} TFLOPs "
            f"{'BF16' if gpu.bf16_supported else 'FP16'}  {gpu.tdp_w:5.0f} W  "
            f"{gpu.intra_node_link}  (aliases: {', '.join(gpu.aliases)})"
        )
    lines.append("Datasets:")
    for data in catalog.datasets:
        joke = "  [joke]" if data.humorous else ""
        lines.append(f"  {data.name:<36} {human_count(data.tokens):>8} tokens{joke}")
    lines.append("Styles:")
    for name, style in STYLES.items():
        lines.append(f"  {name:<10} {style.example}")
    return lines


def print_listing() -> None:
    """Print the listing to stdout."""
    print("\n".join(listing_lines(load_catalog())))

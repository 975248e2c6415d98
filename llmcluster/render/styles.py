"""The log styles (``--style``): the one registry of their names, and the renderer factory.

``STYLES`` maps each name to its style class (``default``, ``megatron``, ``deepspeed``,
``hf``); the CLI's ``--style`` choices and ``llmcluster list`` read it. A style renderer
keeps state between records, so each display makes its own with ``make_style``;
``llmcluster bench`` gets nccl-tests' renderer instead.
"""

from __future__ import annotations

from llmcluster.render.base import DefaultStyle, Style, View
from llmcluster.render.bench import BenchStyle
from llmcluster.render.deepspeed import DeepSpeedStyle
from llmcluster.render.hf import HfStyle
from llmcluster.render.megatron import MegatronStyle

STYLES: dict[str, type[Style]] = {
    cls.name: cls for cls in (DefaultStyle, MegatronStyle, DeepSpeedStyle, HfStyle)
}


def make_style(name: str, *, width: int = 120, ascii_only: bool = False,
               bench: bool = False, view: View = View.MERGED, rank: int = 0,
               smi_every: int = 0) -> Style:  # fmt: skip
    """A fresh renderer for style ``name`` (nccl-tests' for ``llmcluster bench``), writing
    ``view``'s lines (``base.View``), node 0's nvidia-smi table every ``smi_every`` steps."""
    if bench:
        return BenchStyle(width=width, ascii_only=ascii_only)
    style = STYLES[name](width=width, ascii_only=ascii_only, view=view, rank=rank)
    style.smi_every = smi_every
    return style

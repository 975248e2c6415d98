"""What the dataset does to the loss: its floor, how fast it is learned, epochs and overfitting.

Pure functions of (plan, step). The Chinchilla law L = E + A/N^alpha + B/D^beta
(training.py) was fitted on web text (MassiveText); other kinds of data have
another irreducible loss E and learn at another rate, so each kind scales the
model term A/N^alpha and the data term B/D^beta:

- code is far more predictable per token than prose (StarCoder-class models end
  near 1 nat/token), math and LaTeX sit between, multilingual web above English;
- TinyStories-scale synthetic stories (a ~1,500-word vocabulary) are learned
  fast and reach ~1.2-1.5 (Eldan & Li 2023; llama2.c's small models);
- instruction/chat data is low-entropy (templated turns).

Repeating data (Muennighoff et al. 2023, "Scaling Data-Constrained Language
Models", arXiv 2305.16264): the effective number of unique tokens saturates as
D' = U + U R* (1 - e^(-R/R*)) with R = epochs - 1 and R* ~ 15.4, so validation
stops improving; meanwhile the model memorises the training set, faster the
larger it is, so after a few epochs the training loss keeps falling toward
zero while the validation loss turns up: val - train grows with the epochs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from llmcluster.sim.runplan import RunPlan

REPEAT_HALF_LIFE = 15.4  # R*_D, Muennighoff et al. 2023 (fit on C4)
MEMORISE_RATE = 0.01  # per repeated epoch (squared early on) for a 100M-parameter model
MEMORISE_EXPONENT = 0.5  # larger models memorise faster (Tirumala et al. 2022)


@dataclass(frozen=True)
class KindLaw:
    """How one kind of data shifts the scaling law."""

    floor: float  # irreducible loss E (nats/token)
    model_scale: float  # multiplies A/N^alpha
    data_scale: float  # multiplies B/D^beta


KIND_LAWS = {
    "web": KindLaw(1.8172, 1.0, 1.0),  # the Epoch AI refit itself
    "multilingual": KindLaw(2.05, 1.1, 1.1),
    "wiki": KindLaw(1.70, 1.0, 0.95),
    "academic": KindLaw(1.55, 0.95, 0.9),
    "books": KindLaw(1.95, 1.0, 1.0),
    "forum": KindLaw(1.95, 1.0, 1.0),
    "math": KindLaw(1.25, 0.9, 0.8),
    "synthetic": KindLaw(1.35, 0.8, 0.7),
    "chat": KindLaw(1.40, 0.8, 0.7),
    "code": KindLaw(0.85, 0.8, 0.7),
    "stories": KindLaw(0.60, 0.5, 0.25),
}


def kind_law(plan: RunPlan) -> KindLaw:
    """The law shift of the plan's dataset."""
    return KIND_LAWS[plan.dataset.kind]


def samples_per_epoch(plan: RunPlan) -> int:
    """Training samples in one pass over the dataset: its tokens packed into sequences
    (what HF's ``Num examples`` counts after ``group_texts``)."""
    return max(1, plan.dataset.tokens // plan.seq_len)


def epoch_at(plan: RunPlan, step: int) -> float:
    """Epochs completed after ``step`` optimizer steps (samples consumed / samples per epoch)."""
    return step * plan.global_batch / samples_per_epoch(plan)


def unique_tokens(plan: RunPlan, tokens: float) -> float:
    """Muennighoff's effective unique tokens after training on ``tokens`` of this dataset."""
    unique = float(plan.dataset.tokens)
    if tokens <= unique:
        return tokens
    repeats = tokens / unique - 1.0
    return unique * (1.0 + REPEAT_HALF_LIFE * (1.0 - math.exp(-repeats / REPEAT_HALF_LIFE)))


def repeated_epochs(plan: RunPlan, step: int) -> float:
    """Epochs beyond the first completed before ``step``."""
    return max(0.0, epoch_at(plan, step - 1) - 1.0)


def memorisation(plan: RunPlan, step: int) -> float:
    """Share (0-1) of the training set the model has memorised by ``step``: nothing in the
    first epoch, slowly over the next few (4 epochs cost little, Muennighoff), then all of
    it for a large model on a small corpus repeated tens of times."""
    repeats = repeated_epochs(plan, step)
    rate = MEMORISE_RATE * (plan.model.params / 1e8) ** MEMORISE_EXPONENT
    return 1.0 - math.exp(-rate * repeats * repeats / (1.0 + repeats))

"""Training plane: the peer mesh between ranks and the collectives that run over it."""

from llmcluster.comm.collectives import OPS, Communicator, ReduceOp
from llmcluster.comm.mesh import CollectiveTimeout, PeerMesh

__all__ = ["OPS", "CollectiveTimeout", "Communicator", "PeerMesh", "ReduceOp"]

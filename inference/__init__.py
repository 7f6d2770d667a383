"""Models behind one small seam: ``await model.predict(item)``, batched across sessions.

    registry.py   ModelRegistry: the server's models, loaded once, closed at shutdown
    batching.py   Batcher: the in-process Model (a collector task and one worker thread)
    spec.py       ModelSpec: how to build a model anywhere (factory + plain settings)
    remote.py     RayModel: a Model served by a Ray Serve deployment (--inference ray)
"""
from inference.batching import Batcher, InferenceError, ModelTimeout, ModelUnavailable, Overloaded
from inference.registry import Model, ModelRegistry
from inference.spec import ModelSpec

__all__ = ["Batcher", "InferenceError", "Model", "ModelRegistry", "ModelSpec", "ModelTimeout",
           "ModelUnavailable", "Overloaded"]

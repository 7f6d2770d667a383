"""Models behind one small seam: ``await model.predict(item)``, batched across sessions.

    registry.py   ModelRegistry: the server's models, loaded once, closed at shutdown
    batching.py   Batcher: the in-process Model (a collector task and one worker thread)
"""
from inference.batching import Batcher, ModelTimeout, Overloaded
from inference.registry import Model, ModelRegistry

__all__ = ["Batcher", "Model", "ModelRegistry", "ModelTimeout", "Overloaded"]

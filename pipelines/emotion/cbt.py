"""CBT-style responses: reflect the feeling, name a thought that may come with it, then offer a
reframing question or a short grounding exercise. Crisis language gets crisis-support guidance
instead, never a generated text.

``Responder`` composes from hand-written parts (hundreds of combinations, never the same text
twice in a row), or asks a ``ResponseGenerator`` (a transformers text-generation model) with the
composed response as the fallback when the model gives nothing usable.
"""
from __future__ import annotations

import random

REFLECT = {
    "neutral": ["You seem fairly calm right now.", "Things sound steady at the moment.",
                "You come across as even and settled."],
    "happy": ["You sound happy, that's good to see.", "There's some real brightness in how you come across.",
              "It looks like something is going well for you."],
    "sad": ["It sounds like you're feeling low.", "I'm sorry, this seems to be weighing on you.",
            "You seem sad right now, and that's a hard place to be."],
    "angry": ["It sounds like you're really frustrated.", "You seem angry, and that feeling makes sense to notice.",
              "Something seems to have upset you."],
    "surprise": ["That seems to have caught you off guard.", "You look surprised by what happened.",
                 "Something unexpected seems to have come up."],
    "fear": ["It sounds like you're worried.", "You seem anxious about what might happen.",
             "There seems to be some fear in this for you."],
    "disgust": ["Something here really doesn't sit right with you.", "You seem put off by this.",
                "It sounds like this goes against something you value."],
}
THOUGHT = {
    "neutral": ["Sometimes calm hides a thought like \"nothing I do matters much\".",
                "A neutral moment is a good time to notice what you're telling yourself."],
    "happy": ["A thought like \"I handled that well\" may be part of this.",
              "Maybe you're thinking \"things can work out for me\"."],
    "sad": ["A thought like \"it will always be this way\" often comes with sadness.",
            "Maybe part of you is thinking \"it's my fault\"."],
    "angry": ["Anger often comes with a thought like \"this is unfair and I can't stand it\".",
              "Maybe you're thinking \"they did this on purpose\"."],
    "surprise": ["A thought like \"I should have seen this coming\" can follow a surprise.",
                 "Maybe you're wondering what this means for you."],
    "fear": ["Worry often says \"the worst will happen and I won't cope\".",
             "Maybe you're thinking \"I can't handle this\"."],
    "disgust": ["A thought like \"this is wrong and shouldn't happen\" may be behind it.",
                "Maybe you're thinking \"I want nothing to do with this\"."],
}
REFRAME = {
    "neutral": ["What's one small thing you'd like to get out of today?",
                "Is there something you've been putting off that feels doable now?"],
    "happy": ["What did you do that helped this happen, and could you do it again?",
              "Who would you like to share this with?"],
    "sad": ["What would you say to a friend who felt this way?",
            "Is there any evidence that things could change, even a little?",
            "What is one kind thing you could do for yourself in the next hour?"],
    "angry": ["Is there another way to see what they did?", "What part of this is within your control?",
              "How much will this matter in a week?"],
    "surprise": ["What's the most likely outcome, rather than the best or the worst?",
                 "What do you need to know next?"],
    "fear": ["What's the evidence for and against that worry?", "If it did happen, how might you cope?",
             "What is the most likely outcome, realistically?"],
    "disgust": ["What value of yours is this touching on?", "Is there something you can do about it, or step away from?"],
}
GROUNDING = [
    "Try this: breathe in for four counts, hold for four, out for six, three times.",
    "Try naming five things you can see, four you can touch and three you can hear.",
    "Try pressing your feet into the floor and noticing how it holds you up for a few breaths.",
    "Try relaxing your shoulders and jaw, then take one slow breath.",
]
CRISIS = [
    "It sounds like you may be thinking about ending your life or hurting yourself. You don't have to "
    "face this alone. If you are in immediate danger, call your local emergency number now (112 in "
    "Europe, 911 in the US). You can talk to someone right away: call or text 988 in the US, call "
    "Samaritans on 116 123 in the UK and Ireland, or find a helpline in your country at "
    "findahelpline.com. If you can, tell someone you trust how you are feeling.",
    "I'm really glad you said this. Thoughts of suicide or self-harm deserve real support, now. If "
    "you might act on them, call emergency services (112 / 911) or go to the nearest emergency "
    "department. To talk to someone: 988 (call or text, US), Samaritans 116 123 (UK and Ireland), "
    "or findahelpline.com for other countries. Is there someone you trust who can be with you?",
]


class Responder:
    def __init__(self, seed: int | None = None, generator: "ResponseGenerator | None" = None):
        self.rng = random.Random(seed)
        self.generator = generator
        self.last: str | None = None

    def _pick(self, options: list[str]) -> str:
        return self.rng.choice(options)

    def respond(self, label: str, crisis: bool = False, text: str | None = None) -> str:
        if self.generator is not None and not crisis:
            generated = self.generator(label, text)
            if len(generated) >= 10 and generated != self.last:  # else: the composed fallback
                self.last = generated
                return generated
        for _ in range(20):  # with these pools a repeat is rare; retry until it differs
            response = self._compose(label, crisis)
            if response != self.last:
                break
        self.last = response
        return response

    def _compose(self, label: str, crisis: bool) -> str:
        if crisis:
            return self._pick(CRISIS)
        label = label if label in REFLECT else "neutral"
        closing = (self._pick(GROUNDING) if label in ("angry", "fear") and self.rng.random() < 0.5
                   else self._pick(REFRAME[label]))
        return " ".join([self._pick(REFLECT[label]), self._pick(THOUGHT[label]), closing])


class ResponseGenerator:
    """A transformers causal language model (hub id or folder) that writes the response; shared
    by all sessions, so it holds no per-session state."""

    def __init__(self, model: str, device: str = "cpu"):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.device = device
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.model = AutoModelForCausalLM.from_pretrained(model).to(device).eval()

    def __call__(self, label: str, text: str | None = None) -> str:
        said = f' They said: "{text[:300]}".' if text else ""
        prompt = (f"A supportive cognitive-behavioural coach talks to someone who feels {label}.{said} "
                  f"The coach reflects the feeling, names a possible thought, and asks a reframing "
                  f"question.\nCoach:")
        inputs = self.tokenizer(prompt, return_tensors="pt").to(self.device)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        with self.torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=60, do_sample=True, top_p=0.9,
                                      temperature=0.8, pad_token_id=pad)
        generated = self.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        lines = [line.strip() for line in generated.splitlines() if line.strip()]
        return lines[0] if lines else ""

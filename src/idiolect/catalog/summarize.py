"""A summarizer LLM for cards (XPerT's explanation step), run locally on a packaged instruct base.

XPerT asks a summarization LLM which style words make a personalized model's outputs differ from
the base's. Here the summarizer is one of the packaged instruct models (SmolLM2-135M-Instruct,
Qwen2.5-Coder-0.5B/1.5B-Instruct), loaded once and asked with its chat template, greedily, so a
card is reproducible. ``card.llm_explanation`` checks the answer (JSON with a summary and style
coefficients, no quotation of the texts) and falls back to the rules summary when the model does
not comply; ``stats`` counts how often it did, for the bench.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class LocalSummarizer:
    """Callable ``prompt -> answer`` over a base's chat template (greedy, ``max_new_tokens``)."""

    model: object
    tokenizer: object
    max_new_tokens: int = 256
    max_prompt_tokens: int = 1536
    stats: dict = field(default_factory=lambda: {"calls": 0, "prompt_tokens": 0,
                                                 "new_tokens": 0})

    def __call__(self, prompt: str) -> str:
        import torch

        tok = self.tokenizer
        messages = [{"role": "user", "content": prompt}]
        ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                      return_dict=True)["input_ids"][:, -self.max_prompt_tokens:]
        with torch.no_grad():
            out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                      max_new_tokens=self.max_new_tokens, do_sample=False,
                                      pad_token_id=tok.pad_token_id or tok.eos_token_id)
        new = out[0, ids.shape[1]:]
        self.stats["calls"] += 1
        self.stats["prompt_tokens"] += int(ids.shape[1])
        self.stats["new_tokens"] += int(new.shape[0])
        return tok.decode(new, skip_special_tokens=True)


def local_summarizer(home, base: str, max_new_tokens: int = 256,
                     log=None) -> LocalSummarizer:
    """Load ``base`` (a registered or packaged instruct model) as the card summarizer."""
    from ..bases import load as bases

    model, tok = bases.load(bases.resolve(home, base), progress=log)
    return LocalSummarizer(model, tok, max_new_tokens=max_new_tokens)

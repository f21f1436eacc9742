"""The catalog (XPerT): adapters explained by cards, served over HTTP, matched by card, pulled
with every digest checked, merged when none is close, and used as warm starts.

- ``card``: the Card dataclass and ``card_from_texts`` (style words, deltas, keywords, embedding)
- ``select``: similarity + explanation, ``card_for_user`` / ``card_for_adapter``,
  ``warm_start_auto``
- ``server``: FastAPI app (``create_app``), SQLite metadata + content-addressed blobs
- ``client``: ``CatalogClient`` (publish, list, match, pull), ``publish_adapter``
- ``merge``: exact (rank-concatenated) or re-factored (SVD) merge of LoRA deltas

Import from the submodules; nothing heavy is imported here.
"""

EMBEDDERS = ("auto", "minilm", "hash")  # card embedding methods (``card.embed``)

"""The catalog (XPerT): adapters explained by cards, served over HTTP, matched by card, pulled
with every digest checked, merged when none is close, and used as warm starts.

- ``card``: the Card dataclass and ``card_from_texts`` (style words, deltas, keywords, embedding)
- ``protocol``: the wire protocol shared by publisher, server and device: file names, adapter
  ids, URL and token variables, JSON depth, and the card settings (``CARD_SETTINGS``)
- ``match``: similarity + explanation + ranking of cards (pure; what the server needs)
- ``warm_start``: the side with a model: ``card_for_user`` / ``card_for_adapter``,
  ``publish_adapter``, ``warm_start_plan`` / ``warm_start_auto``
- ``server``: FastAPI app (``create_app``), SQLite metadata + content-addressed blobs
- ``client``: ``CatalogClient`` (publish, list, match, pull)
- ``merge``: exact (rank-concatenated) or re-factored (SVD) merge of LoRA deltas

Import from the submodules; nothing heavy is imported here.
"""

EMBEDDERS = ("auto", "minilm", "hash")  # card embedding methods (``card.embed``)

"""OpenAI-compatible serving: one base held once, every user's active adapter, mixed batches.

``models`` (the base + adapters, hot swap), ``batcher`` (the queue and mixed-adapter decoding),
``schemas`` (request bodies, limits, the chat -> prompt mapping), ``app`` (the HTTP API),
``ray_app`` (the same app as Ray Serve replicas).
"""

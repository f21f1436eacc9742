"""OpenAI-compatible serving: one base held once, every user's active adapter, mixed batches.

``models`` (the base + adapters, hot swap), ``stacked`` (every loaded adapter's LoRA stacked per
layer, applied per row), ``batcher`` (the queue and mixed-adapter decoding), ``sampler`` (a
batch's next tokens in one pass), ``schemas`` (request bodies, limits, the chat -> prompt
mapping), ``app`` (the HTTP API), ``ray_app`` (the same app as Ray Serve replicas).
"""

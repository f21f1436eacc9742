"""Base models: the packaged registry, loading (GGUF -> dequantized safetensors cache), fingerprints."""

"""The Llama-family language model: config, weights (safetensors, GGUF), tokenizer, the embedded default."""

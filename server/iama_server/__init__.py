"""IAMA server: per-request inference-time alignment (BoN / soft BoN) on vLLM behind FastAPI."""

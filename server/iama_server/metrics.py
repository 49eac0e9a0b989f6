"""Prometheus metrics on a private registry (several apps per process stay independent)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128)
BUDGET_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("iama_requests", "Requests by endpoint and status", ["endpoint", "status"], registry=r)
        self.latency = Histogram(
            "iama_request_latency_seconds", "End-to-end latency", ["endpoint"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.generation = Histogram(
            "iama_generation_seconds", "vLLM generation time per request", buckets=LATENCY_BUCKETS, registry=r
        )
        self.scoring = Histogram(
            "iama_scoring_seconds", "Reward scoring time per request", buckets=LATENCY_BUCKETS, registry=r
        )
        self.tokens = Counter("iama_tokens", "Tokens processed", ["kind"], registry=r)
        self.budget = Histogram("iama_budget", "Requested budget N", buckets=BUDGET_BUCKETS, registry=r)
        self.queue_depth = Gauge("iama_queue_depth", "Admitted requests waiting for a slot", registry=r)
        self.in_flight = Gauge("iama_in_flight", "Requests generating or scoring", registry=r)
        self.tokens_in_use = Gauge(
            "iama_token_capacity_in_use",
            "Tokens the running requests hold at most (prompt + N × max_tokens)",
            registry=r,
        )
        self.token_capacity = Gauge("iama_token_capacity", "The admission's token capacity", registry=r)
        self.candidates_aborted = Counter(
            "iama_candidates_aborted", "Candidates stopped early by early rejection", registry=r
        )
        self.tokens_saved = Counter(
            "iama_tokens_saved",
            "Early rejection: tokens not generated, at most (rejected candidates counted to max_tokens)",
            registry=r,
        )
        self.budget_spent = Histogram(
            "iama_budget_spent", "Budget 'auto': candidates sampled", buckets=BUDGET_BUCKETS, registry=r
        )
        self.cancelled = Counter(
            "iama_cancelled_requests", "Requests whose generation was aborted, by reason", ["reason"], registry=r
        )
        self.engine_kv_usage = Gauge(
            "iama_engine_kv_cache_usage", "Fraction of vLLM's KV cache in use (its scheduler's report)", registry=r
        )
        self.engine_generated = Gauge(
            "iama_engine_generated_tokens", "Tokens vLLM generated since start (its own count)", registry=r
        )
        self.engine_unfinished = Gauge(
            "iama_engine_unfinished_requests", "Requests the engine itself still holds (vLLM's count)", registry=r
        )
        self.score_batches = Counter(
            "iama_score_batches", "Batched reward-scoring calls (shared by concurrent requests)", registry=r
        )
        self.scored = Counter("iama_scored_completions", "Completions scored", registry=r)
        self.reward_warmup = Gauge(
            "iama_reward_warmup_seconds", "Seconds the reward's start-up warm-up took", ["reward"], registry=r
        )
        self.errors = Counter("iama_errors", "Error responses by OpenAI error type", ["type"], registry=r)
        # Per key: labelled by the key's name from the keys file (bounded by configuration).
        self.key_requests = Counter(
            "iama_key_requests", "Requests by key name and HTTP status", ["key", "status"], registry=r
        )
        self.key_tokens = Counter(
            "iama_key_tokens", "Tokens by key name and kind (prompt, completion, judge)", ["key", "kind"], registry=r
        )

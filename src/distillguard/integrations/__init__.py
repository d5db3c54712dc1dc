"""The tenant watermark inside other serving engines.

`batch` marks a serving engine's persistent batch with each row's tenant key (no engine
imported); `vllm` is the vLLM v1 logits processor built on it (extra `vllm`). SGLang and
TensorRT-LLM would get an adapter of their own over the same `batch`.
"""

__all__: list[str] = []

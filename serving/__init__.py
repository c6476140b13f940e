"""The inference server program (`python -m serving`).

It is what the deploy step runs, in a pod behind a Service or as a local process, so it imports
neither Prefect nor Kubernetes. It answers Kaito's `POST /chat` (the seed document's `curl`) beside
the OpenAI-compatible API every client library speaks, serves LoRA adapters with a *strength*
(Kaito's vLLM runtime refuses one), and lets the deploy step add, replace and remove adapters on
a running server so a new adapter rolls out without downtime.

Layout, as in vLLM's own OpenAI entrypoints: the HTTP layer (`app`) is thin; request models live
in `protocol`; the engine sits behind a small interface (`engines.base.Engine`) with a vLLM and a
transformers implementation; adapters (`adapters`) and metrics (`metrics`) are their own modules.
Heavy libraries (torch, transformers, vllm) are imported only when an engine starts.
"""

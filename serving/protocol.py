"""Request bodies: Kaito's `/chat` and the OpenAI chat/completions API, as pydantic models.

Field names and defaults follow the originals (Kaito's `inference_api.py`, OpenAI's API reference),
with vLLM's common extensions (`top_k`, `min_tokens`, `repetition_penalty`, `ignore_eos`).
Deliberate differences from Kaito's `/chat` (v0.4-v0.8; Kaito v0.9+ serves only the OpenAI API):

* `/chat` decodes greedily unless `do_sample` is true (Kaito samples by default), so the same
  prompt gives the same answer — what people comparing an adapter against the base model expect.
* A `prompt` is a user turn in the model's chat template when the tokenizer has one (Kaito's
  text-generation pipeline continued the raw text), so the documented request answers as the
  model was tuned; ``"apply_chat_template": false`` asks for Kaito's raw text generation.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# Limits every request model states, so the OpenAPI schema (`/openapi.json`, `/docs`) tells clients
# and fuzzers what is accepted, and a value no engine can take is a 400 here, not a 500 there.
INT64 = {"ge": -(2**63), "le": 2**63 - 1}  # OpenAI's `seed`; torch and vLLM seed generators take 64 bits
INT32_MAX = 2**31 - 1  # top_k: vLLM packs it into an int32 tensor; no vocabulary is larger
StopString = Annotated[str, Field(min_length=1)]  # vLLM refuses an empty one; on transformers it would stop at once
ADAPTER_NAME = r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,127}$"  # the same as serving.adapters.NAME_PATTERN
# NaN and Infinity are not JSON, but Python's parser reads them: every model here sets allow_inf_nan=False


class Message(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None = Field(
        None, description="text, or OpenAI content parts (the `text` of parts of type `text` is used)")

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(str(p.get("text", "")) for p in self.content if p.get("type") in ("text", None))
        return self.content or ""


class GenerateKwargs(BaseModel):
    """Kaito's `generate_kwargs` (Hugging Face `generate` names). Unknown keys are refused by name."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    max_length: int = Field(200, ge=1, description="prompt + new tokens, as in Hugging Face generate")
    max_new_tokens: int | None = Field(None, ge=1, description="new tokens; wins over max_length")
    min_length: int = Field(0, ge=0)
    do_sample: bool = False
    temperature: float = Field(1.0, ge=0.0, le=100.0, description="used when do_sample is true; 0: greedy")
    top_k: int = Field(10, ge=0, le=INT32_MAX, description="0: no top-k")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    typical_p: float = Field(1.0, gt=0.0, le=1.0)
    repetition_penalty: float = Field(1.0, ge=0.01, le=100.0, description="1.0: none; above 1 discourages repeats")
    num_beams: int = Field(1, ge=1, le=1, description="beam search is not served; use 1")
    early_stopping: bool = False
    num_return_sequences: int = Field(1, ge=1, le=1)
    pad_token_id: int | None = Field(None, description="accepted and ignored (the tokenizer's is used)")
    eos_token_id: int | list[int] | None = Field(None, description="accepted and ignored (the model's are used)")
    seed: int | None = Field(None, **INT64)


class KaitoChatRequest(BaseModel):
    """Kaito's `/chat` body: a `prompt` (text generation) or `messages` (a chat)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False,
                              json_schema_extra={"examples": [{"prompt": "What is the capital of France?",
                                                               "generate_kwargs": {"max_new_tokens": 32}}]})
    prompt: str | None = Field(None, description="the text; a user turn in the chat template when the model has one")
    messages: list[Message] | None = Field(None, description="a chat, sent through the chat template (wins over prompt)")
    return_full_text: bool = Field(True, description="raw text generation: the Result repeats the prompt")
    clean_up_tokenization_spaces: bool = False
    prefix: str | None = Field(None, description="text put before the prompt")
    handle_long_generation: Literal["hole"] | None = Field(
        None, description="\"hole\": cut the prompt's start so the new tokens fit the context (Kaito's option)")
    generate_kwargs: GenerateKwargs = Field(default_factory=GenerateKwargs)
    model: str | None = Field(None, description="kaiflow: an adapter name, or the base model's name to force the base")
    apply_chat_template: bool | None = Field(
        None, description="kaiflow: send `prompt` as a user turn through the model's chat template (default: when "
                          "the model has one; the Result is then the reply alone); false: continue the raw text, as Kaito")


class StreamOptions(BaseModel):
    include_usage: bool = False


class _OpenAISampling(BaseModel):
    """Fields common to OpenAI's chat and text completions (unknown fields are accepted and ignored)."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    model: str | None = Field(None, description="an adapter's name, or the base model's; default: the only adapter")
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="0: greedy; default 1.0")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(-1, ge=-1, le=INT32_MAX, description="-1 or 0: no top-k (vLLM's extension)")
    n: int = Field(1, ge=1, le=1, description="one choice per request")
    stop: StopString | list[StopString] | None = Field(None, description="generation stops before any of these strings")
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = Field(None, **INT64)
    # not supported: the schema says only what is accepted; the server's 400 for others says what to use instead
    presence_penalty: float = Field(0.0, description="not supported: only 0", json_schema_extra={"minimum": 0, "maximum": 0})
    frequency_penalty: float = Field(0.0, description="not supported: only 0", json_schema_extra={"minimum": 0, "maximum": 0})
    repetition_penalty: float = Field(1.0, ge=0.01, le=100.0, description="1.0: none (vLLM's extension)")
    min_tokens: int = Field(0, ge=0, description="tokens to generate before the end may come (vLLM's extension)")
    ignore_eos: bool = False
    logprobs: bool | int | None = Field(None, description="not supported: only false, 0 or null",
                                        json_schema_extra={"enum": [False, 0, None]})
    user: str | None = None

    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class ChatCompletionRequest(_OpenAISampling):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 32}]})
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, description="default: the server's --default-max-tokens, within the context")
    max_completion_tokens: int | None = Field(None, ge=1, description="OpenAI's newer name for max_tokens; wins over it")


class CompletionRequest(_OpenAISampling):
    model_config = ConfigDict(json_schema_extra={"examples": [{"prompt": "The capital of France is", "max_tokens": 16}]})
    prompt: str | list[str] | list[int] | list[list[int]] = Field(
        description="one text or one list of token ids (a list of one of them is accepted; batches are not)")
    max_tokens: int | None = Field(16, ge=1, description="null: the server's --default-max-tokens, within the context")
    echo: bool = False
    suffix: str | None = Field(None, description="not supported: only empty or null", json_schema_extra={"maxLength": 0})
    best_of: int | None = Field(None, ge=1, le=1)


class LoadAdapterRequest(BaseModel):
    """Load an adapter under a name, or replace the one loaded under it (requests already running finish on it)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False,
                              json_schema_extra={"examples": [{"lora_name": "my-adapter", "lora_path": "/adapters/a"}]})
    lora_name: str = Field(pattern=ADAPTER_NAME, description="letters, digits, '.', '_' or '-'; at most 128")
    lora_path: str = Field(min_length=1, description="a directory written by peft's save_pretrained, or holding one "
                                                     "as data/ (Kaito's adapter image); on the server's machine")
    strength: float = Field(1.0, ge=0.0, le=10.0, description="scales the adapter's update; 0: the base model's output")
    load_inplace: bool = Field(False, description="accepted and ignored: a name is always replaced in place")


class UnloadAdapterRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    lora_name: str = Field(pattern=ADAPTER_NAME)


# ---- error bodies (for the OpenAPI schema; the server builds them in serving.app) ----------------
class ErrorDetail(BaseModel):
    message: str = Field(description="what was wrong and what to change")
    type: str = Field(description="BadRequestError, NotFoundError, RequestTooLargeError, RateLimitError, ...")
    param: str | None = Field(None, description="the request field at fault, when there is one")
    code: int = Field(description="the HTTP status")


class OpenAIError(BaseModel):
    """The error body on `/v1/*` (OpenAI's shape)."""

    object: Literal["error"] = "error"
    error: ErrorDetail


class KaitoError(BaseModel):
    """The error body elsewhere (Kaito's and FastAPI's shape)."""

    detail: str

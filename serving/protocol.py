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

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(str(p.get("text", "")) for p in self.content if p.get("type") in ("text", None))
        return self.content or ""


class GenerateKwargs(BaseModel):
    """Kaito's `generate_kwargs` (Hugging Face `generate` names). Unknown keys are refused by name."""

    model_config = ConfigDict(extra="forbid")
    max_length: int = Field(200, ge=1, description="prompt + new tokens, as in Hugging Face generate")
    max_new_tokens: int | None = Field(None, ge=1, description="new tokens; wins over max_length")
    min_length: int = Field(0, ge=0)
    do_sample: bool = False
    temperature: float = Field(1.0, ge=0.0)
    top_k: int = Field(10, ge=0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    typical_p: float = Field(1.0, gt=0.0, le=1.0)
    repetition_penalty: float = Field(1.0, gt=0.0)
    num_beams: int = Field(1, ge=1, le=1, description="beam search is not served; use 1")
    early_stopping: bool = False
    num_return_sequences: int = Field(1, ge=1, le=1)
    pad_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    seed: int | None = None


class KaitoChatRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str | None = None
    messages: list[Message] | None = None
    return_full_text: bool = True
    clean_up_tokenization_spaces: bool = False
    prefix: str | None = None
    handle_long_generation: str | None = None
    generate_kwargs: GenerateKwargs = Field(default_factory=GenerateKwargs)
    model: str | None = Field(None, description="kaiflow: an adapter name, or the base model's name to force the base")
    apply_chat_template: bool | None = Field(
        None, description="kaiflow: send `prompt` as a user turn through the model's chat template (default: when "
                          "the model has one; the Result is then the reply alone); false: continue the raw text, as Kaito")


class StreamOptions(BaseModel):
    include_usage: bool = False


class _OpenAISampling(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = -1
    n: int = Field(1, ge=1, le=1, description="one choice per request")
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = Field(1.0, gt=0.0)
    min_tokens: int = Field(0, ge=0)
    ignore_eos: bool = False
    logprobs: bool | int | None = None
    user: str | None = None

    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class ChatCompletionRequest(_OpenAISampling):
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class CompletionRequest(_OpenAISampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=1)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1, le=1)


class LoadAdapterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lora_name: str
    lora_path: str
    strength: float = Field(1.0, ge=0.0, le=10.0)
    load_inplace: bool = False


class UnloadAdapterRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    lora_name: str

"""LLM back-ends behind one interface: the offline knowledge base and any OpenAI-compatible chat endpoint.

Both answer a :class:`~prior_generation.prompts.TextRequest` with a :class:`GeneratedText`. The OpenAI
back-end (official ``openai`` client; OpenAI, vLLM, Ollama, LM Studio ... via ``base_url``) runs at
temperature 0, retries transient failures with exponential backoff, optionally runs TAK's self-check
second pass, and caches every answer on disk (:mod:`prior_generation.cache`) before returning it.
The API key is read from the environment only and never written anywhere.
"""

from __future__ import annotations

import os
import re
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from prior_generation.cache import AnswerCache, cache_key
from prior_generation.errors import (
    LLMAuthError,
    LLMConnectionError,
    LLMRefusalError,
    LLMResponseError,
    MissingAPIKeyError,
    UnknownClassesError,
)
from prior_generation.knowledge import KnowledgeBase, Structure, load_knowledge_base
from prior_generation.names import join_names, normalize_name, shipped_label_maps
from prior_generation.prompts import (
    PROMPT_VERSION,
    TextRequest,
    messages_for,
    self_check_messages,
    user_prompt,
)

DEFAULT_MODEL = "gpt-4o"
DEFAULT_API_KEY_ENV = "OPENAI_API_KEY"

# Heuristic refusal markers, matched case-insensitively at the start of the answer (first 200 characters).
_REFUSAL = re.compile(
    r"\b(i\s*(?:can['’]?t|cannot|can not|won['’]?t|am unable|['’]m unable|am not able|['’]m not able)"
    r"|i['’]?m sorry|i am sorry|sorry, but|as an ai|as a language model|i must decline)\b",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class GeneratedText:
    text: str
    source: str  # e.g. "offline-kb:spleen" or "openai:gpt-4o"
    prompt: str  # the user prompt, or a note for the offline back-end


class LLMBackend(ABC):
    """Turns a TextRequest into text. ``check_coverage`` fails early, before any text is produced."""

    name: str = "abstract"

    @abstractmethod
    def generate(self, request: TextRequest) -> GeneratedText: ...

    @abstractmethod
    def describe(self) -> dict:
        """Provenance recorded in text_priors.json (never contains secrets)."""

    def check_coverage(self, requests: list[TextRequest]) -> None:  # noqa: B027 - optional hook
        """Raise before generating anything if some requests cannot be answered."""


# ----------------------------------------------------------------------------------------------- offline
class OfflineKnowledgeBackend(LLMBackend):
    """Composes texts from the shipped knowledge base; deterministic, no network, no cache needed."""

    name = "offline"

    def __init__(self, kb: KnowledgeBase | None = None) -> None:
        self.kb = kb or load_knowledge_base()

    def describe(self) -> dict:
        return {"backend": "offline", "model": "nnunet-llmseg knowledge base", "entries": len(self.kb)}

    def _entry(self, req: TextRequest) -> Structure | None:
        if req.is_background:
            return self.kb.lookup("background")
        return self.kb.lookup(req.anatomical_name) or self.kb.lookup(req.class_name)

    def check_coverage(self, requests: list[TextRequest]) -> None:
        unknown: dict[str, str] = {}
        for r in requests:
            if self._entry(r) is None:
                unknown[r.class_name] = r.anatomical_name
        if unknown:
            listed = ", ".join(
                f"'{c}'" + (f" (as '{a}')" if normalize_name(a) != normalize_name(c) else "")
                for c, a in unknown.items()
            )
            maps = ", ".join(shipped_label_maps())
            raise UnknownClassesError(
                list(unknown),
                f"the offline knowledge base has no entry for class(es) {listed}. Either use an LLM back-end "
                f"(--llm openai --model MODEL [--base-url URL], key in $OPENAI_API_KEY), or write the texts "
                f'yourself and pass --texts FILE (JSON: {{"<class>": {{"llmseg": "...", "tak_shape": '
                f'"...", "tak_location": "..."}}}}); --label-map FILE can map terse names to anatomical '
                f"ones (shipped: {maps}).",
            )

    def generate(self, request: TextRequest) -> GeneratedText:
        s = self._entry(request)
        if s is None:
            self.check_coverage([request])
        assert s is not None
        name = s.name
        if request.kind == "llmseg":
            appearance = s.appearance_in(request.modality_family)
            parts = [
                f"{name[0].upper()}{name[1:]} in {request.modality}.",
                appearance,
                s.shape,
                s.size,
                s.position,
                s.neighbours,
                s.pitfalls,
            ]
            text = " ".join(p for p in parts if p)
        elif request.kind == "tak_shape":
            text = f"Shape and structure of the {name}: {s.shape} {s.size}"
        elif request.kind == "tak_location":
            text = f"Relative position of the {name} with respect to the other organs: {self._location(s, request)}"
        else:
            raise ValueError(f"unknown text kind {request.kind!r}")
        return GeneratedText(
            text=text, source=f"offline-kb:{s.id}", prompt=f"(offline knowledge base entry '{s.id}')"
        )

    def _location(self, s: Structure, req: TextRequest) -> str:
        if req.is_background:
            names = [(o.name if (o := self.kb.lookup(n)) else n) for n in req.other_classes]
            others = join_names([f"the {n}" for n in names]) or "the labelled structures"
            return f"{s.position} It surrounds {others} and lies between them and the image border."
        known, generic = [], []
        for other in req.other_classes:
            o = self.kb.lookup(other)
            sentence = s.relations.get(o.id) if o is not None else None
            if sentence and sentence not in known:
                known.append(sentence)
            elif not sentence:
                generic.append(other)
        parts = [s.position, *known]
        if generic:
            parts.append(
                f"It is a separate structure from {join_names([f'the {g}' for g in generic])}, "
                f"labelled in the same scans; "
                f"{s.neighbours[0].lower()}{s.neighbours[1:]}"
            )
        elif not known:
            parts.append(s.neighbours)
        return " ".join(parts)


# ------------------------------------------------------------------------------------------------ openai
def _strip_userinfo(url: str) -> str:
    """Drop ``user:password@`` from a URL before it is stored or printed."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        parts = parts._replace(netloc=host)
    return urlunsplit(parts)


def looks_like_refusal(answer: str) -> bool:
    return bool(_REFUSAL.search(answer.strip()[:200]))


class OpenAIChatBackend(LLMBackend):
    """Any OpenAI-compatible ``/v1/chat/completions`` endpoint through the official ``openai`` client."""

    name = "openai"

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        base_url: str | None = None,
        api_key_env: str = DEFAULT_API_KEY_ENV,
        timeout: float = 60.0,
        retries: int = 3,
        backoff_s: float = 1.0,
        self_check: bool = False,
        cache_dir: str | Path,
    ) -> None:
        import openai

        if not (float(timeout) > 0 and int(retries) >= 0 and float(backoff_s) >= 0):
            raise ValueError(
                f"timeout must be > 0 s, retries >= 0 and backoff_s >= 0 (got {timeout}, {retries}, {backoff_s})"
            )
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", api_key_env or ""):
            # never echo the value: a key pasted here by mistake must not reach logs
            raise MissingAPIKeyError(
                "--api-key-env expects the NAME of an environment variable (e.g. OPENAI_API_KEY), and the given "
                "value is not a valid variable name; put the key itself in that variable, never on the command line"
            )
        key = os.environ.get(api_key_env, "")
        if not key.strip():
            raise MissingAPIKeyError(
                f"environment variable {api_key_env} is not set: export {api_key_env}=<your key> (keys are read "
                f"from the environment only; for a local server without auth any value works, e.g. EMPTY)"
            )
        self._secret = key
        self.model = model
        self.api_key_env = api_key_env
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.backoff_s = float(backoff_s)
        self.self_check = bool(self_check)
        self.client = openai.OpenAI(api_key=key, base_url=base_url, timeout=self.timeout, max_retries=0)
        self.base_url = _strip_userinfo(str(self.client.base_url).rstrip("/"))
        self.cache = AnswerCache(cache_dir)
        self.params = {"temperature": 0, "prompt_version": PROMPT_VERSION}
        self.n_requests = 0
        self.n_cache_hits = 0

    def describe(self) -> dict:
        return {
            "backend": "openai",
            "model": self.model,
            "base_url": self.base_url,
            "api_key_env": self.api_key_env,
            "temperature": 0,
            "self_check": self.self_check,
            "timeout_s": self.timeout,
            "retries": self.retries,
            "prompt_version": PROMPT_VERSION,
            "cache_dir": str(self.cache.directory),
        }

    def _clean(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text

    def _chat(self, messages: list[dict], what: str) -> str:
        key = cache_key(self.model, self.base_url, messages, self.params)
        cached = self.cache.get(key)
        if cached is not None:
            self.n_cache_hits += 1
            return cached
        answer = self._request(messages, what)
        self.cache.put(
            key,
            model=self.model,
            base_url=self.base_url,
            messages=messages,
            params=self.params,
            answer=answer,
        )
        return answer

    def _request(self, messages: list[dict], what: str) -> str:
        import openai

        last: Exception | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            self.n_requests += 1
            try:
                resp = self.client.chat.completions.create(model=self.model, messages=messages, temperature=0)
            except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
                raise LLMAuthError(
                    f"{self.base_url} rejected the API key from ${self.api_key_env} "
                    f"(HTTP {e.status_code}) while generating {what}"
                ) from None
            except openai.APIStatusError as e:
                if e.status_code in (408, 409, 429) or e.status_code >= 500:
                    last = e
                    continue
                raise LLMResponseError(
                    f"{self.base_url} answered HTTP {e.status_code} for model '{self.model}' while generating "
                    f"{what}: {self._clean(str(e.message))[:300]}"
                ) from None
            except (openai.APIConnectionError, openai.APITimeoutError) as e:  # timeout is a connection error
                last = e
                continue
            return self._validate(resp, what)
        kind = "timed out" if isinstance(last, openai.APITimeoutError) else "failed"
        detail = self._clean(f"{type(last).__name__}: {last}")[:300] if last else ""
        raise LLMConnectionError(
            f"request to {self.base_url} {kind} after {self.retries + 1} attempt(s) (timeout {self.timeout:g} s) "
            f"while generating {what}: {detail}. Answers obtained so far are cached; rerun to resume"
        )

    def _validate(self, resp, what: str) -> str:
        choices = getattr(resp, "choices", None) or []
        if not choices:
            raise LLMRefusalError(f"model '{self.model}' returned no answer for {what}")
        choice = choices[0]
        msg = choice.message
        refusal = getattr(msg, "refusal", None)
        content = (msg.content or "").strip()
        if refusal or choice.finish_reason == "content_filter":
            raise LLMRefusalError(
                f"model '{self.model}' refused to answer for {what}: {(refusal or '')[:200]}"
            )
        if not content:
            raise LLMRefusalError(f"model '{self.model}' returned an empty answer for {what}")
        if looks_like_refusal(content):
            raise LLMRefusalError(
                f"model '{self.model}' refused to answer for {what}: \"{content[:160]}\" (try another model, "
                f"or give the text with --texts FILE)"
            )
        return content

    def generate(self, request: TextRequest) -> GeneratedText:
        what = f"'{request.kind}' of class '{request.class_name}'"
        answer = self._chat(messages_for(request), what)
        prompt = user_prompt(request)
        if self.self_check:
            answer = self._chat(self_check_messages(request, answer), what + " (self-check)")
            prompt += " [+ self-check pass]"
        return GeneratedText(text=answer, source=f"openai:{self.model}", prompt=prompt)

"""Fail fast when the Hugging Face hub cannot be reached, instead of a minute of retries."""

from __future__ import annotations

import os
import socket


from .params import UserError


class HubUnavailable(UserError, RuntimeError):
    """The Hugging Face hub is needed but offline or unreachable."""


def hub_reachable(host: str = "huggingface.co", port: int = 443, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require_hub(what: str) -> None:
    """Raise HubUnavailable naming `what` when HF_HUB_OFFLINE is set or the hub is unreachable."""
    offline = any(os.environ.get(v, "").lower() in ("1", "true", "yes")
                  for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"))
    if offline or not hub_reachable():
        reason = "HF_HUB_OFFLINE is set" if offline else "huggingface.co is unreachable"
        raise HubUnavailable(
            f"{what} needs the Hugging Face hub, but {reason}. Use the offline default "
            "(data.source: wiki_vital or text_dir, data.tokenizer: bpe, pretrain.init: pretrain), "
            "a local folder for pretrain.init: hf:<folder>, or run where the hub is reachable."
        )

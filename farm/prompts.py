"""A1111's extra-network tags in prompts, in pure Python: `<kind:arg1:arg2...>` such as
`<lora:name:0.8>` are taken out of the prompt before it is encoded, and their models applied. The
coordinator reads them (a spec's LoRAs, the batch key) as the worker does.

Re-implemented from the behaviour of A1111's modules/extra_networks.py (A1111 is AGPL: no code
taken). User documentation: docs/prompts.md. The rest of the prompt syntax (emphasis, prompt
editing, alternation, AND) only the worker reads: worker/prompt_syntax.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")


@dataclass(frozen=True)
class ExtraNetwork:
    """One `<kind:args>` tag: `kind` is 'lora', 'lyco', 'hypernet' ...; `args` the positional
    arguments; `named` the `key=value` ones."""

    kind: str
    args: tuple[str, ...]
    named: tuple[tuple[str, str], ...] = field(default=())


def extract_extra_networks(prompt: str) -> tuple[str, list[ExtraNetwork]]:
    """(the prompt without its tags, the tags in order of appearance)."""
    found: list[ExtraNetwork] = []

    def take(match: re.Match) -> str:
        positional, named = [], []
        for item in match.group(2).split(":"):
            key, eq, value = item.partition("=")
            if eq and key.strip().isidentifier():
                named.append((key.strip(), value.strip()))
            else:
                positional.append(item.strip())
        found.append(ExtraNetwork(match.group(1), tuple(positional), tuple(named)))
        return ""

    return _EXTRA_NETWORK.sub(take, prompt), found


@dataclass(frozen=True)
class LoraRef:
    """`<lora:name:w>` or `<lora:name:te_w:unet_w>`: text-encoder and UNet weights."""

    name: str
    te_weight: float
    unet_weight: float


def lora_refs(networks: list[ExtraNetwork]) -> list[LoraRef]:
    """The LoRA tags (`lora` and `lyco`) with A1111's weight defaults: a missing weight is 1.0 and
    a missing UNet weight equals the text-encoder weight. Raises ValueError on a bad number."""
    refs = []
    for net in networks:
        if net.kind not in ("lora", "lyco") or not net.args:
            continue
        named = dict(net.named)
        try:
            te = float(named.get("te", net.args[1] if len(net.args) > 1 else 1.0))
            unet = float(named.get("unet", net.args[2] if len(net.args) > 2 else te))
        except ValueError:
            raise ValueError(f"<{net.kind}:{':'.join(net.args)}>: weights must be numbers") from None
        refs.append(LoraRef(net.args[0], te, unet))
    return refs

"""The input template: label descriptions and the chat wrapper, fixed at training time.

The result is one string with a single ``{text}`` placeholder, stored in the manifest and
applied identically by every backend at predict time.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clsx.errors import ClsxError

DEFAULT_DESCRIBED_TEMPLATE = "{text}\n\nLabels:\n{labels}"
TEXT_MARK = "\u0000TEXT\u0000"


def read_label_descriptions(path: Path, labels: Sequence[str]) -> dict[str, str]:
    """A JSON object ``{label: description}`` or lines of ``label: description``."""
    content = Path(path).read_text(encoding="utf-8")
    try:
        loaded = json.loads(content)
        descriptions = {str(k): str(v) for k, v in loaded.items()}
    except (json.JSONDecodeError, AttributeError):
        descriptions = {}
        for number, line in enumerate(content.splitlines(), 1):
            if not line.strip():
                continue
            if ":" not in line:
                raise ClsxError(f"{path} line {number}: expected 'label: description'") from None
            label, description = line.split(":", 1)
            descriptions[label.strip()] = description.strip()
    unknown = sorted(set(descriptions) - set(labels))
    if unknown:
        raise ClsxError(f"{path} describes unknown labels {unknown}; labels: {', '.join(labels)}")
    return descriptions


def build_template(
    template: str | None,
    labels: Sequence[str],
    descriptions: dict[str, str] | None,
    chat: bool,
    tokenizer: Any,
) -> str | None:
    """Expand ``{labels}`` and wrap in the chat template; None when the text goes in bare."""
    if descriptions and template is None:
        template = DEFAULT_DESCRIBED_TEMPLATE
    if template is not None and "{labels}" in template:
        listing = "\n".join(
            f"- {label}: {descriptions[label]}" if descriptions and label in descriptions
            else f"- {label}" for label in labels
        )
        template = template.replace("{labels}", listing)
    if chat:
        if not getattr(tokenizer, "chat_template", None):
            raise ClsxError("--chat needs a tokenizer with a chat template; this one has none")
        content = (template or "{text}").replace("{text}", TEXT_MARK)
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )
        template = rendered.replace(TEXT_MARK, "{text}")
    return template

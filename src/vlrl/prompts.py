"""The tags and the user turn of the reference experiment, in one place.

The user turn is the reference notebook's: the image first, then the question followed by the
instruction to reason between ``<REASONING>`` tags and answer between ``<SOLUTION>`` tags. The text
comes from ``params.yaml`` (``prompt.template``) so that a prompt change is a tracked parameter;
:func:`template_problem` checks a template when params.yaml is loaded, so a bad placeholder fails
there and not in the middle of generation.

Pure module: imports neither torch nor DVC.
"""

from __future__ import annotations

import string

REASONING_START = "<REASONING>"
REASONING_END = "</REASONING>"
SOLUTION_START = "<SOLUTION>"
SOLUTION_END = "</SOLUTION>"

#: The four tags. Tokenizers must keep them as NON-special tokens: TRL decodes completions with
#: ``skip_special_tokens=True``, which would erase special tokens before the rewards see them.
TAGS = (REASONING_START, REASONING_END, SOLUTION_START, SOLUTION_END)

#: Placeholder -> the text it becomes (``question`` is filled per item).
TAG_PLACEHOLDERS = {
    "reasoning_start": REASONING_START,
    "reasoning_end": REASONING_END,
    "solution_start": SOLUTION_START,
    "solution_end": SOLUTION_END,
}
PLACEHOLDERS = ("question", *TAG_PLACEHOLDERS)
#: Placeholders a template must use: without them the model is never asked the question or told
#: where the answer goes, and the correctness reward can never fire.
REQUIRED_PLACEHOLDERS = ("question", "solution_start", "solution_end")


def template_problem(template: str) -> str | None:
    """What is wrong with a prompt template, or None when it is usable.

    Placeholders are ``str.format`` fields; a literal brace is written ``{{`` or ``}}``.

    >>> template_problem("{question} between {solution_start} and {solution_end}") is None
    True
    >>> template_problem("{question} {answer} {solution_start}{solution_end}").split(";")[0]
    'unknown placeholder {answer}'
    >>> template_problem("{question} {solution_start}{solution_end} a } b")
    "not a valid template (Single '}' encountered in format string); write a literal brace as {{ or }}"
    """
    try:
        fields = [(name, spec, conversion) for _, name, spec, conversion in string.Formatter().parse(template)
                  if name is not None]
    except ValueError as exc:
        return f"not a valid template ({exc}); write a literal brace as {{{{ or }}}}"
    allowed = ", ".join(f"{{{p}}}" for p in PLACEHOLDERS)
    for name, spec, conversion in fields:
        if name not in PLACEHOLDERS:
            shown = "{}" if name == "" else f"{{{name}}}"
            return f"unknown placeholder {shown}; allowed: {allowed}"
        if spec or conversion:
            return f"placeholder {{{name}}} takes no format spec or conversion; allowed: {allowed}"
    used = {name for name, _, _ in fields}
    missing = [p for p in REQUIRED_PLACEHOLDERS if p not in used]
    if missing:
        return f"must contain the placeholder(s) {', '.join(f'{{{p}}}' for p in missing)}"
    return None


def user_text(question: str, template: str) -> str:
    """The text part of the user turn.

    >>> user_text("How many bars?", "{question}. Answer in {solution_start}...{solution_end}")
    'How many bars?. Answer in <SOLUTION>...</SOLUTION>'
    """
    return template.format(question=question, **TAG_PLACEHOLDERS)


def build_prompt(question: str, template: str) -> list[dict]:
    """The conversational prompt TRL and the chat template expect: one user turn, image first.

    >>> build_prompt("2+2?", "{question} {solution_start}{solution_end}")[0]["content"][0]
    {'type': 'image'}
    """
    return [
        {
            "role": "user",
            "content": [
                {"type": "image"},
                {"type": "text", "text": user_text(question, template)},
            ],
        }
    ]
